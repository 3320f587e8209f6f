"""Step-numbered checkpoints: safetensors for tensors, JSON for everything else, never pickle.

Layout of a run directory:
  checkpoints/step_000100/model.safetensors   model weights
                         optim.safetensors    optimizer tensors (moments, step counters)
                         rng.safetensors      torch RNG states
                         state.json           step, schedule, python/numpy RNG, data position,
                                              optimizer param groups, sha256 of every file (written last)
  checkpoints/latest                          name of the newest complete checkpoint (for people and tools)
A checkpoint is written into a hidden temporary folder, fsync'ed, then renamed into place; the
`latest` pointer moves after that and old checkpoints are pruned last. A kill at any instant
leaves the previous checkpoint whole; a failed write (a full disk) removes its partial files.
Resuming takes the most recently written complete checkpoint: state.json's `generation` counts saves
in the run directory, so after a resume from an earlier checkpoint its continuation wins over the
abandoned later steps (which are then pruned like any older checkpoint). The pointer may lag one
rename behind and is not consulted.
Sharded (FSDP) checkpoints use the same folders and state.json, with DCP files in dcp/ instead of
model/optim.safetensors (see sharded.py). What goes into a checkpoint, and how a run restores from
one, is checkpointer.py's; this module keeps the folders whole, says what "intact" means
(verify_checkpoint) and decides which checkpoint a path or --resume names (locate).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from largo.checkpoint.dcp_index import read_index
from largo.checkpoint.state_schema import FORMAT, load_state_json, signed
from largo.errors import CheckpointError
from largo.fileio import fsync_dir, sha256_file, write_json_atomic
from largo.rundir import LATEST, STATE, TOKENIZER, RunDir

DCP_DIR = "dcp"  # a sharded checkpoint's DCP files and JSON index
PREFIX = "step_"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors file, fsync'ed (contiguous CPU copies of the tensors)."""
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python and numpy RNG states as JSON, torch (CPU and CUDA) states as tensors."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return {"python": [version, list(mt), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached]}, tensors


