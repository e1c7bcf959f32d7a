"""`runbooks demo --scenario`: every scenario's runbook does what the scenario expects, on
one real stack (sandbox platform, Prefect server, `runbooks serve`), as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deployments.demo import SCENARIOS

ROOT = Path(__file__).resolve().parent.parent


def demo(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "deployments.cli", "demo", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_unknown_scenario_exits_2_and_lists_the_scenarios() -> None:
    done = demo("--scenario", "rollback-twice", timeout=60)
    assert done.returncode == 2
    assert "no scenario 'rollback-twice'" in done.stderr
    for name in [*SCENARIOS, "all"]:
        assert name in done.stderr


@pytest.mark.slow
def test_every_scenario_passes_on_one_stack() -> None:
    # 35 s alone, ~125 s on a loaded 2-core machine; the margin is for a slower one (each
    # scenario's own deadline is 300 s).
    done = demo("--scenario", "all", timeout=480)
    out = done.stdout + done.stderr
    failed = [n for n in SCENARIOS if f"verdict {n}: PASS" not in done.stdout]
    # The failed scenarios' own lines (each is tagged with its name), not the last screen.
    told = [ln for ln in out.splitlines() if any(f" {n} " in ln or f" {n}:" in ln for n in failed)]
    logs = out[out.find(" log ends:") - 20 :][:6000] if " log ends:" in out else ""
    assert done.returncode == 0, ("\n".join(told)[-10000:] or out[-6000:]) + "\n" + logs
    for name in SCENARIOS:
        assert f"verdict {name}: PASS" in done.stdout, out[-6000:]
    assert f"{len(SCENARIOS)} of {len(SCENARIOS)} scenarios passed" in done.stdout
