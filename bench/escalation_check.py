"""The escalation sweep's check over 10,000 active incidents, on SQLite and PostgreSQL.

Fills a fresh store with N active incidents (default 10,000: P1/P2/P3 routed as triage
routes them, opened over the last 4 hours, half of them acknowledged, spread over open,
triaged, investigating and mitigated) beside H resolved ones (default 50,000: the history
the status index skips), and the notices a sweep one minute earlier sent them: the steady
state, where each check finds the few that came due since, each incident's clock
(next_due_at) as that sweep left it. Then times, R times each, the check the sweep's first
task does, `runbooks.escalation.check` (the query of the incidents whose clock came due,
`due()` for each, the clocks moved; rolled back after each run so that every run sees the
same store), and as the reference the same read of every active incident
(`escalation.due_now`, what the sweep did before it kept a clock), and prints median, p99,
their ratio and the machine.

    ./run bench escalation_check [--incidents 10000] [--history 50000] [--runs 30]
        [--postgres URL]

Target (issue 10): <= 200 ms over 10,000 open incidents.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# The check runs in a flow run's process, with Prefect and the flows imported: that heap is
# what a garbage collector pass walks, so it is here too.
import flows.escalation  # noqa: E402,F401
from deployments.local import PG_ADMIN, machine, p99, pg_schema  # noqa: E402
from runbooks import escalation  # noqa: E402
from runbooks.bulk import insert_rows  # noqa: E402
from runbooks.models import Incident, IncidentNotice  # noqa: E402
from runbooks.policy import Policy, load_policy  # noqa: E402
from runbooks.routing import route  # noqa: E402
from runbooks.store import get_engine, migrate, session_scope  # noqa: E402
from runbooks.taxonomy import Classification  # noqa: E402

ACTIVE = ["open", "triaged", "investigating", "mitigated"]
# What enrichment leaves on an incident (~1 KB): the row is that much wider to read.
CONTEXT = {
    "registry": {"model": "fraud", "champion": "7", "versions": ["7", "6", "5", "4"]},
    "changes": [
        {"at": "2026-12-01T08:00:00+00:00", "what": f"deploy v{v}", "by": "ci"} for v in range(8)
    ],
    "owners": ["alice", "bob"],
    "notes": "x" * 300,
}


def incident_rows(n: int, history: int, now: datetime, policy: Policy) -> list[dict]:
    rnd = random.Random(7)
    rows = []
    for i in range(n + history):
        active = i < n
        severity = rnd.choice(["P1", "P2", "P3"])
        opened = now - timedelta(minutes=rnd.uniform(0, 240 if active else 60 * 24 * 90))
        kind = rnd.choice(["model_degradation", "data_drift", "compliance", "security"])
        c = Classification("model_performance", "bench", kind, None, None, "bench")
        model = f"model-{i % 200}"
        routed = route(severity, c, policy.for_model(model), policy, opened, opened).to_dict()
        status = rnd.choice(ACTIVE) if active else "resolved"
        acked = active and rnd.random() < 0.5 or not active
        rows.append(
            {
                "model": model,
                "title": f"bench incident {i}",
                "status": status,
                "severity": severity,
                "type": kind,
                "group_key": f"bench-{i}",
                "open_group_key": f"bench-{i}" if active else None,
                "source": "alert",
                "description": "",
                "opened_at": opened,
                "updated_at": opened,
                "mitigated_at": opened + timedelta(minutes=8) if status == "mitigated" else None,
                "resolved_at": None if active else opened + timedelta(hours=1),
                "acknowledged_at": opened + timedelta(minutes=3) if acked else None,
                "acknowledged_by": "bench" if acked else None,
                "route": routed,
                "context": CONTEXT,
            }
        )
    return rows


def fill(url: str, n: int, history: int, now: datetime, policy: Policy) -> tuple[int, float]:
    """The store as a sweep a minute ago left it; returns (notices sent, seconds to fill)."""
    t0 = time.perf_counter()
    migrate(url)
    rows = incident_rows(n, history, now, policy)
    with session_scope(url) as s:
        ids = insert_rows(s, Incident.__table__, rows, ids=True)
    earlier = now - timedelta(seconds=60)
    notices, clocks = [], []
    for i, row in zip(ids[:n], rows[:n], strict=True):
        watched = escalation.Watched(
            i,
            row["model"],
            row["status"],
            row["severity"],
            row["type"],
            row["opened_at"],
            row["acknowledged_at"],
            row["mitigated_at"],
            row["route"],
        )
        # Everything owed until a minute ago, every update number included.
        keys = {d.key for d in escalation.due(watched, earlier, (), policy)}
        n_updates = int((earlier - row["opened_at"]).total_seconds() / 60 // 30)
        keys |= {f"update:{k}" for k in range(1, n_updates + 1)}
        notices += [{"incident_id": i, "key": k, "at": earlier} for k in sorted(keys)]
        clocks.append({"b_id": i, "b_next": escalation.next_due(watched, earlier, keys, policy)})
    with session_scope(url) as s:
        insert_rows(s, IncidentNotice.__table__, notices)
        table = Incident.__table__
        s.connection().execute(
            sa.update(table)
            .where(table.c.id == sa.bindparam("b_id"))
            .values(
                next_due_at=sa.bindparam("b_next", type_=table.c.next_due_at.type),
                clock_policy=escalation.clock_policy(policy),
            ),
            clocks,
        )
        # Fresh statistics, as autovacuum would have them after a day of traffic.
        s.execute(sa.text("ANALYZE"))
    return len(notices), time.perf_counter() - t0


def plan(url: str, now: datetime, policy: Policy) -> str:
    """How the database runs the sweep's query (does it use the status index?)."""
    with session_scope(url) as s:
        bind = s.get_bind()
        # With no digest (IS NOT NULL) the literal renders; the plan is the same shape.
        q = escalation.watched_query(now, None)
        compiled = q.compile(bind, compile_kwargs={"literal_binds": True})
        if bind.dialect.name == "postgresql":
            lines = s.execute(sa.text(f"EXPLAIN {compiled}")).scalars().all()
            return " / ".join(line.strip() for line in lines if "Scan" in line)
        rows = s.execute(sa.text(f"EXPLAIN QUERY PLAN {compiled}")).all()
        return " / ".join(r[-1] for r in rows)


