"""The safety rails around acting on a model: one remediation per model at a time (a lock
with a lease), a cooldown per (model, action), the kill switch, and one runbook start per
incident and decision. Pure store operations on a session; the clock is passed in where
a rule depends on it."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete as sa_delete
from sqlalchemy import update as sa_update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from runbooks.changes import record_change
from runbooks.incidents import IncidentStateError, add_timeline, hand_to_human
from runbooks.models import (
    ACTIVE_STATUSES,
    Action,
    Approval,
    AutomationPause,
    Incident,
    RemediationLock,
    RunbookRun,
    utcnow,
)

EVERY_MODEL = "*"


class LockHeld(IncidentStateError):
    """Another incident remediates the model; the message names it and since when."""

    def __init__(self, message: str, holder: RemediationLock | None) -> None:
        super().__init__(message)
        self.holder_incident = holder.incident_id if holder else None


def _held_message(model: str, lock: RemediationLock | None) -> str:
    if lock is None:
        return f"model {model} is being remediated by another incident; one remediation at a time"
    until = f", lease until {lock.expires_at:%H:%M:%SZ}" if lock.expires_at else ""
    return (
        f"model {model} is being remediated by incident {lock.incident_id} "
        f"({lock.holder}, since {lock.acquired_at:%H:%M:%SZ}{until}); one remediation at a time"
    )


def acquire_lock(
    session: Session,
    model: str,
    incident_id: int,
    holder: str,
    lease_seconds: float | None = None,
    now: datetime | None = None,
) -> RemediationLock:
    """Take the model's remediation lock, or raise LockHeld naming who holds it.

    A lock whose lease ran out belongs to a run that died without releasing it: it is
    taken over, and the taken incident's timeline says so. A lock without a lease (written
    before leases existed) never expires."""
    now = now or utcnow()
    expires = now + timedelta(seconds=lease_seconds) if lease_seconds else None
    lock = session.get(RemediationLock, model)
    if lock is not None:
        if lock.incident_id == incident_id:
            lock.holder, lock.expires_at = holder, expires
            session.add(lock)
            return lock
        if lock.expires_at is None or lock.expires_at > now:
            raise LockHeld(_held_message(model, lock), lock)
        taken = sa_update(RemediationLock).where(
            RemediationLock.model == model,
            RemediationLock.incident_id == lock.incident_id,
            RemediationLock.expires_at == lock.expires_at,
        )
        stale = (lock.incident_id, lock.holder, lock.expires_at)
        changed = session.execute(
            taken.values(
                incident_id=incident_id, holder=holder, acquired_at=now, expires_at=expires
            )
        ).rowcount
        if changed != 1:
            session.expire(lock)
            raise LockHeld(_held_message(model, session.get(RemediationLock, model)), lock)
        add_timeline(
            session,
            stale[0],
            "remediation",
            "lock",
            f"the remediation lock of {model} held by {stale[1]} expired at "
            f"{stale[2]:%H:%M:%SZ} without a renewal (the run died); incident "
            f"{incident_id} took it",
        )
        session.expire(lock)
        return session.get(RemediationLock, model)
    lock = RemediationLock(
        model=model, incident_id=incident_id, holder=holder, acquired_at=now, expires_at=expires
    )
    try:
        with session.begin_nested():
            session.add(lock)
    except IntegrityError:
        raise LockHeld(_held_message(model, session.get(RemediationLock, model)), None) from None
    return lock


def renew_lock(
    session: Session, model: str, incident_id: int, lease_seconds: float, now: datetime
) -> bool:
    """Push the lease forward; False when the lock is no longer this incident's."""
    q = (
        sa_update(RemediationLock)
        .where(RemediationLock.model == model, RemediationLock.incident_id == incident_id)
        .values(expires_at=now + timedelta(seconds=lease_seconds))
    )
    return session.execute(q).rowcount == 1


def release_lock(session: Session, model: str, incident_id: int) -> None:
    session.execute(
        sa_delete(RemediationLock).where(
            RemediationLock.model == model, RemediationLock.incident_id == incident_id
        )
    )


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


# -- the kill switch ------------------------------------------------------------------


def pause_automation(session: Session, model: str | None, comment: str, by: str) -> AutomationPause:
    if not comment.strip():
        raise ValueError("comment: say why automation is paused (it goes on every skipped step)")
    scope = model or EVERY_MODEL
    row = session.get(AutomationPause, scope) or AutomationPause(
        scope=scope, comment=comment, paused_by=by
    )
    row.comment, row.paused_by, row.paused_at = comment, by, utcnow()
    session.add(row)
    return row


def resume_automation(session: Session, model: str | None) -> bool:
    scope = model or EVERY_MODEL
    return (
        session.execute(sa_delete(AutomationPause).where(AutomationPause.scope == scope)).rowcount
        == 1
    )


