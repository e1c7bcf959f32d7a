"""The sandbox model platform behaves like a platform whose metrics answer to rollback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sandbox.platform import SandboxPlatform, train_version

MODEL = "fraud-v3"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def serving_v1() -> Iterator[SandboxPlatform]:
    with SandboxPlatform(models=[MODEL], seed=7, serve="v1") as platform:
        yield platform


@pytest.fixture
def serving_v2() -> Iterator[SandboxPlatform]:
    with SandboxPlatform(models=[MODEL], seed=7, serve="v2") as platform:
        yield platform


def _status(platform: SandboxPlatform, model: str = MODEL) -> dict:
    response = httpx.get(f"{platform.url}/api/v1/ml/models/{model}/status", timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def _f1(platform: SandboxPlatform) -> float:
    return _status(platform)["metrics"]["f1_score"]


def _wait_for(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until `condition` held; fails the test after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def _metrics(platform: SandboxPlatform) -> dict[tuple[str, tuple], float]:
    response = httpx.get(f"{platform.url}/metrics", timeout=5)
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_v1_scores_well_and_v2_is_a_bad_release(
    serving_v1: SandboxPlatform, serving_v2: SandboxPlatform
) -> None:
    for _ in range(5):
        assert _f1(serving_v1) >= 0.75
        assert _f1(serving_v2) <= 0.65
        time.sleep(0.2)
    assert _status(serving_v1)["metrics"]["window"] == 2000


def test_deploying_v2_drops_f1_and_rollback_recovers_within_3s(
    serving_v1: SandboxPlatform,
) -> None:
    models = f"{serving_v1.url}/api/v1/ml/models/{MODEL}"
    deployed = httpx.post(f"{models}/deploy", json={"version": "v2"}, timeout=5).json()
    assert (deployed["currentVersion"], deployed["previousVersion"]) == ("v2", "v1")
    _wait_for(lambda: _f1(serving_v1) <= 0.65, timeout=3)

    rolled = httpx.post(f"{models}/rollback", json={"targetVersion": "v1"}, timeout=5).json()
    assert rolled["changed"] is True
    assert (rolled["currentVersion"], rolled["previousVersion"]) == ("v1", "v2")
    _wait_for(lambda: _f1(serving_v1) >= 0.75, timeout=3)

    gauges = _metrics(serving_v1)
    assert gauges[("model_f1_score", (("model", MODEL), ("version", "v1")))] >= 0.75
    assert gauges[("model_serving_version_info", (("model", MODEL), ("version", "v1")))] == 1


def test_repeated_rollback_answers_unchanged_and_counts_once(
    serving_v2: SandboxPlatform,
) -> None:
    url = f"{serving_v2.url}/api/v1/ml/models/{MODEL}/rollback"
    first = httpx.post(url, json={"targetVersion": "v1"}, timeout=5)
    second = httpx.post(url, json={"targetVersion": "v1"}, timeout=5)

    assert (first.status_code, first.json()["changed"]) == (200, True)
    assert (second.status_code, second.json()["changed"]) == (200, False)
    assert second.json()["previousVersion"] == "v2"
    assert _status(serving_v2)["rollbacks"] == 1
    assert _metrics(serving_v2)[("model_rollbacks_total", (("model", MODEL),))] == 1


def test_unknown_model_answers_404_naming_the_known_models(serving_v1: SandboxPlatform) -> None:
    for response in (
        httpx.get(f"{serving_v1.url}/api/v1/ml/models/nope/status", timeout=5),
        httpx.post(
            f"{serving_v1.url}/api/v1/ml/models/nope/rollback",
            json={"targetVersion": "v1"},
            timeout=5,
        ),
    ):
        assert response.status_code == 404
        assert response.json() == {"error": "model 'nope' not found; known models: ['fraud-v3']"}


@pytest.mark.parametrize(
    ("action", "body", "expected"),
    [
        ("rollback", b'{"targetVersion": "v9"}', "targetVersion must be one of ['v1', 'v2']"),
        ("rollback", b'{"targetVersion": ["v1"]}', "targetVersion must be one of"),
        ("rollback", b'{"version": "v1"}', 'must name "targetVersion"'),
        ("rollback", b'{"targetVersion": ', "body is not valid JSON"),
        ("rollback", b"[]", "body must be a JSON object"),
        ("deploy", b'{"version": "v3"}', "version must be one of ['v1', 'v2']"),
        ("faults", b'{"error_rate": 2}', "error_rate must be between 0 and 1"),
        ("faults", b'{"latency": 1}', "unknown fields ['latency']"),
    ],
)
def test_bad_request_answers_400_naming_the_field(
    serving_v1: SandboxPlatform, action: str, body: bytes, expected: str
) -> None:
    response = httpx.post(
        f"{serving_v1.url}/api/v1/ml/models/{MODEL}/{action}",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert response.status_code == 400
    assert expected in response.json()["error"]
    assert _status(serving_v1)["currentVersion"] == "v1"


def test_metrics_parse_as_prometheus_exposition(serving_v2: SandboxPlatform) -> None:
    response = httpx.get(f"{serving_v2.url}/metrics", timeout=5)
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}

    for gauge in (
        "model_f1_score",
        "model_precision",
        "model_recall",
        "model_error_rate",
        "model_latency_p99_seconds",
        "model_serving_version_info",
    ):
        assert families[gauge].type == "gauge"
        assert families[gauge].samples[0].labels == {"model": MODEL, "version": "v2"}
    assert families["model_predictions"].type == "counter"
    assert {s.labels["version"] for s in families["model_predictions"].samples} == {"v1", "v2"}
    assert families["model_rollbacks"].type == "counter"
    assert families["model_rollbacks"].samples[0].labels == {"model": MODEL}
    assert families["model_f1_score"].samples[0].value <= 0.65


def test_injected_faults_show_in_error_rate_and_latency(serving_v1: SandboxPlatform) -> None:
    url = f"{serving_v1.url}/api/v1/ml/models/{MODEL}/faults"
    body = httpx.post(url, json={"latency_seconds": 2.5, "error_rate": 0.3}, timeout=5).json()
    assert body["faults"] == {"latency_seconds": 2.5, "error_rate": 0.3}

    def degraded() -> bool:
        metrics = _status(serving_v1)["metrics"]
        return metrics["latency_p99_seconds"] >= 2.5 and 0.2 <= metrics["error_rate"] <= 0.4

    _wait_for(degraded, timeout=3)
    httpx.post(url, json={"latency_seconds": 0, "error_rate": 0}, timeout=5)
    _wait_for(lambda: _status(serving_v1)["metrics"]["error_rate"] == 0, timeout=3)


def test_training_is_deterministic_given_the_seed() -> None:
    first, again = train_version("v1", 7, MODEL), train_version("v1", 7, MODEL)
    other_seed = train_version("v1", 8, MODEL)
    assert np.array_equal(first.weights, again.weights)
    assert not np.array_equal(first.weights, other_seed.weights)


def test_stop_joins_threads_and_frees_the_port() -> None:
    platform = SandboxPlatform(models=[MODEL, "churn-v1"], seed=7)
    before = set(threading.enumerate())
    url = platform.start()
    started = [t for t in threading.enumerate() if t not in before]
    assert {t.name for t in started} >= {"sandbox-http", "sandbox-stream"}
    assert _status(platform, "churn-v1")["currentVersion"] == "v1"
    platform.stop()

    # Other sandboxes (the session fixture's) may run beside this one; only ours must end.
    assert not [t for t in started if t.is_alive()]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=1)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_command_line_prints_its_url_and_exits_cleanly_on_signal(
    stop_signal: signal.Signals,
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "sandbox.platform", "--port", "0", "--serve", "v2"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("sandbox platform listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        assert (
            httpx.get(f"{url}/api/v1/ml/models/{MODEL}/status", timeout=5).json()["currentVersion"]
            == "v2"
        )
        process.send_signal(stop_signal)
        _, stderr = process.communicate(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0
    assert stderr == ""
