"""What every check returns: findings a flow can group, grade and act on, not booleans."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Severity = Literal["P1", "P2", "P3", "info"]


class CheckInputError(ValueError):
    """The data given to a check cannot be checked; the message names the fix."""


class Finding(BaseModel):
    """One observation of a check, passed or not, with the measured values behind it."""

    model_config = ConfigDict(frozen=True)

    title: str
    severity: Severity | None = None
    key: str = Field(description="Grouping key, e.g. 'drift:V14' or 'null_rate:amount'.")
    check: str = Field(description="Name of the check that produced it, e.g. 'psi'.")
    passed: bool
    observed: dict[str, Any] = Field(default_factory=dict)
    threshold: dict[str, Any] = Field(default_factory=dict)
    message: str = ""


_RANK: dict[str | None, int] = {"P1": 0, "P2": 1, "P3": 2, "info": 3, None: 4}


def worst(findings: list[Finding]) -> Severity | None:
    """The most severe severity among failed findings, None when everything passed."""
    failed = [f.severity for f in findings if not f.passed and f.severity is not None]
    return min(failed, key=lambda s: _RANK[s]) if failed else None


def failed(findings: list[Finding]) -> list[Finding]:
    """Failed findings, most severe first."""
    return sorted((f for f in findings if not f.passed), key=lambda f: _RANK[f.severity])
