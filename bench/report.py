"""The incident report over 100,000 incidents, on PostgreSQL and (for reference) SQLite.

Fills a fresh store with N incidents (default 100,000) opened over the last 30 days: P1,
P2, P3 mixed, 200 models, routed deadlines as triage sets them, onsets minutes before the
opening, most acknowledged, some contained, most resolved; the deadlines some missed as
the escalation clock leaves them (notice rows), and a root-cause label on a fifth, a
diagnosis on a third. Then times `runbooks.reporting.incident_report` over the last 30 days,
R times (a session each, as the API has), and prints median, p99 and the machine.
    ./run bench report [--incidents 100000] [--runs 20] [--postgres URL] [--no-sqlite]
Target (issue 11): <= 1 s over 100,000 incidents on PostgreSQL.
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

from deployments.local import PG_ADMIN, machine, p99, pg_schema  # noqa: E402
from runbooks.bulk import insert_rows  # noqa: E402
from runbooks.models import Incident, IncidentNotice, RootCauseLabel  # noqa: E402
from runbooks.reporting import incident_report  # noqa: E402
from runbooks.store import get_engine, migrate, session_scope  # noqa: E402

CAUSES = ["bad_deployment", "feature_drift", "data_quality", "stale_features", "infrastructure"]
SLA_MINUTES = {"P1": (5, 10, 120), "P2": (15, 30, 480), "P3": (60, 240, 1440)}
# What enrichment leaves on an incident (~1 KB): the row is that much wider to read.
CONTEXT = {
    "registry": {"model": "fraud", "champion": "7", "versions": ["7", "6", "5", "4"]},
    "changes": [
        {"at": "2026-12-01T08:00:00+00:00", "what": f"deploy v{v}", "by": "ci"} for v in range(8)
    ],
    "owners": ["alice", "bob"],
    "notes": "x" * 300,
}


def rows_of(n: int, now: datetime) -> tuple[list[dict], list[list[str]], list[list[str]]]:
    """Incident rows, and for each the deadline notice keys and label causes it gets."""
    rnd = random.Random(7)
    rows, notices, labels = [], [], []
    for i in range(n):
        severity = rnd.choices(["P1", "P2", "P3"], [1, 3, 6])[0]
        opened = now - timedelta(minutes=rnd.uniform(0, 60 * 24 * 30))
        sla = SLA_MINUTES[severity]
        deadlines = {
            step: (opened + timedelta(minutes=m)).isoformat()
            for step, m in zip(("triage", "investigation", "resolution"), sla, strict=True)
        }
        age = (now - opened).total_seconds() / 60
        resolved = age > sla[2] * 2 or rnd.random() < 0.5
        acked = rnd.random() < 0.8
        mitigated = resolved or rnd.random() < 0.3
        missed = [
            f"deadline:{s}"
            for s, p in zip(deadlines, (0.05, 0.15, 0.1), strict=True)
            if rnd.random() < p
        ]
        context = dict(CONTEXT)
        if rnd.random() < 0.33:
            context["diagnosis"] = {"cause": rnd.choice(CAUSES)}
        rows.append(
            {
                "model": f"model-{i % 200}",
                "title": f"bench incident {i}",
                "status": "resolved" if resolved else rnd.choice(["triaged", "investigating"]),
                "severity": severity,
                "type": "model_degradation",
                "group_key": f"bench-{i}",
                "open_group_key": None if resolved else f"bench-{i}",
                "source": "alert",
                "description": "",
                "onset_at": opened - timedelta(minutes=rnd.uniform(0.5, 15)),
                "opened_at": opened,
                "updated_at": opened,
                "acknowledged_at": opened + timedelta(minutes=rnd.uniform(0.2, sla[0] * 1.5))
                if acked
                else None,
                "acknowledged_by": "bench" if acked else None,
                "mitigated_at": opened + timedelta(minutes=rnd.uniform(2, sla[1] * 1.5))
                if mitigated
                else None,
                "resolved_at": opened + timedelta(minutes=rnd.uniform(sla[1], sla[2] * 1.5))
                if resolved
                else None,
                "route": {"deadlines": deadlines},
                "context": context,
            }
        )
        notices.append(missed)
        labelled = rnd.random() < 0.2
        labels.append(
            [rnd.choice(CAUSES) for _ in range(rnd.choice([1, 1, 2]))] if labelled else []
        )
    return rows, notices, labels


def fill(url: str, n: int, now: datetime) -> tuple[int, int, float]:
    """The store; returns (notices, labels, seconds to fill)."""
    t0 = time.perf_counter()
    migrate(url)
    rows, missed, causes = rows_of(n, now)
    with session_scope(url) as s:
        ids = insert_rows(s, Incident.__table__, rows, ids=True)
        notices = [
            {"incident_id": i, "key": k, "at": now}
            for i, keys in zip(ids, missed, strict=True)
            for k in keys
        ]
        labels = [
            {
                "incident_id": i,
                "root_cause": c,
                "component": "feature pipeline",
                "confidence": 0.8,
                "labeled_by": "bench",
                "comment": "",
                "at": now - timedelta(minutes=len(cs) - k),
            }
            for i, cs in zip(ids, causes, strict=True)
            for k, c in enumerate(cs)
        ]
        insert_rows(s, IncidentNotice.__table__, notices)
        insert_rows(s, RootCauseLabel.__table__, labels)
    with session_scope(url) as s:
        # Fresh statistics, as autovacuum would have them after a day of traffic.
        s.execute(sa.text("ANALYZE"))
    return len(notices), len(labels), time.perf_counter() - t0


def run(label: str, url: str, args: argparse.Namespace) -> None:
    now = datetime.now(UTC)
    notices, labels, seconds = fill(url, args.incidents, now)
    print(
        f"{label:<10} {args.incidents:,} incidents, {notices:,} missed-deadline notices, "
        f"{labels:,} labels (filled in {seconds:.1f} s)"
    )
    engine = get_engine(url)
    walls, cpus = [], []
    for _ in range(args.runs):
        t0, c0 = time.perf_counter(), time.process_time()
        with Session(engine) as s:
            report = incident_report(s, now - timedelta(days=30), now + timedelta(seconds=1), now)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    ms = [t * 1000 for t in walls]
    print(
        f"{'':<10} incident_report over {report.count:,} incidents ({len(report.by_model)} "
        f"models): median {statistics.median(ms):.0f} ms, p99 {p99(ms):.0f} ms, max "
        f"{max(ms):.0f} ms over {args.runs} runs (this process's CPU: median "
        f"{statistics.median(cpus) * 1000:.0f} ms; load average {os.getloadavg()[0]:.2f})"
    )
    o = report.overall
    print(
        f"{'':<10} MTTA p50 {o.time_to_acknowledge.p50:.0f} s, MTTR p50 "
        f"{o.time_to_resolve.p50:.0f} s, triage deadlines met "
        f"{o.deadlines['triage'].fraction_met:.1%}, diagnosis agreed with the label in "
        f"{o.labels.agreed:,} of {o.labels.both:,}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--incidents", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--postgres", default=PG_ADMIN)
    ap.add_argument("--no-sqlite", action="store_true", help="PostgreSQL only")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="runbooks-report-"))
    print(f"incident report on {machine()}, target <= 1 s over 100,000 incidents on PostgreSQL")
    try:
        with pg_schema(args.postgres) as url:
            run("postgresql", url, args)
        if not args.no_sqlite:
            run("sqlite", f"sqlite:///{home / 'incidents.db'}", args)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
