"""Runbook: contain a degraded model.

1. Check the incident still needs containment (a resolved alert never acts).
2. Take the model's remediation lock and respect the cooldown.
3. Get approval, unless the policy lets this severity contain at once.
4. Route traffic to the previous version (or roll back on the platform, or scale to zero).
5. Verify recovery on the model's metric.
6. Resolve the incident, or leave it mitigated and say that it did not recover.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, pause_flow_run
from prefect.context import get_run_context
from prefect.input import RunInput
from pydantic import BaseModel, Field

from runbooks.policy import KubernetesTarget, ModelPolicy, PlatformTarget
from tasks import incident_store as store
from tasks import kubernetes as k8s
from tasks import metrics
from tasks import platform as ml_platform

PREVIOUS_VERSION_ANNOTATION = "ml-runbooks.io/previous-version"


class ContainmentRequest(BaseModel):
    incident_id: int = Field(description="The incident to contain.")
    dry_run: bool = Field(False, description="Record what each action would do; change nothing.")


class Approval(RunInput):
    approve: bool = Field(description="Approve the containment action?")
    approver: str = Field(description="Who decides (recorded on the timeline).")
    comment: str = Field("", description="Why, for the post-mortem.")


class NotRecovered(RuntimeError):
    pass


class ContainmentRefused(RuntimeError):
    pass


@flow(name="containment", log_prints=True)
def contain(request: ContainmentRequest) -> str:
    incident = store.read_incident(request.incident_id)
    model_policy = store.policy().for_model(incident["model"])
    if not still_needs_containment(incident):
        return "skipped"
    target = model_policy.target
    if target is None:
        store.add_timeline(
            incident["id"],
            "containment",
            "gap",
            f"no target for model {incident['model']} in the policy; add "
            f"models.{incident['model']}.target to contain it automatically",
        )
        return "no_target"
    kind = action_kind(target)
    holder = f"containment flow run {flow_run_id()}"
    try:
        store.acquire_remediation_lock(incident["model"], incident["id"], holder)
        if not cooled_down(incident, kind):
            return "cooldown"
        if not request.dry_run:
            await_approval(incident, kind)
            # The alert may have resolved while a human decided: look again before acting.
            incident = store.read_incident(request.incident_id)
            if not still_needs_containment(incident):
                return "skipped"
            store.set_incident_status(
                incident["id"], "investigating", "containment", f"containing with {kind}"
            )
        outcome = act(incident, target, kind, request.dry_run)
        if request.dry_run:
            return "dry_run"
        store.set_incident_status(incident["id"], "mitigated", "containment", outcome)
        verify_recovery(incident, model_policy)
        store.set_incident_status(
            incident["id"],
            "resolved",
            "containment",
            "the model's metric recovered after containment",
        )
        return "resolved"
    except Exception as exc:
        store.add_timeline(
            incident["id"],
            "containment",
            "error",
            f"containment stopped: {type(exc).__name__}: {exc}",
        )
        raise
    finally:
        store.release_remediation_lock(incident["model"], incident["id"])


def flow_run_id() -> str:
    ctx = get_run_context()
    return str(ctx.flow_run.id) if getattr(ctx, "flow_run", None) else "local"


def still_needs_containment(incident: dict[str, Any]) -> bool:
    firing = [a for a in incident["alerts"] if a["status"] == "firing"]
    if incident["status"] in ("resolved", "closed") or not firing:
        store.add_timeline(
            incident["id"],
            "containment",
            "skip",
            f"incident is {incident['status']} with {len(firing)} firing alerts: "
            "nothing to contain, no action taken",
        )
        return False
    return True


def action_kind(target: KubernetesTarget | PlatformTarget) -> str:
    return "platform_rollback" if isinstance(target, PlatformTarget) else target.action


def cooled_down(incident: dict[str, Any], kind: str) -> bool:
    left = store.cooldown_left(incident["model"], kind, incident["id"])
    if left > 0:
        store.add_timeline(
            incident["id"],
            "containment",
            "skip",
            f"{kind} on {incident['model']} ran for another incident lately; "
            f"cooldown has {left:.0f} s left, no action taken",
        )
        return False
    return True


def await_approval(incident: dict[str, Any], kind: str) -> None:
    policy = store.policy()
    severity = incident["severity"] or policy.default_severity
    if not policy.needs_approval(severity, "containment"):
        store.add_timeline(
            incident["id"],
            "containment",
            "approval",
            f"{kind} runs without approval: the policy allows containment at {severity}",
        )
        return
    approval_id = store.record_approval_request(incident["id"], kind, flow_run_id())
    answer = pause_flow_run(
        wait_for_input=Approval.with_initial_data(
            description=f"Approve {kind} for incident {incident['id']} "
            f"({incident['model']}, {severity}): {incident['title']}",
            approve=False,
            approver="",
            comment="",
        ),
        timeout=int(policy.approval.timeout_seconds),
        poll_interval=1,
        key=f"approval-{approval_id}",
    )
    status = "approved" if answer.approve else "rejected"
    store.record_approval_decision(
        approval_id, status, answer.approver or "unknown", answer.comment
    )
    if not answer.approve:
        raise ContainmentRefused(f"{kind} rejected by {answer.approver}: {answer.comment}")


def act(
    incident: dict[str, Any], target: KubernetesTarget | PlatformTarget, kind: str, dry_run: bool
) -> str:
    model = incident["model"]
    if isinstance(target, PlatformTarget):
        return rollback_on_platform(incident, target.url, target.name.format(model=model), dry_run)
    if kind == "scale_to_zero":
        return scale_to_zero(incident, target, dry_run)
    return route_to_previous_version(incident, target, dry_run)


def _key(incident: dict[str, Any], kind: str, target: str, dry_run: bool) -> str:
    return f"incident:{incident['id']}:{kind}:{target}" + (":dry-run" if dry_run else "")


def _finished(action: dict[str, Any]) -> bool:
    return action["status"] in ("done", "already", "dry_run")


def route_to_previous_version(
    incident: dict[str, Any], target: KubernetesTarget, dry_run: bool
) -> str:
    model = incident["model"]
    name = target.service.format(model=model)
    where = f"service/{name} in {target.namespace}"
    svc = k8s.read_namespaced_service(name, target.namespace)
    selector = svc["spec"].get("selector") or {}
    current = selector.get(target.version_label)
    key = _key(incident, "route_to_previous_version", where, dry_run)
    plan = {"from": current, "to": previous_version(svc, target, current)}
    plan["summary"] = f"selector {target.version_label}: {plan['from']} -> {plan['to']}"
    action = store.begin_action(
        key, incident["id"], model, "route_to_previous_version", where, dry_run, plan
    )
    if _finished(action):
        return f"{where} already handled by this incident"
    plan = action["detail"]["plan"]
    if dry_run:
        store.finish_action(key, "dry_run", {}, f"dry run: {where} unchanged")
        return "dry run"
    if current == plan["to"]:
        store.finish_action(
            key, "already", {"selector": selector}, f"{where} already routes to {plan['to']}"
        )
        return f"{where} already routes to {plan['to']}"
    patched = k8s.patch_namespaced_service(
        name,
        target.namespace,
        {"spec": {"selector": {**selector, target.version_label: plan["to"]}}},
    )
    seen = (patched["spec"].get("selector") or {}).get(target.version_label)
    if seen != plan["to"]:
        raise RuntimeError(
            f"{where} selector reads back {seen!r} after the patch, expected {plan['to']!r}"
        )
    store.finish_action(
        key,
        "done",
        {"selector": patched["spec"]["selector"]},
        f"{where} now routes to {plan['to']} (was {plan['from']})",
    )
    return f"traffic routed from {plan['from']} to {plan['to']}"


def previous_version(svc: dict[str, Any], target: KubernetesTarget, current: str | None) -> str:
    """The annotation the deploy pipeline leaves, else the newest other version deployed."""
    annotated = (svc["metadata"].get("annotations") or {}).get(PREVIOUS_VERSION_ANNOTATION)
    if annotated:
        return annotated
    app = (svc["spec"].get("selector") or {}).get(target.app_label)
    deployments = k8s.list_namespaced_deployment(target.namespace, f"{target.app_label}={app}")
    versions = [
        (
            d["metadata"].get("creationTimestamp") or "",
            d["metadata"]["labels"][target.version_label],
        )
        for d in deployments
        if target.version_label in (d["metadata"].get("labels") or {})
        and d["metadata"]["labels"][target.version_label] != current
    ]
    if not versions:
        raise RuntimeError(
            f"no previous version of {app} to route to: annotate the service with "
            f"{PREVIOUS_VERSION_ANNOTATION} or keep the previous Deployment labelled "
            f"{target.app_label}={app},{target.version_label}=<version>"
        )
    return max(versions)[1]


def scale_to_zero(incident: dict[str, Any], target: KubernetesTarget, dry_run: bool) -> str:
    model = incident["model"]
    version = next(
        (
            a["labels"].get(target.version_label)
            for a in incident["alerts"]
            if a["labels"].get(target.version_label)
        ),
        "",
    )
    name = target.deployment.format(model=model, version=version)
    where = f"deployment/{name} in {target.namespace}"
    scale = k8s.read_namespaced_deployment_scale(name, target.namespace)
    key = _key(incident, "scale_to_zero", where, dry_run)
    plan = {"from": scale["spec"].get("replicas", 0), "to": 0}
    plan["summary"] = f"replicas {plan['from']} -> 0"
    action = store.begin_action(key, incident["id"], model, "scale_to_zero", where, dry_run, plan)
    if _finished(action):
        return f"{where} already handled by this incident"
    if dry_run:
        store.finish_action(key, "dry_run", {}, f"dry run: {where} unchanged")
        return "dry run"
    if plan["from"] == 0:
        store.finish_action(key, "already", {}, f"{where} is already at 0 replicas")
        return f"{where} already at 0 replicas"
    k8s.patch_namespaced_deployment_scale(name, target.namespace, 0)
    store.finish_action(key, "done", {"replicas": 0}, f"{where} scaled to 0 (was {plan['from']})")
    return f"{where} scaled to zero"


def rollback_on_platform(incident: dict[str, Any], url: str, name: str, dry_run: bool) -> str:
    where = f"model {name} on {url}"
    status = ml_platform.get_model_status(url, name)
    key = _key(incident, "platform_rollback", where, dry_run)
    plan = {"from": status.get("currentVersion"), "to": status.get("previousVersion")}
    plan["summary"] = f"version {plan['from']} -> {plan['to']}"
    action = store.begin_action(
        key, incident["id"], incident["model"], "platform_rollback", where, dry_run, plan
    )
    if _finished(action):
        return f"{where} already handled by this incident"
    plan = action["detail"]["plan"]
    if not plan["to"]:
        raise RuntimeError(f"{where} reports no previousVersion; nothing to roll back to")
    if dry_run:
        store.finish_action(key, "dry_run", {}, f"dry run: {where} unchanged")
        return "dry run"
    if status.get("currentVersion") == plan["to"]:
        store.finish_action(key, "already", status, f"{where} already serves {plan['to']}")
        return f"{where} already serves {plan['to']}"
    after = ml_platform.post_model_rollback(url, name, plan["to"])
    store.finish_action(
        key, "done", after, f"{where} rolled back to {plan['to']} (was {plan['from']})"
    )
    return f"rolled back from {plan['from']} to {plan['to']}"


def verify_recovery(incident: dict[str, Any], model_policy: ModelPolicy) -> float:
    """Poll the model's metric until it passes `consecutive` times, or give up."""
    rec = model_policy.recovery
    model = incident["model"]
    if not rec.url:
        store.add_timeline(
            incident["id"],
            "containment",
            "gap",
            f"no recovery.url for {model}: recovery not verified",
        )
        raise NotRecovered(f"no recovery.url configured for {model}")
    url = rec.url.format(model=model)
    deadline = time.monotonic() + rec.timeout_seconds
    passes, value = 0, None
    while time.monotonic() < deadline:
        if rec.source == "prometheus":
            value = metrics.query_prometheus(url, f'{rec.metric}{{model="{model}"}}')
        else:
            value = metrics.scrape_metric(url, rec.metric, {"model": model})
        ok = (
            value is not None
            and (rec.above is None or value > rec.above)
            and (rec.below is None or value < rec.below)
        )
        passes = passes + 1 if ok else 0
        if passes >= rec.consecutive:
            store.add_timeline(
                incident["id"],
                "containment",
                "verify",
                f"recovered: {rec.metric}={value:.3f} ({rec.consecutive} readings in a row)",
            )
            return value
        time.sleep(rec.interval_seconds)
    store.add_timeline(
        incident["id"],
        "containment",
        "verify",
        f"not recovered within {rec.timeout_seconds:.0f} s: last "
        f"{rec.metric}={value}; escalate to the model owner",
    )
    get_run_logger().warning("model %s did not recover", model)
    raise NotRecovered(
        f"{rec.metric} of {model} did not recover within "
        f"{rec.timeout_seconds:.0f} s (last value {value})"
    )
