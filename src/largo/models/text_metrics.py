"""Scores of output texts against references, from the field's libraries, and the baselines a recipe reports beside them.

chrF and BLEU come from sacreBLEU (corpus level, with the signature that says how they were computed), ROUGE-1/2/L
from Google's rouge-score (F-measure, averaged over examples, x100). `placeholders_kept` counts the outputs whose
placeholders (printf conversions, {name} fields, & accelerators, newlines and tabs) are the reference's, as a multiset.
Baselines: copy (the output is the source), retrieval (the target of the training pair whose source is nearest by
character n-gram TF-IDF, scikit-learn) and lead1 (the first sentence of the source's text after its first line).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

from largo.optional import require

# %s %d %5.2f %-10s %1$s %(name)s %%, {0} {name} {}, an & accelerator before a letter, newline, tab
PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?(?:\d+\$)?[-+ #0']*(?:\*|\d+)?(?:\.(?:\*|\d+))?(?:hh|h|ll|l|L|q|j|z|t)?"
                         r"[diouxXeEfFgGaAcspm%]|\{[A-Za-z0-9_.\[\]]*\}|&(?=\w)|\n|\t")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SPACE = re.compile(r"\s+")
RETRIEVAL_CHUNK = 256  # test sources compared with every training source at once


def placeholders(text: str) -> Counter[str]:
    """The multiset of placeholders in a text (an accelerator counts as '&' whatever letter it marks)."""
    return Counter(PLACEHOLDER.findall(text))


def placeholders_kept(outputs: list[str], references: list[str]) -> tuple[float | None, int]:
    """(share of outputs keeping their reference's placeholders x100, among references that have any; how many have)."""
    pairs = [(o, r) for o, r in zip(outputs, references) if placeholders(r)]
    if not pairs:
        return None, 0
    return 100.0 * sum(placeholders(o) == placeholders(r) for o, r in pairs) / len(pairs), len(pairs)


def score_texts(outputs: list[str], references: list[str]) -> tuple[dict[str, float], list[str]]:
    """chrf, bleu, rouge1, rouge2, rougeL and placeholders_kept (where references have placeholders); the signatures."""
    sacrebleu = require("sacrebleu", "chrF and BLEU scores")
    rouge_scorer = require("rouge_score.rouge_scorer", "ROUGE scores")
    chrf, bleu = sacrebleu.metrics.CHRF(), sacrebleu.metrics.BLEU()
    metrics = {"chrf": chrf.corpus_score(outputs, [references]).score, "bleu": bleu.corpus_score(outputs, [references]).score}
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    rouge = [scorer.score(r, o) for o, r in zip(outputs, references)]
    for key in ("rouge1", "rouge2", "rougeL"):
        metrics[key] = 100.0 * float(np.mean([s[key].fmeasure for s in rouge])) if rouge else 0.0
    kept, n = placeholders_kept(outputs, references)
    if kept is not None:
        metrics["placeholders_kept"] = kept
    lines = [f"chrF signature: {chrf.get_signature()}", f"BLEU signature: {bleu.get_signature()}",
             "ROUGE: rouge-score F-measure x100, rouge1/rouge2/rougeL, Porter stemmer, averaged over examples",
             f"placeholders_kept: over the {n} references with placeholders (printf, {{name}}, &, newline, tab)"]
    return metrics, lines


def retrieval_outputs(train_sources: list[str], train_targets: list[str], sources: list[str]) -> list[str]:
    """Each source's nearest training source by cosine of character 2-4-gram TF-IDF (word-bounded): that pair's target."""
    text = require("sklearn.feature_extraction.text", "the retrieval baseline")
    vectorizer = text.TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True, dtype=np.float32)
    train = vectorizer.fit_transform(train_sources)  # rows are L2-normalised: a dot product is the cosine
    queries = vectorizer.transform(sources)
    out = []
    for start in range(0, len(sources), RETRIEVAL_CHUNK):
        sims = (queries[start : start + RETRIEVAL_CHUNK] @ train.T).toarray()  # (chunk, train)
        out += [train_targets[i] for i in sims.argmax(axis=1)]
    return out


def lead1(source: str) -> str:
    """The first sentence of the source's text after its first line (a docstring body's signature line is skipped)."""
    lines = source.split("\n", 1)
    text = _SPACE.sub(" ", lines[1] if len(lines) > 1 and lines[1].strip() else lines[0]).strip()
    return _SENTENCE_END.split(text, maxsplit=1)[0]


def baseline_outputs(name: str, sources: list[str], train_pairs: list[dict[str, str]]) -> list[str]:
    """The outputs of baseline `name` (copy, retrieval, lead1) for the sources."""
    if name == "copy":
        return list(sources)
    if name == "lead1":
        return [lead1(s) for s in sources]
    return retrieval_outputs([p["source"] for p in train_pairs], [p["reference"] for p in train_pairs], sources)
