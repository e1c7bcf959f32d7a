"""Runbook: the escalation sweep (scheduled every minute, see prefect.yaml).

1. Read the active incidents whose clock came due with the notices they were already sent
   (one indexed query) and work out what is due now: the next level of the escalation
   chain while nobody has acknowledged, a missed deadline, the periodic update.
   runbooks/escalation.py says when each is due; each incident owed nothing now gets the
   time it must be looked at next.
2. For each due notice: claim it with its timeline line. Its row is unique per incident
   and key, so a sweep running beside this one, or a retried task, sends nothing twice.
3. Tell the people: the chain's next person, the incident's channels.
4. Report what was sent.
"""

from __future__ import annotations

from datetime import datetime

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError

from runbooks import escalation
from runbooks.escalation import Notice
from runbooks.models import utcnow
from runbooks.policy import load_policy
from runbooks.store import session_scope
from tasks import incident_store as store
from tasks.notifications import notify
from tasks.retry import BACKOFF, retry_when

_retry = {
    "retries": 2,
    "retry_delay_seconds": BACKOFF[:2],
    "retry_condition_fn": retry_when(lambda e: isinstance(e, OperationalError)),
    "cache_policy": NO_CACHE,
}


class EscalationRequest(BaseModel):
    policy_file: str | None = Field(
        None, description="Judge with this policy file instead of the service's (to test one)."
    )
    dry_run: bool = Field(False, description="Report what is due; record and send nothing.")


class SweptNotice(BaseModel):
    incident_id: int
    key: str
    kind: str
    line: str
    people: list[str] = Field(default_factory=list)
    outcome: str = Field(
        description="sent | claimed (another sweep, or the incident changed since the "
        "check: not sent) | due (dry run)"
    )


class EscalationSummary(BaseModel):
    at: datetime
    dry_run: bool
    watched: int = Field(
        0, description="Active incidents looked at: those whose clock came due (all, in a dry run)."
    )
    notices: list[SweptNotice] = Field(default_factory=list)

    def record(self, notice: Notice, outcome: str) -> None:
        self.notices.append(
            SweptNotice(
                incident_id=notice.incident_id,
                key=notice.key,
                kind=notice.kind,
                line=notice.line,
                people=list(notice.people),
                outcome=outcome,
            )
        )

    def sent(self) -> list[SweptNotice]:
        return [n for n in self.notices if n.outcome == "sent"]


@flow(name="escalation-sweep", log_prints=True)
def escalation_sweep(request: EscalationRequest) -> EscalationSummary:
    now = utcnow()
    watched, notices = find_due_notices(now, request.policy_file, request.dry_run)
    summary = EscalationSummary(at=now, dry_run=request.dry_run, watched=watched)
    for notice in notices:
        if request.dry_run:
            summary.record(notice, "due")
        elif claim_notice(notice, now):
            notify(notice.incident_id, notice.kind, people=notice.people, data=notice.data)
            summary.record(notice, "sent")
        else:
            summary.record(notice, "claimed")
    report(summary)
    return summary


# Steps -----------------------------------------------------------------------------------


@task(**_retry)
def find_due_notices(
    now: datetime, policy_file: str | None, dry_run: bool
) -> tuple[int, list[Notice]]:
    """How many incidents the clock looked at, and what they are owed now (nothing is
    sent). A dry run, or a run judged with another policy file, looks at every active
    incident and moves no incident's clock."""
    if dry_run or policy_file:
        policy = load_policy(policy_file) if policy_file else store.policy()
        with session_scope(store.db()) as s:
            rows = escalation.watched(s)
        return len(rows), [n for i, sent in rows for n in escalation.due(i, now, sent, policy)]
    with session_scope(store.db()) as s:
        return escalation.check(s, now, store.policy())


@task(task_run_name="claim-{notice.incident_id}-{notice.key}", **_retry)
def claim_notice(notice: Notice, now: datetime) -> bool:
    with session_scope(store.db()) as s:
        return escalation.claim(s, notice, now)


def report(summary: EscalationSummary) -> None:
    sent = summary.sent()
    verb = "due" if summary.dry_run else "sent"
    shown = summary.notices if summary.dry_run else sent
    print(f"escalation sweep: {summary.watched} active incident(s), {len(shown)} notice(s) {verb}")
    if not shown:
        # Every minute: an artifact only when the sweep told somebody something.
        return
    lines = [
        f"# Escalation sweep at {summary.at:%Y-%m-%d %H:%M:%SZ}",
        "",
        f"{summary.watched} active incident(s); {len(shown)} notice(s) {verb}.",
        "",
        "| incident | notice | to | line |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {n.incident_id} | {n.key} | {', '.join(n.people) or 'channels'} | {n.line} |"
        for n in shown
    ]
    create_markdown_artifact(
        key="escalation-sweep", markdown="\n".join(lines), description="What the sweep sent"
    )
