"""The immediate rollback on a model registry: containment moves an MLflow alias back to
the previous version, against a real MLflow tracking server and the session's Prefect.

Each test has its own registered model, versions 1 and 2 with `champion` on 2. The model's
quality follows the alias: a small exposition endpoint reads where `champion` points in
MLflow and serves the F1 the test gave that version.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from flows.containment import ContainmentRequest, action_kind, contain
from runbooks.policy import MlflowTarget, ModelPolicy, Recovery
from tasks import incident_store as store
from tests.test_containment import actions_of, open_incident, timeline_of
from tests.test_enrichment import (  # noqa: F401  mlflow_url is a fixture
    mlflow_post,
    mlflow_url,
    register_version,
)
from tests.test_runbook_outcomes import needs_human

pytestmark = pytest.mark.slow
ALIAS = "champion"


def champion(url: str, model: str) -> str:
    r = httpx.get(
        f"{url}/api/2.0/mlflow/registered-models/alias",
        params={"name": model, "alias": ALIAS},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()["model_version"]["version"]


class AliasQuality:
    """`model_f1_score{model=...}` for the version each model's champion alias names now."""

    def __init__(self, mlflow: str) -> None:
        self.quality: dict[str, dict[str, float]] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                lines = []
                for model, by_version in list(outer.quality.items()):
                    value = by_version.get(champion(mlflow, model))
                    if value is not None:
                        lines.append(f'model_f1_score{{model="{model}"}} {value}')
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def quality(mlflow_url: str) -> Iterator[AliasQuality]:  # noqa: F811
    q = AliasQuality(mlflow_url)
    yield q
    q.server.shutdown()
    q.server.server_close()


@pytest.fixture
def model(
    request: pytest.FixtureRequest,
    stack: dict,
    mlflow_url: str,  # noqa: F811
    quality: AliasQuality,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """A registered model of this test's own: versions 1 (F1 0.90) and 2 (F1 0.50), the
    champion alias on 2, in a copy of the policy this process's runbooks read."""
    name = "reg-" + request.node.name.removeprefix("test_").replace("_", "-")[:40]
    mlflow_post(mlflow_url, "registered-models/create", {"name": name})
    assert [register_version(mlflow_url, name, "bob") for _ in range(2)] == ["1", "2"]
    mlflow_post(
        mlflow_url, "registered-models/alias", {"name": name, "alias": ALIAS, "version": "2"}
    )
    quality.quality[name] = {"1": 0.90, "2": 0.50}
    policy = store.policy().model_copy(deep=True)
    policy.models[name] = ModelPolicy(
        owners=["olivia"],
        target=MlflowTarget(kind="mlflow", url=mlflow_url),
        recovery=Recovery(url=quality.url, interval_seconds=0.2, timeout_seconds=5, consecutive=2),
    )
    monkeypatch.setattr(store, "policy", lambda: policy)
    return name


def test_containment_moves_the_champion_alias_to_the_previous_version(
    model: str,
    mlflow_url: str,  # noqa: F811
) -> None:
    incident_id = open_incident(model)
    assert contain(ContainmentRequest(incident_id=incident_id)) == "resolved"
    assert champion(mlflow_url, model) == "1"
    assert [(a.kind, a.status) for a in actions_of(incident_id)] == [("registry_rollback", "done")]
    assert any(
        f"alias {ALIAS} of model {model}" in m and "now at version 1 (was 2)" in m
        for m in timeline_of(incident_id)
    )


def test_a_gradual_strategy_on_a_registry_takes_the_immediate_rollback() -> None:
    target = MlflowTarget(kind="mlflow", url="http://mlflow:5000")
    assert action_kind(target, "gradual_rollback") == "registry_rollback"
    assert action_kind(target, None) == "registry_rollback"


def test_a_previous_version_tagged_unstable_is_refused_and_the_alias_stays(
    model: str,
    mlflow_url: str,  # noqa: F811
) -> None:
    mlflow_post(
        mlflow_url,
        "model-versions/set-tag",
        {"name": model, "version": "1", "key": "stable", "value": "false"},
    )
    incident_id = open_incident(model)
    assert contain(ContainmentRequest(incident_id=incident_id)) == "no_rollback_target"
    assert champion(mlflow_url, model) == "2"
    assert actions_of(incident_id) == []
    said = needs_human(incident_id) or ""
    assert f"no version of {model} below 2" in said and "(version 1 tagged stable=false)" in said
    assert "delete the stable tag" in said and "nothing changed" in said


def test_dry_run_records_the_move_and_leaves_the_alias(
    model: str,
    mlflow_url: str,  # noqa: F811
) -> None:
    incident_id = open_incident(model)
    assert contain(ContainmentRequest(incident_id=incident_id, dry_run=True)) == "dry_run"
    assert champion(mlflow_url, model) == "2"
    assert [(a.kind, a.status) for a in actions_of(incident_id)] == [
        ("registry_rollback", "dry_run")
    ]
    assert any(
        "dry run: would registry_rollback" in m and "2 -> 1" in m for m in timeline_of(incident_id)
    )


def test_a_registry_rollback_that_makes_it_worse_moves_the_alias_back(
    model: str,
    mlflow_url: str,  # noqa: F811
    quality: AliasQuality,
) -> None:
    quality.quality[model] = {"1": 0.30, "2": 0.50}
    incident_id = open_incident(model)
    assert contain(ContainmentRequest(incident_id=incident_id)) == "undone"
    assert champion(mlflow_url, model) == "2"
    assert sorted((a.kind, a.status) for a in actions_of(incident_id)) == [
        ("registry_rollback", "done"),
        ("undo_registry_rollback", "done"),
    ]
    assert "got worse" in (needs_human(incident_id) or "")
