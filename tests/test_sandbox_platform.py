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

from sandbox.platform import SandboxPlatform, split_rows, train_version

MODEL = "fraud-v3"
REPO = Path(__file__).resolve().parents[1]
# The default window: 2000 rows, scored in batches of 200.
WINDOW_TICKS = 10


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


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _metrics(platform: SandboxPlatform) -> dict[tuple[str, tuple], float]:
    response = httpx.get(f"{platform.url}/metrics", timeout=5)
    assert response.status_code == 200
    return _samples(response.text)


def _still(traffic: dict[str, int] | None = None) -> SandboxPlatform:
    """A platform that is not started: it scores only when the test calls score_batch(), so
    two of them with one seed see the same rows, and a window is exact, not a race."""
    platform = SandboxPlatform(models=[MODEL], seed=7, serve="v1")
    if traffic is not None:
        platform.set_traffic(MODEL, traffic)
    return platform


def _fill_window(*platforms: SandboxPlatform) -> None:
    """Replace each platform's whole window with fresh batches, as its stream would."""
    for platform in platforms:
        for _ in range(WINDOW_TICKS):
            platform.score_batch()


def _by_version(platform: SandboxPlatform) -> dict[str, dict]:
    return platform.status(MODEL)["versionMetrics"]


def _counts(metrics: dict) -> tuple:
    """What a version answered over the window, without the wall-clock latency."""
    return tuple(metrics[k] for k in ("tp", "fp", "fn", "answered", "window", "error_rate"))


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


# -- traffic split ----------------------------------------------------------------------


def test_split_rows_gives_exact_integer_shares_that_sum_to_the_batch() -> None:
    assert split_rows(200, {"v1": 75, "v2": 25}) == {"v1": 150, "v2": 50}
    assert split_rows(200, {"v1": 33, "v2": 67}) == {"v1": 66, "v2": 134}
    assert split_rows(200, {"v1": 0, "v2": 100}) == {"v2": 200}
    # Remainders go to the largest fractions, ties in version order; no version gets 0 rows.
    assert split_rows(10, {"v1": 33, "v2": 33, "v3": 34}) == {"v1": 3, "v2": 3, "v3": 4}
    assert split_rows(7, {"v1": 50, "v2": 50}) == {"v1": 4, "v2": 3}
    assert split_rows(1, {"v1": 50, "v2": 50}) == {"v1": 1}
    for n in (1, 7, 199, 200, 203):
        for traffic in ({"v1": 75, "v2": 25}, {"v1": 1, "v2": 99}, {"v1": 50, "v2": 50}):
            assert sum(split_rows(n, traffic).values()) == n


