"""Who may call the intake and how often (deployments/intake_guard.py): scoped tokens,
the answers that name the header, the scope or the setting, the token bucket on a fake
clock, and no token in the intake's logs."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from deployments.intake import create_app
from deployments.intake_guard import TokenBuckets, scope_of
from runbooks.policy import load_policy

ALL, ALERT, READ, ACT = "tok-all-1", "tok-alert-2", "tok-read-3", "tok-act-4"
ALERT_POST = {"model": "fraud-v3", "alertname": "ModelF1Low"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(tmp_path):  # type: ignore[no-untyped-def]
    app = create_app(
        f"sqlite:///{tmp_path / 'i.db'}",
        load_policy(),
        token=ALL,
        alert_token=ALERT,
        read_token=READ,
        act_token=ACT,
    )
    with TestClient(app) as c:
        yield c


def test_each_route_needs_the_scope_of_what_it_does() -> None:
    assert scope_of("POST", "/api/v1/alerts/alertmanager") == "alert"
    assert scope_of("POST", "/api/v1/model-governance/m/incidents") == "alert"
    assert scope_of("GET", "/api/v1/incidents/3/postmortem") == "read"
    acts = ["/api/v1/silences", "/api/v1/automation/pause", "/api/v1/incidents/3/ack"]
    acts += ["/api/v1/incidents/3/labels", "/api/v1/incidents/3/postmortem/accept"]
    for path in acts:
        assert scope_of("POST", path) == "act", path
    assert scope_of("DELETE", "/api/v1/silences/x") == "act"
    assert scope_of("POST", "/api/v1/slack/interactions") is None  # Slack signs its own
    assert scope_of("GET", "/healthz") is None
    assert scope_of("GET", "/api/v2/anything") == "read"  # unknown paths are not open


def test_a_token_of_one_scope_is_refused_elsewhere_with_403_naming_the_scope(client) -> None:  # type: ignore[no-untyped-def]
    assert client.post("/api/v1/alerts", json=ALERT_POST, headers=bearer(ALERT)).status_code == 202
    assert client.get("/api/v1/incidents", headers=bearer(READ)).status_code == 200
    pause = {"by": "alice", "comment": "migration"}
    assert (
        client.post("/api/v1/automation/pause", json=pause, headers=bearer(ACT)).status_code == 200
    )
    r = client.get("/api/v1/incidents", headers=bearer(ALERT))
    assert r.status_code == 403
    assert "read scope (RUNBOOKS_INTAKE_READ_TOKEN or RUNBOOKS_INTAKE_TOKEN)" in r.json()["error"]
    r = client.post("/api/v1/silences", json={}, headers=bearer(READ))
    assert r.status_code == 403 and "RUNBOOKS_INTAKE_ACT_TOKEN" in r.json()["error"]
    r = client.post("/api/v1/alerts", json=ALERT_POST, headers=bearer(ACT))
    assert r.status_code == 403 and "RUNBOOKS_INTAKE_ALERT_TOKEN" in r.json()["error"]
    # RUNBOOKS_INTAKE_TOKEN (what the CLI sends) does everything, as before.
    assert client.get("/api/v1/automation", headers=bearer(ALL)).json()["paused"] is True
    resume = {"by": "alice"}
    assert (
        client.post("/api/v1/automation/resume", json=resume, headers=bearer(ALL)).status_code
        == 200
    )


def test_no_token_or_a_wrong_one_is_a_401_naming_the_header(client) -> None:  # type: ignore[no-untyped-def]
    for headers in (
        {},
        bearer("nope"),
        {"Authorization": ALL},
        {"Authorization": "Bearer \xe9".encode("latin-1")},
    ):
        r = client.get("/api/v1/incidents/1", headers=headers)
        assert r.status_code == 401, headers
        assert "'Authorization: Bearer <token>'" in r.json()["error"]
        assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/healthz").status_code == 200


def test_without_any_token_the_intake_stays_open_for_local_use(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with TestClient(create_app(f"sqlite:///{tmp_path / 'i.db'}", load_policy())) as c:
        assert c.post("/api/v1/alerts", json=ALERT_POST).status_code == 202
        assert c.get("/api/v1/incidents").json()["total"] == 1


def test_the_bucket_refills_at_its_rate_on_the_clock() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate=2.0, burst=3, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0, 0, 0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0  # another client has its own bucket
    now[0] = 0.5
    assert buckets.take("a") == 0
    assert buckets.take("a") > 0


def test_past_its_burst_a_client_gets_429_with_retry_after_naming_the_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(
        f"sqlite:///{tmp_path / 'i.db'}", load_policy(), token=ALL, read_token=READ,
        rate_per_second=0.001, rate_burst=3,
    )  # fmt: skip
    with TestClient(app) as c:
        codes = [c.get("/api/v1/incidents", headers=bearer(ALL)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.get("/api/v1/incidents", headers=bearer(ALL))
        assert int(r.headers["retry-after"]) >= 1
        assert "RUNBOOKS_INTAKE_RATE_PER_SECOND" in r.json()["error"]
        assert "RUNBOOKS_INTAKE_RATE_BURST" in r.json()["error"]
        # Another token is another client; /healthz is never limited.
        assert c.get("/api/v1/incidents", headers=bearer(READ)).status_code == 200
        assert all(c.get("/healthz").status_code == 200 for _ in range(5))
        # Wrong tokens spend the address's bucket: guessing is limited too.
        guesses = [
            c.get("/api/v1/incidents", headers=bearer(f"g{i}")).status_code for i in range(5)
        ]
        assert guesses[:3] == [401, 401, 401] and guesses[3:] == [429, 429]


def test_no_token_reaches_the_intakes_logs_or_answers(client, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    answers = [
        client.post("/api/v1/alerts", json=ALERT_POST, headers=bearer(ALERT)),
        client.get("/api/v1/incidents/1", headers=bearer(READ)),
        client.get("/api/v1/incidents", headers=bearer(ACT)),
        client.post("/api/v1/incidents/1/ack", json={"by": "alice"}, headers=bearer(ALERT)),
        client.post("/api/v1/incidents/1/close", json={"by": "a"}, headers=bearer(ACT)),
        client.get("/api/v1/incidents/1", headers=bearer(ALL + "x")),
    ]
    logged = " ".join(r.getMessage() for r in caplog.records)
    shown = " ".join(a.text for a in answers)
    for token in (ALL, ALERT, READ, ACT):
        assert token not in logged and token not in shown
