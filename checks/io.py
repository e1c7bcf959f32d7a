"""Reading the tables checks work on (CSV or Parquet by extension); errors name the fix."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from checks.findings import CheckInputError

TABLE_EXTENSIONS = (".csv", ".parquet", ".pq")


def load_table(
    path: str | Path, *, required: Iterable[str] = (), what: str = "table"
) -> pd.DataFrame:
    """Load a CSV or Parquet file; raise CheckInputError naming the file, the field and the fix."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in TABLE_EXTENSIONS:
        raise CheckInputError(
            f"{what} file {p}: extension {suffix or '(none)'!r} is not supported; "
            "give a .csv or .parquet file"
        )
    if not p.is_file():
        raise CheckInputError(f"{what} file {p} does not exist; check the path")
    try:
        df = pd.read_csv(p) if suffix == ".csv" else pd.read_parquet(p)
    except ImportError as exc:
        raise CheckInputError(
            f"{what} file {p}: reading Parquet needs pyarrow ({exc}); "
            "pip install pyarrow or give a .csv file"
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise CheckInputError(f"{what} file {p} is empty; it needs a header row") from exc
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise CheckInputError(f"{what} file {p} could not be read as {suffix[1:]}: {exc}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise CheckInputError(
            f"{what} file {p} lacks column(s) {', '.join(map(repr, missing))}; "
            f"it has {', '.join(map(repr, df.columns))}. Add them or rename the columns"
        )
    return df


def parse_timestamps(series: pd.Series, *, what: str) -> pd.Series:
    """Timestamps as tz-aware UTC, so comparisons never mix naive and aware values."""
    try:
        ts = pd.to_datetime(series, utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise CheckInputError(
            f"{what}: timestamps could not be parsed ({exc}); "
            "use ISO 8601, e.g. 2026-11-22T10:00:00Z"
        ) from exc
    return ts
