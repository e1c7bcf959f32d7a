"""The escalation clock: the runbook's "Escalation chain" and "Response SLAs" while an
incident is active.

`due()` is a pure function of one incident, the clock, the notices already sent and the
policy: it says who must be told what now; `next_due()` says when it could next owe
something. The sweep (flows/escalation.py) reads with one indexed query (`watched`) the
active incidents whose `next_due_at` came (or that changed since, or whose times were
worked out under another policy), asks `due()`, writes the next time of those owed nothing
(`check`), and claims each notice (`claim`) before it sends it, so a concurrent sweep or a
retried task sends nothing twice.

What is due, measured from the incident's `opened_at` (from `reopened_at` once reopened,
with the notices keyed per life: a reopened incident is owed all of them again):
- escalation level N (`escalation:N`): the chain routed on the incident (on call at once,
  team lead at 30 min, ...; compliance officer or security team at once for their types)
  reaches level N while nobody has acknowledged. An acknowledgement stops the chain; it
  does not stop the deadlines or the updates.
- deadline missed (`deadline:triage|investigation|resolution`), at the routed deadline:
  - triage: the incident is still `open` (no triage decision, by the flow or a person,
    moved it on). Judged by the state when the sweep looks, at most one sweep interval
    after the deadline: there is no triaged-at time to compare with.
  - investigation: not mitigated by then (`mitigated_at` empty or later): the runbook's
    investigation ends with a mitigation in place, or with the incident resolved.
  - resolution: still active at the deadline.
- update N (`update:N`): every `notifications.update_minutes` while active, the latest
  one only (a sweep that was down for an hour posts one update, not two).

An incident that triage never routed (no `route`) still has a clock: the policy's chain
for its model and type, and the deadlines of its severity (the policy's default severity
when it has none yet): an incident whose triage failed is the one a person must hear of.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterable, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from runbooks.incidents import IncidentStateError, acknowledge, add_timeline
from runbooks.models import ACTIVE_STATUSES, Incident, IncidentNotice, IncidentStatus
from runbooks.policy import Policy
from runbooks.routing import escalation_chain, oncall_now

ACTOR = "escalation"
DEADLINES = ("triage", "investigation", "resolution")


class Clocked(Protocol):
    """What `due()` reads of an incident: an `Incident`, or a `Watched` row."""

    id: int | None
    model: str
    status: str
    severity: str | None
    type: str | None
    opened_at: datetime
    acknowledged_at: datetime | None
    mitigated_at: datetime | None
    route: dict[str, Any] | None
    reopened_at: datetime | None
    reopened_count: int


@dataclass(frozen=True)
class Watched:
    """One row of the sweep's query: what the clock needs, nothing more (of the route, the
    chain while unacknowledged, and the deadlines)."""

    id: int
    model: str
    status: str
    severity: str | None
    type: str | None
    opened_at: datetime
    acknowledged_at: datetime | None
    mitigated_at: datetime | None
    route: dict[str, Any] | None
    next_due_at: datetime | None = None  # as read: the clock moves only from this value
    reopened_at: datetime | None = None
    reopened_count: int = 0


def started(incident: Clocked) -> datetime:
    """Where the clock runs from: the opening, or the last reopening."""
    return incident.reopened_at or incident.opened_at


def life_key(incident: Clocked, base: str) -> str:
    """A notice's key in this life of the incident: a reopened incident is owed the chain,
    the deadlines and the updates again ("escalation:1@1" after the first reopening)."""
    return f"{base}@{incident.reopened_count}" if incident.reopened_count else base


@dataclass(frozen=True)
class Notice:
    """One message that is due: its once-per-incident key, the timeline line, who to tell."""

    incident_id: int
    key: str  # "escalation:1", "deadline:triage", "update:3"
    kind: str  # escalation | deadline_missed | update (tasks.notifications' kinds)
    line: str
    people: tuple[str, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)


def _minutes(m: float) -> str:
    return f"{m:g} min"


def chain(incident: Clocked, policy: Policy) -> list[dict[str, Any]]:
    """The routed chain, else the policy's for the incident's model and type."""
    routed = (incident.route or {}).get("escalation")
    if routed is not None:
        return routed
    # Resolved with the on-call of the incident's opening week, as triage would have.
    oncall = oncall_now(policy, incident.opened_at)
    return escalation_chain(incident.type, policy.for_model(incident.model), policy, oncall)


def deadlines(incident: Clocked, policy: Policy) -> dict[str, datetime]:
    """The routed deadlines, else those of the incident's severity from its opening."""
    routed = (incident.route or {}).get("deadlines")
    if routed:
        return {step: datetime.fromisoformat(routed[step]) for step in DEADLINES if step in routed}
    sla = policy.routing.deadlines.get(incident.severity or policy.default_severity)  # type: ignore[call-overload]
    if sla is None:
        return {}
    return {step: started(incident) + timedelta(minutes=getattr(sla, step)) for step in DEADLINES}


