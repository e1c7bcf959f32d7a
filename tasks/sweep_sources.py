"""Monitoring sweep, the edges: where metric tables come from, and the alerts they become.

Step 2 of the sweep runbook (flows/sweep.py) reads each model's tables here, from a directory
of CSV or Parquet files (`DirectorySource`) or from SQL tables (`SqlSource`); checks/sweep.py
judges them; step 4 posts what `alerts_to_send` builds from the verdicts and what the intake
holds. The file and table contract is in docs/checks.md, the alert format in docs/intake.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError

from checks.findings import CheckInputError
from checks.io import TABLE_EXTENSIONS, load_table, parse_timestamps
from checks.sweep import (
    SWEEP_SOURCE,
    TABLES,
    MetricTables,
    SeriesVerdict,
    as_utc,
    evaluate,
    fixed_rules,
)
from runbooks.policy import Sweep
from runbooks.store import normalize_url
from tasks.retry import BACKOFF, retry_when

DATASET_STEMS = ("reference", "current")
SUITE_FILE = "quality_suite.json"

_sql_retry: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": BACKOFF[:2],
    "retry_condition_fn": retry_when(lambda e: isinstance(e, OperationalError)),
    # Tables and sources are live objects, and a sweep must always read afresh.
    "cache_policy": NO_CACHE,
}


# Sources ---------------------------------------------------------------------------------


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
            out.current_at = as_utc(out.current["timestamp"].max())
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


def _load_dataset(path: Path, what: str) -> pd.DataFrame:
    df = load_table(path, what=f"{what} window")
    if "timestamp" in df.columns:
        df["timestamp"] = parse_timestamps(df["timestamp"], what=f"{what} window file {path}")
    return df


class SqlSource:
    """Metric tables in a database (SQLite, PostgreSQL, any SQLAlchemy URL): one table per
    kind with a `model` column. A missing table is a missing part, not an error."""

    def __init__(self, url: str, table_names: dict[str, str] | None = None) -> None:
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


@task(**_sql_retry)
def list_models(source: DirectorySource | SqlSource) -> tuple[list[str], list[str]]:
    return source.models()


@task(task_run_name="read_metric_tables-{model}", **_sql_retry)
def read_metric_tables(source: DirectorySource | SqlSource, model: str) -> MetricTables:
    return source.tables(model)


# Alerts ----------------------------------------------------------------------------------


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
    thresholds: Sweep | None = None,
) -> list[dict[str, Any]]:
    """The alerts to raise for one model from its latest values, most severe first (the
    policy's fixed `sweep` thresholds, no intake state; the flow uses `evaluate` and
    `alerts_to_send`)."""
    result = evaluate(model, tables, fixed_rules(thresholds))
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
