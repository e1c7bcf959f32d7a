"""The post-mortem: its metrics, deadlines, root cause and action items from a constructed
timeline (build() is pure); the HTTP API on SQLite and PostgreSQL (read, build on the spot,
accept closes); and on the session's real stack, a resolved incident's post-mortem drafted
by the served deployment, published as an artifact and served by the intake."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from deployments.cli import main
from deployments.intake import create_app
from runbooks.incidents import add_timeline, transition
from runbooks.models import Incident, IncidentNotice, RootCauseLabel
from runbooks.policy import Business, ModelPolicy, Policy, load_policy
from runbooks.postmortem import NOT_ESTABLISHED, Facts, TimelineRow, build
from runbooks.store import session_scope
from tests.helpers import wait_for

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
TOKEN = "postmortem-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FIXTURES = Path(__file__).parent / "fixtures" / "alertmanager"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture
def policy() -> Policy:
    p = load_policy()
    p.models["fraud-v3"] = ModelPolicy(
        owners=["olga", "bob"], business=Business(revenue_per_hour=1200)
    )
    return p


def incident(**kw: Any) -> Incident:
    """Opened at T0 from an alert that started 90 s earlier; acknowledged at 2 min,
    mitigated at 5 min, resolved at 30 min."""
    fields: dict[str, Any] = {
        "id": 7,
        "model": "fraud-v3",
        "title": "F1 below threshold",
        "status": "resolved",
        "severity": "P1",
        "type": "model_degradation",
        "category": "model_performance",
        "group_key": "fraud-v3:f1",
        "assignee": "alice",
        "onset_at": at(-90),
        "opened_at": T0,
        "acknowledged_at": at(120),
        "acknowledged_by": "alice",
        "mitigated_at": at(300),
        "resolved_at": at(1800),
        "strategy": "immediate_rollback",
        **kw,
    }
    return Incident(**fields)


def facts(**kw: Any) -> Facts:
    rows = [
        TimelineRow(at=T0, actor="intake", kind="opened", message="opened by ModelF1Low"),
        TimelineRow(at=at(40), actor="triage", kind="decision", message="P1 because f1=0.61 < 0.7"),
        TimelineRow(at=at(60), actor="triage", kind="status", message="open -> triaged: P1"),
        TimelineRow(at=at(299), actor="containment", kind="verify", message="recovered: f1=0.9"),
        TimelineRow(at=at(300), actor="containment", kind="status", message="-> mitigated"),
        TimelineRow(at=at(1800), actor="containment", kind="status", message="-> resolved"),
    ]
    fields: dict[str, Any] = {
        "timeline": rows,
        "alerts": 3,
        "alerts_firing": 0,
        "alertnames": {"ModelF1Low": 2, "ModelLatencyHigh": 1},
        "first_alert_at": at(-90),
        "actions": [
            {"kind": "route_to_previous_version", "target": "ml-prod/fraud-v3", "status": "done"}
        ],
    }
    return Facts(**{**fields, **kw})


def label(cause: str, by: str = "dana", minutes: float = 60, **kw: Any) -> RootCauseLabel:
    return RootCauseLabel(incident_id=7, root_cause=cause, labeled_by=by, at=at(minutes * 60), **kw)


def test_metrics_are_the_moments_of_the_timeline(policy: Policy) -> None:
    pm = build(incident(), facts(), [], policy, at(4000))
    assert pm.metrics == {
        "time_to_detect": 90.0,  # the alert's startsAt -> opened
        "time_to_acknowledge": 120.0,
        "time_to_contain": 300.0,
        "time_to_resolve": 1800.0,
    }
    assert pm.final and pm.summary.duration_seconds == 1800
    impact = pm.business_impact
    assert (impact.revenue_per_hour, impact.duration_hours) == (1200, 0.5)
    assert impact.estimated_loss == 600 and impact.duration_from == "time_to_resolve"
    assert any("acknowledged by alice" in w for w in pm.went_well)
    assert any(w.startswith("contained automatically") for w in pm.went_well)


def test_an_active_incident_is_a_draft_whose_duration_runs_to_now(policy: Policy) -> None:
    active = incident(status="mitigated", resolved_at=None)
    pm = build(active, facts(), [], policy, at(3600))
    assert not pm.final
    assert pm.metrics["time_to_resolve"] is None
    assert pm.summary.duration_seconds == 3600
    assert pm.business_impact.estimated_loss == 1200
    assert all(a.due is None for a in pm.action_items)
    assert "Draft" in pm.to_markdown()


def test_p1_deadlines_met(policy: Policy) -> None:
    pm = build(incident(), facts(), [], policy, at(9000))
    assert {d.step: d.outcome for d in pm.deadlines} == {
        "triage": "met",  # triaged at 1 min of 5
        "investigation": "met",  # mitigated at 5 min of 10
        "resolution": "met",  # resolved at 30 min of 120
    }
    assert sum("met the" in w for w in pm.went_well) == 3


def test_routed_deadlines_missed_late_or_told_by_the_sweep(policy: Policy) -> None:
    routed = {
        "deadlines": {
            "triage": at(30).isoformat(),  # triaged at 60 s
            "investigation": at(600).isoformat(),
            "resolution": at(7200).isoformat(),
        },
        "escalation": [{"after_minutes": 0, "who": "oncall"}, {"after_minutes": 1, "who": "lead"}],
    }
    late = incident(route=routed)
    pm = build(late, facts(notices=["deadline:resolution", "escalation:0"]), [], policy, at(9000))
    assert {d.step: d.outcome for d in pm.deadlines} == {
        "triage": "missed",
        "investigation": "met",
        "resolution": "missed",  # the sweep's notice says so
    }
    assert any("missed the triage deadline" in w for w in pm.went_badly)
    # The chain went to the lead at 1 min; alice acknowledged at 2.
    assert any("only after the first escalation" in w for w in pm.went_badly)


def test_a_deadline_passed_while_active_is_missed_and_a_future_one_pending(
    policy: Policy,
) -> None:
    active = incident(status="open", mitigated_at=None, resolved_at=None, acknowledged_at=None)
    f = facts(timeline=[], actions=[])
    pm = build(active, f, [], policy, at(400))
    assert {d.step: d.outcome for d in pm.deadlines} == {
        "triage": "missed",
        "investigation": "pending",
        "resolution": "pending",
    }
    assert "nobody acknowledged it" in pm.went_badly
    assert any(w.startswith("not contained automatically") for w in pm.went_badly)


def test_contained_only_after_a_person_approved(policy: Policy) -> None:
    f = facts(approvals=[{"action": "route_to_previous_version", "status": "approved",
                          "decided_by": "bob"}])  # fmt: skip
    pm = build(incident(), f, [], policy, at(9000))
    assert "not contained automatically: it waited for the approval of bob" in pm.went_badly


def test_action_items_follow_the_labelled_cause(policy: Policy) -> None:
    pm = build(incident(), facts(), [label("feature_drift")], policy, at(9000))
    items = [(a.title, a.owner, a.due) for a in pm.action_items]
    assert items == [
        ("Add a drift check on the drifted features of fraud-v3 to the sweep", "alice",
         "2026-12-08"),
        ("Retrain fraud-v3 on recent data or document why not", "alice", "2026-12-15"),
    ]  # fmt: skip
    quality = build(incident(), facts(), [label("data_quality")], policy, at(9000))
    # {owner}: the model's first owner.
    assert [a.owner for a in quality.action_items] == ["alice", "olga"]


def test_an_unknown_cause_gets_the_default_items(policy: Policy) -> None:
    pm = build(incident(), facts(), [label("cosmic rays", component="rack 4")], policy, at(9000))
    assert pm.root_cause.established and pm.root_cause.root_cause == "cosmic rays"
    assert [a.title for a in pm.action_items] == [
        t.title for t in policy.postmortem.action_items["default"]
    ]
    assert pm.action_items[0].due == "2026-12-04"  # due_days 3


def test_no_diagnosis_and_no_label_says_not_established_and_lists_the_evidence(
    policy: Policy,
) -> None:
    pm = build(incident(), facts(), [], policy, at(9000))
    rc = pm.root_cause
    assert not rc.established and rc.root_cause == NOT_ESTABLISHED
    assert rc.evidence == [
        "triage classified it model_performance / model_degradation, severity P1",
        "triage: P1 because f1=0.61 < 0.7",
        "alerts: ModelF1Low x2, ModelLatencyHigh x1 (0 still firing)",
        "action: route_to_previous_version ml-prod/fraud-v3: done",
        "verification: recovered: f1=0.9",
    ]
    assert len(pm.five_whys) == 5
    cause = pm.five_whys[2]
    assert not cause.established and cause.answer.startswith("not established: ")
    assert pm.five_whys[0].established and "ModelF1Low x2" in pm.five_whys[0].answer
    assert pm.five_whys[4].answer.startswith("it was detected 90 s after it began")
    assert [a.title for a in pm.action_items][0].startswith("Establish the root cause")
    assert "**Not established**" in pm.to_markdown()


def test_the_diagnosis_stands_until_a_person_labels_it(policy: Policy) -> None:
    diagnosed = incident(
        context={"diagnosis": {"cause": "bad_deployment", "confidence": 0.8, "evidence": ["v2"]}}
    )
    pm = build(diagnosed, facts(), [], policy, at(9000))
    assert pm.root_cause.established and pm.root_cause.root_cause == "bad_deployment"
    assert pm.root_cause.labeled_by is None and pm.root_cause.confidence == 0.8
    assert "diagnosis: v2" in pm.root_cause.evidence
    later = [label("feature_drift", minutes=10), label("data_quality", by="erin", minutes=20)]
    labelled = build(diagnosed, facts(), later, policy, at(9000))
    assert (labelled.root_cause.root_cause, labelled.root_cause.labeled_by) == (
        "data_quality",
        "erin",
    )
    assert labelled.root_cause.diagnosis_agrees is False


def test_markdown_has_every_timeline_line_of_a_long_incident(policy: Policy) -> None:
    rows = [
        TimelineRow(at=at(i), actor="bot", kind="context", message=f"line {i} | with a pipe")
        for i in range(500)
    ]
    md = build(incident(), facts(timeline=rows), [], policy, at(9000)).to_markdown()
    table = md.split("## Timeline", 1)[1]
    assert sum(1 for line in table.splitlines() if line.startswith("| 2026-")) == 500
    assert "line 499 \\| with a pipe" in table
    for section in ("## Summary", "## Metrics", "## Root cause", "## Five whys", "## Action"):
        assert section in md


# The API --------------------------------------------------------------------------------


@pytest.fixture
def client(db_url: str, policy: Policy):  # type: ignore[no-untyped-def]
    with TestClient(create_app(db_url, policy, token=TOKEN)) as c:
        yield c


def stored_incident(url: str, status: str = "resolved") -> int:
    key = f"fraud-v3:{uuid.uuid4().hex[:8]}"
    with session_scope(url) as s:
        i = Incident(
            model="fraud-v3",
            title="F1 below threshold",
            severity="P1",
            status="open",
            group_key=key,
            open_group_key=key,
            onset_at=at(-90),
            opened_at=T0,
            assignee="alice",
        )
        s.add(i)
        s.flush()
        add_timeline(s, i.id, "intake", "opened", "opened by ModelF1Low", at=T0)
        s.add(IncidentNotice(incident_id=i.id, key="deadline:triage", at=at(300)))
        s.add(RootCauseLabel(incident_id=i.id, root_cause="feature_drift", labeled_by="dana"))
        for step in ("triaged", "mitigated", "resolved"):
            if status == "triaged" and step != "triaged":
                break
            transition(s, i, step, "test", "by the test")
        return i.id  # type: ignore[return-value]


def test_get_builds_it_on_the_spot_without_storing_then_serves_the_stored_one(
    client: TestClient, db_url: str
) -> None:
    iid = stored_incident(db_url)
    r = client.get(f"/api/v1/incidents/{iid}/postmortem", headers=AUTH)
    assert r.status_code == 200, r.text
    pm = r.json()
    assert pm["stored"] is False and pm["final"] is True
    assert set(pm["metrics"]) == {
        "time_to_detect",
        "time_to_acknowledge",
        "time_to_contain",
        "time_to_resolve",
    }
    assert pm["metrics"]["time_to_detect"] == 90 and pm["metrics"]["time_to_acknowledge"] is None
    assert pm["root_cause"]["root_cause"] == "feature_drift"
    assert {d["step"]: d["outcome"] for d in pm["deadlines"]}["triage"] == "missed"
    with session_scope(db_url) as s:
        assert s.get(Incident, iid).postmortem is None
        s.get(Incident, iid).postmortem = {**pm, "summary": {**pm["summary"], "title": "kept"}}
    again = client.get(f"/api/v1/incidents/{iid}/postmortem", headers=AUTH).json()
    assert again["stored"] is True and again["summary"]["title"] == "kept"


def test_a_label_given_after_the_resolution_redrafts_the_stored_post_mortem(
    client: TestClient, db_url: str
) -> None:
    iid = stored_incident(db_url)
    drafted = client.get(f"/api/v1/incidents/{iid}/postmortem", headers=AUTH).json()
    with session_scope(db_url) as s:
        s.get(Incident, iid).postmortem = drafted  # as the postmortem flow stores it
    label = {"root_cause": "bad_deployment", "component": "model v2", "labeled_by": "erin"}
    r = client.post(f"/api/v1/incidents/{iid}/labels", json=label, headers=AUTH)
    assert r.status_code == 201, r.text
    pm = client.get(f"/api/v1/incidents/{iid}/postmortem", headers=AUTH).json()
    assert pm["stored"] is True and pm["root_cause"]["root_cause"] == "bad_deployment"
    # Once accepted, it stays as it was accepted.
    assert (
        client.post(
            f"/api/v1/incidents/{iid}/postmortem/accept", json={"by": "erin"}, headers=AUTH
        ).status_code
        == 200
    )
    label = {"root_cause": "infrastructure", "labeled_by": "frank"}
    assert (
        client.post(f"/api/v1/incidents/{iid}/labels", json=label, headers=AUTH).status_code == 201
    )
    kept = client.get(f"/api/v1/incidents/{iid}/postmortem", headers=AUTH).json()
    assert kept["root_cause"]["root_cause"] == "bad_deployment"


def test_get_names_a_missing_incident_and_wants_the_token(client: TestClient) -> None:
    r = client.get("/api/v1/incidents/9999/postmortem", headers=AUTH)
    assert r.status_code == 404 and "9999" in r.json()["error"]
    assert client.get("/api/v1/incidents/9999/postmortem").status_code == 401


def test_accept_closes_a_resolved_incident_and_refuses_an_active_one(
    client: TestClient, db_url: str
) -> None:
    active = stored_incident(db_url, status="triaged")
    r = client.post(f"/api/v1/incidents/{active}/postmortem/accept", json={"by": "alice"},
                    headers=AUTH)  # fmt: skip
    assert r.status_code == 409 and "only a resolved incident can be closed" in r.json()["error"]
    r = client.post(f"/api/v1/incidents/{active}/postmortem/accept", json={}, headers=AUTH)
    assert r.status_code == 422 and "by" in r.json()["error"]
    r = client.post("/api/v1/incidents/9999/postmortem/accept", json={"by": "a"}, headers=AUTH)
    assert r.status_code == 404 and "9999" in r.json()["error"]

    iid = stored_incident(db_url)
    r = client.post(f"/api/v1/incidents/{iid}/postmortem/accept", json={"by": "alice"},
                    headers=AUTH)  # fmt: skip
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["status"] == "closed" and view["postmortem_accepted_by"] == "alice"
    assert view["timeline"][-1]["message"] == "post-mortem accepted by alice"
    assert view["postmortem"]["root_cause"]["root_cause"] == "feature_drift"
    # Twice is once.
    again = client.post(f"/api/v1/incidents/{iid}/postmortem/accept", json={"by": "bob"},
                        headers=AUTH).json()  # fmt: skip
    assert again["postmortem_accepted_by"] == "alice"
    assert [e["message"] for e in again["timeline"]].count("post-mortem accepted by alice") == 1


def test_cli_prints_markdown_json_and_accepts(
    client: TestClient, db_url: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    """The CLI through the intake client; the client's HTTP goes to the TestClient."""
    from tasks import intake_client

    iid = stored_incident(db_url)

    def request(method: str, url: str, headers: dict, timeout: Any, **kw: Any) -> httpx.Response:
        return client.request(method, url.removeprefix("http://intake"), headers=headers, **kw)

    monkeypatch.setattr(intake_client.httpx, "request", request)
    monkeypatch.setenv("RUNBOOKS_INTAKE_TOKEN", TOKEN)
    url = ["--url", "http://intake"]
    assert main(["postmortem", str(iid), *url]) == 0
    md = capsys.readouterr().out
    assert md.startswith(f"# Post-mortem: incident {iid}, fraud-v3") and "## Timeline" in md
    assert main(["postmortem", str(iid), "--json", *url]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["metrics"]["time_to_detect"] == 90
    assert main(["postmortem", str(iid), "--accept", *url]) == 2
    assert "--by" in capsys.readouterr().err
    assert main(["postmortem", str(iid), "--accept", "--by", "alice", *url]) == 0
    assert "closed: post-mortem accepted by alice" in capsys.readouterr().out
    assert main(["postmortem", "9999", *url]) == 1
    assert "no incident 9999" in capsys.readouterr().err


# On the session's stack -----------------------------------------------------------------


@pytest.mark.slow
def test_a_resolved_incident_gets_its_postmortem_drafted_published_and_served(
    stack: dict,
) -> None:
    intake, api = stack["intake"], stack["api"]
    # The stack waits for triage's and containment's automations only; an incident resolved
    # before this one exists starts no post-mortem (seen on a fresh stack: created 0.5 s
    # after the event).
    wait_for(
        lambda: any(
            a["name"] == "postmortem__automation_1"
            for a in httpx.post(f"{api}/automations/filter", json={}, timeout=5).json()
        ),
        timeout=30,
        what="the postmortem deployment's automation",
    )
    model = f"pm-{uuid.uuid4().hex[:6]}"
    started = (datetime.now(UTC) - timedelta(seconds=90)).replace(microsecond=0)
    webhook = json.loads((FIXTURES / "firing-feature-drift.json").read_text())
    (alert,) = webhook["alerts"]
    alert["labels"]["model"] = webhook["commonLabels"]["model"] = model
    alert["fingerprint"] = uuid.uuid4().hex[:16]
    alert["startsAt"] = started.isoformat().replace("+00:00", "Z")
    httpx.post(f"{intake}/api/v1/alerts/alertmanager", json=webhook, timeout=10).raise_for_status()
    iid = wait_for(
        lambda: httpx.get(f"{intake}/api/v1/incidents", params={"model": model}).json()["items"],
        timeout=20,
        what="the incident opened",
    )[0]["id"]
    httpx.post(f"{intake}/api/v1/incidents/{iid}/ack", json={"by": "alice"}, timeout=10)
    resolved = copy.deepcopy(webhook)
    resolved["status"] = resolved["alerts"][0]["status"] = "resolved"
    resolved["alerts"][0]["endsAt"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    httpx.post(f"{intake}/api/v1/alerts/alertmanager", json=resolved, timeout=10).raise_for_status()

    wait_for(
        lambda: httpx.get(f"{intake}/api/v1/incidents/{iid}").json()["status"] == "resolved",
        timeout=20,
        what="the intake resolved the incident when its alert resolved",
    )

    def drafted() -> dict | None:
        view = httpx.get(f"{intake}/api/v1/incidents/{iid}", timeout=10).json()
        lines = [e for e in view["timeline"] if e["kind"] == "postmortem"]
        return view if lines and view["postmortem"] else None

    view = wait_for(drafted, timeout=60, what="the served postmortem flow stored the report")
    assert any(e["message"].startswith("post-mortem drafted: ") for e in view["timeline"])
    artifacts = httpx.post(
        f"{api}/artifacts/filter",
        json={"artifacts": {"key": {"any_": [f"postmortem-{iid}"]}}},
        timeout=10,
    ).json()
    assert artifacts and artifacts[0]["type"] == "markdown"
    assert f"# Post-mortem: incident {iid}, {model}" in artifacts[0]["data"]

    pm = httpx.get(f"{intake}/api/v1/incidents/{iid}/postmortem", timeout=10).json()
    assert pm["stored"] is True and pm["final"] is True
    moment = {
        name: datetime.fromisoformat(view[name])
        for name in ("onset_at", "opened_at", "acknowledged_at", "resolved_at")
    }
    resolved_line = next(
        e for e in view["timeline"] if e["kind"] == "status" and "-> resolved" in e["message"]
    )
    assert datetime.fromisoformat(resolved_line["at"]) == moment["resolved_at"]
    assert moment["onset_at"] == started
    expected = {
        "time_to_detect": (moment["opened_at"] - started).total_seconds(),
        "time_to_acknowledge": (moment["acknowledged_at"] - moment["opened_at"]).total_seconds(),
        "time_to_resolve": (moment["resolved_at"] - moment["opened_at"]).total_seconds(),
    }
    assert {k: pm["metrics"][k] for k in expected} == pytest.approx(expected)
    assert set(pm["metrics"]) == {*expected, "time_to_contain"}
