"""Feature drift: the evidence behind the runbook's "is the input still what we trained on?".

Verdicts use effect sizes (PSI, normed Wasserstein, the KS statistic), never p-values
alone: at a million rows every p-value is tiny, so a p-value verdict flags noise. The
p-values are still reported, as evidence.

Numeric columns are sorted once; KS and Wasserstein come from one merge of the two sorted
samples (a stable argsort of two sorted runs is a linear merge), PSI from binary searches
of the reference quantile edges. Columns run in a thread pool: numpy releases the GIL.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field
from scipy import stats

from checks.findings import CheckInputError, Finding, Severity

PSI_EPS = 1e-4
"""Floor for a bin's share in PSI, so an empty bin gives a large but finite term."""

KS_EXACT_MAX_N = 10_000
"""Below this size the KS p-value is scipy's exact one (as scipy.stats.ks_2samp 'auto')."""

Method = Literal["psi", "wasserstein", "ks", "any"]


class DriftThresholds(BaseModel):
    """Effect-size thresholds; the defaults are the policy's PSI 0.2 (P3) and 0.3 (P2)."""

    psi_p3: float = Field(0.2, description="PSI at or above this is drift, severity P3.")
    psi_p2: float = Field(0.3, description="PSI at or above this is severity P2.")
    wasserstein: float = Field(0.1, description="Normed Wasserstein (by reference std).")
    ks: float = Field(0.1, description="KS statistic D at or above this is drift.")
    method: Method = Field("psi", description="Which effect size decides 'drifted'.")
    dataset_share: float = Field(0.5, description="Share of drifted features = dataset drift.")
    bins: int = Field(10, ge=2, description="Quantile bins from the reference for PSI.")


class FeatureDrift(BaseModel):
    """Drift measures of one feature between reference and current."""

    feature: str
    kind: Literal["numeric", "categorical"]
    n_reference: int
    n_current: int
    null_share_current: float
    psi: float
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    wasserstein: float | None = None
    wasserstein_normed: float | None = None
    chi2: float | None = None
    chi2_pvalue: float | None = None
    drifted: bool
    severity: Severity | None = None


class DriftReport(BaseModel):
    """Per-feature drift plus dataset drift as the share of drifted features."""

    features: list[FeatureDrift]
    skipped: dict[str, str] = Field(default_factory=dict)
    drifted_share: float
    dataset_drift: bool
    thresholds: DriftThresholds

    def findings(self) -> list[Finding]:
        """One finding per feature (passed or not), one per skipped feature, one for the set."""
        out = [_feature_finding(f, self.thresholds) for f in self.features]
        out += [
            Finding(
                title=f"Drift of {name} not computed",
                severity="P3",
                key=f"drift:{name}",
                check="feature_drift",
                passed=False,
                observed={"reason": reason},
                message=reason,
            )
            for name, reason in self.skipped.items()
        ]
        drifted = [f.feature for f in self.features if f.drifted]
        out.append(
            Finding(
                title="Dataset drift" if self.dataset_drift else "No dataset drift",
                severity="P2" if self.dataset_drift else None,
                key="drift:dataset",
                check="dataset_drift",
                passed=not self.dataset_drift,
                observed={"drifted_share": self.drifted_share, "drifted_features": drifted},
                threshold={"dataset_share": self.thresholds.dataset_share},
                message=f"{len(drifted)} of {len(self.features)} features drifted",
            )
        )
        return out


def _feature_finding(f: FeatureDrift, t: DriftThresholds) -> Finding:
    observed = {
        k: v
        for k, v in f.model_dump().items()
        if k not in {"feature", "kind", "drifted", "severity"} and v is not None
    }
    return Finding(
        title=f"Drift on {f.feature}" if f.drifted else f"No drift on {f.feature}",
        severity=f.severity,
        key=f"drift:{f.feature}",
        check="feature_drift",
        passed=not f.drifted,
        observed=observed,
        threshold={"psi_p3": t.psi_p3, "psi_p2": t.psi_p2, "method": t.method}
        | ({"wasserstein_normed": t.wasserstein, "ks": t.ks} if f.kind == "numeric" else {}),
        message=f"{f.feature}: PSI {f.psi:.3f}"
        + (
            f", normed Wasserstein {f.wasserstein_normed:.3f}, KS D {f.ks_statistic:.3f}"
            if f.kind == "numeric" and f.wasserstein_normed is not None
            else ""
        ),
    )


def psi_from_shares(ref_share: np.ndarray, cur_share: np.ndarray, eps: float = PSI_EPS) -> float:
    """PSI = sum (cur - ref) * ln(cur / ref), shares floored at eps."""
    r = np.maximum(ref_share, eps)
    c = np.maximum(cur_share, eps)
    return float(np.sum((c - r) * np.log(c / r)))


