"""Object detection: scene composition, the COCO source and its bad inputs, the head's targets and decoding, learning,
COCOeval scores with known answers, and `largo eval --json`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from largo.cli import main
from largo.config import build_config
from largo.data.detection import IGNORE, DetectDataConfig, flip_boxes, prepare_detection
from largo.data.sources import fashion_mnist
from largo.data.sources.fashion_scenes import SceneSettings, box_iou, compose_scenes
from largo.data.split import is_validation
from largo.errors import ConfigError, DataError
from largo.models.coco_eval import Boxes, coco_map
from largo.models.detect import DetectConfig, Detector, box_weights, bumps, decode, detection_loss, flip_averaged, objects
from largo.models.spec import Attribution
from largo.train.run import train

pytest.importorskip("pycocotools", reason="detection metrics need pycocotools: pip install pycocotools")
quiet = dict(log=lambda _m: None)
needs_fashion = pytest.mark.skipif(not fashion_mnist.FASHION_DIR.is_dir(),
                                   reason="needs Debian's Fashion-MNIST: apt-get install dataset-fashion-mnist (.ci/run installs it)")


def blob_pool(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stand-in items: (n, 28, 28) uint8 with one bright rectangle each, and their labels (0..3)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for im in images:
        y0, x0 = rng.integers(0, 10, 2)
        im[y0:y0 + rng.integers(8, 18), x0:x0 + rng.integers(8, 18)] = rng.integers(120, 256)
    return images, rng.integers(0, 4, n)


# ---- scenes -------------------------------------------------------------------------------------------------

def test_composed_scenes_keep_their_invariants() -> None:
    """Boxes lie inside the canvas, tight around the items' pixels, 1-6 per scene, overlapping at most max_overlap."""
    images, labels = blob_pool()
    s = SceneSettings(canvas=64, min_objects=1, max_objects=6, scale_min=0.5, scale_max=1.5, max_overlap=0.0, noise=0, fragments=0)
    scenes = list(compose_scenes(images, labels, 50, s, seed=[3, 0]))
    counts = [len(sc.boxes) for sc in scenes]
    assert min(counts) >= 1 and max(counts) <= 6 and len(set(counts)) > 2
    for sc in scenes:
        assert (sc.boxes[:, :2] >= 0).all() and (sc.boxes[:, 2:] <= 64).all() and (sc.boxes[:, 2:] > sc.boxes[:, :2]).all()
        np.testing.assert_array_equal(sc.classes, labels[sc.items])
        inside = np.zeros((64, 64), dtype=bool)
        for k, (x0, y0, x1, y1) in enumerate(sc.boxes.astype(int)):
            inside[y0:y1, x0:x1] = True
            patch = sc.pixels[y0:y1, x0:x1] > 0  # tight: every edge row and column of the box holds item pixels
            assert patch[0].any() and patch[-1].any() and patch[:, 0].any() and patch[:, -1].any()
            others = np.delete(sc.boxes, k, axis=0)
            assert len(others) == 0 or box_iou(sc.boxes[k].astype(np.float64), others.astype(np.float64)).max() <= 0.0
        assert not (sc.pixels[~inside] > 0).any()  # no noise, no fragments: nothing outside the boxes
    again = list(compose_scenes(images, labels, 50, s, seed=[3, 0]))  # a pure function of the seed
    assert all(np.array_equal(a.pixels, b.pixels) and np.array_equal(a.boxes, b.boxes) for a, b in zip(scenes, again))


def test_mirroring_a_scene_mirrors_its_boxes() -> None:
    images, labels = blob_pool()
    s = SceneSettings(canvas=48, max_objects=3, scale_max=1.2, noise=0, fragments=0)
    sc = next(compose_scenes(images, labels, 1, s, seed=[1, 0]))
    y = np.full((1, 4, 5), IGNORE, dtype=np.float32)
    y[0, :len(sc.boxes)] = np.column_stack([sc.classes, sc.boxes])
    flipped = flip_boxes(y, 48, np.array([True]))
    mirror = sc.pixels[:, ::-1]
    for c, x0, y0, x1, y1 in flipped[0][flipped[0, :, 0] != IGNORE].astype(int):
        patch = mirror[y0:y1, x0:x1] > 0
        assert patch[:, 0].any() and patch[:, -1].any()
    assert (flipped[0, len(sc.boxes):] == IGNORE).all()


