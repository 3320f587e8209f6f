"""`largo export` / `largo import`: pick the converter, write the result, then prove it computes the same.

Every conversion is checked by outputs, not by "it loads" (DESIGN §6.3): Hugging Face folders
against transformers' LlamaForCausalLM (logits and greedy tokens), ONNX files against
onnxruntime on real held-out inputs. The checks run when the optional packages are installed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from largo.interop.hub import DEFAULT_SHARD, DTYPE_NAMES, DTYPES, INDEX, check_dtype, check_shard_size, model_card
from largo.checkpoint.handle import Checkpoint
from largo.checkpoint.restore import adapter_base, load_model
from largo.errors import CheckpointError, LargoError
from largo.optional import hf_offline, require
from largo.fileio import write_json_atomic
from largo.config import RunConfig
from largo.models import get_spec
from largo.models.config import ModelConfig
from largo.rundir import CHECKPOINTS, STATE, TOKENIZER, RunDir

LOGIT_ATOL = 1e-4  # fp32 parity bound against transformers
MERGE_RTOL = 1e-5  # merged vs unmerged adapters, relative to the largest logit (W + s*B@A sums in another order)
ONNX_ATOL = 1e-3  # onnxruntime's kernels sum in another order than PyTorch's
_PARITY_TOKENS = 48  # positions compared; the greedy check continues row 0 for 8 more


def has(package: str) -> bool:
    """Whether an optional package is installed (checked without importing it; Hugging Face ones are then imported offline)."""
    hf_offline()
    found = importlib.util.find_spec(package) is not None
    if found and package == "transformers":
        from transformers.utils import logging

        logging.disable_progress_bar()  # one "Loading weights" bar per check is noise in a CLI log
    return found


def sample_tokens(tokenizer_json: Path | None, vocab_size: int, max_seq_len: int) -> torch.Tensor:
    """Two rows of real text (this file, via the model's tokenizer) or, without one, seeded random ids."""
    n = min(_PARITY_TOKENS, max_seq_len - 1)
    if tokenizer_json is not None and tokenizer_json.is_file():
        from tokenizers import Tokenizer

        ids = Tokenizer.from_file(str(tokenizer_json)).encode(Path(__file__).read_text()).ids
        if len(ids) >= 2 * n:
            return torch.tensor([ids[:n], ids[n:2 * n]])
    return torch.randint(0, vocab_size, (2, n), generator=torch.Generator().manual_seed(0))


def check_parity(model: nn.Module, ref: nn.Module, tokens: torch.Tensor, what: str, log: Callable[[str], None]) -> float:
    """Compare logits and greedy tokens with a transformers model; raise when they differ."""
    from largo.interop.hf import logits_parity

    result = logits_parity(model, ref, tokens)
    log(f"parity vs {what}: max |logit difference| {result['max_abs_diff']:.2e} over {tokens.numel()} positions; "
        f"greedy continuation {'identical' if result['greedy_equal'] else 'DIFFERENT'}")
    if result["max_abs_diff"] > LOGIT_ATOL or not result["greedy_equal"]:
        raise CheckpointError(f"parity check failed against {what}: max |logit difference| {result['max_abs_diff']:.2e} (bound {LOGIT_ATOL})")
    return result["max_abs_diff"]


def export(checkpoint: str | Path | Checkpoint, out: str | Path, *, fmt: str, log: Callable[[str], None] = print, dtype: str = "fp32",
           max_shard_size: str | int = DEFAULT_SHARD, adapter_only: bool = False) -> Path:
    """Write `checkpoint` in format hf | onnx | safetensors under the folder `out`, then check it.

    hf: weights in `dtype`, sharded above max_shard_size, with a README.md model card. adapter_only: a LoRA
    checkpoint's adapters as a PEFT folder (named for the hf export of its base, or for largo's model).
    """
    writers = {"hf": export_hf_checked, "onnx": export_onnx_checked, "safetensors": export_safetensors}
    if fmt not in writers:
        raise CheckpointError(f"--format {fmt!r} is not valid; choose one of {', '.join(writers)}")
    check_dtype(dtype)
    if fmt != "hf" and (dtype != "fp32" or str(max_shard_size) != DEFAULT_SHARD):
        raise CheckpointError(f"--dtype and --max-shard-size shape Hugging Face folders (--format hf), not --format {fmt}")
    if fmt == "hf" and not adapter_only:
        check_shard_size(max_shard_size)
    ckpt = Checkpoint.find(checkpoint)  # verified once; every writer below reads from this handle
    check_output(Path(out), fmt, adapter_only=adapter_only)
    if adapter_only:
        return export_adapter_checked(ckpt, Path(out), fmt, log)
    if fmt == "hf":
        return export_hf_checked(ckpt, Path(out), log, dtype=dtype, max_shard_size=max_shard_size)
    return writers[fmt](ckpt, Path(out), log)


# What each export writes into its folder (glob patterns): an existing file of these would be overwritten.
WRITES = {"hf": ("config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json", TOKENIZER,
                 "tokenizer_config.json", "README.md"),
          "onnx": ("model.onnx", "model.onnx.data", TOKENIZER),
          "safetensors": ("model.safetensors", "config.json", TOKENIZER),
          "adapter": ("adapter_config.json", "adapter_model.safetensors", "README.md")}


def check_output(out: Path, fmt: str, *, adapter_only: bool = False) -> None:
    """Refuse an output folder that is a run or checkpoint folder, or holds a file the export would write over."""
    if not out.is_dir():
        return
    inside = next((p for p in (out, *out.resolve().parents) if (p / STATE).is_file()), None)
    if inside is not None:
        raise CheckpointError(f"export output {out} is {'inside ' if inside != out else ''}a checkpoint folder; "
                              f"export into a new or empty folder")
    run = RunDir(out.parent) if out.name == CHECKPOINTS else RunDir(out)
    if any(p.exists() for p in (run.checkpoints, run.metrics, run.lock)):  # config.json alone may be an earlier export's
        raise CheckpointError(f"export output {out} is {'the checkpoints of ' if run.path != out else ''}a run folder "
                              f"(it holds {', '.join(p.name for p in (run.config, run.metrics, run.checkpoints, run.lock) if p.exists())}); "
                              f"export into a new or empty folder")
    found = sorted({p.name for pattern in WRITES["adapter" if adapter_only else fmt] for p in out.glob(pattern)})
    if found:
        raise CheckpointError(f"export output {out} already holds {', '.join(found)}, which the export would overwrite; "
                              f"export into a new or empty folder, or remove them")


def _rounded(model: nn.Module, dtype: str) -> nn.Module:
    """The model with its weights rounded to `dtype` and back (what a bf16 export holds), computing in fp32."""
    if dtype != "fp32":
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(DTYPES[dtype]).float())
    return model


