"""The incident lifecycle and everything that writes to it.

open -> triaged -> investigating -> mitigated -> resolved -> closed. Every transition, every
alert that joins, every action leaves a line on the timeline. These functions take an open
session and never commit: the caller's transaction decides, so an alert, its incident and
the event they cause land together or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from runbooks.alerts import AlertIn
from runbooks.models import (
    ACTIVE_STATUSES,
    Action,
    Alert,
    Incident,
    IncidentStatus,
    OutboxEvent,
    RemediationLock,
    TimelineEvent,
    utcnow,
)
from runbooks.policy import Policy

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
    if to == IncidentStatus.CLOSED:
        incident.closed_at = now
    session.add(incident)
    add_timeline(session, incident.id, actor, "status", f"{before} -> {to}: {why}", at=now)
    return True


def is_active(incident: Incident) -> bool:
    return incident.status in ACTIVE_STATUSES


def model_resource(model: str) -> dict[str, str]:
    return {"prefect.resource.id": f"ml.model.{model}", "prefect.resource.name": model}


def enqueue_event(
    session: Session, event: str, incident: Incident, payload: dict[str, Any]
) -> OutboxEvent:
    """Stage a Prefect event in the same transaction as the change it announces."""
    out = OutboxEvent(
        event=event,
        resource=model_resource(incident.model),
        related=[
            {
                "prefect.resource.id": f"ml.incident.{incident.id}",
                "prefect.resource.role": "incident",
            }
        ],
        payload={"incident_id": incident.id, "model": incident.model, **payload},
    )
    session.add(out)
    return out


def group_key(alert: AlertIn, policy: Policy) -> str:
    parts = []
    for name in policy.grouping.by:
        value = alert.model if name == "model" else alert.labels.get(name, "")
        parts.append(f"{name}={value}")
    return ",".join(parts)


@dataclass
class Ingested:
    alert_id: int
    incident_id: int | None
    outcome: str  # opened | joined | duplicate | resolved | refired | recorded


@dataclass
class IngestResult:
    items: list[Ingested] = field(default_factory=list)

    @property
    def incident_ids(self) -> list[int]:
        return sorted({i.incident_id for i in self.items if i.incident_id is not None})


def ingest(session: Session, alerts: list[AlertIn], policy: Policy) -> IngestResult:
    """Store alerts and fold them into incidents. A redelivered alert changes nothing."""
    result = IngestResult()
    for alert in alerts:
        result.items.append(_ingest_one(session, alert, policy))
    return result


def _ingest_one(session: Session, a: AlertIn, policy: Policy) -> Ingested:
    existing = session.exec(
        select(Alert).where(Alert.fingerprint == a.fingerprint, Alert.starts_at == a.starts_at)
    ).first()
    if existing is not None:
        if existing.status == a.status:
            return Ingested(existing.id, existing.incident_id, "duplicate")
        existing.status = a.status
        existing.ends_at = a.ends_at
        existing.annotations = a.annotations
        session.add(existing)
        if a.status == "resolved":
            return Ingested(existing.id, existing.incident_id, _on_resolved(session, existing))
        if existing.incident_id is not None:
            incident = session.get(Incident, existing.incident_id)
            if incident is not None and is_active(incident):
                add_timeline(session, incident.id, "intake", "alert", f"{_name(a)} fires again")
                return Ingested(existing.id, incident.id, "refired")
        # It fired again after its incident ended: it opens (or joins) a new one.

    row = existing or Alert(
        fingerprint=a.fingerprint,
        starts_at=a.starts_at,
        ends_at=a.ends_at,
        status=a.status,
        model=a.model,
        alertname=a.alertname,
        labels=a.labels,
        annotations=a.annotations,
        source=a.source,
    )
    session.add(row)
    key = group_key(a, policy)
    incident = _open_incident_for(session, key)
    if a.status == "resolved":
        # A resolved alert we never saw firing: kept as a record, it starts nothing.
        row.incident_id = incident.id if incident else None
        session.flush()
        if incident:
            add_timeline(session, incident.id, "intake", "alert", f"{_name(a)} resolved")
        return Ingested(row.id, row.incident_id, "recorded")
    outcome = "joined"
    if incident is None:
        incident, outcome = _create_incident(session, a, key)
    row.incident_id = incident.id
    session.flush()
    if outcome == "opened":
        add_timeline(
            session,
            incident.id,
            "intake",
            "opened",
            f"opened by {_name(a)}",
            {"alert_id": row.id, "labels": a.labels, "annotations": a.annotations},
        )
        enqueue_event(
            session,
            "ml.incident.opened",
            incident,
            {"alert_id": row.id, "alertname": a.alertname, "status": "firing"},
        )
    else:
        add_timeline(
            session,
            incident.id,
            "intake",
            "alert",
            f"{_name(a)} joined",
            {"alert_id": row.id, "labels": a.labels, "annotations": a.annotations},
        )
        incident.updated_at = utcnow()
        session.add(incident)
        enqueue_event(
            session,
            "ml.incident.updated",
            incident,
            {"alert_id": row.id, "alertname": a.alertname, "status": "firing"},
        )
    return Ingested(row.id, incident.id, outcome)


def _name(a: AlertIn) -> str:
    return f"alert {a.alertname} [{a.fingerprint}]"


def _open_incident_for(session: Session, key: str) -> Incident | None:
    return session.exec(select(Incident).where(Incident.open_group_key == key)).first()


def _create_incident(session: Session, a: AlertIn, key: str) -> tuple[Incident, str]:
    summary = a.annotations.get("summary") or f"{a.alertname} on {a.model}"
    incident = Incident(
        model=a.model, title=summary, group_key=key, open_group_key=key, source=a.source
    )
    try:
        with session.begin_nested():
            session.add(incident)
    except IntegrityError:
        # Another intake opened this group's incident a moment ago: join it.
        found = _open_incident_for(session, key)
        if found is None:
            raise
        return found, "joined"
    return incident, "opened"


def _on_resolved(session: Session, alert: Alert) -> str:
    if alert.incident_id is None:
        return "resolved"
    incident = session.get(Incident, alert.incident_id)
    if incident is None:
        return "resolved"
    add_timeline(
        session,
        incident.id,
        "intake",
        "alert",
        f"alert {alert.alertname} [{alert.fingerprint}] resolved",
    )
    firing = session.exec(
        select(func.count())
        .select_from(Alert)
        .where(Alert.incident_id == incident.id, Alert.status == "firing")
    ).one()
    if firing == 0 and is_active(incident):
        transition(
            session,
            incident,
            IncidentStatus.RESOLVED,
            "intake",
            "every alert of the incident resolved",
        )
    enqueue_event(
        session,
        "ml.alert.resolved",
        incident,
        {
            "alert_id": alert.id,
            "alertname": alert.alertname,
            "status": "resolved",
            "firing_alerts": int(firing),
        },
    )
    return "resolved"


def open_reported_incident(
    session: Session, a: AlertIn, severity: str, incident_type: str, description: str
) -> Incident:
    """A human's report opens its own incident: people do not repeat themselves."""
    row = Alert(
        fingerprint=a.fingerprint,
        starts_at=a.starts_at,
        status="firing",
        model=a.model,
        alertname=a.alertname,
        labels=a.labels,
        annotations=a.annotations,
        source=a.source,
    )
    incident = Incident(
        model=a.model,
        title=description[:200],
        group_key=f"report:{a.fingerprint}",
        open_group_key=f"report:{a.fingerprint}",
        severity=severity,
        type=incident_type,
        source="manual",
        description=description,
    )
    session.add(incident)
    session.flush()
    row.incident_id = incident.id
    session.add(row)
    session.flush()
    add_timeline(
        session,
        incident.id,
        a.annotations.get("reported_by", "reporter"),
        "opened",
        f"reported: {description}",
        {"severity": severity, "type": incident_type, "impact": a.annotations.get("impact", "")},
    )
    enqueue_event(
        session,
        "ml.incident.opened",
        incident,
        {"alert_id": row.id, "alertname": a.alertname, "status": "firing"},
    )
    return incident


