"""Runbook: triage a new incident.

1. Read the incident and its alerts.
2. Classify: ML taxonomy and incident type, severity from the policy's thresholds.
3. Enrich: registry versions, recent rollouts, owners, on-call, business context
   (each source optional; a gap is said, not fatal). Runs beside the decision.
4. Score criticality, pick the response strategy, route to an assignee.
5. Record every decision with its reason on the timeline.
6. Announce the decision (ml.incident.triaged): the runbook deployment whose trigger
   matches the strategy starts (prefect.yaml).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow
from pydantic import BaseModel, Field

from flows.containment import flow_run_id
from runbooks.ingest import confidence_from
from runbooks.policy import KubernetesTarget, ModelPolicy, Policy, load_policy
from runbooks.routing import criticality, oncall_now, route
from runbooks.severity import RANK, Assessment, assess
from runbooks.strategy import CONTAINS, choose_strategy
from runbooks.taxonomy import Classification, classify
from tasks import incident_store as store
from tasks.enrichment import enrich_incident


class TriageRequest(BaseModel):
    incident_id: int = Field(description="The incident to triage (the intake's id).")
    dry_run: bool = Field(False, description="Decide and record, but let runbooks change nothing.")
    start_runbook: bool = Field(
        True, description="Start the runbook the strategy names (off: decide and record only)."
    )
    policy_file: str | None = Field(
        None, description="Triage with this policy file instead of the service's (to test one)."
    )
    retriage: bool = Field(
        False, description="Triage again even if another run already did (from the UI)."
    )


@flow(name="triage", log_prints=True)
def triage(request: TriageRequest) -> str:
    incident = store.read_incident(request.incident_id)
    owner = store.claim_triage(incident["id"], flow_run_id(), request.retriage)
    if owner is not None:
        # A redelivered event: the run that claimed the incident decides, this one does not.
        return f"already triaged by flow run {owner}"
    policy = load_policy(request.policy_file) if request.policy_file else store.policy()
    model = policy.for_model(incident["model"])
    if request.policy_file:
        store.add_timeline(incident["id"], "triage", "policy", f"policy {request.policy_file}")
    enrichment = enrich_incident.submit(
        incident["model"], **enrichment_args(incident, model, policy)
    )

    severity, c, assessment, reasons = classify_incident(incident, policy)
    decision = choose_strategy(severity, c, model, policy)
    now = datetime.now(UTC)
    routed = route(severity, c, model, policy, _time(incident["opened_at"]), now)
    score = criticality(
        severity,
        c,
        model,
        policy,
        alerts=len(firing_alerts(incident)),
        magnitude=_magnitude(assessment),
        confidence=_confidence(incident, policy),
    )
    # A re-triage (an escalation, or by hand) does not start a second containment: the
    # first decision started one, and two at once would ask twice and act twice.
    started_before = request.retriage and incident["strategy"] in CONTAINS
    start = None
    if not decision.runbook:
        runbook_note = "no automated runbook for this strategy yet: the assignee runs it by hand"
    elif started_before and decision.strategy in CONTAINS:
        runbook_note = (
            f"runbook {decision.runbook} not started again: the first triage started it "
            f"({incident['strategy']}); start the containment deployment by hand to rerun it"
        )
    elif incident["suppressed_reason"]:
        runbook_note = f"suppressed ({incident['suppressed_reason']}): no runbook started"
    elif not request.start_runbook:
        runbook_note = f"runbook {decision.runbook} not started (start_runbook is off)"
    else:
        runbook_note = f"runbook {decision.runbook} starts next"
        # The decision names the run: the runbook claims it, so a redelivered event or a
        # second firing of the automation does not carry out one decision twice.
        start = {
            "runbook": decision.runbook,
            "decision": decision.strategy + (":dry-run" if request.dry_run else ""),
            "dry_run": request.dry_run,
        }
    store.record_triage(
        incident["id"],
        {
            "severity": severity,
            "type": c.type,
            "category": c.category,
            "strategy": decision.strategy,
            "assignee": routed.assignee,
            "criticality": score.value,
            "route": routed.to_dict(),
        },
        [
            *reasons,
            f"{c.category}/{c.subcategory} ({c.type}) from {c.how}",
            score.reason,
            f"strategy {decision.strategy}: {decision.reason}; {runbook_note}",
            f"assigned to {routed.assignee or 'nobody'} ({routed.why}); "
            f"backups {', '.join(routed.backups) or 'none'}; "
            f"channels {', '.join(routed.channels) or 'none'}",
        ],
        max((a["id"] for a in incident["alerts"]), default=0),
        request.policy_file,
        start,
    )
    enrichment.wait(timeout=policy.enrichment.timeout_seconds)
    pending = False
    if enrichment.state.is_completed():
        store.record_enrichment(incident["id"], enrichment.result().to_dict(), _lines(enrichment))
    else:
        pending = True
        store.add_timeline(
            incident["id"],
            "triage",
            "gap",
            f"enrichment not done in {policy.enrichment.timeout_seconds:g} s; "
            "the runbook goes first, the context follows",
        )
    if pending:
        store.record_enrichment(incident["id"], enrichment.result().to_dict(), _lines(enrichment))
    return decision.strategy


def _lines(enrichment: Any) -> list[str]:
    return enrichment.result().summary_lines()


def firing_alerts(incident: dict) -> list[dict]:
    firing = [a for a in incident["alerts"] if a["status"] == "firing"]
    unmuted = [a for a in firing if not a.get("suppressed_reason")]
    return unmuted or firing or incident["alerts"]


def classify_incident(
    incident: dict, policy: Policy
) -> tuple[str, Classification, Assessment | None, list[str]]:
    """The worst severity over the incident's firing alerts, its class, and why."""
    if incident["source"] == "manual" and incident["severity"]:
        labels = incident["alerts"][0]["labels"] if incident["alerts"] else {}
        c = classify(labels, policy.labels)
        if incident["type"]:
            c.type = incident["type"]
        return incident["severity"], c, None, [f"{incident['severity']} as reported by a human"]
    alerts = firing_alerts(incident)
    results = [(assess(a["labels"], a["annotations"], policy), a) for a in alerts]
    worst, alert = min(results, key=lambda r: RANK[r[0].severity])
    c = classify(alert["labels"], policy.labels)
    gaps = [g for r, _ in results for g in r.gaps] + c.gaps
    reasons = list(dict.fromkeys(worst.reasons + [f"gap: {g}" for g in gaps]))
    return worst.severity, c, worst, reasons


