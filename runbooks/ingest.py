"""The intake: alerts stored, deduplicated, muted and folded into incidents by group.

One post is one batch (the store is read once for all of its alerts); an alert worse than
its incident's triaged severity escalates it; a resolved alert may resolve its incident; a
human's report opens its own incident. These functions take an open session and never
commit: the caller's transaction decides, so an alert, its incident and the event they
cause land together or not at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam as sa_bindparam
from sqlalchemy import select as sa_select
from sqlalchemy import text as sa_text
from sqlalchemy import update as sa_update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, func, select

from runbooks import suppression as sup
from runbooks.alerts import AlertIn, fingerprint_of, onset_of
from runbooks.bulk import insert_rows
from runbooks.events import enqueue_event
from runbooks.incidents import IncidentStateError, add_timeline, is_active, reopen, transition
from runbooks.models import (
    Alert,
    Incident,
    IncidentStatus,
    TimelineEvent,
    UTCDateTime,
    utcnow,
)
from runbooks.models import Silence as SilenceRow
from runbooks.policy import Policy
from runbooks.severity import RANK, assess
from runbooks.taxonomy import Classification, classify

UPDATE_EVERY_SECONDS = 30.0
# An incident's last_alert_at moves at most this often: it is a correlation window of
# minutes, and rewriting the hot incident rows on every post serialized a storm on them.
TOUCH_EVERY_SECONDS = 1.0


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
    outcome: str  # opened | reopened | joined | duplicate | resolved | refired | recorded
    suppressed: str | None = None


@dataclass
class IngestResult:
    items: list[Ingested] = field(default_factory=list)

    @property
    def incident_ids(self) -> list[int]:
        return sorted({i.incident_id for i in self.items if i.incident_id is not None})


@dataclass
class _Known:
    """An alert row this post found stored (or is about to store): no ORM object, so a
    redelivered alert costs a dict lookup."""

    id: int
    status: str
    suppressed_reason: str | None
    incident_id: int | None
    new: _New | None = None


@dataclass
class _New:
    """A firing alert joining an open incident: written with the post's others in _finish."""

    values: dict[str, Any]
    items: list[Ingested]
    line: str
    loud: bool


@dataclass
class _Open:
    """An open incident as a post reads it: four columns. The ORM object is loaded only when
    the post changes more than the incident's clock (paging, ending the window); loading 50
    of them per post cost more than writing the post's alerts."""

    id: int
    model: str
    row_last_alert_at: datetime | None
    row_suppressed_reason: str | None
    row_severity: str | None
    orm: Incident | None = None

    @classmethod
    def of(cls, incident: Incident) -> _Open:
        assert incident.id is not None
        return cls(incident.id, incident.model, incident.last_alert_at, None, None, incident)

    @property
    def last_alert_at(self) -> datetime | None:
        return self.orm.last_alert_at if self.orm else self.row_last_alert_at

    @property
    def suppressed_reason(self) -> str | None:
        return self.orm.suppressed_reason if self.orm else self.row_suppressed_reason

    @property
    def severity(self) -> str | None:
        return self.orm.severity if self.orm else self.row_severity


@dataclass
class _Escalation:
    """A joining alert worse than its incident's triaged severity (say P2 -> P1)."""

    incident: _Open
    was: str
    to: str
    why: str
    what: str  # the alert and what it did, for the timeline


