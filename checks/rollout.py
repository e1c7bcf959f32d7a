"""Judging one step of a gradual rollback, as Argo Rollouts' analysis does: success,
failure or inconclusive.

The question at each step is whether the version traffic is moving to answers better than
the baseline (the version being rolled back, measured before the first step). F1 is not a
proportion, but its monotone twin the Jaccard index, TP / (TP + FP + FN), is: the share of
rows that are fraud or flagged (or both) on which the model was right. Two of those compare
with a two-proportion z-test, so a step is judged by how sure the difference is, not by a
bare threshold; with fewer rows than `min_samples` on either side nothing is claimed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from scipy.stats import norm

Outcome = Literal["success", "failure", "inconclusive"]


@dataclass(frozen=True)
class Counts:
    """Confusion counts of one version over one window (answered predictions only)."""

    tp: int
    fp: int
    fn: int

    @property
    def trials(self) -> int:
        return self.tp + self.fp + self.fn

    @property
    def jaccard(self) -> float | None:
        return self.tp / self.trials if self.trials else None

    @property
    def f1(self) -> float | None:
        return 2 * self.tp / (2 * self.tp + self.fp + self.fn) if self.trials else None

    @classmethod
    def of(cls, metrics: dict[str, Any]) -> Counts:
        """From a status block such as the sandbox platform's versionMetrics entry."""
        return cls(int(metrics.get("tp", 0)), int(metrics.get("fp", 0)), int(metrics.get("fn", 0)))


@dataclass(frozen=True)
class Judgement:
    outcome: Outcome
    reason: str
    step: Counts
    baseline: Counts
    p_better: float | None = None
    p_worse: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "reason": self.reason,
            "f1": _round(self.step.f1),
            "baseline_f1": _round(self.baseline.f1),
            "samples": self.step.trials,
            "baseline_samples": self.baseline.trials,
            "p_better": _round(self.p_better, 6),
            "p_worse": _round(self.p_worse, 6),
            "step_counts": asdict(self.step),
            "baseline_counts": asdict(self.baseline),
        }


def judge(step: Counts, baseline: Counts, min_samples: int = 100, alpha: float = 0.05) -> Judgement:
    """Success when the step's version is better than the baseline at significance `alpha`,
    failure when it is worse, inconclusive when neither or with too few samples."""
    if step.trials < min_samples or baseline.trials < min_samples:
        return Judgement(
            "inconclusive",
            f"too few samples: {step.trials} after the step and {baseline.trials} in the "
            f"baseline, {min_samples} needed on each side",
            step,
            baseline,
        )
    z = _z(step, baseline)
    p_better, p_worse = float(norm.sf(z)), float(norm.cdf(z))
    said = f"F1 {step.f1:.3f} (n={step.trials}) against {baseline.f1:.3f} (n={baseline.trials})"
    if p_better < alpha:
        return Judgement(
            "success", f"{said}: better, p={p_better:.2g}", step, baseline, p_better, p_worse
        )
    if p_worse < alpha:
        return Judgement(
            "failure", f"{said}: worse, p={p_worse:.2g}", step, baseline, p_better, p_worse
        )
    return Judgement(
        "inconclusive",
        f"{said}: no difference at alpha {alpha:g} (p={min(p_better, p_worse):.2g})",
        step,
        baseline,
        p_better,
        p_worse,
    )


def _z(a: Counts, b: Counts) -> float:
    """Pooled two-proportion z statistic of a's Jaccard over b's; 0 when both are certain."""
    pooled = (a.tp + b.tp) / (a.trials + b.trials)
    se = math.sqrt(pooled * (1 - pooled) * (1 / a.trials + 1 / b.trials))
    if se == 0:
        return 0.0
    return ((a.tp / a.trials) - (b.tp / b.trials)) / se


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)