def set_rng_state(state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Restore what rng_state() captured."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:07d}"


def _previous(root: Path) -> str:
    """How an error names the checkpoint that survives a failed save."""
    found = latest_checkpoint(root)
    return f"{found.name} is intact" if found else "there is no earlier checkpoint"


def failed_save(e: BaseException, tmp: Path, final: Path) -> CheckpointError:
    """Remove what a failed save wrote and say in one line what survives."""
    shutil.rmtree(tmp, ignore_errors=True)
    (final.parent / f".{LATEST}.tmp").unlink(missing_ok=True)
    reason = getattr(e, "strerror", None) or str(e)
    return CheckpointError(f"cannot write checkpoint {final} ({reason}); partial files removed, {_previous(final.parent)}")


def begin_checkpoint(root: Path, step: int, owner_pid: int) -> Path:
    """A fresh hidden temporary folder for checkpoint `step`, named after the process that will commit it."""
    tmp = root / f".tmp-{checkpoint_name(step)}-{owner_pid}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise failed_save(e, tmp, root / checkpoint_name(step)) from None
    return tmp


def commit_checkpoint(tmp: Path, root: Path, step: int, *, state: dict[str, Any], keep_last: int,
                      extra_files: dict[str, Path] | None = None) -> Path:
    """Add RNG, extra files and state.json (sha256 of every file, written last) to tmp; rename it into place."""
    final = root / checkpoint_name(step)
    try:
        generation = 1 + max((_generation(p) for p in checkpoint_candidates(root)), default=0)
        rng_json, rng_tensors = rng_state()
        save_tensors(tmp / "rng.safetensors", rng_tensors)
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        _pause_for_tests("save", step)
        files = {f.relative_to(tmp).as_posix(): sha256_file(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
        write_json_atomic(tmp / STATE, signed({"format": FORMAT, "step": step, "generation": generation, "rng": rng_json,
                                               "files": files, **state}))
        fsync_dir(tmp)  # state.json is the last file: a folder without it is never a checkpoint
        _pause_for_tests("rename", step)
        if final.exists():  # re-saving a step (a finished run resumed): a complete copy exists at every instant
            aside = root / f".old-{final.name}-{os.getpid()}"
            os.rename(final, aside)
            _pause_for_tests("swap", step)
            os.rename(tmp, final)
            shutil.rmtree(aside)
        else:
            os.rename(tmp, final)
        fsync_dir(root)
        _pause_for_tests("pointer", step)
        write_json_atomic(root / LATEST, final.name)
        _pause_for_tests("prune", step)
        prune(root, keep_last)
    except (OSError, SafetensorError) as e:  # a full disk, an unwritable folder: one line, nothing half-written left
        raise failed_save(e, tmp, final) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _pause_for_tests(point: str, step: int) -> None:
    """Fault-injection hook: LARGO_PAUSE_IN=<point> sleeps there so a test can kill us at a known instant.

    Points: save (tensors written, no state.json yet), rename (complete, not yet renamed into place),
    swap (between the two renames of a re-save), pointer (renamed into place, `latest` not yet moved),
    prune (pointer moved, old ones not yet pruned).
    LARGO_PAUSE_STEP=N pauses only in the save of step N; LARGO_PAUSE_MARKER names a file written on arrival.
    """
    wanted = os.environ.get("LARGO_PAUSE_STEP")
    if os.environ.get("LARGO_PAUSE_IN") == point and (not wanted or int(wanted) == step):
        import time

        marker = os.environ.get("LARGO_PAUSE_MARKER")
        if marker:
            Path(marker).write_text(f"{point} {step}")
        time.sleep(float(os.environ.get("LARGO_PAUSE_SECONDS", "30")))


def _step_of(name: str) -> int | None:
    """N for 'step_N', and for '.tmp-step_N-pid' / '.old-step_N-pid' (copies a kill may strand); else None."""
    if name.startswith((".tmp-", ".old-")):
        name = name[5:].rsplit("-", 1)[0]
    digits = name[len(PREFIX):]
    return int(digits) if name.startswith(PREFIX) and digits.isdigit() else None


def _generation(path: Path) -> int:
    """The save counter in a checkpoint's state.json: 0 when absent (older largo), -1 when unreadable."""
    try:
        gen = json.loads((path / STATE).read_text()).get("generation", 0)
    except (OSError, ValueError, AttributeError, RecursionError):
        return -1
    return gen if isinstance(gen, int) else -1


def _written_order(path: Path) -> tuple[int, int]:
    return _generation(path), _step_of(path.name) or 0


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders (state.json present), in the order they were written (oldest first)."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{PREFIX}*") if _step_of(p.name) is not None and p.is_dir() and (p / STATE).is_file()]
    return sorted(found, key=_written_order)


def checkpoint_candidates(root: Path) -> list[Path]:
    """Complete checkpoints to resume from, newest first.

    A hidden copy with its state.json counts when no `step_N` folder of its step exists: a kill
    between the two renames of a re-save leaves the step only there (state.json is written last,
    so such a copy is whole).
    """
    found = complete_checkpoints(root)
    steps = {_step_of(p.name) for p in found}
    stranded = [p for p in [*root.glob(".old-*"), *root.glob(".tmp-*")] if (p / STATE).is_file()] if root.is_dir() else []
    for p in sorted(stranded, key=lambda p: p.name.startswith(".tmp-")):  # the older copy (.old) first: it was renamed into place once
        step = _step_of(p.name)
        if step is not None and step not in steps:
            found.append(p)
            steps.add(step)
    # A state.json that does not parse cannot say when it was written: try it first, so that whoever loads
    # the newest checkpoint hears that it is damaged before an older one is taken.
    return sorted(found, key=lambda p: (_generation(p) < 0, *_written_order(p)), reverse=True)


def prune(root: Path, keep_last: int) -> None:
    """Remove all but the newest keep_last complete checkpoints, and stale temporary folders."""
    for old in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in [*root.glob(".tmp-*"), *root.glob(".old-*")]:
        pid = tmp.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (a writer of a temporary folder may still be at work)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def latest_checkpoint(root: Path) -> Path | None:
    """The most recently written complete checkpoint with a readable state.json (the `latest` pointer may lag one rename behind)."""
    return next((p for p in checkpoint_candidates(root) if _generation(p) >= 0), None)


def read_state(path: Path) -> dict[str, Any]:
    """state.json of a checkpoint folder: digest and schema checked, then every listed file's sha256."""
    state_file = path / STATE
    if not state_file.is_file():
        raise CheckpointError(f"{path}: not a complete checkpoint (no {STATE})")
    state = load_state_json(state_file, _step_of(path.name))
    for name, digest in state["files"].items():
        f = path / name
        if not _inside(path, name) or not f.is_file():
            raise CheckpointError(f"{path}: file {name!r} listed in {STATE} is missing or outside the checkpoint")
        if sha256_file(f) != digest:
            raise CheckpointError(f"{f}: sha256 does not match {STATE}; the file is truncated or corrupt")
    if (path / "dcp" / ".metadata").exists():  # DCP's own index is a pickle: its presence means another writer
        raise CheckpointError(f"{path}/dcp/.metadata: a pickled DCP index, which largo never opens (unpickling can run code); "
                              f"this checkpoint was not written by this largo")
    unlisted = [p.relative_to(path).as_posix() for p in sorted((path / "dcp").rglob("*"))] if (path / "dcp").is_dir() else []
    unlisted = [name for name in unlisted if name not in state["files"]]
    if unlisted:  # DCP reads whatever its index names: nothing unverified may sit beside its files
        raise CheckpointError(f"{path}: {unlisted[0]} is not listed in {STATE}; the checkpoint was altered")
    return state


def check_data_files(path: Path, state: dict[str, Any], files: dict[str, Path]) -> None:
    """The data folder's files that the checkpoint carries too (its tokenizer) must be the ones it trained with: a data
    folder prepared again since, with another tokenizer, feeds the model ids it never learned and scores it silently
    wrong (a translation model's chrF 50 read as 14)."""
    for name, data_file in files.items():
        digest = state["files"].get(name)
        if digest and data_file.is_file() and sha256_file(data_file) != digest:
            raise CheckpointError(f"{data_file}: not the {name} that {path} was trained with (the data folder was prepared "
                                  f"again since); prepare it with data.tokenizer = {path / name}, or train on this preparation")


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """state.json (digest, schema, file hashes), a sharded checkpoint's JSON index, the tokenizer: what "intact" means."""
    state = read_state(path)
    if state.get("sharded"):
        read_index(path / DCP_DIR)
    if TOKENIZER in state["files"]:
        check_tokenizer(path / TOKENIZER)
    return state


def check_tokenizer(path: Path) -> None:
    """Refuse a tokenizer.json that is not JSON or not a Hugging Face tokenizers file (its hash only says who wrote it)."""
    from tokenizers import Tokenizer

    try:
        raw = json.loads(path.read_bytes())
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: not valid JSON; a checkpoint's tokenizer is a Hugging Face tokenizers file") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
        raise CheckpointError(f"{path}: not a tokenizer (no 'model' object); a checkpoint's tokenizer is a Hugging Face tokenizers file")
    try:
        Tokenizer.from_str(json.dumps(raw))
    except Exception as e:  # tokenizers raises its own Exception type, naming the field it could not read
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable tokenizer ({first})") from None


def locate(where: str | Path, *, log: Callable[[str], None], resume_in: RunDir | None = None) -> tuple[Path, dict[str, Any]] | None:
    """Which checkpoint `where` names, verified: the one place "which checkpoint" is decided.

    A checkpoint folder: itself. A run folder: its newest intact checkpoint (a damaged newer one is named in a
    warning and passed over). Files are refused: largo never loads a pickle. With resume_in (--resume of that
    run): 'auto' is its newest intact checkpoint, None when it has none, and anything else must be a checkpoint folder.
    """
    if resume_in is not None:
        return _resume_point(str(where), resume_in, log)
    p = Path(where)
    if p.is_file():
        raise CheckpointError(f"{where}: a file; largo loads a run directory or a checkpoint folder of safetensors + JSON, "
                              f"never a pickle/.pt/.bin file (loading one can run code)")
    if (p / STATE).is_file():
        return p, verify_checkpoint(p)
    found = newest_intact(RunDir(p).checkpoints, log) if p.is_dir() else None
    if found is None:
        raise CheckpointError(f"{where}: neither a checkpoint folder nor a run directory with a complete checkpoint")
    return found


def _resume_point(text: str, run: RunDir, log: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """--resume auto (the run's newest intact checkpoint, if any) or --resume <checkpoint folder>."""
    if text == "auto":
        root = run.checkpoints
        linked = sorted(p.name for p in root.glob(f"{PREFIX}*") if p.is_symlink()) if root.is_dir() else []
        if linked:  # largo renames, replaces and prunes these folders; a link would be followed into someone else's files
            raise CheckpointError(f"{root / linked[0]}: a symbolic link; largo writes and prunes its checkpoint folders itself, "
                                  f"so replace the link with a copy of the folder")
        return newest_intact(root, log)  # digest, schema, hashes: a checkpoint damaged or edited is passed over
    path = Path(text)
    if path.is_file():
        raise CheckpointError(f"--resume {text}: a file, not a checkpoint folder; largo resumes only from its own "
                              f"safetensors checkpoint folders (it never loads pickle files)")
    if not path.is_dir():
        raise CheckpointError(f"--resume {text}: no such checkpoint folder (or use --resume auto)")
    return path, verify_checkpoint(path)


def newest_intact(root: Path, log: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """(checkpoint, verified state) of the newest intact checkpoint under root; each damaged newer one is named in a warning.

    None when root holds no complete checkpoint; an error when every one of them is damaged.
    """
    damaged = []
    for ckpt in checkpoint_candidates(root):
        try:
            return ckpt, verify_checkpoint(ckpt)
        except CheckpointError as e:
            log(f"warning: {e}; trying an older checkpoint")
            damaged.append(ckpt.name)
    if damaged:
        raise CheckpointError(f"{root}: every checkpoint is damaged ({', '.join(damaged)}); move them away to start over")
    return None


def _inside(folder: Path, name: str) -> bool:
    """Whether `name` is a relative path to somewhere within folder: no '..', not absolute, no link leading out."""
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or ".." in parts or "\\" in name or "\0" in name:
        return False
    return folder.resolve() in (folder / name).resolve().parents


PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # a pickle protocol >= 2 opcode; torch.save's zip archive


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file, with a one-line error when it is not one (no pickle ever: it can run code)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)  # safetensors: an 8-byte header length, then the JSON header's '{'
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if head[8:9] != b"{" and head.startswith(PICKLE_MAGIC):
        raise CheckpointError(f"{path}: is a pickle / torch.save file, which can run code when loaded; "
                              f"largo reads only safetensors (convert it with safetensors.torch.save_file where you trust it)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({' '.join(str(e).splitlines())})") from None


def check_shapes(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: Path) -> None:
    """Raise a CheckpointError listing every missing, unexpected or differently shaped tensor."""
    problems = [f"{k} missing" for k in expected if k not in found]
    problems += [f"{k} unexpected" for k in found if k not in expected]
    problems += [
        f"{k} {tuple(found[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise CheckpointError(f"{source}: checkpoint does not fit this model: {shown}")
