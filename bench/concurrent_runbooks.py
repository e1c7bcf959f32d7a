"""Many runbooks at once: N incidents on M models, all alerts posted together.

Starts a Prefect server, `runbooks serve` and a sandbox platform whose M models serve the
bad v2; posts N P1 alerts at once (N / M per model, each its own incident), waits until
every incident's containment runbook has finished, and prints: runbooks finished (must be
N), their outcomes, the wall time from the first POST to the last finish, and how many
pairs of remediation actions on one model overlapped in time (must be 0: one remediation
per model at a time).

    ./run bench concurrent_runbooks [--incidents 50] [--models 50] [--prefect-postgres]
"""

from __future__ import annotations

import argparse
import os
import platform as host
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deployments.local import (  # noqa: E402
    create_prefect_database,
    drop_prefect_database,
    free_port,
    prefect_env,
    start_prefect_server,
    start_runbooks_serve,
)
from runbooks.store import session_scope  # noqa: E402
from sandbox.platform import SandboxPlatform  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--incidents", type=int, default=50)
    ap.add_argument("--models", type=int, default=50)
    ap.add_argument("--prefect-postgres", action="store_true")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    if args.incidents % args.models:
        ap.error("--incidents must be a multiple of --models")
    home = Path(tempfile.mkdtemp(prefix="runbooks-concurrent-"))
    models = [f"c-{i}" for i in range(args.models)]
    sandbox = SandboxPlatform(models=models, serve="v2", batch_size=50, window=500)
    url = sandbox.start()
    root = Path(__file__).resolve().parent.parent
    policy = yaml.safe_load((root / "runbooks" / "default_policy.yaml").read_text())
    policy["defaults"] = {
        "target": {"kind": "platform", "url": url},
        "recovery": {"url": f"{url}/metrics", "above": 0.7, "interval_seconds": 0.5},
    }
    # One incident per alert name, so that a model's second incident meets the first's
    # lock (and then its cooldown) instead of joining it.
    policy.setdefault("grouping", {})["by"] = ["model", "alertname"]
    (home / "policy.yaml").write_text(yaml.safe_dump(policy))
    pport, iport = free_port(), free_port()
    db = f"sqlite:///{home / 'incidents.db'}"
    env = prefect_env(home, pport)
    pg_db = f"prefect_concurrent_{pport}" if args.prefect_postgres else None
    if pg_db:
        create_prefect_database(env, pg_db)
    env.update(
        {
            "RUNBOOKS_HOME": str(home),
            "RUNBOOKS_POLICY_FILE": str(home / "policy.yaml"),
            "RUNBOOKS_DATABASE_URL": db,
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
    )
    server = start_prefect_server(home, env, pport)
    serve = start_runbooks_serve(home, env, iport)
    intake = f"http://127.0.0.1:{iport}"
    try:
        alerts = [
            {"model": m, "alertname": f"F1Low{k}", "metric": "f1_score", "value": 0.5}
            for k in range(args.incidents // args.models)
            for m in models
        ]
        t0 = time.time()
        with ThreadPoolExecutor(8) as pool:
            posted = list(pool.map(lambda a: httpx.post(f"{intake}/api/v1/alerts", json=a), alerts))
        ids = {r.json()["incidents"][0] for r in posted if r.status_code == 202}
        runs = wait_for_runbooks(db, ids, t0 + args.timeout)
        wall = max(r.finished_at.timestamp() for r in runs if r.finished_at) - t0
        overlaps = overlapping_actions(db)
        slowest = slowest_timeline(db, runs, t0)
    finally:
        serve.stop()
        server.stop()
        sandbox.stop()
        shutil.rmtree(home, ignore_errors=True)
        if pg_db:
            drop_prefect_database(pg_db)
    finished = [r for r in runs if r.finished_at]
    where = "PostgreSQL" if pg_db else "SQLite"
    print(
        f"{len(ids)} incidents on {args.models} models at once, Prefect server on {where} "
        f"({os.cpu_count()} cores, {host.processor() or host.machine()}):"
    )
    print(f"  runbooks finished: {len(finished)} of {len(ids)}")
    print(f"  outcomes: {dict(Counter(r.outcome for r in finished))}")
    print(f"  first POST -> last runbook finished: {wall:.1f} s")
    print(f"  overlapping remediations of one model: {overlaps}")
    print("  the slowest incident's timeline (seconds after the first POST):")
    for line in slowest:
        print(f"    {line}")


def slowest_timeline(db: str, runs: list, t0: float) -> list[str]:
    from sqlmodel import col, select

    from runbooks.models import TimelineEvent

    done = [r for r in runs if r.finished_at]
    if not done:
        return []
    last = max(done, key=lambda r: r.finished_at)
    with session_scope(db) as s:
        rows = s.exec(
            select(TimelineEvent)
            .where(TimelineEvent.incident_id == last.incident_id)
            .order_by(col(TimelineEvent.at))
        )
        return [f"+{t.at.timestamp() - t0:6.1f}  {t.actor:<12} {t.message[:90]}" for t in rows]


def wait_for_runbooks(db: str, ids: set[int], deadline: float) -> list:
    from sqlmodel import col, select

    from runbooks.models import RunbookRun

    runs: list = []
    while time.time() < deadline:
        with session_scope(db) as s:
            runs = list(s.exec(select(RunbookRun).where(col(RunbookRun.incident_id).in_(ids))))
            for r in runs:
                s.expunge(r)
        if len({r.incident_id for r in runs if r.finished_at}) == len(ids):
            return runs
        time.sleep(1)
    return runs


def overlapping_actions(db: str) -> int:
    """Pairs of actions on one model, from different incidents, whose times overlap."""
    from sqlmodel import select

    from runbooks.models import Action

    with session_scope(db) as s:
        rows = [
            (a.model, a.incident_id, a.started_at, a.finished_at or a.started_at)
            for a in s.exec(select(Action).where(Action.dry_run == False))  # noqa: E712
        ]
    pairs = 0
    for i, (model, incident, start, end) in enumerate(rows):
        for other, incident2, start2, end2 in rows[i + 1 :]:
            if model == other and incident != incident2 and start < end2 and start2 < end:
                pairs += 1
    return pairs


if __name__ == "__main__":
    main()
