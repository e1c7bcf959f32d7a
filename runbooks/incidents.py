"""The incident lifecycle: open -> triaged -> investigating -> mitigated -> resolved -> closed.

Every transition, every hand-off to a human and every action leaves a line on the timeline;
triage claims an incident here so that a late duplicate run stops. These functions take an
open session and never commit: the caller's transaction decides, so a change and the event
it causes land together or not at all.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import update as sa_update
from sqlmodel import Session, col

from runbooks.events import enqueue_event
from runbooks.models import ACTIVE_STATUSES, Incident, IncidentStatus, TimelineEvent, utcnow

ORDER = [s.value for s in IncidentStatus]


class IncidentStateError(RuntimeError):
    """A lifecycle rule was broken; the message says which and what to do."""


def add_timeline(
    session: Session,
    incident_id: int,
    actor: str,
    kind: str,
    message: str,
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> TimelineEvent:
    event = TimelineEvent(
        incident_id=incident_id,
        actor=actor,
        kind=kind,
        message=message,
        data=data or {},
        at=at or utcnow(),
    )
    session.add(event)
    return event


def transition(session: Session, incident: Incident, to: str, actor: str, why: str) -> bool:
    """Move forward in the lifecycle; staying put is a no-op so retries are safe."""
    if incident.status == to:
        return False
    if ORDER.index(to) < ORDER.index(incident.status):
        raise IncidentStateError(
            f"incident {incident.id} is {incident.status}; it cannot go back to {to}. "
            "Open a new incident instead."
        )
    now = utcnow()
    before = incident.status
    incident.status = to
    incident.updated_at = now
    if to == IncidentStatus.MITIGATED:
        incident.mitigated_at = now
    if to in (IncidentStatus.RESOLVED, IncidentStatus.CLOSED):
        incident.resolved_at = incident.resolved_at or now
        incident.open_group_key = None
        incident.needs_human = None
    if to == IncidentStatus.CLOSED:
        incident.closed_at = now
    session.add(incident)
    add_timeline(session, incident.id, actor, "status", f"{before} -> {to}: {why}", at=now)
    if to == IncidentStatus.RESOLVED:
        # Announcements and the post-mortem start on this, whoever resolved it (a runbook's
        # verification, or the intake when every alert of the incident resolved).
        enqueue_event(
            session,
            "ml.incident.resolved",
            incident,
            {"severity": incident.severity, "by": actor, "why": why, "from": before},
        )
    return True


def hand_to_human(session: Session, incident: Incident, actor: str, why: str) -> None:
    """A runbook stops acting and a person must decide: said on the timeline, kept on the
    incident, and announced as ml.incident.needs_human (notifications and escalation
    listen for it)."""
    incident.needs_human = why
    incident.updated_at = utcnow()
    session.add(incident)
    add_timeline(session, incident.id, actor, "needs_human", f"needs human: {why}")
    enqueue_event(
        session,
        "ml.incident.needs_human",
        incident,
        {"reason": why, "severity": incident.severity, "assignee": incident.assignee},
    )


def acknowledge(session: Session, incident: Incident, by: str, via: str) -> bool:
    """A person says "I have it": the escalation clock stops and MTTA ends here. The first
    acknowledgement counts; a second is a no-op (False) so a double click or a retried
    request changes nothing. Announced as ml.incident.acknowledged."""
    by = by.strip()
    if not by:
        raise IncidentStateError(
            f"an acknowledgement of incident {incident.id} needs a name: --by NAME "
            'or {"by": NAME}'
        )
    if incident.acknowledged_at is not None:
        return False
    if not is_active(incident):
        raise IncidentStateError(
            f"incident {incident.id} is {incident.status}; there is nothing to acknowledge"
        )
    now = utcnow()
    incident.acknowledged_at = now
    incident.acknowledged_by = by
    incident.updated_at = now
    session.add(incident)
    add_timeline(session, incident.id, by, "acknowledged", f"acknowledged by {by} ({via})", at=now)
    enqueue_event(session, "ml.incident.acknowledged", incident, {"by": by, "via": via})
    return True


def is_active(incident: Incident) -> bool:
    return incident.status in ACTIVE_STATUSES


# Remediation bookkeeping ---------------------------------------------------------------


def claim_triage(session: Session, incident_id: int, run: str, force: bool = False) -> str | None:
    """Make `run` the incident's triage; None when it is, else the run that already is."""
    q = sa_update(Incident).where(Incident.id == incident_id)
    if not force:
        q = q.where(col(Incident.triage_run).is_(None))
    if session.execute(q.values(triage_run=run)).rowcount == 1:
        return None
    incident = session.get(Incident, incident_id)
    return incident.triage_run if incident else None
