"""Who may approve a risky action: the policy's allow-list, resolved to people.

The runbooks say a rollback waits for "the model owner or the on-call engineer". The
policy writes that as roles (`owners`, `oncall`, `service_owner`, `team_lead`) or names,
per severity, with a model's own list replacing the default one. The same check serves
`runbooks approve`, the Prefect UI form and (later) Slack buttons.
"""

from __future__ import annotations

from datetime import datetime

from runbooks.policy import Policy, normalize_severity
from runbooks.routing import oncall_now


def approvers(policy: Policy, model: str, severity: str | None, now: datetime) -> list[str]:
    """The people who may approve an action on `model` at `severity`, in policy order."""
    sev = normalize_severity(severity) or policy.default_severity
    mp = policy.for_model(model)
    wanted = mp.approvers.get(sev, policy.approval.approvers.get(sev, []))
    people: list[str] = []
    for who in wanted:
        if who == "owners":
            people += mp.owners
        elif who == "oncall":
            people += [p for p in [oncall_now(policy, now)] if p]
        elif who == "service_owner":
            people += [mp.service_owner] if mp.service_owner else []
        elif who == "team_lead":
            lead = policy.routing.team_leads.get(mp.team)
            people += [lead] if lead else []
        else:
            people.append(who)
    return list(dict.fromkeys(p.strip() for p in people if p.strip()))


def may_approve(name: str, allowed: list[str]) -> bool:
    return name.strip().casefold() in {a.casefold() for a in allowed}


def refusal(name: str, allowed: list[str], model: str, severity: str | None) -> str:
    """The message for someone who may not approve: who may, and where that is set."""
    who = ", ".join(allowed) if allowed else "nobody (the list is empty)"
    return (
        f"{name or 'an unnamed approver'} may not approve actions on {model} at "
        f"{severity or 'this severity'}; allowed: {who}. The list is approval.approvers "
        f"(or models.{model}.approvers) in the policy."
    )
