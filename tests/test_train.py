"""The training loop against invariants: it learns, accumulation is exact, resume is bitwise exact."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from largo.checkpoint.restore import restore
from largo.checkpoint.store import complete_checkpoints
from largo.data.text import TextLMData
from largo.models.generate import generate
from largo.models import build_model
from largo.models.gpt import GPTConfig as ModelConfig
from largo.observe.metrics import read_metrics
from largo.models.loss import summed_loss
from largo.train.run import train
from tests.conftest import tiny_config

quiet = dict(log=lambda _m: None)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    model, _, _ = restore(run_dir)
    return model.state_dict()


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl", "train")]


def test_overfits_one_batch(tiny_data: Path) -> None:
    torch.manual_seed(0)
    data = TextLMData(tiny_data, seq_len=32, seed=0)
    x, y = data.train_rows(range(4))
    model = build_model(ModelConfig(vocab_size=data.vocab_size, dim=64, n_layers=2, n_heads=4, max_seq_len=32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss = summed_loss(model(x), y) / y.numel()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 < first


def test_accumulation_equals_one_big_batch(tmp_path: Path, tiny_data: Path) -> None:
    big = tiny_config(tmp_path / "a", tiny_data, train={"micro_batch": 8})
    acc = tiny_config(tmp_path / "b", tiny_data, train={"micro_batch": 2})
    a, b = _weights(Path(train(big, **quiet)["run_dir"])), _weights(Path(train(acc, **quiet)["run_dir"]))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(_losses(big.run_dir)), torch.tensor(_losses(acc.run_dir)), rtol=1e-5, atol=1e-6)


def test_resume_is_bitwise_identical(tmp_path: Path, tiny_data: Path) -> None:
    whole = tiny_config(tmp_path / "whole", tiny_data, train={"steps": 8}, checkpoint={"every": 3})
    part = tiny_config(tmp_path / "part", tiny_data, train={"steps": 8}, checkpoint={"every": 3})
    train(whole, **quiet)
    assert train(part, stop_at=5, **quiet)["stopped"]
    train(part, resume="auto", **quiet)
    wa, wb = _weights(whole.run_dir), _weights(part.run_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _losses(whole.run_dir) == _losses(part.run_dir) and len(_losses(part.run_dir)) == 8
    assert [p.name for p in complete_checkpoints(part.run_dir / "checkpoints")] == ["step_0000003", "step_0000005", "step_0000006", "step_0000008"]


def test_same_seed_same_run_and_bf16_learns(tmp_path: Path, tiny_data: Path) -> None:
    a = tiny_config(tmp_path / "a", tiny_data, train={"precision": "bf16"})
    b = tiny_config(tmp_path / "b", tiny_data, train={"precision": "bf16"})
    train(a, **quiet)
    train(b, **quiet)
    assert _losses(a.run_dir) == _losses(b.run_dir)
    assert _losses(a.run_dir)[-1] < _losses(a.run_dir)[0]


def test_muon_and_wsd_learn(tmp_path: Path, tiny_data: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_data, optim={"name": "muon", "schedule": "wsd", "lr": 1e-2}, train={"steps": 10})
    train(cfg, **quiet)
    losses = _losses(cfg.run_dir)
    assert losses[-1] < losses[0] - 0.3


def test_embedding_rate_is_its_own_group_under_the_schedule() -> None:
    """optim.embed_lr_mult gives the token embeddings lr x mult, scaled by the schedule like every group; at 1 the
    groups are the two they always were (checkpoints written before the option load)."""
    from largo.config import OptimConfig
    from largo.train.optim import Schedule, build_optimizers

    model = build_model(ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, max_seq_len=16, tie_embeddings=False))
    embeds = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    cfg = OptimConfig(name="muon", lr=1e-2, warmup_steps=4, embed_lr_mult=8.0)
    adamw = build_optimizers(model, cfg)[0]
    own = [g for g in adamw.param_groups if {id(p) for p in g["params"]} == embeds]
    assert len(own) == 1 and own[0]["weight_decay"] == cfg.weight_decay
    others = [p for g in adamw.param_groups if g is not own[0] for p in g["params"]]
    assert not embeds & {id(p) for p in others}
    schedule = Schedule([adamw], cfg, total_steps=10, device=torch.device("cpu"))
    schedule.advance(torch.tensor(False))  # applied step 1 of a 4-step warmup: the multiplier is 2/5
    assert float(own[0]["lr"]) == pytest.approx(1e-2 * 8 * 2 / 5)
    assert float(adamw.param_groups[0]["lr"]) == pytest.approx(1e-2 * 2 / 5)
    assert len(build_optimizers(model, dataclasses.replace(cfg, embed_lr_mult=1.0))[0].param_groups) == 2


def test_muon_in_fp32_follows_torchs_muon() -> None:
    """largo's Muon (Newton-Schulz in fp32, for CPUs where bf16 is slow) takes torch's steps up to bf16 rounding, and in
    bf16 is torch's Muon exactly."""
    from largo.train.optim import Muon

    torch.manual_seed(0)
    start = [torch.randn(48, 32), torch.randn(32, 64)]
    grads = [[torch.randn_like(w) for w in start] for _ in range(3)]

    def trained(make) -> list[torch.Tensor]:
        params = [torch.nn.Parameter(w.clone()) for w in start]
        opt = make(params)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            opt.step()
        return [p.detach() - w for p, w in zip(params, start)]  # the updates taken

    kw = dict(lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    reference = trained(lambda ps: torch.optim.Muon(ps, **kw))
    ours = trained(lambda ps: Muon(ps, ns_dtype=torch.float32, **kw))
    for r, o in zip(reference, ours):
        assert ((o - r).norm() / r.norm()).item() < 0.03  # bf16's rounding in torch's iteration: ~1% here
        assert not torch.equal(o, r)  # the fp32 path really ran
    for r, o in zip(reference, trained(lambda ps: Muon(ps, ns_dtype=torch.bfloat16, **kw))):
        assert torch.equal(o, r)


def test_generation_is_deterministic_under_a_seed(tmp_path: Path, tiny_data: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_data)
    train(cfg, **quiet)
    model, cfg, _ = restore(cfg.run_dir)
    kwargs = dict(max_new_tokens=12, max_seq_len=cfg.model.max_seq_len, temperature=1.0, top_k=20)
    assert generate(model, [1, 2, 3], seed=4, **kwargs) == generate(model, [1, 2, 3], seed=4, **kwargs)
    assert len(generate(model, [1, 2, 3], seed=4, **kwargs)) == 15


def test_cli_eval_prints_classic_line(tmp_path: Path, tiny_data: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_data)
    train(cfg, **quiet)
    proc = subprocess.run([sys.executable, "-m", "largo", "eval", str(cfg.run_dir), "--max-batches", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith("Test Loss: ") and "| Acc: " in proc.stdout


def test_report_draws_curves(tmp_path: Path, tiny_data: Path) -> None:
    cfg = tiny_config(tmp_path, tiny_data, eval={"every": 3})
    train(cfg, **quiet)
    proc = subprocess.run([sys.executable, "-m", "largo", "report", str(cfg.run_dir)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "eval @ step 3" in proc.stdout and (cfg.run_dir / "curves.png").stat().st_size > 10_000


def _host_reads_per_step(tmp_path: Path, tiny_data: Path, monkeypatch, **optim: object) -> dict[int, int]:
    """Train 10 steps (logging at 10) counting, per step, every call that copies a tensor's value to the host."""
    import largo.data.text
    from largo.config import build_config

    cfg = tiny_config(tmp_path, tiny_data, train={"steps": 10, "log_every": 10}, eval={"every": 0}, checkpoint={"every": 0}, optim=optim)
    counts: dict[int, int] = {}
    current = [0]
    rows = largo.data.text.TextLMData.train_rows

    def train_rows(self, samples: range):
        current[0] = samples.start // cfg.train.global_batch + 1  # the step whose batch this is (1-based)
        return rows(self, samples)

    monkeypatch.setattr(largo.data.text.TextLMData, "train_rows", train_rows)
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            counts[current[0]] = counts.get(current[0], 0) + 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    train(build_config(cfg.to_dict()), **quiet)
    return counts


def test_no_host_sync_between_logging_steps(tmp_path: Path, tiny_data: Path, monkeypatch) -> None:
    """Between logging steps nothing is read back from the device (item, tolist, bool, float, int, index, numpy, cpu
    are counted per step): steps 2-9 make no read, the logging step 10 does. Step 1 reads the per-rank memory once.

    With an optimizer that cannot skip a step by itself (Muon), the host reads each step's verdict instead.
    """
    counts = _host_reads_per_step(tmp_path / "adamw", tiny_data, monkeypatch)
    assert all(counts.get(step, 0) == 0 for step in range(2, 10)), counts
    assert counts.get(10, 0) > 0  # the instrumentation sees reads where they happen
    counts = _host_reads_per_step(tmp_path / "muon", tiny_data, monkeypatch, name="muon")
    assert all(counts.get(step, 0) > 0 for step in range(2, 10)), counts


def test_compile_auto_decides_from_the_run_size(tmp_path: Path, tiny_data: Path) -> None:
    from largo.models import get_spec
    from largo.plan.estimate import COMPILE_MIN_FLOPS
    from largo.train.run import compile_mode

    cfg = tiny_config(tmp_path, tiny_data)
    spec = get_spec("gpt")
    task = spec.task(cfg.data, cfg.model, spec.prepare(cfg.data, cfg.model, log=lambda _m: None), seed=cfg.run.seed)
    cfg = dataclasses.replace(cfg, model=task.model)
    assert compile_mode(cfg, task, "none")[0] == "off"  # 6 steps of a 131k-parameter model: never pays back
    steps = int(COMPILE_MIN_FLOPS / (cfg.train.global_batch * task.flops_per_sample)) + 1
    long = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps))
    assert compile_mode(long, task, "none") == ("model", f"auto: {steps * 8 * task.flops_per_sample:.2g} training FLOPs >= 1e+13; "
                                                         "the model and its loss as one graph")
    assert compile_mode(long, task, "fsdp")[0] == "blocks"  # FSDP's hooks run between blocks
    off = dataclasses.replace(long, train=dataclasses.replace(long.train, compile="false"))
    assert compile_mode(off, task, "none") == ("off", "train.compile = false")


def test_compiled_run_trains_like_the_eager_one(tmp_path: Path, tiny_data: Path) -> None:
    """train.compile = true: the model and its loss as one graph; the same losses as eager (fp32, within rounding)."""
    runs = {}
    for mode in ("false", "true"):
        cfg = tiny_config(tmp_path / mode, tiny_data, train={"steps": 4, "compile": mode})
        train(cfg, **quiet)
        runs[mode] = _losses(cfg.run_dir)
    torch.testing.assert_close(torch.tensor(runs["true"]), torch.tensor(runs["false"]), rtol=1e-4, atol=0)
