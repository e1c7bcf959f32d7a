"""The incident report: how fast incidents were detected, acknowledged, contained and
resolved, how often the response deadlines were met, and how often the diagnosis agreed
with the root cause a person labelled; per severity and per model, over the incidents
opened in [since, until).

The response times are those of `runbooks.metrics.response_times` (the one definition):
time to detect = onset -> opened, to acknowledge = opened -> acknowledged, to contain =
opened -> mitigated, to resolve = opened -> resolved; None where the moment is missing or
comes before the start. Percentiles are continuous (PostgreSQL's `percentile_cont`: linear
between the two nearest ranks), over the incidents that have the moment.

A deadline (the route's triage, investigation, resolution) is judged once it has passed,
or the incident ended, or it was missed: missed when the escalation clock left its notice
(`deadline:<step>`, `deadline:<step>@N` in a reopened life), met otherwise.

On PostgreSQL everything is aggregated in one query (100,000 incidents: median 0.52 s on
2 shared cores, bench/report.py); SQLite has no percentile_cont, so there one query fetches each
incident's moments and flags and Python aggregates them. The tests hold both to the same
numbers.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlmodel import Session, col, select

from runbooks.escalation import DEADLINES
from runbooks.metrics import METRICS, response_times
from runbooks.models import ACTIVE_STATUSES, Incident, IncidentNotice, RootCauseLabel, utcnow

QUANTILES = (0.5, 0.9)
NO_SEVERITY = "none"
_DURATION = re.compile(r"^(\d+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


class ReportInputError(ValueError):
    """A report parameter the report cannot read; the message names it and the forms."""


def parse_moment(name: str, value: str, now: datetime) -> datetime:
    """`30d`, `24h`, `90m` (that long before now) or an ISO 8601 datetime (UTC if it has no
    offset)."""
    text = value.strip()
    m = _DURATION.match(text)
    try:
        if m:
            return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
        at = datetime.fromisoformat(text)
        return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    except OverflowError:
        # 99999999d, or 0001-01-01T00:00+01:00 (before year 1 in UTC): a 500 before.
        raise ReportInputError(
            f"{name}={value!r}: out of the calendar's range; give a moment between years 1 and 9999"
        ) from None
    except ValueError:
        raise ReportInputError(
            f"{name}={value!r}: give a duration before now (30d, 24h, 90m) or an ISO "
            "datetime (2026-11-01 or 2026-11-01T08:00:00+00:00)"
        ) from None


class Percentiles(BaseModel):
    p50: float | None = None  # seconds; None when no incident has the moment
    p90: float | None = None
    n: int = 0  # incidents that have it


class DeadlineStat(BaseModel):
    judged: int = 0  # passed, ended or missed
    met: int = 0
    missed: int = 0
    fraction_met: float | None = None


class LabelStat(BaseModel):
    labelled: int = 0
    diagnosed: int = 0
    both: int = 0
    agreed: int = 0  # diagnosis cause == the latest label's root cause
    agreement: float | None = None  # agreed / both


class Group(BaseModel):
    count: int = 0
    time_to_detect: Percentiles = Percentiles()
    time_to_acknowledge: Percentiles = Percentiles()
    time_to_contain: Percentiles = Percentiles()
    time_to_resolve: Percentiles = Percentiles()
    deadlines: dict[str, DeadlineStat] = {}
    labels: LabelStat = LabelStat()


class Report(BaseModel):
    since: datetime
    until: datetime
    generated_at: datetime
    count: int
    overall: Group
    by_severity: dict[str, Group]
    by_model: dict[str, Group]
    labels: LabelStat


def _fraction(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _seconds(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def percentile_cont(sorted_values: list[float], q: float) -> float | None:
    """PostgreSQL's percentile_cont, step for step (orderedsetaggs.c), so both agree."""
    if not sorted_values:
        return None
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    first, second = sorted_values[lo], sorted_values[hi]
    return first + (pos - lo) * (second - first)


