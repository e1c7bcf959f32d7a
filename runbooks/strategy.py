"""Which response an incident gets, from the runbooks' strategy table.

accuracy degradation -> immediate rollback (P1, or revenue at risk above the policy's
bound), gradual rollback (P2), investigation first (otherwise); latency spike -> emergency
scaling (P1) or gradual scaling; data pipeline failure -> pipeline recovery; training job
failure -> training restart; anything else -> standard investigation.
"""

from __future__ import annotations

from dataclasses import dataclass

from runbooks.policy import ModelPolicy, Policy
from runbooks.taxonomy import Classification

# The runbook flow each strategy runs next; None: no runbook is automated for it yet,
# so the assignee runs it by hand from the incident's timeline.
RUNBOOK: dict[str, str | None] = {
    "immediate_rollback": "containment",
    "gradual_rollback": "containment",
    "investigation_first": None,
    "emergency_scaling": None,
    "gradual_scaling": None,
    "pipeline_recovery": None,
    "training_restart": None,
    "standard_investigation": None,
}
CONTAINS = {s for s, flow in RUNBOOK.items() if flow == "containment"}


@dataclass
class Decision:
    strategy: str
    runbook: str | None
    reason: str


def choose_strategy(
    severity: str, c: Classification, model: ModelPolicy, policy: Policy
) -> Decision:
    revenue = model.business.revenue_per_hour
    bound = policy.strategy.revenue_at_risk_bound
    sub = c.subcategory
    if sub in ("accuracy_degradation", "confidence_drop", "prediction_drift"):
        if severity == "P1":
            return _d("immediate_rollback", f"{severity} {sub}: roll back first, investigate after")
        if revenue > bound:
            return _d(
                "immediate_rollback",
                f"{severity} {sub} with ${revenue:,.0f}/h at risk > ${bound:,.0f}/h bound: "
                "roll back first",
            )
        if severity == "P2":
            return _d("gradual_rollback", f"{severity} {sub}: shift traffic back step by step")
        return _d("investigation_first", f"{severity} {sub}: investigate before any action")
    if sub == "latency" or (c.category == "infrastructure" and sub in ("scaling", "resources")):
        if severity == "P1":
            return _d("emergency_scaling", f"{severity} {sub}: scale out now")
        return _d("gradual_scaling", f"{severity} {sub}: scale out step by step")
    if sub in ("pipeline_failure", "freshness", "missing_data", "schema", "corrupted_data"):
        return _d("pipeline_recovery", f"{severity} {sub}: recover the data pipeline")
    if sub == "training_failure":
        return _d("training_restart", f"{severity} {sub}: restart the training job")
    return _d("standard_investigation", f"{severity} {c.category}/{sub}: standard investigation")


def _d(strategy: str, reason: str) -> Decision:
    return Decision(strategy, RUNBOOK[strategy], reason)
