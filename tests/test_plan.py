"""largo plan: exact counts, hand-computed FLOPs and memory, the saved-tensor and allocator references, CLI, JSON."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
import torch

from largo.presets import ROOT as PRESETS
from largo.cli import main
from largo.config import OptimConfig, load_config
from largo.errors import ConfigError
from largo.models import build_model, get_spec, trainable
from largo.models.audio import AudioConfig
from largo.models.classifier import pooled_head_bytes
from largo.models.config import ModelConfig
from largo.models.gpt import GPTConfig, head_activation_bytes
from largo.models.text_classifier import TextClassifierConfig
from largo.models.vit import ViTConfig
from largo.observe.memory import PeakMemory
from largo.plan import estimate as est
from largo.plan.devices import DEVICES, get_device, spec_for_cuda_name
from largo.plan.planner import Workload, build_plan
from largo.plan.report import plan_json
from largo.plan.sizes import MODEL_SIZES
from largo.precision import autocast
from largo.train.optim import build_optimizers
from tests.conftest import tiny_config

GOLDEN = Path(__file__).parent / "golden" / "plan_tiny_h100.json"
# conftest's tiny shape: hidden = 8/3 * 64 = 170 -> rounded up to 192; kv width 2 heads * 16 = 32
TINY = GPTConfig(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)


def test_tiny_params_and_flops_by_hand() -> None:
    block = (64 * 64 + 2 * 64 * 32 + 64 * 64) + 3 * 64 * 192 + 2 * 64  # q,k,v,o + SwiGLU + 2 norms = 49,280
    counts = est.count_params(TINY)
    assert counts.per_block == block == 49_280
    assert counts.total == 512 * 64 + 2 * block + 64 == 131_392  # tied head counted once
    assert counts.embedding == 32_768
    f = est.flops(TINY, 32, tokens=1000)
    assert f["per_token"] == 6 * (2 * block + 512 * 64) + 12 * 2 * 64 * 32 == 837_120
    assert f["forward_per_token"] + f["backward_per_token"] == f["per_token"]
    assert f["forward_per_token"] == 837_120 // 3
    assert f["total"] == 837_120 * 1000


def test_tiny_memory_components_by_hand() -> None:
    m = est.memory(TINY, seq_len=32, micro_batch=4, accum_steps=1, layout=est.LAYOUTS["fp32"], optimizer="adamw")
    n, T = 131_392, 4 * 32
    assert (m.params, m.grads, m.optimizer) == (4 * n, 4 * n, 8 * n)
    # per token per block in fp32: 32 d + 8 kv + 16 hidden + 4 heads + 8 = 2048 + 256 + 3072 + 16 + 8
    assert est.block_activation_bytes(TINY, T, 32, est.LAYOUTS["fp32"]) == T * 5400 == 691_200
    # head: 12 d + 4 V (fp32 log-softmax) + 4 (rstd) + 8 (targets) + 8 (input ids)
    assert head_activation_bytes(TINY, T, est.LAYOUTS["fp32"]) == T * (12 * 64 + 4 * 512 + 20)
    rope = 2 * 32 * 16 * 4
    loss_backward = 12 * n + rope + 2 * 691_200 + T * 2836 + 2 * T * 512 * 4  # logits already freed
    assert m.peak_phase == "loss backward"
    assert m.peak == loss_backward + est.RUNTIME_WORKSPACE_BYTES
    assert m.grads_at_peak == 0  # no accumulation: the peak comes before any gradient exists
    assert m.params + m.grads_at_peak + m.optimizer + m.activations + m.temporaries == m.peak - rope


def test_optimizer_and_layout_bytes() -> None:
    counts = est.count_params(TINY)
    assert est.optimizer_bytes(counts, "adamw", est.LAYOUTS["mixed"]) == 12 * counts.total  # master + m + v
    muon = est.optimizer_bytes(counts, "muon", est.LAYOUTS["autocast"])
    assert muon == 4 * counts.hidden_matrices + 8 * (counts.total - counts.hidden_matrices)
    assert counts.hidden_matrices == 2 * (49_280 - 128)
    assert est.optimizer_bytes(counts, "sgd", est.LAYOUTS["fp32"]) == 4 * counts.total
    for lay in est.LAYOUTS.values():  # 16 bytes per parameter with Adam in every layout
        assert lay.param_bytes + lay.grad_bytes + est.optimizer_bytes(counts, "adamw", lay) / counts.total == 16
    fsdp = est.memory(TINY, seq_len=32, micro_batch=1, accum_steps=1, layout=est.LAYOUTS["mixed"], strategy="fsdp", shards=8)
    assert fsdp.params + fsdp.grads + fsdp.optimizer == pytest.approx(16 * counts.total / 8, abs=3)


def _saved_bytes_per_block(cfg: ModelConfig, precision: str, bf16_weights: bool) -> int:
    """Bytes autograd saves inside the last block (new storages only), for one forward of (4, t) tokens."""
    torch.manual_seed(0)
    model = build_model(cfg)
    if bf16_weights:
        model = model.to(torch.bfloat16)
    owned = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, tuple[bool, int]] = {}
    inside = [False]
    model.trunk.blocks[-1].register_forward_pre_hook(lambda *_: inside.__setitem__(0, True))
    model.trunk.blocks[-1].register_forward_hook(lambda *_: inside.__setitem__(0, False))

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in owned and ptr not in seen:
            seen[ptr] = (inside[0], t.untyped_storage().nbytes())
        return t

    x = torch.randint(0, cfg.vocab_size, (4, cfg.max_seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(torch.device("cpu"), precision):
        model(x)
    return sum(nbytes for inside_block, nbytes in seen.values() if inside_block)


@pytest.mark.parametrize("layout", ["fp32", "autocast", "mixed"])
@pytest.mark.parametrize("kv", [1, 4])
def test_block_activations_equal_what_autograd_saves(layout: str, kv: int) -> None:
    cfg = GPTConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, n_kv_heads=kv, max_seq_len=24, mlp_hidden=160)
    lay = est.LAYOUTS[layout]
    saved = _saved_bytes_per_block(cfg, "fp32" if layout == "fp32" else "bf16", bf16_weights=layout == "mixed")
    casts = 2 * (cfg.block_params() - 2 * cfg.dim) if lay.autocast else 0  # bf16 weight copies autograd keeps
    assert est.block_activation_bytes(cfg, 4 * 24, 24, lay) + casts == saved


def _profiled_peak(prof: torch.profiler.profile) -> int:
    """Peak bytes live in the CPU allocator, from a profile(profile_memory=True) session's allocation events."""
    from torch._C._profiler import _EventType

    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation:
            events.append((e.start_time_ns, e.extra_fields.ptr, e.extra_fields.alloc_size))
    live: dict[int, int] = {}  # only blocks allocated inside the window (the profiler's own total spans sessions)
    now = peak = 0
    for _, ptr, size in sorted(events):
        if size > 0:
            live[ptr] = size
            now += size
        elif ptr in live:
            now -= live.pop(ptr)
        peak = max(peak, now)
    return peak


