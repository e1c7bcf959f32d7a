"""Telling people: Slack, email, PagerDuty and a signed webhook, chosen per severity by the
policy's `routing.channels`. The only module that imports slack_sdk.

One Slack thread per incident and channel: the first message's ts is kept on its
Notification row and every later message replies to it. A channel that fails is retried
with backoff (a 429's Retry-After honoured, a 400 not retried), then written on the
timeline and a Notification row, then the policy's fallback kind is tried (email when Slack
is down); it never fails a runbook. A channel that is not configured is skipped with one
timeline line naming the setting. Secrets come from the environment, else from Prefect
Secret blocks, and are scrubbed from every error this module writes or logs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import smtplib
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any
from urllib.error import URLError

import httpx
from prefect import task
from prefect.cache_policies import NONE as NO_CACHE
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from runbooks import messages
from runbooks.incidents import add_timeline
from runbooks.models import (
    Action,
    Approval,
    Incident,
    IncidentNotice,
    Notification,
    RunbookRun,
)
from runbooks.policy import Policy
from runbooks.settings import get_settings
from runbooks.store import session_scope
from tasks import incident_store as store

log = logging.getLogger(__name__)
ACTOR = "notifications"

# Which message kinds each kind of channel carries. PagerDuty pages, so it hears only what
# changes a page: trigger, acknowledge, resolve. "decided" edits the approval message.
PAGERDUTY_ACTION = {
    "opened": "trigger",
    "escalation": "trigger",
    "acknowledged": "acknowledge",
    "resolved": "resolve",
}
CARRIES = {
    "slack": set(messages.KINDS),
    "email": set(messages.KINDS) - {"decided"},
    "pagerduty": set(PAGERDUTY_ACTION),
    "webhook": set(messages.KINDS),
}
PAGERDUTY_SEVERITY = {"P1": "critical", "P2": "error", "P3": "warning"}
SECRET_BLOCKS = {
    "slack_token": "ml-runbooks-slack-token",
    "slack_signing_secret": "ml-runbooks-slack-signing-secret",
    "pagerduty_routing_key": "ml-runbooks-pagerduty-routing-key",
    "smtp_password": "ml-runbooks-smtp-password",
    "webhook_secret": "ml-runbooks-webhook-secret",
    "slack_app_token": "ml-runbooks-slack-app-token",
}
# Slack errors that say "later", not "never" (https://api.slack.com/methods/chat.postMessage).
SLACK_TRANSIENT = {"ratelimited", "service_unavailable", "internal_error", "fatal_error"}
SLACK_HINT = {
    "not_in_channel": "invite the Slack app to the channel (/invite @app)",
    "channel_not_found": "check the channel name in routing.channels",
    "invalid_auth": "check RUNBOOKS_SLACK_TOKEN",
    "not_authed": "set RUNBOOKS_SLACK_TOKEN",
    "missing_scope": "give the Slack app the chat:write scope",
}
NETWORK_TIMEOUT = 10.0
# A Retry-After longer than this is not waited for inside a runbook: the next try goes to
# the fallback channel instead.
MAX_RETRY_AFTER = 60.0
SECRET_TTL = 60.0


@dataclass(frozen=True)
class Delivery:
    """What became of one message on one channel."""

    channel: str  # as the policy names it: "#ml-incidents", "email", "pagerduty", "webhook"
    status: str  # sent | failed | skipped (not configured, or nothing to send there)
    address: str = ""  # Slack channel id, email addresses, URL
    external_id: str | None = None  # Slack ts, PagerDuty dedup_key, Message-ID, delivery id
    attempts: int = 0
    error: str | None = None
    fallback_for: str | None = None  # the channel whose failure this one stands in for


class NotConfigured(RuntimeError):
    """The channel lacks a setting; the message names it."""


class _Failure(Exception):
    def __init__(self, text: str, retry: bool, after: float | None = None) -> None:
        super().__init__(text)
        self.text, self.retry, self.after = text, retry, after


# -- secrets -----------------------------------------------------------------------------

_secret_cache: dict[str, tuple[float, str]] = {}
_secret_lock = threading.Lock()


def secret(setting: str) -> str:
    """The secret named by its setting (slack_token, ...): the environment's value, else the
    Prefect Secret block's, cached for a minute either way; "" when neither has it."""
    value = getattr(get_settings(), setting)
    if value:
        return value
    with _secret_lock:
        hit = _secret_cache.get(setting)
        if hit and time.monotonic() - hit[0] < SECRET_TTL:
            return hit[1]
    value = _secret_block(SECRET_BLOCKS[setting])
    with _secret_lock:
        _secret_cache[setting] = (time.monotonic(), value)
    return value


