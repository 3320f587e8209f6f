"""Hub-grade export folders: weights in a chosen dtype, sharded with an index above a size, and a README.md model card.

Shards are planned by huggingface_hub's splitter (the one `save_torch_state_dict` uses, on meta tensors:
nothing is read to plan) and written one shard at a time: a tensor is read from the checkpoint only
when its shard is written, so a sharded (FSDP) run's export never holds the whole model, only one shard.
The index (`model.safetensors.index.json`) has huggingface_hub's and transformers' layout.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from largo.checkpoint.handle import Checkpoint
from largo.config import RunConfig
from largo.errors import CheckpointError
from largo.fileio import write_json_atomic
from largo.optional import require
from largo.rundir import RunDir

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16"}
DEFAULT_SHARD = "5GB"  # huggingface_hub's and transformers' default
INDEX = "model.safetensors.index.json"


def check_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise CheckpointError(f"--dtype {dtype!r} is not valid; choose one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def check_shard_size(max_shard_size: str | int) -> None:
    """Refuse a size huggingface_hub cannot read (e.g. '5GB', '500MB', 10**9) before anything is written."""
    hub = require("huggingface_hub", "writing Hugging Face safetensors shards")
    try:
        hub.split_torch_state_dict_into_shards({"x": torch.empty(1, device="meta")}, max_shard_size=max_shard_size)
    except ValueError:
        raise CheckpointError(f"--max-shard-size {max_shard_size!r} is not a size such as '5GB', '500MB' or a number of bytes") from None


def write_shards(out: Path, shapes: dict[str, tuple[int, ...]], read: Callable[[list[str]], dict[str, torch.Tensor]], *,
                 dtype: str, max_shard_size: str | int = DEFAULT_SHARD) -> list[str]:
    """Write tensors `shapes` names as model.safetensors, or as model-0000k-of-0000n.safetensors + the index when they
    exceed max_shard_size; read(names) supplies one shard's tensors at a time. Returns the files written."""
    hub = require("huggingface_hub", "writing Hugging Face safetensors shards")
    torch_dtype = check_dtype(dtype)
    meta = {name: torch.empty(shape, dtype=torch_dtype, device="meta") for name, shape in shapes.items()}
    try:
        split = hub.split_torch_state_dict_into_shards(meta, max_shard_size=max_shard_size)
    except ValueError as e:
        raise CheckpointError(f"--max-shard-size {max_shard_size!r}: {e}") from None
    for old in [*out.glob("model*.safetensors"), out / INDEX]:  # an earlier export's files would shadow or mix with these
        old.unlink(missing_ok=True)
    for filename, names in split.filename_to_tensors.items():
        tensors = read(names)
        save_file({n: tensors[n].detach().to(torch_dtype).contiguous().cpu() for n in names}, str(out / filename),
                  metadata={"format": "pt"})
        del tensors  # one shard in memory at a time
    if split.is_sharded:
        write_json_atomic(out / INDEX, {"metadata": dict(split.metadata), "weight_map": dict(split.tensor_to_filename)})
    return list(split.filename_to_tensors) + ([INDEX] if split.is_sharded else [])


def _records(run: RunDir | None, kind: str) -> list[dict[str, Any]]:
    path = run.metrics if run else None
    if path is None or not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("kind") == kind:
            out.append(record)
    return out


def harness_results(run: RunDir | None, step: int) -> dict[str, dict[str, float]]:
    """lm-evaluation-harness scores `largo eval --tasks` recorded for this step of the run, by task."""
    path = run.lm_eval if run else None
    if path is None or not path.is_file():
        return {}
    try:
        saved = json.loads(path.read_text())
    except ValueError:
        return {}
    runs = [r for r in saved.get("runs", []) if isinstance(r, dict) and r.get("step") == step] if isinstance(saved, dict) else []
    return {task: scores for r in runs for task, scores in r.get("results", {}).items()}


