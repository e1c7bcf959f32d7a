"""Slack's buttons over real HTTP: the intake on a real port, requests signed as Slack signs
them, the approval answered through the same path as `runbooks approve`, and a real paused
flow run on the session's Prefect server resumed by a button."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn
from sqlmodel import col, select

from deployments.intake import create_app
from deployments.local import free_port
from flows.containment import ContainmentRequest
from runbooks.messages import button_value
from runbooks.models import Approval, Incident, IncidentNotice, TimelineEvent
from runbooks.policy import Person, load_policy
from runbooks.settings import get_settings
from runbooks.store import migrate, session_scope
from tasks import incident_store as store
from tasks import notifications
from tests import test_runbook_outcomes as outcomes
from tests.fake_slack import FakeSlack
from tests.helpers import wait_for
from tests.test_containment import open_incident
from tests.test_runbook_outcomes import approval_row, run_in_thread, selector, wait_outcome

# The runbook outcomes' fixtures: a model of the test's own on the Kubernetes emulator.
model, quality = outcomes.model, outcomes.quality
SIGNING = "8f742231b10e8888abcd99yyyzzz85a5"
PEOPLE = {
    "alice": Person(slack="U0ALICE", email="alice@example.com"),
    "olivia": Person(slack="U0OLIVIA"),
    "mallory": Person(slack="U0MALLORY"),
}


@pytest.fixture(scope="module")
def policy():  # type: ignore[no-untyped-def]
    p = load_policy()
    p.people = dict(PEOPLE)
    return p


@pytest.fixture(scope="module")
def intake(policy) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The intake app on a real port, with the policy's people (Slack ids)."""
    migrate(store.db())
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(store.db(), policy), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, 0.05, "the intake to start")
    yield f"http://127.0.0.1:{port}/api/v1/slack/interactions"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def env(slack: FakeSlack, policy, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(store, "policy", lambda: policy)
    monkeypatch.setenv("RUNBOOKS_SLACK_SIGNING_SECRET", SIGNING)
    monkeypatch.setenv("RUNBOOKS_SLACK_TOKEN", "xoxb-test-token")
    monkeypatch.setenv("RUNBOOKS_SLACK_BASE_URL", slack.base_url)
    get_settings.cache_clear()
    notifications.forget_secrets()
    slack.reset()
    yield
    monkeypatch.undo()
    get_settings.cache_clear()
    notifications.forget_secrets()


def signed(
    payload: dict[str, Any], secret: str = SIGNING, at: float | None = None
) -> tuple[bytes, dict[str, str]]:
    body = urlencode({"payload": json.dumps(payload)}).encode()
    ts = str(int(time.time() if at is None else at))
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body.decode()}".encode(), hashlib.sha256)
    return body, {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": f"v0={digest.hexdigest()}",
    }


def press(slack: FakeSlack, action_id: str, value: str, user: str = "U0ALICE") -> dict[str, Any]:
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower()},
        "actions": [{"action_id": action_id, "value": value, "type": "button"}],
        "response_url": f"{slack.response_url}T0/1/abc",
        "container": {"type": "message"},
    }


def pending(approvers: list[str]) -> tuple[int, int]:
    """An incident waiting for approval by `approvers` (no run: nothing may resume it)."""
    with session_scope(store.db()) as s:
        i = Incident(
            model="fraud-v3",
            title="F1 low",
            severity="P2",
            status="triaged",
            group_key=f"g-{time.monotonic_ns()}",
        )
        s.add(i)
        s.flush()
        a = Approval(
            incident_id=i.id,
            action="route_to_previous_version",
            approvers=approvers,
            flow_run_id="00000000-0000-0000-0000-000000000000",
        )
        s.add(a)
        s.flush()
        return i.id, a.id


def timeline(incident_id: int) -> list[str]:
    with session_scope(store.db()) as s:
        q = select(TimelineEvent).where(TimelineEvent.incident_id == incident_id)
        return [t.message for t in s.exec(q.order_by(col(TimelineEvent.id)))]


def status_of(approval_id: int) -> str:
    with session_scope(store.db()) as s:
        return s.get(Approval, approval_id).status


def test_unsigned_wrongly_signed_and_stale_requests_get_401_and_change_nothing(
    env, slack: FakeSlack, intake: str
) -> None:  # type: ignore[no-untyped-def]
    incident_id, approval_id = pending(["alice"])
    payload = press(slack, "approve", button_value(incident_id, approval_id))
    body, headers = signed(payload)
    attempts = {
        "unsigned": (body, {"Content-Type": headers["Content-Type"]}),
        "wrong secret": signed(payload, secret="not-the-signing-secret"),
        "stale": signed(payload, at=time.time() - 301),
        "body changed after signing": (body.replace(b"approve", b"reject"), headers),
    }
    for what, (b, h) in attempts.items():
        r = httpx.post(intake, content=b, headers=h, timeout=10)
        assert r.status_code == 401, what
        assert "RUNBOOKS_SLACK_SIGNING_SECRET" in r.json()["error"]
    assert status_of(approval_id) == "pending"
    assert timeline(incident_id) == []
    with session_scope(store.db()) as s:
        assert (
            s.exec(select(IncidentNotice).where(IncidentNotice.incident_id == incident_id)).all()
            == []
        )


