"""The escalation clock: the chain while nobody acknowledged, missed deadlines, updates; the
sweep's one query and its once-per-notice claim on SQLite and PostgreSQL; the served
sweep flow against a real Prefect server, telling a webhook receiver on a real port."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlmodel import col, select

from runbooks import escalation
from runbooks.escalation import Notice, due
from runbooks.incidents import IncidentStateError, transition
from runbooks.models import Incident, IncidentNotice, TimelineEvent, utcnow
from runbooks.policy import Policy
from runbooks.routing import route
from runbooks.settings import get_settings
from runbooks.store import session_scope
from runbooks.taxonomy import Classification
from tests.fake_pagerduty import Recorder

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "runbooks" / "default_policy.yaml"
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def scaled_policy(**routing: Any) -> Policy:
    """The default chain and SLAs with the minutes scaled down 1,500 times (30 min of the
    runbook's team lead -> 0.02 min, 1.2 s) so that a test waits seconds, not hours."""
    data = yaml.safe_load(DEFAULT_POLICY.read_text())
    data["routing"] = {
        "oncall": ["olga"],
        "team_leads": {"risk": "rita"},
        "escalation": routing.pop(
            "escalation",
            [
                {"after_minutes": 0, "who": "oncall"},
                {"after_minutes": 0.02, "who": "team_lead"},
                {"after_minutes": 0.04, "who": "engineering_manager"},
                {"after_minutes": 0.08, "who": "vp_engineering"},
            ],
        ),
        "deadlines": routing.pop(
            "deadlines",
            {
                "P1": {"triage": 0.05, "investigation": 0.1, "resolution": 0.2},
                "P2": {"triage": 0.15, "investigation": 0.3, "resolution": 4.8},
                "P3": {"triage": 0.6, "investigation": 2.4, "resolution": 14.4},
            },
        ),
        **routing,
    }
    data["models"] = {"fraud-v3": {"team": "risk"}}
    data["notifications"] = {"update_minutes": 0.5}
    return Policy.model_validate(data)


POLICY = scaled_policy()


def incident(
    policy: Policy = POLICY,
    severity: str = "P1",
    type_: str = "model_degradation",
    opened_at: datetime = T0,
    routed: bool = True,
    **columns: Any,
) -> Incident:
    c = Classification("model_performance", "f1_drop", type_, "f1_score", None, "test")
    key = f"fraud-v3:{uuid.uuid4().hex[:8]}"
    r = route(severity, c, policy.for_model("fraud-v3"), policy, opened_at, opened_at)
    return Incident(
        model="fraud-v3",
        title="F1 below threshold",
        severity=severity,
        type=type_,
        status=columns.pop("status", "triaged"),
        group_key=key,
        open_group_key=columns.pop("open_group_key", key),
        opened_at=opened_at,
        route=r.to_dict() if routed else None,
        assignee=r.assignee,
        **columns,
    )


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def keys(notices: list[Notice]) -> list[str]:
    return [n.key for n in notices]


# -- due(): the chain -------------------------------------------------------------------


def test_unacknowledged_p1_reaches_the_team_lead_after_the_policy_minutes() -> None:
    i = incident(id=1)
    assert keys(due(i, at(0), (), POLICY)) == ["escalation:0"]
    before = due(i, at(0.019), {"escalation:0"}, POLICY)
    assert before == []
    [lead] = due(i, at(0.02), {"escalation:0"}, POLICY)
    assert (lead.key, lead.kind, lead.people) == ("escalation:1", "escalation", ("rita",))
    assert lead.line == "escalated to rita (team lead) after 0.02 min unacknowledged"
    assert lead.data["level"] == "team lead"


def test_an_acknowledged_incident_is_not_escalated() -> None:
    i = incident(id=1, acknowledged_at=at(0.01), acknowledged_by="olga")
    assert [n for n in due(i, at(0.03), {"escalation:0"}, POLICY) if n.kind == "escalation"] == []


def test_levels_overdue_together_are_each_told_once() -> None:
    """A sweep that was down for the whole chain tells every level that is overdue."""
    i = incident(id=1)
    notices = [n for n in due(i, at(0.09), (), POLICY) if n.kind == "escalation"]
    assert [n.people for n in notices] == [
        ("olga",),
        ("rita",),
        ("engineering_manager",),
        ("vp_engineering",),
    ]
    sent = {n.key for n in notices}
    assert [n for n in due(i, at(0.09), sent, POLICY) if n.kind == "escalation"] == []


def test_security_incidents_reach_the_security_team_at_once() -> None:
    i = incident(type_="security", id=1)
    first = [n for n in due(i, at(0), (), POLICY) if n.kind == "escalation"]
    assert [n.people for n in first] == [("olga",), ("security-team",)]
    assert first[1].line == "escalated to security-team (security team) at once, unacknowledged"


def test_an_incident_triage_never_routed_still_escalates_by_the_policy() -> None:
    i = incident(routed=False, severity=None, status="open", id=1)
    # The chain from the policy for its model; the deadlines of the default severity (P3).
    assert [n.people for n in due(i, at(0.02), {"escalation:0"}, POLICY)][:1] == [("rita",)]
    assert "deadline:triage" not in keys(due(i, at(0.59), (), POLICY))
    assert "deadline:triage" in keys(due(i, at(0.6), (), POLICY))


# -- due(): deadlines and updates -------------------------------------------------------


def test_triage_deadline_is_missed_when_the_incident_is_still_open() -> None:
    still_open = incident(status="open", id=1, acknowledged_at=at(0.01))
    [missed] = [n for n in due(still_open, at(0.05), (), POLICY) if n.kind == "deadline_missed"]
    assert missed.key == "deadline:triage"
    assert missed.line == "missed the triage deadline (0.05 min): still open"
    triaged = incident(status="triaged", id=2)
    assert "deadline:triage" not in keys(due(triaged, at(0.05), (), POLICY))


def test_investigation_deadline_is_met_only_by_a_mitigation_in_time() -> None:
    in_time = incident(status="mitigated", mitigated_at=at(0.09), id=1)
    late = incident(status="mitigated", mitigated_at=at(0.11), id=2)
    investigating = incident(status="investigating", id=3)
    assert "deadline:investigation" not in keys(due(in_time, at(0.12), (), POLICY))
    for i in (late, investigating):
        [line] = [n.line for n in due(i, at(0.12), (), POLICY) if n.key.endswith("investigation")]
        assert line.startswith("missed the investigation deadline (0.1 min): not mitigated by")


def test_resolution_deadline_is_missed_while_the_incident_is_active() -> None:
    i = incident(status="mitigated", mitigated_at=at(0.05), id=1, acknowledged_at=at(0.01))
    assert "deadline:resolution" not in keys(due(i, at(0.19), (), POLICY))
    [n] = [n for n in due(i, at(0.2), (), POLICY) if n.key == "deadline:resolution"]
    assert n.data["minutes"] == pytest.approx(0.2)
    resolved = incident(status="resolved", id=2)
    assert due(resolved, at(10), (), POLICY) == []


def test_updates_come_every_n_minutes_the_latest_only() -> None:
    i = incident(id=1, acknowledged_at=at(0.01), status="investigating", mitigated_at=None)
    sent = {"deadline:triage", "deadline:investigation", "deadline:resolution"}
    assert due(i, at(0.49), sent, POLICY) == []
    assert keys(due(i, at(0.5), sent, POLICY)) == ["update:1"]
    # Down for two periods: one update, the current one.
    assert keys(due(i, at(1.6), sent | {"update:1"}, POLICY)) == ["update:3"]
    quiet = scaled_policy()
    quiet.notifications.update_minutes = 0
    assert due(i, at(5), sent, quiet) == []


# -- the store: one query, one claim per notice -------------------------------------------


@pytest.fixture
def store_url(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("RUNBOOKS_DATABASE_URL", db_url)
    get_settings.cache_clear()
    yield db_url
    monkeypatch.undo()
    get_settings.cache_clear()


def add(url: str, *incidents: Incident) -> list[int]:
    with session_scope(url) as s:
        for i in incidents:
            s.add(i)
        s.flush()
        return [i.id for i in incidents]  # type: ignore[misc]


def test_the_query_loads_active_incidents_with_the_keys_they_were_sent(db_url: str) -> None:
    a, b, c = add(
        db_url,
        incident(),
        incident(acknowledged_at=at(0.01), acknowledged_by="olga"),
        incident(status="resolved", open_group_key=None),
    )
    with session_scope(db_url) as s:
        s.add(IncidentNotice(incident_id=a, key="escalation:0"))
        s.add(IncidentNotice(incident_id=a, key="deadline:triage"))
    with session_scope(db_url) as s:
        rows = {w.id: (w, sent) for w, sent in escalation.watched(s)}
    assert set(rows) == {a, b}
    assert rows[a][1] == {"escalation:0", "deadline:triage"} and rows[b][1] == set()
    # The chain is loaded only where it can still be used: nobody acknowledged.
    assert rows[a][0].route["escalation"][1]["who"] == "rita"
    assert "escalation" not in rows[b][0].route and rows[b][0].route["deadlines"]
    assert rows[a][0].opened_at == T0
    with session_scope(db_url) as s:
        assert [(n.incident_id, n.key) for n in escalation.due_now(s, at(0.02), POLICY)] == [
            (a, "escalation:1")
        ]


def test_two_sweeps_claiming_one_notice_send_it_once(db_url: str) -> None:
    [i] = add(db_url, incident())
    notice = Notice(i, "escalation:1", "escalation", "escalated to rita", ("rita",))
    results: list[bool] = []
    start = threading.Barrier(4)

    def sweep() -> None:
        start.wait()
        with session_scope(db_url) as s:
            results.append(escalation.claim(s, notice, utcnow()))

    threads = [threading.Thread(target=sweep) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False, False, False, True]
    with session_scope(db_url) as s:
        rows = s.exec(select(IncidentNotice).where(IncidentNotice.incident_id == i)).all()
        lines = s.exec(select(TimelineEvent).where(TimelineEvent.kind == "escalation")).all()
    assert [r.key for r in rows] == ["escalation:1"]
    assert [t.message for t in lines] == ["escalated to rita"]


def test_an_acknowledgement_after_the_check_stops_the_escalation(db_url: str) -> None:
    [i] = add(db_url, incident())
    with session_scope(db_url) as s:
        [level0] = [n for n in escalation.due_now(s, at(0.01), POLICY) if n.incident_id == i]
    with session_scope(db_url) as s:
        escalation.acknowledge_incident(s, i, "olga", "test")
    with session_scope(db_url) as s:
        assert escalation.claim(s, level0, utcnow()) is False
        # A deadline still counts for an acknowledged incident.
        deadline = Notice(i, "deadline:triage", "deadline_missed", "missed the triage deadline")
        assert escalation.claim(s, deadline, utcnow()) is True


def test_acknowledge_incident_first_counts_then_says_who_and_when(db_url: str) -> None:
    [i] = add(db_url, incident())
    with session_scope(db_url) as s:
        first = escalation.acknowledge_incident(s, i, "olga", "cli")
    with session_scope(db_url) as s:
        second = escalation.acknowledge_incident(s, i, "rita", "api")
    assert first.first and not second.first
    assert (second.by, second.at) == ("olga", first.at)
    assert second.line.startswith(f"incident {i} was already acknowledged by olga at ")
    with (
        pytest.raises(escalation.NoSuchIncident, match="no incident 999999"),
        session_scope(db_url) as s,
    ):
        escalation.acknowledge_incident(s, 999999, "olga", "cli")
    with session_scope(db_url) as s:
        transition(s, s.get(Incident, i), "resolved", "test", "recovered")
    with (
        pytest.raises(IncidentStateError, match="is resolved .acknowledged by olga."),
        session_scope(db_url) as s,
    ):
        escalation.acknowledge_incident(s, i, "rita", "cli")


# -- the clock: the check reads only the incidents whose time came ------------------------


def owed_until(i: Incident, t: datetime, policy: Policy = POLICY) -> set[str]:
    """Every key due() hands out up to `t`, as sweeps every 0.001 min would have sent."""
    sent: set[str] = set()
    step = timedelta(minutes=0.001)
    moment = i.opened_at
    while moment <= t:
        sent |= {n.key for n in due(i, moment, sent, policy)}
        moment += step
    return sent


@pytest.mark.parametrize("acked", [False, True])
def test_next_due_is_never_later_than_the_next_notice(acked: bool) -> None:
    i = incident(id=1, acknowledged_at=at(0.01) if acked else None)
    for t in [at(m) for m in (0.0, 0.005, 0.019, 0.03, 0.06, 0.12, 0.31, 0.7)]:
        sent = owed_until(i, t)
        nxt = escalation.next_due(i, t, sent, POLICY)
        assert nxt is not None and nxt > t
        # Nothing comes due before it: the sweep may sleep until then.
        quiet = [t + (nxt - t) * k / 10 for k in range(1, 10)]
        assert all(due(i, q, sent, POLICY) == [] for q in quiet), t
    # The next thing: the team lead while unacknowledged, else the triage deadline (a
    # deadline the state may have met: then nothing is owed then, and the clock moves on).
    sent = owed_until(i, at(0.005))
    assert escalation.next_due(i, at(0.005), sent, POLICY) == at(0.05 if acked else 0.02)
    assert escalation.next_due(incident(id=2, status="resolved"), at(0.1), set(), POLICY) is None


def test_a_reopened_incident_is_owed_the_chain_again_from_its_reopening() -> None:
    first_life = {"escalation:0", "escalation:1", "escalation:2", "escalation:3"}
    i = incident(id=1, routed=False, reopened_at=at(10), reopened_count=1)
    assert keys(due(i, at(10), first_life, POLICY)) == ["escalation:0@1"]
    assert keys(due(i, at(10.019), first_life | {"escalation:0@1"}, POLICY)) == []
    assert "escalation:1@1" in keys(due(i, at(10.02), first_life | {"escalation:0@1"}, POLICY))
    assert escalation.next_due(i, at(10.001), {"escalation:0@1"}, POLICY) == at(10.02)


def clock(url: str, incident_id: int) -> tuple[datetime | None, str | None]:
    with session_scope(url) as s:
        row = s.get(Incident, incident_id)
        return row.next_due_at, row.clock_policy


def test_the_check_reads_an_incident_when_its_time_comes_or_it_changes(db_url: str) -> None:
    a, b = add(db_url, incident(next_due_at=T0), incident(next_due_at=T0))
    with session_scope(db_url) as s:
        read, owed = escalation.check(s, at(0.01), POLICY)
    assert read == 2 and {(n.incident_id, n.key) for n in owed} == {
        (a, "escalation:0"),
        (b, "escalation:0"),
    }
    assert clock(db_url, a) == (T0, None)  # owed something: the time stays until it is sent
    with session_scope(db_url) as s:
        for n in owed:
            escalation.claim(s, n, at(0.01))
    with session_scope(db_url) as s:
        assert escalation.check(s, at(0.011), POLICY) == (2, [])
    assert clock(db_url, a) == (at(0.02), escalation.clock_policy(POLICY))  # the team lead
    with session_scope(db_url) as s:
        assert escalation.check(s, at(0.015), POLICY) == (0, [])  # nobody's time came
        # Acknowledging changes what the clock reads: b is looked at again.
        escalation.acknowledge_incident(s, b, "olga", "test")
    assert clock(db_url, b)[1] is None
    with session_scope(db_url) as s:
        read, owed = escalation.check(s, at(0.021), POLICY)
    assert read == 2 and [(n.incident_id, n.key) for n in owed] == [(a, "escalation:1")]
    # Acknowledged, b's next time is its triage deadline, the chain no longer counts.
    assert clock(db_url, b)[0] == at(0.05)
    # Under another policy every active incident's times are worked out again.
    other = POLICY.model_copy(deep=True)
    other.notifications.update_minutes = 0.04
    with session_scope(db_url) as s:
        read, owed = escalation.check(s, at(0.022), other)
    assert read == 2
    assert clock(db_url, b) == (at(0.04), escalation.clock_policy(other))  # the first update


def test_a_change_while_the_check_runs_is_not_overwritten(db_url: str) -> None:
    [i] = add(db_url, incident(next_due_at=T0))
    with session_scope(db_url) as s:
        for n in escalation.check(s, at(0.01), POLICY)[1]:
            escalation.claim(s, n, at(0.01))
    real_watched = escalation.watched

    def read_then_triage(*args: Any) -> Any:
        rows = real_watched(*args)
        with session_scope(db_url) as other:  # triage routes it again meanwhile
            other.get(Incident, i).severity = "P2"
        return rows

    escalation.watched = read_then_triage  # type: ignore[assignment]
    try:
        with session_scope(db_url) as s:
            escalation.check(s, at(0.011), POLICY)
    finally:
        escalation.watched = real_watched  # type: ignore[assignment]
    assert clock(db_url, i)[1] is None  # still to be looked at by the next check


# -- the sweep flow, against the session's Prefect server -----------------------------


@pytest.fixture
def webhook(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Recorder, Policy]]:
    """The store on this backend, the scaled policy as the service's, and its channel a
    signed webhook to a receiver on a real port (what it got: who, which kind)."""
    from tasks import incident_store as store
    from tasks import notifications

    receiver = Recorder()
    # The team lead half a minute in, the next level and the later deadlines a minute or
    # more: a test moves an incident's opening back rather than waiting, so a slow sweep
    # (a flow run on a loaded machine) never sees two levels come due at once.
    policy = scaled_policy(
        escalation=[
            {"after_minutes": 0, "who": "oncall"},
            {"after_minutes": 0.5, "who": "team_lead"},
            {"after_minutes": 2, "who": "engineering_manager"},
        ],
        deadlines={"P1": {"triage": 0.05, "investigation": 1, "resolution": 2}},
    )
    policy.routing.channels = {"P1": ["webhook"], "P2": ["webhook"], "P3": []}
    policy.notifications.update_minutes = 5  # past what any test here moves the clock
    policy.notifications.webhook_url = f"{receiver.url}/hook"
    monkeypatch.setenv("RUNBOOKS_WEBHOOK_SECRET", "escalation-test-key")
    get_settings.cache_clear()
    notifications.forget_secrets()
    monkeypatch.setattr(store, "policy", lambda: policy)
    yield receiver, policy
    receiver.stop()
    notifications.forget_secrets()


def told(receiver: Recorder, incident_id: int) -> list[tuple[str, list[str]]]:
    return [
        (r.body["kind"], r.body["people"])
        for r in receiver.received
        if r.body["incident"]["id"] == incident_id
    ]


def test_sweep_escalates_an_unacknowledged_p1_to_the_team_lead_once(
    stack: dict, store_url: str, webhook: tuple[Recorder, Policy]
) -> None:
    from flows.escalation import EscalationRequest, escalation_sweep

    receiver, policy = webhook
    opened = utcnow()
    quiet, acked = add(
        store_url,
        incident(policy, opened_at=opened),
        incident(policy, opened_at=opened, acknowledged_at=opened, acknowledged_by="olga"),
    )
    first = escalation_sweep(EscalationRequest())
    assert [(n.incident_id, n.key) for n in first.sent()] == [(quiet, "escalation:0")]
    assert told(receiver, quiet) == [("escalation", ["olga"])]

    # The team lead's half minute passes: the incident opened 31 s earlier.
    with session_scope(store_url) as s:
        s.get(Incident, quiet).opened_at = opened - timedelta(seconds=31)
    second = escalation_sweep(EscalationRequest())
    assert [(n.incident_id, n.key) for n in second.sent()] == [(quiet, "escalation:1")]
    assert told(receiver, quiet)[1:] == [("escalation", ["rita"])]
    assert told(receiver, acked) == []
    again = escalation_sweep(EscalationRequest())
    assert again.sent() == []

    with session_scope(store_url) as s:
        notices = s.exec(
            select(IncidentNotice.key)
            .where(IncidentNotice.incident_id == quiet)
            .where(col(IncidentNotice.key).startswith("escalation"))
            .order_by(col(IncidentNotice.key))
        ).all()
        lines = s.exec(
            select(TimelineEvent.message)
            .where(TimelineEvent.incident_id == quiet, TimelineEvent.kind == "escalation")
            .order_by(col(TimelineEvent.id))
        ).all()
    assert notices == ["escalation:0", "escalation:1"]
    assert lines == [
        "escalated to olga (on call) at once, unacknowledged",
        "escalated to rita (team lead) after 0.5 min unacknowledged",
    ]


def test_sweep_puts_a_missed_deadline_on_the_timeline_of_an_acknowledged_incident(
    stack: dict, store_url: str, webhook: tuple[Recorder, Policy]
) -> None:
    from flows.escalation import EscalationRequest, escalation_sweep

    receiver, policy = webhook
    # Routed by the fixture's policy: the triage deadline (0.05 min) passed, the
    # investigation deadline (1 min) is most of a minute away however slowly the two sweeps
    # run (the module policy's 0.1 min was passed once on CI).
    [i] = add(
        store_url,
        incident(
            policy,
            status="open",
            opened_at=utcnow() - timedelta(minutes=0.06),
            acknowledged_at=utcnow(),
            acknowledged_by="olga",
        ),
    )
    dry = escalation_sweep(EscalationRequest(dry_run=True))
    assert [n.key for n in dry.notices if n.incident_id == i] == ["deadline:triage"]
    assert told(receiver, i) == []
    swept = escalation_sweep(EscalationRequest())
    assert [n.line for n in swept.sent() if n.incident_id == i] == [
        "missed the triage deadline (0.05 min): still open"
    ]
    assert told(receiver, i) == [("deadline_missed", [])]
    with session_scope(store_url) as s:
        [line] = s.exec(
            select(TimelineEvent.message).where(
                TimelineEvent.incident_id == i, TimelineEvent.kind == "deadline_missed"
            )
        ).all()
    assert line == "missed the triage deadline (0.05 min): still open"