def _table(rows: list[tuple[str, str]]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def model_card(cfg: RunConfig, ckpt: Checkpoint, *, dtype: str, files: list[str], params: int,
               parity: str, adapters_only: bool = False) -> str:
    """README.md for an exported folder: what the model is, how it was trained, on what, its scores, how to load it."""
    hub = require("huggingface_hub", "writing a model card")
    m, run_dir, step = cfg.model, ckpt.run, ckpt.step
    samples = int(ckpt.state.get("data", {}).get("samples_seen", 0))
    header = hub.ModelCardData(library_name="peft" if adapters_only else "transformers", pipeline_tag="text-generation",
                               tags=["largo", "llama"] + (["lora"] if cfg.finetune.adapters else [])).to_yaml()
    lines = [f"---\n{header}\n---", f"# {cfg.run.name}", "",
             f"A decoder-only language model trained with largo (Llama-shaped: `LlamaForCausalLM` in transformers), "
             f"exported from `{ckpt.path}` at step {step:,}." + (" Only the LoRA adapters are in this folder." if adapters_only else ""),
             "", "## Model", "", _table([
                 ("parameters", f"{params:,}"), ("layers x width", f"{m.n_layers} x {m.dim}"),
                 ("heads (query / key-value)", f"{m.n_heads} / {m.kv_heads}"), ("MLP width", f"{m.hidden}"),
                 ("vocabulary", f"{m.vocab_size:,}"), ("context", f"{m.max_seq_len:,}"), ("rotary base", f"{m.rope_theta:g}"),
                 ("tied embeddings", str(m.tie_embeddings).lower()), ("weights", f"{DTYPE_NAMES.get(dtype, dtype)} safetensors: {', '.join(files)}"),
                 ("parity", parity)])]
    data = cfg.data
    seen = samples * m.max_seq_len
    training = [("steps", f"{step:,}"), ("sequences seen", f"{samples:,}"), ("tokens seen", f"{seen:,}"),
                ("data", f"`{data.source}`" + (f" (split {data.split})" if data.source.startswith("hf:") else "")),
                ("optimizer", f"{cfg.optim.name}, peak lr {cfg.optim.lr:g}, {cfg.optim.schedule} schedule"),
                ("precision", cfg.train.precision)]
    if cfg.model.init_from:
        training.append(("initialised from", f"`{cfg.model.init_from}`"))
    if cfg.finetune.adapters:
        f = cfg.finetune
        training.append(("fine-tuning", f"LoRA rank {f.rank}, alpha {f.alpha:g}, dropout {f.dropout:g} on {', '.join(f.target_modules)}"
                         + ("" if adapters_only else " (merged into these weights)")))
    lines += ["", "## Training", "", _table(training)]
    evals = [r for r in _records(run_dir, "eval") if r.get("step") == step]
    harness = harness_results(run_dir, step)
    lines += ["", "## Evaluation", ""]
    if evals:
        e = evals[-1]
        lines.append(f"Held-out split of the training data: loss {e['loss']:.4f}, perplexity {e['perplexity']:.2f}, "
                     f"next-token accuracy {e['accuracy']:.4f}.")
    if harness:
        lines += ["", "lm-evaluation-harness (`largo eval --tasks`):", "", "| task | metric | value |", "|---|---|---|"]
        lines += [f"| {task} | {metric} | {value:.4f} |" for task, scores in harness.items() for metric, value in scores.items()]
    if not evals and not harness:
        lines.append("No evaluation was recorded for this step (run `largo eval RUN --tasks ...` before exporting).")
    lines += ["", "## How to load it", "", "```python"]
    if adapters_only:
        lines += ["from peft import PeftModel", "from transformers import AutoModelForCausalLM",
                  "", "# the base: `largo export <model.init_from> base_dir --format hf`",
                  "base = AutoModelForCausalLM.from_pretrained(\"base_dir\")",
                  "model = PeftModel.from_pretrained(base, \"this_folder\")"]
    else:
        lines += ["import torch", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  "tokenizer = AutoTokenizer.from_pretrained(\"this_folder\")",
                  f"model = AutoModelForCausalLM.from_pretrained(\"this_folder\", dtype=torch.{DTYPE_NAMES.get(dtype, 'float32')})",
                  "ids = tokenizer(\"def \", return_tensors=\"pt\").input_ids",
                  "print(tokenizer.decode(model.generate(ids, max_new_tokens=40)[0]))"]
    lines += ["```", "", "## Training configuration", "", "```json", json.dumps(cfg.to_dict(), indent=1), "```", ""]
    return "\n".join(lines)
