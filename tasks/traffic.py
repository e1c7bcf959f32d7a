"""A model's traffic between two versions: read it, set it, and measure each version.

One `Split` per kind of target, so the gradual rollback runbook does not know which it
drives: the platform's traffic endpoint (here), Kubernetes by the replica ratio of two
version Deployments behind one Service, KServe by canaryTrafficPercent.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from prefect import task
from prometheus_client.parser import text_string_to_metric_families

from checks.rollout import Counts
from runbooks.policy import KServeTarget, KubernetesTarget
from tasks import kubernetes as k8s
from tasks import platform as ml_platform
from tasks.metrics import TIMEOUT as SCRAPE_TIMEOUT
from tasks.retry import BACKOFF, retry_transient_http

# Left on the Service by the deploy pipeline (flows/containment.py reads it too).
PREVIOUS_VERSION_ANNOTATION = "ml-runbooks.io/previous-version"
# A deploy pipeline (or a post-mortem) marks a version it must never go back to.
STABLE_ANNOTATION = "ml-runbooks.io/stable"
# Written with the selector while a Kubernetes split is under way, so that a retried run
# knows which version it is rolling back even when the selector names none.
SPLIT_ANNOTATION = "ml-runbooks.io/gradual-rollback"
KSERVE = ("serving.kserve.io", "v1beta1", "inferenceservices")
COUNTS = {
    "tp": "model_window_true_positives",
    "fp": "model_window_false_positives",
    "fn": "model_window_false_negatives",
}


class NoRollbackTarget(RuntimeError):
    """There is no version to go back to: a human decides, nothing is changed."""


class NoSplit(NoRollbackTarget):
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


@task(retries=2, retry_delay_seconds=BACKOFF[:2], retry_condition_fn=retry_transient_http)
def scrape_window_counts(url: str, model: str, version: str) -> Counts | None:
    """One version's confusion counts from one scrape of a /metrics page, so the three
    come from the same window; None when the page has none of them for the version."""
    r = httpx.get(url, timeout=SCRAPE_TIMEOUT)
    r.raise_for_status()
    names = {name: key for key, name in COUNTS.items()}
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name in names
                and labels.get("model") == model
                and labels.get("version") == version
            ):
                found.setdefault(names[sample.name], sample.value)
    return Counts.of(found) if found else None


def _stable_percent(split: dict[str, int], bad: str, stable: str, where: str) -> int:
    if not set(split) <= {bad, stable} or sum(split.values()) != 100:
        raise ValueError(
            f"a split of {where} names {bad} and {stable} with percentages adding up to "
            f"100, e.g. {{{stable!r}: 50, {bad!r}: 50}}; got {split}"
        )
    return int(split.get(stable, 0))


# -- Kubernetes: the replica ratio of two version Deployments behind one Service ----------


def kubernetes_split(target: KubernetesTarget, model: str, counts_url: str) -> Split:
    """The split by the replica ratio of the two versions' Deployments behind one Service.

    While both versions serve, the Service selects the app only, so each version gets
    traffic in proportion to its pods; at 100 % it selects that version again. The
    replicas shared out are those serving when the split is read (the bad version's,
    while the Service pins it), so capacity stays what it was: with 2, a 50 % step is 1/1;
    with 1, any step moves everything. `counts_url` is a /metrics page with the
    model_window_* counts labelled model and version, as the sandbox platform serves.
    """
    name, ns = target.service.format(model=model), target.namespace
    where = f"service/{name} in {ns}"
    svc = k8s.read_namespaced_service(name, ns)
    selector = svc["spec"].get("selector") or {}
    app = selector.get(target.app_label)
    if not app:
        raise NoSplit(
            f"{where} has no {target.app_label} label in its selector; a gradual rollback "
            f"selects the app's pods by it: set the selector {target.app_label}=<model>"
        )
    bad, stable = _split_versions(svc, target, app, where)
    deployments = {v: _deployment_of(target, model, v, app) for v in (bad, stable)}
    replicas = {v: _replicas(d) for v, d in deployments.items()}
    pinned = selector.get(target.version_label)
    if pinned is None and not sum(replicas.values()):
        raise NoSplit(
            f"{where} selects both {bad} and {stable} but neither has replicas: scale "
            f"deployment/{deployments[bad]['metadata']['name']} back up by hand"
        )
    serving = sum(replicas[v] for v in ([pinned] if pinned else [bad, stable]))
    behind = _VersionsBehind(
        target,
        name,
        where,
        bad,
        stable,
        {v: d["metadata"]["name"] for v, d in deployments.items()},
        max(1, serving),
    )

    def counts(version: str) -> Counts | None:
        return scrape_window_counts(counts_url, model, version)

    traffic = _traffic(pinned, replicas, bad, stable)
    return Split(where, traffic, bad, stable, behind.apply, counts)


@dataclass(frozen=True)
class _VersionsBehind:
    """Two version Deployments behind one Service, sharing `total` replicas."""

    target: KubernetesTarget
    service: str
    where: str
    bad: str
    stable: str
    deployments: dict[str, str]  # version -> Deployment name
    total: int

    def replicas(self, split: dict[str, int]) -> dict[str, int]:
        percent = _stable_percent(split, self.bad, self.stable, self.where)
        on_stable = _round_half_up(self.total * percent / 100)
        if percent:
            on_stable = min(self.total, max(1, on_stable))
        return {self.bad: self.total - on_stable, self.stable: on_stable}

    def apply(self, split: dict[str, int]) -> dict[str, Any]:
        """Scale up, wait for the new pods, switch the selector, then scale down, so that
        at every moment the Service has ready pods behind it. Writes only what differs."""
        ns, label = self.target.namespace, self.target.version_label
        want = self.replicas(split)
        pin = next((v for v, n in want.items() if n == self.total), None)
        svc = k8s.read_namespaced_service(self.service, ns)
        pinned = (svc["spec"].get("selector") or {}).get(label)
        now = {
            v: _replicas(k8s.read_namespaced_deployment(d, ns)) for v, d in self.deployments.items()
        }
        before = {pinned} if pinned else {self.bad, self.stable}
        after = {pin} if pin else {self.bad, self.stable}
        for v in {self.bad, self.stable} - before - after:
            want[v] = now[v]  # a warm standby no traffic reaches stays as it is
        for v, n in want.items():
            if n > now[v]:
                k8s.patch_namespaced_deployment_scale(self.deployments[v], ns, n)
        for v in after:
            if want[v] > now[v] or v not in before:
                _await_ready(self.deployments[v], ns, want[v], self.target, self.where)
        # Kept while any traffic is off the bad version; gone once it is all back.
        note = None if pin == self.bad else json.dumps({"bad": self.bad, "stable": self.stable})
        if (
            pinned != pin
            or (svc["metadata"].get("annotations") or {}).get(SPLIT_ANNOTATION) != note
        ):
            k8s.patch_namespaced_service(
                self.service,
                ns,
                # A strategic merge patch: None removes the key, the app label stays.
                {
                    "metadata": {"annotations": {SPLIT_ANNOTATION: note}},
                    "spec": {"selector": {label: pin}},
                },
            )
        for v, n in want.items():
            if n < now[v]:
                k8s.patch_namespaced_deployment_scale(self.deployments[v], ns, n)
        return self.read_back(want, pin)

    def read_back(self, want: dict[str, int], pin: str | None) -> dict[str, Any]:
        ns, label = self.target.namespace, self.target.version_label
        selector = k8s.read_namespaced_service(self.service, ns)["spec"].get("selector") or {}
        seen = {
            v: k8s.read_namespaced_deployment_scale(d, ns)["spec"].get("replicas", 0)
            for v, d in self.deployments.items()
        }
        if seen != want or selector.get(label) != pin:
            raise RuntimeError(
                f"{self.where} reads back selector {selector} and replicas {seen} after "
                f"setting {label}={pin} and replicas {want}"
            )
        return {
            "traffic": _traffic(pin, seen, self.bad, self.stable),
            "replicas": seen,
            "selector": selector,
        }


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def _split_versions(
    svc: dict[str, Any], target: KubernetesTarget, app: str, where: str
) -> tuple[str, str]:
    """(bad, stable): the recorded split while one is under way, else the pinned version
    and the one before it."""
    pinned = (svc["spec"].get("selector") or {}).get(target.version_label)
    note = (svc["metadata"].get("annotations") or {}).get(SPLIT_ANNOTATION)
    if note:
        try:
            recorded = json.loads(note)
            bad, stable = str(recorded["bad"]), str(recorded["stable"])
        except (ValueError, KeyError, TypeError) as exc:
            raise NoSplit(
                f"{where} has an unreadable {SPLIT_ANNOTATION} annotation {note!r}; set it "
                'to {"bad": "<version>", "stable": "<version>"} or remove it'
            ) from exc
        # A record of an earlier rollback is stale once another version is deployed.
        if pinned in (None, bad, stable):
            return bad, stable
    if not pinned:
        raise NoSplit(
            f"{where} selects every version of {app} and has no {SPLIT_ANNOTATION} "
            f"annotation naming the split: select the version being rolled back "
            f"({target.version_label}=<version>) and run again"
        )
    return pinned, previous_version(svc, target, pinned)


def previous_version(svc: dict[str, Any], target: KubernetesTarget, current: str | None) -> str:
    """The annotation the deploy pipeline leaves, else the newest other version deployed;
    never a version without a Deployment or one marked not stable."""
    app = (svc["spec"].get("selector") or {}).get(target.app_label)
    deployments = [
        d
        for d in k8s.list_namespaced_deployment(target.namespace, f"{target.app_label}={app}")
        # The selector asked for these already; checked again so that an API that ignores
        # it (the test cluster's does) cannot route one model to another model's pods.
        if (d["metadata"].get("labels") or {}).get(target.app_label) == app
        and target.version_label in d["metadata"]["labels"]
    ]
    deployed = {d["metadata"]["labels"][target.version_label]: d for d in deployments}
    unstable = sorted(
        v
        for v, d in deployed.items()
        if (d["metadata"].get("annotations") or {}).get(STABLE_ANNOTATION) == "false"
    )
    annotated = (svc["metadata"].get("annotations") or {}).get(PREVIOUS_VERSION_ANNOTATION)
    if annotated and annotated != current:
        if annotated not in deployed:
            raise NoRollbackTarget(
                f"the service names {annotated} as the previous version of {app} "
                f"({PREVIOUS_VERSION_ANNOTATION}), but no Deployment labelled "
                f"{target.app_label}={app},{target.version_label}={annotated} exists"
            )
        if annotated in unstable:
            raise NoRollbackTarget(
                f"{app} {annotated}, the previous version, is marked not stable "
                f'({STABLE_ANNOTATION}: "false" on its Deployment)'
            )
        return annotated
    versions = [
        (d["metadata"].get("creationTimestamp") or "", v)
        for v, d in deployed.items()
        if v != current and v not in unstable
    ]
    if not versions:
        marked = f" ({', '.join(unstable)} marked not stable)" if unstable else ""
        raise NoRollbackTarget(
            f"no previous version of {app} to route to{marked}: annotate the service with "
            f"{PREVIOUS_VERSION_ANNOTATION} or keep the previous Deployment labelled "
            f"{target.app_label}={app},{target.version_label}=<version>"
        )
    return max(versions)[1]


def _deployment_of(target: KubernetesTarget, model: str, version: str, app: str) -> dict[str, Any]:
    name = target.deployment.format(model=model, version=version)
    try:
        deployment = k8s.read_namespaced_deployment(name, target.namespace)
    except Exception as exc:
        if k8s.is_not_found(exc):
            raise NoSplit(
                f"deployment/{name} of version {version} is not in {target.namespace}: a "
                "gradual rollback needs both versions deployed; keep the previous "
                "version's Deployment (scaled to 0 is fine) or fix the target's deployment "
                "name pattern"
            ) from exc
        raise
    pods = ((deployment["spec"].get("template") or {}).get("metadata") or {}).get("labels") or {}
    if pods.get(target.app_label) != app or pods.get(target.version_label) != version:
        raise NoSplit(
            f"deployment/{name}'s pods are labelled {pods}, which the Service's selector "
            f"would not pick: label its pod template "
            f"{target.app_label}={app},{target.version_label}={version}"
        )
    return deployment


def _replicas(deployment: dict[str, Any]) -> int:
    return int(deployment["spec"].get("replicas", 1))


def _traffic(pinned: str | None, replicas: dict[str, int], bad: str, stable: str) -> dict[str, int]:
    if pinned in (bad, stable):
        return {v: 100 if v == pinned else 0 for v in (bad, stable)}
    on_stable = _round_half_up(100 * replicas[stable] / (sum(replicas.values()) or 1))
    return {stable: on_stable, bad: 100 - on_stable}


def _await_ready(name: str, ns: str, replicas: int, target: KubernetesTarget, where: str) -> None:
    """Until the Deployment has `replicas` ready pods: the Service is not switched to a
    version that cannot answer."""
    timeout = target.ready_timeout_seconds
    deadline, pause = time.monotonic() + timeout, 0.1
    while True:
        status = k8s.read_namespaced_deployment(name, ns).get("status") or {}
        ready = status.get("readyReplicas") or 0
        if ready >= replicas:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(
                f"deployment/{name} has {ready}/{replicas} pods ready after {timeout:g} s, so "
                f"{where} was not switched to it: see `kubectl -n {ns} describe deployment "
                f"{name}`, or raise the target's ready_timeout_seconds"
            )
        time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
        pause = min(pause * 2, 2.0)


# -- KServe: canaryTrafficPercent on the InferenceService's predictor ----------------------


def kserve_split(target: KServeTarget, model: str, counts_url: str) -> Split:
    """The split of a KServe InferenceService (Serverless mode) by the predictor's
    canaryTrafficPercent, the share of its latest ready revision.

    KServe routes canaryTrafficPercent to the latest ready revision and the rest to the
    last revision rolled out at 100 %; when the latest ready one is itself the rolled-out
    one (a bad version already at 100 %), the rest goes to previousRolledoutRevision, the
    "rollback" case (KServe's ksvc_reconciler.go, createKnativeService, and its "Canary
    Rollout Strategy" docs: canary is Serverless-only, and a rollback pins traffic to the
    previous rolled-out revision). So the bad version is latestReadyRevision, the stable
    one latestRolledoutRevision when it differs, else previousRolledoutRevision, and a
    split puts canaryTrafficPercent at the bad version's share. Versions are revision
    names, and `counts_url`'s counts are looked up with version=<revision name>.
    """
    name, ns = target.name.format(model=model), target.namespace
    where = f"inferenceservice/{name} in {ns}"
    isvc = _read_inference_service(name, ns, where)
    status = isvc.get("status") or {}
    mode = status.get("deploymentMode")
    if mode and mode != "Serverless":
        raise NoSplit(
            f"{where} runs in {mode} mode; KServe splits traffic by canaryTrafficPercent "
            "only in Serverless mode: roll it back immediately instead"
        )
    predictor = (status.get("components") or {}).get("predictor") or {}
    bad = predictor.get("latestReadyRevision")
    rolled_out = predictor.get("latestRolledoutRevision")
    stable = (
        rolled_out
        if rolled_out and rolled_out != bad
        else predictor.get("previousRolledoutRevision")
    )
    if not bad or not stable or stable == bad:
        raise NoSplit(
            f"{where} reports no earlier rolled-out revision to shift traffic back to "
            f"(status.components.predictor: latestReadyRevision={bad!r}, "
            f"latestRolledoutRevision={rolled_out!r}, previousRolledoutRevision="
            f"{predictor.get('previousRolledoutRevision')!r}); KServe keeps one only after a "
            "second revision was rolled out to 100 %"
        )

    def apply(split: dict[str, int]) -> dict[str, Any]:
        share = 100 - _stable_percent(split, bad, stable, where)
        seen = _canary_percent(_read_inference_service(name, ns, where))
        if seen != share:
            patched = k8s.patch_namespaced_custom_object(
                *KSERVE[:2],
                ns,
                KSERVE[2],
                name,
                {"spec": {"predictor": {"canaryTrafficPercent": share}}},
            )
            seen = _canary_percent(patched)
            if seen != share:
                raise RuntimeError(
                    f"{where} reads back canaryTrafficPercent {seen} after setting {share}"
                )
        return {"canaryTrafficPercent": seen, "traffic": {stable: 100 - seen, bad: seen}}

    def counts(version: str) -> Counts | None:
        return scrape_window_counts(counts_url, model, version)

    share = _canary_percent(isvc)
    return Split(where, {stable: 100 - share, bad: share}, bad, stable, apply, counts)


def _read_inference_service(name: str, ns: str, where: str) -> dict[str, Any]:
    try:
        return k8s.get_namespaced_custom_object(*KSERVE[:2], ns, KSERVE[2], name)
    except Exception as exc:
        if k8s.is_not_found(exc):
            raise NoSplit(
                f"{where} not found (or KServe's {KSERVE[0]}/{KSERVE[1]} API is not "
                "installed): check the target's namespace and name"
            ) from exc
        raise


def _canary_percent(isvc: dict[str, Any]) -> int:
    """The latest revision's share; without the field KServe sends it everything."""
    percent = ((isvc.get("spec") or {}).get("predictor") or {}).get("canaryTrafficPercent")
    return 100 if percent is None else int(percent)
