"""Monitoring sweep, pure part: a model's metric tables in, verdicts and the alerts to send out.

The scheduled sweep flow (flows/sweep.py) reads each model's tables from a directory of CSV or
Parquet files or from SQL tables (`DirectorySource`, `SqlSource`), judges every series (one
metric, or one metric of one feature) with the policy's severity rules (`evaluate`), and posts
what `alerts_to_send` returns to the intake. The file and table contract is in docs/checks.md.

A series is judged row by row, oldest first, and each row only against the rows before it:
appending rows never changes when a breach began. That is what gives a still-breached series
the same startsAt, and so the same intake delivery, on every sweep.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from checks.findings import CheckInputError, Finding, Severity
from checks.io import TABLE_EXTENSIONS, load_table, parse_timestamps
from runbooks.alerts import fingerprint_of
from runbooks.policy import SeverityRule

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
DATASET_STEMS = ("reference", "current")
SUITE_FILE = "quality_suite.json"

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


class SweepThresholds(BaseModel):
    """Fixed numbers for callers without a policy file; the flow uses the policy's rules."""

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

    def rules(self) -> list[SeverityRule]:
        """The same thresholds as policy severity rules (bounds are strict, as the policy's)."""
        rules = [SeverityRule(severity="P1", metric="f1", below=self.f1_floor_p1)]
        for severity, drops in (("P1", self.drop_p1), ("P2", self.drop_p2)):
            rules += [
                SeverityRule(severity=severity, metric=m, drop_above=d) for m, d in drops.items()
            ]
        return rules + [
            SeverityRule(
                severity="P2", metric="latency_p99_seconds", above=self.latency_p99_seconds_p2
            ),
            SeverityRule(severity="P1", metric="error_rate", above=self.error_rate_p1),
            SeverityRule(
                severity="P2", metric="feature_freshness_seconds", above=self.freshness_seconds_p2
            ),
            SeverityRule(severity="P2", metric="psi", above=self.psi_p2),
            SeverityRule(severity="P3", metric="psi", above=self.psi_p3),
            SeverityRule(severity="P2", metric="null_rate", above=self.null_rate_p2),
            SeverityRule(severity="P3", metric="null_rate", above=self.null_rate_p3),
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


def load_metric_tables(
    model_metrics: str | Path | None = None,
    data_quality: str | Path | None = None,
    feature_drift: str | Path | None = None,
) -> MetricTables:
    """Read the three tables from CSV or Parquet files (by extension), checking their columns."""
    out = MetricTables()
    for name, path in (
        ("model_metrics", model_metrics),
        ("data_quality", data_quality),
        ("feature_drift", feature_drift),
    ):
        if path is not None:
            setattr(out, name, _load_file(Path(path), name))
            out.origins[name] = str(path)
    return out


def _load_file(path: Path, name: str) -> pd.DataFrame:
    df = load_table(path, required=TABLES[name], what=name.replace("_", " "))
    df["timestamp"] = parse_timestamps(df["timestamp"], what=f"{name} file {path}")
    return df


# Sources ---------------------------------------------------------------------------------


def _safe_model_name(model: str) -> str:
    if not model or model in (".", "..") or "/" in model or "\\" in model:
        raise CheckInputError(f"model name {model!r} cannot name a folder; use the model's name")
    return model


class DirectorySource:
    """Metric tables as files: `<root>/<table>.<ext>` with a `model` column for every model,
    and/or `<root>/<model>/<table>.<ext>` for one model (plus the optional drift pair
    `reference`/`current` and a `quality_suite.json`). Shared files are read once per sweep."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise CheckInputError(
                f"metric tables directory {self.root} does not exist or is not a directory; "
                "check the sweep's source (request.source or RUNBOOKS_SWEEP_SOURCE)"
            )
        self.shown = str(self.root)
        self._shared: dict[str, pd.DataFrame | CheckInputError | None] = {}

    def __enter__(self) -> DirectorySource:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._shared.clear()

    def _find(self, folder: Path, stem: str) -> Path | None:
        found = [folder / f"{stem}{ext}" for ext in TABLE_EXTENSIONS]
        found = [p for p in found if p.is_file()]
        if len(found) > 1:
            raise CheckInputError(f"{' and '.join(map(str, found))} both exist; keep one of them")
        return found[0] if found else None

    def _shared_table(self, name: str) -> pd.DataFrame | None:
        """The all-models table, loaded once; a broken one raises the same error every time."""
        if name not in self._shared:
            try:
                path = self._find(self.root, name)
                if path is None:
                    self._shared[name] = None
                else:
                    df = load_table(
                        path, required=("model", *TABLES[name]), what=name.replace("_", " ")
                    )
                    df["model"] = df["model"].astype("string")
                    self._shared[name] = df
            except CheckInputError as err:
                self._shared[name] = err
        got = self._shared[name]
        if isinstance(got, CheckInputError):
            raise got
        return got

    def models(self) -> tuple[list[str], list[str]]:
        """Every model with a folder of tables or rows in a shared table, and read errors."""
        names: set[str] = set()
        errors: list[str] = []
        stems = (*TABLES, *DATASET_STEMS)
        for d in self.root.iterdir():
            if d.is_dir() and (
                any(self._exists(d, s) for s in stems) or (d / SUITE_FILE).is_file()
            ):
                names.add(d.name)
        for name in TABLES:
            try:
                df = self._shared_table(name)
            except CheckInputError as err:
                errors.append(str(err))
                continue
            if df is not None:
                names.update(str(m) for m in df["model"].dropna().unique())
        return sorted(names), errors

    @staticmethod
    def _exists(folder: Path, stem: str) -> bool:
        return any((folder / f"{stem}{ext}").is_file() for ext in TABLE_EXTENSIONS)

    def tables(self, model: str) -> MetricTables:
        """The model's tables; a part that cannot be read becomes an error, the rest is read."""
        out = MetricTables()
        try:
            folder = self.root / _safe_model_name(model)
        except CheckInputError as err:
            out.errors.append(str(err))
            return out
        for name, cols in TABLES.items():
            try:
                self._read_table(out, folder, model, name, cols)
            except CheckInputError as err:
                out.errors.append(str(err))
        if folder.is_dir():
            try:
                self._read_datasets(out, folder)
            except CheckInputError as err:
                out.errors.append(str(err))
        if out.is_empty() and not out.errors:
            out.errors.append(
                f"no metric tables for model {model!r} under {self.root}: give "
                f"{model}/model_metrics.csv (or .parquet, also data_quality, feature_drift) "
                f"or rows with model={model} in {self.root}/model_metrics.csv"
            )
        return out

    def _read_table(
        self, out: MetricTables, folder: Path, model: str, name: str, cols: tuple[str, ...]
    ) -> None:
        own = self._find(folder, name) if folder.is_dir() else None
        shared = self._shared_table(name)
        rows = shared[shared["model"] == model] if shared is not None else None
        shared_path = self._find(self.root, name)
        if own is not None and rows is not None and len(rows):
            raise CheckInputError(
                f"model {model!r} has {name} rows in both {own} and {shared_path}; keep one"
            )
        if own is not None:
            df = _load_file(own, name)
            if "model" in df.columns:
                mine = df[df["model"].astype("string") == model]
                if len(df) and not len(mine):
                    raise CheckInputError(
                        f"{name} file {own} is in folder {model!r} but its model column "
                        f"says {sorted(map(str, df['model'].dropna().unique()))[:3]}; "
                        "fix the column or drop it"
                    )
                df = mine
            setattr(out, name, df)
            out.origins[name] = str(own)
        elif rows is not None and len(rows):
            df = rows.copy()
            df["timestamp"] = parse_timestamps(df["timestamp"], what=f"{name} file {shared_path}")
            setattr(out, name, df)
            out.origins[name] = str(shared_path)

    def _read_datasets(self, out: MetricTables, folder: Path) -> None:
        ref, cur = self._find(folder, "reference"), self._find(folder, "current")
        suite = folder / SUITE_FILE
        if cur is None and (ref is not None or suite.is_file()):
            needs = ref if ref is not None else suite
            raise CheckInputError(
                f"{needs} needs a current window beside it: add {folder}/current.csv (or .parquet)"
            )
        if cur is None:
            return
        out.current = _load_dataset(cur, "current")
        out.origins["current"] = str(cur)
        if "timestamp" in out.current.columns and out.current["timestamp"].notna().any():
            out.current_at = _utc(out.current["timestamp"].max())
        else:
            out.current_at = datetime.fromtimestamp(cur.stat().st_mtime, UTC)
        if ref is not None:
            out.reference = _load_dataset(ref, "reference")
            out.origins["reference"] = str(ref)
        if suite.is_file():
            try:
                out.quality_suite = suite.read_text()
            except OSError as err:
                raise CheckInputError(f"quality suite {suite} cannot be read: {err}") from None
            out.origins["quality_suite"] = str(suite)


def _utc(t: Any) -> datetime:
    """A table time as an aware UTC datetime, to the microsecond the intake keeps."""
    ts = pd.Timestamp(t)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.floor("us").to_pydatetime()


def _load_dataset(path: Path, what: str) -> pd.DataFrame:
    df = load_table(path, what=f"{what} window")
    if "timestamp" in df.columns:
        df["timestamp"] = parse_timestamps(df["timestamp"], what=f"{what} window file {path}")
    return df


class SqlSource:
    """Metric tables in a database (SQLite, PostgreSQL, any SQLAlchemy URL): one table per
    kind with a `model` column. A missing table is a missing part, not an error."""

    def __init__(self, url: str, table_names: dict[str, str] | None = None) -> None:
        import sqlalchemy as sa

        from runbooks.store import normalize_url

        self.url = normalize_url(url)
        try:
            parsed = sa.engine.make_url(self.url)
        except sa.exc.ArgumentError as err:
            raise CheckInputError(f"metric tables URL is not a SQLAlchemy URL: {err}") from None
        self.shown = parsed.render_as_string(hide_password=True)
        db_file = parsed.database if parsed.get_backend_name() == "sqlite" else None
        # Connecting to a missing SQLite file would create it empty and report "no tables".
        if db_file not in (None, "", ":memory:") and not Path(db_file).is_file():
            raise CheckInputError(
                f"SQLite database {db_file} does not exist; check the sweep's "
                "sql_url (request.sql_url or RUNBOOKS_SWEEP_SQL_URL)"
            )
        unknown = set(table_names or {}) - set(TABLES)
        if unknown:
            raise CheckInputError(
                f"unknown metric table kind(s) {sorted(unknown)}; use {', '.join(TABLES)}"
            )
        self.names = {**{k: k for k in TABLES}, **(table_names or {})}
        self.engine = sa.create_engine(self.url, pool_pre_ping=True)
        self._tables: dict[str, Any] = {}

    def __enter__(self) -> SqlSource:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.engine.dispose()

    def _where(self, name: str) -> str:
        return f"table {self.names[name]} in {self.shown}"

    def _table(self, name: str) -> Any:
        """The reflected table, None when it does not exist; raises when columns are missing."""
        if name in self._tables:
            return self._tables[name]
        import sqlalchemy as sa

        schema, _, table_name = self.names[name].rpartition(".")
        if not sa.inspect(self.engine).has_table(table_name, schema=schema or None):
            self._tables[name] = None
            return None
        table = sa.Table(
            table_name, sa.MetaData(), schema=schema or None, autoload_with=self.engine
        )
        missing = [c for c in ("model", *TABLES[name]) if c not in table.c]
        if missing:
            raise CheckInputError(
                f"{self._where(name)} lacks column(s) {', '.join(map(repr, missing))}; it has "
                f"{', '.join(repr(c.name) for c in table.c)}. Add them or point "
                f"sql_tables.{name} at the right table"
            )
        self._tables[name] = table
        return table

    def models(self) -> tuple[list[str], list[str]]:
        import sqlalchemy as sa

        names: set[str] = set()
        errors: list[str] = []
        found = 0
        for name in TABLES:
            try:
                table = self._table(name)
            except CheckInputError as err:
                errors.append(str(err))
                continue
            if table is None:
                continue
            found += 1
            with self.engine.connect() as conn:
                names.update(str(m) for m in conn.scalars(sa.select(table.c.model).distinct()))
        if not found and not errors:
            errors.append(
                f"none of the tables {', '.join(self.names.values())} exist in {self.shown}; "
                "create them (docs/checks.md) or point sql_tables at yours"
            )
        return sorted(n for n in names if n), errors

    def tables(self, model: str) -> MetricTables:
        import sqlalchemy as sa

        out = MetricTables()
        for name in TABLES:
            try:
                table = self._table(name)
                if table is None:
                    continue
                with self.engine.connect() as conn:
                    df = pd.read_sql(sa.select(table).where(table.c.model == model), conn)
                if not len(df):
                    continue
                df["timestamp"] = parse_timestamps(df["timestamp"], what=self._where(name))
                setattr(out, name, df)
                out.origins[name] = self._where(name)
            except CheckInputError as err:
                out.errors.append(str(err))
        if out.is_empty() and not out.errors:
            out.errors.append(
                f"no rows with model={model!r} in {', '.join(self.names.values())} of {self.shown}"
            )
        return out


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
        return _utc(times[i])

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


# Alerts ----------------------------------------------------------------------------------


def fingerprint(model: str, metric: str, feature: str | None) -> str:
    """Stable per (model, metric, feature): a changing severity or value is the same alert."""
    return fingerprint_of(
        {"source": SWEEP_SOURCE, "model": model, "metric": metric, "feature": feature or ""}
    )


class FiringAlert(BaseModel):
    """An alert of the sweep that the intake holds as firing."""

    fingerprint: str
    starts_at: datetime
    alertname: str


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _firing_payload(v: SeriesVerdict, starts_at: datetime) -> dict[str, Any]:
    what = f"{v.metric} of {v.feature}" if v.feature else v.metric
    shown = "n/a" if v.value is None else f"{v.value:g}"
    return {
        "model": v.model,
        "alertname": v.alertname,
        "status": "firing",
        "metric": v.metric,
        "value": v.value,
        "baseline": v.baseline,
        "feature": v.feature,
        "severity": v.severity,
        "startsAt": _iso(starts_at),
        "fingerprint": v.fingerprint,
        "source": SWEEP_SOURCE,
        "annotations": {
            "summary": f"{v.model}: {what} = {shown} ({v.severity}), out of bounds since "
            f"{_iso(v.since)}",
            "description": "; ".join(v.reasons),
            "table": v.origin,
        },
    }


def _resolved_payload(v: SeriesVerdict, known: FiringAlert, ends_at: datetime) -> dict[str, Any]:
    what = f"{v.metric} of {v.feature}" if v.feature else v.metric
    return {
        "model": v.model,
        "alertname": known.alertname,
        "status": "resolved",
        "metric": v.metric,
        "value": v.value,
        "baseline": v.baseline,
        "feature": v.feature,
        "startsAt": _iso(known.starts_at),
        "endsAt": _iso(ends_at),
        "fingerprint": known.fingerprint,
        "source": SWEEP_SOURCE,
        "annotations": {
            "summary": f"{v.model}: {what} back within bounds since {_iso(ends_at)}",
            "table": v.origin,
        },
    }


def alerts_to_send(
    verdicts: Iterable[SeriesVerdict], firing: Iterable[FiringAlert]
) -> list[dict[str, Any]]:
    """Generic alerts for the intake (docs/intake.md), from the verdicts and what it holds.

    - A firing alert the table shows recovering after its start is resolved (endsAt = the
      first row back within bounds).
    - A breached series is posted firing, with the start of a still-open alert the intake
      holds (so a moved table window does not open a second one), else the row where the
      breach began; the intake dedups the repeat.
    - A series the tables do not mention is left alone: no data is no evidence of recovery.
    """
    held: dict[str, list[FiringAlert]] = {}
    for a in firing:
        held.setdefault(a.fingerprint, []).append(a)
    out: list[dict[str, Any]] = []
    for v in verdicts:
        open_starts: list[datetime] = []
        for known in sorted(held.get(v.fingerprint, []), key=lambda a: a.starts_at):
            ended = next((r for r in v.recoveries if r > known.starts_at), None)
            if ended is None and not v.breached:
                # Within bounds now but no recovery row after the alert began: the table was
                # rewritten. It is over; say so at the newest row.
                ended = max(v.at, known.starts_at)
            if ended is None:
                open_starts.append(known.starts_at)
            else:
                out.append(_resolved_payload(v, known, ended))
        if v.breached:
            out.append(_firing_payload(v, open_starts[0] if open_starts else v.since))
    return out


def sweep(
    model: str,
    tables: MetricTables,
    thresholds: SweepThresholds | None = None,
) -> list[dict[str, Any]]:
    """The alerts to raise for one model from its latest values, most severe first (fixed
    thresholds, no intake state; the flow uses `evaluate` and `alerts_to_send`)."""
    result = evaluate(model, tables, (thresholds or SweepThresholds()).rules())
    if result.errors:
        raise CheckInputError("; ".join(result.errors))
    alerts = []
    for v in result.verdicts:
        if not v.breached or v.severity is None:
            continue
        labels = {"alertname": v.alertname, "model": model, "severity": v.severity}
        labels["metric"] = v.metric
        if v.feature is not None:
            labels["feature"] = v.feature
        alerts.append(
            {
                "model": model,
                "alertname": v.alertname,
                "status": "firing",
                "metric": v.metric,
                "value": v.value,
                "baseline": v.baseline,
                "feature": v.feature,
                "labels": labels,
                "annotations": {"summary": "; ".join(v.reasons)},
            }
        )
    return alerts
