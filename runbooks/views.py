"""The incident as a runbook reads it: the store's row and its alerts, as typed values.

`read_incident` builds an `IncidentView` from the SQLModel rows; the flows, tasks and
triage's decision read its attributes, so what an incident carries is said here once.
Frozen: a runbook that wants fresher state reads the incident again. Plain pydantic models
of this package, so Prefect pickles them by reference and they dump to the row's JSON.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict

from runbooks.models import Alert, Incident


class AlertView(BaseModel):
    """One alert of the incident: the columns of `runbooks.models.Alert`."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: int
    fingerprint: str
    starts_at: AwareDatetime
    ends_at: AwareDatetime | None = None
    status: str
    model: str
    alertname: str
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    source: str = "generic"
    received_at: AwareDatetime
    incident_id: int | None = None
    suppressed_reason: str | None = None
    category: str | None = None
    type: str | None = None


class IncidentView(BaseModel):
    """One incident: the columns of `runbooks.models.Incident`, and its alerts."""

    model_config = ConfigDict(frozen=True, from_attributes=True)

    id: int
    model: str
    title: str
    status: str
    severity: str | None = None
    type: str | None = None
    strategy: str | None = None
    assignee: str | None = None
    group_key: str
    open_group_key: str | None = None
    source: str = "alert"
    description: str = ""
    opened_at: AwareDatetime
    updated_at: AwareDatetime
    mitigated_at: AwareDatetime | None = None
    resolved_at: AwareDatetime | None = None
    closed_at: AwareDatetime | None = None
    suppressed_reason: str | None = None
    category: str | None = None
    criticality: float | None = None
    route: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    last_alert_at: AwareDatetime | None = None
    triage_run: str | None = None
    needs_human: str | None = None
    acknowledged_at: AwareDatetime | None = None
    acknowledged_by: str | None = None
    reopened_at: AwareDatetime | None = None
    reopened_count: int = 0
    onset_at: AwareDatetime | None = None
    postmortem_accepted_by: str | None = None
    postmortem: dict[str, Any] | None = None
    next_due_at: AwareDatetime | None = None
    clock_policy: str | None = None
    alerts: list[AlertView] = []

    @classmethod
    def of(cls, incident: Incident, alerts: Iterable[Alert]) -> IncidentView:
        return cls.model_validate(
            {
                **incident.model_dump(),
                "alerts": [AlertView.model_validate(a) for a in alerts],
            }
        )
