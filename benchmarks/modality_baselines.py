"""Simple baselines for the classification recipes, on exactly the arrays the recipes train on.

  vision:    logistic regression on raw pixels
  speech:    logistic regression on log-mel features (the model's own frontend), pooled into 10 time segments
  sentiment: logistic regression on a bag of BPE tokens (the recipe's tokenizer and truncation)

Usage: python benchmarks/modality_baselines.py [configs/vision_fashion.toml ...]   (needs scikit-learn)
Prints one line per recipe and held-out set; the data are prepared first if needed (cached).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

from largo.config import RunConfig, load_config
from largo.data.arrays import Prepared
from largo.models.audio import log_mel, mel_filterbank
from largo.train.classify import prepare_classification, resolve_model, test_set_name

DEFAULT = ["configs/vision_fashion.toml", "configs/speech_digits.toml", "configs/sentiment_imdb.toml"]


def pixel_features(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float32) / 255.0


def mel_features(cfg: RunConfig, prepared: Prepared, x: np.ndarray, segments: int = 10) -> np.ndarray:
    """Log-mel from the recipe's own frontend, averaged within `segments` equal time slices: (n, n_mels * segments)."""
    m = resolve_model(cfg, prepared)
    n_fft = 2 ** int(np.ceil(np.log2(m.win_length)))
    window, fb = torch.hann_window(m.win_length), mel_filterbank(n_fft, m.n_mels, m.sample_rate, 0.0, m.f_max)
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


def baseline(path: str) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    cfg = load_config(path)
    prepared = prepare_classification(cfg)
    a = prepared.arrays
    arch = cfg.model.arch
    t0 = time.perf_counter()
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
    for name, (xk, yk) in sets.items():
        acc = float((clf.predict(scaler.transform(feats(a[xk]))) == np.asarray(a[yk])).mean())
        print(f"{Path(path).stem:16s} {name:16s} {what:46s} acc {100 * acc:6.2f}% (n={len(a[yk]):,}) [{time.perf_counter() - t0:.0f}s]", flush=True)


def main(paths: list[str]) -> None:
    torch.set_num_threads(2)
    for path in paths or DEFAULT:
        baseline(path)


if __name__ == "__main__":
    main(sys.argv[1:])