def forget_secrets() -> None:
    with _secret_lock:
        _secret_cache.clear()


def _secret_block(name: str) -> str:
    from prefect.blocks.system import Secret
    from prefect.settings import PREFECT_API_KEY, PREFECT_API_URL

    api = PREFECT_API_URL.value()
    if not api:
        return ""  # no server: Prefect would start a slow ephemeral one just to say no
    key = PREFECT_API_KEY.value()
    try:
        httpx.get(
            f"{api.rstrip('/')}/health",
            headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=1.0,
        ).raise_for_status()
    except httpx.HTTPError:
        return ""
    try:
        value = Secret.load(name, _sync=True).get()
    except ValueError:
        return ""  # no such block
    except Exception as err:  # noqa: BLE001  a secret we cannot read is a channel skipped
        log.warning("cannot read Prefect Secret block %s: %s", name, scrub(str(err)))
        return ""
    return value if isinstance(value, str) else ""


def scrub(text: str) -> str:
    """`text` with every secret this module knows replaced by [secret]."""
    s = get_settings()
    known = [getattr(s, name) for name in SECRET_BLOCKS]
    with _secret_lock:
        known += [value for _, value in _secret_cache.values()]
    for value in sorted({k for k in known if len(k) >= 4}, key=len, reverse=True):
        text = text.replace(value, "[secret]")
    return re.sub(r"xox[a-z]-[A-Za-z0-9-]+|xapp-[A-Za-z0-9-]+", "[secret]", text)


# -- sending -----------------------------------------------------------------------------


def send(
    incident_id: int,
    kind: str,
    *,
    people: Sequence[str] = (),
    data: Mapping[str, Any] | None = None,
    only_untold: bool = False,
) -> list[Delivery]:
    """Tell the incident's channels (`routing.channels` of its severity) about `kind`.
    `people` are mentioned in Slack and written to by email. With `only_untold`, only the
    channels that have not yet been sent a message of this kind (a severity raised to P1
    adds PagerDuty: it gets the opening trigger, the Slack thread does not get a second
    opening). Raises only for an incident that does not exist or a kind that does not; a
    channel's failure is a Delivery."""
    if kind not in messages.KINDS:
        raise messages.MessageError(
            f"no message kind {kind!r}; the kinds are {', '.join(messages.KINDS)}"
        )
    policy = store.policy()
    with session_scope(store.db()) as s:
        incident = s.get(Incident, incident_id)
        if incident is None:
            raise LookupError(f"incident {incident_id} does not exist; nothing to tell")
        facts = _facts(s, incident, kind, dict(data or {}))
        people = list(people) or list(facts.pop("_people", []))
        links = _links(policy, incident, facts.get("flow_run_id"))
        msg = messages.render(kind, incident, policy, people=people, data=facts, links=links)
        sev = incident.severity or policy.default_severity
        channels = list(policy.routing.channels.get(sev, []))
        if only_untold:
            told = set(
                s.exec(
                    select(Notification.channel).where(
                        Notification.incident_id == incident_id,
                        Notification.kind == kind,
                        Notification.status == "sent",
                    )
                )
            )
            channels = [c for c in channels if c not in told]
    job = _Job(incident, kind, msg, people, facts, links, policy)
    deliveries: list[Delivery] = []
    kinds_listed = {_kind_of(c) for c in channels}
    for channel in channels:
        d = _deliver(job, channel)
        if d is None:
            continue
        deliveries.append(d)
        fallback = policy.notifications.fallback.get(_kind_of(channel))
        if d.status == "failed" and fallback and fallback not in kinds_listed:
            f = _deliver(job, fallback)
            if f is not None:
                deliveries.append(replace(f, fallback_for=channel))
    sent = [d.channel for d in deliveries if d.status == "sent"]
    if sent:
        with session_scope(store.db()) as s:
            add_timeline(
                s,
                incident_id,
                ACTOR,
                "notified",
                f"{kind} sent to {', '.join(sent)}",
                {"channels": sent},
            )
    return deliveries


