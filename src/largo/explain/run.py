"""`largo explain CHECKPOINT INPUT...`: attributions for files, folders, literal text or a data split.

Classifiers: integrated gradients of the predicted (or a named) class, the completeness check, and attention
rollout as a second view; one PNG (images, spectrograms) or HTML page (tokens) per input. Language models:
see lm.py; sequence to sequence (a record per output token): seq2seq.py; detectors (one PNG per detection): detect.py.
Every call writes index.html and explain.json (the figures per input) to the output folder.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from largo.checkpoint.restore import restore
from largo.config import RunConfig
from largo.errors import ConfigError
from largo.explain import render
from largo.explain.attribute import COMPLETENESS_TOLERANCE, Attributed, captum_attr, completeness, integrated_gradients, scores
from largo.explain.detect import explain_detector
from largo.explain.inputs import Example, expand_sources, output_name, run_dir_of
from largo.explain.lm import explain_lm
from largo.explain.rollout import attention_rollout
from largo.explain.seq2seq import explain_seq2seq
from largo.fileio import write_json_atomic
from largo.models import ArchSpec, get_spec
from largo.models.classifier import ClassifierSpec
from largo.models.detect import DetectSpec
from largo.models.seq2seq import Seq2SeqSpec
from largo.models.spec import Attribution

BATCH = 8  # inputs attributed together (each becomes steps x BATCH forwards)


def explain(checkpoint: str | Path, sources: list[str], *, out: str | Path | None = None, split: str | None = None,
            limit: int = 16, target: str | None = None, steps: int = 64, max_steps: int = 4096, top_k: int = 5,
            device: torch.device | str = "cpu",
            log: Callable[[str], None] = print) -> Path:
    """Explain each input (or the first `limit` of a split); returns the index page."""
    if not sources and split is None:
        raise ConfigError("largo explain needs inputs (files, folders or text) or --split val|test")
    if not 2 <= steps <= max_steps or limit < 1 or top_k < 1:
        raise ConfigError(f"--steps ({steps}) must be in [2, --max-steps ({max_steps})], "
                          f"--limit ({limit}) and --top-k ({top_k}) >= 1")
    captum_attr()  # fail first, in one line, when Captum is missing
    model, cfg, ckpt = restore(checkpoint, device)
    model.requires_grad_(False)  # gradients flow to the inputs only
    spec = get_spec(cfg.model.arch)
    out_dir = Path(out) if out is not None else run_dir_of(ckpt) / "explain"
    out_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(spec, Seq2SeqSpec):
        records = explain_seq2seq(model, cfg, ckpt, spec, sources, out_dir, split=split, limit=limit, target=target, steps=steps,
                                  max_steps=max_steps, top_k=top_k, log=log)
    elif spec.generates:
        records = explain_lm(model, cfg, ckpt, spec, sources, out_dir, split=split, limit=limit, target=target, steps=steps,
                             max_steps=max_steps, top_k=top_k, log=log)
    elif isinstance(spec, ClassifierSpec):
        records = explain_classifier(model, cfg, ckpt, spec, sources, out_dir, split=split, limit=limit, target=target,
                                     steps=steps, max_steps=max_steps, log=log)
    elif isinstance(spec, DetectSpec):
        records = explain_detector(model, cfg, ckpt, spec, sources, out_dir, split=split, limit=limit, target=target, steps=steps,
                                   max_steps=max_steps, top_k=top_k, log=log)
    else:
        raise ConfigError(f"model.arch = {cfg.model.arch!r}: largo explain covers classifiers, detectors, language models "
                          f"and sequence to sequence")
    return write_index(out_dir, ckpt, cfg, records, method=f"integrated gradients (Captum), {steps} steps, doubled up to "
                       f"{max_steps} where completeness needs it", log=log)


# ---- classifiers -----------------------------------------------------------------------------------

def classifier_examples(spec: ClassifierSpec, cfg: RunConfig, ckpt: Path, arrays: dict[str, np.ndarray], classes: list[str],
                        sources: list[str], split: str | None, limit: int) -> list[Example]:
    """The inputs: a split's first `limit` rows, then each file (its class taken from its folder's name when it is one)."""
    examples = []
    if split is not None:
        if f"{split}_x" not in arrays:
            have = sorted(k[:-2] for k in arrays if k.endswith("_x"))
            raise ConfigError(f"--split {split}: the prepared data has no such split; it has {', '.join(have)}")
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        examples += [Example(f"{split}[{i}]", np.asarray(x[i]), int(y[i])) for i in range(min(limit, len(y)))]
    for src in expand_sources(spec, sources, limit):
        parent = Path(src).parent.name
        examples.append(Example(src, spec.read_example(cfg.data, cfg.model, ckpt, src), classes.index(parent) if parent in classes else None))
    return examples


def explain_classifier(model: nn.Module, cfg: RunConfig, ckpt: Path, spec: ClassifierSpec, sources: list[str], out_dir: Path, *,
                       split: str | None, limit: int, target: str | None, steps: int, max_steps: int,
                       log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Integrated gradients and rollout for each input, drawn by the spec's view; one record per input."""
    prepared = spec.prepare(cfg.data, cfg.model, log=lambda _m: None)  # the run's data: its normalisation, classes and splits
    classes, transform = prepared.classes, spec.transform(cfg.data, prepared)
    if target is not None and target not in classes:
        raise ConfigError(f"--target {target!r} is not a class of this model; its classes: {', '.join(classes)}")
    examples = classifier_examples(spec, cfg, ckpt, prepared.arrays, classes, sources, split, limit)
    device = next(model.parameters()).device
    records = []
    for start in range(0, len(examples), BATCH):
        chunk = examples[start : start + BATCH]
        rows = np.stack([e.row for e in chunk])
        x, blank = transform(rows, None).to(device), transform(np.zeros_like(rows), None).to(device)
        att = spec.attribution(model, x, blank)
        probs = scores(att).softmax(-1)
        predicted = probs.argmax(-1)
        wanted = predicted if target is None else torch.full_like(predicted, classes.index(target))
        result = integrated_gradients(att, wanted, steps=steps, max_steps=max_steps)
        rolled = att.rollout(attention_rollout(model, lambda: att.forward(att.inputs, *att.extra))) if att.rollout else None
        for j, e in enumerate(chunk):
            i = start + j
            record = {"input": e.name, "true": classes[e.label] if e.label is not None else None,
                      "predicted": classes[int(predicted[j])], "probability": float(probs[j, predicted[j]]),
                      "target": classes[int(wanted[j])], **completeness(result, j)}
            record["file"] = draw(spec, ckpt, att, result, rolled, j, out_dir, output_name(i, e.name, ""), title_of(record))
            records.append(record)
            log(f"{e.name}: {title_of(record)} -> {out_dir / record['file']}")
    return records


