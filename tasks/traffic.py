"""A model's traffic between two versions: read it, set it, and measure each version.

One `Split` per kind of target, so the gradual rollback runbook does not know which it
drives: the platform's traffic endpoint (here), Kubernetes by the replica ratio of two
version Deployments behind one Service, KServe by canaryTrafficPercent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from checks.rollout import Counts
from tasks import platform as ml_platform


class NoSplit(RuntimeError):
    """The target cannot split traffic between two versions: nothing is changed."""


@dataclass(frozen=True)
class Split:
    """A model's traffic between the version being rolled back and the stable one."""

    where: str
    traffic: dict[str, int]
    bad: str
    stable: str
    apply: Callable[[dict[str, int]], dict[str, Any]]
    counts: Callable[[str], Counts | None]

    def at(self, percent: int) -> dict[str, int]:
        return {self.stable: percent, self.bad: 100 - percent}


def platform_split(url: str, name: str) -> Split:
    """The split on a model platform's traffic endpoint; counts from its versionMetrics."""
    status = ml_platform.get_model_status(url, name)
    where = f"model {name} on {url}"
    current, previous = status.get("currentVersion"), status.get("previousVersion")
    if not previous or previous not in status.get("versions", [previous]):
        raise NoSplit(f"{where} reports no previousVersion to shift traffic back to")
    if "traffic" not in status:
        raise NoSplit(
            f"{where} reports no traffic split; a gradual rollback needs its "
            "POST .../traffic endpoint (use immediate_rollback for this target)"
        )

    def apply(split: dict[str, int]) -> dict[str, Any]:
        answer = ml_platform.post_model_traffic(url, name, split)
        seen = {v: p for v, p in answer.get("traffic", {}).items() if p}
        if seen != {v: p for v, p in split.items() if p}:
            raise RuntimeError(f"{where} reads back traffic {seen} after setting {split}")
        return {"traffic": answer["traffic"]}

    def counts(version: str) -> Counts | None:
        metrics = ml_platform.get_model_status(url, name).get("versionMetrics", {})
        return Counts.of(metrics[version]) if version in metrics else None

    return Split(where, dict(status["traffic"]), current, previous, apply, counts)
