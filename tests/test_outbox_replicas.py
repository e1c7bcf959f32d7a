"""Several intake replicas on one PostgreSQL: each staged event reaches Prefect once, a
replica that dies mid-send leaves its events to another, and the watchdog sends a stalled
event again once, whichever replica looks."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa
from sqlmodel import select

from deployments.outbox import OutboxDeliverer
from runbooks.alerts import parse_generic
from runbooks.ingest import ingest
from runbooks.models import Incident, OutboxEvent, utcnow
from runbooks.policy import load_policy
from runbooks.store import get_engine, migrate, session_scope
from tests.helpers import wait_for


class FakePrefectEvents:
    """Prefect's `POST /api/events` as the outbox speaks it, counting each event id; the
    flow-run filters the watchdog asks answer "no runs", after `filter_delay` seconds."""

    def __init__(self, send_delay: float = 0.0, filter_delay: float = 0.0) -> None:
        self.ids: Counter[str] = Counter()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"] or 0)))
                if self.path == "/api/events":
                    time.sleep(send_delay)
                    with fake.lock:
                        fake.ids.update(e["id"] for e in body)
                    self.answer(204, None)
                else:  # /api/deployments/filter, /api/flow_runs/filter
                    time.sleep(filter_delay)
                    self.answer(200, [])

            def answer(self, status: int, body: object) -> None:
                raw = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.api = f"http://127.0.0.1:{self.server.server_port}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pg(pg_url: str) -> Iterator[str]:
    migrate(pg_url)
    yield pg_url
    with get_engine(pg_url).begin() as c:
        c.execute(sa.text("TRUNCATE incident, alert, timelineevent, outboxevent CASCADE"))


def stage(url: str, n: int) -> list[str]:
    with session_scope(url) as s:
        rows = [
            OutboxEvent(event="ml.incident.opened", resource={"prefect.resource.id": f"t.{i}"})
            for i in range(n)
        ]
        s.add_all(rows)
    return [r.id for r in rows]


def undelivered(url: str) -> int:
    with session_scope(url) as s:
        return len(s.exec(select(OutboxEvent).where(OutboxEvent.delivered_at == None)).all())  # noqa: E711


def test_two_replicas_deliver_each_event_exactly_once(pg: str) -> None:
    prefect = FakePrefectEvents(send_delay=0.02)
    replicas = [OutboxDeliverer(pg, prefect.api, {}, retry_seconds=0.05) for _ in range(2)]
    ids = stage(pg, 1000)
    try:
        for r in replicas:
            r.start()
        wait_for(lambda: undelivered(pg) == 0, 30, 0.1, "every event delivered")
    finally:
        for r in replicas:
            r.stop()
        prefect.close()
    assert set(prefect.ids) == set(ids)
    assert max(prefect.ids.values()) == 1, prefect.ids.most_common(3)
    assert sum(r.delivered for r in replicas) == 1000
    assert all(r.delivered for r in replicas), [r.delivered for r in replicas]  # both took part


def test_events_of_a_replica_that_died_mid_send_go_out_from_another_after_the_lease(
    db_url: str,
) -> None:
    """On SQLite too: an intake restarted after it died mid-send finds its events free
    again after the lease."""
    prefect = FakePrefectEvents()
    dead = OutboxDeliverer(db_url, prefect.api, {}, lease_seconds=1.5)
    live = OutboxDeliverer(db_url, prefect.api, {}, lease_seconds=1.5)
    ids = stage(db_url, 30)
    try:
        claimed = dead.claim()  # ... and it dies before sending them
        assert {e.id for e in claimed} == set(ids)
        assert live.deliver_due() is False
        assert not prefect.ids  # held by the dead replica's lease
        time.sleep(1.6)
        live.deliver_due()
        assert dead.settle(ids, True, None) == 0  # a late word from the dead one counts nothing
    finally:
        dead.stop()
        live.stop()
        prefect.close()
    assert Counter(prefect.ids) == Counter(ids)
    with session_scope(db_url) as s:
        rows = s.exec(select(OutboxEvent)).all()
    assert all(r.delivered_at and r.claimed_by is None and r.attempts == 1 for r in rows)


def test_the_watchdog_of_two_replicas_sends_a_stalled_event_again_once(pg: str) -> None:
    t = utcnow() - timedelta(seconds=300)
    alert = {"model": "fraud-v3", "alertname": "ModelF1Low", "metric": "f1_score", "value": 0.6}
    with session_scope(pg) as s:
        iid = ingest(s, parse_generic([alert], t), load_policy(), now=t).items[0].incident_id
    with session_scope(pg) as s:  # opened and delivered five minutes ago; no triage since
        incident = s.get(Incident, iid)
        incident.opened_at = t
        s.add(incident)
        for e in s.exec(select(OutboxEvent)):
            e.delivered_at = t + timedelta(seconds=1)
            s.add(e)
    # Prefect is slow to say there is no triage run: both replicas' passes overlap.
    prefect = FakePrefectEvents(filter_delay=0.5)
    replicas = [OutboxDeliverer(pg, prefect.api, {}, stall_seconds=60) for _ in range(2)]
    again: list[list[int]] = []
    threads = [
        threading.Thread(target=lambda r=r: again.append(r.watch_stalled())) for r in replicas
    ]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(10)
        for r in replicas:  # the next passes: the re-sent event is not yet answered
            r._last_watch = 0.0
            again.append(r.watch_stalled())
    finally:
        for r in replicas:
            r.stop()
        prefect.close()
    assert sorted(again, key=len) == [[], [], [], [iid]]
    with session_scope(pg) as s:
        opened = s.exec(select(OutboxEvent).where(OutboxEvent.event == "ml.incident.opened"))
        assert len([e for e in opened if e.payload["incident_id"] == iid]) == 2
