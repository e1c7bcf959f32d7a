"""What the runbooks say to people, one function per moment of an incident.

The formats are the seed runbooks' own: the first alert (severity, model, issue, impact,
status, assignee, links), updates, the approval question with its buttons, escalations,
missed deadlines and the resolution summary (duration, root cause, action taken). Each
message is Slack Block Kit blocks plus the same words as plain text for email, PagerDuty
and webhooks. Pure: whatever a message needs from the store comes in `data`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from runbooks.models import Incident, utcnow
from runbooks.policy import Policy

KINDS = (
    "opened",
    "update",
    "approval",
    "decided",
    "acknowledged",
    "needs_human",
    "escalation",
    "deadline_missed",
    "resolved",
)
SEVERITY_WORD = {"P1": "critical", "P2": "high", "P3": "info"}
ICON = {"P1": ":red_circle:", "P2": ":large_orange_circle:", "P3": ":large_blue_circle:"}
# Block Kit limits: header text 150 characters, section text 3000.
HEADER_MAX, SECTION_MAX = 150, 3000


@dataclass(frozen=True)
class Links:
    run: str = ""  # the runbook's flow run in the Prefect UI
    incident: str = ""


@dataclass(frozen=True)
class Message:
    kind: str
    title: str  # one line: an email's subject, PagerDuty's summary
    text: str  # Slack's notification text (mrkdwn, mentions)
    plain: str  # the same words without Slack markup: email body, webhook
    blocks: list[dict[str, Any]]


class MessageError(ValueError):
    """A message kind that does not exist, or data it cannot do without."""


def render(
    kind: str,
    incident: Incident,
    policy: Policy,
    *,
    people: Sequence[str] = (),
    data: Mapping[str, Any] | None = None,
    links: Links = Links(),
    now: datetime | None = None,
) -> Message:
    """The message of `kind` about `incident`; `people` are mentioned by their Slack ids."""
    build = _BUILDERS.get(kind)
    if build is None:
        raise MessageError(f"no message kind {kind!r}; the kinds are {', '.join(KINDS)}")
    ctx = _Ctx(kind, incident, policy, list(people), dict(data or {}), links, now or utcnow())
    return build(ctx)


def mention(policy: Policy, name: str) -> str:
    person = policy.people.get(name)
    return f"<@{person.slack}>" if person and person.slack else f"*{name}*"


def impact(policy: Policy, model: str) -> str:
    b = policy.for_model(model).business
    if not b.revenue_per_hour and not b.users:
        return f"not in the policy (models.{model}.business)"
    parts = []
    if b.revenue_per_hour:
        parts.append(f"${b.revenue_per_hour:,.0f}/h revenue at risk")
    if b.users:
        parts.append(f"{b.users:,} users")
    return ", ".join(parts)


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def button_value(incident_id: int, approval_id: int | None = None) -> str:
    value: dict[str, int] = {"incident": incident_id}
    if approval_id is not None:
        value["approval"] = approval_id
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class _Ctx:
    kind: str
    incident: Incident
    policy: Policy
    people: list[str]
    data: dict[str, Any]
    links: Links
    now: datetime

    @property
    def sev(self) -> str:
        return self.incident.severity or self.policy.default_severity

    @property
    def ref(self) -> str:
        return f"incident {self.incident.id} on {self.incident.model}"

    def who(self, names: Sequence[str]) -> str:
        return ", ".join(mention(self.policy, n) for n in names) or "nobody"

    def plain_who(self, names: Sequence[str]) -> str:
        return ", ".join(names) or "nobody"


def _message(
    ctx: _Ctx,
    title: str,
    lines: list[tuple[str, str]],
    *,
    body: str = "",
    buttons: list[dict[str, Any]] | None = None,
    icon: str = "",
) -> Message:
    """Header, a section of `label: value` fields, the body, the links and the buttons.
    `lines` hold Slack mrkdwn values; their plain twins drop the mentions' markup."""
    header = f"{icon} {title}".strip()
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(header, HEADER_MAX)}}
    ]
    if lines:
        blocks.append(
            {
                "type": "section",
                "fields": [
                    {"type": "mrkdwn", "text": _cut(f"*{k}*\n{v}", 2000)} for k, v in lines[:10]
                ],
            }
        )
    if body:
        blocks.append(
            {"type": "section", "text": {"type": "mrkdwn", "text": _cut(body, SECTION_MAX)}}
        )
    link_text = _links(ctx.links, slack=True)
    if link_text:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": link_text}]})
    if buttons:
        blocks.append(
            {"type": "actions", "block_id": f"incident-{ctx.incident.id}", "elements": buttons}
        )
    mentions = f" {ctx.who(ctx.people)}" if ctx.people else ""
    text = f"{title}{mentions}"
    plain_lines = [title, ""] + [f"{k}: {_unmark(ctx, v)}" for k, v in lines]
    plain_text = _unmark(ctx, body)
    if plain_text:
        plain_lines += ["", plain_text]
    plain_links = _links(ctx.links, slack=False)
    if plain_links:
        plain_lines += ["", plain_links]
    return Message(ctx.kind, title, text, "\n".join(plain_lines), blocks)


