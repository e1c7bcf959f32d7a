"""Intake throughput: a burst of 2,000 alerts over 4 connections to `runbooks serve-intake`,
on SQLite and on PostgreSQL. Every alert must be persisted before its 202.

    ./run bench intake_burst [N] [--postgres URL]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deployments.local import ManagedProcess, free_port, pg_schema  # noqa: E402
from runbooks.store import get_engine  # noqa: E402

CONNECTIONS = 4


def burst(intake: str, n: int) -> tuple[float, int]:
    def post(chunk: range) -> int:
        ok = 0
        with httpx.Client(base_url=intake, timeout=30) as c:
            for i in chunk:
                r = c.post(
                    "/api/v1/alerts",
                    json={
                        "model": f"model-{i % 20}",
                        "alertname": f"Alert{i % 7}",
                        "metric": "psi",
                        "value": 0.4,
                        "labels": {"n": str(i)},
                    },
                )
                ok += r.status_code == 202
        return ok

    chunks = [range(k, n, CONNECTIONS) for k in range(CONNECTIONS)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONNECTIONS) as pool:
        accepted = sum(pool.map(post, chunks))
    return time.perf_counter() - t0, accepted


def run(label: str, db_url: str, n: int, home: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "RUNBOOKS_DATABASE_URL": db_url,
        "RUNBOOKS_HOME": str(home),
        "PREFECT_API_URL": "",
    }
    proc = ManagedProcess(
        "intake",
        [sys.executable, "-m", "deployments.cli", "serve-intake", "--port", str(port)],
        env,
        home / f"{label}.log",
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/healthz", 30)
        seconds, accepted = burst(f"http://127.0.0.1:{port}", n)
    finally:
        proc.stop()
    with get_engine(db_url).connect() as c:
        stored = c.execute(sa.text("select count(*) from alert")).scalar_one()
        incidents = c.execute(sa.text("select count(*) from incident")).scalar_one()
    print(
        f"{label:<10} {n} alerts in {seconds:.2f} s = {n / seconds:,.0f} alerts/s; "
        f"accepted {accepted}, stored {stored}, lost {n - stored}, incidents {incidents}"
    )


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if args else 2000
    home = Path(tempfile.mkdtemp(prefix="runbooks-burst-"))
    try:
        run("sqlite", f"sqlite:///{home / 'incidents.db'}", n, home)
        with pg_schema() as url:
            run("postgresql", url, n, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
