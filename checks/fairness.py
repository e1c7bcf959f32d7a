"""Fairness across a sensitive attribute: the evidence for the monthly fairness audit.

Demographic parity difference: largest minus smallest selection rate across groups.
Equalized odds difference: the larger of the TPR range and the FPR range across groups
(the definitions fairlearn uses). Groups too small to measure are reported, not scored.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from checks.findings import CheckInputError, Finding, Severity
from checks.performance import _binary


class GroupMetrics(BaseModel):
    """Metrics of one value of the sensitive attribute."""

    group: str
    n: int
    positives: int
    selection_rate: float
    tpr: float | None
    fpr: float | None
    accuracy: float
    f1: float | None


class FairnessThresholds(BaseModel):
    """Differences above these fail; the policy grades them P2 by default."""

    demographic_parity: float = 0.1
    equalized_odds: float = 0.1
    min_group_size: int = Field(30, description="Smaller groups are listed, not scored.")
    severity: Severity = "P2"


class FairnessReport(BaseModel):
    """Per-group metrics and the two parity differences."""

    groups: list[GroupMetrics]
    too_small: dict[str, int] = Field(default_factory=dict)
    demographic_parity_difference: float | None
    equalized_odds_difference: float | None
    thresholds: FairnessThresholds

    def findings(self) -> list[Finding]:
        """One finding per parity measure; per-group metrics ride along as observed values."""
        t = self.thresholds
        per_group = {g.group: g.model_dump(exclude={"group"}) for g in self.groups}
        out = []
        for name, value, limit in (
            ("demographic_parity", self.demographic_parity_difference, t.demographic_parity),
            ("equalized_odds", self.equalized_odds_difference, t.equalized_odds),
        ):
            passed = value is None or value <= limit
            out.append(
                Finding(
                    title=f"{name.replace('_', ' ')} difference "
                    + ("within bounds" if passed else "too large"),
                    severity=None if passed else t.severity,
                    key=f"fairness:{name}",
                    check="fairness",
                    passed=passed,
                    observed={
                        "difference": value,
                        "groups": per_group,
                        "too_small": self.too_small,
                    },
                    threshold={"max_difference": limit, "min_group_size": t.min_group_size},
                    message="not measurable: fewer than two groups large enough"
                    if value is None
                    else f"{name} difference {value:.3f} (max {limit})",
                )
            )
        return out


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def group_metrics(y_true: object, y_pred: object, groups: object) -> list[GroupMetrics]:
    """Selection rate, TPR, FPR, accuracy and F1 for each group."""
    y = _binary(y_true, "y_true")
    p = _binary(y_pred, "y_pred")
    g = pd.Series(np.asarray(groups, dtype=object)).astype("string").fillna("(missing)")
    if not (y.size == p.size == g.size):
        raise CheckInputError(
            f"y_true ({y.size}), y_pred ({p.size}) and groups ({g.size}) must have the same length"
        )
    codes, names = pd.factorize(g)
    k = len(names)
    counts = np.bincount(codes, minlength=k)
    tp = np.bincount(codes, weights=y & p, minlength=k).astype(int)
    fp = np.bincount(codes, weights=~y & p, minlength=k).astype(int)
    fn = np.bincount(codes, weights=y & ~p, minlength=k).astype(int)
    out = []
    for i, name in enumerate(names):
        n = int(counts[i])
        tn = n - tp[i] - fp[i] - fn[i]
        out.append(
            GroupMetrics(
                group=str(name),
                n=n,
                positives=int(tp[i] + fn[i]),
                selection_rate=(tp[i] + fp[i]) / n,
                tpr=_rate(int(tp[i]), int(tp[i] + fn[i])),
                fpr=_rate(int(fp[i]), int(fp[i] + tn)),
                accuracy=(tp[i] + tn) / n,
                f1=_rate(2 * int(tp[i]), int(2 * tp[i] + fp[i] + fn[i])),
            )
        )
    return sorted(out, key=lambda m: m.group)


def _spread(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return max(vals) - min(vals) if len(vals) >= 2 else None


def fairness_report(
    y_true: object,
    y_pred: object,
    groups: object,
    thresholds: FairnessThresholds | None = None,
) -> FairnessReport:
    """Demographic parity and equalized odds differences across the sensitive attribute."""
    t = thresholds or FairnessThresholds()
    all_groups = group_metrics(y_true, y_pred, groups)
    scored = [m for m in all_groups if m.n >= t.min_group_size]
    too_small = {m.group: m.n for m in all_groups if m.n < t.min_group_size}
    dp = _spread([m.selection_rate for m in scored])
    tpr, fpr = _spread([m.tpr for m in scored]), _spread([m.fpr for m in scored])
    eo = None if tpr is None and fpr is None else max(v for v in (tpr, fpr) if v is not None)
    return FairnessReport(
        groups=all_groups,
        too_small=too_small,
        demographic_parity_difference=dp,
        equalized_odds_difference=eo,
        thresholds=t,
    )