def _links(links: Links, *, slack: bool) -> str:
    parts = []
    for url, label in ((links.run, "Runbook run"), (links.incident, "Incident")):
        if url:
            parts.append(f"<{url}|{label}>" if slack else f"{label}: {url}")
    return " · ".join(parts) if slack else "\n".join(parts)


def _unmark(ctx: _Ctx, text: str) -> str:
    for name, person in ctx.policy.people.items():
        if person.slack:
            text = text.replace(f"<@{person.slack}>", name)
    return text.replace("*", "")


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _button(text: str, action_id: str, value: str, style: str | None = None) -> dict[str, Any]:
    b: dict[str, Any] = {
        "type": "button",
        "text": {"type": "plain_text", "text": text},
        "action_id": action_id,
        "value": value,
    }
    if style:
        b["style"] = style
    return b


def _ack_button(ctx: _Ctx) -> list[dict[str, Any]]:
    if ctx.incident.acknowledged_at is not None:
        return []
    return [_button("Acknowledge", "ack", button_value(ctx.incident.id))]


def _opened(ctx: _Ctx) -> Message:
    i = ctx.incident
    assignee = mention(ctx.policy, i.assignee) if i.assignee else "nobody yet"
    lines = [
        ("Severity", f"{ctx.sev} {SEVERITY_WORD.get(ctx.sev, '')}".strip()),
        ("Model", i.model),
        ("Impact", impact(ctx.policy, i.model)),
        ("Status", i.status),
        ("Assignee", assignee),
    ]
    if i.type:
        lines.insert(2, ("Type", i.type))
    return _message(
        ctx,
        f"{ctx.sev} incident {i.id}: {i.model}: {i.title}",
        lines,
        body=f"*Issue*: {i.description or i.title}",
        buttons=_ack_button(ctx),
        icon=":rotating_light:",
    )


def _update(ctx: _Ctx) -> Message:
    i = ctx.incident
    news = ctx.data.get("message") or "no change since the last update"
    every = ctx.policy.notifications.update_minutes
    lines = [("Status", i.status), ("Severity", ctx.sev)]
    if i.assignee:
        lines.append(("Assignee", mention(ctx.policy, i.assignee)))
    if every:
        lines.append(("Next update", f"in {every:g} min"))
    return _message(ctx, f"Update on {ctx.ref}", lines, body=news, icon=ICON.get(ctx.sev, ""))


def _approval(ctx: _Ctx) -> Message:
    d = ctx.data
    if "approval_id" not in d:
        raise MessageError("an approval message needs data['approval_id']")
    action = d.get("action", "the action")
    approvers = list(d.get("approvers") or ctx.people)
    value = button_value(ctx.incident.id, int(d["approval_id"]))
    lines = [("Action", action), ("Severity", ctx.sev), ("May approve", ctx.who(approvers))]
    if d.get("expires_at"):
        lines.append(("Answer by", _when(d["expires_at"])))
    cli = f"runbooks approve {ctx.incident.id} --by NAME [--reject]"
    return _message(
        ctx,
        f"Approval needed: {action} on {ctx.ref}",
        lines,
        body=f"*Why*: {d.get('why') or 'the runbook asks before it acts'}\nOr: `{cli}`",
        buttons=[
            _button("Approve", "approve", value, "primary"),
            _button("Reject", "reject", value, "danger"),
        ],
        icon=":raised_hand:",
    )


