"""Suppression: which alerts page nobody, and why (runbooks/suppression.py).

Tables read like `amtool config routes test`: labels in, expected outcome out. Matcher
cases marked (amtool) were also checked against amtool 0.25's routing of the same labels.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from runbooks.suppression import (
    InhibitRule,
    MaintenanceWindow,
    Matcher,
    MatcherError,
    OneOff,
    Silence,
    SilenceState,
    Suppression,
    SuppressionError,
    Weekday,
    Weekly,
    evaluate,
    expire,
    parse_matchers,
    silence_state,
    window_occurrence,
)

T0 = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)  # a Monday
US = timedelta(microseconds=1)
FRAUD_LATENCY = {"alertname": "ModelLatencyHigh", "model": "fraud-v3", "severity": "warning"}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def silence(**kw: object) -> Silence:
    fields: dict[str, object] = {
        "id": "3f2a",
        "matchers": parse_matchers('{model="fraud-v3"}'),
        "starts_at": T0,
        "ends_at": T0 + timedelta(hours=2),
        "created_by": "alice",
        "comment": "model retraining",
    }
    fields.update(kw)
    return Silence(**fields)


def run(labels: dict[str, str], now: datetime = T0, **kw: object) -> Suppression | None:
    args: dict[str, object] = {
        "silences": [],
        "windows": [],
        "inhibit_rules": [],
        "firing_alerts": [],
    }
    args.update(kw)
    return evaluate(labels, now, **args)  # type: ignore[arg-type]


# --- matchers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('model="fraud-v3"', Matcher(name="model", op="=", value="fraud-v3")),
        ('alertname=~"Model.*"', Matcher(name="alertname", op="=~", value="Model.*")),
        ("severity!=info", Matcher(name="severity", op="!=", value="info")),
        ('  team !~ "ml|data"  ', Matcher(name="team", op="!~", value="ml|data")),
        ('model=""', Matcher(name="model", op="=", value="")),
        (r'msg="say \"hi\", ok"', Matcher(name="msg", op="=", value='say "hi", ok')),
        (r'code=~"\d+"', Matcher(name="code", op="=~", value=r"\d+")),
    ],
)
def test_matcher_parses_amtool_form(text: str, expected: Matcher) -> None:
    assert Matcher.parse(text) == expected


def test_matcher_list_form_with_braces_and_trailing_comma() -> None:
    assert parse_matchers('{model="a", metric=~"f1.*",}') == [
        Matcher(name="model", op="=", value="a"),
        Matcher(name="metric", op="=~", value="f1.*"),
    ]
    assert parse_matchers('model="a,b", severity!=info') == [
        Matcher(name="model", op="=", value="a,b"),
        Matcher(name="severity", op="!=", value="info"),
    ]


def test_matcher_string_form_round_trips() -> None:
    m = Matcher.parse(r'msg="a\"b\\c\nd"')
    assert m.value == 'a"b\\c\nd'
    assert Matcher.parse(str(m)) == m


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model=>a", "cannot parse matcher 'model=>a': expected name, one of = != =~ !~"),
        ("model", "cannot parse matcher 'model': expected name"),
        ("=fraud", "cannot parse matcher '=fraud'"),
        ("1model=a", "cannot parse matcher '1model=a'"),
        ("model==a", "cannot parse matcher 'model==a'"),
        ("model=", "cannot parse matcher 'model=': missing value; write model=\"\""),
        ('model="fraud', "cannot parse matcher 'model=\"fraud': unterminated quote"),
        ('model="a"b', "cannot parse matcher 'model=\"a\"b': text after the closing quote"),
        ("model=fraud v3", "quote a value containing ' '"),
        ('alertname=~"("', "invalid regex in matcher 'alertname=~\"(\"'"),
        ('{model="a"', "braces must be both present or both absent"),
        ('{model="a",,severity=info}', "expected one or more matchers separated by commas"),
    ],
)
def test_parse_error_names_the_text_and_the_accepted_form(text: str, message: str) -> None:
    with pytest.raises(MatcherError) as err:
        parse_matchers(text)
    assert message in str(err.value)


def test_parse_error_shows_an_example() -> None:
    with pytest.raises(MatcherError, match=r'e\.g\. model="fraud-v3"'):
        Matcher.parse("model=>a")


def test_invalid_regex_in_dict_form_is_rejected_too() -> None:
    with pytest.raises(ValidationError, match="invalid regex"):
        Matcher(name="model", op="=~", value="[")


@pytest.mark.parametrize(
    ("matcher", "labels", "matched"),
    [
        # anchored on both ends, like Alertmanager's ^(?:re)$ (amtool)
        ('alertname=~"Model"', {"alertname": "ModelDrift"}, False),
        ('alertname=~"Model.*"', {"alertname": "ModelDrift"}, True),
        ('alertname=~"drift|latency"', {"alertname": "drift"}, True),
        ('alertname=~"drift|latency"', {"alertname": "feature_drift"}, False),
        ('alertname=~"drift|latency"', {"alertname": "driftx"}, False),
        ('alertname=~"drift$"', {"alertname": "drift\n"}, False),
        ('alertname!~"Model.*"', {"alertname": "ModelDrift"}, False),
        ('alertname!~"Model"', {"alertname": "ModelDrift"}, True),
        # a missing label matches as the empty string (amtool)
        ('team!="ml"', {}, True),
        ('team=~".*"', {}, True),
        ('team=~".+"', {}, False),
        ('team=""', {}, True),
        ('team!=""', {}, False),
        ('team="ml"', {}, False),
        ('team!~"ml"', {}, True),
    ],
)
def test_matcher_semantics(matcher: str, labels: dict[str, str], matched: bool) -> None:
    assert Matcher.parse(matcher).matches(labels) is matched


# --- silences ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "state"),
    [
        (T0 - US, SilenceState.PENDING),
        (T0, SilenceState.ACTIVE),
        (T0 + timedelta(hours=2) - US, SilenceState.ACTIVE),
        (T0 + timedelta(hours=2), SilenceState.EXPIRED),
    ],
)
def test_silence_state_at_the_exact_boundaries(now: datetime, state: SilenceState) -> None:
    assert silence_state(silence(), now) is state
    suppressed = run(FRAUD_LATENCY, now, silences=[silence()])
    assert (suppressed is not None) is (state is SilenceState.ACTIVE)


def test_active_silence_names_who_why_and_until_when() -> None:
    assert run(FRAUD_LATENCY, T0, silences=[silence()]) == Suppression(
        kind="silence",
        id="3f2a",
        reason="silenced by 3f2a (alice: model retraining until 14:00Z)",
    )


def test_silence_mutes_only_matching_alerts() -> None:
    other = {**FRAUD_LATENCY, "model": "churn-v1"}
    assert run(other, silences=[silence()]) is None


def test_silence_ending_another_day_shows_the_date() -> None:
    long = silence(ends_at=T0 + timedelta(days=2))
    suppressed = run(FRAUD_LATENCY, silences=[long])
    assert suppressed is not None
    assert "until 2025-06-04 12:00Z" in suppressed.reason


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ends_at": T0 - US}, "ends_at (2025-06-02T11:59:59.999999+00:00) must be after"),
        ({"matchers": []}, "needs at least one matcher"),
        ({"matchers": parse_matchers('team=~".*"')}, "would match every alert"),
        ({"created_by": " "}, "created_by must not be empty"),
        ({"comment": ""}, "comment must not be empty"),
        ({"starts_at": datetime(2025, 6, 2, 12)}, "must be timezone-aware"),
    ],
)
def test_invalid_silence_names_the_field_and_the_fix(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        silence(**change)


def test_expire_active_silence_ends_it_now() -> None:
    now = T0 + timedelta(minutes=30)
    expired = expire(silence(), now)
    assert expired.ends_at == now
    assert expired.starts_at == T0
    assert silence_state(expired, now) is SilenceState.EXPIRED
    assert silence().ends_at == T0 + timedelta(hours=2)  # the original is untouched


def test_expire_pending_silence_never_becomes_active() -> None:
    now = T0 - timedelta(hours=1)
    expired = expire(silence(), now)
    assert (expired.starts_at, expired.ends_at) == (now, now)
    assert silence_state(expired, now) is SilenceState.EXPIRED
    assert Silence.model_validate(expired.model_dump(mode="json")) == expired


def test_expire_expired_silence_is_a_no_op() -> None:
    done = silence()
    assert expire(done, T0 + timedelta(days=1)) is done


def test_non_utc_datetimes_are_stored_as_utc() -> None:
    berlin = datetime(2025, 6, 2, 14, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    assert silence(starts_at=berlin).starts_at == T0


# --- maintenance windows -----------------------------------------------------------------


def window(schedule: OneOff | Weekly, **kw: object) -> MaintenanceWindow:
    fields: dict[str, object] = {
        "id": "mw-1",
        "model": "fraud-v3",
        "schedule": schedule,
        "created_by": "bob",
        "comment": "feature store migration",
    }
    fields.update(kw)
    return MaintenanceWindow(**fields)


def weekly(days: list[str], start: str, hours: float, tz: str = "UTC") -> Weekly:
    return Weekly(
        days=[Weekday(d) for d in days],
        start=time.fromisoformat(start),
        duration=timedelta(hours=hours),
        timezone=tz,
    )


@pytest.mark.parametrize(
    ("now", "inside"),
    [
        (T0 - US, False),
        (T0, True),
        (T0 + timedelta(hours=1) - US, True),
        (T0 + timedelta(hours=1), False),
    ],
)
def test_one_off_window(now: datetime, inside: bool) -> None:
    mw = window(OneOff(starts_at=T0, ends_at=T0 + timedelta(hours=1)))
    suppressed = run(FRAUD_LATENCY, now, windows=[mw])
    assert (suppressed is not None) is inside
    if inside:
        assert suppressed == Suppression(
            kind="maintenance",
            id="mw-1",
            reason="in maintenance window mw-1 (bob: feature store migration until 13:00Z)",
        )


def test_window_is_per_model() -> None:
    mw = window(OneOff(starts_at=T0, ends_at=T0 + timedelta(hours=1)))
    assert run({**FRAUD_LATENCY, "model": "churn-v1"}, windows=[mw]) is None


def test_window_by_label_matchers() -> None:
    mw = window(
        OneOff(starts_at=T0, ends_at=T0 + timedelta(hours=1)),
        model=None,
        matchers=parse_matchers('{team="risk", alertname=~"Model.*"}'),
    )
    assert run({**FRAUD_LATENCY, "team": "risk"}, windows=[mw]) is not None
    assert run(FRAUD_LATENCY, windows=[mw]) is None


# 2025-06-07 is a Saturday; 22:00 for 8 hours crosses midnight into Sunday.
@pytest.mark.parametrize(
    ("now", "inside"),
    [
        (utc(2025, 6, 7, 21, 59), False),
        (utc(2025, 6, 7, 22, 0), True),
        (utc(2025, 6, 8, 0, 0), True),
        (utc(2025, 6, 8, 5, 59), True),
        (utc(2025, 6, 8, 6, 0), False),
        (utc(2025, 6, 8, 22, 0), False),  # Sunday is not a start day
        (utc(2025, 6, 14, 23, 0), True),  # next Saturday
    ],
)
def test_weekly_window_crossing_midnight(now: datetime, inside: bool) -> None:
    mw = window(weekly(["saturday"], "22:00", 8))
    assert (run(FRAUD_LATENCY, now, windows=[mw]) is not None) is inside


def test_weekly_window_crossing_the_week_boundary() -> None:
    mw = window(weekly(["sunday"], "23:00", 2))
    assert window_occurrence(mw, utc(2025, 6, 9, 0, 30)) == (
        utc(2025, 6, 8, 23, 0),
        utc(2025, 6, 9, 1, 0),
    )


@pytest.mark.parametrize(
    ("now", "inside"),
    [
        # Mondays 09:00-10:00 Berlin: 08:00Z in winter, 07:00Z in summer.
        (utc(2025, 1, 6, 8, 0), True),
        (utc(2025, 1, 6, 7, 0), False),
        (utc(2025, 6, 2, 7, 0), True),
        (utc(2025, 6, 2, 8, 0), False),
    ],
)
def test_weekly_window_follows_the_zone_through_the_year(now: datetime, inside: bool) -> None:
    mw = window(weekly(["monday"], "09:00", 1, "Europe/Berlin"))
    assert (window_occurrence(mw, now) is not None) is inside


@pytest.mark.parametrize(
    ("now", "inside"),
    [
        # 2025-03-30, Berlin springs forward at 02:00 CET -> 03:00 CEST.
        # Sunday 01:00-05:00 local is 00:00Z-03:00Z: three real hours.
        (utc(2025, 3, 29, 23, 59), False),
        (utc(2025, 3, 30, 0, 0), True),
        (utc(2025, 3, 30, 2, 59), True),
        (utc(2025, 3, 30, 3, 0), False),
        # 2025-10-26, Berlin falls back at 03:00 CEST -> 02:00 CET.
        # Sunday 01:00-05:00 local is 23:00Z-04:00Z: five real hours.
        (utc(2025, 10, 25, 22, 59), False),
        (utc(2025, 10, 25, 23, 0), True),
        (utc(2025, 10, 26, 3, 59), True),
        (utc(2025, 10, 26, 4, 0), False),
    ],
)
def test_weekly_window_on_dst_days_in_berlin(now: datetime, inside: bool) -> None:
    mw = window(weekly(["sunday"], "01:00", 4, "Europe/Berlin"))
    assert (window_occurrence(mw, now) is not None) is inside


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (lambda: weekly(["monday"], "09:00", 1, "Mars/Olympus"), "not an IANA time zone"),
        (lambda: weekly([], "09:00", 1), "at least one weekday"),
        (lambda: weekly(["monday"], "09:00", 0), "more than 0 and at most 7 days"),
        (lambda: weekly(["monday"], "09:00", 24 * 8), "more than 0 and at most 7 days"),
        (lambda: OneOff(starts_at=T0, ends_at=T0), "must be after starts_at"),
        (lambda: OneOff(starts_at=datetime(2025, 1, 1), ends_at=T0), "timezone-aware"),
    ],
)
def test_invalid_schedule_names_the_fix(schedule: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        schedule()  # type: ignore[operator]


def test_window_without_any_selective_matcher_is_rejected() -> None:
    with pytest.raises(ValidationError, match="needs at least one matcher"):
        window(OneOff(starts_at=T0, ends_at=T0 + timedelta(hours=1)), model=None)


# --- inhibition --------------------------------------------------------------------------

SERVER_DOWN = InhibitRule(
    id="server-down",
    source_matchers=parse_matchers('alertname="ModelServerDown"'),
    target_matchers=parse_matchers('alertname=~"ModelLatencyHigh|ModelF1Drop"'),
    equal=["model"],
)
FRAUD_DOWN = {"alertname": "ModelServerDown", "model": "fraud-v3", "severity": "critical"}


@pytest.mark.parametrize(
    ("labels", "inhibited"),
    [
        (FRAUD_LATENCY, True),
        ({"alertname": "ModelF1Drop", "model": "fraud-v3"}, True),
        ({"alertname": "ModelF1Drop", "model": "churn-v1"}, False),
        ({"alertname": "FeatureDrift", "model": "fraud-v3"}, False),
        (FRAUD_DOWN, False),
    ],
)
def test_model_server_down_mutes_that_models_symptoms_only(
    labels: dict[str, str], inhibited: bool
) -> None:
    suppressed = run(labels, inhibit_rules=[SERVER_DOWN], firing_alerts=[FRAUD_DOWN])
    assert (suppressed is not None) is inhibited


def test_inhibition_names_the_rule_and_the_source_alert() -> None:
    suppressed = run(FRAUD_LATENCY, inhibit_rules=[SERVER_DOWN], firing_alerts=[FRAUD_DOWN])
    assert suppressed == Suppression(
        kind="inhibition",
        id="server-down",
        reason=(
            'inhibited by firing ModelServerDown{model="fraud-v3", severity="critical"} '
            '(rule server-down, same model="fraud-v3")'
        ),
        source_alert=FRAUD_DOWN,
    )


def test_resolved_source_no_longer_inhibits() -> None:
    # The caller passes only currently firing alerts; once the source resolves it is gone.
    assert run(FRAUD_LATENCY, inhibit_rules=[SERVER_DOWN], firing_alerts=[]) is None


@pytest.mark.parametrize(
    ("source", "target", "inhibited"),
    [
        # Alertmanager: missing and empty are the same value, so missing on both is equal.
        ({"alertname": "ModelServerDown"}, {"alertname": "ModelF1Drop"}, True),
        ({"alertname": "ModelServerDown", "model": ""}, {"alertname": "ModelF1Drop"}, True),
        ({"alertname": "ModelServerDown"}, {"alertname": "ModelF1Drop", "model": "a"}, False),
        ({"alertname": "ModelServerDown", "model": "a"}, {"alertname": "ModelF1Drop"}, False),
    ],
)
def test_equal_labels_missing_on_both_or_one_side(
    source: dict[str, str], target: dict[str, str], inhibited: bool
) -> None:
    suppressed = run(target, inhibit_rules=[SERVER_DOWN], firing_alerts=[source])
    assert (suppressed is not None) is inhibited


def test_all_equal_labels_must_agree() -> None:
    rule = SERVER_DOWN.model_copy(update={"equal": ["model", "cluster"]})
    source = {**FRAUD_DOWN, "cluster": "eu"}
    assert run({**FRAUD_LATENCY, "cluster": "eu"}, inhibit_rules=[rule], firing_alerts=[source])
    assert not run({**FRAUD_LATENCY, "cluster": "us"}, inhibit_rules=[rule], firing_alerts=[source])


# A rule whose sides overlap: critical mutes warning-or-critical, per model.
OVERLAP = InhibitRule(
    source_matchers=parse_matchers('severity="critical"'),
    target_matchers=parse_matchers('severity=~"warning|critical"'),
    equal=["model"],
)
CRIT_A = {"alertname": "ModelF1Drop", "model": "a", "severity": "critical"}
CRIT_B = {"alertname": "ModelNullSpike", "model": "a", "severity": "critical"}


def test_alert_does_not_inhibit_itself() -> None:
    assert run(CRIT_A, inhibit_rules=[OVERLAP], firing_alerts=[CRIT_A]) is None


def test_two_sided_alerts_do_not_inhibit_each_other() -> None:
    # Alertmanager: an alert matching both sides cannot be inhibited by another such alert.
    assert run(CRIT_A, inhibit_rules=[OVERLAP], firing_alerts=[CRIT_B]) is None
    assert run(CRIT_B, inhibit_rules=[OVERLAP], firing_alerts=[CRIT_A]) is None


def test_two_sided_alert_still_inhibits_a_plain_target() -> None:
    warning = {**CRIT_A, "severity": "warning"}
    assert run(warning, inhibit_rules=[OVERLAP], firing_alerts=[CRIT_A]) is not None


def test_inhibit_rule_gets_a_stable_id_when_none_is_given() -> None:
    again = InhibitRule.model_validate(OVERLAP.model_dump(mode="json") | {"id": ""})
    assert OVERLAP.id.startswith("inhibit-")
    assert again.id == OVERLAP.id


# --- confidence --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("confidence", "minimum", "suppressed"),
    [
        (0.59, 0.6, True),
        (0.6, 0.6, False),
        (0.61, 0.6, False),
        (None, 0.6, False),  # unknown is not suppressed
        (0.0, 0.0, False),  # the default minimum suppresses nothing
        (0.0, 0.01, True),
        (1.0, 1.0, False),
    ],
)
def test_min_confidence_edges(confidence: float | None, minimum: float, suppressed: bool) -> None:
    result = run(FRAUD_LATENCY, confidence=confidence, min_confidence=minimum)
    assert (result is not None) is suppressed
    if suppressed:
        assert result is not None and result.kind == "low_confidence"
        assert "recorded, not acted on" in result.reason


@pytest.mark.parametrize(
    ("confidence", "minimum", "field"),
    [
        (1.5, 0.5, "confidence"),
        (-0.1, 0.5, "confidence"),
        (0.5, 2.0, "min_confidence"),
        (float("nan"), 0.5, "confidence"),
    ],
)
def test_confidence_out_of_range_is_rejected(confidence: float, minimum: float, field: str) -> None:
    with pytest.raises(SuppressionError, match=f"^{field} must be between 0 and 1"):
        run(FRAUD_LATENCY, confidence=confidence, min_confidence=minimum)


# --- the entry point ---------------------------------------------------------------------


def test_first_reason_wins_in_documented_order() -> None:
    everything = {
        "silences": [silence()],
        "windows": [window(OneOff(starts_at=T0, ends_at=T0 + timedelta(hours=1)))],
        "inhibit_rules": [SERVER_DOWN],
        "firing_alerts": [FRAUD_DOWN],
        "confidence": 0.1,
        "min_confidence": 0.5,
    }
    order = ["silences", "windows", "inhibit_rules", "confidence"]
    kinds = ["silence", "maintenance", "inhibition", "low_confidence"]
    for dropped in range(len(order)):
        kw = dict(everything)
        for name in order[:dropped]:
            kw[name] = None if name == "confidence" else []
        result = run(FRAUD_LATENCY, **kw)
        assert result is not None and result.kind == kinds[dropped]


def test_nothing_applies_means_act_on_the_alert() -> None:
    assert run(FRAUD_LATENCY, confidence=0.9, min_confidence=0.5) is None


def test_naive_now_is_rejected() -> None:
    with pytest.raises(SuppressionError, match="now must be timezone-aware"):
        run(FRAUD_LATENCY, datetime(2025, 6, 2, 12, 0))
    with pytest.raises(SuppressionError, match="now must be timezone-aware"):
        expire(silence(), datetime(2025, 6, 2, 12, 0))


@pytest.mark.parametrize(
    "obj",
    [
        silence(),
        window(OneOff(starts_at=T0, ends_at=T0 + timedelta(hours=1))),
        window(
            weekly(["saturday", "sunday"], "22:30", 7.5, "Europe/Berlin"),
            matchers=parse_matchers('alertname=~"Model.*"'),
        ),
        SERVER_DOWN,
        Suppression(kind="inhibition", id="r", reason="x", source_alert={"model": "a"}),
    ],
    ids=["silence", "one-off window", "weekly window", "inhibit rule", "suppression"],
)
def test_types_round_trip_through_json(obj: object) -> None:
    dumped = obj.model_dump(mode="json")  # type: ignore[attr-defined]
    restored = type(obj).model_validate(json.loads(json.dumps(dumped)))
    assert restored == obj


def test_stored_json_is_plain_and_utc() -> None:
    dumped = silence().model_dump(mode="json")
    assert dumped["starts_at"] == "2025-06-02T12:00:00Z"
    assert dumped["matchers"] == [{"name": "model", "op": "=", "value": "fraud-v3"}]


def test_matchers_validate_from_their_string_form() -> None:
    s = Silence.model_validate(
        silence().model_dump(mode="json") | {"matchers": ['model="fraud-v3"', "severity!=info"]}
    )
    assert s.matchers[1] == Matcher(name="severity", op="!=", value="info")
