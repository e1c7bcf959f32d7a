"""The fault matrix around the containment runbook, beside test_runbook_outcomes.py (which
has the Kubernetes 500, the timeout and the first 403): each case ends with no action
taken twice, a consistent incident with a timeline line that says what happened, and the
run Completed.

- A Kubernetes 403 as the API server words it, on the read and on the patch: not
  retried, the incident handed to a human with the verb, the resource and the RBAC rule.
- Slack down (every Web API call 503) while a runbook asks for approval and acts: the
  action is taken once, the messages go to email, the failures are on the timeline.
- The Prefect server restarted while an approval is paused: a server of this module's
  own (the session's serves other tests), the runbook in a process pointed at it; the
  answer given after the restart through `runbooks approve` resumes it. The server is
  down ~6-9 s here; an outage past the client's retries (~62 s) is carried by
  tasks/approvals.py's `_pause_for_answer` (checked by hand with 80 s down: too slow for
  the suite).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiosmtpd.controller import Controller
from sqlmodel import col, select

from deployments.cli import main as cli
from deployments.local import free_port, prefect_env, start_prefect_server
from flows.containment import ContainmentRequest
from runbooks.models import Action, Approval, Incident, Notification, TimelineEvent
from runbooks.settings import get_settings
from runbooks.store import session_scope
from tasks import kubernetes as k8s
from tasks import notifications
from tests import test_runbook_outcomes as outcomes
from tests.conftest import SLACK_TOKEN, make_model, write_policy
from tests.helpers import wait_for
from tests.test_containment import actions_of, open_incident, timeline_of
from tests.test_notifications import Inbox
from tests.test_runbook_outcomes import (
    NS,
    flow_run_state,
    needs_human,
    pending_approval,
    run_in_thread,
    selector,
    wait_outcome,
)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
# test_runbook_outcomes' fixtures: a model of the test's own on the Kubernetes emulator,
# and the F1 each version serves.
model = outcomes.model
quality = outcomes.quality


# -- Kubernetes 403 in the API server's own words --------------------------------------


class ForbiddingApi:
    """Forwards to the Kubernetes API, answering the requests `forbid` names with the 403
    a real API server sends to a service account without the RBAC rule."""

    def __init__(self, upstream: str) -> None:
        self.forbid: tuple[str, str] = ("", "")  # (HTTP method, resource plural)
        self.hits: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, code: int, data: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                method, plural = outer.forbid
                parts = self.path.split("?")[0].strip("/").split("/")
                if self.command == method and plural in parts:
                    outer.hits[method] = outer.hits.get(method, 0) + 1
                    name = parts[parts.index(plural) + 1]
                    verb = {"GET": "get", "PATCH": "patch"}[method]
                    status = {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": f'{plural} "{name}" is forbidden: User '
                        '"system:serviceaccount:ml-runbooks:ml-runbooks-flows" cannot '
                        f'{verb} resource "{plural}" in API group "" in the namespace "{NS}"',
                        "reason": "Forbidden",
                        "details": {"name": name, "kind": plural},
                        "code": 403,
                    }
                    self._answer(403, json.dumps(status).encode(), "application/json")
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                r = httpx.request(self.command, upstream + self.path, content=body, headers=headers)
                self._answer(
                    r.status_code, r.content, r.headers.get("content-type", "application/json")
                )

            do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def forbidding(kube: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[ForbiddingApi]:
    from kubernetes import client

    proxy = ForbiddingApi(kube.url)
    cfg = client.Configuration()
    cfg.host = proxy.url
    api = client.ApiClient(cfg)
    monkeypatch.setattr(k8s, "api_client", lambda *a, **k: api)
    yield proxy
    proxy.server.shutdown()


@pytest.mark.parametrize("method", ["PATCH", "GET"])
def test_a_kubernetes_403_names_the_verb_the_resource_and_the_rbac_rule_and_completes(
    model, kube, forbidding, stack, method: str
) -> None:  # type: ignore[no-untyped-def]
    from flows.containment import contain

    name, _ = model
    forbidding.forbid = (method, "services")
    incident_id = open_incident(name)
    state = contain(ContainmentRequest(incident_id=incident_id), return_state=True)
    assert state.is_completed() and state.result() == "action_failed"
    assert forbidding.hits == {method: 1}  # a 403 is not retried
    assert selector(kube, name) == "v2"
    # A refused patch leaves its action failed, once; a refused read never starts one.
    assert [a.status for a in actions_of(incident_id)] == (["failed"] if method == "PATCH" else [])
    verb = method.lower()
    reason = needs_human(incident_id) or ""
    assert f"may not {verb} services in namespace {NS}" in reason, reason
    assert f'resources: ["services"], verbs: ["{verb}"]' in reason and "RBAC" in reason
    lines = timeline_of(incident_id)
    assert any("needs human" in m or reason in m for m in lines)
    assert not any(m.startswith("containment stopped") for m in lines)
    with session_scope(get_settings().resolved_database_url()) as s:
        assert s.get(Incident, incident_id).needs_human == reason


# -- Slack down -------------------------------------------------------------------------


@pytest.fixture
def slack_down(slack, model, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """This process's runbooks talk to the session's fake Slack, which answers every call
    503, with email (a local SMTP server) as the fallback. Slack is back up afterwards."""
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    for key, value in {
        "RUNBOOKS_SLACK_TOKEN": SLACK_TOKEN,
        "RUNBOOKS_SLACK_BASE_URL": slack.base_url,
        "RUNBOOKS_SMTP_HOST": "127.0.0.1",
        "RUNBOOKS_SMTP_PORT": str(smtp.port),
        "RUNBOOKS_SMTP_FROM": "runbooks@example.com",
    }.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    notifications.forget_secrets()
    _, policy = model
    policy.routing.channels = {s: ["#ml-incidents"] for s in ("P1", "P2", "P3")}
    policy.notifications.attempts = 2
    policy.notifications.backoff_seconds = 0.1
    policy.notifications.email_to = ["ml-team@example.com"]
    slack.down = True
    try:
        yield inbox
    finally:
        slack.down = False
        smtp.stop()
        monkeypatch.undo()
        get_settings.cache_clear()
        notifications.forget_secrets()


def test_slack_down_the_runbook_acts_once_tells_by_email_and_completes(
    model, kube, stack, slack_down
) -> None:  # type: ignore[no-untyped-def]
    name, _ = model
    incident_id = open_incident(name, severity="P2")
    box = run_in_thread(ContainmentRequest(incident_id=incident_id))
    asked = pending_approval(incident_id)
    wait_for(lambda: flow_run_state(asked.flow_run_id, stack) == "PAUSED", 30, what="pause")
    assert cli(["approve", str(incident_id), "--by", "alice", "--comment", "slack is down"]) == 0
    assert wait_outcome(box) == "resolved"
    assert flow_run_state(asked.flow_run_id, stack) == "COMPLETED"
    assert selector(kube, name) == "v1"
    assert [a.status for a in actions_of(incident_id)] == ["done"]

    with session_scope(get_settings().resolved_database_url()) as s:
        rows = s.exec(select(Notification).where(Notification.incident_id == incident_id)).all()
        lines = s.exec(select(TimelineEvent).where(TimelineEvent.incident_id == incident_id)).all()
        assert s.get(Incident, incident_id).status == "resolved"
    by_kind = {(r.kind, r.channel): (r.status, r.attempts) for r in rows}
    failed = {t.message.split(" to ")[0]: t.message for t in lines if t.kind == "notify_failed"}
    # The question went by email; the decision edits Slack's approval message, which email
    # does not carry, so it is on the timeline as failed and says no fallback.
    assert by_kind[("approval", "#ml-incidents")] == ("failed", 2)
    assert by_kind[("approval", "email")][0] == "sent"
    assert "trying email instead" in failed["approval"]
    assert by_kind[("decided", "#ml-incidents")] == ("failed", 2)
    assert ("decided", "email") not in by_kind
    assert "HTTP 503" in failed["decided"] and "instead" not in failed["decided"]
    [(to, raw)] = slack_down.messages
    assert "ml-team@example.com" in to and b"runbooks approve" in raw
    assert any(t.kind == "notified" and t.message == "approval sent to email" for t in lines)


# -- the Prefect server restarted while an approval is paused ---------------------------


# The runbook's process: its own Prefect server, incident store and policy (the env says
# which); it opens one P2 incident, prints its id, contains it and prints the outcome.
RUNBOOK_PROCESS = """
import json, sys
from datetime import UTC, datetime
from flows.containment import ContainmentRequest, contain
from runbooks.alerts import AlertIn
from runbooks.ingest import ingest
from runbooks.models import Incident
from runbooks.policy import load_policy
from runbooks.settings import get_settings
from runbooks.store import migrate, session_scope

