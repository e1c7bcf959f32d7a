"""Monitoring sweep, pure part: a model's metric tables in, verdicts and findings out.

The scheduled sweep flow (flows/sweep.py) reads each model's tables with tasks/sweep_sources.py
(a directory of CSV or Parquet files, or SQL tables), judges every series (one metric, or one
metric of one feature) with the policy's severity rules here (`evaluate`), and turns the
verdicts into the alerts it posts to the intake with `tasks.sweep_sources.alerts_to_send`.
The file and table contract is in docs/checks.md.

A series is judged row by row, oldest first, and each row only against the rows before it:
appending rows never changes when a breach began. That is what gives a still-breached series
the same startsAt, and so the same intake delivery, on every sweep.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from checks.findings import CheckInputError, Finding, Severity
from runbooks.alerts import fingerprint_of
from runbooks.policy import SeverityRule, Sweep

MODEL_METRICS_COLUMNS = ("timestamp", "metric", "value")
DATA_QUALITY_COLUMNS = ("timestamp", "feature", "null_rate")
FEATURE_DRIFT_COLUMNS = ("timestamp", "feature", "psi")
TABLES: dict[str, tuple[str, ...]] = {
    "model_metrics": MODEL_METRICS_COLUMNS,
    "data_quality": DATA_QUALITY_COLUMNS,
    "feature_drift": FEATURE_DRIFT_COLUMNS,
}
"""The three metric tables, by file stem / default SQL table name, with their required columns."""

KEY_COLUMNS = {"timestamp", "model", "metric", "feature", "value", "baseline"}

ALERTNAMES = {
    "f1_score": "ModelPerformanceDegraded",
    "f1": "ModelPerformanceDegraded",
    "precision": "ModelPerformanceDegraded",
    "recall": "ModelPerformanceDegraded",
    "accuracy": "ModelPerformanceDegraded",
    "auc": "ModelPerformanceDegraded",
    "latency_p99_seconds": "HighLatencyP99",
    "error_rate": "HighErrorRate",
    "up": "ModelDown",
    "feature_freshness_seconds": "StaleFeatures",
    "psi": "FeatureDrift",
    "null_rate": "NullRateHigh",
}
"""Alertname per metric; the intake groups a model's alerts into incidents by alertname."""

DEFAULT_ALERTNAME = "MetricOutOfBounds"
QUALITY_ALERTNAME = "DataQualityCheckFailed"
SWEEP_SOURCE = "sweep"
_RANK = {"P1": 0, "P2": 1, "P3": 2, "info": 3}


def fixed_rules(thresholds: Sweep | None = None) -> list[SeverityRule]:
    """The policy's fixed sweep thresholds as severity rules (bounds are strict, as the
    severity table's), for callers that judge without the severity table."""
    t = thresholds or Sweep()
    rules = [SeverityRule(severity="P1", metric="f1", below=t.f1_floor_p1)]
    for severity, drops in (("P1", t.drop_p1), ("P2", t.drop_p2)):
        rules += [SeverityRule(severity=severity, metric=m, drop_above=d) for m, d in drops.items()]
    return rules + [
        SeverityRule(severity="P2", metric="latency_p99_seconds", above=t.latency_p99_seconds_p2),
        SeverityRule(severity="P1", metric="error_rate", above=t.error_rate_p1),
        SeverityRule(severity="P2", metric="feature_freshness_seconds", above=t.freshness_seconds),
        SeverityRule(severity="P2", metric="psi", above=t.psi_p2),
        SeverityRule(severity="P3", metric="psi", above=t.psi_p3),
        SeverityRule(severity="P2", metric="null_rate", above=t.null_rate_p2),
        SeverityRule(severity="P3", metric="null_rate", above=t.null_rate_p3),
    ]


