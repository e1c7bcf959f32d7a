"""The production path: `prefect deploy --all` into a process work pool, a worker runs
the flows. On a Prefect server of this module's own: `prefect deploy` would take over the
session's served deployments (same names) and break the other tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deployments.local import ManagedProcess, free_port, prefect_env, start_prefect_server
from deployments.serve import load_deployment_specs, runner_deployments
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
POOL = "ml-runbooks"  # the pool prefect.yaml names
PREFECT = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"


def prefect_cli(args: list[str], env: dict[str, str], timeout: float = 90) -> str:
    done = subprocess.run(
        [PREFECT, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def pool_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A fresh Prefect server, `runbooks serve-intake` on it, the pool, `prefect deploy
    --all`, and a process worker whose environment says where the code is."""
    home = tmp_path_factory.mktemp("work-pool")
    port, intake_port = free_port(), free_port()
    # Nothing of the session's server or store: its PREFECT_* and RUNBOOKS_* stay out.
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RUNBOOKS_"))}
    env = prefect_env(home, port, base)
    env.update(
        {
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "RUNBOOKS_HOME": str(home),
            "RUNBOOKS_DATABASE_URL": f"sqlite:///{home / 'incidents.db'}",
            "RUNBOOKS_POLICY_FILE": str(ROOT / "runbooks" / "default_policy.yaml"),
        }
    )
    # Schedules are created by `prefect deploy` and checked below, but their runs (the
    # escalation sweep every minute) would only compete with the one run this test awaits.
    server_env = {**env, "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false"}
    procs: list[ManagedProcess] = []
    try:
        procs.append(start_prefect_server(home, server_env, port))
        intake = ManagedProcess(
            "runbooks serve-intake",
            [sys.executable, "-m", "deployments.cli", "serve-intake", "--port", str(intake_port)],
            env,
            home / "intake.log",
            cwd=ROOT,
        )
        procs.append(intake)
        prefect_cli(["work-pool", "create", POOL, "--type", "process"], env)
        # The worker starts while the deployments are made: it polls the pool, which exists.
        worker = ManagedProcess(
            "prefect worker",
            [PREFECT, "worker", "start", "--pool", POOL, "--type", "process"],
            {**env, "RUNBOOKS_WORKDIR": str(ROOT)},
            home / "worker.log",
            cwd=home,  # not the checkout: the pull step has to find the code
        )
        procs.append(worker)
        # Deployed with RUNBOOKS_WORKDIR unset: `prefect deploy` would bake the deployer's
        # value into the pull step, and each worker's environment is to decide.
        prefect_cli(["deploy", "--all", "--no-prompt"], env, timeout=120)
        intake.wait_http(f"http://127.0.0.1:{intake_port}/healthz", 60)
        yield {
            "api": env["PREFECT_API_URL"],
            "intake": f"http://127.0.0.1:{intake_port}",
            "worker": worker,
        }
    finally:
        for proc in reversed(procs):
            proc.stop()


def deployments_by_name(api: str) -> dict[str, dict]:
    r = httpx.post(f"{api}/deployments/filter", json={"limit": 50}, timeout=10)
    r.raise_for_status()
    return {d["name"]: d for d in r.json()}


def test_deploy_all_puts_every_deployment_in_the_pool_with_the_env_var_pull_step(
    pool_stack: dict,
) -> None:
    deployed = deployments_by_name(pool_stack["api"])
    specs = load_deployment_specs()
    assert set(deployed) == {s["name"] for s in specs}
    for spec in specs:
        d = deployed[spec["name"]]
        assert d["work_pool_name"] == POOL, spec["name"]
        assert d["entrypoint"] == spec["entrypoint"]
        # Left for the worker's environment to fill in, not resolved where it was deployed.
        assert d["pull_steps"] == [
            {
                "prefect.deployments.steps.set_working_directory": {
                    "directory": "{{ $RUNBOOKS_WORKDIR }}"
                }
            }
        ]
        declared = [c.get("interval") or c.get("cron") for c in spec.get("schedules") or []]
        got = [s["schedule"].get("interval") or s["schedule"].get("cron") for s in d["schedules"]]
        assert got == declared, spec["name"]


def comparable(trigger: dict) -> dict:
    """A trigger without its random id, its sets (expect, after) in one order."""
    return {
        k: sorted(v) if k in ("expect", "after") else v for k, v in trigger.items() if k != "id"
    }


def test_deploy_all_creates_the_same_automations_as_runbooks_serve(pool_stack: dict) -> None:
    """Both paths name each trigger's automation `<deployment>__automation_<n>` and build
    it with the same `as_automation()`: one automation per trigger, owned by its deployment."""
    api = pool_stack["api"]
    ids = {name: d["id"] for name, d in deployments_by_name(api).items()}
    r = httpx.post(f"{api}/automations/filter", json={}, timeout=10)
    r.raise_for_status()
    created = {a["name"]: a for a in r.json()}
    expected = {}
    for d in runner_deployments():
        for trigger in d.triggers:
            trigger.set_deployment_id(ids[d.name])
            expected[trigger.name] = trigger.as_automation().model_dump(mode="json")
    assert set(created) == set(expected)
    for name, want in expected.items():
        got = created[name]
        for key in ("enabled", "actions", "actions_on_trigger", "actions_on_resolve"):
            assert got[key] == want[key], (name, key)
        want_trigger = comparable(want["trigger"])
        assert comparable({k: got["trigger"][k] for k in want_trigger}) == want_trigger, name


def test_an_alert_is_triaged_by_a_flow_run_the_process_worker_started(pool_stack: dict) -> None:
    api, intake = pool_stack["api"], pool_stack["intake"]
    alert = {
        "model": "churn",
        "alertname": "ModelLatencyHigh",
        "metric": "latency_p99_seconds",
        "value": 1.8,
        "severity": "low",
    }
    r = httpx.post(f"{intake}/api/v1/alerts", json=alert, timeout=10)
    assert r.status_code == 202, r.text
    incident_id = r.json()["incidents"][0]

    def triaged() -> dict | None:
        view = httpx.get(f"{intake}/api/v1/incidents/{incident_id}", timeout=5).json()
        lines = [e for e in view["timeline"] if (e["actor"], e["kind"]) == ("triage", "decision")]
        return view if lines else None

    try:
        view = wait_for(triaged, timeout=45, what="the triage decision on the timeline")
    except AssertionError as err:
        raise AssertionError(f"{err}\nworker log:\n{pool_stack['worker'].tail(40)}") from None
    assert view["strategy"] == "gradual_scaling"

    def completed_run() -> dict | None:
        runs = httpx.post(
            f"{api}/flow_runs/filter",
            json={"deployments": {"name": {"any_": ["triage"]}}},
            timeout=5,
        ).json()
        return runs[0] if runs and runs[0]["state_type"] in ("COMPLETED", "FAILED") else None

    run = wait_for(completed_run, timeout=20, what="the triage flow run finished")
    assert run["state_type"] == "COMPLETED", run["state"]
    assert run["work_pool_name"] == POOL
    # The worker starts each run as a process of its own and records its id.
    assert run["infrastructure_pid"]
    assert run["parameters"]["request"]["incident_id"] == incident_id
