"""Telling people over real HTTP and SMTP: a Slack Web API that answers as Slack does, a
PagerDuty Events v2 endpoint, a webhook receiver and aiosmtpd, all on 127.0.0.1."""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlmodel import col, select

from deployments.local import free_port
from runbooks.models import Approval, Incident, Notification, TimelineEvent, utcnow
from runbooks.policy import Person, load_policy
from runbooks.settings import get_settings
from runbooks.store import migrate, session_scope
from tasks import incident_store as store
from tasks import notifications
from tests.fake_pagerduty import FakePagerDuty, Recorder
from tests.fake_slack import FakeSlack

TOKEN = "xoxb-1234-5678-SLACKTOKENSECRET"
ROUTING_KEY = "R0UTINGKEYSECRET0000000000000000"
WEBHOOK_KEY = "webhook-hmac-key-secret"


class Inbox:
    """aiosmtpd's handler: keeps each message; `fail` answers the next ones with 451."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []
        self.fail = 0

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        if self.fail:
            self.fail -= 1
            return "451 4.3.0 try again later"
        self.messages.append((list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Any]]:
    slack, pd, hook, inbox = FakeSlack().start(), FakePagerDuty(), Recorder(), Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    yield {"slack": slack, "pd": pd, "hook": hook, "inbox": inbox, "smtp_port": smtp.port}
    smtp.stop()
    for s in (slack, pd, hook):
        s.stop()


@pytest.fixture
def env(servers, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Every channel configured and pointed at the local servers; a policy with people."""
    for name, value in {
        "RUNBOOKS_SLACK_TOKEN": TOKEN,
        "RUNBOOKS_SLACK_BASE_URL": servers["slack"].base_url,
        "RUNBOOKS_PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
        "RUNBOOKS_PAGERDUTY_URL": servers["pd"].events_url,
        "RUNBOOKS_SMTP_HOST": "127.0.0.1",
        "RUNBOOKS_SMTP_PORT": str(servers["smtp_port"]),
        "RUNBOOKS_SMTP_FROM": "runbooks@example.com",
        "RUNBOOKS_WEBHOOK_SECRET": WEBHOOK_KEY,
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    notifications.forget_secrets()
    policy = load_policy()
    policy.people = {
        "alice": Person(slack="U0ALICE", email="alice@example.com"),
        "bob": Person(slack="U0BOB", email="bob@example.com"),
    }
    policy.routing.channels = {"P1": ["#ml-incidents"], "P2": ["#ml-incidents"], "P3": []}
    policy.notifications.attempts = 3
    policy.notifications.backoff_seconds = 0.1
    policy.notifications.email_to = ["ml-team@example.com"]
    policy.notifications.webhook_url = f"{servers['hook'].url}/hook"
    monkeypatch.setattr(store, "policy", lambda: policy)
    for s in ("slack", "pd", "hook"):
        servers[s].reset()
    servers["inbox"].messages.clear()
    servers["inbox"].fail = 0
    migrate(store.db())
    yield policy
    monkeypatch.undo()
    get_settings.cache_clear()
    notifications.forget_secrets()


def new_incident(severity: str = "P1", assignee: str | None = "alice") -> int:
    with session_scope(store.db()) as s:
        i = Incident(
            model="fraud-v3",
            title="F1 below threshold",
            description="f1_score 0.62 < 0.70",
            severity=severity,
            status="triaged",
            assignee=assignee,
            group_key=f"g-{time.monotonic_ns()}",
        )
        s.add(i)
        s.flush()
        return i.id


def timeline(incident_id: int, kind: str | None = None) -> list[str]:
    with session_scope(store.db()) as s:
        q = select(TimelineEvent).where(TimelineEvent.incident_id == incident_id)
        if kind:
            q = q.where(TimelineEvent.kind == kind)
        return [t.message for t in s.exec(q.order_by(col(TimelineEvent.id)))]


def rows(incident_id: int) -> list[Notification]:
    with session_scope(store.db()) as s:
        q = select(Notification).where(Notification.incident_id == incident_id)
        return list(s.exec(q.order_by(col(Notification.id))))


# -- Slack -----------------------------------------------------------------------------


def test_first_message_opens_the_thread_and_every_later_one_replies_in_it(env, servers) -> None:  # type: ignore[no-untyped-def]
    slack = servers["slack"]
    incident_id = new_incident()
    [opened] = notifications.send(incident_id, "opened")
    notifications.send(incident_id, "update", people=["bob"], data={"message": "rolled back"})
    notifications.send(incident_id, "resolved", data={"root_cause": "bad release"})

    first, update, resolved = slack.posts()
    assert "thread_ts" not in first.body and first.token == TOKEN
    assert first.body["channel"] == "#ml-incidents"
    assert opened.status == "sent" and opened.address == FakeSlack.channel_id("#ml-incidents")
    # Later messages reply in the thread, to the channel's id Slack answered with.
    assert update.body["thread_ts"] == resolved.body["thread_ts"] == opened.external_id
    assert update.body["channel"] == opened.address
    assert "<@U0BOB>" in update.body["text"]  # people are mentioned by their Slack ids
    assert resolved.body["reply_broadcast"] is True and not update.body["reply_broadcast"]
    assert [r.thread_id for r in rows(incident_id)] == [None] + [opened.external_id] * 2
    assert timeline(incident_id, "notified")[0] == "opened sent to #ml-incidents"


def test_each_incident_has_its_own_thread(env, servers) -> None:  # type: ignore[no-untyped-def]
    a, b = new_incident(), new_incident()
    [da] = notifications.send(a, "opened")
    [db] = notifications.send(b, "opened")
    [ua] = notifications.send(a, "update", data={"message": "x"})
    assert da.external_id != db.external_id
    assert servers["slack"].posts()[-1].body["thread_ts"] == da.external_id
    assert ua.status == "sent"


def test_messages_sent_at_once_from_several_runs_open_one_thread(env, servers) -> None:  # type: ignore[no-untyped-def]
    incident_id = new_incident()
    start = threading.Barrier(4)

    def run(kind: str) -> None:  # triage's opening, the sweep's escalation, ...
        start.wait()
        notifications.send(incident_id, kind, data={"message": kind})

    threads = [
        threading.Thread(target=run, args=(k,))
        for k in ("opened", "escalation", "update", "needs_human")
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    posts = servers["slack"].posts()
    roots = [p for p in posts if "thread_ts" not in p.body]
    assert len(posts) == 4 and len(roots) == 1
    root_ts = next(
        r.external_id for r in rows(incident_id) if r.thread_id is None and r.status == "sent"
    )
    assert {p.body["thread_ts"] for p in posts if p not in roots} == {root_ts}


def test_a_slack_429_waits_for_retry_after_and_then_sends(env, servers) -> None:  # type: ignore[no-untyped-def]
    servers["slack"].fail_next(1, status=429, retry_after=1)
    incident_id = new_incident()
    started = time.monotonic()
    [d] = notifications.send(incident_id, "opened")
    calls = servers["slack"].posts()
    assert (d.status, d.attempts) == ("sent", 2)
    assert calls[1].at - calls[0].at >= 1.0  # Retry-After: 1, not the 0.1 s backoff
    assert time.monotonic() - started < 5


def test_a_slack_5xx_is_retried_with_growing_backoff(env, servers) -> None:  # type: ignore[no-untyped-def]
    servers["slack"].fail_next(2, status=500)
    [d] = notifications.send(new_incident(), "opened")
    t = [c.at for c in servers["slack"].posts()]
    assert (d.status, d.attempts, len(t)) == ("sent", 3, 3)
    assert t[1] - t[0] >= 0.1 and t[2] - t[1] >= 0.2  # backoff_seconds, then doubled


def test_a_slack_client_error_is_not_retried_and_is_on_the_timeline(env, servers) -> None:  # type: ignore[no-untyped-def]
    env.notifications.fallback = {}
    servers["slack"].fail_next(1, error="not_in_channel")
    incident_id = new_incident()
    [d] = notifications.send(incident_id, "opened")
    assert (d.status, d.attempts) == ("failed", 1)
    assert len(servers["slack"].posts()) == 1
    [line] = timeline(incident_id, "notify_failed")
    assert "opened to #ml-incidents failed after 1 attempt: " in line
    assert "not_in_channel (invite the Slack app to the channel" in line
    [row] = rows(incident_id)
    assert (row.status, row.attempts, row.channel) == ("failed", 1, "#ml-incidents")


def test_slack_down_falls_back_to_email_and_the_runbook_goes_on(env, servers) -> None:  # type: ignore[no-untyped-def]
    servers["slack"].down = True
    incident_id = new_incident(assignee="alice")
    deliveries = notifications.notify.fn(incident_id, "opened")
    slack, email = deliveries
    assert (slack.status, slack.attempts) == ("failed", 3)
    assert (email.channel, email.status, email.fallback_for) == ("email", "sent", "#ml-incidents")
    [(to, raw)] = servers["inbox"].messages
    assert sorted(to) == ["alice@example.com", "ml-team@example.com"]
    mail = message_from_bytes(raw)
    assert mail["Subject"] == f"[P1] P1 incident {incident_id}: fraud-v3: F1 below threshold"
    assert mail["Message-ID"] == email.external_id
    assert "Assignee: alice" in mail.get_payload()
    [line] = timeline(incident_id, "notify_failed")
    assert "failed after 3 attempts" in line and "trying email instead" in line


def test_the_decision_edits_the_approval_message_in_place(env, servers) -> None:  # type: ignore[no-untyped-def]
    slack = servers["slack"]
    incident_id = new_incident(severity="P2")
    with session_scope(store.db()) as s:
        approval = Approval(
            incident_id=incident_id, action="route_to_previous_version", approvers=["alice"]
        )
        s.add(approval)
        s.flush()
        approval_id = approval.id
    notifications.send(incident_id, "opened")
    [asked] = notifications.send(incident_id, "approval", data={"approval_id": approval_id})
    post = slack.posts()[-1].body
    ids = {e["action_id"] for b in post["blocks"] if b["type"] == "actions" for e in b["elements"]}
    assert ids == {"approve", "reject"}
    assert "<@U0ALICE>" in post["text"]  # the approvers are the people reached
    with session_scope(store.db()) as s:
        row = s.get(Approval, approval_id)
        row.status, row.decided_by, row.decided_at = "approved", "alice", utcnow()
        s.add(row)
    [decided] = notifications.send(incident_id, "decided", data={"approval_id": approval_id})
    [update] = slack.posts("chat.update")
    assert (update.body["channel"], update.body["ts"]) == (asked.address, asked.external_id)
    assert "approved" in update.body["text"]
    shown = slack.messages[asked.address][asked.external_id]
    assert "<@U0ALICE>" in str(shown["blocks"]) and "actions" not in str(shown["blocks"])
    assert decided.external_id == asked.external_id
    # Email carries no "decided": the edit is Slack's.
    env.routing.channels["P2"] = ["email"]
    assert notifications.send(incident_id, "decided", data={"approval_id": approval_id}) == []


# -- PagerDuty -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("severity", "pd"), [("P1", "critical"), ("P2", "error"), ("P3", "warning")]
)
def test_pagerduty_triggers_with_the_severity_of_the_incident(env, servers, severity, pd) -> None:  # type: ignore[no-untyped-def]
    env.routing.channels[severity] = ["pagerduty"]
    incident_id = new_incident(severity=severity)
    [d] = notifications.send(incident_id, "opened")
    [event] = servers["pd"].events()
    assert event["routing_key"] == ROUTING_KEY and event["event_action"] == "trigger"
    assert event["dedup_key"] == d.external_id == f"ml-runbooks-incident-{incident_id}"
    assert event["payload"]["severity"] == pd
    assert event["payload"]["source"] == "fraud-v3"
    assert event["payload"]["summary"].startswith(f"{severity} incident {incident_id}")


def test_pagerduty_hears_trigger_acknowledge_and_resolve_on_one_dedup_key(env, servers) -> None:  # type: ignore[no-untyped-def]
    env.routing.channels["P1"] = ["pagerduty"]
    incident_id = new_incident()
    for kind in ("opened", "update", "escalation", "needs_human", "acknowledged", "resolved"):
        notifications.send(incident_id, kind, data={"by": "alice"})
    events = servers["pd"].events()
    assert [e["event_action"] for e in events] == [
        "trigger",
        "trigger",
        "acknowledge",
        "resolve",
    ]
    assert {e["dedup_key"] for e in events} == {f"ml-runbooks-incident-{incident_id}"}
    assert "payload" not in events[2] and "payload" not in events[3]


def test_a_severity_raised_to_p1_pages_once_and_opens_no_second_slack_thread(env, servers) -> None:  # type: ignore[no-untyped-def]
    env.routing.channels["P1"] = ["#ml-incidents", "pagerduty"]
    incident_id = new_incident(severity="P2")
    notifications.send(incident_id, "opened")
    assert servers["pd"].events() == []  # P2 does not page
    with session_scope(store.db()) as s:
        s.get(Incident, incident_id).severity = "P1"
    # What the re-triage sends: the opening to the channels that never had it, twice over
    # (a retried task) to show it is once.
    for _ in range(2):
        notifications.send(incident_id, "opened", only_untold=True)
    [event] = servers["pd"].events()
    assert event["event_action"] == "trigger" and event["payload"]["severity"] == "critical"
    [root] = servers["slack"].posts()
    assert "thread_ts" not in root.body


def test_pagerduty_400_is_not_retried_and_429_and_5xx_are(env, servers) -> None:  # type: ignore[no-untyped-def]
    env.routing.channels["P1"] = ["pagerduty"]
    pd = servers["pd"]
    pd.statuses = [400]
    incident_id = new_incident()
    [refused] = notifications.send(incident_id, "opened")
    assert (refused.status, refused.attempts, len(pd.received)) == ("failed", 1, 1)
    assert "PagerDuty answered HTTP 400" in timeline(incident_id, "notify_failed")[0]

    pd.reset()
    pd.statuses = [429, 502]
    [passed] = notifications.send(incident_id, "opened")
    assert (passed.status, passed.attempts, len(pd.received)) == ("sent", 3, 3)


# -- webhook ---------------------------------------------------------------------------


def test_the_webhook_posts_json_signed_with_hmac_sha256_of_the_body(env, servers) -> None:  # type: ignore[no-untyped-def]
    env.routing.channels["P1"] = ["webhook"]
    incident_id = new_incident()
    [d] = notifications.send(incident_id, "escalation", people=["bob"], data={"level": "vp"})
    [got] = servers["hook"].received
    expected = hmac.new(WEBHOOK_KEY.encode(), got.raw, hashlib.sha256).hexdigest()
    assert got.headers["x-runbooks-signature"] == f"sha256={expected}"
    assert got.headers["x-runbooks-delivery"] == d.external_id
    body = got.body
    assert (body["kind"], body["incident"]["id"], body["people"]) == (
        "escalation",
        incident_id,
        ["bob"],
    )
    assert body["data"]["level"] == "vp"
    assert ROUTING_KEY not in got.raw.decode() and WEBHOOK_KEY not in got.raw.decode()


def test_a_webhook_5xx_is_retried_and_a_4xx_is_not(env, servers) -> None:  # type: ignore[no-untyped-def]
    env.routing.channels["P1"] = ["webhook"]
    servers["hook"].statuses = [503]
    [d] = notifications.send(new_incident(), "opened")
    assert (d.status, d.attempts) == ("sent", 2)
    servers["hook"].statuses = [404]
    [d] = notifications.send(new_incident(), "opened")
    assert (d.status, d.attempts) == ("failed", 1)


# -- email -----------------------------------------------------------------------------


def test_email_goes_to_the_people_named_and_threads_by_message_id(env, servers) -> None:  # type: ignore[no-untyped-def]
    env.routing.channels["P1"] = ["email"]
    servers["inbox"].fail = 1  # 451: the server says later
    incident_id = new_incident()
    [first] = notifications.send(incident_id, "opened")
    [second] = notifications.send(incident_id, "escalation", people=["bob"])
    (to1, raw1), (to2, raw2) = servers["inbox"].messages
    assert first.attempts == 2
    assert sorted(to1) == ["alice@example.com", "ml-team@example.com"]  # the assignee
    assert sorted(to2) == ["bob@example.com", "ml-team@example.com"]  # the people named
    assert message_from_bytes(raw2)["In-Reply-To"] == first.external_id


SMTP_PASSWORD = "smtp-pass-SECRET-42"


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_smtp_auth_logs_in_and_a_refused_login_is_not_retried_nor_shown(
    env, servers, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from aiosmtpd.smtp import AuthResult, LoginPassword

    logins: list[tuple[str, str]] = []

    def authenticator(server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        assert isinstance(auth_data, LoginPassword)
        user, password = auth_data.login.decode(), auth_data.password.decode()
        logins.append((mechanism, user))
        # handled=False: aiosmtpd answers the refusal (535) itself.
        return AuthResult(success=(user, password) == ("runbooks", SMTP_PASSWORD), handled=False)

    inbox = Inbox()
    # AUTH without TLS only here, on 127.0.0.1; production sets RUNBOOKS_SMTP_STARTTLS.
    smtp = Controller(
        inbox,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=authenticator,
        auth_require_tls=False,
        auth_required=True,
    )
    smtp.start()
    try:
        monkeypatch.setenv("RUNBOOKS_SMTP_PORT", str(smtp.port))
        monkeypatch.setenv("RUNBOOKS_SMTP_USER", "runbooks")
        monkeypatch.setenv("RUNBOOKS_SMTP_PASSWORD", SMTP_PASSWORD)
        get_settings.cache_clear()
        env.routing.channels["P1"] = ["email"]
        incident_id = new_incident()
        [ok] = notifications.send(incident_id, "opened")
        assert ok.status == "sent" and len(inbox.messages) == 1
        assert logins[-1][1] == "runbooks"

        monkeypatch.setenv("RUNBOOKS_SMTP_PASSWORD", "not-the-password")
        get_settings.cache_clear()
        [refused] = notifications.send(incident_id, "update", data={"message": "x"})
        assert (refused.status, refused.attempts) == ("failed", 1), refused.error
        assert "check RUNBOOKS_SMTP_USER and RUNBOOKS_SMTP_PASSWORD" in refused.error
        said = " ".join(timeline(incident_id)) + refused.error
        assert "not-the-password" not in said and SMTP_PASSWORD not in said
        assert len(inbox.messages) == 1
    finally:
        smtp.stop()


# -- configuration and secrets -----------------------------------------------------------


def test_a_channel_not_configured_is_skipped_with_one_line_naming_the_setting(
    env, servers, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("RUNBOOKS_SLACK_TOKEN", "")
    monkeypatch.setenv("RUNBOOKS_PAGERDUTY_ROUTING_KEY", "")
    get_settings.cache_clear()
    notifications.forget_secrets()
    env.routing.channels["P1"] = ["#ml-incidents", "pagerduty"]
    incident_id = new_incident()
    first = notifications.send(incident_id, "opened")
    notifications.send(incident_id, "resolved")
    assert [d.status for d in first] == ["skipped", "skipped"]
    lines = timeline(incident_id, "notify_skipped")
    assert len(lines) == 2
    assert "set RUNBOOKS_SLACK_TOKEN" in lines[0] and "RUNBOOKS_PAGERDUTY_ROUTING_KEY" in lines[1]
    assert servers["slack"].calls == [] and rows(incident_id) == []
    assert servers["inbox"].messages == []  # a skipped channel is no failure: no fallback


def test_secrets_never_reach_the_timeline_the_rows_the_logs_or_the_errors(
    env, servers, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    env.routing.channels["P1"] = ["#ml-incidents", "pagerduty", "webhook"]
    # Servers that quote the request back in their errors.
    servers["slack"].fail_next(1, error=f"invalid_auth:{TOKEN}")
    servers["pd"].statuses, servers["pd"].echo = [400], True
    servers["hook"].statuses = [400]
    incident_id = new_incident()
    deliveries = notifications.notify.fn(incident_id, "opened")
    assert {d.status for d in deliveries if d.channel != "email"} == {"failed"}
    notifications.notify.fn(incident_id + 10_000, "opened")  # no such incident: logged

    errors = " ".join(d.error or "" for d in deliveries)
    written = " ".join(timeline(incident_id)) + " ".join(
        f"{r.error} {r.address}" for r in rows(incident_id)
    )
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "[secret]" in errors  # the echoed token was there, and was scrubbed
    for text in (errors, written, logged):
        for secret in (TOKEN, ROUTING_KEY, WEBHOOK_KEY):
            assert secret not in text


@pytest.mark.slow
def test_a_prefect_secret_block_stands_in_for_an_unset_environment_variable(
    env, servers, stack, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from prefect.blocks.system import Secret

    Secret(value="BLOCKROUTINGKEY000000000000000000").save(
        notifications.SECRET_BLOCKS["pagerduty_routing_key"], overwrite=True
    )
    monkeypatch.setenv("RUNBOOKS_PAGERDUTY_ROUTING_KEY", "")
    get_settings.cache_clear()
    notifications.forget_secrets()
    env.routing.channels["P1"] = ["pagerduty"]
    incident_id = new_incident()
    started = time.perf_counter()
    notifications.send(incident_id, "opened")
    first = time.perf_counter() - started
    started = time.perf_counter()
    notifications.send(incident_id, "acknowledged", data={"by": "alice"})
    cached = time.perf_counter() - started
    keys = [e["routing_key"] for e in servers["pd"].events()]
    assert keys == ["BLOCKROUTINGKEY000000000000000000"] * 2
    assert "BLOCKROUTINGKEY" not in notifications.scrub("key BLOCKROUTINGKEY000000000000000000")
    print(
        f"send with the block read: {first * 1000:.0f} ms, with it cached: {cached * 1000:.0f} ms"
    )
    Secret.delete(notifications.SECRET_BLOCKS["pagerduty_routing_key"])
