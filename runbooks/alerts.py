"""Alerts as they arrive: Alertmanager's webhook (version 4), the generic JSON alert and the
manual incident report, each turned into one normalized `AlertIn`.

Errors name the field and the fix; the intake turns them into 4xx answers.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runbooks.policy import normalize_severity

# Alertmanager sends this for "no end time yet".
_ZERO_TIME = "0001-01-01T00:00:00Z"
MODEL_LABELS = ("model", "model_name", "deployment")


class AlertPayloadError(ValueError):
    """The posted alert is malformed; the message names the field and the fix."""


class AlertIn(BaseModel):
    """One alert, whatever sent it."""

    fingerprint: str
    status: Literal["firing", "resolved"]
    model: str
    alertname: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None
    source: str


def fingerprint_of(labels: dict[str, str]) -> str:
    """A stable hash of the label set, for senders that do not give one (as Alertmanager does)."""
    canon = "\x1f".join(f"{k}\x1e{labels[k]}" for k in sorted(labels))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def model_of(labels: dict[str, str]) -> str | None:
    for key in MODEL_LABELS:
        if labels.get(key):
            return labels[key]
    return None


def _describe(err: ValidationError, prefix: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or "body")
        parts.append(f"{key}: {e['msg']}")
    return "; ".join(parts)


def _rfc3339(value: Any) -> Any:
    """Times are RFC 3339 strings; a bare number is more likely a bug than epoch seconds."""
    if not isinstance(value, str | datetime):
        raise ValueError("expected an RFC 3339 time string such as 2026-11-22T19:42:36Z")
    return value


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in_utc(value: datetime | None) -> datetime | None:
    """In UTC at validation, so that a time that leaves the calendar there is the field's
    error (it was an OverflowError, a 500: 0001-01-01T00:00:00+01:00)."""
    try:
        return None if value is None else _aware(value)
    except OverflowError:
        raise ValueError("out of range in UTC; give a time between years 1 and 9999") from None


class _AMAlert(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    fingerprint: str | None = None

    @field_validator("endsAt", mode="before")
    @classmethod
    def _zero_is_none(cls, v: Any) -> Any:
        return None if v in (None, "", _ZERO_TIME) else _rfc3339(v)

    _starts = field_validator("startsAt", mode="before")(lambda cls, v: _rfc3339(v))
    _utc = field_validator("startsAt", "endsAt")(lambda cls, v: _in_utc(v))


class _AMWebhook(BaseModel):
    model_config = ConfigDict(extra="allow")
    version: str
    status: Literal["firing", "resolved"]
    alerts: list[_AMAlert] = Field(min_length=1)

    @field_validator("version")
    @classmethod
    def _v4(cls, v: str) -> str:
        if v != "4":
            raise ValueError(f"only Alertmanager webhook version 4 is understood, got {v!r}")
        return v


def parse_alertmanager(body: Any) -> list[AlertIn]:
    if not isinstance(body, dict):
        raise AlertPayloadError("body: expected a JSON object in Alertmanager's webhook format")
    try:
        hook = _AMWebhook.model_validate(body)
    except ValidationError as err:
        raise AlertPayloadError(_describe(err, "")) from None
    out = []
    for i, a in enumerate(hook.alerts):
        model = model_of(a.labels)
        if not model:
            raise AlertPayloadError(
                f"alerts.{i}.labels: no model label; add one of {', '.join(MODEL_LABELS)} "
                "to the alerting rule's labels"
            )
        out.append(
            AlertIn(
                fingerprint=a.fingerprint or fingerprint_of(a.labels),
                status=a.status,
                model=model,
                alertname=a.labels.get("alertname", "unnamed"),
                labels=a.labels,
                annotations=a.annotations,
                starts_at=_aware(a.startsAt),
                ends_at=_aware(a.endsAt) if a.endsAt else None,
                source="alertmanager",
            )
        )
    return out


class GenericAlert(BaseModel):
    """`POST /api/v1/alerts`: one object or a list of them. See docs/intake.md."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, description="The model the alert is about.")
    alertname: str = Field(min_length=1, description="What fired, e.g. ModelF1Low.")
    status: Literal["firing", "resolved"] = "firing"
    metric: str | None = Field(None, description="What crossed: f1_score, psi, null_rate ...")
    value: float | None = Field(None, description="The observed value.")
    baseline: float | None = Field(None, description="The model's reference value.")
    feature: str | None = None
    severity: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    fingerprint: str | None = None
    source: str = Field("generic", max_length=64)

    _times = field_validator("startsAt", "endsAt", mode="before")(
        lambda cls, v: None if v is None else _rfc3339(v)
    )
    _utc = field_validator("startsAt", "endsAt")(lambda cls, v: _in_utc(v))

    def to_alert(self, received: datetime) -> AlertIn:
        labels = {"alertname": self.alertname, "model": self.model, **self.labels}
        for key in ("metric", "feature", "severity"):
            if getattr(self, key) is not None:
                labels.setdefault(key, str(getattr(self, key)))
        annotations = dict(self.annotations)
        for key in ("value", "baseline"):
            if getattr(self, key) is not None:
                annotations.setdefault(key, repr(getattr(self, key)))
        return AlertIn(
            fingerprint=self.fingerprint or fingerprint_of(labels),
            status=self.status,
            model=self.model,
            alertname=self.alertname,
            labels=labels,
            annotations=annotations,
            # Without startsAt, an alert is one delivery per label set while it fires.
            starts_at=_aware(self.startsAt) if self.startsAt else _EPOCH,
            ends_at=_aware(self.endsAt) if self.endsAt else None,
            source=self.source,
        )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def onset_of(alert: AlertIn) -> datetime | None:
    """When the problem the alert reports began: its startsAt; None for a generic alert
    sent without one (its starts_at is the dedup placeholder, not a moment)."""
    return None if alert.starts_at == _EPOCH else _aware(alert.starts_at)