def _profiled_steps(cfg: ModelConfig, precision: str, micro_batches: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]) -> int:
    """Exact CPU allocator peak over model build + 3 training steps of micro_batches(), from the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    spec = get_spec(cfg.arch)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model = build_model(cfg)
        opts = build_optimizers(model, OptimConfig())
        for _ in range(3):  # the loop's step: forward and the spec's summed loss under autocast, backward, clip, step
            for x, y in micro_batches():
                with autocast(torch.device("cpu"), precision):
                    loss = spec.loss(model, x, y) / y.numel()
                loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            for opt in opts:
                opt.step()
                opt.zero_grad(set_to_none=True)
    return _profiled_peak(prof)


def _allocator_peak(cfg: ModelConfig, precision: str, micro_batch: int, accum: int) -> int:
    """Exact peak of the CPU allocator over model build + 3 GPT training steps on fixed token batches."""
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, cfg.vocab_size, (micro_batch, cfg.max_seq_len), generator=g),) * 2 for _ in range(accum)]
    return _profiled_steps(cfg, precision, lambda: batches)


@pytest.mark.parametrize("precision,accum,checkpointing", [("fp32", 1, False), ("bf16", 2, False), ("fp32", 1, True)])
def test_peak_matches_the_allocator(precision: str, accum: int, checkpointing: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if checkpointing:  # recompute every block in backward, as activation checkpointing applied from outside does
        from torch.utils.checkpoint import checkpoint

        from largo.models.block import Block

        plain = Block.forward
        monkeypatch.setattr(Block, "forward", lambda self, *a, **kw: checkpoint(plain, self, *a, use_reentrant=False, **kw))
    measured = _allocator_peak(TINY, precision, micro_batch=4, accum=accum)
    m = est.memory(TINY, seq_len=32, micro_batch=4, accum_steps=accum, layout=est.layout_for(precision), checkpointing=checkpointing)
    assert m.peak - est.RUNTIME_WORKSPACE_BYTES == pytest.approx(measured, rel=0.02)


# Tiny classifiers: (model, micro-batch, positions per sample, audio samples per clip).
CLASSIFIERS = {
    "vit": (ViTConfig(dim=64, n_layers=2, n_heads=4, max_seq_len=32, image_size=16, in_channels=3,
                      patch_size=4, num_classes=5), 32, 16, 0),
    "vit-cls": (ViTConfig(dim=64, n_layers=2, n_heads=4, max_seq_len=32, image_size=16, in_channels=3,
                          patch_size=4, num_classes=5, pooling="cls"), 32, 17, 0),
    "audio": (AudioConfig(dim=64, n_layers=2, n_heads=4, max_seq_len=32, n_mels=16, num_classes=5), 16, 26, 8000),
    "text_classifier": (TextClassifierConfig(vocab_size=300, dim=64, n_layers=2, n_heads=4, max_seq_len=32,
                                             num_classes=3), 16, 32, 0),
}


def _classifier_inputs(cfg: ModelConfig, micro_batch: int, clip: int, g: torch.Generator) -> torch.Tensor:
    """A micro-batch as the data pipeline hands it over: fp32 images or waveforms, or int64 ids padded with 0."""
    if cfg.arch == "vit":
        return torch.randn(micro_batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g)
    if cfg.arch == "audio":
        return 0.1 * torch.randn(micro_batch, clip, generator=g)
    ids = torch.randint(1, cfg.vocab_size, (micro_batch, cfg.max_seq_len), generator=g)
    ids[: micro_batch // 2, -cfg.max_seq_len // 4 :] = 0  # half the rows end in padding
    return ids


def _classifier_allocator_peak(cfg: ModelConfig, precision: str, micro_batch: int, accum: int, clip: int) -> int:
    """Exact CPU allocator peak over model build + 3 classifier steps; each micro-batch is made where the loop makes it."""
    g = torch.Generator().manual_seed(0)

    def micro_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(accum):  # one micro-batch alive at a time, as on an accelerator (the loop's x lives until the next)
            yield _classifier_inputs(cfg, micro_batch, clip, g), torch.randint(0, cfg.num_classes, (micro_batch,), generator=g)

    return _profiled_steps(cfg, precision, micro_batches)


@pytest.mark.parametrize("name,precision,accum", [("vit", "fp32", 1), ("vit", "bf16", 2), ("vit-cls", "fp32", 1),
                                                  ("audio", "fp32", 1), ("audio", "bf16", 1),
                                                  ("text_classifier", "fp32", 1), ("text_classifier", "bf16", 2)])
def test_classifier_peak_matches_the_allocator(name: str, precision: str, accum: int) -> None:
    cfg, micro_batch, positions, clip = CLASSIFIERS[name]
    measured = _classifier_allocator_peak(cfg, precision, micro_batch, accum, clip)
    m = est.memory(cfg, seq_len=positions, micro_batch=micro_batch, accum_steps=accum, layout=est.layout_for(precision))
    # pooled head (b x classes logits), stems and the input batch: a GPT head over the vocabulary was 11-21% off here
    assert m.peak - est.RUNTIME_WORKSPACE_BYTES == pytest.approx(measured, rel=0.05)


def test_classifier_head_is_pooled_and_stems_are_counted() -> None:
    """By hand for the ViT: the head keeps per-token norm tensors but one (b, d) input; the stem its bf16 casts."""
    cfg, lay = CLASSIFIERS["vit"][0], est.LAYOUTS["autocast"]
    b, t, d = 32, 16, 64
    terms = get_spec("vit").memory_terms(cfg, b, t, lay)
    # bf16 residual after the conv stem: fp32 norm input (4) + bf16 output (2) per d, rstd (4); pooled bf16 (b, d)
    assert terms.head_saved == pooled_head_bytes(cfg, b, t, lay, residual=2, masked=False) == b * t * (6 * d + 4) + b * d * 2
    assert terms.inputs == b * (4 * 3 * 16 * 16 + 8)  # fp32 pixels + int64 label
    assert terms.stem_saved == 2 * b * 3 * 16 * 16 + 2 * 3 * 4 * 4 * d  # bf16 images + patch weight
    m = est.memory(cfg, seq_len=t, micro_batch=b, accum_steps=1, layout=lay)
    trunk = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(ModelConfig) if f.name != "arch"}
    gpt = est.memory(GPTConfig(**trunk, vocab_size=5), seq_len=t, micro_batch=b, accum_steps=1, layout=lay)
    assert m.phases["loss backward"] < gpt.phases["loss backward"]  # no (b t x V) log-softmax nor its gradients


def test_every_preset_counts_like_the_built_module() -> None:
    shapes = {f"--model {k}": s.model for k, s in MODEL_SIZES.items()}
    for path in sorted(PRESETS.glob("*.toml")):
        cfg = load_config(path)
        decided = {"vocab_size": getattr(cfg.data, "vocab_size", 0) or 64, "num_classes": 10, "in_channels": 1,
                   "image_size": 4 * getattr(cfg.model, "patch_size", 1)}  # fields the data decides, as the recipes' data would
        shapes[str(path)] = dataclasses.replace(cfg.model, **{k: v for k, v in decided.items() if getattr(cfg.model, k, None) == 0})
    for name, cfg in shapes.items():
        with torch.device("meta"):
            module = get_spec(cfg.arch).build(cfg)
        assert est.count_params(cfg).total == trainable(module), name
        assert est.count_params(cfg).per_block == cfg.block_params(), name
    assert est.count_params(MODEL_SIZES["7b"].model).total == 6_738_415_616  # Llama-2 7B as published
    assert est.count_params(MODEL_SIZES["13b"].model).total == 13_015_864_320
    assert est.count_params(MODEL_SIZES["70b"].model).total == 68_976_648_192


def _tiny_workload() -> Workload:
    return Workload("tiny", TINY, global_batch=16, micro_batch=0, tokens=2_000_000, tokens_source="given", layout=est.LAYOUTS["autocast"],
                    optimizer="adamw", devices=2, device=get_device("h100"), mfu=0.4, mfu_source="given")


def test_plan_json_is_stable() -> None:
    text = plan_json(build_plan(_tiny_workload()))
    assert text == plan_json(json.loads(text))  # keys sorted, round-trips
    assert json.loads(text) == json.loads(GOLDEN.read_text()), "regenerate tests/golden/plan_tiny_h100.json if the change is intended"


def test_bad_device_name_lists_valid_ones(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="valid: cpu, a100-40g"):
        get_device("h1000")
    assert main(["plan", "--model", "7b", "--device-type", "h1000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "h1000" in err and "h100" in err.replace("h1000", "")
    assert spec_for_cuda_name("NVIDIA H100 80GB HBM3") is DEVICES["h100"]
    assert spec_for_cuda_name("NVIDIA H100 PCIe") is DEVICES["h100-pcie"]
    assert spec_for_cuda_name("NVIDIA A100-SXM4-40GB") is DEVICES["a100-40g"]


def test_7b_on_64_h100_matches_published_figures(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["plan", "--model", "7b", "--devices", "64", "--device-type", "h100", "--tokens", "1.4e11", "--mfu", "0.4", "--json"]
    assert main([*argv, "--layout", "mixed"]) == 0
    plan = json.loads(capsys.readouterr().out)
    n = plan["params"]["total"]
    assert n == pytest.approx(6.74e9, rel=0.01)
    bpp = plan["layout"]["bytes_per_param"]
    assert (bpp["params"], bpp["grads"], bpp["optimizer"]) == (2, 2, 12)  # mixed-precision Adam: 16 bytes/param
    fsdp = plan["memory"]["fsdp"]
    assert fsdp["params"] + fsdp["grads"] + fsdp["optimizer"] == pytest.approx(16 * n / 64, abs=3)  # ZeRO-3
    assert plan["data"]["chinchilla_tokens"] == 20 * n
    assert plan["data"]["ratio_to_chinchilla"] == pytest.approx(1.4e11 / (20 * n))
    matmul = n - plan["params"]["embedding"] - 4096  # the untied head computes; the final norm does not
    assert plan["flops"]["per_token"] == 6 * matmul + 12 * 32 * 4096 * 4096
    assert plan["recommendation"]["strategy"] == "fsdp" and not plan["memory"]["ddp"]["fits"]
    t = plan["time"]
    assert t["step_s"] == pytest.approx(plan["flops"]["per_token"] * 1024 * 4096 / (64 * 989e12 * 0.4))
    assert t["device_hours"] == pytest.approx(t["wall_s"] * 64 / 3600)


def test_time_calibrated_on_a_run_reproduces_it() -> None:
    flops, attention, speed, peak, step_s = 1e12, 2e11, 0.25, 1e12, 3.0
    dense = est.dense_mfu(flops / (peak * step_s), flops, attention, speed)  # what one measured run calibrates
    assert dense == pytest.approx((flops + attention * 3) / (peak * step_s))  # attention FLOPs cost 4x here
    kw = dict(steps=10, peak_flops=peak, mfu=dense, attention_flops_per_step=attention, attention_speed=speed)
    t = est.timing(flops, devices=1, checkpointing=False, **kw)
    assert t["step_s"] == pytest.approx(step_s) and t["mfu_model"] == pytest.approx(flops / (peak * step_s))
    assert t["wall_s"] == pytest.approx(30.0) and t["device_hours"] == pytest.approx(30 / 3600)
    assert est.timing(flops, devices=2, checkpointing=True, **kw)["step_s"] == pytest.approx(step_s / 2 * 4 / 3)  # + a forward


def test_nothing_fits_says_so() -> None:
    w = _tiny_workload()
    import dataclasses

    small = dataclasses.replace(w, device=dataclasses.replace(w.device, memory_bytes=10 << 20), devices=1)
    rec = build_plan(small)["recommendation"]
    assert rec["fits"] is False and "usable" in rec["reasons"]["fits"]


def test_largest_micro_batch_is_chosen() -> None:
    plan = build_plan(_tiny_workload())
    for opt in plan["memory"].values():
        assert opt["fits"] and opt["micro_batch"] == 8 and opt["accum_steps"] == 1  # 16 sequences over 2 devices
    limit = plan["memory"]["ddp"]["peak"]  # shrink the device until micro-batch 8 no longer fits
    import dataclasses

    w = _tiny_workload()
    tight = dataclasses.replace(w, device=dataclasses.replace(w.device, memory_bytes=int((limit - 1) / est.USABLE_FRACTION)))
    ddp = build_plan(tight)["memory"]["ddp"]
    assert ddp["micro_batch"] < 8 and ddp["micro_batch"] * ddp["accum_steps"] == 8


def test_data_advice_and_epochs() -> None:
    under = est.data_budget(1000, 2000, dataset_tokens=500, flops_total=6 * 1000 * 2000)
    assert under["ratio_to_chinchilla"] == 0.1 and under["epochs"] == 4 and "Under-trained" in under["advice"]
    assert math.isclose(under["compute_optimal_params"], math.sqrt(6 * 1000 * 2000 / 120))
    assert "compute-optimal" in est.data_budget(1000, 20_000, None, 1.0)["advice"]
    assert "Past compute-optimal" in est.data_budget(1000, 100_000, None, 1.0)["advice"]


def test_peak_memory_sees_a_known_allocation() -> None:
    mem = PeakMemory(torch.device("cpu"))
    if mem.method == "none":
        pytest.skip("no way to read process memory on this platform")
    mem.start()
    block = torch.ones(64 << 18)  # 64 MiB of fp32, written so it is resident
    assert mem.wait_for_samples(2)  # a reading that began after the allocation, however busy the machine
    del block
    peak = mem.stop()
    assert 64 << 20 <= peak < (64 + 16) << 20


def test_training_writes_plan_vs_measured(tmp_path: Path, tiny_data: Path) -> None:
    import subprocess
    import sys

    # A run is its own process: the heap baseline must not inherit what earlier tests left behind.
    cfg = tiny_config(tmp_path, tiny_data, train={"steps": 3})
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    proc = subprocess.run([sys.executable, "-m", "largo", "train", str(tmp_path / "cfg.json")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((cfg.run_dir / "plan_vs_measured.json").read_text())
    rows = {r["quantity"]: r for r in saved["rows"]}
    assert rows["params"]["estimate"] == rows["params"]["measured"] == 131_392
    assert rows["peak_bytes"]["measured"] > 4 * 131_392 * 3  # at least weights + Adam states
    assert saved["strategy"] == "none" and "plan vs measured" in proc.stdout
    assert "| peak_bytes |" in (cfg.run_dir / "plan_vs_measured.md").read_text()


def test_mfu_history_uses_the_nearest_model_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from largo.observe import throughput

    monkeypatch.setattr(throughput, "_MFU_HISTORY", tmp_path / "mfu_history.json")
    assert throughput.measured_mfu("cpu", "bf16", 10**6) is None
    throughput.record_mfu("cpu", "bf16", 0.40, 4_000_000)
    throughput.record_mfu("cpu", "bf16", 0.002, 100_000)  # a tiny test model's MFU must not set the 4M model's plan
    assert throughput.measured_mfu("cpu", "bf16", 5_000_000) == 0.40
    assert throughput.measured_mfu("cpu", "bf16", 50_000) == 0.002
    assert throughput.measured_mfu("cpu", "fp32", 5_000_000) is None
    assert throughput.measured_mfu("cpu", "bf16", 135_000_000) is None  # 30x the nearest run: the assumption, not its MFU


@pytest.mark.parametrize("arch", ["gpt", "vit"])
def test_only_gpt_runs_feed_the_mfu_history(arch: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from largo.config import build_config
    from largo.observe import throughput
    from largo.plan.check import check_run

    monkeypatch.setattr(throughput, "_MFU_HISTORY", tmp_path / "mfu_history.json")
    monkeypatch.setattr(throughput, "attention_speed", lambda *_a: 1.0)  # not measured in a unit test
    model_cfg = {"arch": arch, "dim": 64, "n_layers": 2, "n_heads": 4, "max_seq_len": 32}
    model_cfg |= {"image_size": 16, "in_channels": 3, "patch_size": 4, "num_classes": 5} if arch == "vit" else {"vocab_size": 512}
    cfg = build_config({"model": model_cfg, "train": {"global_batch": 8, "micro_batch": 8}})
    check_run(cfg, tmp_path, model=build_model(cfg.model), world=1, device=torch.device("cpu"), peak_flops_per_device=1e11,
              seq_len=16 if arch == "vit" else 32, peak_bytes=1 << 20, memory_method="test", step_s=0.01, mfu=0.3, steps_run=10)
    # classifiers have their own stems and heads: their MFU would set the default of GPT plans on this device
    recorded = throughput.measured_mfu("cpu", cfg.train.precision, est.count_params(cfg.model).total)
    assert (recorded is not None) == (arch == "gpt")


def test_a_run_without_recompute_is_planned_without_it() -> None:
    from largo.config import build_config
    from largo.plan.check import _run_strategy

    assert _run_strategy(build_config({}), 1) == ("none", False)  # parallel.ac = "none" is a truthy string
    assert _run_strategy(build_config({"parallel": {"ac": "full"}}), 2) == ("ddp", True)


def test_a_peak_measured_under_load_is_replaced_by_a_higher_remeasurement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from largo.observe import throughput

    cpu = torch.device("cpu")
    key = throughput._device_key(cpu, "fp32")
    monkeypatch.setattr(throughput, "_CACHE", tmp_path / "peak_flops.json")
    monkeypatch.setattr(throughput, "_load", lambda: None)  # a quiet machine: measurements are cached
    throughput._CACHE.write_text(json.dumps({key: 1e9}))  # as if measured while another job held the cores
    monkeypatch.setattr(throughput, "measure_gemm_flops", lambda *_a, **_k: 5e10)
    assert throughput.peak_flops(cpu, "fp32") == 1e9  # the cache is trusted until a run proves it wrong
    assert throughput.remeasure_peak(cpu, "fp32") == 5e10 == throughput.peak_flops(cpu, "fp32")
    monkeypatch.setattr(throughput, "measure_gemm_flops", lambda *_a, **_k: 2e10)  # now the CPU is busy
    assert throughput.remeasure_peak(cpu, "fp32") == 5e10  # a lower reading never replaces a higher one


@pytest.mark.parametrize("precision,accum,rows", [("fp32", 1, 32), ("bf16", 1, 16), ("fp32", 2, 16)])
def test_chunked_head_peak_matches_the_allocator(precision: str, accum: int, rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the logits over the budget the head and loss run in chunks; the planner models that path as well (2%)."""
    import largo.models.loss

    monkeypatch.setattr(largo.models.loss, "LOGITS_BUDGET_BYTES", 4 * TINY.vocab_size * rows)  # 128 tokens -> 4 or 8 chunks
    measured = _allocator_peak(TINY, precision, micro_batch=4, accum=accum)
    m = est.memory(TINY, seq_len=32, micro_batch=4, accum_steps=accum, layout=est.layout_for(precision))
    assert m.peak - est.RUNTIME_WORKSPACE_BYTES == pytest.approx(measured, rel=0.02)
    monkeypatch.undo()  # the same step with the logits in one piece needs more
    assert m.peak < est.memory(TINY, seq_len=32, micro_batch=4, accum_steps=accum, layout=est.layout_for(precision)).peak


