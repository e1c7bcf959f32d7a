"""Closing and reopening by hand: the intake's API on a real port, and `runbooks incidents
ID --close / --reopen` against it, as a person runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlmodel import select

from deployments.intake import create_app
from deployments.local import free_port
from runbooks.incidents import transition
from runbooks.models import Incident, OutboxEvent, TimelineEvent
from runbooks.policy import load_policy
from runbooks.store import migrate, session_scope
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "lifecycle-test-token"


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    url = f"sqlite:///{tmp_path_factory.mktemp('lifecycle') / 'incidents.db'}"
    migrate(url)
    port = free_port()
    app = create_app(url, load_policy(), token=TOKEN)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, 0.05, "the intake to start")
    yield f"http://127.0.0.1:{port}", url
    server.should_exit = True
    thread.join(10)


def resolved_incident(db: str) -> int:
    with session_scope(db) as s:
        key = f"fraud-v3:{time.monotonic_ns()}"
        i = Incident(model="fraud-v3", title="F1 low", group_key=key, open_group_key=key)
        s.add(i)
        s.flush()
        transition(s, i, "resolved", "test", "recovered")
        return i.id  # type: ignore[return-value]


def post(base: str, path: str, body: object, token: str = TOKEN) -> httpx.Response:
    return httpx.post(
        f"{base}{path}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


def test_close_then_reopen_over_the_api_each_on_the_timeline_with_who(intake) -> None:  # type: ignore[no-untyped-def]
    base, db = intake
    i = resolved_incident(db)
    r = post(base, f"/api/v1/incidents/{i}/close", {"by": "alice", "why": "post-mortem done"})
    assert r.status_code == 200 and r.json()["changed"] is True
    assert r.json()["incident"]["status"] == "closed"
    again = post(base, f"/api/v1/incidents/{i}/close", {"by": "alice"})
    assert again.status_code == 200 and again.json()["changed"] is False

    r = post(base, f"/api/v1/incidents/{i}/reopen", {"by": "bob", "why": "F1 is down again"})
    assert r.status_code == 200 and r.json()["incident"]["status"] == "open"
    with session_scope(db) as s:
        lines = s.exec(
            select(TimelineEvent.actor, TimelineEvent.message).where(TimelineEvent.incident_id == i)
        ).all()
        opened = s.exec(select(OutboxEvent).where(OutboxEvent.event == "ml.incident.opened")).all()
    assert ("alice", "resolved -> closed: post-mortem done") in lines
    assert ("bob", "closed -> open: reopened by bob: F1 is down again") in lines
    assert [e.payload["reopened"] for e in opened if e.payload["incident_id"] == i] == [True]


def test_bad_requests_name_the_field_and_change_nothing(intake) -> None:  # type: ignore[no-untyped-def]
    base, db = intake
    i = resolved_incident(db)
    assert post(base, f"/api/v1/incidents/{i}/close", {}).json()["error"].startswith("by:")
    r = post(base, f"/api/v1/incidents/{i}/close", {"by": "a", "who": "b"})
    assert r.status_code == 422 and "unknown fields ['who']" in r.json()["error"]
    assert post(base, f"/api/v1/incidents/{i}/close", {"by": "a"}, token="wrong").status_code == 401
    assert post(base, "/api/v1/incidents/999999/close", {"by": "a"}).status_code == 404
    with session_scope(db) as s:
        assert s.get(Incident, i).status == "resolved"
        key = f"fraud-v3:{time.monotonic_ns()}"
        active = Incident(model="fraud-v3", title="x", group_key=key, open_group_key=key)
        s.add(active)
        s.flush()
        active_id = active.id
    r = post(base, f"/api/v1/incidents/{active_id}/close", {"by": "a"})
    assert r.status_code == 409 and "only a resolved incident can be closed" in r.json()["error"]


def test_runbooks_incidents_close_and_reopen_from_the_command_line(intake) -> None:  # type: ignore[no-untyped-def]
    base, db = intake
    i = resolved_incident(db)
    env = {**os.environ, "RUNBOOKS_INTAKE_URL": base, "RUNBOOKS_INTAKE_TOKEN": TOKEN}

    def runbooks(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "deployments.cli", "incidents", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = runbooks(str(i), "--close", "--by", "alice", "--why", "reviewed")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "resolved -> closed: reviewed"
    done = runbooks(str(i), "--reopen", "--by", "bob")
    assert done.returncode == 0 and "closed -> open: reopened by bob" in done.stdout
    missing = runbooks(str(i), "--close")
    assert missing.returncode == 2 and "--by NAME" in missing.stderr
    refused = runbooks(str(i), "--close", "--by", "alice")  # it is open now
    assert refused.returncode == 1 and "only a resolved incident can be closed" in refused.stderr


@pytest.mark.slow
def test_an_alert_of_a_resolved_group_reopens_it_and_triage_decides_again(stack: dict) -> None:
    """On the real stack: the refire reopens the incident and the served triage runs again
    on the second ml.incident.opened."""
    intake = stack["intake"]
    model = f"reopen-{time.monotonic_ns() % 100000}"
    alert = {
        "model": model,
        "alertname": "FeatureNullRateHigh",
        "metric": "null_rate",
        "feature": "amount",
        "value": 0.08,
        "severity": "P3",
    }

    def send(status: str, starts: str) -> int:
        r = httpx.post(
            f"{intake}/api/v1/alerts",
            json={**alert, "status": status, "startsAt": starts},
            timeout=30,
        )
        assert r.status_code in (200, 201, 202), r.text
        return r.json()["alerts"][0]["incident_id"]

    def view(i: int) -> dict:
        return httpx.get(f"{intake}/api/v1/incidents/{i}", timeout=30).json()

    def triaged_lines(i: int) -> list[str]:
        return [
            e["message"] for e in view(i)["timeline"] if e["message"].startswith("open -> triaged")
        ]

    first = send("firing", "2026-12-04T10:00:00Z")
    wait_for(lambda: triaged_lines(first), 120, 0.5, "the first triage")
    assert send("resolved", "2026-12-04T10:00:00Z") == first
    assert view(first)["status"] == "resolved"
    again = send("firing", "2026-12-04T11:00:00Z")
    assert again == first
    v = view(first)
    assert v["status"] == "open" and v["reopened_count"] == 1
    assert any(e["kind"] == "reopened" for e in v["timeline"])
    wait_for(lambda: len(triaged_lines(first)) == 2, 120, 0.5, "triage of the reopened incident")
