"""GX suites find each injected fault and flag nothing else."""

from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from checks.findings import CheckInputError
from checks.quality import QualitySuite, build_suite, validate

NOW = pd.Timestamp("2026-11-22T12:00:00Z")


def frame(seed: int, end: pd.Timestamp, n: int = 5000) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "timestamp": pd.date_range(end=end, periods=n, freq="s", tz="UTC"),
            "amount": rng.normal(100, 10, n),
            "V14": rng.normal(0, 1, n),
            "country": rng.choice(["DE", "FR", "US"], n),
            "label": (rng.random(n) < 0.2).astype(int),
        }
    )


@pytest.fixture(scope="module")
def suite() -> QualitySuite:
    ref = frame(0, NOW - pd.Timedelta(days=1))
    return build_suite(ref, label_column="label", required_columns=["label"], freshness_minutes=30)


def failed_keys(suite: QualitySuite, data: pd.DataFrame, now: datetime = NOW) -> set[str]:
    return {f.key for f in validate(suite, data, now=now).findings() if not f.passed}


def test_clean_data_passes_every_expectation(suite: QualitySuite) -> None:
    result = validate(suite, frame(1, NOW), now=NOW)
    assert result.success, result.table()
    assert {o.check for o in result.outcomes} >= {
        "columns",
        "dtype",
        "null_rate",
        "range",
        "outliers",
        "freshness",
        "required",
        "interval",
        "label_balance",
    }


def test_suite_round_trips_through_json(suite: QualitySuite) -> None:
    again = QualitySuite.from_json(suite.to_json())
    assert again == suite
    assert validate(again, frame(1, NOW), now=NOW).success


def test_null_spike_is_found_and_graded(suite: QualitySuite) -> None:
    data = frame(1, NOW)
    data.loc[: int(len(data) * 0.15), "V14"] = np.nan
    result = validate(suite, data, now=NOW)
    bad = [f for f in result.findings() if not f.passed]
    assert [f.key for f in bad] == ["null_rate:V14"]
    assert bad[0].severity == "P2"
    data = frame(1, NOW)
    data.loc[: int(len(data) * 0.07), "V14"] = np.nan
    bad = [f for f in validate(suite, data, now=NOW).findings() if not f.passed]
    assert [(f.key, f.severity) for f in bad] == [("null_rate:V14", "P3")]


def test_out_of_range_values_are_found(suite: QualitySuite) -> None:
    data = frame(1, NOW)
    data.loc[:100, "amount"] = 1e6
    # 2% of rows at 1e6: outside the learned range and beyond the IQR fences
    assert failed_keys(suite, data) == {"range:amount", "outliers:amount"}


def test_missing_column_is_one_schema_finding(suite: QualitySuite) -> None:
    result = validate(suite, frame(1, NOW).drop(columns=["V14"]), now=NOW)
    assert {f.key for f in result.findings() if not f.passed} == {"columns"}
    assert "missing" in str(next(o for o in result.outcomes if o.check == "columns").observed_value)
    assert any(o.success is None and o.column == "V14" for o in result.outcomes)


def test_stale_timestamps_fail_freshness_only(suite: QualitySuite) -> None:
    stale = frame(1, NOW - pd.Timedelta(hours=3))
    assert failed_keys(suite, stale) == {"freshness:timestamp"}


def test_naive_timestamps_are_compared_without_silent_failure(suite: QualitySuite) -> None:
    ref = frame(0, NOW - pd.Timedelta(days=1))
    ref["timestamp"] = ref["timestamp"].dt.tz_localize(None)
    naive_suite = build_suite(ref, freshness_minutes=30)
    cur = frame(1, NOW)
    cur["timestamp"] = cur["timestamp"].dt.tz_localize(None)
    assert validate(naive_suite, cur, now=NOW).success


def test_retyped_column_is_one_dtype_finding(suite: QualitySuite) -> None:
    data = frame(1, NOW)
    data["V14"] = data["V14"].astype(str)
    assert failed_keys(suite, data) == {"dtype:V14"}


def test_gap_in_records_fails_interval(suite: QualitySuite) -> None:
    data = frame(1, NOW)
    data.loc[2500:, "timestamp"] += pd.Timedelta(minutes=20)
    data["timestamp"] = data["timestamp"] - pd.Timedelta(minutes=20)
    assert failed_keys(suite, data) == {"interval:timestamp"}


def test_label_imbalance_is_found(suite: QualitySuite) -> None:
    data = frame(1, NOW)
    data["label"] = 1
    assert failed_keys(suite, data) == {"label_balance:label"}


def test_result_table_lists_failures_first(suite: QualitySuite) -> None:
    data = frame(1, NOW)
    data.loc[:1000, "V14"] = np.nan
    table = validate(suite, data, now=NOW).table()
    lines = table.splitlines()
    assert lines[0].startswith("check") and "FAIL" in lines[1] and "V14" in lines[1]


def test_empty_frame_is_a_clear_error(suite: QualitySuite) -> None:
    with pytest.raises(CheckInputError, match="empty"):
        validate(suite, frame(1, NOW).iloc[:0], now=NOW)
    with pytest.raises(CheckInputError, match="empty"):
        build_suite(frame(1, NOW).iloc[:0])
