"""Cross-entropy summed over targets (the loop divides by the global batch's count), and its chunked form for
large vocabularies, where a language model's head and loss run together without (tokens x vocabulary) logits;
the evaluation scores of a batch (summed loss, correct argmax predictions, count) in both forms.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

IGNORE = -100  # target value that takes no part in loss or accuracy
LOGITS_BUDGET_BYTES = 256 << 20  # fp32 logits held at once; above this the head and loss run chunk by chunk


def summed_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over every non-ignored target (the caller divides by the global count).

    logits (..., classes) and targets (...): a language model's (b, t, vocab) over (b, t), or a
    classifier's (b, classes) over (b,). Computed in fp32 whatever the autocast dtype.
    """
    return F.cross_entropy(logits.float().flatten(0, -2), targets.flatten(), ignore_index=IGNORE, reduction="sum")


class Scored(NamedTuple):
    """One evaluation batch's scores, summed over its non-ignored targets (evaluation all-reduces and divides them)."""

    loss: torch.Tensor  # the loss summed over targets
    correct: torch.Tensor  # argmax predictions equal to their target
    count: torch.Tensor  # targets scored
    predicted: torch.Tensor | None = None  # argmax per target, shaped like the targets (a confusion matrix counts them)


def score_targets(logits: torch.Tensor, targets: torch.Tensor) -> Scored:
    """Summed cross-entropy, correct argmax predictions and the count of every non-ignored target."""
    keep = targets != IGNORE
    predicted = logits.argmax(-1)
    return Scored(summed_loss(logits, targets), (predicted[keep] == targets[keep]).sum(), keep.sum(), predicted)


@torch.no_grad()
def linear_scores(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, *, budget_bytes: int | None = None) -> Scored:
    """score_targets(h @ w^T, targets) for h (n, d), w (vocab, d), chunk by chunk when the fp32 logits exceed budget_bytes.

    Evaluation's form of linear_cross_entropy: no (n x vocab) logits beyond one chunk, no gradients.
    """
    rows = chunk_rows(w.shape[0], budget_bytes)
    if h.shape[0] <= rows:
        return score_targets(F.linear(h, w), targets)
    parts = [score_targets(F.linear(h[i : i + rows], w), targets[i : i + rows]) for i in range(0, h.shape[0], rows)]
    return Scored(*(torch.stack([getattr(p, k) for p in parts]).sum() for k in ("loss", "correct", "count")),
                  torch.cat([p.predicted for p in parts]))


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum CE(h @ w^T, targets), one chunk of rows at a time; its gradients are computed in the forward pass.

    Each chunk's logits (rows x vocab, fp32) live only while that chunk is processed: the gradient
    softmax - onehot is formed in place and multiplied into grad_h and grad_w at once, so nothing of
    size tokens x vocab is kept for backward. The FLOPs are those of the head's forward and backward.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, rows: int, dtype: torch.dtype) -> torch.Tensor:
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        wc = w.to(dtype)
        for start in range(0, h.shape[0], rows):
            hc, tc = h[start : start + rows].to(dtype), targets[start : start + rows]
            logits = (hc @ wc.t()).float()  # (rows, vocab)
            keep = (tc != IGNORE).unsqueeze(1)
            index = tc.clamp_min(0).unsqueeze(1)
            lse = torch.logsumexp(logits, dim=1, keepdim=True)
            loss += ((lse - logits.gather(1, index)) * keep).sum()
            grad = logits.sub_(lse).exp_().scatter_add_(1, index, -torch.ones_like(lse)).mul_(keep).to(dtype)  # softmax - onehot
            grad_h[start : start + rows] = (grad @ wc).to(h.dtype)
            grad_w += (grad.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w.to(w.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_out, grad_w * grad_out, None, None, None


def chunk_rows(vocab: int, budget_bytes: int | None = None) -> int:
    """Rows of fp32 logits that fit the budget (LOGITS_BUDGET_BYTES unless given): more rows than this run chunked."""
    return max(1, (LOGITS_BUDGET_BYTES if budget_bytes is None else budget_bytes) // (4 * vocab))


def linear_cross_entropy(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, *, budget_bytes: int | None = None) -> torch.Tensor:
    """sum CE(h @ w^T, targets) for h (n, d), w (vocab, d): in one piece when its fp32 logits fit budget_bytes, else chunked.

    Under autocast the matmuls run in its dtype, as the unchunked head does; the softmax is fp32 either way.
    """
    rows = chunk_rows(w.shape[0], budget_bytes)
    if h.shape[0] <= rows:  # small enough: the plain form, which torch.compile fuses best
        return summed_loss(F.linear(h, w), targets)
    dtype = torch.get_autocast_dtype(h.device.type) if torch.is_autocast_enabled(h.device.type) else h.dtype
    with torch.autocast(h.device.type, enabled=False):
        return _ChunkedLinearCrossEntropy.apply(h, w, targets, rows, dtype)
