"""Triage that knows ML: taxonomy, severity, strategy and route as a table; suppression,
grouping and the correlation window as functions of stored state and the clock; the API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from deployments.intake import create_app
from runbooks import incidents
from runbooks.alerts import parse_generic
from runbooks.ingest import IngestResult, escalate_for_later_alerts, ingest
from runbooks.models import Alert, Incident, OutboxEvent, TimelineEvent
from runbooks.policy import load_policy, parse_policy
from runbooks.routing import route
from runbooks.severity import assess
from runbooks.silences import add as add_silence
from runbooks.silences import build as build_silence
from runbooks.store import session_scope
from runbooks.strategy import choose_strategy
from runbooks.taxonomy import classify
from runbooks.watchdog import restage_stalled

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # a Monday


def policy_with(**extra: object):  # type: ignore[no-untyped-def]
    import yaml

    from runbooks.policy import DEFAULT_POLICY

    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    data.update(extra)
    return parse_policy(data)


POLICY = policy_with(
    models={
        "fraud-v3": {
            "owners": ["alice"],
            "service_owner": "svc-fraud",
            "team": "risk",
            "business": {"revenue_per_hour": 20000, "users": 50000},
        },
        "churn": {"owners": ["bob"], "business": {"revenue_per_hour": 100}},
        "pricing": {"business": {"revenue_per_hour": 100}},
    },
    routing={
        "oncall": ["carol", "dave"],
        "skills": {"erin": ["data-engineering"], "frank": ["platform"]},
        "team_leads": {"risk": "rita"},
    },
)


# alert labels, annotations -> (type, severity, strategy, assignee)
CASES = [
    # F1 below the absolute bound: P1, rollback at once, the service owner first.
    (
        {"model": "fraud-v3", "alertname": "ModelF1Low", "metric": "f1_score"},
        {"value": "0.64"},
        ("performance_degradation", "P1", "immediate_rollback", "svc-fraud"),
    ),
    # Exactly 0.70 is not below 0.70; no baseline, so no drop rule: the default P3.
    (
        {"model": "churn", "alertname": "ModelF1Low", "metric": "f1_score"},
        {"value": "0.70"},
        ("performance_degradation", "P3", "investigation_first", "bob"),
    ),
    # Exactly a 20% drop is not above 20%, but above 10%: P2, gradual rollback.
    (
        {"model": "churn", "alertname": "ModelF1Low", "metric": "f1_score"},
        {"value": "0.72", "baseline": "0.90"},
        ("performance_degradation", "P2", "gradual_rollback", "bob"),
    ),
    # 20.1% drop: P1.
    (
        {"model": "churn", "alertname": "ModelF1Low", "metric": "f1_score"},
        {"value": "0.7191", "baseline": "0.90"},
        ("performance_degradation", "P1", "immediate_rollback", "bob"),
    ),
    # Revenue at risk above the bound turns a P2 accuracy loss into an immediate rollback.
    (
        {"model": "fraud-v3", "alertname": "ModelRecallLow", "metric": "recall"},
        {"value": "0.60", "baseline": "0.75"},
        ("performance_degradation", "P2", "immediate_rollback", "svc-fraud"),
    ),
    # Precision drop of exactly 15% is not above 15%: P3 by default.
    (
        {"model": "pricing", "alertname": "PrecisionLow", "metric": "precision"},
        {"value": "0.68", "baseline": "0.80"},
        ("performance_degradation", "P3", "investigation_first", "carol"),
    ),
    # Drift: PSI 0.35 is P2, data quality -> pipeline? no: feature drift investigates.
    (
        {"model": "pricing", "alertname": "FeatureDrift", "metric": "psi", "feature": "amount"},
        {"value": "0.35"},
        ("prediction_error", "P2", "standard_investigation", "erin"),
    ),
    # PSI exactly 0.3 is not above 0.3 but above 0.2: P3.
    (
        {"model": "pricing", "alertname": "FeatureDrift", "metric": "psi"},
        {"value": "0.3"},
        ("prediction_error", "P3", "standard_investigation", "erin"),
    ),
    # Null spike -> pipeline recovery.
    (
        {"model": "pricing", "alertname": "NullRateHigh", "metric": "null_rate"},
        {"value": "0.2"},
        ("prediction_error", "P2", "pipeline_recovery", "erin"),
    ),
    # Latency: P2 -> gradual scaling, routed by skill to platform.
    (
        {"model": "pricing", "alertname": "ModelLatencyHigh", "metric": "latency_p99_seconds"},
        {"value": "2.5"},
        ("infrastructure", "P2", "gradual_scaling", "frank"),
    ),
    # Server down: P1 infrastructure availability -> standard investigation.
    (
        {"model": "pricing", "alertname": "ModelServerDown", "metric": "up"},
        {"value": "0"},
        ("infrastructure", "P1", "standard_investigation", "frank"),
    ),
    # Training job failure, told by the alertname only.
    (
        {"model": "churn", "alertname": "TrainingJobFailed", "severity": "high"},
        {},
        ("infrastructure", "P2", "training_restart", "bob"),
    ),
    # No metric, unknown words: accepted, P3 by default, standard investigation.
    (
        {"model": "pricing", "alertname": "Weird"},
        {},
        ("unknown", "P3", "standard_investigation", "carol"),
    ),
    # Bias by alertname; security; compliance.
    (
        {"model": "pricing", "alertname": "FairnessParityGap"},
        {},
        ("bias", "P3", "standard_investigation", "carol"),
    ),
    (
        {"model": "pricing", "alertname": "AdversarialInputsDetected", "severity": "critical"},
        {},
        ("security", "P1", "standard_investigation", "carol"),
    ),
    (
        {"model": "pricing", "alertname": "PIILeakCompliance"},
        {},
        ("compliance", "P3", "standard_investigation", "carol"),
    ),
]


@pytest.mark.parametrize(("labels", "annotations", "expected"), CASES)
def test_alert_to_type_severity_strategy_route(labels, annotations, expected) -> None:  # type: ignore[no-untyped-def]
    c = classify(labels, POLICY.labels)
    a = assess(labels, annotations, POLICY)
    model = POLICY.for_model(labels["model"])
    decision = choose_strategy(a.severity, c, model, POLICY)
    r = route(a.severity, c, model, POLICY, T0, T0)
    assert (c.type, a.severity, decision.strategy, r.assignee) == expected
    assert r.deadlines and r.escalation and r.channels


def test_severity_explains_itself_and_says_what_it_could_not_tell() -> None:
    a = assess({"metric": "f1_score"}, {"value": "0.64"}, POLICY)
    assert a.reasons == ["P1 because f1_score=0.64 < 0.7"]
    c = classify({"alertname": "Weird"}, POLICY.labels)
    blind = assess({"alertname": "Weird"}, {}, POLICY)
    assert c.gaps and "no 'metric' label" in c.gaps[0]
    assert any("value" in g for g in blind.gaps)


def test_label_names_are_overridable_in_the_policy() -> None:
    policy = policy_with(labels={"metric": "kpi", "value": "observed"})
    a = assess({"kpi": "f1_score"}, {"observed": "0.5"}, policy)
    assert a.severity == "P1"
    assert classify({"kpi": "psi"}, policy.labels).category == "data_quality"


def test_route_escalates_compliance_and_keeps_deadlines_of_the_severity() -> None:
    c = classify({"alertname": "PIILeakCompliance"}, POLICY.labels)
    r = route("P1", c, POLICY.for_model("fraud-v3"), POLICY, T0, T0)
    assert r.escalation[1]["who"] == "compliance-officer"
    assert r.escalation[2]["who"] == "rita"  # the team lead of risk
    assert r.deadlines["triage"] == (T0 + timedelta(minutes=5)).isoformat()
    assert r.deadlines["resolution"] == (T0 + timedelta(hours=2)).isoformat()


# --- suppression and grouping through the store -----------------------------------------


def post(url: str, policy, alerts: list[dict], now: datetime) -> IngestResult:  # type: ignore[no-untyped-def]
    with session_scope(url) as s:
        return ingest(s, parse_generic(alerts, now), policy, now=now)


def opened_events(url: str, incident_id: int) -> int:
    with session_scope(url) as s:
        rows = s.exec(select(OutboxEvent).where(OutboxEvent.event == "ml.incident.opened")).all()
        return sum(1 for r in rows if r.payload["incident_id"] == incident_id)


def incident(url: str, incident_id: int) -> Incident:
    with session_scope(url) as s:
        return s.get(Incident, incident_id)


def f1(model: str = "fraud-v3", name: str = "ModelF1Low", **kw: object) -> dict:
    return {"model": model, "alertname": name, "metric": "f1_score", "value": 0.6, **kw}


def test_active_silence_mutes_then_expired_silence_pages(db_url: str) -> None:
    with session_scope(db_url) as s:
        add_silence(
            s,
            build_silence(
                {
                    "matchers": ['model="fraud-v3"'],
                    "startsAt": T0.isoformat(),
                    "duration": "1h",
                    "createdBy": "alice",
                    "comment": "retraining",
                },
                T0,
            ),
        )
    first = post(db_url, POLICY, [f1(startsAt=T0.isoformat())], T0 + timedelta(minutes=5))
    iid = first.items[0].incident_id
    assert "silenced by" in incident(db_url, iid).suppressed_reason
    assert "alice: retraining" in first.items[0].suppressed
    assert opened_events(db_url, iid) == 0

    # The same alert re-sent after the silence ended pages, once.
    later = T0 + timedelta(minutes=61)
    post(db_url, POLICY, [f1(startsAt=T0.isoformat())], later)
    post(db_url, POLICY, [f1(startsAt=T0.isoformat())], later)
    assert incident(db_url, iid).suppressed_reason is None
    assert opened_events(db_url, iid) == 1


def test_recurring_maintenance_window_mutes_only_inside_it(db_url: str) -> None:
    policy = policy_with(
        suppression={
            "maintenance_windows": [
                {
                    "model": "churn",
                    "comment": "weekly feature store migration",
                    "schedule": {
                        "kind": "weekly",
                        "days": ["monday"],
                        "start": "09:00",
                        "duration": "PT2H",
                    },
                }
            ]
        }
    )
    inside = post(db_url, policy, [f1("churn")], T0)  # Monday 10:00
    assert "maintenance window" in (inside.items[0].suppressed or "")
    assert opened_events(db_url, inside.items[0].incident_id) == 0
    outside = post(db_url, policy, [f1("pricing")], T0)  # another model
    assert outside.items[0].suppressed is None
    next_day = post(db_url, policy, [f1("churn", "Other", metric="psi")], T0 + timedelta(days=1))
    assert next_day.items[0].suppressed is None


def test_inhibition_by_a_firing_server_down_of_the_same_model(db_url: str) -> None:
    down = {"model": "fraud-v3", "alertname": "ModelServerDown", "metric": "up", "value": 0}
    post(db_url, POLICY, [down], T0)
    latency = {
        "model": "fraud-v3",
        "alertname": "ModelLatencyHigh",
        "metric": "latency_p99_seconds",
        "value": 3,
        "startsAt": T0.isoformat(),
    }
    muted = post(db_url, POLICY, [latency], T0 + timedelta(seconds=5))
    assert "inhibited by firing ModelServerDown" in muted.items[0].suppressed
    # The same rule does not reach another model.
    other = post(db_url, POLICY, [{**latency, "model": "churn"}], T0 + timedelta(seconds=5))
    assert other.items[0].suppressed is None
    # The source resolves; the target, sent again, now pages.
    post(db_url, POLICY, [{**down, "status": "resolved"}], T0 + timedelta(seconds=10))
    again = post(db_url, POLICY, [latency], T0 + timedelta(seconds=15))
    assert again.items[0].suppressed is None
    assert opened_events(db_url, again.items[0].incident_id) == 1


def test_inhibition_equal_label_missing_on_both_sides_counts_as_equal(db_url: str) -> None:
    policy = policy_with(
        suppression={
            "inhibit_rules": [
                {
                    "source_matchers": ['alertname="ClusterDown"'],
                    "target_matchers": ['alertname="ModelF1Low"'],
                    "equal": ["cluster"],
                }
            ]
        }
    )
    post(db_url, policy, [{"model": "infra", "alertname": "ClusterDown"}], T0)
    muted = post(db_url, policy, [f1()], T0)  # neither has a cluster label
    assert muted.items[0].suppressed and "inhibited" in muted.items[0].suppressed
    loud = post(db_url, policy, [f1("churn", labels={"cluster": "eu"})], T0)
    assert loud.items[0].suppressed is None


def test_low_confidence_is_recorded_not_acted_on(db_url: str) -> None:
    policy = policy_with(suppression={"min_confidence": 0.6})
    low = post(db_url, policy, [f1(labels={"confidence": "0.4"})], T0)
    assert "confidence 0.40 is below the minimum 0.60" in low.items[0].suppressed
    assert opened_events(db_url, low.items[0].incident_id) == 0


def test_group_opens_only_at_n_alerts_and_starts_one_runbook(db_url: str) -> None:
    policy = policy_with(grouping={"by": ["model", "type"], "min_alerts": 3})
    ids = {
        post(db_url, policy, [f1(name=f"F1Low{i}", labels={"n": str(i)})], T0).items[0].incident_id
        for i in range(5)
    }
    assert len(ids) == 1
    (iid,) = ids
    assert opened_events(db_url, iid) == 1
    with session_scope(db_url) as s:
        kinds = [
            e.kind for e in s.exec(select(TimelineEvent).where(TimelineEvent.incident_id == iid))
        ]
    assert kinds.count("unsuppressed") == 1


def test_correlation_window_opens_a_new_incident_after_the_group_went_quiet(db_url: str) -> None:
    policy = policy_with(grouping={"by": ["model", "type"], "window_seconds": 600})
    a = post(db_url, policy, [f1(name="A")], T0).items[0].incident_id
    b = post(db_url, policy, [f1(name="B")], T0 + timedelta(minutes=9)).items[0].incident_id
    c = post(db_url, policy, [f1(name="C")], T0 + timedelta(minutes=20)).items[0].incident_id
    assert a == b != c
    assert incident(db_url, a).status == "open"  # still active, it just takes no new alerts


def test_redelivered_post_changes_nothing(db_url: str) -> None:
    body = [f1(startsAt=T0.isoformat()), f1("churn", startsAt=T0.isoformat())]
    post(db_url, POLICY, body, T0)
    again = post(db_url, POLICY, body, T0 + timedelta(seconds=30))
    assert [i.outcome for i in again.items] == ["duplicate", "duplicate"]
    with session_scope(db_url) as s:
        assert len(s.exec(select(Alert)).all()) == 2
        assert len(s.exec(select(OutboxEvent)).all()) == 2


# --- the API -----------------------------------------------------------------------------


def test_alerts_api_lists_newest_first_with_total_and_silences_api(db_url: str) -> None:
    app = create_app(db_url, load_policy())
    with TestClient(app) as client:
        for i in range(5):
            client.post("/api/v1/alerts", json=f1(labels={"n": str(i)}))
        client.post("/api/v1/alerts", json=f1("churn"))
        page = client.get("/api/v1/alerts", params={"model": "fraud-v3", "limit": 2}).json()
        assert page["total"] == 5 and len(page["items"]) == 2
        assert page["items"][0]["id"] > page["items"][1]["id"]
        assert client.get("/api/v1/alerts", params={"status": "nope"}).status_code == 400

        r = client.post(
            "/api/v1/silences",
            json={
                "matchers": ['model="pricing"'],
                "duration": "2h",
                "createdBy": "a",
                "comment": "c",
            },
        )
        assert r.status_code == 201 and r.json()["state"] == "active"
        bad = client.post(
            "/api/v1/silences",
            json={"matchers": ['model=""'], "duration": "2h", "createdBy": "a", "comment": "c"},
        )
        assert bad.status_code == 422 and "matchers" in bad.json()["error"]
        nodur = client.post(
            "/api/v1/silences", json={"matchers": ['model="x"'], "createdBy": "a", "comment": "c"}
        )
        assert nodur.status_code == 422 and "endsAt" in nodur.json()["error"]

        muted = client.post("/api/v1/alerts", json=f1("pricing")).json()
        view = client.get(f"/api/v1/incidents/{muted['incidents'][0]}").json()
        assert view["suppressed"] is True and "silenced by" in view["suppressed_reason"]
        assert client.get("/api/v1/alerts", params={"status": "suppressed"}).json()["total"] == 1

        sid = r.json()["id"]
        assert client.delete(f"/api/v1/silences/{sid}").json()["state"] == "expired"
        assert client.get("/api/v1/silences", params={"state": "active"}).json()["total"] == 0
        assert client.delete("/api/v1/silences/nope").status_code == 404


def test_the_documented_policy_example_passes_check_config() -> None:
    import re
    from pathlib import Path

    import yaml

    text = (Path(__file__).resolve().parent.parent / "docs" / "policy.md").read_text()
    block = re.search(r"## Keys\n\n```yaml\n(.*?)```", text, re.S)
    assert block is not None
    policy = parse_policy(yaml.safe_load(block.group(1)))
    assert policy.suppression.rules() and policy.suppression.windows()


def deliver(url: str, at: datetime) -> None:
    """What the outbox does when Prefect takes the staged events."""
    with session_scope(url) as s:
        for e in s.exec(select(OutboxEvent).where(OutboxEvent.delivered_at == None)):  # noqa: E711
            e.delivered_at = at
            s.add(e)


def restage(url: str, at: datetime) -> list[int]:
    with session_scope(url) as s:
        return restage_stalled(s, at, grace_seconds=60)


def test_opened_incident_whose_runbook_never_started_gets_its_event_again(db_url: str) -> None:
    from runbooks.models import utcnow

    t = utcnow()
    iid = post(db_url, POLICY, [f1()], t).items[0].incident_id

    deliver(db_url, t + timedelta(seconds=1))
    assert restage(db_url, t + timedelta(seconds=30)) == []  # within the grace
    assert restage(db_url, t + timedelta(seconds=62)) == [iid]
    assert restage(db_url, t + timedelta(seconds=200)) == []  # the new one is not delivered yet
    assert opened_events(db_url, iid) == 2
    deliver(db_url, t + timedelta(seconds=201))

    with session_scope(db_url) as s:
        assert incidents.claim_triage(s, iid, "run-1") is None
    with session_scope(db_url) as s:
        assert incidents.claim_triage(s, iid, "run-2") == "run-1"  # the late duplicate stops
        assert incidents.claim_triage(s, iid, "run-3", force=True) is None
    assert restage(db_url, t + timedelta(seconds=400)) == []  # triage started: nothing to resend


def test_a_queued_run_is_not_taken_for_a_lost_one(db_url: str) -> None:
    from runbooks.models import utcnow

    t = utcnow()
    iid = post(db_url, POLICY, [f1()], t).items[0].incident_id
    with session_scope(db_url) as s:
        for e in s.exec(select(OutboxEvent)):
            e.delivered_at = t
            s.add(e)
    asked: list[list[int]] = []

    def has_run(ids: list[int], since: datetime) -> set[int]:
        asked.append(ids)
        return {iid}

    with session_scope(db_url) as s:
        assert restage_stalled(s, t + timedelta(seconds=90), 60, has_run=has_run) == []
    assert asked == [[iid]]


def test_silence_command_line_against_the_served_intake(stack: dict, capsys) -> None:  # type: ignore[no-untyped-def]
    from deployments.cli import main as cli

    url = stack["intake"]
    assert cli(["silence", "--url", url, "add", 'model="cli-model"', "--comment", "test"]) == 0
    sid = capsys.readouterr().out.strip()
    assert cli(["silence", "--url", url, "query"]) == 0
    assert sid in capsys.readouterr().out
    assert cli(["silence", "--url", url, "add", 'model=""', "--comment", "x"]) == 1
    assert "matchers" in capsys.readouterr().err
    assert cli(["silence", "--url", url, "expire", sid]) == 0
    assert cli(["silence", "--url", url, "query", "--state", "expired"]) == 0
    assert sid in capsys.readouterr().out


# --- escalation: a worse alert joins a triaged incident ------------------------------------


def triaged_as(url: str, incident_id: int, severity: str) -> None:
    """What the triage run records (tasks.incident_store.record_triage), as of here."""
    with session_scope(url) as s:
        row = s.get(Incident, incident_id)
        row.severity = severity
        s.add(row)


def escalations(url: str, incident_id: int) -> list[dict]:
    with session_scope(url) as s:
        rows = s.exec(select(OutboxEvent).where(OutboxEvent.event == "ml.incident.escalated"))
        return [r.payload for r in rows if r.payload["incident_id"] == incident_id]


def escalated_lines(url: str, incident_id: int) -> list[str]:
    with session_scope(url) as s:
        rows = s.exec(
            select(TimelineEvent).where(
                TimelineEvent.incident_id == incident_id, TimelineEvent.kind == "escalated"
            )
        )
        return [r.message for r in rows]


def churn(value: float, instance: str, **kw: object) -> dict:
    return f1("churn", value=value, labels={"instance": instance}, **kw)


def test_a_worse_alert_escalates_a_triaged_incident_once(db_url: str) -> None:
    iid = post(db_url, POLICY, [churn(0.72, "a", baseline=0.90)], T0).items[0].incident_id
    # Before triage there is nothing to compare with: triage itself reads the worst alert.
    post(db_url, POLICY, [churn(0.6, "early")], T0 + timedelta(seconds=1))
    assert escalations(db_url, iid) == [] and incident(db_url, iid).severity is None

    triaged_as(db_url, iid, "P2")
    same = churn(0.75, "b", baseline=0.90)  # a 16.7% drop: another P2, nothing to do
    worse = [churn(0.6, "c"), churn(0.5, "d")]  # P1 twice in the post: one escalation
    result = post(db_url, POLICY, [same, *worse], T0 + timedelta(seconds=2))
    assert {i.incident_id for i in result.items} == {iid}
    assert incident(db_url, iid).severity == "P1"
    assert escalations(db_url, iid) == [
        {
            "incident_id": iid,
            "model": "churn",
            "severity": "P1",
            "previous": "P2",
            "status": "firing",
        }
    ]
    (line,) = escalated_lines(db_url, iid)
    assert line.startswith("severity P2 -> P1: P1 because f1_score=0.6 < 0.7")
    assert line.endswith("joined); triage decides again")

    # P1 is the top: a still worse alert is just another alert of the incident.
    post(db_url, POLICY, [churn(0.4, "e")], T0 + timedelta(seconds=3))
    assert len(escalations(db_url, iid)) == 1


def test_a_muted_worse_alert_does_not_escalate(db_url: str) -> None:
    iid = post(db_url, POLICY, [churn(0.70, "a")], T0).items[0].incident_id
    triaged_as(db_url, iid, "P3")
    with session_scope(db_url) as s:
        silence = {
            "matchers": ['instance="muted"'],
            "duration": "1h",
            "createdBy": "alice",
            "comment": "load test",
        }
        add_silence(s, build_silence({**silence, "startsAt": T0.isoformat()}, T0))
    item = post(db_url, POLICY, [churn(0.5, "muted")], T0 + timedelta(seconds=5)).items[0]
    assert item.incident_id == iid and item.suppressed
    assert incident(db_url, iid).severity == "P3" and escalations(db_url, iid) == []


def test_concurrent_posts_escalate_once(db_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from deployments.intake import store_alerts

    now = datetime.now(UTC)  # store_alerts reads the clock: open the group in its window
    iid = post(db_url, POLICY, [churn(0.72, "a", baseline=0.90)], now).items[0].incident_id
    triaged_as(db_url, iid, "P2")
    posts = [parse_generic([churn(0.6, f"p{k}-{n}") for n in range(5)], now) for k in range(8)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda alerts: store_alerts(db_url, alerts, POLICY, writers=4), posts))
    assert incident(db_url, iid).severity == "P1"
    assert len(escalations(db_url, iid)) == 1 and len(escalated_lines(db_url, iid)) == 1


def test_an_alert_that_joined_while_triage_decided_escalates_when_it_records(db_url: str) -> None:
    iid = post(db_url, POLICY, [churn(0.72, "a", baseline=0.90)], T0).items[0].incident_id
    with session_scope(db_url) as s:
        read_up_to = max(a.id for a in s.exec(select(Alert).where(Alert.incident_id == iid)))
    # Joins after triage read the incident and before it recorded P2: no severity to beat.
    post(db_url, POLICY, [churn(0.6, "late")], T0 + timedelta(seconds=1))
    assert escalations(db_url, iid) == []
    with session_scope(db_url) as s:
        row = s.get(Incident, iid)
        row.severity = "P2"
        assert escalate_for_later_alerts(s, row, read_up_to, POLICY) == "P1"
    assert incident(db_url, iid).severity == "P1"
    assert [e["previous"] for e in escalations(db_url, iid)] == ["P2"]
    assert "joined while triage decided" in escalated_lines(db_url, iid)[0]
    # Nothing later than what the re-triage reads: nothing to do.
    with session_scope(db_url) as s:
        row = s.get(Incident, iid)
        assert escalate_for_later_alerts(s, row, read_up_to, POLICY) is None


def test_an_escalation_whose_retriage_never_started_gets_its_event_again(db_url: str) -> None:
    from runbooks.models import utcnow

    t = utcnow()
    iid = post(db_url, POLICY, [churn(0.72, "a", baseline=0.90)], t).items[0].incident_id
    with session_scope(db_url) as s:
        assert incidents.claim_triage(s, iid, "the-first-triage") is None
    triaged_as(db_url, iid, "P2")
    post(db_url, POLICY, [churn(0.6, "b")], t + timedelta(seconds=1))

    deliver(db_url, t + timedelta(seconds=2))
    assert restage(db_url, t + timedelta(seconds=30)) == []  # within the grace
    assert restage(db_url, t + timedelta(seconds=63)) == [iid]
    assert restage(db_url, t + timedelta(seconds=200)) == []  # the new one is not delivered yet
    sent = escalations(db_url, iid)
    assert [(e["severity"], e["previous"], e.get("attempt")) for e in sent] == [
        ("P1", "P2", None),
        ("P1", "P2", 2),
    ]
    deliver(db_url, t + timedelta(seconds=201))
    # The re-triage recorded its decision: nothing more to send.
    with session_scope(db_url) as s:
        incidents.add_timeline(
            s, iid, "triage", "decision", "P1 because ...", at=t + timedelta(seconds=230)
        )
    assert restage(db_url, t + timedelta(seconds=400)) == []
    assert len(escalations(db_url, iid)) == 2
