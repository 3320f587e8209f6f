"""Estimates before training: exact parameters, FLOPs, data budget, memory per device and time.

Memory follows the tensors this model really keeps (counted with autograd's saved-tensor hooks on
CPU and checked against the allocator): see docs/plan.md for the derivation of each coefficient.
Classifiers (vit, audio, text_classifier) share the blocks; their stems and pooled heads are counted
from their shapes below.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from largo.errors import ConfigError
from largo.models.config import ModelConfig

CHINCHILLA_TOKENS_PER_PARAM = 20  # Hoffmann et al. 2022
RUNTIME_WORKSPACE_BYTES = 32 << 20  # math-library workspaces (oneDNN/MKL, cuBLAS) outside the tensors
STRATEGIES = ("none", "ddp", "fsdp")
OPTIMIZERS = ("adamw", "muon", "sgd")


@dataclass(frozen=True)
class Layout:
    """Bytes per parameter for weights, gradients and optimizer extras, and the matmul dtype."""

    name: str
    param_bytes: int  # the weights the model computes with
    grad_bytes: int
    master_bytes: int  # fp32 master copy kept by the optimizer (mixed precision only)
    compute_bytes: int  # dtype of matmul inputs/outputs (2 = bf16)
    autocast: bool  # weights cast to bf16 on every forward (torch.autocast)
    about: str


LAYOUTS: dict[str, Layout] = {
    "fp32": Layout("fp32", 4, 4, 0, 4, False, "fp32 weights, grads and math"),
    "autocast": Layout("autocast", 4, 4, 0, 2, True, "largo's bf16: fp32 weights/grads/states, bf16 matmuls via autocast"),
    "mixed": Layout("mixed", 2, 2, 4, 2, False,
                    "bf16 weights/grads + fp32 master copy in the optimizer (Megatron/DeepSpeed, FSDP2 param_dtype=bf16)"),
}

# Saved activation bytes per token per block, as (per d, per kv width, per MLP hidden): from the
# tensors autograd keeps for this block (fp32 norms, three casts of the attention input, rotary
# products, SDPA q/k/v/out, four MLP hidden tensors). Plus 4 bytes per head (SDPA logsumexp) and
# 8 (two RMSNorm rstd). Flash/memory-efficient SDPA never stores the (t x t) scores.
ACT_COEFFS = {"fp32": (32, 8, 16), "autocast": (30, 4, 8), "mixed": (20, 4, 8)}
# Saved bytes per token and d at the head (final norm + head input), excluding the fp32 log-softmax.
HEAD_COEFFS = {"fp32": 12, "autocast": 10, "mixed": 8}
# Stems that end in a convolution: under autocast they hand the blocks a bf16 residual stream.
CONV_STEMS = ("vit", "audio")
# Audio frontend peak per STFT bin (b x freqs x frames): complex64 output (8) + real^2, imag^2 and their sum (4 each).
STFT_BYTES_PER_BIN = 20


def layout_for(precision: str, *, mixed: bool = False) -> Layout:
    """The layout a config trains with: fp32, or bf16 as autocast (largo) or as bf16 weights (mixed)."""
    if precision == "fp32":
        return LAYOUTS["fp32"]
    return LAYOUTS["mixed" if mixed else "autocast"]


# ---------------------------------------------------------------- parameters and FLOPs


@dataclass(frozen=True)
class ParamCount:
    total: int  # trainable parameters, a tied head counted once
    embedding: int  # input embedding table
    per_block: int
    hidden_matrices: int  # 2-D weights inside the blocks (what Muon takes)
    block_matmul: int  # matmul weights of one block (autocast keeps a bf16 copy of each per forward)


def count_params(cfg: ModelConfig) -> ParamCount:
    """Exact counts from the model built on the meta device (nothing is allocated)."""
    from largo.models import ARCHITECTURES

    with torch.device("meta"):
        model = ARCHITECTURES[cfg.arch](cfg)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    total = sum(p.numel() for _, p in named)
    hidden = sum(p.numel() for n, p in named if p.dim() == 2 and ".blocks." in f".{n}")
    embedding = cfg.embedding_params() if cfg.arch in ("gpt", "text_classifier") else 0  # conv stems have no token table
    return ParamCount(total, embedding, cfg.block_params(), hidden, cfg.block_params() - 2 * cfg.dim)


def flops(cfg: ModelConfig, seq_len: int, tokens: int) -> dict[str, float]:
    """Training FLOPs: 6N + 12 L d T per token (N = matmul weights, head included), forward 1/3."""
    per_token = cfg.flops_per_token(seq_len)
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


def residual_bytes(cfg: ModelConfig, layout: Layout) -> int:
    """Bytes per element of the residual stream: bf16 with bf16 weights or after a conv stem under autocast, else fp32."""
    if layout.name == "mixed" or (layout.autocast and cfg.arch in CONV_STEMS):
        return 2
    return 4  # GPT and text_classifier: the fp32 embedding output promotes every residual add to fp32


def block_activation_bytes(cfg: ModelConfig, tokens: int, seq_len: int, layout: Layout) -> int:
    """Bytes one block saves for backward for `tokens` tokens (b * t)."""
    c_d, c_kv, c_f = ACT_COEFFS[layout.name]
    if layout.autocast and residual_bytes(cfg, layout) == 2:
        c_d -= 4  # each norm keeps an fp32 copy (4) and a bf16 output (2) instead of the fp32 residual and an fp32 output (8)
    per_token = c_d * cfg.dim + c_kv * cfg.kv_heads * cfg.head_dim + c_f * cfg.hidden + 4 * cfg.n_heads + 8
    rotary = cfg.arch != "vit"  # ViT adds learned positions and passes no rotary table
    rope_casts = 4 * seq_len * cfg.head_dim * 2 if layout.autocast and rotary else 0  # cos/sin cast to bf16 for q and k
    mask = tokens * layout.compute_bytes if cfg.arch == "text_classifier" else 0  # SDPA's additive padding mask (b, 1, 1, t)
    return tokens * per_token + rope_casts + mask


def head_activation_bytes(cfg: ModelConfig, tokens: int, layout: Layout) -> int:
    """Saved at the GPT head: final norm, head input, fp32 log-softmax (T x V), targets, input ids."""
    return tokens * (HEAD_COEFFS[layout.name] * cfg.dim + 4 * cfg.vocab_size + 4 + 8 + 8)


def pooled_head_bytes(cfg: ModelConfig, samples: int, seq_len: int, layout: Layout) -> int:
    """Saved at a classifier's head: final norm at every position, pooling weights, the (b, d) head input."""
    tokens, r = samples * seq_len, residual_bytes(cfg, layout)
    norm = tokens * ((4 + r) * cfg.dim + 4)  # fp32 input (or copy), output in the residual dtype (for the weight), rstd
    if cfg.pooling == "cls" and not layout.autocast:
        head_in = tokens * cfg.dim * layout.compute_bytes  # x[:, 0] is a view: the whole (b, t, d) norm output stays
    else:
        head_in = samples * cfg.dim * layout.compute_bytes  # the pooled (b, d), or its bf16 cast under autocast
    masked = cfg.arch == "text_classifier" and cfg.pooling == "mean"
    weights = samples * (seq_len + 1) * r if masked else 0  # padding weights (b, t, 1) and their sums (b, 1)
    return norm + head_in + weights


