"""Runbook: the monitoring sweep (scheduled, see prefect.yaml).

1. Find the models to sweep in the source: a directory of metric tables, or SQL tables.
2. For each model: read its metric tables and judge every series with the policy's rules.
3. Ask the intake which of the sweep's alerts it holds firing for the model.
4. Post new breaches (firing) and recoveries (resolved) to the intake, the path every alert
   takes; the intake dedups repeats and opens or resolves the incidents.
5. Report what was raised and resolved. A model whose files could not be read does not stop
   the others, but the run then fails, naming the files, so the gap in monitoring is seen.

The file and table contract is in docs/checks.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field, model_validator

from checks.sweep import MetricTables, ModelSweep, evaluate
from runbooks.policy import SeverityRule
from runbooks.settings import DEFAULT_INTAKE_URL, Settings
from tasks import incident_store as store
from tasks.intake_client import IntakeClient, transient
from tasks.retry import BACKOFF, retry_when
from tasks.sweep_sources import (
    DirectorySource,
    FiringAlert,
    SqlSource,
    alerts_to_send,
    list_models,
    read_metric_tables,
)


class SweepConfigError(ValueError):
    """The sweep does not know what to read; the message names the setting."""


class SweepInputError(RuntimeError):
    """Some tables could not be read; every other model was swept. Carries the summary."""

    def __init__(self, message: str, summary: SweepSummary) -> None:
        super().__init__(message, summary)
        self.summary = summary

    def __str__(self) -> str:
        return str(self.args[0])


_http_retry: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": BACKOFF[:2],
    "retry_condition_fn": retry_when(transient),
}


class SqlTables(BaseModel):
    model_metrics: str = Field("model_metrics", description="Table of model metrics.")
    data_quality: str = Field("data_quality", description="Table of per-feature data quality.")
    feature_drift: str = Field("feature_drift", description="Table of per-feature drift.")


class SweepRequest(BaseModel):
    source: str = Field(
        "",
        description="Directory of metric tables (CSV or Parquet, layout in docs/checks.md). "
        "Empty: $RUNBOOKS_SWEEP_SOURCE, unless an SQL URL is given.",
    )
    sql_url: str = Field(
        "",
        description="SQLAlchemy URL of a database holding the metric tables, instead of a "
        "directory. Empty: $RUNBOOKS_SWEEP_SQL_URL (keep passwords there, not here).",
    )
    sql_tables: SqlTables = Field(
        default_factory=SqlTables, description="Table names in that database (schema.table)."
    )
    models: list[str] = Field(
        default_factory=list, description="Models to sweep; empty: every model in the source."
    )
    intake_url: str = Field(
        "",
        description=f"Intake to post alerts to. Empty: $RUNBOOKS_INTAKE_URL, else "
        f"{DEFAULT_INTAKE_URL}.",
    )
    baseline_rows: int = Field(
        0,
        ge=0,
        description="Baseline = median of this many earlier in-bounds rows (0: all of them), "
        "where a row has no baseline of its own.",
    )
    dry_run: bool = Field(
        False, description="Report what would be raised and resolved; post nothing."
    )

    @model_validator(mode="after")
    def _one_source(self) -> SweepRequest:
        if self.source and self.sql_url:
            raise ValueError("give source (a directory) or sql_url (a database), not both")
        return self


class SweptAlert(BaseModel):
    model: str
    alertname: str
    status: str
    metric: str | None = None
    feature: str | None = None
    severity: str | None = None
    value: float | None = None
    starts_at: str
    outcome: str = Field(description="The intake's answer (opened, joined, duplicate, ...).")
    incident_id: int | None = None


class SweepSummary(BaseModel):
    source: str
    dry_run: bool
    models_checked: list[str] = Field(default_factory=list)
    raised: list[SweptAlert] = Field(default_factory=list)
    resolved: list[SweptAlert] = Field(default_factory=list)
    unchanged: list[SweptAlert] = Field(
        default_factory=list, description="Still firing, already held by the intake."
    )
    errors: dict[str, list[str]] = Field(
        default_factory=dict, description="Per model (or '(source)'), what could not be read."
    )
    unchecked_metrics: dict[str, list[str]] = Field(
        default_factory=dict, description="Per model, metrics that no policy rule names."
    )
    incidents: list[int] = Field(default_factory=list)

    def record(
        self,
        swept: ModelSweep,
        alerts: list[dict[str, Any]],
        held: list[FiringAlert],
        answer: dict[str, Any] | None,
    ) -> None:
        if swept.errors:
            self.errors.setdefault(swept.model, []).extend(swept.errors)
        if swept.verdicts or not swept.errors:
            self.models_checked.append(swept.model)
        if swept.unchecked_metrics:
            self.unchecked_metrics[swept.model] = swept.unchecked_metrics
        known = {(a.fingerprint, a.starts_at) for a in held}
        results = (answer or {}).get("alerts") or [{} for _ in alerts]
        for alert, result in zip(alerts, results, strict=True):
            starts = datetime.fromisoformat(alert["startsAt"])
            if answer is None:
                resolving = alert["status"] == "resolved"
                repeat = (alert["fingerprint"], starts) in known
                outcome = "would_resolve" if resolving else "held" if repeat else "would_raise"
            else:
                outcome = result["outcome"]
            item = SweptAlert(
                model=alert["model"],
                alertname=alert["alertname"],
                status=alert["status"],
                metric=alert.get("metric"),
                feature=alert.get("feature"),
                severity=alert.get("severity"),
                value=alert.get("value"),
                starts_at=alert["startsAt"],
                outcome=outcome,
                incident_id=result.get("incident_id"),
            )
            if outcome in ("opened", "joined", "refired", "would_raise"):
                self.raised.append(item)
            elif outcome in ("resolved", "would_resolve"):
                self.resolved.append(item)
            else:
                self.unchanged.append(item)
            if item.incident_id is not None and item.incident_id not in self.incidents:
                self.incidents.append(item.incident_id)


@flow(name="monitoring-sweep", log_prints=True)
def monitoring_sweep(request: SweepRequest) -> SweepSummary:
    intake = intake_url(request)
    rules = store.policy().severity
    with open_metric_source(request) as source:
        summary = SweepSummary(source=source.shown, dry_run=request.dry_run)
        models = find_models(source, request.models, summary)
        for model in models:
            swept = evaluate_model(
                model, read_metric_tables(source, model), rules, request.baseline_rows
            )
            held = firing_sweep_alerts(list_incidents(intake, model))
            alerts = alerts_to_send(swept.verdicts, held)
            answer = post_alerts(intake, alerts) if alerts and not request.dry_run else None
            summary.record(swept, alerts, held, answer)
    report(summary)
    if summary.errors:
        raise SweepInputError(failure_message(summary), summary)
    return summary


# Steps -----------------------------------------------------------------------------------


def intake_url(request: SweepRequest) -> str:
    return (
        # Settings() and not the cached get_settings(): read the environment of this run.
        request.intake_url or Settings().intake_url
    ).rstrip("/")


def open_metric_source(request: SweepRequest) -> DirectorySource | SqlSource:
    """The request's source, else the environment's; a sweep with none fails, naming both."""
    directory, sql_url = request.source, request.sql_url
    if not directory and not sql_url:
        env = Settings()
        directory, sql_url = env.sweep_source, env.sweep_sql_url
    if directory and sql_url:
        raise SweepConfigError(
            "both RUNBOOKS_SWEEP_SOURCE and RUNBOOKS_SWEEP_SQL_URL are set; unset one, or "
            "give request.source or request.sql_url"
        )
    if sql_url:
        return SqlSource(sql_url, request.sql_tables.model_dump())
    if directory:
        return DirectorySource(directory)
    raise SweepConfigError(
        "no metric tables to sweep: set RUNBOOKS_SWEEP_SOURCE (a directory) or "
        "RUNBOOKS_SWEEP_SQL_URL (a database) in the worker's environment, or give "
        "request.source or request.sql_url"
    )


def find_models(
    source: DirectorySource | SqlSource, requested: list[str], summary: SweepSummary
) -> list[str]:
    if requested:
        return list(dict.fromkeys(requested))
    models, errors = list_models(source)
    if errors:
        summary.errors.setdefault("(source)", []).extend(errors)
    if not models and not errors:
        get_run_logger().warning("no models found in %s: nothing to sweep", source.shown)
    return models


@task(task_run_name="evaluate-{model}", cache_policy=NO_CACHE)
def evaluate_model(
    model: str, tables: MetricTables, rules: list[SeverityRule], baseline_rows: int
) -> ModelSweep:
    swept = evaluate(model, tables, rules, baseline_rows)
    logger = get_run_logger()
    for err in swept.errors:
        logger.error("%s: %s", model, err)
    if swept.unchecked_metrics:
        logger.warning(
            "%s: no severity rule names %s; check the metric names against the policy",
            model,
            ", ".join(swept.unchecked_metrics),
        )
    return swept


def _client(intake: str) -> IntakeClient:
    return IntakeClient(intake, url_from="RUNBOOKS_INTAKE_URL or request.intake_url")


@task(task_run_name="list_incidents-{model}", **_http_retry)
def list_incidents(intake: str, model: str) -> list[dict[str, Any]]:
    """Every incident of the model, oldest page last (the intake answers newest first)."""
    return _client(intake).incidents_of(model)


def firing_sweep_alerts(incidents: list[dict[str, Any]]) -> list[FiringAlert]:
    return [
        FiringAlert(
            fingerprint=a["fingerprint"],
            starts_at=datetime.fromisoformat(a["starts_at"]),
            alertname=a["alertname"],
        )
        for incident in incidents
        for a in incident["alerts"]
        if a["source"] == "sweep" and a["status"] == "firing"
    ]


@task(**_http_retry)
def post_alerts(intake: str, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """One post per model: the intake stores the whole batch in one transaction."""
    return _client(intake).post_alerts(alerts)


def report(summary: SweepSummary) -> None:
    verb = "would raise" if summary.dry_run else "raised"
    lines = [
        f"# Monitoring sweep of {summary.source}",
        "",
        f"{len(summary.models_checked)} model(s) checked; {len(summary.raised)} alert(s) "
        f"{verb}, {len(summary.resolved)} resolved, {len(summary.unchanged)} still firing.",
        "",
    ]
    if summary.raised or summary.resolved:
        lines += ["| model | alert | metric | feature | severity | value | since | outcome |"]
        lines += ["|---|---|---|---|---|---|---|---|"]
        for a in summary.raised + summary.resolved:
            lines.append(
                f"| {a.model} | {a.alertname} | {a.metric or ''} | {a.feature or ''} | "
                f"{a.severity or ''} | {'' if a.value is None else f'{a.value:g}'} | "
                f"{a.starts_at} | {a.outcome} |"
            )
    for model, errors in summary.errors.items():
        lines += ["", f"**{model}**: could not read:", *[f"- {e}" for e in errors]]
    for model, metrics in summary.unchecked_metrics.items():
        lines += ["", f"{model}: no policy rule for {', '.join(metrics)}"]
    markdown = "\n".join(lines)
    print(markdown)
    create_markdown_artifact(
        key="monitoring-sweep", markdown=markdown, description="What the sweep raised"
    )


def failure_message(summary: SweepSummary) -> str:
    problems = "; ".join(f"{m}: {' | '.join(e)}" for m, e in summary.errors.items())
    return (
        f"monitoring sweep could not read {sum(map(len, summary.errors.values()))} "
        f"table(s): {problems}. Every other table was swept ({len(summary.raised)} raised, "
        f"{len(summary.resolved)} resolved)"
    )
