"""Fuzzing checkpoints: 300 random mutations never give a traceback, exit 1, code execution or a silently different model.

100 each of: state.json values and structure, the safetensors header of the weights, and a sharded
checkpoint's DCP index (plus its data file). Half of the mutations are re-signed as a forger would
(every listed file re-hashed, state.json's digest recomputed), so the checks behind the hashes are
fuzzed too. An unsigned mutation must always be refused; a signed one may load, but a mutation of
state.json alone must never change the weights that load. Every 10th case also resumes the run with
`--resume auto` on the run directory, which must pass over a damaged newest checkpoint to the intact one before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import shutil
import struct
from pathlib import Path

import pytest
import torch

from largo.checkpoint.restore import restore
from largo.checkpoint.checkpointer import Checkpointer
from largo.checkpoint.state_schema import signed
from largo.cli import main
from largo.distributed.env import DistEnv
from largo.train.run import train
from largo.train.optim import Schedule, build_optimizers
from tests.conftest import tiny_config

CASES_PER_KIND = 100
STRANGE = [0, -1, 1, 7, 2**63, -(2**70), 1e308, -0.0, 0.5, True, False, None, "", "x", "../../etc/passwd", "F16",
           [], {}, [[[[[]]]]], {"a": {"b": {}}}, [1, 2, 3], "0" * 64]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> dict[str, Path]:
    """A replicated run with checkpoints at steps 1 and 2, and the same weights as a sharded (DCP) run."""
    tmp = tmp_path_factory.mktemp("fuzz")
    cfg = tiny_config(tmp / "plain", tiny_data, train={"steps": 2, "threads": 1}, checkpoint={"every": 1, "keep_last": 5})
    train(cfg, log=lambda _m: None)
    torch.set_num_threads(2)
    sharded = tmp / "sharded" / "runs" / "t"
    for step in (1, 2):
        model, rcfg, ckpt = restore(cfg.run_dir / "checkpoints" / f"step_000000{step}")
        opts = build_optimizers(model.train(), rcfg.optim)
        Checkpointer(sharded / "checkpoints", model=model, optimizers=opts, schedule=Schedule(opts, rcfg.optim, 2, torch.device("cpu")),
                     env=DistEnv(), sharded=True, keep_last=5, files={"tokenizer.json": ckpt / "tokenizer.json"}).save(
            step, {"data": {"samples_seen": 8 * step}, "config": rcfg.to_dict()})
    config = tmp / "cfg.json"
    config.write_text(json.dumps(tiny_config(tmp / "unused", tiny_data, train={"steps": 3, "threads": 1},
                                             checkpoint={"every": 0}).to_dict()))
    return {"plain": cfg.run_dir, "sharded": sharded, "config": config}


# ---------------------------------------------------------------- mutations


def _paths(obj: object, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON value (the root excluded)."""
    out = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for key, value in items:
        out.append(prefix + (key,))
        if len(out) < 4000:
            out += _paths(value, prefix + (key,))
    return out


def mutate_json(text: str, rng: random.Random) -> str:
    """A value replaced, a key deleted or added, a list emptied, or the text itself cut, padded or nested."""
    roll = rng.random()
    if roll < 0.1:
        return text[: rng.randrange(len(text))]
    if roll < 0.15:
        return "[" * 50_000 + text + "]" * 50_000
    obj = json.loads(text)
    path = rng.choice(_paths(obj))
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    action = rng.choice(["replace", "replace", "replace", "delete", "add"])
    if action == "delete":
        del parent[key]
    elif action == "add" and isinstance(parent, dict):
        parent[f"extra_{rng.randrange(99)}"] = rng.choice(STRANGE)
    else:
        old = parent[key]
        choices = [v for v in STRANGE if v != old or type(v) is not type(old)]
        parent[key] = rng.choice(choices)
    return json.dumps(obj)


def mutate_safetensors(raw: bytes, rng: random.Random) -> bytes:
    """The header's length, a byte of its JSON, a dtype, a shape or an offset changed; or the file cut or padded."""
    (n,) = struct.unpack("<Q", raw[:8])
    header, body = raw[8 : 8 + n], raw[8 + n :]
    roll = rng.random()
    if roll < 0.15:
        return struct.pack("<Q", rng.choice([0, n - 1, n + 1, n * 3, 2**63])) + raw[8:]
    if roll < 0.3:
        i = rng.randrange(len(header))
        return raw[:8] + header[:i] + bytes([header[i] ^ (1 << rng.randrange(8))]) + header[i + 1 :] + body
    if roll < 0.4:
        return raw[: rng.randrange(8, len(raw))]
    meta = json.loads(header)
    name = rng.choice([k for k in meta if k != "__metadata__"])
    field = rng.choice(["dtype", "shape", "data_offsets"])
    value = meta[name][field]
    if field == "dtype":
        meta[name][field] = rng.choice([d for d in ("F16", "BF16", "I64", "BOOL", "U8", "F64", "XX", 3) if d != value])
    else:
        meta[name][field] = [v + rng.choice([-1, 1, 4, 2**40]) for v in value] if value else [rng.randrange(9)]
    new = json.dumps(meta).encode()
    return struct.pack("<Q", len(new)) + new + body


