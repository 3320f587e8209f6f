"""Estimates before training: exact parameters, FLOPs, data budget, memory per device and time.

Memory follows the tensors this model really keeps (counted with autograd's saved-tensor hooks on
CPU and checked against the allocator): see docs/plan.md for the derivation of each coefficient.
The blocks are counted here; what an architecture adds around them (stem, head, inputs, buffers)
comes from its spec's memory_terms (models/<arch>.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


from largo.errors import ConfigError
from largo.models import ParamCount, count_params, get_spec
from largo.models.config import ModelConfig
from largo.models.layers import uses_math_attention
from largo.precision import LAYOUTS, Layout, layout_for

__all__ = ["LAYOUTS", "Layout", "ParamCount", "count_params", "layout_for"]  # re-exported: the planner's vocabulary

CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022
RUNTIME_WORKSPACE_BYTES = 32 << 20  # math-library workspaces (oneDNN/MKL, cuBLAS) outside the tensors
STRATEGIES = ("none", "ddp", "fsdp")
OPTIMIZERS = ("adamw", "muon", "sgd")


# Saved activation bytes per token per block, as (per d, per kv width, per MLP hidden): from the
# tensors autograd keeps for this block (fp32 norms, three casts of the attention input, rotary
# products, SDPA q/k/v/out, four MLP hidden tensors). Plus 4 bytes per head (SDPA logsumexp) and
# 8 (two RMSNorm rstd). Flash/memory-efficient SDPA never stores the (t x t) scores.
ACT_COEFFS = {"fp32": (32, 8, 16), "autocast": (30, 4, 8), "mixed": (20, 4, 8)}
# ---------------------------------------------------------------- parameters and FLOPs


def flops(cfg: ModelConfig, seq_len: int, tokens: int) -> dict[str, float]:
    """Training FLOPs: 6N + 12 L d T per token (N = matmul weights, head included), forward 1/3."""
    per_token = get_spec(cfg.arch).flops_per_token(cfg, seq_len)
    total = float(per_token) * tokens
    return {
        "per_token": per_token,
        "forward_per_token": per_token // 3,
        "backward_per_token": per_token - per_token // 3,
        "attention_per_token": 12 * cfg.n_layers * cfg.dim * seq_len,
        "total": total,
        "pf_days": total / (1e15 * 86400),
    }


def data_budget(n_params: int, tokens: int, dataset_tokens: int | None, flops_total: float) -> dict[str, object]:
    """Config budget vs Chinchilla's ~20 tokens/param, with one sentence of advice and epochs."""
    optimal = CHINCHILLA_TOKENS_PER_PARAM * n_params
    ratio = tokens / optimal
    n_opt = math.sqrt(flops_total / (6 * CHINCHILLA_TOKENS_PER_PARAM))  # C = 6 N D with D = 20 N
    if ratio < 0.5:
        advice = (f"Under-trained for its size: this compute is best spent on a ~{_si(n_opt)}-parameter model, "
                  f"or train {optimal / tokens:.1f}x longer.")
    elif ratio <= 2.0:
        advice = "Close to compute-optimal (Chinchilla)."
    else:
        advice = (f"Past compute-optimal ({ratio:.1f}x): fine for a model meant for cheap inference (as Llama), "
                  f"or grow it to ~{_si(n_opt)} parameters.")
    out: dict[str, object] = {"tokens": tokens, "chinchilla_tokens": optimal, "ratio_to_chinchilla": ratio,
                              "compute_optimal_params": n_opt, "advice": advice, "dataset_tokens": dataset_tokens}
    out["epochs"] = tokens / dataset_tokens if dataset_tokens else None
    return out


# ---------------------------------------------------------------- memory


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device at the training peak; `peak` is the largest of the phases, not the sum."""

    strategy: str
    shards: int
    micro_batch: int
    accum_steps: int
    checkpointing: bool
    params: int
    grads: int  # all gradients (they exist from the first backward of a step until its optimizer step)
    grads_at_peak: int  # 0 when the peak comes before any gradient of the step exists (no accumulation)
    optimizer: int
    activations: int  # saved for backward by one micro-batch, at the peak
    temporaries: int  # logits, loss gradients, one block's backward, FSDP gathers / DDP buckets, workspace
    peak: int  # params + grads_at_peak + optimizer + activations + temporaries (+ the rotary table)
    peak_phase: str
    phases: dict[str, int]  # the peak of each phase of a step

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def optimizer_bytes(counts: ParamCount, optimizer: str, layout: Layout) -> int:
    """State bytes: AdamW m+v (8/param), Muon momentum (4) on hidden matrices, SGD momentum (4); + master."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer {optimizer!r} is unknown; valid: {', '.join(OPTIMIZERS)}")
    if optimizer == "adamw":
        state = 8 * counts.total
    elif optimizer == "muon":
        state = 4 * counts.hidden_matrices + 8 * (counts.total - counts.hidden_matrices)
    else:
        state = 4 * counts.total
    return state + layout.master_bytes * counts.total


