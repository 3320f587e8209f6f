"""The `largo` command: one subcommand per plain function; user errors print one line and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from largo.errors import LargoError


def cmd_prepare(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """Prepare the config's data (token shards, or cached arrays for classifiers; --data.* overrides apply)."""
    from largo.config import load_config
    from largo.train.tasks import prepare_data

    cfg = load_config(args.config, overrides)
    prepare_data(cfg, force=args.force)
    return 0


def cmd_train(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """Train from a TOML config with dotted overrides; --nproc N relaunches under torchrun."""
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        from largo.dist.launch import relaunch_with_torchrun

        return relaunch_with_torchrun(args.nproc, sys.argv[1:])
    from largo.config import load_config
    from largo.train.loop import train

    train(load_config(args.config, overrides), resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_eval(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """Evaluate a run's newest checkpoint (or a given checkpoint) on its held-out split."""
    from largo.checkpoint.restore import restore
    from largo.dist.env import DistEnv, pick_device
    from largo.train.evaluate import evaluate, format_result
    from largo.train.tasks import build_task

    device = pick_device(args.device)
    model, cfg, ckpt = restore(args.checkpoint, device)
    task = build_task(cfg, DistEnv(device=device))
    batches = task.dataset.eval_batches(cfg.train.micro_batch, args.max_batches)
    result = evaluate(model, batches, device=device, precision=cfg.train.precision)
    print(f"{ckpt}: loss {result['loss']:.4f} | perplexity {result['perplexity']:.2f} | {result['targets']:,} targets")
    print(format_result(result))
    for name, test_batches in task.test_sets.items():  # classification: extra named test sets
        print(f"{name}: {format_result(evaluate(model, test_batches(cfg.train.micro_batch), device=device, precision=cfg.train.precision))}")
    return 0


def cmd_generate(args: argparse.Namespace, overrides: dict[str, str]) -> int:
    """Sample text from a trained language model."""
    from tokenizers import Tokenizer

    from largo.checkpoint.restore import restore
    from largo.dist.env import pick_device
    from largo.errors import CheckpointError
    from largo.generate import generate

    model, cfg, ckpt = restore(args.checkpoint, pick_device(args.device))
    if not (ckpt / "tokenizer.json").is_file():
        raise CheckpointError(f"{ckpt}: no tokenizer.json; generate needs a language-model checkpoint")
    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    prompt = tok.encode(args.prompt).ids or [tok.token_to_id("<|endoftext|>")]
    out = generate(model, prompt, max_new_tokens=args.max_new_tokens, max_seq_len=cfg.model.max_seq_len,
                   temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print(tok.decode(out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags; --section.key overrides pass through untouched."""
    parser = argparse.ArgumentParser(prog="largo", description="Train, scale and evaluate large models on PyTorch.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="prepare a config's data: token shards or cached arrays")
    p.add_argument("config", nargs="?", help="TOML config (its [data] section is used)")
    p.add_argument("--force", action="store_true", help="prepare again even if the manifest is current")
    p.set_defaults(fn=cmd_prepare)

    p = sub.add_parser("train", help="train from a TOML config")
    p.add_argument("config", help="TOML config, e.g. configs/text_tiny.toml")
    p.add_argument("--resume", help="'auto' (newest complete checkpoint of the run) or a checkpoint folder")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in the run directory")
    p.add_argument("--nproc", type=int, default=1, help="processes on this machine (starts torchrun)")
    p.set_defaults(fn=cmd_train)

    for name, fn, text in (("eval", cmd_eval, "evaluate a checkpoint"), ("generate", cmd_generate, "sample text")):
        p = sub.add_parser(name, help=text)
        p.add_argument("checkpoint", help="run directory or checkpoint folder")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.set_defaults(fn=fn)
        if name == "eval":
            p.add_argument("--max-batches", type=int, default=0, help="0 = the whole held-out split")
        else:
            p.add_argument("--prompt", default="def ")
            p.add_argument("--max-new-tokens", type=int, default=200)
            p.add_argument("--temperature", type=float, default=0.8)
            p.add_argument("--top-k", type=int, default=50)
            p.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, dispatch, and turn LargoError into one line on stderr with exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    run: Callable[[argparse.Namespace, dict[str, str]], int] = args.fn
    try:
        from largo.config import parse_overrides

        return run(args, parse_overrides(rest))
    except LargoError as e:
        if args.debug:
            raise
        rank = os.environ.get("RANK")
        print(f"largo: error{f' (rank {rank})' if rank else ''}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("largo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