def _group(
    count: int,
    quantiles: dict[str, list[float | None]],
    present: dict[str, int],
    deadlines: dict[str, tuple[int, int]],
    labels: tuple[int, int, int, int],
) -> Group:
    labelled, diagnosed, both, agreed = labels
    return Group(
        count=count,
        **{
            metric: Percentiles(
                p50=_seconds(quantiles[metric][0]),
                p90=_seconds(quantiles[metric][1]),
                n=present[metric],
            )
            for metric in METRICS
        },
        deadlines={
            step: DeadlineStat(
                judged=judged, met=met, missed=judged - met, fraction_met=_fraction(met, judged)
            )
            for step, (judged, met) in deadlines.items()
        },
        labels=LabelStat(
            labelled=labelled,
            diagnosed=diagnosed,
            both=both,
            agreed=agreed,
            agreement=_fraction(agreed, both),
        ),
    )


def incident_report(
    session: Session, since: datetime, until: datetime, now: datetime | None = None
) -> Report:
    """The report over the incidents opened in [since, until); `now` judges the deadlines."""
    now = now or utcnow()
    if session.get_bind().dialect.name == "postgresql":
        groups = _aggregate_in_sql(session, since, until, now)
    else:
        groups = _aggregate_in_python(session, since, until, now)
    overall = groups.pop(("all", ""), None) or _group(
        0,
        {m: [None, None] for m in METRICS},
        dict.fromkeys(METRICS, 0),
        {s: (0, 0) for s in DEADLINES},
        (0, 0, 0, 0),
    )
    return Report(
        since=since,
        until=until,
        generated_at=now,
        count=overall.count,
        overall=overall,
        by_severity={k: g for (kind, k), g in sorted(groups.items()) if kind == "severity"},
        by_model={k: g for (kind, k), g in sorted(groups.items()) if kind == "model"},
        labels=overall.labels,
    )


# -- PostgreSQL: one query -----------------------------------------------------------------

_ACTIVE = ", ".join(f"'{s.value}'" for s in ACTIVE_STATUSES)
# runbooks.metrics.response_times in SQL: (metric, start, end), a negative span is NULL.
_MOMENTS = (
    ("time_to_detect", "onset_at", "opened_at"),
    ("time_to_acknowledge", "opened_at", "acknowledged_at"),
    ("time_to_contain", "opened_at", "mitigated_at"),
    ("time_to_resolve", "opened_at", "resolved_at"),
)
_MISSED = ",\n".join(
    f"  bool_or(key = 'deadline:{s}' OR key LIKE 'deadline:{s}@%') AS missed_{s}" for s in DEADLINES
)
_BASE_COLUMNS = ",\n".join(
    [
        f"  CASE WHEN i.{end} >= i.{start} THEN extract(epoch FROM i.{end} - i.{start})::float8"
        f" END AS {name}"
        for name, start, end in _MOMENTS
    ]
    + [
        f"  coalesce(n.missed_{s}, false) AS missed_{s},\n"
        f"  (coalesce(n.missed_{s}, false) OR i.status NOT IN ({_ACTIVE})"
        f" OR d.{s} <= :now) AS judged_{s}"
        for s in DEADLINES
    ]
)
_AGGREGATES = ",\n".join(
    [
        f"  percentile_cont(ARRAY{list(QUANTILES)}) WITHIN GROUP (ORDER BY {m}) AS {m},\n"
        f"  count({m}) AS n_{m}"
        for m in METRICS
    ]
    + [
        f"  count(*) FILTER (WHERE judged_{s}) AS judged_{s},\n"
        f"  count(*) FILTER (WHERE judged_{s} AND NOT missed_{s}) AS met_{s}"
        for s in DEADLINES
    ]
)
# `notices` and `latest` read their whole (small) tables: restricted to the window by a
# join, each scanned the incident table again (three scans of it instead of one). The
# route is read only for active incidents (an ended one is judged anyway) and the context,
# 1 KB of enrichment, is parsed only where it names a diagnosis: JSON parsing was most of
# the scan.
_PG_QUERY = f"""
WITH notices AS (
  SELECT n.incident_id,
{_MISSED}
  FROM incidentnotice n
  WHERE n.key LIKE 'deadline:%'
  GROUP BY n.incident_id
), latest AS (
  SELECT DISTINCT ON (r.incident_id) r.incident_id, r.root_cause
  FROM rootcauselabel r
  ORDER BY r.incident_id, r.at DESC, r.id DESC
), base AS (
  SELECT
  coalesce(i.severity, '{NO_SEVERITY}') AS severity,
  i.model,
{_BASE_COLUMNS},
  l.root_cause,
  CASE WHEN strpos(i.context::text, '"diagnosis"') > 0
    THEN i.context #>> '{{diagnosis,cause}}' END AS cause
  FROM incident i
  LEFT JOIN LATERAL json_to_record(
    CASE WHEN i.status IN ({_ACTIVE}) THEN i.route -> 'deadlines' END
  ) AS d(triage timestamptz, investigation timestamptz, resolution timestamptz) ON true
  LEFT JOIN notices n ON n.incident_id = i.id
  LEFT JOIN latest l ON l.incident_id = i.id
  WHERE i.opened_at >= :since AND i.opened_at < :until
)
SELECT
  GROUPING(severity) AS all_severities, GROUPING(model) AS all_models, severity, model,
  count(*) AS count,
{_AGGREGATES},
  count(root_cause) AS labelled,
  count(cause) AS diagnosed,
  count(*) FILTER (WHERE root_cause IS NOT NULL AND cause IS NOT NULL) AS both_,
  count(*) FILTER (WHERE root_cause = cause) AS agreed
FROM base
GROUP BY GROUPING SETS ((), (severity), (model))
"""


