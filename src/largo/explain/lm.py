"""Language models under `largo explain`: per-token loss, the top-k next tokens at each position, and a chosen next
token attributed to the prompt's tokens (layer integrated gradients on the embeddings, with the completeness check).
Also the few samples `largo report` shows for a language-model run.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import nn

from largo.config import RunConfig
from largo.data.prepare import EOT
from largo.errors import ConfigError
from largo.explain import render
from largo.explain.attribute import completeness, integrated_gradients, scores
from largo.explain.inputs import expand_sources, output_name
from largo.explain.rollout import attention_rollout
from largo.models import ArchSpec
from largo.rundir import TOKENIZER


def token_losses(model: nn.Module, ids: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For ids (t,): loss of each token given the ones before it (t - 1,), and the top-k (probs, ids) after each position (t, k)."""
    with torch.no_grad():
        logp = F.log_softmax(model(ids[None])[0].float(), dim=-1)  # (t, vocab)
    losses = -logp[:-1].gather(1, ids[1:, None])[:, 0]  # position i predicts token i + 1
    probs, top = logp.exp().topk(top_k, dim=-1)
    return losses, probs, top


def explain_lm(model: nn.Module, cfg: RunConfig, ckpt: Path, spec: ArchSpec, sources: list[str], out_dir: Path, *,
               split: str | None, limit: int, target: str | None, steps: int, max_steps: int, top_k: int,
               log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One HTML page per text: per-token loss, top-k, the next token attributed to the prompt, rollout; a record each."""
    tok = Tokenizer.from_file(str(ckpt / TOKENIZER))
    texts: list[tuple[str, np.ndarray]] = []
    if split is not None:
        if split != "val":
            raise ConfigError(f"--split {split}: a language model's prepared data has a 'val' split to explain")
        prepared = spec.prepare(cfg.data, cfg.model, log=lambda _m: None)
        batches = spec.dataset(cfg.data, cfg.model, prepared, seed=cfg.run.seed).eval_batches(1, limit)
        texts += [(f"val[{i}]", x[0].numpy()) for i, (x, _) in enumerate(batches)]
    texts += [(src, spec.read_example(cfg.data, cfg.model, ckpt, src)) for src in expand_sources(spec, sources, limit)]
    target_id = None
    if target is not None:
        found = tok.encode(target).ids
        if not found:
            raise ConfigError(f"--target {target!r} encodes to no token")
        target_id = found[0]  # a longer text: its first token
    device = next(model.parameters()).device
    eot = tok.token_to_id(EOT) or 0
    records = []
    for i, (name, row) in enumerate(texts):
        ids = torch.as_tensor(row, dtype=torch.long, device=device)
        losses, probs, top = token_losses(model, ids, top_k)
        next_id = int(top[-1, 0]) if target_id is None else target_id
        att = spec.attribution(model, ids[None], torch.full_like(ids[None], eot))
        result = integrated_gradients(att, torch.tensor([next_id], device=device), steps=steps, max_steps=max_steps)
        rolled = att.rollout(attention_rollout(model, lambda: att.forward(att.inputs))) if att.rollout else None
        mean_loss = float(losses.mean()) if len(losses) else float("nan")
        record = {"input": name, "tokens": len(row), "mean_loss": mean_loss, "perplexity": float(np.exp(min(mean_loss, 50.0))),
                  "next_token": tok.decode([next_id]), "next_token_probability": float(scores(att).softmax(-1)[0, next_id]),
                  **completeness(result, 0)}
        stem = output_name(i, name, "")
        pieces = spec.token_pieces(ckpt, row.tolist())
        rolled_map = None if rolled is None else rolled[0].cpu().numpy()
        (out_dir / f"{stem}.html").write_text(lm_page(stem, pieces, losses, probs, top, tok, record, result.maps[0].cpu().numpy(),
                                                      rolled_map))
        record["file"] = f"{stem}.html"
        records.append(record)
        log(f"{name}: {len(row)} tokens | mean loss {mean_loss:.3f} | next token {record['next_token']!r} | completeness: "
            f"sum {record['attribution_sum']:.3f} vs score difference {record['score'] - record['baseline_score']:.3f} "
            f"({100 * record['completeness_error']:.1f}%) -> {out_dir / record['file']}")
    return records


def lm_page(title: str, pieces: list[str], losses: torch.Tensor, probs: torch.Tensor, top: torch.Tensor, tok: Tokenizer,
            record: dict[str, Any], attributions: np.ndarray, rolled: np.ndarray | None) -> str:
    """Per-token loss (red = surprising), the next token's attribution over the prompt, rollout, and the top-k table."""
    def guesses(pos: int) -> str:
        return ", ".join(f"{tok.decode([int(t)])!r} {float(p):.2f}" for p, t in zip(probs[pos], top[pos]))

    loss = [0.0] + losses.tolist()  # the first token has no prediction
    notes = ["(first token)"] + [f"loss {v:.2f} nats | predicted here: {guesses(k)}" for k, v in enumerate(losses.tolist())]
    nxt = record["next_token"]
    body = [
        f"<p>{html.escape(record['input'])}: {record['tokens']} tokens | mean loss {record['mean_loss']:.3f} nats/token | "
        f"perplexity {record['perplexity']:.2f}</p>",
        "<h2>Per-token loss</h2><p class=\"small\">red = the model found the token surprising (loss in nats; hover for the "
        "top predictions before it)</p>",
        render.token_spans(pieces, [-v for v in loss], notes=notes),
        f"<h2>Next token {html.escape(repr(nxt))} (p = {record['next_token_probability']:.3f}) attributed to the prompt</h2>",
        f"<p class=\"small\">layer integrated gradients on the token embeddings from &lt;|endoftext|&gt; everywhere; completeness: "
        f"sum {record['attribution_sum']:.4f} vs logit difference {record['score'] - record['baseline_score']:.4f} "
        f"({100 * record['completeness_error']:.2f}%)</p>",
        render.token_spans(pieces, attributions),
    ]
    if rolled is not None:
        body += ["<h2>Attention rollout into the last position</h2>", render.token_spans(pieces, rolled)]
    rows = [[k, repr(pieces[k]), f"{loss[k]:.3f}" if k else "", guesses(k)] for k in range(len(pieces))]
    body += [f"<h2>Top-{top.shape[1]} next-token predictions at each position</h2>",
             render.table(["position", "token", "loss (nats)", "predicted next (probability)"], rows)]
    return render.page(title, "\n".join(body))


def sample_texts(run_dir: Path, *, count: int, max_new_tokens: int = 80, seed: int = 0) -> list[str]:
    """A few samples from a language-model run's newest checkpoint (from <|endoftext|>), for `largo report`."""
    from largo.checkpoint.restore import restore
    from largo.models import get_spec
    from largo.models.generate import generate

    model, cfg, ckpt = restore(run_dir)
    if not get_spec(cfg.model.arch).generates or not (ckpt / TOKENIZER).is_file():
        return []
    tok = Tokenizer.from_file(str(ckpt / TOKENIZER))
    start = [tok.token_to_id(EOT) or 0]
    return [tok.decode(generate(model, start, max_new_tokens=max_new_tokens, max_seq_len=cfg.model.max_seq_len,
                                temperature=0.8, top_k=50, seed=seed + k)[1:]) for k in range(count)]
