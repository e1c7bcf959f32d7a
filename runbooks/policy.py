"""The policy file: severity thresholds, owners, targets and what may run without approval.

All thresholds live here, not in code. A bad file fails with the key and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

Severity = Literal["P1", "P2", "P3"]
SEVERITY_ALIASES = {"critical": "P1", "high": "P2", "medium": "P3", "low": "P3", "info": "P3"}
ACTIONS = ("route_to_previous_version", "scale_to_zero", "platform_rollback")
DEFAULT_POLICY = Path(__file__).with_name("default_policy.yaml")


class PolicyError(ValueError):
    """The policy file is wrong; the message names the key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeverityRule(_Strict):
    """One line of the runbook's severity table, e.g. P1 when f1_score is below 0.70."""

    severity: Severity
    metric: str = Field(min_length=1)
    below: float | None = None
    above: float | None = None
    drop_above: float | None = Field(
        None, gt=0, lt=1, description="Relative drop against the baseline, 0.2 = 20%."
    )

    @model_validator(mode="after")
    def _one_bound(self) -> SeverityRule:
        bounds = [b for b in (self.below, self.above, self.drop_above) if b is not None]
        if len(bounds) != 1:
            raise ValueError("give exactly one of below, above, drop_above")
        return self

    def explain(self, value: float, baseline: float | None) -> str | None:
        """The reason this rule fires for the observed value, or None when it does not."""
        if self.below is not None and value < self.below:
            return f"{self.severity} because {self.metric}={value:g} < {self.below:g}"
        if self.above is not None and value > self.above:
            return f"{self.severity} because {self.metric}={value:g} > {self.above:g}"
        if self.drop_above is not None and baseline:
            # Rounded so that a drop of exactly 20% (0.72 from 0.90) is not 20.0000001%.
            drop = round((baseline - value) / baseline, 9)
            if drop > self.drop_above:
                return (
                    f"{self.severity} because {self.metric} dropped {drop:.1%} "
                    f"(baseline {baseline:g} -> {value:g}) > {self.drop_above:.0%}"
                )
        return None


class KubernetesTarget(_Strict):
    kind: Literal["kubernetes"]
    namespace: str = "default"
    service: str = Field("{model}", description="Service whose selector picks the version.")
    app_label: str = "app"
    version_label: str = "version"
    deployment: str = Field(
        "{model}-{version}", description="Deployment name of one version, for scale_to_zero."
    )
    action: Literal["route_to_previous_version", "scale_to_zero"] = "route_to_previous_version"
    ready_timeout_seconds: float = Field(
        300,
        gt=0,
        description="How long a gradual rollback waits for a version it scales up to have "
        "all its pods ready before the Service routes to it.",
    )


class PlatformTarget(_Strict):
    """A model platform with the REST API `POST /api/v1/ml/models/{name}/rollback`."""

    kind: Literal["platform"]
    url: str = Field(min_length=1)
    name: str = "{model}"


class KServeTarget(_Strict):
    """A KServe InferenceService in Serverless mode: traffic moves by the predictor's
    canaryTrafficPercent, so only the gradual rollback applies."""

    kind: Literal["kserve"]
    namespace: str = "default"
    name: str = Field("{model}", description="InferenceService name.")


class MlflowTarget(_Strict):
    """A model served from MLflow's registry by alias: the immediate rollback moves the
    alias back to the previous version, which the serving side picks up."""

    kind: Literal["mlflow"]
    url: str = Field(min_length=1, description="MLflow tracking server.")
    name: str = Field("{model}", description="Registered model name; {model} is filled.")
    alias: str = Field("champion", description="The alias that marks the serving version.")


Target = Annotated[
    KubernetesTarget | PlatformTarget | KServeTarget | MlflowTarget, Field(discriminator="kind")
]


class Recovery(_Strict):
    """What 'recovered' means for the verification step."""

    metric: str = "model_f1_score"
    above: float | None = 0.70
    below: float | None = None
    source: Literal["exposition", "prometheus"] = "exposition"
    url: str = Field("", description="Scrape URL or Prometheus base URL; {model} is filled.")
    # The seeds' verification: look every 30 s for 10 minutes.
    timeout_seconds: float = Field(600, gt=0, description="How long to wait for recovery.")
    interval_seconds: float = Field(30, gt=0, description="Seconds between readings.")
    consecutive: int = Field(2, ge=1, description="Readings in a row that must pass.")
    worse_by: float = Field(
        0.05,
        ge=0,
        description="Undo the action when the metric reads this much worse than just "
        "before it, `consecutive` times in a row.",
    )


