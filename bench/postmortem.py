"""The post-mortem of a big incident, on SQLite and PostgreSQL.

Fills a fresh store with one resolved incident of A alerts (default 10,000, over five
alert names) and L timeline lines (default 500), a few actions, notices and labels, beside
a hundred other incidents of 100 alerts each, then times, R times each, what the flow's
draft and the API's GET do: `gather` (the queries), `build` and `to_markdown`, and prints
median and p99 of each and of the whole, and the machine.

    ./run bench postmortem [--alerts 10000] [--lines 500] [--runs 30] [--postgres URL]

Target (issue 11): <= 1 s for gather + build + to_markdown.
"""

from __future__ import annotations

import argparse
import os
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
from runbooks import postmortem  # noqa: E402
from runbooks.bulk import insert_rows  # noqa: E402
from runbooks.models import (  # noqa: E402
    Action,
    Alert,
    Incident,
    IncidentNotice,
    RootCauseLabel,
    TimelineEvent,
)
from runbooks.policy import Policy, load_policy  # noqa: E402
from runbooks.store import get_engine, migrate, session_scope  # noqa: E402

NAMES = ["ModelF1Low", "FeatureDrift", "NullRateHigh", "LatencyHigh", "ErrorRateHigh"]
OTHERS, OTHER_ALERTS = 100, 100


def incident_row(i: int, now: datetime) -> dict:
    opened = now - timedelta(hours=3)
    return {
        "model": f"model-{i % 20}",
        "title": f"bench incident {i}",
        "status": "resolved",
        "severity": "P1",
        "type": "model_degradation",
        "category": "model_performance",
        "group_key": f"bench-{i}",
        "open_group_key": None,
        "source": "alert",
        "description": "",
        "assignee": "alice",
        "onset_at": opened - timedelta(seconds=90),
        "opened_at": opened,
        "updated_at": opened,
        "acknowledged_at": opened + timedelta(minutes=2),
        "acknowledged_by": "alice",
        "mitigated_at": opened + timedelta(minutes=6),
        "resolved_at": opened + timedelta(minutes=50),
        "reopened_count": 0,
        "context": {"owners": ["alice"], "notes": "x" * 300},
    }


def alert_rows(incident_id: int, n: int, opened: datetime, tag: str) -> list[dict]:
    return [
        {
            "fingerprint": f"{tag}-{k}",
            "starts_at": opened - timedelta(seconds=90 - k * 0.01),
            "ends_at": opened + timedelta(minutes=49),
            "status": "resolved",
            "model": "model-0",
            "alertname": NAMES[k % len(NAMES)],
            "labels": {"alertname": NAMES[k % len(NAMES)], "pod": f"pod-{k}"},
            "annotations": {"value": "0.61"},
            "source": "alertmanager",
            "received_at": opened,
            "incident_id": incident_id,
        }
        for k in range(n)
    ]


def fill(url: str, alerts: int, lines: int, now: datetime) -> tuple[int, float]:
    """The big incident among the others; returns (its id, seconds to fill)."""
    t0 = time.perf_counter()
    migrate(url)
    with session_scope(url) as s:
        ids = insert_rows(
            s, Incident.__table__, [incident_row(i, now) for i in range(OTHERS + 1)], ids=True
        )
        big, opened = ids[0], now - timedelta(hours=3)
        rows = alert_rows(big, alerts, opened, "big")
        for other in ids[1:]:
            rows += alert_rows(other, OTHER_ALERTS, opened, f"o{other}")
        insert_rows(s, Alert.__table__, rows)
        insert_rows(
            s,
            TimelineEvent.__table__,
            [
                {
                    "incident_id": big,
                    "at": opened + timedelta(seconds=5 * k),
                    "actor": "triage" if k % 3 else "containment",
                    "kind": ["decision", "context", "verify", "notified"][k % 4],
                    "message": f"timeline line {k}: " + "y" * 80,
                    "data": {"k": k},
                }
                for k in range(lines)
            ],
        )
        insert_rows(
            s,
            Action.__table__,
            [
                {
                    "idempotency_key": f"bench-{big}-{k}",
                    "incident_id": big,
                    "model": "model-0",
                    "kind": "route_to_previous_version",
                    "target": "ml-prod/model-0",
                    "dry_run": False,
                    "status": "done",
                    "detail": {},
                    "started_at": opened + timedelta(minutes=4),
                }
                for k in range(3)
            ],
        )
        insert_rows(
            s,
            IncidentNotice.__table__,
            [{"incident_id": big, "key": k, "at": opened} for k in ("escalation:0", "update:1")],
        )
        insert_rows(
            s,
            RootCauseLabel.__table__,
            [
                {
                    "incident_id": big,
                    "root_cause": "feature_drift",
                    "component": "feature pipeline",
                    "confidence": 0.9,
                    "labeled_by": "dana",
                    "comment": "",
                    "at": now,
                }
            ],
        )
        s.execute(sa.text("ANALYZE"))
    return big, time.perf_counter() - t0


def measure(url: str, incident_id: int, policy: Policy, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"gather": [], "build": [], "to_markdown": [], "total": []}
    engine = get_engine(url)
    for _ in range(runs):
        t0 = time.perf_counter()
        with Session(engine) as s:
            incident, facts, labels = postmortem.gather(s, incident_id)
            t1 = time.perf_counter()
            report = postmortem.build(incident, facts, labels, policy, datetime.now(UTC))
            t2 = time.perf_counter()
            md = report.to_markdown()
            t3 = time.perf_counter()
        assert md.count("| timeline line") == len(facts.timeline)
        for key, dt in (("gather", t1 - t0), ("build", t2 - t1), ("to_markdown", t3 - t2)):
            times[key].append(dt)
        times["total"].append(t3 - t0)
    return times


def run(label: str, url: str, args: argparse.Namespace, policy: Policy) -> None:
    now = datetime.now(UTC)
    big, seconds = fill(url, args.alerts, args.lines, now)
    print(
        f"{label:<10} one incident of {args.alerts:,} alerts and {args.lines} timeline lines "
        f"beside {OTHERS} of {OTHER_ALERTS} alerts (filled in {seconds:.1f} s)"
    )
    times = measure(url, big, policy, args.runs)
    for key, values in times.items():
        ms = [t * 1000 for t in values]
        print(
            f"{'':<10} {key:<12} median {statistics.median(ms):7.1f} ms, p99 {p99(ms):7.1f} ms, "
            f"max {max(ms):7.1f} ms over {args.runs} runs"
        )
    print(f"{'':<10} load average {os.getloadavg()[0]:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alerts", type=int, default=10_000)
    ap.add_argument("--lines", type=int, default=500)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--postgres", default=PG_ADMIN)
    args = ap.parse_args()
    policy = load_policy()
    home = Path(tempfile.mkdtemp(prefix="runbooks-postmortem-"))
    print(f"post-mortem on {machine()}, target <= 1 s for gather + build + to_markdown")
    try:
        run("sqlite", f"sqlite:///{home / 'incidents.db'}", args, policy)
        with pg_schema(args.postgres) as url:
            run("postgresql", url, args, policy)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
