"""Prefect's events API: send an event the store just staged, without waiting for the
intake's outbox pass.

The outbox (deployments/outbox.py) is the durable path: every staged event goes out from
there, in order, whatever fails. A flow that stages an event which starts the next runbook
sends it at once as well, because the outbox looks for new rows only every couple of
seconds when nothing pokes it, and that wait sat between a triage decision and its
rollback. Sending twice is harmless: the event id is the same and the runbook claims its
decision.
"""

from __future__ import annotations

import logging
import os
import threading

import httpx
from sqlalchemy import update as sa_update

from runbooks.models import OutboxEvent, utcnow
from runbooks.store import session_scope

log = logging.getLogger(__name__)
TIMEOUT = httpx.Timeout(5.0, connect=2.0)
_clients: dict[int, httpx.Client] = {}
_clients_lock = threading.Lock()


def _client() -> httpx.Client:
    """One pooled client per process: runs on threads of `runbooks serve` share its
    connection instead of each building a client (its TLS context alone took ~40 ms)."""
    pid = os.getpid()  # a forked run must not share its parent's sockets
    with _clients_lock:
        if pid not in _clients:
            _clients[pid] = httpx.Client(timeout=TIMEOUT)
        return _clients[pid]


def publish_now(database_url: str, event_ids: list[str]) -> int:
    """Send these staged events; mark the ones Prefect accepted delivered. Returns how many
    went out; a failure leaves them to the outbox."""
    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api or not event_ids:
        return 0
    with session_scope(database_url) as s:
        rows = [s.get(OutboxEvent, i) for i in event_ids]
        body = [r.as_prefect_event() for r in rows if r is not None and r.delivered_at is None]
    if not body:
        return 0
    key = PREFECT_API_KEY.value()
    try:
        r = _client().post(
            f"{api.rstrip('/')}/events",
            json=body,
            headers={"Authorization": f"Bearer {key}"} if key else {},
        )
        r.raise_for_status()
    except httpx.HTTPError as err:
        log.warning("event not sent now (%s); the intake's outbox sends it", err)
        return 0
    with session_scope(database_url) as s:
        s.execute(
            sa_update(OutboxEvent)
            .where(OutboxEvent.id.in_([e["id"] for e in body]), OutboxEvent.delivered_at.is_(None))
            .values(delivered_at=utcnow())
        )
    return len(body)
