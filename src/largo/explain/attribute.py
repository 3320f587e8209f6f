"""Integrated gradients (Sundararajan et al. 2017) through Captum, with the completeness check.

Completeness: the attributions of one input sum to the target's score at the input minus its score at the
baseline. Captum integrates numerically; the check measures how far the sum is from that difference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import ModuleType

import torch

from largo.models.spec import Attribution
from largo.optional import require

COMPLETENESS_TOLERANCE = 0.05  # relative error above which the integration is too coarse (raise --steps)
ELEMENTS_PER_PASS = 1 << 22  # attributed-tensor elements per chunk of path points (16 MiB in fp32)


def captum_attr() -> ModuleType:
    """captum.attr, or a one-line error naming the install command."""
    return require("captum.attr", "largo explain (Captum's attributions)")


@dataclass
class Attributed:
    """Integrated gradients of one batch, reduced to the drawn maps, with the completeness figures per input."""

    maps: torch.Tensor  # (b, ...) the spec's map of the attributions (channels or embedding dimensions summed)
    total: torch.Tensor  # (b,) sum of all attributions (float64)
    score: torch.Tensor  # (b,) the target's score (logit) at the input
    baseline_score: torch.Tensor  # (b,) ... at the baseline
    steps: torch.Tensor  # (b,) integration steps each input needed

    @property
    def difference(self) -> torch.Tensor:
        return self.score - self.baseline_score

    @property
    def completeness_error(self) -> torch.Tensor:
        """|sum of attributions - (score - baseline score)| / |score - baseline score|, per input."""
        return (self.total - self.difference).abs() / self.difference.abs().clamp_min(1e-6)


def completeness(result: Attributed, j: int) -> dict[str, float]:
    """Input j's completeness figures, as explain.json records them."""
    return {"score": float(result.score[j]), "baseline_score": float(result.baseline_score[j]), "steps": int(result.steps[j]),
            "attribution_sum": float(result.total[j]), "completeness_error": float(result.completeness_error[j])}


def scores(att: Attribution, which: torch.Tensor | None = None) -> torch.Tensor:
    """The forward's scores (b, outputs) at the inputs (or at `which`, e.g. the baseline), without gradients."""
    with torch.no_grad():
        return att.forward(att.inputs if which is None else which, *att.extra).double()


def subset(att: Attribution, rows: torch.Tensor) -> Attribution:
    """The same attribution for some inputs of the batch only (every batched tensor indexed by rows)."""
    take = lambda t: t[rows] if isinstance(t, torch.Tensor) else t  # noqa: E731
    return dataclasses.replace(att, inputs=att.inputs[rows], baseline=att.baseline[rows], extra=tuple(take(e) for e in att.extra),
                               shown=take(att.shown))


def rows_per_pass(att: Attribution, budget: int = ELEMENTS_PER_PASS) -> int:
    """Path points evaluated together: as many as keep the attributed tensor (inputs, or the layer's output) near `budget`
    elements. Captum pays a fixed cost per chunk, so tiny models want large chunks; large inputs want small ones."""
    sizes = []
    if att.layer is not None:
        handle = att.layer.register_forward_hook(lambda _m, _a, out: sizes.append(out[0].numel()))
        try:
            with torch.no_grad():
                att.forward(att.inputs[:1], *(e[:1] if isinstance(e, torch.Tensor) else e for e in att.extra))
        finally:
            handle.remove()
    per_row = sizes[0] if sizes else att.inputs[0].numel()
    return max(16, min(8192, budget // max(per_row, 1)))


def _integrate(att: Attribution, target: torch.Tensor, steps: int, internal_batch: int | None) -> Attributed:
    internal_batch = internal_batch or rows_per_pass(att)
    ca = captum_attr()
    method = ca.LayerIntegratedGradients(att.forward, att.layer) if att.layer is not None else ca.IntegratedGradients(att.forward)
    attributions = method.attribute(att.inputs, baselines=att.baseline, target=target, additional_forward_args=att.extra or None,
                                    n_steps=steps, internal_batch_size=internal_batch).detach()
    rows = torch.arange(len(target))
    return Attributed(maps=att.to_map(attributions).float(), total=attributions.double().flatten(1).sum(1),
                      score=scores(att)[rows, target], baseline_score=scores(att, att.baseline)[rows, target],
                      steps=torch.full((len(target),), steps))


def integrated_gradients(att: Attribution, target: torch.Tensor, *, steps: int = 64, max_steps: int = 4096,
                         tolerance: float = COMPLETENESS_TOLERANCE, internal_batch: int | None = None) -> Attributed:
    """Attributions of scores[:, target] along the straight path from att.baseline to att.inputs (layer IG if att.layer).

    Inputs whose completeness error is above `tolerance` are integrated again with twice the steps, up to max_steps:
    a model that turns from one class to another over a short stretch of the path needs a fine grid there.
    """
    result = _integrate(att, target, steps, internal_batch)
    while steps < max_steps:
        bad = torch.nonzero(result.completeness_error > tolerance).flatten()
        if not len(bad):
            break
        steps = min(2 * steps, max_steps)
        again = _integrate(subset(att, bad), target[bad], steps, internal_batch)
        for name in ("maps", "total", "score", "baseline_score", "steps"):
            getattr(result, name)[bad.to(getattr(result, name).device)] = getattr(again, name)
    return result
