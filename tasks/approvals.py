"""Approvals: ask a human before a risky step, take only an allowed answer, and give every
timeout the policy's outcome.

The question is a Prefect pause with a RunInput form (the UI's Resume form; `runbooks
approve` answers the same pause). Prefect ends a pause whose timeout expires by failing the
run, so the pause is given longer than the policy's timeout and this module's own timer
answers first: it marks the approval `timed_out` (the first decision wins, in one
conditional UPDATE) and resumes the run with the policy's answer. An answer from someone
not on the approval's allow-list is refused on the timeline and the run keeps waiting.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from prefect import pause_flow_run
from prefect.exceptions import NotPausedError
from prefect.flow_runs import resume_flow_run
from prefect.input import RunInput
from pydantic import Field

from runbooks.approvals import approvers, may_approve, refusal
from tasks import incident_store as store

# The pause outlives the policy's timeout by this much, so the timer always answers first.
PAUSE_GRACE_SECONDS = 120
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
    try:
        row = _wait_for_allowed_answer(approval_id, allowed, model, sev, description, timeout)
    finally:
        timer.cancel()
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
        answer = pause_flow_run(
            wait_for_input=Approval.with_initial_data(
                description=f"{description}\n\nMay approve: {', '.join(allowed) or 'nobody'}",
                approve=False,
                approver="",
                comment="",
            ),
            timeout=max(1, int(deadline - time.monotonic())),
            poll_interval=1,
            key=f"approval-{approval_id}-{attempt}",
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