@dataclass
class _Batch:
    """What one post needs from the store, read once for all of its alerts."""

    session: Session
    policy: Policy
    now: datetime
    known: dict[tuple[str, datetime], _Known]
    open_incidents: dict[str, _Open]
    silences: list[sup.Silence]
    windows: list[sup.MaintenanceWindow]
    rules: list[sup.InhibitRule]
    source_names: set[str] | None
    sources: list[dict[str, str]]
    quiet: bool = False  # nothing could mute an alert of this post
    updated: dict[int, list[int]] = field(default_factory=dict)
    quiet_since: dict[int, datetime | None] = field(default_factory=dict)
    new: list[_New] = field(default_factory=list)
    touched: dict[int, _Open] = field(default_factory=dict)
    escalations: dict[int, _Escalation] = field(default_factory=dict)

    def suppression(self, a: AlertIn) -> sup.Suppression | None:
        if self.quiet:
            return None
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

    def may_inhibit(self, labels: dict[str, str]) -> None:
        # Only alerts that some rule could use as its source are kept: checking every
        # alert of a post against every other made a post of n alerts cost n^2.
        if self.source_names is not None and labels.get("alertname") not in self.source_names:
            return
        if any(sup.matches(r.source_matchers, labels) for r in self.rules):
            self.sources.append(dict(labels))

    def touch(self, incident: _Open) -> None:
        self.quiet_since.setdefault(incident.id, incident.last_alert_at)
        self.touched[incident.id] = incident

    def escalate_if_worse(self, incident: _Open, a: AlertIn, did: str = "joined") -> None:
        """Note an unmuted alert that is worse than what triage decided for its incident.
        Before triage there is nothing to compare with: triage reads the worst alert."""
        stored = incident.severity
        noted = self.escalations.get(incident.id)
        worst = noted.to if noted else stored
        if stored is None or worst not in ("P2", "P3") or incident.suppressed_reason is not None:
            return  # P1 is the top; a muted incident pages nobody
        found = assess(a.labels, a.annotations, self.policy)
        if RANK[found.severity] < RANK[worst]:
            why = "; ".join(found.reasons)
            self.escalations[incident.id] = _Escalation(
                incident, stored, found.severity, why, f"{_name(a)} {did}"
            )

    def orm(self, incident: _Open) -> Incident:
        if incident.orm is None:
            incident.orm = self.session.get_one(Incident, incident.id)
        return incident.orm


def confidence_of(a: AlertIn, policy: Policy) -> float | None:
    return confidence_from(a.labels, a.annotations, policy)


def confidence_from(
    labels: dict[str, str], annotations: dict[str, str], policy: Policy
) -> float | None:
    """The monitor's confidence in [0, 1], from the policy's label (or annotation) name;
    None when absent or not a fraction. The intake and triage read it alike."""
    name = policy.labels.confidence
    raw = labels.get(name, annotations.get(name))
    try:
        value = float(raw) if raw not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and 0.0 <= value <= 1.0 else None


def _aware(t: datetime) -> datetime:
    return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)


# The post's keys go in as one JSON array: the statement is the same for any number of
# them. (An IN list of 50 values was rendered, cast and bound value by value on every post.)
_KEY_LIST = {
    "postgresql": "SELECT json_array_elements_text(CAST(:keys AS json))",
    "sqlite": "SELECT value FROM json_each(:keys)",
}
_LOOKUPS = {
    "alerts": (
        "SELECT id, fingerprint, starts_at, status, suppressed_reason, incident_id FROM alert "
        "WHERE fingerprint IN ({keys})",
        {"starts_at": UTCDateTime},
    ),
    "incidents": (
        "SELECT id, model, open_group_key, last_alert_at, suppressed_reason, severity "
        "FROM incident "
        "WHERE open_group_key IN ({keys})",
        {"last_alert_at": UTCDateTime},
    ),
}
_lookups: dict[tuple[str, str], Any] = {}


def _lookup(conn: Any, name: str) -> Any:
    dialect = conn.dialect.name
    stmt = _lookups.get((dialect, name))
    if stmt is None:
        if dialect not in _KEY_LIST:
            raise IncidentStateError(f"the incident store does not support {dialect}")
        sql, types = _LOOKUPS[name]
        stmt = sa_text(sql.format(keys=_KEY_LIST[dialect])).columns(**types)
        _lookups[(dialect, name)] = stmt
    return stmt


def _prepare(
    session: Session, alerts: list[AlertIn], keys: list[str], policy: Policy, now: datetime
) -> _Batch:
    known: dict[tuple[str, datetime], _Known] = {}
    conn = session.connection()
    fingerprints = sorted({a.fingerprint for a in alerts})
    for r in conn.execute(_lookup(conn, "alerts"), {"keys": json.dumps(fingerprints)}):
        known[(r.fingerprint, _aware(r.starts_at))] = _Known(
            r.id, r.status, r.suppressed_reason, r.incident_id
        )
    open_incidents: dict[str, _Open] = {}
    for r in conn.execute(_lookup(conn, "incidents"), {"keys": json.dumps(sorted(set(keys)))}):
        open_incidents[r.open_group_key] = _Open(
            r.id, r.model, r.last_alert_at, r.suppressed_reason, r.severity
        )
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
        for row in conn.execute(_SILENCES, {"now": now})
    ]
    rules = policy.suppression.rules()
    names = _source_names(rules)
    batch = _Batch(
        session=session,
        policy=policy,
        now=now,
        known=known,
        open_incidents=open_incidents,
        silences=silences,
        # Only the windows open now: the rest cannot mute this post.
        windows=[w for w in policy.suppression.windows() if w.schedule.occurrence(now)],
        rules=rules,
        source_names=names,
        sources=[],
    )
    for labels in _firing_labels(conn, rules, names):
        batch.may_inhibit(labels)
    return batch


