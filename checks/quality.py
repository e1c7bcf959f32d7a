"""Data-quality suites with Great Expectations 1.x: the runbook's "is the data itself broken?".

A suite is learned from a reference dataset plus thresholds and kept as plain JSON
(`QualitySuite`), so one reference gives a suite that every later run reuses. Running it
builds the GX expectations once per suite and column set (cached), validates the frame
in one `ValidationDefinition.run`, and turns each expectation result into a Finding.

Two checks run beside GX, on metadata or one column, because GX 1.24 cannot do them:
column types (its type-list expectation does not recognise pandas 3's `str`, `category`
and tz-aware datetime dtypes) and the interval between records (no such expectation).
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from checks.findings import CheckInputError, Finding, Severity

CheckKind = Literal[
    "columns",
    "dtype",
    "null_rate",
    "range",
    "outliers",
    "freshness",
    "required",
    "interval",
    "label_balance",
]
GX_KINDS = {"columns", "null_rate", "range", "outliers", "freshness", "required", "label_balance"}


class ExpectationSpec(BaseModel):
    """One expectation of a suite, as data: what to check, on which column, with what bounds."""

    check: CheckKind
    column: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    severity: Severity = "P2"


class QualitySuite(BaseModel):
    """A reusable data-quality suite; `to_json` / `from_json` round-trip it."""

    name: str
    expectations: list[ExpectationSpec]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> QualitySuite:
        return cls.model_validate_json(text)


def dtype_family(dtype: Any) -> str:
    """Coarse type of a column: what must not change between reference and current."""
    api = pd.api.types
    if api.is_bool_dtype(dtype):
        return "bool"
    if api.is_datetime64_any_dtype(dtype):
        tz = getattr(dtype, "tz", None)
        return "datetime_tz" if tz is not None else "datetime"
    if api.is_numeric_dtype(dtype):
        return "numeric"
    if isinstance(dtype, pd.CategoricalDtype):
        return "category"
    return "string"


def build_suite(
    reference: pd.DataFrame,
    *,
    name: str = "data_quality",
    timestamp_column: str | None = "timestamp",
    freshness_minutes: float | None = 60.0,
    required_columns: list[str] | None = None,
    label_column: str | None = None,
    label_tolerance: float = 0.1,
    null_warn: float = 0.05,
    null_p2: float = 0.10,
    range_margin: float = 0.1,
    range_mostly: float = 0.999,
    outlier_k: float = 1.5,
    max_gap_factor: float = 2.0,
) -> QualitySuite:
    """Learn a suite from the reference: schema, null rates, ranges, IQR fences, freshness,
    required columns, record interval and label balance.

    Ranges are the reference min/max widened by `range_margin` of the span and allow
    1 - `range_mostly` of rows outside; the IQR check allows twice the reference's own
    outlier share (at least 1%). The record interval allows `max_gap_factor` times the
    largest reference gap.
    """
    if len(reference) == 0:
        raise CheckInputError("reference is empty; a suite is learned from reference rows")
    if not 0 <= null_warn <= null_p2 <= 1:
        raise CheckInputError(f"need 0 <= null_warn <= null_p2 <= 1, got {null_warn}, {null_p2}")
    cols = list(reference.columns)
    specs: list[ExpectationSpec] = [
        ExpectationSpec(check="columns", params={"column_set": cols}, severity="P2")
    ]
    for col in cols:
        specs.append(
            ExpectationSpec(
                check="dtype",
                column=col,
                params={"family": dtype_family(reference[col].dtype)},
                severity="P2",
            )
        )
    for col in cols:
        if col == timestamp_column or col in (required_columns or []):
            continue
        specs.append(
            ExpectationSpec(
                check="null_rate",
                column=col,
                params={"warn": null_warn, "p2": null_p2},
                severity="P2",
            )
        )
    for col in cols:
        s = reference[col]
        if dtype_family(s.dtype) != "numeric" or col == label_column:
            continue
        v = s.dropna().to_numpy(np.float64)
        if v.size == 0:
            continue
        lo, hi = float(v.min()), float(v.max())
        pad = range_margin * (hi - lo)
        specs.append(
            ExpectationSpec(
                check="range",
                column=col,
                params={"min_value": lo - pad, "max_value": hi + pad, "mostly": range_mostly},
                severity="P2",
            )
        )
        q1, q3 = (float(x) for x in np.quantile(v, [0.25, 0.75]))
        iqr = q3 - q1
        if iqr > 0:
            fence_lo, fence_hi = q1 - outlier_k * iqr, q3 + outlier_k * iqr
            ref_share = float(np.mean((v < fence_lo) | (v > fence_hi)))
            specs.append(
                ExpectationSpec(
                    check="outliers",
                    column=col,
                    params={
                        "min_value": fence_lo,
                        "max_value": fence_hi,
                        "mostly": 1 - max(2 * ref_share, 0.01),
                        "reference_share": ref_share,
                    },
                    severity="P3",
                )
            )
    if timestamp_column is not None and timestamp_column in reference.columns:
        ts = reference[timestamp_column]
        if not pd.api.types.is_datetime64_any_dtype(ts.dtype):
            raise CheckInputError(
                f"timestamp column {timestamp_column!r} is {ts.dtype}, not a datetime; "
                "parse it with pd.to_datetime(..., utc=True)"
            )
        if freshness_minutes is not None:
            specs.append(
                ExpectationSpec(
                    check="freshness",
                    column=timestamp_column,
                    params={"max_age_minutes": freshness_minutes},
                    severity="P2",
                )
            )
        gaps = _gaps_seconds(ts)
        if gaps.size:
            specs.append(
                ExpectationSpec(
                    check="interval",
                    column=timestamp_column,
                    params={
                        "expected_seconds": float(np.median(gaps)),
                        "max_gap_seconds": float(max(gaps.max(), np.median(gaps)) * max_gap_factor),
                    },
                    severity="P3",
                )
            )
    for col in required_columns or []:
        if col not in reference.columns:
            raise CheckInputError(f"required column {col!r} is not in the reference; add it")
        specs.append(ExpectationSpec(check="required", column=col, severity="P2"))
    if label_column is not None:
        if label_column not in reference.columns:
            raise CheckInputError(f"label column {label_column!r} is not in the reference")
        lab = reference[label_column].dropna()
        if not set(pd.unique(lab)) <= {0, 1}:
            raise CheckInputError(
                f"label column {label_column!r} must be binary 0/1 for the balance check"
            )
        rate = float(lab.astype(float).mean())
        specs.append(
            ExpectationSpec(
                check="label_balance",
                column=label_column,
                params={
                    "reference_rate": rate,
                    "min_value": max(0.0, rate - label_tolerance),
                    "max_value": min(1.0, rate + label_tolerance),
                },
                severity="P3",
            )
        )
    return QualitySuite(name=name, expectations=specs)


def _gaps_seconds(ts: pd.Series) -> np.ndarray:
    v = ts.dropna()
    if len(v) < 2:
        return np.empty(0)
    if getattr(v.dtype, "tz", None) is not None:
        v = v.dt.tz_convert(None)
    ns = np.sort(v.to_numpy("datetime64[ns]").astype(np.int64))
    return np.diff(ns) / 1e9


class ExpectationOutcome(BaseModel):
    """The result of one expectation: success, what was observed, how much was unexpected."""

    check: CheckKind
    column: str | None
    expectation: str = Field(description="GX expectation type, or 'runbooks:<check>'.")
    success: bool | None = Field(description="None when it could not run (e.g. column absent).")
    observed_value: Any = None
    unexpected_percent: float | None = None
    severity: Severity | None = None
    detail: str = ""


class QualityResult(BaseModel):
    """Outcomes of a suite run, as Findings and as a readable table."""

    suite: str
    rows: int
    outcomes: list[ExpectationOutcome]

    @property
    def success(self) -> bool:
        return all(o.success is not False for o in self.outcomes)

    def findings(self) -> list[Finding]:
        return [
            Finding(
                title=_title(o),
                severity=o.severity if o.success is False else None,
                key=f"{o.check}:{o.column}" if o.column else o.check,
                check=f"quality:{o.check}",
                passed=o.success is not False,
                observed={
                    "observed_value": _jsonable(o.observed_value),
                    "unexpected_percent": o.unexpected_percent,
                    "rows": self.rows,
                },
                threshold={"expectation": o.expectation},
                message=o.detail,
            )
            for o in self.outcomes
        ]

    def table(self) -> str:
        """Plain-text table, one line per expectation, failures first."""
        order = sorted(self.outcomes, key=lambda o: (o.success is not False, o.check))
        rows = [("check", "column", "result", "observed", "unexpected %", "severity")]
        for o in order:
            result = {True: "ok", False: "FAIL", None: "not run"}[o.success]
            rows.append(
                (
                    o.check,
                    o.column or "-",
                    result,
                    _short(o.observed_value),
                    "-" if o.unexpected_percent is None else f"{o.unexpected_percent:.2f}",
                    (o.severity or "-") if o.success is False else "-",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows
        )


def _title(o: ExpectationOutcome) -> str:
    col = f" on {o.column}" if o.column else ""
    if o.success is None:
        return f"{o.check}{col} not run"
    return f"{o.check}{col} " + ("ok" if o.success else "failed")


def _short(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float | np.floating):
        return f"{float(v):.4g}"
    text = str(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, list | tuple | set):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, str | int | float | bool) or v is None:
        return v
    return str(v)


# --- running on Great Expectations -------------------------------------------------------

_CACHE: dict[tuple[str, tuple[str, ...]], Any] = {}
_CACHE_LOCK = threading.Lock()
_CONTEXT: Any = None


def _context() -> Any:
    """One ephemeral GX context per process, progress bars off."""
    global _CONTEXT
    if _CONTEXT is None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        ctx = gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        _CONTEXT = ctx
    return _CONTEXT


def gx_expectations(specs: list[tuple[int, ExpectationSpec]]) -> list[Any]:
    """The GX 1.x expectation objects for the specs GX runs; meta carries the spec index."""
    import great_expectations.expectations as gxe

    out: list[Any] = []
    for i, s in specs:
        meta = {"runbooks_spec": i}
        p = s.params
        if s.check == "columns":
            out.append(
                gxe.ExpectTableColumnsToMatchSet(
                    column_set=p["column_set"], exact_match=True, meta=meta
                )
            )
        elif s.check == "null_rate":
            out.append(
                gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(
                    column=s.column, min_value=1 - p["warn"], meta=meta
                )
            )
        elif s.check in ("range", "outliers"):
            out.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=s.column,
                    min_value=p["min_value"],
                    max_value=p["max_value"],
                    mostly=p["mostly"],
                    meta=meta,
                )
            )
        elif s.check == "freshness":
            out.append(
                gxe.ExpectColumnMaxToBeBetween(
                    column=s.column, min_value={"$PARAMETER": f"cutoff_{i}"}, meta=meta
                )
            )
        elif s.check == "required":
            out.append(gxe.ExpectColumnValuesToNotBeNull(column=s.column, meta=meta))
        elif s.check == "label_balance":
            out.append(
                gxe.ExpectColumnMeanToBeBetween(
                    column=s.column, min_value=p["min_value"], max_value=p["max_value"], meta=meta
                )
            )
    return out


def _validation_definition(suite: QualitySuite, runnable: list[tuple[int, ExpectationSpec]]) -> Any:
    """Build (once per suite and runnable set) the GX suite and validation definition."""
    import great_expectations as gx

    key = (suite.to_json(), tuple(str(i) for i, _ in runnable))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        ctx = _context()
        n = len(_CACHE)
        bd = (
            ctx.data_sources.add_pandas(f"runbooks_{n}")
            .add_dataframe_asset(f"frame_{n}")
            .add_batch_definition_whole_dataframe(f"whole_{n}")
        )
        gsuite = ctx.suites.add(gx.ExpectationSuite(name=f"{suite.name}_{n}"))
        for e in gx_expectations(runnable):
            gsuite.add_expectation(e)
        vd = ctx.validation_definitions.add(
            gx.ValidationDefinition(name=f"{suite.name}_{n}", data=bd, suite=gsuite)
        )
        _CACHE[key] = vd
        return vd


def _cutoff(column: pd.Series, max_age_minutes: float, now: datetime) -> pd.Timestamp:
    """now - max age, tz-aware when the column is and naive UTC when it is not (GX fails
    silently, success=False with raised_exception, when they differ)."""
    ts = pd.Timestamp(now)
    ts = ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC)
    cutoff = ts - timedelta(minutes=max_age_minutes)
    tz = getattr(column.dtype, "tz", None)
    return cutoff.tz_convert(tz) if tz is not None else cutoff.tz_localize(None)


def validate(
    suite: QualitySuite, data: pd.DataFrame, *, now: datetime | None = None
) -> QualityResult:
    """Run the suite on a frame; per-column checks on absent or retyped columns do not run
    (the schema outcome already reports them), so one fault gives one failure."""
    if len(data) == 0:
        raise CheckInputError("current data is empty; nothing to validate")
    now = now or datetime.now(UTC)
    present = set(data.columns)
    outcomes: dict[int, ExpectationOutcome] = {}
    retyped: set[str] = set()
    for i, s in enumerate(suite.expectations):
        if s.check == "dtype" and s.column in present:
            fam = dtype_family(data[s.column].dtype)
            ok = fam == s.params["family"]
            if not ok:
                retyped.add(s.column)
            outcomes[i] = ExpectationOutcome(
                check="dtype",
                column=s.column,
                expectation="runbooks:dtype",
                success=ok,
                observed_value=fam,
                severity=s.severity,
                detail=f"{s.column} is {fam}, reference is {s.params['family']}"
                + ("" if ok else f"; cast {s.column} back to {s.params['family']} upstream"),
            )
    runnable: list[tuple[int, ExpectationSpec]] = []
    params: dict[str, Any] = {}
    for i, s in enumerate(suite.expectations):
        if s.check == "dtype":
            if s.column not in present:
                outcomes[i] = _not_run(s, "column absent")
            continue
        if s.column is not None and (s.column not in present or s.column in retyped):
            why = "column absent" if s.column not in present else "column type changed"
            outcomes[i] = _not_run(s, why)
            continue
        if s.check == "interval":
            outcomes[i] = _interval(s, data[s.column])
            continue
        if s.check == "freshness":
            if not pd.api.types.is_datetime64_any_dtype(data[s.column].dtype):
                outcomes[i] = _not_run(s, "timestamp column is not a datetime")
                continue
            params[f"cutoff_{i}"] = _cutoff(data[s.column], s.params["max_age_minutes"], now)
        runnable.append((i, s))
    if runnable:
        vd = _validation_definition(suite, runnable)
        result = vd.run(
            batch_parameters={"dataframe": data},
            expectation_parameters=params,
            result_format="BASIC",
        )
        for r in result.results:
            i = int(r.expectation_config.meta["runbooks_spec"])
            outcomes[i] = _outcome(suite.expectations[i], r)
    return QualityResult(
        suite=suite.name,
        rows=len(data),
        outcomes=[outcomes[i] for i in sorted(outcomes)],
    )


def _not_run(s: ExpectationSpec, why: str) -> ExpectationOutcome:
    return ExpectationOutcome(
        check=s.check, column=s.column, expectation="-", success=None, detail=why
    )


def _interval(s: ExpectationSpec, ts: pd.Series) -> ExpectationOutcome:
    if not pd.api.types.is_datetime64_any_dtype(ts.dtype):
        return _not_run(s, "timestamp column is not a datetime")
    gaps = _gaps_seconds(ts)
    max_gap = float(gaps.max()) if gaps.size else 0.0
    ok = max_gap <= s.params["max_gap_seconds"]
    return ExpectationOutcome(
        check="interval",
        column=s.column,
        expectation="runbooks:interval",
        success=ok,
        observed_value={"max_gap_seconds": max_gap, "median_gap_seconds": float(np.median(gaps))}
        if gaps.size
        else {"max_gap_seconds": 0.0},
        severity=s.severity,
        detail=f"largest gap between records {max_gap:.0f} s "
        f"(allowed {s.params['max_gap_seconds']:.0f} s)",
    )


def _outcome(s: ExpectationSpec, r: Any) -> ExpectationOutcome:
    res = r.result or {}
    exc = r.exception_info or {}
    raised = _raised(exc)
    observed = res.get("observed_value")
    unexpected = res.get("unexpected_percent")
    severity: Severity | None = s.severity
    detail = ""
    success: bool | None = bool(r.success)
    if raised:
        success = False
        detail = f"GX raised: {raised}"
    elif s.check == "null_rate" and observed is not None:
        null_share = 1 - float(observed)
        observed = null_share
        severity = "P2" if null_share > s.params["p2"] else "P3"
        detail = (
            f"{s.column}: {null_share:.1%} null "
            f"(warn > {s.params['warn']:.0%}, P2 > {s.params['p2']:.0%})"
        )
    elif s.check == "columns":
        details = res.get("details", {}).get("mismatched", {})
        if details:
            observed = {k: sorted(v) for k, v in details.items()}
        detail = "columns match the reference" if success else f"schema changed: {details}"
    elif s.check == "freshness":
        detail = f"newest {s.column} {observed}; max age {s.params['max_age_minutes']} min"
    elif unexpected is not None:
        lo, hi = s.params.get("min_value"), s.params.get("max_value")
        detail = f"{unexpected:.2f}% of {s.column} outside [{lo}, {hi}]"
    return ExpectationOutcome(
        check=s.check,
        column=s.column,
        expectation=r.expectation_config.type,
        success=success,
        observed_value=_jsonable(observed),
        unexpected_percent=None if unexpected is None else float(unexpected),
        severity=severity,
        detail=detail,
    )


def _raised(exc: dict[str, Any]) -> str | None:
    """GX reports exceptions either flat or keyed by metric; return the first message."""
    if exc.get("raised_exception"):
        return str(exc.get("exception_message"))
    for v in exc.values():
        if isinstance(v, dict) and v.get("raised_exception"):
            return str(v.get("exception_message"))
    return None


def suite_summary(result: QualityResult) -> str:
    """One JSON line for logs: counts of ok, failed and not-run expectations."""
    counts = {"ok": 0, "failed": 0, "not_run": 0}
    for o in result.outcomes:
        counts[{True: "ok", False: "failed", None: "not_run"}[o.success]] += 1
    return json.dumps({"suite": result.suite, "rows": result.rows} | counts)