def flip_data(raw: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(raw))
    return raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1 :]


def resign(ckpt: Path) -> None:
    """Re-hash every listed file and recompute state.json's digest, as a forger would (state.json must still parse)."""
    try:
        state = json.loads((ckpt / "state.json").read_text())
        for name in list(state["files"]):
            if (ckpt / name).is_file():
                state["files"][name] = hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
        (ckpt / "state.json").write_text(json.dumps(signed(state)))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        pass  # the mutation broke state.json itself: there is nothing a forger could sign


def apply(kind: str, ckpt: Path, rng: random.Random) -> str:
    """Mutate one file of checkpoint `ckpt` by kind; return the file's name."""
    if kind == "state":
        target = ckpt / "state.json"
        target.write_text(mutate_json(target.read_text(), rng))
    elif kind == "safetensors":
        target = ckpt / "model.safetensors"
        target.write_bytes(mutate_safetensors(target.read_bytes(), rng))
    elif rng.random() < 0.8:
        target = ckpt / "dcp" / "index.json"
        target.write_text(mutate_json(target.read_text(), rng))
    else:
        target = ckpt / "dcp" / "__0_0.distcp"
        target.write_bytes(flip_data(target.read_bytes(), rng))
    return target.name


def run_cli(argv: list[str]) -> tuple[int, list[str], str]:
    """The real CLI in-process: (exit code, stderr lines, stdout)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    return code, err.getvalue().splitlines(), out.getvalue()


def weights_of(ckpt: Path) -> dict[str, torch.Tensor]:
    return restore(ckpt)[0].state_dict()


@pytest.mark.parametrize("kind", ["state", "safetensors", "dcp"])
def test_random_mutations_are_refused_or_harmless(kind: str, pristine: dict[str, Path], tmp_path: Path) -> None:
    source = pristine["sharded" if kind == "dcp" else "plain"]
    original = {step: weights_of(source / "checkpoints" / f"step_000000{step}") for step in (1, 2)}
    counts = {"refused": 0, "loaded": 0, "signed": 0, "resumed": 0}
    marker = tmp_path / "code_ran"
    for case in range(CASES_PER_KIND):
        rng = random.Random(f"{kind}-{case}")
        run = tmp_path / f"case{case}"
        shutil.copytree(source, run)
        ckpt = run / "checkpoints" / "step_0000002"
        name = apply(kind, ckpt, rng)
        is_signed = rng.random() < 0.5
        if is_signed:
            resign(ckpt)
            counts["signed"] += 1
        code, err, out = run_cli(["eval", str(ckpt), "--max-batches", "1"])
        what = f"{kind} case {case} ({name}, {'signed' if is_signed else 'unsigned'})"
        assert code in (0, 2) and not marker.exists(), f"{what}: exit {code}: {err}"
        if code == 2:
            assert len(err) == 1 and err[0].startswith("largo: error: "), f"{what}: {err}"
            counts["refused"] += 1
        else:
            assert is_signed and not err, f"{what}: an unsigned change loaded: {err}"
            counts["loaded"] += 1
            if kind == "state":  # state.json alone never changes which weights load
                loaded = weights_of(ckpt)
                assert all(torch.equal(loaded[k], original[2][k]) for k in loaded), f"{what}: different weights"
        if case % 10 == 0:  # resume: a damaged newest checkpoint is passed over, never a crash
            code, err, out = run_cli(["train", str(pristine["config"]), "--run.out_dir", str(run.parent), "--run.name", run.name,
                                      "--resume", "auto"])
            assert code in (0, 2) and not marker.exists(), f"{what}: resume exit {code}: {err}"
            if not is_signed:
                assert code == 0 and "resumed from" in out and "step_0000001 at step 1" in out, f"{what}: {out[-600:]} {err}"
                counts["resumed"] += 1
        shutil.rmtree(run)
    print(f"FUZZ {kind}: {CASES_PER_KIND} mutations, {counts}")
    assert counts["refused"] >= CASES_PER_KIND - counts["signed"]  # every unsigned case at least


def test_unreadable_sharded_index_is_one_line_and_resume_takes_the_one_before(pristine: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "t"
    shutil.copytree(pristine["sharded"], run)
    ckpt = run / "checkpoints" / "step_0000002"
    (ckpt / "dcp" / "index.json").write_bytes(b"\x80\x04 not json")
    resign(ckpt)  # even with every hash vouching for it
    code, err, _ = run_cli(["eval", str(ckpt)])
    assert code == 2 and err == [f"largo: error: {ckpt}/dcp/index.json: not valid JSON; the sharded checkpoint index is damaged "
                                 f"or was not written by largo"]
    code, err, out = run_cli(["train", str(pristine["config"]), "--run.out_dir", str(tmp_path), "--run.name", "t", "--resume", "auto"])
    assert code == 0 and f"resumed from {run}/checkpoints/step_0000001 at step 1" in out, (out[-500:], err)
