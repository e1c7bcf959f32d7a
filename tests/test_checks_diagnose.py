"""Diagnosis names the true cause first for a seeded incident of each kind; bad input exits 2."""

import json
from pathlib import Path

import pandas as pd
import pytest

from checks.diagnose import diagnose, main
from runbooks.policy import Sweep
from tests.checks_data import CAUSES, incident

RESOLUTIONS = {
    "bad_deployment": "rollback",
    "stale_features": "feature_store",
    "infrastructure": "scale",
    "concept_drift": "retrain",
    "feature_drift": "retrain",
}


@pytest.mark.parametrize("cause", CAUSES)
def test_diagnosis_ranks_the_true_cause_first(cause: str) -> None:
    result = diagnose(**incident(cause, seed=11))
    assert result.causes, result
    top = result.causes[0]
    assert top.cause == cause, result.to_json()
    assert top.evidence
    if cause in RESOLUTIONS:
        assert top.resolution == RESOLUTIONS[cause]


def test_missing_inputs_are_named_not_guessed() -> None:
    case = incident("infrastructure", seed=1)
    result = diagnose(metrics=case["metrics"], onset=case["onset"])
    assert result.causes[0].cause == "infrastructure"
    text = " ".join(result.not_checked)
    assert "reference and current" in text and "no predictions" in text


def test_service_metric_levels_come_from_the_policy_sweep_section() -> None:
    stale = incident("stale_features", seed=1)
    slow = incident("infrastructure", seed=1)

    def causes(case: dict, thresholds: Sweep | None) -> set[str]:
        found = diagnose(metrics=case["metrics"], onset=case["onset"], thresholds=thresholds)
        return {c.cause for c in found.causes}

    # Features two hours old: stale at the default hour, not for a team that allows three.
    assert "stale_features" in causes(stale, None)
    assert "stale_features" not in causes(stale, Sweep(freshness_seconds=3 * 3600))
    assert "infrastructure" in causes(slow, None)
    assert "infrastructure" not in causes(slow, Sweep(infrastructure={}))


def test_cli_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = incident("bad_deployment", seed=2)
    case["reference"].to_csv(tmp_path / "ref.csv", index=False)
    case["current"].to_csv(tmp_path / "cur.csv", index=False)
    case["predictions"].to_csv(tmp_path / "p.csv", index=False)
    (tmp_path / "c.json").write_text(json.dumps(case["changes"]))
    code = main(
        [
            "--reference",
            str(tmp_path / "ref.csv"),
            "--current",
            str(tmp_path / "cur.csv"),
            "--predictions",
            str(tmp_path / "p.csv"),
            "--changes",
            str(tmp_path / "c.json"),
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["causes"][0]["cause"] == "bad_deployment"
    assert set(out) == {"causes", "not_checked"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--reference", "nope.csv", "--current", "nope.csv"], "does not exist"),
        (["--reference", "x.txt", "--current", "x.txt"], "give a .csv or .parquet"),
        (["--predictions", "{p_bad}"], "lacks column(s) 'label'"),
        (["--onset", "yesterday-ish"], "not ISO 8601"),
        (["--changes", "{c_bad}"], "kind"),
    ],
)
def test_bad_input_exits_2_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    pd.DataFrame(
        {"timestamp": ["2026-11-22T10:00:00Z"], "model_version": ["v1"], "prediction": [1]}
    ).to_csv(tmp_path / "p_bad.csv", index=False)
    (tmp_path / "c_bad.json").write_text(
        json.dumps([{"time": "2026-11-22T10:00:00Z", "kind": "weather"}])
    )
    args = [a.format(p_bad=tmp_path / "p_bad.csv", c_bad=tmp_path / "c_bad.json") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def test_empty_and_all_null_inputs_do_not_crash() -> None:
    case = incident("concept_drift", seed=3)
    cur = case["current"].copy()
    cur["f0"] = float("nan")
    result = diagnose(reference=case["reference"], current=cur)
    assert result.causes[0].cause == "data_quality"
    preds = case["predictions"].assign(label=float("nan"))
    result = diagnose(predictions=preds)
    assert any("no labels" in n for n in result.not_checked)
