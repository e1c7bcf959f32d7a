"""Silences in the store: create, list, expire. The rules of a silence live in suppression."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlmodel import Session, col, select

from runbooks import suppression as sup
from runbooks.changes import record_change
from runbooks.models import Silence as SilenceRow
from runbooks.models import utcnow

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d|w)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class SilenceInputError(ValueError):
    """Bad silence input; the message names the field and the fix."""


def parse_duration(text: str) -> timedelta:
    m = _DURATION.match(text.strip())
    if not m:
        raise SilenceInputError(f"duration: {text!r} is not a duration; write e.g. 90m, 2h or 1d")
    return timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2)])


def _time(value: Any, field: str) -> datetime:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise SilenceInputError(f"{field}: expected an RFC 3339 time such as 2026-11-23T14:00:00Z")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SilenceInputError(
            f"{field}: {value!r} is not an RFC 3339 time; write e.g. 2026-11-23T14:00:00Z"
        ) from None


def build(body: Any, now: datetime) -> sup.Silence:
    """A silence from the API's JSON (Alertmanager's field names, plus `duration`)."""
    if not isinstance(body, dict):
        raise SilenceInputError("body: expected a JSON object with matchers, endsAt or duration")
    known = {"matchers", "startsAt", "endsAt", "duration", "createdBy", "comment"}
    extra = sorted(set(body) - known)
    if extra:
        raise SilenceInputError(f"{extra[0]}: not a silence field; use {', '.join(sorted(known))}")
    if body.get("endsAt") and body.get("duration"):
        raise SilenceInputError("endsAt, duration: give one of them, not both")
    if not body.get("endsAt") and not body.get("duration"):
        raise SilenceInputError("endsAt: missing; give endsAt or a duration such as 2h")
    try:
        starts = _time(body["startsAt"], "startsAt") if body.get("startsAt") else now
        if body.get("endsAt"):
            ends = _time(body["endsAt"], "endsAt")
        else:
            ends = starts + parse_duration(str(body["duration"]))
        starts, ends = starts.astimezone(UTC), ends.astimezone(UTC)
    except OverflowError:
        # A 500 before: 99999999999h, or year 1 or 9999 at an offset that leaves it in UTC.
        raise SilenceInputError(
            "startsAt, endsAt, duration: out of the calendar's range; give times between "
            "years 1 and 9999 in UTC and a duration such as 2h"
        ) from None
    try:
        return sup.Silence(
            matchers=body.get("matchers") or [],
            starts_at=starts,
            ends_at=ends,
            created_by=body.get("createdBy", ""),
            comment=body.get("comment", ""),
        )
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise SilenceInputError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
    except sup.SuppressionError as err:
        raise SilenceInputError(str(err)) from None


def add(session: Session, silence: sup.Silence) -> SilenceRow:
    row = SilenceRow(
        id=silence.id,
        matchers=[m.model_dump() for m in silence.matchers],
        starts_at=silence.starts_at,
        ends_at=silence.ends_at,
        created_by=silence.created_by,
        comment=silence.comment,
    )
    session.add(row)
    record_change(
        session,
        silence.created_by,
        "silence.add",
        silence.id,
        {
            "matchers": row.matchers,
            "ends_at": silence.ends_at.isoformat(),
            "comment": silence.comment,
        },
    )
    return row


def to_model(row: SilenceRow) -> sup.Silence:
    return sup.Silence(
        id=row.id,
        matchers=row.matchers,  # type: ignore[arg-type]
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        created_by=row.created_by,
        comment=row.comment,
    )


def view(row: SilenceRow, now: datetime) -> dict[str, Any]:
    s = to_model(row)
    return {
        "id": row.id,
        "matchers": [str(m) for m in s.matchers],
        "startsAt": row.starts_at.isoformat(),
        "endsAt": row.ends_at.isoformat(),
        "createdBy": row.created_by,
        "comment": row.comment,
        "state": sup.silence_state(s, now).value,
    }


def listing(session: Session, state: str | None, now: datetime) -> list[dict[str, Any]]:
    if state not in (None, "", "all", "active", "pending", "expired"):
        raise SilenceInputError(f"state: {state!r}; use active, pending, expired or all")
    rows = session.exec(select(SilenceRow).order_by(col(SilenceRow.created_at).desc()))
    views = [view(r, now) for r in rows]
    if state and state != "all":
        views = [v for v in views if v["state"] == state]
    return views


def expire(
    session: Session, silence_id: str, now: datetime | None = None, by: str = ""
) -> SilenceRow | None:
    row = session.get(SilenceRow, silence_id)
    if row is None:
        return None
    done = sup.expire(to_model(row), now or utcnow())
    row.starts_at, row.ends_at = done.starts_at, done.ends_at
    session.add(row)
    record_change(session, by, "silence.expire", silence_id, {"ends_at": row.ends_at.isoformat()})
    return row