def block_activation_bytes(cfg: ModelConfig, tokens: int, seq_len: int, layout: Layout, *, residual_bytes: int = 4,
                           rotary: bool = True, padding_mask: bool = False, causal: bool = True, device_type: str = "cpu") -> int:
    """Bytes one block saves for backward for `tokens` tokens (b * t); the defaults are a language model's blocks on CPU."""
    c_d, c_kv, c_f = ACT_COEFFS[layout.name]
    if layout.autocast and residual_bytes == 2:
        c_d -= 4  # each norm keeps an fp32 copy (4) and a bf16 output (2) instead of the fp32 residual and an fp32 output (8)
    per_token = c_d * cfg.dim + c_kv * cfg.kv_heads * cfg.head_dim + c_f * cfg.hidden + 4 * cfg.n_heads + 8
    rope_casts = 4 * seq_len * cfg.head_dim * 2 if layout.autocast and rotary else 0  # cos/sin cast to bf16 for q and k
    c = layout.compute_bytes
    if not uses_math_attention(cfg.attention, device_type, c == 2, seq_len):  # SDPA: its additive mask in the compute dtype
        return tokens * per_token + rope_casts + (tokens * c if padding_mask else 0)
    # The matmul form keeps the scores: an fp32 softmax per (head, query, key) and its bf16 copy, k and v repeated to
    # every query head, a bool mask (causal t x t, or padding b x t); it keeps no logsumexp (4 bytes per head).
    samples, heads = tokens // seq_len, cfg.n_heads
    per_token += 2 * c * (heads - cfg.kv_heads) * cfg.head_dim - 4 * heads
    scores = samples * heads * seq_len * seq_len * (4 + (2 if c == 2 else 0))
    mask = (seq_len * seq_len if causal else 0) + (tokens if padding_mask else 0)
    return tokens * per_token + rope_casts + scores + mask