class Rollout(_Strict):
    """How a gradual rollback shifts traffic back and judges each step (checks/rollout.py)."""

    # The seed's gradual rollback: half the traffic, then all of it.
    steps: list[int] = Field(
        default_factory=lambda: [50, 100],
        min_length=1,
        description="Percent of traffic on the version rolled back to, step by step; the "
        "last must be 100.",
    )
    window_seconds: float = Field(
        60, gt=0, description="How long each step serves before it is judged."
    )
    min_samples: int = Field(
        100,
        ge=1,
        description="Rows (TP + FP + FN) needed on each side before a step is judged; "
        "fewer is inconclusive and pauses for a human.",
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="Significance of the step's test.")

    @field_validator("steps")
    @classmethod
    def _steps_rise_to_100(cls, steps: list[int]) -> list[int]:
        if any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError(f"steps must rise strictly within 1..100, e.g. [50, 100]; got {steps}")
        if steps[-1] != 100:
            raise ValueError(f"the last step must be 100 (all traffic back), got {steps}")
        return steps


class Business(_Strict):
    """What the model is worth: orders incidents and bounds automatic rollback."""

    revenue_per_hour: float = Field(0, ge=0, description="Revenue the model drives, per hour.")
    users: int = Field(0, ge=0, description="Users who see its predictions.")
    tier: Literal["critical", "high", "medium", "low"] = "medium"


class Registry(_Strict):
    """Where the model's versions live (MLflow's REST API)."""

    name: str = Field("{model}", description="Registered model name; {model} is filled.")
    aliases: list[str] = Field(
        default_factory=lambda: ["champion", "production"],
        description="Aliases that mark the serving version, first match wins.",
    )


class ModelPolicy(_Strict):
    owners: list[str] = Field(default_factory=list)
    service_owner: str = Field("", description="Who runs the serving service; paged first.")
    team: str = ""
    skills: list[str] = Field(
        default_factory=list, description="Skills an incident on this model needs."
    )
    target: Target | None = None
    recovery: Recovery = Field(default_factory=Recovery)
    rollout: Rollout = Field(default_factory=Rollout)
    business: Business = Field(default_factory=Business)
    registry: Registry = Field(default_factory=Registry)
    approvers: dict[Severity, list[str]] = Field(
        default_factory=dict,
        description="Who may approve this model's actions, per severity; replaces "
        "approval.approvers for the severities it names.",
    )


# Words in an approvers list that name a role rather than a person.
APPROVER_ROLES = ("owners", "oncall", "service_owner", "team_lead")


class ApprovalPolicy(_Strict):
    automatic: dict[Severity, list[str]] = Field(
        default_factory=lambda: {"P1": ["containment"], "P2": [], "P3": []},
        description="Per severity, the action classes that run without a human.",
    )
    timeout_seconds: float = Field(900, gt=0)
    on_timeout: Literal["escalate", "apply"] = Field(
        "escalate",
        description="When nobody answers in time: escalate (keep the safe state, call a "
        "human) or apply (take the action, as the safe default for this team).",
    )
    approvers: dict[Severity, list[str]] = Field(
        default_factory=lambda: {s: ["owners", "oncall"] for s in ("P1", "P2", "P3")},
        description="Who may approve, per severity: names, or the roles "
        "owners / oncall / service_owner / team_lead.",
    )


class Remediation(_Strict):
    cooldown_seconds: float = Field(600, ge=0)
    lock_lease_seconds: float = Field(
        120,
        gt=0,
        description="A run renews the model's lock while it lives; a crashed run's lock "
        "is free this long after its last renewal.",
    )
    lock_wait_seconds: float = Field(
        300, ge=0, description="How long a second incident of a model waits for its lock."
    )


class Grouping(_Strict):
    by: list[str] = Field(
        default_factory=lambda: ["model", "type"],
        description="Alerts with equal values join one open incident. Names are labels, "
        "or model / type / category as triage classifies them.",
    )
    fingerprint_labels: list[str] = Field(
        default_factory=list,
        description="Labels that make an alert's identity; empty means all of them.",
    )
    window_seconds: float = Field(
        3600, gt=0, description="An incident takes new alerts this long after its last one."
    )
    min_alerts: int = Field(1, ge=1, description="Open (start a runbook) only at N alerts.")


class LabelNames(_Strict):
    """The alert conventions, renamable for a team whose alerts say it differently."""

    model: list[str] = Field(default_factory=lambda: ["model", "model_name", "deployment"])
    metric: str = "metric"
    feature: str = "feature"
    value: str = "value"
    baseline: str = "baseline"
    confidence: str = "confidence"