@needs_fashion
def test_fashion_scenes_keep_train_and_test_images_apart(tmp_path: Path) -> None:
    """Train scenes use training images outside the validation share, validation scenes only that share, test scenes only
    the official test images; every box's class is its item's label."""
    from largo.data.sources import SourceStats, open_source
    from largo.data.sources.registry import DETECTION

    d = DetectDataConfig(dir=str(tmp_path / "d"), train_scenes=60, test_scenes=20, val_fraction=0.1)
    roles = {"image": "image", "boxes": "boxes"}
    rows = list(open_source("fashion-scenes", DETECTION, d).rows(roles, SourceStats()))
    tests = list(open_source("fashion-scenes", DETECTION, d, test=True).rows(roles, SourceStats()))
    train_labels = fashion_mnist.read_idx(fashion_mnist.fashion_files()["train_y"])
    assert [r["split"] for r in rows].count("val") == 6 and len(tests) == 20
    for r in rows:
        assert all(pool == "train" and is_validation(k, 0.1) == (r["split"] == "val") for pool, k in r["items"])
        assert [b[0] for b in r["boxes"]] == [fashion_mnist.FASHION_CLASSES[train_labels[k]] for _, k in r["items"]]
    assert all(pool == "test" for r in tests for pool, _ in r["items"])
    counts = np.unique([b[0] for r in rows for b in r["boxes"]], return_counts=True)[1]
    assert len(counts) == 10 and counts.min() >= 0.4 * counts.mean()  # every class, none rare (items drawn uniformly)
    prepared = prepare_detection(d, in_channels=0, **quiet)
    assert prepared.arrays["train_x"].shape[1:] == (1, 96, 96) and prepared.arrays["test_y"].shape[2] == 5
    assert len(prepared.arrays["train_y"]) == 60 and len(prepared.arrays["val_y"]) == 6


# ---- a COCO folder: round trip and bad inputs ----------------------------------------------------------------

