"""The intake over HTTP: persist before answering, name bad input, never lose an alert."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from deployments.intake import create_app
from deployments.local import free_port
from deployments.outbox import OutboxDeliverer
from runbooks.models import Alert, OutboxEvent
from runbooks.policy import load_policy
from runbooks.store import session_scope
from tests.helpers import wait_for

FIXTURES = Path(__file__).parent / "fixtures" / "alertmanager"
TOKEN = "example-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(db_url: str):  # type: ignore[no-untyped-def]
    app = create_app(db_url, load_policy(), token=TOKEN, max_body_bytes=64 * 1024)
    with TestClient(app) as c:
        yield c


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_alert_is_committed_before_the_intake_answers(client: TestClient, db_url: str) -> None:
    r = client.post(
        "/api/v1/alerts/alertmanager", content=fixture("firing-f1-grouped.json"), headers=AUTH
    )
    assert r.status_code == 202
    with session_scope(db_url) as s:
        assert len(s.exec(select(Alert)).all()) == 2
    incident = client.get(f"/api/v1/incidents/{r.json()['incidents'][0]}", headers=AUTH).json()
    assert incident["status"] == "open" and len(incident["alerts"]) == 2
    assert incident["timeline"][0]["message"].startswith("opened by alert ModelF1Low")


@pytest.mark.parametrize(
    ("body", "headers", "status", "message"),
    [
        (b"{not json", AUTH, 400, "body is not valid JSON"),
        (b'{"version": "4", "status": "firing"}', AUTH, 422, "alerts: Field required"),
        (
            b'{"version": "4", "status": "firing", "alerts": [{"status": "firing", '
            b'"labels": {"model": "m"}, "startsAt": 5}]}',
            AUTH,
            422,
            "alerts.0.startsAt",
        ),
        (b"[]", AUTH, 422, "expected a JSON object"),
        (b"{}", {"Authorization": "Bearer wrong"}, 401, "bearer token"),
        (b"{}", {}, 401, "bearer token"),
        (b'{"x": "' + b"a" * 70_000 + b'"}', AUTH, 413, "over the limit"),
    ],
)
def test_bad_input_gets_4xx_naming_the_problem(
    client: TestClient, db_url: str, body: bytes, headers: dict, status: int, message: str
) -> None:
    r = client.post("/api/v1/alerts/alertmanager", content=body, headers=headers)
    assert r.status_code == status
    assert message in r.json()["error"]
    with session_scope(db_url) as s:
        assert s.exec(select(Alert)).all() == []


def test_generic_alert_and_wrong_types(client: TestClient) -> None:
    ok = client.post(
        "/api/v1/alerts",
        headers=AUTH,
        json={"model": "churn", "alertname": "NullSpike", "metric": "null_rate", "value": 0.2},
    )
    assert ok.status_code == 202
    bad = client.post(
        "/api/v1/alerts",
        headers=AUTH,
        json={"model": "churn", "alertname": "NullSpike", "value": "lots", "labels": []},
    )
    assert bad.status_code == 422
    assert "value" in bad.json()["error"] and "labels" in bad.json()["error"]


def test_manual_report_opens_an_incident_with_the_reporter(client: TestClient) -> None:
    r = client.post(
        "/api/v1/model-governance/credit-v2/incidents",
        headers=AUTH,
        json={
            "severity": "high",
            "type": "bias",
            "description": "approval rate fell for group B",
            "impact": "regulatory",
            "reportedBy": "dana",
        },
    )
    assert r.status_code == 201
    view = r.json()
    assert view["severity"] == "P2" and view["model"] == "credit-v2"
    assert view["timeline"][0]["actor"] == "dana"
    missing = client.post(
        "/api/v1/model-governance/credit-v2/incidents", headers=AUTH, json={"severity": "P1"}
    )
    assert missing.status_code == 422 and "reportedBy" in missing.json()["error"]


def test_incident_list_and_404(client: TestClient) -> None:
    client.post(
        "/api/v1/alerts/alertmanager", content=fixture("firing-f1-grouped.json"), headers=AUTH
    )
    listing = client.get("/api/v1/incidents?model=fraud-v3", headers=AUTH).json()
    assert listing["total"] == 1 and listing["items"][0]["model"] == "fraud-v3"
    assert client.get("/api/v1/incidents/999", headers=AUTH).status_code == 404
    assert client.get("/api/v1/incidents?limit=0", headers=AUTH).status_code == 400


def test_event_waits_in_outbox_while_prefect_is_down_then_is_delivered(
    db_url: str, stack: dict
) -> None:
    dead = OutboxDeliverer(db_url, f"http://127.0.0.1:{free_port()}/api", {}, retry_seconds=0.01)
    app = create_app(db_url, load_policy(), token=TOKEN)
    with TestClient(app) as c:
        r = c.post(
            "/api/v1/alerts/alertmanager",
            content=fixture("firing-feature-drift.json"),
            headers=AUTH,
        )
    assert r.status_code == 202
    assert dead.deliver_due() is False
    with session_scope(db_url) as s:
        event = s.exec(select(OutboxEvent)).one()
        assert event.delivered_at is None and event.attempts == 1
        assert "ConnectError" in event.last_error
        event.next_attempt_at = event.occurred  # due again now
        s.add(event)
        event_id = event.id
    dead.stop()

    live = OutboxDeliverer(db_url, stack["api"], {})
    live.deliver_due()
    live.stop()
    with session_scope(db_url) as s:
        assert s.get(OutboxEvent, event_id).delivered_at is not None

    def stored_in_prefect() -> bool:
        found = httpx.post(
            f"{stack['api']}/events/filter",
            json={
                "filter": {
                    "event": {"name": ["ml.incident.opened"]},
                    "any_resource": {"id": ["ml.model.fraud-v3"]},
                },
                "limit": 50,
            },
        ).json()
        return event_id in [e["id"] for e in found["events"]]

    # Prefect persists events in batches, a few seconds after it accepted them.
    wait_for(stored_in_prefect, timeout=30, what="the event in Prefect's event store")


def test_the_kill_switch_over_http_pauses_resumes_and_tells_open_incidents(client) -> None:  # type: ignore[no-untyped-def]
    opened = client.post(
        "/api/v1/alerts",
        headers=AUTH,
        json={"model": "ks-model", "alertname": "F1Low", "metric": "f1_score", "value": 0.4},
    )
    incident_id = opened.json()["incidents"][0]
    assert client.post("/api/v1/automation/pause", json={"by": "sre"}).status_code == 401
    no_why = client.post("/api/v1/automation/pause", headers=AUTH, json={"by": "sre"})
    assert no_why.status_code == 422 and "comment" in no_why.json()["error"]
    typo = client.post("/api/v1/automation/pause", headers=AUTH, json={"by": "sre", "modle": "x"})
    assert typo.status_code == 422 and "modle" in typo.json()["error"]

    paused = client.post(
        "/api/v1/automation/pause",
        headers=AUTH,
        json={"model": "ks-model", "by": "sre", "comment": "bad deploy pipeline"},
    )
    assert paused.status_code == 200
    assert paused.json()["message"] == "automation paused for ks-model by sre: bad deploy pipeline"
    status = client.get("/api/v1/automation", headers=AUTH).json()
    assert status["paused"] and status["items"][0]["scope"] == "ks-model"
    timeline = client.get(f"/api/v1/incidents/{incident_id}", headers=AUTH).json()["timeline"]
    assert any("automation paused for ks-model" in e["message"] for e in timeline)

    body = {"model": "ks-model", "by": "sre"}
    assert client.post("/api/v1/automation/resume", headers=AUTH, json=body).status_code == 200
    again = client.post("/api/v1/automation/resume", headers=AUTH, json=body)
    assert again.status_code == 409 and "not paused" in again.json()["error"]
    assert client.get("/api/v1/automation", headers=AUTH).json() == {"paused": False, "items": []}
