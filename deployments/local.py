"""Local processes for the demo, the tests and the benchmarks: a Prefect server, the
runbooks service, Alertmanager. Each runs in its own process group and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ManagedProcess:
    """A child process in its own session, so stopping it stops everything it started."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.log = log
        self._fh = log.open("ab")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_http(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; "
                    f"see {self.log}:\n{self.tail()}"
                )
            try:
                if httpx.get(url, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.name} not ready at {url} after {timeout:.0f} s; see {self.log}:\n{self.tail()}"
        )

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        # Children that outlived their leader (e.g. a flow run) go with the group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._fh.close()


# The benches' PostgreSQL (trust auth on this machine, as in CI): an admin connection to
# create and drop a database for a Prefect server.
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def create_prefect_database(env: dict[str, str], name: str) -> None:
    """A new PostgreSQL database `name` for the Prefect server that `env` starts."""
    import sqlalchemy as sa  # here: the demo and the CLI never need it

    with sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT").connect() as c:
        c.execute(sa.text(f"CREATE DATABASE {name}"))
    env["PREFECT_API_DATABASE_CONNECTION_URL"] = (
        f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    )


def drop_prefect_database(name: str) -> None:
    import sqlalchemy as sa

    with sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT").connect() as c:
        c.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))


def prefect_env(home: Path, port: int, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(base if base is not None else os.environ)
    env.update(
        {
            "PREFECT_HOME": str(home / "prefect"),
            "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_LOGGING_LEVEL": env.get("PREFECT_LOGGING_LEVEL", "INFO"),
        }
    )
    env.setdefault(
        "PREFECT_API_DATABASE_CONNECTION_URL",
        f"sqlite+aiosqlite:///{home / 'prefect' / 'prefect.db'}",
    )
    return env


def start_prefect_server(
    home: Path, env: dict[str, str], port: int, timeout: float = 90
) -> ManagedProcess:
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    proc = ManagedProcess(
        "prefect server",
        [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        home / "prefect.log",
    )
    proc.wait_http(f"http://127.0.0.1:{port}/api/health", timeout)
    return proc


def start_runbooks_serve(
    home: Path,
    env: dict[str, str],
    port: int,
    timeout: float = 60,
    extra_args: list[str] | None = None,
) -> ManagedProcess:
    """`runbooks serve`, ready when the intake answers and both deployments exist."""
    root = Path(__file__).resolve().parent.parent
    proc = ManagedProcess(
        "runbooks serve",
        [
            sys.executable,
            "-m",
            "deployments.cli",
            "serve",
            "--port",
            str(port),
            *(extra_args or []),
        ],
        env,
        home / "serve.log",
        cwd=root,
    )
    proc.wait_http(f"http://127.0.0.1:{port}/healthz", timeout)
    # Ready when every deployment of prefect.yaml and each of its triggers' automations
    # exist: an event sent before its automation is there starts nothing.
    declared = yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]
    deployed = {d["name"] for d in declared}
    triggered = {
        f"{d['name']}__automation_{n}"
        for d in declared
        for n in range(1, len(d.get("triggers") or []) + 1)
    }
    api = env["PREFECT_API_URL"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.post(f"{api}/deployments/filter", json={"limit": 50}, timeout=5)
        names = {d["name"] for d in r.json()} if r.status_code == 200 else set()
        a = httpx.post(f"{api}/automations/filter", json={}, timeout=5)
        automations = {x["name"] for x in a.json()} if a.status_code == 200 else set()
        if deployed <= names and triggered <= automations:
            return proc
        time.sleep(0.2)
    proc.stop()
    raise RuntimeError(f"deployments not registered after {timeout:.0f} s:\n{proc.tail()}")


def start_runbooks_intake(
    home: Path, env: dict[str, str], port: int, timeout: float = 60, log: str = "intake.log"
) -> ManagedProcess:
    """`runbooks serve-intake` alone, ready when /healthz answers (its store migrated)."""
    root = Path(__file__).resolve().parent.parent
    proc = ManagedProcess(
        "runbooks serve-intake",
        [sys.executable, "-m", "deployments.cli", "serve-intake", "--port", str(port)],
        env,
        home / log,
        cwd=root,
    )
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/healthz", timeout)
    except RuntimeError:
        proc.stop()
        raise
    return proc


def start_alertmanager(
    home: Path, receiver: str, timeout: float = 20
) -> tuple[ManagedProcess, str]:
    """A prometheus-alertmanager of its own that sends every group to `receiver` (an
    intake's webhook URL) at once and again each second while it takes new alerts."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        raise RuntimeError(
            "prometheus-alertmanager is not installed: apt-get install prometheus-alertmanager"
        )
    port = free_port()
    am = home / f"alertmanager-{port}"
    am.mkdir(parents=True)
    (am / "alertmanager.yml").write_text(f"""
route:
  receiver: runbooks
  group_by: [alertname, model]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
- name: runbooks
  webhook_configs:
  - url: {receiver}
    send_resolved: true
""")
    proc = ManagedProcess(
        "alertmanager",
        [
            binary,
            f"--config.file={am / 'alertmanager.yml'}",
            f"--storage.path={am}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        dict(os.environ),
        am / "alertmanager.log",
    )
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/-/ready", timeout)
    except RuntimeError:
        proc.stop()
        raise
    return proc, f"http://127.0.0.1:{port}"


def p99(values: list[float]) -> float:
    """The benches' 99th percentile: the sample at that rank (no interpolation)."""
    return sorted(values)[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]


def machine() -> str:
    """The CPUs a figure was measured on, for the benches' first line: "2 x AMD EPYC"."""
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{os.cpu_count()} x {names[0] if names else 'unknown CPU'}"


@contextlib.contextmanager
def pg_schema(admin_url: str = PG_ADMIN, prefix: str = "bench") -> Iterator[str]:
    """A throwaway PostgreSQL schema for a bench: the URL of a store inside it, dropped
    (with every connection to it closed) on the way out."""
    import uuid

    import sqlalchemy as sa

    from runbooks.store import dispose_all

    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url)
    with admin.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in admin_url else "?"
    try:
        yield f"{admin_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        dispose_all()
        with admin.begin() as c:
            c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
