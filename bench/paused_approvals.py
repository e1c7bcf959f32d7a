"""Open incidents each waiting on a paused approval: what the waiting costs.

A Prefect server and a `runbooks serve` of their own (own home and ports; the incident
store on SQLite, the Prefect server on PostgreSQL unless --sqlite). N incidents on N
models (one remediation lock each), P2, whose policy asks for approval; one containment
run per incident is created from the served deployment, in batches, and each is a real
flow run that pauses for its answer, on a thread of `runbooks serve` (the deployment is
tagged in-process). While they wait: the RSS and PSS of `runbooks serve` and its children
(PSS splits the pages forks share), the Prefect server's, and the intake's latency for
GET /api/v1/incidents (before the runs and while they wait).

    .venv/bin/python bench/paused_approvals.py --incidents 100
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deployments.local import (  # noqa: E402
    ManagedProcess,
    create_prefect_database,
    drop_prefect_database,
    free_port,
    prefect_env,
    start_prefect_server,
    start_runbooks_serve,
)


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    mem = next(
        line for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line
    )
    gb = int(mem.split()[1]) / 1024 / 1024
    return f"{os.cpu_count()} x {names[0] if names else 'unknown CPU'}, {gb:.0f} GB RAM"


def tree(pid: int) -> list[int]:
    """`pid` and every process below it, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """Summed RSS and PSS in MB (PSS: each shared page split between its sharers)."""
    rss = pss = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            continue
    return rss / 1024, pss / 1024


def latencies(url: str, n: int) -> tuple[float, float]:
    """p50 and p99 of n sequential GETs, in ms."""
    seen = []
    with httpx.Client(timeout=30) as c:
        for _ in range(n):
            t = time.perf_counter()
            r = c.get(url)
            seen.append((time.perf_counter() - t) * 1000)
            r.raise_for_status()
    seen.sort()
    return statistics.median(seen), seen[min(len(seen) - 1, int(0.99 * len(seen)))]


def write_policy(home: Path) -> None:
    policy = yaml.safe_load((ROOT / "runbooks" / "default_policy.yaml").read_text())
    policy["defaults"] = {
        "owners": ["olivia"],
        "target": {"kind": "kubernetes", "namespace": "ml-prod", "service": "{model}"},
    }
    policy["approval"] = {
        "automatic": {"P1": [], "P2": [], "P3": []},
        "timeout_seconds": 3600,
        "approvers": {s: ["owners"] for s in ("P1", "P2", "P3")},
    }
    policy["routing"] = {"escalation": [], "deadlines": {}}
    policy["notifications"] = {"update_minutes": 0}
    (home / "policy.yaml").write_text(yaml.safe_dump(policy))


def open_incidents(db_url: str, n: int) -> list[int]:
    """n P2 incidents, one per model, claimed for triage so no automation starts one, with
    their outbox emptied (the runs are started by this bench, not by events)."""
    import sqlalchemy as sa

    from runbooks.alerts import AlertIn
    from runbooks.ingest import ingest
    from runbooks.models import Incident
    from runbooks.policy import load_policy
    from runbooks.store import get_engine, migrate, session_scope

    migrate(db_url)
    policy = load_policy()
    policy.grouping.by = ["model"]
    now = datetime.now(UTC)
    alerts = [
        AlertIn(
            fingerprint=f"bench-{i}",
            status="firing",
            model=f"bench-{i}",
            alertname="ModelF1Low",
            labels={"alertname": "ModelF1Low", "model": f"bench-{i}", "metric": "f1_score"},
            annotations={"value": "0.5"},
            starts_at=now,
            ends_at=None,
            source="bench",
        )
        for i in range(n)
    ]
    ids = []
    with session_scope(db_url) as s:
        for start in range(0, n, 200):
            result = ingest(s, alerts[start : start + 200], policy)
            ids += sorted({item.incident_id for item in result.items})
        for incident_id in ids:
            incident = s.get(Incident, incident_id)
            incident.severity = "P2"
            incident.triage_run = "bench"
    with get_engine(db_url).begin() as c:
        c.execute(sa.text("DELETE FROM outboxevent"))
    return ids


