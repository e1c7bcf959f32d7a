"""The incident store on SQLite and PostgreSQL: migrations, dedup, grouping, lifecycle,
locks and cooldowns."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import select

from runbooks import incidents, remediation
from runbooks.alerts import parse_alertmanager
from runbooks.incidents import IncidentStateError
from runbooks.ingest import IngestResult
from runbooks.ingest import ingest as ingest_alerts
from runbooks.models import Action, Alert, Incident, OutboxEvent, TimelineEvent
from runbooks.policy import load_policy
from runbooks.store import get_engine, migrate, session_scope

FIXTURES = Path(__file__).parent / "fixtures" / "alertmanager"
POLICY = load_policy()


def payload(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def ingest(url: str, name: str) -> IngestResult:
    with session_scope(url) as s:
        return ingest_alerts(s, parse_alertmanager(payload(name)), POLICY)


def test_migration_from_empty_database_creates_every_table(db_url: str) -> None:
    tables = set(sa.inspect(get_engine(db_url)).get_table_names())
    assert {
        "incident",
        "alert",
        "timelineevent",
        "action",
        "approval",
        "remediationlock",
        "outboxevent",
        "alembic_version",
    } <= tables
    migrate(db_url)  # a second upgrade is a no-op, not an error


def test_grouped_post_opens_one_incident_and_one_event(db_url: str) -> None:
    result = ingest(db_url, "firing-f1-grouped.json")
    assert [i.outcome for i in result.items] == ["opened", "joined"]
    with session_scope(db_url) as s:
        assert len(s.exec(select(Incident)).all()) == 1
        events = s.exec(select(OutboxEvent)).all()
        assert [e.event for e in events] == ["ml.incident.opened", "ml.incident.updated"]
        assert events[0].resource["prefect.resource.id"] == "ml.model.fraud-v3"
        assert events[0].payload["incident_id"] == result.items[0].incident_id


def test_redelivered_alertmanager_post_changes_nothing(db_url: str) -> None:
    ingest(db_url, "firing-f1-grouped.json")
    with session_scope(db_url) as s:
        before = (len(s.exec(select(TimelineEvent)).all()), len(s.exec(select(OutboxEvent)).all()))
    again = ingest(db_url, "firing-f1-grouped.json")
    assert {i.outcome for i in again.items} == {"duplicate"}
    with session_scope(db_url) as s:
        after = (len(s.exec(select(TimelineEvent)).all()), len(s.exec(select(OutboxEvent)).all()))
        assert len(s.exec(select(Alert)).all()) == 2
    assert after == before


def test_resolved_post_resolves_incident_and_emits_no_opening_event(db_url: str) -> None:
    opened = ingest(db_url, "firing-f1-grouped.json")
    ingest(db_url, "resolved-f1-grouped.json")
    with session_scope(db_url) as s:
        incident = s.get(Incident, opened.items[0].incident_id)
        assert incident.status == "resolved"
        assert incident.open_group_key is None
        names = [e.event for e in s.exec(select(OutboxEvent))]
        assert names.count("ml.incident.opened") == 1
        assert "ml.alert.resolved" in names
        lines = [
            t.message
            for t in s.exec(select(TimelineEvent).where(TimelineEvent.incident_id == incident.id))
        ]
        assert any("every alert of the incident resolved" in m for m in lines)


def test_other_alertname_of_same_model_opens_its_own_incident(db_url: str) -> None:
    a = ingest(db_url, "firing-f1-grouped.json")
    b = ingest(db_url, "firing-feature-drift.json")
    assert a.incident_ids != b.incident_ids


def refire(url: str, policy=POLICY) -> IngestResult:  # type: ignore[no-untyped-def]
    again = payload("firing-f1-grouped.json")
    for a in again["alerts"]:
        a["startsAt"] = "2026-11-22T20:00:00Z"
    with session_scope(url) as s:
        return ingest_alerts(s, parse_alertmanager(again), policy)


def opened_events(url: str, incident_id: int) -> list[OutboxEvent]:
    with session_scope(url) as s:
        rows = s.exec(select(OutboxEvent).where(OutboxEvent.event == "ml.incident.opened")).all()
        return [e for e in rows if e.payload.get("incident_id") == incident_id]


def test_alert_firing_soon_after_its_incident_resolved_reopens_it(db_url: str) -> None:
    first = ingest(db_url, "firing-f1-grouped.json")
    [incident_id] = first.incident_ids
    with session_scope(db_url) as s:
        incidents.acknowledge(s, s.get(Incident, incident_id), "olga", "test")
    ingest(db_url, "resolved-f1-grouped.json")
    second = refire(db_url)
    assert [i.outcome for i in second.items][0] == "reopened"
    assert second.incident_ids == [incident_id]
    with session_scope(db_url) as s:
        i = s.get(Incident, incident_id)
        assert (i.status, i.reopened_count, i.open_group_key) == ("open", 1, i.group_key)
        assert i.acknowledged_at is None and i.resolved_at is None and i.triage_run is None
        lines = s.exec(
            select(TimelineEvent).where(
                TimelineEvent.incident_id == incident_id, TimelineEvent.kind == "reopened"
            )
        ).all()
    [line] = [x.message for x in lines]
    assert line.startswith("resolved -> open: reopened by intake: alert ")
    assert "within the reopen window of 60 min" in line
    # Triage decides again: a second ml.incident.opened, marked as a reopening.
    events = opened_events(db_url, incident_id)
    assert len(events) == 2 and events[1].payload["reopened"] is True


def test_alert_firing_after_the_reopen_window_opens_a_new_one(db_url: str) -> None:
    first = ingest(db_url, "firing-f1-grouped.json")
    ingest(db_url, "resolved-f1-grouped.json")
    with session_scope(db_url) as s:
        i = s.get(Incident, first.incident_ids[0])
        i.resolved_at = i.resolved_at - timedelta(minutes=61)
    second = refire(db_url)
    assert second.items[0].outcome == "opened"
    assert second.incident_ids != first.incident_ids


def test_with_no_reopen_window_a_new_incident_opens(db_url: str) -> None:
    never = POLICY.model_copy(deep=True)
    never.lifecycle.reopen_window_minutes = 0
    first = ingest(db_url, "firing-f1-grouped.json")
    ingest(db_url, "resolved-f1-grouped.json")
    second = refire(db_url, never)
    assert second.items[0].outcome == "opened"
    assert second.incident_ids != first.incident_ids


def test_close_and_reopen_by_a_person(db_url: str) -> None:
    [incident_id] = ingest(db_url, "firing-f1-grouped.json").incident_ids
    with session_scope(db_url) as s:
        i = s.get(Incident, incident_id)
        with pytest.raises(IncidentStateError, match="only a resolved incident can be closed"):
            incidents.close(s, i, "alice", "done")
        incidents.transition(s, i, "resolved", "test", "recovered")
        assert incidents.close(s, i, "alice", "post-mortem accepted")
        assert not incidents.close(s, i, "alice", "again")  # a retry changes nothing
        assert i.closed_at is not None
        assert incidents.reopen(s, i, "bob", "it is back")
        assert (i.status, i.closed_at, i.reopened_count) == ("open", None, 1)
        assert not incidents.reopen(s, i, "bob", "twice")
    # Another incident of the group is active: this one cannot come back beside it.
    with session_scope(db_url) as s:
        i = s.get(Incident, incident_id)
        incidents.transition(s, i, "resolved", "test", "recovered")
    [other] = refire(
        db_url,
        POLICY.model_copy(update={"lifecycle": type(POLICY.lifecycle)(reopen_window_minutes=0)}),
    ).incident_ids
    assert other != incident_id
    with (
        session_scope(db_url) as s,
        pytest.raises(IncidentStateError, match=f"incident {other} of its group"),
    ):
        incidents.reopen(s, s.get(Incident, incident_id), "bob", "back")


def test_incidents_resolved_longer_ago_than_the_policy_days_close_by_themselves(
    db_url: str,
) -> None:
    [old] = ingest(db_url, "firing-f1-grouped.json").incident_ids
    [recent] = ingest(db_url, "firing-feature-drift.json").incident_ids
    now = datetime.now(UTC)
    with session_scope(db_url) as s:
        for i, days in ((old, 8), (recent, 6)):
            incident = s.get(Incident, i)
            incidents.transition(s, incident, "resolved", "test", "recovered")
            incident.resolved_at = now - timedelta(days=days)
    with session_scope(db_url) as s:
        assert incidents.close_stale(s, now, 7) == [old]
    with session_scope(db_url) as s:
        assert incidents.close_stale(s, now, 7) == []  # nothing twice
        assert (s.get(Incident, old).status, s.get(Incident, recent).status) == (
            "closed",
            "resolved",
        )
        [line] = s.exec(
            select(TimelineEvent.message).where(
                TimelineEvent.incident_id == old, TimelineEvent.actor == "lifecycle"
            )
        ).all()
    assert line.startswith("resolved -> closed: resolved over 7 days ago")


def test_lifecycle_never_moves_backwards(db_url: str) -> None:
    opened = ingest(db_url, "firing-f1-grouped.json")
    with session_scope(db_url) as s:
        incident = s.get(Incident, opened.items[0].incident_id)
        assert incidents.transition(s, incident, "mitigated", "test", "skip ahead")
        assert not incidents.transition(s, incident, "mitigated", "test", "again")
        with pytest.raises(IncidentStateError, match="cannot go back to triaged"):
            incidents.transition(s, incident, "triaged", "test", "back")


def test_one_remediation_per_model_at_a_time(db_url: str) -> None:
    a = ingest(db_url, "firing-f1-grouped.json").items[0].incident_id
    b = ingest(db_url, "firing-feature-drift.json").items[0].incident_id
    with session_scope(db_url) as s:
        remediation.acquire_lock(s, "fraud-v3", a, "run 1")
    with session_scope(db_url) as s:
        remediation.acquire_lock(s, "fraud-v3", a, "run 1 retried")  # same incident: fine
    with (
        pytest.raises(IncidentStateError, match=f"being remediated by incident {a}"),
        session_scope(db_url) as s,
    ):
        remediation.acquire_lock(s, "fraud-v3", b, "run 2")
    with session_scope(db_url) as s:
        remediation.release_lock(s, "fraud-v3", a)
    with session_scope(db_url) as s:
        remediation.acquire_lock(s, "fraud-v3", b, "run 2")


def test_cooldown_counts_from_the_last_action_of_another_incident(db_url: str) -> None:
    a = ingest(db_url, "firing-f1-grouped.json").items[0].incident_id
    b = ingest(db_url, "firing-feature-drift.json").items[0].incident_id
    with session_scope(db_url) as s:
        s.add(
            Action(
                idempotency_key="k",
                incident_id=a,
                model="fraud-v3",
                kind="rollback",
                target="t",
                status="done",
                finished_at=datetime.now(UTC) - timedelta(seconds=100),
            )
        )
    with session_scope(db_url) as s:
        assert remediation.cooldown_left(s, "fraud-v3", "rollback", b, 600) == pytest.approx(
            500, abs=5
        )
        assert remediation.cooldown_left(s, "fraud-v3", "rollback", b, 60) == 0
        assert remediation.cooldown_left(s, "fraud-v3", "rollback", a, 600) == 0
        assert remediation.cooldown_left(s, "other", "rollback", b, 600) == 0


def test_timestamps_come_back_timezone_aware(db_url: str) -> None:
    ingest(db_url, "firing-f1-grouped.json")
    with session_scope(db_url) as s:
        alert = s.exec(select(Alert)).first()
        assert alert.starts_at == datetime(2026, 11, 22, 19, 42, 36, tzinfo=UTC)
        assert alert.received_at.tzinfo is not None


def test_a_generic_alert_without_starts_at_leaves_the_onset_unknown(db_url: str) -> None:
    """Its starts_at is the dedup placeholder (1970), not when the problem began: time to
    detect is then unknown, not 56 years."""
    from runbooks.alerts import parse_generic
    from runbooks.metrics import response_times

    now = datetime.now(UTC)
    without = parse_generic({"model": "m-onset", "alertname": "F1Low"}, now)
    began = parse_generic(
        {"model": "m-onset", "alertname": "Drift", "startsAt": "2026-12-04T10:00:00Z"}, now
    )
    with session_scope(db_url) as s:
        [a] = ingest_alerts(s, without, POLICY).incident_ids
        [b] = ingest_alerts(s, began, POLICY).incident_ids
        assert s.get(Incident, a).onset_at is None
        assert response_times(s.get(Incident, a))["time_to_detect"] is None
        assert s.get(Incident, b).onset_at == datetime(2026, 12, 4, 10, tzinfo=UTC)
