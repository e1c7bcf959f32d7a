"""Kill and restart: the intake SIGKILLed mid-storm while a real Alertmanager keeps
sending, started again on the same port 3 s later.

2,000 alerts, one group each (Alertmanager sends 2,000 webhooks at once, and again on each
retry), into a `runbooks serve-intake` on SQLite and on PostgreSQL; the intake is killed
when half of them are stored. Prints, per store: the seconds from the restart until every
alert is stored, the longest a read (GET /api/v1/incidents?limit=1, every 0.5 s, 30 s
timeout) waited meanwhile, and what must be 0 or 1: alerts lost, alert rows stored twice,
incidents per group, ml.incident.opened events per incident at a stand-in for Prefect.

    ./run bench kill_restart [--alerts 2000] [--store sqlite|postgresql|both] [--down 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.alert_storm import CountingPrefect  # noqa: E402
from deployments.local import (  # noqa: E402
    PG_ADMIN,
    free_port,
    machine,
    start_alertmanager,
    start_runbooks_intake,
)
from runbooks.store import dispose_all, get_engine  # noqa: E402

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "runbooks" / "default_policy.yaml"


class Reader:
    """One read after another, 0.5 s apart, each allowed 30 s: the longest one waited."""

    def __init__(self, url: str) -> None:
        self.url = f"{url}/api/v1/incidents?limit=1"
        self.longest = 0.0
        self.reads = self.timeouts = self.refused = 0
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Reader:
        self._thread.start()
        return self

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = client.get(self.url)
                    ok = r.status_code == 200
                    if not ok:
                        self.errors[f"{r.status_code} {r.text[:120]}"] += 1
                except httpx.ConnectError:
                    self.refused += 1  # not up yet: no wait to speak of
                    ok = None
                except httpx.TimeoutException:
                    self.timeouts += 1
                    ok = False
                if ok is not None:
                    self.reads += 1
                    self.longest = max(self.longest, time.perf_counter() - t0)
                self._stop.wait(0.5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=35)


def stored(db: str) -> int:
    with get_engine(db).connect() as c:
        return c.execute(sa.text("select count(*) from alert")).scalar_one()


def notifications(am_url: str) -> tuple[int, int]:
    """Alertmanager's own count of webhook sends and failed ones."""
    total = failed = 0
    for line in httpx.get(f"{am_url}/metrics", timeout=10).text.splitlines():
        if 'integration="webhook"' in line and not line.startswith("#"):
            if line.startswith("alertmanager_notifications_total"):
                total += int(float(line.rsplit(" ", 1)[1]))
            elif line.startswith("alertmanager_notifications_failed_total"):
                failed += int(float(line.rsplit(" ", 1)[1]))
    return total, failed


