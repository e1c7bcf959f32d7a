"""Session fixtures: one Prefect server, one `runbooks serve`, one Alertmanager, one
Kubernetes API emulator, real SQL (SQLite and PostgreSQL). Real processes, stopped by PID.

The environment is set before anything imports Prefect, so in-process flows and the served
ones talk to the same server and the same incident store.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SESSION_HOME = Path(tempfile.mkdtemp(prefix="runbooks-tests-"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"

from deployments.local import (  # noqa: E402
    create_prefect_database,
    drop_prefect_database,
    free_port,
    prefect_env,
    start_alertmanager,
    start_prefect_server,
    start_runbooks_serve,
)
from tests.fake_slack import FakeSlack  # noqa: E402

PREFECT_PORT = free_port()
INTAKE_PORT = free_port()
_env = prefect_env(SESSION_HOME, PREFECT_PORT)
_env.update(
    {
        "RUNBOOKS_HOME": str(SESSION_HOME),
        "RUNBOOKS_DATABASE_URL": f"sqlite:///{SESSION_HOME / 'incidents.db'}",
        "RUNBOOKS_POLICY_FILE": str(SESSION_HOME / "policy.yaml"),
        "RUNBOOKS_INTAKE_TOKEN": "",
        # The served monitoring sweep runs on its schedule; give it an empty source.
        "RUNBOOKS_SWEEP_SOURCE": str(SESSION_HOME / "sweep-source"),
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
)
os.environ.update(_env)
(SESSION_HOME / "sweep-source").mkdir(exist_ok=True)

PG_BASE = os.environ.get("RUNBOOKS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


class KubeEmulator:
    """kmock's stateful Kubernetes API emulator on a real port, in its own event loop."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.url = ""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        from kmock import KubernetesEmulator, Server

        async with KubernetesEmulator() as k, Server(k) as srv:
            self.url = str(srv.url).rstrip("/")
            self._ready.set()
            while not self._stop.is_set():
                await asyncio.sleep(0.05)

    def start(self) -> KubeEmulator:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("Kubernetes emulator did not start in 10 s")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def clients(self):  # type: ignore[no-untyped-def]
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        api = client.ApiClient(cfg)
        return client.CoreV1Api(api), client.AppsV1Api(api)


def make_model(
    core,
    apps,
    namespace: str,
    app: str,
    serving: str,  # type: ignore[no-untyped-def]
    versions: tuple[str, ...] = ("v1", "v2"),
) -> None:
    """A model as a team deploys it: one Deployment per version, a Service picking one.
    Made again (an earlier test's), it is reset: the Service picks `serving`, each version
    runs 2 replicas, so every test starts from the same state whatever ran before."""
    from kubernetes.client.exceptions import ApiException

    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": app, "namespace": namespace},
        "spec": {"selector": {"app": app, "version": serving}, "ports": [{"port": 80}]},
    }
    try:
        core.create_namespaced_service(namespace, service)
    except ApiException as err:
        if err.status != 409:
            raise
        core.patch_namespaced_service(app, namespace, {"spec": service["spec"]})
    for v in versions:
        labels = {"app": app, "version": v}
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": f"{app}-{v}", "namespace": namespace, "labels": labels},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "model", "image": "m"}]},
                },
            },
        }
        try:
            apps.create_namespaced_deployment(namespace, deployment)
        except ApiException as err:
            if err.status != 409:
                raise
            apps.patch_namespaced_deployment_scale(
                f"{app}-{v}", namespace, {"spec": {"replicas": 2}}
            )


@pytest.fixture(scope="session")
def kube() -> Iterator[KubeEmulator]:
    emulator = KubeEmulator().start()
    yield emulator
    emulator.stop()


@pytest.fixture(scope="session")
def sandbox():  # type: ignore[no-untyped-def]
    from sandbox.platform import SandboxPlatform

    with SandboxPlatform(
        models=["fraud-v3", "churn", "pricing", "scaled", "ranker", "recsys"], serve="v1"
    ) as platform:
        yield platform


def write_policy(path: Path, kube_url: str, metrics_url: str) -> None:
    import yaml

    base = yaml.safe_load(
        (Path(__file__).resolve().parent.parent / "runbooks" / "default_policy.yaml").read_text()
    )
    recovery = {
        "metric": "model_f1_score",
        "above": 0.7,
        "url": metrics_url,
        "interval_seconds": 0.3,
        "timeout_seconds": 20,
        "consecutive": 1,
    }
    base["remediation"] = {
        "cooldown_seconds": 600,
        "lock_lease_seconds": 30,
        "lock_wait_seconds": 1,
    }
    base["approval"] = {
        "automatic": {"P1": ["containment"], "P2": [], "P3": []},
        "timeout_seconds": 120,
        "approvers": {s: ["owners", "oncall", "alice"] for s in ("P1", "P2", "P3")},
    }
    # The served escalation sweep judges this session's store every minute: with no chain,
    # deadlines or updates it writes nothing on other tests' incidents. Its own tests
    # (test_escalation.py) run it on their own stores and policies.
    base["routing"] = {"escalation": [], "deadlines": {}}
    base["notifications"] = {"update_minutes": 0}
    base["models"] = {
        name: {
            "owners": ["oncall"],
            "target": {"kind": "kubernetes", "namespace": "ml-prod", "service": name},
            "recovery": recovery,
        }
        for name in ("fraud-v3", "churn", "pricing", "ranker", "recsys", "cancel-me")
    }
    base["models"]["scaled"] = {
        "target": {
            "kind": "kubernetes",
            "namespace": "ml-prod",
            "action": "scale_to_zero",
            "deployment": "scaled-{version}",
        },
        "recovery": recovery,
    }
    path.write_text(yaml.safe_dump(base))


