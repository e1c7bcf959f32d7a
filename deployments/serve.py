"""Serve the deployments that prefect.yaml declares, with their triggers, from this process.

prefect.yaml stays the one place that says what starts what; `prefect deploy` reads the
same file for a work pool.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"


def load_deployment_specs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text())
    specs = data.get("deployments") or []
    if not specs:
        raise ValueError(f"{path}: no deployments declared")
    return specs


def import_entrypoint(entrypoint: str) -> Any:
    """'flows/triage.py:triage' -> the flow object."""
    file, _, attr = entrypoint.partition(":")
    module = file.removesuffix(".py").replace("/", ".")
    return getattr(importlib.import_module(module), attr)


def schedules_of(spec: dict[str, Any]) -> list[Any] | None:
    """A deployment's `schedules:` (or the older single `schedule:`), read with the keys
    `prefect deploy` reads: cron | interval (seconds) | rrule, timezone, anchor_date, day_or,
    active, parameters, slug."""
    from datetime import datetime

    from prefect.schedules import Cron, Interval, RRule

    configs = spec.get("schedules") or ([spec["schedule"]] if spec.get("schedule") else [])
    out = []
    for c in configs:
        common = {k: c[k] for k in ("timezone", "active", "parameters", "slug") if k in c}
        if c.get("cron"):
            out.append(Cron(c["cron"], day_or=c.get("day_or", True), **common))
        elif c.get("interval"):
            anchor = c.get("anchor_date")
            if isinstance(anchor, str):
                anchor = datetime.fromisoformat(anchor)
            out.append(Interval(c["interval"], anchor_date=anchor, **common))
        elif c.get("rrule"):
            out.append(RRule(c["rrule"], **common))
        else:
            raise ValueError(
                f"deployment {spec['name']}: schedule {c} needs one of cron, interval, rrule"
            )
    return out or None


def deployment_options(spec: dict[str, Any]) -> dict[str, Any]:
    """What prefect.yaml says of one deployment, as Prefect's deployment arguments."""
    from prefect.events import DeploymentTriggerTypes
    from pydantic import TypeAdapter

    adapter: TypeAdapter = TypeAdapter(DeploymentTriggerTypes)
    triggers = []
    for i, trig in enumerate(spec.get("triggers") or [], start=1):
        trig = {**trig, "name": trig.get("name", f"{spec['name']}__automation_{i}")}
        triggers.append(adapter.validate_python(trig))
    return {
        "name": spec["name"],
        "description": spec.get("description"),
        "tags": spec.get("tags"),
        "parameters": spec.get("parameters"),
        "triggers": triggers,
        "schedules": schedules_of(spec),
    }


def runner_deployments(path: Path = PREFECT_YAML) -> list[Any]:
    return [
        import_entrypoint(spec["entrypoint"]).to_deployment(**deployment_options(spec))
        for spec in load_deployment_specs(path)
    ]


