"""The monitoring sweep: metric tables in, alerts through the real intake out.

The flows run in-process against the session's Prefect server; the intake is a real
`runbooks serve-intake` process with its own store and a bearer token, so every alert
travels the same HTTP path as Alertmanager's.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pandas as pd
import pytest

from checks.sweep import MetricTables, evaluate
from deployments.local import ManagedProcess, free_port
from deployments.serve import PROJECT_ROOT, runner_deployments
from flows.sweep import (
    SweepConfigError,
    SweepInputError,
    SweepRequest,
    SweepSummary,
    monitoring_sweep,
    open_metric_source,
)
from runbooks.policy import DEFAULT_POLICY, load_policy
from runbooks.settings import get_settings
from tasks.sweep_sources import DirectorySource, FiringAlert, alerts_to_send
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

TOKEN = "sweep-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2026, 11, 22, tzinfo=UTC)
HEALTHY_F1 = [0.90, 0.91, 0.89, 0.90]


def hours(n: int) -> datetime:
    return T0 + timedelta(hours=n)


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real intake with its own store; no Prefect API, so its events wait in the outbox
    instead of starting the session's served triage on incidents it cannot see."""
    home = tmp_path_factory.mktemp("sweep-intake")
    port = free_port()
    env = {
        **os.environ,
        "RUNBOOKS_HOME": str(home),
        "RUNBOOKS_DATABASE_URL": f"sqlite:///{home / 'incidents.db'}",
        "RUNBOOKS_POLICY_FILE": str(DEFAULT_POLICY),
        "RUNBOOKS_INTAKE_TOKEN": TOKEN,
        "PREFECT_API_URL": "",
    }
    proc = ManagedProcess(
        "intake",
        [sys.executable, "-m", "deployments.cli", "serve-intake", "--port", str(port)],
        env,
        home / "intake.log",
        cwd=PROJECT_ROOT,
    )
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/healthz", 30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def swept(stack: dict, intake: str) -> Iterator[str]:
    """In-process flows against the session's Prefect server, sending the intake's token."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RUNBOOKS_INTAKE_TOKEN", TOKEN)
        get_settings.cache_clear()
        yield intake
    get_settings.cache_clear()


def f1_table(values: list[float], start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": [hours(start + i).isoformat() for i in range(len(values))],
            "metric": "f1_score",
            "value": values,
        }
    )


def write_f1(folder: Path, values: list[float], parquet: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    df = f1_table(values)
    if parquet:
        df.to_parquet(folder / "model_metrics.parquet", index=False)
    else:
        df.to_csv(folder / "model_metrics.csv", index=False)


def incidents(intake: str, model: str) -> list[dict]:
    r = httpx.get(f"{intake}/api/v1/incidents", params={"model": model}, headers=AUTH, timeout=10)
    r.raise_for_status()
    return r.json()["items"]


def run(intake: str, **kw: object) -> SweepSummary:
    return monitoring_sweep(SweepRequest(intake_url=intake, **kw))


def test_crossing_f1_opens_one_incident_and_a_second_sweep_changes_nothing(
    swept: str, tmp_path: Path
) -> None:
    write_f1(tmp_path / "fraud-sw", [*HEALTHY_F1, 0.62, 0.60], parquet=True)
    write_f1(tmp_path / "churn-sw", HEALTHY_F1)

    first = run(swept, source=str(tmp_path))
    assert first.models_checked == ["churn-sw", "fraud-sw"]
    assert [(a.model, a.metric, a.severity, a.outcome) for a in first.raised] == [
        ("fraud-sw", "f1_score", "P1", "opened")
    ]
    (incident,) = incidents(swept, "fraud-sw")
    assert incident["status"] == "open" and incidents(swept, "churn-sw") == []
    (alert,) = incident["alerts"]
    assert alert["source"] == "sweep" and alert["status"] == "firing"
    # startsAt is the row where the breach began, not the time of the sweep.
    assert datetime.fromisoformat(alert["starts_at"]) == hours(4)
    assert alert["labels"]["metric"] == "f1_score" and alert["labels"]["model"] == "fraud-sw"
    assert float(alert["annotations"]["value"]) == pytest.approx(0.60)
    assert float(alert["annotations"]["baseline"]) == pytest.approx(0.90)

    # A new row, still breached: the same delivery, so the intake changes nothing.
    write_f1(tmp_path / "fraud-sw", [*HEALTHY_F1, 0.62, 0.60, 0.58], parquet=True)
    second = run(swept, source=str(tmp_path))
    assert second.raised == [] and second.resolved == []
    assert [a.outcome for a in second.unchanged] == ["duplicate"]
    (again,) = incidents(swept, "fraud-sw")
    assert again["id"] == incident["id"] and len(again["alerts"]) == 1


def test_recovered_metric_resolves_its_alert_and_the_incident(swept: str, tmp_path: Path) -> None:
    write_f1(tmp_path / "pricing-sw", [*HEALTHY_F1, 0.70 * 0.9])
    (raised,) = run(swept, source=str(tmp_path)).raised

    write_f1(tmp_path / "pricing-sw", [*HEALTHY_F1, 0.70 * 0.9, 0.88, 0.90])
    summary = run(swept, source=str(tmp_path))
    assert [(a.metric, a.outcome, a.starts_at) for a in summary.resolved] == [
        ("f1_score", "resolved", raised.starts_at)
    ]
    (incident,) = incidents(swept, "pricing-sw")
    assert incident["status"] == "resolved"
    assert [a["status"] for a in incident["alerts"]] == ["resolved"]

    # Nothing firing, nothing breached: a third sweep sends nothing at all.
    third = run(swept, source=str(tmp_path))
    assert third.raised == third.resolved == third.unchanged == []


def test_dry_run_reports_what_it_would_raise_and_posts_nothing(swept: str, tmp_path: Path) -> None:
    write_f1(tmp_path / "dry-sw", [*HEALTHY_F1, 0.5])
    summary = run(swept, source=str(tmp_path), dry_run=True)
    assert summary.dry_run
    assert [(a.model, a.severity, a.outcome) for a in summary.raised] == [
        ("dry-sw", "P1", "would_raise")
    ]
    assert incidents(swept, "dry-sw") == []


def test_bad_file_is_named_and_every_other_table_is_still_swept(swept: str, tmp_path: Path) -> None:
    write_f1(tmp_path / "good-sw", [*HEALTHY_F1, 0.5])
    write_f1(tmp_path / "broken-sw", [*HEALTHY_F1, 0.5])
    bad_drift = tmp_path / "broken-sw" / "feature_drift.csv"
    bad_drift.write_text("timestamp,feature,pis\n2026-11-22T05:00:00Z,V14,0.4\n")
    bad_values = tmp_path / "typo-sw" / "data_quality.csv"
    bad_values.parent.mkdir()
    bad_values.write_text("timestamp,feature,null_rate\n2026-11-22T05:00:00Z,V1,lots\n")

    state = monitoring_sweep(
        SweepRequest(source=str(tmp_path), intake_url=swept, models=[]), return_state=True
    )
    assert state.is_failed()
    err = state.result(raise_on_failure=False)
    assert isinstance(err, SweepInputError)
    assert str(bad_drift) in str(err) and "'psi'" in str(err)
    assert str(bad_values) in str(err) and "'null_rate'" in str(err) and "'lots'" in str(err)
    # The broken drift file does not blind the same model's F1, nor the other models.
    assert {(a.model, a.outcome) for a in err.summary.raised} == {
        ("good-sw", "opened"),
        ("broken-sw", "opened"),
    }
    assert set(err.summary.errors) == {"broken-sw", "typo-sw"}
    assert len(incidents(swept, "good-sw")) == len(incidents(swept, "broken-sw")) == 1


def test_sql_source_on_sqlite_finds_every_model_and_raises_drift(
    swept: str, tmp_path: Path
) -> None:
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'monitoring.db'}"
    write_sql_tables(url, "sql-sw")
    summary = run(swept, sql_url=url)
    assert summary.models_checked == ["sql-sw-a", "sql-sw-b"]
    got = {(a.model, a.metric, a.feature, a.severity) for a in summary.raised}
    assert got == {("sql-sw-a", "psi", "V14", "P2"), ("sql-sw-b", "f1_score", None, "P1")}
    sa.create_engine(url).dispose()


def test_sql_source_on_postgresql(swept: str, pg_url: str) -> None:
    write_sql_tables(pg_url, "pg-sw")
    summary = run(swept, sql_url=pg_url, models=["pg-sw-a"])
    assert [(a.metric, a.feature, a.outcome) for a in summary.raised] == [("psi", "V14", "opened")]


def write_sql_tables(url: str, prefix: str) -> None:
    import sqlalchemy as sa

    from runbooks.store import normalize_url

    drift = pd.DataFrame(
        {
            "timestamp": [hours(0), hours(1), hours(1)],
            "model": f"{prefix}-a",
            "feature": ["V14", "V14", "amount"],
            "psi": [0.05, 0.41, 0.02],
        }
    )
    metrics = f1_table([*HEALTHY_F1, 0.55]).assign(model=f"{prefix}-b")
    metrics["timestamp"] = pd.to_datetime(metrics["timestamp"], utc=True)
    engine = sa.create_engine(normalize_url(url))
    with engine.begin() as conn:
        drift.to_sql("feature_drift", conn, index=False, if_exists="replace")
        metrics.to_sql("model_metrics", conn, index=False, if_exists="replace")
    engine.dispose()


def test_unreachable_intake_fails_the_run_naming_the_url(tmp_path: Path, stack: dict) -> None:
    write_f1(tmp_path / "lost-sw", [*HEALTHY_F1, 0.5])
    dead = f"http://127.0.0.1:{free_port()}"
    state = monitoring_sweep(SweepRequest(source=str(tmp_path), intake_url=dead), return_state=True)
    assert state.is_failed()
    assert dead in state.message and "did not answer" in state.message


def test_served_sweep_deployment_runs_every_five_minutes(stack: dict) -> None:
    (spec,) = [d for d in runner_deployments() if d.name == "monitoring-sweep"]
    (schedule,) = spec.schedules
    assert schedule.schedule.interval == timedelta(seconds=300) and schedule.active

    def served() -> dict | None:
        r = httpx.get(
            f"{stack['api']}/deployments/name/monitoring-sweep/monitoring-sweep", timeout=30
        )
        return r.json() if r.status_code == 200 else None

    deployment = wait_for(served, 30, what="the served monitoring-sweep deployment")
    (live,) = deployment["schedules"]
    assert live["schedule"]["interval"] == 300 and live["active"]


def test_served_sweep_raises_through_the_served_intake(stack: dict, tmp_path: Path) -> None:
    """The deployment as `runbooks serve` runs it (its process, its environment), started
    through the API as the scheduler would, posting to the intake beside it."""
    write_f1(tmp_path / "served-sw", [*HEALTHY_F1, 0.5])
    api = stack["api"]
    deployment = httpx.get(
        f"{api}/deployments/name/monitoring-sweep/monitoring-sweep", timeout=30
    ).json()
    params = {"request": {"source": str(tmp_path), "intake_url": stack["intake"]}}
    run_id = httpx.post(
        f"{api}/deployments/{deployment['id']}/create_flow_run",
        json={"parameters": params},
        timeout=30,
    ).json()["id"]

    def finished() -> dict | None:
        r = httpx.get(f"{api}/flow_runs/{run_id}", timeout=30).json()
        return r if r["state_type"] in ("COMPLETED", "FAILED", "CRASHED") else None

    assert wait_for(finished, 90, what="the served sweep run")["state_type"] == "COMPLETED"
    r = httpx.get(f"{stack['intake']}/api/v1/incidents", params={"model": "served-sw"}, timeout=30)
    (incident,) = r.json()["items"]
    assert incident["alerts"][0]["source"] == "sweep"


# The pure part, without servers ------------------------------------------------------------


def test_breach_start_stays_put_and_a_long_breach_never_becomes_its_own_baseline() -> None:
    rules = load_policy().severity
    # Drops of 15%: P2 by drop_above only, so only a baseline from healthy rows keeps it firing.
    breached = [*HEALTHY_F1, *([0.765] * 20)]
    first = evaluate("m", MetricTables(model_metrics=parse(f1_table(breached[:5]))), rules)
    later = evaluate("m", MetricTables(model_metrics=parse(f1_table(breached))), rules)
    (a,), (b,) = first.verdicts, later.verdicts
    assert a.breached and b.breached and a.severity == b.severity == "P2"
    assert a.since == b.since == hours(4)
    assert b.baseline == pytest.approx(0.90)


def test_held_alert_keeps_its_start_until_the_table_shows_a_recovery() -> None:
    rules = load_policy().severity
    breach = [*HEALTHY_F1, 0.5, 0.5, 0.5]
    (v,) = evaluate("m", MetricTables(model_metrics=parse(f1_table(breach))), rules).verdicts
    held = FiringAlert(fingerprint=v.fingerprint, starts_at=hours(4), alertname="X")

    # The table's window moved past the breach's first row: still the same alert.
    trimmed = parse(f1_table(breach)).iloc[5:]
    (w,) = evaluate("m", MetricTables(model_metrics=trimmed), rules).verdicts
    (same,) = alerts_to_send([w], [held])
    assert (same["status"], same["startsAt"]) == ("firing", "2026-11-22T04:00:00Z")

    # Recovered at hour 7, breached again at hour 8: the old one ends, a new one begins.
    again = parse(f1_table([*breach, 0.9, 0.5]))
    (x,) = evaluate("m", MetricTables(model_metrics=again), rules).verdicts
    ended, new = alerts_to_send([x], [held])
    assert (ended["status"], ended["startsAt"], ended["endsAt"]) == (
        "resolved",
        "2026-11-22T04:00:00Z",
        "2026-11-22T07:00:00Z",
    )
    assert (new["status"], new["startsAt"]) == ("firing", "2026-11-22T08:00:00Z")


def test_drift_pair_and_quality_suite_become_verdicts(tmp_path: Path) -> None:
    import numpy as np

    from checks.quality import build_suite

    rng = np.random.default_rng(3)
    ts = pd.date_range(hours(0), periods=500, freq="min")
    reference = pd.DataFrame({"timestamp": ts, "V1": rng.normal(0, 1, 500), "V2": 1.0})
    current = reference.copy()
    current["V1"] = current["V1"] + 2.0
    current.loc[:200, "V2"] = np.nan
    folder = tmp_path / "pair"
    folder.mkdir()
    reference.to_csv(folder / "reference.csv", index=False)
    current.to_parquet(folder / "current.parquet", index=False)
    suite = build_suite(reference, freshness_minutes=None)
    (folder / "quality_suite.json").write_text(suite.to_json())

    with DirectorySource(tmp_path) as source:
        assert source.models() == (["pair"], [])
        result = evaluate("pair", source.tables("pair"), load_policy().severity)
    assert result.errors == []
    failed = {(v.metric, v.feature, v.severity) for v in result.verdicts if v.breached}
    assert ("psi", "V1", "P2") in failed
    assert ("quality_null_rate", "V2", "P2") in failed
    assert all(v.since == ts[-1] for v in result.verdicts)


def test_a_sweep_without_a_source_fails_naming_the_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RUNBOOKS_SWEEP_SOURCE", raising=False)
    monkeypatch.delenv("RUNBOOKS_SWEEP_SQL_URL", raising=False)
    with pytest.raises(SweepConfigError, match="RUNBOOKS_SWEEP_SOURCE"):
        open_metric_source(SweepRequest())
    with pytest.raises(ValueError, match="not both"):
        SweepRequest(source="/x", sql_url="sqlite://")


def parse(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(timestamp=pd.to_datetime(df["timestamp"], utc=True))