_SILENCES = sa_select(SilenceRow.__table__).where(  # type: ignore[attr-defined]
    SilenceRow.__table__.c.ends_at > sa_bindparam("now")  # type: ignore[attr-defined]
)


def _source_names(rules: list[sup.InhibitRule]) -> set[str] | None:
    """The alertnames that can inhibit, or None when some rule's source is not one name."""
    names: set[str] = set()
    for rule in rules:
        eq = [m.value for m in rule.source_matchers if m.name == "alertname" and m.op == "="]
        if not eq:
            return None
        names.update(eq)
    return names


def _firing_labels(
    conn: Any, rules: list[sup.InhibitRule], names: set[str] | None
) -> list[dict[str, str]]:
    """Stored firing alerts that could inhibit: narrowed by alertname when every rule names
    one (the batch's may_inhibit then checks each against the rules' source matchers)."""
    if not rules:
        return []
    t = Alert.__table__.c  # type: ignore[attr-defined]
    q = sa_select(t.labels).where(t.status == "firing")
    if names is not None:
        q = q.where(t.alertname.in_(sorted(names)))
    return list(conn.execute(q).scalars())


def ingest(
    session: Session, alerts: list[AlertIn], policy: Policy, now: datetime | None = None
) -> IngestResult:
    """Store alerts and fold them into incidents. A redelivered alert changes nothing.

    One post is one batch: the store is read once for all its alerts, the alerts that join
    open incidents (nearly all of them in a storm) are written with one INSERT, and each
    incident that took alerts announces it once.
    """
    now = now or utcnow()
    if policy.grouping.fingerprint_labels:
        alerts = [_refingerprint(a, policy.grouping.fingerprint_labels) for a in alerts]
    # Classified once per alert: the group key reads it here and the row keeps it below.
    classes = [classify(a.labels, policy.labels) for a in alerts]
    keys = [group_key(a, policy, c) for a, c in zip(alerts, classes, strict=True)]
    batch = _prepare(session, alerts, keys, policy, now)
    for a in alerts:
        # As in Alertmanager, every firing alert of the post may inhibit, wherever it sits
        # in the post and whether or not it is muted itself.
        if a.status == "firing":
            batch.may_inhibit(a.labels)
    batch.quiet = not (
        batch.silences or batch.windows or batch.sources or policy.suppression.min_confidence > 0
    )
    items: list[Ingested | None] = [None] * len(alerts)
    # In group-key order, so that concurrent posts open incidents in one order: in post
    # order, PostgreSQL deadlocked two posts each waiting on the other's new incident.
    for i in sorted(range(len(alerts)), key=keys.__getitem__):
        items[i] = _ingest_one(batch, alerts[i], classes[i], keys[i])
    _finish(batch)
    result = IngestResult([item for item in items if item is not None])
    for incident_id, alert_ids in batch.updated.items():
        incident = batch.touched.get(incident_id)
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


def _write_new(b: _Batch) -> None:
    """Insert the alerts that joined so far, with their timeline lines: two statements."""
    if not b.new:
        return
    table = Alert.__table__  # type: ignore[attr-defined]
    ids = insert_rows(b.session, table, [n.values for n in b.new], ids=True)
    lines = []
    for n, alert_id in zip(b.new, ids, strict=True):
        for item in n.items:
            item.alert_id = alert_id
        known = b.known[(n.values["fingerprint"], n.values["starts_at"])]
        known.id, known.new = alert_id, None
        incident_id = n.values["incident_id"]
        lines.append(
            {
                "incident_id": incident_id,
                "actor": "intake",
                "kind": "alert",
                "message": n.line,
                # The labels are on the alert row (the incident view lists them); copied
                # here, a storm wrote and encoded every label set twice.
                "data": {"alert_id": alert_id},
                "at": b.now,
            }
        )
        if n.loud:
            b.updated.setdefault(incident_id, []).append(alert_id)
    insert_rows(b.session, TimelineEvent.__table__, lines)  # type: ignore[attr-defined]
    b.new = []


