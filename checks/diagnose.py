"""Diagnosis: the investigation checklist's "what most likely caused this?", from evidence.

Each piece of evidence (drift, data quality, per-version and per-group performance,
service metrics, recent changes) is gathered by the other checks; the causes are then
ranked by simple, explainable rules. Whatever input is missing is named in `not_checked`
rather than guessed at.

CLI: `runbooks diagnose --reference REF --current CUR [--predictions P] [--changes C.json]
[--metrics M.csv] [--onset ISO8601] --json`, or `python -m checks.diagnose ...`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from checks.drift import DriftThresholds, feature_drift, is_numeric
from checks.findings import CheckInputError
from checks.io import load_table, parse_timestamps
from checks.performance import PerformanceThresholds, performance_degradation
from runbooks.policy import Sweep

Cause = Literal[
    "bad_deployment",
    "feature_drift",
    "data_quality",
    "stale_features",
    "infrastructure",
    "concept_drift",
    "bias",
]
Resolution = Literal["rollback", "feature_store", "retrain", "threshold", "scale", "investigate"]
CHANGE_KINDS = ("deployment", "config", "pipeline", "infrastructure")
PREDICTION_COLUMNS = ("timestamp", "model_version", "prediction", "label")
METRIC_COLUMNS = ("timestamp", "metric", "value")

RESOLUTION: dict[str, Resolution] = {
    "bad_deployment": "rollback",
    "feature_drift": "retrain",
    "data_quality": "investigate",
    "stale_features": "feature_store",
    "infrastructure": "scale",
    "concept_drift": "retrain",
    "bias": "investigate",
}


class CauseScore(BaseModel):
    """One candidate cause with how sure we are and why."""

    cause: Cause
    confidence: float = Field(ge=0, le=1)
    evidence: list[str]
    resolution: Resolution


class Diagnosis(BaseModel):
    """Causes, most likely first, and what could not be checked."""

    causes: list[CauseScore]
    not_checked: list[str]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


class _Evidence:
    """Collects evidence lines and confidence per cause."""

    def __init__(self) -> None:
        self.score: dict[str, float] = {}
        self.lines: dict[str, list[str]] = {}
        self.not_checked: list[str] = []

    def add(self, cause: str, confidence: float, line: str) -> None:
        self.score[cause] = max(self.score.get(cause, 0.0), confidence)
        self.lines.setdefault(cause, []).append(line)

    def diagnosis(self) -> Diagnosis:
        causes = [
            CauseScore(
                cause=c,  # type: ignore[arg-type]
                confidence=round(min(s, 1.0), 2),
                evidence=self.lines[c],
                resolution=RESOLUTION[c],
            )
            for c, s in self.score.items()
            if s > 0
        ]
        causes.sort(key=lambda c: -c.confidence)
        return Diagnosis(causes=causes, not_checked=self.not_checked)


# --- evidence from reference and current -------------------------------------------------


def _data_evidence(ref: pd.DataFrame, cur: pd.DataFrame, ev: _Evidence) -> set[str]:
    """Schema, null spikes, corrupted values, frozen features and drift; returns drifted names."""
    features = [c for c in ref.columns if c != "timestamp"]
    missing = [c for c in features if c not in cur.columns]
    if missing:
        ev.add("data_quality", 0.9, f"schema change: {missing} missing from current")
    retyped = [c for c in features if c in cur.columns and is_numeric(ref[c]) != is_numeric(cur[c])]
    if retyped:
        ev.add(
            "data_quality",
            0.9,
            "schema change: " + ", ".join(f"{c} {ref[c].dtype} -> {cur[c].dtype}" for c in retyped),
        )
    usable = [c for c in features if c not in missing and c not in retyped]
    for c in usable:
        rn, cn = float(ref[c].isna().mean()), float(cur[c].isna().mean())
        if cn > 0.05 and cn - rn > 0.05:
            ev.add("data_quality", 0.85, f"null spike: {c} {rn:.1%} -> {cn:.1%} null")
        if is_numeric(ref[c]) and cur[c].notna().any() and ref[c].notna().any():
            r = ref[c].dropna().to_numpy(np.float64)
            v = cur[c].dropna().to_numpy(np.float64)
            lo, hi = r.min(), r.max()
            pad = 0.1 * (hi - lo)
            out = float(np.mean((v < lo - pad) | (v > hi + pad)))
            if out > 0.01:
                ev.add(
                    "data_quality",
                    0.8,
                    f"corrupted values: {out:.1%} of {c} outside "
                    f"the reference range [{lo:.3g}, {hi:.3g}]",
                )
            ref_top = float(pd.Series(r).value_counts(normalize=True).iloc[0])
            cur_top = float(pd.Series(v).value_counts(normalize=True).iloc[0])
            if cur_top > 0.5 and ref_top < 0.05:
                ev.add(
                    "stale_features",
                    0.7,
                    f"{c} frozen: {cur_top:.0%} of current rows "
                    "share one value (feature store serving defaults or a cached value)",
                )
    drift_cols = [c for c in usable if ref[c].notna().any() and cur[c].notna().any()]
    if not drift_cols:
        ev.not_checked.append("feature_drift: no feature with values on both sides")
        return set()
    report = feature_drift(ref, cur, features=drift_cols, thresholds=DriftThresholds())
    drifted = [f for f in report.features if f.drifted]
    dq_names = {
        line.split(":")[1].split()[0] for line in ev.lines.get("data_quality", []) if ":" in line
    }
    drifted = [f for f in drifted if f.feature not in dq_names]
    for f in sorted(drifted, key=lambda f: -f.psi):
        conf = 0.6 + 0.3 * min(1.0, f.psi / 0.5)
        ev.add(
            "feature_drift",
            conf,
            f"{f.feature} drifted: PSI {f.psi:.3f}"
            + (
                f", normed Wasserstein {f.wasserstein_normed:.3f}"
                if f.wasserstein_normed is not None
                else ""
            ),
        )
    if drifted:
        ev.add(
            "feature_drift",
            0.0,
            f"{len(drifted)} of {len(report.features)} features "
            f"drifted (share {report.drifted_share:.0%})",
        )
    return {f.feature for f in drifted}


# --- evidence from predictions -----------------------------------------------------------


def _labelled(pred: pd.DataFrame) -> pd.DataFrame:
    lab = pred[pred["label"].notna()].copy()
    p = pd.to_numeric(lab["prediction"], errors="coerce")
    lab["score"] = p
    lab["pred01"] = (p >= 0.5).astype(int)
    lab["label01"] = pd.to_numeric(lab["label"], errors="coerce").astype(int)
    return lab


def _degradation(before: pd.DataFrame, after: pd.DataFrame) -> tuple[str, float | None, str]:
    """Verdict on F1 (then accuracy) between two windows: verdict, relative drop, reason."""
    t = PerformanceThresholds(min_samples=100, min_positives=10, n_bootstrap=1000)
    rep = performance_degradation(
        before["label01"], before["pred01"], after["label01"], after["pred01"], thresholds=t
    )
    by = {c.metric: c for c in rep.changes}
    for m in ("f1", "accuracy"):
        c = by[m]
        if c.verdict == "degraded":
            return "degraded", c.relative_drop, c.reason
    if any(c.verdict == "inconclusive" for c in rep.changes):
        return "inconclusive", by["f1"].relative_drop, by["f1"].reason
    return "stable", by["f1"].relative_drop, by["f1"].reason


def _prediction_evidence(
    pred: pd.DataFrame,
    onset: pd.Timestamp | None,
    changes: list[dict[str, Any]],
    drifted: set[str],
    ev: _Evidence,
) -> dict[str, Any]:
    facts: dict[str, Any] = {"degraded": False, "version_change": False, "confined": None}
    lab = _labelled(pred)
    if lab.empty:
        ev.not_checked.append("performance, bad_deployment, bias: predictions have no labels")
        return facts
    if onset is None:
        onset = lab["timestamp"].sort_values().iloc[len(lab) // 2]
        ev.not_checked.append(
            f"onset not given: split the labelled predictions at their median time {onset}"
        )
    before, after = lab[lab["timestamp"] < onset], lab[lab["timestamp"] >= onset]
    if before.empty or after.empty:
        ev.not_checked.append("performance: no labelled predictions on one side of the onset")
        return facts
    verdict, drop, reason = _degradation(before, after)
    facts["degraded"] = verdict == "degraded"
    if verdict == "inconclusive":
        ev.not_checked.append(f"performance: inconclusive ({reason})")
    old_versions = set(before["model_version"].astype(str))
    new_versions = set(after["model_version"].astype(str)) - old_versions
    deploys = [c for c in changes if c["kind"] == "deployment"]
    if new_versions:
        facts["version_change"] = True
        for v in sorted(new_versions):
            new_rows = after[after["model_version"].astype(str) == v]
            old_rows = after[after["model_version"].astype(str) != v]
            v_verdict, v_drop, v_reason = _degradation(before, new_rows)
            if v_verdict != "degraded":
                continue
            confined = not old_rows.empty and _degradation(before, old_rows)[0] == "stable"
            facts["confined"] = confined
            conf = 0.9 if confined else 0.7
            at_deploy = [c for c in deploys if str(c.get("version")) == v]
            if at_deploy:
                conf = min(0.95, conf + 0.05)
            ev.add(
                "bad_deployment",
                conf,
                f"version {v} appeared at the onset and degraded: {v_reason}",
            )
            if confined:
                ev.add(
                    "bad_deployment",
                    conf,
                    "drop confined to the new version: older "
                    "versions serving after the onset are stable",
                )
            if at_deploy:
                ev.add(
                    "bad_deployment",
                    conf,
                    f"deployment of {v} at {at_deploy[0]['time']}: "
                    f"{at_deploy[0].get('description', '')}",
                )
    elif deploys:
        ev.not_checked.append(
            "bad_deployment: a deployment is listed but no new "
            "model_version appears in the predictions after the onset"
        )
    if "group" in lab.columns:
        _bias_evidence(before, after, ev)
    else:
        ev.not_checked.append("bias: predictions have no group column")
    if facts["degraded"]:
        if not new_versions and not drifted:
            ev.add(
                "concept_drift",
                0.75,
                f"performance dropped without input drift or a version change: {reason}",
            )
        elif drifted:
            ev.add("feature_drift", 0.0, f"performance dropped as inputs drifted: {reason}")
    return facts


def _bias_evidence(before: pd.DataFrame, after: pd.DataFrame, ev: _Evidence) -> None:
    verdicts: dict[str, tuple[str, str]] = {}
    for g in sorted(set(after["group"].astype(str))):
        b = before[before["group"].astype(str) == g]
        a = after[after["group"].astype(str) == g]
        if len(b) < 100 or len(a) < 100:
            continue
        v, _, reason = _degradation(b, a)
        verdicts[g] = (v, reason)
    degraded = [g for g, (v, _) in verdicts.items() if v == "degraded"]
    stable = [g for g, (v, _) in verdicts.items() if v == "stable"]
    if degraded and stable:
        for g in degraded:
            ev.add("bias", 0.85, f"group {g} degraded: {verdicts[g][1]}")
        ev.add("bias", 0.85, f"groups {stable} did not degrade")


# --- evidence from service metrics and changes -------------------------------------------


def _metric_evidence(
    m: pd.DataFrame, onset: pd.Timestamp | None, ev: _Evidence, thresholds: Sweep
) -> bool:
    """Service metrics after the onset against before (levels from the policy's `sweep`
    section); returns whether infra looked bad."""
    if onset is None:
        onset = m["timestamp"].sort_values().iloc[len(m) // 2]
    bad = False
    for metric, g in m.groupby("metric"):
        before = g[g["timestamp"] < onset]["value"]
        after = g[g["timestamp"] >= onset]["value"]
        if after.empty:
            continue
        b = float(before.median()) if len(before) else None
        a = float(after.median())
        name = str(metric)
        if name == "feature_freshness_seconds":
            if a > thresholds.freshness_seconds and (b is None or a > 2 * b):
                ev.add(
                    "stale_features",
                    0.85,
                    f"feature freshness {a:.0f} s after the onset"
                    + (f" (was {b:.0f} s)" if b is not None else ""),
                )
            continue
        rule = thresholds.infrastructure.get(name)
        if rule is None:
            continue
        if a > rule.level and (b is None or b == 0 or a / b >= rule.ratio):
            bad = True
            ev.add(
                "infrastructure",
                0.8,
                f"{name} {a:.3g} after the onset" + (f" (was {b:.3g})" if b is not None else ""),
            )
    return bad


def _change_evidence(
    changes: list[dict[str, Any]], onset: pd.Timestamp | None, ev: _Evidence
) -> None:
    if onset is None:
        return
    window = [c for c in changes if abs(c["_time"] - onset) <= timedelta(hours=2)]
    for c in window:
        line = f"{c['kind']} change at {c['time']}: {c.get('description', '')}"
        if c["kind"] == "pipeline":
            ev.add("data_quality", 0.0, line)
        elif c["kind"] == "infrastructure":
            ev.add("infrastructure", 0.0, line)


# --- the entry points --------------------------------------------------------------------


def _parse_changes(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, c in enumerate(changes):
        if not isinstance(c, dict) or "time" not in c or "kind" not in c:
            raise CheckInputError(f"changes[{i}] needs 'time' and 'kind'; got {c!r}")
        if c["kind"] not in CHANGE_KINDS:
            raise CheckInputError(
                f"changes[{i}].kind is {c['kind']!r}; use one of {', '.join(CHANGE_KINDS)}"
            )
        try:
            t = pd.Timestamp(c["time"])
        except ValueError as exc:
            raise CheckInputError(f"changes[{i}].time {c['time']!r} is not ISO 8601") from exc
        out.append(c | {"_time": t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")})
    return out


def diagnose(
    reference: pd.DataFrame | None = None,
    current: pd.DataFrame | None = None,
    predictions: pd.DataFrame | None = None,
    changes: list[dict[str, Any]] | None = None,
    metrics: pd.DataFrame | None = None,
    onset: datetime | str | None = None,
    thresholds: Sweep | None = None,
) -> Diagnosis:
    """Rank the likely causes of an incident from whatever evidence is given; the service
    metric levels are `thresholds` (the policy's `sweep` section, its defaults when None)."""
    ev = _Evidence()
    parsed = _parse_changes(changes or [])
    on: pd.Timestamp | None = None
    if onset is not None:
        t = pd.Timestamp(onset)
        on = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    drifted: set[str] = set()
    if reference is not None and current is not None:
        if len(reference) == 0 or len(current) == 0:
            raise CheckInputError("reference and current need rows; one of them is empty")
        drifted = _data_evidence(reference, current, ev)
    else:
        ev.not_checked.append("feature_drift, data_quality: need both reference and current")
    if predictions is not None:
        missing = [c for c in PREDICTION_COLUMNS if c not in predictions.columns]
        if missing:
            raise CheckInputError(
                f"predictions lack column(s) {missing}; "
                f"need {', '.join(PREDICTION_COLUMNS)} (+ optional group)"
            )
        pred = predictions.copy()
        pred["timestamp"] = parse_timestamps(pred["timestamp"], what="predictions")
        if on is None:
            deploys = [c["_time"] for c in parsed if c["kind"] == "deployment"]
            if deploys:
                on = max(deploys)
        _prediction_evidence(pred, on, parsed, drifted, ev)
    else:
        ev.not_checked.append("performance, bad_deployment, concept_drift, bias: no predictions")
    infra_bad = False
    if metrics is not None:
        missing = [c for c in METRIC_COLUMNS if c not in metrics.columns]
        if missing:
            raise CheckInputError(f"metrics lack column(s) {missing}; need timestamp,metric,value")
        m = metrics.copy()
        m["timestamp"] = parse_timestamps(m["timestamp"], what="metrics")
        if not m.empty:
            infra_bad = _metric_evidence(m, on, ev, thresholds or Sweep())
    else:
        ev.not_checked.append("infrastructure, stale_features (freshness): no service metrics")
    if not parsed:
        ev.not_checked.append("recent changes: none given")
    _change_evidence(parsed, on, ev)
    explained = [
        c
        for c in ("data_quality", "stale_features", "bias", "bad_deployment")
        if ev.score.get(c, 0) > 0
    ]
    if "concept_drift" in ev.score and explained:
        ev.score["concept_drift"] *= 0.4
        ev.lines["concept_drift"].append(f"the drop is better explained by {explained}")
    data_changed = bool(drifted) or "data_quality" in ev.score
    if infra_bad and data_changed:
        ev.score["infrastructure"] *= 0.6
        ev.lines["infrastructure"].append(
            "inputs changed too, so infrastructure is less likely to be the whole story"
        )
    return ev.diagnosis()


def _read(path: str | None, what: str, required: tuple[str, ...] = ()) -> pd.DataFrame | None:
    return None if path is None else load_table(path, required=required, what=what)


def _read_changes(path: str | None) -> list[dict[str, Any]] | None:
    if path is None:
        return None
    p = Path(path)
    if p.suffix.lower() != ".json":
        raise CheckInputError(f"changes file {p}: give a .json file with a list of changes")
    if not p.is_file():
        raise CheckInputError(f"changes file {p} does not exist; check the path")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise CheckInputError(f"changes file {p} is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise CheckInputError(f"changes file {p} must hold a JSON list of changes")
    return data


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="runbooks diagnose",
        description="Rank the likely causes of a model incident from data, predictions, "
        "changes and service metrics.",
    )
    p.add_argument("--reference", help="reference window, CSV or Parquet")
    p.add_argument("--current", help="current window, CSV or Parquet")
    p.add_argument("--predictions", help="timestamp,model_version,prediction,label[,group]")
    p.add_argument("--changes", help="JSON list of {time, kind, description, version}")
    p.add_argument("--metrics", help="timestamp,metric,value, CSV or Parquet")
    p.add_argument("--onset", help="when the incident started, ISO 8601")
    p.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry: 0 with a diagnosis, 2 with a message naming the file, field and fix."""
    args = build_parser().parse_args(argv)
    try:
        onset = None
        if args.onset is not None:
            try:
                onset = pd.Timestamp(args.onset)
            except ValueError as exc:
                raise CheckInputError(
                    f"--onset {args.onset!r} is not ISO 8601; e.g. 2026-11-22T10:00:00Z"
                ) from exc
        result = diagnose(
            reference=_read(args.reference, "reference"),
            current=_read(args.current, "current"),
            predictions=_read(args.predictions, "predictions", PREDICTION_COLUMNS),
            changes=_read_changes(args.changes),
            metrics=_read(args.metrics, "metrics", METRIC_COLUMNS),
            onset=onset,
        )
    except CheckInputError as exc:
        print(f"runbooks diagnose: {exc}", file=sys.stderr)
        return 2
    out = result.model_dump(mode="json")
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for c in result.causes:
            print(f"{c.cause} ({c.confidence:.2f}) -> {c.resolution}")
            for e in c.evidence:
                print(f"  - {e}")
        for n in result.not_checked:
            print(f"not checked: {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
