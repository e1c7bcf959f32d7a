"""Alert storm: 10,000 alerts over 20 models, as fast as 4 client connections allow.

Runs a Prefect server and `runbooks serve` (intake, automation, served triage) on the
incident store under test, posts the storm as Alertmanager webhooks (grouped posts of
--per-post alerts, as Alertmanager batches a group; 1 = one alert per post), then waits
for the outbox to deliver and the automation to start the runbooks, and prints:
accepted alerts/s, alerts lost (must be 0), incidents opened (must equal the distinct
groups), runbook runs started (must equal incidents).

    ./run bench alert_storm [--alerts 10000] [--per-post 50] [--store sqlite|postgresql]
                            [--prefect-postgres] [--intake-only] [--keep]

--intake-only runs `runbooks serve-intake` alone (no Prefect server, no runbooks executing
beside it on the machine's two cores): the intake's own rate. Its events wait in the
outbox, and the figure printed for them is the events staged (one per incident).

--replicas N (with --store postgresql) runs N `runbooks serve-intake` processes on the one
database, posts round-robin to them, and has their outboxes deliver to a stand-in for
Prefect's events API that counts what it gets: it prints alerts lost (acknowledged and not
stored: must be 0), incidents per group (must be 1) and ml.incident.opened events per
incident (must be 1).

    ./run bench alert_storm --store postgresql --replicas 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deployments.local import (  # noqa: E402
    PG_ADMIN,
    ManagedProcess,
    create_prefect_database,
    drop_prefect_database,
    free_port,
    machine,
    prefect_env,
    start_prefect_server,
    start_runbooks_serve,
)
from runbooks.store import get_engine  # noqa: E402

MODELS = 20
# Three metrics -> three incident types per model: 60 groups under the default policy.
METRICS = [("f1_score", "0.55", "ModelF1Low"), ("psi", "0.45", "FeatureDrift"),
           ("latency_p99_seconds", "3.2", "ModelLatencyHigh")]  # fmt: skip


def alert(i: int, starts: str) -> dict:
    metric, value, name = METRICS[(i // MODELS) % len(METRICS)]
    return {
        "status": "firing",
        "labels": {
            "alertname": name,
            "model": f"storm-{i % MODELS}",
            "metric": metric,
            "instance": f"pod-{i}",
        },
        "annotations": {"value": value},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z",
    }


def webhook(alerts: list[dict]) -> dict:
    return {
        "version": "4",
        "groupKey": "{}:{storm}",
        "status": "firing",
        "receiver": "runbooks",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "truncatedAlerts": 0,
        "alerts": alerts,
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def storm(intakes: list[str], n: int, per_post: int) -> tuple[float, int, int]:
    """Post the storm over 4 connections, post j to intake j mod len(intakes)."""
    starts = datetime.now(UTC).isoformat()
    posts = [
        (j, webhook([alert(i, starts) for i in range(k, min(n, k + per_post))]))
        for j, k in enumerate(range(0, n, per_post))
    ]

    def send(chunk: list[tuple[int, dict]]) -> tuple[int, int]:
        ok = failed = 0
        clients = [httpx.Client(base_url=url, timeout=60) for url in intakes]
        try:
            for j, body in chunk:
                r = clients[j % len(clients)].post("/api/v1/alerts/alertmanager", json=body)
                if r.status_code == 202:
                    ok += r.json()["accepted"]
                else:
                    failed += len(body["alerts"])
        finally:
            for c in clients:
                c.close()
        return ok, failed

    chunks = [posts[k::4] for k in range(4)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(send, chunks))
    return time.perf_counter() - t0, sum(r[0] for r in results), sum(r[1] for r in results)


def triage_runs(api: str) -> int:
    deps = httpx.post(f"{api}/deployments/filter", json={}, timeout=60).json()
    ids = [d["id"] for d in deps if d["name"] == "triage"]
    body = {"flow_runs": {"deployment_id": {"any_": ids}}}
    return httpx.post(f"{api}/flow_runs/count", json=body, timeout=60).json()


def incidents_with_runs(api: str) -> set[int]:
    deps = httpx.post(f"{api}/deployments/filter", json={}, timeout=60).json()
    ids = [d["id"] for d in deps if d["name"] == "triage"]
    seen: set[int] = set()
    offset = 0
    while True:
        body = {"flow_runs": {"deployment_id": {"any_": ids}}, "limit": 200, "offset": offset}
        runs = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=60).json()
        seen.update(int(r["parameters"]["request"]["incident_id"]) for r in runs)
        if len(runs) < 200:
            return seen
        offset += 200


def prefect_events(api: str, name: str) -> int:
    body = {"filter": {"event": {"name": [name]}}, "limit": 50}
    r = httpx.post(f"{api}/events/filter", json=body, timeout=60)
    if r.status_code != 200:
        return -1
    page = r.json()
    return page.get("total", len(page.get("events", [])))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alerts", type=int, default=10_000)
    ap.add_argument("--per-post", type=int, default=50)
    ap.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--keep", action="store_true", help="keep the logs (prints where)")
    ap.add_argument(
        "--prefect-postgres", action="store_true", help="run the Prefect server on PostgreSQL"
    )
    ap.add_argument("--intake-only", action="store_true", help="the intake alone, no Prefect")
    ap.add_argument(
        "--replicas",
        type=int,
        default=0,
        help="N intakes on one PostgreSQL, delivering to a counting stand-in for Prefect",
    )
    args = ap.parse_args()
    if args.replicas and args.store != "postgresql":
        ap.error("--replicas needs --store postgresql: SQLite takes one intake process per file")

    home = Path(tempfile.mkdtemp(prefix="runbooks-storm-"))
    schema = None
    if args.store == "postgresql":
        schema = f"storm_{uuid.uuid4().hex[:8]}"
        with sa.create_engine(PG_ADMIN).begin() as c:
            c.execute(sa.text(f"CREATE SCHEMA {schema}"))
        db = f"{PG_ADMIN}?options=-csearch_path%3D{schema}"
    else:
        db = f"sqlite:///{home / 'incidents.db'}"
    pport, iport = free_port(), free_port()
    env = prefect_env(home, pport)
    prefect_db = None
    if args.prefect_postgres:
        prefect_db = f"prefect_storm_{pport}"
        create_prefect_database(env, prefect_db)
    env.update(
        {
            "RUNBOOKS_HOME": str(home),
            "RUNBOOKS_DATABASE_URL": db,
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "RUNBOOKS_RUNBOOK_START_SECONDS": "30",
        }
    )
    if args.intake_only or args.replicas:
        try:
            (replicas if args.replicas else intake_only)(home, env, iport, db, args)
        finally:
            if schema:
                with sa.create_engine(PG_ADMIN).begin() as c:
                    c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        return
    server = start_prefect_server(home, env, pport)
    # Few runs at once: the bench counts runs started, it does not need 60 processes.
    serve = start_runbooks_serve(home, env, iport, extra_args=["--limit", "2"])
    intake, api = f"http://127.0.0.1:{iport}", env["PREFECT_API_URL"]
    try:
        cpu0 = cpu_seconds(serve.pid)
        seconds, accepted, failed = storm([intake], args.alerts, args.per_post)
        cpu = cpu_seconds(serve.pid) - cpu0
        engine = get_engine(db)
        with engine.connect() as c:
            stored = c.execute(sa.text("select count(*) from alert")).scalar_one()
            incidents = c.execute(sa.text("select count(*) from incident")).scalar_one()
        groups = MODELS * len(METRICS)
        # A runbook counts as started when Prefect holds a triage run for its incident
        # (it may still wait for a free slot: the bench serves 2 at a time). An event that
        # Prefect dropped is re-sent by the watchdog after RUNBOOKS_RUNBOOK_START_SECONDS.
        deadline = time.monotonic() + 240
        started: set[int] = set()
        while time.monotonic() < deadline:
            try:
                started = incidents_with_runs(api)
            except httpx.HTTPError as err:  # a busy Prefect server: ask again
                print(f"  (Prefect API: {type(err).__name__}; asking again)")
            if len(started) >= incidents:
                break
            time.sleep(2)
        time.sleep(5)  # a duplicate run would show up now
        started = incidents_with_runs(api)
        runs = triage_runs(api)
        with engine.connect() as c:
            claimed = c.execute(
                sa.text("select count(*) from incident where triage_run is not null")
            ).scalar_one()
        with engine.connect() as c:
            opened = c.execute(
                sa.text(
                    "select count(*), count(delivered_at) from outboxevent "
                    "where event = 'ml.incident.opened'"
                )
            ).one()
        triggered = prefect_events(api, "prefect.automation.action.triggered")
        where = "PostgreSQL" if prefect_db else "SQLite"
        print(
            f"store {args.store}, Prefect on {where}, {args.alerts} alerts in posts of "
            f"{args.per_post}, 4 connections, on {machine()}:"
        )
        print(f"  accepted {accepted} in {seconds:.2f} s = {accepted / seconds:,.0f} alerts/s")
        print(f"  CPU of the runbooks serve process meanwhile {cpu:.2f} s")
        print(f"  lost {args.alerts - stored} (stored {stored}, refused {failed})")
        print(f"  incidents opened {incidents} (distinct groups {groups})")
        print(
            f"  runbook runs started {len(started)} (incidents {incidents}); triage flow "
            f"runs {runs}; triaged by the end {claimed}"
        )
        print(
            f"  ml.incident.opened events sent {opened[0]}, delivered {opened[1]}, "
            f"{opened[0] - incidents} of them re-sent by the watchdog; automation firings "
            f"{triggered}"
        )
    finally:
        serve.stop()
        server.stop()
        if prefect_db:
            drop_prefect_database(prefect_db)
        if schema:
            get_engine(db).dispose()
            with sa.create_engine(PG_ADMIN).begin() as c:
                c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        if args.keep:
            print(f"  logs kept in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def intake_only(
    home: Path, env: dict[str, str], port: int, db: str, args: argparse.Namespace
) -> None:
    env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{free_port()}/api"}  # nobody there
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "deployments.cli", "serve-intake", "--port", str(port)]
    proc = ManagedProcess("runbooks serve-intake", cmd, env, home / "intake.log", cwd=root)
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/healthz", 60)
        cpu0 = cpu_seconds(proc.pid)
        seconds, accepted, failed = storm([f"http://127.0.0.1:{port}"], args.alerts, args.per_post)
        cpu = cpu_seconds(proc.pid) - cpu0
        with get_engine(db).connect() as c:
            stored = c.execute(sa.text("select count(*) from alert")).scalar_one()
            incidents = c.execute(sa.text("select count(*) from incident")).scalar_one()
            staged = c.execute(
                sa.text("select count(*) from outboxevent where event = 'ml.incident.opened'")
            ).scalar_one()
        print(
            f"store {args.store}, intake alone, {args.alerts} alerts in posts of "
            f"{args.per_post}, 4 connections, on {machine()}:"
        )
        print(f"  accepted {accepted} in {seconds:.2f} s = {accepted / seconds:,.0f} alerts/s")
        # The steadier figure across machines and runs: what the intake spent, not waited.
        print(f"  CPU of the intake process meanwhile {cpu:.2f} s")
        print(f"  lost {args.alerts - stored} (stored {stored}, refused {failed})")
        print(f"  incidents opened {incidents} (distinct groups {MODELS * len(METRICS)})")
        print(f"  runbook start events staged {staged} (incidents {incidents})")
    finally:
        proc.stop()
        get_engine(db).dispose()
        shutil.rmtree(home, ignore_errors=True)


class CountingPrefect:
    """Prefect's `POST /api/events` as the outboxes speak it: counts the ml.incident.opened
    events per incident, and how often each event id came."""

    def __init__(self) -> None:
        self.opened: Counter[int] = Counter()
        self.ids: Counter[str] = Counter()
        lock = threading.Lock()
        counts = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"] or 0)))
                if self.path.endswith("/events"):
                    with lock:
                        for e in body:
                            counts.ids[e["id"]] += 1
                            if e["event"] == "ml.incident.opened":
                                counts.opened[e["payload"]["incident_id"]] += 1
                    self.send_response(204)
                    self.send_header("content-length", "0")
                    self.end_headers()
                else:  # the watchdog's filters: no runs (it is off in this bench)
                    self.send_response(200)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"[]")

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.api = f"http://127.0.0.1:{self.server.server_port}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def replicas(home: Path, env: dict[str, str], port: int, db: str, args: argparse.Namespace) -> None:
    """N intakes on one PostgreSQL, started together (one migrates, the others wait)."""
    prefect = CountingPrefect()
    # No triage runs here: the watchdog would send every opening again after its grace.
    env = {**env, "PREFECT_API_URL": prefect.api, "RUNBOOKS_RUNBOOK_START_SECONDS": "86400"}
    root = Path(__file__).resolve().parent.parent
    ports = [port] + [free_port() for _ in range(args.replicas - 1)]
    procs = [
        ManagedProcess(
            f"runbooks serve-intake #{k}",
            [sys.executable, "-m", "deployments.cli", "serve-intake", "--port", str(p)],
            env,
            home / f"intake-{k}.log",
            cwd=root,
        )
        for k, p in enumerate(ports)
    ]
    engine = get_engine(db)
    try:
        for proc, p in zip(procs, ports, strict=True):
            proc.wait_http(f"http://127.0.0.1:{p}/healthz", 60)
        cpu0 = [cpu_seconds(proc.pid) for proc in procs]
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        seconds, accepted, failed = storm(urls, args.alerts, args.per_post)
        cpu = sum(cpu_seconds(proc.pid) for proc in procs) - sum(cpu0)
        deadline = time.monotonic() + 120
        waiting = -1
        while time.monotonic() < deadline and waiting != 0:
            time.sleep(0.5)
            with engine.connect() as c:
                waiting = c.execute(
                    sa.text("select count(*) from outboxevent where delivered_at is null")
                ).scalar_one()
        time.sleep(3)  # a second send of anything would arrive now
        with engine.connect() as c:
            stored = c.execute(sa.text("select count(*) from alert")).scalar_one()
            per_group = Counter(
                c.execute(sa.text("select count(*) from incident group by group_key")).scalars()
            )
            incidents = c.execute(sa.text("select id from incident")).scalars().all()
            staged = c.execute(sa.text("select count(*) from outboxevent")).scalar_one()
        opened = Counter(prefect.opened.get(i, 0) for i in incidents)
        print(
            f"store postgresql, {args.replicas} intake replica(s) on one database, "
            f"{args.alerts} alerts in posts of {args.per_post} round-robin, 4 connections, "
            f"on {machine()}:"
        )
        print(f"  accepted {accepted} in {seconds:.2f} s = {accepted / seconds:,.0f} alerts/s")
        print(f"  CPU of the intake processes meanwhile {cpu:.2f} s")
        print(f"  lost {accepted - stored} (acknowledged {accepted}, stored {stored}, "
              f"refused {failed})")  # fmt: skip
        print(
            f"  incidents {len(incidents)} in {sum(per_group.values())} groups (distinct "
            f"{MODELS * len(METRICS)}); groups by incidents each {dict(per_group)} (must be "
            f"{{1: {MODELS * len(METRICS)}}})"
        )
        print(
            f"  ml.incident.opened delivered per incident {dict(sorted(opened.items()))} "
            f"(must be {{1: {len(incidents)}}}); events staged {staged}, received "
            f"{sum(prefect.ids.values())}, distinct {len(prefect.ids)}, undelivered {waiting}"
        )
    finally:
        for proc in procs:
            proc.stop()
        prefect.close()
        engine.dispose()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
