"""Who answers an incident, by when, and in what order incidents of a severity are worked.

Assignee: the service owner, then the model's owner, then someone with the skill the
incident needs, then whoever is on call this week. The criticality score (0-100) orders
incidents of one severity; both come with their reasons for the timeline.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from runbooks.policy import ModelPolicy, Policy
from runbooks.taxonomy import Classification

SKILL_OF_CATEGORY = {
    "model_performance": "ml",
    "data_quality": "data-engineering",
    "infrastructure": "platform",
    "bias_fairness": "responsible-ai",
    "security": "security",
    "compliance": "compliance",
    "business_impact": "ml",
    "training": "ml",
}
TECHNICAL = {"P1": 1.0, "P2": 0.6, "P3": 0.3}


@dataclass
class Route:
    assignee: str | None
    why: str
    backups: list[str] = field(default_factory=list)
    escalation: list[dict[str, Any]] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    deadlines: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def oncall_now(policy: Policy, now: datetime) -> str | None:
    rota = policy.routing.oncall
    if not rota:
        return None
    year, week, _ = now.isocalendar()
    return rota[(year * 53 + week) % len(rota)]


def route(
    severity: str,
    c: Classification,
    model: ModelPolicy,
    policy: Policy,
    opened_at: datetime,
    now: datetime,
) -> Route:
    r = policy.routing
    skill = SKILL_OF_CATEGORY.get(c.category)
    skilled = [
        p for p, skills in r.skills.items() if skill in skills or set(skills) & set(model.skills)
    ]
    oncall = oncall_now(policy, now)
    candidates: list[tuple[str | None, str]] = [
        (model.service_owner or None, "service owner"),
        (model.owners[0] if model.owners else None, "model owner"),
        (skilled[0] if skilled else None, f"has skill {skill}"),
        (oncall, "on call this week"),
    ]
    assignee, why = next(((who, w) for who, w in candidates if who), (None, "nobody"))
    if assignee is None:
        why = "no service owner, model owner, skill match or on-call rotation in the policy"
    people = [p for p in [*model.owners, *skilled, oncall] if p and p != assignee]
    backups = list(dict.fromkeys(people))
    escalation = escalation_chain(c.type, model, policy, oncall or assignee)
    sla = r.deadlines.get(severity)  # type: ignore[call-overload]
    deadlines = {}
    if sla is not None:
        for step in ("triage", "investigation", "resolution"):
            deadlines[step] = (opened_at + timedelta(minutes=getattr(sla, step))).isoformat()
    channels = list(r.channels.get(severity, []))  # type: ignore[call-overload]
    return Route(assignee, why, backups, escalation, channels, deadlines)


# The policy's role words as a timeline line says them ("escalated to rita (team lead)").
ROLES = {"oncall": "on call", "team_lead": "team lead"}


def escalation_chain(
    incident_type: str | None, model: ModelPolicy, policy: Policy, oncall: str | None
) -> list[dict[str, Any]]:
    """The policy's chain with its roles resolved to names: on call, the team lead of the
    model's team, then the steps the policy names as they are; the compliance officer or
    the security team right after the first step for their incident types."""
    r = policy.routing
    names = {"oncall": oncall, "team_lead": r.team_leads.get(model.team)}
    chain = [
        {
            "after_minutes": s.after_minutes,
            "who": names.get(s.who) or s.who,
            "role": ROLES.get(s.who, s.who.replace("_", " ")),
        }
        for s in r.escalation
    ]
    if incident_type == "compliance":
        chain.insert(
            1, {"after_minutes": 0, "who": r.compliance_officer, "role": "compliance officer"}
        )
    if incident_type == "security":
        chain.insert(1, {"after_minutes": 0, "who": r.security_team, "role": "security team"})
    return chain


@dataclass
class Score:
    value: float
    parts: dict[str, float]
    reason: str


def criticality(
    severity: str,
    c: Classification,
    model: ModelPolicy,
    policy: Policy,
    alerts: int,
    magnitude: float | None,
    confidence: float | None,
) -> Score:
    """0-100: business impact, technical severity, urgency, confidence, weighted by policy.

    magnitude is how far past its bound the metric went, as a fraction (0.1 = 10% past).
    """
    w = policy.criticality
    b = model.business
    revenue = math.log1p(b.revenue_per_hour) / math.log1p(w.revenue_reference)
    users = math.log1p(b.users) / math.log1p(w.users_reference)
    tier = {"critical": 1.0, "high": 0.75, "medium": 0.5, "low": 0.25}[b.tier]
    business = min(1.0, max(revenue, users, tier if not (revenue or users) else 0.0))
    technical = TECHNICAL.get(severity, 0.3)
    if magnitude is not None:
        technical = min(1.0, technical + min(0.3, max(0.0, magnitude)))
    # More alerts in the group means more of the model is hurting, and sooner.
    urgency = min(1.0, {"P1": 0.7, "P2": 0.4, "P3": 0.2}.get(severity, 0.2) + 0.1 * (alerts - 1))
    sure = 0.8 if confidence is None else confidence
    parts = {
        "business_impact": round(business, 3),
        "technical_severity": round(technical, 3),
        "urgency": round(urgency, 3),
        "confidence": round(sure, 3),
    }
    weights = {
        "business_impact": w.business_impact,
        "technical_severity": w.technical_severity,
        "urgency": w.urgency,
        "confidence": w.confidence,
    }
    total = sum(weights.values()) or 1.0
    value = round(100 * sum(parts[k] * weights[k] for k in parts) / total, 1)
    shown = ", ".join(f"{k} {v:.2f}x{weights[k]:g}" for k, v in parts.items())
    return Score(value, parts, f"criticality {value:.1f}/100 ({shown})")