def serve_deployments(
    limit: int | None = None,
    preload: bool = True,
    poll_seconds: float = 0.5,
    in_process: bool = True,
) -> None:
    """Serve every deployment in prefect.yaml from this process.

    Each deployment is added with its flow object (Runner.add_flow), not as a deployment
    to load from storage: Prefect's `serve()` takes the latter, and then starts every run
    as a fresh `python -m prefect.engine` that imports Prefect and the flow's code again
    (1.3 s seen between the runner taking a run and the new interpreter's first line).
    With the flow in hand the runner starts the run with multiprocessing instead, which
    `start_runs_preloaded` turns into a fork of a warm process, and, for the deployments
    tagged `in-process`, deployments/in_process.py into a thread of this one.

    `poll_seconds`: how often the runner asks the server for runs to start; besides, a
    run Prefect schedules for these deployments is asked for at once (its Scheduled event).
    `preload=False` is Prefect's own way, kept as the reference the bench measures
    against: a fresh interpreter per run, found by the poll alone.
    """
    import asyncio
    import signal
    import threading

    from prefect.exceptions import TerminationSignal

    from deployments.in_process import (
        IN_PROCESS_TAG,
        runner_class,
        start_runs_when_scheduled,
        start_tagged_runs_in_threads,
    )

    specs = load_deployment_specs()
    if preload:
        start_runs_preloaded([spec["entrypoint"].split(":")[0] for spec in specs])
    flows = [with_resolved_annotations(import_entrypoint(s["entrypoint"])) for s in specs]
    if preload and in_process:
        tagged = [IN_PROCESS_TAG in (s.get("tags") or []) for s in specs]
        start_tagged_runs_in_threads({f.name for f, t in zip(flows, tagged, strict=True) if t})
    runner = runner_class()(limit=limit, query_seconds=poll_seconds, pause_on_shutdown=True)

    async def run() -> None:
        ids = set()
        for flow, spec in zip(flows, specs, strict=True):
            ids.add(await runner.aadd_flow(flow, **deployment_options(spec)))
        print(f"serving {', '.join(s['name'] for s in specs)}", flush=True)
        if threading.current_thread() is threading.main_thread():
            # Ctrl-C stops as SIGTERM does: the runner cancels the runs in flight first,
            # where a KeyboardInterrupt would wait for them (a paused approval: minutes).
            signal.signal(signal.SIGINT, runner.handle_sigterm)
        if not preload:
            await runner.start()
            return
        nudge = asyncio.create_task(start_runs_when_scheduled(runner, ids))
        try:
            await runner.start()
        finally:
            nudge.cancel()

    try:
        asyncio.run(run())
    except (KeyboardInterrupt, TerminationSignal):
        print("runbooks serve: stopping", flush=True)


def with_resolved_annotations(flow: Any) -> Any:
    """The flow with its function's annotations resolved to the objects they name.

    The runner hands the flow to the run's process with cloudpickle, which copies the
    function by value (its module attribute is the Flow, not the function) with only the
    globals its code uses. Under `from __future__ import annotations` the parameter types
    are strings naming globals the copy lacks, and Prefect's parameter validation then
    fails ("TriageModel is not fully defined"). Resolved here, they travel as the classes.
    """
    import typing

    flow.fn.__annotations__ = typing.get_type_hints(flow.fn)
    return flow


def start_runs_preloaded(entrypoint_files: list[str]) -> bool:
    """Start each flow run in a process forked from one that imported Prefect and the
    flows already, instead of a fresh interpreter.

    Prefect's runner starts every run with multiprocessing's "spawn" context: a new Python
    that imports Prefect and the flow's modules (about 2 s on a 2-core machine, paid twice
    on the way from an alert to its rollback: triage, then the runbook). A "forkserver"
    context with those modules preloaded forks a warm process instead. The run still gets
    its own process (a crash or a leak stays in it); it receives its environment and
    payload through the same pickled arguments as with spawn. Prefect looks the context up
    by name at each run start (prefect.flow_engine.run_flow_in_subprocess); if a Prefect
    release changes that, this returns False and runs start the usual way.
    """
    import multiprocessing
    import multiprocessing.forkserver

    import prefect.flow_engine as engine

    if getattr(engine, "multiprocessing", None) is not multiprocessing:
        return False
    modules = ["prefect", "prefect.flow_engine"] + [
        f.removesuffix(".py").replace("/", ".") for f in entrypoint_files
    ]
    warm = multiprocessing.get_context("forkserver")
    warm.set_forkserver_preload(list(dict.fromkeys(modules)))
    multiprocessing.forkserver.ensure_running()

    class _SpawnIsWarm:
        def __getattr__(self, name: str) -> Any:
            return getattr(multiprocessing, name)

        def get_context(self, method: str | None = None) -> Any:
            return warm if method == "spawn" else multiprocessing.get_context(method)

    engine.multiprocessing = _SpawnIsWarm()  # type: ignore[assignment]
    return True
