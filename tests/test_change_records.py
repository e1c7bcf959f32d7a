"""Who changed what outside any one incident: a silence added and expired, the kill switch
paused and resumed, each kept as a change record with who, and listed by the intake."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from deployments.intake import create_app
from runbooks.policy import load_policy
from runbooks.store import migrate


def test_silences_and_the_kill_switch_leave_a_record_with_who(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'incidents.db'}"
    migrate(url)
    with TestClient(create_app(url, load_policy())) as api:
        r = api.post(
            "/api/v1/silences",
            json={
                "matchers": ['model="fraud-v3"'],
                "duration": "2h",
                "createdBy": "alice",
                "comment": "retraining",
            },
        )
        assert r.status_code == 201, r.text
        silence = r.json()["id"]
        assert api.delete(f"/api/v1/silences/{silence}", params={"by": "bob"}).status_code == 200
        assert (
            api.post(
                "/api/v1/automation/pause", json={"by": "carol", "comment": "freeze"}
            ).status_code
            == 200
        )
        # Nothing is active: the resume would be on no incident's timeline.
        assert api.post("/api/v1/automation/resume", json={"by": "dave"}).status_code == 200
        items = api.get("/api/v1/changes").json()["items"]
        bad = api.get("/api/v1/changes", params={"limit": 0})
    assert [(c["by"], c["action"], c["subject"]) for c in reversed(items)] == [
        ("alice", "silence.add", silence),
        ("bob", "silence.expire", silence),
        ("carol", "automation.pause", "*"),
        ("dave", "automation.resume", "*"),
    ]
    assert items[1]["detail"] == {"comment": "freeze"}
    assert bad.status_code == 422 and bad.json()["error"].startswith("limit:")
