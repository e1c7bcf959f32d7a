"""Triage's decision: steps 2 and 4 of the triage runbook, as one pure function.

From the incident as the store reads it (an `IncidentView`: its row and its alerts), the
policy and the clock: severity and class, criticality, strategy, assignee and route,
whether the strategy's runbook starts, and the timeline line that says why for each. No
database, no Prefect, no I/O: the triage flow reads the incident, records this decision
and announces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from runbooks.ingest import confidence_from
from runbooks.policy import Policy
from runbooks.routing import criticality, route
from runbooks.severity import RANK, Assessment, assess
from runbooks.strategy import CONTAINS, Decision, choose_strategy
from runbooks.taxonomy import Classification, classify
from runbooks.views import AlertView, IncidentView


@dataclass(frozen=True)
class TriageDecision:
    severity: str
    category: str
    subcategory: str
    type: str
    strategy: str
    assignee: str | None
    criticality: float
    route: dict[str, Any]
    # The timeline's decision lines, in order: severity, class, criticality, strategy, route.
    reasons: tuple[str, ...]
    # What `ml.incident.triaged` carries to start the strategy's runbook (runbook, decision,
    # dry_run); None when the decision starts nothing, and `reasons` says why.
    start: dict[str, Any] | None
    # The newest alert the decision read: one that joins later may still escalate it.
    last_alert_read: int

    @property
    def fields(self) -> dict[str, Any]:
        """The incident's columns the decision sets, as `record_triage` stores them."""
        return {
            "severity": self.severity,
            "type": self.type,
            "category": self.category,
            "strategy": self.strategy,
            "assignee": self.assignee,
            "criticality": self.criticality,
            "route": self.route,
        }


def decide(
    incident: IncidentView,
    policy: Policy,
    now: datetime,
    *,
    dry_run: bool,
    start_runbook: bool,
    retriage: bool,
) -> TriageDecision:
    """Classify, score, choose the strategy and route the incident, each with its reason."""
    model = policy.for_model(incident.model)
    severity, c, assessment, reasons = classify_incident(incident, policy)
    strategy = choose_strategy(severity, c, model, policy)
    # A reopened incident's deadlines run from its reopening: its clock starts again.
    routed = route(severity, c, model, policy, incident.reopened_at or incident.opened_at, now)
    score = criticality(
        severity,
        c,
        model,
        policy,
        alerts=len(firing_alerts(incident)),
        magnitude=_magnitude(assessment),
        confidence=_confidence(incident, policy),
    )
    start, note = runbook_start(
        incident, strategy, dry_run=dry_run, start_runbook=start_runbook, retriage=retriage
    )
    return TriageDecision(
        severity=severity,
        category=c.category,
        subcategory=c.subcategory,
        type=c.type,
        strategy=strategy.strategy,
        assignee=routed.assignee,
        criticality=score.value,
        route=routed.to_dict(),
        reasons=(
            *reasons,
            f"{c.category}/{c.subcategory} ({c.type}) from {c.how}",
            score.reason,
            f"strategy {strategy.strategy}: {strategy.reason}; {note}",
            f"assigned to {routed.assignee or 'nobody'} ({routed.why}); "
            f"backups {', '.join(routed.backups) or 'none'}; "
            f"channels {', '.join(routed.channels) or 'none'}",
        ),
        start=start,
        last_alert_read=max((a.id for a in incident.alerts), default=0),
    )


def runbook_start(
    incident: IncidentView,
    decision: Decision,
    *,
    dry_run: bool,
    start_runbook: bool,
    retriage: bool,
) -> tuple[dict[str, Any] | None, str]:
    """Whether the strategy's runbook starts (its start payload, or None) and why."""
    # A re-triage (an escalation, or by hand) does not start a second containment: the
    # first decision started one, and two at once would ask twice and act twice.
    started_before = retriage and incident.strategy in CONTAINS
    if not decision.runbook:
        return None, "no automated runbook for this strategy yet: the assignee runs it by hand"
    if started_before and decision.strategy in CONTAINS:
        return None, (
            f"runbook {decision.runbook} not started again: the first triage started it "
            f"({incident.strategy}); start the containment deployment by hand to rerun it"
        )
    if incident.suppressed_reason:
        return None, f"suppressed ({incident.suppressed_reason}): no runbook started"
    if not start_runbook:
        return None, f"runbook {decision.runbook} not started (start_runbook is off)"
    # The decision names the run: the runbook claims it, so a redelivered event or a
    # second firing of the automation does not carry out one decision twice.
    # A reopened incident is a new life: its decision may start the runbook again.
    life = f"@{incident.reopened_count}" if incident.reopened_count else ""
    start = {
        "runbook": decision.runbook,
        "decision": decision.strategy + life + (":dry-run" if dry_run else ""),
        "dry_run": dry_run,
    }
    return start, f"runbook {decision.runbook} starts next"


def firing_alerts(incident: IncidentView) -> list[AlertView]:
    """The alerts triage judges: the firing, unmuted ones; failing those, the firing, then
    any, so that an incident made only of muted or resolved alerts is still classified."""
    firing = [a for a in incident.alerts if a.status == "firing"]
    unmuted = [a for a in firing if not a.suppressed_reason]
    return unmuted or firing or incident.alerts


def classify_incident(
    incident: IncidentView, policy: Policy
) -> tuple[str, Classification, Assessment | None, list[str]]:
    """The worst severity over the incident's firing alerts, its class, and why."""
    if incident.source == "manual" and incident.severity:
        labels = incident.alerts[0].labels if incident.alerts else {}
        c = classify(labels, policy.labels)
        if incident.type:
            c.type = incident.type
        return incident.severity, c, None, [f"{incident.severity} as reported by a human"]
    alerts = firing_alerts(incident)
    results = [(assess(a.labels, a.annotations, policy), a) for a in alerts]
    worst, alert = min(results, key=lambda r: RANK[r[0].severity])
    c = classify(alert.labels, policy.labels)
    gaps = [g for r, _ in results for g in r.gaps] + c.gaps
    reasons = list(dict.fromkeys(worst.reasons + [f"gap: {g}" for g in gaps]))
    return worst.severity, c, worst, reasons


def _magnitude(a: Assessment | None) -> float | None:
    if a is None or a.value is None or not a.baseline:
        return None
    return abs(a.baseline - a.value) / abs(a.baseline)


def _confidence(incident: IncidentView, policy: Policy) -> float | None:
    alerts = firing_alerts(incident)
    if not alerts:
        return None
    return confidence_from(alerts[0].labels, alerts[0].annotations, policy)
