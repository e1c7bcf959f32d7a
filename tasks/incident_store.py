"""The incident store, as tasks: every runbook step reads and writes the incident here."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from prefect import task
from sqlalchemy import update as sa_update
from sqlalchemy.exc import OperationalError
from sqlmodel import select

from runbooks import incidents, ingest, remediation
from runbooks.events import enqueue_event
from runbooks.models import Action, Alert, Approval, Incident, IncidentStatus, utcnow
from runbooks.policy import Policy, load_policy
from runbooks.settings import get_settings
from runbooks.store import session_scope
from runbooks.views import IncidentView
from tasks import events
from tasks.retry import BACKOFF, retry_when

_retry = {
    "retries": 2,
    "retry_delay_seconds": BACKOFF[:2],
    "retry_condition_fn": retry_when(lambda e: isinstance(e, OperationalError)),
}


def db() -> str:
    return get_settings().resolved_database_url()


def policy() -> Policy:
    """The service's policy, read again when its file changes: runs on threads of a
    long-lived `runbooks serve` see an edited policy at their next read, as runs in
    processes of their own did."""
    path = get_settings().policy_file
    try:
        stat = Path(path).stat() if path else None
    except OSError:
        stat = None  # load_policy says what is wrong with it
    return _policy(str(path) if path else None, stat and (stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=4)
def _policy(path: str | None, version: tuple[int, int] | None) -> Policy:
    return load_policy(path)


class IncidentNotFound(LookupError):
    pass


@task(**_retry)
def read_incident(incident_id: int) -> IncidentView:
    with session_scope(db()) as s:
        incident = s.get(Incident, incident_id)
        if incident is None:
            raise IncidentNotFound(
                f"incident {incident_id} does not exist in {db().split('@')[-1]}; "
                "check the event payload's incident_id and RUNBOOKS_DATABASE_URL"
            )
        alerts = s.exec(
            select(Alert).where(Alert.incident_id == incident_id).order_by(Alert.id)
        ).all()
        return IncidentView.of(incident, alerts)


@task(**_retry)
def add_timeline(
    incident_id: int, actor: str, kind: str, message: str, data: dict[str, Any] | None = None
) -> None:
    with session_scope(db()) as s:
        incidents.add_timeline(s, incident_id, actor, kind, message, data)


@task(**_retry)
def set_incident_status(incident_id: int, status: str, actor: str, why: str) -> bool:
    with session_scope(db()) as s:
        incident = s.get(Incident, incident_id)
        return incidents.transition(s, incident, status, actor, why)


@task(**_retry)
def record_triage(
    incident_id: int,
    decision: dict[str, Any],
    reasons: list[str],
    last_alert_read: int = 0,
    policy_file: str | None = None,
    start: dict[str, Any] | None = None,
) -> str | None:
    """The triage decision (severity, type, strategy, route...) and why, in one commit,
    with `ml.incident.triaged` staged in it when the decision starts a runbook (`start`:
    runbook, decision, dry_run): the runbook deployment's trigger matches its strategy.

    Returns the severity it escalated to when an alert that joined after triage read the
    incident (id above `last_alert_read`) is worse than the decision, by the policy the
    triage decided with (`policy_file`, else the service's); None otherwise.
    """
    staged: list[str] = []
    with session_scope(db()) as s:
        incident = s.get(Incident, incident_id)
        if start is not None:
            staged.append(
                enqueue_event(
                    s,
                    "ml.incident.triaged",
                    incident,
                    {"strategy": decision["strategy"], "severity": decision["severity"], **start},
                    {"ml.strategy": decision["strategy"], "ml.runbook": start["runbook"]},
                ).id
            )
        for key, value in decision.items():
            setattr(incident, key, value)
        s.add(incident)
        for why in reasons:
            incidents.add_timeline(s, incident_id, "triage", "decision", why)
        # Only an open incident becomes triaged: a re-triage of one already under
        # containment records the new decision and leaves its status where it is.
        if incident.status == IncidentStatus.OPEN:
            incidents.transition(
                s,
                incident,
                "triaged",
                "triage",
                f"{decision['severity']} {decision['type']}, strategy {decision['strategy']}",
            )
        rules = load_policy(policy_file) if policy_file else policy()
        escalated = ingest.escalate_for_later_alerts(s, incident, last_alert_read, rules)
    events.publish_now(db(), staged)
    return escalated


@task(**_retry)
def claim_triage(incident_id: int, run: str, force: bool) -> str | None:
    with session_scope(db()) as s:
        owner = incidents.claim_triage(s, incident_id, run, force)
        if owner is not None:
            incidents.add_timeline(
                s,
                incident_id,
                "triage",
                "skip",
                f"triage run {run} stops: run {owner} already triaged this incident "
                "(start it with retriage to decide again)",
            )
        return owner


@task(**_retry)
def record_enrichment(incident_id: int, context: dict[str, Any], lines: list[str]) -> None:
    with session_scope(db()) as s:
        incident = s.get(Incident, incident_id)
        incident.context = context
        s.add(incident)
        for line in lines:
            kind = "gap" if line.startswith("gap:") else "context"
            incidents.add_timeline(s, incident_id, "triage", kind, line)


@task(**_retry)
def acquire_remediation_lock(model: str, incident_id: int, holder: str) -> None:
    with session_scope(db()) as s:
        remediation.acquire_lock(
            s, model, incident_id, holder, policy().remediation.lock_lease_seconds
        )


@task(**_retry)
def renew_remediation_lock(model: str, incident_id: int) -> bool:
    with session_scope(db()) as s:
        return remediation.renew_lock(
            s, model, incident_id, policy().remediation.lock_lease_seconds, utcnow()
        )


@task(**_retry)
def release_remediation_lock(model: str, incident_id: int) -> None:
    with session_scope(db()) as s:
        remediation.release_lock(s, model, incident_id)


@task(**_retry)
def cooldown_left(model: str, kind: str, incident_id: int) -> float:
    with session_scope(db()) as s:
        return remediation.cooldown_left(
            s, model, kind, incident_id, policy().remediation.cooldown_seconds
        )


@task(**_retry)
def automation_paused(model: str) -> dict[str, Any] | None:
    """The kill switch covering `model` (comment, by, since), or None when it may act."""
    with session_scope(db()) as s:
        pause = remediation.pause_covering(s, model)
        return pause.model_dump(mode="json") if pause else None


@task(**_retry)
def claim_runbook(incident_id: int, runbook: str, decision: str, run: str) -> str | None:
    """None when this run is the runbook for the decision; else the run that already is."""
    with session_scope(db()) as s:
        found = remediation.claim_runbook(s, incident_id, runbook, decision, run)
        if found is None:
            return None
        incidents.add_timeline(
            s,
            incident_id,
            runbook,
            "skip",
            f"{runbook} run {run} stops: run {found.flow_run_id} already ran it for the "
            f"decision {decision}",
        )
        return found.flow_run_id


@task(**_retry)
def finish_runbook(incident_id: int, runbook: str, run: str, outcome: str) -> None:
    with session_scope(db()) as s:
        remediation.finish_runbook(s, incident_id, runbook, run, outcome)


def cancelled_run(flow_run_id: str, why: str) -> list[int]:
    """Not a task: Prefect calls it from a cancelled run's hook, outside the run."""
    with session_scope(db()) as s:
        return remediation.cancel_run(s, flow_run_id, why)


@task(**_retry)
def hand_to_human(incident_id: int, actor: str, why: str) -> None:
    with session_scope(db()) as s:
        incidents.hand_to_human(s, s.get(Incident, incident_id), actor, why)


@task(**_retry)
def begin_action(
    key: str,
    incident_id: int,
    model: str,
    kind: str,
    target: str,
    dry_run: bool,
    plan: dict[str, Any],
) -> dict[str, Any]:
    """Record the plan before acting; a retry gets the first plan back, not a new one."""
    with session_scope(db()) as s:
        found = s.exec(select(Action).where(Action.idempotency_key == key)).first()
        if found is None:
            found = Action(
                idempotency_key=key,
                incident_id=incident_id,
                model=model,
                kind=kind,
                target=target,
                dry_run=dry_run,
                detail={"plan": plan},
            )
            s.add(found)
            incidents.add_timeline(
                s,
                incident_id,
                "containment",
                "action",
                f"{'dry run: would ' if dry_run else ''}{kind} on {target}: "
                f"{plan.get('summary', '')}".rstrip(": "),
                {"plan": plan},
            )
            s.flush()
        return found.model_dump(mode="json")


@task(**_retry)
def finish_action(key: str, status: str, result: dict[str, Any], message: str) -> None:
    with session_scope(db()) as s:
        action = s.exec(select(Action).where(Action.idempotency_key == key)).one()
        action.status = status
        action.detail = {**action.detail, "result": result}
        action.finished_at = utcnow()
        s.add(action)
        incidents.add_timeline(
            s, action.incident_id, "containment", "action", message, {"status": status}
        )


@task(**_retry)
def record_approval_request(
    incident_id: int,
    action: str,
    flow_run_id: str,
    approvers: list[str],
    timeout_seconds: float,
    on_timeout: str,
) -> int:
    with session_scope(db()) as s:
        approval = Approval(
            incident_id=incident_id,
            action=action,
            flow_run_id=flow_run_id,
            approvers=approvers,
            expires_at=utcnow() + timedelta(seconds=timeout_seconds),
            on_timeout=on_timeout,
        )
        s.add(approval)
        s.flush()
        incidents.add_timeline(
            s,
            incident_id,
            "containment",
            "approval",
            f"waiting for approval of {action} by {', '.join(approvers) or 'nobody'} "
            f"for {timeout_seconds:g} s (then: {on_timeout}): "
            f"runbooks approve {incident_id} --by NAME (or the Prefect UI form)",
            {"approval_id": approval.id, "flow_run_id": flow_run_id},
        )
        return approval.id


@task(**_retry)
def read_approval(approval_id: int) -> dict[str, Any]:
    with session_scope(db()) as s:
        return s.get(Approval, approval_id).model_dump(mode="json")


@task(**_retry)
def record_approval_decision(
    approval_id: int, status: str, by: str, comment: str
) -> dict[str, Any]:
    """Decide a pending approval; the first decision wins (a human and the timeout timer
    can answer at once). Returns the row as decided, whoever decided it."""
    with session_scope(db()) as s:
        q = (
            sa_update(Approval)
            .where(Approval.id == approval_id, Approval.status == "pending")
            .values(status=status, decided_by=by, comment=comment, decided_at=utcnow())
        )
        if s.execute(q).rowcount == 1:
            approval = s.get(Approval, approval_id)
            incidents.add_timeline(
                s,
                approval.incident_id,
                by,
                "approval",
                f"{approval.action} {status.replace('_', ' ')} by {by}"
                + (f": {comment}" if comment else ""),
            )
        approval = s.get(Approval, approval_id)
        s.refresh(approval)
        return approval.model_dump(mode="json")


@task(**_retry)
def record_approval_refusal(approval_id: int, message: str) -> None:
    with session_scope(db()) as s:
        approval = s.get(Approval, approval_id)
        incidents.add_timeline(s, approval.incident_id, "approval", "refused", message)
