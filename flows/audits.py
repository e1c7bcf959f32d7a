"""Runbooks: the scheduled audits (schedules in prefect.yaml). What each finds is in
runbooks/audits.py; here are the reads, the posts and the reports.

weekly-review (Mondays): 1. read the week's incidents and the deadlines they missed;
2. read each model's metric trend from the monitoring sweep's source; 3. per model:
incidents by severity, deadlines met and missed, MTTA and MTTR medians; 4. report.

fairness-audit (the 1st of the month): 1. read the month's predictions named by the
policy (audits.fairness_predictions); 2. judge each model's with checks/fairness across
audits.fairness_attribute; 3. post a bias alert through the intake for each failed
measure (the intake opens the bias incident); 4. report.

model-audit (quarterly): 1. read what the incident store knows of each model of the
policy; 2. the documentation and compliance checklist, models without an owner or a
runbook flagged, stale models; 3. report.

silence-inventory (Mondays): 1. read the silences in effect and the labels of the
alerts received in the window; 2. those that never expire in effect and those that
matched nothing; 3. report.

Each reports a markdown artifact of its own name, "nothing found" when that is so.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field
from sqlalchemy.exc import OperationalError
from sqlmodel import col, select

from checks.fairness import fairness_report
from checks.findings import CheckInputError, Finding
from checks.io import load_table, parse_timestamps
from runbooks import audits
from runbooks import silences as silence_rows
from runbooks import suppression as sup
from runbooks.audits import ModelAuditRow, ReviewRow, SilenceFinding
from runbooks.models import Alert, Incident, IncidentNotice, Silence, utcnow
from runbooks.policy import Policy, load_policy
from runbooks.settings import DEFAULT_INTAKE_URL, Settings
from runbooks.store import session_scope
from tasks import incident_store as store
from tasks.intake_client import IntakeClient, transient
from tasks.retry import BACKOFF, retry_when
from tasks.sweep_sources import DirectorySource, SqlSource

_retry: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": BACKOFF[:2],
    "retry_condition_fn": retry_when(lambda e: isinstance(e, OperationalError)),
    "cache_policy": NO_CACHE,
}
_http_retry: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": BACKOFF[:2],
    "retry_condition_fn": retry_when(transient),
    "cache_policy": NO_CACHE,
}

_POLICY_FILE = Field(
    None, description="Audit with this policy file instead of the service's (to test one)."
)


def read_policy(policy_file: str | None) -> Policy:
    return load_policy(policy_file) if policy_file else store.policy()


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows),
    ]


def _publish(key: str, lines: list[str], description: str) -> str:
    markdown = "\n".join(lines)
    print(markdown)
    create_markdown_artifact(key=key, markdown=markdown, description=description)
    return markdown


# --- weekly review -----------------------------------------------------------------------


class WeeklyReviewRequest(BaseModel):
    policy_file: str | None = _POLICY_FILE


class WeeklyReviewSummary(BaseModel):
    at: datetime
    since: datetime
    rows: list[ReviewRow] = Field(default_factory=list)

    def incidents(self) -> int:
        return sum(r.incidents for r in self.rows)


@flow(name="weekly-review", log_prints=True)
def weekly_review(request: WeeklyReviewRequest) -> WeeklyReviewSummary:
    now = utcnow()
    policy = read_policy(request.policy_file)
    incidents, notices = read_week_incidents(now - audits.WEEK, now)
    models = sorted({*policy.models, *(i.model for i in incidents)})
    trends = read_metric_trends(models, now - audits.WEEK)
    rows = audits.weekly_review(incidents, notices, policy, now, trends)
    summary = WeeklyReviewSummary(at=now, since=now - audits.WEEK, rows=rows)
    report_weekly_review(summary)
    return summary


@task(**_retry)
def read_week_incidents(
    since: datetime, until: datetime
) -> tuple[list[Incident], dict[int, list[str]]]:
    """The incidents opened in the window, and the notice keys of each."""
    with session_scope(store.db()) as s:
        incidents = list(
            s.exec(
                select(Incident)
                .where(col(Incident.opened_at) >= since, col(Incident.opened_at) <= until)
                .order_by(col(Incident.id))
            )
        )
        notices: dict[int, list[str]] = {}
        ids = [i.id for i in incidents]
        if ids:
            for incident_id, key in s.exec(
                select(IncidentNotice.incident_id, IncidentNotice.key).where(
                    col(IncidentNotice.incident_id).in_(ids)
                )
            ):
                notices.setdefault(incident_id, []).append(key)
    return incidents, notices


@task(**_retry)
def read_metric_trends(models: list[str], since: datetime) -> dict[str, str]:
    """Each model's metric trend from the monitoring sweep's source (RUNBOOKS_SWEEP_SOURCE
    or RUNBOOKS_SWEEP_SQL_URL); no source: no trends (the rows say so)."""
    env = Settings()
    if env.sweep_source and env.sweep_sql_url:
        said = "both RUNBOOKS_SWEEP_SOURCE and RUNBOOKS_SWEEP_SQL_URL are set; unset one"
        return dict.fromkeys(models, said)
    if not env.sweep_source and not env.sweep_sql_url:
        return {}
    try:
        source = (
            SqlSource(env.sweep_sql_url) if env.sweep_sql_url else DirectorySource(env.sweep_source)
        )
    except CheckInputError as err:
        return dict.fromkeys(models, f"metric source unreadable: {err}")
    trends = {}
    with source:
        for model in models:
            tables = source.tables(model)
            frame = tables.model_metrics
            if frame is None or frame.empty:
                trends[model] = f"no model_metrics rows in {source.shown}"
                continue
            stamps = parse_timestamps(frame["timestamp"], what=f"model_metrics of {model}")
            points = zip(
                stamps.dt.to_pydatetime(), frame["metric"].astype(str), frame["value"], strict=True
            )
            trends[model] = audits.metric_trend(points, since)
    return trends


def report_weekly_review(summary: WeeklyReviewSummary) -> None:
    lines = [
        f"# Weekly review, {summary.since:%Y-%m-%d} to {summary.at:%Y-%m-%d}",
        "",
        f"{summary.incidents()} incident(s) opened in the week across {len(summary.rows)} "
        "model(s).",
        "",
    ]
    if not summary.incidents():
        lines += ["No incidents this week: nothing found.", ""]
    if summary.rows:
        lines += _table(
            [
                "model",
                "incidents",
                "by severity",
                "deadlines met",
                "deadlines missed",
                "MTTA (median)",
                "MTTR (median)",
                "metric trend",
            ],
            [
                [
                    r.model,
                    r.incidents,
                    ", ".join(f"{k}: {v}" for k, v in r.by_severity.items()) or "-",
                    r.deadlines_met,
                    f"{r.deadlines_missed} ({', '.join(r.missed)})" if r.missed else 0,
                    audits.duration_words(r.mtta_median_seconds),
                    audits.duration_words(r.mttr_median_seconds),
                    r.trend,
                ]
                for r in summary.rows
            ],
        )
    _publish("weekly-review", lines, "The week's incidents, deadlines and MTTx per model")


# --- fairness audit ----------------------------------------------------------------------


class FairnessAuditRequest(BaseModel):
    policy_file: str | None = _POLICY_FILE
    month: str = Field(
        "", description="Month to audit, YYYY-MM. Empty: the month before this run's."
    )
    intake_url: str = Field(
        "",
        description=f"Intake to post bias alerts to. Empty: $RUNBOOKS_INTAKE_URL, else "
        f"{DEFAULT_INTAKE_URL}.",
    )
    dry_run: bool = Field(False, description="Report what would be raised; post nothing.")


class FairnessVerdict(BaseModel):
    model: str
    rows: int
    measure: str
    difference: float | None
    passed: bool
    message: str
    outcome: str = Field(
        "",
        description="For a failed measure, the intake's answer (opened, duplicate, ...), "
        "or would_raise in a dry run.",
    )
    incident_id: int | None = None


class FairnessAuditSummary(BaseModel):
    month: str
    source: str = Field(description="Where the predictions were read; empty: none configured.")
    attribute: str
    dry_run: bool
    rows: int = 0
    verdicts: list[FairnessVerdict] = Field(default_factory=list)

    def breaches(self) -> list[FairnessVerdict]:
        return [v for v in self.verdicts if not v.passed]


@flow(name="fairness-audit", log_prints=True)
def fairness_audit(request: FairnessAuditRequest) -> FairnessAuditSummary:
    policy = read_policy(request.policy_file)
    start, end = audits.audit_month(utcnow(), request.month)
    attribute, source = policy.audits.fairness_attribute, policy.audits.fairness_predictions
    summary = FairnessAuditSummary(
        month=f"{start:%Y-%m}", source=source, attribute=attribute, dry_run=request.dry_run
    )
    if source:
        predictions = read_predictions(source, attribute, start, end)
        summary.rows = len(predictions)
        for model, rows in predictions.groupby("model", sort=True):
            findings = judge_fairness(str(model), rows, attribute)
            alerts = [
                audits.bias_alert(str(model), f, attribute, start) for f in findings if not f.passed
            ]
            answer = (
                post_alerts(intake_url(request), alerts) if alerts and not request.dry_run else None
            )
            record_fairness(summary, str(model), len(rows), findings, answer)
    report_fairness_audit(summary)
    return summary


@task(**_retry)
def read_predictions(source: str, attribute: str, start: datetime, end: datetime) -> pd.DataFrame:
    """The month's labelled predictions from a CSV file or a directory of them: columns
    timestamp, prediction (>= 0.5 is positive), label (0/1; empty rows are left out), the
    attribute, and model (without it, the file's name is the model's)."""
    path = Path(source)
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if path.is_dir() and not files:
        raise CheckInputError(
            f"no CSV files in {path}; check the policy's audits.fairness_predictions"
        )
    frames = []
    for f in files:
        df = load_table(
            f, required=("timestamp", "prediction", "label", attribute), what="predictions"
        )
        df["timestamp"] = parse_timestamps(df["timestamp"], what=f"predictions file {f}")
        if "model" not in df.columns:
            df["model"] = f.stem
        frames.append(df[["timestamp", "model", "prediction", "label", attribute]])
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[(rows["timestamp"] >= start) & (rows["timestamp"] < end)]
    return rows.dropna(subset=["label"])


@task(task_run_name="judge_fairness-{model}", cache_policy=NO_CACHE)
def judge_fairness(model: str, rows: pd.DataFrame, attribute: str) -> list[Finding]:
    report = fairness_report(
        rows["label"].astype(int).to_numpy(),
        (rows["prediction"].astype(float) >= 0.5).to_numpy(),
        rows[attribute].to_numpy(),
    )
    return report.findings()


def intake_url(request: FairnessAuditRequest) -> str:
    return (request.intake_url or Settings().intake_url).rstrip("/")


@task(**_http_retry)
def post_alerts(intake: str, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    client = IntakeClient(intake, url_from="RUNBOOKS_INTAKE_URL or request.intake_url")
    return client.post_alerts(alerts)


def record_fairness(
    summary: FairnessAuditSummary,
    model: str,
    rows: int,
    findings: list[Finding],
    answer: dict[str, Any] | None,
) -> None:
    results = iter((answer or {}).get("alerts") or [])
    for f in findings:
        result = {} if f.passed or answer is None else next(results, {})
        outcome = "" if f.passed else result.get("outcome", "would_raise")
        summary.verdicts.append(
            FairnessVerdict(
                model=model,
                rows=rows,
                measure=f.key.removeprefix("fairness:"),
                difference=f.observed.get("difference"),
                passed=f.passed,
                message=f.message,
                outcome=outcome,
                incident_id=result.get("incident_id"),
            )
        )


def report_fairness_audit(summary: FairnessAuditSummary) -> None:
    lines = [f"# Fairness audit of {summary.month}", ""]
    if not summary.source:
        lines.append(
            "No predictions source configured (the policy's audits.fairness_predictions is "
            "empty): nothing audited, nothing found."
        )
    else:
        breaches = summary.breaches()
        verb = "would raise" if summary.dry_run else "raised"
        lines += [
            f"{summary.rows} labelled prediction(s) of the month in {summary.source}, grouped "
            f"by {summary.attribute}; {len(breaches)} bias alert(s) {verb}.",
            "",
        ]
        if not breaches:
            lines += ["No measure out of bounds: nothing found.", ""]
        if summary.verdicts:
            lines += _table(
                ["model", "rows", "measure", "difference", "result", "outcome", "incident"],
                [
                    [
                        v.model,
                        v.rows,
                        v.measure,
                        "n/a" if v.difference is None else f"{v.difference:.3f}",
                        "ok" if v.passed else v.message,
                        v.outcome or "-",
                        v.incident_id or "-",
                    ]
                    for v in summary.verdicts
                ],
            )
    _publish("fairness-audit", lines, "The month's fairness measures per model")


# --- model audit -------------------------------------------------------------------------


class ModelAuditRequest(BaseModel):
    policy_file: str | None = _POLICY_FILE


class ModelAuditSummary(BaseModel):
    at: datetime
    rows: list[ModelAuditRow] = Field(default_factory=list)

    def flagged(self) -> list[ModelAuditRow]:
        return [r for r in self.rows if r.flags]


@flow(name="model-audit", log_prints=True)
def model_audit(request: ModelAuditRequest) -> ModelAuditSummary:
    now = utcnow()
    policy = read_policy(request.policy_file)
    incidents = read_model_incidents(sorted(policy.models))
    summary = ModelAuditSummary(at=now, rows=audits.model_audit(policy, incidents, now))
    report_model_audit(summary, policy.audits.stale_model_days)
    return summary


@task(**_retry)
def read_model_incidents(models: list[str]) -> list[Incident]:
    """Every incident of the models: their strategies and enrichment contexts."""
    if not models:
        return []
    with session_scope(store.db()) as s:
        return list(s.exec(select(Incident).where(col(Incident.model).in_(models))))


def report_model_audit(summary: ModelAuditSummary, stale_days: float) -> None:
    flagged = summary.flagged()
    lines = [
        f"# Model audit, {summary.at:%Y-%m-%d}",
        "",
        f"{len(summary.rows)} model(s) in the policy; {len(flagged)} flagged. Stale: no "
        f"registry or rollout change the incident store knows of in {stale_days:g} days "
        "(unknown: it knows none).",
        "",
    ]
    if not summary.rows:
        lines += ["The policy names no models: nothing found."]
    else:
        if not flagged:
            lines += ["Every model passes the checklist: nothing found.", ""]
        lines += _table(
            [
                "model",
                "owner",
                "team",
                "target",
                "runbook",
                "P1 approvers",
                "recovery check",
                "registry",
                "last change",
                "stale",
                "flags",
            ],
            [
                [
                    r.model,
                    r.owner or "-",
                    r.team or "-",
                    r.target or "-",
                    r.runbook,
                    r.p1_approvers or "-",
                    r.recovery_check or "-",
                    r.registry,
                    r.last_change,
                    r.stale,
                    "; ".join(r.flags) or "ok",
                ]
                for r in summary.rows
            ],
        )
    _publish("model-audit", lines, "Documentation and compliance checklist per model")


# --- silence inventory -------------------------------------------------------------------


class SilenceInventoryRequest(BaseModel):
    policy_file: str | None = _POLICY_FILE


class SilenceInventorySummary(BaseModel):
    at: datetime
    in_effect: int = 0
    alerts_in_window: int = 0
    findings: list[SilenceFinding] = Field(default_factory=list)


@flow(name="silence-inventory", log_prints=True)
def silence_inventory(request: SilenceInventoryRequest) -> SilenceInventorySummary:
    now = utcnow()
    policy = read_policy(request.policy_file)
    since = now - timedelta(days=policy.audits.silence_unused_days)
    silences, alerts = read_silences_and_alerts(now, since)
    summary = SilenceInventorySummary(
        at=now,
        in_effect=len(silences),
        alerts_in_window=len(alerts),
        findings=audits.silence_inventory(silences, alerts, now, policy.audits),
    )
    report_silence_inventory(summary, policy)
    return summary


@task(**_retry)
def read_silences_and_alerts(
    now: datetime, since: datetime
) -> tuple[list[sup.Silence], list[dict[str, str]]]:
    """The silences not yet expired, and the labels of every alert received since."""
    with session_scope(store.db()) as s:
        rows = s.exec(
            select(Silence)
            .where(col(Silence.ends_at) > now)
            .order_by(col(Silence.created_at), col(Silence.id))
        ).all()
        labels = s.exec(select(Alert.labels).where(col(Alert.received_at) >= since)).all()
    return [silence_rows.to_model(r) for r in rows], [dict(x or {}) for x in labels]


def report_silence_inventory(summary: SilenceInventorySummary, policy: Policy) -> None:
    a = policy.audits
    lines = [
        f"# Silence inventory, {summary.at:%Y-%m-%d}",
        "",
        f"{summary.in_effect} silence(s) in effect; {summary.alerts_in_window} alert(s) "
        f"received in the last {a.silence_unused_days:g} days. Listed: silences ending more "
        f"than {a.silence_forever_days:g} days out (never expire, in effect) and silences "
        f"that matched none of those alerts.",
        "",
    ]
    if not summary.findings:
        lines += ["No silence never expires or goes unused: nothing found."]
    else:
        lines += _table(
            ["silence", "matchers", "created by", "comment", "ends", "problem", "detail"],
            [
                [
                    f.id,
                    f.matchers,
                    f.created_by,
                    f.comment,
                    f"{f.ends_at:%Y-%m-%d}",
                    f.problem,
                    f.detail,
                ]
                for f in summary.findings
            ],
        )
    _publish("silence-inventory", lines, "Silences that never expire or match nothing")