def _finish(b: _Batch) -> None:
    """Write what the post deferred: new alerts, their timeline, the incidents' clocks."""
    b.session.flush()
    _write_new(b)
    due = [
        {"id": i, "last_alert_at": b.now, "updated_at": b.now}
        for i, incident in sorted(b.touched.items())
        if incident.last_alert_at is None
        or (b.now - _aware(incident.last_alert_at)).total_seconds() >= TOUCH_EVERY_SECONDS
    ]
    # Last, and in id order: concurrent posts lock the same hot incident rows, briefly and
    # always in the same order (PostgreSQL deadlocked on the per-alert updates). The rare
    # escalation takes its place in that order.
    for rows in _runs_between(due, b.escalations):
        if isinstance(rows, _Escalation):
            _escalate(b, rows)
            continue
        b.session.execute(sa_update(Incident), rows)
        for row in rows:
            incident = b.touched[row["id"]]
            incident.row_last_alert_at = b.now
            if incident.orm is not None:
                set_committed_value(incident.orm, "last_alert_at", b.now)
                set_committed_value(incident.orm, "updated_at", b.now)


def _runs_between(
    due: list[dict[str, Any]], escalations: dict[int, _Escalation]
) -> list[list[dict[str, Any]] | _Escalation]:
    """The clock updates in id order, cut where an escalated incident sits."""
    steps: list[list[dict[str, Any]] | _Escalation] = []
    run: list[dict[str, Any]] = []
    ids = sorted({row["id"] for row in due} | set(escalations))
    by_id = {row["id"]: row for row in due}
    for i in ids:
        if i in escalations:
            if run:
                steps.append(run)
                run = []
            steps.append(escalations[i])
        if i in by_id:
            run.append(by_id[i])
    if run:
        steps.append(run)
    return steps


def _escalate(b: _Batch, e: _Escalation) -> None:
    """Raise the incident's severity and ask triage to decide again, once: the UPDATE only
    matches the severity this post read, so a concurrent post escalating the same incident
    (or a re-triage that got there first) finds nothing to do."""
    moved = b.session.execute(
        sa_update(Incident)
        .where(col(Incident.id) == e.incident.id, col(Incident.severity) == e.was)
        # The escalation clock looks again: other deadlines (runbooks/models.py).
        .values(severity=e.to, updated_at=b.now, next_due_at=b.now, clock_policy=None)
        .execution_options(synchronize_session=False)
    )
    if moved.rowcount != 1:
        return
    e.incident.row_severity = e.to
    if e.incident.orm is not None:
        set_committed_value(e.incident.orm, "severity", e.to)
    announce_escalation(b.session, e.incident, e.was, e.to, e.why, e.what)


def escalate_for_later_alerts(
    session: Session, incident: Incident, after_alert_id: int, policy: Policy
) -> str | None:
    """Triage decided from the alerts it read; alerts that joined meanwhile met an incident
    with no severity yet, so the intake could not compare them. Compare them now, and
    escalate (once, to the worst) if one is worse than the decision. Returns the new
    severity, or None."""
    if incident.severity not in RANK:
        return None
    t = Alert.__table__.c  # type: ignore[attr-defined]
    rows = session.execute(
        sa_select(t.alertname, t.fingerprint, t.labels, t.annotations).where(
            t.incident_id == incident.id,
            t.id > after_alert_id,
            t.status == "firing",
            t.suppressed_reason.is_(None),
        )
    ).all()
    worst: tuple[Any, Any] | None = None
    for row in rows:
        found = assess(row.labels, row.annotations, policy)
        bar = worst[0].severity if worst else incident.severity
        if RANK[found.severity] < RANK[bar]:
            worst = (found, row)
    if worst is None:
        return None
    found, row = worst
    was, incident.severity = incident.severity, found.severity
    session.add(incident)
    what = f"alert {row.alertname} [{row.fingerprint}] joined while triage decided"
    announce_escalation(session, incident, was, found.severity, "; ".join(found.reasons), what)
    return found.severity


def announce_escalation(
    session: Session, incident: Incident | _Open, was: str, to: str, why: str, what: str
) -> None:
    """The timeline line and the event that starts triage again (prefect.yaml)."""
    add_timeline(
        session,
        incident.id,
        "intake",
        "escalated",
        f"severity {was} -> {to}: {why} ({what}); triage decides again",
    )
    enqueue_event(
        session,
        "ml.incident.escalated",
        incident,
        {"severity": to, "previous": was, "status": "firing"},
    )


