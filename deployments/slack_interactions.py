"""Slack's buttons: Approve, Reject and Acknowledge, pressed on a message the runbooks sent.

They arrive signed over HTTP (POST /api/v1/slack/interactions; `handle_http` checks the
signature over the raw body before anything reads it) or over Socket Mode
(`over_socket_mode`: a websocket the intake opens, for an intake with no public URL).
The Slack user must be one of the policy's people; an approval goes through the same
allow-list and resume as `runbooks approve`; an acknowledgement is
`runbooks.incidents.acknowledge`. Slack wants an answer within 3 s, so the slow part (the
resume, the messages) is `Reply.then`, run after answering. The same request twice (a
replay) decides nothing twice: its signature is kept as a notice of the incident.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy.exc import IntegrityError

from runbooks.incidents import IncidentStateError, acknowledge, add_timeline
from runbooks.models import Incident, IncidentNotice
from runbooks.policy import Policy
from runbooks.store import session_scope
from tasks import notifications
from tasks.approvals import ApprovalAnswerError, check_answer, resume_with_answer

ACTIONS = {"approve": "approval", "reject": "rejection", "ack": "acknowledgement"}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    status: int
    text: str = ""
    error: str = ""
    response_url: str = ""
    then: Callable[[], None] | None = None

    @property
    def body(self) -> dict[str, Any]:
        if self.error:
            return {"error": self.error}
        if not self.text:
            return {}
        return {"response_type": "ephemeral", "replace_original": False, "text": self.text}

    def after(self) -> None:
        """The work after answering: the resume or the messages, then the person's answer
        in Slack (a block action's HTTP answer is not shown; its response_url is)."""
        if self.response_url and self.text:
            notifications.reply_in_slack(self.response_url, self.text)
        if self.then is not None:
            self.then()


def handle_http(raw: bytes, headers: Mapping[str, str], policy: Policy, database_url: str) -> Reply:
    try:
        valid = notifications.verify_slack_request(raw, headers)
    except notifications.NotConfigured as err:
        return Reply(401, error=str(err))
    if not valid:
        return Reply(
            401,
            error="Slack signature missing, wrong or older than 300 s (X-Slack-Signature, "
            "X-Slack-Request-Timestamp); check RUNBOOKS_SLACK_SIGNING_SECRET against the "
            "Slack app's signing secret",
        )
    try:
        payload = json.loads(parse_qs(raw.decode())["payload"][0])
    except (UnicodeDecodeError, KeyError, IndexError, json.JSONDecodeError):
        return Reply(400, error="expected the form field payload=<JSON> that Slack sends")
    signature = {k.lower(): v for k, v in headers.items()}.get("x-slack-signature", "")
    return act(payload, policy, database_url, once=signature)


def over_socket_mode(
    policy: Policy, database_url: str, poke: Callable[[], None] = lambda: None
) -> notifications.SlackSocket:
    """The same presses over Socket Mode: Slack has authenticated the connection, so there
    is no signature; the envelope id makes a redelivered press do nothing twice."""

    def on_interaction(payload: dict[str, Any], envelope_id: str) -> None:
        reply = act(payload, policy, database_url, once=f"socket:{envelope_id}")
        poke()
        reply.after()

    return notifications.SlackSocket(on_interaction)


def act(payload: dict[str, Any], policy: Policy, database_url: str, once: str) -> Reply:
    """One button press. `once` identifies the request: a second with it does nothing."""
    actions = payload.get("actions") or []
    if payload.get("type") != "block_actions" or not actions:
        return Reply(200)  # shortcuts, views, ...: not ours
    action = actions[0]
    action_id = action.get("action_id")
    if action_id not in ACTIONS:
        return Reply(200)
    response_url = payload.get("response_url") or ""
    try:
        value = json.loads(action.get("value") or "")
        incident_id = int(value["incident"])
        approval_id = int(value["approval"]) if value.get("approval") is not None else None
    except (TypeError, ValueError, KeyError):
        return Reply(200, "This button is not one ML Runbooks sent; nothing was done.")
    with session_scope(database_url) as s:
        if s.get(Incident, incident_id) is None:
            return Reply(200, f"Incident {incident_id} does not exist; nothing was done.")
    if not _first_time(database_url, incident_id, once):
        return Reply(200, f"This {ACTIONS[action_id]} was already received; nothing more done.")
    user = payload.get("user") or {}
    uid = user.get("id") or ""
    person = policy.person_of_slack_user(uid)
    if person is None:
        label = user.get("username") or user.get("name") or "?"
        with session_scope(database_url) as s:
            add_timeline(
                s,
                incident_id,
                "slack",
                "refused",
                f"Slack {ACTIONS[action_id]} refused: Slack user {uid} ({label}) is none of "
                f"the policy's people; add them as people.NAME.slack: {uid}",
            )
        return Reply(
            200,
            f"You (<@{uid}>) are none of the people in ML Runbooks' policy, so your "
            f"{ACTIONS[action_id]} was not taken. Ask for people.<your name>.slack: {uid}.",
            response_url=response_url,
        )
    if action_id == "ack":
        return _acknowledge(database_url, incident_id, person, response_url)
    try:
        answer = check_answer(
            incident_id,
            person,
            action_id == "approve",
            "via Slack",
            via="slack",
            approval_id=approval_id,
            database_url=database_url,
        )
    except ApprovalAnswerError as err:
        return Reply(200, str(err), response_url=response_url)

    def resume() -> None:
        try:
            resume_with_answer(answer, database_url=database_url)
        except ApprovalAnswerError as err:
            with session_scope(database_url) as s:
                add_timeline(s, incident_id, person, "refused", f"Slack answer not taken: {err}")
            if response_url:
                notifications.reply_in_slack(response_url, str(err))

    verb = "Approving" if answer.approve else "Rejecting"
    return Reply(
        200,
        f"{verb} {answer.action} for incident {incident_id} as {person}.",
        response_url=response_url,
        then=resume,
    )


def _acknowledge(database_url: str, incident_id: int, person: str, response_url: str) -> Reply:
    with session_scope(database_url) as s:
        incident = s.get(Incident, incident_id)
        try:
            first = acknowledge(s, incident, person, via="slack")
        except IncidentStateError as err:
            return Reply(200, str(err), response_url=response_url)
        already_by = incident.acknowledged_by
    if not first:
        return Reply(
            200,
            f"Incident {incident_id} was already acknowledged by {already_by}.",
            response_url=response_url,
        )

    def announce() -> None:
        notifications.notify.fn(incident_id, "acknowledged", data={"by": person, "via": "slack"})

    return Reply(
        200,
        f"Incident {incident_id} acknowledged by {person}; the escalation clock has stopped.",
        response_url=response_url,
        then=announce,
    )


def _first_time(database_url: str, incident_id: int, once: str) -> bool:
    try:
        with session_scope(database_url) as s:
            s.add(IncidentNotice(incident_id=incident_id, key=f"slack:{once}"))
        return True
    except IntegrityError:
        return False
