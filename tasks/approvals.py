"""Approvals: ask a human before a risky step, take only an allowed answer, and give every
timeout the policy's outcome.

The question is a Prefect pause with a RunInput form (the UI's Resume form; `runbooks
approve` answers the same pause). Prefect ends a pause whose timeout expires by failing the
run, so the pause is given longer than the policy's timeout and this module's own timer
answers first: it marks the approval `timed_out` (the first decision wins, in one
conditional UPDATE) and resumes the run with the policy's answer. An answer from someone
not on the approval's allow-list is refused on the timeline and the run keeps waiting.

`answer_approval` is the one way a person answers (`runbooks approve`, a Slack button): it
checks the allow-list, then resumes the pause. The question and its decision are posted
to the incident's channels (the Slack message gets Approve/Reject buttons, then shows who
decided).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import httpx
from prefect import get_client, pause_flow_run
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, NotPausedError, PrefectHTTPStatusError
from prefect.flow_runs import resume_flow_run
from prefect.input import RunInput
from prefect.input.run_input import keyset_from_base_key
from pydantic import Field
from sqlmodel import col, select

from runbooks.approvals import approvers, may_approve, refusal
from runbooks.incidents import add_timeline
from runbooks.models import Approval as ApprovalRow
from runbooks.models import Incident
from runbooks.store import session_scope
from tasks import incident_store as store
from tasks.notifications import notify

# The pause outlives the policy's timeout by this much, so the timer always answers first.
PAUSE_GRACE_SECONDS = 120
# How long the timer lets a resumed run read an answer given before the timeout.
ANSWER_GRACE_SECONDS = 60
# Between tries to reach a Prefect server that is away, while a pause waits.
PREFECT_AWAY_SLEEP_SECONDS = 5
TIMEOUT_BY = "timeout"
log = logging.getLogger(__name__)


class Approval(RunInput):
    approve: bool = Field(description="Approve the action?")
    approver: str = Field(description="Who decides; must be on the approval's allow-list.")
    comment: str = Field("", description="Why, for the post-mortem.")


@dataclass(frozen=True)
class Answer:
    """What the runbook does next: `act` is False for a rejection and for a timeout whose
    policy outcome is to escalate."""

    status: str  # automatic | approved | rejected | timed_out
    by: str
    comment: str
    act: bool

    def say(self, action: str) -> str:
        if self.status == "timed_out":
            then = "taking the safe default" if self.act else "keeping the safe state"
            return f"no answer on {action} in time: {then} ({self.comment})"
        return f"{action} {self.status} by {self.by}" + (
            f": {self.comment}" if self.comment else ""
        )


def await_approval(
    incident_id: int,
    model: str,
    severity: str | None,
    action: str,
    description: str,
    flow_run_id: str,
    action_class: str = "containment",
) -> Answer:
    """Ask, wait, and return the decision; automatic when the policy allows the action's
    class at this severity (a class no policy lists, such as a gradual rollback's
    inconclusive step, always asks)."""
    policy = store.policy()
    sev = severity or policy.default_severity
    if not policy.needs_approval(sev, action_class):
        store.add_timeline(
            incident_id,
            "containment",
            "approval",
            f"{action} runs without approval: the policy allows {action_class} at {sev}",
        )
        return Answer("automatic", "policy", "", True)
    allowed = approvers(policy, model, sev, datetime.now(UTC))
    timeout = float(policy.approval.timeout_seconds)
    on_timeout = policy.approval.on_timeout
    approval_id = store.record_approval_request(
        incident_id, action, flow_run_id, allowed, timeout, on_timeout
    )
    timer = _TimeoutTimer(approval_id, flow_run_id, timeout, on_timeout)
    timer.start()
    notify(
        incident_id,
        "approval",
        people=allowed,
        data={"approval_id": approval_id, "why": description},
    )
    try:
        row = _wait_for_allowed_answer(approval_id, allowed, model, sev, description, timeout)
    finally:
        timer.cancel()
    notify(incident_id, "decided", data={"approval_id": approval_id})
    return Answer(
        row["status"],
        row["decided_by"] or "",
        row["comment"] or "",
        row["status"] == "approved" or (row["status"] == "timed_out" and on_timeout == "apply"),
    )


def _wait_for_allowed_answer(
    approval_id: int,
    allowed: list[str],
    model: str,
    severity: str,
    description: str,
    timeout: float,
) -> dict:
    deadline = time.monotonic() + timeout + PAUSE_GRACE_SECONDS
    for attempt in range(1000):
        answer = _pause_for_answer(
            Approval.with_initial_data(
                description=f"{description}\n\nMay approve: {', '.join(allowed) or 'nobody'}",
                approve=False,
                approver="",
                comment="",
            ),
            deadline,
            f"approval-{approval_id}-{attempt}",
        )
        row = store.read_approval(approval_id)
        if row["status"] != "pending":
            return row  # the timer (or a racing answer) decided first
        if answer.approver == TIMEOUT_BY or may_approve(answer.approver, allowed):
            status = "approved" if answer.approve else "rejected"
            return store.record_approval_decision(
                approval_id, status, answer.approver or "unknown", answer.comment
            )
        store.record_approval_refusal(
            approval_id, "answer refused: " + refusal(answer.approver, allowed, model, severity)
        )
    raise RuntimeError(f"approval {approval_id}: 1000 refused answers; stopping")


def _pause_for_answer(form: type[Approval], deadline: float, key: str) -> Approval:
    """The pause's answer, waiting through a Prefect server that is away (a restart).

    While paused, Prefect's pause reads the run every second; when the server stays away
    longer than the client's retries (PREFECT_CLIENT_MAX_RETRIES=5: about 62 s) that read
    raises, and the run would end Failed with its approval orphaned. Here the wait goes on
    as Prefect's does, on the same pause key, once the server answers again."""
    while True:
        try:
            return pause_flow_run(
                wait_for_input=form,
                timeout=max(1, int(deadline - time.monotonic())),
                poll_interval=1,
                key=key,
            )
        except (httpx.TransportError, PrefectHTTPStatusError) as err:
            if not _server_away(err) or time.monotonic() >= deadline:
                raise
            log.warning("Prefect server away while waiting for approval (%s); waiting on", err)
        answer = _wait_on_pause(form, deadline, key)
        if answer is not None:
            return answer  # else the pause never reached the server: pause again