def _decided(ctx: _Ctx) -> Message:
    d = ctx.data
    action, status = d.get("action", "the action"), d.get("status", "decided")
    by = d.get("by") or "someone"
    who = "the approval timer" if status == "timed_out" else mention(ctx.policy, by)
    said = status.replace("_", " ")
    comment = d.get("comment") or ""
    icon = {"approved": ":white_check_mark:", "rejected": ":no_entry:"}.get(status, ":hourglass:")
    return _message(
        ctx,
        f"{action} on {ctx.ref}: {said}",
        [("Decided by", who), ("Severity", ctx.sev)],
        body=f"*Comment*: {comment}" if comment else "",
        icon=icon,
    )


def _acknowledged(ctx: _Ctx) -> Message:
    by = ctx.data.get("by") or ctx.incident.acknowledged_by or "someone"
    via = ctx.data.get("via")
    return _message(
        ctx,
        f"{ctx.ref} acknowledged by {by}",
        [("By", mention(ctx.policy, by))] + ([("Via", via)] if via else []),
        body="The escalation clock has stopped.",
        icon=":eyes:",
    )


def _needs_human(ctx: _Ctx) -> Message:
    why = ctx.data.get("why") or ctx.incident.needs_human or "the runbook cannot go on alone"
    assignee = ctx.incident.assignee
    lines = [("Severity", ctx.sev), ("Status", ctx.incident.status)]
    if assignee:
        lines.append(("Assignee", mention(ctx.policy, assignee)))
    return _message(
        ctx,
        f"{ctx.ref} needs a human",
        lines,
        body=f"*Why*: {why}",
        buttons=_ack_button(ctx),
        icon=":sos:",
    )


def _escalation(ctx: _Ctx) -> Message:
    level = ctx.data.get("level") or "the next level"
    minutes = ctx.data.get("minutes")
    since = f"{float(minutes):g} min" if minutes is not None else "too long"
    return _message(
        ctx,
        f"Escalation: {ctx.ref} to {level}",
        [
            ("Severity", ctx.sev),
            ("Reached", ctx.who(ctx.people)),
            ("Unacknowledged for", since),
        ],
        body=f"Nobody has acknowledged {ctx.incident.title!r} yet; please take it.",
        buttons=_ack_button(ctx),
        icon=":rotating_light:",
    )


def _deadline_missed(ctx: _Ctx) -> Message:
    deadline = ctx.data.get("deadline") or "a deadline"
    sla = ctx.data.get("minutes")
    lines = [("Severity", ctx.sev), ("Deadline", deadline), ("Status", ctx.incident.status)]
    if sla is not None:
        lines.append(("SLA", f"{float(sla):g} min"))
    return _message(ctx, f"{ctx.ref} missed its {deadline} deadline", lines, icon=":alarm_clock:")


def _resolved(ctx: _Ctx) -> Message:
    i = ctx.incident
    took = duration(((i.resolved_at or ctx.now) - i.opened_at).total_seconds())
    lines = [
        ("Duration", took),
        ("Severity", ctx.sev),
        ("Root cause", ctx.data.get("root_cause") or "not yet known"),
        ("Action taken", ctx.data.get("action") or "none"),
    ]
    return _message(ctx, f"Resolved: {ctx.ref} after {took}", lines, icon=":white_check_mark:")


def _when(value: Any) -> str:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return f"{value:%Y-%m-%d %H:%M} UTC"


_BUILDERS: dict[str, Callable[[_Ctx], Message]] = {
    "opened": _opened,
    "update": _update,
    "approval": _approval,
    "decided": _decided,
    "acknowledged": _acknowledged,
    "needs_human": _needs_human,
    "escalation": _escalation,
    "deadline_missed": _deadline_missed,
    "resolved": _resolved,
}