def memory(
    cfg: ModelConfig,
    *,
    seq_len: int,
    micro_batch: int,
    accum_steps: int,
    layout: Layout,
    optimizer: str = "adamw",
    strategy: str = "none",
    shards: int = 1,
    checkpointing: bool = False,
    counts: ParamCount | None = None,
    device_type: str = "cpu",
) -> MemoryEstimate:
    """Peak bytes per device: the largest of the forward-end, loss-backward, block-backward and step phases.

    device_type ("cpu" or "cuda") decides the attention kernel "auto" picks, which decides what attention keeps.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy {strategy!r} is unknown; valid: {', '.join(STRATEGIES)}")
    counts = counts or count_params(cfg)
    arch = get_spec(cfg.arch).memory_terms(cfg, micro_batch, seq_len, layout)  # stem, head, inputs, buffers
    n = counts.total  # trained: gradients and optimizer states
    shard = shards if strategy == "fsdp" else 1
    params = math.ceil(layout.param_bytes * (n + counts.frozen) / shard)  # frozen weights (under adapters) are held too
    grads = math.ceil(layout.grad_bytes * n / shard)
    optim = math.ceil(optimizer_bytes(counts, optimizer, layout) / shard)
    static = params + optim + arch.buffers  # + the fp32 rotary table (and an audio frontend's tables)

    T = micro_batch * seq_len
    # Outputs per micro-batch: one per position over the vocabulary (a language model), or one per sample over the classes.
    rows, outputs = arch.output_rows, arch.outputs
    layer = block_activation_bytes(cfg, T, seq_len, layout, residual_bytes=arch.residual_bytes, rotary=arch.rotary,
                                   padding_mask=arch.padding_mask, causal=arch.causal, device_type=device_type)
    head = arch.head_saved
    stem = arch.inputs + arch.stem_saved  # alive until the stem's backward
    casts_block = 2 * counts.block_matmul if layout.autocast else 0  # bf16 weight copies kept by autograd
    casts_head = 2 * outputs * cfg.dim if layout.autocast else 0
    residual = T * cfg.dim * arch.residual_bytes  # what a checkpointed block keeps
    kept = residual if checkpointing else layer + casts_block  # per block, between forward and its backward
    recomputed = layer + casts_block if checkpointing else 0  # the block being recomputed in backward
    saved = stem + cfg.n_layers * kept + head + casts_head
    # autocast caches every weight cast until the forward ends, even those recompute does not keep
    forward_end = saved + (cfg.n_layers * casts_block if checkpointing else 0)
    # the outputs' logits (freed once the loss is built) and the loss's gradients, unless the spec computes them in pieces
    logits = rows * outputs * layout.compute_bytes if arch.logits is None else arch.logits
    loss_grads = 2 * rows * outputs * 4 if arch.loss_grads is None else arch.loss_grads  # d(log_softmax) out and in, fp32
    block_bwd = _block_backward_bytes(cfg, T, layout)

    extra = RUNTIME_WORKSPACE_BYTES
    if strategy == "ddp":
        extra += layout.grad_bytes * n  # the reducer's gradient buckets (gradient_as_bucket_view=False)
    if strategy == "fsdp" and shard > 1:
        block_full = counts.per_block
        root = n - cfg.n_layers * block_full  # embedding, head, final norm: gathered for the whole step
        extra += 2 * block_full * layout.param_bytes + block_full * layout.grad_bytes + root * (layout.param_bytes + layout.grad_bytes)

    # grads exist during backward only from the 2nd micro-batch on (set_to_none after each step)
    grads_in_bwd = grads if accum_steps > 1 else 0
    head_grad = 0 if counts.frozen else math.ceil(layout.grad_bytes * arch.head_params / shard)  # adapters: a frozen head
    block_grad = math.ceil(layout.grad_bytes * counts.per_block / shard)
    # backward of the k-th block from the top: k blocks' grads exist, L - k blocks' activations remain;
    # both are linear in k, so the high point is the top (k = 0) or the bottom (k = L - 1) block
    in_block = max(((max(grads_in_bwd, head_grad + k * block_grad), stem + (cfg.n_layers - k) * kept + recomputed)
                    for k in (0, cfg.n_layers - 1)), key=sum)
    phases = {  # (grads, activations, temporaries) alive at each phase's high point
        "forward end": (grads_in_bwd, forward_end, logits),
        "loss backward": (grads_in_bwd, saved, loss_grads),
        "block backward": (*in_block, block_bwd),
        "optimizer step": (grads, 0, _optimizer_step_bytes(counts, optimizer, layout, shard)),
    }
    for name, (activations, temporaries) in arch.extra_phases.items():  # e.g. an audio frontend's STFT transients
        phases[name] = (grads_in_bwd, activations, temporaries)
    totals = {k: static + sum(v) + extra for k, v in phases.items()}
    phase = max(totals, key=lambda k: totals[k])
    g, act, temp = phases[phase]
    return MemoryEstimate(strategy, shard, micro_batch, accum_steps, checkpointing, params, grads, g, optim,
                          act, temp + extra, totals[phase], phase, totals)


def _block_backward_bytes(cfg: ModelConfig, tokens: int, layout: Layout) -> int:
    """Gradients alive while one block runs backward (MLP hidden grads dominate; fitted on CPU, +-2%)."""
    if layout.compute_bytes == 4:
        return tokens * (8 * cfg.hidden + 10 * cfg.dim)
    return tokens * (6 * cfg.hidden + 8 * cfg.dim)


def _optimizer_step_bytes(counts: ParamCount, optimizer: str, layout: Layout, shard: int) -> int:
    """Transient bytes inside clip + step: fused AdamW works in place; Muon orthogonalises one matrix at a time."""
    if optimizer != "muon":
        return 0
    biggest = max(counts.block_matmul // 3, 1)  # a bound on the largest hidden matrix
    return math.ceil(4 * 3 * biggest / shard)  # its bf16 Newton-Schulz iterates and products, in fp32 worst case


# ---------------------------------------------------------------- fit and time

USABLE_FRACTION = 0.9  # of device memory: the rest is the CUDA context, NCCL buffers, fragmentation (or the OS)


def divisors(n: int) -> list[int]:
    """Divisors of n in ascending order."""
    return [k for k in range(1, n + 1) if n % k == 0]


def largest_fitting(
    cfg: ModelConfig, *, seq_len: int, per_rank_batch: int, memory_bytes: int, layout: Layout, optimizer: str,
    strategy: str, shards: int, checkpointing: bool, counts: ParamCount, device_type: str = "cpu",
) -> MemoryEstimate | None:
    """The largest micro-batch dividing the per-rank batch whose peak fits; None if even 1 does not."""
    best = None
    for mb in divisors(per_rank_batch):  # not monotonic: without accumulation no grads exist in backward
        est = memory(cfg, seq_len=seq_len, micro_batch=mb, accum_steps=per_rank_batch // mb, layout=layout,
                     optimizer=optimizer, strategy=strategy, shards=shards, checkpointing=checkpointing, counts=counts,
                     device_type=device_type)
        if est.peak <= USABLE_FRACTION * memory_bytes:
            best = est
    return best


# Compiling costs 20-40 s once on a 2-core CPU (a few seconds when inductor's cache has the graphs) and makes
# a step 1.5-2.5x faster; below about 1e13 training FLOPs (a minute of eager bf16 steps here) a run ends
# before it pays back.
COMPILE_MIN_FLOPS = 1e13
COMPILE_MIN_S = 60.0  # compiling costs 20-40 s on 2 cores and makes a step 1.5-2.5x faster


RECOMPUTE = 4 / 3  # activation checkpointing runs each block's forward again: +1/3 of 6N


def compile_decision(setting: str, training_flops: float, strategy: str, budget_s: float = 0.0) -> tuple[str, str]:
    """("model" | "blocks" | "off", reason) for train.compile = setting; auto compiles runs of >= COMPILE_MIN_FLOPS, or
    time-budgeted runs (train.time_budget_s) of >= COMPILE_MIN_S, whose length in seconds is known on any machine."""
    if setting == "false":
        return "off", "train.compile = false"
    if setting == "auto" and budget_s:
        if budget_s < COMPILE_MIN_S:
            return "off", f"auto: a {budget_s:g} s budget < {COMPILE_MIN_S:g} s, too short to pay back compiling"
        why = f"auto: a {budget_s:g} s budget >= {COMPILE_MIN_S:g} s"
    elif setting == "auto" and training_flops < COMPILE_MIN_FLOPS:
        return "off", f"auto: {training_flops:.2g} training FLOPs < {COMPILE_MIN_FLOPS:.0e}, too short to pay back compiling"
    else:
        why = "train.compile = true" if setting == "true" else f"auto: {training_flops:.2g} training FLOPs >= {COMPILE_MIN_FLOPS:.0e}"
    if strategy == "fsdp":  # FSDP's hooks run between blocks: compile each block
        return "blocks", f"{why}; each block (FSDP)"
    return "model", f"{why}; the model and its loss as one graph"


def weighted_flops(flops: float, attention_flops: float, attention_speed: float) -> float:
    """FLOPs with attention's counted 1/attention_speed times (its kernels run slower than GEMMs on CPU)."""
    return flops + attention_flops * (1.0 / attention_speed - 1.0)


