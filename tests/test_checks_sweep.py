"""The sweep turns metric tables into generic alerts, only where a threshold is crossed."""

from pathlib import Path

import pandas as pd
import pytest
import yaml

from checks.findings import CheckInputError
from checks.sweep import MetricTables, evaluate, fixed_rules
from runbooks.policy import DEFAULT_POLICY, load_policy
from tasks.sweep_sources import load_metric_tables, sweep


def tables() -> MetricTables:
    ts = pd.date_range("2026-11-22", periods=4, freq="h", tz="UTC")
    mm = pd.DataFrame(
        {
            "timestamp": list(ts) * 3,
            "metric": ["f1"] * 4 + ["latency_p99_seconds"] * 4 + ["error_rate"] * 4,
            "value": [0.90, 0.91, 0.90, 0.78, 0.2, 0.2, 0.3, 2.5, 0.01, 0.01, 0.01, 0.02],
        }
    )
    drift = pd.DataFrame(
        {"timestamp": [ts[3]] * 3, "feature": ["V14", "V1", "amount"], "psi": [0.35, 0.22, 0.05]}
    )
    dq = pd.DataFrame(
        {"timestamp": [ts[3]] * 2, "feature": ["V14", "V1"], "null_rate": [0.12, 0.0]}
    )
    return MetricTables(model_metrics=mm, feature_drift=drift, data_quality=dq)


def test_sweep_raises_alerts_only_over_thresholds() -> None:
    alerts = sweep("fraud", tables())
    got = {(a["alertname"], a["feature"] or a["metric"], a["labels"]["severity"]) for a in alerts}
    assert got == {
        ("ModelPerformanceDegraded", "f1", "P2"),
        ("HighLatencyP99", "latency_p99_seconds", "P2"),
        ("FeatureDrift", "V14", "P2"),
        ("FeatureDrift", "V1", "P3"),
        ("NullRateHigh", "V14", "P2"),
    }
    f1 = next(a for a in alerts if a["metric"] == "f1")
    assert f1["baseline"] == pytest.approx(0.90) and f1["value"] == pytest.approx(0.78)
    assert set(f1) == {
        "model",
        "alertname",
        "status",
        "metric",
        "value",
        "baseline",
        "feature",
        "labels",
        "annotations",
    }
    assert f1["status"] == "firing" and f1["annotations"]["summary"]


def test_loader_reads_csv_and_rejects_missing_columns(tmp_path: Path) -> None:
    t = tables()
    t.model_metrics.to_csv(tmp_path / "m.csv", index=False)
    t.feature_drift.drop(columns=["psi"]).to_csv(tmp_path / "d.csv", index=False)
    loaded = load_metric_tables(model_metrics=tmp_path / "m.csv")
    assert len(sweep("fraud", loaded)) == 2
    with pytest.raises(CheckInputError, match="lacks column"):
        load_metric_tables(feature_drift=tmp_path / "d.csv")
    with pytest.raises(CheckInputError, match="give a .csv or .parquet"):
        load_metric_tables(model_metrics=tmp_path / "m.xlsx")


def test_a_policy_freshness_threshold_changes_the_sweep_finding(tmp_path: Path) -> None:
    ts = pd.date_range("2026-11-22", periods=3, freq="h", tz="UTC")
    stale = MetricTables(
        model_metrics=pd.DataFrame(
            {"timestamp": ts, "metric": "feature_freshness_seconds", "value": [60, 60, 5400]}
        )
    )
    relaxed = tmp_path / "policy.yaml"
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    data["sweep"]["freshness_seconds"] = 7200
    relaxed.write_text(yaml.safe_dump(data))

    def finding(policy_file: Path) -> tuple[bool, str | None]:
        rules = fixed_rules(load_policy(policy_file).sweep)
        (f,) = evaluate("fraud", stale, rules).findings()
        return f.passed, f.severity

    # 90 minutes old: stale at the default hour, fresh enough for a team that allows two.
    assert finding(DEFAULT_POLICY) == (False, "P2")
    assert finding(relaxed) == (True, None)
