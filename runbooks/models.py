"""What the incident store keeps: alerts, incidents, their timeline, actions, approvals.

The event outbox lives here too, so that an alert and the event it causes are committed in
one transaction: an accepted alert is never lost because Prefect was down.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator):
    """Timezone-aware UTC on every backend (SQLite drops the zone on the way in)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(**kw: Any) -> Any:
    return Field(sa_type=UTCDateTime, **kw)


def _json(**kw: Any) -> Any:
    return Field(sa_type=sa.JSON, **kw)


class IncidentStatus(StrEnum):
    OPEN = "open"
    TRIAGED = "triaged"
    INVESTIGATING = "investigating"
    MITIGATED = "mitigated"
    RESOLVED = "resolved"
    CLOSED = "closed"


ACTIVE_STATUSES = (
    IncidentStatus.OPEN,
    IncidentStatus.TRIAGED,
    IncidentStatus.INVESTIGATING,
    IncidentStatus.MITIGATED,
)


class Incident(SQLModel, table=True):
    # The escalation sweep's one query: active incidents nobody has acknowledged.
    __table_args__ = (sa.Index("ix_incident_status_acknowledged", "status", "acknowledged_at"),)

    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(index=True)
    title: str
    status: str = Field(default=IncidentStatus.OPEN, index=True)
    severity: str | None = None
    type: str | None = None
    strategy: str | None = None
    assignee: str | None = None
    group_key: str = Field(index=True)
    # Equal to group_key while the incident is active, NULL after: the unique constraint
    # makes two concurrent intakes join one incident instead of opening two.
    open_group_key: str | None = Field(default=None, unique=True)
    source: str = "alert"
    description: str = ""
    opened_at: datetime = _ts(default_factory=utcnow, index=True)
    updated_at: datetime = _ts(default_factory=utcnow)
    mitigated_at: datetime | None = _ts(default=None)
    resolved_at: datetime | None = _ts(default=None)
    closed_at: datetime | None = _ts(default=None)
    suppressed_reason: str | None = None
    category: str | None = None
    criticality: float | None = None
    route: dict[str, Any] | None = _json(default=None)
    context: dict[str, Any] | None = _json(default=None)
    # When the group last took an alert: the correlation window runs from here.
    last_alert_at: datetime | None = _ts(default=None)
    # The flow run that owns this incident's triage: a redelivered event starts no second.
    triage_run: str | None = None
    # Why a runbook handed the incident to a person (NULL: it did not, or it resolved).
    needs_human: str | None = None
    # The first human answer: it stops the escalation clock (MTTA runs to here).
    acknowledged_at: datetime | None = _ts(default=None)
    acknowledged_by: str | None = None
    # When the escalation clock must look at this incident next (runbooks/escalation.py):
    # the sweep reads only active incidents whose time came, or whose times were not worked
    # out under the policy it has (`clock_policy`, a digest; NULL: not worked out). Every
    # change to what the clock reads sets both back (`_clock_moved`), so the next sweep
    # looks, whatever its clock says.
    next_due_at: datetime | None = _ts(default_factory=utcnow)
    clock_policy: str | None = None
    # A resolved incident whose group fires again within the policy's reopen window is
    # reopened, not duplicated: the escalation clock runs again from reopened_at, and its
    # notices are keyed per life (`reopened_count`).
    reopened_at: datetime | None = _ts(default=None)
    reopened_count: int = 0
    # When the problem began: the first alert's startsAt (the sweep's first breach). Time
    # to detect runs from here to opened_at.
    onset_at: datetime | None = _ts(default=None)
    # The post-mortem (runbooks/postmortem.py), as computed on resolution; a person
    # accepting it closes the incident.
    postmortem: dict[str, Any] | None = _json(default=None)
    postmortem_accepted_by: str | None = None