def dense_mfu(mfu: float, flops: float, attention_flops: float, attention_speed: float) -> float:
    """A measured MFU turned into the utilisation of dense FLOPs that timing() takes (equal when speed is 1)."""
    return mfu * weighted_flops(flops, attention_flops, attention_speed) / flops


def timing(flops_per_step: float, *, steps: int, devices: int, peak_flops: float, mfu: float, checkpointing: bool,
           attention_flops_per_step: float = 0.0, attention_speed: float = 1.0) -> dict[str, float]:
    """Step and wall time: FLOPs / (devices * peak * MFU); recompute adds one forward (+1/3 of 6N).

    `mfu` is the dense-FLOP utilisation; attention FLOPs cost 1/attention_speed each (1 on GPUs), so
    the model FLOPs utilisation this predicts (`mfu_model`) drops as the attention share grows.
    """
    recompute = RECOMPUTE if checkpointing else 1.0
    weighted = weighted_flops(flops_per_step, attention_flops_per_step, attention_speed)
    step_s = weighted * recompute / (devices * peak_flops * mfu)
    wall_s = step_s * steps
    return {"step_s": step_s, "wall_s": wall_s, "wall_days": wall_s / 86400, "device_hours": wall_s * devices / 3600,
            "mfu_model": flops_per_step / (devices * peak_flops * step_s)}


def _si(x: float) -> str:
    """1.2e9 -> '1.2B'."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"
