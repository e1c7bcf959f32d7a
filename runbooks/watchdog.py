"""The watchdog: an event that reached Prefect but started no runbook is staged again.

deployments/outbox.py runs it on its delivery thread; each redelivery leaves a timeline line.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session, col, func, select

from runbooks.events import enqueue_event
from runbooks.incidents import add_timeline, is_active
from runbooks.models import Incident, IncidentStatus, OutboxEvent, RunbookRun, TimelineEvent


def _aware(t: datetime) -> datetime:
    return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)


def restage_stalled(
    session: Session,
    now: datetime,
    grace_seconds: float,
    max_attempts: int = 3,
    has_run: Callable[[list[int], datetime], set[int]] | None = None,
) -> list[int]:
    """Open incidents whose opening event went out `grace_seconds` ago and started no
    triage, and escalations that started no re-triage: stage the event again. Prefect can
    drop an automation firing (seen with its SQLite database under load); this makes sure
    the runbook starts anyway."""
    again = []
    for due, what in (
        (
            _not_queued(_stalled_openings(session, now, grace_seconds, max_attempts), has_run),
            "triage started {grace} s after the event",
        ),
        (
            _not_queued(_stalled_escalations(session, now, grace_seconds, max_attempts), has_run),
            "triage started {grace} s after the escalation",
        ),
        # A runbook run that waits in a queue claims nothing yet; sending again is safe all
        # the same, because the second run finds the first one's claim and stops.
        (
            _stalled_runbooks(session, now, grace_seconds, max_attempts),
            "runbook started {grace} s after the triage decision",
        ),
    ):
        for incident, events, payload in due:
            n = len(events) + 1
            add_timeline(
                session,
                incident.id,
                "intake",
                "redelivered",
                f"no {what.format(grace=f'{grace_seconds:g}')} was delivered; "
                f"sending it again (attempt {n} of {max_attempts})",
            )
            labels = {k: v for k, v in events[0].resource.items() if k.startswith("ml.")}
            enqueue_event(session, events[0].event, incident, {**payload, "attempt": n}, labels)
            again.append(incident.id)
    return again


def _stalled_runbooks(
    session: Session, now: datetime, grace_seconds: float, max_attempts: int
) -> list[_Stalled]:
    """A triage decision that named a runbook, was delivered, and started none."""
    sent: dict[tuple[int, str, str], list[OutboxEvent]] = {}
    for e in session.exec(
        select(OutboxEvent)
        .where(
            OutboxEvent.event == "ml.incident.triaged",
            OutboxEvent.occurred > now - timedelta(days=1),
        )
        .order_by(col(OutboxEvent.occurred))
    ):
        p = e.payload
        sent.setdefault((p["incident_id"], p.get("runbook", ""), p.get("decision", "")), []).append(
            e
        )
    due = {k: v for k, v in sent.items() if _unanswered(v, now, grace_seconds, max_attempts)}
    if not due:
        return []
    started = {
        (r.incident_id, r.runbook, r.decision)
        for r in session.exec(
            select(RunbookRun).where(col(RunbookRun.incident_id).in_({k[0] for k in due}))
        )
    }
    stalled = []
    for key, events in sorted(due.items()):
        incident = session.get(Incident, key[0])
        if key in started or incident is None or not is_active(incident):
            continue
        payload = {k: v for k, v in events[0].payload.items() if k not in ("attempt",)}
        stalled.append((incident, events, payload))
    return stalled


# An incident to send an event again for: the sends so far, and the payload to send.
_Stalled = tuple[Incident, list[OutboxEvent], dict[str, Any]]


def _unanswered(events: list[OutboxEvent], now: datetime, grace: float, attempts: int) -> bool:
    """Every send delivered, the last `grace` seconds ago, and attempts left."""
    last = max((e.delivered_at for e in events if e.delivered_at), default=None)
    if last is None or any(e.delivered_at is None for e in events) or len(events) >= attempts:
        return False
    return (now - last).total_seconds() >= grace


def _not_queued(
    due: list[_Stalled], has_run: Callable[[list[int], datetime], set[int]] | None
) -> list[_Stalled]:
    """A run that exists (since the first of the sends) but waits for a free slot is not
    lost: leave it be."""
    if not due or has_run is None:
        return due
    first = min(e.occurred for _, events, _ in due for e in events)
    queued = has_run([incident.id for incident, _, _ in due], first)
    return [d for d in due if d[0].id not in queued]


def _stalled_openings(
    session: Session, now: datetime, grace_seconds: float, max_attempts: int
) -> list[_Stalled]:
    stalled = session.exec(
        select(Incident).where(
            Incident.status == IncidentStatus.OPEN,
            col(Incident.triage_run).is_(None),
            col(Incident.suppressed_reason).is_(None),
            Incident.opened_at < now - timedelta(seconds=grace_seconds),
        )
    ).all()
    if not stalled:
        return []
    ids = {i.id for i in stalled}
    sent: dict[int, list[OutboxEvent]] = {}
    for e in session.exec(
        select(OutboxEvent).where(
            OutboxEvent.event == "ml.incident.opened",
            OutboxEvent.occurred > now - timedelta(days=1),
        )
    ):
        if e.payload.get("incident_id") in ids:
            sent.setdefault(e.payload["incident_id"], []).append(e)
    return [
        (incident, sent[incident.id], {"status": "firing"})
        for incident in stalled
        if _unanswered(sent.get(incident.id, []), now, grace_seconds, max_attempts)
    ]


def _stalled_escalations(
    session: Session, now: datetime, grace_seconds: float, max_attempts: int
) -> list[_Stalled]:
    """An escalation whose re-triage never started is sent again, as an opening is: the
    severity moved, and the strategy and route must follow it."""
    latest: dict[int, list[OutboxEvent]] = {}
    for e in session.exec(
        select(OutboxEvent)
        .where(
            OutboxEvent.event == "ml.incident.escalated",
            OutboxEvent.occurred > now - timedelta(days=1),
        )
        .order_by(col(OutboxEvent.id))
    ):
        events = latest.setdefault(e.payload["incident_id"], [])
        if events and events[-1].payload.get("severity") != e.payload.get("severity"):
            events.clear()  # escalated further: only the latest step asks for a triage
        events.append(e)
    due = {
        incident_id: events
        for incident_id, events in latest.items()
        if _unanswered(events, now, grace_seconds, max_attempts)
    }
    if not due:
        return []
    # Triage recorded a decision after the escalation: it was not lost.
    decided = session.exec(
        select(TimelineEvent.incident_id, func.max(TimelineEvent.at))
        .where(
            col(TimelineEvent.incident_id).in_(list(due)),
            TimelineEvent.actor == "triage",
            TimelineEvent.kind == "decision",
        )
        .group_by(col(TimelineEvent.incident_id))
    ).all()
    for incident_id, at in decided:
        if at is not None and _aware(at) >= _aware(due[incident_id][0].occurred):
            del due[incident_id]
    stalled = []
    for incident_id, events in sorted(due.items()):
        incident = session.get(Incident, incident_id)
        if incident is None or not is_active(incident) or incident.suppressed_reason:
            continue
        first = events[0].payload
        payload = {"severity": first.get("severity"), "previous": first.get("previous")}
        stalled.append((incident, events, {**payload, "status": "firing"}))
    return stalled