def _server_away(err: BaseException) -> bool:
    status = getattr(getattr(err, "response", None), "status_code", None)
    return isinstance(err, httpx.TransportError) or (status is not None and status >= 500)


def _wait_on_pause(form: type[Approval], deadline: float, key: str) -> Approval | None:
    """Wait on the pause `key` as pause_flow_run does: the answer once the run is Running
    again, None when the pause never took (the server went away before it)."""
    run_id = FlowRunContext.get().flow_run.id
    while time.monotonic() < deadline:
        try:
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(run_id)
        except (httpx.TransportError, PrefectHTTPStatusError) as err:
            if not _server_away(err):
                raise
            time.sleep(PREFECT_AWAY_SLEEP_SECONDS)
            continue
        state = run.state
        if state is not None and state.is_paused():
            time.sleep(1)
            continue
        if state is not None and state.is_running():
            if key not in (run.empirical_policy.pause_keys or set()):
                return None
            return form.load(keyset_from_base_key(f"paused-{key}"), flow_run_id=run_id)
        raise RuntimeError(
            f"flow run {run_id} left its approval pause for {state.type.value if state else None}"
        )
    raise FlowPauseTimeout("Flow run was paused and never resumed.")


class _TimeoutTimer(threading.Thread):
    """Answers the pause with the policy's outcome when nobody has in time."""

    def __init__(self, approval_id: int, flow_run_id: str, timeout: float, outcome: str) -> None:
        super().__init__(name=f"approval-{approval_id}-timeout", daemon=True)
        self.approval_id, self.flow_run_id = approval_id, flow_run_id
        self.timeout, self.outcome = timeout, outcome
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        self._cancelled.set()

    def run(self) -> None:
        if self._cancelled.wait(self.timeout):
            return
        if self._answer_on_its_way():
            return
        comment = f"no answer in {self.timeout:g} s; the policy says {self.outcome}"
        # .fn: this thread is outside the flow's context, and the row is the truth anyway.
        row = store.record_approval_decision.fn(self.approval_id, "timed_out", TIMEOUT_BY, comment)
        if row["status"] != "timed_out":
            return
        answer = {"approve": self.outcome == "apply", "approver": TIMEOUT_BY, "comment": comment}
        while not self._cancelled.is_set():
            try:
                resume_flow_run(self.flow_run_id, run_input=answer)
                return
            except NotPausedError:
                time.sleep(0.5)  # between two pauses (a refused answer): it reads the row
            except Exception as err:  # noqa: BLE001  the pause's own expiry is the fallback
                log.warning("approval timeout could not resume the run: %s", err)
                time.sleep(1)

    def _answer_on_its_way(self) -> bool:
        """True when someone answered in time and the run has not read it yet: the pause was
        resumed (the run is no longer Paused) and the run decides the row within the grace.
        On a loaded server the resumed run has taken tens of seconds to leave its pause;
        timing out then would overrule an answer given in time."""
        deadline = time.monotonic() + ANSWER_GRACE_SECONDS
        while not self._cancelled.is_set() and time.monotonic() < deadline:
            try:
                if _run_is_paused(self.flow_run_id):
                    return False
            except Exception as err:  # noqa: BLE001  unknown: the timeout decides
                log.warning("approval timeout could not read the run's state: %s", err)
                return False
            if self._cancelled.wait(0.5):
                return True
        return self._cancelled.is_set()


