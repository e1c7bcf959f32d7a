"""The scheduled audits: what each finds on constructed rows (runbooks/audits.py), and each
flow run against the session's Prefect server leaving its artifact; the fairness audit
raising a bias incident through the session's intake."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from runbooks import audits
from runbooks import suppression as sup
from runbooks.models import Alert, Incident, IncidentNotice, Silence, utcnow
from runbooks.policy import Audits, Policy
from runbooks.settings import get_settings
from runbooks.store import migrate, session_scope
from runbooks.taxonomy import classify

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "runbooks" / "default_policy.yaml"
NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def policy_data(**changes: Any) -> dict[str, Any]:
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    data.update(changes)
    return data


def make_policy(**changes: Any) -> Policy:
    return Policy.model_validate(policy_data(**changes))


def incident(model: str = "fraud-v3", **columns: Any) -> Incident:
    key = f"{model}:{uuid.uuid4().hex[:8]}"
    columns.setdefault("opened_at", NOW - timedelta(days=1))
    return Incident(model=model, title="F1 below threshold", group_key=key, **columns)


# -- weekly review -------------------------------------------------------------------------


def test_weekly_review_counts_the_weeks_incidents_deadlines_and_median_response_times() -> None:
    policy = make_policy(models={"fraud-v3": {}, "churn": {}})
    opened = NOW - timedelta(days=2)
    fast = incident(
        id=1,
        severity="P1",
        status="resolved",
        opened_at=opened,
        acknowledged_at=opened + timedelta(minutes=2),
        mitigated_at=opened + timedelta(minutes=8),
        resolved_at=opened + timedelta(minutes=60),
    )
    slow = incident(
        id=2,
        severity="P1",
        status="resolved",
        opened_at=opened,
        acknowledged_at=opened + timedelta(minutes=6),
        mitigated_at=opened + timedelta(minutes=20),
        resolved_at=opened + timedelta(minutes=180),
    )
    unacked = incident(id=3, severity="P2", status="open", opened_at=opened)
    last_month = incident(id=4, severity="P1", opened_at=NOW - timedelta(days=30))
    notices = {2: ["deadline:investigation", "deadline:resolution", "escalation:0"], 3: []}
    churn, fraud = audits.weekly_review([fast, slow, unacked, last_month], notices, policy, NOW)
    assert (churn.model, churn.incidents, churn.trend) == ("churn", 0, audits.NO_METRIC_SOURCE)
    assert fraud.incidents == 3 and fraud.by_severity == {"P1": 2, "P2": 1}
    # Three deadlines each, all passed two days on. Incident 3, still open, missed all
    # three, though no sweep told (the state shows it).
    assert (fraud.deadlines_met, fraud.deadlines_missed) == (4, 5)
    assert fraud.missed == [
        "#2 investigation",
        "#2 resolution",
        "#3 triage",
        "#3 investigation",
        "#3 resolution",
    ]
    assert fraud.mtta_median_seconds == 240  # 2 and 6 minutes; the open one has none
    assert fraud.mttr_median_seconds == 120 * 60


def test_a_reopened_incident_counts_the_deadlines_each_life_missed() -> None:
    policy = make_policy()
    i = incident(
        id=9,
        severity="P1",
        status="triaged",
        opened_at=NOW - timedelta(hours=5),
        reopened_at=NOW - timedelta(minutes=30),
        reopened_count=1,
    )
    met, missed = audits.deadline_outcomes(
        i, ["deadline:resolution", "deadline:triage@1"], policy, NOW
    )
    # This life: triage (5 min, told) and investigation (10 min, not mitigated: the state
    # says) missed, resolution (2 h) ahead; the first life's resolution was missed too.
    assert missed == ["resolution", "triage@1", "investigation@1"]
    assert met == 0


def test_metric_trend_is_each_metrics_first_and_last_reading_of_the_week() -> None:
    since = NOW - audits.WEEK
    points = [
        (since - timedelta(days=1), "f1_score", 0.99),
        (since + timedelta(days=1), "f1_score", 0.90),
        (since + timedelta(days=5), "f1_score", 0.81),
        (since + timedelta(days=2), "latency_p99_seconds", 0.5),
    ]
    assert audits.metric_trend(points, since) == (
        "f1_score 0.9 -> 0.81 (-10.0%); latency_p99_seconds 0.5 -> 0.5 (+0.0%)"
    )
    assert audits.metric_trend(points[:1], since) == "no metric readings since 2026-11-30"


# -- fairness audit ------------------------------------------------------------------------


def test_the_fairness_audit_judges_the_month_before_its_run() -> None:
    assert audits.audit_month(datetime(2026, 12, 1, 6, tzinfo=UTC)) == (
        datetime(2026, 11, 1, tzinfo=UTC),
        datetime(2026, 12, 1, tzinfo=UTC),
    )
    assert audits.audit_month(datetime(2027, 1, 1, 6, tzinfo=UTC))[0] == datetime(
        2026, 12, 1, tzinfo=UTC
    )
    assert audits.audit_month(NOW, "2026-02") == (
        datetime(2026, 2, 1, tzinfo=UTC),
        datetime(2026, 3, 1, tzinfo=UTC),
    )
    with pytest.raises(ValueError, match="YYYY-MM"):
        audits.audit_month(NOW, "November")


def test_a_failed_fairness_finding_becomes_an_alert_the_taxonomy_calls_bias() -> None:
    from checks.fairness import fairness_report

    groups = ["a"] * 40 + ["b"] * 40
    y_true = [1, 0] * 40
    y_pred = [1] * 40 + [0] * 40
    failed = [f for f in fairness_report(y_true, y_pred, groups).findings() if not f.passed]
    assert failed
    alert = audits.bias_alert("fraud-v3", failed[0], "segment", datetime(2026, 11, 1, tzinfo=UTC))
    assert alert["startsAt"] == "2026-11-01T00:00:00Z" and alert["alertname"] == "ModelBiasDetected"
    c = classify({"alertname": alert["alertname"], "metric": alert["metric"]})
    assert (c.category, c.type) == ("bias_fairness", "bias")


# -- model audit ---------------------------------------------------------------------------


def test_model_audit_flags_models_without_owner_or_runbook_and_stale_ones() -> None:
    target = {"kind": "kubernetes", "namespace": "ml-prod"}
    policy = make_policy(
        models={
            "fraud-v3": {
                "owners": ["alice"],
                "team": "risk",
                "target": target,
                "approvers": {"P1": ["rita"]},
                "recovery": {"url": "http://metrics/{model}"},
            },
            "orphan": {},
        }
    )
    old = (NOW - timedelta(days=200)).isoformat()
    recent = (NOW - timedelta(days=3)).isoformat()
    fraud_ctx = {"registry": {"current": {"version": 3, "created": old, "updated": recent}}}
    rows = audits.model_audit(
        policy,
        [
            incident("fraud-v3", context=fraud_ctx, strategy="immediate_rollback"),
            incident("orphan", strategy="pipeline_recovery"),
        ],
        NOW,
    )
    fraud, orphan = rows
    assert fraud.flags == [] and fraud.stale == "no" and fraud.last_change == "2026-12-04"
    assert (fraud.owner, fraud.team, fraud.runbook) == ("alice", "risk", "containment (kubernetes)")
    assert (fraud.p1_approvers, fraud.registry) == ("rita", "fraud-v3")
    assert orphan.stale == "unknown" and orphan.last_change == "unknown"
    assert orphan.p1_approvers == "policy default: owners, oncall"
    assert orphan.flags == [
        "no owner",
        "no runbook",
        "no runbook for pipeline_recovery",
        "no recovery check",
    ]
    stale_ctx = {"registry": {"current": {"version": 1, "created": old}}}
    [stale] = audits.model_audit(
        make_policy(models={"fraud-v3": {"owners": ["a"], "target": target}}),
        [incident("fraud-v3", context=stale_ctx)],
        NOW,
    )
    assert stale.stale == "yes" and "stale: no change in 90 days" in stale.flags


# -- silence inventory ---------------------------------------------------------------------


def silence(matchers: str, starts: datetime, ends: datetime, id_: str) -> sup.Silence:
    return sup.Silence(
        id=id_,
        matchers=sup.parse_matchers(matchers),
        starts_at=starts,
        ends_at=ends,
        created_by="alice",
        comment="noisy",
    )


def test_silence_inventory_lists_forever_and_unused_silences_only() -> None:
    long_ago = NOW - timedelta(days=60)
    found = audits.silence_inventory(
        [
            silence('{model="fraud-v3"}', long_ago, NOW + timedelta(days=3650), "forever-used"),
            silence('{model="ghost"}', long_ago, NOW + timedelta(days=5), "unused"),
            silence('{model="ghost"}', NOW - timedelta(days=2), NOW + timedelta(days=5), "young"),
            silence('{model="ghost"}', long_ago, NOW - timedelta(days=1), "expired"),
            silence('{alertname=~"Model.*"}', long_ago, NOW + timedelta(days=5), "regex-used"),
        ],
        [{"model": "fraud-v3", "alertname": "ModelF1Low"}],
        NOW,
        Audits(),
    )
    assert [(f.id, f.problem) for f in found] == [
        ("forever-used", "never_expires"),
        ("unused", "unused"),
    ]


# -- the flows, against the session's Prefect server ---------------------------------------


@pytest.fixture
def own_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated, empty incident store for the in-process flow, and no metric source."""
    url = f"sqlite:///{tmp_path / 'audits.db'}"
    migrate(url)
    monkeypatch.setenv("RUNBOOKS_DATABASE_URL", url)
    monkeypatch.delenv("RUNBOOKS_SWEEP_SOURCE", raising=False)
    monkeypatch.delenv("RUNBOOKS_SWEEP_SQL_URL", raising=False)
    get_settings.cache_clear()
    yield url
    monkeypatch.undo()
    get_settings.cache_clear()