def export_hf_checked(ckpt: Checkpoint, out: Path, log: Callable[[str], None], *, dtype: str = "fp32",
                      max_shard_size: str | int = DEFAULT_SHARD) -> Path:
    """Hugging Face Llama folder + model card; when transformers is installed, reload it and compare logits.

    bf16: transformers loads the bf16 weights upcast to fp32 and is compared with largo's model holding the same
    rounded weights (the conversion must be exact; the rounding itself is reported, not bounded).
    """
    from largo.interop.hf import export_hf

    export_hf(ckpt, out, dtype=dtype, max_shard_size=max_shard_size)
    files = sorted(p.name for p in out.glob("model*.safetensors"))
    sizes = sum((out / f).stat().st_size for f in files)
    log(f"wrote {out}: config.json, {len(files)} safetensors file(s) of {DTYPE_NAMES[dtype]} ({sizes / 2**20:.1f} MiB)"
        + (", model.safetensors.index.json" if (out / INDEX).exists() else "") + ", generation_config.json"
        + (", tokenizer.json, tokenizer_config.json" if (out / TOKENIZER).exists() else ""))
    model, cfg = load_model(ckpt)
    parity = "not checked (transformers not installed)"
    if has("transformers"):
        from transformers import AutoTokenizer, LlamaForCausalLM

        tokens = sample_tokens(out / TOKENIZER, cfg.model.vocab_size, cfg.model.max_seq_len)
        if ckpt.adapters:  # merging reorders fp32 sums: bounded relative to the logits' scale
            adapted, _ = load_model(ckpt, merge=False)
            with torch.no_grad():
                merged_logits, unmerged = model(tokens).float(), adapted(tokens).float()
            diff, bound = (merged_logits - unmerged).abs().max().item(), max(LOGIT_ATOL, MERGE_RTOL * unmerged.abs().max().item())
            log(f"merged adapters: max |logit difference| vs the unmerged model (PEFT) {diff:.2e} (bound {bound:.1e})")
            if diff > bound:
                raise CheckpointError(f"merging the adapters changed the logits by {diff:.2e} (bound {bound:.1e})")
        if dtype != "fp32":
            with torch.no_grad():
                full = model(tokens).float()
            model = _rounded(model, dtype)
            with torch.no_grad():
                log(f"rounding to {DTYPE_NAMES[dtype]}: max |logit difference| vs the fp32 weights "
                    f"{(model(tokens).float() - full).abs().max().item():.2e} (reported, not bounded)")
        ref = LlamaForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
        diff = check_parity(model, ref, tokens, f"transformers LlamaForCausalLM.from_pretrained({str(out)!r})", log)
        parity = (f"logits equal transformers' `LlamaForCausalLM` loading this folder within {diff:.1e} "
                  f"(fp32 compute{', on the same ' + DTYPE_NAMES[dtype] + ' weights' if dtype != 'fp32' else ''}); greedy tokens identical")
        if (out / TOKENIZER).exists():
            from tokenizers import Tokenizer

            text = Path(__file__).read_text()[:4000]
            same = AutoTokenizer.from_pretrained(str(out))(text, verbose=False)["input_ids"] == Tokenizer.from_file(str(out / TOKENIZER)).encode(text).ids
            log(f"AutoTokenizer encodes {'like' if same else 'DIFFERENTLY from'} largo's tokenizer")
            if not same:
                raise CheckpointError(f"{out}: AutoTokenizer does not encode like the checkpoint's tokenizer.json")
    else:
        log("transformers is not installed: parity not checked (pip install 'largo-train[hf]')")
    card = model_card(cfg, ckpt, dtype=dtype, files=files, params=sum(p.numel() for p in model.parameters()), parity=parity)
    (out / "README.md").write_text(card)
    log(f"wrote {out / 'README.md'} (model card)")
    return out


