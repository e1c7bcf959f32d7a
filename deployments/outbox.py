"""Delivers staged Prefect events to the Prefect API, in order, until each is accepted.

The intake commits an alert and its event together; this thread sends the event with
`POST /api/events`. When Prefect is down the event waits, with backoff, and goes out when
Prefect is back: the alert is never lost and its runbook still starts.

Several intake replicas may share one PostgreSQL: each claims a batch before sending it
(`claim`), so an event goes out once, and a claim lapses after `lease_seconds` if its replica
dies mid-send. Batches of two replicas may reach Prefect out of order.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta

import httpx
import sqlalchemy as sa
from sqlalchemy import or_
from sqlmodel import Session, col, select

from runbooks.models import OutboxEvent, utcnow
from runbooks.store import session_scope
from runbooks.watchdog import restage_stalled

log = logging.getLogger("runbooks.outbox")
BATCH = 200
MAX_BACKOFF = 60.0
# How long a replica holds the events it is sending: past the send's 10 s timeout, so that
# only a replica that died (or hung) mid-send loses them to another.
LEASE_SECONDS = 30.0
WATCH_LOCK = 0x72756E62  # the watchdog's PostgreSQL advisory lock key ("runb")


def prefect_api() -> tuple[str, dict[str, str]]:
    """The Prefect API URL and auth headers from Prefect's own settings."""
    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise RuntimeError(
            "PREFECT_API_URL is not set; point it at your Prefect server, "
            "e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    key = PREFECT_API_KEY.value()
    return url.rstrip("/"), ({"Authorization": f"Bearer {key}"} if key else {})


def hold_watch(session: Session) -> bool:
    """Take the watchdog's turn for this transaction, or False when another replica's
    watchdog has it. Passes on one PostgreSQL then follow each other, and the next one
    sees what this one sent again (staged, not yet answered) and leaves it be."""
    if session.get_bind().dialect.name != "postgresql":
        return True  # SQLite: one intake process per file
    return bool(
        session.execute(
            # One lock per schema: stores side by side in one database do not wait on it.
            sa.text("SELECT pg_try_advisory_xact_lock(:key, hashtext(current_schema()))"),
            {"key": WATCH_LOCK},
        ).scalar_one()
    )


class OutboxDeliverer:
    def __init__(
        self,
        database_url: str,
        api_url: str,
        headers: dict[str, str],
        retry_seconds: float = 2.0,
        stall_seconds: float = 60.0,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.database_url = database_url
        self.lease_seconds = lease_seconds
        self.name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stall_seconds = stall_seconds
        self._last_watch = 0.0
        self.api_url = api_url
        self.retry_seconds = retry_seconds
        self._client = httpx.Client(headers=headers, timeout=10.0)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
        self.delivered = 0

    def start(self) -> None:
        self._thread.start()

    def poke(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.watch_stalled()
                more = self.deliver_due()
            except Exception:  # noqa: BLE001  the loop must outlive a bad moment of the DB
                log.exception("outbox pass failed; trying again")
                more = False
            if not more:
                self._wake.wait(timeout=self.retry_seconds)
                self._wake.clear()

    def watch_stalled(self) -> list[int]:
        """Every few seconds: an opened incident whose runbook never started gets its event
        again (a bounded number of times); the triage flow's claim makes a late duplicate
        run a no-op."""
        if time.monotonic() - self._last_watch < min(10.0, self.stall_seconds / 2):
            return []
        self._last_watch = time.monotonic()
        with session_scope(self.database_url) as s:
            if not hold_watch(s):
                return []
            again = restage_stalled(s, utcnow(), self.stall_seconds, has_run=self.triage_runs)
        if again:
            log.warning("no runbook started for incidents %s; event sent again", again)
        return again

    def triage_runs(self, incident_ids: list[int], since: datetime) -> set[int]:
        """Incidents that have a triage flow run in Prefect (any state) since `since`."""
        try:
            deps = self._client.post(
                f"{self.api_url}/deployments/filter",
                json={"deployments": {"name": {"any_": ["triage"]}}},
            ).json()
            body = {
                "flow_runs": {
                    "deployment_id": {"any_": [d["id"] for d in deps]},
                    "expected_start_time": {"after_": since.isoformat()},
                },
                "limit": 200,
            }
            seen: set[int] = set()
            offset = 0
            while True:
                runs = self._client.post(
                    f"{self.api_url}/flow_runs/filter", json={**body, "offset": offset}
                ).json()
                for r in runs:
                    request = (r.get("parameters") or {}).get("request") or {}
                    try:
                        seen.add(int(request.get("incident_id", -1)))
                    except (TypeError, ValueError):
                        continue
                if len(runs) < 200:
                    break
                offset += 200
        except (httpx.HTTPError, ValueError, TypeError):
            # Cannot tell: assume a run exists rather than start a second one.
            return set(incident_ids)
        return seen & set(incident_ids)

    def deliver_due(self) -> bool:
        """Send one batch of due events; True when more may be waiting."""
        due = self.claim()
        if not due:
            return False
        try:
            r = self._client.post(
                f"{self.api_url}/events", json=[e.as_prefect_event() for e in due]
            )
            ok = r.status_code < 300
            error = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
        except httpx.HTTPError as err:
            ok, error = False, f"{type(err).__name__}: {err}"
        settled = self.settle([e.id for e in due], ok, error)
        if ok:
            self.delivered += settled
        else:
            log.warning("Prefect did not take %d events (%s); will retry", len(due), error)
        return ok and len(due) == BATCH

    def claim(self) -> list[OutboxEvent]:
        """Take a batch of due events nobody holds, for `lease_seconds`, in one short
        transaction: a replica skips the rows another is claiming (SKIP LOCKED) and the
        ones another holds; a claim that lapses (its replica died mid-send) is free again.
        SQLite has one writer, so it takes the same path without the row locks."""
        now = utcnow()
        with session_scope(self.database_url) as s:
            due = s.exec(
                select(OutboxEvent)
                .where(
                    col(OutboxEvent.delivered_at).is_(None),
                    OutboxEvent.next_attempt_at <= now,
                    or_(
                        col(OutboxEvent.claimed_until).is_(None),
                        col(OutboxEvent.claimed_until) < now,
                    ),
                )
                .order_by(col(OutboxEvent.occurred), col(OutboxEvent.id))
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            ).all()
            for e in due:
                e.claimed_by = self.name
                e.claimed_until = now + timedelta(seconds=self.lease_seconds)
                s.add(e)
        return list(due)

    def settle(self, ids: list[str], ok: bool, error: str | None) -> int:
        """Record the send of events this replica still holds; one whose claim lapsed and
        went to another replica is that replica's to record. Returns how many."""
        now = utcnow()
        with session_scope(self.database_url) as s:
            mine = s.exec(
                select(OutboxEvent)
                .where(
                    col(OutboxEvent.id).in_(ids),
                    OutboxEvent.claimed_by == self.name,
                    col(OutboxEvent.delivered_at).is_(None),
                )
                .with_for_update()
            ).all()
            for e in mine:
                e.attempts += 1
                e.claimed_by = e.claimed_until = None
                if ok:
                    e.delivered_at = now
                else:
                    delay = min(MAX_BACKOFF, self.retry_seconds * 2 ** min(e.attempts - 1, 6))
                    e.next_attempt_at = now + timedelta(seconds=delay)
                    e.last_error = error
                s.add(e)
            return len(mine)
