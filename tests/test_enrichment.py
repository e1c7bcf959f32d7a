"""Triage enrichment: registry context from a real MLflow server, rollout history from the
Kubernetes API emulator, and the pure parts (current/previous, ordering, the 7-day window,
gap wording). Every source is optional and fails soft: a gap line, never an exception.

MLflow runs from its own venv (RUNBOOKS_MLFLOW_VENV, default .venv-mlflow next to the repo),
built on first use: in the project venv it would downgrade pyarrow, and the product must
not depend on it.
"""

from __future__ import annotations

import ast
import fcntl
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from deployments.local import ManagedProcess, free_port
from runbooks.enrichment import (
    REVISION_ANNOTATION,
    SourceError,
    enrich,
    owned_by,
    registry_context,
    rollout_history,
    within,
)
from tasks.enrichment import describe_http_failure, enrich_incident
from tests.conftest import SESSION_HOME

ROOT = Path(__file__).resolve().parent.parent
MLFLOW_REQUIREMENT = "mlflow>=3.1,<4"
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


# --- A real MLflow tracking server ------------------------------------------------------


def mlflow_venv() -> Path:
    """The venv MLflow runs from, built once; the lock keeps parallel sessions from racing."""
    venv = Path(os.environ.get("RUNBOOKS_MLFLOW_VENV") or ROOT / ".venv-mlflow")
    marker = venv / ".installed"
    venv.mkdir(parents=True, exist_ok=True)
    with (venv / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == MLFLOW_REQUIREMENT:
            return venv
        started = time.monotonic()
        print(f"\ninstalling {MLFLOW_REQUIREMENT} into {venv} (first run: ~1.5 min)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", MLFLOW_REQUIREMENT],
            check=True,
            timeout=1200,
        )
        marker.write_text(MLFLOW_REQUIREMENT)
        print(f"installed in {time.monotonic() - started:.0f} s", flush=True)
    return venv


