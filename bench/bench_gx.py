"""Figure: our GX layer vs GX's own ValidationDefinition.run vs plain pandas, same checks.

Run: ./run bench bench_gx [ROWS ...]   (default 1,000,000 and 5,000,000)
Each size runs in a subprocess so peak RSS (ru_maxrss) belongs to that size alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[2])
import numpy as np, pandas as pd
import great_expectations as gx
from checks.quality import build_suite, validate, _context, gx_expectations, _cutoff, QualitySuite

n = int(sys.argv[1])
rng = np.random.default_rng(0)
now = pd.Timestamp("2026-11-22T12:00:00Z")
def frame(m):
    cols = {"timestamp": pd.date_range(end=now, periods=m, freq="100ms", tz="UTC")}
    for i in range(8):
        cols[f"x{i}"] = rng.normal(0, 1, m)
    cols["label"] = (rng.random(m) < 0.2).astype(np.int64)
    return pd.DataFrame(cols)
ref = frame(100_000)
full = build_suite(ref, label_column="label", required_columns=["label"], freshness_minutes=60)
keep = {("columns", None), ("null_rate", "x0"), ("null_rate", "x1"), ("range", "x0"),
        ("range", "x1"), ("outliers", "x0"), ("freshness", "timestamp"), ("required", "label"),
        ("label_balance", "label")}
suite = QualitySuite(name="bench", expectations=[e for e in full.expectations
                     if (e.check, e.column) in keep or e.check == "dtype"])
df = frame(n)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
validate(suite, df.iloc[:1000], now=now)  # warm: import, context, suite built and cached

def best(fn, k=3):
    ts = []
    for _ in range(k):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return min(ts)

ours = best(lambda: validate(suite, df, now=now))
res = validate(suite, df, now=now)
assert res.success, res.table()

ctx = _context()
asset = ctx.data_sources.add_pandas("raw").add_dataframe_asset("raw")
bd = asset.add_batch_definition_whole_dataframe("raw")
gs = ctx.suites.add(gx.ExpectationSuite(name="raw"))
specs = [(i, s) for i, s in enumerate(suite.expectations) if s.check != "dtype"]
for e in gx_expectations(specs):
    gs.add_expectation(e)
vd = ctx.validation_definitions.add(gx.ValidationDefinition(name="raw", data=bd, suite=gs))
fi = next(i for i, s in specs if s.check == "freshness")
params = {f"cutoff_{fi}": _cutoff(df["timestamp"], 60, now)}
gx_raw = best(lambda: vd.run(batch_parameters={"dataframe": df}, expectation_parameters=params,
                            result_format="BASIC"))

spec = {(s.check, s.column): s.params for s in suite.expectations}
def plain():
    out = {}
    out["columns"] = set(df.columns) == set(spec[("columns", None)]["column_set"])
    out["dtypes"] = [str(t) for t in df.dtypes]
    for c in ("x0", "x1"):
        out["null_" + c] = df[c].isna().mean() <= 0.05
        p = spec[("range", c)]
        bad = (df[c] < p["min_value"]) | (df[c] > p["max_value"])
        out["range_" + c] = bad.mean() <= 1 - p["mostly"]
    p = spec[("outliers", "x0")]
    bad = (df["x0"] < p["min_value"]) | (df["x0"] > p["max_value"])
    out["out"] = bad.mean() <= 1 - p["mostly"]
    out["fresh"] = df["timestamp"].max() >= now - pd.Timedelta(minutes=60)
    out["req"] = df["label"].notna().all()
    p = spec[("label_balance", "label")]
    out["bal"] = p["min_value"] <= df["label"].mean() <= p["max_value"]
    return out
pandas_s = best(plain)
print(json.dumps({"rows": n, "expectations_gx": len(specs), "ours": ours, "gx_raw": gx_raw,
    "pandas": pandas_s, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "rss_with_frame_mb": rss0}))
"""


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1_000_000, 5_000_000]
    for n in sizes:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(n), str(ROOT)], capture_output=True, text=True
        )
        if out.returncode:
            print(out.stderr[-3000:])
            raise SystemExit(out.returncode)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{r['rows']:,} rows x 10 columns, {r['expectations_gx']} GX expectations "
            f"(+ our dtype checks on metadata): ours {r['ours']:.2f} s, "
            f"GX ValidationDefinition.run {r['gx_raw']:.2f} s "
            f"(ratio {r['ours'] / r['gx_raw']:.2f}x), "
            f"plain pandas {r['pandas']:.3f} s (ours / pandas {r['ours'] / r['pandas']:.0f}x), "
            f"peak RSS {r['peak_rss_mb']:.0f} MB (frame loaded: {r['rss_with_frame_mb']:.0f} MB)"
        )


if __name__ == "__main__":
    main()
