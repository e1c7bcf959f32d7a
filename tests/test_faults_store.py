"""The fault matrix on the store and the intake: PostgreSQL restarted mid-storm, and the
intake killed mid-storm while a real Alertmanager keeps sending. Each fault ends with no
alert lost, none stored twice, one incident per group, one ml.incident.opened per incident
at the stand-in for Prefect's events API, and no incident left half made.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlmodel import select

from bench.alert_storm import CountingPrefect, alert, webhook
from deployments.local import ManagedProcess, free_port, start_alertmanager, start_runbooks_intake
from runbooks.models import Alert, Incident, OutboxEvent, TimelineEvent
from runbooks.store import dispose_all, session_scope
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "runbooks" / "default_policy.yaml"
SENDER_TIMEOUT = 10.0  # Alertmanager's webhook timeout


def pg_binary(name: str) -> str | None:
    found = shutil.which(name) or shutil.which(name, path="/usr/local/bin")
    if found:
        return found
    # Debian's postgresql package keeps them off PATH, one directory per major version.
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_major)
    return versions[-1] if versions else None


def _major(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


class ThrowawayPostgres:
    """A PostgreSQL cluster of the test's own, in a temp dir on a free port. PostgreSQL
    will not run as root: then initdb and pg_ctl run as `postgres` (Debian's package makes
    that user) or, without one, as `nobody`, owning the data directory."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            pytest.skip("initdb/pg_ctl not found: apt-get install postgresql")
        self.prefix: list[str] = []
        uid = gid = None
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                user = pwd.getpwnam("nobody")
            uid, gid = user.pw_uid, user.pw_gid
            self.prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        self.home = Path(tempfile.mkdtemp(prefix="runbooks-pg-"))
        if uid is not None:
            os.chown(self.home, uid, gid)
        self.data = self.home / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.run(self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def run(self, *argv: str) -> None:
        r = subprocess.run(
            [*self.prefix, *argv], capture_output=True, text=True, timeout=60, cwd=self.home
        )
        if r.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")

    def pg_ctl_(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1"
        self.run(
            self.pg_ctl, action, "-D", str(self.data), "-l", str(self.home / "log"), "-w",
            "-o", options, *extra,
        )  # fmt: skip

    def start(self) -> None:
        self.pg_ctl_("start")

    def stop(self, mode: str = "fast") -> None:
        self.pg_ctl_("stop", "-m", mode)

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[ThrowawayPostgres]:
    cluster = ThrowawayPostgres()
    try:
        cluster.start()
        yield cluster
    finally:
        dispose_all()
        cluster.remove()


@dataclass
class Sender:
    """Posts webhooks as Alertmanager does: a 10 s timeout, and a post that failed
    (connection error, timeout, 5xx, 429) is sent again with backoff until it is taken."""

    url: str
    acknowledged: set[str] = field(default_factory=set)
    refusals: list[tuple[int, str, float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, client: httpx.Client, body: dict) -> None:
        delay = 0.2
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                r = client.post(self.url, json=body, timeout=SENDER_TIMEOUT)
            except httpx.HTTPError as err:
                with self.lock:
                    self.refusals.append((0, type(err).__name__, time.monotonic() - t0, ""))
            else:
                if r.status_code < 300:
                    with self.lock:
                        self.acknowledged.update(a["labels"]["instance"] for a in body["alerts"])
                    return
                assert r.status_code in (429, 500, 502, 503, 504), (r.status_code, r.text)
                with self.lock:
                    self.refusals.append(
                        (
                            r.status_code,
                            r.text,
                            time.monotonic() - t0,
                            r.headers.get("retry-after", ""),
                        )
                    )
                if r.headers.get("retry-after", "").isdigit():
                    delay = min(float(r.headers["retry-after"]), 5.0)
            time.sleep(delay)
            delay = min(delay * 1.5, 2.0)
        raise AssertionError(f"a post was not taken in 120 s; last refusals {self.refusals[-3:]}")


def counts(db: str) -> dict[str, int]:
    """What the store holds, and each way an incident could be left half made."""
    with session_scope(db) as s:
        alerts = s.exec(select(Alert.fingerprint, Alert.starts_at, Alert.incident_id)).all()
        incidents = s.exec(select(Incident)).all()
        opened_lines = Counter(
            s.exec(select(TimelineEvent.incident_id).where(TimelineEvent.kind == "opened")).all()
        )
        events = s.exec(select(OutboxEvent)).all()
    opened_events = Counter(
        e.payload.get("incident_id") for e in events if e.event == "ml.incident.opened"
    )
    with_alerts = {a.incident_id for a in alerts}
    return {
        "alerts": len(alerts),
        "distinct deliveries": len({(a.fingerprint, a.starts_at) for a in alerts}),
        "incidents": len(incidents),
        "groups": len({i.group_key for i in incidents}),
        "alerts without incident": sum(a.incident_id is None for a in alerts),
        "incidents without alerts": sum(i.id not in with_alerts for i in incidents),
        "open incidents not holding their group": sum(
            i.status == "open" and i.open_group_key != i.group_key for i in incidents
        ),
        "incidents without exactly one opened line": sum(
            opened_lines[i.id] != 1 for i in incidents
        ),
        "incidents without exactly one opened event": sum(
            opened_events[i.id] != 1 for i in incidents
        ),
        "undelivered events": sum(e.delivered_at is None for e in events),
    }


def stored_instances(db: str) -> set[str]:
    with session_scope(db) as s:
        return {labels["instance"] for labels in s.exec(select(Alert.labels)).all()}


HALF_MADE = ("without incident", "without alerts", "their group", "opened line", "opened event")


def assert_whole(db: str, n: int, groups: int, prefect: CountingPrefect) -> None:
    """All n alerts stored once, one incident per group, each whole, each announced once."""
    # 45 s: an event held by a killed intake goes out again when its 30 s claim lapses.
    wait_for(lambda: counts(db)["undelivered events"] == 0, 45, 0.3, "the outbox to drain")
    time.sleep(2)  # a second send of anything would arrive now
    got = counts(db)
    assert got["alerts"] == got["distinct deliveries"] == n, got
    assert got["incidents"] == got["groups"] == groups, got
    half_made = {k: v for k, v in got.items() if k.endswith(HALF_MADE)}
    assert not any(half_made.values()), got
    with session_scope(db) as s:
        ids = set(s.exec(select(Incident.id)).all())
        staged = {
            e.payload["incident_id"]: e.id
            for e in s.exec(select(OutboxEvent).where(OutboxEvent.event == "ml.incident.opened"))
        }
    # Each incident's one opening reached the stand-in, and every opening it got for that
    # incident carried that one event id. An event sent again (its intake killed, or its
    # store gone, between Prefect's answer and the record of it) has the same id, and
    # Prefect keeps one event and fires its automations once per id.
    assert set(staged) == ids and set(prefect.opened) == ids, (len(staged), len(prefect.opened))
    for incident_id, event_id in staged.items():
        assert prefect.ids[event_id] == prefect.opened[incident_id] >= 1, incident_id


def intake_env(home: Path, db: str, prefect: CountingPrefect) -> dict[str, str]:
    return {
        **os.environ,
        "RUNBOOKS_HOME": str(home),
        "RUNBOOKS_DATABASE_URL": db,
        "RUNBOOKS_POLICY_FILE": str(DEFAULT_POLICY),
        "PREFECT_API_URL": prefect.api,
        # No runbook runs here: the watchdog would announce every incident again.
        "RUNBOOKS_RUNBOOK_START_SECONDS": "86400",
        "RUNBOOKS_OUTBOX_RETRY_SECONDS": "0.5",
    }


N_STORM, PER_POST = 1000, 5  # over 60 groups (alert_storm's 20 models x 3 metrics)


def test_postgres_restarted_mid_storm_loses_no_alert_and_leaves_incidents_whole(
    postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    prefect = CountingPrefect()
    port = free_port()
    intake = start_runbooks_intake(tmp_path, intake_env(tmp_path, postgres.url, prefect), port)
    sender = Sender(f"http://127.0.0.1:{port}/api/v1/alerts/alertmanager")
    starts = datetime.now(UTC).isoformat()
    posts = [
        webhook([alert(i, starts) for i in range(k, k + PER_POST)])
        for k in range(0, N_STORM, PER_POST)
    ]

    def lane(chunk: list[dict]) -> None:
        with httpx.Client() as client:
            for body in chunk:
                sender.send(client, body)
                time.sleep(0.02)  # a storm over seconds, so that the restart lands inside

    try:
        with ThreadPoolExecutor(4) as pool:
            lanes = [pool.submit(lane, posts[k::4]) for k in range(4)]
            wait_for(lambda: len(sender.acknowledged) >= N_STORM // 3, 30, 0.05, "a third")
            before = set(sender.acknowledged)
            postgres.stop("fast")
            time.sleep(2)  # down long enough that posts meet it down, not just a blip
            postgres.start()
            for f in lanes:
                f.result()
        assert before <= stored_instances(postgres.url), "acknowledged before the restart, lost"
        assert len(sender.acknowledged) == N_STORM
        assert stored_instances(postgres.url) == {f"pod-{i}" for i in range(N_STORM)}
        assert_whole(postgres.url, N_STORM, 60, prefect)
        # While the store was down the intake said so, at once, and asked for a retry.
        hung = [r for r in sender.refusals if "Timeout" in r[1]]
        assert not hung, f"{len(hung)} posts waited past the sender's {SENDER_TIMEOUT:.0f} s"
        answered = [r for r in sender.refusals if r[0]]
        assert answered, f"no post met the store down; refusals {sender.refusals[:5]}"
        for status, text, seconds, retry_after in answered:
            assert status == 503 and retry_after.isdigit(), (status, text)
            assert "incident store is unreachable" in text and "send it again" in text, text
            assert seconds < SENDER_TIMEOUT / 2, f"a refusal took {seconds:.1f} s"
        assert "Exception in ASGI application" not in intake.log.read_text(), intake.tail(40)
    finally:
        intake.stop()
        prefect.close()


N_AM, GROUPS_AM = 400, 20


def test_intake_killed_mid_storm_alertmanager_retries_deliver_everything(tmp_path: Path) -> None:
    prefect = CountingPrefect()
    db = f"sqlite:///{tmp_path / 'incidents.db'}"
    env = intake_env(tmp_path, db, prefect)
    port = free_port()
    intake = start_runbooks_intake(tmp_path, env, port)
    am, am_url = start_alertmanager(tmp_path, f"http://127.0.0.1:{port}/api/v1/alerts/alertmanager")
    starts = datetime.now(UTC).isoformat()
    alerts = [
        {
            "labels": {
                "alertname": "ModelF1Low",
                "model": f"am-{i % GROUPS_AM}",
                "metric": "f1_score",
                "instance": f"pod-{i}",
            },
            "annotations": {"value": "0.55"},
            "startsAt": starts,
        }
        for i in range(N_AM)
    ]
    pushed = threading.Event()

    def push() -> None:
        for k in range(0, N_AM, 20):  # 20 batches over ~4 s
            httpx.post(
                f"{am_url}/api/v2/alerts", json=alerts[k : k + 20], timeout=10
            ).raise_for_status()
            time.sleep(0.2)
        pushed.set()

    restarted: list[ManagedProcess] = []
    try:
        pusher = threading.Thread(target=push, daemon=True)
        pusher.start()
        wait_for(lambda: counts(db)["alerts"] >= N_AM // 4, 30, 0.05, "a quarter stored")
        intake.proc.kill()  # SIGKILL, mid-storm; Alertmanager goes on sending
        intake.proc.wait(timeout=5)
        at_kill = counts(db)["alerts"]
        time.sleep(3)
        restarted.append(start_runbooks_intake(tmp_path, env, port, log="intake-2.log"))
        pusher.join(timeout=30)
        assert pushed.is_set()
        assert at_kill < N_AM, "the intake stored everything before it was killed"
        wait_for(lambda: counts(db)["alerts"] >= N_AM, 30, 0.2, "Alertmanager's retries")
        assert stored_instances(db) == {f"pod-{i}" for i in range(N_AM)}
        assert_whole(db, N_AM, GROUPS_AM, prefect)
    finally:
        for proc in restarted:
            proc.stop()
        intake.stop()
        am.stop()
        prefect.close()
        dispose_all()
