"""state.json's integrity: a digest over its canonical JSON, and a schema for every field largo reads back.

A checkpoint's tensors are covered by the sha256s listed in state.json; state.json itself is covered
by `digest`, the sha256 of its own canonical JSON (sorted keys, no whitespace) without that key. An
edit by hand, a torn copy or a bit flip is "damaged": `--resume auto` passes over it, eval, generate
and export refuse it. A forger can recompute a digest, so every field is also checked for type and
range before anything uses it, and optimizer and scheduler states must have the shape of the live
objects they are loaded into (`check_like`): no key a fresh optimizer lacks, no value of another type.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from largo.errors import CheckpointError

FORMAT = "largo-checkpoint-v1"
SHARDED_FORMAT = "dcp-v2"  # v1 kept DCP's pickled .metadata, which largo no longer reads; v2 keeps a JSON index
MAX_STATE_BYTES = 64 << 20  # a state.json holds RNG states, optimizer groups and the config: kilobytes
_HEX64 = frozenset("0123456789abcdef")


def canonical_digest(state: dict[str, Any]) -> str:
    """sha256 of the state's canonical JSON, its own `digest` key left out."""
    body = {k: v for k, v in state.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def signed(state: dict[str, Any]) -> dict[str, Any]:
    """The state with its digest added (what commit_checkpoint writes)."""
    return {**state, "digest": canonical_digest(state)}


def _bad(where: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{where}: {what}; the checkpoint is damaged or was edited")


def _is_int(v: Any, lo: int = 0, hi: int | None = None) -> bool:
    return type(v) is int and v >= lo and (hi is None or v <= hi)


def _is_sha(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and set(v) <= _HEX64


def _is_finite(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def load_state_json(path: Path, folder_step: int | None) -> dict[str, Any]:
    """Parse, verify the digest of, and schema-check a state.json; folder_step is the step its folder name says."""
    try:
        if path.stat().st_size > MAX_STATE_BYTES:
            raise _bad(path, f"larger than {MAX_STATE_BYTES >> 20} MiB")
        state = json.loads(path.read_bytes())
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: not valid JSON") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: format {found!r}, expected {FORMAT!r}")
    if not _is_sha(state.get("digest")) or state["digest"] != canonical_digest(state):
        raise _bad(path, "its digest does not match its content")
    check_schema(state, path, folder_step)
    return state


def check_schema(state: dict[str, Any], path: Path, folder_step: int | None) -> None:
    """Types and ranges of every field largo reads; the step agrees with the folder; the weights are listed."""
    step = state.get("step")
    if not _is_int(step) or (folder_step is not None and step != folder_step):
        raise _bad(path, f"'step' is {step!r}, but the folder is step {folder_step}")
    if not _is_int(state.get("generation")):
        raise _bad(path, "'generation' must be a non-negative integer")
    files = state.get("files")
    if not isinstance(files, dict) or not all(isinstance(k, str) and _is_sha(v) for k, v in files.items()):
        raise _bad(path, "'files' must map file names to sha256 digests")
    sharded = state.get("sharded")
    if sharded is not None:
        if not isinstance(sharded, dict) or sharded.get("format") != SHARDED_FORMAT or not _is_int(sharded.get("world"), 1):
            raise CheckpointError(f"{path}: sharded format {sharded!r} is not {SHARDED_FORMAT!r}; checkpoints of largo before "
                                  f"{SHARDED_FORMAT} keep a pickled DCP index, which largo no longer opens (it can run code)")
        weights = "dcp/index.json"
    else:
        weights = "model.safetensors"
    if weights not in files:
        raise _bad(path, f"'files' does not list {weights}")
    _check_data(state.get("data"), path)
    _check_rng(state.get("rng"), path)
    if not isinstance(state.get("config"), dict):
        raise _bad(path, "'config' must be an object")
    groups, scalars = state.get("optimizer_groups"), state.get("optimizer_scalars")
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise _bad(path, "'optimizer_groups' must be a list of parameter groups, each with its params")
    if not isinstance(scalars, dict):
        raise _bad(path, "'optimizer_scalars' must map parameter names to their non-tensor state")
    schedule = state.get("schedule")
    if not isinstance(schedule, dict) or set(schedule) != {"applied_steps"} or not _is_int(schedule["applied_steps"], 0, step):
        raise _bad(path, "'schedule' must hold applied_steps, at most the step")
    for key in ("user_model",):
        if key in state and not isinstance(state[key], bool):
            raise _bad(path, f"'{key}' must be true or false")
    if "adapters" in state:
        _check_adapters(state["adapters"], path)


def _check_adapters(adapters: Any, path: Path) -> None:
    """An adapter checkpoint (only trainable tensors saved): its method and the base it was trained over, if a checkpoint."""
    base = adapters.get("base") if isinstance(adapters, dict) else None
    ok = (isinstance(adapters, dict) and set(adapters) == {"method", "base"} and adapters["method"] == "lora"
          and (base is None or isinstance(base, dict) and set(base) == {"checkpoint", "digest"}
               and isinstance(base["checkpoint"], str) and _is_sha(base["digest"])))
    if not ok:
        raise _bad(path, "'adapters' must hold method 'lora' and its base: null or {checkpoint, digest}")


def _check_data(data: Any, path: Path) -> None:
    if not isinstance(data, dict) or len(data) != 1 or not all(
            k in ("samples_seen", "batches_seen") and _is_int(v) for k, v in data.items()):
        raise _bad(path, "'data' must hold samples_seen or batches_seen, a non-negative integer")


def _check_rng(rng: Any, path: Path) -> None:
    """Python's Mersenne Twister (version 3, 624 words + position) and numpy's, as rng_state() writes them."""
    try:
        version, mt, gauss = rng["python"]
        name, keys, pos, has_gauss, cached = rng["numpy"]
        ok = (version == 3 and isinstance(mt, list) and len(mt) == 625 and all(_is_int(w, 0, 2**32 - 1) for w in mt[:-1])
              and _is_int(mt[-1], 0, 624) and (gauss is None or _is_finite(gauss))
              and name == "MT19937" and isinstance(keys, list) and len(keys) == 624 and all(_is_int(w, 0, 2**32 - 1) for w in keys)
              and _is_int(pos, 0, 624) and has_gauss in (0, 1) and _is_finite(cached) and set(rng) == {"python", "numpy"})
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        raise _bad(path, "'rng' is not a Python + NumPy Mersenne Twister state")


def check_scalars(saved: Any, where: str) -> None:
    """Optimizer state that is not a tensor: {parameter: {key: finite number, bool or null}}."""
    ok = isinstance(saved, dict) and all(isinstance(st, dict) and all(
        isinstance(k, str) and (v is None or isinstance(v, bool) or _is_finite(v)) for k, v in st.items()) for st in saved.values())
    if not ok:
        raise CheckpointError(f"{where}: must map parameters to {{key: number}}")


def check_like(saved: Any, live: Any, where: str) -> None:
    """Raise unless `saved` (from JSON) has the structure of `live`: same keys, same types, finite numbers, same strings.

    Lists stand for tuples; an int may stand where a float is expected; a None in `live` admits a number or None.
    """
    if isinstance(live, dict):
        if not isinstance(saved, dict) or set(saved) != set(map(str, live)) and set(saved) != set(live):
            raise CheckpointError(f"{where}: keys {sorted(map(str, saved)) if isinstance(saved, dict) else type(saved).__name__} "
                                  f"differ from this run's {sorted(map(str, live))}")
        for key, value in live.items():
            check_like(saved.get(key, saved.get(str(key))), value, f"{where}.{key}")
    elif isinstance(live, (list, tuple)):
        if not isinstance(saved, list):
            raise CheckpointError(f"{where}: expected a list of {len(live)}")
        if len(saved) != len(live):
            raise CheckpointError(f"{where}: {len(saved)} saved where this run has {len(live)}")
        for i, (s, v) in enumerate(zip(saved, live)):
            check_like(s, v, f"{where}[{i}]")
    elif isinstance(live, bool) or isinstance(live, str):
        if type(saved) is not type(live) or (isinstance(live, str) and saved != live):
            raise CheckpointError(f"{where}: {saved!r} where this run has {live!r}")
    elif isinstance(live, (int, float)) or live is None:
        if not (saved is None and live is None) and not _is_finite(saved) or isinstance(live, int) and type(saved) is float:
            raise CheckpointError(f"{where}: {saved!r} is not a finite number like this run's {live!r}")
