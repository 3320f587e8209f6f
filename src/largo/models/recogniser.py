"""The speech recogniser a synthesiser leans on (model.recogniser, an "asr" run): loaded safely from its run folder,
its per-token log-probabilities (for the forced alignment) and its weights' fingerprint (for the data cache)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from largo.checkpoint.store import load_tensors, locate
from largo.data.transcripts import VOCAB
from largo.errors import CheckpointError, ConfigError
from largo.models.asr import ASRConfig, ASRModel
from largo.models.spec import build_model

HINT = "train one with `largo train asr_sentences` and set model.recogniser to its run folder"


def load_recogniser(where: str, *, sample_rate: int, device: torch.device, log: Callable[[str], None]) -> tuple[ASRModel, Path]:
    """The "asr" run (or checkpoint) `where` names, at the synthesiser's rate, on device, in eval mode; and its folder."""
    hint = HINT
    if not where or not Path(where).exists():
        raise ConfigError(f"model.recogniser ({where or 'unset'}): no such run folder; durations and intelligibility need a "
                          f"speech recogniser: {hint}")
    try:
        path, state = locate(where, log=log)
    except CheckpointError as e:
        raise ConfigError(f"model.recogniser: {e}; {hint}") from None
    raw = state["config"]["model"]
    if raw.get("arch") != "asr" or state.get("sharded") or state.get("adapters"):
        raise ConfigError(f"model.recogniser {where}: model.arch = {raw.get('arch')!r}, not a plain 'asr' checkpoint; {hint}")
    cfg = ASRConfig(**{f.name: raw[f.name] for f in fields(ASRConfig) if f.name in raw})
    cfg = dataclasses.replace(cfg, vocab_size=cfg.vocab_size or len(VOCAB) + 1, init_from="")
    if cfg.sample_rate != sample_rate:
        raise ConfigError(f"model.recogniser {where}: hears {cfg.sample_rate} Hz; the synthesiser's model.sample_rate is {sample_rate}")
    model = build_model(cfg, device)
    model.load_state_dict(load_tensors(path / "model.safetensors"))
    return model.eval(), path


@torch.no_grad()
def recogniser_log_probs(model: ASRModel, wave: np.ndarray) -> np.ndarray:
    """Per-token log-probabilities (tokens, vocab) of one recording, fp32."""
    device = next(model.parameters()).device
    x = torch.from_numpy(np.asarray(wave, dtype=np.float32))[None].to(device)
    logits, lengths = model({"wave": x, "lengths": torch.tensor([x.shape[1]], device=device)})
    return F.log_softmax(logits[0, : int(lengths[0])].float(), -1).cpu().numpy()


def recogniser_fingerprint(where: str) -> str:
    """What identifies the recogniser's weights in the data cache's settings (its checkpoint's model file digest)."""
    if not where or not Path(where).exists():
        raise ConfigError(f"model.recogniser ({where or 'unset'}): no such run folder; durations and intelligibility need a "
                          f"speech recogniser: {HINT}")
    try:
        path, _ = locate(where, log=lambda _m: None)
    except CheckpointError as e:
        raise ConfigError(f"model.recogniser: {e}") from None
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()[:16]
