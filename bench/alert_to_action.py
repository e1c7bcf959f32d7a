"""Alert POST -> containment call issued, through the real automation path.

Starts a Prefect server, `runbooks serve` and a sandbox platform with N models serving a bad
v2; posts one P1 alert per model, one at a time (each once no flow run of the last one is
still running), and reads when the rollback action was recorded as started (just before
the platform call). Prints p50 and p99, and where the time goes (intake -> event delivered
-> flow run created -> run started -> action).

    ./run bench alert_to_action [N] [--prefect-postgres] [--tasks] [--compare] [--slack]

--compare runs the N alerts twice in the same run: with `runbooks serve`'s defaults (the
runs of deployments tagged in-process on threads of serve, handed to the runner when Prefect
schedules them; the others forked from a warm process) and with `--no-preload
--poll-seconds 1` (a fresh interpreter per run, found by a poll every second: Prefect's own
way), and prints the ratio.

--slack points the served flows at a fake Slack Web API on a real port in this process
(tests/fake_slack.py: chat.postMessage answered as Slack does) and also prints alert POST ->
the incident's first Slack message (triage's "opened", sent beside enrichment once the
decision is stored) p50 and p99.

--prefect-postgres runs the Prefect server on the local PostgreSQL (a fresh database) instead
of SQLite: under concurrent writes Prefect-on-SQLite answers some API calls with 503
("database is locked") and its client backs off 2 s, which shows up in the p99.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deployments.local import (  # noqa: E402
    create_prefect_database,
    drop_prefect_database,
    free_port,
    machine,
    prefect_env,
    start_prefect_server,
    start_runbooks_serve,
)
from runbooks.store import session_scope  # noqa: E402
from sandbox.platform import SandboxPlatform  # noqa: E402
from tests.fake_slack import FakeSlack  # noqa: E402


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def main(n: int = 20) -> None:
    if "--compare" not in sys.argv:
        report(measure(n, []), n)
        return
    warm = measure(n, [])
    report(warm, n, "runbooks serve defaults")
    cold = measure(n, REFERENCE)
    report(cold, n, " ".join(REFERENCE))
    p50 = pct([r["latency"] for r in cold], 0.5) / pct([r["latency"] for r in warm], 0.5)
    print(f"  p50 with {' '.join(REFERENCE)} / p50 with the defaults: {p50:.2f}x")


REFERENCE = ["--no-preload", "--poll-seconds", "1"]
DURATIONS = ("whole", "work", "recovery_wait", "overhead")


def measure(n: int, serve_args: list[str]) -> list[dict]:
    home = Path(tempfile.mkdtemp(prefix="runbooks-bench-"))
    models = [f"bench-{i}" for i in range(n)]
    platform = SandboxPlatform(models=models, serve="v2", batch_size=50, window=500)
    url = platform.start()
    policy = yaml.safe_load(
        (Path(__file__).resolve().parent.parent / "runbooks" / "default_policy.yaml").read_text()
    )
    policy["defaults"] = {
        "target": {"kind": "platform", "url": url},
        "recovery": {
            "url": f"{url}/metrics",
            "above": 0.7,
            "interval_seconds": 0.5,
            "consecutive": 1,
        },
    }
    (home / "policy.yaml").write_text(yaml.safe_dump(policy))
    pport, iport = free_port(), free_port()
    db = f"sqlite:///{home / 'incidents.db'}"
    env = prefect_env(home, pport)
    pg_db = None
    if "--prefect-postgres" in sys.argv:
        pg_db = f"prefect_bench_{pport}"
        create_prefect_database(env, pg_db)
    env.update(
        {
            "RUNBOOKS_HOME": str(home),
            "RUNBOOKS_POLICY_FILE": str(home / "policy.yaml"),
            "RUNBOOKS_DATABASE_URL": db,
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
    )
    slack = None
    if "--slack" in sys.argv:
        slack = FakeSlack().start()
        env.update(
            {"RUNBOOKS_SLACK_TOKEN": "xoxb-bench", "RUNBOOKS_SLACK_BASE_URL": slack.base_url}
        )
    server = start_prefect_server(home, env, pport)
    serve = start_runbooks_serve(home, env, iport, extra_args=serve_args)
    intake, api = f"http://127.0.0.1:{iport}", env["PREFECT_API_URL"]
    rows = []
    try:
        for model in models:
            wait_until_quiet(api)
            t0, m0 = time.time(), time.monotonic()
            r = httpx.post(
                f"{intake}/api/v1/alerts",
                json={
                    "model": model,
                    "alertname": "ModelF1Low",
                    "metric": "f1_score",
                    "value": 0.5,
                },
                timeout=10,
            )
            r.raise_for_status()
            incident_id = r.json()["incidents"][0]
            deadline = time.monotonic() + 60
            view: dict = {}
            while time.monotonic() < deadline:
                view = httpx.get(f"{intake}/api/v1/incidents/{incident_id}").json()
                if view["status"] in ("resolved", "closed"):
                    break
                time.sleep(0.1)
            if not view.get("actions"):
                raise RuntimeError(f"no action for {model}: {view.get('timeline')}")
            action_at = ts(view["actions"][0]["started_at"])
            row = {"latency": action_at - t0, **breakdown(db, api, incident_id, t0)}
            if slack is not None:
                row["slack"] = first_slack_message(slack, incident_id, m0)
            rows.append({**row, **whole_runbook(view, api, row, t0)})
        if "--tasks" in sys.argv:
            print_task_runs(api, t0)
    finally:
        serve.stop()
        server.stop()
        platform.stop()
        if slack is not None:
            slack.stop()
        shutil.rmtree(home, ignore_errors=True)
        if pg_db:
            drop_prefect_database(pg_db)
    return rows


def wait_until_quiet(api: str, timeout: float = 60, quiet_for: float = 1.5) -> None:
    """Until no flow run has been due, starting or running for `quiet_for` seconds: one
    alert at a time means the last one's whole tail (its announcement and post-mortem,
    started by events a moment after it resolved) has ended before the next POST, so each
    figure is the alert's own, not a share of the 2 cores with the last one's."""
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        due = {
            "state": {"type": {"any_": ["SCHEDULED", "PENDING", "RUNNING"]}},
            "expected_start_time": {"before_": datetime.now(UTC).isoformat()},
        }
        runs = httpx.post(
            f"{api}/flow_runs/filter", json={"flow_runs": due, "limit": 1}, timeout=10
        ).json()
        if runs:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_for:
            return
        time.sleep(0.2)
    raise RuntimeError(f"flow runs still running after {timeout:g} s: {runs}")


def report(rows: list[dict], n: int, label: str = "") -> None:
    lat = [r["latency"] for r in rows]
    where = "PostgreSQL" if "--prefect-postgres" in sys.argv else "SQLite"
    print(
        f"alert POST -> containment call issued, {len(lat)} alerts, one at a time, "
        f"Prefect server on {where}{', ' + label if label else ''} ({machine()}):"
    )
    print(
        f"  p50 {pct(lat, 0.5):.2f} s   p99 {pct(lat, 0.99):.2f} s   "
        f"min {min(lat):.2f} s   max {max(lat):.2f} s"
    )
    slack = [r["slack"] for r in rows if r.get("slack") is not None]
    if slack:
        print(
            f"  alert POST -> first Slack message: p50 {pct(slack, 0.5):.2f} s   "
            f"p99 {pct(slack, 0.99):.2f} s   max {max(slack):.2f} s ({len(slack)} incidents)"
        )
    keys = ["event_delivered", "run_created", "run_pending", "run_running"]
    keys += ["runbook_created", "runbook_pending", "runbook_running", "action"]
    keys += ["whole", "work", "recovery_wait", "overhead"]
    for key in keys:
        vals = [r[key] for r in rows if r.get(key) is not None]
        if vals:
            when = " after the POST" if key not in DURATIONS else ""
            print(f"  {key:<16} median {statistics.median(vals):.2f} s{when}")


def whole_runbook(view: dict, api: str, row: dict, t0: float) -> dict:
    """The alert's whole runbook (POST -> resolved) split into the work, the wait for the
    model's metric to recover, and the orchestration around them.

    work: the time inside the triage and containment runs' task runs; recovery wait: from
    the rollback call's end to the "recovered" reading (the model's own time, polled);
    overhead: the rest (event hops, polls, run starts, state changes between tasks).
    """
    resolved = next((ts(e["at"]) for e in view["timeline"] if "-> resolved" in e["message"]), None)
    recovered = next(
        (ts(e["at"]) for e in view["timeline"] if e["message"].startswith("recovered")), None
    )
    ids = [row[k] for k in ("run_id", "runbook_id") if row.get(k)]
    acted = view["actions"][0].get("finished_at")
    if resolved is None or recovered is None or not acted or len(ids) < 2:
        return {}
    tasks = httpx.post(
        f"{api}/task_runs/filter",
        json={"flow_runs": {"id": {"any_": ids}}, "limit": 200},
        timeout=10,
    ).json()
    acted_at = ts(acted)
    work = 0.0
    for t in tasks:
        if not (t.get("start_time") and t.get("end_time")):
            continue
        start, end = ts(t["start_time"]), ts(t["end_time"])
        if start >= acted_at and end <= recovered:
            continue  # the verification's readings: inside the recovery wait
        work += end - start
    wait = recovered - acted_at
    whole = resolved - t0
    return {"whole": whole, "work": work, "recovery_wait": wait, "overhead": whole - work - wait}


def first_slack_message(slack: FakeSlack, incident_id: int, m0: float) -> float:
    """Seconds from the POST to the first chat.postMessage naming the incident."""
    deadline = time.monotonic() + 30
    needle = f"incident {incident_id}:"
    while time.monotonic() < deadline:
        for call in slack.posts():
            if call.at >= m0 and needle in str(call.body.get("text") or ""):
                return call.at - m0
        time.sleep(0.05)
    raise RuntimeError(f"no Slack message about incident {incident_id} in 30 s")


def print_task_runs(api: str, t0: float) -> None:
    """Where the last alert's time went inside the flows, task by task."""
    runs = httpx.post(f"{api}/task_runs/filter", json={"limit": 200}).json()
    flows = httpx.post(f"{api}/flow_runs/filter", json={"limit": 200}).json()
    rows = [(r.get("start_time"), r.get("end_time"), "task", r["name"]) for r in runs]
    rows += [(r.get("start_time"), r.get("end_time"), "flow", r["name"]) for r in flows]
    rows += [(r.get("created"), None, "created", r["name"]) for r in flows]
    for start, end, kind, name in sorted(r for r in rows if r[0] and ts(r[0]) >= t0):
        took = f"{ts(end) - ts(start):.2f}" if end else "-"
        print(f"  +{ts(start) - t0:6.2f} s  {kind:<8} {name:<40} {took}")


