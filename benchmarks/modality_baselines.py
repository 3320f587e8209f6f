"""Simple baselines for the classification recipes, on exactly the arrays the recipes train on, next to the recipe's run.

  vision:    logistic regression on raw pixels
  speech:    logistic regression on log-mel features (the model's own frontend), pooled into 10 time segments
  sentiment: logistic regression on a bag of BPE tokens (the recipe's tokenizer and truncation)

Usage: python benchmarks/modality_baselines.py [--train] [vision_fashion ...]   (needs scikit-learn)
With --train each recipe is trained first (`largo train CONFIG --overwrite`, timed); without it the
figures of an existing run in the recipe's run directory are used. Prints one row per recipe and
held-out set: the transformer's accuracy, the baseline's, and the training wall time.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from largo.config import RunConfig, load_config
from largo.data.arrays import Prepared
from largo.observe.metrics import read_metrics
from largo.models.audio import log_mel, mel_filterbank
from largo.models import get_spec
from largo.models.classifier import test_set_name

DEFAULT = ["vision_fashion", "speech_digits", "sentiment_imdb"]


def pixel_features(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float32) / 255.0


def mel_features(cfg: RunConfig, prepared: Prepared, x: np.ndarray, segments: int = 10) -> np.ndarray:
    """Log-mel from the recipe's own frontend, averaged within `segments` equal time slices: (n, n_mels * segments)."""
    m = get_spec(cfg.model.arch).resolve(cfg, prepared)
    window, fb = torch.hann_window(m.win_length), mel_filterbank(m.n_fft, m.n_mels, m.sample_rate, 0.0, m.f_max)
    out = []
    for start in range(0, len(x), 512):
        feats = log_mel(torch.from_numpy(np.asarray(x[start : start + 512], dtype=np.float32)), window, fb, m.hop_length)
        chunks = torch.tensor_split(feats, segments, dim=2)
        out.append(torch.cat([c.mean(dim=2) for c in chunks], dim=1).numpy())
    return np.concatenate(out)


def token_features(x: np.ndarray, vocab: int):
    """Binary bag of tokens as a sparse matrix (padding id 0 dropped)."""
    from scipy.sparse import csr_matrix

    rows = np.repeat(np.arange(len(x)), x.shape[1])
    cols = np.asarray(x, dtype=np.int64).reshape(-1)
    keep = cols != 0
    m = csr_matrix((np.ones(int(keep.sum()), dtype=np.float32), (rows[keep], cols[keep])), shape=(len(x), vocab))
    m.data[:] = 1.0
    return m


def baseline(cfg: RunConfig) -> tuple[str, dict[str, tuple[float, int]]]:
    """(method, {set name: (accuracy, examples)}) of a logistic regression fitted on the training arrays."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    prepared = get_spec(cfg.model.arch).prepare(cfg.data, cfg.model)
    a, arch = prepared.arrays, cfg.model.arch
    if arch == "vit":
        what, feats = "logistic regression on pixels", pixel_features
    elif arch == "audio":
        what, feats = "logistic regression on log-mel (10 segments)", lambda x: mel_features(cfg, prepared, x)
    else:
        what, feats = "logistic regression on a bag of BPE tokens", lambda x: token_features(x, int(prepared.meta["vocab_size"]))
    train_x = feats(a["train_x"])
    scaler = StandardScaler(with_mean=arch != "text_classifier").fit(train_x)
    clf = LogisticRegression(max_iter=300, C=1.0 if arch != "text_classifier" else 0.1)
    clf.fit(scaler.transform(train_x), np.asarray(a["train_y"]))
    sets = {"held-out": ("val_x", "val_y")}
    if "test_x" in a:
        sets[test_set_name(cfg.data.test_source)] = ("test_x", "test_y")
    return what, {name: (float((clf.predict(scaler.transform(feats(a[xk]))) == np.asarray(a[yk])).mean()), len(a[yk]))
                  for name, (xk, yk) in sets.items()}


def run_results(cfg: RunConfig) -> dict[str, float]:
    """The recipe run's final accuracy per set (held-out and extra test sets), from its metrics.jsonl."""
    path = cfg.run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    summary = read_metrics(path, "summary")[-1:]
    out = {"held-out": summary[0]["val_accuracy"]} if summary else {}
    return out | {r["name"]: r["accuracy"] for r in read_metrics(path, "test_set")}


def main(args: list[str]) -> None:
    torch.set_num_threads(2)
    train = "--train" in args
    rows = ["| recipe | set | examples | largo | baseline | baseline method | train wall |", "|---|---|---:|---:|---:|---|---:|"]
    for path in [a for a in args if a != "--train"] or DEFAULT:
        wall = "-"
        if train:  # the run's own log goes to the terminal; the table comes at the end
            t0 = time.perf_counter()
            subprocess.run(["largo", "train", path, "--overwrite"], check=True)
            wall = f"{(time.perf_counter() - t0) / 60:.1f} min"
        cfg = load_config(path)
        ours = run_results(cfg)
        what, scores = baseline(cfg)
        for name, (acc, n) in scores.items():
            mine = f"{100 * ours[name]:.2f}%" if name in ours else "no run"
            rows.append(f"| {Path(path).stem} | {name} | {n:,} | {mine} | {100 * acc:.2f}% | {what} | {wall} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