def test_traffic_split_sets_each_versions_share_of_the_window_and_the_leader_serves() -> None:
    platform = _still()
    split = platform.set_traffic(MODEL, {"v1": 75, "v2": 25})
    assert (split["changed"], split["traffic"]) == (True, {"v1": 75, "v2": 25})
    assert (split["currentVersion"], split["previousVersion"]) == ("v1", None)
    _fill_window(platform)
    status = platform.status(MODEL)
    assert {v: m["window"] for v, m in status["versionMetrics"].items()} == {"v1": 1500, "v2": 500}
    assert status["metrics"]["window"] == 2000
    for count in ("tp", "fp", "fn", "answered"):
        assert status["metrics"][count] == sum(m[count] for m in status["versionMetrics"].values())

    moved = platform.set_traffic(MODEL, {"v1": 25, "v2": 75})
    assert (moved["currentVersion"], moved["previousVersion"]) == ("v2", "v1")
    _fill_window(platform)
    assert {v: m["window"] for v, m in _by_version(platform).items()} == {"v1": 500, "v2": 1500}

    tied = platform.set_traffic(MODEL, {"v1": 50, "v2": 50})
    assert (tied["currentVersion"], tied["previousVersion"]) == ("v2", "v1")

    only_v2 = platform.set_traffic(MODEL, {"v2": 100})
    assert only_v2["traffic"] == {"v1": 0, "v2": 100}
    _fill_window(platform)
    assert {v: m["window"] for v, m in _by_version(platform).items()} == {"v2": 2000}
    assert platform.set_traffic(MODEL, {"v1": 0, "v2": 100})["changed"] is False

    back = platform.set_traffic(MODEL, {"v1": 100})
    assert (back["currentVersion"], back["previousVersion"]) == ("v1", "v2")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"v1": 60, "v2": 60},
            'percents must sum to 100, got 120 in {"v1": 60, "v2": 60}; versions not named get 0',
        ),
        ({"v1": 50}, 'percents must sum to 100, got 50 in {"v1": 50}; versions not named get 0'),
        (
            {"v1": 75, "v3": 25},
            "unknown versions ['v3'] for model 'fraud-v3'; known versions: ['v1', 'v2'], "
            'e.g. {"v1": 75, "v2": 25}',
        ),
        ({"v1": 75.0, "v2": 25}, "v1 must be an integer percent 0..100, got 75.0"),
        ({"v1": "75", "v2": 25}, "v1 must be an integer percent 0..100, got '75'"),
        ({"v1": True, "v2": 99}, "v1 must be an integer percent 0..100, got True"),
        ({"v1": 150, "v2": -50}, "v1 must be between 0 and 100, got 150"),
        ({}, 'body must give versions integer percents, e.g. {"v1": 75, "v2": 25}'),
    ],
)
def test_bad_traffic_body_answers_400_naming_the_fix_and_changes_nothing(
    serving_v1: SandboxPlatform, body: dict, expected: str
) -> None:
    url = f"{serving_v1.url}/api/v1/ml/models/{MODEL}/traffic"
    assert httpx.post(url, json={"v1": 75, "v2": 25}, timeout=5).status_code == 200

    response = httpx.post(url, json=body, timeout=5)

    assert response.status_code == 400
    assert response.json() == {"error": expected}
    status = _status(serving_v1)
    assert status["traffic"] == {"v1": 75, "v2": 25}
    assert (status["currentVersion"], status["previousVersion"]) == ("v1", None)


# -- faults -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"version": "v3", "down": True},
            "version must be one of ['v1', 'v2'] (or omitted for every version), got 'v3'",
        ),
        (
            {"version": "v1", "concept_drift": 0.5},
            "concept_drift changes the labels every version sees, so it cannot be scoped to a "
            'version; post it without "version"',
        ),
        ({"down": "yes"}, "down must be true or false (or null to clear), got 'yes'"),
        ({"stale_features": 1}, "stale_features must be true or false (or null to clear), got 1"),
        (
            {"feature_shift": {"feature": 8, "shift": 1.0}},
            "feature_shift.feature must be a feature index 0..7 (0=amount, 1=distance_from_home_km",
        ),
        (
            {"feature_shift": {"feature": 2}},
            'feature_shift must be an object like {"feature": 2, "shift": 3.0}, or null to clear',
        ),
        ({"null_rate": {"feature": 2, "rate": 1.5}}, "null_rate.rate must be between 0 and 1"),
        ({"concept_drift": 2}, "concept_drift must be between 0 and 1, got 2"),
        ({"down": True, "error_rate": 2}, "error_rate must be between 0 and 1, got 2"),
        (
            {"version": "v1", "latency_seconds": 1, "null_rate": {"feature": 2, "rate": -1}},
            "null_rate.rate must be a finite number >= 0, got -1",
        ),
    ],
)
def test_bad_fault_body_answers_400_naming_the_field_and_changes_nothing(
    serving_v1: SandboxPlatform, body: dict, expected: str
) -> None:
    url = f"{serving_v1.url}/api/v1/ml/models/{MODEL}/faults"
    response = httpx.post(url, json=body, timeout=5)

    assert response.status_code == 400
    assert expected in response.json()["error"]
    status = _status(serving_v1)
    assert status["faults"] == {"latency_seconds": 0.0, "error_rate": 0.0}
    assert (status["versionFaults"], status["status"]) == ({}, "serving")


