"""Image generation: adaLN-Zero on the shared block, flow matching that learns, the sampler, FID-F, the CLI's answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from largo.cli import main
from largo.config import load_config
from largo.data.draws import SampleDraws
from largo.errors import ConfigError
from largo.models import build_model, get_spec
from largo.models.block import Block, BlockConfig, Modulation
from largo.models.dit import DiTConfig, flow_transform
from largo.models.imagegen import frechet_distance, sample
from largo.train.run import train

pytest.importorskip("sklearn", reason="scikit-learn's digits are the tiny image set: pip install scikit-learn")
quiet = dict(log=lambda _m: None)


def tiny(arch: str, tmp_path: Path, name: str, steps: int = 1, **model: object):
    """A seconds-long run on scikit-learn's 8x8 digits (no package beyond scikit-learn)."""
    overrides = {"run.name": name, "train.steps": str(steps), "run.out_dir": str(tmp_path / "runs"), "data.source": "digits", "data.dir": str(tmp_path / "data"),
                 "model.dim": "32", "model.n_layers": "2", "model.n_heads": "2", "model.patch_size": "2",
                 "train.global_batch": "32", "train.micro_batch": "32", "train.threads": "1", "train.precision": "fp32",
                 "eval.every": "0", "eval.max_batches": "0", "checkpoint.every": "0", "optim.warmup_steps": "5", "optim.lr": "3e-3", "data.shift_px": "0", "data.hflip": "false"}
    overrides.update({f"model.{k}": str(v) for k, v in model.items()})
    return load_config("vision_digits" if arch == "vit" else "generate_fashion", overrides)


def test_zero_modulation_leaves_the_block_unchanged_and_zero_gates_make_it_the_identity() -> None:
    """adaLN-Zero's invariant on THE block: shift = scale = 0, gate = 1 is the plain block; gate = 0 passes x through."""
    torch.manual_seed(0)
    block = Block(BlockConfig(dim=16, n_heads=2, n_kv_heads=2, hidden=32, norm_eps=1e-5, causal=False))
    block.init_weights(0.02, 2)
    x = torch.randn(3, 5, 16)
    zeros, ones = torch.zeros(3, 1, 16), torch.ones(3, 1, 16)
    plain = block(x)
    assert torch.equal(block(x, mod=Modulation(zeros, zeros, ones, zeros, zeros, ones)), plain)
    assert torch.equal(block(x, mod=Modulation(*[zeros] * 6)), x)
    assert not torch.allclose(plain, x)  # the block does change x: the checks above can fail


def test_a_fresh_dit_predicts_zero_and_flow_matching_learns(tmp_path: Path) -> None:
    """adaLN-Zero init: the first velocity is exactly 0 (loss = E|noise - x0|^2); a short run lowers the held-out loss."""
    cfg = tiny("dit", tmp_path, "flow", class_dropout=0.2)
    spec = get_spec("dit")
    prepared = spec.prepare(cfg.data, cfg.model, **quiet)
    model = build_model(spec.resolve(cfg.model, prepared))
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(model(x, torch.rand(4), torch.tensor([0, 1, 2, 10])), torch.zeros_like(x))
    # the zero prediction's held-out loss, from the same fixed held-out draws the evaluation uses
    val_x = np.asarray(prepared.arrays["val_x"])
    draws = [flow_transform(cfg.data, 0.2)(val_x[i:i + 32], None) for i in range(0, len(val_x), 32)]
    untrained = float(torch.cat([(d["noise"] - d["images"]).pow(2).flatten(1).mean(1) for d in draws]).mean())
    trained = train(tiny("dit", tmp_path, "flow60", 60, class_dropout=0.2), **quiet)["val_loss"]
    assert trained < 0.85 * untrained


def test_training_draws_depend_on_the_sample_only_and_held_out_draws_are_fixed(tmp_path: Path) -> None:
    """Noise, t and label dropout of an example are the same in any batch (resumes and ranks agree); held-out ones repeat."""
    cfg = tiny("dit", tmp_path, "draws")
    transform = flow_transform(cfg.data, 0.5)
    rows = np.random.default_rng(0).integers(0, 256, (6, 1, 8, 8), dtype=np.uint8)
    whole = transform(rows, SampleDraws(7, np.arange(10, 16)))
    part = transform(rows[2:4], SampleDraws(7, np.arange(12, 14)))
    for key in ("noise", "t", "drop"):
        assert torch.equal(whole[key][2:4], part[key])
    assert 0 < int(whole["drop"].sum()) < 6 and abs(float(whole["noise"].std()) - 1) < 0.1
    a, b = transform(rows, None), transform(rows, None)
    assert torch.equal(a["noise"], b["noise"]) and not a["drop"].any()