class Suppression(_Strict):
    min_confidence: float = Field(
        0.0, ge=0, le=1, description="Alerts less sure than this are recorded, not acted on."
    )
    maintenance_windows: list[dict] = Field(
        default_factory=list, description="See docs/policy.md; checked by check-config."
    )
    inhibit_rules: list[dict] = Field(default_factory=list)
    _rules: list | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _valid(self) -> Suppression:
        # Parsed here so that check-config reports a bad window or rule by its index.
        from runbooks import suppression as sup

        for i, w in enumerate(self.maintenance_windows):
            try:
                sup.MaintenanceWindow.model_validate({"created_by": "policy", **w})
            except (ValidationError, sup.SuppressionError) as err:
                raise ValueError(f"maintenance_windows[{i}]: {_short(err)}") from None
        for i, r in enumerate(self.inhibit_rules):
            try:
                sup.InhibitRule.model_validate(r)
            except (ValidationError, sup.SuppressionError) as err:
                raise ValueError(f"inhibit_rules[{i}]: {_short(err)}") from None
        return self

    def windows(self) -> list:
        from runbooks.suppression import MaintenanceWindow

        return [
            MaintenanceWindow.model_validate({"created_by": "policy", "id": f"policy-{i}", **w})
            for i, w in enumerate(self.maintenance_windows)
        ]

    def rules(self) -> list:
        from runbooks.suppression import InhibitRule

        # Parsed once: the intake asks on every post.
        if self._rules is None:
            self._rules = [InhibitRule.model_validate(r) for r in self.inhibit_rules]
        return list(self._rules)


class Criticality(_Strict):
    """Weights of the score that orders incidents of one severity (they need not sum to 1)."""

    business_impact: float = Field(0.35, ge=0)
    technical_severity: float = Field(0.30, ge=0)
    urgency: float = Field(0.20, ge=0)
    confidence: float = Field(0.15, ge=0)
    revenue_reference: float = Field(
        10_000, gt=0, description="Revenue per hour that counts as full business impact."
    )
    users_reference: int = Field(1_000_000, gt=0)


class Deadlines(_Strict):
    """Response SLAs in minutes."""

    triage: float = Field(gt=0)
    investigation: float = Field(gt=0)
    resolution: float = Field(gt=0)


class EscalationStep(_Strict):
    after_minutes: float = Field(ge=0)
    who: str = Field(min_length=1)


class Routing(_Strict):
    oncall: list[str] = Field(
        default_factory=list, description="The rotation, one person per ISO week in turn."
    )
    skills: dict[str, list[str]] = Field(
        default_factory=dict, description="person -> skills, for the skill match."
    )
    team_leads: dict[str, str] = Field(default_factory=dict, description="team -> lead.")
    escalation: list[EscalationStep] = Field(
        default_factory=lambda: [
            EscalationStep(after_minutes=0, who="oncall"),
            EscalationStep(after_minutes=30, who="team_lead"),
            EscalationStep(after_minutes=60, who="engineering_manager"),
            EscalationStep(after_minutes=120, who="vp_engineering"),
        ]
    )
    compliance_officer: str = "compliance-officer"
    security_team: str = "security-team"
    channels: dict[Severity, list[str]] = Field(
        default_factory=lambda: {
            "P1": ["#ml-incidents", "pagerduty"],
            "P2": ["#ml-incidents"],
            "P3": ["#ml-alerts"],
        }
    )
    deadlines: dict[Severity, Deadlines] = Field(
        default_factory=lambda: {
            "P1": Deadlines(triage=5, investigation=10, resolution=120),
            "P2": Deadlines(triage=15, investigation=30, resolution=480),
            "P3": Deadlines(triage=60, investigation=240, resolution=1440),
        }
    )


class Person(_Strict):
    """How to reach someone the policy names (owners, on-call, approvers, escalation)."""

    slack: str = Field("", description="Slack user id (U...), for mentions and buttons.")
    email: str = ""


class Notifications(_Strict):
    """How messages go out. Channels per severity are routing.channels: "#name" is a Slack
    channel, "email" the assignee's and email_to's addresses, "pagerduty", "webhook"."""

    update_minutes: float = Field(
        30, ge=0, description="Post an update to the incident's thread this often; 0: never."
    )
    email_to: list[str] = Field(
        default_factory=list, description="Addresses the email channel always includes."
    )
    webhook_url: str = Field("", description="Where the webhook channel posts (JSON, signed).")
    fallback: dict[str, str] = Field(
        default_factory=lambda: {"slack": "email"},
        description="channel kind -> the kind used when it fails (slack, email, pagerduty, "
        "webhook).",
    )
    attempts: int = Field(4, ge=1, description="Tries per message before the fallback.")
    backoff_seconds: float = Field(1.0, ge=0, description="First wait between tries; doubles.")
    prefect_ui_url: str = Field(
        "", description="Prefect UI base URL for run links; empty: from PREFECT_UI_URL."
    )
    incident_url: str = Field(
        "", description="Link to an incident, {id} filled; empty: the intake's API URL."
    )