def test_version_scoped_errors_and_latency_degrade_only_that_version() -> None:
    faulted, reference = _still({"v1": 50, "v2": 50}), _still({"v1": 50, "v2": 50})
    answer = faulted.set_faults(MODEL, {"version": "v2", "error_rate": 0.5, "latency_seconds": 2})
    assert answer["faults"] == {"latency_seconds": 0.0, "error_rate": 0.0}
    assert answer["versionFaults"] == {"v2": {"latency_seconds": 2.0, "error_rate": 0.5}}
    _fill_window(faulted, reference)

    v1, v2 = _by_version(faulted)["v1"], _by_version(faulted)["v2"]
    assert 0.4 <= v2["error_rate"] <= 0.6
    assert v2["answered"] == round(v2["window"] * (1 - v2["error_rate"]))
    assert v2["latency_p99_seconds"] >= 2.0
    assert _counts(v1) == _counts(_by_version(reference)["v1"])
    assert v1["error_rate"] == 0.0
    assert v1["latency_p99_seconds"] < 1


# v2's bad join zero-fills features 0..3, so a fault in one of those never reaches v2.
_FEATURE_OF = {"v1": 2, "v2": 7}


@pytest.mark.parametrize("scope", ["v1", "v2"])
@pytest.mark.parametrize("fault", ["feature_shift", "null_rate", "stale_features"])
def test_feature_fault_lowers_f1_of_the_scoped_version_only(scope: str, fault: str) -> None:
    feature = _FEATURE_OF[scope]
    value = {
        "feature_shift": {"feature": feature, "shift": 3.0},
        "null_rate": {"feature": feature, "rate": 0.5},
        "stale_features": True,
    }[fault]
    faulted, reference = _still({"v1": 50, "v2": 50}), _still({"v1": 50, "v2": 50})
    answer = faulted.set_faults(MODEL, {"version": scope, fault: value})
    assert answer["versionFaults"] == {
        scope: {"latency_seconds": 0.0, "error_rate": 0.0, fault: value}
    }
    _fill_window(faulted, reference)

    hit, healthy = _by_version(faulted), _by_version(reference)
    assert hit[scope]["f1_score"] <= healthy[scope]["f1_score"] - 0.15
    # A silent fault: every prediction is answered, only its quality falls.
    assert hit[scope]["error_rate"] == 0.0
    other = "v2" if scope == "v1" else "v1"
    assert _counts(hit[other]) == _counts(healthy[other])


def test_stale_features_answer_every_row_alike() -> None:
    platform = _still()
    _fill_window(platform)
    platform.set_faults(MODEL, {"stale_features": True})
    _fill_window(platform)

    metrics = platform.status(MODEL)["metrics"]
    assert metrics["tp"] + metrics["fp"] in (0, metrics["answered"])
    assert platform.status(MODEL)["faults"]["stale_features"] is True


def test_down_version_answers_503_with_all_traffic_and_degraded_when_split(
    serving_v1: SandboxPlatform,
) -> None:
    models = f"{serving_v1.url}/api/v1/ml/models/{MODEL}"
    injected = httpx.post(f"{models}/faults", json={"version": "v1", "down": True}, timeout=5)
    assert (injected.status_code, injected.json()["status"]) == (200, "down")
    assert injected.json()["versionFaults"] == {
        "v1": {"latency_seconds": 0.0, "error_rate": 0.0, "down": True}
    }
    status = httpx.get(f"{models}/status", timeout=5)
    assert status.status_code == 503
    assert status.json() == {
        "error": "model 'fraud-v3' is down: every version with traffic (v1) fails every "
        'prediction; route traffic to a healthy version or clear the fault ({"down": false})'
    }
    assert httpx.get(f"{serving_v1.url}/metrics", timeout=5).status_code == 200

    split = httpx.post(f"{models}/traffic", json={"v1": 50, "v2": 50}, timeout=5)
    assert split.json()["status"] == "degraded"
    assert _status(serving_v1)["status"] == "degraded"

    httpx.post(f"{models}/faults", json={"down": True}, timeout=5)
    everything = httpx.get(f"{models}/status", timeout=5)
    assert everything.status_code == 503
    assert "every version with traffic (v1, v2) fails" in everything.json()["error"]

    httpx.post(f"{models}/faults", json={"down": None}, timeout=5)
    assert _status(serving_v1)["status"] == "degraded"
    httpx.post(f"{models}/faults", json={"version": "v1", "down": False}, timeout=5)
    assert _status(serving_v1)["status"] == "serving"


