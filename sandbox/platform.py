"""SANDBOX stand-in for an ML model platform; not a production service.

`runbooks demo` and the tests need a model whose metrics really fall after a bad release
and really recover after a rollback, without a cluster, a registry or a GPU. This module
is that stand-in: one local HTTP process that

- trains two versions of a small logistic-regression fraud model with numpy (seeded):
  "v1" trained properly, "v2" a realistic bad release whose feature join silently
  zero-filled four of its strongest features;
- scores a seeded synthetic transaction stream in a background thread (labels are known
  at once, because it is a sandbox) and keeps F1, precision, recall, error rate and p99
  latency over a short sliding window, so a rollback shows in the metrics within ~1 s;
- speaks a small ML platform REST API (status, rollback, deploy, fault injection) and
  serves Prometheus metrics at ``/metrics``.

Run it with ``python -m sandbox.platform --port 0`` or from Python::

    with SandboxPlatform(models=["fraud-v3"], seed=7, serve="v2") as platform:
        httpx.post(f"{platform.url}/api/v1/ml/models/fraud-v3/rollback",
                   json={"targetVersion": "v1"})
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any
from urllib.parse import urlsplit

import numpy as np

VERSIONS: tuple[str, ...] = ("v1", "v2")
DEFAULT_MODELS: tuple[str, ...] = ("fraud-v3",)

FEATURES: tuple[str, ...] = (
    "amount",
    "distance_from_home_km",
    "merchant_risk",
    "txn_last_hour",
    "account_age_days",
    "hour_of_day",
    "foreign",
    "card_present",
)
# Raw units (location, scale) per feature, so that the pipeline's standardization matters.
_FEATURE_LOC = np.array([120.0, 15.0, 0.30, 2.0, 900.0, 13.0, 0.15, 0.70])
_FEATURE_SCALE = np.array([45.0, 8.0, 0.12, 1.5, 400.0, 5.0, 0.10, 0.20])
# How far (in standard deviations) fraudulent rows sit from legitimate ones, per feature.
_FRAUD_SHIFT = 1.35 * np.array([1.2, 1.0, 1.3, 0.9, -0.6, 0.5, 0.7, -0.6])
FRAUD_RATE = 0.10
# v2's bad release: the join that brings these columns in broke, and they arrived as zeros
# in training and in serving, so v2 learned from the weak features only.
V2_ZERO_FILLED: tuple[str, ...] = (
    "amount",
    "distance_from_home_km",
    "merchant_risk",
    "txn_last_hour",
)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _seed_for(seed: int, *parts: str) -> int:
    """A stable per-purpose seed; Python's own hash() is salted per process."""
    return zlib.crc32("/".join((str(seed), *parts)).encode())


