"""Runbook step: close what the policy says is over (scheduled hourly, see prefect.yaml).

A resolved incident closes when a person accepts its post-mortem (`runbooks postmortem ID
--accept`), or, when nobody does, `lifecycle.close_after_days` after it resolved: this flow
is the second way. Each closing is a timeline line; a retried run closes nothing twice.
"""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError

from runbooks.incidents import close_stale
from runbooks.models import utcnow
from runbooks.store import session_scope
from tasks import incident_store as store
from tasks.retry import BACKOFF, retry_when


class CloseRequest(BaseModel):
    limit: int = Field(500, ge=1, description="Close at most this many in one run.")


@flow(name="close-resolved", log_prints=True)
def close_resolved(request: CloseRequest) -> list[int]:
    closed = close_stale_incidents(request.limit)
    print(f"closed {len(closed)} incident(s) resolved over the policy's days ago: {closed}")
    return closed


@task(
    retries=2,
    retry_delay_seconds=BACKOFF[:2],
    retry_condition_fn=retry_when(lambda e: isinstance(e, OperationalError)),
    cache_policy=NO_CACHE,
)
def close_stale_incidents(limit: int) -> list[int]:
    days = store.policy().lifecycle.close_after_days
    with session_scope(store.db()) as s:
        return close_stale(s, utcnow(), days, limit)