class Lifecycle(_Strict):
    """After resolution: reopening and closing."""

    reopen_window_minutes: float = Field(
        60,
        ge=0,
        description="A resolved incident whose group fires again within this many minutes "
        "is reopened instead of a new one opened; 0 never reopens.",
    )
    close_after_days: float = Field(
        7,
        gt=0,
        description="A resolved incident closes by itself after this many days when nobody "
        "accepted its post-mortem.",
    )


class ActionItemTemplate(_Strict):
    title: str = Field(min_length=1, description="What to do; {model} is filled.")
    owner: str = Field(
        "{assignee}", description="Who: a name, or {assignee} / {owner} of the incident."
    )
    due_days: float = Field(7, gt=0, description="Due this many days after resolution.")


def _default_action_items() -> dict[str, list[ActionItemTemplate]]:
    t = ActionItemTemplate
    return {
        "feature_drift": [
            t(title="Add a drift check on the drifted features of {model} to the sweep"),
            t(title="Retrain {model} on recent data or document why not", due_days=14),
        ],
        "data_quality": [
            t(title="Add a Great Expectations expectation for the broken column"),
            t(title="Alert the feature pipeline's owner on null rates", owner="{owner}"),
        ],
        "bad_deployment": [
            t(title="Add the failing slice to {model}'s pre-release evaluation"),
            t(title="Gate releases of {model} on a canary step", due_days=14),
        ],
        "infrastructure": [
            t(title="Add capacity or autoscaling for {model}'s serving", owner="{owner}"),
        ],
        "default": [
            t(title="Establish the root cause of this incident and label it", due_days=3),
            t(title="Add a check that would have caught it earlier"),
        ],
    }


class PostmortemPolicy(_Strict):
    action_items: dict[str, list[ActionItemTemplate]] = Field(
        default_factory=_default_action_items,
        description="Root cause -> the post-mortem's action items; `default` for a cause "
        "not listed or not established.",
    )


class Audits(_Strict):
    """The scheduled reviews (flows/audits.py)."""

    stale_model_days: float = Field(
        90, gt=0, description="A model with no registration or change in this long is stale."
    )
    silence_unused_days: float = Field(
        30, gt=0, description="A silence that matched no alert in this long is listed."
    )
    silence_forever_days: float = Field(
        365, gt=0, description="A silence ending further out than this never expires, in effect."
    )
    fairness_attribute: str = Field(
        "segment", description="The column of the predictions the fairness audit groups by."
    )
    fairness_predictions: str = Field(
        "",
        description="Where the month's predictions are (a CSV path, or a directory of "
        "them); empty skips the fairness audit with a line saying so.",
    )


class Strategy(_Strict):
    revenue_at_risk_bound: float = Field(
        5_000,
        ge=0,
        description="Revenue per hour above which accuracy loss rolls back at once.",
    )


class Enrichment(_Strict):
    mlflow_url: str = Field("", description="MLflow tracking server; empty skips the registry.")
    kubernetes_history: bool = Field(
        True, description="Read the rollout history of Kubernetes targets."
    )
    timeout_seconds: float = Field(3, gt=0)


class InfraRule(_Strict):
    """When a service metric points at infrastructure: high, and risen since the onset."""

    level: float = Field(description="Its median after the onset is above this...")
    ratio: float = Field(
        gt=0, description="...and at least this many times its median before the onset."
    )


_Fraction = Annotated[float, Field(gt=0, lt=1)]


