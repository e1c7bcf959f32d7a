"""Prefect events staged in the outbox, in the same transaction as the change they announce.

deployments/outbox.py sends them; a rolled-back change never announces anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from runbooks.models import Incident, OutboxEvent

if TYPE_CHECKING:
    from runbooks.ingest import _Open


def model_resource(model: str) -> dict[str, str]:
    return {"prefect.resource.id": f"ml.model.{model}", "prefect.resource.name": model}


def enqueue_event(
    session: Session,
    event: str,
    incident: Incident | _Open,
    payload: dict[str, Any],
    labels: dict[str, str] | None = None,
) -> OutboxEvent:
    """Stage a Prefect event in the same transaction as the change it announces. `labels`
    go on the resource, where a deployment trigger's `match` can select on them."""
    out = OutboxEvent(
        event=event,
        resource={**model_resource(incident.model), **(labels or {})},
        related=[
            {
                "prefect.resource.id": f"ml.incident.{incident.id}",
                "prefect.resource.role": "incident",
            }
        ],
        payload={"incident_id": incident.id, "model": incident.model, **payload},
    )
    session.add(out)
    return out
