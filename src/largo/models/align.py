"""CTC forced alignment: the best path of a transcript through a recogniser's CTC lattice (Viterbi), and the duration of
each character that path implies (what a duration-based synthesiser learns to predict).

The lattice is the usual CTC one: states blank, c1, blank, c2, ..., cL, blank; a state is kept, left for the next, or
(for a character unlike the one two states back) the blank between them is skipped. Frames on a character's own state
are that character's; a run of blank frames between two characters is split in half between them (leading blanks go to
the first character, trailing ones to the last), so the durations add up to the frames of the utterance.
"""

from __future__ import annotations

import numpy as np

from largo.data.transcripts import BLANK

NEG = -1e30  # log(0) that stays finite under addition


def lattice(labels: list[int]) -> np.ndarray:
    """The CTC states of a label sequence: blank, l1, blank, l2, ..., lL, blank (2L + 1 labels)."""
    states = np.full(2 * len(labels) + 1, BLANK, dtype=np.int64)
    states[1::2] = labels
    return states


def forced_path(log_probs: np.ndarray, labels: list[int]) -> np.ndarray | None:
    """Viterbi best state index per frame (T,) of `labels` through log_probs (T, vocab); None when T frames are too few."""
    states = lattice(labels)
    t_len, s_len = log_probs.shape[0], len(states)
    emit = log_probs[:, states]  # (T, S)
    skip = np.zeros(s_len, dtype=bool)
    skip[3::2] = states[3::2] != states[1:-2:2]  # character -> next character over the blank, unless they repeat
    score = np.full(s_len, NEG)
    score[:2] = emit[0, :2]
    back = np.zeros((t_len, s_len), dtype=np.int8)  # 0 stay, 1 from s - 1, 2 from s - 2
    for t in range(1, t_len):
        moves = np.stack([score, np.r_[NEG, score[:-1]], np.where(skip, np.r_[NEG, NEG, score[:-2]], NEG)])
        back[t] = moves.argmax(0)
        score = moves.max(0) + emit[t]
    end = s_len - 1 if s_len == 1 or score[-1] >= score[-2] else s_len - 2
    if score[end] <= NEG / 2:
        return None
    path = np.empty(t_len, dtype=np.int64)
    path[-1] = end
    for t in range(t_len - 1, 0, -1):
        path[t - 1] = path[t] - back[t, path[t]]
    return path


def durations(path: np.ndarray, n_labels: int) -> np.ndarray:
    """Frames per character (n_labels,) from a forced path of state indices; blank runs split between their neighbours."""
    out = np.zeros(n_labels, dtype=np.int64)
    t, t_len = 0, len(path)
    while t < t_len:
        s = int(path[t])
        end = t
        while end + 1 < t_len and path[end + 1] == s:
            end += 1
        run = end - t + 1
        if s % 2:  # a character's own frames
            out[(s - 1) // 2] += run
        else:  # blank k = s // 2 lies between characters k - 1 and k
            before, after = s // 2 - 1, s // 2
            first = run - run // 2 if before >= 0 and after < n_labels else (run if before >= 0 else 0)
            if before >= 0:
                out[before] += first
            if after < n_labels:
                out[after] += run - first
        t = end + 1
    return out


def uniform_durations(frames: int, n_labels: int) -> np.ndarray:
    """Frames spread as evenly as possible over the characters (the fallback where no forced path exists)."""
    edges = np.round(np.linspace(0, frames, n_labels + 1)).astype(np.int64)
    return np.diff(edges)


def heard_share(log_probs: np.ndarray, labels: list[int], spans: np.ndarray) -> float:
    """Share of characters the recogniser ranks first (over every label, blank included) on at least one frame of
    their span: how often an alignment puts a character where the recogniser actually hears it."""
    best = log_probs.argmax(-1)
    ends = np.cumsum(spans)
    hits = [bool((best[e - d : e] == lab).any()) for lab, d, e in zip(labels, spans, ends) if d > 0]
    return float(np.mean(hits)) if hits else 0.0