def coco_folder(root: Path, n: int = 6, **changes: object) -> Path:
    """n grey 40x30 PNGs with one or two boxes each and annotations.json; `changes` replace top-level keys."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(n):
        pixels = np.zeros((30, 40), dtype=np.uint8)
        pixels[5:15, 4:24] = 200
        Image.fromarray(pixels).save(root / f"im{i}.png")
        images.append({"id": i + 10, "file_name": f"im{i}.png", "width": 40, "height": 30})
        annotations.append({"id": 2 * i + 1, "image_id": i + 10, "category_id": 7, "bbox": [4, 5, 20, 10]})
        if i % 2:
            annotations.append({"id": 2 * i + 2, "image_id": i + 10, "category_id": 3, "bbox": [30, 20, 10, 10]})
    doc = {"images": images, "annotations": annotations, "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
           **changes}
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def test_a_coco_folder_round_trips_into_scaled_boxes(tmp_path: Path) -> None:
    folder = coco_folder(tmp_path / "coco")
    d = DetectDataConfig(source=str(folder), test_source=str(folder / "annotations.json"), dir=str(tmp_path / "d"),
                         canvas=32, val_fraction=0.34)
    p = prepare_detection(d, in_channels=0, **quiet)
    assert p.classes == ["dog", "cat"]  # category id order
    assert p.arrays["train_x"].shape[1:] == (1, 32, 32) and len(p.arrays["train_y"]) + len(p.arrays["val_y"]) == 6
    y = p.arrays["test_y"]
    sx, sy = 32 / 40, 32 / 30
    np.testing.assert_allclose(y[0, 0], [1, 4 * sx, 5 * sy, 24 * sx, 15 * sy], rtol=1e-6)
    np.testing.assert_allclose(y[1, 1], [0, 30 * sx, 20 * sy, 40 * sx, 30 * sy], rtol=1e-6)
    assert (y[0, 1] == IGNORE).all()  # one object in the first image: its second row is padding


@pytest.mark.parametrize("changes,message", [
    (lambda a: a[0].update(bbox=[30, 25, 20, 10]), "falls outside its 40x30 image"),
    (lambda a: a[1].update(category_id=99), "category_id 99 is unknown; the categories are 3 (dog), 7 (cat)"),
    (lambda a: a.clear(), "'annotations' is empty"),
])
def test_bad_coco_files_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], changes, message) -> None:
    folder = coco_folder(tmp_path / "coco")
    doc = json.loads((folder / "annotations.json").read_text())
    changes(doc["annotations"])
    (folder / "annotations.json").write_text(json.dumps(doc))
    out = tmp_path / "prepared"
    code = main(["prepare", "detect_fashion", "--data.source", str(folder), "--data.test_source", "", "--data.dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not out.exists()  # nothing prepared, nothing left behind


def test_detection_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="data.scale_max"):
        DetectDataConfig(scale_min=1.5, scale_max=1.0)
    with pytest.raises(ConfigError, match="data.min_objects"):
        DetectDataConfig(min_objects=3, max_objects=2)
    with pytest.raises(ConfigError, match="model.image_size"):
        DetectConfig(image_size=96, patch_size=7)
    with pytest.raises(DataError, match="use .fashion-scenes., or a COCO annotations .json"):
        prepare_detection(DetectDataConfig(source=str(Path(__file__).parent), test_source="", dir="unused"), in_channels=0, **quiet)


# ---- the head: targets and decoding agree, and a tiny model learns ------------------------------------------

TINY = DetectConfig(dim=32, n_layers=2, n_heads=4, num_classes=3, image_size=32, in_channels=1, patch_size=8, max_seq_len=16)


def targets(rows: list[list[tuple[int, float, float, float, float]]], width: int = 3) -> torch.Tensor:
    y = torch.full((len(rows), width, 5), float(IGNORE))
    for i, row in enumerate(rows):
        for j, obj in enumerate(row):
            y[i, j] = torch.tensor(obj)
    return y


def test_decoding_reads_back_the_boxes_the_targets_encode() -> None:
    """Outputs built from the targets (a peak at each centre cell, the true log side distances) decode to the true boxes."""
    cfg = TINY
    y = targets([[(2, 3.0, 4.0, 13.0, 17.0), (0, 18.0, 20.0, 31.0, 30.0)], [(1, 9.0, 1.0, 22.0, 12.0)]])
    out = torch.full((2, cfg.num_patches, cfg.num_classes + 4), -9.0)
    for i, row in enumerate(y):
        for j, (c, x0, y0, x1, y1) in enumerate(row[row[:, 0] != IGNORE].tolist()):
            col, r = int((x0 + x1) / 2 // 8), int((y0 + y1) / 2 // 8)
            out[i, r * 4 + col, int(c)] = 6.0 - j  # the first object scores highest
            for cell in range(16):  # every cell inside the box (where its box is learned) points at the true sides
                cx, cy = (cell % 4 + 0.5) * 8, (cell // 4 + 0.5) * 8
                if x0 < cx < x1 and y0 < cy < y1 or cell == r * 4 + col:
                    out[i, cell, 3:] = torch.log(torch.tensor([cx - x0, cy - y0, x1 - cx, y1 - cy]) / 8)
    boxes, scores, classes = decode(out, cfg, k=2)
    torch.testing.assert_close(boxes[0], y[0, :2, 1:])
    assert classes[0].tolist() == [2, 0] and classes[1, 0] == 1 and scores[1, 1] < 0.01
    torch.testing.assert_close(boxes[1, 0], y[1, 0, 1:])
    loss = detection_loss(out, y, cfg)
    assert loss.found == loss.objects == 3 and loss.box < 1e-4  # exact boxes: GIoU 1, L1 0
    obj = objects(y, cfg)
    w = box_weights(obj, cfg, bumps(obj, cfg))  # each real object's box is taught with weights summing to 1, centre first
    torch.testing.assert_close(w.sum(-1), obj.real.float())
    assert (w.argmax(-1) == obj.cell)[obj.real].all() and (w > 0).sum() > 3


class BoxOracle(torch.nn.Module):
    """A perfect detector of the one bright rectangle in each image (class 1): the peak at its centre cell, and at every
    cell the true log distances to its sides; it sees a mirrored image as a new image, as a trained model does."""

    def __init__(self, cfg: DetectConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cfg, s = self.cfg, self.cfg.patch_size
        out = torch.full((len(images), cfg.num_patches, cfg.num_classes + 4), -9.0)
        centre = (torch.arange(cfg.grid, dtype=torch.float32) + 0.5) * s
        cy, cx = (t.flatten() for t in torch.meshgrid(centre, centre, indexing="ij"))
        for i, image in enumerate(images[:, 0] > 0):
            rows, cols = image.any(1).nonzero()[:, 0], image.any(0).nonzero()[:, 0]
            x0, y0, x1, y1 = float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)
            out[i, int((y0 + y1) / 2 // s) * cfg.grid + int((x0 + x1) / 2 // s), 1] = 6.0
            out[i, :, cfg.num_classes:] = torch.stack([cx - x0, cy - y0, x1 - cx, y1 - cy], -1).clamp_min(0.5).div(s).log()
        return out


def test_the_flip_test_averages_an_image_with_its_mirror_in_the_image_frame() -> None:
    """A perfect detector's boxes survive the flip test unchanged: the mirror's grid and its left/right sides are put back."""
    cfg = TINY
    images = torch.zeros(2, 1, 32, 32)
    images[0, 0, 3:17, 2:13] = 1.0  # off-centre in its cell: left and right distances differ
    images[1, 0, 20:30, 17:30] = 1.0  # (a centre on a cell edge would fall in the other cell when mirrored)
    oracle = BoxOracle(cfg)
    plain, flipped = decode(oracle(images), cfg, k=1), decode(flip_averaged(oracle, images, cfg), cfg, k=1)
    torch.testing.assert_close(plain[0][:, 0], torch.tensor([[2.0, 3.0, 13.0, 17.0], [17.0, 20.0, 30.0, 30.0]]))
    torch.testing.assert_close(flipped[0], plain[0])
    assert flipped[2].tolist() == [[1], [1]] and (flipped[1] > 0.99).all()


def test_a_tiny_detector_learns(one_thread: None) -> None:
    torch.manual_seed(0)
    model = Detector(TINY)
    model.init_weights()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, 32, 32, generator=g)
    y = targets([[(i % 3, 2.0 + i, 3.0, 14.0 + i, 20.0), (2, 20.0, 18.0, 30.0, 31.0)] for i in range(8)])
    for k in range(8):  # the objects are bright squares on the noise
        x[k, 0, 3:20, 2 + k:14 + k] += 3.0
        x[k, 0, 18:31, 20:30] += 3.0
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = detection_loss(model(x), y, TINY).total / (5 * 16)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.4 * losses[0]


def test_explanations_of_a_detection_fall_on_its_object(one_thread: None) -> None:
    """Known answer: in scenes of two squares (the class is the square's brightness), a trained detector credits each
    detection to its own square's pixels, not the other square's (integrated gradients, complete to 5%)."""
    pytest.importorskip("captum", reason="largo explain needs Captum: pip install captum")
    from largo.explain.attribute import COMPLETENESS_TOLERANCE, integrated_gradients
    from largo.explain.detect import chosen, heat_logits, inside_share

    def scenes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        g, rows = torch.Generator().manual_seed(seed), []
        x = 0.3 * torch.randn(n, 1, 32, 32, generator=g)
        for k in range(n):
            row = []
            for left in (0, 17):  # one square in each half
                c, x0, y0 = int(torch.randint(0, 3, (1,), generator=g)), left + int(torch.randint(0, 4, (1,), generator=g)), \
                    int(torch.randint(0, 21, (1,), generator=g))
                x[k, 0, y0 : y0 + 11, x0 : x0 + 11] += 1.0 + c
                row.append((c, float(x0), float(y0), x0 + 11.0, y0 + 11.0))
            rows.append(row)
        return x, targets(rows, width=2)

    torch.manual_seed(0)
    model = Detector(TINY)
    model.init_weights()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(150):
        x, y = scenes(32, step)
        loss = detection_loss(model(x), y, TINY).total / (5 * 64)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = scenes(12, 1000)  # held out
    model.requires_grad_(False)
    own, other, picks = [], [], []
    for i in range(len(x)):
        with torch.no_grad():
            found = chosen(model(x[i : i + 1]), TINY, 1, None)
        if found:  # the best detection of the scene, and the true square it lies on
            j = int(np.argmin([abs(found[0][3][0] - float(b[1])) for b in y[i]]))
            picks.append((i, j, found[0]))
    assert len(picks) >= 10
    rows = torch.tensor([i for i, _, _ in picks])
    att = Attribution("image", heat_logits(model, TINY), x[rows], torch.zeros_like(x[rows]), lambda a: a.sum(1))
    result = integrated_gradients(att, torch.tensor([cell * TINY.num_classes + k for _, _, (cell, k, _, _) in picks]))
    for n, (i, j, _) in enumerate(picks):
        a = result.maps[n].numpy()
        own.append(inside_share(a, y[i, j, 1:].tolist(), 0)[0])
        other.append(inside_share(a, y[i, 1 - j, 1:].tolist(), 0)[0])
    print(f"\ndetection: median share of the positive credit on the detected square {np.median(own):.2f}, on the other "
          f"{np.median(other):.2f}; completeness max error {100 * float(result.completeness_error.max()):.2f}%")
    assert np.median(own) >= 0.7 and max(other) < 0.2
    assert float(result.completeness_error.max()) <= COMPLETENESS_TOLERANCE


# ---- COCOeval with known answers ----------------------------------------------------------------------------

def test_cocoeval_scores_perfect_and_half_detections() -> None:
    truth = [Boxes(np.array([[2.0, 2, 20, 30], [40, 40, 60, 70]]), np.array([0, 1])), Boxes(np.array([[5.0, 5, 25, 25]]), np.array([0]))]
    perfect = [Boxes(t.boxes, t.labels, np.full(len(t.labels), 0.9)) for t in truth]
    scores = coco_map(truth, perfect, ["a", "b"], (96, 96))
    assert scores.map == pytest.approx(1.0) and scores.map_50 == pytest.approx(1.0) and scores.per_class == pytest.approx({"a": 1.0, "b": 1.0})
    only_a = [Boxes(t.boxes[t.labels == 0], t.labels[t.labels == 0], np.full(int((t.labels == 0).sum()), 0.9)) for t in truth]
    half = coco_map(truth, only_a, ["a", "b"], (96, 96))  # class b never found: AP 0, the mean of 1 and 0
    assert half.map_50 == pytest.approx(0.5) and half.per_class["b"] == 0.0
    shifted = [Boxes(t.boxes + [0, 0, 12, 0], t.labels, np.full(len(t.labels), 0.9)) for t in truth]
    wide = coco_map(truth, shifted, ["a", "b"], (96, 96))  # 12 px too wide: IoU 18/30 = 0.6 and 20/32 = 0.625
    assert (wide.map_50, wide.map_75) == (pytest.approx(1.0), 0.0)
    assert wide.map == pytest.approx(0.3)  # found at the IoU thresholds .50, .55 and .60 of COCO's ten


# ---- the whole path: train a few steps on a COCO folder, then `largo eval --json` and --predictions ----------

def test_eval_json_reports_map_and_the_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: None) -> None:
    folder = coco_folder(tmp_path / "coco", n=8)
    cfg = build_config({
        "run": {"name": "det", "out_dir": str(tmp_path / "runs")},
        "data": {"source": str(folder), "test_source": str(folder), "dir": str(tmp_path / "d"), "canvas": 32, "val_fraction": 0.25},
        "model": {"arch": "detect", "dim": 32, "n_layers": 1, "n_heads": 2, "patch_size": 8, "max_seq_len": 16},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"steps": 2, "global_batch": 4, "micro_batch": 4, "precision": "fp32"},
        "eval": {"every": 0, "max_batches": 1}, "checkpoint": {"every": 0},
    })
    train(cfg, **quiet)
    assert (cfg.run_dir / "detections.png").stat().st_size > 1000
    capsys.readouterr()
    preds = tmp_path / "p.jsonl"
    assert main(["eval", str(cfg.run_dir), "--json", "--predictions", str(preds), "--limit", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"map", "map_50", "map_75", "ap_cat", "ap_dog"} <= set(out["metrics"])
    assert set(out["baselines"]) == {"components_prior"} and set(out["baselines"]["components_prior"]) >= {"map", "map_50"}
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(lines) == 5 and lines[0]["reference"]["labels"] == ["cat"]
    assert set(lines[0]["output"]) == {"boxes", "labels", "scores"}
    # re-scored from the file alone, the predictions give the same figure
    cls = ["dog", "cat"]
    truth = [Boxes(np.array(p["reference"]["boxes"]).reshape(-1, 4), np.array([cls.index(c) for c in p["reference"]["labels"]]))
             for p in lines]
    found = [Boxes(np.array(p["output"]["boxes"]).reshape(-1, 4), np.array([cls.index(c) for c in p["output"]["labels"]]),
                   np.array(p["output"]["scores"])) for p in lines]
    assert coco_map(truth, found, cls, (32, 32)).map == pytest.approx(out["metrics"]["map"], abs=1e-3)


@pytest.mark.parametrize("patch,side", [(12, 96), (8, 64), (7, 28)])
def test_conv_stem_reaches_the_patch_grid_and_the_planner_counts_its_work(patch: int, side: int) -> None:
    """model.stem = "conv" gives the patch stem's grid; its multiply-adds, counted on a real forward, are the planner's."""
    from largo.models.vit import ConvStem, conv_stem_macs_per_patch

    cfg = DetectConfig(dim=64, n_layers=1, n_heads=2, num_classes=3, image_size=side, in_channels=1, patch_size=patch,
                       max_seq_len=(side // patch) ** 2, stem="conv")
    stem = ConvStem(cfg)
    stem.init_weights()
    macs: list[int] = []
    for m in stem.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda m, _a, out: macs.append(out[0].numel() * m.in_channels * m.kernel_size[0] ** 2))
    states, _ = stem(torch.randn(2, 1, side, side))
    assert states.shape == (2, cfg.num_patches, 64)
    assert sum(macs) == conv_stem_macs_per_patch(cfg) * cfg.num_patches
    assert 0.3 < states.std().item() < 3  # unit-scale states for normalised pixels
