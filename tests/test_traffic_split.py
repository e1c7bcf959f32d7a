"""Traffic splits on Kubernetes and KServe against the session's Kubernetes API emulator:
the replica ratio of two version Deployments behind one Service (scaled, then selected,
idempotent, never routed to pods that are not ready), KServe's canaryTrafficPercent, and
each version's confusion counts from a /metrics page.

The emulator runs no controllers: a thread here plays the Deployment controller by
marking a Deployment's replicas ready, and no KServe controller turns canaryTrafficPercent
into routing, so the KServe tests check what is written to the InferenceService only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from checks.rollout import Counts
from runbooks.policy import KServeTarget, KubernetesTarget
from tasks import kubernetes as k8s
from tasks import traffic
from tasks.traffic import (
    SPLIT_ANNOTATION,
    NoRollbackTarget,
    NoSplit,
    kserve_split,
    kubernetes_split,
)
from tests.conftest import make_model

pytestmark = pytest.mark.slow
NS = "ml-prod"
TARGET = KubernetesTarget(kind="kubernetes", namespace=NS)
EXPOSITION = """\
# TYPE model_window_true_positives gauge
model_window_true_positives{model="split-counts",version="v1"} 90.0
model_window_true_positives{model="split-counts",version="v2"} 40.0
model_window_true_positives{model="other",version="v1"} 7.0
# TYPE model_window_false_positives gauge
model_window_false_positives{model="split-counts",version="v1"} 10.0
model_window_false_positives{model="split-counts",version="v2"} 35.0
# TYPE model_window_false_negatives gauge
model_window_false_negatives{model="split-counts",version="v1"} 12.0
model_window_false_negatives{model="split-counts",version="v2"} 50.0
"""


@pytest.fixture(scope="module")
def metrics_url() -> Iterator[str]:
    """A /metrics page that answers as the sandbox platform's does, with fixed numbers."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = EXPOSITION.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def clients(stack: dict, kube):  # type: ignore[no-untyped-def]
    return kube.clients()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every write the splits send to the API, by verb."""
    seen: list[str] = []

    def spy(verb: str):  # type: ignore[no-untyped-def]
        real = getattr(k8s, verb)

        def write(*args, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(verb)
            return real(*args, **kwargs)

        return write

    for verb in (
        "patch_namespaced_service",
        "patch_namespaced_deployment_scale",
        "patch_namespaced_custom_object",
    ):
        monkeypatch.setattr(k8s, verb, spy(verb))
    return seen


@contextmanager
def deployment_controller(apps: client.AppsV1Api, names: list[str]) -> Iterator[None]:
    """What the Deployment controller and kubelet would do: every replica becomes ready."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(0.05):
            for name in names:
                try:
                    n = apps.read_namespaced_deployment_scale(name, NS).spec.replicas
                    apps.patch_namespaced_deployment_status(
                        name, NS, {"status": {"replicas": n, "readyReplicas": n}}
                    )
                except ApiException:
                    continue

    thread = threading.Thread(target=run, name="deployment-controller", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def state(core: client.CoreV1Api, apps: client.AppsV1Api, app: str) -> tuple[dict, dict]:
    svc = core.read_namespaced_service(app, NS)
    replicas = {
        v: apps.read_namespaced_deployment_scale(f"{app}-{v}", NS).spec.replicas
        for v in ("v1", "v2")
    }
    return dict(svc.spec.selector), replicas


def test_half_split_scales_both_versions_and_selects_the_app_only(
    clients, metrics_url: str
) -> None:  # type: ignore[no-untyped-def]
    core, apps = clients
    make_model(core, apps, NS, "split-half", serving="v2")
    with deployment_controller(apps, ["split-half-v1", "split-half-v2"]):
        split = kubernetes_split(TARGET, "split-half", metrics_url)
        assert (split.bad, split.stable, split.traffic) == ("v2", "v1", {"v2": 100, "v1": 0})
        read_back = split.apply(split.at(50))
    assert state(core, apps, "split-half") == ({"app": "split-half"}, {"v1": 1, "v2": 1})
    assert read_back["traffic"] == {"v1": 50, "v2": 50}
    annotations = core.read_namespaced_service("split-half", NS).metadata.annotations
    assert annotations[SPLIT_ANNOTATION] == '{"bad": "v2", "stable": "v1"}'
    # A retried run reads the same split although the selector names no version.
    again = kubernetes_split(TARGET, "split-half", metrics_url)
    assert (again.bad, again.stable, again.traffic) == ("v2", "v1", {"v1": 50, "v2": 50})


def test_full_split_selects_the_stable_version_and_scales_the_bad_one_down(
    clients, metrics_url: str
) -> None:  # type: ignore[no-untyped-def]
    core, apps = clients
    make_model(core, apps, NS, "split-full", serving="v2")
    with deployment_controller(apps, ["split-full-v1", "split-full-v2"]):
        split = kubernetes_split(TARGET, "split-full", metrics_url)
        split.apply(split.at(50))
        read_back = split.apply(split.at(100))
    selector, replicas = state(core, apps, "split-full")
    assert selector == {"app": "split-full", "version": "v1"}
    assert replicas == {"v1": 2, "v2": 0}
    assert read_back["traffic"] == {"v1": 100, "v2": 0}
    after = kubernetes_split(TARGET, "split-full", metrics_url)
    assert (after.bad, after.stable, after.traffic) == ("v2", "v1", {"v1": 100, "v2": 0})


def test_reapplying_the_split_it_has_writes_nothing(
    clients, metrics_url: str, writes: list[str]
) -> None:  # type: ignore[no-untyped-def]
    core, apps = clients
    make_model(core, apps, NS, "split-again", serving="v2")
    with deployment_controller(apps, ["split-again-v1", "split-again-v2"]):
        split = kubernetes_split(TARGET, "split-again", metrics_url)
        split.apply(split.traffic)  # all on v2, v1 a warm standby: left as it is
        assert writes == []
        assert state(core, apps, "split-again")[1] == {"v1": 2, "v2": 2}
        split.apply(split.at(50))
        done = len(writes)
        split.apply(split.at(50))
        kubernetes_split(TARGET, "split-again", metrics_url).apply(split.at(50))
        assert len(writes) == done
        split.apply(split.at(100))
        done = len(writes)
        split.apply(split.at(100))
        assert len(writes) == done


def test_undoing_the_split_returns_all_traffic_to_where_it_was(clients, metrics_url: str) -> None:  # type: ignore[no-untyped-def]
    core, apps = clients
    make_model(core, apps, NS, "split-undo", serving="v2")
    with deployment_controller(apps, ["split-undo-v1", "split-undo-v2"]):
        split = kubernetes_split(TARGET, "split-undo", metrics_url)
        original = split.traffic
        split.apply(split.at(50))
        split.apply(original)
    selector, replicas = state(core, apps, "split-undo")
    assert selector == {"app": "split-undo", "version": "v2"}
    assert replicas == {"v1": 0, "v2": 2}
    annotations = core.read_namespaced_service("split-undo", NS).metadata.annotations or {}
    assert SPLIT_ANNOTATION not in annotations


def test_never_selects_a_version_whose_pods_are_not_ready(clients, metrics_url: str) -> None:  # type: ignore[no-untyped-def]
    core, apps = clients
    make_model(core, apps, NS, "split-unready", serving="v2")
    apps.patch_namespaced_deployment_scale("split-unready-v1", NS, {"spec": {"replicas": 0}})
    impatient = TARGET.model_copy(update={"ready_timeout_seconds": 0.5})
    split = kubernetes_split(impatient, "split-unready", metrics_url)
    with pytest.raises(RuntimeError, match=r"split-unready-v1 has 0/2 pods ready"):
        split.apply(split.at(100))
    assert state(core, apps, "split-unready")[0] == {"app": "split-unready", "version": "v2"}


def test_missing_stable_version_is_no_split_and_names_the_fix(clients, metrics_url: str) -> None:  # type: ignore[no-untyped-def]
    core, apps = clients
    make_model(core, apps, NS, "split-lone", serving="v2", versions=("v2",))
    with pytest.raises(NoRollbackTarget, match="no previous version of split-lone"):
        kubernetes_split(TARGET, "split-lone", metrics_url)
    core.patch_namespaced_service(
        "split-lone",
        NS,
        {"metadata": {"annotations": {traffic.PREVIOUS_VERSION_ANNOTATION: "v1"}}},
    )
    with pytest.raises(NoRollbackTarget, match=r"names v1 as the previous version .* no Deploy"):
        kubernetes_split(TARGET, "split-lone", metrics_url)
    selector = core.read_namespaced_service("split-lone", NS).spec.selector
    assert selector == {"app": "split-lone", "version": "v2"}


def test_counts_are_read_per_version_of_the_model(clients, metrics_url: str) -> None:  # type: ignore[no-untyped-def]
    core, apps = clients
    make_model(core, apps, NS, "split-counts", serving="v2")
    split = kubernetes_split(TARGET, "split-counts", metrics_url)
    assert split.counts("v1") == Counts(90, 10, 12)
    assert split.counts("v2") == Counts(40, 35, 50)
    assert split.counts("v3") is None


def test_counts_from_the_sandbox_platforms_metrics_page(clients, sandbox) -> None:  # type: ignore[no-untyped-def]
    core, apps = clients
    make_model(core, apps, NS, "churn", serving="v2")
    split = kubernetes_split(TARGET, "churn", f"{sandbox.url}/metrics")
    served = split.counts("v1")  # the sandbox serves v1 of every model
    assert served is not None and served.trials > 0
    assert split.counts("v9") is None


def inference_service(custom: client.CustomObjectsApi, name: str, predictor: dict) -> None:
    custom.create_namespaced_custom_object(
        *traffic.KSERVE[:2],
        NS,
        traffic.KSERVE[2],
        {
            "apiVersion": "serving.kserve.io/v1beta1",
            "kind": "InferenceService",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "sklearn"}}}},
            "status": {"components": {"predictor": predictor}},
        },
    )


