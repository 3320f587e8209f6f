"""What a task reports beyond loss and accuracy (`largo eval --json`, `--predictions`) and what `largo generate` asks.

An architecture whose task is scored by a corpus-level metric (BLEU, ROUGE, COCO mAP, WER, FID) returns
`TaskResults` from `ArchSpec.results`: its metrics under the names scripts read, the baselines the recipe
computes on the same test set, and one prediction per test example so that anyone can re-score them with
the same libraries. `GenerateRequest` carries the `largo generate` options to `ArchSpec.respond`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskResults:
    """A task's held-out figures: metrics, baselines on the same examples, and the per-example predictions."""

    metrics: dict[str, float]  # name -> value, e.g. {"chrf": 41.2, "bleu": 17.9}
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # baseline -> {metric name -> value}
    predictions: list[dict[str, Any]] = field(default_factory=list)  # one per test example: input, reference, output (JSON-able)
    lines: list[str] = field(default_factory=list)  # for people: metric signatures, per-class figures, notes

    def as_json(self) -> dict[str, Any]:
        """The object `largo eval --json` prints: {"metrics": {...}, "baselines": {...}}."""
        return {"metrics": dict(self.metrics), "baselines": {k: dict(v) for k, v in self.baselines.items()}}


@dataclass(frozen=True)
class GenerateRequest:
    """What `largo generate RUN ...` asked for; each architecture reads the fields that apply to it."""

    prompt: str = "def "  # a language model's prompt
    input: str | None = None  # a sequence-to-sequence source text (--input)
    class_id: int | None = None  # class-conditional generation (--class)
    n: int = 16  # how many samples (--n)
    out: str | None = None  # where a picture or sound goes (--out)
    audio: str | None = None  # a clip to transcribe (--audio)
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 50
    beam: int = 1  # beam width (1 = greedy)
    length_penalty: float = 1.0
    seed: int = 0
