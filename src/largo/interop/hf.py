"""Hugging Face Llama folders in and out: config mapping, one name table, and a logits-parity check.

largo's GPT is Llama-shaped by design (RMSNorm in fp32, half-split rotary, SwiGLU, GQA, no
biases), so conversion is a renaming: no tensor is permuted or rescaled. Options with no Llama
equivalent are refused with a one-line error instead of producing a folder that loads but
computes something else.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from largo.interop.hub import DEFAULT_SHARD, DTYPE_NAMES, check_dtype, write_shards
from largo.checkpoint.checkpointer import write_replicated
from largo.checkpoint.handle import Checkpoint
from largo.checkpoint.restore import load_model
from largo.checkpoint.store import check_shapes, load_tensors
from largo.config import RunConfig, RunSection
from largo.data.prepare import EOT
from largo.errors import CheckpointError
from largo.fileio import read_json, write_json_atomic
from largo.optional import require
from largo.models import get_spec
from largo.models.config import ModelConfig
from largo.models.gpt import GPTConfig
from largo.rundir import TOKENIZER, RunDir

# ModelConfig fields that map onto a Llama config (or do not change the computation: how weights start).
_MAPPED = {"arch", "vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden", "multiple_of",
           "max_seq_len", "rope_theta", "norm_eps", "tie_embeddings", "init_std", "init_from", "zero_init_head"}


def expand_names(table: dict[str, Any], n_layers: int, *, tied: bool) -> dict[str, Any]:
    """A name table with {i} filled in for every block; the head row dropped for tied models."""
    out = {}
    for ours, theirs in table.items():
        if ours == "head.weight" and tied:
            continue
        for i in range(n_layers) if "{i}" in ours else [None]:
            fill = (lambda s: s.format(i=i)) if i is not None else (lambda s: s)
            out[fill(ours)] = tuple(map(fill, theirs)) if isinstance(theirs, tuple) else fill(theirs)
    return out


def llama_config(cfg: ModelConfig, *, eot_id: int | None, dtype: str = "float32") -> dict[str, Any]:
    """config.json of the equivalent LlamaForCausalLM; refuses options Llama cannot express."""
    spec = get_spec(cfg.arch)
    if "hf" not in spec.export_formats:
        raise CheckpointError(f"model.arch = {cfg.arch!r} has no Llama equivalent; --format hf exports language models "
                              f"(use --format {' or '.join(spec.export_formats)})")
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    for key, value in dataclasses.asdict(cfg).items():
        if key not in _MAPPED and value != defaults.get(key):
            raise CheckpointError(f"model.{key} = {value!r} has no Llama equivalent; --format hf needs it at {defaults.get(key)!r}")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.hidden,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,  # transformers < 5 reads this key ...
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},  # ... and >= 5 this one
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "pretraining_tp": 1,
        "initializer_range": cfg.init_std,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": dtype,  # transformers < 5 reads this key ...
        "dtype": dtype,  # ... and >= 5 this one
        "use_cache": True,
    }


def _refuse(source: Path, key: str, value: Any, valid: str) -> CheckpointError:
    return CheckpointError(f"{source}: {key} = {value!r} has no largo equivalent; largo imports {valid}")


def model_config_from_llama(hf: dict[str, Any], source: Path) -> ModelConfig:
    """The ModelConfig of a Llama config.json; refuses variants largo's GPT does not compute."""
    if hf.get("model_type") != "llama":
        raise _refuse(source, "model_type", hf.get("model_type"), "'llama' models")
    checks = [("hidden_act", "silu", "hidden_act 'silu' (SwiGLU)"), ("attention_bias", False, "attention without biases"),
              ("mlp_bias", False, "MLPs without biases"), ("rope_scaling", None, "unscaled rotary embeddings")]
    for key, want, valid in checks:
        if hf.get(key, want) != want:
            raise _refuse(source, key, hf[key], valid)
    rope = hf.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise _refuse(source, "rope_parameters.rope_type", rope["rope_type"], "'default' rotary embeddings")
    dim, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, dim // heads):
        raise _refuse(source, "head_dim", hf["head_dim"], f"head_dim = hidden_size / num_attention_heads ({dim // heads})")
    return GPTConfig(
        vocab_size=hf["vocab_size"], dim=dim, n_layers=hf["num_hidden_layers"], n_heads=heads,
        n_kv_heads=hf.get("num_key_value_heads") or heads, mlp_hidden=hf["intermediate_size"],
        max_seq_len=hf.get("max_position_embeddings", 2048), rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=float(hf.get("initializer_range", 0.02)),
    )


