"""Runbook: triage a new incident.

1. Read the incident and its alerts.
2. Classify: severity from the policy's thresholds, incident type.
3. Pick the response strategy and the owner.
4. Record the decision on the timeline.
5. Start the runbook the strategy names.
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, Field

from flows.containment import ContainmentRequest, contain
from runbooks.severity import RANK, assess
from runbooks.strategy import CONTAINS, choose_strategy, incident_type
from tasks import incident_store as store


class TriageRequest(BaseModel):
    incident_id: int = Field(description="The incident to triage (the intake's id).")
    dry_run: bool = Field(False, description="Decide and record, but let runbooks change nothing.")


@flow(name="triage", log_prints=True)
def triage(request: TriageRequest) -> str:
    incident = store.read_incident(request.incident_id)
    severity, kind, reasons = classify(incident)
    strategy, why = choose_strategy(severity, kind)
    owners = store.policy().for_model(incident["model"]).owners
    store.record_triage(
        incident["id"], severity, kind, strategy, owners[0] if owners else None, [*reasons, why]
    )
    if strategy in CONTAINS:
        return contain(ContainmentRequest(incident_id=incident["id"], dry_run=request.dry_run))
    return strategy


def classify(incident: dict) -> tuple[str, str, list[str]]:
    """The worst severity over the incident's firing alerts, and why."""
    policy = store.policy()
    firing = [a for a in incident["alerts"] if a["status"] == "firing"] or incident["alerts"]
    if incident["source"] == "manual" and incident["severity"]:
        return (
            incident["severity"],
            incident["type"] or "unknown",
            [f"{incident['severity']} as reported by a human"],
        )
    results = [assess(a["labels"], a["annotations"], policy) for a in firing]
    worst = min(results, key=lambda r: RANK[r.severity])
    reasons = list(dict.fromkeys(worst.reasons + [g for r in results for g in r.gaps]))
    return worst.severity, incident_type(worst.metric), reasons