def audio_frames(cfg: ModelConfig, seq_len: int) -> int:
    """audio: log-mel frames behind seq_len positions (the stem's stride-2 conv halves them; a class token adds one)."""
    return 2 * (seq_len - (1 if cfg.pooling == "cls" else 0)) - 1


def audio_freqs(cfg: ModelConfig) -> int:
    """audio: STFT frequency bins (n_fft is the window rounded up to a power of two)."""
    return 2 ** math.ceil(math.log2(cfg.win_length)) // 2 + 1


def input_bytes(cfg: ModelConfig, samples: int, seq_len: int) -> int:
    """Classifiers: one micro-batch of inputs and int64 labels, alive for the whole forward and backward."""
    positions = seq_len - (1 if cfg.pooling == "cls" else 0)
    if cfg.arch == "vit":
        inputs = 4 * cfg.in_channels * cfg.image_size**2  # normalised fp32 pixels
    elif cfg.arch == "audio":
        inputs = 4 * (audio_frames(cfg, seq_len) - 1) * cfg.hop_length  # fp32 waveform: a frame every hop
    elif cfg.arch == "text_classifier":
        inputs = 8 * positions  # int64 token ids (the embedding's backward keeps these, no copy)
    else:
        return 0  # GPT: counted in head_activation_bytes
    return samples * (inputs + 8)


def stem_activation_bytes(cfg: ModelConfig, samples: int, seq_len: int, layout: Layout) -> int:
    """Classifiers: what the stem saves for backward beyond the input batch (its bf16 casts, the audio conv stack)."""
    c, d = layout.compute_bytes, cfg.dim
    if cfg.arch == "vit":
        pixels = 2 * samples * cfg.in_channels * cfg.image_size**2 if c == 2 else 0  # the patch conv's bf16 input (fp32: the batch)
        casts = 2 * cfg.in_channels * cfg.patch_size**2 * d if layout.autocast else 0  # bf16 patch weight
        return pixels + casts
    if cfg.arch == "audio":
        frames, t = audio_frames(cfg, seq_len), seq_len - (1 if cfg.pooling == "cls" else 0)
        # log-mel (conv1's input, cast from fp32), conv1 out (GELU's input), GELU out (conv2's input), conv2 out (GELU's)
        saved = samples * c * (cfg.n_mels * frames + 2 * d * frames + d * t)
        casts = 2 * 3 * d * (cfg.n_mels + d) if layout.autocast else 0  # bf16 kernel-3 conv weights
        return saved + casts
    return 0  # GPT and text_classifier: an embedding lookup saves nothing new


