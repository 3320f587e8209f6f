"""The speech recogniser a synthesiser leans on (model.recogniser, an "asr" run): loaded safely from its run folder,
its per-token log-probabilities (for the forced alignment) and its weights' fingerprint (for the data cache)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from largo.data.transcripts import VOCAB
from largo.errors import ConfigError
from largo.models.asr import ASRConfig, ASRModel
from largo.models.scorer_run import load_scorer, locate_scorer, saved_section

HINT = "train one with `largo train asr_sentences` and set model.recogniser to its run folder"
NEED = f"durations and intelligibility need a speech recogniser: {HINT}"


def load_recogniser(where: str, *, sample_rate: int, device: torch.device, log: Callable[[str], None]) -> tuple[ASRModel, Path]:
    """The "asr" run (or checkpoint) `where` names, at the synthesiser's rate, on device, in eval mode; and its folder."""
    path, state = locate_scorer(where, "model.recogniser", NEED, log=log)
    raw = state["config"]["model"]
    if raw.get("arch") != "asr":
        raise ConfigError(f"model.recogniser {where}: model.arch = {raw.get('arch')!r}, not an 'asr' checkpoint; {HINT}")
    cfg = saved_section(ASRConfig, raw)
    cfg = dataclasses.replace(cfg, vocab_size=cfg.vocab_size or len(VOCAB) + 1, init_from="")
    if cfg.sample_rate != sample_rate:
        raise ConfigError(f"model.recogniser {where}: hears {cfg.sample_rate} Hz; the synthesiser's model.sample_rate is {sample_rate}")
    return load_scorer(cfg, path, device), path


@torch.no_grad()
def recogniser_log_probs(model: ASRModel, wave: np.ndarray) -> np.ndarray:
    """Per-token log-probabilities (tokens, vocab) of one recording, fp32."""
    device = next(model.parameters()).device
    x = torch.from_numpy(np.asarray(wave, dtype=np.float32))[None].to(device)
    logits, lengths = model({"wave": x, "lengths": torch.tensor([x.shape[1]], device=device)})
    return F.log_softmax(logits[0, : int(lengths[0])].float(), -1).cpu().numpy()


def recogniser_fingerprint(where: str) -> str:
    """What identifies the recogniser's weights in the data cache's settings (its checkpoint's model file digest)."""
    path, _ = locate_scorer(where, "model.recogniser", NEED, log=lambda _m: None)
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()[:16]
