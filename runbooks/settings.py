"""Every knob of the product, read from the environment in one place."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_HOME = Path.home() / ".runbooks"


DEFAULT_INTAKE_URL = "http://127.0.0.1:8080"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RUNBOOKS_", extra="ignore")

    home: Path = Field(DEFAULT_HOME, description="Where local state (SQLite, logs) lives.")
    database_url: str = Field(
        "",
        description="SQLAlchemy URL of the incident store; empty means SQLite under home.",
    )
    policy_file: Path | None = Field(
        None, description="Policy YAML; empty means the packaged default policy."
    )
    intake_token: str = Field(
        "",
        description="Bearer token of every scope (alert, read, act); with no intake token "
        "set at all the intake is open.",
    )
    intake_alert_token: str = Field(
        "", description="Bearer token that may only post alerts and incident reports."
    )
    intake_read_token: str = Field("", description="Bearer token that may only read (GET).")
    intake_act_token: str = Field(
        "",
        description="Bearer token that may only act: silences, the kill switch, ack, close, "
        "reopen, labels, post-mortem acceptance.",
    )
    intake_rate_per_second: float = Field(
        200.0,
        ge=0,
        description="Requests a second each client (valid token, else address) may make "
        "beyond its burst; 0 turns the limit off. Over it: 429 and Retry-After.",
    )
    intake_rate_burst: int = Field(
        2000, ge=1, description="Requests a client may make at once before the rate applies."
    )
    intake_max_body_bytes: int = Field(1_048_576, description="Larger posts get 413.")
    intake_writers: int = Field(
        2, ge=1, description="Posts written at once on PostgreSQL (SQLite takes one at a time)."
    )
    intake_max_pending: int = Field(
        32,
        ge=1,
        description="Alert posts in flight (waiting for a writer or writing) beyond which "
        "the intake answers 503 with Retry-After at once; under the 40 threads the intake "
        "has, so that reads and /healthz keep theirs.",
    )
    outbox_retry_seconds: float = Field(
        2.0, description="First delay before an undelivered event is sent again."
    )
    runbook_start_seconds: float = Field(
        60.0,
        gt=0,
        description="An opened incident whose triage has not started this long after its "
        "event was delivered gets the event again (at most 3 times).",
    )
    kube_context: str | None = Field(None, description="kubeconfig context to use.")
    kube_host: str | None = Field(
        None, description="Kubernetes API URL; overrides kubeconfig and in-cluster config."
    )
    intake_url: str = Field(
        DEFAULT_INTAKE_URL, description="The intake the monitoring sweep posts its alerts to."
    )
    sweep_source: str = Field(
        "", description="Directory of metric tables (CSV/Parquet) the monitoring sweep reads."
    )
    sweep_sql_url: str = Field(
        "", description="SQLAlchemy URL of a database of metric tables the sweep reads."
    )
    # Secrets: from the environment, else from the Prefect Secret block named in
    # tasks/notifications.py (ml-runbooks-slack-token, ...). Never logged or shown.
    slack_token: str = Field("", description="Slack bot token; empty disables Slack.")
    slack_base_url: str = Field(
        "https://slack.com/api/", description="Slack Web API URL (slack-sdk's base_url; ends in /)."
    )
    slack_signing_secret: str = Field(
        "", description="Verifies Slack interaction requests; empty refuses them all."
    )
    slack_app_token: str = Field("", description="xapp- token for Slack Socket Mode.")
    slack_socket_mode: bool = Field(
        False,
        description="Take Slack's button presses over Socket Mode (no public URL needed); "
        "on by itself when RUNBOOKS_SLACK_APP_TOKEN is set.",
    )
    pagerduty_routing_key: str = Field("", description="PagerDuty Events v2 integration key.")
    pagerduty_url: str = Field(
        "https://events.pagerduty.com/v2/enqueue", description="PagerDuty's events endpoint."
    )
    smtp_host: str = Field("", description="SMTP server; empty disables email.")
    smtp_port: int = Field(25)
    smtp_from: str = Field("ml-runbooks@localhost")
    smtp_user: str = Field("")
    smtp_password: str = Field("")
    smtp_starttls: bool = Field(False)
    webhook_secret: str = Field("", description="HMAC-SHA256 key of the webhook channel.")

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'incidents.db'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