def export_adapter_checked(ckpt: Checkpoint, out: Path, fmt: str, log: Callable[[str], None]) -> Path:
    """A LoRA checkpoint's adapters as a PEFT folder; PEFT loads it over the base and must compute what largo does."""
    from largo.interop.hf import export_adapter, hf_model

    out, adapted, base, cfg = export_adapter(ckpt, out, fmt=fmt)
    log(f"wrote {out}: adapter_config.json, adapter_model.safetensors ({(out / 'adapter_model.safetensors').stat().st_size / 2**10:.1f} KiB)")
    peft = require("peft", "--adapter-only")
    tokens = sample_tokens(ckpt.tokenizer, cfg.model.vocab_size, cfg.model.max_seq_len)
    with torch.no_grad():
        expected = adapted(tokens).float()
    fresh_base, _ = load_model(adapter_base(ckpt))  # the base alone, without adapters
    if fmt == "hf":
        if not has("transformers"):
            log("transformers is not installed: the adapter folder is not checked (pip install 'largo-train[hf]')")
            return out
        ref = peft.PeftModel.from_pretrained(hf_model(fresh_base, cfg.model), str(out)).eval()
        what = "PeftModel.from_pretrained(transformers' Llama holding the base, the folder)"
        with torch.no_grad():
            got = ref(input_ids=tokens).logits.float()
    else:
        ref = peft.PeftModel.from_pretrained(fresh_base, str(out)).eval()
        what = "PeftModel.from_pretrained(largo's base, the folder)"
        with torch.no_grad():
            got = ref(tokens).float()
    diff = (got - expected).abs().max().item()
    log(f"parity vs {what}: max |logit difference| {diff:.2e}")
    if diff > LOGIT_ATOL:
        raise CheckpointError(f"parity check failed against {what}: max |logit difference| {diff:.2e} (bound {LOGIT_ATOL})")
    card = model_card(cfg, ckpt, dtype="fp32", files=["adapter_model.safetensors"],
                      params=sum(v.numel() for v in peft.get_peft_model_state_dict(adapted).values()),
                      parity=f"PEFT over the base computes largo's logits within {diff:.1e}", adapters_only=True)
    (out / "README.md").write_text(card)
    return out


def export_onnx_checked(ckpt: Checkpoint, out: Path, log: Callable[[str], None]) -> Path:
    """model.onnx traced on real held-out inputs of the run; checked with onnxruntime on other rows."""
    from largo.interop.onnx_export import export_onnx, onnx_max_abs_diff

    model, cfg = load_model(ckpt)
    get_spec(cfg.model.arch).check_export("onnx")
    traced, checked = real_inputs(cfg)
    path = export_onnx(model, traced, out / "model.onnx", max_seq_len=cfg.model.max_seq_len)
    if ckpt.tokenizer is not None:
        (out / TOKENIZER).write_bytes(ckpt.tokenizer.read_bytes())
    log(f"wrote {path} (input {tuple(traced.shape)} {traced.dtype}, batch dynamic)")
    if not has("onnxruntime"):
        log("onnxruntime is not installed: outputs not checked (pip install 'largo-train[onnx]')")
        return path
    diff = onnx_max_abs_diff(path, model, checked)
    log(f"parity vs onnxruntime on {tuple(checked.shape)} held-out inputs: max |output difference| {diff:.2e}")
    if diff > ONNX_ATOL:
        raise CheckpointError(f"{path}: onnxruntime differs from PyTorch by {diff:.2e} (bound {ONNX_ATOL})")
    return path


