"""The intake's batch path: a post of many alerts is written in a few statements, and
concurrent posts into the same groups neither lose an alert, nor open a group twice, nor
page twice. On SQLite and PostgreSQL (db_url)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

from sqlmodel import col, select

from deployments.intake import store_alerts
from runbooks.alerts import parse_generic
from runbooks.bulk import insert_rows
from runbooks.ingest import IngestResult, ingest
from runbooks.models import Alert, Incident, OutboxEvent, TimelineEvent
from runbooks.policy import load_policy
from runbooks.store import session_scope

POLICY = load_policy(None)
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
METRICS = [("ModelF1Low", "f1_score", 0.55), ("FeatureDrift", "psi", 0.45)]


def alert(i: int, models: int = 5, **kw: object) -> dict:
    name, metric, value = METRICS[(i // models) % len(METRICS)]
    return {
        "alertname": name,
        "model": f"m{i % models}",
        "metric": metric,
        "value": value,
        "labels": {"instance": f"pod-{i}"},
        "startsAt": T0.isoformat(),
        **kw,
    }


def post(url: str, body: list[dict], now: datetime = T0) -> IngestResult:
    with session_scope(url) as s:
        return ingest(s, parse_generic(body, now), POLICY, now=now)


def opened_events(url: str) -> list[int]:
    with session_scope(url) as s:
        rows = s.exec(select(OutboxEvent).where(OutboxEvent.event == "ml.incident.opened"))
        return sorted(r.payload["incident_id"] for r in rows)


def test_a_post_of_many_groups_stores_every_alert_with_its_id_and_timeline(db_url: str) -> None:
    first = post(db_url, [alert(i) for i in range(20)])
    second = post(db_url, [alert(i) for i in range(20, 40)], T0 + timedelta(seconds=5))
    items = first.items + second.items
    assert [i.outcome for i in first.items] == ["opened"] * 10 + ["joined"] * 10
    assert {i.outcome for i in second.items} == {"joined"}
    with session_scope(db_url) as s:
        rows = {a.id: a for a in s.exec(select(Alert))}
        lines = s.exec(select(TimelineEvent).where(TimelineEvent.kind == "alert")).all()
        assert len(s.exec(select(Incident)).all()) == 10
    # Each answer names the row of its own alert, in the order of the post.
    assert len(rows) == 40 == len({i.alert_id for i in items})
    for n, item in enumerate(items):
        row = rows[item.alert_id]
        assert row.labels["instance"] == f"pod-{n}"
        assert row.incident_id == item.incident_id
        assert row.category and row.type and row.received_at is not None
    # One line per joined alert, on its incident, pointing at its row.
    assert sorted(ln.data["alert_id"] for ln in lines) == sorted(
        i.alert_id for i in items if i.outcome == "joined"
    )
    assert all(rows[ln.data["alert_id"]].incident_id == ln.incident_id for ln in lines)
    assert len(opened_events(db_url)) == 10


def test_the_same_alert_twice_in_one_post_is_stored_once(db_url: str) -> None:
    post(db_url, [alert(0)])
    result = post(db_url, [alert(10), alert(10)], T0 + timedelta(seconds=5))
    assert [i.outcome for i in result.items] == ["joined", "duplicate"]
    assert result.items[0].alert_id == result.items[1].alert_id != 0
    with session_scope(db_url) as s:
        assert len(s.exec(select(Alert)).all()) == 2


def test_firing_and_resolved_in_one_post_leave_the_alert_resolved(db_url: str) -> None:
    post(db_url, [alert(0)])
    both = post(db_url, [alert(10), alert(10, status="resolved")], T0 + timedelta(seconds=5))
    assert [i.outcome for i in both.items] == ["joined", "resolved"]
    (iid,) = {i.incident_id for i in both.items}
    with session_scope(db_url) as s:
        assert s.exec(select(Alert).where(Alert.id == both.items[0].alert_id)).one().status == (
            "resolved"
        )
        assert s.get(Incident, iid).status == "open"  # alert 0 still fires
    post(db_url, [alert(0, status="resolved")], T0 + timedelta(seconds=10))
    with session_scope(db_url) as s:
        assert s.get(Incident, iid).status == "resolved"


def test_inhibition_in_one_post_does_not_depend_on_the_order(db_url: str) -> None:
    down = {"alertname": "ModelServerDown", "model": "fraud-v3", "metric": "up", "value": 0}
    latency = {
        "alertname": "ModelLatencyHigh",
        "model": "fraud-v3",
        "metric": "latency_p99_seconds",
        "value": 3,
    }
    result = post(db_url, [latency, down])
    assert result.items[0].suppressed and "inhibited by firing ModelServerDown" in (
        result.items[0].suppressed
    )
    assert result.items[1].suppressed is None


def test_concurrent_posts_open_each_group_once_and_page_once(db_url: str) -> None:
    # 8 posts of the same 10 groups at the same moment, as Alertmanager's groups flush
    # together after a restart: every alert kept, 10 incidents, 10 pages.
    posts = [
        parse_generic(
            [alert(i, startsAt=(T0 + timedelta(seconds=k)).isoformat()) for i in range(20)], T0
        )  # fmt: skip
        for k in range(8)
    ]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda p: store_alerts(db_url, p, POLICY), posts))
    assert sum(len(r.items) for r in results) == 160
    with session_scope(db_url) as s:
        assert len(s.exec(select(Alert)).all()) == 160
        incidents_ = s.exec(select(Incident)).all()
        assert len(incidents_) == 10
        unlinked = s.exec(select(Alert).where(col(Alert.incident_id).is_(None))).all()
        assert unlinked == []
    assert opened_events(db_url) == sorted(i.id for i in incidents_)


def test_insert_rows_returns_each_rows_id_in_order(db_url: str) -> None:
    post(db_url, [alert(0)])
    with session_scope(db_url) as s:
        table = Alert.__table__  # type: ignore[attr-defined]
        rows = [
            {
                "fingerprint": f"fp{n}",
                "starts_at": T0,
                "status": "firing",
                "model": "m",
                "alertname": "A",
                "labels": {"n": str(n), "quote": 'it\'s "x"\t\\'},
                "annotations": {},
                "source": "test",
                "received_at": T0,
            }
            for n in range(5)
        ]
        ids = insert_rows(s, table, rows, ids=True)
    with session_scope(db_url) as s:
        for n, i in enumerate(ids):
            row = s.get(Alert, i)
            assert row is not None and row.fingerprint == f"fp{n}"
            assert row.labels == {"n": str(n), "quote": 'it\'s "x"\t\\'}
            assert row.starts_at == T0