def quantile_edges(sorted_ref: np.ndarray, bins: int) -> np.ndarray:
    """Interior bin edges at the reference quantiles (linear interpolation), duplicates merged."""
    n = sorted_ref.size
    pos = np.arange(1, bins) / bins * (n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    edges = sorted_ref[lo] + (sorted_ref[hi] - sorted_ref[lo]) * (pos - lo)
    return np.unique(edges)


def _bin_shares(sorted_x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares of a sorted sample in bins (-inf, e1], (e1, e2], ..., (ek, inf)."""
    cuts = np.searchsorted(sorted_x, edges, side="right")
    counts = np.diff(np.concatenate(([0], cuts, [sorted_x.size])))
    return counts / sorted_x.size


def psi_numeric(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI of a numeric feature with quantile bins learned from the reference."""
    sr = np.sort(_finite(reference))
    sc = np.sort(_finite(current))
    edges = quantile_edges(sr, bins)
    return psi_from_shares(_bin_shares(sr, edges), _bin_shares(sc, edges))


def psi_categorical(reference: pd.Series, current: pd.Series) -> float:
    """PSI of a categorical feature over the union of categories seen in either sample."""
    r = reference.value_counts(normalize=True, dropna=True)
    c = current.value_counts(normalize=True, dropna=True)
    idx = r.index.union(c.index)
    return psi_from_shares(
        r.reindex(idx, fill_value=0).to_numpy(float), c.reindex(idx, fill_value=0).to_numpy(float)
    )


def ks_wasserstein_sorted(sa: np.ndarray, sb: np.ndarray) -> tuple[float, float]:
    """KS statistic and Wasserstein-1 distance of two sorted samples, from one merge.

    D_k = n1*n2*(F_a - F_b) at each merged point is an exact integer, so KS equals
    scipy's to the last bit; W1 = sum |F_a - F_b| * gap between consecutive points.
    """
    n1, n2 = sa.size, sb.size
    merged_src = np.concatenate((sa, sb))
    order = np.argsort(merged_src, kind="stable")
    merged = merged_src[order]
    del merged_src
    d = np.cumsum(order < n1, dtype=np.int64)
    del order
    d *= n1 + n2
    d -= np.arange(n1, n1 * (n1 + n2) + 1, n1, dtype=np.int64)
    np.abs(d, out=d)
    gaps = np.diff(merged)
    w = float(np.dot(d[:-1], gaps)) / (n1 * n2)
    ties = gaps == 0
    if ties.any():
        d[:-1][ties] = 0  # only the last of a run of equal values carries the ECDF value
    ks = float(d.max()) / (n1 * n2)
    return ks, w


def ks_pvalue(d: float, n1: int, n2: int, sa: np.ndarray, sb: np.ndarray) -> float:
    """Two-sided KS p-value as scipy.stats.ks_2samp(method='auto') computes it."""
    if max(n1, n2) <= KS_EXACT_MAX_N:
        return float(stats.ks_2samp(sa, sb).pvalue)
    m, n = sorted((n1, n2), reverse=True)
    return float(np.clip(stats.kstwo.sf(d, np.round(m * n / (m + n))), 0.0, 1.0))


def chi_square(reference: pd.Series, current: pd.Series) -> tuple[float, float]:
    """Chi-square test of homogeneity of category counts (as scipy.stats.chi2_contingency)."""
    r = reference.value_counts(dropna=True)
    c = current.value_counts(dropna=True)
    idx = r.index.union(c.index)
    table = np.vstack(
        [r.reindex(idx, fill_value=0).to_numpy(float), c.reindex(idx, fill_value=0).to_numpy(float)]
    )
    if table.shape[1] < 2:
        return 0.0, 1.0
    expected = table.sum(axis=1, keepdims=True) * table.sum(axis=0, keepdims=True) / table.sum()
    chi2 = float(np.sum((table - expected) ** 2 / expected))
    dof = table.shape[1] - 1
    return chi2, float(stats.chi2.sf(chi2, dof))


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    mask = np.isnan(x)
    return x[~mask] if mask.any() else x


def _severity(psi: float, drifted: bool, t: DriftThresholds) -> Severity | None:
    if psi >= t.psi_p2:
        return "P2"
    if psi >= t.psi_p3 or drifted:
        return "P3"
    return None


def _numeric_drift(name: str, ref: np.ndarray, cur: np.ndarray, t: DriftThresholds) -> FeatureDrift:
    n_cur_all = cur.size
    sa = np.sort(np.asarray(ref, dtype=np.float64))
    sb = np.sort(np.asarray(cur, dtype=np.float64))
    sa = sa[: np.searchsorted(sa, np.nan)]  # NaN sorts last
    sb = sb[: np.searchsorted(sb, np.nan)]
    n1, n2 = sa.size, sb.size
    null_share = 1 - n2 / n_cur_all
    edges = quantile_edges(sa, t.bins)
    psi = psi_from_shares(_bin_shares(sa, edges), _bin_shares(sb, edges))
    ks, w = ks_wasserstein_sorted(sa, sb)
    std = float(np.std(sa))
    w_normed = w / max(std, 1e-3)
    drifted = {
        "psi": psi >= t.psi_p3,
        "wasserstein": w_normed >= t.wasserstein,
        "ks": ks >= t.ks,
        "any": psi >= t.psi_p3 or w_normed >= t.wasserstein or ks >= t.ks,
    }[t.method]
    return FeatureDrift(
        feature=name,
        kind="numeric",
        n_reference=n1,
        n_current=n2,
        null_share_current=null_share,
        psi=psi,
        ks_statistic=ks,
        ks_pvalue=ks_pvalue(ks, n1, n2, sa, sb),
        wasserstein=w,
        wasserstein_normed=w_normed,
        drifted=drifted,
        severity=_severity(psi, drifted, t),
    )


def _categorical_drift(
    name: str, ref: pd.Series, cur: pd.Series, t: DriftThresholds
) -> FeatureDrift:
    psi = psi_categorical(ref, cur)
    chi2, p = chi_square(ref, cur)
    drifted = psi >= t.psi_p3
    n2 = int(cur.notna().sum())
    return FeatureDrift(
        feature=name,
        kind="categorical",
        n_reference=int(ref.notna().sum()),
        n_current=n2,
        null_share_current=1 - n2 / len(cur),
        psi=psi,
        chi2=chi2,
        chi2_pvalue=p,
        drifted=drifted,
        severity=_severity(psi, drifted, t),
    )


def is_numeric(s: pd.Series) -> bool:
    """Numeric for drift: ints and floats; bools and strings are categories."""
    return pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)


def feature_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: list[str] | None = None,
    thresholds: DriftThresholds | None = None,
    workers: int | None = None,
) -> DriftReport:
    """Drift of each feature and of the dataset between a reference and a current window.

    features defaults to every column of the reference except `timestamp`; a feature
    missing from current or of another type there raises CheckInputError. A feature
    with no non-null value on either side is reported in `skipped`, not computed.
    """
    t = thresholds or DriftThresholds()
    if len(reference) == 0:
        raise CheckInputError("reference is empty; give a reference window with rows")
    if len(current) == 0:
        raise CheckInputError("current is empty; give a current window with rows")
    names = features or [c for c in reference.columns if c != "timestamp"]
    for name in names:
        if name not in reference.columns:
            raise CheckInputError(f"column {name!r} is missing from reference; current has it")
        if name not in current.columns:
            raise CheckInputError(f"column {name!r} is missing from current; reference has it")
        rn, cn = is_numeric(reference[name]), is_numeric(current[name])
        if rn != cn:
            raise CheckInputError(
                f"column {name!r} is {reference[name].dtype} in reference but "
                f"{current[name].dtype} in current; cast current to the reference type"
            )
    skipped: dict[str, str] = {}
    jobs = []
    for name in names:
        if reference[name].notna().sum() == 0:
            skipped[name] = f"{name} is null in every reference row"
        elif current[name].notna().sum() == 0:
            skipped[name] = f"{name} is null in every current row"
        else:
            jobs.append(name)

    def run(name: str) -> FeatureDrift:
        r, c = reference[name], current[name]
        if is_numeric(r):
            return _numeric_drift(name, _as_float(r), _as_float(c), t)
        return _categorical_drift(name, r.astype("string"), c.astype("string"), t)

    n_workers = workers or min(len(jobs), os.cpu_count() or 1) or 1
    if n_workers == 1:
        results = [run(n) for n in jobs]
    else:
        with ThreadPoolExecutor(n_workers) as pool:
            results = list(pool.map(run, jobs))
    share = sum(f.drifted for f in results) / len(results) if results else 0.0
    return DriftReport(
        features=results,
        skipped=skipped,
        drifted_share=share,
        dataset_drift=bool(results) and share >= t.dataset_share,
        thresholds=t,
    )


def _as_float(s: pd.Series) -> np.ndarray:
    """A float64 view where possible (no copy for float64 columns), NaN for missing."""
    if s.dtype == np.float64:
        return s.to_numpy()
    return s.to_numpy(dtype=np.float64, na_value=np.nan)
