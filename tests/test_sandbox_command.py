"""`runbooks sandbox` as a user runs it: a real process that announces its stack in one JSON
line, answers the CLI from another environment, and stops everything on SIGTERM."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI_ENV_KEYS = {
    "RUNBOOKS_HOME",
    "RUNBOOKS_POLICY_FILE",
    "RUNBOOKS_DATABASE_URL",
    "RUNBOOKS_INTAKE_URL",
    "RUNBOOKS_INTAKE_TOKEN",
    "PREFECT_API_URL",
}


def runbooks(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deployments.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def another_shell(stack_env: dict[str, str]) -> dict[str, str]:
    """A shell with none of this session's settings, only what the sandbox announced."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RUNBOOKS_"))}
    return {**clean, **stack_env}


def read_line(stream: IO[str], timeout: float) -> str:
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: lines.put(stream.readline()), daemon=True).start()
    return lines.get(timeout=timeout)


@pytest.fixture
def sandbox_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    log = tmp_path / "sandbox.stderr"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deployments.cli", "sandbox", "--models", "a,b"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    try:
        yield proc, log
    finally:
        # A failed assertion must not leave the stack behind: the sandbox stops its own parts.
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow
def test_sandbox_announces_a_stack_the_cli_can_use_and_stops_it_on_sigterm(
    sandbox_process: tuple[subprocess.Popen[str], Path],
) -> None:
    proc, log = sandbox_process
    assert proc.stdout is not None
    try:
        line = read_line(proc.stdout, timeout=90)
    except queue.Empty:
        pytest.fail(f"no JSON line in 90 s; stderr:\n{log.read_text()}")
    assert line, f"the sandbox exited with {proc.poll()}; stderr:\n{log.read_text()}"
    stack = json.loads(line)
    assert set(stack) == {"prefect_url", "intake_url", "token", "platform_url", "models", "env"}
    assert stack["models"] == ["a", "b"]
    assert set(stack["env"]) == CLI_ENV_KEYS
    assert stack["env"]["RUNBOOKS_INTAKE_TOKEN"] == stack["token"]
    status = httpx.get(f"{stack['platform_url']}/api/v1/ml/models/b/status", timeout=5).json()
    assert (status["currentVersion"], status["versions"]) == ("v1", ["v1", "v2"])

    env = another_shell(stack["env"])
    listed = runbooks("incidents", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["items"] == []
    paused = runbooks("automation", "status", "--json", env=env)
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout) == []

    alert = {
        "model": "a",
        "alertname": "ModelF1Low",
        "metric": "f1_score",
        "value": 0.55,
        "baseline": 0.88,
        "severity": "critical",
        "labels": {"version": "v2"},
    }
    alerts_url = f"{stack['intake_url']}/api/v1/alerts"
    assert httpx.post(alerts_url, json=alert, timeout=10).status_code == 401
    auth = {"Authorization": f"Bearer {stack['token']}"}
    httpx.post(alerts_url, json=alert, headers=auth, timeout=10).raise_for_status()
    listed = runbooks("incidents", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert [i["model"] for i in json.loads(listed.stdout)["items"]] == ["a"]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, log.read_text()
    assert proc.stdout.read() == "", "one JSON line on stdout, nothing more"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{stack['prefect_url']}/api/health", timeout=2)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{stack['intake_url']}/healthz", timeout=2)
    assert not Path(stack["env"]["RUNBOOKS_HOME"]).exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--policy", "/nonexistent/policy.yaml"], "--policy"),
        (["--models", "fraud v3"], "--models"),
    ],
)
def test_bad_sandbox_input_exits_2_naming_the_option_and_starts_nothing(
    args: list[str], named: str
) -> None:
    homes = set(Path(tempfile.gettempdir()).glob("runbooks-sandbox-*"))
    result = runbooks("sandbox", *args)
    assert result.returncode == 2
    assert result.stderr.startswith(f"runbooks sandbox: {named}")
    assert result.stdout == ""
    assert set(Path(tempfile.gettempdir()).glob("runbooks-sandbox-*")) == homes


def test_the_channels_settings_reach_the_stack_and_another_stacks_do_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from deployments.sandbox import cli_env, stack_env

    monkeypatch.setenv("RUNBOOKS_SLACK_TOKEN", "xoxb-harness")
    monkeypatch.setenv("RUNBOOKS_SLACK_BASE_URL", "http://127.0.0.1:9/api/")
    monkeypatch.setenv("RUNBOOKS_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("RUNBOOKS_PAGERDUTY_URL", "http://127.0.0.1:9/v2/enqueue")
    monkeypatch.setenv("RUNBOOKS_DATABASE_URL", "postgresql+psycopg://elsewhere/prod")
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.elsewhere/api")
    env = stack_env(cli_env(tmp_path, 4200, "http://127.0.0.1:8080", "t"), tmp_path, 4200)
    assert env["RUNBOOKS_SLACK_TOKEN"] == "xoxb-harness"
    assert env["RUNBOOKS_SLACK_BASE_URL"] == "http://127.0.0.1:9/api/"
    assert env["RUNBOOKS_SMTP_HOST"] == "127.0.0.1"
    assert env["RUNBOOKS_PAGERDUTY_URL"] == "http://127.0.0.1:9/v2/enqueue"
    assert env["RUNBOOKS_DATABASE_URL"] == f"sqlite:///{tmp_path / 'incidents.db'}"
    assert env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
