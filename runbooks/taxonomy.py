"""The ML taxonomy: what kind of problem an alert is, read from its labels.

Category (what is wrong) and incident type (which runbook family answers it) follow the
runbooks: a metric label is the best evidence, then the alertname's words, then other
labels. Whatever could not be told is said, so triage can put it on the timeline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from runbooks.policy import LabelNames

# category -> (subcategory per metric)
METRICS: dict[str, tuple[str, str]] = {
    "f1_score": ("model_performance", "accuracy_degradation"),
    "precision": ("model_performance", "accuracy_degradation"),
    "recall": ("model_performance", "accuracy_degradation"),
    "accuracy": ("model_performance", "accuracy_degradation"),
    "auc": ("model_performance", "accuracy_degradation"),
    "confidence": ("model_performance", "confidence_drop"),
    "prediction_drift": ("model_performance", "prediction_drift"),
    "psi": ("data_quality", "feature_drift"),
    "null_rate": ("data_quality", "missing_data"),
    "schema_violations": ("data_quality", "schema"),
    "invalid_rate": ("data_quality", "corrupted_data"),
    "freshness_seconds": ("data_quality", "freshness"),
    "feature_freshness_seconds": ("data_quality", "freshness"),
    "latency_p99_seconds": ("infrastructure", "latency"),
    "error_rate": ("infrastructure", "availability"),
    "up": ("infrastructure", "availability"),
    "cpu_utilization": ("infrastructure", "resources"),
    "memory_utilization": ("infrastructure", "resources"),
    "replicas_available": ("infrastructure", "scaling"),
    "demographic_parity_difference": ("bias_fairness", "demographic_parity"),
    "equalized_odds_difference": ("bias_fairness", "equalized_odds"),
    "revenue_per_hour": ("business_impact", "revenue"),
    "conversion_rate": ("business_impact", "conversion"),
}

# Words in an alertname, checked in order: the first hit decides.
WORDS: list[tuple[str, tuple[str, str]]] = [
    (r"adversarial|attack|poison|extraction|security", ("security", "adversarial")),
    (r"pii|privacy|gdpr|compliance|audit|retention", ("compliance", "privacy")),
    (r"bias|fairness|parity|disparate", ("bias_fairness", "demographic_parity")),
    (r"train(ing)?(job)?fail|trainingjob|retrain.*fail", ("training", "training_failure")),
    (r"pipeline|etl|ingest|featurestore|feature_store", ("data_quality", "pipeline_failure")),
    (r"stale|fresh", ("data_quality", "freshness")),
    (r"schema", ("data_quality", "schema")),
    (r"null|missing", ("data_quality", "missing_data")),
    (r"drift|psi", ("data_quality", "feature_drift")),
    (r"f1|accuracy|precision|recall|auc", ("model_performance", "accuracy_degradation")),
    (r"confidence", ("model_performance", "confidence_drop")),
    (r"latency|slow|p99", ("infrastructure", "latency")),
    (r"down|unavailable|unreachable|error|5xx", ("infrastructure", "availability")),
    (r"cpu|memory|oom|disk|gpu", ("infrastructure", "resources")),
    (r"replica|scal", ("infrastructure", "scaling")),
    (r"revenue|conversion|business", ("business_impact", "revenue")),
]

INCIDENT_TYPE = {
    "model_performance": "performance_degradation",
    "data_quality": "prediction_error",
    "infrastructure": "infrastructure",
    "bias_fairness": "bias",
    "security": "security",
    "compliance": "compliance",
    "business_impact": "performance_degradation",
    "training": "infrastructure",
    "unknown": "unknown",
}
CATEGORIES = sorted(set(INCIDENT_TYPE) - {"unknown"})


@dataclass
class Classification:
    category: str
    subcategory: str
    type: str
    metric: str | None
    feature: str | None
    how: str
    gaps: list[str] = field(default_factory=list)


def classify(labels: Mapping[str, str], names: LabelNames | None = None) -> Classification:
    names = names or LabelNames()
    metric = labels.get(names.metric) or None
    feature = labels.get(names.feature) or None
    gaps: list[str] = []
    if metric in METRICS:
        category, sub = METRICS[metric]
        how = f"metric {metric}"
    else:
        if metric:
            gaps.append(f"metric {metric!r} is not in the taxonomy; classified by alertname")
        else:
            gaps.append(f"no {names.metric!r} label; classified by alertname")
        category, sub, how = _by_words(labels)
    if feature and category == "model_performance" and sub == "prediction_drift":
        category, sub = "data_quality", "feature_drift"
    return Classification(category, sub, INCIDENT_TYPE[category], metric, feature, how, gaps)


def _by_words(labels: Mapping[str, str]) -> tuple[str, str, str]:
    name = labels.get("alertname", "")
    flat = re.sub(r"[^a-z0-9_]", "", name.lower())
    for pattern, (category, sub) in WORDS:
        if re.search(pattern, flat):
            return category, sub, f"alertname {name!r}"
    stated = labels.get("category", "").lower()
    if stated in INCIDENT_TYPE and stated != "unknown":
        return stated, stated, f"label category={stated}"
    return "unknown", "unknown", "nothing in the labels matched the taxonomy"
