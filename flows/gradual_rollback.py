"""Gradual rollback: shift traffic back to the stable version in the policy's steps, and
judge each step before the next.

For each step (default 50 % then 100 % on the stable version):
1. set the split (one idempotent action per step, so a retried run shifts once);
2. let it serve `rollout.window_seconds`, then read the stable version's confusion counts;
3. judge them against the baseline, the rolled-back version's counts before the first
   step (checks/rollout.py): success -> next step; failure -> restore the split before the
   step and call a human; inconclusive (too few samples, or no significant difference) ->
   ask a human whether to go on.
Every step's measurement is on the incident's timeline (with its numbers as data) and in
a Prefect table artifact. When all traffic is back, containment verifies recovery as after
any other action, and undoes the whole shift if the metric got worse.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from prefect.artifacts import create_table_artifact

from checks.rollout import Counts, Judgement, judge
from runbooks.policy import Rollout
from runbooks.views import IncidentView
from tasks import actions
from tasks import incident_store as store
from tasks.actions import Done, Move
from tasks.approvals import await_approval
from tasks.traffic import Split

RUNBOOK = "containment"


def shift_gradually(
    incident: IncidentView, split: Split, rollout: Rollout, dry_run: bool, run: str
) -> Done | str:
    """The whole shift as one Done (for verification and undo), or the outcome that ended
    it early: dry_run, aborted, held, automation_paused, action_failed."""
    iid, model = incident.id, incident.model
    baseline = split.counts(split.bad) or Counts(0, 0, 0)
    original = split.traffic
    rows: list[dict[str, Any]] = []
    before = original
    for i, percent in enumerate(rollout.steps, 1):
        step = f"step {i}/{len(rollout.steps)}"
        to = split.at(percent)
        move = Move(iid, model, f"traffic_step_{i}", split.where, before, to, split.apply)
        done = actions.act(replace(move, what="traffic"), dry_run)
        if done.status == "dry_run":
            store.add_timeline(
                iid, RUNBOOK, "dry_run", f"dry run, {step}: would set {split.where} to {to}"
            )
            before = to
            continue
        if done.status in ("paused", "failed"):
            store.hand_to_human(iid, RUNBOOK, f"gradual rollback stopped at {step}: {done.message}")
            return "automation_paused" if done.status == "paused" else "action_failed"
        if i == 1:
            store.set_incident_status(iid, "mitigated", RUNBOOK, done.message)
        time.sleep(rollout.window_seconds)
        verdict = judge_step(split, baseline, rollout)
        rows.append(measurement(i, percent, split, verdict))
        record_step(iid, step, percent, split, verdict, rows, run)
        if verdict.outcome == "failure":
            undone = actions.undo(done)
            store.hand_to_human(
                iid,
                RUNBOOK,
                f"gradual rollback aborted at {step}: {verdict.reason}; {undone.message}. "
                "Decide the next step by hand",
            )
            return "aborted"
        if verdict.outcome == "inconclusive" and percent < 100:
            answer = await_approval(
                iid,
                model,
                incident.severity,
                "continue_rollback",
                f"Gradual rollback of {model}, {step} ({split.stable} at {percent}%) is "
                f"inconclusive: {verdict.reason}. Go on to the next step?",
                run,
                action_class="rollout_continue",
            )
            if not answer.act:
                store.hand_to_human(
                    iid,
                    RUNBOOK,
                    f"gradual rollback held at {to} after {step}: "
                    f"{answer.say('continue_rollback')}",
                )
                return "held"
        before = to
    if dry_run:
        return "dry_run"
    whole = Move(
        iid, model, "gradual_rollback", split.where, original, before, split.apply, "traffic"
    )
    message = f"{split.where} now at traffic {before} (was {original})"
    return Done("done", message, whole, {"from": original, "to": before, "summary": message})


def judge_step(split: Split, baseline: Counts, rollout: Rollout) -> Judgement:
    counts = split.counts(split.stable) or Counts(0, 0, 0)
    return judge(counts, baseline, rollout.min_samples, rollout.alpha)


def measurement(i: int, percent: int, split: Split, verdict: Judgement) -> dict[str, Any]:
    shown = verdict.as_dict()
    return {
        "step": i,
        "traffic": f"{split.stable} {percent}% / {split.bad} {100 - percent}%",
        "outcome": verdict.outcome,
        "f1": shown["f1"],
        "baseline_f1": shown["baseline_f1"],
        "samples": shown["samples"],
        "baseline_samples": shown["baseline_samples"],
        "p_better": shown["p_better"],
        "p_worse": shown["p_worse"],
    }


def record_step(
    iid: int,
    step: str,
    percent: int,
    split: Split,
    verdict: Judgement,
    rows: list[dict[str, Any]],
    run: str,
) -> None:
    store.add_timeline(
        iid,
        RUNBOOK,
        "rollout_step",
        f"{step}, {split.stable} at {percent}%: {verdict.outcome}: {verdict.reason}",
        {"step": rows[-1]["step"], "percent": percent, **verdict.as_dict()},
    )
    if run != "local":
        create_table_artifact(
            rows,
            key=f"incident-{iid}-gradual-rollback",
            description=f"Gradual rollback of incident {iid}: each step's measurement against "
            f"the baseline ({split.bad} before the first step)",
        )
