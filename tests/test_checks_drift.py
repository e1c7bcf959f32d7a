"""Drift measures agree with scipy and hand computation, and do not cry wolf at large n."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from checks.drift import (
    DriftThresholds,
    chi_square,
    feature_drift,
    ks_wasserstein_sorted,
    psi_categorical,
    psi_from_shares,
    psi_numeric,
)
from checks.findings import CheckInputError


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ks_and_wasserstein_match_scipy_on_shifted_normal(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 1, 3000), rng.normal(0.3, 1.2, 2500)
    ks, w = ks_wasserstein_sorted(np.sort(a), np.sort(b))
    assert ks == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
    assert w == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-9)


def test_ks_and_wasserstein_match_scipy_with_ties() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 10, 1000).astype(float), rng.integers(0, 12, 1700).astype(float)
    ks, w = ks_wasserstein_sorted(np.sort(a), np.sort(b))
    assert ks == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
    assert w == pytest.approx(stats.wasserstein_distance(a, b), rel=1e-9)


def test_report_pvalues_match_scipy_small_and_large_n() -> None:
    rng = np.random.default_rng(4)
    for n in (500, 50_000):
        ref = pd.DataFrame({"x": rng.normal(0, 1, n)})
        cur = pd.DataFrame({"x": rng.normal(0.05, 1, n)})
        f = feature_drift(ref, cur).features[0]
        expected = stats.ks_2samp(ref["x"], cur["x"])
        assert f.ks_statistic == pytest.approx(expected.statistic, abs=1e-12)
        assert f.ks_pvalue == pytest.approx(expected.pvalue, rel=1e-6, abs=1e-12)


def test_wasserstein_normed_by_reference_std() -> None:
    rng = np.random.default_rng(5)
    ref = pd.DataFrame({"x": rng.normal(0, 2, 20_000)})
    cur = pd.DataFrame({"x": rng.normal(1, 2, 20_000)})
    f = feature_drift(ref, cur).features[0]
    assert f.wasserstein_normed == pytest.approx(f.wasserstein / np.std(ref["x"]))
    assert f.wasserstein_normed == pytest.approx(0.5, abs=0.03)


def test_psi_hand_computed_for_known_shares() -> None:
    ref = np.array([0.5, 0.5])
    cur = np.array([0.8, 0.2])
    expected = (0.8 - 0.5) * np.log(0.8 / 0.5) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert psi_from_shares(ref, cur) == pytest.approx(expected)


def test_psi_of_categorical_reweighting_is_hand_computable() -> None:
    ref = pd.Series(["a"] * 500 + ["b"] * 300 + ["c"] * 200)
    cur = pd.Series(["a"] * 200 + ["b"] * 300 + ["c"] * 500)
    expected = 0.3 * np.log(0.5 / 0.2) + (0.2 - 0.5) * np.log(0.2 / 0.5)
    assert psi_categorical(ref, cur) == pytest.approx(expected)
    report = feature_drift(pd.DataFrame({"c": ref}), pd.DataFrame({"c": cur}))
    assert report.features[0].drifted and report.features[0].severity == "P2"


def test_chi_square_matches_scipy_contingency() -> None:
    ref = pd.Series(["a"] * 500 + ["b"] * 300 + ["c"] * 200)
    cur = pd.Series(["a"] * 450 + ["b"] * 320 + ["c"] * 230 + ["d"] * 5)
    chi2, p = chi_square(ref, cur)
    table = np.array([[500, 300, 200, 0], [450, 320, 230, 5]])
    expected = stats.chi2_contingency(table, correction=False)
    assert chi2 == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue)


def test_psi_numeric_of_shifted_normal_matches_quantile_bins() -> None:
    rng = np.random.default_rng(6)
    a, b = rng.normal(0, 1, 200_000), rng.normal(0.5, 1, 200_000)
    edges = stats.norm.ppf(np.arange(1, 10) / 10)
    shares = np.diff(np.r_[0, stats.norm.cdf(edges - 0.5), 1])
    expected = psi_from_shares(np.full(10, 0.1), shares)
    assert psi_numeric(a, b) == pytest.approx(expected, abs=0.01)


def test_no_false_drift_on_one_distribution_at_a_million_rows() -> None:
    rng = np.random.default_rng(7)
    n = 1_000_000
    ref = pd.DataFrame({"x": rng.normal(size=n), "c": rng.choice(list("abc"), n)})
    cur = pd.DataFrame({"x": rng.normal(size=n), "c": rng.choice(list("abc"), n)})
    report = feature_drift(ref, cur, thresholds=DriftThresholds(method="any"))
    assert not report.dataset_drift
    assert [f.drifted for f in report.features] == [False, False]
    assert all(f.passed for f in report.findings())


def test_shifted_features_drift_and_grade_by_psi() -> None:
    rng = np.random.default_rng(8)
    ref = pd.DataFrame({f"f{i}": rng.normal(size=50_000) for i in range(4)})
    cur = pd.DataFrame({f"f{i}": rng.normal(1.0 if i < 2 else 0, 1, 50_000) for i in range(4)})
    report = feature_drift(ref, cur)
    by = {f.feature: f for f in report.features}
    assert by["f0"].drifted and by["f0"].severity == "P2"
    assert not by["f2"].drifted and by["f2"].severity is None
    assert report.drifted_share == 0.5 and report.dataset_drift
    keys = {f.key for f in report.findings() if not f.passed}
    assert keys == {"drift:f0", "drift:f1", "drift:dataset"}


def test_empty_frames_raise_a_clear_error() -> None:
    ref = pd.DataFrame({"x": [1.0, 2.0]})
    with pytest.raises(CheckInputError, match="current is empty"):
        feature_drift(ref, ref.iloc[:0])
    with pytest.raises(CheckInputError, match="reference is empty"):
        feature_drift(ref.iloc[:0], ref)


def test_column_missing_from_current_names_the_column() -> None:
    ref = pd.DataFrame({"V14": [1.0, 2.0], "x": [1.0, 2.0]})
    with pytest.raises(CheckInputError, match="column 'V14' is missing from current"):
        feature_drift(ref, ref[["x"]])


def test_mismatched_types_name_the_fix() -> None:
    ref = pd.DataFrame({"x": [1.0, 2.0, 3.0]})
    cur = pd.DataFrame({"x": ["1", "2", "3"]})
    with pytest.raises(CheckInputError, match="cast current to the reference type"):
        feature_drift(ref, cur)


def test_all_null_feature_is_a_finding_not_a_crash() -> None:
    rng = np.random.default_rng(9)
    ref = pd.DataFrame({"x": rng.normal(size=100), "y": rng.normal(size=100)})
    cur = pd.DataFrame({"x": [np.nan] * 100, "y": rng.normal(size=100)})
    report = feature_drift(ref, cur)
    assert "x" in report.skipped
    finding = next(f for f in report.findings() if f.key == "drift:x")
    assert not finding.passed and "null in every current row" in finding.message


def test_nulls_are_dropped_and_counted() -> None:
    rng = np.random.default_rng(10)
    ref = pd.DataFrame({"x": rng.normal(size=1000)})
    cur_vals = rng.normal(size=1000)
    cur_vals[:100] = np.nan
    f = feature_drift(ref, pd.DataFrame({"x": cur_vals})).features[0]
    assert f.n_current == 900 and f.null_share_current == pytest.approx(0.1)
    assert f.ks_statistic == pytest.approx(
        stats.ks_2samp(ref["x"], cur_vals[100:]).statistic, abs=1e-12
    )
