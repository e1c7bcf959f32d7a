"""Monitoring sweep, pure part: metric tables in, the alerts to raise out.

The scheduled sweep flow loads a model's tables, calls `sweep`, and posts what comes back
to the intake. Alerts are plain dicts in the product's generic alert format; thresholds
default to the policy's numbers and are parameters, never constants in a flow.

Tables (CSV or Parquet):
  model metrics  timestamp,metric,value   (f1, precision, recall, accuracy, auc,
                 latency_p99_seconds, error_rate, feature_freshness_seconds, ...)
  data quality   timestamp,feature,null_rate
  feature drift  timestamp,feature,psi
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, Field

from checks.findings import CheckInputError, Severity
from checks.io import load_table, parse_timestamps

MODEL_METRICS_COLUMNS = ("timestamp", "metric", "value")
DATA_QUALITY_COLUMNS = ("timestamp", "feature", "null_rate")
FEATURE_DRIFT_COLUMNS = ("timestamp", "feature", "psi")


class SweepThresholds(BaseModel):
    """Policy numbers the sweep compares the latest values with."""

    f1_floor_p1: float = 0.70
    drop_p1: dict[str, float] = Field(default_factory=lambda: {"f1": 0.20})
    drop_p2: dict[str, float] = Field(
        default_factory=lambda: {"f1": 0.10, "precision": 0.15, "recall": 0.15, "auc": 0.10}
    )
    latency_p99_seconds_p2: float = 2.0
    error_rate_p1: float = 0.10
    freshness_seconds_p2: float = 3600.0
    psi_p3: float = 0.2
    psi_p2: float = 0.3
    null_rate_p3: float = 0.05
    null_rate_p2: float = 0.10


class MetricTables(BaseModel):
    """The three tables a sweep reads; any may be absent."""

    model_config = {"arbitrary_types_allowed": True}

    model_metrics: pd.DataFrame | None = None
    data_quality: pd.DataFrame | None = None
    feature_drift: pd.DataFrame | None = None


def load_metric_tables(
    model_metrics: str | Path | None = None,
    data_quality: str | Path | None = None,
    feature_drift: str | Path | None = None,
) -> MetricTables:
    """Read the tables from CSV or Parquet (by extension), checking their columns."""

    def load(path: str | Path | None, cols: tuple[str, ...], what: str) -> pd.DataFrame | None:
        if path is None:
            return None
        df = load_table(path, required=cols, what=what)
        df["timestamp"] = parse_timestamps(df["timestamp"], what=f"{what} file {path}")
        return df

    return MetricTables(
        model_metrics=load(model_metrics, MODEL_METRICS_COLUMNS, "model metrics"),
        data_quality=load(data_quality, DATA_QUALITY_COLUMNS, "data quality"),
        feature_drift=load(feature_drift, FEATURE_DRIFT_COLUMNS, "feature drift"),
    )


def _alert(
    model: str,
    alertname: str,
    severity: Severity,
    metric: str,
    value: float,
    summary: str,
    baseline: float | None = None,
    feature: str | None = None,
) -> dict[str, Any]:
    labels = {"alertname": alertname, "model": model, "severity": severity, "metric": metric}
    if feature is not None:
        labels["feature"] = feature
    return {
        "model": model,
        "alertname": alertname,
        "status": "firing",
        "metric": metric,
        "value": float(value),
        "baseline": None if baseline is None else float(baseline),
        "feature": feature,
        "labels": labels,
        "annotations": {"summary": summary},
    }


def _check_columns(df: pd.DataFrame, cols: tuple[str, ...], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise CheckInputError(f"{what} table lacks column(s) {missing}; it needs {', '.join(cols)}")


def _latest(df: pd.DataFrame, by: str) -> pd.DataFrame:
    """Rows at each key's newest timestamp."""
    df = df.sort_values("timestamp", kind="stable")
    return df.groupby(by, sort=True).tail(1).set_index(by)


