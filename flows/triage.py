"""Runbook: triage a new incident.

1. Read the incident and its alerts.
2. Classify: ML taxonomy and incident type, severity from the policy's thresholds.
3. Enrich: registry versions, recent rollouts, owners, on-call, business context
   (each source optional; a gap is said, not fatal). Runs beside the decision.
4. Score criticality, pick the response strategy, route to an assignee.
5. Record every decision with its reason on the timeline.
6. Announce the decision (ml.incident.triaged): the runbook deployment whose trigger
   matches the strategy starts (prefect.yaml).

Steps 2 and 4 are one pure function, `runbooks.triage.decide`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow
from pydantic import BaseModel, Field

from flows.containment import flow_run_id
from runbooks.policy import KubernetesTarget, Policy, load_policy
from runbooks.routing import oncall_now
from runbooks.triage import TriageDecision, decide
from runbooks.views import IncidentView
from tasks import incident_store as store
from tasks.enrichment import enrich_incident
from tasks.notifications import notify


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
    owner = store.claim_triage(incident.id, flow_run_id(), request.retriage)
    if owner is not None:
        # A redelivered event: the run that claimed the incident decides, this one does not.
        return f"already triaged by flow run {owner}"
    policy = load_policy(request.policy_file) if request.policy_file else store.policy()
    if request.policy_file:
        store.add_timeline(incident.id, "triage", "policy", f"policy {request.policy_file}")
    now = datetime.now(UTC)
    enrichment = enrich_incident.submit(incident.model, **enrichment_args(incident, policy, now))
    decision = decide(
        incident,
        policy,
        now,
        dry_run=request.dry_run,
        start_runbook=request.start_runbook,
        retriage=request.retriage,
    )
    store.record_triage(
        incident.id,
        decision.fields,
        list(decision.reasons),
        decision.last_alert_read,
        request.policy_file,
        decision.start,
    )
    # Beside the enrichment, after the decision is stored: the runbook is already starting,
    # and the first message names the assignee and the severity just decided.
    if request.retriage:
        # A raised severity can add channels (PagerDuty pages P1 only): they hear of the
        # incident from its opening message first; every channel then hears why.
        opened = notify.submit(
            incident.id, "opened", data={"flow_run_id": flow_run_id()}, only_untold=True
        )
        told = notify.submit(
            incident.id, "update", data={"message": retriage_news(decision)}, wait_for=[opened]
        )
    else:
        told = notify.submit(incident.id, "opened", data={"flow_run_id": flow_run_id()})
    enrichment.wait(timeout=policy.enrichment.timeout_seconds)
    if not enrichment.state.is_completed():
        store.add_timeline(
            incident.id,
            "triage",
            "gap",
            f"enrichment not done in {policy.enrichment.timeout_seconds:g} s; "
            "the runbook goes first, the context follows",
        )
    context = enrichment.result()
    store.record_enrichment(incident.id, context.to_dict(), context.summary_lines())
    told.wait()
    return decision.strategy


def retriage_news(decision: TriageDecision) -> str:
    return (
        f"triaged again: {decision.severity}, strategy {decision.strategy}, "
        f"assignee {decision.assignee or 'nobody'}"
    )


def enrichment_args(incident: IncidentView, policy: Policy, now: datetime) -> dict[str, Any]:
    """`enrich_incident`'s sources for this incident, from the model's policy."""
    e = policy.enrichment
    model = policy.for_model(incident.model)
    args: dict[str, Any] = {
        "registry_url": e.mlflow_url or None,
        "registry_model": model.registry.name.format(model=incident.model),
        "aliases": model.registry.aliases,
        "owners": model.owners,
        "on_call": [p for p in [oncall_now(policy, now)] if p],
        "business": model.business.model_dump(),
    }
    target = model.target
    version = next(
        (a.labels.get("version") for a in incident.alerts if a.labels.get("version")),
        None,
    )
    if e.kubernetes_history and isinstance(target, KubernetesTarget) and version:
        args["namespace"] = target.namespace
        args["deployment"] = target.deployment.format(model=incident.model, version=version)
        args["version_label"] = target.version_label
    return args