def test_down_version_fails_every_prediction_of_its_share_only() -> None:
    platform = _still({"v1": 50, "v2": 50})
    platform.set_faults(MODEL, {"version": "v2", "down": True})
    _fill_window(platform)

    status = platform.status(MODEL)
    assert status["status"] == "degraded"
    v2 = status["versionMetrics"]["v2"]
    assert (v2["error_rate"], v2["f1_score"], v2["answered"], v2["window"]) == (1.0, None, 0, 1000)
    assert (v2["tp"], v2["fp"], v2["fn"]) == (0, 0, 0)
    assert status["versionMetrics"]["v1"]["error_rate"] == 0.0
    assert status["metrics"]["error_rate"] == 0.5


def test_concept_drift_degrades_every_version_until_a_retrain_serves_v3() -> None:
    platform = _still()
    _fill_window(platform)
    healthy_v1 = _by_version(platform)["v1"]["f1_score"]
    platform.set_traffic(MODEL, {"v1": 50, "v2": 50})
    _fill_window(platform)
    healthy = {v: m["f1_score"] for v, m in _by_version(platform).items()}

    drifted = platform.set_faults(MODEL, {"concept_drift": 1.0})
    assert drifted["faults"]["concept_drift"] == 1.0
    _fill_window(platform)
    for version, metrics in _by_version(platform).items():
        assert metrics["f1_score"] <= healthy[version] / 2, version

    # A rollback does not help: the relation changed for every version trained before it.
    platform.rollback(MODEL, "v1")
    _fill_window(platform)
    assert _by_version(platform)["v1"]["f1_score"] <= healthy_v1 / 2

    retrained = platform.retrain(MODEL)
    assert (retrained["currentVersion"], retrained["previousVersion"]) == ("v3", "v1")
    assert retrained["versions"] == ["v1", "v2", "v3"]
    assert retrained["traffic"] == {"v1": 0, "v2": 0, "v3": 100}
    assert (retrained["changed"], retrained["deploys"]) == (True, 1)
    assert retrained["faults"]["concept_drift"] == 1.0
    _fill_window(platform)
    recovered = _by_version(platform)
    assert list(recovered) == ["v3"]
    assert recovered["v3"]["f1_score"] >= healthy_v1 - 0.05


def test_retrain_over_http_deploys_the_next_version_and_takes_no_fields(
    serving_v1: SandboxPlatform,
) -> None:
    models = f"{serving_v1.url}/api/v1/ml/models/{MODEL}"
    first = httpx.post(f"{models}/retrain", timeout=5)
    assert first.status_code == 200, first.text
    assert (first.json()["currentVersion"], first.json()["previousVersion"]) == ("v3", "v1")
    second = httpx.post(f"{models}/retrain", json={}, timeout=5).json()
    assert (second["currentVersion"], second["previousVersion"]) == ("v4", "v3")

    bad = httpx.post(f"{models}/retrain", json={"drift": 1}, timeout=5)
    assert bad.status_code == 400
    assert bad.json() == {"error": "retrain takes no fields, got ['drift']; post {} or no body"}
    assert _status(serving_v1)["versions"] == ["v1", "v2", "v3", "v4"]
    assert _metrics(serving_v1)[("model_deploys_total", (("model", MODEL),))] == 2