def _aggregate_in_sql(
    session: Session, since: datetime, until: datetime, now: datetime
) -> dict[tuple[str, str], Group]:
    # The planner's cost over 100,000 rows crosses jit_above_cost; compiling the query took
    # 280 ms of a 600 ms run (bench/report.py), more than the compiled code saves.
    session.execute(sa.text("SET LOCAL jit = off"))
    rows = session.execute(sa.text(_PG_QUERY), {"since": since, "until": until, "now": now})
    groups: dict[tuple[str, str], Group] = {}
    for r in rows.mappings():
        if r["all_severities"] and r["all_models"]:
            key = ("all", "")
        elif r["all_models"]:
            key = ("severity", r["severity"])
        else:
            key = ("model", r["model"])
        groups[key] = _group(
            r["count"],
            {m: list(r[m] or [None, None]) for m in METRICS},
            {m: r[f"n_{m}"] for m in METRICS},
            {s: (r[f"judged_{s}"], r[f"met_{s}"]) for s in DEADLINES},
            (r["labelled"], r["diagnosed"], r["both_"], r["agreed"]),
        )
    return groups


# -- SQLite: one query, aggregated here ------------------------------------------------------


def _aggregate_in_python(
    session: Session, since: datetime, until: datetime, now: datetime
) -> dict[tuple[str, str], Group]:
    key = col(IncidentNotice.key)
    # Correlated look-ups by the indexed incident_id: joined to grouped or windowed
    # subqueries instead, SQLite scanned them once per incident (4.5 s for 20,000).
    missed = [
        sa.exists()
        .where(
            col(IncidentNotice.incident_id) == Incident.id,
            (key == f"deadline:{s}") | key.like(f"deadline:{s}@%"),
        )
        .label(f"missed_{s}")
        for s in DEADLINES
    ]
    latest = (
        select(RootCauseLabel.root_cause)
        .where(col(RootCauseLabel.incident_id) == Incident.id)
        .order_by(col(RootCauseLabel.at).desc(), col(RootCauseLabel.id).desc())
        .limit(1)
        .scalar_subquery()
        .label("root_cause")
    )
    route, context = col(Incident.route), col(Incident.context)
    q = select(
        Incident.severity,
        Incident.model,
        Incident.status,
        Incident.onset_at,
        Incident.opened_at,
        Incident.acknowledged_at,
        Incident.mitigated_at,
        Incident.resolved_at,
        *[sa.func.json_extract(route, f"$.deadlines.{s}").label(f"due_{s}") for s in DEADLINES],
        *missed,
        latest,
        sa.func.json_extract(context, "$.diagnosis.cause").label("cause"),
    ).where(col(Incident.opened_at) >= since, col(Incident.opened_at) < until)
    active = set(ACTIVE_STATUSES)
    members: dict[tuple[str, str], list[_Facts]] = defaultdict(list)
    for r in session.execute(q):
        judged: dict[str, tuple[bool, bool]] = {}
        for s in DEADLINES:
            was_missed, due = bool(getattr(r, f"missed_{s}")), getattr(r, f"due_{s}")
            passed = due is not None and datetime.fromisoformat(due) <= now
            judged[s] = (was_missed or r.status not in active or passed, not was_missed)
        facts = _Facts(response_times(r), judged, r.root_cause, r.cause)
        for group in (("all", ""), ("severity", r.severity or NO_SEVERITY), ("model", r.model)):
            members[group].append(facts)
    return {k: _summarise(rows) for k, rows in members.items()}