def canary_percent(custom: client.CustomObjectsApi, name: str) -> int | None:
    isvc = custom.get_namespaced_custom_object(*traffic.KSERVE[:2], NS, traffic.KSERVE[2], name)
    return isvc["spec"]["predictor"].get("canaryTrafficPercent")


def test_kserve_split_moves_canary_traffic_percent_off_the_latest_revision(
    clients, metrics_url: str, writes: list[str]
) -> None:  # type: ignore[no-untyped-def]
    core, _ = clients
    custom = client.CustomObjectsApi(core.api_client)
    # The bad revision 2 was rolled out to 100 %; revision 1 was before it.
    inference_service(
        custom,
        "kserve-rollback",
        {
            "latestReadyRevision": "kserve-rollback-predictor-00002",
            "latestRolledoutRevision": "kserve-rollback-predictor-00002",
            "previousRolledoutRevision": "kserve-rollback-predictor-00001",
        },
    )
    target = KServeTarget(kind="kserve", namespace=NS)
    split = kserve_split(target, "kserve-rollback", metrics_url)
    bad, stable = "kserve-rollback-predictor-00002", "kserve-rollback-predictor-00001"
    assert (split.bad, split.stable, split.traffic) == (bad, stable, {bad: 100, stable: 0})
    split.apply(split.traffic)
    assert writes == [] and canary_percent(custom, "kserve-rollback") is None
    assert split.apply(split.at(50))["traffic"] == {stable: 50, bad: 50}
    assert canary_percent(custom, "kserve-rollback") == 50
    split.apply(split.at(100))
    assert canary_percent(custom, "kserve-rollback") == 0
    split.apply(split.at(100))
    assert writes == ["patch_namespaced_custom_object"] * 2


def test_kserve_split_of_a_first_revision_is_no_split(clients, metrics_url: str) -> None:  # type: ignore[no-untyped-def]
    core, _ = clients
    custom = client.CustomObjectsApi(core.api_client)
    only = "kserve-first-predictor-00001"
    inference_service(
        custom, "kserve-first", {"latestReadyRevision": only, "latestRolledoutRevision": only}
    )
    target = KServeTarget(kind="kserve", namespace=NS)
    with pytest.raises(NoSplit, match="no earlier rolled-out revision"):
        kserve_split(target, "kserve-first", metrics_url)
    with pytest.raises(NoSplit, match="inferenceservice/kserve-absent in ml-prod not found"):
        kserve_split(target, "kserve-absent", metrics_url)
