"""Runbook: contain a degraded model.

1. Check the incident still needs containment (a resolved alert never acts), and that
   no other run already carried out this decision.
2. Take the model's remediation lock (waiting a while for another incident's run) and
   respect the cooldown.
3. Get approval from someone the policy allows, unless it lets this severity contain at
   once; a rejection or a timeout ends with the policy's outcome.
4. Read the metric, then route traffic to the previous version (or roll back on the
   platform, or scale to zero). The kill switch skips this step.
5. Verify recovery on the model's metric.
6. Recovered: resolve. Worse than before: undo the action. Not recovered: keep the safe
   state. Either way a human is called (`needs human`), and the run ends Completed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import flow, get_run_logger
from prefect.context import get_run_context
from pydantic import BaseModel, Field

from flows import gradual_rollback as gradual
from runbooks.policy import (
    KServeTarget,
    KubernetesTarget,
    MlflowTarget,
    ModelPolicy,
    PlatformTarget,
    Target,
)
from runbooks.remediation import LockHeld
from runbooks.views import IncidentView
from tasks import actions, metrics, registry, traffic
from tasks import incident_store as store
from tasks import kubernetes as k8s
from tasks import platform as ml_platform
from tasks.actions import Done, Move
from tasks.approvals import await_approval
from tasks.traffic import NoRollbackTarget, previous_version

RUNBOOK = "containment"
T = TypeVar("T")


class ContainmentRequest(BaseModel):
    incident_id: int = Field(description="The incident to contain.")
    dry_run: bool = Field(False, description="Record what each action would do; change nothing.")
    decision: str = Field(
        "",
        description="The triage decision this run carries out (set by the automation; a "
        "decision runs once). Empty: started by hand, always runs.",
    )


def _cancelled(flow: Any, flow_run: Any, state: Any) -> None:
    """A cancelled run leaves no lock held, no approval pending and the incident with a
    person (Prefect runs this for a run in a process of its own; deployments/in_process.py
    for one on a thread of `runbooks serve`)."""
    store.cancelled_run(str(flow_run.id), state.message or "cancelled")


@flow(name="containment", log_prints=True, on_cancellation=[_cancelled])
def contain(request: ContainmentRequest) -> str:
    incident = store.read_incident(request.incident_id)
    run = flow_run_id()
    if request.decision and store.claim_runbook(incident.id, RUNBOOK, request.decision, run):
        return "already_ran"
    outcome = _contain(incident, request, run)
    if request.decision:
        store.finish_runbook(incident.id, RUNBOOK, run, outcome)
    return outcome


def _contain(incident: IncidentView, request: ContainmentRequest, run: str) -> str:
    model_policy = store.policy().for_model(incident.model)
    if not still_needs_containment(incident):
        return "skipped"
    target = model_policy.target
    if target is None:
        store.hand_to_human(
            incident.id,
            RUNBOOK,
            f"no target for model {incident.model} in the policy; add "
            f"models.{incident.model}.target to contain it automatically",
        )
        return "no_target"
    kind = action_kind(target, incident.strategy)
    try:
        with_lock = wait_for_lock(incident, f"containment flow run {run}")
        if with_lock is not None:
            return with_lock
        try:
            return _contain_locked(incident, request, target, kind, model_policy, run)
        finally:
            store.release_remediation_lock(incident.model, incident.id)
    except Exception as exc:
        store.add_timeline(
            incident.id,
            RUNBOOK,
            "error",
            f"containment stopped: {type(exc).__name__}: {exc}",
        )
        raise


def _contain_locked(
    incident: IncidentView,
    request: ContainmentRequest,
    target: Target,
    kind: str,
    model_policy: ModelPolicy,
    run: str,
) -> str:
    with actions.lease_renewal(incident.model, incident.id):
        if not cooled_down(incident, kind):
            return "cooldown"
        if not request.dry_run:
            answer = await_approval(
                incident.id,
                incident.model,
                incident.severity,
                kind,
                f"Approve {kind} for incident {incident.id} ({incident.model}, "
                f"{incident.severity}): {incident.title}",
                run,
            )
            if not answer.act:
                store.hand_to_human(incident.id, RUNBOOK, answer.say(kind))
                return answer.status
            # The alert may have resolved while a human decided: look again before acting.
            incident = store.read_incident(request.incident_id)
            if not still_needs_containment(incident):
                return "skipped"
            store.set_incident_status(
                incident.id, "investigating", RUNBOOK, f"containing with {kind}"
            )
        before = read_metric(incident, model_policy)
        if kind == "gradual_rollback":
            return _roll_back_gradually(incident, request, target, model_policy, before, run)
        move = read_target(incident, f"{kind}'s target", lambda: plan_move(incident, target, kind))
        if isinstance(move, str):
            return move
        done = actions.act(move, request.dry_run)
        if done.status == "dry_run":
            return "dry_run"
        if done.status in ("paused", "failed"):
            store.hand_to_human(incident.id, RUNBOOK, done.message)
            return "automation_paused" if done.status == "paused" else "action_failed"
        store.set_incident_status(incident.id, "mitigated", RUNBOOK, done.message)
        return verify_and_decide(incident, model_policy, done, before)


def _roll_back_gradually(
    incident: IncidentView,
    request: ContainmentRequest,
    target: Target,
    model_policy: ModelPolicy,
    before: float | None,
    run: str,
) -> str:
    split = read_target(
        incident,
        "the traffic split",
        lambda: split_of(incident, target, model_policy.recovery.url),
    )
    if isinstance(split, str):
        return split
    shifted = gradual.shift_gradually(incident, split, model_policy.rollout, request.dry_run, run)
    if isinstance(shifted, str):
        return shifted
    return verify_and_decide(incident, model_policy, shifted, before)


def read_target(incident: IncidentView, what: str, read: Callable[[], T]) -> T | str:
    """What `read` found of the target, or the outcome when it found nothing to act on
    (no_rollback_target) or could not read it (action_failed); a human is told either way
    and nothing is changed."""
    try:
        return read()
    except NoRollbackTarget as missing:
        store.hand_to_human(incident.id, RUNBOOK, f"{missing}; nothing changed")
        return "no_rollback_target"
    except Exception as exc:
        why = actions.describe_error(exc)
        if why is None:
            raise
        store.hand_to_human(incident.id, RUNBOOK, f"reading {what} failed: {why}; nothing changed")
        return "action_failed"


def split_of(incident: IncidentView, target: Target, counts_url: str) -> traffic.Split:
    """The target's traffic split; per-version counts from `counts_url` ({model} filled)
    where the target does not report them itself."""
    model = incident.model
    url = counts_url.format(model=model)
    if isinstance(target, PlatformTarget):
        return traffic.platform_split(target.url, target.name.format(model=model))
    if isinstance(target, KServeTarget):
        return traffic.kserve_split(target, model, url)
    return traffic.kubernetes_split(target, model, url)


def all_traffic_back(incident: IncidentView, split: traffic.Split, kind: str) -> Move:
    """An immediate rollback on a target that moves traffic by split: 100 % in one move."""
    return Move(
        incident.id,
        incident.model,
        kind,
        split.where,
        split.traffic,
        split.at(100),
        split.apply,
        "traffic",
    )


def verify_and_decide(
    incident: IncidentView, model_policy: ModelPolicy, done: Done, before: float | None
) -> str:
    verdict, value = verify_recovery(incident, model_policy, before)
    rec = model_policy.recovery
    if verdict == "recovered":
        store.set_incident_status(
            incident.id, "resolved", RUNBOOK, "the model's metric recovered after containment"
        )
        return "resolved"
    if verdict == "worse" and done.changed:
        undone = actions.undo(done)
        store.hand_to_human(
            incident.id,
            RUNBOOK,
            f"{rec.metric} got worse after {done.move.kind} ({before} -> {value}); "
            f"{undone.message}. Decide the next step by hand",
        )
        return "undone"
    store.hand_to_human(
        incident.id,
        RUNBOOK,
        f"{rec.metric} of {incident.model} did not recover within "
        f"{rec.timeout_seconds:g} s after {done.move.kind} (last value {value}); the safe "
        "state is kept. Escalate to the model owner",
    )
    return "not_recovered"


def flow_run_id() -> str:
    ctx = get_run_context()
    return str(ctx.flow_run.id) if getattr(ctx, "flow_run", None) else "local"


def still_needs_containment(incident: IncidentView) -> bool:
    firing = [a for a in incident.alerts if a.status == "firing"]
    if incident.status in ("resolved", "closed") or not firing:
        store.add_timeline(
            incident.id,
            RUNBOOK,
            "skip",
            f"incident is {incident.status} with {len(firing)} firing alerts: "
            "nothing to contain, no action taken",
        )
        return False
    return True


def wait_for_lock(incident: IncidentView, holder: str) -> str | None:
    """Take the model's lock, waiting up to the policy's lock_wait_seconds for another
    incident's run; None when taken, else the outcome (a human is told)."""
    wait = store.policy().remediation.lock_wait_seconds
    deadline = time.monotonic() + wait
    said = False
    while True:
        try:
            store.acquire_remediation_lock(incident.model, incident.id, holder)
            return None
        except LockHeld as held:
            if time.monotonic() >= deadline:
                store.hand_to_human(
                    incident.id,
                    RUNBOOK,
                    f"{held}; waited {wait:g} s, no action taken",
                )
                return "locked"
            if not said:
                store.add_timeline(
                    incident.id, RUNBOOK, "lock", f"{held}; waiting up to {wait:g} s"
                )
                said = True
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))


