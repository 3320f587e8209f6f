"""`largo eval RUN --tasks NAMES`: EleutherAI's lm-evaluation-harness on a largo language model.

A thin lm_eval model class over largo's forward and generate: lm-eval's TemplateLM splits every
(context, continuation) request into tokens exactly as its own `hf` model does; this class only
scores token lists (log-softmax of largo's logits, truncated on the left to the context length, as
HFLM truncates), rolls windows for perplexity tasks with lm-eval's own helpers, and generates greedily.
Tasks are lm-eval's registry names or paths to local task YAML files (their folder is indexed alone,
so no built-in task is loaded). Scores are printed and kept in the run directory's lm_eval.json, where
`largo export --format hf` finds them for the model card.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from largo.checkpoint.handle import Checkpoint
from largo.checkpoint.restore import load_model
from largo.data.prepare import EOT
from largo.errors import CheckpointError, ConfigError, LargoError
from largo.fileio import write_json_atomic
from largo.models import get_spec
from largo.models.generate import generate
from largo.optional import require



def largo_lm(model: nn.Module, tokenizer: Tokenizer, *, max_length: int, device: torch.device, batch_size: int = 8) -> Any:
    """An lm_eval LM (TemplateLM) scoring and generating with a largo language model."""
    require("lm_eval", "largo eval --tasks")
    from lm_eval import utils
    from lm_eval.api.model import TemplateLM

    class LargoLM(TemplateLM):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.tokenizer, self.max_length, self._device, self.batch_size = model, tokenizer, max_length, device, batch_size

        @property
        def eot_token_id(self) -> int:
            return tokenizer.token_to_id(EOT)

        def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
            return tokenizer.encode(string).ids  # largo's BPE adds no special tokens

        def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
            return tokenizer.decode(tokens)

        @torch.no_grad()
        def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False,
                                  **kwargs: Any) -> list[tuple[float, bool]]:
            out = []
            for start in range(0, len(requests), self.batch_size):
                chunk = requests[start : start + self.batch_size]
                # as HFLM: the last max_length + 1 tokens, the final one only a target
                inputs = [(ctx + cont)[-(self.max_length + 1):][:-1] for _, ctx, cont in chunk]
                width = max(len(x) for x in inputs)
                batch = torch.zeros(len(inputs), width, dtype=torch.long)  # right padding: a causal model's real positions never see it
                for i, x in enumerate(inputs):
                    batch[i, : len(x)] = torch.tensor(x)
                logprobs = F.log_softmax(self.model(batch.to(self._device)).float(), dim=-1)  # (b, t, vocab)
                for i, ((_, _, cont), x) in enumerate(zip(chunk, inputs)):
                    rows = logprobs[i, len(x) - len(cont) : len(x)]  # (len(cont), vocab)
                    target = torch.tensor(cont, device=rows.device)
                    greedy = bool((rows.argmax(-1) == target).all())
                    out.append((float(rows.gather(1, target[:, None]).sum()), greedy))
            return out

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
            scores = []
            for (text,) in [r.args for r in requests]:
                windows = [(None, *utils.make_disjoint_window(w)) for w in utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1)]
                scores.append(sum(ll for ll, _ in self._loglikelihood_tokens(windows)))
            return scores

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            out = []
            for context, gen_kwargs in [r.args for r in requests]:
                until = gen_kwargs.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                new = int(gen_kwargs.get("max_gen_toks", 256))
                prompt = self.tok_encode(context)[-max(1, self.max_length - new):] or [self.eot_token_id]
                ids = generate(self.model, prompt, max_new_tokens=new, max_seq_len=self.max_length, temperature=0.0,
                               stop_id=self.eot_token_id)[len(prompt):]
                text = self.tok_decode([i for i in ids if i != self.eot_token_id])
                for stop in until:
                    text = text.split(stop)[0] if stop else text
                out.append(text)
            return out

    return LargoLM()


def task_names(tasks: list[str]) -> tuple[list[str], list[str], bool]:
    """(task names, folders to index, whether lm-eval's built-in tasks are needed): a path to a YAML file is a local task."""
    import yaml

    names, folders, builtin = [], [], False
    for task in tasks:
        path = Path(task)
        if path.suffix in (".yaml", ".yml"):
            if not path.is_file():
                raise ConfigError(f"--tasks {task}: no such task file")
            spec = yaml.safe_load(path.read_text()) or {}
            if not isinstance(spec, dict) or not isinstance(spec.get("task"), str):
                raise ConfigError(f"--tasks {task}: a task YAML needs a 'task: <name>' key")
            names.append(spec["task"])
            folders.append(str(path.resolve().parent))
        else:
            names.append(task)
            builtin = True
    return names, sorted(set(folders)), builtin


def scores(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """lm-eval's results as {task: {metric: value}} (its 'acc,none' keys shortened; stderr and aliases left out)."""
    out = {}
    for task, values in results.get("results", {}).items():
        metrics = {k.split(",")[0]: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and "stderr" not in k and k != "sample_len" and math.isfinite(float(v))}
        out[task] = metrics
    return out


def run_harness(lm: Any, tasks: list[str], *, include_path: list[str] | None = None, limit: int | None = None,
                num_fewshot: int | None = None) -> dict[str, Any]:
    """lm_eval.simple_evaluate over `lm` (an lm_eval LM or a model name such as "hf") with local or built-in tasks."""
    lm_eval = require("lm_eval", "largo eval --tasks")
    from lm_eval.tasks import TaskManager

    names, folders, builtin = task_names(tasks)
    manager = TaskManager(include_path=[*folders, *(include_path or [])] or None, include_defaults=builtin)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"--tasks: lm-eval knows no task {unknown[0]!r}; give a registered name or a path to a task YAML file")
    try:
        results = lm_eval.simple_evaluate(model=lm, tasks=names, task_manager=manager, limit=limit, num_fewshot=num_fewshot,
                                          bootstrap_iters=0, log_samples=False, random_seed=0, numpy_random_seed=0,
                                          torch_random_seed=0, fewshot_random_seed=0)
    except LargoError:
        raise
    except (OSError, ValueError, KeyError) as e:  # a dataset the task names that cannot be read offline, a malformed task
        raise ConfigError(f"--tasks {','.join(tasks)}: lm-eval could not run it: {' '.join(str(e).split())[:300]}") from None
    return results


def evaluate_tasks(checkpoint: str | Path, tasks: list[str], *, device: torch.device, include_path: list[str] | None = None,
                   limit: int | None = None, num_fewshot: int | None = None, batch_size: int = 8,
                   log: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Run the harness on a checkpoint's language model; print and record {task: {metric: value}}."""
    require("lm_eval", "largo eval --tasks")
    task_names(tasks)  # a missing task file is one line before the model loads
    ckpt = Checkpoint.find(checkpoint)
    model, cfg = load_model(ckpt, device)
    if not get_spec(cfg.model.arch).generates or ckpt.tokenizer is None:
        raise CheckpointError(f"{ckpt.path}: lm-evaluation-harness scores language models with a tokenizer; "
                              f"model.arch = {cfg.model.arch!r} is not one")
    lm = largo_lm(model, Tokenizer.from_file(str(ckpt.tokenizer)), max_length=cfg.model.max_seq_len, device=device,
                  batch_size=batch_size)
    found = scores(run_harness(lm, tasks, include_path=include_path, limit=limit, num_fewshot=num_fewshot))
    for task, metrics in found.items():
        log(f"{task}: " + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    record(ckpt, tasks, found, limit=limit, num_fewshot=num_fewshot)
    return found


def record(ckpt: Checkpoint, tasks: list[str], found: dict[str, dict[str, float]], **settings: Any) -> None:
    """Append the scores to the run directory's lm_eval.json (the model card of an export reads them)."""
    if ckpt.run is None:
        return
    path = ckpt.run.lm_eval
    try:
        saved = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        saved = {}
    runs = saved.get("runs", []) if isinstance(saved, dict) and isinstance(saved.get("runs"), list) else []
    runs.append({"checkpoint": str(ckpt.path), "step": ckpt.step, "tasks": tasks, "results": found, **settings})
    write_json_atomic(path, {"runs": runs})
