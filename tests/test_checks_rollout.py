"""The step judge of a gradual rollback: three outcomes, a minimum-sample guard, and a
test whose false alarms stay near its alpha."""

from __future__ import annotations

import numpy as np
import pytest

from checks.rollout import Counts, judge


def test_a_clearly_better_step_succeeds_and_a_clearly_worse_one_fails() -> None:
    good, bad = Counts(tp=90, fp=10, fn=10), Counts(tp=50, fp=40, fn=40)
    assert judge(good, bad).outcome == "success"
    assert judge(bad, good).outcome == "failure"
    assert "worse" in judge(bad, good).reason


def test_too_few_samples_is_inconclusive_whatever_the_difference() -> None:
    verdict = judge(Counts(9, 0, 0), Counts(0, 5, 5), min_samples=20)
    assert verdict.outcome == "inconclusive"
    assert "too few samples" in verdict.reason
    assert judge(Counts(0, 0, 0), Counts(50, 50, 50)).outcome == "inconclusive"


def test_the_same_quality_is_inconclusive() -> None:
    assert judge(Counts(300, 100, 100), Counts(302, 99, 99)).outcome == "inconclusive"


def test_f1_and_the_jaccard_index_it_tests_agree() -> None:
    c = Counts(tp=60, fp=20, fn=20)
    assert c.f1 == pytest.approx(2 * c.jaccard / (1 + c.jaccard))
    assert Counts.of({"tp": 3, "fp": 1, "fn": 2, "window": 40}) == Counts(3, 1, 2)


def test_under_equal_quality_false_calls_stay_near_alpha() -> None:
    """Both sides drawn from one model (Jaccard 0.5): success and failure each about alpha."""
    rng = np.random.default_rng(11)
    trials, runs, alpha = 400, 2000, 0.05
    calls = {"success": 0, "failure": 0, "inconclusive": 0}
    for _ in range(runs):
        a, b = rng.binomial(trials, 0.5, size=2)
        verdict = judge(
            Counts(int(a), trials - int(a), 0), Counts(int(b), trials - int(b), 0), alpha=alpha
        )
        calls[verdict.outcome] += 1
    # One-sided at alpha each way: about 5 % each, give or take sampling noise.
    assert calls["success"] / runs == pytest.approx(alpha, abs=0.02)
    assert calls["failure"] / runs == pytest.approx(alpha, abs=0.02)


def test_a_real_improvement_is_found_most_of_the_time() -> None:
    """Power: Jaccard 0.35 -> 0.55 at 200 trials a side, as in a rollback from a bad release."""
    rng = np.random.default_rng(12)
    found = 0
    for _ in range(500):
        a, b = rng.binomial(200, 0.55), rng.binomial(200, 0.35)
        found += judge(
            Counts(int(a), 200 - int(a), 0), Counts(int(b), 200 - int(b), 0)
        ).outcome == ("success")
    assert found / 500 > 0.95
