"""The incident as runbooks read it (runbooks/views.py): every column of the rows, the same
JSON the store's rows dump to, frozen, and safe for Prefect to persist and pickle."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import cloudpickle
import pytest
from pydantic import ValidationError
from sqlmodel import select

from runbooks.alerts import parse_alertmanager
from runbooks.ingest import ingest
from runbooks.models import Alert, Incident
from runbooks.policy import load_policy
from runbooks.store import session_scope
from runbooks.views import AlertView, IncidentView

FIXTURES = Path(__file__).parent / "fixtures" / "alertmanager"


def stored_incident(url: str) -> tuple[IncidentView, dict]:
    """The view of a stored incident, and the rows' own JSON dump."""
    payload = json.loads((FIXTURES / "firing-f1-grouped.json").read_text())
    with session_scope(url) as s:
        result = ingest(s, parse_alertmanager(payload), load_policy())
    with session_scope(url) as s:
        incident = s.get(Incident, result.items[0].incident_id)
        alerts = s.exec(select(Alert).where(Alert.incident_id == incident.id)).all()
        rows = {
            **incident.model_dump(mode="json"),
            "alerts": [a.model_dump(mode="json") for a in alerts],
        }
        return IncidentView.of(incident, alerts), rows


def test_views_carry_every_column_of_their_rows() -> None:
    assert set(IncidentView.model_fields) == {*Incident.model_fields, "alerts"}
    assert set(AlertView.model_fields) == set(Alert.model_fields)


def test_the_view_dumps_to_the_json_of_the_rows_it_was_read_from(db_url: str) -> None:
    view, rows = stored_incident(db_url)
    assert len(view.alerts) == 2 and view.opened_at.tzinfo is not None
    assert view.model_dump(mode="json") == rows
    assert IncidentView.model_validate_json(view.model_dump_json()) == view


def test_the_view_is_frozen(db_url: str) -> None:
    view, _ = stored_incident(db_url)
    with pytest.raises(ValidationError, match="frozen"):
        view.status = "resolved"  # type: ignore[misc]


def test_the_view_pickles_by_reference_for_prefect_results(db_url: str) -> None:
    view, _ = stored_incident(db_url)
    data = cloudpickle.dumps(view)
    # By value, cloudpickle would rebuild the class from a skeleton in the run's process.
    assert b"_make_skeleton_class" not in data and b"runbooks.views" in data
    assert pickle.loads(data) == view
