"""Seeded generators of incident data for the checks tests: one scenario per cause."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

ONSET = pd.Timestamp("2026-11-22T12:00:00Z")
CAUSES = (
    "bad_deployment",
    "feature_drift",
    "data_quality",
    "stale_features",
    "infrastructure",
    "concept_drift",
    "bias",
)


def features(n: int, rng: np.random.Generator, shift: float = 0.0) -> pd.DataFrame:
    """Five normal features (the first two shifted by `shift` std) and one category."""
    cols = {f"f{i}": rng.normal(shift if i < 2 else 0.0, 1.0, n) for i in range(5)}
    cols["country"] = rng.choice(["DE", "FR", "US"], n, p=[0.5, 0.3, 0.2])
    return pd.DataFrame(cols)


def predictions(
    n: int,
    rng: np.random.Generator,
    *,
    accuracy_before: float = 0.9,
    accuracy_after: float = 0.9,
    new_version: str | None = None,
    new_version_share: float = 0.5,
    new_version_accuracy: float | None = None,
    degraded_group: str | None = None,
) -> pd.DataFrame:
    """Scored requests over 24 h around ONSET with labels; accuracy set per window/version/group."""
    ts = ONSET + pd.to_timedelta(rng.uniform(-12, 12, n), unit="h")
    after = ts >= ONSET
    version = np.where(
        after & (rng.random(n) < new_version_share) if new_version else np.zeros(n, bool),
        new_version or "v1",
        "v1",
    )
    group = rng.choice(["a", "b"], n)
    acc = np.where(after, accuracy_after, accuracy_before)
    if new_version and new_version_accuracy is not None:
        acc = np.where(version == new_version, new_version_accuracy, acc)
    if degraded_group is not None:
        acc = np.where(after & (group == degraded_group), 0.65, accuracy_before)
    label = (rng.random(n) < 0.4).astype(int)
    correct = rng.random(n) < acc
    pred = np.where(correct, label, 1 - label)
    return pd.DataFrame(
        {
            "timestamp": ts,
            "model_version": version,
            "prediction": pred,
            "label": label,
            "group": group,
        }
    ).sort_values("timestamp", ignore_index=True)


def service_metrics(
    rng: np.random.Generator,
    *,
    latency_after: float = 0.2,
    error_after: float = 0.01,
    cpu_after: float = 0.5,
    freshness_after: float = 60.0,
) -> pd.DataFrame:
    """Hourly service metrics around ONSET; the `*_after` values apply from ONSET on."""
    rows = []
    for h in range(-12, 12):
        t = ONSET + pd.Timedelta(hours=h)
        after = h >= 0
        noise = rng.normal(1.0, 0.02)
        for metric, before, aft in (
            ("latency_p99_seconds", 0.2, latency_after),
            ("error_rate", 0.01, error_after),
            ("cpu_utilization", 0.5, cpu_after),
            ("memory_utilization", 0.5, 0.5),
            ("feature_freshness_seconds", 60.0, freshness_after),
        ):
            rows.append(
                {"timestamp": t, "metric": metric, "value": (aft if after else before) * noise}
            )
    return pd.DataFrame(rows)


def incident(cause: str, seed: int = 0, n: int = 6000) -> dict[str, Any]:
    """Inputs of `diagnose` for an incident whose true cause is `cause`."""
    rng = np.random.default_rng(seed)
    reference = features(n, rng)
    current = features(n, rng)
    preds = predictions(n, rng)
    metrics = service_metrics(rng)
    changes: list[dict[str, Any]] = []
    if cause == "bad_deployment":
        preds = predictions(n, rng, new_version="v2", new_version_accuracy=0.65)
        changes = [
            {
                "time": ONSET.isoformat(),
                "kind": "deployment",
                "description": "canary v2 at 50%",
                "version": "v2",
            }
        ]
    elif cause == "feature_drift":
        current = features(n, rng, shift=1.0)
        preds = predictions(n, rng, accuracy_after=0.75)
    elif cause == "data_quality":
        current.loc[current.sample(frac=0.3, random_state=seed).index, "f2"] = np.nan
        current.loc[current.sample(frac=0.05, random_state=seed + 1).index, "f3"] = 1e6
        preds = predictions(n, rng, accuracy_after=0.8)
        changes = [
            {
                "time": ONSET.isoformat(),
                "kind": "pipeline",
                "description": "new ETL job for f2",
                "version": None,
            }
        ]
    elif cause == "stale_features":
        metrics = service_metrics(rng, freshness_after=7200.0)
        preds = predictions(n, rng, accuracy_after=0.8)
    elif cause == "infrastructure":
        metrics = service_metrics(rng, latency_after=3.5, error_after=0.15, cpu_after=0.97)
    elif cause == "concept_drift":
        preds = predictions(n, rng, accuracy_after=0.72)
    elif cause == "bias":
        preds = predictions(n, rng, degraded_group="b")
    else:
        raise ValueError(f"unknown cause {cause!r}; use one of {CAUSES}")
    return {
        "reference": reference,
        "current": current,
        "predictions": preds,
        "changes": changes,
        "metrics": metrics,
        "onset": ONSET,
    }
