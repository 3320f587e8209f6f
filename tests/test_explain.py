"""Explanations shown to be right, not only drawn.

Tiny models are trained on synthetic data where the answer is known, then the attributions of `largo explain`
(the architectures' specs + Captum's integrated gradients) must find it on held-out inputs:
- images: the class is decided by a 4x4 pattern at a random cell of the ViT's patch grid, among distractor patterns;
- text: the label is decided by one keyword among random tokens;
- audio: the class is the pitch of a tone burst at a random time, beside a distractor tone and (half the time) noise;
each also within 5% of completeness. Each dataset has a third class without the decisive signal, so the blank
baseline (black image, padding, silence) is that class and both others need evidence. Then the machinery itself:
Captum against a hand-written Riemann sum, recomputed attention weights against SDPA, rollout's invariants, the
command end to end on image, text and language-model runs, and its one-line errors.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("captum", reason="explanations need Captum: pip install 'largo-train[explain]'")

from largo.cli import main  # noqa: E402
from largo.errors import MissingDependencyError  # noqa: E402
from largo.explain.attribute import COMPLETENESS_TOLERANCE, captum_attr, integrated_gradients  # noqa: E402
from largo.explain.lm import token_losses  # noqa: E402
from largo.explain.rollout import attention_maps, rollout  # noqa: E402
from largo.models import build_model, get_spec  # noqa: E402
from largo.models.audio import AudioConfig  # noqa: E402
from largo.models.gpt import GPTConfig  # noqa: E402
from largo.models.layers import Attention  # noqa: E402
from largo.models.text_classifier import TextClassifierConfig  # noqa: E402
from largo.models.vit import ViTConfig  # noqa: E402
from largo.train.run import train  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402

quiet = dict(log=lambda _m: None)

pytestmark = pytest.mark.usefixtures("one_thread")


def fit(model: torch.nn.Module, batches, steps: int, lr: float = 3e-3, smoothing: float = 0.0) -> torch.nn.Module:
    """A plain loop: the models are largo's own, built from their configs; data comes from `batches(rng)`."""
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        x, y, _ = batches(rng)
        loss = F.cross_entropy(model(x), y, label_smoothing=smoothing)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


def explained(arch: str, model: torch.nn.Module, x: torch.Tensor):
    """Predictions and integrated gradients of the predicted class, as `largo explain` computes them."""
    att = get_spec(arch).attribution(model, x, torch.zeros_like(x))  # a blank image, padding, a silent clip
    with torch.no_grad():
        predicted = model(x).argmax(-1)
    # These models decide sharply: a few inputs switch class within 1/1000 of the path and need thousands of steps.
    return predicted, integrated_gradients(att, predicted, max_steps=8192)


# ---- images: a decisive 4x4 pattern among distractors ----------------------------------------------