# ---- the step probe: largo plan times the run's own steps on this machine ------------------------------

def test_plan_times_the_runs_steps_and_the_run_is_compared_with_that(tmp_path: Path, tiny_data: Path,
                                                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from largo.observe import throughput
    from largo.plan.planner import workload_from_config
    from largo.train import probe
    from largo.train.run import train

    monkeypatch.setattr(throughput, "_CACHE", tmp_path / "cache" / "peak_flops.json")  # no probe of another test is found
    cfg = tiny_config(tmp_path, tiny_data, train={"steps": 9, "log_every": 3, "peak_tflops": 0.0})
    said: list[str] = []
    train(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name="unplanned")), log=said.append)
    assert said[-1].endswith("`largo plan` on this config first times its steps here")  # not measured yet: says how
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    assert main(["plan", str(tmp_path / "cfg.json"), "--json"]) == 0
    out = capsys.readouterr().out
    plan = json.loads(out[out.index("{"):])
    entry = probe.probe_step(cfg, log=lambda _m: None)  # from the cache now
    assert entry["method"].startswith("measured: median of 5 timed steps of this run's step on this machine, compile off")
    assert plan["time"]["mfu_source"] == entry["method"]
    assert plan["time"]["step_s"] == pytest.approx(entry["step_s"], rel=1e-9)  # the configured step: timed, not scaled

    monkeypatch.setattr(probe, "_time_steps", lambda *_a: pytest.fail("measured again instead of reading the cache"))
    assert probe.probe_step(cfg, log=lambda _m: None) == entry
    w = workload_from_config(cfg, devices=1, device=get_device("cpu"))
    assert w.mfu_source == entry["method"]
    other = workload_from_config(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, micro_batch=8)), devices=1,
                                 device=get_device("cpu"))
    assert other.mfu_source != entry["method"]  # another batch split is another step: not this measurement

    assert entry["peak_bytes"] > 0 and plan["configured"]["measured_peak"] == entry["peak_bytes"]  # memory measured too

    said: list[str] = []
    train(cfg, log=said.append)
    assert "largo plan` on this config first times" not in said[-1]  # measured: nothing to suggest
    saved = json.loads((cfg.run_dir / "plan_vs_measured.json").read_text())
    assert saved["mfu_source"] == entry["method"]  # the run's own table compares with the timed prediction
    assert saved["peak_source"].startswith("measured by largo plan") and saved["modelled_peak_bytes"] > 0
    peak = next(r for r in saved["rows"] if r["quantity"] == "peak_bytes")
    assert peak["estimate"] == entry["peak_bytes"]