def title_of(r: dict[str, Any]) -> str:
    true = f" | true {r['true']}" if r.get("true") is not None else ""
    return (f"predicted {r['predicted']} ({r['probability']:.2f}){true} | attributed: {r['target']} | completeness: "
            f"sum {r['attribution_sum']:.3f} vs score difference {r['score'] - r['baseline_score']:.3f} "
            f"({100 * r['completeness_error']:.1f}%)")


def draw(spec: ArchSpec, ckpt: Path, att: Attribution, result: Attributed, rolled: torch.Tensor | None, j: int, out_dir: Path,
         stem: str, title: str) -> str:
    """One file for input j in the spec's view; returns its name."""
    a = result.maps[j].cpu().numpy()
    r = rolled[j].cpu().numpy() if rolled is not None else None
    if att.view == "image":
        return render.image_png(out_dir / f"{stem}.png", att.inputs[j].cpu().numpy(), a, r, title).name
    if att.view == "spectrogram":
        return render.spectrogram_png(out_dir / f"{stem}.png", att.inputs[j].cpu().numpy(), a, r, title,
                                      seconds_per_column=att.seconds_per_column).name
    if att.view == "tokens":
        ids = att.inputs[j].tolist()
        real = [k for k in range(len(ids)) if att.shown is None or att.shown[j, k]]
        pieces = spec.token_pieces(ckpt, [ids[k] for k in real])
        body = f"<p>{html.escape(title)}</p><h2>Integrated gradients</h2>{render.token_spans(pieces, a[real])}"
        if r is not None:
            body += f"<h2>Attention rollout</h2>{render.token_spans(pieces, r[real])}"
        (out_dir / f"{stem}.html").write_text(render.page(stem, body))
        return f"{stem}.html"
    return render.values_png(out_dir / f"{stem}.png", a, r, title).name


# ---- the index -------------------------------------------------------------------------------------

def write_index(out_dir: Path, ckpt: Path, cfg: RunConfig, records: list[dict[str, Any]], *, method: str,
                log: Callable[[str], None]) -> Path:
    """index.html (a row per input, linked, with thumbnails) and explain.json (every figure); prints the completeness summary."""
    errors = [r["completeness_error"] for r in records]
    summary = {"checkpoint": str(ckpt), "arch": cfg.model.arch, "method": method,
               "completeness_tolerance": COMPLETENESS_TOLERANCE, "completeness_max_error": max(errors, default=0.0),
               "inputs": records}
    write_json_atomic(out_dir / "explain.json", summary)
    rows = []
    for i, r in enumerate(records):
        name = html.escape(r["file"])
        link = f'<a href="{name}">{name}</a>' + (f'<br><img src="{name}" height="120">' if r["file"].endswith(".png") else "")
        shown = {k: v for k, v in r.items()  # a record's attributions (seq2seq.py) stay in explain.json
                 if k not in ("file", "input", "completeness_error", "attribution") and v is not None}
        figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
        rows.append([i, r["input"], figures, f"{100 * r['completeness_error']:.2f}%", f"<div>{link}</div>"])
    body = (f"<p class=\"small\">{html.escape(str(ckpt))} | model.arch = {cfg.model.arch} | {summary['method']}; "
            f"completeness = |sum of attributions - (score - baseline score)| / |score - baseline score|</p>"
            + render.table(["#", "input", "figures", "completeness error", "view"], rows))
    index = out_dir / "index.html"
    index.write_text(render.page("largo explain", body))
    worst = summary["completeness_max_error"]
    flag = "" if worst <= COMPLETENESS_TOLERANCE else f" (above {100 * COMPLETENESS_TOLERANCE:.0f}%: raise --max-steps)"
    log(f"completeness: max error {100 * worst:.2f}% over {len(records)} inputs{flag}")
    log(f"index: {index}")
    return index