def enrichment_args(incident: dict, model: ModelPolicy, policy: Policy) -> dict[str, Any]:
    e = policy.enrichment
    args: dict[str, Any] = {
        "registry_url": e.mlflow_url or None,
        "registry_model": model.registry.name.format(model=incident["model"]),
        "aliases": model.registry.aliases,
        "owners": model.owners,
        "on_call": [p for p in [oncall_now(policy, datetime.now(UTC))] if p],
        "business": model.business.model_dump(),
    }
    target = model.target
    version = next(
        (a["labels"].get("version") for a in incident["alerts"] if a["labels"].get("version")),
        None,
    )
    if e.kubernetes_history and isinstance(target, KubernetesTarget) and version:
        args["namespace"] = target.namespace
        args["deployment"] = target.deployment.format(model=incident["model"], version=version)
        args["version_label"] = target.version_label
    return args


def _time(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _magnitude(a: Assessment | None) -> float | None:
    if a is None or a.value is None or not a.baseline:
        return None
    return abs(a.baseline - a.value) / abs(a.baseline)


def _confidence(incident: dict, policy: Policy) -> float | None:
    alerts = firing_alerts(incident)
    if not alerts:
        return None
    return confidence_from(alerts[0]["labels"], alerts[0]["annotations"], policy)
