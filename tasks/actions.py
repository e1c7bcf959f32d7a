"""Acting on a model, the one way every runbook does it.

`act(move)`: plan -> already done by this incident? -> kill switch -> dry run -> already in
the desired state? -> act -> finish, each step recorded with an idempotency key, so a
retried or repeated run acts once. `undo(move)` is the same walk back to where the move
started. `remediation_lock` holds the model's lock with a lease it renews while the run
lives: a run that dies frees the model one lease later.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tasks import incident_store as store
from tasks import kubernetes as k8s
from tasks import platform as ml_platform


@dataclass(frozen=True)
class Move:
    """One change to a target: from `current` to `to`, made by `apply(value)`."""

    incident_id: int
    model: str
    kind: str
    where: str
    current: Any
    to: Any
    apply: Callable[[Any], dict[str, Any]] = field(repr=False)
    what: str = "version"  # the word for the value in timeline lines: version, replicas...


@dataclass(frozen=True)
class Done:
    status: str  # done | already | dry_run | paused | failed
    message: str
    move: Move
    plan: dict[str, Any]

    @property
    def changed(self) -> bool:
        return self.status == "done"


def _key(move: Move, dry_run: bool) -> str:
    return f"incident:{move.incident_id}:{move.kind}:{move.where}" + (":dry-run" if dry_run else "")


def describe_error(exc: BaseException) -> str | None:
    return k8s.describe_error(exc) or ml_platform.describe_error(exc)


def act(move: Move, dry_run: bool, actor: str = "containment", heed_pause: bool = True) -> Done:
    plan = {
        "from": move.current,
        "to": move.to,
        "summary": f"{move.what} {move.current} -> {move.to}",
    }
    if heed_pause and not dry_run:
        pause = store.automation_paused(move.model)
        if pause is not None:
            message = (
                f"{move.kind} on {move.where} skipped: automation is paused for "
                f"{'every model' if pause['scope'] == '*' else move.model} by "
                f"{pause['paused_by']}: {pause['comment']}"
            )
            store.add_timeline(move.incident_id, actor, "skip", message)
            return Done("paused", message, move, plan)
    key = _key(move, dry_run)
    action = store.begin_action(
        key, move.incident_id, move.model, move.kind, move.where, dry_run, plan
    )
    if action["status"] in ("done", "already", "dry_run"):
        return Done(action["status"], f"{move.where} already handled by this incident", move, plan)
    plan = action["detail"]["plan"]  # a retry keeps the first plan
    if dry_run:
        store.finish_action(key, "dry_run", {}, f"dry run: {move.where} unchanged")
        return Done("dry_run", "dry run", move, plan)
    if move.current == plan["to"]:
        message = f"{move.where} already at {move.what} {plan['to']}"
        store.finish_action(key, "already", {}, message)
        return Done("already", message, move, plan)
    try:
        result = move.apply(plan["to"])
    except Exception as exc:
        why = describe_error(exc)
        if why is None:
            raise
        message = f"{move.kind} on {move.where} failed: {why}"
        store.finish_action(key, "failed", {"error": why}, message)
        return Done("failed", message, move, plan)
    message = f"{move.where} now at {move.what} {plan['to']} (was {plan['from']})"
    store.finish_action(key, "done", result, message)
    return Done("done", message, move, plan)


def undo(done: Done, actor: str = "containment") -> Done:
    """Put the target back where `done` found it (also while automation is paused: an
    undo makes the model safer, not riskier)."""
    m = done.move
    back = Move(
        m.incident_id,
        m.model,
        f"undo_{m.kind}",
        m.where,
        done.plan["to"],
        done.plan["from"],
        m.apply,
        m.what,
    )
    return act(back, dry_run=False, actor=actor, heed_pause=False)


@contextmanager
def lease_renewal(model: str, incident_id: int) -> Iterator[None]:
    """Renew the model's lock lease from a thread while the block runs, so that only a
    run that died (and stopped renewing) loses it."""
    stop = threading.Event()
    every = store.policy().remediation.lock_lease_seconds / 3

    def renew() -> None:
        # .fn: this thread is outside the run's context.
        while not stop.wait(every):
            try:
                store.renew_remediation_lock.fn(model, incident_id)
            except Exception:  # noqa: BLE001, S112  the next beat tries again (3 per lease)
                continue

    beat = threading.Thread(target=renew, name=f"lock-{model}", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