def real_inputs(cfg: RunConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Two held-out input batches of the run's own data: 2 rows to trace, 4 others to check."""
    spec = get_spec(cfg.model.arch)
    try:
        task = spec.task(cfg.data, cfg.model, spec.prepare(cfg.data, cfg.model, log=lambda _m: None), seed=cfg.run.seed)
        batches = task.dataset.eval_batches(2, 3)
        first, second, third = (x for x, _ in batches)
    except (LargoError, ValueError) as e:
        raise CheckpointError(f"ONNX export traces real inputs from the run's held-out data, which is not available: {e}") from None
    return first, torch.cat([second, third])


def export_safetensors(ckpt: Checkpoint, out: Path, log: Callable[[str], None]) -> Path:
    """Plain largo weights in one model.safetensors (FSDP shards gathered, adapters merged), the resolved config and the tokenizer."""
    from safetensors.torch import save_file

    config = ckpt.state["config"]
    get_spec(config["model"]["arch"]).check_export("safetensors")
    if ckpt.adapters:  # the merged weights: a plain model, trained "full" as far as anyone loading it can tell
        model, _ = load_model(ckpt)
        out.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "model.safetensors"),
                  metadata={"largo_checkpoint": str(ckpt.path), "step": str(ckpt.step), "merged": "lora"})
        config = {**config, "finetune": {}}
    else:
        ckpt.weights().consolidate(out / "model.safetensors", ckpt.step)
    write_json_atomic(out / "config.json", config)
    if ckpt.tokenizer is not None:
        (out / TOKENIZER).write_bytes(ckpt.tokenizer.read_bytes())
    log(f"wrote {out}: model.safetensors, config.json")
    return out


def model_toml(cfg: ModelConfig, init_from: Path) -> str:
    """The [model] section a fine-tuning config needs to start from an imported checkpoint (its shape comes from it)."""
    return (f'[model]\ninit_from = "{init_from}"  # the model\'s shape (width, depth, heads, vocabulary, ...) comes from it\n'
            f"max_seq_len = {min(256, cfg.max_seq_len)}  # training context; up to {cfg.max_seq_len}")


def import_model(source: str | Path, run_dir: str | Path, *, log: Callable[[str], None] = print) -> Path:
    """Import a Hugging Face Llama folder or a GGUF file into run_dir; check it against transformers."""
    from largo.interop.gguf_import import import_gguf
    from largo.interop.hf import hf_model, import_hf

    src, run_dir = Path(source), Path(run_dir)
    if src.is_file() and src.suffix == ".gguf":
        written = import_gguf(src, run_dir)
    elif src.is_dir():
        written = import_hf(src, run_dir)
    else:
        raise CheckpointError(f"{src}: neither a Hugging Face folder nor a .gguf file")
    ckpt = Checkpoint.open(written)
    model, cfg = load_model(ckpt)
    log(f"imported {src} -> {ckpt.path} ({sum(p.numel() for p in model.parameters()):,} params)")
    if has("transformers"):
        tokens = sample_tokens(ckpt.tokenizer, cfg.model.vocab_size, cfg.model.max_seq_len)
        if src.is_dir():
            from transformers import LlamaForCausalLM

            ref = LlamaForCausalLM.from_pretrained(str(src), dtype=torch.float32).eval()
            check_parity(model, ref, tokens, f"transformers LlamaForCausalLM.from_pretrained({str(src)!r})", log)
        else:
            check_parity(model, hf_model(model, cfg.model), tokens, "transformers LlamaForCausalLM holding the dequantized weights", log)
    else:
        log("transformers is not installed: parity not checked (pip install 'largo-train[hf]')")
    log("fine-tune from it with a config holding:\n" + model_toml(cfg.model, run_dir)
        + (f'\n[data]\ntokenizer = "{ckpt.tokenizer}"' if ckpt.tokenizer is not None else ""))
    return ckpt.path