def test_the_sampler_is_deterministic_per_seed_and_shaped_like_the_data() -> None:
    torch.manual_seed(0)
    cfg = DiTConfig(dim=32, n_layers=2, n_heads=2, patch_size=2, image_size=8, in_channels=1, num_classes=10)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():  # a model that is not the zero map (adaLN-Zero starts as one)
            p.add_(0.05 * torch.randn_like(p))
    labels = torch.tensor([1, 2, 3])
    x = sample(model, labels, [5, 6, 7], steps=3, guidance=2.0)
    assert x.shape == (3, 1, 8, 8)
    assert torch.equal(x, sample(model, labels, [5, 6, 7], steps=3, guidance=2.0))
    assert torch.equal(x[1:], sample(model, labels[1:], [6, 7], steps=3, guidance=2.0))  # a sample depends on its own seed
    assert not torch.equal(x, sample(model, labels, [5, 6, 8], steps=3, guidance=2.0))
    assert not torch.equal(x, sample(model, labels, [5, 6, 7], steps=3, guidance=1.0))  # guidance matters


def test_fid_f_is_zero_for_a_set_against_itself_and_grows_with_a_shift() -> None:
    pytest.importorskip("scipy", reason="FID-F uses scipy.linalg.sqrtm: pip install scipy")
    feats = np.random.default_rng(0).standard_normal((2000, 8))
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(feats, feats + 0.5) == pytest.approx(8 * 0.25, rel=1e-6)  # a mean shift: |dmu|^2
    assert frechet_distance(feats, 2 * feats) > 1.0  # a wider spread


def test_eval_json_generate_and_bad_class(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny DiT judged by a tiny ViT: samples.png at the end, eval --json keys, predictions, generate, --class 11."""
    pytest.importorskip("scipy", reason="FID-F uses scipy.linalg.sqrtm: pip install scipy")
    judge = tiny("vit", tmp_path, "judge", 10, n_layers=1)
    train(judge, **quiet)
    gen = tiny("dit", tmp_path, "gen", 2, classifier=judge.run_dir, sample_steps=2)
    train(gen, **quiet)
    assert (gen.run_dir / "samples.png").stat().st_size > 0
    capsys.readouterr()
    preds = tmp_path / "p.jsonl"
    assert main(["eval", str(gen.run_dir), "--json", "--limit", "20", "--predictions", str(preds)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["metrics"]) == {"fid_f", "class_agreement"}
    assert set(out["baselines"]) == {"train_images", "mean_image"}
    assert all(set(b) == {"fid_f", "class_agreement"} for b in out["baselines"].values())
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 20 and set(rows[0]) == {"input", "reference", "output"} and rows[0]["input"]["seed"] == 0

    monkeypatch.chdir(tmp_path)
    assert main(["generate", str(gen.run_dir), "--class", "3", "--n", "4", "--out", "grid.png"]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 0 and "class 3" in capsys.readouterr().out
    assert main(["generate", str(gen.run_dir), "--class", "11", "--out", "bad.png"]) == 2
    err = capsys.readouterr().err
    assert "--class 11" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "bad.png").exists()


def test_a_missing_classifier_is_one_line(tmp_path: Path) -> None:
    cfg = tiny("dit", tmp_path, "nojudge", classifier=tmp_path / "nowhere")
    train(cfg, **quiet)
    from largo.checkpoint.restore import restore
    from largo.distributed.env import DistEnv
    from largo.train.run import build_task

    model, run_cfg, _ = restore(cfg.run_dir)
    task = build_task(run_cfg, DistEnv(device=torch.device("cpu")), **quiet)
    with pytest.raises(ConfigError, match="largo train vision_fashion"):
        get_spec("dit").results(model, task, device=torch.device("cpu"), precision="fp32", limit=4, **quiet)