@task(name="notify", cache_policy=NO_CACHE)
def notify(
    incident_id: int,
    kind: str,
    *,
    people: Sequence[str] = (),
    data: Mapping[str, Any] | None = None,
    only_untold: bool = False,
) -> list[Delivery]:
    """`send` as a runbook step that never fails the runbook."""
    try:
        return send(incident_id, kind, people=people, data=data, only_untold=only_untold)
    except Exception as err:  # noqa: BLE001  fan-out is the one place a failure goes on
        why = scrub(f"{type(err).__name__}: {err}")
        log.warning("notification %s of incident %s failed: %s", kind, incident_id, why)
        try:
            with session_scope(store.db()) as s:
                add_timeline(
                    s,
                    incident_id,
                    ACTOR,
                    "notify_failed",
                    f"{kind} not sent: {why}",
                    {"error": why},
                )
        except Exception:  # noqa: BLE001  the store is down too: the log line stays
            pass
        return []


def verify_slack_request(body: bytes, headers: Mapping[str, str]) -> bool:
    """Slack's signature over the raw body, within its 300 s window."""
    signing = secret("slack_signing_secret")
    if not signing:
        raise NotConfigured(
            "Slack interactions are refused: set RUNBOOKS_SLACK_SIGNING_SECRET (or the "
            f"Prefect Secret block {SECRET_BLOCKS['slack_signing_secret']}) to the Slack "
            "app's signing secret"
        )
    return SignatureVerifier(signing).is_valid_request(body, dict(headers))


def reply_in_slack(response_url: str, text: str) -> None:
    """An ephemeral answer to the person who pressed a button (Slack's response_url)."""
    try:
        httpx.post(
            response_url,
            json={"response_type": "ephemeral", "replace_original": False, "text": text},
            timeout=NETWORK_TIMEOUT,
        )
    except httpx.HTTPError as err:
        log.warning("cannot answer in Slack: %s", scrub(str(err)))


