"""Runs of deployments tagged `in-process` in prefect.yaml start on a thread of the session's
`runbooks serve` (deployments/in_process.py). What a user of the Prefect UI expects of
them still holds: Cancel stops the run, the serve process goes on serving, the runbook
does not act afterwards, and what it held (the model's lock, the approval) is put right.
"""

from __future__ import annotations

import httpx
import pytest
import yaml
from prefect import get_client
from prefect.states import Cancelling

from deployments.in_process import IN_PROCESS_TAG
from deployments.serve import PREFECT_YAML
from runbooks.models import Incident, RemediationLock
from runbooks.settings import get_settings
from runbooks.store import session_scope
from tests.conftest import make_model
from tests.helpers import wait_for
from tests.test_containment import actions_of, open_incident, timeline_of
from tests.test_runbook_outcomes import approval_row, flow_run_state, pending_approval

pytestmark = pytest.mark.slow
NS = "ml-prod"
MODEL = "cancel-me"  # in the session's policy (tests/conftest.py), for this test alone


def test_the_alert_path_is_tagged_in_process() -> None:
    specs = yaml.safe_load(PREFECT_YAML.read_text())["deployments"]
    tagged = {s["name"] for s in specs if IN_PROCESS_TAG in (s.get("tags") or [])}
    assert {"triage", "containment", "announce"} <= tagged
    # The audits load data and run checks for minutes: their own processes.
    assert not tagged & {"monitoring-sweep", "weekly-review", "fairness-audit", "model-audit"}


def test_cancelling_a_served_run_waiting_for_approval_stops_it_and_serve_goes_on(
    stack: dict, kube
) -> None:  # type: ignore[no-untyped-def]
    core, apps = kube.clients()
    make_model(core, apps, NS, MODEL, serving="v2")
    incident_id = open_incident(MODEL, severity="P2")  # P2: the session's policy asks
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("containment/containment")
        run = client.create_flow_run_from_deployment(
            deployment.id, parameters={"request": {"incident_id": incident_id}}
        )
        asked = pending_approval(incident_id)
        assert asked.flow_run_id == str(run.id)
        wait_for(lambda: flow_run_state(asked.flow_run_id, stack) == "PAUSED", 30, what="pause")

        client.set_flow_run_state(run.id, Cancelling(message="the test cancels"), force=True)
        wait_for(
            lambda: flow_run_state(asked.flow_run_id, stack) == "CANCELLED",
            30,
            what="the served run cancelled",
        )

    assert stack["serve"].proc.poll() is None, "runbooks serve exited"
    assert httpx.get(f"{stack['intake']}/healthz", timeout=5).status_code == 200
    # The stopped runbook did not act, and what it held is put right: the approval is
    # cancelled, the model's lock free, and a person has the incident.
    assert actions_of(incident_id) == []
    assert core.read_namespaced_service(MODEL, NS).spec.selector["version"] == "v2"
    wait_for(lambda: approval_row(incident_id).status == "cancelled", 30, what="approval cancelled")
    with session_scope(get_settings().resolved_database_url()) as s:
        assert s.get(RemediationLock, MODEL) is None
        why = s.get(Incident, incident_id).needs_human or ""
        assert f"flow run {run.id} cancelled: the test cancels" in why
    assert not any("approved by" in m for m in timeline_of(incident_id))
