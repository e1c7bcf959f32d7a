"""Runbook: the post-mortem (started by ml.incident.resolved, see prefect.yaml).

1. Draft it: read the incident's timeline, alerts (as counts), actions, approvals,
   deadline notices and root-cause labels, and build the report (runbooks/postmortem.py).
2. Store it on the incident, with a timeline line saying so. A second run (a redelivered
   event) stores the same report again: the latest draft wins.
3. Publish it as the markdown artifact `postmortem-<id>`.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError

from runbooks import postmortem
from runbooks.incidents import add_timeline
from runbooks.models import Incident, utcnow
from runbooks.postmortem import PostMortem
from runbooks.store import session_scope
from tasks import incident_store as store
from tasks.retry import BACKOFF, retry_when

ACTOR = "postmortem"

_retry = {
    "retries": 2,
    "retry_delay_seconds": BACKOFF[:2],
    "retry_condition_fn": retry_when(lambda e: isinstance(e, OperationalError)),
    "cache_policy": NO_CACHE,
}


class PostmortemRequest(BaseModel):
    incident_id: int = Field(description="The incident to write the post-mortem of.")


@flow(name="postmortem", log_prints=True)
def write_postmortem(request: PostmortemRequest) -> str:
    report = draft_postmortem(request.incident_id)
    record_postmortem(request.incident_id, report)
    publish_postmortem(report)
    return drafted_line(report)


# Steps -----------------------------------------------------------------------------------


@task(task_run_name="draft-postmortem-{incident_id}", **_retry)
def draft_postmortem(incident_id: int) -> PostMortem:
    with session_scope(store.db()) as s:
        incident, facts, labels = postmortem.gather(s, incident_id)
        return postmortem.build(incident, facts, labels, store.policy(), utcnow())


@task(task_run_name="record-postmortem-{incident_id}", **_retry)
def record_postmortem(incident_id: int, report: PostMortem) -> None:
    with session_scope(store.db()) as s:
        incident = s.get(Incident, incident_id)
        incident.postmortem = report.model_dump(mode="json")
        s.add(incident)
        add_timeline(s, incident_id, ACTOR, "postmortem", drafted_line(report))


@task(**_retry)
def publish_postmortem(report: PostMortem) -> None:
    create_markdown_artifact(
        key=f"postmortem-{report.incident_id}",
        markdown=report.to_markdown(),
        description=f"Post-mortem of incident {report.incident_id} ({report.summary.model})",
    )


def drafted_line(report: PostMortem) -> str:
    rc = report.root_cause.root_cause
    return (
        f"post-mortem drafted: root cause {rc}, {len(report.action_items)} action item(s), "
        f"artifact postmortem-{report.incident_id}"
    )