SIDE, PATCH = 16, 4
DISTRACTING = 2  # distractor patterns in every image, whatever its class
RING = np.array([[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]], np.float32)
CROSS = np.array([[1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 1, 0], [1, 0, 0, 1]], np.float32)
DISTRACTORS = [np.array(m, np.float32) for m in (
    [[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]], [[0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0]],
    [[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], [[0, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 1], [0, 1, 1, 0]])]


def patch_images(n: int, rng: np.random.Generator, classes=(0, 1, 2)):
    """Black 16x16 images with 4x4 patterns in random cells of the patch grid: two distractors, and a ring (class 1),
    a cross (class 2) or nothing (class 0). Returns images, labels, and the decisive cell's corner."""
    x, y = np.zeros((n, 1, SIDE, SIDE), np.float32), rng.choice(classes, n)
    corners = np.zeros((n, 2), int)
    for i in range(n):
        cells = [(c // 4 * PATCH, c % 4 * PATCH) for c in rng.permutation(16)[: 1 + DISTRACTING]]
        patterns = [DISTRACTORS[rng.integers(4)] for _ in range(DISTRACTING)]
        if y[i]:
            patterns.insert(0, RING if y[i] == 1 else CROSS)
        for (r, c), pattern in zip(cells, patterns):
            x[i, 0, r : r + PATCH, c : c + PATCH] = pattern
        corners[i] = cells[0]
    return torch.from_numpy(x), torch.from_numpy(y), corners


def share_in_patch(maps: torch.Tensor, corners: np.ndarray) -> np.ndarray:
    """Per image: the decisive cell's share of the positive attribution mass."""
    positive = maps.clamp_min(0)
    inside = torch.stack([positive[i, r : r + PATCH, c : c + PATCH].sum() for i, (r, c) in enumerate(corners)])
    return (inside / positive.flatten(1).sum(1).clamp_min(1e-12)).numpy()


def test_image_attribution_finds_the_decisive_patch() -> None:
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=SIDE, in_channels=1, patch_size=PATCH, dim=32, n_layers=2, n_heads=2, num_classes=3, max_seq_len=16)
    untrained = build_model(cfg).eval().requires_grad_(False)
    model = fit(build_model(cfg), lambda rng: patch_images(64, rng), steps=120)
    x, y, corners = patch_images(60, np.random.default_rng(1), classes=(1, 2))  # held out: the classes with a decisive patch
    predicted, result = explained("vit", model, x)
    assert (predicted == y).float().mean() >= 0.95
    shares = share_in_patch(result.maps, corners)
    found = float((shares >= 0.8).mean())
    print(f"\nimage: {100 * found:.0f}% of held-out images have >= 80% of the positive mass in the decisive patch "
          f"(median share {np.median(shares):.2f}); completeness max error {100 * result.completeness_error.max():.2f}%")
    assert found >= 0.9
    assert result.completeness_error.max() <= COMPLETENESS_TOLERANCE
    # The criterion tells models apart: an untrained model's attributions spread over the three patterns.
    _, control = explained("vit", untrained, x)
    chance = float((share_in_patch(control.maps, corners) >= 0.8).mean())
    print(f"image control: untrained model {100 * chance:.0f}%")
    assert chance < 0.5


# ---- text: one keyword among random tokens ----------------------------------------------------------

VOCAB, LENGTH = 64, 16
KEYWORDS = {1: [10, 11], 2: [20, 21]}  # class -> its keywords; class 0 has none


def keyword_rows(n: int, rng: np.random.Generator, classes=(0, 1, 2)):
    """Rows of 16 random filler tokens, one of them replaced by a keyword of the class (none for class 0); and where.

    Full rows: with rows of random length (padded), some trained models spread the credit over the fillers, whose
    count then varies with the padding (the padding path is checked through the command, below).
    """
    filler = np.array([t for t in range(1, VOCAB) if t not in (10, 11, 20, 21)])
    x, y, where = rng.choice(filler, (n, LENGTH)), rng.choice(classes, n), np.full(n, -1)
    for i in np.flatnonzero(y):
        where[i] = rng.integers(0, LENGTH)
        x[i, where[i]] = rng.choice(KEYWORDS[int(y[i])])
    return torch.from_numpy(x), torch.from_numpy(y), where


def test_text_attribution_finds_the_keyword() -> None:
    torch.manual_seed(0)
    cfg = TextClassifierConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=2, max_seq_len=LENGTH, num_classes=3)
    untrained = build_model(cfg).eval().requires_grad_(False)
    model = fit(build_model(cfg), lambda rng: keyword_rows(64, rng), steps=150)
    x, y, where = keyword_rows(40, np.random.default_rng(1), classes=(1, 2))
    predicted, result = explained("text_classifier", model, x)
    assert (predicted == y).float().mean() >= 0.95
    top = result.maps.argmax(-1).numpy()
    found = float((top == where).mean())
    print(f"\ntext: the keyword has the top attribution in {100 * found:.0f}% of held-out rows; completeness max error "
          f"{100 * result.completeness_error.max():.2f}% (integration steps used: {sorted(set(result.steps.tolist()))})")
    assert found >= 0.9
    assert result.completeness_error.max() <= COMPLETENESS_TOLERANCE
    _, control = explained("text_classifier", untrained, x)
    chance = float((control.maps.argmax(-1).numpy() == where).mean())
    print(f"text control: untrained model {100 * chance:.0f}%")
    assert chance < 0.5


# ---- audio: a tone burst at a random time -----------------------------------------------------------

RATE, CLIP, SLOT, BURST = 8000, 4000, 800, 640  # 0.5 s clips in five 0.1 s slots; 0.08 s bursts
TONES_HZ = {1: 600.0, 2: 1800.0}  # class 0: no tone of its own
DISTRACTOR_HZ = 1200.0


def tone_clips(n: int, rng: np.random.Generator, classes=(0, 1, 2)):
    """Quiet noise (-54 dB) with 0.08 s bursts in random slots: a 1200 Hz tone in every clip, a loud noise burst in
    half of them, and the class's tone (600 or 1800 Hz; none for class 0). Returns clips, labels, the tone's samples.

    Every clip's loudest event is a tone of the same level, so the per-clip log-mel scaling tells the classes nothing.
    """
    t = np.arange(BURST) / RATE
    x, y = 0.001 * rng.standard_normal((n, CLIP)), rng.choice(classes, n)
    spans = np.zeros((n, 2), int)
    for i in range(n):
        tone, distractor, noise = (SLOT * s + int(rng.integers(0, SLOT - BURST + 1)) for s in rng.permutation(CLIP // SLOT)[:3])
        burst = lambda hz: 0.5 * np.sin(2 * np.pi * hz * t + rng.uniform(0, 2 * np.pi))  # noqa: E731
        x[i, distractor : distractor + BURST] += burst(DISTRACTOR_HZ)
        if y[i]:
            x[i, tone : tone + BURST] += burst(TONES_HZ[int(y[i])])
            spans[i] = tone, tone + BURST
        if rng.random() < 0.5:
            x[i, noise : noise + BURST] += 0.3 * rng.standard_normal(BURST)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y), spans


def test_audio_attribution_peaks_inside_the_tone_burst() -> None:
    torch.manual_seed(0)
    cfg = AudioConfig(sample_rate=RATE, n_mels=32, dim=32, n_layers=2, n_heads=2, max_seq_len=32, num_classes=3)
    model = fit(build_model(cfg), lambda rng: tone_clips(64, rng), steps=120)
    x, y, spans = tone_clips(40, np.random.default_rng(1), classes=(1, 2))
    predicted, result = explained("audio", model, x)
    assert (predicted == y).float().mean() >= 0.95
    assert result.maps.shape[1:] == (cfg.n_mels, CLIP // cfg.hop_length + 1)  # over the log-mel frames
    # Time profile: attributions summed over the mel bands and over the 3 frames the stem's first convolution sees (its
    # stride-2 second convolution leaves an even/odd ripple on single frames); the peak frame's centre, in samples.
    profile = F.avg_pool1d(result.maps.sum(1)[:, None], 3, stride=1, padding=1)[:, 0]
    centre = profile.argmax(-1).numpy() * cfg.hop_length
    half_hop = cfg.hop_length // 2  # a frame belongs to the burst when its centre is within half a hop of it
    inside = (centre >= spans[:, 0] - half_hop) & (centre <= spans[:, 1] + half_hop)
    print(f"\naudio: the attribution peak lies inside the tone burst in {100 * inside.mean():.0f}% of held-out clips; "
          f"completeness max error {100 * result.completeness_error.max():.2f}%")
    assert inside.mean() >= 0.9
    assert result.completeness_error.max() <= COMPLETENESS_TOLERANCE


# ---- the machinery against references ---------------------------------------------------------------

def test_captum_integrated_gradients_equal_a_hand_written_riemann_sum() -> None:
    """Same target, baseline and path: Captum's attributions (through the spec) equal a 2,000-step midpoint sum."""
    torch.manual_seed(1)
    model = build_model(ViTConfig(image_size=8, in_channels=1, patch_size=4, dim=16, n_layers=1, n_heads=2, num_classes=3,
                                  max_seq_len=4)).eval()
    x, blank, target = torch.randn(2, 1, 8, 8), torch.full((2, 1, 8, 8), -0.5), torch.tensor([2, 0])
    model.head.weight.data.normal_(std=0.5)  # zero at init: every class would score the same
    result = integrated_gradients(get_spec("vit").attribution(model, x, blank), target, steps=64)
    alphas = (torch.arange(2000) + 0.5) / 2000
    path = (blank[:, None] + alphas[None, :, None, None, None] * (x - blank)[:, None]).reshape(-1, 1, 8, 8).requires_grad_()
    picked = model(path).view(2, 2000, 3)[torch.arange(2), :, target].sum()
    grads = torch.autograd.grad(picked, path)[0].view(2, 2000, 1, 8, 8).mean(1)
    reference = ((x - blank) * grads).sum(1)  # (b, 8, 8): channels summed, as the ViT spec maps them
    torch.testing.assert_close(result.maps, reference, rtol=1e-3, atol=1e-5)
    assert result.completeness_error.max() < 1e-3


@pytest.mark.parametrize("arch", ["gpt", "text_classifier"])
def test_recomputed_attention_weights_reproduce_sdpa(arch: str) -> None:
    """probabilities() @ v equals what SDPA computed inside the block, with rotary positions, GQA, causality or padding."""
    torch.manual_seed(2)
    common = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=12)
    model = build_model(GPTConfig(vocab_size=50, **common) if arch == "gpt" else
                        TextClassifierConfig(vocab_size=50, num_classes=2, **common)).eval()
    tokens = torch.randint(1, 50, (2, 12))
    tokens[1, 9:] = 0  # padding (masked by the text classifier)
    seen = []
    attn = next(m for m in model.modules() if isinstance(m, Attention))

    def capture(module: Attention, args: tuple, out: torch.Tensor) -> None:
        x, rope, mask = args[:3]
        b, t, _ = x.shape
        v = module.wv(x).view(b, t, module.n_kv_heads, module.head_dim).transpose(1, 2).repeat_interleave(2, dim=1)
        mixed = (module.probabilities(x, rope, mask) @ v).transpose(1, 2).reshape(b, t, -1)
        seen.append((module.wo(mixed), out))

    handle = attn.register_forward_hook(capture)
    with torch.no_grad():
        model(tokens)
    handle.remove()
    ours, sdpa = seen[0]
    torch.testing.assert_close(ours, sdpa, rtol=1e-4, atol=1e-5)


def test_rollout_rows_sum_to_one_and_causal_models_never_look_ahead() -> None:
    torch.manual_seed(3)
    model = build_model(GPTConfig(vocab_size=50, dim=32, n_layers=3, n_heads=4, max_seq_len=10)).eval()
    tokens = torch.randint(0, 50, (2, 10))
    maps = attention_maps(model, lambda: model(tokens))
    assert len(maps) == 3 and maps[0].shape == (2, 4, 10, 10)
    rolled = rollout(maps)
    torch.testing.assert_close(rolled.sum(-1), torch.ones(2, 10))
    assert torch.equal(rolled.triu(1), torch.zeros_like(rolled))  # position i draws nothing from positions after it
    # one block of uniform attention over t positions: 0.5 * 1/t + 0.5 on the diagonal
    uniform = [torch.full((1, 1, 4, 4), 0.25)]
    torch.testing.assert_close(rollout(uniform)[0], 0.125 + 0.5 * torch.eye(4))


# ---- the command, end to end -------------------------------------------------------------------------

def _referenced(html_text: str) -> list[str]:
    return [m for m in re.findall(r'(?:href|src)="([^"]+)"', html_text) if not m.startswith(("data:", "http"))]


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as img:
        assert np.asarray(img.convert("L")).std() > 5  # not blank
        return img.size


def test_explain_image_run_for_files_and_a_split(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from PIL import Image

    from tests.test_modalities import recipe

    cfg = recipe("vision_digits", tmp_path, **{"train.steps": 40, "eval.every": 0})
    train(cfg, **quiet)
    prepared = get_spec("vit").prepare(cfg.data, cfg.model, **quiet)
    folder = tmp_path / "inputs" / prepared.classes[int(prepared.arrays["val_y"][0])]  # a folder named after the class
    folder.mkdir(parents=True)
    Image.fromarray(np.asarray(prepared.arrays["val_x"][0, 0])).save(folder / "first.png")
    out = cfg.run_dir / "explain"  # the default output folder
    assert main(["explain", str(cfg.run_dir), str(tmp_path / "inputs"), "--split", "val", "--limit", "3"]) == 0
    printed = capsys.readouterr().out
    assert "completeness: max error" in printed and f"index: {out / 'index.html'}" in printed
    summary = json.loads((out / "explain.json").read_text())
    inputs = summary["inputs"]
    assert [r["input"] for r in inputs] == ["val[0]", "val[1]", "val[2]", str(folder / "first.png")]
    assert inputs[3]["true"] == folder.name and inputs[3]["predicted"] == inputs[0]["predicted"]  # the same image, twice
    assert max(r["completeness_error"] for r in inputs) <= COMPLETENESS_TOLERANCE
    assert all(_png_size(out / r["file"]) == (960, 360) for r in inputs)  # input | integrated gradients | rollout
    index = (out / "index.html").read_text()
    assert _referenced(index) and all((out / ref).is_file() for ref in _referenced(index))
    # the run's report shows its confusion matrix and the first three explanation images, embedded
    assert main(["report", str(cfg.run_dir)]) == 0
    page = (cfg.run_dir / "report.html").read_text()
    assert "Confusion matrix" in page and page.count('src="data:image/png;base64,') == 2 + 1 + 3
    assert _referenced(page) == ["explain/index.html"]


def test_explain_text_run_finds_the_cue_word_through_the_tokenizer(tmp_path: Path) -> None:
    from tests.test_modalities import make_review_table, recipe

    cfg = recipe("sentiment_imdb", tmp_path, **{
        "data.source": make_review_table(tmp_path / "reviews.csv"), "data.text_column": "body", "data.label_column": "stars",
        "data.vocab_size": 300, "model.dim": 32, "model.n_layers": 1, "model.n_heads": 2, "model.max_seq_len": 48,
        "train.steps": 40, "train.global_batch": 32, "train.micro_batch": 32, "optim.lr": 3e-3, "optim.warmup_steps": 5,
    })
    train(cfg, **quiet)
    (tmp_path / "review.txt").write_text("The plot was AWFUL, the actor a scene of people.")
    out = tmp_path / "explained"
    assert main(["explain", str(cfg.run_dir), "a movie the story loved the director watch", str(tmp_path / "review.txt"),
                 "--out", str(out)]) == 0
    inputs = json.loads((out / "explain.json").read_text())["inputs"]
    assert [r["predicted"] for r in inputs] == ["positive", "negative"]
    assert max(r["completeness_error"] for r in inputs) <= COMPLETENESS_TOLERANCE
    for r, (text, cue) in zip(inputs, (("a movie the story loved the director watch", "loved"),
                                       ("the plot was awful, the actor a scene of people.", "awful"))):
        page = (out / r["file"]).read_text().split("<h2>Attention rollout</h2>")[0]
        spans = [(html.unescape(piece), float(value)) for value, piece in
                 re.findall(r'<span style="[^"]*" title="([^"]+)">([^<]*)</span>', page)]  # hover text: the attribution
        assert "".join(piece for piece, _ in spans) == text  # the run's own tokenizer, cleaned as its data was
        best = max(range(len(spans)), key=lambda k: spans[k][1])
        start = sum(len(piece) for piece, _ in spans[:best])
        assert text.index(cue) <= start < text.index(cue) + len(cue)  # the top piece is (a BPE piece of) the cue word


def test_explain_language_model_views(tmp_path: Path, tiny_data: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_data, train={"steps": 8})
    train(cfg, **quiet)
    out = tmp_path / "lm"
    assert main(["explain", str(cfg.run_dir), "def f(x):\n    return x", "--target", " return", "--top-k", "3",
                 "--out", str(out)]) == 0
    record = json.loads((out / "explain.json").read_text())["inputs"][0]
    assert record["next_token"] == " return" and record["completeness_error"] <= COMPLETENESS_TOLERANCE
    # per-token loss and top-k against plain cross-entropy and topk over the same checkpoint
    from largo.checkpoint.restore import restore

    model, _, ckpt = restore(cfg.run_dir)
    ids = torch.as_tensor(get_spec("gpt").read_example(cfg.data, cfg.model, ckpt, "def f(x):\n    return x"))
    losses, probs, top = token_losses(model, ids, 3)
    with torch.no_grad():
        logits = model(ids[None])[0]
    torch.testing.assert_close(losses, F.cross_entropy(logits[:-1], ids[1:], reduction="none"))
    torch.testing.assert_close(record["mean_loss"], float(losses.mean()), rtol=1e-6, atol=0)
    assert torch.equal(top, logits.softmax(-1).topk(3).indices)
    page = (out / record["file"]).read_text()
    assert page.count('class="tokens"') == 3 and "Top-3 next-token predictions" in page  # loss, attribution, rollout


def test_explain_errors_are_one_line(tmp_path: Path, tiny_data: Path, capsys: pytest.CaptureFixture,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(tmp_path, tiny_data, train={"steps": 2})
    train(cfg, **quiet)
    for argv, message in ((["--split", "test"], "a 'val' split"), ([], "needs inputs"),
                          (["x", "--steps", "1"], "--steps (1) must be in [2")):
        assert main(["explain", str(cfg.run_dir), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    monkeypatch.setitem(__import__("sys").modules, "captum.attr", None)  # as if Captum were not installed
    with pytest.raises(MissingDependencyError, match=re.escape("pip install 'largo-train[explain]'")):
        captum_attr()
