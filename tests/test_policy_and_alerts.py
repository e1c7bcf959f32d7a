"""Policy validation and alert parsing: bad input is named, good input is normalized."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployments.cli import main as cli
from runbooks.alerts import AlertPayloadError, parse_alertmanager, parse_generic
from runbooks.policy import PolicyError, load_policy, parse_policy
from runbooks.severity import assess

FIXTURES = Path(__file__).parent / "fixtures" / "alertmanager"


def test_default_policy_is_valid_and_holds_the_runbook_thresholds() -> None:
    policy = load_policy()
    rules = {(r.severity, r.metric, r.below, r.above, r.drop_above) for r in policy.severity}
    assert ("P1", "f1_score", 0.70, None, None) in rules
    assert ("P2", "psi", None, 0.3, None) in rules
    assert ("P1", "f1_score", None, None, 0.20) in rules


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"severity": [{"severity": "P1", "metric": "f1_score", "drop_above": 7}]},
            "severity.0.drop_above: Input should be less than 1, got 7",
        ),
        (
            {"severity": [{"severity": "P4", "metric": "f1_score", "below": 0.7}]},
            "severity.0.severity",
        ),
        (
            {"severity": [{"severity": "P1", "metric": "f1_score"}]},
            "give exactly one of below, above, drop_above",
        ),
        (
            {"severity": [{"severity": "P1", "metric": "up", "below": 1}], "modles": {}},
            "modles: is not a known key",
        ),
        (
            {
                "severity": [{"severity": "P1", "metric": "up", "below": 1}],
                "models": {"m": {"target": {"kind": "k8s"}}},
            },
            "models.m.target",
        ),
        ([1, 2], "top level must be a mapping"),
    ],
)
def test_bad_policy_names_the_key_and_the_fix(data: object, message: str) -> None:
    with pytest.raises(PolicyError, match=message.replace(".", r"\.")):
        parse_policy(data)


def test_check_config_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = Path(__file__).parent.parent / "runbooks" / "default_policy.yaml"
    assert cli(["check-config", str(good)]) == 0
    assert "SUCCESS" in capsys.readouterr().out
    bad = tmp_path / "p.yaml"
    bad.write_text("severity:\n  - {severity: P1, metric: f1_score, below: high}\n")
    assert cli(["check-config", str(bad)]) == 1
    assert "severity.0.below" in capsys.readouterr().err
    assert cli(["check-config", str(tmp_path / "missing.yaml")]) == 1


def test_alertmanager_fixture_parses_with_fingerprints_and_times() -> None:
    alerts = parse_alertmanager(json.loads((FIXTURES / "firing-f1-grouped.json").read_text()))
    assert [a.fingerprint for a in alerts] == ["5a5eee23f839294d", "833bff0130785dd1"]
    assert alerts[0].model == "fraud-v3" and alerts[0].ends_at is None
    resolved = parse_alertmanager(json.loads((FIXTURES / "resolved-f1-grouped.json").read_text()))
    assert resolved[0].status == "resolved" and resolved[0].ends_at is not None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.update(version="3"), "only Alertmanager webhook version 4"),
        (lambda b: b["alerts"][0]["labels"].pop("model"), "alerts.0.labels: no model label"),
        (lambda b: b["alerts"][0].update(startsAt="yesterday"), "alerts.0.startsAt"),
        (lambda b: b.update(alerts=[]), "alerts"),
        (lambda b: b["alerts"][1].update(status="burning"), "alerts.1.status"),
    ],
)
def test_malformed_alertmanager_post_names_the_field(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    body = json.loads((FIXTURES / "firing-f1-grouped.json").read_text())
    mutate(body)
    with pytest.raises(AlertPayloadError, match=message):
        parse_alertmanager(body)


def test_generic_alert_without_fingerprint_gets_a_stable_one() -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    a = parse_generic({"model": "m", "alertname": "A", "metric": "psi", "value": 0.4}, now)
    b = parse_generic([{"model": "m", "alertname": "A", "metric": "psi", "value": 0.5}], now)
    assert a[0].fingerprint == b[0].fingerprint  # the label set, not the value
    assert a[0].annotations["value"] == "0.4"
    with pytest.raises(AlertPayloadError, match=r"\[1\]\.value"):
        parse_generic(
            [{"model": "m", "alertname": "A"}, {"model": "m", "alertname": "A", "value": "high"}],
            now,
        )


@pytest.mark.parametrize(
    ("labels", "annotations", "severity"),
    [
        ({"metric": "f1_score"}, {"value": "0.64"}, "P1"),
        ({"metric": "f1_score"}, {"value": "0.70"}, "P3"),  # exactly 0.70 is not below it
        ({"metric": "f1_score"}, {"value": "0.72", "baseline": "0.82"}, "P2"),  # 12.2% drop
        (
            {"metric": "f1_score"},
            {"value": "0.656", "baseline": "0.82"},
            "P1",
        ),  # F1 < 0.70 whatever the drop
        ({"metric": "psi"}, {"value": "0.8"}, "P2"),
        ({"metric": "psi"}, {"value": "0.25"}, "P3"),
        ({"metric": "up"}, {"value": "0"}, "P1"),
        ({"severity": "critical"}, {}, "P1"),
    ],
)
def test_severity_follows_the_policy_table(labels: dict, annotations: dict, severity: str) -> None:
    assert assess(labels, annotations, load_policy()).severity == severity


def test_severity_explains_itself() -> None:
    a = assess({"metric": "f1_score"}, {"value": "0.64"}, load_policy())
    assert a.reasons == ["P1 because f1_score=0.64 < 0.7"]
    gaps = assess({}, {}, load_policy()).gaps
    assert any("no 'metric' label" in g for g in gaps)
