"""The intake's client (tasks/intake_client.py) against a real `runbooks serve-intake`:
the bearer token from the environment, the intake's own words on a refusal, the URL and
where it came from when nothing answers."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Iterator

import pytest

from deployments.cli import main as cli
from deployments.local import ManagedProcess, free_port
from deployments.serve import PROJECT_ROOT
from runbooks.policy import DEFAULT_POLICY
from tasks.intake_client import IntakeClient, IntakeRefused, IntakeUnreachable, transient

TOKEN = "client-token"
ALERT = {"model": "client-m", "alertname": "ModelF1Low", "metric": "f1_score", "value": 0.5}


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real intake with its own store and a token; no Prefect API (events wait)."""
    home = tmp_path_factory.mktemp("client-intake")
    port = free_port()
    env = {
        **os.environ,
        "RUNBOOKS_HOME": str(home),
        "RUNBOOKS_DATABASE_URL": f"sqlite:///{home / 'incidents.db'}",
        "RUNBOOKS_POLICY_FILE": str(DEFAULT_POLICY),
        "RUNBOOKS_INTAKE_TOKEN": TOKEN,
        "PREFECT_API_URL": "",
    }
    proc = ManagedProcess(
        "intake",
        [sys.executable, "-m", "deployments.cli", "serve-intake", "--port", str(port)],
        env,
        home / "intake.log",
        cwd=PROJECT_ROOT,
    )
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/healthz", 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture
def token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_INTAKE_TOKEN", TOKEN)


def test_url_and_token_come_from_the_environment(
    intake: str, token_in_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNBOOKS_INTAKE_URL", intake + "/")
    client = IntakeClient()
    assert (client.url, client.token) == (intake, TOKEN)
    (incident_id,) = client.post_alerts(ALERT)["incidents"]
    assert client.get_incident(incident_id)["model"] == "client-m"
    assert [i["id"] for i in client.incidents_of("client-m")] == [incident_id]


def test_a_refusal_keeps_the_intakes_words_and_names_the_url(intake: str) -> None:
    with pytest.raises(IntakeRefused) as refused:
        IntakeClient(intake, "wrong-token").get_incident(1)
    assert refused.value.response.status_code == 401
    assert str(refused.value).startswith(f"GET {intake}/api/v1/incidents/1 -> 401: ")
    assert refused.value.error and refused.value.error in str(refused.value)
    assert not transient(refused.value)
    again = pickle.loads(pickle.dumps(refused.value))
    assert (str(again), again.error) == (str(refused.value), refused.value.error)


def test_bad_input_is_refused_with_the_field_named(intake: str) -> None:
    with pytest.raises(IntakeRefused) as refused:
        IntakeClient(intake, TOKEN).post_alerts({"alertname": "NoModel"})
    assert refused.value.response.status_code == 422 and "model" in refused.value.error


def test_nothing_answering_names_the_url_and_where_it_came_from() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(IntakeUnreachable) as lost:
        IntakeClient(dead, "", url_from="--url").list_incidents()
    message = str(lost.value)
    assert f"intake at {dead}/api/v1/incidents did not answer" in message
    assert message.endswith("Check --url") and lost.value.reason
    assert transient(lost.value)


def test_incidents_command_prints_the_intakes_refusal_and_exits_1(
    intake: str, capsys: pytest.CaptureFixture[str], token_in_env: None
) -> None:
    assert cli(["incidents", "999999", "--url", intake]) == 1
    assert "999999" in capsys.readouterr().err
    assert cli(["incidents", "--url", intake]) == 0


def test_silence_command_names_an_intake_that_does_not_answer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    assert cli(["silence", "--url", dead, "query"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"cannot reach the intake at {dead}: ")
    assert out.rstrip().endswith("set --url or RUNBOOKS_INTAKE_URL")


def test_incidents_command_names_an_intake_that_does_not_answer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    assert cli(["incidents", "--url", dead]) == 1
    err = capsys.readouterr().err
    assert f"intake at {dead}/api/v1/incidents did not answer" in err
    assert "Traceback" not in err and "--url or RUNBOOKS_INTAKE_URL" in err


def test_the_client_imports_no_prefect() -> None:
    code = "import sys, tasks.intake_client; print('prefect' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False", "the CLI's intake commands should not pay for Prefect"
