"""Acknowledging an incident from the command line and over HTTP: the first counts, a
second says whose did, an unknown or finished incident is refused with a reason; PagerDuty
(acknowledge on the incident's dedup_key) and the incident's Slack thread hear of it. Real
SQL on SQLite and PostgreSQL; Slack and PagerDuty are fakes on real ports."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from deployments.cli import main
from deployments.intake import create_app
from runbooks.incidents import transition
from runbooks.models import Incident, OutboxEvent
from runbooks.policy import load_policy
from runbooks.settings import get_settings
from runbooks.store import session_scope
from tests.fake_pagerduty import FakePagerDuty
from tests.fake_slack import FakeSlack

TOKEN = "ack-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def fakes() -> Iterator[tuple[FakeSlack, FakePagerDuty]]:
    slack, pd = FakeSlack().start(), FakePagerDuty()
    yield slack, pd
    slack.stop()
    pd.stop()


@pytest.fixture
def store(
    db_url: str, fakes: tuple[FakeSlack, FakePagerDuty], monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """This backend's store as the service's, P1 told in Slack and PagerDuty (the fakes)."""
    from tasks import incident_store, notifications

    slack, pd = fakes
    slack.reset()
    pd.reset()
    monkeypatch.setenv("RUNBOOKS_DATABASE_URL", db_url)
    monkeypatch.setenv("RUNBOOKS_SLACK_TOKEN", "xoxb-ack-test")
    monkeypatch.setenv("RUNBOOKS_SLACK_BASE_URL", slack.base_url)
    monkeypatch.setenv("RUNBOOKS_PAGERDUTY_ROUTING_KEY", "ack-test-routing-key")
    monkeypatch.setenv("RUNBOOKS_PAGERDUTY_URL", pd.events_url)
    get_settings.cache_clear()
    notifications.forget_secrets()
    policy = load_policy()
    policy.routing.channels = {"P1": ["#ml-incidents", "pagerduty"], "P2": [], "P3": []}
    monkeypatch.setattr(incident_store, "policy", lambda: policy)
    yield db_url
    monkeypatch.undo()
    get_settings.cache_clear()
    notifications.forget_secrets()


def new_incident(url: str, status: str = "triaged") -> int:
    key = f"fraud-v3:{uuid.uuid4().hex[:8]}"
    with session_scope(url) as s:
        i = Incident(
            model="fraud-v3",
            title="F1 below threshold",
            severity="P1",
            status=status,
            group_key=key,
            open_group_key=key,
        )
        s.add(i)
        s.flush()
        return i.id  # type: ignore[return-value]


def acked_events(url: str, incident_id: int) -> list[dict[str, Any]]:
    with session_scope(url) as s:
        rows = s.exec(select(OutboxEvent).where(OutboxEvent.event == "ml.incident.acknowledged"))
        return [r.payload for r in rows if r.payload["incident_id"] == incident_id]


def pagerduty_actions(pd: FakePagerDuty, incident_id: int) -> list[str]:
    return [
        e["event_action"]
        for e in pd.events()
        if e["dedup_key"] == f"ml-runbooks-incident-{incident_id}"
    ]


# -- runbooks ack ----------------------------------------------------------------------


def test_runbooks_ack_stops_the_clock_and_tells_pagerduty_and_slack(
    store: str, fakes: tuple[FakeSlack, FakePagerDuty], capsys: pytest.CaptureFixture[str]
) -> None:
    slack, pd = fakes
    i = new_incident(store)
    assert main(["ack", str(i), "--by", "alice"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"incident {i} acknowledged by alice at ")
    assert out.endswith("; told #ml-incidents, pagerduty")
    with session_scope(store) as s:
        incident = s.get(Incident, i)
        assert incident.acknowledged_by == "alice" and incident.acknowledged_at is not None
    assert pagerduty_actions(pd, i) == ["acknowledge"]
    [post] = slack.posts()
    assert "acknowledged by alice" in post.body["text"]
    [event] = acked_events(store, i)
    assert (event["by"], event["via"]) == ("alice", "runbooks ack")


def test_a_second_ack_says_who_was_first_and_when_and_changes_nothing(
    store: str, fakes: tuple[FakeSlack, FakePagerDuty], capsys: pytest.CaptureFixture[str]
) -> None:
    _, pd = fakes
    i = new_incident(store)
    assert main(["ack", str(i), "--by", "alice"]) == 0
    first = capsys.readouterr().out
    assert main(["ack", str(i), "--by", "bob"]) == 0
    second = capsys.readouterr().out.strip()
    when = first.split(" at ", 1)[1][:20]
    assert second == (f"incident {i} was already acknowledged by alice at {when}; nothing changed")
    assert pagerduty_actions(pd, i) == ["acknowledge"]
    assert len(acked_events(store, i)) == 1


def test_runbooks_ack_refuses_an_unknown_or_resolved_incident(
    store: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ack", "987654", "--by", "alice"]) == 1
    assert "no incident 987654" in capsys.readouterr().err
    i = new_incident(store)
    with session_scope(store) as s:
        transition(s, s.get(Incident, i), "resolved", "test", "recovered")
    assert main(["ack", str(i), "--by", "alice"]) == 1
    err = capsys.readouterr().err
    assert f"incident {i} is resolved" in err and "only an active incident" in err


# -- POST /api/v1/incidents/{id}/ack ------------------------------------------------------


@pytest.fixture
def client(store: str) -> Iterator[TestClient]:
    with TestClient(create_app(store, load_policy(), token=TOKEN)) as c:
        yield c


def test_api_ack_answers_the_incident_view_and_tells_pagerduty_after(
    client: TestClient, store: str, fakes: tuple[FakeSlack, FakePagerDuty]
) -> None:
    _, pd = fakes
    i = new_incident(store)
    t0 = time.monotonic()
    r = client.post(f"/api/v1/incidents/{i}/ack", json={"by": "alice"}, headers=AUTH)
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["id"] == i and view["acknowledged_by"] == "alice" and view["acknowledged_at"]
    assert view["message"].startswith(f"incident {i} acknowledged by alice")
    assert view["timeline"][-1]["message"] == "acknowledged by alice (api)"
    # The background send ran once the answer was out (TestClient waits for it).
    assert pagerduty_actions(pd, i) == ["acknowledge"]
    assert time.monotonic() - t0 < 10
    shown = client.get(f"/api/v1/incidents/{i}", headers=AUTH).json()
    assert (shown["acknowledged_by"], shown["acknowledged_at"]) == (
        "alice",
        view["acknowledged_at"],
    )

    again = client.post(f"/api/v1/incidents/{i}/ack", json={"by": "bob"}, headers=AUTH)
    assert again.status_code == 200
    assert again.json()["acknowledged_by"] == "alice"
    assert "already acknowledged by alice" in again.json()["message"]
    assert pagerduty_actions(pd, i) == ["acknowledge"]


@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        ({}, AUTH, 422, "by: say who acknowledges"),
        ({"by": "  "}, AUTH, 422, "by: say who acknowledges"),
        ({"by": 7}, AUTH, 422, "by: say who acknowledges"),
        ({"by": "alice", "when": "now"}, AUTH, 422, "unknown fields ['when']"),
        ({"by": "alice"}, {}, 401, "bearer token"),
    ],
)
def test_api_ack_refuses_a_bad_request_naming_the_field(
    client: TestClient, store: str, body: dict, headers: dict, status: int, says: str
) -> None:
    i = new_incident(store)
    r = client.post(f"/api/v1/incidents/{i}/ack", json=body, headers=headers)
    assert r.status_code == status
    assert says in r.json()["error"]
    with session_scope(store) as s:
        assert s.get(Incident, i).acknowledged_at is None


def test_api_ack_of_an_unknown_incident_is_404_and_of_a_resolved_one_409(
    client: TestClient, store: str
) -> None:
    r = client.post("/api/v1/incidents/987654/ack", json={"by": "alice"}, headers=AUTH)
    assert r.status_code == 404 and "no incident 987654" in r.json()["error"]
    i = new_incident(store)
    with session_scope(store) as s:
        transition(s, s.get(Incident, i), "resolved", "test", "recovered")
    r = client.post(f"/api/v1/incidents/{i}/ack", json={"by": "alice"}, headers=AUTH)
    assert r.status_code == 409 and f"incident {i} is resolved" in r.json()["error"]
