"""Root-cause labels (runbooks/labels.py) and the incident report (runbooks/reporting.py):
the API on SQLite and PostgreSQL, `runbooks label` and `runbooks report` against a real
intake, and the report's numbers against incidents whose moments are known."""

from __future__ import annotations

import json
import os
import random
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from deployments.cli import main as cli
from deployments.intake import create_app
from deployments.local import ManagedProcess, free_port
from deployments.serve import PROJECT_ROOT
from runbooks.metrics import METRICS, response_times
from runbooks.models import Incident, IncidentNotice, RootCauseLabel, TimelineEvent
from runbooks.policy import DEFAULT_POLICY, load_policy
from runbooks.reporting import (
    DEADLINES,
    ReportInputError,
    incident_report,
    parse_moment,
    percentile_cont,
)
from runbooks.store import migrate, session_scope

TOKEN = "labels-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def new_incident(url: str, **kw: object) -> int:
    key = f"m:{uuid.uuid4().hex[:8]}"
    fields = {"model": "fraud-v3", "title": "F1 low", "severity": "P1", "status": "triaged"}
    with session_scope(url) as s:
        i = Incident(**(fields | kw), group_key=key)  # type: ignore[arg-type]
        s.add(i)
        s.flush()
        return i.id  # type: ignore[return-value]


@pytest.fixture
def api(db_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(db_url, load_policy(), token=TOKEN)) as client:
        yield client


# -- labels over the API -------------------------------------------------------------------


def test_a_label_is_stored_answered_201_and_leaves_one_timeline_line(
    api: TestClient, db_url: str
) -> None:
    i = new_incident(db_url)
    body = {
        "root_cause": "feature_drift",
        "component": "feature pipeline",
        "confidence": 0.8,
        "labeled_by": "alice",
        "comment": "upstream schema change",
    }
    r = api.post(f"/api/v1/incidents/{i}/labels", json=body, headers=AUTH)
    assert r.status_code == 201, r.text
    assert {k: r.json()[k] for k in body} == body
    assert r.json()["incident_id"] == i
    listed = api.get(f"/api/v1/incidents/{i}/labels", headers=AUTH).json()
    assert [x["root_cause"] for x in listed["items"]] == ["feature_drift"]
    with session_scope(db_url) as s:
        lines = s.exec(select(TimelineEvent.message).where(TimelineEvent.incident_id == i)).all()
    assert lines == [
        "root cause labelled feature_drift (feature pipeline, confidence 0.8) by alice"
    ]