def run(store: str, n: int, down: float) -> None:
    home = Path(tempfile.mkdtemp(prefix=f"runbooks-kill-{store}-"))
    schema = None
    if store == "postgresql":
        schema = f"kill_{uuid.uuid4().hex[:8]}"
        with sa.create_engine(PG_ADMIN).begin() as c:
            c.execute(sa.text(f"CREATE SCHEMA {schema}"))
        db = f"{PG_ADMIN}?options=-csearch_path%3D{schema}"
    else:
        db = f"sqlite:///{home / 'incidents.db'}"
    prefect = CountingPrefect()
    env = {
        **os.environ,
        "RUNBOOKS_HOME": str(home),
        "RUNBOOKS_DATABASE_URL": db,
        "RUNBOOKS_POLICY_FILE": str(DEFAULT_POLICY),
        "PREFECT_API_URL": prefect.api,
        "RUNBOOKS_RUNBOOK_START_SECONDS": "86400",  # no runbooks here: no watchdog resends
    }
    port = free_port()
    reader = None
    procs = []
    try:
        intake = start_runbooks_intake(home, env, port)
        procs.append(intake)
        url = f"http://127.0.0.1:{port}"
        am, am_url = start_alertmanager(home, f"{url}/api/v1/alerts/alertmanager")
        procs.append(am)
        starts = datetime.now(UTC).isoformat()
        alerts = [
            {
                "labels": {
                    "alertname": "ModelF1Low",
                    "model": f"kill-{i}",
                    "metric": "f1_score",
                    "instance": f"pod-{i}",
                },
                "annotations": {"value": "0.55"},
                "startsAt": starts,
            }
            for i in range(n)
        ]
        httpx.post(f"{am_url}/api/v2/alerts", json=alerts, timeout=60).raise_for_status()
        deadline = time.monotonic() + 120
        while stored(db) < n // 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        intake.proc.kill()
        intake.proc.wait(timeout=10)
        at_kill = stored(db)
        time.sleep(down)
        t0 = time.perf_counter()
        reader = Reader(url).start()
        intake = start_runbooks_intake(home, env, port, log="intake-2.log")
        procs.append(intake)
        up = time.perf_counter() - t0
        deadline = time.monotonic() + 900
        while (count := stored(db)) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
        reader.stop()
        # Then the outbox: every incident's opening delivered, nothing sent twice.
        with get_engine(db).connect() as c:
            for _ in range(240):
                waiting = c.execute(
                    sa.text("select count(*) from outboxevent where delivered_at is null")
                ).scalar_one()
                if not waiting:
                    break
                time.sleep(0.5)
                c.rollback()
        time.sleep(3)
        with get_engine(db).connect() as c:
            rows = c.execute(sa.text("select count(*) from alert")).scalar_one()
            deliveries = c.execute(
                sa.text(
                    "select count(*) from (select distinct fingerprint, starts_at from alert) d"
                )
            ).scalar_one()
            per_group = Counter(
                c.execute(sa.text("select count(*) from incident group by group_key")).scalars()
            )
            incidents = c.execute(sa.text("select id from incident")).scalars().all()
            staged = c.execute(
                sa.text("select id from outboxevent where event = 'ml.incident.opened'")
            ).scalars()
            resent = sum(prefect.ids[str(i)] - 1 for i in staged if prefect.ids[str(i)] > 1)
        # Received per incident, a re-send (same id) included; Prefect keeps one per id.
        opened = Counter(prefect.opened.get(i, 0) for i in incidents)
        sent, failed = notifications(am_url)
        print(
            f"store {store}, {n} alerts in {n} groups through Alertmanager, intake SIGKILLed at "
            f"{at_kill} stored and started again {down:.0f} s later, on {machine()}:"
        )
        print(
            f"  every alert stored {seconds:.1f} s after the restart (intake answering after "
            f"{up:.1f} s); stored {count}"
        )
        print(
            f"  reads meanwhile: {reader.reads}, longest {reader.longest:.2f} s, timed out "
            f"(30 s) {reader.timeouts}, non-200 {sum(reader.errors.values())}"
        )
        print(
            f"  lost {n - deliveries}; alert rows stored twice {rows - deliveries}; groups by "
            f"incidents each {dict(per_group)} (must be {{1: {n}}})"
        )
        print(
            f"  ml.incident.opened received per incident {dict(opened)}; of them sent again "
            f"with the same id (the intake killed between Prefect's answer and its record of "
            f"it) {resent}; staged: one per incident for {len(incidents)}"
        )
        print(f"  Alertmanager webhook sends {sent}, failed {failed}")
        for answer, times in reader.errors.most_common(3):
            print(f"  read answered {times} x: {answer}")
    finally:
        if reader is not None:
            reader.stop()
        for proc in reversed(procs):
            proc.stop()
        prefect.close()
        dispose_all()
        if schema:
            with sa.create_engine(PG_ADMIN).begin() as c:
                c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--alerts", type=int, default=2000)
    ap.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--down", type=float, default=3.0, help="seconds the intake stays down")
    args = ap.parse_args()
    for store in ("sqlite", "postgresql") if args.store == "both" else (args.store,):
        run(store, args.alerts, args.down)


if __name__ == "__main__":
    main()
