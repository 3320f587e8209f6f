"""The `largo` command: one subcommand per plain function; user errors print one line and exit 2."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from largo.errors import LargoError


def cmd_prepare(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """Prepare the config's data (token shards, or cached arrays for classifiers; --data.* overrides apply)."""
    from largo.config import load_config
    from largo.models import get_spec

    cfg = load_config(args.config, overrides)
    get_spec(cfg.model.arch).prepare(cfg.data, cfg.model, force=args.force)
    return 0


def cmd_train(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """Train from a TOML config with dotted overrides; --nproc N relaunches under torchrun."""
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        from largo.distributed.launch import relaunch_with_torchrun

        return relaunch_with_torchrun(args.nproc, sys.argv[1:], max_restarts=args.max_restarts)
    import torch.distributed
    from torch.distributed.elastic.multiprocessing.errors import record

    from largo.config import load_config
    from largo.distributed.env import restart_count
    from largo.observe.trackers import check_names
    from largo.train.faults import PREEMPTED_EXIT
    from largo.train.run import train

    resume = args.resume
    if resume is None and restart_count() > 0:  # torchrun --max-restarts started us again: continue the run
        resume = "auto"
    # record: under torchrun, a failing rank's error goes into torchrun's summary next to its rank
    run = record(train) if "TORCHELASTIC_RUN_ID" in os.environ else train
    cfg = load_config(args.config, overrides)
    cfg.observe.trackers = check_names(cfg.observe.trackers + args.tracker)  # --tracker adds to the config's
    summary = run(cfg, resume=resume, overwrite=args.overwrite)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # a clean exit (NCCL warns and may hang at exit otherwise)
    return PREEMPTED_EXIT if summary.get("preempted") else 0


def cmd_eval(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """Evaluate a run's newest checkpoint (or a given checkpoint) on its held-out split, or on lm-evaluation-harness tasks."""
    from largo.checkpoint.restore import restore
    from largo.checkpoint.store import check_data_files
    from largo.rundir import STATE
    from largo.distributed.env import DistEnv, pick_device
    from largo.train.evaluate import evaluate, format_result
    from largo.errors import ConfigError
    from largo.models import get_spec
    from largo.models.results import TaskResults
    from largo.train.run import build_task
    from largo.config import with_decoding

    if args.max_batches < 0:
        raise ConfigError(f"--max-batches ({args.max_batches}) must be >= 0 (0 = the whole held-out split)")
    device = pick_device(args.device)
    if args.tasks:  # lm-evaluation-harness
        from largo.train.harness import evaluate_tasks

        if overrides:
            raise ConfigError(f"--{next(iter(overrides))}: decoding overrides apply to a run's own test set, not to --tasks")

        if (args.limit is not None and args.limit < 1) or args.batch_size < 1:
            raise ConfigError(f"--limit ({args.limit}) and --batch-size ({args.batch_size}) must be >= 1")
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        evaluate_tasks(args.checkpoint, tasks, device=device, include_path=args.include_path, limit=args.limit,
                       num_fewshot=args.num_fewshot, batch_size=args.batch_size)
        return 0
    if args.predictions and os.path.isdir(args.predictions):
        raise ConfigError(f"--predictions {args.predictions}: is a folder; give a file to write, e.g. predictions.jsonl")
    model, cfg, ckpt = restore(args.checkpoint, device)
    cfg = with_decoding(cfg, overrides)  # e.g. --model.beam 16: another decoding of the same weights
    say = (lambda msg: print(msg, file=sys.stderr)) if args.json else print  # --json: stdout holds the one JSON object
    task = build_task(cfg, DistEnv(device=device), log=say)
    check_data_files(Path(ckpt), json.loads((Path(ckpt) / STATE).read_text()), task.files)  # restore verified it
    spec = get_spec(cfg.model.arch)
    results = spec.results(model, task, device=device, precision=cfg.train.precision, limit=args.limit, log=say)
    if results is None:  # loss and accuracy are the task's metrics
        if args.predictions:
            raise ConfigError(f"--predictions: model.arch = {cfg.model.arch!r} has no per-example outputs to write; "
                              f"its metrics are loss and accuracy (largo eval --json prints them)")
        batches = task.dataset.eval_batches(cfg.train.micro_batch, args.max_batches)
        result = evaluate(model, batches, device=device, precision=cfg.train.precision, score=spec.score)
        say(f"{ckpt}: loss {result['loss']:.4f} | perplexity {result['perplexity']:.2f} | {result['targets']:,} targets")
        say(format_result(result))
        metrics = {k: float(v) for k, v in result.items()}
        for name, test_batches in task.test_sets.items():  # classification: extra named test sets
            extra = evaluate(model, test_batches(cfg.train.micro_batch), device=device, precision=cfg.train.precision, score=spec.score)
            say(f"{name}: {format_result(extra)}")
            metrics.update({f"{name}_{k}": float(v) for k, v in extra.items()})
        results = TaskResults(metrics)
    else:
        say(f"{ckpt}: " + " | ".join(f"{k} {v:.4g}" for k, v in results.metrics.items()))
        for base, figures in results.baselines.items():
            say(f"  baseline {base}: " + " | ".join(f"{k} {v:.4g}" for k, v in figures.items()))
        for line in results.lines:
            say(line)
    if args.predictions:
        write_predictions(Path(args.predictions), results.predictions)
        say(f"predictions: {len(results.predictions):,} lines in {args.predictions}")
    if args.json:
        print(json.dumps(results.as_json(), sort_keys=True))
    return 0


def write_predictions(path: Path, predictions: list[dict[str, Any]]) -> None:
    """One JSON line per test example (input, reference, output), written atomically."""
    from largo.fileio import write_text_atomic

    write_text_atomic(path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))


def cmd_generate(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """Generate with a trained model: a language model's sample, a translation, a class's pictures (its spec decides)."""
    from largo.checkpoint.handle import Checkpoint
    from largo.checkpoint.restore import load_model
    from largo.distributed.env import pick_device
    from largo.errors import ConfigError
    from largo.models import get_spec
    from largo.models.results import GenerateRequest

    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ConfigError(f"--temperature ({args.temperature}) must be a finite number >= 0 (0 = greedy)")
    if args.max_new_tokens < 1 or args.top_k < 0:
        raise ConfigError(f"--max-new-tokens ({args.max_new_tokens}) must be >= 1 and --top-k ({args.top_k}) >= 0 (0 = no cut)")
    if args.n < 1 or args.beam < 1 or not (math.isfinite(args.length_penalty) and args.length_penalty >= 0):
        raise ConfigError(f"--n ({args.n}) and --beam ({args.beam}) must be >= 1 and --length-penalty ({args.length_penalty}) "
                          f"a finite number >= 0")
    ckpt = Checkpoint.find(args.checkpoint)  # verified once, its tokenizer included
    model, cfg = load_model(ckpt, pick_device(args.device))
    request = GenerateRequest(prompt=args.prompt, input=args.input, class_id=args.class_id, n=args.n, out=args.out,
                              audio=args.audio, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, beam=args.beam, length_penalty=args.length_penalty, seed=args.seed)
    for line in get_spec(cfg.model.arch).respond(model, ckpt, cfg, request):
        print(line)
    return 0


def cmd_transcribe(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """A speech recogniser's text for a clip, one line (the spec's respond, as `largo generate RUN --audio clip.wav`)."""
    from largo.checkpoint.handle import Checkpoint
    from largo.checkpoint.restore import load_model
    from largo.distributed.env import pick_device
    from largo.models import get_spec
    from largo.models.results import GenerateRequest

    from largo.config import with_decoding

    ckpt = Checkpoint.find(args.checkpoint)
    model, cfg = load_model(ckpt, pick_device(args.device))
    cfg = with_decoding(cfg, overrides)  # e.g. --model.beam 1: greedy
    for line in get_spec(cfg.model.arch).respond(model, ckpt, cfg, GenerateRequest(audio=args.audio)):
        print(line)
    return 0


def cmd_speak(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """A speech synthesiser says the text into a WAV (the spec's respond, as `largo generate RUN --input TEXT --out F`)."""
    from largo.checkpoint.handle import Checkpoint
    from largo.checkpoint.restore import load_model
    from largo.distributed.env import pick_device
    from largo.models import get_spec
    from largo.models.results import GenerateRequest

    ckpt = Checkpoint.find(args.checkpoint)
    model, cfg = load_model(ckpt, pick_device(args.device))
    for line in get_spec(cfg.model.arch).respond(model, ckpt, cfg, GenerateRequest(input=args.text, out=args.out)):
        print(line)
    return 0


def cmd_report(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """Summarise runs from their metrics.jsonl: curves.png per run, and report.html + report.md (all runs overlaid)."""
    from pathlib import Path

    from largo.errors import ConfigError, RunDirError
    from largo.observe.metrics import read_metrics
    from largo.observe.plots import plot_run
    from largo.observe.report import labels_for, write_report
    from largo.rundir import RunDir

    run_dirs = [Path(r) for r in args.runs]
    for run_dir in run_dirs:
        if not RunDir(run_dir).metrics.is_file():
            raise RunDirError(f"{run_dir}: no metrics.jsonl; give a run directory such as runs/text_tiny")
    if args.samples < 0:
        raise ConfigError(f"--samples ({args.samples}) must be >= 0")
    for run_dir in run_dirs:
        train, evals = read_metrics(RunDir(run_dir).metrics, "train"), read_metrics(RunDir(run_dir).metrics, "eval")
        if train:
            last = train[-1]
            print(f"{run_dir}: step {last.get('step')} | train loss {_num(last, 'loss'):.4f} | {_num(last, 'tokens_per_s'):,.0f} tok/s | "
                  f"MFU {100 * _num(last, 'mfu'):.1f}%")
        for r in evals:
            print(f"  eval @ step {r.get('step')}: loss {_num(r, 'loss'):.4f} | accuracy {100 * _num(r, 'accuracy'):.2f}%")
        png = plot_run(run_dir)
        print(f"curves: {png}" if png else "curves: not drawn (install matplotlib)")
    samples = {}
    if args.samples:
        from largo.explain.lm import sample_texts

        for label, run_dir in zip(labels_for(run_dirs), run_dirs):
            if RunDir(run_dir).checkpoints.is_dir():
                samples[label] = sample_texts(run_dir, count=args.samples)
    out = Path(args.out) if args.out else run_dirs[0] if len(run_dirs) == 1 else run_dirs[0].parent / "report"
    html, md = write_report(run_dirs, out, samples=samples)
    print(f"report: {html} (and {md.name})")
    return 0


def _num(record: dict, key: str) -> float:
    """A number from a metrics record, NaN when absent or not a number (a hand-edited file must not crash the report)."""
    value = record.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def cmd_explain(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """Attributions (integrated gradients, with the completeness check) and attention rollout for inputs or a split."""
    from largo.distributed.env import pick_device
    from largo.explain.run import explain

    explain(args.checkpoint, [*args.inputs, *args.texts], out=args.out, split=args.split, limit=args.limit, target=args.target,
            steps=args.steps, max_steps=args.max_steps, top_k=args.top_k, device=pick_device(args.device))
    return 0


def cmd_plan(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """Estimate params, FLOPs, data, memory per device and time for a config or a named size, and recommend a setup."""
    from largo.errors import ConfigError
    from largo.plan.devices import get_device
    from largo.plan.planner import build_plan, workload_from_config, workload_from_size
    from largo.plan.report import format_plan, plan_json

    if (args.config is None) == (args.model is None):
        raise ConfigError("largo plan needs a config file or --model NAME (one of them)")
    if args.devices < 1:
        raise ConfigError(f"--devices ({args.devices}) must be >= 1")
    if args.tokens is not None and not (math.isfinite(args.tokens) and args.tokens >= 1):
        raise ConfigError(f"--tokens ({args.tokens}) must be a finite number >= 1, e.g. 1.4e11")
    say = (lambda line: print(line, file=sys.stderr)) if args.json else print  # stdout holds only the JSON then
    device = get_device(args.device_type, log=say)
    kw = dict(devices=args.devices, device=device, tokens=args.tokens, mfu=args.mfu, layout=args.layout, optimizer=args.optimizer)
    if args.model:
        precision = _precision_from_peaks(device, say) if args.layout is None else "bf16"  # a given layout decides
        workload = workload_from_size(args.model, precision=precision, **kw)
    else:
        from largo.config import load_config

        cfg = _config_as_run(load_config(args.config, overrides), device, args, say)
        workload = workload_from_config(cfg, **kw)
    if args.micro_batch:
        import dataclasses

        workload = dataclasses.replace(workload, micro_batch=args.micro_batch)
    plan = build_plan(workload)
    print(plan_json(plan) if args.json else format_plan(plan))
    return 0


def _precision_from_peaks(device: Any, say: Callable[[str], None]) -> str:
    """train.precision = 'auto' for a device known by its peaks (published, or this CPU's measured square GEMMs)."""
    from largo.precision import AUTO_MIN_SPEEDUP

    chosen = "bf16" if device.peak_bf16 >= AUTO_MIN_SPEEDUP * device.peak_fp32 else "fp32"
    say(f"precision: {chosen} (auto: {device.name} peaks bf16 {device.peak_bf16 / 1e12:,.3g} vs fp32 {device.peak_fp32 / 1e12:,.3g} TFLOP/s)")
    return chosen


def _config_as_run(cfg: Any, device: Any, args: argparse.Namespace, say: Callable[[str], None]) -> Any:
    """cfg as a run on the planned device will see it: train.precision = 'auto' decided (measured here, else from the
    device's published peaks), a few of its steps timed (this machine only), train.steps fitted to train.time_budget_s."""
    import dataclasses

    from largo.distributed.env import pick_device
    from largo.models import get_spec
    from largo.plan.check import device_type
    from largo.train.probe import probe_step
    from largo.train.run import fit_time_budget, resolve_precision

    here = pick_device(cfg.train.device, 0)
    if device_type(here) != device.name:
        if cfg.train.precision == "auto":
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=_precision_from_peaks(device, say)))
        return cfg
    shape = get_spec(cfg.model.arch).data_shape(cfg.data, cfg.model)  # the model with the fields the data decides (vocabulary, classes)
    cfg = resolve_precision(cfg, here, shape.positions, say)
    if args.mfu is None and args.measure and args.layout is None and args.optimizer is None:
        probe_step(cfg, devices=args.devices, tokens=args.tokens, log=say)  # cached: later plans and the run read it
    if cfg.train.time_budget_s and args.tokens is None:
        fitted = fit_time_budget(dataclasses.replace(cfg, model=shape.model), shape.positions, here, args.devices, say)
        cfg = dataclasses.replace(cfg, train=fitted.train)
    return cfg


def cmd_presets(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """List the presets shipped with largo, one line each."""
    from largo.presets import preset_about, preset_names

    names = preset_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {preset_about(name)}")
    return 0


def cmd_config_show(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """Print a config resolved (preset or file, plus overrides): every key with its type, default and comment."""
    from largo.config import load_config
    from largo.config_keys import show

    print(f"# {args.config}" + (f" with {' '.join(f'--{k} {v}' for k, v in overrides.items())}" if overrides else ""))
    print(show(load_config(args.config, overrides)), end="")
    return 0


def cmd_export(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """Write a checkpoint as a Hugging Face Llama folder, an ONNX file or plain safetensors, then check it."""
    from pathlib import Path

    from largo.interop import convert
    from largo.errors import ConfigError

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"export output {args.out} is a file; give a folder (it is created if missing)")
    convert.export(args.checkpoint, args.out, fmt=args.format, log=print, dtype=args.dtype, max_shard_size=args.max_shard_size,
                   adapter_only=args.adapter_only)
    return 0


def cmd_import(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """Turn a Hugging Face Llama folder or a Llama GGUF file into a largo run directory to fine-tune from."""
    from largo.interop import convert

    convert.import_model(args.source, args.out, log=print)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags; --section.key overrides pass through untouched."""
    parser = argparse.ArgumentParser(
        prog="largo", description="Train, scale and evaluate large models on PyTorch.",
        epilog="prepare, train, plan and config show take any config key as --section.key value (e.g. --optim.lr 3e-4); "
               "`largo config show CONFIG` lists every key with its type, default and comment; `largo presets` the recipes.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="prepare a config's data: token shards or cached arrays")
    p.add_argument("config", nargs="?", help="TOML config (its [data] section is used)")
    p.add_argument("--force", action="store_true", help="prepare again even if the manifest is current")
    p.set_defaults(fn=cmd_prepare)

    p = sub.add_parser("train", help="train from a TOML config")
    p.add_argument("config", help="a preset name (largo presets) or a TOML file")
    p.add_argument("--resume", help="'auto' (newest complete checkpoint of the run) or a checkpoint folder")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in the run directory")
    p.add_argument("--nproc", type=int, default=1, help="processes on this machine (starts torchrun)")
    p.add_argument("--max-restarts", type=int, default=0, help="with --nproc: torchrun restarts after a failure, resuming")
    p.add_argument("--tracker", action="append", default=[], metavar="NAME",
                   help="also log to tensorboard | wandb | mlflow | trackio (repeatable; adds to observe.trackers)")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("plan", help="how much compute, memory and data a run needs, before training")
    p.add_argument("config", nargs="?", help="TOML config (or use --model)")
    p.add_argument("--model", help="named size: 124m, 350m, 1b, 7b, 13b, 70b (Llama-style shapes)")
    p.add_argument("--devices", type=int, default=1, help="data-parallel devices")
    from largo.plan.devices import device_names

    p.add_argument("--device-type", default="cpu", help=f"{', '.join(device_names())} (cpu: this machine, measured)")
    p.add_argument("--tokens", type=float, help="training tokens, e.g. 1.4e11 (default: the config's steps, or Chinchilla's 20/param)")
    p.add_argument("--mfu", type=float, help="model FLOPs utilisation (default: measured, see --no-measure)")
    p.add_argument("--no-measure", dest="measure", action="store_false",
                   help="do not time steps of the config on this machine; use the MFU of the nearest recorded run, else an assumption")
    p.add_argument("--layout", choices=["fp32", "autocast", "mixed"], help="bytes per parameter layout (default: from train.precision)")
    # the optimizers a run can train with (optim.name): a plan for one no run can use would answer nothing
    p.add_argument("--optimizer", choices=["adamw", "muon"], help="default: the config's optim.name, else adamw")
    p.add_argument("--micro-batch", type=int, default=0, help="fix the micro-batch (default: the largest that fits)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (sorted keys)")
    p.set_defaults(fn=cmd_plan)

    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face folder, ONNX or safetensors")
    p.add_argument("checkpoint", help="run directory or checkpoint folder")
    p.add_argument("out", help="output folder")
    p.add_argument("--format", required=True, choices=["hf", "onnx", "safetensors"])
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="hf: the weights' dtype (default fp32)")
    p.add_argument("--max-shard-size", default="5GB", help="hf: largest safetensors file, e.g. 500MB; above it shards + an index")
    p.add_argument("--adapter-only", action="store_true", help="a LoRA run: only its adapters, as a PEFT folder")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("import", help="turn a Hugging Face Llama folder or a GGUF file into a largo checkpoint")
    p.add_argument("source", help="local Hugging Face Llama folder, or a .gguf file")
    p.add_argument("--out", required=True, help="run directory to create (checkpoint at step 0)")
    p.set_defaults(fn=cmd_import)

    for name, fn, text in (("eval", cmd_eval, "evaluate a checkpoint"), ("generate", cmd_generate, "generate: text, translations, pictures")):
        p = sub.add_parser(name, help=text)
        p.add_argument("checkpoint", help="run directory or checkpoint folder")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.set_defaults(fn=fn)
        if name == "eval":
            p.add_argument("--max-batches", type=int, default=0, help="0 = the whole held-out split")
            p.add_argument("--tasks", help="lm-evaluation-harness tasks instead: names or task YAML files, comma-separated")
            p.add_argument("--include-path", action="append", help="--tasks: another folder of task YAML files (repeatable)")
            p.add_argument("--limit", type=int, help="at most this many test examples (--tasks: documents per task)")
            p.add_argument("--json", action="store_true", help="print one JSON object: {\"metrics\": {...}, \"baselines\": {...}}")
            p.add_argument("--predictions", metavar="FILE.jsonl", help="write one line per test example: input, reference, output")
            p.add_argument("--num-fewshot", type=int, help="--tasks: few-shot examples per prompt (default: the task's)")
            p.add_argument("--batch-size", type=int, default=8, help="--tasks: sequences per forward pass")
        else:
            p.add_argument("--prompt", default="def ", help="language models: the text to continue")
            p.add_argument("--input", help="sequence-to-sequence models: the source text (translated, summarised)")
            p.add_argument("--class", dest="class_id", type=int, help="class-conditional models: the class to generate")
            p.add_argument("--n", type=int, default=16, help="class-conditional models: how many samples")
            p.add_argument("--out", help="where a picture or sound is written")
            p.add_argument("--audio", help="speech recognition: a clip to transcribe")
            p.add_argument("--beam", type=int, default=1, help="beam width for sequence outputs (1 = greedy)")
            p.add_argument("--length-penalty", type=float, default=1.0, help="beam search: score / length ** this")
            p.add_argument("--max-new-tokens", type=int, default=200)
            p.add_argument("--temperature", type=float, default=0.8)
            p.add_argument("--top-k", type=int, default=50)
            p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("transcribe", help="speech recognition: the text of a clip, one line")
    p.add_argument("checkpoint", help="run directory or checkpoint folder of a speech recogniser (model.arch = asr)")
    p.add_argument("audio", help="the clip: .wav (or .flac/.ogg/.mp3 with soundfile); long recordings go in windows")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(fn=cmd_transcribe)
    p = sub.add_parser("speak", help="speech synthesis: say a text into a WAV file")
    p.add_argument("checkpoint", help="run directory or checkpoint folder of a speech synthesiser (model.arch = tts)")
    p.add_argument("text", help="what to say (letters, digits, punctuation; # * & %% @ + = are read out)")
    p.add_argument("--out", required=True, help="the .wav file to write")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(fn=cmd_speak)

    p = sub.add_parser("explain", help="why a model predicts what it does: attributions checked for completeness, attention rollout")
    p.add_argument("checkpoint", help="run directory or checkpoint folder")
    p.add_argument("inputs", nargs="*", help="files or folders (images, .wav, .txt), or for text models the text itself")
    p.add_argument("--input", action="append", default=[], dest="texts",
                   help="one more input, read as the positional ones are (as `largo generate RUN --input` takes a source); repeatable")
    p.add_argument("--split", help="explain the first --limit examples of the prepared data's split: val, or test "
                   "(sequence to sequence: its test pairs)")
    p.add_argument("--limit", type=int, default=16, help="inputs taken from a split or from each folder")
    p.add_argument("--target", help="class name (classifiers), next-token text (language models), or the output text whose "
                   "tokens are attributed (sequence to sequence); default: the prediction")
    p.add_argument("--steps", type=int, default=64, help="integration steps of integrated gradients")
    p.add_argument("--max-steps", type=int, default=4096,
                   help="steps are doubled up to this while an input's completeness error is above 5%%")
    p.add_argument("--top-k", type=int, default=5,
                   help="language models, sequence to sequence: next-token predictions listed per position")
    p.add_argument("--out", help="output folder (default: RUN/explain)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(fn=cmd_explain)

    p = sub.add_parser("report", help="summarise runs, overlay their curves, write report.html and report.md")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (several: compared on the same axes)")
    p.add_argument("--out", help="report folder (default: the run directory for one run, else report/ beside the first run)")
    p.add_argument("--samples", type=int, default=2, help="samples generated per language-model run (0 = none)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("presets", help="list the recipes shipped with largo (use a name wherever a config goes)")
    p.set_defaults(fn=cmd_presets)

    p = sub.add_parser("config", help="show a config resolved: every key with its type, default and comment")
    p.add_argument("action", choices=["show"])
    p.add_argument("config", help="a preset name or a TOML file; --section.key overrides apply")
    p.set_defaults(fn=cmd_config_show, takes_overrides=True)
    for name in ("prepare", "train", "plan", "eval", "transcribe"):  # eval, transcribe: only decoding keys (config.with_decoding)
        sub.choices[name].set_defaults(takes_overrides=True)
    return parser


def version_line() -> str:
    """largo's version and the torch it would run with (read without importing torch)."""
    from importlib.metadata import PackageNotFoundError, version

    from largo import __version__

    try:
        torch = version("torch")
    except PackageNotFoundError:
        torch = "not installed"
    return f"largo {__version__} (torch {torch})"


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, dispatch; errors print one line (LargoError: its exit code, others: 1)."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    run: Callable[[argparse.Namespace, dict[str, str]], int] = args.fn
    try:
        from largo.config import parse_overrides
        from largo.errors import ConfigError

        if rest and not getattr(args, "takes_overrides", False):  # silently ignoring them would run something else than asked
            raise ConfigError(f"largo {args.command} does not take {rest[0]!r}: --section.key overrides apply to prepare, train, "
                              f"plan, config show (eval, transcribe: decoding keys); `largo {args.command} --help` lists its options")
        return run(args, parse_overrides(rest))
    except LargoError as e:
        if args.debug:
            raise
        rank = os.environ.get("RANK")
        print(f"largo: error{f' (rank {rank})' if rank else ''}: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("largo: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # not a user error, but still one line (a full disk, a dead rank): --debug shows where
        if args.debug:
            raise
        from largo.distributed.health import collective_failure

        message = collective_failure(e) or f"{describe_unexpected(e)} (run with --debug for the traceback)"
        rank = os.environ.get("RANK")
        print(f"largo: error{f' (rank {rank})' if rank else ''}: {message}", file=sys.stderr)
        return 1


def describe_unexpected(e: BaseException) -> str:
    """One line for an exception that is not a LargoError: an OSError names its file and reason."""
    if isinstance(e, OSError) and e.strerror:
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror}"
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


if __name__ == "__main__":
    raise SystemExit(main())