def test_writing_a_label_needs_the_bearer_token(api: TestClient, db_url: str) -> None:
    i = new_incident(db_url)
    r = api.post(f"/api/v1/incidents/{i}/labels", json={"root_cause": "bias", "labeled_by": "a"})
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"labeled_by": "alice"}, "root_cause"),
        ({"root_cause": "  ", "labeled_by": "alice"}, "root_cause"),
        ({"root_cause": "bias"}, "labeled_by"),
        ({"root_cause": "bias", "labeled_by": "alice", "confidence": 1.5}, "confidence"),
        ({"root_cause": "bias", "labeled_by": "alice", "confidence": "high"}, "confidence"),
        ({"root_cause": "bias", "labeled_by": "alice", "component": 3}, "component"),
        ({"root_cause": "bias", "labeled_by": "alice", "comment": ["x"]}, "comment"),
        ({"root_cause": "bias", "labeled_by": "alice", "cause": "x"}, "unknown fields ['cause']"),
        (["bias"], "body must be an object"),
    ],
)
def test_a_bad_label_is_422_naming_the_field(
    api: TestClient, db_url: str, body: object, field: str
) -> None:
    i = new_incident(db_url)
    r = api.post(f"/api/v1/incidents/{i}/labels", json=body, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["error"].startswith(field), r.json()
    assert api.get(f"/api/v1/incidents/{i}/labels", headers=AUTH).json()["total"] == 0


def test_labels_of_an_unknown_incident_are_404(api: TestClient) -> None:
    body = {"root_cause": "bias", "labeled_by": "alice"}
    r = api.post("/api/v1/incidents/987654/labels", json=body, headers=AUTH)
    assert r.status_code == 404
    assert "no incident 987654" in r.json()["error"]
    assert api.get("/api/v1/incidents/987654/labels", headers=AUTH).status_code == 404


# -- the report's numbers -----------------------------------------------------------------


def _route(opened: datetime, minutes: tuple[int, int, int]) -> dict:
    return {
        "deadlines": {
            step: (opened + timedelta(minutes=m)).isoformat()
            for step, m in zip(DEADLINES, minutes, strict=True)
        }
    }


def test_report_counts_times_deadlines_and_labels_of_known_incidents(db_url: str) -> None:
    t = NOW - timedelta(days=1)
    s_ = timedelta(seconds=1)
    # Three P1 of fraud-v3 with known moments, one P2 of churn without any, one outside.
    a = new_incident(
        db_url,
        opened_at=t,
        onset_at=t - 60 * s_,
        acknowledged_at=t + 120 * s_,
        mitigated_at=t + 600 * s_,
        resolved_at=t + 3600 * s_,
        status="resolved",
        route=_route(t, (5, 10, 120)),
        context={"diagnosis": {"cause": "feature_drift"}},
    )
    b = new_incident(
        db_url,
        opened_at=t + 10 * s_,
        onset_at=t - 110 * s_,  # 120 s to detect
        acknowledged_at=t + 310 * s_,  # 300 s
        status="mitigated",
        mitigated_at=t + 1210 * s_,  # 1200 s
        route=_route(t, (5, 10, 120)),
        context={"diagnosis": {"cause": "bias"}},
    )
    new_incident(  # c
        db_url,
        opened_at=t + 20 * s_,
        onset_at=t + 30 * s_,  # after the opening: no time to detect
        acknowledged_at=t + 80 * s_,  # 60 s
        status="investigating",
        route=_route(NOW, (5, 10, 120)),  # deadlines still ahead
        context={"diagnosis": {"cause": "data_quality"}},
    )
    d = new_incident(db_url, model="churn", severity="P2", status="open", opened_at=t + 30 * s_)
    new_incident(db_url, opened_at=NOW - timedelta(days=40), status="resolved")
    with session_scope(db_url) as s:
        s.add_all(
            [
                IncidentNotice(incident_id=b, key="deadline:investigation"),
                IncidentNotice(incident_id=b, key="deadline:resolution@1"),
                IncidentNotice(incident_id=b, key="escalation:1"),
                IncidentNotice(incident_id=d, key="deadline:triage"),
                RootCauseLabel(incident_id=a, root_cause="bad_deployment", labeled_by="x", at=t),
                RootCauseLabel(
                    incident_id=a, root_cause="feature_drift", labeled_by="y", at=t + s_
                ),
                RootCauseLabel(incident_id=b, root_cause="data_quality", labeled_by="x"),
                RootCauseLabel(incident_id=d, root_cause="infrastructure", labeled_by="x"),
            ]
        )
    with session_scope(db_url) as s:
        report = incident_report(s, NOW - timedelta(days=30), NOW, NOW)
    assert report.count == 4
    p1 = report.by_severity["P1"]
    assert p1.count == 3 and set(report.by_severity) == {"P1", "P2"}
    assert set(report.by_model) == {"fraud-v3", "churn"}
    assert report.by_model["fraud-v3"] == p1
    # 60, 120: p50 90, p90 114 (percentile_cont: linear between ranks).
    assert (p1.time_to_detect.p50, p1.time_to_detect.p90, p1.time_to_detect.n) == (90, 114, 2)
    # 60, 120, 300: p50 120, p90 120 + 0.8 * 180.
    assert (p1.time_to_acknowledge.p50, p1.time_to_acknowledge.p90) == (120, 264)
    assert (p1.time_to_contain.p50, p1.time_to_contain.p90) == (900, 1140)
    assert (p1.time_to_resolve.p50, p1.time_to_resolve.p90, p1.time_to_resolve.n) == (
        3600,
        3600,
        1,
    )
    p2 = report.by_severity["P2"]
    assert p2.time_to_acknowledge.p50 is None and p2.time_to_acknowledge.n == 0
    # a ended: judged and met; b passed: missed investigation and (a later life) resolution,
    # met triage; c ahead: not judged; d no route, active, missed triage only.
    dl = report.overall.deadlines
    assert (dl["triage"].judged, dl["triage"].met, dl["triage"].fraction_met) == (3, 2, 0.6667)
    assert (dl["investigation"].judged, dl["investigation"].met) == (2, 1)
    assert (dl["resolution"].judged, dl["resolution"].met) == (2, 1)
    assert p2.deadlines["triage"].missed == 1 and p2.deadlines["resolution"].judged == 0
    # a: latest label feature_drift == diagnosis; b: data_quality != bias; c: diagnosis only.
    lab = report.labels
    assert (lab.labelled, lab.diagnosed, lab.both, lab.agreed, lab.agreement) == (3, 3, 2, 1, 0.5)


def test_report_of_a_random_store_is_the_reference_on_each_backend(db_url: str) -> None:
    """The same 400 incidents on SQLite and PostgreSQL give the numbers worked out here from
    runbooks.metrics, so the two backends' reports are the same."""
    rnd = random.Random(11)
    rows, notices, labels = [], [], []
    for n in range(400):
        opened = NOW - timedelta(seconds=rnd.uniform(0, 20 * 86400))
        status = rnd.choice(["open", "triaged", "mitigated", "resolved", "closed"])

        def later(p: float, top: float, start: datetime = opened) -> datetime | None:
            return start + timedelta(seconds=rnd.uniform(1, top)) if rnd.random() < p else None

        rows.append(
            {
                "model": f"m{n % 7}",
                "severity": rnd.choice(["P1", "P2", "P3", None]),
                "status": status,
                "opened_at": opened,
                "onset_at": opened - timedelta(seconds=rnd.uniform(-30, 900)),
                "acknowledged_at": later(0.7, 3000),
                "mitigated_at": later(0.5, 9000),
                "resolved_at": later(1, 90000) if status in ("resolved", "closed") else None,
                "route": _route(opened, (5, 30, 480)) if rnd.random() < 0.9 else None,
                "context": {"diagnosis": {"cause": rnd.choice(["bias", "feature_drift"])}}
                if rnd.random() < 0.5
                else {},
            }
        )
    ids = [new_incident(db_url, **r) for r in rows]
    for i in ids:
        for step in DEADLINES:
            if rnd.random() < 0.2:
                notices.append(IncidentNotice(incident_id=i, key=f"deadline:{step}"))
        for k in range(rnd.choice([0, 0, 1, 2])):
            cause = rnd.choice(["bias", "feature_drift", "infrastructure"])
            at = NOW - timedelta(hours=10 - k)
            labels.append(RootCauseLabel(incident_id=i, root_cause=cause, labeled_by="x", at=at))
    with session_scope(db_url) as s:
        s.add_all(notices + labels)
    since = NOW - timedelta(days=14)
    with session_scope(db_url) as s:
        report = incident_report(s, since, NOW, NOW)

    inside = [(i, r) for i, r in zip(ids, rows, strict=True) if since <= r["opened_at"] < NOW]
    assert report.count == len(inside)
    for severity in ("P1", "P2", "P3", "none"):
        group = [(i, r) for i, r in inside if (r["severity"] or "none") == severity]
        got = report.by_severity[severity]
        assert got.count == len(group)
        for metric in METRICS:
            values = sorted(
                v
                for _, r in group
                if (v := response_times(Incident(**r, title="", group_key="")).get(metric))
                is not None
            )
            want = [percentile_cont(values, q) for q in (0.5, 0.9)]
            pct = getattr(got, metric)
            assert pct.n == len(values)
            assert [pct.p50, pct.p90] == [None if w is None else round(w, 3) for w in want]
        missed = {(n.incident_id, n.key.split(":")[1]) for n in notices}
        for step in DEADLINES:
            judged = [
                i
                for i, r in group
                if (i, step) in missed
                or r["status"] in ("resolved", "closed")
                or (r["route"] and datetime.fromisoformat(r["route"]["deadlines"][step]) <= NOW)
            ]
            met = [i for i in judged if (i, step) not in missed]
            assert (got.deadlines[step].judged, got.deadlines[step].met) == (len(judged), len(met))
    latest = {lab.incident_id: lab.root_cause for lab in labels}  # in time order
    window = {i for i, _ in inside}
    causes = {i: r["context"].get("diagnosis", {}).get("cause") for i, r in inside}
    both = [i for i in window if i in latest and causes[i]]
    assert report.labels.labelled == len(window & set(latest))
    assert report.labels.both == len(both)
    assert report.labels.agreed == sum(latest[i] == causes[i] for i in both)


# -- --since ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("30d", NOW - timedelta(days=30)),
        ("24h", NOW - timedelta(hours=24)),
        ("90m", NOW - timedelta(minutes=90)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T08:00:00+01:00", datetime(2026, 11, 1, 7, tzinfo=UTC)),
    ],
)
def test_since_takes_durations_and_iso_datetimes(value: str, want: datetime) -> None:
    assert parse_moment("since", value, NOW) == want


