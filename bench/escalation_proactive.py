"""The other way to run the escalation clock: a Prefect proactive automation, measured.

Issue 10 asks for the escalation sweep or a proactive automation (`posture: Proactive`,
`after: ml.incident.opened`, `expect: ml.incident.acknowledged`, `within`, `for_each` per
incident), measured both ways. This starts a Prefect server, creates that automation (the
action is `do-nothing`: the firing itself, Prefect's `prefect.automation.triggered` event,
is what is timed), sends N `ml.incident.opened` events at once and acknowledges every
second incident two seconds later. Then it reads the firings and prints how many
unacknowledged incidents fired (all should), how many acknowledged ones fired (none
should), duplicates, and how late each firing came after its deadline (opened's `occurred`
+ `within`).

    ./run bench escalation_proactive [--incidents 200] [--within 15] [--prefect-postgres]

The sweep it is weighed against is `./run bench escalation_check` (the sweep's query) and
the `escalation-sweep` deployment's 60 s interval.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deployments.local import (  # noqa: E402
    create_prefect_database,
    drop_prefect_database,
    free_port,
    machine,
    prefect_env,
    start_prefect_server,
)


def event(name: str, incident: int, at: datetime) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "occurred": at.isoformat(),
        "event": name,
        "resource": {"prefect.resource.id": f"ml.incident.{incident}"},
        "payload": {},
    }


def send(api: str, events: list[dict]) -> None:
    for i in range(0, len(events), 100):
        httpx.post(f"{api}/events", json=events[i : i + 100], timeout=30).raise_for_status()


def firings(api: str, automation_id: str, since: datetime) -> list[dict]:
    body = {
        "filter": {
            "occurred": {"since": since.isoformat(), "until": datetime.now(UTC).isoformat()},
            "event": {"name": ["prefect.automation.triggered"]},
            "resource": {"id": [f"prefect.automation.{automation_id}"]},
        },
        "limit": 50,  # the API's page size at most
    }
    r = httpx.post(f"{api}/events/filter", json=body, timeout=30)
    r.raise_for_status()
    page = r.json()
    out = list(page["events"])
    while page.get("next_page"):
        r = httpx.get(page["next_page"], timeout=30)
        r.raise_for_status()
        page = r.json()
        out += page["events"]
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def run(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="runbooks-proactive-"))
    port = free_port()
    env = prefect_env(home, port)
    pg_db = None
    if args.prefect_postgres:
        pg_db = f"prefect_proactive_{port}"
        create_prefect_database(env, pg_db)
    server = start_prefect_server(home, env, port)
    api = env["PREFECT_API_URL"]
    try:
        automation = httpx.post(
            f"{api}/automations/",
            json={
                "name": "escalate-unacknowledged",
                "enabled": True,
                "trigger": {
                    "type": "event",
                    "posture": "Proactive",
                    "match": {"prefect.resource.id": "ml.incident.*"},
                    "after": ["ml.incident.opened"],
                    "expect": ["ml.incident.acknowledged"],
                    "for_each": ["prefect.resource.id"],
                    "threshold": 1,
                    "within": args.within,
                },
                "actions": [{"type": "do-nothing"}],
            },
            timeout=30,
        )
        automation.raise_for_status()
        automation_id = automation.json()["id"]
        time.sleep(6)  # the triggers service loads automations on change; give it a cycle
        t0 = datetime.now(UTC)
        send(api, [event("ml.incident.opened", i, t0) for i in range(args.incidents)])
        time.sleep(2)
        acked = set(range(0, args.incidents, 2))
        send(api, [event("ml.incident.acknowledged", i, datetime.now(UTC)) for i in acked])
        deadline = t0 + timedelta(seconds=args.within)
        time.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()) + args.wait)
        fired = firings(api, automation_id, t0 - timedelta(seconds=5))
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
        if pg_db:
            drop_prefect_database(pg_db)

    per: dict[int, list[datetime]] = {}
    for f in fired:
        label = (f["payload"].get("triggering_labels") or {}).get("prefect.resource.id", "")
        if label.startswith("ml.incident."):
            at = datetime.fromisoformat(f["occurred"].replace("Z", "+00:00"))
            per.setdefault(int(label.rsplit(".", 1)[1]), []).append(at)
    unacked = set(range(args.incidents)) - acked
    late = [(min(per[i]) - deadline).total_seconds() for i in unacked if i in per]
    where = "PostgreSQL" if args.prefect_postgres else "SQLite"
    print(
        f"proactive automation, Prefect server on {where}, {args.incidents} incidents opened "
        f"at once, {len(acked)} acknowledged 2 s later, within {args.within} s ({machine()}):"
    )
    print(
        f"  unacknowledged that fired: {len(late)} of {len(unacked)}; acknowledged that "
        f"fired: {len(acked & set(per))} of {len(acked)}; incidents with more than one "
        f"firing: {sum(1 for v in per.values() if len(v) > 1)}"
    )
    if late:
        print(
            f"  firing after the deadline: median {statistics.median(late):.1f} s, "
            f"p99 {pct(late, 0.99):.1f} s, max {max(late):.1f} s "
            f"(load average {os.getloadavg()[0]:.2f})"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--incidents", type=int, default=200)
    ap.add_argument("--within", type=int, default=15)
    ap.add_argument("--wait", type=float, default=30, help="seconds to wait past the deadline")
    ap.add_argument("--prefect-postgres", action="store_true")
    run(ap.parse_args())


if __name__ == "__main__":
    main()
