"""prefect.yaml parses, every entrypoint imports, every trigger validates: a renamed flow
cannot break a deployment unnoticed."""

from __future__ import annotations

from prefect import Flow

from deployments.serve import import_entrypoint, load_deployment_specs, runner_deployments


def test_every_entrypoint_in_prefect_yaml_imports_as_a_flow() -> None:
    specs = load_deployment_specs()
    assert {s["name"] for s in specs} >= {"triage", "containment"}
    for spec in specs:
        assert isinstance(import_entrypoint(spec["entrypoint"]), Flow), spec["entrypoint"]


def test_triggers_validate_and_default_missing_payload_fields() -> None:
    deployments = {d.name: d for d in runner_deployments()}
    opened, escalated = deployments["triage"].triggers
    assert opened.expect == {"ml.incident.opened"}
    assert escalated.expect == {"ml.incident.escalated"}
    for trigger in (opened, escalated):
        # One automation bucket per incident: with one shared bucket, Prefect fired fewer
        # times than events arrived when an alert storm opened many incidents together.
        assert trigger.for_each == {"related:incident:prefect.resource.id"}
        params = trigger.parameters["request"]
        # Without default(), an event missing the field makes Prefect drop the run
        # (InvalidJinja).
        assert all("| default(" in v for v in params.values() if isinstance(v, str))
    # An escalation decides again on an incident that was triaged already.
    assert "retriage" not in opened.parameters["request"]
    assert escalated.parameters["request"]["retriage"] is True


def test_flow_parameters_are_one_typed_model_for_the_ui_form() -> None:
    for d in runner_deployments():
        props = d._parameter_openapi_schema.properties
        assert list(props) == ["request"], d.name


def test_the_runbook_registry_in_prefect_yaml_matches_the_strategy_table() -> None:
    """Each strategy's runbook (runbooks/strategy.py) is the deployment whose trigger
    matches that strategy on ml.incident.triaged, and no other deployment's."""
    from runbooks.strategy import RUNBOOK

    started_by: dict[str, set[str]] = {}
    for d in runner_deployments():
        for trigger in d.triggers:
            if "ml.incident.triaged" not in trigger.expect:
                continue
            strategies = trigger.match.root.get("ml.strategy")
            assert strategies, f"{d.name}: a runbook trigger must match ml.strategy"
            for strategy in [strategies] if isinstance(strategies, str) else strategies:
                started_by.setdefault(strategy, set()).add(d.name)
            assert trigger.parameters["request"]["decision"].startswith("{{ event.payload")
    assert started_by == {s: {r} for s, r in RUNBOOK.items() if r}


def test_escalation_sweep_runs_every_minute_on_a_schedule() -> None:
    from datetime import timedelta

    (sweep,) = [d for d in runner_deployments() if d.name == "escalation-sweep"]
    (schedule,) = sweep.schedules
    assert schedule.schedule.interval == timedelta(seconds=60) and schedule.active
    assert sweep.triggers == []
    assert sweep.parameters == {"request": {"dry_run": False}}


def test_close_resolved_runs_every_hour_on_a_schedule() -> None:
    from datetime import timedelta

    (closer,) = [d for d in runner_deployments() if d.name == "close-resolved"]
    (schedule,) = closer.schedules
    assert schedule.schedule.interval == timedelta(hours=1) and schedule.active
    assert closer.parameters == {"request": {"limit": 500}}


def test_announce_starts_on_every_resolution_and_hand_off() -> None:
    from flows.announce import KIND_OF_EVENT

    (announce,) = [d for d in runner_deployments() if d.name == "announce"]
    (trigger,) = announce.triggers
    assert trigger.expect == set(KIND_OF_EVENT)
    assert trigger.for_each == {"related:incident:prefect.resource.id"}
    assert trigger.parameters["request"]["event"] == "{{ event.event }}"


def test_postmortem_starts_on_every_resolution() -> None:
    (postmortem,) = [d for d in runner_deployments() if d.name == "postmortem"]
    (trigger,) = postmortem.triggers
    assert trigger.expect == {"ml.incident.resolved"}
    assert trigger.for_each == {"related:incident:prefect.resource.id"}
    assert trigger.parameters["request"] == {
        "incident_id": "{{ event.payload.incident_id | default(0) }}"
    }


def test_the_audits_run_on_their_cron_schedules_in_utc() -> None:
    deployments = {d.name: d for d in runner_deployments()}
    expected = {
        "weekly-review": "0 8 * * 1",
        "fairness-audit": "0 6 1 * *",
        "model-audit": "0 7 1 1,4,7,10 *",
        "silence-inventory": "30 8 * * 1",
    }
    for name, cron in expected.items():
        (schedule,) = deployments[name].schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == (cron, "UTC"), name
        assert schedule.active and deployments[name].triggers == [], name
