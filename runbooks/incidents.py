"""The incident lifecycle and everything that writes to it.

open -> triaged -> investigating -> mitigated -> resolved -> closed. Every transition, every
alert that joins, every action leaves a line on the timeline. These functions take an open
session and never commit: the caller's transaction decides, so an alert, its incident and
the event they cause land together or not at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy import update as sa_update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from runbooks import suppression as sup
from runbooks.alerts import AlertIn, fingerprint_of
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
from runbooks.models import Silence as SilenceRow
from runbooks.policy import Policy
from runbooks.taxonomy import Classification, classify

ORDER = [s.value for s in IncidentStatus]
UPDATE_EVERY_SECONDS = 30.0


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


def group_key(alert: AlertIn, policy: Policy, c: Classification | None = None) -> str:
    c = c or classify(alert.labels, policy.labels)
    parts = []
    for name in policy.grouping.by:
        if name == "model":
            value = alert.model
        elif name in ("type", "category"):
            value = getattr(c, name)
        else:
            value = alert.labels.get(name, "")
        parts.append(f"{name}={value}")
    return ",".join(parts)


@dataclass
class Ingested:
    alert_id: int
    incident_id: int | None
    outcome: str  # opened | joined | duplicate | resolved | refired | recorded
    suppressed: str | None = None


@dataclass
class IngestResult:
    items: list[Ingested] = field(default_factory=list)

    @property
    def incident_ids(self) -> list[int]:
        return sorted({i.incident_id for i in self.items if i.incident_id is not None})


@dataclass
class _Batch:
    """What one post needs from the store, read once for all of its alerts."""

    session: Session
    policy: Policy
    now: datetime
    existing: dict[tuple[str, datetime], Alert]
    open_incidents: dict[str, Incident]
    silences: list[sup.Silence]
    windows: list[sup.MaintenanceWindow]
    rules: list[sup.InhibitRule]
    sources: list[dict[str, str]]
    updated: dict[int, list[int]] = field(default_factory=dict)
    quiet_since: dict[int, datetime | None] = field(default_factory=dict)
    joined: list[tuple[Ingested, Alert, int, str, AlertIn, bool]] = field(default_factory=list)

    def suppression(self, a: AlertIn) -> sup.Suppression | None:
        return sup.evaluate(
            a.labels,
            self.now,
            silences=self.silences,
            windows=self.windows,
            inhibit_rules=self.rules,
            firing_alerts=self.sources,
            confidence=confidence_of(a, self.policy),
            min_confidence=self.policy.suppression.min_confidence,
        )


def confidence_of(a: AlertIn, policy: Policy) -> float | None:
    name = policy.labels.confidence
    raw = a.labels.get(name, a.annotations.get(name))
    try:
        value = float(raw) if raw not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and 0.0 <= value <= 1.0 else None


def _aware(t: datetime) -> datetime:
    return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)


def _chunks(items: list[Any], n: int = 500) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _prepare(
    session: Session, alerts: list[AlertIn], keys: list[str], policy: Policy, now: datetime
) -> _Batch:
    existing: dict[tuple[str, datetime], Alert] = {}
    for chunk in _chunks(sorted({a.fingerprint for a in alerts})):
        for row in session.exec(select(Alert).where(col(Alert.fingerprint).in_(chunk))):
            existing[(row.fingerprint, _aware(row.starts_at))] = row
    open_incidents: dict[str, Incident] = {}
    for chunk in _chunks(sorted(set(keys))):
        for inc in session.exec(select(Incident).where(col(Incident.open_group_key).in_(chunk))):
            open_incidents[inc.open_group_key or ""] = inc
    silences = [
        sup.Silence.model_validate(
            {
                "id": row.id,
                "matchers": row.matchers,
                "starts_at": row.starts_at,
                "ends_at": row.ends_at,
                "created_by": row.created_by,
                "comment": row.comment,
            }
        )
        for row in session.exec(select(SilenceRow).where(SilenceRow.ends_at > now))
    ]
    rules = policy.suppression.rules()
    return _Batch(
        session=session,
        policy=policy,
        now=now,
        existing=existing,
        open_incidents=open_incidents,
        silences=silences,
        windows=policy.suppression.windows(),
        rules=rules,
        sources=_inhibition_sources(session, rules),
    )


def _inhibition_sources(session: Session, rules: list[sup.InhibitRule]) -> list[dict[str, str]]:
    """Firing alerts that could inhibit: narrowed by alertname when every rule names one."""
    if not rules:
        return []
    names: set[str] = set()
    for rule in rules:
        eq = [m.value for m in rule.source_matchers if m.name == "alertname" and m.op == "="]
        if not eq:
            names = set()
            break
        names.update(eq)
    q = select(Alert.labels).where(Alert.status == "firing")
    if names:
        q = q.where(col(Alert.alertname).in_(sorted(names)))
    return [dict(labels) for labels in session.exec(q)]


def ingest(
    session: Session, alerts: list[AlertIn], policy: Policy, now: datetime | None = None
) -> IngestResult:
    """Store alerts and fold them into incidents. A redelivered alert changes nothing.

    One post is one batch: the store is read once for all its alerts, and each incident
    that took alerts announces it once.
    """
    now = now or utcnow()
    if policy.grouping.fingerprint_labels:
        alerts = [_refingerprint(a, policy.grouping.fingerprint_labels) for a in alerts]
    # Classified once per alert: the group key reads it here and the row keeps it below.
    classes = [classify(a.labels, policy.labels) for a in alerts]
    keys = [group_key(a, policy, c) for a, c in zip(alerts, classes, strict=True)]
    batch = _prepare(session, alerts, keys, policy, now)
    result = IngestResult()
    for alert, c, key in zip(alerts, classes, keys, strict=True):
        result.items.append(_ingest_one(batch, alert, c, key))
    _finish(batch)
    for incident_id, alert_ids in batch.updated.items():
        incident = session.get(Incident, incident_id)
        last = batch.quiet_since.get(incident_id)
        if last is not None and (now - _aware(last)).total_seconds() < UPDATE_EVERY_SECONDS:
            # A storm keeps adding alerts: tell Prefect at most every few seconds, not per post.
            continue
        if incident is not None:
            enqueue_event(
                session,
                "ml.incident.updated",
                incident,
                {"alert_ids": alert_ids, "alerts": len(alert_ids), "status": "firing"},
            )
    return result


def _finish(b: _Batch) -> None:
    """Write what the joined alerts of the post deferred: one flush, one timeline insert."""
    if not b.joined:
        return
    b.session.flush()
    lines = []
    for item, row, incident_id, message, a, loud in b.joined:
        item.alert_id = row.id
        lines.append(
            {
                "incident_id": incident_id,
                "actor": "intake",
                "kind": "alert",
                "message": message,
                "data": {"alert_id": row.id, "labels": a.labels, "annotations": a.annotations},
                "at": b.now,
            }
        )
        if loud:
            b.updated.setdefault(incident_id, []).append(row.id)
    b.session.execute(insert(TimelineEvent), lines)


def _refingerprint(a: AlertIn, names: list[str]) -> AlertIn:
    return a.model_copy(
        update={"fingerprint": fingerprint_of({n: a.labels.get(n, "") for n in names})}
    )


def _ingest_one(b: _Batch, a: AlertIn, c: Classification, key: str) -> Ingested:
    session = b.session
    existing = b.existing.get((a.fingerprint, _aware(a.starts_at)))
    if existing is not None:
        if existing.status == a.status:
            if a.status == "firing" and existing.suppressed_reason:
                return _recheck_suppressed(b, a, existing)
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
    row.category, row.type = c.category, c.type
    b.existing[(a.fingerprint, _aware(a.starts_at))] = row
    session.add(row)
    incident = _open_in_window(b, key)
    if a.status == "resolved":
        # A resolved alert we never saw firing: kept as a record, it starts nothing.
        row.incident_id = incident.id if incident else None
        session.flush()
        if incident:
            add_timeline(session, incident.id, "intake", "alert", f"{_name(a)} resolved")
        return Ingested(row.id, row.incident_id, "recorded")

    muted = b.suppression(a)
    row.suppressed_reason = muted.reason if muted else None
    if muted is None:
        b.sources.append(dict(a.labels))
    outcome = "joined"
    if incident is None:
        incident, outcome = _create_incident(session, a, key, c)
        b.open_incidents[key] = incident
    row.incident_id = incident.id
    b.quiet_since.setdefault(incident.id, incident.last_alert_at)
    incident.last_alert_at = b.now
    session.add(incident)
    if outcome == "joined" and (muted is not None or incident.suppressed_reason is None):
        # The common case in a storm: no flush per alert; ids and timeline lines are
        # written for the whole post at once in _finish.
        incident.updated_at = b.now
        note = f" (suppressed: {muted.reason})" if muted else ""
        item = Ingested(0, incident.id, outcome, muted.reason if muted else None)
        b.joined.append((item, row, incident.id, f"{_name(a)} joined{note}", a, muted is None))
        return item
    session.flush()
    data = {"alert_id": row.id, "labels": a.labels, "annotations": a.annotations}
    if outcome == "opened":
        add_timeline(
            session, incident.id, "intake", "opened", f"opened by {_name(a)}", data, at=b.now
        )
        if muted is not None:
            add_timeline(session, incident.id, "intake", "suppressed", muted.reason, at=b.now)
            incident.suppressed_reason = muted.reason
        else:
            _page_if_enough(b, incident, a)
    else:
        note = f" (suppressed: {muted.reason})" if muted else ""
        add_timeline(session, incident.id, "intake", "alert", f"{_name(a)} joined{note}", data)
        incident.updated_at = b.now
        _page_if_enough(b, incident, a)
    return Ingested(
        row.id, incident.id, outcome, incident.suppressed_reason if muted is None else muted.reason
    )


def _open_in_window(b: _Batch, key: str) -> Incident | None:
    incident = b.open_incidents.get(key)
    if incident is None or incident.last_alert_at is None:
        return incident
    quiet = (b.now - _aware(incident.last_alert_at)).total_seconds()
    if quiet <= b.policy.grouping.window_seconds:
        return incident
    # The group went quiet for longer than the correlation window: this is a new problem.
    incident.open_group_key = None
    b.session.add(incident)
    add_timeline(
        b.session,
        incident.id,
        "intake",
        "grouping",
        f"no alert for {quiet:.0f} s > correlation window {b.policy.grouping.window_seconds:g} s; "
        "later alerts of this group open a new incident",
    )
    b.session.flush()
    del b.open_incidents[key]
    return None


def _page_if_enough(b: _Batch, incident: Incident, a: AlertIn) -> None:
    """Start the runbook once the group has enough unsuppressed firing alerts."""
    need = b.policy.grouping.min_alerts
    have = 1
    if need > 1:
        have = b.session.exec(
            select(func.count())
            .select_from(Alert)
            .where(
                Alert.incident_id == incident.id,
                Alert.status == "firing",
                col(Alert.suppressed_reason).is_(None),
            )
        ).one()
    if have < need:
        reason = f"waiting for {need} alerts in the group before paging ({have} so far)"
        if incident.suppressed_reason != reason:
            incident.suppressed_reason = reason
            add_timeline(b.session, incident.id, "intake", "suppressed", reason)
        return
    was = incident.suppressed_reason
    incident.suppressed_reason = None
    b.session.add(incident)
    if was is not None:
        add_timeline(
            b.session,
            incident.id,
            "intake",
            "unsuppressed",
            f"{_name(a)} is not suppressed; paging now (was: {was})",
        )
    enqueue_event(
        b.session,
        "ml.incident.opened",
        incident,
        {"alertname": a.alertname, "status": "firing", "alerts": int(have)},
    )


def _recheck_suppressed(b: _Batch, a: AlertIn, row: Alert) -> Ingested:
    """A muted alert sent again: page now if what muted it (silence, source) has gone."""
    muted = b.suppression(a)
    if muted is not None:
        return Ingested(row.id, row.incident_id, "duplicate", muted.reason)
    row.suppressed_reason = None
    b.session.add(row)
    b.sources.append(dict(a.labels))
    incident = b.session.get(Incident, row.incident_id) if row.incident_id else None
    if incident is None or not is_active(incident):
        return Ingested(row.id, row.incident_id, "duplicate")
    add_timeline(b.session, incident.id, "intake", "alert", f"{_name(a)} no longer suppressed")
    if incident.suppressed_reason is not None:
        b.session.flush()
        _page_if_enough(b, incident, a)
    return Ingested(row.id, incident.id, "refired", incident.suppressed_reason)


def _name(a: AlertIn) -> str:
    return f"alert {a.alertname} [{a.fingerprint}]"


def _open_incident_for(session: Session, key: str) -> Incident | None:
    return session.exec(select(Incident).where(Incident.open_group_key == key)).first()


def _create_incident(
    session: Session, a: AlertIn, key: str, c: Classification
) -> tuple[Incident, str]:
    summary = a.annotations.get("summary") or f"{a.alertname} on {a.model}"
    incident = Incident(
        model=a.model,
        title=summary,
        group_key=key,
        open_group_key=key,
        source=a.source,
        type=c.type,
        category=c.category,
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


def claim_triage(session: Session, incident_id: int, run: str, force: bool = False) -> str | None:
    """Make `run` the incident's triage; None when it is, else the run that already is."""
    q = sa_update(Incident).where(Incident.id == incident_id)
    if not force:
        q = q.where(col(Incident.triage_run).is_(None))
    if session.execute(q.values(triage_run=run)).rowcount == 1:
        return None
    incident = session.get(Incident, incident_id)
    return incident.triage_run if incident else None