def _run_is_paused(flow_run_id: str) -> bool:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(UUID(flow_run_id)).state
    return state is not None and state.is_paused()


class ApprovalAnswerError(RuntimeError):
    """An answer that was not taken; the message says why and what to do instead."""


@dataclass(frozen=True)
class GivenAnswer:
    """A person's answer that passed the allow-list, before or after it reached the run."""

    incident_id: int
    approval_id: int
    action: str
    flow_run_id: str
    approve: bool
    by: str
    comment: str

    def say(self) -> str:
        verb = "approved" if self.approve else "rejected"
        return f"{self.action} for incident {self.incident_id} {verb} by {self.by}"


def check_answer(
    incident_id: int,
    by: str,
    approve: bool,
    comment: str = "",
    *,
    via: str = "runbooks approve",
    approval_id: int | None = None,
    database_url: str | None = None,
) -> GivenAnswer:
    """The pending approval `by` may answer (the incident's latest, or `approval_id`), or
    ApprovalAnswerError saying why not; a refusal by the allow-list is on the timeline."""
    with session_scope(database_url or store.db()) as s:
        if approval_id is None:
            row = s.exec(
                select(ApprovalRow)
                .where(ApprovalRow.incident_id == incident_id)
                .order_by(col(ApprovalRow.id).desc())
            ).first()
        else:
            row = s.get(ApprovalRow, approval_id)
            row = row if row is not None and row.incident_id == incident_id else None
        if row is None:
            raise ApprovalAnswerError(f"incident {incident_id} has no approval to answer")
        if row.status != "pending":
            raise ApprovalAnswerError(_already(row))
        refused = None
        if not may_approve(by, row.approvers):
            incident = s.get(Incident, incident_id)
            refused = refusal(by, row.approvers, incident.model, incident.severity)
            add_timeline(s, incident_id, by, "refused", f"{via} refused: {refused}")
        answer = GivenAnswer(
            incident_id, row.id, row.action, row.flow_run_id or "", approve, by, comment
        )
    if refused is not None:
        raise ApprovalAnswerError(refused)  # after the commit: the refusal stays on record
    return answer


def resume_with_answer(
    answer: GivenAnswer, wait_seconds: float = 30, database_url: str | None = None
) -> None:
    """Give the answer to the paused run. The approval is recorded a moment before Prefect
    registers the pause and its form: an answer given in that moment waits for the pause.
    It stops when the approval is decided meanwhile (another answer, the timer), so a
    second answer never reaches a later pause."""
    run_input = {"approve": answer.approve, "approver": answer.by, "comment": answer.comment}
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            resume_flow_run(answer.flow_run_id, run_input=run_input)
            return
        except (RuntimeError, NotPausedError) as err:
            waiting = isinstance(err, NotPausedError) or "schema not found" in str(err)
            if not waiting:
                raise ApprovalAnswerError(
                    f"cannot answer flow run {answer.flow_run_id}: {err}"
                ) from None
            if time.monotonic() > deadline:
                raise ApprovalAnswerError(
                    f"flow run {answer.flow_run_id} did not pause for approval in "
                    f"{wait_seconds:g} s ({err}); check it in the Prefect UI"
                ) from None
        with session_scope(database_url or store.db()) as s:
            row = s.get(ApprovalRow, answer.approval_id)
            if row.status != "pending":
                raise ApprovalAnswerError(_already(row))
        time.sleep(0.5)


def answer_approval(
    incident_id: int,
    by: str,
    approve: bool,
    comment: str = "",
    *,
    via: str = "runbooks approve",
    approval_id: int | None = None,
) -> GivenAnswer:
    """Check the answer against the allow-list, then give it to the waiting run."""
    answer = check_answer(incident_id, by, approve, comment, via=via, approval_id=approval_id)
    resume_with_answer(answer)
    return answer


def _already(row: ApprovalRow) -> str:
    when = f" at {row.decided_at:%Y-%m-%d %H:%M:%SZ}" if row.decided_at else ""
    return (
        f"the approval of {row.action} for incident {row.incident_id} is already "
        f"{row.status.replace('_', ' ')} (by {row.decided_by}{when}"
        f"{': ' + row.comment if row.comment else ''}); nothing to answer"
    )