def _refingerprint(a: AlertIn, names: list[str]) -> AlertIn:
    return a.model_copy(
        update={"fingerprint": fingerprint_of({n: a.labels.get(n, "") for n in names})}
    )


def _row(b: _Batch, known: _Known) -> Alert:
    row = b.session.get(Alert, known.id)
    if row is None:  # deleted under us: the unique key says it existed when we read
        raise IncidentStateError(f"alert {known.id} vanished while the intake read it; retry")
    return row


def _ingest_one(b: _Batch, a: AlertIn, c: Classification, key: str) -> Ingested:
    session = b.session
    slot = (a.fingerprint, _aware(a.starts_at))
    known = b.known.get(slot)
    if known is not None and known.new is not None:
        if known.status == a.status:
            # The same alert twice in one post: the first one's outcome stands.
            item = Ingested(0, known.incident_id, "duplicate")
            known.new.items.append(item)
            return item
        _write_new(b)
    existing: Alert | None = None
    if known is not None:
        if known.status == a.status:
            if a.status == "firing" and known.suppressed_reason:
                return _recheck_suppressed(b, a, known)
            return Ingested(known.id, known.incident_id, "duplicate")
        _write_new(b)  # what follows counts the incident's firing alerts in the store
        existing = _row(b, known)
        known.status = a.status
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
                b.escalate_if_worse(_Open.of(incident), a, "fires again")
                return Ingested(existing.id, incident.id, "refired")
        # It fired again after its incident ended: it opens (or joins) a new one.

    opened = _open_in_window(b, key)
    muted = b.suppression(a) if a.status == "firing" else None
    if (
        existing is None
        and a.status == "firing"
        and opened is not None
        and (muted is not None or opened.suppressed_reason is None)
    ):
        return _join(b, a, c, slot, opened, muted)

    # Opening an incident, recording a resolved alert, re-opening: rare, so plain ORM.
    _write_new(b)
    incident = b.orm(opened) if opened else None
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
        received_at=b.now,
    )
    row.category, row.type = c.category, c.type
    if a.status == "resolved":
        # A resolved alert we never saw firing: kept as a record, it starts nothing.
        row.incident_id = incident.id if incident else None
        session.add(row)
        session.flush()
        b.known[slot] = _Known(row.id, row.status, None, row.incident_id)
        if incident:
            add_timeline(session, incident.id, "intake", "alert", f"{_name(a)} resolved")
        return Ingested(row.id, row.incident_id, "recorded")

    row.suppressed_reason = muted.reason if muted else None
    outcome = "joined"
    if opened is None or incident is None:
        # A muted alert (silenced, maintenance) pages nobody: it opens a quiet incident.
        incident = _reopen_recent(b, a, key) if muted is None else None
        if incident is not None:
            outcome = "reopened"
        else:
            incident, outcome = _create_incident(session, a, key, c)
        opened = b.open_incidents[key] = _Open.of(incident)
    # Added once its incident exists: one INSERT, not an INSERT and an UPDATE.
    row.incident_id = incident.id
    session.add(row)
    b.touch(opened)
    if outcome == "joined" and muted is None:
        b.escalate_if_worse(opened, a)
    session.flush()
    b.known[slot] = _Known(row.id, row.status, row.suppressed_reason, row.incident_id)
    data = {"alert_id": row.id, "labels": a.labels, "annotations": a.annotations}
    if outcome == "reopened":
        add_timeline(session, incident.id, "intake", "alert", f"{_name(a)} reopened it", data)
        return Ingested(row.id, incident.id, "reopened", muted.reason if muted else None)
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
        if muted is None and incident.suppressed_reason is not None:
            # The group was waiting (min_alerts) or muted: this alert may be what pages it.
            # One that was paged already (say, by a concurrent post that opened it) is not
            # paged again.
            _page_if_enough(b, incident, a)
    return Ingested(
        row.id, incident.id, outcome, incident.suppressed_reason if muted is None else muted.reason
    )


