"""The post-mortem: the runbook's last step, from the incident's timeline to the report.

`gather()` reads what the report needs with a few queries (the alerts as counts per name,
never 10,000 rows; the timeline, the actions, the approvals, the deadline notices and the
root-cause labels); `build()` is a pure function of those facts, the policy and the
clock, so it is the same whether the flow drafts it on resolution or the API builds it on
the spot for an active incident.

- metrics: `runbooks.metrics.response_times`, the one definition the report shares.
- root cause: the latest person's label (`RootCauseLabel`) over the diagnosis
  (`context["diagnosis"]`, when an investigation stored one); neither is "not
  established", and the post-mortem lists what evidence there is instead.
- went well / went badly: each deadline routed on the incident (runbooks/escalation.py)
  met or missed, acknowledged before the chain went past the first person, contained
  without a person's approval or not.
- action items: the policy's templates for the cause (`postmortem.action_items`), due a
  number of days after resolution.
- business impact: the model's revenue per hour times the hours it lasted.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlmodel import Session, col, func, select

from runbooks import escalation
from runbooks.escalation import NoSuchIncident
from runbooks.metrics import response_times
from runbooks.models import (
    Action,
    Alert,
    Approval,
    Incident,
    IncidentNotice,
    IncidentStatus,
    RootCauseLabel,
    TimelineEvent,
)
from runbooks.policy import Policy

NOT_ESTABLISHED = "not established"


# The facts: what gather() reads -----------------------------------------------------------


class TimelineRow(BaseModel):
    at: datetime
    actor: str
    kind: str
    message: str


class ActionFact(BaseModel):
    kind: str
    target: str
    status: str
    dry_run: bool = False
    started_at: datetime | None = None


class ApprovalFact(BaseModel):
    action: str
    status: str
    decided_by: str | None = None


class Facts(BaseModel):
    timeline: list[TimelineRow] = Field(default_factory=list)
    alerts: int = 0
    alerts_firing: int = 0
    alertnames: dict[str, int] = Field(default_factory=dict, description="name -> alerts")
    first_alert_at: datetime | None = None
    actions: list[ActionFact] = Field(default_factory=list)
    approvals: list[ApprovalFact] = Field(default_factory=list)
    notices: list[str] = Field(default_factory=list, description="IncidentNotice keys")


def gather(session: Session, incident_id: int) -> tuple[Incident, Facts, list[RootCauseLabel]]:
    """The incident, its facts and its labels (oldest first), in seven small queries."""
    incident = session.get(Incident, incident_id)
    if incident is None:
        raise NoSuchIncident(f"no incident {incident_id}; list them at /api/v1/incidents")
    of = Alert.incident_id == incident_id
    counts = session.exec(
        select(Alert.alertname, func.count(), func.min(Alert.starts_at))
        .where(of)
        .group_by(Alert.alertname)
    ).all()
    firing = session.exec(
        select(func.count()).select_from(Alert).where(of, Alert.status == "firing")
    ).one()
    timeline = session.exec(
        select(TimelineEvent.at, TimelineEvent.actor, TimelineEvent.kind, TimelineEvent.message)
        .where(TimelineEvent.incident_id == incident_id)
        .order_by(col(TimelineEvent.at), col(TimelineEvent.id))
    ).all()
    actions = session.exec(
        select(Action.kind, Action.target, Action.status, Action.dry_run, Action.started_at)
        .where(Action.incident_id == incident_id)
        .order_by(col(Action.id))
    ).all()
    approvals = session.exec(
        select(Approval.action, Approval.status, Approval.decided_by)
        .where(Approval.incident_id == incident_id)
        .order_by(col(Approval.id))
    ).all()
    notices = session.exec(
        select(IncidentNotice.key).where(IncidentNotice.incident_id == incident_id)
    ).all()
    labels = session.exec(
        select(RootCauseLabel)
        .where(RootCauseLabel.incident_id == incident_id)
        .order_by(col(RootCauseLabel.at), col(RootCauseLabel.id))
    ).all()
    starts = [c[2] for c in counts if c[2] is not None]
    facts = Facts(
        timeline=[TimelineRow(at=a, actor=b, kind=k, message=m) for a, b, k, m in timeline],
        alerts=sum(c[1] for c in counts),
        alerts_firing=firing,
        alertnames={name: n for name, n, _ in sorted(counts, key=lambda c: (-c[1], c[0]))},
        first_alert_at=min(starts, default=None),
        actions=[
            ActionFact(kind=k, target=t, status=s, dry_run=d, started_at=at)
            for k, t, s, d, at in actions
        ],
        approvals=[ApprovalFact(action=a, status=s, decided_by=b) for a, s, b in approvals],
        notices=list(notices),
    )
    return incident, facts, list(labels)


# The report -------------------------------------------------------------------------------


class Summary(BaseModel):
    incident_id: int
    model: str
    title: str
    severity: str | None
    type: str | None
    category: str | None
    status: str
    opened_at: datetime
    resolved_at: datetime | None
    duration_seconds: float = Field(description="To resolution; to now while active.")
    assignee: str | None
    strategy: str | None
    alerts: int
    what_was_done: list[str]


class RootCause(BaseModel):
    established: bool
    root_cause: str = Field(description="The cause, or 'not established'.")
    component: str = ""
    confidence: float | None = None
    labeled_by: str | None = Field(None, description="Who labelled it; None: the diagnosis.")
    comment: str = ""
    diagnosis: dict[str, Any] | None = None
    diagnosis_agrees: bool | None = Field(
        None, description="The diagnosis's cause equals the label's (both present)."
    )
    evidence: list[str] = Field(default_factory=list)


class Why(BaseModel):
    question: str
    answer: str
    established: bool


class DeadlineResult(BaseModel):
    step: str
    due_at: datetime
    outcome: Literal["met", "missed", "pending"]
    detail: str


class ActionItem(BaseModel):
    title: str
    owner: str
    due: str | None = Field(description="ISO date: resolution + due_days; None while active.")


class BusinessImpact(BaseModel):
    revenue_per_hour: float
    duration_hours: float
    duration_from: str = Field(description="time_to_resolve, or now - opened while active.")
    estimated_loss: float


class PostMortem(BaseModel):
    incident_id: int
    generated_at: datetime
    final: bool = Field(description="The incident is resolved or closed: no more will happen.")
    summary: Summary
    timeline: list[TimelineRow]
    root_cause: RootCause
    five_whys: list[Why]
    deadlines: list[DeadlineResult]
    went_well: list[str]
    went_badly: list[str]
    action_items: list[ActionItem]
    metrics: dict[str, float | None] = Field(description="runbooks.metrics.response_times")
    business_impact: BusinessImpact

    def to_markdown(self) -> str:
        s = self.summary
        out = [
            f"# Post-mortem: incident {self.incident_id}, {s.model}: {_cell(s.title)}",
            "",
            f"{'Final' if self.final else 'Draft (the incident is still ' + s.status + ')'}, "
            f"generated {self.generated_at:%Y-%m-%d %H:%M:%SZ}.",
            "",
            "## Summary",
            "",
            f"- model: {s.model}; severity {s.severity or '-'}; type {s.type or '-'}"
            f" ({s.category or '-'}); status {s.status}",
            f"- opened {s.opened_at:%Y-%m-%d %H:%M:%SZ}; "
            + (f"resolved {s.resolved_at:%Y-%m-%d %H:%M:%SZ}" if s.resolved_at else "not resolved")
            + f"; lasted {_duration(s.duration_seconds)}",
            f"- assignee: {s.assignee or 'nobody'}; strategy: {s.strategy or '-'}; "
            f"{s.alerts} alert(s)",
            f"- what was done: {'; '.join(s.what_was_done) or 'nothing'}",
            "",
            "## Metrics",
            "",
            "| metric | value |",
            "|---|---|",
            *(
                f"| {k} | {_duration(v) if v is not None else '-'} |"
                for k, v in self.metrics.items()
            ),
            "",
            "## Business impact",
            "",
            f"{self.business_impact.revenue_per_hour:,.2f} per hour x "
            f"{self.business_impact.duration_hours:.2f} h ({self.business_impact.duration_from}) "
            f"= {self.business_impact.estimated_loss:,.2f}",
            "",
            "## Root cause",
            "",
        ]
        rc = self.root_cause
        if rc.established:
            who = f"labelled by {rc.labeled_by}" if rc.labeled_by else "from the diagnosis"
            conf = f", confidence {rc.confidence:.0%}" if rc.confidence is not None else ""
            out.append(
                f"**{rc.root_cause}** ({rc.component or 'component not named'}; {who}{conf})"
            )
            if rc.comment:
                out.append(f"\n{rc.comment}")
            if rc.diagnosis_agrees is not None:
                out.append(f"\nThe diagnosis {'agrees' if rc.diagnosis_agrees else 'disagrees'}.")
        else:
            out.append("**Not established**: no diagnosis and no person's label. The evidence:")
        out += ["", "Evidence:", "", *(f"- {_cell(e)}" for e in rc.evidence or ["none"])]
        out += ["", "## Five whys", ""]
        out += [f"{n}. {w.question} {w.answer}" for n, w in enumerate(self.five_whys, 1)]
        out += [
            "",
            "## Deadlines",
            "",
            "| deadline | due | outcome | detail |",
            "|---|---|---|---|",
        ]
        out += [
            f"| {d.step} | {d.due_at:%Y-%m-%d %H:%M:%SZ} | {d.outcome} | {_cell(d.detail)} |"
            for d in self.deadlines
        ]
        out += ["", "## What went well", "", *(f"- {w}" for w in self.went_well or ["-"])]
        out += ["", "## What went badly", "", *(f"- {w}" for w in self.went_badly or ["-"])]
        out += ["", "## Action items", "", "| item | owner | due |", "|---|---|---|"]
        out += [f"| {_cell(a.title)} | {a.owner} | {a.due or '-'} |" for a in self.action_items]
        out += ["", "## Timeline", "", "| at | actor | kind | message |", "|---|---|---|---|"]
        out += [
            f"| {t.at:%Y-%m-%d %H:%M:%SZ} | {t.actor} | {t.kind} | {_cell(t.message)} |"
            for t in self.timeline
        ]
        return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def redraft(session: Session, incident_id: int, policy: Policy, now: datetime) -> bool:
    """Write the stored post-mortem again from the store as it is now (a label given after
    the resolution changes its root cause and action items). An accepted one stays as it
    was accepted; an incident without one has nothing to redraft. True when rewritten."""
    session.flush()
    incident, facts, labels = gather(session, incident_id)
    if incident.postmortem is None or incident.postmortem_accepted_by is not None:
        return False
    incident.postmortem = build(incident, facts, labels, policy, now).model_dump(mode="json")
    session.add(incident)
    return True


def build(
    incident: Incident, facts: Facts, labels: list[RootCauseLabel], policy: Policy, now: datetime
) -> PostMortem:
    """The post-mortem of the incident as the facts stand at `now` (see the module)."""
    final = incident.status in (IncidentStatus.RESOLVED, IncidentStatus.CLOSED)
    metrics = response_times(incident)
    end = incident.resolved_at if incident.resolved_at else now
    duration = metrics["time_to_resolve"]
    if duration is None:
        duration = max(0.0, (end - incident.opened_at).total_seconds())
    done = _what_was_done(facts)
    root = _root_cause(incident, facts, labels)
    deadlines = _deadlines(incident, facts, policy, now)
    well, badly = _went(incident, facts, policy, deadlines)
    rph = policy.for_model(incident.model).business.revenue_per_hour
    hours = duration / 3600
    return PostMortem(
        incident_id=incident.id or 0,
        generated_at=now,
        final=final,
        summary=Summary(
            incident_id=incident.id or 0,
            model=incident.model,
            title=incident.title,
            severity=incident.severity,
            type=incident.type,
            category=incident.category,
            status=incident.status,
            opened_at=incident.opened_at,
            resolved_at=incident.resolved_at,
            duration_seconds=duration,
            assignee=incident.assignee,
            strategy=incident.strategy,
            alerts=facts.alerts,
            what_was_done=done,
        ),
        timeline=facts.timeline,
        root_cause=root,
        five_whys=_five_whys(incident, facts, root, metrics, deadlines),
        deadlines=deadlines,
        went_well=well,
        went_badly=badly,
        action_items=_action_items(incident, root, policy),
        metrics=metrics,
        business_impact=BusinessImpact(
            revenue_per_hour=rph,
            duration_hours=hours,
            duration_from="time_to_resolve" if incident.resolved_at else "now - opened (active)",
            estimated_loss=rph * hours,
        ),
    )


def _what_was_done(facts: Facts) -> list[str]:
    done = [
        f"{a.kind} {a.target}: {a.status}{' (dry run)' if a.dry_run else ''}" for a in facts.actions
    ]
    done += [
        f"{a.action} {a.status}" + (f" by {a.decided_by}" if a.decided_by else "")
        for a in facts.approvals
    ]
    return done


def _root_cause(incident: Incident, facts: Facts, labels: list[RootCauseLabel]) -> RootCause:
    found = (incident.context or {}).get("diagnosis")
    diagnosis = found if isinstance(found, dict) and found.get("cause") else None
    label = max(labels, key=lambda lb: lb.at) if labels else None
    evidence = _evidence(incident, facts, diagnosis)
    if label is not None:
        return RootCause(
            established=True,
            root_cause=label.root_cause,
            component=label.component,
            confidence=label.confidence,
            labeled_by=label.labeled_by,
            comment=label.comment,
            diagnosis=diagnosis,
            diagnosis_agrees=None if diagnosis is None else diagnosis["cause"] == label.root_cause,
            evidence=evidence,
        )
    if diagnosis is not None:
        confidence = diagnosis.get("confidence")
        return RootCause(
            established=True,
            root_cause=str(diagnosis["cause"]),
            component=str(diagnosis.get("component", "")),
            confidence=float(confidence) if isinstance(confidence, int | float) else None,
            diagnosis=diagnosis,
            evidence=evidence,
        )
    return RootCause(established=False, root_cause=NOT_ESTABLISHED, evidence=evidence)


def _evidence(incident: Incident, facts: Facts, diagnosis: dict[str, Any] | None) -> list[str]:
    out = []
    if incident.category or incident.type:
        out.append(
            f"triage classified it {incident.category or '-'} / {incident.type or '-'}, "
            f"severity {incident.severity or '-'}"
        )
    out += [f"triage: {t.message}" for t in facts.timeline if t.kind == "decision"]
    if facts.alertnames:
        names = ", ".join(f"{name} x{n}" for name, n in facts.alertnames.items())
        out.append(f"alerts: {names} ({facts.alerts_firing} still firing)")
    out += [f"action: {d}" for d in _what_was_done(facts)]
    out += [f"verification: {t.message}" for t in facts.timeline if t.kind == "verify"]
    if diagnosis is not None:
        for e in diagnosis.get("evidence") or []:
            out.append(f"diagnosis: {e}")
    return out


def _five_whys(
    incident: Incident,
    facts: Facts,
    root: RootCause,
    metrics: dict[str, float | None],
    deadlines: list[DeadlineResult],
) -> list[Why]:
    def why(question: str, answer: str | None, missing: str) -> Why:
        if answer:
            return Why(question=question, answer=answer, established=True)
        return Why(question=question, answer=f"{NOT_ESTABLISHED}: {missing}", established=False)

    alerts = ", ".join(f"{name} x{n}" for name, n in facts.alertnames.items())
    reasons = [t.message for t in facts.timeline if t.kind == "decision"]
    triaged = (
        f"{incident.severity or '-'} {incident.type or '-'}: {'; '.join(reasons)}"
        if reasons or incident.type
        else None
    )
    cause = (
        f"{root.root_cause}" + (f" in {root.component}" if root.component else "")
        if root.established
        else None
    )
    detect = metrics["time_to_detect"]
    detected = (
        f"it was detected {_duration(detect)} after it began (the first alert's start)"
        if detect is not None
        else None
    )
    missed = [d.step for d in deadlines if d.outcome == "missed"]
    return [
        why("Why was an incident opened?", alerts and f"alerts fired: {alerts}", "no alert"),
        why("Why was it treated as it was?", triaged, "triage left no decision on the timeline"),
        why(
            "Why did the model misbehave?",
            cause,
            "no diagnosis and no person's label; label the root cause",
        ),
        why(
            "Why did the cause reach production?",
            root.comment or (root.diagnosis or {}).get("why"),
            "nobody has said; a label's comment says it",
        ),
        why(
            "Why was it not caught and handled sooner?",
            detected and detected + (f"; missed deadlines: {', '.join(missed)}" if missed else ""),
            "no onset recorded (no alert startsAt)",
        ),
    ]


def _deadlines(
    incident: Incident, facts: Facts, policy: Policy, now: datetime
) -> list[DeadlineResult]:
    sent = set(facts.notices)
    triaged_at = next(
        (t.at for t in facts.timeline if t.kind == "status" and t.message.startswith("open -> ")),
        None,
    )
    reached = {
        "triage": triaged_at,
        "investigation": min(
            (t for t in (incident.mitigated_at, incident.resolved_at) if t is not None),
            default=None,
        ),
        "resolution": incident.resolved_at,
    }
    out = []
    for step, due_at in escalation.deadlines(incident, policy).items():
        at = reached[step]
        notice = escalation.life_key(incident, f"deadline:{step}") in sent
        if notice or (at is not None and at > due_at) or (at is None and now > due_at):
            outcome = "missed"
            detail = f"reached {at:%H:%M:%SZ}" if at is not None else "not reached"
            detail += "; the sweep told people" if notice else ""
        elif at is not None:
            outcome = "met"
            detail = f"reached {at:%H:%M:%SZ}, {_duration((due_at - at).total_seconds())} early"
        else:
            outcome, detail = "pending", "not reached yet"
        out.append(DeadlineResult(step=step, due_at=due_at, outcome=outcome, detail=detail))
    return out


def _went(
    incident: Incident, facts: Facts, policy: Policy, deadlines: list[DeadlineResult]
) -> tuple[list[str], list[str]]:
    well: list[str] = []
    badly: list[str] = []
    for d in deadlines:
        if d.outcome == "met":
            well.append(f"met the {d.step} deadline ({d.detail})")
        elif d.outcome == "missed":
            badly.append(f"missed the {d.step} deadline ({d.detail})")
    # The first escalation: the chain going past its first person (on call, at once).
    start = escalation.started(incident)
    later = [float(s["after_minutes"]) for s in escalation.chain(incident, policy)[1:]]
    first_escalation = start + timedelta(minutes=later[0]) if later else None
    acked = incident.acknowledged_at
    if acked is None:
        badly.append("nobody acknowledged it")
    elif first_escalation is None or acked < first_escalation:
        well.append(
            f"acknowledged by {incident.acknowledged_by or 'someone'} after "
            f"{_duration((acked - start).total_seconds())}, before the first escalation"
        )
    else:
        badly.append(
            f"acknowledged by {incident.acknowledged_by or 'someone'} only after the first "
            f"escalation ({_duration((acked - start).total_seconds())})"
        )
    acted = [a for a in facts.actions if a.status in ("done", "already") and not a.dry_run]
    approved = [a for a in facts.approvals if a.status == "approved"]
    if incident.mitigated_at is not None and acted and not approved:
        well.append(
            f"contained automatically ({', '.join(a.kind for a in acted)}) in "
            f"{_duration((incident.mitigated_at - incident.opened_at).total_seconds())}"
        )
    elif incident.mitigated_at is not None and acted:
        who = ", ".join(sorted({a.decided_by or "someone" for a in approved}))
        badly.append(f"not contained automatically: it waited for the approval of {who}")
    else:
        badly.append("not contained automatically: no containment action took effect")
    return well, badly


def _action_items(incident: Incident, root: RootCause, policy: Policy) -> list[ActionItem]:
    templates = policy.postmortem.action_items
    cause = root.root_cause if root.established and root.root_cause in templates else "default"
    owners = policy.for_model(incident.model).owners
    assignee = incident.assignee or "unassigned"
    items = []
    for t in templates.get(cause, []):
        if t.owner == "{assignee}":
            owner = assignee
        elif t.owner == "{owner}":
            owner = owners[0] if owners else assignee
        else:
            owner = t.owner
        due = incident.resolved_at + timedelta(days=t.due_days) if incident.resolved_at else None
        items.append(
            ActionItem(
                title=t.title.replace("{model}", incident.model),
                owner=owner,
                due=due.date().isoformat() if due else None,
            )
        )
    return items