def write_policy(path: Path, **changes: Any) -> str:
    path.write_text(yaml.safe_dump(policy_data(**changes)))
    return str(path)


def artifact(stack: dict, state: Any, key: str) -> str:
    """The markdown the run left under `key` on the server."""
    assert state.is_completed(), state
    found = httpx.post(
        f"{stack['api']}/artifacts/filter",
        json={
            "artifacts": {
                "key": {"any_": [key]},
                "flow_run_id": {"any_": [str(state.state_details.flow_run_id)]},
            }
        },
        timeout=10,
    ).json()
    assert [a["type"] for a in found] == ["markdown"], found
    return found[0]["data"]


def test_weekly_review_flow_leaves_its_table_on_the_server(
    stack: dict, own_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.audits import WeeklyReviewRequest, weekly_review

    policy = write_policy(tmp_path / "policy.yaml", models={"fraud-v3": {}, "churn": {}})
    state = weekly_review(WeeklyReviewRequest(policy_file=policy), return_state=True)
    markdown = artifact(stack, state, "weekly-review")
    assert "No incidents this week: nothing found." in markdown
    assert "| churn | 0 | - | 0 | 0 | - | - | no metric source configured |" in markdown

    now = utcnow()
    opened = now - timedelta(days=1)
    with session_scope(own_store) as s:
        i = incident(
            severity="P1",
            status="resolved",
            opened_at=opened,
            acknowledged_at=opened + timedelta(minutes=3),
            resolved_at=opened + timedelta(minutes=90),
        )
        s.add(i)
        s.flush()
        s.add(IncidentNotice(incident_id=i.id, key="deadline:investigation"))
    source = tmp_path / "sweep-source"
    (source / "fraud-v3").mkdir(parents=True)
    (source / "fraud-v3" / "model_metrics.csv").write_text(
        "timestamp,metric,value\n"
        f"{(now - timedelta(days=3)).isoformat()},f1_score,0.9\n"
        f"{(now - timedelta(hours=1)).isoformat()},f1_score,0.72\n"
    )
    monkeypatch.setenv("RUNBOOKS_SWEEP_SOURCE", str(source))
    state = weekly_review(WeeklyReviewRequest(policy_file=policy), return_state=True)
    summary = state.result()
    assert [r.incidents for r in summary.rows] == [0, 1]
    markdown = artifact(stack, state, "weekly-review")
    assert (
        f"| fraud-v3 | 1 | P1: 1 | 2 | 1 (#{i.id} investigation) | 3.0 min | 90.0 min | "
        "f1_score 0.9 -> 0.72 (-20.0%) |"
    ) in markdown
    assert "| churn | 0 | - | 0 | 0 | - | - | no model_metrics rows in" in markdown


def predictions_csv(path: Path, model: str) -> Path:
    """November: segment a always predicted positive, segment b never (parity 1.0); a
    December row of b predicted positive that the November audit must leave out."""
    lines = ["timestamp,model,prediction,label,segment"]
    for n in range(40):
        at = datetime(2026, 11, 1 + n % 28, 12, tzinfo=UTC).isoformat()
        lines += [f"{at},{model},0.9,{n % 2},a", f"{at},{model},0.1,{n % 2},b"]
    lines.append(f"2026-12-02T00:00:00Z,{model},0.9,1,b")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fairness_audit_posts_a_bias_alert_the_intake_opens_an_incident_for(
    stack: dict, tmp_path: Path
) -> None:
    from flows.audits import FairnessAuditRequest, fairness_audit
    from tasks.intake_client import IntakeClient

    model = f"fair-{uuid.uuid4().hex[:6]}"
    csv = predictions_csv(tmp_path / "predictions.csv", model)
    policy = write_policy(tmp_path / "policy.yaml", audits={"fairness_predictions": str(csv)})
    intake = IntakeClient(stack["intake"])
    request = FairnessAuditRequest(
        policy_file=policy, month="2026-11", intake_url=stack["intake"], dry_run=True
    )

    dry = fairness_audit(request, return_state=True)
    assert [v.outcome for v in dry.result().breaches()] == ["would_raise", "would_raise"]
    assert intake.incidents_of(model) == []

    state = fairness_audit(request.model_copy(update={"dry_run": False}), return_state=True)
    summary = state.result()
    assert summary.rows == 80
    # Both measures are out of bounds (a: TPR = FPR = 1, b: 0); one bias incident.
    parity, odds = summary.breaches()
    assert [(v.measure, v.difference, v.outcome) for v in (parity, odds)] == [
        ("demographic_parity", 1.0, "opened"),
        ("equalized_odds", 1.0, "joined"),
    ]
    [found] = intake.incidents_of(model)
    assert found["id"] == parity.incident_id == odds.incident_id
    assert found["type"] == "bias" and found["category"] == "bias_fairness"
    markdown = artifact(stack, state, "fairness-audit")
    assert "80 labelled prediction(s) of the month" in markdown
    assert f"| {model} | 80 | demographic_parity | 1.000 |" in markdown

    # The same month audited again: the alerts start at the month's start, a repeat.
    again = fairness_audit(request.model_copy(update={"dry_run": False}))
    assert {v.incident_id for v in again.breaches()} == {parity.incident_id}
    assert [v.outcome for v in again.breaches()] == ["duplicate", "duplicate"]
    assert len(intake.incidents_of(model)) == 1


def test_fairness_audit_without_a_source_completes_and_says_so(stack: dict, tmp_path: Path) -> None:
    from flows.audits import FairnessAuditRequest, fairness_audit

    policy = write_policy(tmp_path / "policy.yaml")
    state = fairness_audit(FairnessAuditRequest(policy_file=policy), return_state=True)
    assert state.result().source == ""
    assert "No predictions source configured" in artifact(stack, state, "fairness-audit")


def test_model_audit_flow_flags_the_unowned_model_on_the_server(
    stack: dict, own_store: str, tmp_path: Path
) -> None:
    from flows.audits import ModelAuditRequest, model_audit

    policy = write_policy(
        tmp_path / "policy.yaml",
        models={"fraud-v3": {"owners": ["alice"], "target": {"kind": "kubernetes"}}, "orphan": {}},
    )
    with session_scope(own_store) as s:
        old = (utcnow() - timedelta(days=120)).isoformat()
        s.add(incident(context={"registry": {"current": {"version": 2, "created": old}}}))
    state = model_audit(ModelAuditRequest(policy_file=policy), return_state=True)
    assert [r.model for r in state.result().flagged()] == ["fraud-v3", "orphan"]
    markdown = artifact(stack, state, "model-audit")
    assert "2 model(s) in the policy; 2 flagged." in markdown
    assert "| orphan | - | - | - | none: no target, containment cannot act |" in markdown
    assert "| yes | no recovery check; stale: no change in 90 days |" in markdown
    assert "| unknown | no owner; no runbook; no recovery check |" in markdown


def test_silence_inventory_flow_lists_what_never_expires_and_what_matches_nothing(
    stack: dict, own_store: str, tmp_path: Path
) -> None:
    from flows.audits import SilenceInventoryRequest, silence_inventory

    policy = write_policy(tmp_path / "policy.yaml")
    empty = silence_inventory(SilenceInventoryRequest(policy_file=policy), return_state=True)
    assert "nothing found" in artifact(stack, empty, "silence-inventory")

    now = utcnow()
    with session_scope(own_store) as s:
        for id_, model, ends in (
            ("forever", "fraud-v3", now + timedelta(days=3650)),
            ("unused", "ghost", now + timedelta(days=7)),
        ):
            s.add(
                Silence(
                    id=id_,
                    matchers=[{"name": "model", "op": "=", "value": model}],
                    starts_at=now - timedelta(days=45),
                    ends_at=ends,
                    created_by="alice",
                    comment="retraining",
                )
            )
        s.add(
            Alert(
                fingerprint="f1",
                starts_at=now - timedelta(days=1),
                model="fraud-v3",
                alertname="ModelF1Low",
                labels={"model": "fraud-v3", "alertname": "ModelF1Low"},
            )
        )
    state = silence_inventory(SilenceInventoryRequest(policy_file=policy), return_state=True)
    summary = state.result()
    assert [(f.id, f.problem) for f in summary.findings] == [
        ("forever", "never_expires"),
        ("unused", "unused"),
    ]
    markdown = artifact(stack, state, "silence-inventory")
    assert '| forever | {model="fraud-v3"} | alice | retraining |' in markdown
    assert "| unused | matched none of the 1 alert(s) received in the last 30 days |" in markdown
