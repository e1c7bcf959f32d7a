"""Evidently's DataDriftPreset on the bench data, in its own venv (Evidently 0.7 needs pandas<3).

Usage: EVIDENTLY_PYTHON bench/evidently_drift.py DATA.npz -> one JSON line on stdout with
wall time, peak RSS and the per-feature normed-Wasserstein scores and verdicts.
"""

import json
import resource
import sys
import time

import numpy as np
import pandas as pd


def main() -> None:
    data = np.load(sys.argv[1])
    names = [str(n) for n in data["names"]]
    ref = pd.DataFrame(data["reference"], columns=names)
    cur = pd.DataFrame(data["current"], columns=names)
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=names)
    t0 = time.perf_counter()
    report = Report([DataDriftPreset(num_method="wasserstein", num_threshold=0.1)])
    snapshot = report.run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    result = snapshot.dict()
    wall = time.perf_counter() - t0
    scores = {}
    for m in result["metrics"]:
        config = m.get("config", {})
        if str(config.get("type", "")).endswith(":ValueDrift"):
            scores[str(config["column"])] = float(m["value"])
    print(
        json.dumps(
            {
                "wall_seconds": wall,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "scores": scores,
                "drifted": {c: s >= 0.1 for c, s in scores.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