@pytest.fixture(scope="module")
def mlflow_url() -> Iterator[str]:
    venv = mlflow_venv()
    home = SESSION_HOME / f"mlflow-{free_port()}"
    home.mkdir(parents=True)
    port = free_port()
    proc = ManagedProcess(
        "mlflow server",
        [
            str(venv / "bin" / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{home / 'mlflow.db'}",
            "--default-artifact-root",
            str(home / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        # Without this MLflow 3 starts a job runner: 15 processes and 3 GB instead of 2.
        {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        home / "mlflow.log",
    )
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/health", 90)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


def mlflow_post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{url}/api/2.0/mlflow/{path}", json=body, timeout=10)
    assert r.status_code == 200, f"{path}: {r.status_code} {r.text}"
    return r.json()


def register_version(url: str, model: str, user: str, description: str = "") -> str:
    """A run by `user`, then a model version from it, as a training pipeline would."""
    run = mlflow_post(
        url,
        "runs/create",
        {"experiment_id": "0", "user_id": user, "start_time": int(time.time() * 1000)},
    )["run"]["info"]
    mv = mlflow_post(
        url,
        "model-versions/create",
        {
            "name": model,
            "source": f"runs:/{run['run_id']}/model",
            "run_id": run["run_id"],
            "description": description,
        },
    )["model_version"]
    return mv["version"]


# --- Pure parts: current and previous version, window, ordering --------------------------


def ms(dt: datetime) -> str:
    # MLflow's JSON carries int64 as strings or numbers depending on the server; take strings.
    return str(int(dt.timestamp() * 1000))


def mv(version: int, created: datetime, **kw: Any) -> dict[str, Any]:
    return {
        "name": "fraud-v3",
        "version": str(version),
        "creation_timestamp": ms(created),
        "last_updated_timestamp": ms(kw.pop("updated", created)),
        "status": kw.pop("status", "READY"),
        "run_id": f"run{version}",
        "source": f"runs:/run{version}/model",
        **kw,
    }


def test_current_is_the_first_configured_alias_and_previous_the_version_below() -> None:
    versions = [mv(n, NOW - timedelta(days=30 - n)) for n in (1, 2, 3, 4)]
    registered = {
        "aliases": [{"alias": "champion", "version": "2"}, {"alias": "production", "version": "3"}]
    }

    ctx = registry_context("u", "fraud-v3", registered, versions, ("champion", "production"), NOW)
    assert (ctx.current.version, ctx.current_basis) == (2, "alias champion")
    assert ctx.previous.version == 1
    assert ctx.aliases == {"champion": 2, "production": 3}

    ctx = registry_context("u", "fraud-v3", registered, versions, ("blue", "production"), NOW)
    assert (ctx.current.version, ctx.current_basis, ctx.previous.version) == (
        3,
        "alias production",
        2,
    )


def test_without_an_alias_the_stage_then_the_highest_version_is_current() -> None:
    staged = [mv(1, NOW), mv(2, NOW, current_stage="Production"), mv(3, NOW)]
    ctx = registry_context("u", "m", {}, staged, ("champion", "production"), NOW)
    assert (ctx.current.version, ctx.current_basis) == (2, "stage Production")

    # Version numbers compare as numbers: "10" is after "9".
    plain = [mv(n, NOW) for n in (9, 10, 2)]
    ctx = registry_context("u", "m", {}, plain, ("champion",), NOW)
    assert (ctx.current.version, ctx.current_basis, ctx.previous.version) == (
        10,
        "highest version",
        9,
    )


def test_current_and_previous_skip_failed_and_pending_registrations() -> None:
    versions = [mv(1, NOW), mv(2, NOW), mv(3, NOW, status="FAILED_REGISTRATION"), mv(4, NOW)]
    registered = {"aliases": [{"alias": "champion", "version": "4"}]}
    ctx = registry_context("u", "m", registered, versions, ("champion",), NOW)
    assert ctx.previous.version == 2

    # Without an alias the newest version that registered fine is current.
    versions[3]["status"] = "PENDING_REGISTRATION"
    ctx = registry_context("u", "m", {}, versions, ("champion",), NOW)
    assert (ctx.current.version, ctx.previous.version) == (2, 1)


def test_recent_changes_are_the_last_seven_days_inclusive_newest_first() -> None:
    week = timedelta(days=7)
    versions = [
        mv(1, NOW - week - timedelta(seconds=1)),  # just outside
        mv(2, NOW - week),  # exactly on the edge: inside
        mv(3, NOW - timedelta(days=40), updated=NOW - timedelta(hours=2)),  # old, edited today
        mv(4, NOW - timedelta(days=1)),
    ]
    ctx = registry_context("u", "m", {}, versions, ("champion",), NOW)
    assert [v.version for v in ctx.recent] == [3, 4, 2]
    assert within(NOW + timedelta(minutes=1), NOW)  # clock skew is not "old"
    assert not within(None, NOW)
    # A naive time is UTC, not the host's zone.
    assert within(datetime(2026, 11, 17, 12, 0), NOW)
    assert not within(datetime(2026, 11, 17, 11, 59), NOW)


def rs(
    name: str,
    revision: str | None,
    created: datetime,
    owner: str = "fraud-v3",
    uid: str | None = "uid-fraud",
    image: str = "registry/fraud:1",
    version: str = "v1",
) -> dict[str, Any]:
    annotations = {REVISION_ANNOTATION: revision} if revision is not None else {}
    owner_ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner, "controller": True}
    if uid:
        owner_ref["uid"] = uid
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "namespace": "ml-prod",
            "creationTimestamp": created.isoformat().replace("+00:00", "Z"),
            "annotations": annotations,
            "labels": {"app": "fraud-v3"},
            "ownerReferences": [owner_ref],
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "fraud-v3"}},
            "template": {
                "metadata": {"labels": {"app": "fraud-v3", "version": version}},
                "spec": {"containers": [{"name": "model", "image": image}]},
            },
        },
    }


def deployment(name: str = "fraud-v3", uid: str | None = "uid-fraud", revision: str = "10") -> dict:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ml-prod",
        "annotations": {REVISION_ANNOTATION: revision},
    }
    if uid:
        meta["uid"] = uid
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta}


def test_rollout_history_orders_by_revision_number_and_keeps_only_owned_replica_sets() -> None:
    sets = [
        rs("fraud-v3-aaa", "10", NOW - timedelta(days=1), image="fraud:10", version="v3"),
        rs("fraud-v3-bbb", "9", NOW - timedelta(days=20), image="fraud:9", version="v2"),
        rs("fraud-v3-ccc", "2", NOW - timedelta(days=3), image="fraud:2"),
        rs("fraud-v3-nnn", None, NOW),  # no revision: not part of any history
        rs("fraud-v3-shadow-x", "11", NOW, owner="fraud-v3-shadow", uid="uid-shadow"),
        # Same owner name, different uid: left over from a deleted and recreated Deployment.
        rs("fraud-v3-old", "12", NOW, uid="uid-before"),
    ]
    h = rollout_history(deployment(), sets, NOW)
    assert [r.revision for r in h.revisions] == [2, 9, 10]
    assert h.current == 10
    assert [r.revision for r in h.recent] == [10, 2]
    top = h.revisions[-1]
    assert (top.replica_set, top.images, top.version) == ("fraud-v3-aaa", ("fraud:10",), "v3")


