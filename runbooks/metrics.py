"""An incident's response times, from the moments kept on it: the one definition the
post-mortem, the report and the weekly review share.

- time to detect: onset (the first alert's startsAt, the sweep's first breach) -> opened
- time to acknowledge: opened -> the first acknowledgement
- time to contain: opened -> mitigated (the containment verified, or a person said so)
- time to resolve: opened -> resolved

Each is seconds, or None where the incident has no such moment (never acknowledged, still
active, an onset after the opening from a clock that is off).
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

METRICS = ("time_to_detect", "time_to_acknowledge", "time_to_contain", "time_to_resolve")


class Moments(Protocol):
    onset_at: datetime | None
    opened_at: datetime
    acknowledged_at: datetime | None
    mitigated_at: datetime | None
    resolved_at: datetime | None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    s = (end - start).total_seconds()
    return s if s >= 0 else None


def response_times(i: Moments) -> dict[str, float | None]:
    return {
        "time_to_detect": _seconds(i.onset_at, i.opened_at),
        "time_to_acknowledge": _seconds(i.opened_at, i.acknowledged_at),
        "time_to_contain": _seconds(i.opened_at, i.mitigated_at),
        "time_to_resolve": _seconds(i.opened_at, i.resolved_at),
    }