class Sweep(_Strict):
    """Fixed thresholds of the checks that run without the severity table:
    `tasks.sweep_sources.sweep` / `checks.sweep.fixed_rules` (the monitoring-sweep flow
    judges with `severity`) and the service-metric evidence of `checks.diagnose`."""

    f1_floor_p1: float = Field(0.70, description="P1 when f1 is below this.")
    drop_p1: dict[str, _Fraction] = Field(
        default_factory=lambda: {"f1": 0.20},
        description="P1 when a metric drops more than this below its baseline, per metric "
        "(0.2 = 20%).",
    )
    drop_p2: dict[str, _Fraction] = Field(
        default_factory=lambda: {"f1": 0.10, "precision": 0.15, "recall": 0.15, "auc": 0.10},
        description="P2 when a metric drops more than this below its baseline, per metric.",
    )
    latency_p99_seconds_p2: float = Field(
        2.0, description="P2 when latency_p99_seconds is above this."
    )
    error_rate_p1: float = Field(0.10, description="P1 when error_rate is above this.")
    freshness_seconds: float = Field(
        3600,
        gt=0,
        description="Features older than this are stale: P2 when feature_freshness_seconds "
        "is above it; in a diagnosis, stale_features evidence when its median after the "
        "onset is above it and twice the median before.",
    )
    psi_p3: float = Field(0.2, description="P3 when a feature's psi is above this.")
    psi_p2: float = Field(0.3, description="P2 when a feature's psi is above this.")
    null_rate_p3: float = Field(0.05, description="P3 when a feature's null_rate is above this.")
    null_rate_p2: float = Field(0.10, description="P2 when a feature's null_rate is above this.")
    infrastructure: dict[str, InfraRule] = Field(
        default_factory=lambda: {
            "latency_p99_seconds": InfraRule(level=2.0, ratio=2.0),
            "error_rate": InfraRule(level=0.05, ratio=3.0),
            "cpu_utilization": InfraRule(level=0.9, ratio=1.5),
            "memory_utilization": InfraRule(level=0.9, ratio=1.5),
        },
        description="In a diagnosis, the service metrics that point at infrastructure and "
        "when; a metric not named here is not taken as infrastructure evidence.",
    )


class Policy(_Strict):
    severity: list[SeverityRule] = Field(min_length=1)
    default_severity: Severity = "P3"
    approval: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    remediation: Remediation = Field(default_factory=Remediation)
    grouping: Grouping = Field(default_factory=Grouping)
    labels: LabelNames = Field(default_factory=LabelNames)
    suppression: Suppression = Field(default_factory=Suppression)
    criticality: Criticality = Field(default_factory=Criticality)
    routing: Routing = Field(default_factory=Routing)
    strategy: Strategy = Field(default_factory=Strategy)
    enrichment: Enrichment = Field(default_factory=Enrichment)
    people: dict[str, Person] = Field(
        default_factory=dict, description="name -> how to reach them (Slack id, email)."
    )
    notifications: Notifications = Field(default_factory=Notifications)
    sweep: Sweep = Field(
        default_factory=Sweep,
        description="Fixed thresholds of the policy-free sweep helper and of diagnose.",
    )
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    postmortem: PostmortemPolicy = Field(default_factory=PostmortemPolicy)
    audits: Audits = Field(default_factory=Audits)
    defaults: ModelPolicy = Field(default_factory=ModelPolicy)
    models: dict[str, ModelPolicy] = Field(default_factory=dict)

    def for_model(self, model: str) -> ModelPolicy:
        """The model's own block, or the defaults with {model} filled in."""
        return self.models.get(model, self.defaults)

    def person_of_slack_user(self, user_id: str) -> str | None:
        """The policy's name for a Slack user id (a button press), or None if unknown."""
        return next((n for n, p in self.people.items() if p.slack and p.slack == user_id), None)

    def needs_approval(self, severity: str, action_class: str) -> bool:
        sev = normalize_severity(severity) or self.default_severity
        return action_class not in self.approval.automatic.get(sev, [])


def normalize_severity(value: str | None) -> Severity | None:
    if not value:
        return None
    upper = value.strip().upper()
    if upper in ("P1", "P2", "P3"):
        return upper  # type: ignore[return-value]
    return SEVERITY_ALIASES.get(value.strip().lower())  # type: ignore[return-value]


def _short(err: Exception) -> str:
    if isinstance(err, ValidationError):
        return _describe(err)
    return str(err)


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) else f", got {got!r}"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "is not a known key; check its spelling against docs/policy.md"
        lines.append(f"{key}: {msg}{shown}")
    return "; ".join(lines)


def parse_policy(data: object, source: str = "policy") -> Policy:
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: the top level must be a mapping with a 'severity' list")
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        raise PolicyError(f"{source}: {_describe(err)}") from None


def load_policy(path: Path | str | None = None) -> Policy:
    p = Path(path) if path else DEFAULT_POLICY
    try:
        text = p.read_text()
    except OSError as err:
        raise PolicyError(f"cannot read policy file {p}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PolicyError(f"{p}: not valid YAML: {err}") from None
    return parse_policy(data, str(p))