def buffer_bytes(cfg: ModelConfig) -> int:
    """Non-parameter tensors of the model: the fp32 rotary table; the audio window and mel filterbank."""
    if cfg.arch == "gpt":
        return 2 * cfg.max_seq_len * cfg.head_dim * 4
    if cfg.arch == "vit":
        return 0  # learned positions are parameters
    rope = 2 * (cfg.max_seq_len + (1 if cfg.pooling == "cls" else 0)) * cfg.head_dim * 4  # room for the class token
    if cfg.arch == "audio":
        return rope + 4 * cfg.win_length + 4 * audio_freqs(cfg) * cfg.n_mels
    return rope


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
) -> MemoryEstimate:
    """Peak bytes per device: the largest of the forward-end, loss-backward, block-backward and step phases."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy {strategy!r} is unknown; valid: {', '.join(STRATEGIES)}")
    counts = counts or count_params(cfg)
    n = counts.total
    shard = shards if strategy == "fsdp" else 1
    params = math.ceil(layout.param_bytes * n / shard)
    grads = math.ceil(layout.grad_bytes * n / shard)
    optim = math.ceil(optimizer_bytes(counts, optimizer, layout) / shard)
    static = params + optim + buffer_bytes(cfg)  # + the fp32 rotary table (and the audio frontend's tables)

    T = micro_batch * seq_len
    # Outputs per micro-batch: one per position over the vocabulary (GPT), or one per sample over the classes.
    rows, outputs = (micro_batch, cfg.num_classes) if cfg.is_classifier else (T, cfg.vocab_size)
    layer = block_activation_bytes(cfg, T, seq_len, layout)
    if cfg.is_classifier:
        head = pooled_head_bytes(cfg, micro_batch, seq_len, layout)
    else:
        head = head_activation_bytes(cfg, T, layout)
    inputs = input_bytes(cfg, micro_batch, seq_len)  # classifiers: the batch (GPT's ids are in `head`)
    stem = inputs + stem_activation_bytes(cfg, micro_batch, seq_len, layout)  # alive until the stem's backward
    casts_block = 2 * counts.block_matmul if layout.autocast else 0  # bf16 weight copies kept by autograd
    casts_head = 2 * outputs * cfg.dim if layout.autocast else 0
    residual = T * cfg.dim * residual_bytes(cfg, layout)  # what a checkpointed block keeps
    kept = residual if checkpointing else layer + casts_block  # per block, between forward and its backward
    recomputed = layer + casts_block if checkpointing else 0  # the block being recomputed in backward
    saved = stem + cfg.n_layers * kept + head + casts_head
    # autocast caches every weight cast until the forward ends, even those recompute does not keep
    forward_end = saved + (cfg.n_layers * casts_block if checkpointing else 0)
    logits = rows * outputs * layout.compute_bytes  # freed by the loop once the loss is built
    loss_grads = 2 * rows * outputs * 4  # d(log_softmax) out and in, fp32
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
    head_params = (cfg.dim + 1) * cfg.num_classes if cfg.is_classifier else cfg.vocab_size * cfg.dim
    head_grad = math.ceil(layout.grad_bytes * head_params / shard)
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
    if cfg.arch == "audio":  # the STFT's transients come before anything is saved; they top long clips on small models
        phases["frontend"] = (grads_in_bwd, inputs, STFT_BYTES_PER_BIN * micro_batch * audio_freqs(cfg) * audio_frames(cfg, seq_len))
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
    strategy: str, shards: int, checkpointing: bool, counts: ParamCount,
) -> MemoryEstimate | None:
    """The largest micro-batch dividing the per-rank batch whose peak fits; None if even 1 does not."""
    best = None
    for mb in divisors(per_rank_batch):  # not monotonic: without accumulation no grads exist in backward
        est = memory(cfg, seq_len=seq_len, micro_batch=mb, accum_steps=per_rank_batch // mb, layout=layout,
                     optimizer=optimizer, strategy=strategy, shards=shards, checkpointing=checkpointing, counts=counts)
        if est.peak <= USABLE_FRACTION * memory_bytes:
            best = est
    return best


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
    recompute = 4 / 3 if checkpointing else 1.0
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
