"""Figure: our full drift report on 1,000,000 rows x 20 features against Evidently's.

Run: ./run bench bench_drift   (Evidently runs from .venv-evidently, made on first use, or
EVIDENTLY_PYTHON)
Each side runs in its own subprocess so peak RSS (ru_maxrss) is its own; the data goes
through an .npz file (the main venv has no pyarrow for Parquet).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROWS, FEATURES, SHIFTED = 1_000_000, 20, (0, 3, 7, 12)
HERE = Path(__file__).resolve().parent

OURS = r"""
import json, resource, sys, time
import numpy as np, pandas as pd
sys.path.insert(0, sys.argv[2])
from checks.drift import DriftThresholds, feature_drift
data = np.load(sys.argv[1])
names = [str(n) for n in data["names"]]
ref = pd.DataFrame(data["reference"], columns=names)
cur = pd.DataFrame(data["current"], columns=names)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
times = []
for _ in range(3):
    t0 = time.perf_counter()
    rep = feature_drift(ref, cur, thresholds=DriftThresholds(method="wasserstein"))
    times.append(time.perf_counter() - t0)
print(json.dumps({"wall_seconds": min(times), "all_seconds": times,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "rss_before_report_mb": base,
    "scores": {f.feature: f.wasserstein_normed for f in rep.features},
    "psi": {f.feature: f.psi for f in rep.features},
    "drifted": {f.feature: f.drifted for f in rep.features}}))
"""


def make_data(path: Path) -> None:
    rng = np.random.default_rng(42)
    ref = rng.normal(0, 1, (ROWS, FEATURES))
    cur = rng.normal(0, 1, (ROWS, FEATURES))
    for i, j in enumerate(SHIFTED):
        cur[:, j] += (0.05, 0.15, 0.3, 0.6)[i]  # one shift below the 0.1 threshold
    names = np.array([f"f{i:02d}" for i in range(FEATURES)])
    np.savez(path, reference=np.asfortranarray(ref), current=np.asfortranarray(cur), names=names)


def run(python: str, args: list[str]) -> dict:
    out = subprocess.run([python, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def evidently_python() -> str:
    """Evidently 0.7 needs pandas<3, so it lives in a venv of its own, made on first use."""
    venv = HERE.parent / ".venv-evidently"
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"creating {venv} for Evidently 0.7 (pandas<3), once", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "evidently==0.7.23", "pandas<3"],
            check=True,
        )
    return str(python)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "drift.npz"
        make_data(data)
        ours = run(sys.executable, ["-c", OURS, str(data), str(HERE.parent)])
        print(
            f"ours: {ROWS:,} rows x {FEATURES} features, PSI+KS+Wasserstein per feature: "
            f"{ours['wall_seconds']:.2f} s "
            f"(best of 3: {[round(t, 2) for t in ours['all_seconds']]}), "
            f"peak RSS {ours['peak_rss_mb']:.0f} MB "
            f"(data alone {ours['rss_before_report_mb']:.0f} MB)"
        )
        evid = os.environ.get("EVIDENTLY_PYTHON") or evidently_python()
        ev = run(evid, [str(HERE / "evidently_drift.py"), str(data)])
        print(
            f"evidently DataDriftPreset(wasserstein, 0.1): {ev['wall_seconds']:.2f} s, "
            f"peak RSS {ev['peak_rss_mb']:.0f} MB"
        )
        print(
            f"ratio: ours is {ev['wall_seconds'] / ours['wall_seconds']:.0f}x faster, "
            f"peak memory {ours['peak_rss_mb'] / ev['peak_rss_mb']:.2f} of Evidently's"
        )
        same = 0
        for f in sorted(ours["scores"]):
            e_score = ev["scores"].get(f)
            agree = ev["drifted"].get(f) == ours["drifted"][f]
            same += agree
            print(
                f"  {f}: ours W/std {ours['scores'][f]:.4f} drifted={ours['drifted'][f]!s:5} | "
                f"evidently {e_score if e_score is None else round(e_score, 4)} "
                f"drifted={ev['drifted'].get(f)!s:5} {'same' if agree else 'DIFFERENT'}"
            )
        print(f"verdicts agree on {same} of {len(ours['scores'])} features")


if __name__ == "__main__":
    main()