def generate_transactions(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic fraud-like rows in raw units: (features n x 8, labels n), ~10% positive."""
    labels = (rng.random(n) < FRAUD_RATE).astype(np.int8)
    z = rng.standard_normal((n, len(FEATURES))) + labels[:, None] * _FRAUD_SHIFT
    return _FEATURE_LOC + _FEATURE_SCALE * z, labels


def _confusion(labels: np.ndarray, predicted: np.ndarray) -> tuple[int, int, int]:
    tp = int(np.sum((labels == 1) & (predicted == 1)))
    fp = int(np.sum((labels == 0) & (predicted == 1)))
    fn = int(np.sum((labels == 1) & (predicted == 0)))
    return tp, fp, fn


def f1_score(labels: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of the positive class; 0.0 when there is nothing to score, as sklearn does."""
    tp, fp, fn = _confusion(labels, predicted)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


@dataclass(frozen=True)
class FraudModel:
    """One trained version: its feature pipeline, weights and decision threshold."""

    version: str
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray
    bias: float
    threshold: float
    zero_filled: tuple[int, ...] = ()

    def predict_proba(self, raw: np.ndarray) -> np.ndarray:
        x = raw.copy()
        if self.zero_filled:
            x[:, list(self.zero_filled)] = 0.0
        if not np.all(np.isfinite(x)):
            raise ValueError(f"model {self.version} got non-finite features")
        z = (x - self.mean) / self.std
        return 1.0 / (1.0 + np.exp(-(z @ self.weights + self.bias)))

    def predict(self, raw: np.ndarray) -> np.ndarray:
        return (self.predict_proba(raw) >= self.threshold).astype(np.int8)


def _fit_logistic(z: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> tuple[np.ndarray, float]:
    """Newton's method on the L2-regularized log-loss; deterministic, converges in ~10 steps."""
    xb = np.hstack([z, np.ones((len(z), 1))])
    w = np.zeros(xb.shape[1])
    ridge = l2 * np.eye(len(w))
    for _ in range(25):
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        grad = xb.T @ (p - y) + l2 * w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + ridge
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return w[:-1], float(w[-1])


def train_version(version: str, seed: int, model: str, n: int = 20_000) -> FraudModel:
    """Run the version's training pipeline: (bad join), standardize, fit, tune threshold."""
    rng = np.random.default_rng(_seed_for(seed, model, "train"))
    raw, labels = generate_transactions(rng, n)
    zero_filled = tuple(FEATURES.index(f) for f in V2_ZERO_FILLED) if version == "v2" else ()
    if zero_filled:
        raw[:, list(zero_filled)] = 0.0
    train, valid = slice(0, n // 2), slice(n // 2, n)
    mean = raw[train].mean(axis=0)
    std = raw[train].std(axis=0)
    std[std == 0] = 1.0
    weights, bias = _fit_logistic((raw[train] - mean) / std, labels[train])
    fitted = FraudModel(version, mean, std, weights, bias, 0.5, zero_filled)
    proba = fitted.predict_proba(raw[valid])
    grid = np.round(np.arange(0.10, 0.91, 0.05), 2)
    best = max(grid, key=lambda t: f1_score(labels[valid], (proba >= t).astype(np.int8)))
    return FraudModel(version, mean, std, weights, bias, float(best), zero_filled)


@dataclass(frozen=True)
class ScoredBatch:
    """One scoring call: which version answered, labels, predictions, failures, latency."""

    version: str
    labels: np.ndarray
    predicted: np.ndarray
    failed: np.ndarray
    latency_seconds: float


@dataclass
class WindowMetrics:
    """Metrics over the sliding window; None when the window holds no scored rows."""

    f1_score: float | None
    precision: float | None
    recall: float | None
    error_rate: float | None
    latency_p99_seconds: float | None
    window: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "f1_score": self.f1_score,
            "precision": self.precision,
            "recall": self.recall,
            "error_rate": self.error_rate,
            "latency_p99_seconds": self.latency_p99_seconds,
            "window": self.window,
        }


def window_metrics(batches: list[ScoredBatch]) -> WindowMetrics:
    """F1, precision, recall over the answered predictions; error rate and p99 over all."""
    if not batches:
        return WindowMetrics(None, None, None, None, None, 0)
    failed = np.concatenate([b.failed for b in batches])
    n = len(failed)
    error_rate = float(np.mean(failed))
    latencies = np.concatenate([np.full(len(b.failed), b.latency_seconds) for b in batches])
    p99 = float(np.percentile(latencies, 99))
    if failed.all():
        return WindowMetrics(None, None, None, error_rate, p99, n)
    labels = np.concatenate([b.labels for b in batches])[~failed]
    predicted = np.concatenate([b.predicted for b in batches])[~failed]
    tp, fp, fn = _confusion(labels, predicted)
    return WindowMetrics(
        f1_score=f1_score(labels, predicted),
        precision=tp / (tp + fp) if tp + fp else 0.0,
        recall=tp / (tp + fn) if tp + fn else 0.0,
        error_rate=error_rate,
        latency_p99_seconds=p99,
        window=n,
    )


@dataclass
class ServedModel:
    """One model name on the platform: its versions, which one serves, and its window."""

    name: str
    versions: dict[str, FraudModel]
    current_version: str
    previous_version: str | None
    window_batches: int
    stream_rng: np.random.Generator
    fault_rng: np.random.Generator
    injected_latency_seconds: float = 0.0
    injected_error_rate: float = 0.0
    rollbacks: int = 0
    deploys: int = 0
    predictions_total: dict[str, int] = field(default_factory=dict)
    errors_total: dict[str, int] = field(default_factory=dict)
    window: deque[ScoredBatch] = field(init=False)

    def __post_init__(self) -> None:
        self.window = deque(maxlen=self.window_batches)
        for version in self.versions:
            self.predictions_total.setdefault(version, 0)
            self.errors_total.setdefault(version, 0)


class UnknownModel(LookupError):
    pass


class BadRequest(ValueError):
    pass


class SandboxPlatform:
    """The sandbox platform: models, the scoring stream and the HTTP API, in threads.

    The stream scores `batch_size` rows every `interval_seconds`; metrics cover the last
    `window` predictions (defaults: 200 rows / 100 ms, window 2000, so one second).
    2000 rows (~200 frauds) keep v1's F1 within ~0.82-0.93 and v2's below ~0.60, so
    sampling noise alone never crosses the P1 threshold of 0.70.
    """

    def __init__(
        self,
        models: list[str] | tuple[str, ...] = DEFAULT_MODELS,
        seed: int = 7,
        serve: str = "v1",
        *,
        batch_size: int = 200,
        interval_seconds: float = 0.1,
        window: int = 2000,
    ) -> None:
        if not models:
            raise ValueError("models must name at least one model, e.g. ['fraud-v3']")
        if serve not in VERSIONS:
            raise ValueError(f"serve must be one of {list(VERSIONS)}, got {serve!r}")
        self.seed = seed
        self.batch_size = batch_size
        self.interval_seconds = interval_seconds
        self._lock = threading.Lock()
        self._models: dict[str, ServedModel] = {}
        for name in models:
            self._models[name] = ServedModel(
                name=name,
                versions={v: train_version(v, seed, name) for v in VERSIONS},
                current_version=serve,
                # Serving v2 means v2 was deployed over v1; v1 has nothing before it.
                previous_version=VERSIONS[VERSIONS.index(serve) - 1] if serve != "v1" else None,
                window_batches=max(1, math.ceil(window / batch_size)),
                stream_rng=np.random.default_rng(_seed_for(seed, name, "stream")),
                fault_rng=np.random.default_rng(_seed_for(seed, name, "faults")),
            )
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.url: str | None = None

    # -- the stream -------------------------------------------------------------------

    def score_batch(self) -> None:
        """Score one batch per model with the version serving now, as live traffic would."""
        with self._lock:
            for model in self._models.values():
                self._score_batch(model)

    def _score_batch(self, model: ServedModel) -> None:
        raw, labels = generate_transactions(model.stream_rng, self.batch_size)
        version = model.current_version
        failed = model.fault_rng.random(len(labels)) < model.injected_error_rate
        started = time.perf_counter()
        try:
            predicted = model.versions[version].predict(raw)
        except Exception:
            failed[:] = True
            predicted = np.zeros(len(labels), dtype=np.int8)
        # Every row in the batch waited for the whole scoring call.
        latency = time.perf_counter() - started + model.injected_latency_seconds
        model.window.append(ScoredBatch(version, labels, predicted, failed, latency))
        model.predictions_total[version] += int(np.sum(~failed))
        model.errors_total[version] += int(np.sum(failed))

    def _run_stream(self) -> None:
        next_tick = time.monotonic()
        while not self._stop.is_set():
            self.score_batch()
            next_tick += self.interval_seconds
            self._stop.wait(max(0.0, next_tick - time.monotonic()))

    # -- the platform's operations ----------------------------------------------------

    def _model(self, name: str) -> ServedModel:
        try:
            return self._models[name]
        except KeyError:
            raise UnknownModel(
                f"model {name!r} not found; known models: {sorted(self._models)}"
            ) from None

    @property
    def model_names(self) -> list[str]:
        return list(self._models)

    def require_model(self, name: str) -> None:
        """Raise UnknownModel naming the known models, before a request body is read."""
        with self._lock:
            self._model(name)

    def _check_version(self, model: ServedModel, field_name: str, value: Any) -> str:
        if not isinstance(value, str) or value not in model.versions:
            raise BadRequest(
                f"{field_name} must be one of {list(model.versions)} for model "
                f"{model.name!r}, got {value!r}"
            )
        return str(value)

    def status(self, name: str) -> dict[str, Any]:
        with self._lock:
            return self._status(self._model(name))

    def _status(self, model: ServedModel) -> dict[str, Any]:
        return {
            "name": model.name,
            "currentVersion": model.current_version,
            "previousVersion": model.previous_version,
            "versions": list(model.versions),
            "status": "serving",
            "metrics": window_metrics(list(model.window)).as_dict(),
            "rollbacks": model.rollbacks,
            "deploys": model.deploys,
            "predictions": sum(model.predictions_total.values()),
            "faults": {
                "latency_seconds": model.injected_latency_seconds,
                "error_rate": model.injected_error_rate,
            },
            "sandbox": True,
        }

    def rollback(self, name: str, target_version: Any) -> dict[str, Any]:
        """Route traffic back to `target_version`; already serving it is success."""
        with self._lock:
            model = self._model(name)
            target = self._check_version(model, "targetVersion", target_version)
            changed = target != model.current_version
            if changed:
                model.previous_version = model.current_version
                model.current_version = target
                model.rollbacks += 1
            return {**self._status(model), "changed": changed}

    def deploy(self, name: str, version: Any) -> dict[str, Any]:
        """Serve `version`; the version serving until now becomes the previous one."""
        with self._lock:
            model = self._model(name)
            target = self._check_version(model, "version", version)
            changed = target != model.current_version
            if changed:
                model.previous_version = model.current_version
                model.current_version = target
                model.deploys += 1
            return {**self._status(model), "changed": changed}

    def set_faults(self, name: str, faults: dict[str, Any]) -> dict[str, Any]:
        """Inject latency (seconds added to each prediction) and a fraction of failures."""
        allowed = {"latency_seconds", "error_rate"}
        unknown = sorted(set(faults) - allowed)
        if unknown:
            raise BadRequest(f"unknown fields {unknown}; allowed: {sorted(allowed)}")
        values: dict[str, float] = {}
        for key, value in faults.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadRequest(f"{key} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise BadRequest(f"{key} must be a finite number >= 0, got {value!r}")
            values[key] = float(value)
        if values.get("error_rate", 0.0) > 1:
            raise BadRequest(f"error_rate must be between 0 and 1, got {values['error_rate']}")
        with self._lock:
            model = self._model(name)
            if "latency_seconds" in values:
                model.injected_latency_seconds = values["latency_seconds"]
            if "error_rate" in values:
                model.injected_error_rate = values["error_rate"]
            return self._status(model)

    def metrics_text(self) -> str:
        """All models' metrics in the Prometheus text exposition format 0.0.4."""
        with self._lock:
            return _render_metrics(list(self._models.values()))

    # -- lifecycle --------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Fill the window, then serve HTTP and run the stream in threads; returns the URL.

        The window is filled before the server answers, so the first status already
        reflects the serving version, as on a platform that has been running for a while.
        """
        if self._server is not None:
            raise RuntimeError(f"sandbox platform already running at {self.url}")
        for _ in range(max(m.window_batches for m in self._models.values())):
            self.score_batch()
        self._stop.clear()
        self._server = ThreadingHTTPServer((host, port), _make_handler(self))
        self._server.daemon_threads = True
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"http://{bound_host}:{bound_port}"
        self._threads = [
            threading.Thread(target=self._server.serve_forever, args=(0.05,), name="sandbox-http"),
            threading.Thread(target=self._run_stream, name="sandbox-stream"),
        ]
        for thread in self._threads:
            thread.start()
        return self.url

    def stop(self) -> None:
        """Stop the stream and the server and join both threads; safe to call twice."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join()
        self._server = None
        self._threads = []

    def __enter__(self) -> SandboxPlatform:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- Prometheus exposition ----------------------------------------------------------------


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("model_f1_score", "f1_score", "F1 over the sliding window of predictions."),
    ("model_precision", "precision", "Precision over the sliding window of predictions."),
    ("model_recall", "recall", "Recall over the sliding window of predictions."),
    ("model_error_rate", "error_rate", "Fraction of failed predictions in the window."),
    (
        "model_latency_p99_seconds",
        "latency_p99_seconds",
        "99th percentile prediction latency over the window, in seconds.",
    ),
)


def _render_metrics(models: list[ServedModel]) -> str:
    """Quality gauges are per version present in the window: during a rollback the old
    version's series lingers until its predictions leave the window, then disappears."""
    per_version: list[tuple[ServedModel, str, WindowMetrics]] = []
    for model in models:
        batches = list(model.window)
        for version in model.versions:
            mine = [b for b in batches if b.version == version]
            if mine:
                per_version.append((model, version, window_metrics(mine)))
    lines: list[str] = []
    for metric, attribute, help_text in _GAUGES:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        for model, version, window in per_version:
            value = getattr(window, attribute)
            if value is not None:
                lines.append(
                    f"{metric}{{{_labels(model=model.name, version=version)}}} {_number(value)}"
                )
    lines += [
        "# HELP model_window_predictions Predictions in the sliding window, per version.",
        "# TYPE model_window_predictions gauge",
    ]
    for model, version, window in per_version:
        lines.append(
            f"model_window_predictions{{{_labels(model=model.name, version=version)}}} "
            f"{window.window}"
        )
    lines += [
        "# HELP model_serving_version_info The version that serves traffic now (value 1).",
        "# TYPE model_serving_version_info gauge",
    ]
    for model in models:
        labels = _labels(model=model.name, version=model.current_version)
        lines.append(f"model_serving_version_info{{{labels}}} 1")
    lines += [
        "# HELP model_predictions_total Predictions answered, per version.",
        "# TYPE model_predictions_total counter",
    ]
    for model in models:
        for version, count in model.predictions_total.items():
            labels = _labels(model=model.name, version=version)
            lines.append(f"model_predictions_total{{{labels}}} {count}")
    lines += [
        "# HELP model_prediction_errors_total Predictions that failed, per version.",
        "# TYPE model_prediction_errors_total counter",
    ]
    for model in models:
        for version, count in model.errors_total.items():
            labels = _labels(model=model.name, version=version)
            lines.append(f"model_prediction_errors_total{{{labels}}} {count}")
    lines += [
        "# HELP model_rollbacks_total Rollbacks that changed the serving version.",
        "# TYPE model_rollbacks_total counter",
    ]
    for model in models:
        lines.append(f"model_rollbacks_total{{{_labels(model=model.name)}}} {model.rollbacks}")
    lines += [
        "# HELP model_deploys_total Deploys that changed the serving version.",
        "# TYPE model_deploys_total counter",
    ]
    for model in models:
        lines.append(f"model_deploys_total{{{_labels(model=model.name)}}} {model.deploys}")
    return "\n".join(lines) + "\n"


# -- HTTP -------------------------------------------------------------------------------

_MODEL_PREFIX = "/api/v1/ml/models/"
_MAX_BODY = 64 * 1024


def _make_handler(platform: SandboxPlatform) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        """Routes the platform's REST API; every error answers JSON {"error": ...}."""

        server_version = "ml-runbooks-sandbox-platform/0.1"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the demo's terminal belongs to the runbook's output."""

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def _error(self, status: int, message: str) -> None:
            self._json(status, {"error": message})

        def _read_json(self) -> dict[str, Any]:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise BadRequest("Content-Length must be an integer") from None
            if length > _MAX_BODY:
                raise BadRequest(f"body larger than {_MAX_BODY} bytes")
            raw = self.rfile.read(length) if length else b""
            if not raw.strip():
                raise BadRequest("body must be a JSON object, got an empty body")
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise BadRequest(f"body is not valid JSON: {exc}") from None
            if not isinstance(body, dict):
                raise BadRequest(f"body must be a JSON object, got {type(body).__name__}")
            return body

        def _route_model(self) -> tuple[str, str] | None:
            path = urlsplit(self.path).path
            if not path.startswith(_MODEL_PREFIX):
                return None
            parts = path[len(_MODEL_PREFIX) :].split("/")
            if len(parts) != 2 or not parts[0]:
                return None
            return parts[0], parts[1]

        def _handle(self, method: str) -> None:
            path = urlsplit(self.path).path
            try:
                if method == "GET" and path == "/healthz":
                    self._json(HTTPStatus.OK, {"status": "ok", "sandbox": True})
                    return
                if method == "GET" and path == "/metrics":
                    body = platform.metrics_text().encode()
                    self._send(HTTPStatus.OK, body, PROMETHEUS_CONTENT_TYPE)
                    return
                route = self._route_model()
                actions = {
                    ("GET", "status"),
                    ("POST", "rollback"),
                    ("POST", "deploy"),
                    ("POST", "faults"),
                }
                if route is None or route[1] not in {a for _, a in actions}:
                    self._error(HTTPStatus.NOT_FOUND, f"no route for {method} {path}")
                    return
                name, action = route
                if (method, action) not in actions:
                    self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} not allowed on {path}")
                    return
                if action == "status":
                    self._json(HTTPStatus.OK, platform.status(name))
                    return
                platform.require_model(name)
                body = self._read_json()
                if action == "rollback":
                    if "targetVersion" not in body:
                        raise BadRequest(
                            'body must name "targetVersion", e.g. {"targetVersion": "v1"}'
                        )
                    result = platform.rollback(name, body["targetVersion"])
                elif action == "deploy":
                    if "version" not in body:
                        raise BadRequest('body must name "version", e.g. {"version": "v2"}')
                    result = platform.deploy(name, body["version"])
                else:
                    result = platform.set_faults(name, body)
                self._json(HTTPStatus.OK, result)
            except UnknownModel as exc:
                self._error(HTTPStatus.NOT_FOUND, str(exc))
            except BadRequest as exc:
                self._error(HTTPStatus.BAD_REQUEST, str(exc))
            except Exception as exc:
                self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")
                raise

        def do_GET(self) -> None:
            self._handle("GET")

        def do_HEAD(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

    return Handler


# -- command line -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the sandbox until SIGTERM or SIGINT, printing the URL it listens on."""
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.platform",
        description="SANDBOX ML model platform for demos and tests (not for production).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        help="model names (space or comma separated)",
    )
    parser.add_argument("--serve", choices=VERSIONS, default="v1", help="version serving at start")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    models = [m for item in args.models for m in item.split(",") if m]

    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    platform = SandboxPlatform(models=models, seed=args.seed, serve=args.serve)
    url = platform.start(host=args.host, port=args.port)
    print(f"sandbox platform listening on {url}", flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        platform.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
