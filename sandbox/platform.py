"""SANDBOX stand-in for an ML model platform; not a production service.

`runbooks demo` and the tests need a model whose metrics really fall after a bad release
and really recover after a rollback, without a cluster, a registry or a GPU. This module
is that stand-in: one local HTTP process that

- trains two versions of a small logistic-regression fraud model with numpy (seeded):
  "v1" trained properly, "v2" a realistic bad release whose feature join silently
  zero-filled four of its strongest features;
- scores a seeded synthetic transaction stream in a background thread (labels are known
  at once, because it is a sandbox), splitting each batch among the versions by the
  model's traffic weights, and keeps F1, precision, recall, error rate and p99 latency,
  per model and per version, over a short sliding window, so a rollback (or one step of
  a gradual one) shows in the metrics within ~1 s;
- injects the faults ML runbooks are written for, for the whole model or one version:
  latency, errors, a version down, a shifted feature, nulls in a feature, stale features
  and concept drift (which only a retrain on the new relation recovers from);
- speaks a small ML platform REST API (status, rollback, deploy, traffic, retrain, fault
  injection; docs/sandbox-platform.md) and serves Prometheus metrics at ``/metrics``.

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
from dataclasses import dataclass, field, replace
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


# Concept drift moves the fraud pattern toward this one: as long as _FRAUD_SHIFT and at
# cosine -0.15 to it, so at full strength v1 and v2 are near chance while a version retrained
# on the new relation is as good as v1 was.
_DRIFTED_SHIFT = 1.35 * np.array([-0.6, 0.7, -0.5, 0.9, 1.2, -0.6, 1.0, 1.3])


def fraud_pattern(drift: float = 0.0) -> np.ndarray:
    """Where fraudulent rows sit at concept drift `drift` (0..1); always as far from legit ones,
    so drift changes which features give fraud away, not how hard it is to tell."""
    if drift == 0:
        return _FRAUD_SHIFT
    mixed = (1 - drift) * _FRAUD_SHIFT + drift * _DRIFTED_SHIFT
    return mixed * (np.linalg.norm(_FRAUD_SHIFT) / np.linalg.norm(mixed))


def generate_transactions(
    rng: np.random.Generator, n: int, drift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic fraud-like rows in raw units: (features n x 8, labels n), ~10% positive."""
    labels = (rng.random(n) < FRAUD_RATE).astype(np.int8)
    z = rng.standard_normal((n, len(FEATURES))) + labels[:, None] * fraud_pattern(drift)
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
        # A naive pipeline's imputation: a missing value becomes 0 in raw units, which for
        # most features is several standard deviations away from any real value.
        x[np.isnan(x)] = 0.0
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


def train_version(
    version: str, seed: int, model: str, n: int = 20_000, drift: float = 0.0
) -> FraudModel:
    """Run the version's training pipeline: (bad join), standardize, fit, tune threshold.

    `drift` is the concept drift of the training data: a retrain learns the relation the
    labels follow now.
    """
    rng = np.random.default_rng(_seed_for(seed, model, "train"))
    raw, labels = generate_transactions(rng, n, drift)
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
    """One version's share of one scoring tick: labels, predictions, failures, latency."""

    version: str
    labels: np.ndarray
    predicted: np.ndarray
    failed: np.ndarray
    latency_seconds: float


@dataclass
class WindowMetrics:
    """Metrics over the sliding window; rates are None when the window holds no scored rows.

    tp, fp and fn count the answered predictions only; `answered` is how many those are and
    `window` how many rows the window holds, failed ones included.
    """

    f1_score: float | None
    precision: float | None
    recall: float | None
    error_rate: float | None
    latency_p99_seconds: float | None
    window: int
    tp: int = 0
    fp: int = 0
    fn: int = 0
    answered: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "f1_score": self.f1_score,
            "precision": self.precision,
            "recall": self.recall,
            "error_rate": self.error_rate,
            "latency_p99_seconds": self.latency_p99_seconds,
            "window": self.window,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "answered": self.answered,
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
        tp=tp,
        fp=fp,
        fn=fn,
        answered=len(labels),
    )


def split_rows(n: int, traffic: dict[str, int]) -> dict[str, int]:
    """Rows per version of a batch of `n`: n * percent / 100, remainders to the largest
    fractions (then version order): exact when n is a multiple of 100 (the default 200),
    within a row per batch otherwise; no zero rows."""
    exact = {v: n * w / 100 for v, w in traffic.items() if w > 0}
    rows = {v: math.floor(x) for v, x in exact.items()}
    by_fraction = sorted(exact, key=lambda v: rows[v] - exact[v])
    for version in by_fraction[: n - sum(rows.values())]:
        rows[version] += 1
    return {v: r for v, r in rows.items() if r}