def test_a_step_too_slow_to_time_is_scaled_from_a_proxy() -> None:
    from largo.config import build_config
    from largo.train.probe import BUDGET_S, TIMED_STEPS, WARM_STEPS, _proxy

    cfg = build_config({"model": {"vocab_size": 512, "n_layers": 8}, "train": {"global_batch": 64, "micro_batch": 16}})
    per_sample_layer = BUDGET_S / (WARM_STEPS + TIMED_STEPS) / 2  # two sample-layers fill the budget
    guess = lambda c: per_sample_layer * c.train.global_batch * c.model.n_layers  # noqa: E731
    probe, changes = _proxy(cfg, 32, guess, lambda _c: True)
    assert (probe.train.global_batch, probe.train.micro_batch, probe.model.n_layers) == (1, 1, 2)
    assert changes == ["1 micro-step of 4", "micro-batch 1 of 16", "2 of 8 layers"]
    same, none = _proxy(cfg, 32, lambda _c: 0.0, lambda _c: True)
    assert same == cfg and none == []
    small, why = _proxy(cfg, 32, lambda _c: 0.0, lambda c: c.train.micro_batch <= 4)  # fits in memory only at 4
    assert (small.train.global_batch, small.train.micro_batch, why) == (4, 4, ["1 micro-step of 4", "micro-batch 4 of 16"])


def test_a_proxy_measurement_scales_with_flops_and_recompute() -> None:
    from largo.plan.measured import measured_dense_mfu

    entry = {"step_s": 2.0, "flops": 1e12, "attention_flops": 1e11, "checkpointing": False, "method": "m"}
    dense = measured_dense_mfu(entry, 1e12, 0.5)
    t = est.timing(4e12, steps=1, devices=2, peak_flops=1e12, mfu=dense, checkpointing=False, attention_flops_per_step=4e11,
                   attention_speed=0.5)
    assert t["step_s"] == pytest.approx(2.0 * 4 / 2)  # 4x the FLOPs over 2 devices
    recomputed = measured_dense_mfu({**entry, "checkpointing": True}, 1e12, 0.5)
    t = est.timing(1e12, steps=1, devices=1, peak_flops=1e12, mfu=recomputed, checkpointing=True, attention_flops_per_step=1e11,
                   attention_speed=0.5)
    assert t["step_s"] == pytest.approx(2.0)  # timed with recompute: not counted twice
