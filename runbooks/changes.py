"""Who changed what outside any one incident: silences and the kill switch. Each change is
a ChangeRecord in the same transaction as the change (GET /api/v1/changes lists them)."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, select

from runbooks.models import ChangeRecord


def record_change(
    session: Session, by: str, action: str, subject: str, detail: dict[str, Any] | None = None
) -> ChangeRecord:
    row = ChangeRecord(by=by or "unknown", action=action, subject=subject, detail=detail or {})
    session.add(row)
    return row


def recent_changes(session: Session, limit: int = 50) -> list[ChangeRecord]:
    q = select(ChangeRecord).order_by(col(ChangeRecord.id).desc()).limit(limit)
    return list(session.exec(q).all())
