"""Severity from the policy's table: which rule an alert crosses, said in words."""

from __future__ import annotations

from dataclasses import dataclass, field

from runbooks.policy import Policy, normalize_severity

RANK = {"P1": 1, "P2": 2, "P3": 3}
PERFORMANCE_METRICS = {"f1_score", "precision", "recall", "accuracy", "auc", "error_rate", "up"}


@dataclass
class Assessment:
    severity: str
    reasons: list[str]
    metric: str | None
    value: float | None
    baseline: float | None
    gaps: list[str] = field(default_factory=list)


def _number(text: str | None) -> float | None:
    if text is None or text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return None


def assess(labels: dict[str, str], annotations: dict[str, str], policy: Policy) -> Assessment:
    """The highest severity any rule gives, with every reason; the sender's word otherwise."""
    names = policy.labels
    metric = labels.get(names.metric)
    value = _number(annotations.get(names.value, labels.get(names.value)))
    baseline = _number(annotations.get(names.baseline, labels.get(names.baseline)))
    gaps = []
    if metric is None:
        gaps.append(
            f"no {names.metric!r} label: severity cannot be read from the policy's thresholds"
        )
    if value is None:
        gaps.append(f"no numeric {names.value!r} annotation: thresholds cannot be checked")
    reasons: list[tuple[str, str]] = []
    if metric is not None and value is not None:
        for rule in policy.severity:
            if rule.metric == metric:
                why = rule.explain(value, baseline)
                if why:
                    reasons.append((rule.severity, why))
    if reasons:
        best = min(reasons, key=lambda r: RANK[r[0]])[0]
        return Assessment(best, [w for s, w in reasons if s == best], metric, value, baseline, gaps)
    stated = normalize_severity(labels.get("severity"))
    if stated and (metric is None or value is None):
        return Assessment(
            stated,
            [f"{stated} as the sender labelled it (severity={labels['severity']})"],
            metric,
            value,
            baseline,
            gaps,
        )
    default = policy.default_severity
    why = (
        f"{default} by default: {metric}={value:g} crosses no threshold of the policy"
        if metric is not None and value is not None
        else f"{default} by default"
    )
    return Assessment(default, [why], metric, value, baseline, gaps)
