"""Every way the containment runbook can end, each a defined outcome with the run Completed:
approvals (allowed, refused, rejected, timed out both ways), a rollback that makes it worse
(undone), no recovery (safe state kept), the kill switch, a dead run's lock, a missing
rollback target, and a Kubernetes API that fails (500 then success, a timeout, 403).

Runs in-process against the session's real Prefect server and the stateful Kubernetes API.
Each test has its own model, so none leans on another's state. The model's quality
follows its Service: a small exposition endpoint reads the selector from the Kubernetes
API and serves the F1 the test gave that version.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from prefect.flow_runs import resume_flow_run
from sqlmodel import col, select

from deployments.cli import main as cli
from flows.containment import ContainmentRequest, contain
from runbooks import remediation
from runbooks.models import Approval, Incident, OutboxEvent, RemediationLock
from runbooks.policy import KubernetesTarget, ModelPolicy, Recovery
from runbooks.settings import get_settings
from runbooks.store import session_scope
from tasks import incident_store as store
from tasks import kubernetes as k8s
from tasks.traffic import STABLE_ANNOTATION
from tests.conftest import make_model
from tests.helpers import wait_for
from tests.test_containment import actions_of, open_incident, timeline_of

pytestmark = pytest.mark.slow
NS = "ml-prod"


def db() -> str:
    return get_settings().resolved_database_url()


class VersionedQuality:
    """`model_f1_score{model=...}` for the version each model's Service selects now."""

    def __init__(self, kube: Any) -> None:
        self.core, _ = kube.clients()
        self.quality: dict[str, dict[str, float]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                lines = []
                for model, by_version in list(outer.quality.items()):
                    svc = outer.core.read_namespaced_service(model, NS)
                    value = by_version.get(svc.spec.selector.get("version"))
                    if value is not None:
                        lines.append(f'model_f1_score{{model="{model}"}} {value}')
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def quality(kube: Any) -> Iterator[VersionedQuality]:
    q = VersionedQuality(kube)
    yield q
    q.server.shutdown()


@pytest.fixture
def model(
    request: pytest.FixtureRequest,
    stack: dict,
    kube: Any,
    quality: VersionedQuality,
    monkeypatch: pytest.MonkeyPatch,
):  # type: ignore[no-untyped-def]
    """A model of this test's own, serving v2 (F1 0.50), v1 at 0.90 unless the test says,
    in a copy of the policy this process's runbooks read."""
    name = "m-" + request.node.name.removeprefix("test_").replace("_", "-")[:40]
    core, apps = kube.clients()
    make_model(core, apps, NS, name, serving="v2")
    quality.quality[name] = {"v1": 0.90, "v2": 0.50}
    policy = store.policy().model_copy(deep=True)
    policy.approval.timeout_seconds = 60
    policy.models[name] = ModelPolicy(
        owners=["olivia"],
        target=KubernetesTarget(kind="kubernetes", namespace=NS, service=name),
        recovery=Recovery(url=quality.url, interval_seconds=0.2, timeout_seconds=3, consecutive=2),
    )
    policy.approval.approvers = {s: ["owners", "alice"] for s in ("P1", "P2", "P3")}
    monkeypatch.setattr(store, "policy", lambda: policy)
    return name, policy


def selector(kube: Any, name: str) -> str:
    core, _ = kube.clients()
    return core.read_namespaced_service(name, NS).spec.selector["version"]


def run_in_thread(request: ContainmentRequest) -> dict[str, Any]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["outcome"] = contain(request)
        except BaseException as exc:  # noqa: BLE001  the test asserts on it
            box["error"] = exc

    box["thread"] = threading.Thread(target=target, daemon=True)
    box["thread"].start()
    return box


def pending_approval(incident_id: int) -> Approval:
    def find() -> Approval | None:
        with session_scope(db()) as s:
            return s.exec(
                select(Approval).where(
                    Approval.incident_id == incident_id, Approval.status == "pending"
                )
            ).first()

    return wait_for(find, timeout=60, what="the approval request")


def approval_row(incident_id: int) -> Approval:
    with session_scope(db()) as s:
        return s.exec(
            select(Approval)
            .where(Approval.incident_id == incident_id)
            .order_by(col(Approval.id).desc())
        ).first()


def flow_run_state(flow_run_id: str, stack: dict) -> str:
    r = httpx.get(f"{stack['api']}/flow_runs/{flow_run_id}", timeout=10)
    return r.json()["state"]["type"]


def wait_outcome(box: dict[str, Any], timeout: float = 90) -> str:
    box["thread"].join(timeout)
    assert not box["thread"].is_alive(), "the runbook did not finish"
    if "error" in box:
        raise box["error"]
    return box["outcome"]


def needs_human(incident_id: int) -> str | None:
    with session_scope(db()) as s:
        incident = s.get(Incident, incident_id)
        announced = s.exec(
            select(OutboxEvent).where(OutboxEvent.event == "ml.incident.needs_human")
        ).all()
        assert any(e.payload["incident_id"] == incident_id for e in announced)
        return incident.needs_human


# -- approvals ------------------------------------------------------------------------


def test_an_approver_not_on_the_list_is_refused_and_an_allowed_one_is_taken(
    model, kube, stack
) -> None:  # type: ignore[no-untyped-def]
    name, _ = model
    incident_id = open_incident(name, severity="P2")
    box = run_in_thread(ContainmentRequest(incident_id=incident_id))
    asked = pending_approval(incident_id)
    assert asked.approvers == ["olivia", "alice"]

    # The CLI refuses at once, says who may, and the refusal is on the timeline.
    assert cli(["approve", str(incident_id), "--by", "mallory"]) == 1
    # The UI form bypasses the CLI: the runbook checks the answer the same way and waits on.
    wait_for(lambda: flow_run_state(asked.flow_run_id, stack) == "PAUSED", 30, what="pause")
    resume_flow_run(asked.flow_run_id, run_input={"approve": True, "approver": "mallory"})
    wait_for(
        lambda: sum("mallory may not approve" in m for m in timeline_of(incident_id)) == 2,
        timeout=30,
        what="both refusals on the timeline",
    )
    assert selector(kube, name) == "v2"

    wait_for(lambda: flow_run_state(asked.flow_run_id, stack) == "PAUSED", 30, what="re-pause")
    assert cli(["approve", str(incident_id), "--by", "Alice", "--comment", "go"]) == 0
    assert wait_outcome(box) == "resolved"
    assert selector(kube, name) == "v1"
    row = approval_row(incident_id)
    assert (row.status, row.decided_by) == ("approved", "Alice")
    assert any("allowed: olivia, alice" in m for m in timeline_of(incident_id))


def test_a_rejection_changes_nothing_and_calls_a_human(model, kube, stack) -> None:  # type: ignore[no-untyped-def]
    name, _ = model
    incident_id = open_incident(name, severity="P2")
    box = run_in_thread(ContainmentRequest(incident_id=incident_id))
    asked = pending_approval(incident_id)
    assert cli(["approve", str(incident_id), "--by", "olivia", "--reject", "--comment", "no"]) == 0
    assert wait_outcome(box) == "rejected"
    assert selector(kube, name) == "v2"
    assert actions_of(incident_id) == []
    assert "rejected by olivia: no" in (needs_human(incident_id) or "")
    assert flow_run_state(asked.flow_run_id, stack) == "COMPLETED"


@pytest.mark.parametrize("on_timeout", ["escalate", "apply"])
def test_an_approval_timeout_takes_the_policy_outcome_and_the_run_completes(
    model, kube, stack, on_timeout: str
) -> None:  # type: ignore[no-untyped-def]
    name, policy = model
    policy.approval.timeout_seconds = 2
    policy.approval.on_timeout = on_timeout
    incident_id = open_incident(name, severity="P2")
    box = run_in_thread(ContainmentRequest(incident_id=incident_id))
    asked = pending_approval(incident_id)
    outcome = wait_outcome(box)
    row = approval_row(incident_id)
    assert (row.status, row.decided_by) == ("timed_out", "timeout")
    assert flow_run_state(asked.flow_run_id, stack) == "COMPLETED"
    if on_timeout == "escalate":
        assert outcome == "timed_out"
        assert selector(kube, name) == "v2"
        assert "keeping the safe state" in (needs_human(incident_id) or "")
    else:
        assert outcome == "resolved"
        assert selector(kube, name) == "v1"
    # A late answer is told what happened, at once, instead of waiting for a pause.
    assert cli(["approve", str(incident_id), "--by", "alice"]) == 1


# -- verification ---------------------------------------------------------------------


def test_a_rollback_that_makes_it_worse_is_undone_and_a_human_called(model, kube, quality) -> None:  # type: ignore[no-untyped-def]
    name, _ = model
    quality.quality[name] = {"v1": 0.30, "v2": 0.50}
    incident_id = open_incident(name)
    assert contain(ContainmentRequest(incident_id=incident_id)) == "undone"
    assert selector(kube, name) == "v2"
    assert sorted((a.kind, a.status) for a in actions_of(incident_id)) == [
        ("route_to_previous_version", "done"),
        ("undo_route_to_previous_version", "done"),
    ]
    assert "got worse" in (needs_human(incident_id) or "")


def test_no_recovery_keeps_the_safe_state_and_calls_a_human(model, kube, quality) -> None:  # type: ignore[no-untyped-def]
    name, _ = model
    quality.quality[name] = {"v1": 0.52, "v2": 0.50}  # better, not recovered, not worse
    incident_id = open_incident(name)
    assert contain(ContainmentRequest(incident_id=incident_id)) == "not_recovered"
    assert selector(kube, name) == "v1"
    assert "the safe state is kept" in (needs_human(incident_id) or "")
    with session_scope(db()) as s:
        assert s.get(Incident, incident_id).status == "mitigated"


# -- safety rails ---------------------------------------------------------------------


def test_the_kill_switch_skips_actions_until_resumed(model, kube) -> None:  # type: ignore[no-untyped-def]
    name, _ = model
    incident_id = open_incident(name)
    assert (
        cli(["automation", "pause", "--model", name, "--comment", "bad deploy", "--by", "sam"]) == 0
    )
    try:
        assert contain(ContainmentRequest(incident_id=incident_id)) == "automation_paused"
        assert selector(kube, name) == "v2"
        assert actions_of(incident_id) == []
        assert any("paused for" in m and "sam: bad deploy" in m for m in timeline_of(incident_id))
    finally:
        assert cli(["automation", "resume", "--model", name, "--by", "sam"]) == 0
    assert contain(ContainmentRequest(incident_id=incident_id)) == "resolved"
    assert selector(kube, name) == "v1"


def test_a_dead_runs_lock_is_taken_after_its_lease(model, kube) -> None:  # type: ignore[no-untyped-def]
    name, _ = model
    dead = open_incident(name)
    incident_id = open_incident(name)
    with session_scope(db()) as s:
        remediation.acquire_lock(
            s,
            name,
            dead,
            "a run that was killed",
            30,
            now=datetime.now(UTC) - timedelta(seconds=31),
        )
    assert contain(ContainmentRequest(incident_id=incident_id)) == "resolved"
    assert any("expired" in m and f"incident {incident_id} took it" in m for m in timeline_of(dead))
    with session_scope(db()) as s:
        assert s.get(RemediationLock, name) is None  # released at the end


def test_a_missing_rollback_target_refuses_and_escalates(model, kube) -> None:  # type: ignore[no-untyped-def]
    name, _ = model
    core, apps = kube.clients()
    apps.delete_namespaced_deployment(f"{name}-v1", NS)
    incident_id = open_incident(name)
    assert contain(ContainmentRequest(incident_id=incident_id)) == "no_rollback_target"
    assert selector(kube, name) == "v2"
    assert "no previous version" in (needs_human(incident_id) or "")


def test_a_previous_version_marked_not_stable_is_refused(model, kube) -> None:  # type: ignore[no-untyped-def]
    name, _ = model
    _, apps = kube.clients()
    marked = {"metadata": {"annotations": {STABLE_ANNOTATION: "false"}}}
    apps.patch_namespaced_deployment(f"{name}-v1", NS, marked)
    incident_id = open_incident(name)
    assert contain(ContainmentRequest(incident_id=incident_id)) == "no_rollback_target"
    assert selector(kube, name) == "v2"
    assert "v1 marked not stable" in (needs_human(incident_id) or "")


def test_a_decision_runs_once_however_often_its_event_arrives(model, kube) -> None:  # type: ignore[no-untyped-def]
    name, _ = model
    incident_id = open_incident(name)
    request = ContainmentRequest(incident_id=incident_id, decision="immediate_rollback")
    assert contain(request) == "resolved"
    assert contain(request) == "already_ran"
    assert [a.status for a in actions_of(incident_id)] == ["done"]


# -- the Kubernetes API failing -------------------------------------------------------


HANG = -1  # a fault that answers nothing


class FaultyProxy:
    """Forwards to the Kubernetes API, answering the first PATCHes with given statuses (or
    not at all, for HANG)."""

    def __init__(self, upstream: str) -> None:
        self.faults: list[int] = []
        self.hang_seconds = 3.0
        self.patches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.command == "PATCH":
                    outer.patches += 1
                    if outer.faults and outer.faults[0] == HANG:
                        outer.faults.pop(0)
                        # Longer than the client's timeout; the PATCH never reaches the API.
                        time.sleep(outer.hang_seconds)
                        return
                    if outer.faults:
                        code = outer.faults.pop(0)
                        status = {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "status": "Failure",
                            "message": "injected",
                            "code": code,
                        }
                        data = json.dumps(status).encode()
                        self.send_response(code)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                r = httpx.request(self.command, upstream + self.path, content=body, headers=headers)
                self.send_response(r.status_code)
                self.send_header("Content-Type", r.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def faulty(kube: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultyProxy]:
    from kubernetes import client

    proxy = FaultyProxy(kube.url)
    cfg = client.Configuration()
    cfg.host = proxy.url
    api = client.ApiClient(cfg)
    monkeypatch.setattr(k8s, "api_client", lambda *a, **k: api)
    yield proxy
    proxy.server.shutdown()


def test_a_kubernetes_500_is_retried_and_the_action_taken_once(model, kube, faulty) -> None:  # type: ignore[no-untyped-def]
    name, _ = model
    faulty.faults = [500]
    incident_id = open_incident(name)
    assert contain(ContainmentRequest(incident_id=incident_id)) == "resolved"
    assert faulty.patches == 2
    assert selector(kube, name) == "v1"
    assert [a.status for a in actions_of(incident_id)] == ["done"]


def test_a_kubernetes_api_that_times_out_is_retried_and_the_action_taken_once(
    model, kube, faulty, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    name, _ = model
    monkeypatch.setattr(k8s, "TIMEOUT", 1.0)
    faulty.faults = [HANG]
    incident_id = open_incident(name)
    assert contain(ContainmentRequest(incident_id=incident_id)) == "resolved"
    assert faulty.patches == 2
    assert selector(kube, name) == "v1"
    assert [a.status for a in actions_of(incident_id)] == ["done"]


def test_a_kubernetes_403_is_not_retried_and_a_human_is_told_why(model, kube, faulty) -> None:  # type: ignore[no-untyped-def]
    name, _ = model
    faulty.faults = [403]
    incident_id = open_incident(name)
    assert contain(ContainmentRequest(incident_id=incident_id)) == "action_failed"
    assert faulty.patches == 1
    assert selector(kube, name) == "v2"
    assert [a.status for a in actions_of(incident_id)] == ["failed"]
    assert "403" in (reason := needs_human(incident_id) or "") and "RBAC" in reason
