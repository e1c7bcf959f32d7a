"""Slack's buttons over Socket Mode, for an intake with no public URL: the intake on a real
port opens a real websocket to the fake Slack (apps.connections.open, then `hello`), each
envelope is acknowledged, and the press goes through the same path as the HTTP one."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from deployments.intake import create_app
from deployments.local import free_port
from runbooks.messages import button_value
from runbooks.models import Incident
from runbooks.settings import get_settings
from runbooks.store import migrate, session_scope
from tasks import incident_store as store
from tasks import notifications
from tests.fake_slack import FakeSlack
from tests.helpers import wait_for
from tests.test_slack_interactions import env, pending, policy, press, status_of, timeline

__all__ = ["env", "policy"]  # the fixtures, shared with the HTTP tests
APP_TOKEN = "xapp-1-A0FAKE-1234567890-abcdef0123456789"


def start_intake(policy) -> tuple[str, uvicorn.Server, threading.Thread]:  # type: ignore[no-untyped-def]
    migrate(store.db())
    port = free_port()
    app = create_app(store.db(), policy, slack_socket_mode=True)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20, 0.05, "the intake to start")
    return f"http://127.0.0.1:{port}", server, thread


@pytest.fixture
def socket_intake(env, policy, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RUNBOOKS_SLACK_APP_TOKEN", APP_TOKEN)
    get_settings.cache_clear()
    url, server, thread = start_intake(policy)
    yield url
    server.should_exit = True
    thread.join(10)


def health(url: str) -> dict[str, str]:
    return httpx.get(f"{url}/healthz", timeout=10).json()


def test_socket_mode_connects_and_an_acknowledge_press_acknowledges_once(
    socket_intake: str, slack: FakeSlack
) -> None:
    wait_for(
        lambda: health(socket_intake).get("slack_socket_mode") == "connected",
        20,
        0.1,
        "the Socket Mode connection",
    )
    opened = slack.posts("apps.connections.open")
    assert opened and opened[-1].token == APP_TOKEN  # the app token, not the bot token
    incident_id, _ = pending(["alice"])

    envelope = slack.press(press(slack, "ack", button_value(incident_id)))
    wait_for(lambda: envelope in slack.acks, 10, 0.05, "the envelope's acknowledgement")
    wait_for(
        lambda: "acknowledged by alice (slack)" in timeline(incident_id),
        10,
        0.05,
        "the acknowledgement on the timeline",
    )
    with session_scope(store.db()) as s:
        assert s.get(Incident, incident_id).acknowledged_by == "alice"
    wait_for(lambda: slack.responses, 10, 0.05, "the answer at the response_url")
    assert "acknowledged by alice" in slack.responses[0]["text"]

    # Slack sends an envelope again when it thinks the ack was lost: nothing happens twice,
    # and the person, who already has an answer, is not told again.
    slack.redeliver(envelope)
    wait_for(lambda: slack.acks.count(envelope) == 2, 10, 0.05, "the second ack")
    time.sleep(1.0)  # the press is handled after the ack; give a second handling its time
    assert len(slack.responses) == 1
    assert timeline(incident_id).count("acknowledged by alice (slack)") == 1


def test_over_socket_mode_the_allow_list_holds_and_a_refusal_is_on_the_timeline(
    socket_intake: str, slack: FakeSlack
) -> None:
    wait_for(
        lambda: health(socket_intake).get("slack_socket_mode") == "connected",
        20,
        0.1,
        "the Socket Mode connection",
    )
    incident_id, approval_id = pending(["alice", "olivia"])
    envelope = slack.press(
        press(slack, "approve", button_value(incident_id, approval_id), user="U0MALLORY")
    )
    wait_for(lambda: timeline(incident_id), 10, 0.05, "the refusal on the timeline")
    assert envelope in slack.acks
    [line] = timeline(incident_id)
    assert line.startswith("slack refused: mallory may not approve") and "alice, olivia" in line
    assert status_of(approval_id) == "pending"


def test_a_bot_token_given_as_the_app_token_is_a_clear_error_and_the_intake_still_answers(
    env, policy, slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RUNBOOKS_SLACK_APP_TOKEN", "xoxb-wrong-kind-of-token")
    get_settings.cache_clear()
    notifications.forget_secrets()
    url, server, thread = start_intake(policy)
    try:
        said = wait_for(
            lambda: (
                health(url).get("slack_socket_mode", "").startswith("Slack Socket Mode")
                and health(url)
            ),
            20,
            0.1,
            "the Socket Mode error",
        )
        assert said["status"] == "ok"  # HTTP keeps working without Slack
        assert "not_allowed_token_type" in said["slack_socket_mode"]
        assert "RUNBOOKS_SLACK_APP_TOKEN" in said["slack_socket_mode"]
        assert "xoxb-wrong" not in said["slack_socket_mode"]
    finally:
        server.should_exit = True
        thread.join(10)