def parse_generic(body: Any, received: datetime) -> list[AlertIn]:
    items = body if isinstance(body, list) else [body]
    if not items:
        raise AlertPayloadError("body: empty list; post one alert object or a list of them")
    out = []
    for i, item in enumerate(items):
        prefix = f"[{i}]" if isinstance(body, list) else ""
        if not isinstance(item, dict):
            raise AlertPayloadError(f"{prefix or 'body'}: expected a JSON object")
        try:
            out.append(GenericAlert.model_validate(item).to_alert(received))
        except ValidationError as err:
            raise AlertPayloadError(_describe(err, prefix)) from None
    return out


class IncidentReport(BaseModel):
    """`POST /api/v1/model-governance/{model_id}/incidents`: a human's report."""

    model_config = ConfigDict(extra="forbid")
    severity: str = Field(description="P1, P2, P3 (or critical, high, medium, low).")
    type: str = Field(min_length=1, description="e.g. performance_degradation, bias.")
    description: str = Field(min_length=1)
    impact: str = ""
    reportedBy: str = Field(min_length=1)

    @field_validator("severity")
    @classmethod
    def _known(cls, v: str) -> str:
        sev = normalize_severity(v)
        if sev is None:
            raise ValueError(
                f"unknown severity {v!r}; use P1, P2, P3, critical, high, medium or low"
            )
        return sev


def parse_report(model: str, body: Any, received: datetime) -> tuple[IncidentReport, AlertIn]:
    if not isinstance(body, dict):
        raise AlertPayloadError("body: expected a JSON object with severity, type, description")
    try:
        report = IncidentReport.model_validate(body)
    except ValidationError as err:
        raise AlertPayloadError(_describe(err, "")) from None
    labels = {
        "alertname": "ManualReport",
        "model": model,
        "severity": report.severity,
        "incident_type": report.type,
    }
    alert = AlertIn(
        fingerprint=fingerprint_of({**labels, "at": received.isoformat()}),
        status="firing",
        model=model,
        alertname="ManualReport",
        labels=labels,
        annotations={
            "description": report.description,
            "impact": report.impact,
            "reported_by": report.reportedBy,
        },
        starts_at=received,
        ends_at=None,
        source="manual",
    )
    return report, alert
