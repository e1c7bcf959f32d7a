"""Suppression: the runbook's "should anyone be paged for this alert?" step.

Before an alert opens or updates an incident, the intake asks `evaluate()` whether a
human said to keep quiet (a silence), whether the model is in planned maintenance, whether
a root-cause alert already covers it (inhibition), or whether the monitor itself is unsure
(low confidence). A suppressed alert is still stored and shown on the timeline with the
reason; it pages nobody and starts no runbook.

Everything here is a pure function of stored state and the clock: no database, no Prefect,
no I/O. The types are pydantic models that round-trip through
`model_dump(mode="json")` / `model_validate`, so the store can keep them as JSON.

Semantics follow Alertmanager where they overlap (checked against its source,
`pkg/labels`, `matcher/parse`, `inhibit/inhibit.go`, `silence/`, and docs/configuration.md):

- A matcher compares the label's value, and a missing label counts as the empty string.
  Regexes are fully anchored, as Alertmanager's `^(?:re)$`; they are Python `re` syntax,
  which differs from Go's RE2 only at the edges (RE2 has no look-around or backreferences,
  Python has no `\\pL`).
- A silence is pending while now < starts_at, active while starts_at <= now < ends_at and
  expired from ends_at on. At least one of its matchers must not match the empty string,
  so that no silence can mute every alert.
- An inhibition rule mutes a target when a firing source alert has the same value for each
  `equal` label; a label missing on both sides is equal (missing and empty are the same
  thing). An alert that matches both sides of a rule cannot be inhibited by an alert that
  also matches both sides, which is what stops an alert inhibiting itself.
"""

from __future__ import annotations

import hashlib
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

__all__ = [
    "InhibitRule",
    "MaintenanceWindow",
    "Matcher",
    "MatcherError",
    "OneOff",
    "Silence",
    "SilenceState",
    "Suppression",
    "SuppressionError",
    "Weekday",
    "Weekly",
    "evaluate",
    "expire",
    "inhibiting_alert",
    "matches",
    "parse_matchers",
    "silence_state",
    "window_occurrence",
]


class SuppressionError(ValueError):
    """Invalid suppression input; the message names what is wrong and how to fix it."""


class MatcherError(SuppressionError):
    """A matcher that cannot be parsed or whose regex does not compile."""


def _require_utc(value: datetime, what: str = "datetime") -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise SuppressionError(
            f"{what} must be timezone-aware (UTC), e.g. 2025-06-01T14:00:00Z, "
            f"got naive {value.isoformat()}"
        )
    return value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_require_utc)]
"""A datetime that must carry a timezone; stored normalised to UTC."""


# --- matchers ----------------------------------------------------------------------------

Op = Literal["=", "!=", "=~", "!~"]

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MATCHER = re.compile(r"\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)\s*(.*?)\s*", re.DOTALL)
# Alertmanager's reserved characters for unquoted values, plus < and >: an unquoted
# `model=>a` or `f1<0.7` is almost always a comparison typed by mistake, so ask for quotes.
_RESERVED_UNQUOTED = set("{}!=~,\\\"'`<>")
_ACCEPTED_FORM = 'expected name, one of = != =~ !~, then a value, e.g. model="fraud-v3"'


@lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern[str]:
    """Compile once per pattern; anchored on both ends like Alertmanager's ^(?:re)$."""
    return re.compile(f"(?:{pattern})")