def test_owner_is_matched_by_name_when_uids_are_missing() -> None:
    assert owned_by(rs("a", "1", NOW, uid=None), deployment(uid=None))
    assert owned_by(rs("a", "1", NOW, uid=None), deployment())
    assert not owned_by(rs("a", "1", NOW, owner="other", uid=None), deployment(uid=None))
    assert not owned_by(rs("a", "1", NOW, uid="x"), deployment())


# --- enrich(): gaps, wording, JSON ----------------------------------------------------


class FakeSources:
    def __init__(self, registry: Any = None, rollout: Any = None, runs: Any = None) -> None:
        self._registry, self._rollout, self._runs = registry, rollout, runs or {}

    def registry(self, url: str, model: str) -> tuple[dict, list[dict]]:
        if isinstance(self._registry, BaseException):
            raise self._registry
        return self._registry

    def run_user(self, url: str, run_id: str) -> str | None:
        user = self._runs.get(run_id)
        if isinstance(user, BaseException):
            raise user
        return user

    def rollout(self, namespace: str, deployment: str) -> tuple[dict, list[dict]]:
        if isinstance(self._rollout, BaseException):
            raise self._rollout
        return self._rollout


def test_every_missing_source_is_a_gap_that_says_why() -> None:
    e = enrich("fraud-v3", sources=FakeSources(), now=NOW)
    assert e.gaps == [
        "registry: not configured (no MLflow URL given)",
        "kubernetes: not configured (no namespace and Deployment given)",
        "owners: not configured (none listed for fraud-v3 in the policy)",
        "on-call: not configured (nobody listed for fraud-v3)",
        "business context: not configured (revenue_per_hour and users not given)",
    ]
    assert e.registry is None and e.rollout is None


def test_a_failing_source_is_a_gap_and_the_others_still_answer() -> None:
    sets = [rs("fraud-v3-aaa", "1", NOW)]
    e = enrich(
        "fraud-v3",
        sources=FakeSources(
            registry=SourceError(
                "cannot reach http://mlflow:5000 ([Errno 111] Connection refused)"
            ),
            rollout=(deployment(revision="1"), sets),
        ),
        now=NOW,
        registry_url="http://mlflow:5000",
        namespace="ml-prod",
        deployment="fraud-v3",
        owners=["alice"],
        on_call=["bob"],
        business={"revenue_per_hour": 12000, "users": 40000},
    )
    assert e.gaps == ["registry: cannot reach http://mlflow:5000 ([Errno 111] Connection refused)"]
    assert e.rollout is not None and e.rollout.current == 1

    # A bug below the source layer still does not stop triage; the gap names the error.
    e = enrich(
        "m", sources=FakeSources(registry=KeyError("model_versions")), now=NOW, registry_url="x"
    )
    assert e.gaps[0] == "registry: unexpected KeyError: 'model_versions'"