def breakdown(db: str, api: str, incident_id: int, t0: float) -> dict:
    from sqlmodel import select

    from runbooks.models import Action, OutboxEvent

    out: dict = {}
    with session_scope(db) as s:
        ev = s.exec(
            select(OutboxEvent)
            .where(OutboxEvent.event == "ml.incident.opened")
            .order_by(OutboxEvent.occurred.desc())
        ).first()  # type: ignore[union-attr]
        if ev and ev.delivered_at:
            out["event_delivered"] = ev.delivered_at.timestamp() - t0
        act = s.exec(select(Action).where(Action.incident_id == incident_id)).first()
        if act:
            out["action"] = act.started_at.timestamp() - t0
    for flow, prefix in (("triage", "run"), ("containment", "runbook")):
        runs = httpx.post(
            f"{api}/flow_runs/filter",
            json={
                "sort": "EXPECTED_START_TIME_DESC",
                "limit": 1,
                "flow_runs": {"parent_task_run_id": {"is_null_": True}},
                "flows": {"name": {"any_": [flow]}},
            },
        ).json()
        if not runs:
            continue
        out[f"{prefix}_id"] = runs[0]["id"]
        out[f"{prefix}_created"] = ts(runs[0]["created"]) - t0
        # Pending: the runner took the run and is starting its process; Running: the
        # flow's own engine began in that process.
        states = httpx.get(f"{api}/flow_run_states/", params={"flow_run_id": runs[0]["id"]}).json()
        for state in states:
            if state["type"] in ("PENDING", "RUNNING"):
                out[f"{prefix}_{state['type'].lower()}"] = ts(state["timestamp"]) - t0
    return out


if __name__ == "__main__":
    numbers = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(int(numbers[0]) if numbers else 20)