def _model_metric_alerts(model: str, df: pd.DataFrame, t: SweepThresholds) -> list[dict]:
    _check_columns(df, MODEL_METRICS_COLUMNS, "model metrics")
    df = df.dropna(subset=["value"]).sort_values("timestamp", kind="stable")
    alerts: list[dict[str, Any]] = []
    for metric, g in df.groupby("metric", sort=True):
        metric = str(metric)
        value = float(g["value"].iloc[-1])
        earlier = g["value"].iloc[:-1]
        baseline = float(earlier.median()) if len(earlier) else None
        if metric == "latency_p99_seconds" and value > t.latency_p99_seconds_p2:
            alerts.append(
                _alert(
                    model,
                    "HighLatencyP99",
                    "P2",
                    metric,
                    value,
                    f"p99 latency {value:.2f} s > {t.latency_p99_seconds_p2} s",
                    baseline,
                )
            )
        elif metric == "error_rate" and value > t.error_rate_p1:
            alerts.append(
                _alert(
                    model,
                    "HighErrorRate",
                    "P1",
                    metric,
                    value,
                    f"error rate {value:.1%} > {t.error_rate_p1:.0%}",
                    baseline,
                )
            )
        elif metric == "feature_freshness_seconds" and value > t.freshness_seconds_p2:
            alerts.append(
                _alert(
                    model,
                    "StaleFeatures",
                    "P2",
                    metric,
                    value,
                    f"features {value:.0f} s old > {t.freshness_seconds_p2:.0f} s",
                    baseline,
                )
            )
        elif metric in t.drop_p2 or metric in t.drop_p1:
            drop = (baseline - value) / baseline if baseline else None
            severity: Severity | None = None
            below_floor = metric == "f1" and value < t.f1_floor_p1
            if below_floor or (drop is not None and drop > t.drop_p1.get(metric, float("inf"))):
                severity = "P1"
            elif drop is not None and drop > t.drop_p2.get(metric, float("inf")):
                severity = "P2"
            if severity:
                drop_text = f", {drop:.1%} below baseline {baseline:.3f}" if drop else ""
                alerts.append(
                    _alert(
                        model,
                        "ModelPerformanceDegraded",
                        severity,
                        metric,
                        value,
                        f"{metric} {value:.3f}{drop_text}",
                        baseline,
                    )
                )
    return alerts


def _feature_alerts(
    model: str,
    df: pd.DataFrame,
    column: str,
    p3: float,
    p2: float,
    alertname: str,
    what: str,
    cols: tuple[str, ...],
) -> list[dict[str, Any]]:
    _check_columns(df, cols, what)
    latest = _latest(df.dropna(subset=[column]), "feature")
    alerts = []
    for feature, row in latest.iterrows():
        value = float(row[column])
        severity: Severity | None = "P2" if value > p2 else "P3" if value >= p3 else None
        if severity:
            alerts.append(
                _alert(
                    model,
                    alertname,
                    severity,
                    column,
                    value,
                    f"{column} of {feature} is {value:.3f} (P3 >= {p3}, P2 > {p2})",
                    feature=str(feature),
                )
            )
    return alerts


def sweep(
    model: str,
    tables: MetricTables,
    thresholds: SweepThresholds | None = None,
) -> list[dict[str, Any]]:
    """The alerts to raise for one model from its latest metric values, most severe first."""
    t = thresholds or SweepThresholds()
    alerts: list[dict[str, Any]] = []
    if tables.model_metrics is not None and len(tables.model_metrics):
        alerts += _model_metric_alerts(model, tables.model_metrics, t)
    if tables.feature_drift is not None and len(tables.feature_drift):
        alerts += _feature_alerts(
            model,
            tables.feature_drift,
            "psi",
            t.psi_p3,
            t.psi_p2,
            "FeatureDrift",
            "feature drift",
            FEATURE_DRIFT_COLUMNS,
        )
    if tables.data_quality is not None and len(tables.data_quality):
        alerts += _feature_alerts(
            model,
            tables.data_quality,
            "null_rate",
            t.null_rate_p3,
            t.null_rate_p2,
            "NullRateHigh",
            "data quality",
            DATA_QUALITY_COLUMNS,
        )
    rank = {"P1": 0, "P2": 1, "P3": 2}
    return sorted(alerts, key=lambda a: rank[a["labels"]["severity"]])