def test_summary_names_current_previous_and_recent_changes_and_dict_is_json() -> None:
    registered = {"aliases": [{"alias": "champion", "version": "2"}]}
    versions = [
        mv(1, datetime(2026, 11, 10, 8, 0, tzinfo=UTC), user_id="bob"),
        mv(2, datetime(2026, 11, 23, 9, 12, tzinfo=UTC)),
    ]
    sets = [
        rs("fraud-v3-a", "1", datetime(2026, 11, 1, tzinfo=UTC), image="fraud:1", version="v1"),
        rs("fraud-v3-b", "2", datetime(2026, 11, 23, 9, 30, tzinfo=UTC), image="fraud:2"),
    ]
    sets[1]["metadata"]["annotations"]["kubernetes.io/change-cause"] = "set image fraud:2"
    e = enrich(
        "fraud-v3",
        sources=FakeSources(
            registry=(registered, versions),
            rollout=(deployment(revision="2"), sets),
            runs={"run2": "alice", "run1": AssertionError("v1 has a user_id already")},
        ),
        now=NOW,
        registry_url="http://mlflow:5000",
        namespace="ml-prod",
        deployment="fraud-v3",
        owners=["alice"],
        on_call=["bob"],
        business={"revenue_per_hour": 12000, "users": 40000},
    )
    assert e.gaps == []
    assert e.summary_lines() == [
        "registry: fraud-v3 v2 (alias champion), registered 2026-11-23 09:12 UTC by alice; "
        "previous v1, registered 2026-11-10 08:00 UTC by bob",
        "registry: 1 change(s) in the last 7 days: v2 registered 2026-11-23 09:12 UTC",
        "kubernetes: ml-prod/fraud-v3 at revision 2 (fraud:2, version v1, since 2026-11-23 "
        "09:30 UTC, 'set image fraud:2'); previous revision 1 (fraud:1, version v1, since "
        "2026-11-01 00:00 UTC)",
        "kubernetes: 1 rollout(s) in the last 7 days: revision 2 at 2026-11-23 09:30 UTC",
        "owners: alice",
        "on-call: bob",
        "business: revenue 12,000/h at risk, 40,000 users",
    ]
    data = json.loads(json.dumps(e.to_dict()))
    assert data["registry"]["current"]["user"] == "alice"
    assert data["registry"]["current"]["created"] == "2026-11-23T09:12:00+00:00"
    assert data["rollout"]["revisions"][1]["images"] == ["fraud:2"]
    assert data["window"] == 7 * 24 * 3600


def test_a_failed_author_lookup_is_its_own_gap_and_keeps_the_registry() -> None:
    versions = [mv(1, NOW), mv(2, NOW)]
    e = enrich(
        "m",
        sources=FakeSources(
            registry=({}, versions),
            runs={"run2": SourceError("no answer from http://x within 5 s (ReadTimeout)")},
        ),
        now=NOW,
        registry_url="http://x",
    )
    assert e.registry is not None and e.registry.current.version == 2
    assert "registry author of v2: no answer from http://x within 5 s (ReadTimeout)" in e.gaps
    assert e.summary_lines()[0].startswith("registry: m v2 (highest version)")


