"""Triage's decision as a pure function of the incident, the policy and the clock: no
Prefect, no database. Incidents are built as `read_incident` returns them: an
`IncidentView` of the rows."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from runbooks.models import Alert, Incident
from runbooks.policy import DEFAULT_POLICY, Policy, parse_policy
from runbooks.triage import decide
from runbooks.views import IncidentView

T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # a Monday
NOW = T0 + timedelta(minutes=2)


def policy(**extra: Any) -> Policy:
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    data.update(
        models={
            "fraud-v3": {
                "owners": ["alice"],
                "service_owner": "svc-fraud",
                "business": {"revenue_per_hour": 20000, "users": 50000},
            },
            "churn": {"owners": ["bob"], "business": {"revenue_per_hour": 100}},
        },
        routing={"oncall": ["carol", "dave"]},
        **extra,
    )
    return parse_policy(data)


POLICY = policy()


def alert(
    model: str = "fraud-v3",
    alertname: str = "ModelF1Low",
    *,
    id: int = 1,
    status: str = "firing",
    suppressed_reason: str | None = None,
    **labels_and_annotations: str,
) -> Alert:
    """An alert row; `value` and `baseline` go in the annotations."""
    annotations = {
        k: labels_and_annotations.pop(k)
        for k in ("value", "baseline")
        if k in labels_and_annotations
    }
    labels = {"model": model, "alertname": alertname, **labels_and_annotations}
    return Alert(
        id=id,
        fingerprint=f"fp-{id}",
        starts_at=T0,
        status=status,
        model=model,
        alertname=alertname,
        labels=labels,
        annotations=annotations,
        incident_id=1,
        suppressed_reason=suppressed_reason,
    )


def incident(*alerts: Alert, **row: Any) -> IncidentView:
    """An incident as `store.read_incident` returns it: the row and its alerts."""
    model = alerts[0].model if alerts else row.pop("model", "fraud-v3")
    fields: dict[str, Any] = {
        "id": 1,
        "model": model,
        "title": f"{model} incident",
        "group_key": f"{model}|performance_degradation",
        "opened_at": T0,
        **row,
    }
    return IncidentView.of(Incident(**fields), alerts)


def f1_drop(model: str = "fraud-v3", value: str = "0.64", **kw: str) -> Alert:
    return alert(model, "ModelF1Low", metric="f1_score", value=value, **kw)


def decided(incident: IncidentView, **flags: Any) -> Any:
    options = {"dry_run": False, "start_runbook": True, "retriage": False, **flags}
    return decide(incident, POLICY, NOW, **options)


def test_p1_f1_drop_rolls_back_at_once_and_starts_containment() -> None:
    d = decided(incident(f1_drop()))
    assert (d.severity, d.type, d.strategy, d.assignee) == (
        "P1",
        "performance_degradation",
        "immediate_rollback",
        "svc-fraud",
    )
    assert d.start == {"runbook": "containment", "decision": "immediate_rollback", "dry_run": False}
    assert d.reasons[0] == "P1 because f1_score=0.64 < 0.7"
    assert d.reasons[1] == (
        "model_performance/accuracy_degradation (performance_degradation) from metric f1_score"
    )
    assert d.reasons[2].startswith("criticality ")
    assert d.reasons[3] == (
        "strategy immediate_rollback: P1 accuracy_degradation: roll back first, investigate "
        "after; runbook containment starts next"
    )
    assert d.reasons[4].startswith("assigned to svc-fraud (service owner); backups alice")


def test_fields_are_the_columns_the_decision_sets() -> None:
    d = decided(incident(f1_drop()))
    assert d.fields == {
        "severity": "P1",
        "type": "performance_degradation",
        "category": "model_performance",
        "strategy": "immediate_rollback",
        "assignee": "svc-fraud",
        "criticality": d.criticality,
        "route": d.route,
    }
    assert 0 < d.criticality <= 100
    assert d.route["deadlines"]["triage"] == (T0 + timedelta(minutes=5)).isoformat()


def test_p2_accuracy_drop_rolls_back_gradually() -> None:
    d = decided(incident(f1_drop("churn", value="0.72", baseline="0.90")))
    assert (d.severity, d.strategy, d.assignee) == ("P2", "gradual_rollback", "bob")
    assert d.start == {"runbook": "containment", "decision": "gradual_rollback", "dry_run": False}
    assert "shift traffic back step by step; runbook containment starts next" in d.reasons[3]


def test_suppressed_incident_starts_no_runbook_and_says_why() -> None:
    muted = incident(f1_drop(), suppressed_reason="silence s-1 by alice: deploy")
    d = decided(muted)
    assert d.strategy == "immediate_rollback" and d.start is None
    assert d.reasons[3].endswith("; suppressed (silence s-1 by alice: deploy): no runbook started")


def test_retriage_of_a_contained_incident_starts_no_second_containment() -> None:
    contained = incident(f1_drop(), status="investigating", strategy="immediate_rollback")
    d = decided(contained, retriage=True)
    assert d.strategy == "immediate_rollback" and d.start is None
    assert (
        "runbook containment not started again: the first triage started it "
        "(immediate_rollback); start the containment deployment by hand to rerun it"
    ) in d.reasons[3]


def test_retriage_that_escalates_into_containment_starts_it() -> None:
    investigated = incident(f1_drop(), status="triaged", strategy="investigation_first")
    d = decided(investigated, retriage=True)
    assert d.start is not None and d.start["decision"] == "immediate_rollback"


def test_start_runbook_off_decides_and_starts_nothing() -> None:
    d = decided(incident(f1_drop()), start_runbook=False)
    assert d.strategy == "immediate_rollback" and d.start is None
    assert d.reasons[3].endswith("; runbook containment not started (start_runbook is off)")


def test_dry_run_marks_the_decision_and_not_the_strategy() -> None:
    d = decided(incident(f1_drop()), dry_run=True)
    assert d.start == {
        "runbook": "containment",
        "decision": "immediate_rollback:dry-run",
        "dry_run": True,
    }
    assert d.strategy == d.fields["strategy"] == "immediate_rollback"


def test_strategy_without_a_runbook_is_left_to_the_assignee() -> None:
    d = decided(incident(alert("churn", "FeatureDrift", metric="psi", value="0.35")))
    assert (d.severity, d.strategy, d.start) == ("P2", "standard_investigation", None)
    assert d.reasons[3].endswith(
        "; no automated runbook for this strategy yet: the assignee runs it by hand"
    )


def test_manual_report_keeps_the_humans_severity_and_type() -> None:
    report = incident(
        f1_drop(value="0.95"),  # the alert alone would be P3
        source="manual",
        severity="P1",
        type="security",
    )
    d = decided(report)
    assert (d.severity, d.type) == ("P1", "security")
    assert d.reasons[0] == "P1 as reported by a human"


def test_worst_firing_unmuted_alert_decides() -> None:
    d = decided(
        incident(
            f1_drop(id=1, value="0.95"),
            f1_drop(id=2, value="0.50", status="resolved"),
            f1_drop(id=3, value="0.40", suppressed_reason="inhibited by ModelServerDown"),
            f1_drop(id=4, value="0.72", baseline="0.90"),
        )
    )
    assert d.severity == "P2"
    assert d.last_alert_read == 4


def test_what_could_not_be_told_is_a_gap_line() -> None:
    d = decided(incident(alert("churn", "Weird")))
    assert d.severity == "P3"
    assert any(r.startswith("gap: no 'metric' label") for r in d.reasons)


def test_same_incident_policy_and_clock_give_the_same_decision() -> None:
    it = incident(f1_drop("churn", value="0.72", baseline="0.90"))
    assert decided(it) == decided(it)


def test_the_clock_picks_this_weeks_on_call_for_an_unowned_model() -> None:
    unowned = incident(f1_drop("pricing"))
    flags = {"dry_run": False, "start_runbook": True, "retriage": False}
    this_week = decide(unowned, POLICY, NOW, **flags)
    next_week = decide(unowned, POLICY, NOW + timedelta(weeks=1), **flags)
    assert {this_week.assignee, next_week.assignee} == {"carol", "dave"}
    assert this_week.reasons[4].startswith(f"assigned to {this_week.assignee} (on call this week)")


def test_the_decision_imports_no_prefect_flows_tasks_or_deployments() -> None:
    code = (
        "import sys, runbooks.triage; "
        "print(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'prefect', 'flows', 'tasks', 'deployments'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
