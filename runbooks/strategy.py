"""What kind of incident an alert is, and which runbook answers it."""

from __future__ import annotations

PERFORMANCE = {"f1_score", "precision", "recall", "accuracy", "auc"}
INFRASTRUCTURE = {"up", "latency_p99_seconds", "error_rate"}
DATA = {"psi", "null_rate", "freshness_seconds"}

# Strategies that run the containment runbook next.
CONTAINS = {"immediate_rollback", "emergency_scaling"}


def incident_type(metric: str | None) -> str:
    if metric in PERFORMANCE:
        return "performance_degradation"
    if metric in INFRASTRUCTURE:
        return "infrastructure"
    if metric in DATA:
        return "prediction_error"
    return "unknown"


def choose_strategy(severity: str, kind: str) -> tuple[str, str]:
    """(strategy, reason). Containment for P1/P2 degradation; investigation otherwise."""
    if kind in ("performance_degradation", "infrastructure") and severity in ("P1", "P2"):
        return "immediate_rollback", (
            f"{severity} {kind}: route traffic back to the previous version first, "
            "investigate after"
        )
    return "investigation", f"{severity} {kind}: investigate before any action"