def action_kind(target: Target, strategy: str | None = None) -> str:
    """The action this target takes for the strategy: a gradual rollback where the target
    can split traffic (a KServe target can only split), else its immediate action."""
    if isinstance(target, MlflowTarget):
        # A registry alias names one version, it cannot split traffic: a gradual strategy
        # on an MLflow target takes the immediate rollback too.
        return "registry_rollback"
    gradual_ok = isinstance(target, PlatformTarget | KServeTarget) or (
        target.action == "route_to_previous_version"
    )
    if strategy == "gradual_rollback" and gradual_ok:
        return "gradual_rollback"
    if isinstance(target, PlatformTarget):
        return "platform_rollback"
    if isinstance(target, KServeTarget):
        return "kserve_rollback"
    return target.action


def cooled_down(incident: IncidentView, kind: str) -> bool:
    left = store.cooldown_left(incident.model, kind, incident.id)
    if left > 0:
        store.add_timeline(
            incident.id,
            RUNBOOK,
            "skip",
            f"{kind} on {incident.model} ran for another incident lately; "
            f"cooldown has {left:.0f} s left, no action taken",
        )
        return False
    return True


def plan_move(incident: IncidentView, target: Target, kind: str) -> Move:
    model = incident.model
    if isinstance(target, PlatformTarget):
        return rollback_on_platform(incident, target.url, target.name.format(model=model))
    if isinstance(target, KServeTarget):
        return all_traffic_back(incident, split_of(incident, target, ""), kind)
    if isinstance(target, MlflowTarget):
        return move_alias_to_previous_version(incident, target)
    if kind == "scale_to_zero":
        return scale_to_zero(incident, target)
    return route_to_previous_version(incident, target)


