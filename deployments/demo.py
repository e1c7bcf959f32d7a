"""`runbooks demo`: one whole incident, on this machine, from a bad release to resolution.

A sandbox model platform serves fraud-v3; v2, a bad release, is deployed; its F1 falls
under the policy's P1 threshold; the monitor posts the alert to the intake; the Prefect
automation starts triage, which contains (rolls back to v1), verifies and resolves.
Everything runs locally (Prefect server on SQLite, incident store on SQLite) and stops.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from deployments.local import free_port, prefect_env, start_prefect_server, start_runbooks_serve
from deployments.report import format_incident
from sandbox.platform import SandboxPlatform

MODEL = "fraud-v3"
F1_THRESHOLD = 0.70


def say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def demo_policy(platform_url: str) -> dict:
    policy = yaml.safe_load(
        Path(__file__)
        .resolve()
        .parent.parent.joinpath("runbooks", "default_policy.yaml")
        .read_text()
    )
    policy["models"] = {
        MODEL: {
            "owners": ["fraud-ml-oncall"],
            "team": "fraud-ml",
            "target": {"kind": "platform", "url": platform_url},
            "recovery": {
                "metric": "model_f1_score",
                "above": F1_THRESHOLD,
                "url": f"{platform_url}/metrics",
                "interval_seconds": 0.5,
                "timeout_seconds": 60,
            },
        }
    }
    return policy


def serving_f1(platform_url: str) -> tuple[str, float]:
    status = httpx.get(f"{platform_url}/api/v1/ml/models/{MODEL}/status", timeout=5).json()
    return status["currentVersion"], status["metrics"]["f1_score"]


def run_demo(keep: bool = False) -> int:
    home = Path(tempfile.mkdtemp(prefix="runbooks-demo-"))
    prefect_port, intake_port = free_port(), free_port()
    env = prefect_env(home, prefect_port)
    env.update(
        {
            "RUNBOOKS_HOME": str(home),
            "RUNBOOKS_POLICY_FILE": str(home / "policy.yaml"),
            "RUNBOOKS_DATABASE_URL": f"sqlite:///{home / 'incidents.db'}",
            # The scheduled monitoring sweep has nothing to read in the demo: the monitor
            # below watches the sandbox's metrics instead.
            "RUNBOOKS_SWEEP_SOURCE": str(home / "sweep"),
        }
    )
    (home / "sweep").mkdir()
    env.pop("RUNBOOKS_INTAKE_TOKEN", None)
    intake = f"http://127.0.0.1:{intake_port}"
    started = time.monotonic()
    server = serve = None
    platform = SandboxPlatform(models=[MODEL], serve="v1")
    try:
        say(f"working in {home}")
        platform_url = platform.start()
        say(
            f"sandbox model platform at {platform_url}: {MODEL} serves v1, "
            f"F1 {serving_f1(platform_url)[1]:.2f}"
        )
        (home / "policy.yaml").write_text(yaml.safe_dump(demo_policy(platform_url)))
        say("starting a local Prefect server (SQLite)")
        server = start_prefect_server(home, env, prefect_port)
        say(f"Prefect UI at http://127.0.0.1:{prefect_port}; starting `runbooks serve`")
        serve = start_runbooks_serve(home, env, intake_port)
        say(f"intake at {intake}; deployments and their automation registered")

        httpx.post(
            f"{platform_url}/api/v1/ml/models/{MODEL}/deploy", json={"version": "v2"}, timeout=5
        ).raise_for_status()
        say("deployed v2 of fraud-v3 (a release with a broken feature join)")
        incident_id = watch_and_alert(platform_url, intake)
        view = wait_resolved(intake, incident_id, timeout=90)
        print()
        print(format_incident(view))
        print()
        print_flow_runs(env["PREFECT_API_URL"], prefect_port)
        ok = view["status"] == "resolved"
        version, f1 = serving_f1(platform_url)
        say(
            f"{MODEL} now serves {version}, F1 {f1:.2f}; incident {view['status']} "
            f"in {time.monotonic() - started:.0f} s"
        )
        return 0 if ok else 1
    except Exception as exc:  # noqa: BLE001  the demo reports, then cleans up
        say(f"FAILED: {type(exc).__name__}: {exc}")
        if serve is not None:
            print(serve.tail(40), file=sys.stderr)
        return 1
    finally:
        for proc in (serve, server):
            if proc is not None:
                proc.stop()
        platform.stop()
        if not keep:
            shutil.rmtree(home, ignore_errors=True)
        say("stopped the Prefect server, the runbooks service and the sandbox")


def watch_and_alert(platform_url: str, intake: str, timeout: float = 30) -> int:
    """The monitor: when the serving version's F1 crosses the threshold, post the alert."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        version, f1 = serving_f1(platform_url)
        if version == "v2" and f1 < F1_THRESHOLD:
            say(f"monitor: F1 of {MODEL} {version} is {f1:.2f} < {F1_THRESHOLD}: posting alert")
            r = httpx.post(
                f"{intake}/api/v1/alerts",
                json={
                    "model": MODEL,
                    "alertname": "ModelF1Low",
                    "metric": "f1_score",
                    "value": round(f1, 4),
                    "baseline": 0.88,
                    "severity": "critical",
                    "labels": {"version": version},
                    "annotations": {"summary": f"F1 of {MODEL} dropped to {f1:.2f}"},
                },
                timeout=10,
            )
            r.raise_for_status()
            incident_id = r.json()["incidents"][0]
            say(f"intake accepted it: incident {incident_id} opened")
            return incident_id
        time.sleep(0.25)
    raise RuntimeError(f"F1 of {MODEL} never fell below {F1_THRESHOLD} in {timeout:.0f} s")


def wait_resolved(intake: str, incident_id: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    seen = 0
    view: dict = {}
    while time.monotonic() < deadline:
        view = httpx.get(f"{intake}/api/v1/incidents/{incident_id}", timeout=5).json()
        for e in view["timeline"][seen:]:
            say(f"  {e['actor']}: {e['message']}")
        seen = len(view["timeline"])
        if view["status"] in ("resolved", "closed"):
            return view
        time.sleep(0.3)
    raise RuntimeError(f"incident {incident_id} still {view.get('status')} after {timeout:.0f} s")


FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def print_flow_runs(api: str, port: int, timeout: float = 15) -> None:
    # The incident resolves inside the last task; the runs report Completed a beat later.
    deadline = time.monotonic() + timeout
    while True:
        runs = httpx.post(
            f"{api}/flow_runs/filter",
            json={
                "sort": "START_TIME_ASC",
                "limit": 20,
                "flows": {"name": {"any_": ["triage", "containment"]}},
            },
            timeout=5,
        ).json()
        if time.monotonic() > deadline or all(r["state"]["type"] in FINAL for r in runs):
            break
        time.sleep(0.2)
    print("flow runs in the Prefect UI:")
    for r in runs:
        print(
            f"  {r['name']:<24} {r['state_name']:<10} http://127.0.0.1:{port}/runs/flow-run/{r['id']}"
        )
