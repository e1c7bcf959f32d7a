"""The whole path on real parts: Alertmanager -> intake -> Prefect automation -> served
triage and containment -> Kubernetes API -> verified -> resolved."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from deployments.cli import main as cli
from tests.conftest import make_model
from tests.helpers import wait_for

pytestmark = pytest.mark.slow


def fire(alertmanager: str, labels: dict, annotations: dict, resolve: bool = False) -> None:
    now = datetime.now(UTC)
    alert = {
        "labels": labels,
        "annotations": annotations,
        "startsAt": (now - timedelta(seconds=30)).isoformat(),
    }
    if resolve:
        alert["endsAt"] = now.isoformat()
    httpx.post(f"{alertmanager}/api/v2/alerts", json=[alert], timeout=5).raise_for_status()


def incident_of(intake: str, model: str) -> dict | None:
    items = httpx.get(f"{intake}/api/v1/incidents", params={"model": model}).json()["items"]
    if not items:
        return None
    return httpx.get(f"{intake}/api/v1/incidents/{items[0]['id']}").json()


def test_firing_alert_rolls_service_back_and_resolved_alert_acts_no_more(
    stack: dict, alertmanager: str, kube
) -> None:  # type: ignore[no-untyped-def]
    core, apps = kube.clients()
    make_model(core, apps, "ml-prod", "fraud-v3", serving="v2")
    labels = {
        "alertname": "ModelF1Low",
        "model": "fraud-v3",
        "metric": "f1_score",
        "severity": "critical",
        "version": "v2",
    }
    fire(alertmanager, labels, {"value": "0.64", "baseline": "0.82"})

    view = wait_for(
        lambda: (v := incident_of(stack["intake"], "fraud-v3")) and v["status"] == "resolved" and v,
        timeout=150,
        what="incident resolved",
    )
    assert view["severity"] == "P1" and view["strategy"] == "immediate_rollback"
    assert core.read_namespaced_service("fraud-v3", "ml-prod").spec.selector["version"] == "v1"
    assert [(a["kind"], a["status"]) for a in view["actions"]] == [
        ("route_to_previous_version", "done")
    ]
    messages = [e["message"] for e in view["timeline"]]
    assert any("P1 because f1_score=0.64 < 0.7" in m for m in messages)
    assert any(m.startswith("recovered: model_f1_score=") for m in messages)

    fire(alertmanager, labels, {"value": "0.64", "baseline": "0.82"}, resolve=True)
    view = wait_for(
        lambda: (
            (v := incident_of(stack["intake"], "fraud-v3"))
            and all(a["status"] == "resolved" for a in v["alerts"])
            and v
        ),
        timeout=30,
        what="alert resolved",
    )
    assert len(view["actions"]) == 1
    assert core.read_namespaced_service("fraud-v3", "ml-prod").spec.selector["version"] == "v1"


def test_resolved_alert_never_triggers_rollback_even_after_approval(
    stack: dict, alertmanager: str, kube
) -> None:  # type: ignore[no-untyped-def]
    core, apps = kube.clients()
    make_model(core, apps, "ml-prod", "churn", serving="v2")
    labels = {
        "alertname": "ModelRecallDrop",
        "model": "churn",
        "metric": "recall",
        "severity": "warning",
        "version": "v2",
    }
    fire(alertmanager, labels, {"value": "0.60", "baseline": "0.75"})  # 20% drop -> P2

    waiting = wait_for(
        lambda: (
            (v := incident_of(stack["intake"], "churn"))
            and any("waiting for approval" in e["message"] for e in v["timeline"])
            and v
        ),
        timeout=150,
        what="containment waiting for approval",
    )
    assert waiting["severity"] == "P2"

    fire(alertmanager, labels, {"value": "0.60", "baseline": "0.75"}, resolve=True)
    wait_for(
        lambda: incident_of(stack["intake"], "churn")["status"] == "resolved",
        timeout=30,
        what="incident resolved by the resolved alert",
    )
    assert cli(["approve", str(waiting["id"]), "--by", "alice", "--comment", "go"]) == 0

    view = wait_for(
        lambda: (
            (v := incident_of(stack["intake"], "churn"))
            and any("nothing to contain" in e["message"] for e in v["timeline"])
            and v
        ),
        timeout=30,
        what="containment to skip after approval",
    )
    assert view["actions"] == []
    assert core.read_namespaced_service("churn", "ml-prod").spec.selector["version"] == "v2"
    assert any("approved by alice" in e["message"] for e in view["timeline"])


def test_a_worse_alert_escalates_the_incident_and_the_retriage_contains(stack: dict, kube) -> None:  # type: ignore[no-untyped-def]
    core, apps = kube.clients()
    make_model(core, apps, "ml-prod", "ranker", serving="v2")

    def send(value: float, instance: str) -> None:
        body = {
            "model": "ranker",
            "alertname": "ModelF1Low",
            "metric": "f1_score",
            "value": value,
            "labels": {"instance": instance, "version": "v2"},
        }
        httpx.post(f"{stack['intake']}/api/v1/alerts", json=body, timeout=10).raise_for_status()

    send(0.70, "a")  # exactly 0.70 and no baseline: P3, investigate before acting
    first = wait_for(
        lambda: (v := incident_of(stack["intake"], "ranker")) and v["severity"] and v,
        timeout=120,
        what="first triage",
    )
    assert (first["severity"], first["strategy"], first["actions"]) == (
        "P3",
        "investigation_first",
        [],
    )

    send(0.60, "b")  # below 0.70: P1 joins the P3 incident
    view = wait_for(
        lambda: (
            (v := incident_of(stack["intake"], "ranker"))
            and v["actions"]
            and v["actions"][0]["status"] == "done"
            and v
        ),
        timeout=150,
        what="containment started by the re-triage",
    )
    assert view["id"] == first["id"]
    assert (view["severity"], view["strategy"]) == ("P1", "immediate_rollback")
    assert core.read_namespaced_service("ranker", "ml-prod").spec.selector["version"] == "v1"
    messages = [e["message"] for e in view["timeline"]]
    assert any(m.startswith("severity P3 -> P1: P1 because f1_score=0.6 < 0.7") for m in messages)
    assert [a["kind"] for a in view["actions"]] == ["route_to_previous_version"]