def leading_version(traffic: dict[str, int], current: str) -> str:
    """The version with the largest share; a tie keeps `current` if it is among the tied."""
    top = max(traffic.values())
    if traffic.get(current) == top:
        return current
    return next(v for v, w in traffic.items() if w == top)


@dataclass(frozen=True)
class Faults:
    """The faults injected into one scope: the whole model, or the rows one version answers.

    Neutral values (0, False, None) mean no fault. `stale_row` is the feature vector the
    scope's feature lookup is stuck on while stale_features is on.
    """

    latency_seconds: float = 0.0
    error_rate: float = 0.0
    down: bool = False
    feature_shift: tuple[int, float] | None = None
    null_rate: tuple[int, float] | None = None
    stale_row: np.ndarray | None = field(default=None, compare=False)
    concept_drift: float = 0.0

    @property
    def active(self) -> bool:
        return self.stale_row is not None or self != Faults()

    def as_dict(self) -> dict[str, Any]:
        """latency_seconds and error_rate always (as the platform always showed them), the
        other faults while they are in force, in the shape POST .../faults takes them."""
        shown: dict[str, Any] = {
            "latency_seconds": self.latency_seconds,
            "error_rate": self.error_rate,
        }
        if self.down:
            shown["down"] = True
        if self.feature_shift is not None:
            feature, shift = self.feature_shift
            shown["feature_shift"] = {"feature": feature, "shift": shift}
        if self.null_rate is not None:
            feature, rate = self.null_rate
            shown["null_rate"] = {"feature": feature, "rate": rate}
        if self.stale_row is not None:
            shown["stale_features"] = True
        if self.concept_drift:
            shown["concept_drift"] = self.concept_drift
        return shown

    def corrupt(self, raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The feature vectors this scope's pipeline hands the model instead of `raw`."""
        if self.stale_row is None and self.feature_shift is None and self.null_rate is None:
            return raw
        x = np.tile(self.stale_row, (len(raw), 1)) if self.stale_row is not None else raw.copy()
        if self.feature_shift is not None:
            feature, shift = self.feature_shift
            x[:, feature] += shift * _FEATURE_SCALE[feature]
        if self.null_rate is not None:
            feature, rate = self.null_rate
            x[rng.random(len(x)) < rate, feature] = np.nan
        return x


NO_FAULTS = Faults()
FAULT_FIELDS: tuple[str, ...] = (
    "latency_seconds",
    "error_rate",
    "down",
    "feature_shift",
    "null_rate",
    "stale_features",
    "concept_drift",
)


@dataclass
class ServedModel:
    """One model name on the platform: its versions, its traffic split, faults and window.

    The window holds one tuple of ScoredBatch (one per version with traffic) per tick, so
    it always covers the same number of rows whatever the split.
    """

    name: str
    versions: dict[str, FraudModel]
    current_version: str
    previous_version: str | None
    window_batches: int
    stream_rng: np.random.Generator
    fault_rng: np.random.Generator
    traffic: dict[str, int] = field(default_factory=dict)
    model_faults: Faults = NO_FAULTS
    version_faults: dict[str, Faults] = field(default_factory=dict)
    rollbacks: int = 0
    deploys: int = 0
    predictions_total: dict[str, int] = field(default_factory=dict)
    errors_total: dict[str, int] = field(default_factory=dict)
    last_row: np.ndarray = field(default_factory=lambda: _FEATURE_LOC.copy())
    window: deque[tuple[ScoredBatch, ...]] = field(init=False)

    def __post_init__(self) -> None:
        self.window = deque(maxlen=self.window_batches)
        for version, trained in list(self.versions.items()):
            self.add_version(version, trained)
        self.traffic[self.current_version] = 100

    def add_version(self, version: str, trained: FraudModel) -> None:
        self.versions[version] = trained
        self.traffic.setdefault(version, 0)
        self.predictions_total.setdefault(version, 0)
        self.errors_total.setdefault(version, 0)

    def batches(self, version: str | None = None) -> list[ScoredBatch]:
        """The window's batches, of every version or of `version` only."""
        return [b for tick in self.window for b in tick if version in (None, b.version)]

    def scopes(self, version: str) -> tuple[Faults, Faults]:
        """The faults that apply to the rows `version` answers: the model's, then its own."""
        return self.model_faults, self.version_faults.get(version, NO_FAULTS)

    def down_versions(self) -> list[str]:
        """Versions with traffic whose every prediction fails."""
        return [v for v, w in self.traffic.items() if w > 0 and any(f.down for f in self.scopes(v))]

    def health(self) -> str:
        down = self.down_versions()
        if not down:
            return "serving"
        return "down" if len(down) == sum(1 for w in self.traffic.values() if w > 0) else "degraded"


class UnknownModel(LookupError):
    pass


class BadRequest(ValueError):
    pass


class ModelDown(RuntimeError):
    """Every version with traffic is down: the platform answers 503, as a real one would."""


def _nonnegative(field_name: str, value: Any, high: float | None = None) -> float:
    """A finite number >= 0 (and <= high); None is the neutral 0."""
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{field_name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise BadRequest(f"{field_name} must be a finite number >= 0, got {value!r}")
    if high is not None and value > high:
        raise BadRequest(f"{field_name} must be between 0 and {high:g}, got {value!r}")
    return float(value)


def _flag(field_name: str, value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise BadRequest(f"{field_name} must be true or false (or null to clear), got {value!r}")
    return value


def _feature_index(field_name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < len(FEATURES):
        names = ", ".join(f"{i}={f}" for i, f in enumerate(FEATURES))
        raise BadRequest(
            f"{field_name} must be a feature index 0..{len(FEATURES) - 1} ({names}), got {value!r}"
        )
    return value


def _feature_fault(field_name: str, value: Any, amount: str) -> tuple[int, float] | None:
    """{"feature": index, amount: number} as (index, number); null or a 0 amount clears."""
    example = f'{{"feature": 2, "{amount}": {"3.0" if amount == "shift" else "0.5"}}}'
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"feature", amount}:
        raise BadRequest(
            f"{field_name} must be an object like {example}, or null to clear, got {value!r}"
        )
    feature = _feature_index(f"{field_name}.feature", value["feature"])
    number = value[amount]
    name = f"{field_name}.{amount}"
    if amount == "shift":
        finite = isinstance(number, int | float) and not isinstance(number, bool)
        if not finite or not math.isfinite(number):
            raise BadRequest(
                f"{name} must be a finite number of standard deviations, got {number!r}"
            )
        number = float(number)
    else:
        number = _nonnegative(name, number, high=1)
    return (feature, number) if number else None


def parse_faults(body: dict[str, Any], versions: list[str]) -> tuple[str | None, dict[str, Any]]:
    """The scope (None: every version) and the Faults fields a POST .../faults body sets.

    Everything is checked before anything changes. stale_features is returned as given;
    the caller knows which row the lookup is stuck on.
    """
    allowed = {"version", *FAULT_FIELDS}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(f"unknown fields {unknown}; allowed: {sorted(allowed)}")
    scope = body.get("version")
    if scope is not None and scope not in versions:
        raise BadRequest(
            f"version must be one of {versions} (or omitted for every version), got {scope!r}"
        )
    if scope is not None and body.get("concept_drift"):
        raise BadRequest(
            "concept_drift changes the labels every version sees, so it cannot be scoped to a "
            'version; post it without "version"'
        )
    parsers = {
        "latency_seconds": lambda v: _nonnegative("latency_seconds", v),
        "error_rate": lambda v: _nonnegative("error_rate", v, high=1),
        "down": lambda v: _flag("down", v),
        "feature_shift": lambda v: _feature_fault("feature_shift", v, "shift"),
        "null_rate": lambda v: _feature_fault("null_rate", v, "rate"),
        "stale_features": lambda v: _flag("stale_features", v),
        "concept_drift": lambda v: _nonnegative("concept_drift", v, high=1),
    }
    return scope, {key: parsers[key](value) for key, value in body.items() if key != "version"}


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
        """Score one batch per model, split among the versions as live traffic would be."""
        with self._lock:
            for model in self._models.values():
                self._score_batch(model)

    def _score_batch(self, model: ServedModel) -> None:
        drift = model.model_faults.concept_drift
        raw, labels = generate_transactions(model.stream_rng, self.batch_size, drift)
        tick: list[ScoredBatch] = []
        start = 0
        for version, rows in split_rows(len(labels), model.traffic).items():
            rows_of = slice(start, start + rows)
            tick.append(self._score(model, version, raw[rows_of], labels[rows_of]))
            start += rows
        model.last_row = raw[-1].copy()
        model.window.append(tuple(tick))

    def _score(
        self, model: ServedModel, version: str, raw: np.ndarray, labels: np.ndarray
    ) -> ScoredBatch:
        scopes = model.scopes(version)
        failed = np.zeros(len(labels), dtype=bool)
        for faults in scopes:
            raw = faults.corrupt(raw, model.fault_rng)
            failed |= model.fault_rng.random(len(labels)) < faults.error_rate
        started = time.perf_counter()
        try:
            predicted = model.versions[version].predict(raw)
        except Exception:
            failed[:] = True
            predicted = np.zeros(len(labels), dtype=np.int8)
        if any(f.down for f in scopes):
            failed[:] = True
        # Every row in the batch waited for the whole scoring call.
        latency = time.perf_counter() - started + sum(f.latency_seconds for f in scopes)
        model.predictions_total[version] += int(np.sum(~failed))
        model.errors_total[version] += int(np.sum(failed))
        return ScoredBatch(version, labels, predicted, failed, latency)

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

    def _check_traffic(self, model: ServedModel, body: dict[str, Any]) -> dict[str, int]:
        versions = list(model.versions)
        example = json.dumps({versions[0]: 75, versions[-1]: 25})
        if not body:
            raise BadRequest(f"body must give versions integer percents, e.g. {example}")
        unknown = [v for v in body if v not in model.versions]
        if unknown:
            raise BadRequest(
                f"unknown versions {unknown} for model {model.name!r}; known versions: "
                f"{versions}, e.g. {example}"
            )
        for version, percent in body.items():
            if isinstance(percent, bool) or not isinstance(percent, int):
                raise BadRequest(f"{version} must be an integer percent 0..100, got {percent!r}")
            if not 0 <= percent <= 100:
                raise BadRequest(f"{version} must be between 0 and 100, got {percent}")
        total = sum(body.values())
        if total != 100:
            raise BadRequest(
                f"percents must sum to 100, got {total} in {json.dumps(body)}; "
                "versions not named get 0"
            )
        return {v: body.get(v, 0) for v in model.versions}

    def _route(self, model: ServedModel, traffic: dict[str, int]) -> bool:
        """Set the split; the version serving until now becomes the previous one if it no
        longer leads. Returns whether anything changed."""
        traffic = {v: traffic.get(v, 0) for v in model.versions}
        if traffic == model.traffic:
            return False
        model.traffic = traffic
        leader = leading_version(traffic, model.current_version)
        if leader != model.current_version:
            model.previous_version = model.current_version
            model.current_version = leader
        return True

    def status(self, name: str) -> dict[str, Any]:
        """The model's status; ModelDown when no version with traffic answers."""
        with self._lock:
            model = self._model(name)
            if model.health() == "down":
                raise ModelDown(
                    f"model {name!r} is down: every version with traffic "
                    f"({', '.join(model.down_versions())}) fails every prediction; route "
                    f'traffic to a healthy version or clear the fault ({{"down": false}})'
                )
            return self._status(model)

    def _status(self, model: ServedModel) -> dict[str, Any]:
        return {
            "name": model.name,
            "currentVersion": model.current_version,
            "previousVersion": model.previous_version,
            "versions": list(model.versions),
            "status": model.health(),
            "traffic": dict(model.traffic),
            "metrics": window_metrics(model.batches()).as_dict(),
            "versionMetrics": {
                v: window_metrics(mine).as_dict()
                for v in model.versions
                if (mine := model.batches(v))
            },
            "rollbacks": model.rollbacks,
            "deploys": model.deploys,
            "predictions": sum(model.predictions_total.values()),
            "faults": model.model_faults.as_dict(),
            "versionFaults": {v: f.as_dict() for v, f in model.version_faults.items()},
            "sandbox": True,
        }

    def rollback(self, name: str, target_version: Any) -> dict[str, Any]:
        """Route all traffic back to `target_version`; already serving it all is success."""
        with self._lock:
            model = self._model(name)
            target = self._check_version(model, "targetVersion", target_version)
            changed = self._route(model, {target: 100})
            if changed:
                model.rollbacks += 1
            return {**self._status(model), "changed": changed}

    def deploy(self, name: str, version: Any) -> dict[str, Any]:
        """Serve `version` with all traffic; the version serving until now becomes previous."""
        with self._lock:
            model = self._model(name)
            target = self._check_version(model, "version", version)
            changed = self._route(model, {target: 100})
            if changed:
                model.deploys += 1
            return {**self._status(model), "changed": changed}

    def set_traffic(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Split traffic by integer percents, e.g. {"v1": 75, "v2": 25} in a gradual rollback."""
        with self._lock:
            model = self._model(name)
            changed = self._route(model, self._check_traffic(model, body))
            return {**self._status(model), "changed": changed}

    def retrain(self, name: str) -> dict[str, Any]:
        """Train the next version (v3, v4...) on the relation the labels follow now and deploy
        it with all traffic; faults stay as they are."""
        with self._lock:
            model = self._model(name)
            version = f"v{len(model.versions) + 1}"
            # ~50 ms under the lock: the stream skips no tick, it starts one a little late.
            drift = model.model_faults.concept_drift
            model.add_version(version, train_version(version, self.seed, name, drift=drift))
            self._route(model, {version: 100})
            model.deploys += 1
            return {**self._status(model), "changed": True}

    def set_faults(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Inject or clear faults for the whole model, or for one version with "version"."""
        with self._lock:
            model = self._model(name)
            scope, changes = parse_faults(body, list(model.versions))
            current = model.model_faults if scope is None else model.scopes(scope)[1]
            if "stale_features" in changes:
                stale = changes.pop("stale_features")
                keep = current.stale_row if current.stale_row is not None else model.last_row
                changes["stale_row"] = keep.copy() if stale else None
            faults = replace(current, **changes)
            if scope is None:
                model.model_faults = faults
            elif faults.active:
                model.version_faults[scope] = faults
            else:
                model.version_faults.pop(scope, None)
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


_WINDOW_COUNTS: tuple[tuple[str, str, str], ...] = (
    ("model_window_predictions", "window", "Predictions in the sliding window, per version."),
    (
        "model_window_true_positives",
        "tp",
        "True positives among the answered predictions in the window.",
    ),
    (
        "model_window_false_positives",
        "fp",
        "False positives among the answered predictions in the window.",
    ),
    (
        "model_window_false_negatives",
        "fn",
        "False negatives among the answered predictions in the window.",
    ),
)


def _render_metrics(models: list[ServedModel]) -> str:
    """Quality gauges are per version present in the window: during a rollback the old
    version's series lingers until its predictions leave the window, then disappears."""
    per_version: list[tuple[ServedModel, str, WindowMetrics]] = []
    for model in models:
        for version in model.versions:
            mine = model.batches(version)
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
    for metric, attribute, help_text in _WINDOW_COUNTS:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
        for model, version, window in per_version:
            labels = _labels(model=model.name, version=version)
            lines.append(f"{metric}{{{labels}}} {getattr(window, attribute)}")
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
        "# HELP model_rollbacks_total Rollbacks that changed the traffic.",
        "# TYPE model_rollbacks_total counter",
    ]
    for model in models:
        lines.append(f"model_rollbacks_total{{{_labels(model=model.name)}}} {model.rollbacks}")
    lines += [
        "# HELP model_deploys_total Deploys (retrains included) that changed the traffic.",
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
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def _error(self, status: int, message: str) -> None:
            # An error may leave the request's body unread on a keep-alive connection, where
            # it would be parsed as the next request: close the connection instead.
            self.close_connection = True
            self._json(status, {"error": message})

        def _read_json(self, allow_empty: bool = False) -> dict[str, Any]:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise BadRequest("Content-Length must be an integer") from None
            if length < 0:
                raise BadRequest(f"Content-Length must be >= 0, got {length}")
            if length > _MAX_BODY:
                raise BadRequest(f"body larger than {_MAX_BODY} bytes")
            raw = self.rfile.read(length) if length else b""
            if not raw.strip():
                if allow_empty:
                    return {}
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
                    ("POST", "traffic"),
                    ("POST", "retrain"),
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
                body = self._read_json(allow_empty=action == "retrain")
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
                elif action == "traffic":
                    result = platform.set_traffic(name, body)
                elif action == "retrain":
                    if body:
                        raise BadRequest(
                            f"retrain takes no fields, got {sorted(body)}; post {{}} or no body"
                        )
                    result = platform.retrain(name)
                else:
                    result = platform.set_faults(name, body)
                self._json(HTTPStatus.OK, result)
            except UnknownModel as exc:
                self._error(HTTPStatus.NOT_FOUND, str(exc))
            except ModelDown as exc:
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
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