def hf_names(cfg: ModelConfig) -> dict[str, str]:
    """largo parameter name -> Hugging Face name for every weight of cfg's model, as its architecture's spec names them."""
    table = get_spec(cfg.arch).hf_names
    if not table:
        raise CheckpointError(f"model.arch = {cfg.arch!r} names no Hugging Face weights; --format hf exports language models")
    return expand_names(table, cfg.n_layers, tied=cfg.tie_embeddings)


def to_hf_weights(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """largo state dict -> Llama state dict (fp32, contiguous; tied models carry no lm_head)."""
    names = hf_names(cfg)
    return {hf: state[ours].detach().float().contiguous().cpu() for ours, hf in names.items()}


def from_hf_weights(weights: dict[str, torch.Tensor], cfg: ModelConfig, source: Path) -> dict[str, torch.Tensor]:
    """Llama state dict -> largo state dict in fp32; a tied lm_head copy, if saved, is dropped."""
    names = hf_names(cfg)
    hf_expected = {hf: ours for ours, hf in names.items()}
    found = {k: v for k, v in weights.items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
    missing = [k for k in hf_expected if k not in found]
    extra = [k for k in found if k not in hf_expected and not k.endswith("rotary_emb.inv_freq")]
    if missing or extra:
        shown = ", ".join([f"{k} missing" for k in missing[:3]] + [f"{k} unexpected" for k in extra[:3]])
        raise CheckpointError(f"{source}: weights do not match the Llama config: {shown}")
    return {hf_expected[k]: found[k].float().contiguous() for k in hf_expected}


def write_tokenizer_files(tokenizer_json: Path, out_dir: Path, *, max_seq_len: int) -> int | None:
    """Copy tokenizer.json and write a tokenizer_config.json AutoTokenizer reads; the EOT id if any."""
    from tokenizers import Tokenizer

    shutil.copyfile(tokenizer_json, out_dir / TOKENIZER)
    eot_id = Tokenizer.from_file(str(tokenizer_json)).token_to_id(EOT)
    special = {"bos_token": EOT, "eos_token": EOT} if eot_id is not None else {}
    write_json_atomic(out_dir / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", **special, "model_max_length": max_seq_len,
        "add_bos_token": False, "add_eos_token": False, "clean_up_tokenization_spaces": False,
    })
    return eot_id


def checkpoint_config(ckpt: Checkpoint) -> RunConfig:
    """The run config a verified checkpoint holds, or one line saying it does not fit this largo."""
    if ckpt.state.get("user_model"):
        raise CheckpointError(f"{ckpt.path}: holds a user's own nn.Module, which has no Llama equivalent")
    return ckpt.config()


def export_hf(checkpoint: str | Path | Checkpoint, out_dir: str | Path, *, dtype: str = "fp32", max_shard_size: str | int = DEFAULT_SHARD) -> Path:
    """Write a Llama folder (config, weights, generation config, tokenizer) for a GPT checkpoint.

    Weights are written in `dtype`, in shards of at most max_shard_size with an index above it. A plain
    checkpoint (replicated or FSDP-sharded) is converted one shard at a time, never the whole model in memory;
    an adapter checkpoint is merged first (its base fits one process: it was fine-tuned in one).
    """
    ckpt = Checkpoint.find(checkpoint)
    cfg = checkpoint_config(ckpt)
    check_dtype(dtype)
    llama_config(cfg.model, eot_id=None)  # refuse before writing anything
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    eot_id = None
    if ckpt.tokenizer is not None:
        eot_id = write_tokenizer_files(ckpt.tokenizer, out, max_seq_len=cfg.model.max_seq_len)
    write_json_atomic(out / "config.json", llama_config(cfg.model, eot_id=eot_id, dtype=DTYPE_NAMES[dtype]))
    write_json_atomic(out / "generation_config.json", {"bos_token_id": eot_id, "eos_token_id": eot_id})
    names = hf_names(cfg.model)  # ours -> theirs
    ours = {theirs: mine for mine, theirs in names.items()}
    if ckpt.adapters:
        merged = load_model(ckpt)[0].state_dict()
        shapes, read = {n: tuple(t.shape) for n, t in merged.items()}, (lambda wanted: {n: merged[n] for n in wanted})
    else:
        reader = ckpt.weights()
        shapes, read = {n: spec[0] for n, spec in reader.specs.items()}, reader.read
    missing = [n for n in names if n not in shapes]
    if missing:
        raise CheckpointError(f"{ckpt.path}: holds no weight {missing[0]!r} of its model")

    def read_theirs(wanted: list[str]) -> dict[str, torch.Tensor]:
        got = read([ours[t] for t in wanted])
        return {t: got[ours[t]] for t in wanted}

    write_shards(out, {theirs: shapes[mine] for mine, theirs in names.items()}, read_theirs, dtype=dtype, max_shard_size=max_shard_size)
    return out


def hf_module_name(module: str, cfg: ModelConfig) -> str:
    """A largo module path (trunk.blocks.3.attn.wq) as its Llama path (model.layers.3.self_attn.q_proj)."""
    table = hf_names(cfg)
    theirs = table.get(f"{module}.weight")
    if theirs is None:
        raise CheckpointError(f"adapter on {module!r}: the module has no Llama equivalent")
    return theirs[: -len(".weight")]


def export_adapter(checkpoint: str | Path | Checkpoint, out_dir: str | Path, *, fmt: str) -> tuple[Path, nn.Module, nn.Module, RunConfig]:
    """A PEFT adapter folder (adapter_config.json + adapter_model.safetensors) of a LoRA checkpoint.

    fmt "hf": named for the Llama export of its base (load with PeftModel.from_pretrained over that folder);
    fmt "safetensors": named for largo's own model. Returns (folder, the unmerged model, the base, config).
    """
    import copy

    from safetensors.torch import save_file

    ckpt = Checkpoint.find(checkpoint)
    cfg = checkpoint_config(ckpt)
    if not ckpt.adapters:
        raise CheckpointError(f"{ckpt.path}: holds no adapters (finetune.method = {cfg.finetune.method!r}); export the whole model "
                              f"without --adapter-only")
    if fmt not in ("hf", "safetensors"):
        raise CheckpointError(f"--adapter-only writes a PEFT folder for --format hf or safetensors, not {fmt!r}")
    if fmt == "hf":
        llama_config(cfg.model, eot_id=None)
    peft = require("peft", "--adapter-only")
    model, _ = load_model(ckpt, merge=False)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = peft.get_peft_model_state_dict(model)  # base_model.model.<module>.lora_A.weight, ...
    adapter_cfg = copy.deepcopy(model.peft_config["default"])
    adapter_cfg.base_model_name_or_path = None
    if fmt == "hf":
        prefix, renamed = "base_model.model.", {}
        for key, value in weights.items():
            module, _, leaf = key[len(prefix):].rpartition(".lora_")
            renamed[f"{prefix}{hf_module_name(module, cfg.model)}.lora_{leaf}"] = value
        modules = {key[len(prefix):].rpartition(".lora_")[0] for key in renamed}
        adapter_cfg.target_modules = sorted({m.rsplit(".", 1)[-1] for m in modules})
        adapter_cfg.task_type = "CAUSAL_LM"
        weights = renamed
    save_file({k: v.detach().contiguous().cpu() for k, v in weights.items()}, str(out / "adapter_model.safetensors"),
              metadata={"format": "pt"})
    adapter_cfg.save_pretrained(str(out))
    return out, model, model.get_base_model(), cfg


def _plain_name(name: str) -> bool:
    """A file name in the folder itself (no path, no way out)."""
    return name.endswith(".safetensors") and "/" not in name and "\\" not in name and name not in (".", "..") and "\0" not in name


def read_hf_weights(hf_dir: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, or every shard named by model.safetensors.index.json (never pickle)."""
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, CheckpointError)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) and _plain_name(v) for v in weight_map.values()):
            raise CheckpointError(f"{index}: 'weight_map' must map tensor names to .safetensors files of this folder")
        shards = sorted(set(weight_map.values()))
        return {k: v for shard in shards for k, v in load_tensors(hf_dir / shard).items()}
    if not (hf_dir / "model.safetensors").is_file():
        raise CheckpointError(f"{hf_dir}: no model.safetensors (pickled .bin weights are not read; convert them to safetensors)")
    return load_tensors(hf_dir / "model.safetensors")


def save_imported(run_dir: str | Path, model_cfg: ModelConfig, weights: dict[str, torch.Tensor],
                  *, tokenizer_json: Path | None, source: str) -> Path:
    """Write imported weights as step 0 of a run directory (no optimizer state: fine-tune via model.init_from)."""
    from largo.models import build_model

    run_dir = Path(run_dir)
    check_shapes(build_model(model_cfg, "meta").state_dict(), weights, Path(source))
    cfg = RunConfig(run=RunSection(name=run_dir.name, out_dir=str(run_dir.parent)), model=model_cfg)
    extra = {TOKENIZER: tokenizer_json} if tokenizer_json is not None else {}
    state = {"optimizer_groups": [], "optimizer_scalars": {}, "schedule": {"applied_steps": 0}, "data": {"samples_seen": 0},
             "config": cfg.to_dict(), "imported_from": source}
    return write_replicated(RunDir(run_dir).checkpoints, 0, weights, {}, state, keep_last=1, files=extra)


def import_hf(hf_dir: str | Path, run_dir: str | Path) -> Path:
    """Turn a local Llama folder into a largo checkpoint; returns the checkpoint folder."""
    src = Path(hf_dir)
    if not (src / "config.json").is_file():
        raise CheckpointError(f"{src}: no config.json; expected a Hugging Face Llama folder")
    cfg = model_config_from_llama(read_json(src / "config.json", CheckpointError), src / "config.json")
    weights = from_hf_weights(read_hf_weights(src), cfg, src)
    tok = src / TOKENIZER
    return save_imported(run_dir, cfg, weights, tokenizer_json=tok if tok.is_file() else None, source=str(src))


def hf_model(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """transformers' LlamaForCausalLM holding a copy of a largo GPT's weights (fp32, eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    try:
        from transformers.initialization import no_init_weights  # transformers >= 5
    except ImportError:
        from transformers.modeling_utils import no_init_weights

    config = {k: v for k, v in llama_config(cfg, eot_id=None).items() if k not in ("architectures", "model_type", "torch_dtype", "dtype")}
    with no_init_weights():  # every weight is overwritten below; random init of a large model costs seconds
        ref = LlamaForCausalLM(LlamaConfig(**config)).float().eval()
    missing, unexpected = ref.load_state_dict(to_hf_weights(model.state_dict(), cfg), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight" or not cfg.tie_embeddings]:
        raise CheckpointError(f"transformers' Llama does not take these weights: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if cfg.tie_embeddings:
        ref.tie_weights()
    return ref


@torch.no_grad()
def logits_parity(model: nn.Module, ref: nn.Module, tokens: torch.Tensor, *, new_tokens: int = 8) -> dict[str, Any]:
    """Max |logit difference| on tokens (b, t) and whether greedy continuations of row 0 agree."""
    from largo.models.generate import generate

    ours = model(tokens).float()
    theirs = ref(input_ids=tokens).logits.float()  # (b, t, vocab)
    max_len = min(model.cfg.max_seq_len, tokens.shape[1] + new_tokens)
    greedy = generate(model, tokens[0].tolist(), max_new_tokens=max_len - tokens.shape[1], max_seq_len=max_len, temperature=0.0)
    ref_greedy = ref.generate(tokens[:1], max_new_tokens=max_len - tokens.shape[1], do_sample=False,
                              eos_token_id=None, pad_token_id=0, attention_mask=torch.ones_like(tokens[:1]))[0].tolist()
    return {"max_abs_diff": float((ours - theirs).abs().max()), "greedy_equal": greedy == ref_greedy,
            "greedy": greedy, "ref_greedy": ref_greedy}
