"""The policy file: severity thresholds, owners, targets and what may run without approval.

All thresholds live here, not in code. A bad file fails with the key and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
            drop = (baseline - value) / baseline
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


class PlatformTarget(_Strict):
    """A model platform with the REST API `POST /api/v1/ml/models/{name}/rollback`."""

    kind: Literal["platform"]
    url: str = Field(min_length=1)
    name: str = "{model}"


Target = Annotated[KubernetesTarget | PlatformTarget, Field(discriminator="kind")]


class Recovery(_Strict):
    """What 'recovered' means for the verification step."""

    metric: str = "model_f1_score"
    above: float | None = 0.70
    below: float | None = None
    source: Literal["exposition", "prometheus"] = "exposition"
    url: str = Field("", description="Scrape URL or Prometheus base URL; {model} is filled.")
    timeout_seconds: float = Field(120, gt=0)
    interval_seconds: float = Field(2, gt=0)
    consecutive: int = Field(2, ge=1, description="Readings in a row that must pass.")


class ModelPolicy(_Strict):
    owners: list[str] = Field(default_factory=list)
    team: str = ""
    target: Target | None = None
    recovery: Recovery = Field(default_factory=Recovery)


class ApprovalPolicy(_Strict):
    automatic: dict[Severity, list[str]] = Field(
        default_factory=lambda: {"P1": ["containment"], "P2": [], "P3": []},
        description="Per severity, the action classes that run without a human.",
    )
    timeout_seconds: float = Field(900, gt=0)


class Remediation(_Strict):
    cooldown_seconds: float = Field(600, ge=0)


class Grouping(_Strict):
    by: list[str] = Field(default_factory=lambda: ["model", "alertname"])


class Policy(_Strict):
    severity: list[SeverityRule] = Field(min_length=1)
    default_severity: Severity = "P3"
    approval: ApprovalPolicy = Field(default_factory=ApprovalPolicy)
    remediation: Remediation = Field(default_factory=Remediation)
    grouping: Grouping = Field(default_factory=Grouping)
    defaults: ModelPolicy = Field(default_factory=ModelPolicy)
    models: dict[str, ModelPolicy] = Field(default_factory=dict)

    def for_model(self, model: str) -> ModelPolicy:
        """The model's own block, or the defaults with {model} filled in."""
        return self.models.get(model, self.defaults)

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