def _missed(step: str, incident: Clocked, at: datetime) -> str | None:
    """Why the deadline `step` at `at` was missed, or None if it was met."""
    if step == "triage":
        return "still open" if incident.status == IncidentStatus.OPEN else None
    if step == "investigation":
        if incident.mitigated_at is not None and incident.mitigated_at <= at:
            return None
        return f"not mitigated by {at:%H:%M:%SZ}"
    return f"not resolved by {at:%H:%M:%SZ}"


def due(incident: Clocked, now: datetime, sent_keys: Iterable[str], policy: Policy) -> list[Notice]:
    """Every notice the incident is owed at `now` and was not sent yet (see the module)."""
    if incident.status not in ACTIVE_STATUSES or incident.id is None:
        return []
    sent = sent_keys if isinstance(sent_keys, set | frozenset) else set(sent_keys)
    open_minutes = (now - started(incident)).total_seconds() / 60
    notices: list[Notice] = []
    if incident.acknowledged_at is None:
        notices += _escalations(incident, open_minutes, sent, policy)
    if not sent.issuperset(life_key(incident, k) for k in _DEADLINE_KEYS):
        notices += _missed_deadlines(incident, now, sent, policy)
    every = policy.notifications.update_minutes
    n = int(open_minutes // every) if every > 0 else 0
    if n >= 1 and life_key(incident, f"update:{n}") not in sent:
        notices.append(
            Notice(
                incident.id,
                life_key(incident, f"update:{n}"),
                "update",
                f"update {n}: {incident.status}, {_minutes(round(open_minutes))} since it opened",
                (),
                {"n": n, "status": incident.status, "minutes_open": open_minutes},
            )
        )
    return notices


_DEADLINE_KEYS = frozenset(f"deadline:{step}" for step in DEADLINES)


def next_due(
    incident: Clocked, now: datetime, sent_keys: AbstractSet[str], policy: Policy
) -> datetime | None:
    """The first moment after `now` at which `due()` could owe the incident something new,
    as long as nothing about it changes; None when nothing more will come due."""
    if incident.status not in ACTIVE_STATUSES:
        return None
    times: list[datetime] = []
    if incident.acknowledged_at is None:
        for level, step in enumerate(chain(incident, policy)):
            at = started(incident) + timedelta(minutes=float(step["after_minutes"]))
            if at > now and life_key(incident, f"escalation:{level}") not in sent_keys:
                times.append(at)
    for step, at in deadlines(incident, policy).items():
        if at > now and life_key(incident, f"deadline:{step}") not in sent_keys:
            times.append(at)
    every = policy.notifications.update_minutes
    if every > 0:
        n = int((now - started(incident)).total_seconds() / 60 // every)
        times.append(started(incident) + timedelta(minutes=every * (n + 1)))
    return min(times, default=None)


def _escalations(
    incident: Clocked, open_minutes: float, sent: AbstractSet[str], policy: Policy
) -> list[Notice]:
    """The levels whose time came, not yet told (several at once after a sweep outage:
    each of them is overdue)."""
    out = []
    for level, step in enumerate(chain(incident, policy)):
        after = float(step["after_minutes"])
        key = life_key(incident, f"escalation:{level}")
        if open_minutes < after or key in sent:
            continue
        who, role = step["who"], step.get("role") or ""
        named = f"{who} ({role})" if role and role != who else who
        when = f"after {_minutes(after)} unacknowledged" if after else "at once, unacknowledged"
        out.append(
            Notice(
                incident.id,  # type: ignore[arg-type]
                key,
                "escalation",
                f"escalated to {named} {when}",
                (who,),
                # "level" and "minutes" are what runbooks/messages.py shows.
                {
                    "level": role or who,
                    "index": level,
                    "who": who,
                    "role": role,
                    "after_minutes": after,
                    "minutes": round(open_minutes, 1),
                },
            )
        )
    return out


def _missed_deadlines(
    incident: Clocked, now: datetime, sent: AbstractSet[str], policy: Policy
) -> list[Notice]:
    out = []
    for step, at in deadlines(incident, policy).items():
        key = life_key(incident, f"deadline:{step}")
        if now < at or key in sent:
            continue
        why = _missed(step, incident, at)
        if why is None:
            continue
        minutes = (at - started(incident)).total_seconds() / 60
        out.append(
            Notice(
                incident.id,  # type: ignore[arg-type]
                key,
                "deadline_missed",
                f"missed the {step} deadline ({_minutes(round(minutes, 2))}): {why}",
                (),
                {"deadline": step, "due_at": at.isoformat(), "minutes": minutes, "why": why},
            )
        )
    return out


# The store: the sweep's query and the claim ---------------------------------------------

_SENT_SEPARATOR = ","


def watched_query(now: datetime | None = None, clock_policy: str | None = None) -> sa.Select:
    """The active incidents whose clock came due (`next_due_at <= now`, or worked out under
    another policy than `clock_policy`), each with the keys of the notices it was sent, in
    one query. Without `now`, every active incident.

    The status filter walks ix_incident_status_acknowledged (the table keeps every resolved
    incident ever) and the clock columns cut the 10,000 active rows to the few whose time
    came before anything wide is read; the sent keys come from a correlated subquery on
    uq_incident_notice's index, one short index range per row left. Only what the clock
    reads is loaded: of the route its chain (for incidents nobody acknowledged) and its
    deadlines, as JSON text (decoding whole routes was most of the check's time).
    """
    sent = (
        select(
            sa.func.aggregate_strings(IncidentNotice.key, sa.literal_column(f"'{_SENT_SEPARATOR}'"))
        )
        .where(IncidentNotice.incident_id == Incident.id)
        .correlate(Incident)
        .scalar_subquery()
    )
    route = Incident.__table__.c.route
    chain = sa.case(
        (col(Incident.acknowledged_at).is_(None), route["escalation"].as_string()),
        else_=sa.null(),
    )
    q = select(
        Incident.id,
        Incident.model,
        Incident.status,
        Incident.severity,
        Incident.type,
        Incident.opened_at,
        Incident.acknowledged_at,
        Incident.mitigated_at,
        chain,
        route["deadlines"].as_string(),
        Incident.next_due_at,
        Incident.reopened_at,
        Incident.reopened_count,
        sent,
    ).where(col(Incident.status).in_([s.value for s in ACTIVE_STATUSES]))
    if now is not None:
        q = q.where(
            sa.or_(
                col(Incident.next_due_at) <= now,
                col(Incident.clock_policy).is_distinct_from(clock_policy),
            )
        )
    return q


def _route(chain: str | None, deadlines: str | None) -> dict[str, Any] | None:
    parts = {}
    if chain is not None:
        parts["escalation"] = orjson.loads(chain)
    if deadlines is not None:
        parts["deadlines"] = orjson.loads(deadlines)
    return parts or None


def watched(
    session: Session, now: datetime | None = None, clock_policy: str | None = None
) -> list[tuple[Watched, frozenset[str]]]:
    """The sweep's query run (`watched_query`): each incident and the keys it was sent."""
    with _collector_paused():
        return [
            (
                Watched(*row[:8], _route(row[8], row[9]), *row[10:13]),
                frozenset(row[13].split(_SENT_SEPARATOR)) if row[13] else frozenset(),
            )
            for row in session.connection().execute(watched_query(now, clock_policy))
        ]


def clock_policy(policy: Policy) -> str:
    """A digest of the policy, kept with each incident's next_due_at: under another policy
    (a new chain, other deadlines) the times are worked out again."""
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()[:16]


def check(session: Session, now: datetime, policy: Policy) -> tuple[int, list[Notice]]:
    """The sweep's check: the incidents whose clock came due, and what they are owed now.

    An incident owed nothing now gets its next time (`next_due`) written, unless it changed
    since it was read (its next_due_at is no longer the value read); one owed something
    keeps its time, so the next sweep looks again once the notices are claimed (a sweep
    that dies between this check and the claims loses nothing). Nothing is sent."""
    digest = clock_policy(policy)
    rows = watched(session, now, digest)
    notices: list[Notice] = []
    moves: list[dict[str, Any]] = []
    with _collector_paused():
        for incident, sent in rows:
            owed = due(incident, now, sent, policy)
            if owed:
                notices += owed
                continue
            moves.append(
                {
                    "b_id": incident.id,
                    "b_seen": incident.next_due_at,
                    "b_next": next_due(incident, now, sent, policy),
                    "b_digest": digest,
                }
            )
    if moves:
        table = Incident.__table__
        due_type = table.c.next_due_at.type
        session.connection().execute(
            sa.update(table)
            .where(
                table.c.id == sa.bindparam("b_id"),
                table.c.next_due_at.is_not_distinct_from(sa.bindparam("b_seen", type_=due_type)),
            )
            .values(
                next_due_at=sa.bindparam("b_next", type_=due_type),
                clock_policy=sa.bindparam("b_digest"),
            ),
            moves,
        )
    return len(rows), notices


def due_now(session: Session, now: datetime, policy: Policy) -> list[Notice]:
    """Every active incident's notices due now, whatever its clock says; nothing written."""
    rows = watched(session)
    with _collector_paused():
        return [n for incident, sent in rows for n in due(incident, now, sent, policy)]


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cycle collector off while the check builds its rows.

    The check makes about ten objects per incident and keeps them all, so the collector's
    full passes walk the whole process again and again (a flow run's process holds
    Prefect's imports: a few hundred thousand objects) and free nothing, as none of these
    objects is in a reference cycle. Measured over 10,000 incidents: 100-250 ms of a
    300 ms check were those passes.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def claim(session: Session, notice: Notice, now: datetime) -> bool:
    """Record the notice before it is sent: its row (unique per incident and key) and its
    timeline line. False, and nothing written, when another sweep claimed it first, the
    incident is no longer active, or (for an escalation) somebody acknowledged since the
    check. The incident's row is locked while this decides, so an acknowledgement landing
    now either comes first (no escalation) or waits for this one."""
    incident = session.get(Incident, notice.incident_id, with_for_update=True)
    if incident is None or incident.status not in ACTIVE_STATUSES:
        return False
    if notice.kind == "escalation" and incident.acknowledged_at is not None:
        return False
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = (
        insert(IncidentNotice.__table__)
        .values(incident_id=notice.incident_id, key=notice.key, at=now)
        .on_conflict_do_nothing(index_elements=["incident_id", "key"])
        .returning(IncidentNotice.__table__.c.id)
    )
    # A row back: this call inserted it. None: the key was there (psycopg's rowcount says -1
    # for both).
    if session.connection().execute(stmt).first() is None:
        return False
    add_timeline(
        session,
        notice.incident_id,
        ACTOR,
        notice.kind,
        notice.line,
        {"key": notice.key, **notice.data},
        at=now,
    )
    return True


# Acknowledgement: the CLI, the API and Slack's button say it the same way ----------------


class NoSuchIncident(LookupError):
    """The incident id is not in the store; the message says where to look."""


@dataclass(frozen=True)
class Acknowledgement:
    incident_id: int
    by: str  # who acknowledged first
    at: datetime
    first: bool  # this call stopped the clock; False: somebody had already

    @property
    def line(self) -> str:
        when = f"{self.at:%Y-%m-%d %H:%M:%SZ}"
        if self.first:
            return (
                f"incident {self.incident_id} acknowledged by {self.by} at {when}; the "
                "escalation chain stops"
            )
        return (
            f"incident {self.incident_id} was already acknowledged by {self.by} at {when}; "
            "nothing changed"
        )


def acknowledge_incident(session: Session, incident_id: int, by: str, via: str) -> Acknowledgement:
    """`runbooks.incidents.acknowledge` by id, for a person at a CLI, an API or a button:
    an unknown id raises NoSuchIncident, an incident that is no longer active raises
    IncidentStateError (both say what to do), a second acknowledgement says whose was
    first. The row is locked so that a sweep claiming an escalation waits for it."""
    incident = session.get(Incident, incident_id, with_for_update=True)
    if incident is None:
        raise NoSuchIncident(f"no incident {incident_id}; `runbooks incidents` lists them")
    if incident.status not in ACTIVE_STATUSES:
        before = (
            f" (acknowledged by {incident.acknowledged_by})" if incident.acknowledged_by else ""
        )
        raise IncidentStateError(
            f"incident {incident_id} is {incident.status}{before}; only an active incident "
            "can be acknowledged"
        )
    first = acknowledge(session, incident, by, via)
    return Acknowledgement(
        incident_id,
        incident.acknowledged_by or by,
        incident.acknowledged_at,
        first,  # type: ignore[arg-type]
    )