@dataclass(frozen=True)
class _Facts:
    """What the report reads of one incident."""

    times: dict[str, float | None]
    deadlines: dict[str, tuple[bool, bool]]  # step: (judged, met if judged)
    root_cause: str | None
    cause: str | None


def _summarise(rows: list[_Facts]) -> Group:
    times: dict[str, list[float]] = {m: [] for m in METRICS}
    deadlines = {s: [0, 0] for s in DEADLINES}
    labelled = diagnosed = both = agreed = 0
    for r in rows:
        for metric, seconds in r.times.items():
            if seconds is not None:
                times[metric].append(seconds)
        for s, (judged, met) in r.deadlines.items():
            if judged:
                deadlines[s][0] += 1
                deadlines[s][1] += met
        labelled += r.root_cause is not None
        diagnosed += r.cause is not None
        if r.root_cause is not None and r.cause is not None:
            both += 1
            agreed += r.root_cause == r.cause
    quantiles: dict[str, list[float | None]] = {}
    for metric, values in times.items():
        values.sort()
        quantiles[metric] = [percentile_cont(values, q) for q in QUANTILES]
    return _group(
        len(rows),
        quantiles,
        {m: len(v) for m, v in times.items()},
        {s: (judged, met) for s, (judged, met) in deadlines.items()},
        (labelled, diagnosed, both, agreed),
    )


def format_report(report: dict[str, Any]) -> str:
    """The report (as its JSON) as a table per severity and per model, for the terminal."""
    lines = [
        f"{report['count']} incidents opened {report['since'][:16]} .. {report['until'][:16]}",
    ]
    head = (
        f"{'':<22} {'count':>6} {'MTTD p50/p90':>15} {'MTTA p50/p90':>15} "
        f"{'MTTC p50/p90':>15} {'MTTR p50/p90':>15}  deadlines met (triage/invest./resol.)"
    )
    for title, groups in (("by severity", report["by_severity"]), ("by model", report["by_model"])):
        lines += ["", title, head]
        for name, g in [("all", report["overall"]), *groups.items()]:
            cells = [f"{_human(g[m]['p50'])}/{_human(g[m]['p90'])}".rjust(15) for m in METRICS]
            met = "  ".join(
                f"{d['met']}/{d['judged']}" + (f" {d['fraction_met']:.0%}" if d["judged"] else "")
                for d in (g["deadlines"][s] for s in DEADLINES)
            )
            lines.append(f"{name[:22]:<22} {g['count']:>6} {' '.join(cells)}  {met}")
    lab = report["labels"]
    agree = f"{lab['agreement']:.0%}" if lab["agreement"] is not None else "-"
    lines += [
        "",
        f"labels: {lab['labelled']} labelled, {lab['diagnosed']} diagnosed, {lab['both']} "
        f"both; the diagnosis agreed with the label in {lab['agreed']} ({agree})",
    ]
    return "\n".join(lines)


def _human(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
