"""The incident lifecycle: open -> triaged -> investigating -> mitigated -> resolved -> closed.

Every transition, every hand-off to a human and every action leaves a line on the timeline;
triage claims an incident here so that a late duplicate run stops. These functions take an
open session and never commit: the caller's transaction decides, so a change and the event
it causes land together or not at all.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update as sa_update
from sqlmodel import Session, col, select

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


def close(session: Session, incident: Incident, by: str, why: str) -> bool:
    """resolved -> closed: the post-mortem accepted, a person's word, or the policy's days.
    Closing a closed incident is a no-op (False); an active one cannot be closed."""
    if incident.status == IncidentStatus.CLOSED:
        return False
    if incident.status != IncidentStatus.RESOLVED:
        raise IncidentStateError(
            f"incident {incident.id} is {incident.status}; only a resolved incident can be "
            "closed (resolve it first)"
        )
    return transition(session, incident, IncidentStatus.CLOSED, by, why)


def close_stale(session: Session, now: datetime, days: float, limit: int = 500) -> list[int]:
    """Close the incidents resolved more than `days` ago (the policy's close_after_days):
    nobody accepted their post-mortem, and a resolved incident must not stay open-ended.
    At most `limit` per call, oldest first; the status index finds them."""
    cutoff = now - timedelta(days=days)
    stale = session.exec(
        select(Incident)
        .where(Incident.status == IncidentStatus.RESOLVED, col(Incident.resolved_at) < cutoff)
        .order_by(col(Incident.resolved_at))
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for incident in stale:
        transition(
            session,
            incident,
            IncidentStatus.CLOSED,
            "lifecycle",
            f"resolved over {days:g} days ago and no post-mortem accepted (lifecycle."
            "close_after_days)",
        )
    return [i.id for i in stale]  # type: ignore[misc]


def reopen(session: Session, incident: Incident, by: str, why: str) -> bool:
    """resolved or closed -> open again: it takes its group's alerts again, triage decides
    afresh (ml.incident.opened, its runbook starts again under the cooldown), nobody has
    acknowledged this life yet, and the escalation clock runs from now. False when it is
    active already. IncidentStateError when another incident of its group is active."""
    if is_active(incident):
        return False
    if incident.status not in (IncidentStatus.RESOLVED, IncidentStatus.CLOSED):
        raise IncidentStateError(f"incident {incident.id} is {incident.status}; cannot reopen")
    other = session.exec(
        select(Incident.id).where(Incident.open_group_key == incident.group_key)
    ).first()
    if other is not None:
        raise IncidentStateError(
            f"incident {incident.id} cannot be reopened: incident {other} of its group "
            f"({incident.group_key}) is active; work on that one"
        )
    now = utcnow()
    before = incident.status
    incident.status = IncidentStatus.OPEN
    incident.open_group_key = incident.group_key
    incident.resolved_at = incident.closed_at = None
    incident.needs_human = None
    incident.acknowledged_at = incident.acknowledged_by = None
    incident.triage_run = None
    incident.reopened_at = incident.updated_at = incident.last_alert_at = now
    incident.reopened_count += 1
    session.add(incident)
    add_timeline(
        session,
        incident.id,
        by,
        "reopened",
        f"{before} -> open: reopened by {by}: {why}",
        {"from": before, "count": incident.reopened_count},
        at=now,
    )
    enqueue_event(
        session,
        "ml.incident.opened",
        incident,
        {"status": "firing", "reopened": True, "by": by, "why": why},
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