_V1_SHIFT = {"feature": 2, "shift": 3.0}
_V1_NULLS = {"feature": 2, "rate": 0.5}


@pytest.mark.parametrize(
    ("fault", "clear"),
    [
        ({"version": "v1", "down": True}, {"version": "v1", "down": False}),
        ({"version": "v1", "down": True}, {"version": "v1", "down": None}),
        (
            {"version": "v1", "error_rate": 0.5, "latency_seconds": 1.0},
            {"version": "v1", "error_rate": 0, "latency_seconds": None},
        ),
        ({"version": "v1", "feature_shift": _V1_SHIFT}, {"version": "v1", "feature_shift": None}),
        (
            {"version": "v1", "feature_shift": _V1_SHIFT},
            {"version": "v1", "feature_shift": {"feature": 2, "shift": 0}},
        ),
        ({"version": "v1", "null_rate": _V1_NULLS}, {"version": "v1", "null_rate": None}),
        (
            {"version": "v1", "null_rate": _V1_NULLS},
            {"version": "v1", "null_rate": {"feature": 2, "rate": 0}},
        ),
        ({"version": "v1", "stale_features": True}, {"version": "v1", "stale_features": False}),
        ({"stale_features": True}, {"stale_features": None}),
        ({"concept_drift": 1.0}, {"concept_drift": 0}),
        ({"concept_drift": 0.5}, {"concept_drift": None}),
    ],
)
def test_clearing_a_fault_with_null_false_or_zero_restores_the_healthy_metrics(
    fault: dict, clear: dict
) -> None:
    faulted, reference = _still({"v1": 50, "v2": 50}), _still({"v1": 50, "v2": 50})
    faulted.set_faults(MODEL, fault)
    _fill_window(faulted, reference)

    def answered(platform: SandboxPlatform) -> dict[str, tuple]:
        return {
            v: (*_counts(m), m["latency_p99_seconds"] >= 0.5)
            for v, m in _by_version(platform).items()
        }

    assert answered(faulted) != answered(reference)

    cleared = faulted.set_faults(MODEL, clear)
    assert cleared["faults"] == {"latency_seconds": 0.0, "error_rate": 0.0}
    assert (cleared["versionFaults"], cleared["status"]) == ({}, "serving")
    _fill_window(faulted, reference)
    assert answered(faulted) == answered(reference)


# -- /metrics ---------------------------------------------------------------------------


def test_metrics_expose_per_version_window_counts_that_match_the_status() -> None:
    platform = _still({"v1": 75, "v2": 25})
    _fill_window(platform)
    text = platform.metrics_text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = _samples(text)

    series = {
        "model_window_true_positives": "tp",
        "model_window_false_positives": "fp",
        "model_window_false_negatives": "fn",
        "model_window_predictions": "window",
        "model_f1_score": "f1_score",
    }
    for metric in series:
        assert families[metric].type == "gauge"
    by_version = _by_version(platform)
    assert {v: m["window"] for v, m in by_version.items()} == {"v1": 1500, "v2": 500}
    for version, metrics in by_version.items():
        labels = (("model", MODEL), ("version", version))
        for metric, key in series.items():
            assert samples[(metric, labels)] == metrics[key], (metric, version)

    # A version's series lasts while its predictions are in the window, then disappears.
    platform.rollback(MODEL, "v1")
    _fill_window(platform)
    remaining = _samples(platform.metrics_text())
    assert [labels for metric, labels in remaining if metric == "model_window_true_positives"] == [
        (("model", MODEL), ("version", "v1"))
    ]


def test_an_error_closes_the_connection_so_the_next_request_on_a_client_is_clean() -> None:
    platform = SandboxPlatform(models=["m"], serve="v2")
    with platform, httpx.Client(base_url=str(platform.url), timeout=5) as client:
        missing = client.post("/api/v1/ml/models/nope/rollback", json={"targetVersion": "v1"})
        assert missing.status_code == 404
        assert missing.headers["connection"] == "close"
        assert client.get("/healthz").json()["status"] == "ok"
