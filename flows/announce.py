"""Runbook step: tell people what became of an incident.

Started by prefect.yaml's triggers on the incident's own events, so every path that
resolves an incident (a runbook's verification, the intake when every alert resolved) or
hands it to a person (any runbook's defined outcome) is announced the same way, once per
event: the incident's channels (routing.channels of its severity), in its Slack thread.

The first message (opened) is sent by triage itself, which knows the assignee first.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from pydantic import BaseModel, Field

from tasks.notifications import notify

KIND_OF_EVENT = {
    "ml.incident.resolved": "resolved",
    "ml.incident.needs_human": "needs_human",
}


class AnnounceRequest(BaseModel):
    incident_id: int = Field(description="The incident the event is about.")
    event: str = Field(description="The event's name: " + ", ".join(KIND_OF_EVENT) + ".")
    reason: str = Field("", description="Why (needs_human's reason, resolved's why).")


@flow(name="announce", log_prints=True)
def announce(request: AnnounceRequest) -> str:
    kind = KIND_OF_EVENT.get(request.event)
    if kind is None:
        raise ValueError(
            f"announce: no message for event {request.event!r}; it sends "
            f"{', '.join(KIND_OF_EVENT)} (check the trigger in prefect.yaml)"
        )
    data: dict[str, Any] = {"why": request.reason} if request.reason else {}
    deliveries = notify(request.incident_id, kind, data=data)
    sent = [d.channel for d in deliveries if d.status == "sent"]
    return f"{kind}: sent to {', '.join(sent) or 'no channel'}"
