"""Performance degradation: has the model got worse than its baseline window, and is it real?

Metrics are numpy on the confusion counts (no sklearn). Significance: F1, precision,
recall and accuracy depend only on the confusion counts, so the bootstrap resamples
the counts (a multinomial draw per replicate) instead of the rows; AUC uses the Hanley
and McNeil standard error. Too few samples answer "inconclusive" rather than guess.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, Field
from scipy import stats

from checks.findings import CheckInputError, Finding, Severity

MetricName = Literal["accuracy", "precision", "recall", "f1", "auc"]
Verdict = Literal["degraded", "stable", "inconclusive"]


class ClassificationMetrics(BaseModel):
    """Binary classification metrics of one window, with the counts behind them."""

    n: int
    positives: int
    tp: int
    fp: int
    fn: int
    tn: int
    accuracy: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    auc: float | None = None


def _binary(y: object, name: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise CheckInputError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "iuf":
        raise CheckInputError(
            f"{name} must be 0/1 or bool, got dtype {arr.dtype}; map labels to 0/1"
        )
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise CheckInputError(f"{name} has missing values; drop rows without a label first")
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        raise CheckInputError(
            f"{name} must be 0/1, found {arr[bad][0]!r}; threshold scores into labels "
            "and pass the scores separately"
        )
    return arr.astype(bool)


def _ratios(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray
) -> dict[str, np.ndarray]:
    """Metrics from counts; NaN where undefined (no predicted or no actual positives)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        n = tp + fp + fn + tn
        precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
        recall = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        accuracy = np.where(n > 0, (tp + tn) / n, np.nan)
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1}


def roc_auc(y_true: object, scores: object) -> float | None:
    """ROC AUC as the Mann-Whitney statistic (ties count one half); None with one class only."""
    y = _binary(y_true, "y_true")
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise CheckInputError(f"scores has {s.size} values but y_true has {y.size}")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(ss)) + 1]
    ends = np.r_[starts[1:], ss.size]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(ss.size)
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def classification_metrics(
    y_true: object, y_pred: object, scores: object | None = None
) -> ClassificationMetrics:
    """Accuracy, precision, recall, F1 (and AUC when scores are given) of one window."""
    y = _binary(y_true, "y_true")
    p = _binary(y_pred, "y_pred")
    if y.shape != p.shape:
        raise CheckInputError(f"y_pred has {p.size} values but y_true has {y.size}; align rows")
    tp = int(np.count_nonzero(y & p))
    fp = int(np.count_nonzero(~y & p))
    fn = int(np.count_nonzero(y & ~p))
    tn = y.size - tp - fp - fn
    r = _ratios(np.array(tp), np.array(fp), np.array(fn), np.array(tn))
    vals = {k: (None if np.isnan(v) else float(v)) for k, v in r.items()}
    return ClassificationMetrics(
        n=int(y.size),
        positives=int(y.sum()),
        tp=tp,
        fp=fp,
        fn=fn,
        tn=tn,
        auc=roc_auc(y, scores) if scores is not None else None,
        **vals,
    )


class PerformanceThresholds(BaseModel):
    """Relative drops that grade a degradation; defaults are the policy's."""

    p1_drop: dict[str, float] = Field(default_factory=lambda: {"f1": 0.20})
    p2_drop: dict[str, float] = Field(
        default_factory=lambda: {
            "f1": 0.10,
            "precision": 0.15,
            "recall": 0.15,
            "accuracy": 0.10,
            "auc": 0.10,
        }
    )
    f1_floor_p1: float = Field(0.70, description="Current F1 below this is P1 when degraded.")
    min_samples: int = Field(200, description="Fewer labelled rows in a window: inconclusive.")
    min_positives: int = Field(20, description="Fewer actual positives: inconclusive.")
    confidence: float = Field(0.95, description="Confidence level of the interval.")
    n_bootstrap: int = Field(2000, description="Bootstrap replicates of the confusion counts.")
    seed: int = 0


class MetricChange(BaseModel):
    """One metric's change from baseline to current, with its confidence interval."""

    metric: MetricName
    baseline: float | None
    current: float | None
    relative_drop: float | None
    ci_low: float | None = Field(None, description="Interval of current - baseline.")
    ci_high: float | None = None
    verdict: Verdict
    severity: Severity | None = None
    reason: str = ""


class PerformanceReport(BaseModel):
    """Baseline and current metrics and the verdict per metric."""

    baseline: ClassificationMetrics
    current: ClassificationMetrics
    changes: list[MetricChange]

    @property
    def degraded(self) -> bool:
        return any(c.verdict == "degraded" for c in self.changes)

    @property
    def inconclusive(self) -> bool:
        return any(c.verdict == "inconclusive" for c in self.changes)

    def findings(self) -> list[Finding]:
        """One finding per metric; an inconclusive one is not passed and has no severity."""
        return [
            Finding(
                title=f"{c.metric} {c.verdict}",
                severity=c.severity,
                key=f"performance:{c.metric}",
                check="performance_degradation",
                passed=c.verdict == "stable",
                observed={
                    "baseline": c.baseline,
                    "current": c.current,
                    "relative_drop": c.relative_drop,
                    "ci_low": c.ci_low,
                    "ci_high": c.ci_high,
                    "n_baseline": self.baseline.n,
                    "n_current": self.current.n,
                },
                message=c.reason,
            )
            for c in self.changes
        ]