@pytest.mark.parametrize("value", ["30", "30w", "-5d", "yesterday", "2026-13-01", ""])
def test_a_bad_since_names_the_parameter_and_the_forms(value: str) -> None:
    with pytest.raises(ReportInputError, match=r"since=.*30d, 24h, 90m.*ISO"):
        parse_moment("since", value, NOW)


def test_api_report_refuses_a_bad_since_with_422(api: TestClient) -> None:
    r = api.get("/api/v1/report", params={"since": "a week"}, headers=AUTH)
    assert r.status_code == 422
    assert r.json()["error"].startswith("since='a week': give a duration")
    assert api.get("/api/v1/report", params={"since": "7d"}, headers=AUTH).json()["count"] == 0
    r = api.get("/api/v1/report", params={"since": "1d", "until": "2d"}, headers=AUTH)
    assert r.status_code == 422 and "must be before until" in r.json()["error"]
    r = api.get("/api/v1/report", params={"until": "soon"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"].startswith("until='soon'")


# -- the commands against a real intake --------------------------------------------------


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real `runbooks serve-intake` on its own SQLite store; (its URL, the store's URL)."""
    home: Path = tmp_path_factory.mktemp("labels-intake")
    store = f"sqlite:///{home / 'incidents.db'}"
    migrate(store)
    port = free_port()
    env = {
        **os.environ,
        "RUNBOOKS_HOME": str(home),
        "RUNBOOKS_DATABASE_URL": store,
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
        yield f"http://127.0.0.1:{port}", store
    finally:
        proc.stop()


def test_runbooks_label_and_label_list_round_trip(
    intake: tuple[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, store = intake
    monkeypatch.setenv("RUNBOOKS_INTAKE_TOKEN", TOKEN)
    i = new_incident(store)
    args = ["label", str(i), "--root-cause", "feature_drift", "--component", "feature store"]
    assert cli([*args, "--confidence", "0.8", "--by", "alice", "--url", url]) == 0
    assert "feature_drift  feature store  confidence 0.8  by alice" in capsys.readouterr().out
    assert cli(["label", str(i), "--root-cause", "bias", "--by", "bob", "--url", url]) == 0
    capsys.readouterr()
    assert cli(["label", str(i), "--list", "--url", url]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("  ")[1] for line in out] == ["feature_drift", "bias"]


def test_runbooks_label_prints_the_intakes_refusal(
    intake: tuple[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, store = intake
    monkeypatch.setenv("RUNBOOKS_INTAKE_TOKEN", TOKEN)
    i = new_incident(store)
    bad = ["--root-cause", "bias", "--confidence", "7", "--by", "a", "--url", url]
    assert cli(["label", str(i), *bad]) == 1
    assert capsys.readouterr().err.startswith("confidence must be a number between 0 and 1")
    assert cli(["label", "987654", "--list", "--url", url]) == 1
    assert "no incident 987654" in capsys.readouterr().err
    dead = f"http://127.0.0.1:{free_port()}"
    assert cli(["label", str(i), "--list", "--url", dead]) == 1
    assert "did not answer" in capsys.readouterr().err


def test_runbooks_report_prints_a_table_or_the_json(
    intake: tuple[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, store = intake
    monkeypatch.setenv("RUNBOOKS_INTAKE_TOKEN", TOKEN)
    now = datetime.now(UTC)
    new_incident(
        store,
        model="report-m",
        opened_at=now - timedelta(hours=2),
        acknowledged_at=now - timedelta(hours=2) + timedelta(seconds=90),
    )
    assert cli(["report", "--since", "7d", "--json", "--url", url]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["by_model"]["report-m"]["time_to_acknowledge"]["p50"] == 90
    assert cli(["report", "--since", "7d", "--url", url]) == 0
    table = capsys.readouterr().out
    assert "by severity" in table and "by model" in table
    assert any(line.startswith("report-m") and " 90s/90s" in line for line in table.splitlines())
    assert cli(["report", "--since", "lately", "--url", url]) == 1
    assert "since='lately'" in capsys.readouterr().err