class MetricTables(BaseModel):
    """What a sweep reads for one model; any part may be absent.

    `origins` says where each part came from (a file, or a SQL table) so verdicts and errors
    can name it; `errors` holds the parts that could not be read, each naming the fix.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_metrics: pd.DataFrame | None = None
    data_quality: pd.DataFrame | None = None
    feature_drift: pd.DataFrame | None = None
    reference: pd.DataFrame | None = None
    current: pd.DataFrame | None = None
    current_at: datetime | None = Field(None, description="When the current window ends.")
    quality_suite: str | None = Field(None, description="A checks.quality suite as JSON.")
    origins: dict[str, str] = Field(default_factory=dict)
    errors: list[str] = Field(default_factory=list)

    def is_empty(self) -> bool:
        parts = (self.model_metrics, self.data_quality, self.feature_drift, self.current)
        return all(p is None for p in parts)


def as_utc(t: Any) -> datetime:
    """A table time as an aware UTC datetime, to the microsecond the intake keeps."""
    ts = pd.Timestamp(t)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.floor("us").to_pydatetime()


# Judging ---------------------------------------------------------------------------------


class SeriesVerdict(BaseModel):
    """One series (a metric, or a metric of one feature) of one model, judged at its newest row."""

    model: str
    metric: str
    feature: str | None = None
    origin: str = Field("", description="The file or table the series came from.")
    breached: bool
    severity: Severity | None = None
    value: float | None
    baseline: float | None = None
    at: datetime = Field(description="Time of the newest row.")
    since: datetime = Field(description="When the current state (breached or not) began.")
    recoveries: list[datetime] = Field(
        default_factory=list,
        description="Rows where the series was back within bounds after a breach (or the "
        "first row, when it was within bounds).",
    )
    reasons: list[str] = Field(default_factory=list)
    alertname: str = DEFAULT_ALERTNAME

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.model, self.metric, self.feature)

    def finding(self) -> Finding:
        what = f"{self.metric} of {self.feature}" if self.feature else self.metric
        return Finding(
            title=f"{what} out of bounds" if self.breached else f"{what} within bounds",
            severity=self.severity if self.breached else None,
            key=f"{self.metric}:{self.feature}" if self.feature else self.metric,
            check="sweep",
            passed=not self.breached,
            observed={
                "value": self.value,
                "baseline": self.baseline,
                "at": self.at.isoformat(),
                "since": self.since.isoformat(),
                "origin": self.origin,
            },
            message="; ".join(self.reasons),
        )


class ModelSweep(BaseModel):
    """Every series of one model judged, what could not be read, and metrics no rule covers."""

    model: str
    verdicts: list[SeriesVerdict] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    unchecked_metrics: list[str] = Field(
        default_factory=list,
        description="Metrics in the tables that no severity rule names (a typo shows here).",
    )

    def findings(self) -> list[Finding]:
        return [v.finding() for v in self.verdicts]


def _numeric(df: pd.DataFrame, column: str, where: str) -> pd.Series:
    """The column as float; a value that is not a number is an error naming where it is."""
    raw = df[column]
    num = pd.to_numeric(raw, errors="coerce")
    blank = raw.astype("string").str.strip().eq("").fillna(True).astype(bool)
    bad = num.isna() & raw.notna() & ~blank
    if bad.any():
        first = bad.to_numpy().nonzero()[0][0]
        raise CheckInputError(
            f"{where}: column {column!r} has {int(bad.sum())} value(s) that are not numbers, "
            f"e.g. {raw.iloc[first]!r} in data row {first + 1}; write numbers (empty = missing)"
        )
    return num.astype("float64")


def _long(name: str, df: pd.DataFrame, where: str) -> pd.DataFrame:
    """One table as rows of (timestamp, metric, feature, value, baseline)."""
    if df["timestamp"].isna().any():
        n = int(df["timestamp"].isna().sum())
        raise CheckInputError(f"{where}: {n} row(s) without a timestamp; fill or drop them")
    if name == "model_metrics":
        if df["metric"].isna().any():
            raise CheckInputError(f"{where}: rows without a metric name; fill or drop them")
        out = pd.DataFrame(
            {
                "timestamp": df["timestamp"],
                "metric": df["metric"].astype("string"),
                "feature": "",
                "value": _numeric(df, "value", where),
                "baseline": (
                    _numeric(df, "baseline", where) if "baseline" in df.columns else np.nan
                ),
            }
        )
        return out
    if df["feature"].isna().any():
        raise CheckInputError(f"{where}: rows without a feature name; fill or drop them")
    required = TABLES[name][-1]
    metrics = [required]
    for column in df.columns:
        if column in KEY_COLUMNS or column == required:
            continue
        # Extra numeric columns are more metrics of the feature (e.g. ks, out_of_range_rate);
        # text columns (notes, versions) are not.
        if pd.to_numeric(df[column], errors="coerce").notna().sum() == df[column].notna().sum():
            metrics.append(column)
    parts = [
        pd.DataFrame(
            {
                "timestamp": df["timestamp"],
                "metric": m,
                "feature": df["feature"].astype("string"),
                "value": _numeric(df, m, where),
                "baseline": np.nan,
            }
        )
        for m in metrics
    ]
    return pd.concat(parts, ignore_index=True)


def _median(ordered: list[float]) -> float:
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _judge_series(
    model: str,
    metric: str,
    feature: str | None,
    origin: str,
    rows: pd.DataFrame,
    rules: list[SeverityRule],
    baseline_rows: int,
) -> SeriesVerdict:
    """Walk the rows oldest first. A row's baseline is its own `baseline` cell, else the median
    of the earlier rows that were within bounds (the last `baseline_rows` of them, 0 = all),
    so a long breach never becomes its own baseline and resolves itself."""
    rows = rows.sort_values("timestamp", kind="stable")
    times = rows["timestamp"].to_numpy()
    values = rows["value"].to_numpy(dtype="float64")
    given = rows["baseline"].to_numpy(dtype="float64")
    ordered: list[float] = []
    window: deque[float] = deque()
    state: bool | None = None
    since_i = 0
    recoveries: list[int] = []
    fired: list[tuple[SeverityRule, str]] = []
    baseline: float | None = None
    for i, v in enumerate(values):
        baseline = float(given[i]) if not math.isnan(given[i]) else None
        if baseline is None and ordered:
            baseline = _median(ordered)
        fired = [(r, why) for r in rules if (why := r.explain(float(v), baseline)) is not None]
        breached = bool(fired)
        if breached != state:
            since_i = i
            if not breached:
                recoveries.append(i)
        state = breached
        if not breached:
            bisect.insort(ordered, float(v))
            window.append(float(v))
            if baseline_rows and len(window) > baseline_rows:
                old = window.popleft()
                del ordered[bisect.bisect_left(ordered, old)]

    def when(i: int) -> datetime:
        return as_utc(times[i])

    severity = min((r.severity for r, _ in fired), key=_RANK.__getitem__) if fired else None
    return SeriesVerdict(
        model=model,
        metric=metric,
        feature=feature,
        origin=origin,
        breached=bool(fired),
        severity=severity,
        value=float(values[-1]),
        baseline=baseline,
        at=when(len(values) - 1),
        since=when(since_i),
        recoveries=[when(i) for i in recoveries],
        reasons=[why for r, why in fired if r.severity == severity],
        alertname=ALERTNAMES.get(metric, DEFAULT_ALERTNAME),
    )


def _drift_rows(tables: MetricTables) -> pd.DataFrame:
    """PSI of each feature between the reference and current windows, as feature_drift rows."""
    from checks.drift import feature_drift

    assert tables.reference is not None and tables.current is not None
    features = [c for c in tables.reference.columns if c not in ("timestamp", "model")]
    report = feature_drift(tables.reference, tables.current, features=features)
    return pd.DataFrame(
        {
            "timestamp": pd.Timestamp(tables.current_at),
            "feature": [f.feature for f in report.features],
            "psi": [f.psi for f in report.features],
        }
    )


def _quality_verdicts(model: str, tables: MetricTables) -> list[SeriesVerdict]:
    """One verdict per expectation of the team's GX suite; its own severity, not the policy's
    (the suite file holds the team's thresholds)."""
    from checks.quality import QualitySuite, validate

    assert tables.current is not None and tables.current_at is not None
    origin = tables.origins.get("quality_suite", "")
    try:
        suite = QualitySuite.from_json(tables.quality_suite or "")
    except ValueError as err:
        raise CheckInputError(f"quality suite {origin} is not a valid suite: {err}") from None
    result = validate(suite, tables.current)
    at = tables.current_at
    out = []
    for o in result.outcomes:
        if o.success is None:
            continue  # not run: the schema outcome already reports the missing column
        failed = o.success is False
        out.append(
            SeriesVerdict(
                model=model,
                metric=f"quality_{o.check}",
                feature=o.column,
                origin=origin,
                breached=failed,
                severity=(o.severity or "P3") if failed else None,
                value=None if o.unexpected_percent is None else o.unexpected_percent / 100,
                at=at,
                since=at,
                recoveries=[] if failed else [at],
                reasons=[o.detail or f"{o.expectation} failed"] if failed else [],
                alertname=QUALITY_ALERTNAME,
            )
        )
    return out


def evaluate(
    model: str,
    tables: MetricTables,
    rules: Sequence[SeverityRule],
    baseline_rows: int = 0,
) -> ModelSweep:
    """Judge every series of the model's tables with the severity rules of its metric.

    A table that cannot be judged (non-numeric values, rows without a timestamp) becomes an
    error naming the file and column; the other tables are still judged.
    """
    result = ModelSweep(model=model, errors=list(tables.errors))
    by_metric: dict[str, list[SeverityRule]] = {}
    for rule in rules:
        by_metric.setdefault(rule.metric, []).append(rule)
    parts: list[tuple[str, pd.DataFrame]] = []
    for name in TABLES:
        df = getattr(tables, name)
        if df is None or not len(df):
            continue
        where = f"{name.replace('_', ' ')} {tables.origins.get(name, '(in memory)')}"
        try:
            parts.append((tables.origins.get(name, name), _long(name, df, where)))
        except CheckInputError as err:
            result.errors.append(str(err))
    if tables.reference is not None and tables.current is not None:
        try:
            origin = f"{tables.origins.get('reference')} vs {tables.origins.get('current')}"
            parts.append((origin, _long("feature_drift", _drift_rows(tables), origin)))
        except CheckInputError as err:
            result.errors.append(f"drift of {origin}: {err}")
    unchecked: set[str] = set()
    for origin, long in parts:
        long = long[np.isfinite(long["value"])]
        for (metric, feature), rows in long.groupby(["metric", "feature"], sort=True):
            metric, feature = str(metric), str(feature) or None
            metric_rules = by_metric.get(metric)
            if not metric_rules:
                unchecked.add(metric)
                continue
            result.verdicts.append(
                _judge_series(model, metric, feature, origin, rows, metric_rules, baseline_rows)
            )
    if tables.quality_suite is not None and tables.current is not None:
        try:
            result.verdicts += _quality_verdicts(model, tables)
        except CheckInputError as err:
            result.errors.append(str(err))
    result.unchecked_metrics = sorted(unchecked)
    result.verdicts.sort(key=lambda v: (not v.breached, _RANK.get(v.severity or "info", 9)))
    return result


# Alert identity --------------------------------------------------------------------------


def fingerprint(model: str, metric: str, feature: str | None) -> str:
    """Stable per (model, metric, feature): a changing severity or value is the same alert."""
    return fingerprint_of(
        {"source": SWEEP_SOURCE, "model": model, "metric": metric, "feature": feature or ""}
    )