def _check_regex(pattern: str, text: str) -> None:
    try:
        _compile(pattern)
    except re.error as exc:
        raise MatcherError(
            f"invalid regex in matcher '{text}': {exc}; "
            f'use a Python regular expression, fully anchored, e.g. alertname=~"Model.*"'
        ) from None


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class Matcher(BaseModel):
    """One label condition, as in Alertmanager's silences, routes and inhibit rules.

    Validates from the dict form or from the amtool string form (`severity!="info"`),
    and always dumps the dict form.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    op: Op
    value: str

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, str):
            m = _parse_one(data)
            return {"name": m.name, "op": m.op, "value": m.value}
        return data

    @field_validator("name")
    @classmethod
    def _name_is_label_name(cls, name: str) -> str:
        if not _LABEL_NAME.fullmatch(name):
            raise MatcherError(
                f"matcher name {name!r} is not a label name: use letters, digits and _, "
                "not starting with a digit, e.g. model"
            )
        return name

    @model_validator(mode="after")
    def _regex_compiles(self) -> Matcher:
        if self.op in ("=~", "!~"):
            _check_regex(self.value, str(self))
        return self

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """Parse one matcher in amtool form: `model="fraud-v3"`, `alertname=~"Model.*"`."""
        return _parse_one(text)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """True if the label (missing counts as "") satisfies this matcher."""
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = _compile(self.value).fullmatch(actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        return f"{self.name}{self.op}{_quote(self.value)}"


def _unquote(raw: str, text: str) -> str:
    """Undo OpenMetrics escaping (\\" \\\\ \\n); other backslashes stay literal, as in
    Alertmanager's classic parser, so `=~"\\d+"` means the regex \\d+."""
    body = raw[1:]
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in ('"', "\\"):
                out.append(nxt)
            elif nxt == "n":
                out.append("\n")
            else:
                out.append("\\" + nxt)
            i += 2
            continue
        if ch == '"':
            if i != len(body) - 1:
                raise MatcherError(
                    f"cannot parse matcher '{text}': text after the closing quote; {_ACCEPTED_FORM}"
                )
            return "".join(out)
        out.append(ch)
        i += 1
    raise MatcherError(f"cannot parse matcher '{text}': unterminated quote; {_ACCEPTED_FORM}")


def _parse_one(text: str) -> Matcher:
    found = _MATCHER.fullmatch(text)
    if found is None:
        raise MatcherError(f"cannot parse matcher '{text}': {_ACCEPTED_FORM}")
    name, op, raw = found.groups()
    if raw.startswith('"'):
        value = _unquote(raw, text)
    elif raw == "":
        raise MatcherError(
            f"cannot parse matcher '{text}': missing value; write {name}{op}\"\" to match "
            f"an empty or missing label; {_ACCEPTED_FORM}"
        )
    else:
        bad = sorted({c for c in raw if c in _RESERVED_UNQUOTED or c.isspace()})
        if bad:
            raise MatcherError(
                f"cannot parse matcher '{text}': {_ACCEPTED_FORM} "
                f"(quote a value containing {' '.join(repr(c) for c in bad)})"
            )
        value = raw
    if op in ("=~", "!~"):
        _check_regex(value, text)
    return Matcher(name=name, op=op, value=value)


def _split_outside_quotes(body: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    in_quotes = escaped = False
    for ch in body:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            in_quotes = not in_quotes
        elif ch == "," and not in_quotes:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def parse_matchers(text: str) -> list[Matcher]:
    """Parse `{model="a", metric=~"f1.*"}` (braces optional, one trailing comma allowed)."""
    body = text.strip()
    opens, closes = body.startswith("{"), body.endswith("}")
    if opens != closes:
        raise MatcherError(
            f"cannot parse matchers '{text}': braces must be both present or both absent, "
            'e.g. {model="fraud-v3", alertname=~"Model.*"}'
        )
    if opens:
        body = body[1:-1]
    parts = _split_outside_quotes(body)
    if parts and parts[-1].strip() == "" and len(parts) > 1:
        parts.pop()
    if any(p.strip() == "" for p in parts):
        raise MatcherError(
            f"cannot parse matchers '{text}': expected one or more matchers separated by "
            'commas, e.g. {model="fraud-v3", alertname=~"Model.*"}'
        )
    return [_parse_one(p) for p in parts]


def matches(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    """True if every matcher holds (Alertmanager ANDs matchers)."""
    return all(m.matches(labels) for m in matchers)


def _require_selective(matchers: list[Matcher], what: str) -> list[Matcher]:
    """Alertmanager refuses silences whose matchers all match the empty string, because
    they would mute every alert; the same guard applies to maintenance windows."""
    if not matchers:
        raise SuppressionError(f'{what} needs at least one matcher, e.g. model="fraud-v3"')
    if all(m.matches({}) for m in matchers):
        shown = ", ".join(str(m) for m in matchers)
        raise SuppressionError(
            f"{what} {{{shown}}} would match every alert: at least one matcher must not "
            'match the empty string, e.g. model="fraud-v3" or model=~".+"'
        )
    return matchers


def _require_text(value: str, field: str, example: str) -> str:
    if not value.strip():
        raise SuppressionError(f"{field} must not be empty: {example}")
    return value


# --- silences ----------------------------------------------------------------------------


class SilenceState(StrEnum):
    PENDING = "pending"
    ACTIVE = "active"
    EXPIRED = "expired"


class Silence(BaseModel):
    """A human's "don't page me about this until ends_at", with who and why."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    matchers: list[Matcher]
    starts_at: UtcDatetime
    ends_at: UtcDatetime
    created_by: str
    comment: str

    @field_validator("matchers")
    @classmethod
    def _selective(cls, matchers: list[Matcher]) -> list[Matcher]:
        return _require_selective(matchers, "silence matchers")

    @field_validator("created_by")
    @classmethod
    def _created_by(cls, value: str) -> str:
        return _require_text(value, "created_by", "say who created the silence, e.g. alice")

    @field_validator("comment")
    @classmethod
    def _comment(cls, value: str) -> str:
        return _require_text(value, "comment", "say why alerts are silenced, e.g. model retraining")

    @model_validator(mode="after")
    def _ends_after_start(self) -> Silence:
        # Equal is allowed only so an expired pending silence (see expire) round-trips;
        # Alertmanager accepts it for the same reason.
        if self.ends_at < self.starts_at:
            raise SuppressionError(
                f"ends_at ({self.ends_at.isoformat()}) must be after starts_at "
                f"({self.starts_at.isoformat()}): set ends_at later than starts_at"
            )
        return self


def silence_state(silence: Silence, now: datetime) -> SilenceState:
    """Pending before starts_at, active from starts_at, expired from ends_at."""
    now = _require_utc(now, "now")
    if now < silence.starts_at:
        return SilenceState.PENDING
    if now < silence.ends_at:
        return SilenceState.ACTIVE
    return SilenceState.EXPIRED


def expire(silence: Silence, now: datetime) -> Silence:
    """Return a copy that ends now; a pending one also starts now, as Alertmanager does.

    Expiring an already expired silence returns it unchanged, so a retried request is
    a success rather than an error.
    """
    now = _require_utc(now, "now")
    state = silence_state(silence, now)
    if state is SilenceState.EXPIRED:
        return silence
    if state is SilenceState.PENDING:
        return silence.model_copy(update={"starts_at": now, "ends_at": now})
    return silence.model_copy(update={"ends_at": now})


# --- maintenance windows -----------------------------------------------------------------


class Weekday(StrEnum):
    MONDAY = "monday"
    TUESDAY = "tuesday"
    WEDNESDAY = "wednesday"
    THURSDAY = "thursday"
    FRIDAY = "friday"
    SATURDAY = "saturday"
    SUNDAY = "sunday"


_WEEKDAYS = list(Weekday)


class OneOff(BaseModel):
    """A single window, e.g. tonight's migration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["one_off"] = "one_off"
    starts_at: UtcDatetime
    ends_at: UtcDatetime

    @model_validator(mode="after")
    def _ends_after_start(self) -> OneOff:
        if self.ends_at <= self.starts_at:
            raise SuppressionError(
                f"ends_at ({self.ends_at.isoformat()}) must be after starts_at "
                f"({self.starts_at.isoformat()}): set ends_at later than starts_at"
            )
        return self

    def occurrence(self, now: datetime) -> tuple[datetime, datetime] | None:
        now = _require_utc(now, "now")
        return (self.starts_at, self.ends_at) if self.starts_at <= now < self.ends_at else None


class Weekly(BaseModel):
    """A window that starts at `start` local time on each of `days` and lasts `duration`.

    The duration is counted on the local wall clock, like Alertmanager's time intervals,
    so "saturday 22:00 for 8h" ends at 06:00 local even on a DST night. A start time that
    falls in a DST gap resolves with the offset before the change (zoneinfo's fold=0).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["weekly"] = "weekly"
    days: list[Weekday]
    start: time
    duration: timedelta
    timezone: str = "UTC"

    @field_validator("days")
    @classmethod
    def _some_days(cls, days: list[Weekday]) -> list[Weekday]:
        if not days:
            raise SuppressionError('days must name at least one weekday, e.g. ["saturday"]')
        return days

    @field_validator("start")
    @classmethod
    def _local_time(cls, start: time) -> time:
        if start.tzinfo is not None:
            raise SuppressionError(
                "start is a local time of day without offset, e.g. 22:00; "
                "put the zone in timezone, e.g. Europe/Berlin"
            )
        return start

    @field_validator("duration")
    @classmethod
    def _duration_in_a_week(cls, duration: timedelta) -> timedelta:
        if not timedelta(0) < duration <= timedelta(days=7):
            raise SuppressionError(
                f"duration must be more than 0 and at most 7 days, got {duration}; "
                "e.g. PT8H for eight hours"
            )
        return duration

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise SuppressionError(
                f"timezone {name!r} is not an IANA time zone: use e.g. Europe/Berlin or UTC"
            ) from None
        return name

    def occurrence(self, now: datetime) -> tuple[datetime, datetime] | None:
        now = _require_utc(now, "now")
        zone = ZoneInfo(self.timezone)
        today = now.astimezone(zone).date()
        for back in range(self.duration.days + 2):
            day: date = today - timedelta(days=back)
            if _WEEKDAYS[day.weekday()] not in self.days:
                continue
            local_start = datetime.combine(day, self.start, tzinfo=zone)
            # Same-tzinfo arithmetic is wall-clock arithmetic, which is what we want;
            # compare in UTC because same-tzinfo comparisons ignore fold.
            start = local_start.astimezone(UTC)
            end = (local_start + self.duration).astimezone(UTC)
            if start <= now < end:
                return start, end
        return None


Schedule = Annotated[OneOff | Weekly, Field(discriminator="kind")]


class MaintenanceWindow(BaseModel):
    """Planned work on a model: alerts are kept, but page nobody and start no runbook."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    model: str | None = Field(default=None, description="shorthand for the matcher model=...")
    matchers: list[Matcher] = Field(default_factory=list)
    schedule: Schedule
    created_by: str
    comment: str

    @model_validator(mode="after")
    def _selective(self) -> MaintenanceWindow:
        if self.model is not None and not self.model.strip():
            raise SuppressionError('model must not be empty: name the model, e.g. "fraud-v3"')
        _require_selective(self.all_matchers, "maintenance window matchers (model or matchers)")
        _require_text(self.created_by, "created_by", "say who planned the window, e.g. alice")
        _require_text(self.comment, "comment", "say what the work is, e.g. feature store migration")
        return self

    @property
    def all_matchers(self) -> list[Matcher]:
        by_model = [Matcher(name="model", op="=", value=self.model)] if self.model else []
        return by_model + list(self.matchers)


def window_occurrence(window: MaintenanceWindow, now: datetime) -> tuple[datetime, datetime] | None:
    """The (start, end) of the window's occurrence covering now, in UTC, or None."""
    return window.schedule.occurrence(_require_utc(now, "now"))


# --- inhibition --------------------------------------------------------------------------


class InhibitRule(BaseModel):
    """While a source alert fires, mute target alerts that share its `equal` labels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(default="", description="stable name; derived from the rule when empty")
    source_matchers: list[Matcher]
    target_matchers: list[Matcher]
    equal: list[str] = Field(default_factory=list)

    @field_validator("source_matchers", "target_matchers")
    @classmethod
    def _not_empty(cls, matchers: list[Matcher]) -> list[Matcher]:
        if not matchers:
            raise SuppressionError(
                "source_matchers and target_matchers each need at least one matcher, "
                'e.g. alertname="ModelServerDown"'
            )
        return matchers

    @field_validator("equal")
    @classmethod
    def _label_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not _LABEL_NAME.fullmatch(name):
                raise SuppressionError(f"equal label {name!r} is not a label name: use e.g. model")
        return names

    @model_validator(mode="after")
    def _derive_id(self) -> InhibitRule:
        if not self.id:
            digest = hashlib.sha256(self._describe().encode()).hexdigest()[:8]
            object.__setattr__(self, "id", f"inhibit-{digest}")
        return self

    def _describe(self) -> str:
        src = ",".join(str(m) for m in self.source_matchers)
        tgt = ",".join(str(m) for m in self.target_matchers)
        return f"{{{src}}} -> {{{tgt}}} equal [{','.join(self.equal)}]"


def inhibiting_alert(
    rule: InhibitRule, labels: Mapping[str, str], firing_alerts: Iterable[Mapping[str, str]]
) -> Mapping[str, str] | None:
    """The first firing alert that inhibits `labels` under `rule`, as Alertmanager decides.

    Only currently firing alerts count, so a resolved source stops inhibiting as soon as
    the caller leaves it out of `firing_alerts`.
    """
    if not matches(rule.target_matchers, labels):
        return None
    target_is_also_source = matches(rule.source_matchers, labels)
    for source in firing_alerts:
        if not matches(rule.source_matchers, source):
            continue
        if any(source.get(n, "") != labels.get(n, "") for n in rule.equal):
            continue
        if target_is_also_source and matches(rule.target_matchers, source):
            continue
        return source
    return None


# --- the entry point ---------------------------------------------------------------------


class Suppression(BaseModel):
    """Why an alert pages nobody: what the intake writes on the incident timeline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["silence", "maintenance", "inhibition", "low_confidence"]
    id: str | None = Field(description="silence, window or inhibit rule id; None for confidence")
    reason: str
    source_alert: dict[str, str] | None = Field(
        default=None, description="labels of the inhibiting alert, for inhibition"
    )


def _until(end: datetime, now: datetime) -> str:
    return end.strftime("%H:%MZ") if end.date() == now.date() else end.strftime("%Y-%m-%d %H:%MZ")


def _alert_name(labels: Mapping[str, str]) -> str:
    rest = ", ".join(f"{k}={_quote(v)}" for k, v in sorted(labels.items()) if k != "alertname")
    return f"{labels.get('alertname', '')}{{{rest}}}"


def _check_fraction(value: float, field: str) -> float:
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise SuppressionError(f"{field} must be between 0 and 1, got {value}")
    return value


def evaluate(
    labels: Mapping[str, str],
    now: datetime,
    *,
    silences: Iterable[Silence],
    windows: Iterable[MaintenanceWindow],
    inhibit_rules: Iterable[InhibitRule],
    firing_alerts: Iterable[Mapping[str, str]],
    confidence: float | None = None,
    min_confidence: float = 0.0,
) -> Suppression | None:
    """Return why this alert should page nobody, or None if it should be acted on.

    The first reason wins, in this order: silence, maintenance, inhibition, confidence.
    Human decisions come first because the timeline should name the person to ask;
    a silence is explicit and narrow, a window is planned but broad. Inhibition depends
    on other alerts and lapses when its source resolves, so it is a weaker explanation;
    low confidence is the monitor doubting itself, the weakest. Any one reason is enough
    to mute, so the order only chooses which reason is shown.
    (Alertmanager's pipeline checks inhibition before silences; it reports all reasons.)
    """
    now = _require_utc(now, "now")
    if confidence is not None:
        _check_fraction(confidence, "confidence")
    _check_fraction(min_confidence, "min_confidence")

    for silence in silences:
        if silence_state(silence, now) is SilenceState.ACTIVE and matches(silence.matchers, labels):
            return Suppression(
                kind="silence",
                id=silence.id,
                reason=(
                    f"silenced by {silence.id} ({silence.created_by}: {silence.comment} "
                    f"until {_until(silence.ends_at, now)})"
                ),
            )

    for window in windows:
        span = window.schedule.occurrence(now)
        if span is not None and matches(window.all_matchers, labels):
            return Suppression(
                kind="maintenance",
                id=window.id,
                reason=(
                    f"in maintenance window {window.id} ({window.created_by}: "
                    f"{window.comment} until {_until(span[1], now)})"
                ),
            )

    firing = list(firing_alerts)
    for rule in inhibit_rules:
        source = inhibiting_alert(rule, labels, firing)
        if source is not None:
            shared = ", ".join(f"{n}={_quote(source.get(n, ''))}" for n in rule.equal)
            return Suppression(
                kind="inhibition",
                id=rule.id,
                reason=(
                    f"inhibited by firing {_alert_name(source)} (rule {rule.id}"
                    + (f", same {shared})" if shared else ")")
                ),
                source_alert=dict(source),
            )

    if confidence is not None and confidence < min_confidence:
        return Suppression(
            kind="low_confidence",
            id=None,
            reason=(
                f"confidence {confidence:.2f} is below the minimum {min_confidence:.2f}: "
                "recorded, not acted on"
            ),
        )
    return None