class NotPaused(LookupError):
    pass


def switch_automation(
    session: Session, pause: bool, model: str | None, by: str, comment: str = ""
) -> str:
    """Pause (or resume) automation for `model` or every model, and put the line it returns
    on the timeline of every active incident it covers. ValueError for a pause without a
    comment, NotPaused for a resume of nothing."""
    scope = model or "every model"
    if pause:
        pause_automation(session, model, comment, by)
        line = f"automation paused for {scope} by {by}: {comment}"
    else:
        if not resume_automation(session, model):
            raise NotPaused(f"automation was not paused for {scope}")
        line = f"automation resumed for {scope} by {by}"
    record_change(
        session,
        by,
        "automation.pause" if pause else "automation.resume",
        model or EVERY_MODEL,
        {"comment": comment} if pause else {},
    )
    q = select(Incident).where(col(Incident.status).in_(ACTIVE_STATUSES))
    if model:
        q = q.where(Incident.model == model)
    for incident in session.exec(q):
        add_timeline(session, incident.id, by, "automation", line)
    return line


def pause_view(row: AutomationPause) -> dict[str, Any]:
    return {**row.model_dump(mode="json"), "every_model": row.scope == EVERY_MODEL}


def automation_pauses(session: Session) -> list[AutomationPause]:
    return list(session.exec(select(AutomationPause).order_by(col(AutomationPause.scope))).all())


def pause_covering(session: Session, model: str) -> AutomationPause | None:
    """The pause that stops actions on `model` (its own, else the global one), if any."""
    return session.get(AutomationPause, model) or session.get(AutomationPause, EVERY_MODEL)


# -- runbook starts -------------------------------------------------------------------


def claim_runbook(
    session: Session, incident_id: int, runbook: str, decision: str, flow_run_id: str
) -> RunbookRun | None:
    """Record that `flow_run_id` runs `runbook` for this incident and decision; None when
    it is the first, else the run that already did (this one must stop)."""
    found = session.exec(
        select(RunbookRun).where(
            RunbookRun.incident_id == incident_id,
            RunbookRun.runbook == runbook,
            RunbookRun.decision == decision,
        )
    ).first()
    if found is not None:
        return None if found.flow_run_id == flow_run_id else found
    try:
        with session.begin_nested():
            session.add(
                RunbookRun(
                    incident_id=incident_id,
                    runbook=runbook,
                    decision=decision,
                    flow_run_id=flow_run_id,
                )
            )
    except IntegrityError:
        return claim_runbook(session, incident_id, runbook, decision, flow_run_id)
    return None


def finish_runbook(
    session: Session, incident_id: int, runbook: str, flow_run_id: str, outcome: str
) -> None:
    session.execute(
        sa_update(RunbookRun)
        .where(
            RunbookRun.incident_id == incident_id,
            RunbookRun.runbook == runbook,
            RunbookRun.flow_run_id == flow_run_id,
        )
        .values(outcome=outcome, finished_at=utcnow())
    )


def started_runbooks(session: Session, incident_id: int) -> list[RunbookRun]:
    return list(session.exec(select(RunbookRun).where(RunbookRun.incident_id == incident_id)).all())


def cancel_run(session: Session, flow_run_id: str, why: str) -> list[int]:
    """What a runbook's flow run cancelled from outside (the Prefect UI's Cancel, or
    `runbooks serve` stopping) leaves behind, put right: the model locks it held released,
    its pending approvals `cancelled`, its runbook record finished `cancelled`, and each
    incident handed to a person with the reason. Returns the incidents it touched."""
    touched: set[int] = set()
    locks = session.exec(
        select(RemediationLock).where(col(RemediationLock.holder).endswith(flow_run_id))
    ).all()
    for lock in locks:
        touched.add(lock.incident_id)
        session.delete(lock)
    asked = session.exec(
        select(Approval).where(Approval.flow_run_id == flow_run_id, Approval.status == "pending")
    ).all()
    for row in asked:
        row.status, row.decided_at, row.decided_by = "cancelled", utcnow(), "prefect"
        row.comment = why
        session.add(row)
        touched.add(row.incident_id)
    runs = session.exec(
        select(RunbookRun).where(
            RunbookRun.flow_run_id == flow_run_id, col(RunbookRun.outcome).is_(None)
        )
    ).all()
    for run in runs:
        run.outcome, run.finished_at = "cancelled", utcnow()
        session.add(run)
        touched.add(run.incident_id)
    for incident_id in sorted(touched):
        incident = session.get(Incident, incident_id)
        if incident is not None:
            hand_to_human(session, incident, "runbook", f"flow run {flow_run_id} cancelled: {why}")
    return sorted(touched)