def test_the_product_never_imports_mlflow() -> None:
    """MLflow is spoken to over REST; its client library stays a test-only tool."""
    for package in ("runbooks", "tasks", "flows", "checks", "deployments", "sandbox"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                assert not any(n.split(".")[0] == "mlflow" for n in names), path


# --- Through the Prefect task, against the real MLflow server and the Kubernetes API ----
# `stack` is the Prefect server the tasks report to, as in production.


@pytest.mark.slow
def test_registry_context_from_a_real_mlflow_server(mlflow_url: str, stack: dict) -> None:
    model = "fraud-v3"
    mlflow_post(mlflow_url, "registered-models/create", {"name": model})
    v1 = register_version(mlflow_url, model, "bob")
    v2 = register_version(mlflow_url, model, "alice")
    v3 = register_version(mlflow_url, model, "carol", description="candidate")
    assert (v1, v2, v3) == ("1", "2", "3")
    mlflow_post(
        mlflow_url, "registered-models/alias", {"name": model, "alias": "champion", "version": "2"}
    )
    mlflow_post(
        mlflow_url,
        "registered-models/alias",
        {"name": model, "alias": "challenger", "version": "3"},
    )

    now = datetime.now(UTC)
    e = enrich_incident(model, registry_url=mlflow_url, now=now)
    reg = e.registry
    assert reg is not None, e.gaps
    assert (reg.current.version, reg.current_basis) == (2, "alias champion")
    assert (reg.current.user, reg.previous.version, reg.previous.user) == ("alice", 1, "bob")
    assert reg.aliases == {"challenger": 3, "champion": 2}
    assert reg.current.run_id and reg.current.source == f"runs:/{reg.current.run_id}/model"
    assert abs(reg.current.created - now) < timedelta(minutes=1)
    assert [v.version for v in reg.recent] == [3, 2, 1]
    assert not [g for g in e.gaps if g.startswith("registry")]

    # A week and a day later the same registry has nothing recent to report.
    later = enrich_incident(model, registry_url=mlflow_url, now=now + timedelta(days=8))
    assert later.registry.recent == []
    assert "registry: no versions registered or updated in the last 7 days" in (
        later.summary_lines()
    )

    # Moving the alias moves "current"; MLflow keeps no alias history, so previous is v2.
    mlflow_post(
        mlflow_url, "registered-models/alias", {"name": model, "alias": "champion", "version": "3"}
    )
    moved = enrich_incident(model, registry_url=mlflow_url, now=now)
    assert (moved.registry.current.version, moved.registry.previous.version) == (3, 2)
    assert moved.registry.current.user == "carol"


@pytest.mark.slow
def test_unknown_model_and_unreachable_registry_are_gaps(mlflow_url: str, stack: dict) -> None:
    e = enrich_incident("no-such-model", registry_url=mlflow_url)
    assert e.registry is None
    (gap,) = [g for g in e.gaps if g.startswith("registry")]
    assert "model 'no-such-model' not found at" in gap
    assert "RESOURCE_DOES_NOT_EXIST" in gap

    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    e = enrich_incident("fraud-v3", registry_url=dead)
    (gap,) = [g for g in e.gaps if g.startswith("registry")]
    assert gap.startswith(f"registry: cannot reach {dead}") and "refused" in gap.lower()
    # Two quick retries, not the remediation backoff: triage must not wait on a dead registry.
    assert time.monotonic() - started < 10

    # A URL that answers but is not MLflow (here: the intake) says so.
    e = enrich_incident("fraud-v3", registry_url=stack["intake"])
    (gap,) = [g for g in e.gaps if g.startswith("registry")]
    assert "is it an MLflow tracking server?" in gap, gap

    # So does a proxy's login page that answers 200 with HTML.
    with html_server() as url:
        e = enrich_incident("fraud-v3", registry_url=url)
    (gap,) = [g for g in e.gaps if g.startswith("registry")]
    assert "did not answer JSON (text/html" in gap and "an MLflow tracking server?" in gap, gap


def test_a_registry_timeout_is_worded_with_the_limit() -> None:
    exc = httpx.ReadTimeout("timed out")
    assert describe_http_failure(exc, "http://mlflow:5000", "model 'm'") == (
        "no answer from http://mlflow:5000 within 5 s (ReadTimeout)"
    )


@contextmanager
def html_server() -> Iterator[str]:
    class Login(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            body = b"<html><body>Sign in</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Login)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_rollout_history_from_the_kubernetes_api(kube, stack: dict) -> None:  # type: ignore[no-untyped-def]
    _, apps = kube.clients()
    ns = "ml-enrich"
    dep = deployment(revision="3") | {
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "fraud-v3"}},
            "template": {
                "metadata": {"labels": {"app": "fraud-v3"}},
                "spec": {"containers": [{"name": "model", "image": "fraud:3"}]},
            },
        }
    }
    dep["metadata"]["namespace"] = ns
    apps.create_namespaced_deployment(ns, dep)
    now = datetime.now(UTC).replace(microsecond=0)
    for body in (
        rs("fraud-v3-111", "1", now - timedelta(days=30), image="fraud:1", version="v1"),
        rs("fraud-v3-333", "3", now - timedelta(hours=5), image="fraud:3", version="v3"),
        rs("fraud-v3-222", "2", now - timedelta(days=2), image="fraud:2", version="v2"),
        # Same labels, another Deployment: kubectl leaves it out, so must we.
        rs("fraud-v3-canary-9", "7", now, owner="fraud-v3-canary", uid="uid-canary"),
    ):
        body["metadata"]["namespace"] = ns
        apps.create_namespaced_replica_set(ns, body)

    e = enrich_incident("fraud-v3", namespace=ns, deployment="fraud-v3", now=now)
    h = e.rollout
    assert h is not None, e.gaps
    assert [(r.revision, r.images, r.version) for r in h.revisions] == [
        (1, ("fraud:1",), "v1"),
        (2, ("fraud:2",), "v2"),
        (3, ("fraud:3",), "v3"),
    ]
    assert h.current == 3
    assert [r.revision for r in h.recent] == [3, 2]
    assert h.revisions[0].created == now - timedelta(days=30)
    assert not [g for g in e.gaps if g.startswith("kubernetes")]

    missing = enrich_incident("fraud-v3", namespace=ns, deployment="fraud-v9")
    assert missing.rollout is None
    (gap,) = [g for g in missing.gaps if g.startswith("kubernetes")]
    assert gap.startswith("kubernetes: Deployment ml-enrich/fraud-v9 not found"), gap
