"""Backpressure: an intake with more alert posts than it can take answers 503 and
Retry-After at once, keeps answering /healthz and reads, and loses nothing it acknowledged."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlmodel import select

from deployments import intake
from deployments.intake import create_app
from deployments.local import free_port
from runbooks.models import Alert
from runbooks.policy import load_policy
from runbooks.store import migrate, session_scope
from tests.helpers import wait_for

LIMIT = 4
SLOW = 2.0  # seconds each store call takes: the writer is slower than the senders


def test_posts_past_the_limit_get_503_at_once_and_nothing_acknowledged_is_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = f"sqlite:///{tmp_path / 'store.db'}"
    migrate(db)
    real = intake.store_alerts

    def slow_store(*args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(SLOW)
        return real(*args, **kwargs)

    monkeypatch.setattr(intake, "store_alerts", slow_store)
    port = free_port()
    app = create_app(db, load_policy(), max_pending=LIMIT)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, 0.05, "the intake to start")
    url = f"http://127.0.0.1:{port}"

    def post(i: int) -> tuple[int, httpx.Response, float]:
        body = {"model": f"m-{i % 3}", "alertname": "FeatureDrift", "metric": "psi", "value": 0.4}
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/api/v1/alerts", json={**body, "labels": {"n": str(i)}}, timeout=30)
        return i, r, time.perf_counter() - t0

    try:
        with ThreadPoolExecutor(3 * LIMIT) as pool:
            posts = [pool.submit(post, i) for i in range(3 * LIMIT)]
            time.sleep(0.5)  # the posts in flight are all waiting for the slow writer now
            t0 = time.perf_counter()
            health = httpx.get(f"{url}/healthz", timeout=5)
            read = httpx.get(f"{url}/api/v1/incidents", timeout=5)
            read_seconds = time.perf_counter() - t0
            results = [p.result() for p in posts]
        refused = [(i, r, s) for i, r, s in results if r.status_code == 503]
        taken = [i for i, r, _ in results if r.status_code == 202]

        assert health.status_code == 200 and read.status_code == 200
        assert read_seconds < 1.0, f"/healthz and a read took {read_seconds:.2f} s under load"
        assert len(taken) == LIMIT and len(refused) == 2 * LIMIT, [r for _, r, _ in results]
        for _, r, seconds in refused:
            assert seconds < 1.0, f"a refusal took {seconds:.2f} s"
            assert 1 <= int(r.headers["retry-after"]) <= 5
            assert "RUNBOOKS_INTAKE_MAX_PENDING" in r.json()["error"]
        assert stored(db) == set(taken)  # acknowledged: stored; refused: not

        # The senders retry after Retry-After, with the load gone: every alert is stored.
        monkeypatch.setattr(intake, "store_alerts", real)
        again = [post(i) for i, _, _ in refused]
        assert all(r.status_code == 202 for _, r, _ in again)
        assert stored(db) == set(range(3 * LIMIT))
    finally:
        server.should_exit = True
        thread.join(10)


def stored(db: str) -> set[int]:
    with session_scope(db) as s:
        return {int(a.labels["n"]) for a in s.exec(select(Alert))}
