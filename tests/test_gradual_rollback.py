"""Gradual rollback on the sandbox platform's traffic endpoint: metrics improve (every step
succeeds, resolved), worsen mid-way (aborted, the split before the step restored), or say
too little (a human is asked; a rejection holds the split), and a dry run changes nothing.

Runs in-process against the session's Prefect server and a sandbox platform of this module
whose models serve the bad v2 with the good v1 behind it; each test has its own model.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlmodel import select

from deployments.cli import main as cli
from flows.containment import ContainmentRequest, contain
from runbooks.models import Incident, TimelineEvent
from runbooks.policy import ModelPolicy, PlatformTarget, Recovery, Rollout
from runbooks.settings import get_settings
from runbooks.store import session_scope
from sandbox.platform import SandboxPlatform
from tasks import incident_store as store
from tests.helpers import wait_for
from tests.test_containment import open_incident
from tests.test_runbook_outcomes import (
    approval_row,
    flow_run_state,
    needs_human,
    pending_approval,
    run_in_thread,
    wait_outcome,
)

pytestmark = pytest.mark.slow
MODELS = ["g-improves", "g-worsens", "g-no-data", "g-dry-run", "g-kill-switch"]


@pytest.fixture(scope="module")
def platform() -> Iterator[SandboxPlatform]:
    with SandboxPlatform(models=MODELS, serve="v2") as p:
        yield p


@pytest.fixture
def model(
    request: pytest.FixtureRequest,
    stack: dict,
    platform: SandboxPlatform,
    monkeypatch: pytest.MonkeyPatch,
):  # type: ignore[no-untyped-def]
    name = request.param
    policy = store.policy().model_copy(deep=True)
    policy.approval.timeout_seconds = 60
    policy.approval.approvers = {s: ["owners"] for s in ("P1", "P2", "P3")}
    policy.models[name] = ModelPolicy(
        owners=["olivia"],
        target=PlatformTarget(kind="platform", url=str(platform.url)),
        recovery=Recovery(
            url=f"{platform.url}/metrics", interval_seconds=0.3, timeout_seconds=8, consecutive=2
        ),
        rollout=Rollout(steps=[50, 100], window_seconds=1.2, min_samples=40),
    )
    monkeypatch.setattr(store, "policy", lambda: policy)
    return name, policy


def gradual_incident(model: str) -> int:
    """A P1 (contained without approval) incident whose triage chose the gradual rollback."""
    incident_id = open_incident(model, severity="P1")
    with session_scope(get_settings().resolved_database_url()) as s:
        row = s.get(Incident, incident_id)
        row.strategy = "gradual_rollback"
        s.add(row)
    return incident_id


def steps_of(incident_id: int) -> list[dict[str, Any]]:
    with session_scope(get_settings().resolved_database_url()) as s:
        rows = s.exec(
            select(TimelineEvent).where(
                TimelineEvent.incident_id == incident_id, TimelineEvent.kind == "rollout_step"
            )
        )
        return [t.data for t in rows]


def traffic(platform: SandboxPlatform, model: str) -> dict[str, int]:
    return {v: p for v, p in platform.status(model)["traffic"].items() if p}


@pytest.mark.parametrize("model", ["g-improves"], indirect=True)
def test_metrics_that_improve_take_every_step_and_resolve(model, platform, stack) -> None:  # type: ignore[no-untyped-def]
    name, _ = model
    incident_id = gradual_incident(name)
    assert contain(ContainmentRequest(incident_id=incident_id)) == "resolved"
    assert traffic(platform, name) == {"v1": 100}
    steps = steps_of(incident_id)
    assert [(s["percent"], s["outcome"]) for s in steps] == [(50, "success"), (100, "success")]
    assert all(s["f1"] > s["baseline_f1"] and s["samples"] >= 40 for s in steps)
    with session_scope(get_settings().resolved_database_url()) as s:
        assert s.get(Incident, incident_id).status == "resolved"
    # The measurements are a table artifact too, one row per step.
    found = httpx.post(
        f"{stack['api']}/artifacts/latest/filter",
        json={"artifacts": {"key": {"any_": [f"incident-{incident_id}-gradual-rollback"]}}},
        timeout=10,
    ).json()
    assert found and found[0]["type"] == "table"
    assert [row["outcome"] for row in json.loads(found[0]["data"])] == ["success", "success"]


@pytest.mark.parametrize("model", ["g-worsens"], indirect=True)
def test_metrics_that_worsen_mid_way_abort_and_restore_the_split_before_the_step(
    model, platform
) -> None:  # type: ignore[no-untyped-def]
    name, policy = model
    # Long enough that the second step's window holds the shifted features however late
    # (a poll, a loaded machine) the break lands after the first judgement.
    policy.models[name].rollout.window_seconds = 4
    incident_id = gradual_incident(name)

    def break_v1_after_the_first_step() -> None:
        wait_for(lambda: steps_of(incident_id), timeout=30, what="the first step's judgement")
        # v1's features arrive shifted from now on: its F1 falls under v2's.
        platform.set_faults(name, {"version": "v1", "feature_shift": {"feature": 0, "shift": 4.0}})

    saboteur = threading.Thread(target=break_v1_after_the_first_step, daemon=True)
    saboteur.start()
    assert contain(ContainmentRequest(incident_id=incident_id)) == "aborted"
    saboteur.join(5)
    assert [s["outcome"] for s in steps_of(incident_id)] == ["success", "failure"]
    assert traffic(platform, name) == {"v1": 50, "v2": 50}
    assert "gradual rollback aborted at step 2/2" in (needs_human(incident_id) or "")


@pytest.mark.parametrize("model", ["g-no-data"], indirect=True)
def test_too_few_samples_ask_a_human_and_a_rejection_holds_the_split(
    model, platform, stack
) -> None:  # type: ignore[no-untyped-def]
    name, policy = model
    policy.models[name].rollout.min_samples = 10**6
    incident_id = gradual_incident(name)
    box = run_in_thread(ContainmentRequest(incident_id=incident_id))
    asked = pending_approval(incident_id)
    assert asked.action == "continue_rollback"
    assert (
        cli(["approve", str(incident_id), "--by", "olivia", "--reject", "--comment", "wait"]) == 0
    )
    assert wait_outcome(box) == "held"
    assert [s["outcome"] for s in steps_of(incident_id)] == ["inconclusive"]
    assert "too few samples" in steps_of(incident_id)[0]["reason"]
    assert traffic(platform, name) == {"v1": 50, "v2": 50}
    assert approval_row(incident_id).status == "rejected"
    assert "held at" in (needs_human(incident_id) or "")
    assert flow_run_state(asked.flow_run_id, stack) == "COMPLETED"


@pytest.mark.parametrize("model", ["g-dry-run"], indirect=True)
def test_a_dry_run_plans_every_step_and_changes_nothing(model, platform) -> None:  # type: ignore[no-untyped-def]
    name, _ = model
    incident_id = gradual_incident(name)
    assert contain(ContainmentRequest(incident_id=incident_id, dry_run=True)) == "dry_run"
    assert traffic(platform, name) == {"v2": 100}
    with session_scope(get_settings().resolved_database_url()) as s:
        lines = [
            t.message
            for t in s.exec(select(TimelineEvent).where(TimelineEvent.incident_id == incident_id))
        ]
    assert sum("dry run, step" in m for m in lines) == 2


@pytest.mark.parametrize("model", ["g-kill-switch"], indirect=True)
def test_the_kill_switch_stops_the_first_step(model, platform) -> None:  # type: ignore[no-untyped-def]
    name, _ = model
    assert cli(["automation", "pause", "--model", name, "--comment", "freeze", "--by", "sre"]) == 0
    try:
        incident_id = gradual_incident(name)
        assert contain(ContainmentRequest(incident_id=incident_id)) == "automation_paused"
        assert traffic(platform, name) == {"v2": 100}
        assert "freeze" in (needs_human(incident_id) or "")
    finally:
        assert cli(["automation", "resume", "--model", name, "--by", "sre"]) == 0