class SlackSocket:
    """Slack's Socket Mode, for an intake with no public URL: the intake opens a websocket
    to Slack (apps.connections.open with the xapp- token) and the button presses come down
    it. Each envelope is acknowledged before anything else (Slack wants it within 3 s and
    sends it again otherwise), then `on_interaction(payload, envelope_id)` runs on the
    client's worker threads. Connecting is retried in the background until it works or
    `stop()`; once connected, slack_sdk reconnects by itself."""

    RETRY_SECONDS = (1.0, 5.0, 30.0)

    def __init__(self, on_interaction: Callable[[dict[str, Any], str], None]) -> None:
        self.on_interaction = on_interaction
        self.client: SocketModeClient | None = None
        self.error = ""
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._connect, name="slack-socket", daemon=True)

    def start(self) -> SlackSocket:
        self._thread.start()
        return self

    def connected(self) -> bool:
        return self.client is not None and self.client.is_connected()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        if self.client is not None:
            self.client.close()

    def _connect(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            token = secret("slack_app_token")
            if not token:
                self.error = (
                    "Slack Socket Mode is on but has no app token: set "
                    "RUNBOOKS_SLACK_APP_TOKEN (or the Prefect Secret block "
                    f"{SECRET_BLOCKS['slack_app_token']}) to the app's xapp- token"
                )
            else:
                client = SocketModeClient(
                    app_token=token,
                    # apps.connections.open is authorised by the app token alone.
                    web_client=WebClient(
                        base_url=get_settings().slack_base_url, timeout=int(NETWORK_TIMEOUT)
                    ),
                    logger=log,
                )
                client.socket_mode_request_listeners.append(self._on_request)
                try:
                    client.connect()
                except Exception as err:  # noqa: BLE001  retried below, and said
                    client.close()
                    self.error = "Slack Socket Mode cannot connect: " + scrub(_socket_error(err))
                else:
                    self.client, self.error = client, ""
                    log.info("Slack Socket Mode connected")
                    return
            log.warning("%s; trying again", self.error)
            self._stopping.wait(self.RETRY_SECONDS[min(attempt, len(self.RETRY_SECONDS) - 1)])
            attempt += 1

    def _on_request(self, client: SocketModeClient, req: SocketModeRequest) -> None:
        client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
        if req.type != "interactive":
            return  # events and slash commands: not ours
        try:
            self.on_interaction(req.payload, req.envelope_id)
        except Exception as err:  # noqa: BLE001  one press must not stop the listener
            log.error("Slack interaction %s failed: %s", req.envelope_id, scrub(repr(err)))


def _socket_error(err: Exception) -> str:
    if isinstance(err, SlackApiError):
        code = err.response.get("error", "")
        hint = {
            "invalid_auth": "check RUNBOOKS_SLACK_APP_TOKEN (an xapp- app-level token)",
            "not_allowed_token_type": "RUNBOOKS_SLACK_APP_TOKEN must be the xapp- app-level "
            "token with connections:write, not the xoxb- bot token",
        }.get(code, "")
        return f"apps.connections.open: {code}" + (f" ({hint})" if hint else "")
    return f"{type(err).__name__}: {err}"


# -- what a message needs from the store ----------------------------------------------


def _facts(s: Any, incident: Incident, kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """`data` completed from the store: the approval's action and approvers, the decision,
    the action taken, the runbook's flow run."""
    if "approval_id" in data:
        approval = s.get(Approval, int(data["approval_id"]))
        if approval is None:
            raise LookupError(f"approval {data['approval_id']} does not exist")
        data.setdefault("action", approval.action)
        data.setdefault("approvers", list(approval.approvers))
        data.setdefault("expires_at", approval.expires_at)
        data.setdefault("flow_run_id", approval.flow_run_id)
        data.setdefault("requested_at", approval.requested_at)
        if kind == "approval":
            data.setdefault("_people", list(approval.approvers))
        if kind == "decided":
            data.setdefault("status", approval.status)
            data.setdefault("by", approval.decided_by)
            data.setdefault("comment", approval.comment)
    if kind == "resolved" and not data.get("action"):
        done = s.exec(
            select(Action)
            .where(Action.incident_id == incident.id, Action.status == "done")
            .order_by(col(Action.id).desc())
        ).first()
        if done is not None:
            data["action"] = f"{done.kind} on {done.target}"
    if kind == "acknowledged":
        data.setdefault("by", incident.acknowledged_by)
    if not data.get("flow_run_id"):
        run = s.exec(
            select(RunbookRun)
            .where(RunbookRun.incident_id == incident.id)
            .order_by(col(RunbookRun.id).desc())
        ).first()
        data["flow_run_id"] = run.flow_run_id if run else incident.triage_run
    return data


def _links(policy: Policy, incident: Incident, flow_run_id: str | None) -> messages.Links:
    from prefect.settings import PREFECT_UI_URL

    ui = policy.notifications.prefect_ui_url or PREFECT_UI_URL.value() or ""
    run = f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui and flow_run_id else ""
    template = policy.notifications.incident_url
    if template:
        url = template.replace("{id}", str(incident.id))
    else:
        url = f"{get_settings().intake_url.rstrip('/')}/api/v1/incidents/{incident.id}"
    return messages.Links(run=run, incident=url)


# -- one channel -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    incident: Incident
    kind: str
    msg: messages.Message
    people: list[str]
    data: dict[str, Any]
    links: messages.Links
    policy: Policy


def _kind_of(channel: str) -> str:
    return "slack" if channel.startswith("#") else channel


def _deliver(job: _Job, channel: str) -> Delivery | None:
    """Send on one channel, record it, and return what happened; None when the channel
    does not carry this kind of message."""
    kind = _kind_of(channel)
    senders: dict[str, Callable[[_Job, str], tuple[Delivery, str | None]]] = {
        "slack": _slack,
        "email": _email,
        "pagerduty": _pagerduty,
        "webhook": _webhook,
    }
    sender = senders.get(kind)
    if sender is None:
        _skipped_once(
            job.incident.id,
            channel,
            f"channel {channel!r} is not one this product knows: use #name (Slack), email, "
            "pagerduty or webhook in routing.channels",
        )
        return Delivery(channel, "skipped", error="unknown channel")
    if job.kind not in CARRIES[kind]:
        return None
    try:
        delivery, thread = sender(job, channel)
    except NotConfigured as err:
        _skipped_once(job.incident.id, channel, str(err))
        return Delivery(channel, "skipped", error=str(err))
    _record(job, delivery, thread)
    return delivery


def _attempts(policy: Policy, call: Callable[[], Any]) -> tuple[Any, int, str | None]:
    """Call until it works or a try says not to retry: (result, attempts, error)."""
    tries = policy.notifications.attempts
    for attempt in range(1, tries + 1):
        try:
            return call(), attempt, None
        except _Failure as f:
            if not f.retry or attempt == tries:
                return None, attempt, scrub(f.text)
            if f.after is not None and f.after > MAX_RETRY_AFTER:
                return None, attempt, scrub(f"{f.text}; longer than {MAX_RETRY_AFTER:g} s")
            wait = (
                f.after
                if f.after is not None
                else policy.notifications.backoff_seconds * (2 ** (attempt - 1))
            )
            time.sleep(wait)
    raise AssertionError("unreachable: the last attempt returns")


def _record(job: _Job, d: Delivery, thread: str | None) -> None:
    with session_scope(store.db()) as s:
        s.add(
            Notification(
                incident_id=job.incident.id,
                kind=job.kind,
                channel=d.channel,
                address=d.address,
                status=d.status,
                external_id=d.external_id,
                thread_id=thread,
                attempts=d.attempts,
                error=d.error,
            )
        )
        if d.status == "failed":
            fallback = job.policy.notifications.fallback.get(_kind_of(d.channel))
            sev = job.incident.severity or job.policy.default_severity
            listed = {_kind_of(c) for c in job.policy.routing.channels.get(sev, [])}
            carried = fallback is not None and job.kind in CARRIES.get(fallback, set())
            then = f"; trying {fallback} instead" if carried and fallback not in listed else ""
            add_timeline(
                s,
                job.incident.id,
                ACTOR,
                "notify_failed",
                f"{job.kind} to {d.channel} failed after {d.attempts} "
                f"attempt{'s' if d.attempts != 1 else ''}: {d.error}{then}",
                {"channel": d.channel, "error": d.error, "attempts": d.attempts},
            )


def _skipped_once(incident_id: int, channel: str, why: str) -> None:
    """One timeline line per incident and channel: a missing setting is said once."""
    try:
        with session_scope(store.db()) as s:
            s.add(IncidentNotice(incident_id=incident_id, key=f"notify-skipped:{channel}"))
            s.flush()
            add_timeline(
                s,
                incident_id,
                ACTOR,
                "notify_skipped",
                f"{channel} skipped: {why}",
                {"channel": channel},
            )
    except IntegrityError:
        pass


# -- Slack -----------------------------------------------------------------------------


class _Scrubbed(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = scrub(record.getMessage()), None
        return True


# slack_sdk logs whole responses at DEBUG: its own logger, kept at INFO and scrubbed.
_slack_log = logging.getLogger(f"{__name__}.slack_sdk")
_slack_log.setLevel(logging.INFO)
_slack_log.addFilter(_Scrubbed())
# How long a message waits for the thread's first message that another process is posting
# (one post with its retries, then its row); past that it posts in the channel itself.
ROOT_WAIT_SECONDS = 20.0


def _slack(job: _Job, channel: str) -> tuple[Delivery, str | None]:
    token = secret("slack_token")
    if not token:
        raise NotConfigured(
            "Slack is not configured: set RUNBOOKS_SLACK_TOKEN (or the Prefect Secret "
            f"block {SECRET_BLOCKS['slack_token']}) to the app's xoxb- bot token"
        )
    client = WebClient(
        token=token,
        base_url=get_settings().slack_base_url,
        timeout=int(NETWORK_TIMEOUT),
        retry_handlers=[],  # _attempts retries, so that every try is counted on the row
        logger=_slack_log,
    )
    if job.kind == "decided":
        target = _approval_message(job, channel)
        if target is not None:
            return _slack_update(job, client, channel, target)
    root = _thread_root(job.incident.id, channel)
    if root is None and not _claim_root(job.incident.id, channel):
        # Another flow run (triage's opening, the sweep's first escalation) is posting it.
        root = _wait_for_root(job.incident.id, channel)
    if root is not None:
        return _slack_post(job, client, channel, root.address, root.external_id)
    delivery, thread = _slack_post(job, client, channel, channel, None)
    if delivery.status != "sent":
        _release_root(job.incident.id, channel)  # the next message tries to open it
    return delivery, thread


def _slack_post(
    job: _Job, client: WebClient, channel: str, address: str, thread_ts: str | None
) -> tuple[Delivery, str | None]:
    kwargs: dict[str, Any] = {"channel": address, "text": job.msg.text, "blocks": job.msg.blocks}
    if thread_ts:
        kwargs["thread_ts"] = thread_ts
        # The ending is shown in the channel too, not only in the thread.
        kwargs["reply_broadcast"] = job.kind == "resolved"
    response, attempts, error = _attempts(
        job.policy, lambda: _slack_call(client.chat_postMessage, **kwargs)
    )
    if error is not None:
        return Delivery(channel, "failed", address, None, attempts, error), thread_ts
    return (
        Delivery(channel, "sent", response["channel"], response["ts"], attempts),
        thread_ts,
    )


def _slack_update(
    job: _Job, client: WebClient, channel: str, target: Notification
) -> tuple[Delivery, str | None]:
    kwargs = {
        "channel": target.address,
        "ts": target.external_id,
        "text": job.msg.text,
        "blocks": job.msg.blocks,
    }
    response, attempts, error = _attempts(
        job.policy, lambda: _slack_call(client.chat_update, **kwargs)
    )
    if error is not None:
        return Delivery(channel, "failed", target.address, None, attempts, error), None
    return Delivery(channel, "sent", response["channel"], response["ts"], attempts), None


def _slack_call(method: Callable[..., Any], **kwargs: Any) -> Any:
    name = method.__name__.replace("_", ".", 1)
    try:
        return method(**kwargs)
    except SlackApiError as err:
        r = err.response
        status = r.status_code
        code = r.data.get("error", "") if isinstance(r.data, dict) else ""
        if status == 429 or code == "ratelimited":
            after = {k.lower(): v for k, v in (r.headers or {}).items()}.get("retry-after")
            after = after[0] if isinstance(after, list) else after
            raise _Failure(
                f"Slack {name}: rate limited (HTTP 429, Retry-After {after or '?'} s)",
                retry=True,
                after=float(after) if after and str(after).replace(".", "").isdigit() else 1.0,
            ) from None
        hint = SLACK_HINT.get(code)
        text = f"Slack {name}: HTTP {status} {code}".rstrip() + (f" ({hint})" if hint else "")
        raise _Failure(text, retry=status >= 500 or code in SLACK_TRANSIENT) from None
    except (URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise _Failure(f"Slack {name}: unreachable ({reason})", retry=True) from None
    except SlackClientError as err:
        raise _Failure(f"Slack {name}: {err}", retry=False) from None


def _thread_root(incident_id: int, channel: str) -> Notification | None:
    with session_scope(store.db()) as s:
        return s.exec(
            select(Notification)
            .where(
                Notification.incident_id == incident_id,
                Notification.channel == channel,
                Notification.status == "sent",
                col(Notification.thread_id).is_(None),
                col(Notification.external_id).is_not(None),
            )
            .order_by(col(Notification.id))
        ).first()


def _approval_message(job: _Job, channel: str) -> Notification | None:
    """The approval message this decision answers: the first one posted in the channel
    after the approval was asked (one runbook asks one question at a time)."""
    asked = job.data.get("requested_at")
    with session_scope(store.db()) as s:
        q = select(Notification).where(
            Notification.incident_id == job.incident.id,
            Notification.channel == channel,
            Notification.kind == "approval",
            Notification.status == "sent",
        )
        if asked is not None:
            q = q.where(Notification.created_at >= asked)
        return s.exec(q.order_by(col(Notification.id))).first()


def _root_key(channel: str) -> str:
    return f"slack-thread:{channel}"


def _claim_root(incident_id: int, channel: str) -> bool:
    """Be the one that posts the incident's first message in `channel`: the notice row is
    unique per incident and key, so across processes one message opens the thread."""
    try:
        with session_scope(store.db()) as s:
            s.add(IncidentNotice(incident_id=incident_id, key=_root_key(channel)))
        return True
    except IntegrityError:
        return False


def _release_root(incident_id: int, channel: str) -> None:
    with session_scope(store.db()) as s:
        notice = s.exec(
            select(IncidentNotice).where(
                IncidentNotice.incident_id == incident_id,
                IncidentNotice.key == _root_key(channel),
            )
        ).first()
        if notice is not None:
            s.delete(notice)


def _wait_for_root(incident_id: int, channel: str) -> Notification | None:
    deadline = time.monotonic() + ROOT_WAIT_SECONDS
    while time.monotonic() < deadline:
        root = _thread_root(incident_id, channel)
        if root is not None:
            return root
        time.sleep(0.2)
    log.warning(
        "incident %s: no first Slack message in %s after %.0f s; posting in the channel",
        incident_id,
        channel,
        ROOT_WAIT_SECONDS,
    )
    return None


# -- email -----------------------------------------------------------------------------


def _email(job: _Job, channel: str) -> tuple[Delivery, str | None]:
    settings = get_settings()
    if not settings.smtp_host:
        raise NotConfigured("email is not configured: set RUNBOOKS_SMTP_HOST (and _PORT, _FROM)")
    to = _recipients(job)
    if not to:
        who = job.incident.assignee or "the assignee"
        raise NotConfigured(
            f"email has nobody to write to: give people.{who}.email or "
            "notifications.email_to in the policy"
        )
    root = _thread_root(job.incident.id, channel)
    m = EmailMessage()
    m["Subject"] = f"[{job.incident.severity or 'incident'}] {job.msg.title}"
    m["From"] = settings.smtp_from
    m["To"] = ", ".join(to)
    domain = settings.smtp_from.rpartition("@")[2] or "ml-runbooks.local"
    m["Message-ID"] = make_msgid(f"incident-{job.incident.id}", domain=domain)
    if root is not None and root.external_id:
        m["In-Reply-To"] = root.external_id
        m["References"] = root.external_id
    m.set_content(job.msg.plain)

    def submit() -> str:
        try:
            with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=NETWORK_TIMEOUT) as c:
                if settings.smtp_starttls:
                    c.starttls()
                if settings.smtp_user:
                    c.login(settings.smtp_user, secret("smtp_password"))
                c.send_message(m)
        except smtplib.SMTPAuthenticationError as err:
            raise _Failure(
                f"SMTP login refused ({err.smtp_code}): check RUNBOOKS_SMTP_USER and "
                "RUNBOOKS_SMTP_PASSWORD",
                retry=False,
            ) from None
        except smtplib.SMTPRecipientsRefused as err:
            raise _Failure(f"SMTP refused the recipients {sorted(err.recipients)}", False) from None
        except smtplib.SMTPResponseException as err:
            said = (
                err.smtp_error.decode(errors="replace")
                if isinstance(err.smtp_error, bytes)
                else err.smtp_error
            )
            # 4xx: the server says later; 5xx: it says never.
            raise _Failure(f"SMTP {err.smtp_code} {said}", retry=err.smtp_code < 500) from None
        except (smtplib.SMTPException, OSError) as err:
            raise _Failure(
                f"SMTP server {settings.smtp_host}:{settings.smtp_port} unreachable ({err})",
                retry=True,
            ) from None
        return m["Message-ID"]

    message_id, attempts, error = _attempts(job.policy, submit)
    thread = root.external_id if root is not None else None
    address = ", ".join(to)
    if error is not None:
        return Delivery(channel, "failed", address, None, attempts, error), thread
    return Delivery(channel, "sent", address, message_id, attempts), thread


def _recipients(job: _Job) -> list[str]:
    names = job.people or ([job.incident.assignee] if job.incident.assignee else [])
    emails = [job.policy.people[n].email for n in names if n in job.policy.people]
    return list(dict.fromkeys(e for e in emails + job.policy.notifications.email_to if e))


# -- PagerDuty -------------------------------------------------------------------------


def dedup_key(incident_id: int) -> str:
    return f"ml-runbooks-incident-{incident_id}"


def _pagerduty(job: _Job, channel: str) -> tuple[Delivery, str | None]:
    key = secret("pagerduty_routing_key")
    if not key:
        raise NotConfigured(
            "PagerDuty is not configured: set RUNBOOKS_PAGERDUTY_ROUTING_KEY (or the Prefect "
            f"Secret block {SECRET_BLOCKS['pagerduty_routing_key']}) to an Events v2 "
            "integration key"
        )
    url = get_settings().pagerduty_url
    i = job.incident
    action = PAGERDUTY_ACTION[job.kind]
    event: dict[str, Any] = {
        "routing_key": key,
        "event_action": action,
        "dedup_key": dedup_key(i.id),
    }
    if action == "trigger":
        sev = i.severity or job.policy.default_severity
        event["payload"] = {
            "summary": job.msg.title[:1024],
            "source": i.model,
            "severity": PAGERDUTY_SEVERITY.get(sev, "warning"),
            "component": i.model,
            "group": job.policy.for_model(i.model).team,
            "class": i.type,
            "custom_details": {
                "incident_id": i.id,
                "status": i.status,
                "assignee": i.assignee,
                "people": job.people,
                "message": job.msg.plain,
            },
        }
        event["payload"] = {k: v for k, v in event["payload"].items() if v not in (None, "")}
        event["client"] = "ML Runbooks"
        if job.links.run:
            event["client_url"] = job.links.run
        event["links"] = [
            {"href": h, "text": t}
            for h, t in ((job.links.incident, "Incident"), (job.links.run, "Runbook run"))
            if h
        ]

    def post() -> str:
        try:
            r = httpx.post(url, json=event, timeout=NETWORK_TIMEOUT)
        except httpx.TransportError as err:
            raise _Failure(f"PagerDuty unreachable at {url} ({err})", retry=True) from None
        if r.status_code == 202 or r.is_success:
            try:
                return r.json().get("dedup_key") or event["dedup_key"]
            except ValueError:
                return event["dedup_key"]
        text = f"PagerDuty answered HTTP {r.status_code}: {r.text[:300]}"
        # 429: over ~120 events a minute for this key; 5xx: PagerDuty's side. Both pass.
        raise _Failure(text, retry=r.status_code == 429 or r.status_code >= 500)

    found, attempts, error = _attempts(job.policy, post)
    if error is not None:
        return Delivery(channel, "failed", url, None, attempts, error), None
    return Delivery(channel, "sent", url, found, attempts), None


# -- webhook ---------------------------------------------------------------------------


def sign(body: bytes, key: str) -> str:
    """The X-Runbooks-Signature header's value for `body`."""
    return "sha256=" + hmac.new(key.encode(), body, hashlib.sha256).hexdigest()


def _webhook(job: _Job, channel: str) -> tuple[Delivery, str | None]:
    url = job.policy.notifications.webhook_url
    if not url:
        raise NotConfigured("the webhook is not configured: set notifications.webhook_url")
    key = secret("webhook_secret")
    if not key:
        raise NotConfigured(
            "the webhook is not signed, so not sent: set RUNBOOKS_WEBHOOK_SECRET (or the "
            f"Prefect Secret block {SECRET_BLOCKS['webhook_secret']})"
        )
    i = job.incident
    delivery_id = str(uuid.uuid4())
    payload = {
        "delivery": delivery_id,
        "kind": job.kind,
        "incident": {
            "id": i.id,
            "model": i.model,
            "title": i.title,
            "severity": i.severity,
            "status": i.status,
            "assignee": i.assignee,
        },
        "title": job.msg.title,
        "text": job.msg.plain,
        "people": job.people,
        "links": {"run": job.links.run, "incident": job.links.incident},
        "data": {k: v for k, v in job.data.items() if not k.startswith("_")},
    }
    body = json.dumps(payload, default=str, sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Runbooks-Signature": sign(body, key),
        "X-Runbooks-Delivery": delivery_id,
    }

    def post() -> str:
        try:
            r = httpx.post(url, content=body, headers=headers, timeout=NETWORK_TIMEOUT)
        except httpx.TransportError as err:
            raise _Failure(f"webhook {url} unreachable ({err})", retry=True) from None
        if not r.is_success:
            text = f"webhook {url} answered HTTP {r.status_code}: {r.text[:300]}"
            raise _Failure(text, retry=r.status_code == 429 or r.status_code >= 500)
        return delivery_id

    found, attempts, error = _attempts(job.policy, post)
    if error is not None:
        return Delivery(channel, "failed", url, None, attempts, error), None
    return Delivery(channel, "sent", url, found, attempts), None