# What `runbooks.escalation.due()` reads of an incident.
CLOCK_FIELDS = (
    "model",
    "status",
    "reopened_at",
    "severity",
    "type",
    "opened_at",
    "acknowledged_at",
    "mitigated_at",
    "route",
)


@sa.event.listens_for(sa.orm.Session, "before_flush")
def _clock_moved(session: sa.orm.Session, _context: Any, _instances: Any) -> None:
    for obj in session.dirty:
        if not isinstance(obj, Incident):
            continue
        state = sa.inspect(obj)
        if any(state.attrs[name].history.has_changes() for name in CLOCK_FIELDS):
            obj.next_due_at, obj.clock_policy = utcnow(), None


class RootCauseLabel(SQLModel, table=True):
    """A person's word on why an incident happened (the seeds' labelling schema). The
    latest label of an incident is its root cause; the diagnosis is judged against it."""

    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id", index=True)
    root_cause: str  # a diagnosis cause (checks/diagnose.py: feature_drift, ...) or free text
    component: str = ""  # what broke: "feature pipeline", "model v3", "serving"
    confidence: float = 1.0  # 0..1, the labeller's
    labeled_by: str
    comment: str = ""
    at: datetime = _ts(default_factory=utcnow)


class Alert(SQLModel, table=True):
    __table_args__ = (
        sa.UniqueConstraint("fingerprint", "starts_at", name="uq_alert_delivery"),
        sa.Index("ix_alert_alertname_status", "alertname", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    fingerprint: str = Field(index=True)
    starts_at: datetime = _ts()
    ends_at: datetime | None = _ts(default=None)
    status: str = Field(default="firing", index=True)
    model: str = Field(index=True)
    alertname: str
    labels: dict[str, str] = _json(default_factory=dict)
    annotations: dict[str, str] = _json(default_factory=dict)
    source: str = "generic"
    received_at: datetime = _ts(default_factory=utcnow, index=True)
    incident_id: int | None = Field(default=None, foreign_key="incident.id", index=True)
    suppressed_reason: str | None = None
    category: str | None = None
    type: str | None = None


class Silence(SQLModel, table=True):
    """A human's "keep quiet about these alerts until then" (runbooks silence add)."""

    id: str = Field(primary_key=True)
    matchers: list[dict[str, str]] = _json()
    starts_at: datetime = _ts()
    ends_at: datetime = _ts(index=True)
    created_by: str
    comment: str
    created_at: datetime = _ts(default_factory=utcnow)


class TimelineEvent(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id", index=True)
    at: datetime = _ts(default_factory=utcnow)
    actor: str
    kind: str
    message: str
    data: dict[str, Any] = _json(default_factory=dict)


class Action(SQLModel, table=True):
    """One remediation step against a target; the key makes a retried step act once."""

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(unique=True)
    incident_id: int = Field(foreign_key="incident.id", index=True)
    model: str = Field(index=True)
    kind: str
    target: str
    dry_run: bool = False
    status: str = "started"  # started | done | already | dry_run | failed
    detail: dict[str, Any] = _json(default_factory=dict)
    started_at: datetime = _ts(default_factory=utcnow)
    finished_at: datetime | None = _ts(default=None)


class Approval(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id", index=True)
    action: str
    status: str = "pending"  # pending | approved | rejected | timed_out
    flow_run_id: str | None = None
    requested_at: datetime = _ts(default_factory=utcnow)
    decided_at: datetime | None = _ts(default=None)
    decided_by: str | None = None
    comment: str = ""
    # Who may answer, resolved from the policy when the approval was asked for: the CLI,
    # the UI form and Slack check the same list, whatever policy file they run with.
    approvers: list[str] = _json(default_factory=list)
    expires_at: datetime | None = _ts(default=None)
    on_timeout: str = "escalate"


class RemediationLock(SQLModel, table=True):
    """At most one remediation per model: the primary key is the model. The holder renews
    `expires_at` while it runs; a lock past it belongs to a run that died and is taken."""

    model: str = Field(primary_key=True)
    incident_id: int
    holder: str
    acquired_at: datetime = _ts(default_factory=utcnow)
    expires_at: datetime | None = _ts(default=None)


class RunbookRun(SQLModel, table=True):
    """One runbook started for one incident and one triage decision: a redelivered event,
    a second automation firing or a re-triage with the same decision starts no second."""

    __table_args__ = (
        sa.UniqueConstraint("incident_id", "runbook", "decision", name="uq_runbook_run"),
    )

    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id", index=True)
    runbook: str
    decision: str
    flow_run_id: str
    started_at: datetime = _ts(default_factory=utcnow)
    finished_at: datetime | None = _ts(default=None)
    outcome: str | None = None


class AutomationPause(SQLModel, table=True):
    """The kill switch: while a row covers a model (its name, or "*" for every model), no
    runbook acts on it; evidence gathering goes on."""

    scope: str = Field(primary_key=True)
    comment: str
    paused_by: str
    paused_at: datetime = _ts(default_factory=utcnow)


class ChangeRecord(SQLModel, table=True):
    """A person's change that belongs to no one incident (a silence added or expired, the
    kill switch): who, when, what. Changes to an incident are on its timeline."""

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts(default_factory=utcnow, index=True)
    by: str
    action: str  # silence.add | silence.expire | automation.pause | automation.resume
    subject: str  # the silence id, the model ("*": every model)
    detail: dict[str, Any] = _json(default_factory=dict)


class Notification(SQLModel, table=True):
    """One message to one channel about one incident, sent or given up on. The first Slack
    message of an incident is its thread: every later one replies to its `external_id`."""

    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id", index=True)
    kind: str  # opened | update | approval | decided | needs_human | escalation | resolved ...
    channel: str  # as the policy names it: "#ml-incidents", "pagerduty", "email", "webhook"
    address: str = ""  # where it went: Slack channel id, email addresses, URL
    status: str = "sent"  # sent | failed
    external_id: str | None = None  # Slack ts, PagerDuty dedup_key, email Message-ID
    thread_id: str | None = None  # Slack: the ts this message replied to
    attempts: int = 0
    error: str | None = None
    created_at: datetime = _ts(default_factory=utcnow)


class IncidentNotice(SQLModel, table=True):
    """A once-per-incident notice (an escalation level reached, a deadline missed, the Nth
    update): the unique key makes a second sweep or a retried task send nothing twice."""

    __table_args__ = (sa.UniqueConstraint("incident_id", "key", name="uq_incident_notice"),)

    id: int | None = Field(default=None, primary_key=True)
    incident_id: int = Field(foreign_key="incident.id", index=True)
    key: str  # "escalation:1", "deadline:triage", "update:3"
    at: datetime = _ts(default_factory=utcnow)


class OutboxEvent(SQLModel, table=True):
    id: str = Field(default_factory=lambda: str(uuid.uuid4()), primary_key=True)
    event: str
    resource: dict[str, str] = _json()
    related: list[dict[str, str]] = _json(default_factory=list)
    payload: dict[str, Any] = _json(default_factory=dict)
    occurred: datetime = _ts(default_factory=utcnow)
    delivered_at: datetime | None = _ts(default=None, index=True)
    attempts: int = 0
    next_attempt_at: datetime = _ts(default_factory=utcnow)
    last_error: str | None = None
    # The intake replica sending it, until when (deployments/outbox.py).
    claimed_by: str | None = None
    claimed_until: datetime | None = _ts(default=None)

    def as_prefect_event(self) -> dict[str, Any]:
        """The body Prefect's `POST /api/events` takes; the id makes a resend harmless."""
        return {
            "id": self.id,
            "occurred": self.occurred.isoformat(),
            "event": self.event,
            "resource": self.resource,
            "related": self.related,
            "payload": self.payload,
        }