def _auc_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley and McNeil (1982) standard error of an AUC."""
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (
        n_pos * n_neg
    )
    return float(np.sqrt(max(var, 0.0)))


def _boot(m: ClassificationMetrics, b: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    counts = np.array([m.tp, m.fp, m.fn, m.tn], dtype=np.float64)
    draws = rng.multinomial(m.n, counts / counts.sum(), size=b).astype(np.float64)
    return _ratios(draws[:, 0], draws[:, 1], draws[:, 2], draws[:, 3])


def performance_degradation(
    baseline_true: object,
    baseline_pred: object,
    current_true: object,
    current_pred: object,
    *,
    baseline_scores: object | None = None,
    current_scores: object | None = None,
    thresholds: PerformanceThresholds | None = None,
) -> PerformanceReport:
    """Compare a current window with a baseline window; degraded = big drop and significant."""
    t = thresholds or PerformanceThresholds()
    base = classification_metrics(baseline_true, baseline_pred, baseline_scores)
    cur = classification_metrics(current_true, current_pred, current_scores)
    rng = np.random.default_rng(t.seed)
    alpha = 1 - t.confidence
    small = [
        f"{name} has {m.n} labelled rows and {m.positives} positives "
        f"(need {t.min_samples} and {t.min_positives})"
        for name, m in (("baseline", base), ("current", cur))
        if m.n < t.min_samples or m.positives < t.min_positives
    ]
    boot_b = _boot(base, t.n_bootstrap, rng) if not small else {}
    boot_c = _boot(cur, t.n_bootstrap, rng) if not small else {}
    changes: list[MetricChange] = []
    metrics: list[MetricName] = ["f1", "precision", "recall", "accuracy"]
    if base.auc is not None and cur.auc is not None:
        metrics.append("auc")
    for metric in metrics:
        bv, cv = getattr(base, metric), getattr(cur, metric)
        drop = (bv - cv) / bv if bv and cv is not None else None
        if small or bv is None or cv is None:
            reason = "; ".join(small) or f"{metric} undefined in a window (no positives)"
            changes.append(
                MetricChange(
                    metric=metric,
                    baseline=bv,
                    current=cv,
                    relative_drop=drop,
                    verdict="inconclusive",
                    reason=reason,
                )
            )
            continue
        if metric == "auc":
            se = np.hypot(
                _auc_se(bv, base.positives, base.n - base.positives),
                _auc_se(cv, cur.positives, cur.n - cur.positives),
            )
            z = float(stats.norm.ppf(1 - alpha / 2))
            lo, hi = cv - bv - z * se, cv - bv + z * se
        else:
            diff = boot_c[metric] - boot_b[metric]
            diff = diff[~np.isnan(diff)]
            lo, hi = (float(x) for x in np.quantile(diff, [alpha / 2, 1 - alpha / 2]))
        changes.append(_grade(metric, bv, cv, drop, lo, hi, t))
    return PerformanceReport(baseline=base, current=cur, changes=changes)


def _grade(
    metric: MetricName,
    bv: float,
    cv: float,
    drop: float | None,
    lo: float,
    hi: float,
    t: PerformanceThresholds,
) -> MetricChange:
    p2 = t.p2_drop.get(metric)
    p1 = t.p1_drop.get(metric)
    base = {"metric": metric, "baseline": bv, "current": cv, "relative_drop": drop}
    significant = hi < 0
    big = drop is not None and p2 is not None and drop >= p2
    if big and significant:
        severity: Severity = "P2"
        if (p1 is not None and drop is not None and drop >= p1) or (
            metric == "f1" and cv < t.f1_floor_p1
        ):
            severity = "P1"
        return MetricChange(
            **base,
            ci_low=lo,
            ci_high=hi,
            verdict="degraded",
            severity=severity,
            reason=f"{metric} fell {drop:.1%} ({bv:.3f} -> {cv:.3f}); "
            f"{t.confidence:.0%} interval of the change [{lo:+.3f}, {hi:+.3f}] excludes 0",
        )
    if big:
        return MetricChange(
            **base,
            ci_low=lo,
            ci_high=hi,
            verdict="inconclusive",
            reason=f"{metric} fell {drop:.1%} but the interval [{lo:+.3f}, {hi:+.3f}] "
            "includes 0; collect more labelled rows",
        )
    return MetricChange(
        **base,
        ci_low=lo,
        ci_high=hi,
        verdict="stable",
        reason=f"{metric} {bv:.3f} -> {cv:.3f}",
    )