def route_to_previous_version(incident: IncidentView, target: KubernetesTarget) -> Move:
    name = target.service.format(model=incident.model)
    svc = k8s.read_namespaced_service(name, target.namespace)
    selector = svc["spec"].get("selector") or {}
    current = selector.get(target.version_label)

    def apply(version: str) -> dict[str, Any]:
        patched = k8s.patch_namespaced_service(
            name,
            target.namespace,
            {"spec": {"selector": {**selector, target.version_label: version}}},
        )
        seen = (patched["spec"].get("selector") or {}).get(target.version_label)
        if seen != version:
            raise RuntimeError(
                f"service/{name} selector reads back {seen!r} after the patch, expected {version!r}"
            )
        return {"selector": patched["spec"]["selector"]}

    return Move(
        incident.id,
        incident.model,
        "route_to_previous_version",
        f"service/{name} in {target.namespace}",
        current,
        previous_version(svc, target, current),
        apply,
        target.version_label,
    )


def scale_to_zero(incident: IncidentView, target: KubernetesTarget) -> Move:
    version = next(
        (
            a.labels.get(target.version_label)
            for a in incident.alerts
            if a.labels.get(target.version_label)
        ),
        "",
    )
    name = target.deployment.format(model=incident.model, version=version)
    scale = k8s.read_namespaced_deployment_scale(name, target.namespace)

    def apply(replicas: int) -> dict[str, Any]:
        k8s.patch_namespaced_deployment_scale(name, target.namespace, replicas)
        return {"replicas": replicas}

    return Move(
        incident.id,
        incident.model,
        "scale_to_zero",
        f"deployment/{name} in {target.namespace}",
        scale["spec"].get("replicas", 0),
        0,
        apply,
        "replicas",
    )


def rollback_on_platform(incident: IncidentView, url: str, name: str) -> Move:
    status = ml_platform.get_model_status(url, name)
    where = f"model {name} on {url}"
    if not status.get("previousVersion"):
        raise NoRollbackTarget(f"{where} reports no previousVersion; nothing to roll back to")

    def apply(version: str) -> dict[str, Any]:
        return ml_platform.post_model_rollback(url, name, version)

    return Move(
        incident.id,
        incident.model,
        "platform_rollback",
        where,
        status.get("currentVersion"),
        status.get("previousVersion"),
        apply,
    )


