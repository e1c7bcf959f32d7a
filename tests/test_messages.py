"""The words of each message: what the seed runbooks put in a first alert, an approval,
an escalation and a resolution summary."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from runbooks import messages
from runbooks.models import Incident
from runbooks.policy import Business, ModelPolicy, Person, load_policy

OPENED = datetime(2025, 3, 4, 10, 0, tzinfo=UTC)


@pytest.fixture
def policy():  # type: ignore[no-untyped-def]
    p = load_policy()
    p.people = {"alice": Person(slack="U0ALICE", email="alice@example.com"), "bob": Person()}
    p.models["fraud-v3"] = ModelPolicy(
        business=Business(revenue_per_hour=12_000, users=40_000, tier="critical")
    )
    return p


def incident(**kw) -> Incident:  # type: ignore[no-untyped-def]
    base = dict(
        id=42,
        model="fraud-v3",
        title="F1 below threshold",
        description="f1_score 0.62 < 0.70 (baseline 0.89)",
        severity="P1",
        type="performance_degradation",
        status="triaged",
        assignee="alice",
        group_key="g",
        opened_at=OPENED,
    )
    return Incident(**{**base, **kw})


def fields(m: messages.Message) -> dict[str, str]:
    section = next(b for b in m.blocks if b["type"] == "section" and "fields" in b)
    return dict(f["text"].split("\n", 1) for f in section["fields"])


def buttons(m: messages.Message) -> dict[str, dict]:
    actions = [b for b in m.blocks if b["type"] == "actions"]
    return {e["action_id"]: e for a in actions for e in a["elements"]}


def test_the_first_alert_says_severity_model_issue_impact_status_assignee_and_links(
    policy,
) -> None:  # type: ignore[no-untyped-def]
    links = messages.Links(run="http://ui/runs/flow-run/abc", incident="http://intake/42")
    m = messages.render("opened", incident(), policy, links=links)
    f = fields(m)
    assert f["*Severity*"] == "P1 critical"
    assert f["*Model*"] == "fraud-v3"
    assert f["*Impact*"] == "$12,000/h revenue at risk, 40,000 users"
    assert f["*Status*"] == "triaged"
    assert f["*Assignee*"] == "<@U0ALICE>"  # a mention: Slack notifies the assignee
    assert "f1_score 0.62 < 0.70" in json.dumps(m.blocks)
    assert "<http://ui/runs/flow-run/abc|Runbook run>" in json.dumps(m.blocks)
    ack = buttons(m)["ack"]
    assert json.loads(ack["value"]) == {"incident": 42}
    # The plain twin (email) has the same facts without Slack's markup.
    assert "Assignee: alice" in m.plain and "Runbook run: http://ui/runs/flow-run/abc" in m.plain
    assert m.title == "P1 incident 42: fraud-v3: F1 below threshold"


def test_impact_names_the_policy_key_when_the_model_has_no_business_block(policy) -> None:  # type: ignore[no-untyped-def]
    m = messages.render("opened", incident(model="churn"), policy)
    assert fields(m)["*Impact*"] == "not in the policy (models.churn.business)"


def test_an_acknowledged_incident_has_no_acknowledge_button(policy) -> None:  # type: ignore[no-untyped-def]
    m = messages.render("opened", incident(acknowledged_at=OPENED, acknowledged_by="bob"), policy)
    assert "ack" not in buttons(m)


def test_the_approval_asks_with_approve_and_reject_buttons_naming_who_may(policy) -> None:  # type: ignore[no-untyped-def]
    m = messages.render(
        "approval",
        incident(),
        policy,
        data={
            "approval_id": 7,
            "action": "route_to_previous_version",
            "why": "v2 -> v1 on ml-prod/fraud-v3",
            "approvers": ["alice", "bob"],
            "expires_at": OPENED + timedelta(minutes=15),
        },
    )
    b = buttons(m)
    assert (b["approve"]["style"], b["reject"]["style"]) == ("primary", "danger")
    assert json.loads(b["approve"]["value"]) == {"incident": 42, "approval": 7}
    assert fields(m)["*May approve*"] == "<@U0ALICE>, *bob*"
    assert fields(m)["*Answer by*"] == "2025-03-04 10:15 UTC"
    assert "v2 -> v1" in json.dumps(m.blocks)
    assert "runbooks approve 42 --by NAME" in m.plain


def test_an_approval_without_its_id_is_refused(policy) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(messages.MessageError, match="approval_id"):
        messages.render("approval", incident(), policy)


def test_the_decision_says_who_decided_and_has_no_buttons(policy) -> None:  # type: ignore[no-untyped-def]
    m = messages.render(
        "decided",
        incident(),
        policy,
        data={"action": "rollback", "status": "approved", "by": "alice", "comment": "go"},
    )
    assert m.title == "rollback on incident 42 on fraud-v3: approved"
    assert fields(m)["*Decided by*"] == "<@U0ALICE>"
    assert buttons(m) == {}
    timed_out = messages.render(
        "decided", incident(), policy, data={"status": "timed_out", "by": "timeout"}
    )
    assert fields(timed_out)["*Decided by*"] == "the approval timer"


def test_an_escalation_mentions_the_people_it_reaches(policy) -> None:  # type: ignore[no-untyped-def]
    m = messages.render(
        "escalation",
        incident(),
        policy,
        people=["alice", "bob"],
        data={"level": "team_lead", "minutes": 30},
    )
    assert m.text.endswith("<@U0ALICE>, *bob*")
    assert fields(m)["*Unacknowledged for*"] == "30 min"
    assert "ack" in buttons(m)


def test_the_resolution_summary_has_duration_root_cause_and_action(policy) -> None:  # type: ignore[no-untyped-def]
    i = incident(status="resolved", resolved_at=OPENED + timedelta(minutes=47))
    m = messages.render(
        "resolved",
        i,
        policy,
        data={"root_cause": "bad release v2", "action": "route_to_previous_version on ml-prod"},
    )
    f = fields(m)
    assert (f["*Duration*"], f["*Root cause*"]) == ("47 min", "bad release v2")
    assert f["*Action taken*"] == "route_to_previous_version on ml-prod"
    assert m.title == "Resolved: incident 42 on fraud-v3 after 47 min"
    long = messages.render(
        "resolved", incident(resolved_at=OPENED + timedelta(hours=2, minutes=5)), policy
    )
    assert fields(long)["*Duration*"] == "2 h 05 min"


@pytest.mark.parametrize("kind", messages.KINDS)
def test_every_kind_renders_within_block_kit_limits(policy, kind: str) -> None:  # type: ignore[no-untyped-def]
    m = messages.render(
        kind, incident(title="x" * 400), policy, data={"approval_id": 1, "message": "y" * 5000}
    )
    assert m.kind == kind and m.text and m.plain
    header = m.blocks[0]["text"]["text"]
    assert m.blocks[0]["type"] == "header" and len(header) <= messages.HEADER_MAX
    for b in m.blocks:
        if b["type"] == "section" and "text" in b:
            assert len(b["text"]["text"]) <= messages.SECTION_MAX


def test_an_unknown_kind_names_the_kinds(policy) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(messages.MessageError, match="the kinds are opened, update"):
        messages.render("paged", incident(), policy)
