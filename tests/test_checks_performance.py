"""Performance and fairness metrics match hand counts; small samples are inconclusive."""

import numpy as np
import pytest
from scipy import stats

from checks.fairness import fairness_report
from checks.findings import CheckInputError
from checks.performance import classification_metrics, performance_degradation, roc_auc


def test_metrics_match_hand_counts() -> None:
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array([1, 0, 1, 0, 1, 0, 0, 1])
    m = classification_metrics(y, p)
    assert (m.tp, m.fp, m.fn, m.tn) == (3, 1, 1, 3)
    assert m.precision == 0.75 and m.recall == 0.75 and m.f1 == 0.75 and m.accuracy == 0.75


def test_auc_equals_mann_whitney_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(2000) < 0.3
    s = np.round(np.where(y, rng.normal(1, 1, 2000), rng.normal(0, 1, 2000)), 1)
    u = stats.mannwhitneyu(s[y], s[~y]).statistic
    assert roc_auc(y, s) == pytest.approx(u / (y.sum() * (~y).sum()))


def test_real_drop_is_degraded_and_graded() -> None:
    rng = np.random.default_rng(1)
    y0, y1 = rng.random(5000) < 0.4, rng.random(5000) < 0.4
    p0 = np.where(rng.random(5000) < 0.9, y0, ~y0)
    p1 = np.where(rng.random(5000) < 0.7, y1, ~y1)
    rep = performance_degradation(y0, p0, y1, p1)
    f1 = next(c for c in rep.changes if c.metric == "f1")
    assert f1.verdict == "degraded" and f1.severity == "P1" and f1.ci_high < 0


def test_same_model_is_stable() -> None:
    rng = np.random.default_rng(2)
    y0, y1 = rng.random(5000) < 0.4, rng.random(5000) < 0.4
    p0 = np.where(rng.random(5000) < 0.9, y0, ~y0)
    p1 = np.where(rng.random(5000) < 0.9, y1, ~y1)
    rep = performance_degradation(y0, p0, y1, p1)
    assert not rep.degraded and all(f.passed for f in rep.findings())


def test_too_few_samples_answer_inconclusive() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(50) < 0.4
    rep = performance_degradation(y, y, y, ~y)
    assert {c.verdict for c in rep.changes} == {"inconclusive"}
    assert not rep.degraded and rep.inconclusive


def test_non_binary_labels_name_the_fix() -> None:
    with pytest.raises(CheckInputError, match="threshold scores"):
        classification_metrics([0, 1, 2], [0, 1, 1])


def test_fairness_differences_and_per_group_metrics() -> None:
    y = np.array([1, 1, 0, 0] * 50 + [1, 1, 0, 0] * 50)
    p = np.array([1, 1, 0, 0] * 50 + [1, 0, 1, 0] * 50)
    g = np.array(["a"] * 200 + ["b"] * 200)
    rep = fairness_report(y, p, g)
    by = {m.group: m for m in rep.groups}
    assert by["a"].tpr == 1.0 and by["a"].fpr == 0.0
    assert by["b"].tpr == 0.5 and by["b"].fpr == 0.5
    assert rep.demographic_parity_difference == pytest.approx(0.0)
    assert rep.equalized_odds_difference == pytest.approx(0.5)
    bad = [f for f in rep.findings() if not f.passed]
    assert [f.key for f in bad] == ["fairness:equalized_odds"]


def test_fairness_skips_groups_too_small() -> None:
    y = np.array([1, 0] * 100 + [1, 0])
    g = np.array(["a"] * 200 + ["tiny"] * 2)
    rep = fairness_report(y, y, g)
    assert rep.too_small == {"tiny": 2} and rep.demographic_parity_difference is None