SLACK_TOKEN = "xoxb-session-token-never-shown"


@pytest.fixture(scope="session")
def slack() -> Iterator[FakeSlack]:
    """The Slack Web API the session's served flows talk to (tests/fake_slack.py)."""
    fake = FakeSlack().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def stack(kube: KubeEmulator, sandbox, slack: FakeSlack) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    """Prefect server + `runbooks serve` (intake and served deployments with automations)."""
    from runbooks.settings import get_settings

    os.environ["RUNBOOKS_KUBE_HOST"] = kube.url
    get_settings.cache_clear()
    env = {
        **os.environ,
        "RUNBOOKS_KUBE_HOST": kube.url,
        "RUNBOOKS_SLACK_TOKEN": SLACK_TOKEN,
        "RUNBOOKS_SLACK_BASE_URL": slack.base_url,
    }
    write_policy(SESSION_HOME / "policy.yaml", kube.url, f"{sandbox.url}/metrics")
    # Prefect's own store on PostgreSQL where there is one (CI has): on SQLite the session's
    # server, under every test's runs and the minutely sweep, once stalled a state change
    # for about a minute ("database is locked" retries), and tests waited out their leases.
    prefect_db = f"prefect_tests_{PREFECT_PORT}" if _pg_available() else None
    if prefect_db:
        create_prefect_database(env, prefect_db)
    server = start_prefect_server(SESSION_HOME, env, PREFECT_PORT)
    serve = None
    try:
        serve = start_runbooks_serve(SESSION_HOME, env, INTAKE_PORT)
        yield {
            "intake": f"http://127.0.0.1:{INTAKE_PORT}",
            "api": env["PREFECT_API_URL"],
            "serve": serve,
            "server": server,
            "home": SESSION_HOME,
        }
    finally:
        if serve is not None:
            serve.stop()
        server.stop()
        if prefect_db:
            drop_prefect_database(prefect_db)


@pytest.fixture(scope="session")
def alertmanager(stack: dict) -> Iterator[str]:
    if not (shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")):
        pytest.fail(
            "prometheus-alertmanager is not installed: apt-get install "
            "prometheus-alertmanager (the .ci/run script does)"
        )
    proc, url = start_alertmanager(SESSION_HOME, f"{stack['intake']}/api/v1/alerts/alertmanager")
    try:
        yield url
    finally:
        proc.stop()


def _pg_available() -> bool:
    import sqlalchemy as sa

    try:
        sa.create_engine(
            PG_BASE.replace("postgresql://", "postgresql+psycopg://"),
            connect_args={"connect_timeout": 3},
        ).connect().close()
        return True
    except Exception:  # noqa: BLE001
        return False


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh schema in the `test` database, dropped at the end of the session."""
    import sqlalchemy as sa

    if not _pg_available():
        if os.environ.get("RUNBOOKS_REQUIRE_POSTGRES"):
            pytest.fail(f"PostgreSQL is required but not reachable at {PG_BASE}")
        pytest.skip(f"PostgreSQL not reachable at {PG_BASE}")
    schema = f"runbooks_test_{uuid.uuid4().hex[:8]}"
    base = PG_BASE.replace("postgresql://", "postgresql+psycopg://")
    admin = sa.create_engine(base)
    with admin.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in base else "?"
    yield f"{base}{sep}options=-csearch_path%3D{schema}"
    from runbooks.store import dispose_all

    dispose_all()
    with admin.begin() as c:
        c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty incident store on each backend."""
    import sqlalchemy as sa

    from runbooks.store import get_engine, migrate

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        migrate(url)
        yield url
        return
    url = request.getfixturevalue("pg_url")
    migrate(url)
    yield url
    with get_engine(url).begin() as c:
        c.execute(
            sa.text(
                "TRUNCATE incident, alert, timelineevent, action, approval, "
                "remediationlock, outboxevent, silence, runbookrun, automationpause "
                "RESTART IDENTITY CASCADE"
            )
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # RUNBOOKS_KEEP_TEST_HOME=1 keeps the session's logs and stores to read after a failure.
    if os.environ.get("RUNBOOKS_KEEP_TEST_HOME"):
        print(f"\ntest home kept: {SESSION_HOME}")
        return
    shutil.rmtree(SESSION_HOME, ignore_errors=True)