def move_alias_to_previous_version(incident: IncidentView, target: MlflowTarget) -> Move:
    """The registry's rollback: the alias goes back from the version it points at to the
    newest READY version below it that is not tagged stable="false"."""
    model = incident.model
    name = target.name.format(model=model)
    where = f"alias {target.alias} of model {name} on {target.url}"
    try:
        pointed = registry.get_model_version_by_alias(target.url, name, target.alias)
    except Exception as exc:
        if registry.is_not_found(exc):
            raise NoRollbackTarget(
                f"{where} does not exist ({exc}); set the alias on the serving version or "
                f"fix models.{model}.target"
            ) from exc
        raise
    current = str(pointed["model_version"]["version"])
    versions: list[dict[str, Any]] = []
    token = None
    for _ in range(registry.MAX_PAGES):
        page = registry.search_model_versions(target.url, name, token)
        versions += page.get("model_versions") or []
        token = page.get("next_page_token")
        if not token:
            break

    def unstable(v: dict[str, Any]) -> bool:
        tags = {t.get("key"): t.get("value") for t in v.get("tags") or []}
        return tags.get(registry.STABLE_TAG) == "false"

    below = [
        v
        for v in versions
        if int(v["version"]) < int(current) and v.get("status", "READY") == "READY"
    ]
    candidates = [int(v["version"]) for v in below if not unstable(v)]
    if not candidates:
        marked = ", ".join(v["version"] for v in below if unstable(v))
        why = f" (version {marked} tagged {registry.STABLE_TAG}=false)" if marked else ""
        raise NoRollbackTarget(
            f"no version of {name} below {current} to move {where} back to{why}: set the "
            f"alias by hand to a good version, or delete the {registry.STABLE_TAG} tag of a "
            "version that is safe to serve"
        )

    def apply(version: str) -> dict[str, Any]:
        registry.set_model_alias(target.url, name, target.alias, version)
        seen = registry.get_model_version_by_alias(target.url, name, target.alias)
        now = str(seen["model_version"]["version"])
        if now != version:
            raise RuntimeError(
                f"{where} reads back version {now} after the move, expected {version}"
            )
        return {"alias": target.alias, "version": now}

    return Move(
        incident.id,
        model,
        "registry_rollback",
        where,
        current,
        str(max(candidates)),
        apply,
    )


def read_metric(incident: IncidentView, model_policy: ModelPolicy) -> float | None:
    rec = model_policy.recovery
    if not rec.url:
        return None
    model = incident.model
    url = rec.url.format(model=model)
    if rec.source == "prometheus":
        return metrics.query_prometheus(url, f'{rec.metric}{{model="{model}"}}')
    return metrics.scrape_metric(url, rec.metric, {"model": model})


def verify_recovery(
    incident: IncidentView, model_policy: ModelPolicy, before: float | None = None
) -> tuple[str, float | None]:
    """Poll the model's metric: `recovered` when it passes `consecutive` times in a row,
    `worse` when it reads worse than `before` by the policy's margin as many times,
    `not_recovered` when the time runs out, `unverified` with no metric to read."""
    rec = model_policy.recovery
    model = incident.model
    if not rec.url:
        store.add_timeline(
            incident.id, RUNBOOK, "gap", f"no recovery.url for {model}: recovery not verified"
        )
        return "unverified", None
    deadline = time.monotonic() + rec.timeout_seconds
    passes, worse, value = 0, 0, None
    while time.monotonic() < deadline:
        value = read_metric(incident, model_policy)
        ok = (
            value is not None
            and (rec.above is None or value > rec.above)
            and (rec.below is None or value < rec.below)
        )
        passes = passes + 1 if ok else 0
        worse = worse + 1 if is_worse(value, before, rec.above, rec.below, rec.worse_by) else 0
        if passes >= rec.consecutive:
            store.add_timeline(
                incident.id,
                RUNBOOK,
                "verify",
                f"recovered: {rec.metric}={value:.3f} ({rec.consecutive} readings in a row)",
            )
            return "recovered", value
        if worse >= rec.consecutive:
            store.add_timeline(
                incident.id,
                RUNBOOK,
                "verify",
                f"worse: {rec.metric}={value:.3f} against {before:.3f} before the action "
                f"({rec.consecutive} readings in a row, margin {rec.worse_by:g})",
            )
            return "worse", value
        time.sleep(rec.interval_seconds)
    store.add_timeline(
        incident.id,
        RUNBOOK,
        "verify",
        f"not recovered within {rec.timeout_seconds:.0f} s: last {rec.metric}={value}",
    )
    get_run_logger().warning("model %s did not recover", model)
    return "not_recovered", value


def is_worse(
    value: float | None,
    before: float | None,
    above: float | None,
    below: float | None,
    margin: float,
) -> bool:
    """Further from healthy than before the action by more than `margin`."""
    if value is None or before is None:
        return False
    if above is not None:
        return value < before - margin
    if below is not None:
        return value > before + margin
    return False