def measure(
    url: str, now: datetime, policy: Policy, runs: int, clocked: bool
) -> tuple[list[float], list[float], int, int]:
    """Wall and this process's CPU time of each check, a session each as the task has; the
    number due and the number of incidents read."""
    walls, cpus, due, read = [], [], 0, 0
    engine = get_engine(url)
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        with Session(engine) as s:
            if clocked:
                read, notices = escalation.check(s, now, policy)
            else:
                notices = escalation.due_now(s, now, policy)
            s.rollback()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        due = len(notices)
    if not clocked:
        with session_scope(url) as s:
            read = len(escalation.watched(s))
    return walls, cpus, due, read


def run(label: str, url: str, args: argparse.Namespace, policy: Policy) -> None:
    now = datetime.now(UTC)
    sent, seconds = fill(url, args.incidents, args.history, now, policy)
    print(
        f"{label:<10} {args.incidents:,} active incidents, {args.history:,} resolved beside "
        f"them, {sent:,} notices already sent (filled in {seconds:.1f} s)"
    )
    medians = {}
    for clocked, what in [(False, "every active incident read"), (True, "the clock's check")]:
        walls, cpus, due, read = measure(url, now, policy, args.runs, clocked)
        ms = [t * 1000 for t in walls]
        cpu = [t * 1000 for t in cpus]
        medians[clocked] = statistics.median(ms)
        print(
            f"{'':<10} {what}: {read:,} read, {due} due now: median {medians[clocked]:.1f} ms, "
            f"p99 {p99(ms):.1f} ms, max {max(ms):.1f} ms over {args.runs} runs (this "
            f"process's CPU: median {statistics.median(cpu):.1f} ms; load average "
            f"{os.getloadavg()[0]:.2f})"
        )
    print(f"{'':<10} the clock's check is {medians[False] / medians[True]:.1f}x faster")
    print(f"{'':<10} plan: {plan(url, now, policy)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--incidents", type=int, default=10_000)
    ap.add_argument("--history", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--postgres", default=PG_ADMIN)
    args = ap.parse_args()
    policy = load_policy()
    home = Path(tempfile.mkdtemp(prefix="runbooks-escalation-"))
    print(f"escalation check on {machine()}, target <= 200 ms over 10,000 active incidents")
    try:
        run("sqlite", f"sqlite:///{home / 'incidents.db'}", args, policy)
        with pg_schema(args.postgres) as url:
            run("postgresql", url, args, policy)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