url = get_settings().resolved_database_url()
migrate(url)
model = sys.argv[1]
labels = {"alertname": "ModelF1Low", "model": model, "metric": "f1_score", "version": "v2"}
alert = AlertIn(fingerprint="restart", status="firing", model=model, alertname="ModelF1Low",
                labels=labels, annotations={"value": "0.5"}, starts_at=datetime.now(UTC),
                ends_at=None, source="test")
with session_scope(url) as s:
    result = ingest(s, [alert], load_policy())
    incident = s.get(Incident, result.items[0].incident_id)
    incident.severity = "P2"
    incident_id = incident.id
print(json.dumps({"incident_id": incident_id}), flush=True)
state = contain(ContainmentRequest(incident_id=incident_id), return_state=True)
print(json.dumps({"state": state.type.value, "outcome": state.result()}), flush=True)
"""


@pytest.fixture(scope="module")
def own_prefect(kube: Any, quality: Any) -> Iterator[dict[str, Any]]:
    """A Prefect server of this module's own (own home, port and SQLite), an incident store
    and a policy beside it, and the environment that points a process at all three."""
    home = Path(tempfile.mkdtemp(prefix="runbooks-restart-"))
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RUNBOOKS_"))}
    env = prefect_env(home, port, base)
    env.update(
        {
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_UI_ENABLED": "false",
            "RUNBOOKS_HOME": str(home),
            "RUNBOOKS_DATABASE_URL": f"sqlite:///{home / 'incidents.db'}",
            "RUNBOOKS_POLICY_FILE": str(home / "policy.yaml"),
            "RUNBOOKS_KUBE_HOST": kube.url,
            "RUNBOOKS_INTAKE_TOKEN": "",
        }
    )
    server = start_prefect_server(home, env, port)
    out = {"home": home, "env": env, "port": port, "api": env["PREFECT_API_URL"]}
    out["server"] = server
    try:
        yield out
    finally:
        out["server"].stop()
        import shutil

        shutil.rmtree(home, ignore_errors=True)


def test_an_approval_paused_across_a_prefect_server_restart_resumes_and_completes(
    own_prefect, kube, quality
) -> None:  # type: ignore[no-untyped-def]
    home, env, api = own_prefect["home"], own_prefect["env"], own_prefect["api"]
    name = "m-server-restart"
    core, apps = kube.clients()
    make_model(core, apps, NS, name, serving="v2")
    quality.quality[name] = {"v1": 0.90, "v2": 0.50}
    write_policy(home / "policy.yaml", kube.url, quality.url)
    policy = yaml.safe_load((home / "policy.yaml").read_text())
    policy["approval"]["timeout_seconds"] = 120
    policy["models"] = {
        name: {
            "owners": ["olivia"],
            "target": {"kind": "kubernetes", "namespace": NS, "service": name},
            "recovery": {
                "metric": "model_f1_score",
                "above": 0.7,
                "url": quality.url,
                "interval_seconds": 0.2,
                "timeout_seconds": 5,
                "consecutive": 2,
            },
        }
    }
    (home / "policy.yaml").write_text(yaml.safe_dump(policy))
    db = env["RUNBOOKS_DATABASE_URL"]

    log = (home / "runbook.log").open("wb")
    runbook = subprocess.Popen(
        [sys.executable, "-c", RUNBOOK_PROCESS, name],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        start_new_session=True,
    )
    try:
        first = runbook.stdout.readline()
        assert first, f"the runbook's process said nothing:\n{(home / 'runbook.log').read_text()}"
        incident_id = json.loads(first)["incident_id"]

        def approval() -> Approval | None:
            with session_scope(db) as s:
                return s.exec(
                    select(Approval)
                    .where(Approval.incident_id == incident_id)
                    .order_by(col(Approval.id).desc())
                ).first()

        def state() -> str | None:
            r = httpx.get(f"{api}/flow_runs/{asked.flow_run_id}", timeout=5)
            return r.json()["state"]["type"]

        asked = wait_for(approval, timeout=60, what="the approval request")
        wait_for(lambda: state() == "PAUSED", 30, what="the run paused")

        own_prefect["server"].stop()  # SIGTERM to the server's PID (its process group)
        down = time.monotonic()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{api}/health", timeout=2)
        time.sleep(3)  # the paused run's polls (every second) meet a closed port
        own_prefect["server"] = start_prefect_server(home, env, own_prefect["port"])
        print(f"Prefect server down {time.monotonic() - down:.1f} s")
        assert runbook.poll() is None, "the runbook died while the server was down"
        assert state() == "PAUSED"

        approve = subprocess.run(
            [sys.executable, "-m", "deployments.cli", "approve", str(incident_id)]
            + ["--by", "olivia", "--comment", "after the restart"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert approve.returncode == 0, approve.stderr
        out, _ = runbook.communicate(timeout=60)
    finally:
        if runbook.poll() is None:
            os.killpg(runbook.pid, 9)
            runbook.wait(5)
        log.close()
    assert json.loads(out.strip().splitlines()[-1]) == {
        "state": "COMPLETED",
        "outcome": "resolved",
    }, (home / "runbook.log").read_text()[-3000:]
    assert state() == "COMPLETED"
    assert selector(kube, name) == "v1"
    with session_scope(db) as s:
        row = s.get(Approval, asked.id)
        assert (row.status, row.decided_by, row.comment) == (
            "approved",
            "olivia",
            "after the restart",
        )
        actions = s.exec(select(Action).where(Action.incident_id == incident_id)).all()
        assert [(a.kind, a.status) for a in actions] == [("route_to_previous_version", "done")]
        assert s.get(Incident, incident_id).status == "resolved"
        lines = [
            (t.kind, t.message)
            for t in s.exec(
                select(TimelineEvent)
                .where(TimelineEvent.incident_id == incident_id)
                .order_by(col(TimelineEvent.id))
            )
        ]
    assert not any(k == "error" for k, _ in lines), lines
    said = [m for _, m in lines]
    asked_at = next(i for i, m in enumerate(said) if m.startswith("waiting for approval"))
    approved_at = said.index("route_to_previous_version approved by olivia: after the restart")
    acted_at = next(i for i, m in enumerate(said) if m.startswith(f"service/{name} in {NS} now"))
    recovered_at = next(i for i, m in enumerate(said) if m.startswith("recovered:"))
    assert asked_at < approved_at < acted_at < recovered_at, lines