def test_without_a_signing_secret_every_request_is_refused_naming_the_setting(
    env, slack: FakeSlack, intake: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RUNBOOKS_SLACK_SIGNING_SECRET", "")
    get_settings.cache_clear()
    incident_id, approval_id = pending(["alice"])
    body, headers = signed(press(slack, "approve", button_value(incident_id, approval_id)))
    r = httpx.post(intake, content=body, headers=headers, timeout=10)
    assert r.status_code == 401
    assert "set RUNBOOKS_SLACK_SIGNING_SECRET" in r.json()["error"]
    assert status_of(approval_id) == "pending"


def test_an_unknown_slack_user_is_told_who_they_are_not_and_it_is_on_the_timeline(
    env, slack: FakeSlack, intake: str
) -> None:  # type: ignore[no-untyped-def]
    incident_id, approval_id = pending(["alice"])
    body, headers = signed(
        press(slack, "approve", button_value(incident_id, approval_id), user="U0STRANGER")
    )
    r = httpx.post(intake, content=body, headers=headers, timeout=10)
    assert r.status_code == 200  # Slack would retry anything else
    answer = r.json()
    assert answer["response_type"] == "ephemeral"
    assert "none of the people in ML Runbooks' policy" in answer["text"]
    assert "people.<your name>.slack: U0STRANGER" in answer["text"]
    [line] = timeline(incident_id)
    assert "Slack user U0STRANGER (u0stranger) is none of the policy's people" in line
    assert status_of(approval_id) == "pending"
    wait_for(lambda: slack.responses, 5, 0.05, "the answer at the response_url")
    assert slack.responses[0]["text"] == answer["text"]


def test_a_person_not_on_the_allow_list_is_refused_and_the_refusal_is_on_the_timeline(
    env, slack: FakeSlack, intake: str
) -> None:  # type: ignore[no-untyped-def]
    incident_id, approval_id = pending(["alice", "olivia"])
    body, headers = signed(
        press(slack, "approve", button_value(incident_id, approval_id), user="U0MALLORY")
    )
    r = httpx.post(intake, content=body, headers=headers, timeout=10)
    assert r.status_code == 200
    assert "mallory may not approve actions on fraud-v3 at P2" in r.json()["text"]
    [line] = timeline(incident_id)
    assert line.startswith("slack refused: mallory may not approve") and "alice, olivia" in line
    assert status_of(approval_id) == "pending"


def test_the_acknowledge_button_acknowledges_once_and_tells_the_thread(
    env, slack: FakeSlack, intake: str
) -> None:  # type: ignore[no-untyped-def]
    incident_id, _ = pending(["alice"])
    first = signed(press(slack, "ack", button_value(incident_id)))
    r = httpx.post(intake, content=first[0], headers=first[1], timeout=10)
    assert r.status_code == 200 and "acknowledged by alice" in r.json()["text"]
    with session_scope(store.db()) as s:
        assert s.get(Incident, incident_id).acknowledged_by == "alice"
    assert "acknowledged by alice (slack)" in timeline(incident_id)
    wait_for(lambda: slack.posts(), 10, 0.05, "the acknowledgement in Slack")
    assert "acknowledged by alice" in slack.posts()[0].body["text"]

    # Olivia presses it a second later: a new request, and nothing more to acknowledge.
    second = signed(
        press(slack, "ack", button_value(incident_id), user="U0OLIVIA"), at=time.time() + 1
    )
    r = httpx.post(intake, content=second[0], headers=second[1], timeout=10)
    assert "already acknowledged by alice" in r.json()["text"]


@pytest.mark.slow
def test_approve_in_slack_resumes_the_paused_run_and_the_message_shows_who_decided(
    env, slack: FakeSlack, intake: str, model, kube, stack
) -> None:  # type: ignore[no-untyped-def]
    name, policy = model
    policy.people = dict(PEOPLE)
    incident_id = open_incident(name, severity="P2")
    box = run_in_thread(ContainmentRequest(incident_id=incident_id))

    def approval_message() -> dict[str, Any] | None:
        for call in slack.posts():
            for block in call.body.get("blocks") or []:
                if block["type"] == "actions" and any(
                    e["action_id"] == "approve" for e in block["elements"]
                ):
                    return call.body
        return None

    posted = wait_for(approval_message, 60, what="the approval message with its buttons")
    assert "<@U0OLIVIA>, <@U0ALICE>" in json.dumps(posted["blocks"])  # who may approve
    value = next(
        e["value"]
        for b in posted["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == "approve"
    )
    body, headers = signed(press(slack, "approve", value))
    started = time.perf_counter()
    r = httpx.post(intake, content=body, headers=headers, timeout=10)
    answered = time.perf_counter() - started
    assert r.status_code == 200 and "Approving route_to_previous_version" in r.json()["text"]
    assert answered < 3, f"Slack wants an answer within 3 s; took {answered:.2f} s"

    assert wait_outcome(box) == "resolved"
    assert selector(kube, name) == "v1"
    row = approval_row(incident_id)
    assert (row.status, row.decided_by, row.comment) == ("approved", "alice", "via Slack")
    # The approval message now says who decided, in place.
    [update] = wait_for(lambda: slack.posts("chat.update"), 10, what="the chat.update")
    assert update.body["ts"] in slack.messages[update.body["channel"]]
    assert "approved" in update.body["text"] and "<@U0ALICE>" in json.dumps(update.body["blocks"])

    # The same signed request again decides nothing twice.
    again = httpx.post(intake, content=body, headers=headers, timeout=10)
    assert again.status_code == 200 and "already received" in again.json()["text"]
    decided = [m for m in timeline(incident_id) if "approved by alice" in m]
    assert len(decided) == 1, decided
    print(f"Slack interaction answered in {answered * 1000:.0f} ms")