def _join(
    b: _Batch,
    a: AlertIn,
    c: Classification,
    slot: tuple[str, datetime],
    incident: _Open,
    muted: sup.Suppression | None,
) -> Ingested:
    """The storm's common case: a new firing alert joins an open incident. Kept as plain
    values and inserted with the rest of the post in _finish (ORM objects and a flush per
    alert were most of the intake's time)."""
    reason = muted.reason if muted else None
    b.touch(incident)
    if muted is None:
        b.escalate_if_worse(incident, a)
    item = Ingested(0, incident.id, "joined", reason)
    new = _New(
        values={
            "fingerprint": a.fingerprint,
            "starts_at": slot[1],
            "ends_at": a.ends_at,
            "status": a.status,
            "model": a.model,
            "alertname": a.alertname,
            "labels": a.labels,
            "annotations": a.annotations,
            "source": a.source,
            "received_at": b.now,
            "incident_id": incident.id,
            "suppressed_reason": reason,
            "category": c.category,
            "type": c.type,
        },
        items=[item],
        line=f"{_name(a)} joined" + (f" (suppressed: {reason})" if reason else ""),
        loud=muted is None,
    )
    b.new.append(new)
    b.known[slot] = _Known(0, a.status, reason, incident.id, new)
    return item


def _open_in_window(b: _Batch, key: str) -> _Open | None:
    opened = b.open_incidents.get(key)
    if opened is None or opened.last_alert_at is None:
        return opened
    quiet = (b.now - _aware(opened.last_alert_at)).total_seconds()
    if quiet <= b.policy.grouping.window_seconds:
        return opened
    # The group went quiet for longer than the correlation window: this is a new problem.
    incident = b.orm(opened)
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
        _write_new(b)  # the count must see the alerts that joined earlier in this post
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


def _recheck_suppressed(b: _Batch, a: AlertIn, known: _Known) -> Ingested:
    """A muted alert sent again: page now if what muted it (silence, source) has gone."""
    muted = b.suppression(a)
    if muted is not None:
        return Ingested(known.id, known.incident_id, "duplicate", muted.reason)
    row = _row(b, known)
    row.suppressed_reason = known.suppressed_reason = None
    b.session.add(row)
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


def _reopen_recent(b: _Batch, a: AlertIn, key: str) -> Incident | None:
    """The group's last incident, reopened, when it resolved within the policy's reopen
    window: the same problem back, not a new one. None when there is none to reopen (or a
    concurrent post opened the group meanwhile: then this one joins it)."""
    window = b.policy.lifecycle.reopen_window_minutes
    if window <= 0:
        return None
    since = b.now - timedelta(minutes=window)
    last = b.session.exec(
        select(Incident)
        .where(
            Incident.group_key == key,
            Incident.status == IncidentStatus.RESOLVED,
            col(Incident.resolved_at) >= since,
        )
        .order_by(col(Incident.resolved_at).desc())
    ).first()
    if last is None:
        return None
    minutes = (b.now - _aware(last.resolved_at)).total_seconds() / 60  # type: ignore[arg-type]
    why = (
        f"{_name(a)} fired {minutes:.1f} min after it resolved, within the reopen window of "
        f"{window:g} min"
    )
    try:
        with b.session.begin_nested():
            reopen(b.session, last, "intake", why)
    except (IntegrityError, IncidentStateError):
        return None  # the group has an active incident now: _create_incident joins it
    return last


def _create_incident(
    session: Session, a: AlertIn, key: str, c: Classification
) -> tuple[Incident, str]:
    summary = a.annotations.get("summary") or f"{a.alertname} on {a.model}"
    # The model fills its own defaults (status, opened_at...); unset columns stay NULL.
    values = Incident(
        model=a.model,
        title=summary,
        group_key=key,
        open_group_key=key,
        source=a.source,
        type=c.type,
        category=c.category,
        onset_at=onset_of(a),
    ).model_dump(exclude={"id"}, exclude_none=True)
    session.flush()
    # ON CONFLICT DO NOTHING: when a concurrent post opened this group a moment ago, join
    # its incident. (With a savepoint and an IntegrityError per collision, the colliding
    # first posts of a storm took 18% of the intake's CPU, profiled with yappi.)
    dialect = session.connection().dialect.name
    upsert = pg_insert if dialect == "postgresql" else sqlite_insert
    q = upsert(Incident).values(**values).on_conflict_do_nothing(index_elements=["open_group_key"])
    created = session.scalars(q.returning(Incident)).first()
    if created is not None:
        return created, "opened"
    found = _open_incident_for(session, key)
    if found is None:
        raise IncidentStateError(
            f"group {key} has an open incident that vanished while the intake read it; retry"
        )
    return found, "joined"


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
        onset_at=onset_of(a),
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