def restage_stalled(
    session: Session,
    now: datetime,
    grace_seconds: float,
    max_attempts: int = 3,
    has_run: Callable[[list[int], datetime], set[int]] | None = None,
) -> list[int]:
    """Open incidents whose opening event went out `grace_seconds` ago and started no
    triage: stage the event again. Prefect can drop an automation firing (seen with its
    SQLite database under load); this makes sure the runbook starts anyway."""
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
    due: list[tuple[Incident, list[OutboxEvent]]] = []
    for incident in stalled:
        events = sent.get(incident.id, [])
        last = max((e.delivered_at for e in events if e.delivered_at), default=None)
        pending = any(e.delivered_at is None for e in events)
        if pending or last is None or len(events) >= max_attempts:
            continue
        if (now - last).total_seconds() >= grace_seconds:
            due.append((incident, events))
    if due and has_run is not None:
        # A run that exists but waits for a free slot is not lost: leave it be.
        first = min(e.occurred for _, events in due for e in events)
        queued = has_run([i.id for i, _ in due], first)
        due = [(i, events) for i, events in due if i.id not in queued]
    again = []
    for incident, events in due:
        add_timeline(
            session,
            incident.id,
            "intake",
            "redelivered",
            f"no triage started {grace_seconds:g} s after the event was delivered; "
            f"sending it again (attempt {len(events) + 1} of {max_attempts})",
        )
        enqueue_event(
            session,
            "ml.incident.opened",
            incident,
            {"status": "firing", "attempt": len(events) + 1},
        )
        again.append(incident.id)
    return again