# Remediation bookkeeping ---------------------------------------------------------------


def acquire_lock(session: Session, model: str, incident_id: int, holder: str) -> RemediationLock:
    """Take the model's remediation lock, or raise naming who holds it."""
    lock = session.get(RemediationLock, model)
    if lock is not None:
        if lock.incident_id == incident_id:
            return lock
        raise IncidentStateError(
            f"model {model} is being remediated by incident {lock.incident_id} "
            f"({lock.holder}, since {lock.acquired_at:%H:%M:%SZ}); one remediation at a time"
        )
    lock = RemediationLock(model=model, incident_id=incident_id, holder=holder)
    try:
        with session.begin_nested():
            session.add(lock)
    except IntegrityError:
        other = session.get(RemediationLock, model)
        raise IncidentStateError(
            f"model {model} is being remediated by incident "
            f"{other.incident_id if other else '?'}; one remediation at a time"
        ) from None
    return lock


def release_lock(session: Session, model: str, incident_id: int) -> None:
    lock = session.get(RemediationLock, model)
    if lock is not None and lock.incident_id == incident_id:
        session.delete(lock)


def cooldown_left(
    session: Session, model: str, kind: str, incident_id: int, cooldown: float
) -> float:
    """Seconds until (model, kind) may act again for another incident; 0 when it may."""
    last = session.exec(
        select(Action)
        .where(
            Action.model == model,
            Action.kind == kind,
            Action.status == "done",
            Action.incident_id != incident_id,
        )
        .order_by(col(Action.finished_at).desc())
    ).first()
    if last is None or last.finished_at is None:
        return 0.0
    left = (last.finished_at + timedelta(seconds=cooldown) - utcnow()).total_seconds()
    return max(0.0, left)