def count_paused(api: str) -> int:
    r = httpx.post(
        f"{api}/flow_runs/count",
        json={"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}},
        timeout=30,
    )
    r.raise_for_status()
    return int(r.json())


def create_flow_run(api: str, deployment_id: str, incident_id: int) -> None:
    """As Prefect's client does: a 503 (SQLite busy under the runs' writes) is retried."""
    for attempt in range(10):
        r = httpx.post(
            f"{api}/deployments/{deployment_id}/create_flow_run",
            json={"parameters": {"request": {"incident_id": incident_id}}},
            timeout=120,
        )
        if r.status_code != 503:
            r.raise_for_status()
            return
        time.sleep(0.5 * 2**attempt)
    r.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=100)
    parser.add_argument("--requests", type=int, default=300, help="GETs per latency figure")
    parser.add_argument("--wait", type=float, default=900, help="seconds for all to pause")
    parser.add_argument("--batch", type=int, default=25, help="runs started at a time")
    parser.add_argument(
        "--sqlite", action="store_true", help="the Prefect server on SQLite (default PostgreSQL)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the home (logs) to read")
    args = parser.parse_args()
    n = args.incidents

    home = Path(tempfile.mkdtemp(prefix="runbooks-paused-"))
    prefect_port, intake_port = free_port(), free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RUNBOOKS_"))}
    env = prefect_env(home, prefect_port, base)
    env.update(
        {
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_UI_ENABLED": "false",
            "RUNBOOKS_HOME": str(home),
            "RUNBOOKS_DATABASE_URL": f"sqlite:///{home / 'incidents.db'}",
            "RUNBOOKS_POLICY_FILE": str(home / "policy.yaml"),
            "RUNBOOKS_SWEEP_SOURCE": str(home / "sweep-source"),
            "RUNBOOKS_INTAKE_TOKEN": "",
        }
    )
    (home / "sweep-source").mkdir()
    write_policy(home)
    os.environ.update({k: env[k] for k in ("RUNBOOKS_DATABASE_URL", "RUNBOOKS_POLICY_FILE")})
    database = None
    if not args.sqlite:
        database = f"bench_paused_{os.getpid()}"
        create_prefect_database(env, database)
    api, intake = env["PREFECT_API_URL"], f"http://127.0.0.1:{intake_port}"
    print(f"machine: {machine()}")
    server: ManagedProcess | None = None
    serve: ManagedProcess | None = None
    try:
        t = time.monotonic()
        ids = open_incidents(env["RUNBOOKS_DATABASE_URL"], n)
        print(f"{len(ids)} open incidents written in {time.monotonic() - t:.1f} s")
        server = start_prefect_server(home, env, prefect_port)
        serve = start_runbooks_serve(home, env, intake_port)
        listing = f"{intake}/api/v1/incidents?limit=50"
        time.sleep(2)
        rss0, pss0 = memory_mb(tree(serve.pid))
        p50_0, p99_0 = latencies(listing, args.requests)
        print(
            f"idle: runbooks serve + children RSS {rss0:.0f} MB, PSS {pss0:.0f} MB; "
            f"GET /api/v1/incidents p50 {p50_0:.1f} ms, p99 {p99_0:.1f} ms"
        )

        deployments = httpx.post(f"{api}/deployments/filter", json={}, timeout=30).json()
        containment = next(d for d in deployments if d["name"] == "containment")
        t = time.monotonic()
        deadline = time.monotonic() + args.wait
        paused = 0
        # In batches, each let pause before the next: the bench measures the waiting, and a
        # thousand runs starting at once on two cores only measure the queue.
        for start in range(0, n, args.batch):
            for incident_id in ids[start : start + args.batch]:
                create_flow_run(api, containment["id"], incident_id)
            created = min(n, start + args.batch)
            while time.monotonic() < deadline:
                paused = count_paused(api)
                if paused >= created:
                    break
                time.sleep(2)
            rss, _ = memory_mb(tree(serve.pid))
            print(f"  {time.monotonic() - t:5.0f} s: {paused} paused, serve tree RSS {rss:.0f} MB")
            if time.monotonic() >= deadline:
                break
        took = time.monotonic() - t
        print(f"{paused} of {n} runs paused for approval after {took:.0f} s")
        time.sleep(10)  # let the last ones settle into their poll loop
        pids = tree(serve.pid)
        rss, pss = memory_mb(pids)
        srv_rss, srv_pss = memory_mb(tree(server.pid))
        p50, p99 = latencies(listing, args.requests)
        print(
            f"{paused} paused approvals: runbooks serve + {len(pids) - 1} children RSS "
            f"{rss:.0f} MB, PSS {pss:.0f} MB ({(pss - pss0) / max(paused, 1):.1f} MB PSS per "
            f"waiting run); Prefect server RSS {srv_rss:.0f} MB"
        )
        print(
            f"GET /api/v1/incidents?limit=50 while they wait: p50 {p50:.1f} ms, "
            f"p99 {p99:.1f} ms ({args.requests} requests)"
        )
        with open("/proc/loadavg") as f:
            print(f"load average: {f.read().split()[0]}")
    finally:
        if serve is not None:
            serve.stop()
        if server is not None:
            server.stop()
        if database is not None:
            drop_prefect_database(database)
        if args.keep:
            print(f"home kept: {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
