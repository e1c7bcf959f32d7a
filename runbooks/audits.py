"""The scheduled audits' findings (flows/audits.py runs them): what each audit finds,
given the rows it read and the clock. No database, no Prefect, no files.

- weekly review: per model, the week's incidents by severity, the deadlines met and
  missed (a missed deadline is an `IncidentNotice` keyed `deadline:<step>`, `@N` in a
  reopened life), MTTA / MTTR medians (runbooks.metrics) and the metric trend.
- fairness audit: which month it judges, and the bias alert a failed finding becomes.
- model audit: the documentation and compliance checklist of each model of the policy,
  and when the incident store last saw its registry or rollout change.
- silence inventory: silences that never expire in effect, and silences that matched no
  alert received in the window (the intake's matcher semantics, runbooks/suppression.py).
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from pydantic import BaseModel, Field

from runbooks import suppression as sup
from runbooks.escalation import DEADLINES, deadlines
from runbooks.metrics import response_times
from runbooks.models import Incident
from runbooks.policy import Audits, Policy
from runbooks.strategy import RUNBOOK

NO_METRIC_SOURCE = "no metric source configured"
WEEK = timedelta(days=7)


# --- weekly review -----------------------------------------------------------------------


class ReviewRow(BaseModel):
    model: str
    incidents: int = 0
    by_severity: dict[str, int] = Field(default_factory=dict)
    deadlines_met: int = 0
    deadlines_missed: int = 0
    missed: list[str] = Field(
        default_factory=list, description='Each missed deadline, e.g. "#12 triage".'
    )
    mtta_median_seconds: float | None = None
    mttr_median_seconds: float | None = None
    trend: str = NO_METRIC_SOURCE


def _met(step: str, incident: Incident, at: datetime) -> bool:
    """Whether the incident's state shows the deadline `step` at `at` met (the
    escalation sweep's rules, runbooks/escalation.py; triage has no triaged-at time, so a
    status moved on from open counts)."""
    if step == "triage":
        return incident.status != "open"
    done = incident.resolved_at if step == "resolution" else incident.mitigated_at
    if step == "investigation" and done is None:
        done = incident.resolved_at
    return done is not None and done <= at


def deadline_outcomes(
    incident: Incident, notice_keys: Iterable[str], policy: Policy, now: datetime
) -> tuple[int, list[str]]:
    """Deadlines met, and those missed, of one incident.

    Missed: every `deadline:<step>` notice the escalation sweep claimed (each life of a
    reopened incident counts its own, "triage@1"), and a deadline of the current life
    that passed with the state showing it missed though no notice says so (the sweep was
    not running then). Met: the other deadlines of the current life that have passed. A
    deadline still ahead is neither.
    """
    missed = {k.removeprefix("deadline:") for k in notice_keys if k.startswith("deadline:")}
    life = f"@{incident.reopened_count}" if incident.reopened_count else ""
    met = 0
    for step, at in deadlines(incident, policy).items():
        if at > now or f"{step}{life}" in missed:
            continue
        if _met(step, incident, at):
            met += 1
        else:
            missed.add(f"{step}{life}")
    order = sorted(
        missed, key=lambda k: (k.partition("@")[2], DEADLINES.index(k.partition("@")[0]))
    )
    return met, order


def _median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def weekly_review(
    incidents: Sequence[Incident],
    notices: Mapping[int, Iterable[str]],
    policy: Policy,
    now: datetime,
    trends: Mapping[str, str] | None = None,
) -> list[ReviewRow]:
    """One row per model of the policy and per model with an incident opened in the
    week before `now`; `notices`: incident id -> its notice keys; `trends`: model -> its
    metric trend line (absent: no metric source configured)."""
    since = now - WEEK
    week = [i for i in incidents if since <= i.opened_at <= now]
    models = sorted({*policy.models, *(i.model for i in week)})
    rows = []
    for model in models:
        mine = [i for i in week if i.model == model]
        row = ReviewRow(model=model, trend=(trends or {}).get(model, NO_METRIC_SOURCE))
        row.incidents = len(mine)
        row.by_severity = dict(sorted(Counter(i.severity or "unset" for i in mine).items()))
        for i in mine:
            met, missed = deadline_outcomes(i, notices.get(i.id or 0, ()), policy, now)
            row.deadlines_met += met
            row.deadlines_missed += len(missed)
            row.missed += [f"#{i.id} {step}" for step in missed]
        times = [response_times(i) for i in mine]
        row.mtta_median_seconds = _median(t["time_to_acknowledge"] for t in times)
        row.mttr_median_seconds = _median(t["time_to_resolve"] for t in times)
        rows.append(row)
    return rows


def metric_trend(points: Iterable[tuple[datetime, str, float]], since: datetime) -> str:
    """Each metric's first and last reading at or after `since`, e.g.
    "f1_score 0.91 -> 0.84 (-7.7%)"; readings are (timestamp, metric, value)."""
    series: dict[str, list[tuple[datetime, float]]] = {}
    for at, metric, value in points:
        if at >= since and value == value:  # NaN is no reading
            series.setdefault(metric, []).append((at, float(value)))
    if not series:
        return f"no metric readings since {since:%Y-%m-%d}"
    parts = []
    for metric, readings in sorted(series.items()):
        readings.sort(key=lambda r: r[0])
        first, last = readings[0][1], readings[-1][1]
        change = f" ({(last - first) / first:+.1%})" if first else ""
        parts.append(f"{metric} {first:g} -> {last:g}{change}")
    return "; ".join(parts)


def duration_words(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# --- fairness audit ----------------------------------------------------------------------


def audit_month(now: datetime, month: str = "") -> tuple[datetime, datetime]:
    """The month to judge, [start, end): `month` as YYYY-MM, else the calendar month
    before `now` (the audit runs on the 1st, so the month that just ended)."""
    if month:
        try:
            start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
        except ValueError:
            raise ValueError(f"month must be YYYY-MM, e.g. 2026-11; got {month!r}") from None
    else:
        first = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        start = (first - timedelta(days=1)).replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


class FairnessFinding(Protocol):
    """What the audit reads of a `checks.findings.Finding`."""

    key: str
    passed: bool
    severity: str | None
    message: str
    observed: dict[str, Any]


def bias_alert(
    model: str, finding: FairnessFinding, attribute: str, month_start: datetime
) -> dict[str, Any]:
    """The generic alert (docs/intake.md) a failed fairness finding becomes. Its metric
    (demographic_parity_difference, equalized_odds_difference) is what the taxonomy
    classifies as bias_fairness; its start is the audited month's, so a rerun of the same
    month is a repeat the intake dedups, not a new incident."""
    measure = finding.key.removeprefix("fairness:")
    return {
        "model": model,
        "alertname": "ModelBiasDetected",
        "status": "firing",
        "metric": f"{measure}_difference",
        "value": finding.observed.get("difference"),
        "severity": finding.severity or "P2",
        "startsAt": month_start.isoformat().replace("+00:00", "Z"),
        "source": "fairness-audit",
        "labels": {"attribute": attribute},
        "annotations": {
            "summary": f"{model}: {finding.message} across {attribute} in {month_start:%Y-%m}",
        },
    }


# --- model audit -------------------------------------------------------------------------


class ModelAuditRow(BaseModel):
    model: str
    owner: str = Field(description="Owners named, or empty.")
    team: str
    target: str = Field(description="The containment target's kind, or empty.")
    runbook: str = Field(description="The runbook that can act on it, or why none.")
    by_hand: list[str] = Field(
        default_factory=list,
        description="Strategies its incidents were given that no runbook automates.",
    )
    p1_approvers: str
    recovery_check: str
    registry: str
    last_change: str = Field(
        description="ISO date of the last registry or rollout change, or unknown."
    )
    stale: str = Field(description="yes | no | unknown")
    flags: list[str] = Field(default_factory=list)


def _parse(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def last_known_change(contexts: Iterable[Mapping[str, Any] | None]) -> datetime | None:
    """The latest registry version or rollout revision date in incidents' enrichment
    contexts (runbooks/enrichment.py's `Enrichment.to_dict()`); None when none says."""
    found: list[datetime] = []
    for ctx in contexts:
        if not ctx:
            continue
        registry = ctx.get("registry") or {}
        versions = [
            registry.get("current"),
            registry.get("previous"),
            *(registry.get("recent") or []),
        ]
        for v in versions:
            if isinstance(v, Mapping):
                found += [t for t in (_parse(v.get("created")), _parse(v.get("updated"))) if t]
        for rev in (ctx.get("rollout") or {}).get("revisions") or []:
            if isinstance(rev, Mapping) and (t := _parse(rev.get("created"))):
                found.append(t)
    return max(found) if found else None


def model_audit(
    policy: Policy, incidents: Sequence[Incident], now: datetime
) -> list[ModelAuditRow]:
    """The checklist of every model the policy names; `incidents`: those the store holds
    of them (their strategies and enrichment contexts)."""
    stale_after = timedelta(days=policy.audits.stale_model_days)
    rows = []
    for model, mp in sorted(policy.models.items()):
        mine = [i for i in incidents if i.model == model]
        owners = [*mp.owners, *([mp.service_owner] if mp.service_owner else [])]
        by_hand = sorted({i.strategy for i in mine if i.strategy and not RUNBOOK.get(i.strategy)})
        if mp.target is not None:
            runbook = f"containment ({mp.target.kind})"
        else:
            runbook = "none: no target, containment cannot act"
        default = policy.approval.approvers.get("P1") or []
        if mp.approvers.get("P1"):
            approvers = ", ".join(mp.approvers["P1"])
        else:
            approvers = f"policy default: {', '.join(default)}" if default else ""
        recovery = f"{mp.recovery.metric} via {mp.recovery.source}" if mp.recovery.url else ""
        changed = last_known_change(i.context for i in mine)
        stale = "unknown" if changed is None else "yes" if now - changed > stale_after else "no"
        flags = []
        if not owners:
            flags.append("no owner")
        if mp.target is None:
            flags.append("no runbook")
        if by_hand:
            flags.append(f"no runbook for {', '.join(by_hand)}")
        if not approvers:
            flags.append("no P1 approvers")
        if not recovery:
            flags.append("no recovery check")
        if stale == "yes":
            flags.append(f"stale: no change in {policy.audits.stale_model_days:g} days")
        rows.append(
            ModelAuditRow(
                model=model,
                owner=", ".join(owners),
                team=mp.team,
                target=mp.target.kind if mp.target else "",
                runbook=runbook,
                by_hand=by_hand,
                p1_approvers=approvers,
                recovery_check=recovery,
                registry=mp.registry.name.replace("{model}", model),
                last_change=f"{changed:%Y-%m-%d}" if changed else "unknown",
                stale=stale,
                flags=flags,
            )
        )
    return rows


# --- silence inventory -------------------------------------------------------------------


class SilenceFinding(BaseModel):
    id: str
    matchers: str
    created_by: str
    comment: str
    ends_at: datetime
    problem: str = Field(description="never_expires | unused")
    detail: str


def silence_inventory(
    silences: Iterable[sup.Silence],
    alerts: Sequence[Mapping[str, str]],
    now: datetime,
    audits: Audits,
) -> list[SilenceFinding]:
    """Silences in effect (pending or active) that end beyond now + silence_forever_days,
    and those in effect the whole window (silence_unused_days) that matched none of the
    `alerts` (their labels) received in it. A silence younger than the window is not
    judged unused: it has not had the time to match."""
    forever = now + timedelta(days=audits.silence_forever_days)
    window_start = now - timedelta(days=audits.silence_unused_days)
    out = []
    for s in silences:
        if sup.silence_state(s, now) is sup.SilenceState.EXPIRED:
            continue
        shown = "{" + ", ".join(str(m) for m in s.matchers) + "}"
        base = {
            "id": s.id,
            "matchers": shown,
            "created_by": s.created_by,
            "comment": s.comment,
            "ends_at": s.ends_at,
        }
        if s.ends_at > forever:
            out.append(
                SilenceFinding(
                    **base,
                    problem="never_expires",
                    detail=f"ends {s.ends_at:%Y-%m-%d}, more than "
                    f"{audits.silence_forever_days:g} days from now",
                )
            )
        if s.starts_at <= window_start and not any(sup.matches(s.matchers, a) for a in alerts):
            out.append(
                SilenceFinding(
                    **base,
                    problem="unused",
                    detail=f"matched none of the {len(alerts)} alert(s) received in the last "
                    f"{audits.silence_unused_days:g} days",
                )
            )
    return out
