"""Run some deployments' flow runs on threads of `runbooks serve`, and start runs when
Prefect schedules them instead of at the next poll.

Measured on a 2-core machine (bench/alert_to_action.py), a flow run forked from a warm
process spent 0.66-1.05 s between the runner taking it (Pending) and its engine running it
(Running): a new process builds Prefect's settings, HTTP clients with their TLS contexts,
its SQLAlchemy statement cache and websocket subscriptions from nothing. The alert's path
pays that twice (triage, then the runbook). A thread of the process that already holds
all of that takes 0.14-0.18 s for the same step.

Prefect's runner still owns every run: it polls, claims the run (Pending), counts it
against `--limit`, watches for cancellation and marks a run whose "process" died Crashed.
Only the start differs: the runner's direct starter calls the module-level
`run_flow_in_subprocess` ("patch the module to override", its docstring says), and for a
deployment tagged `in-process` in prefect.yaml that call returns a thread shaped as the
process the runner expects. A cancelled in-process run has no process to kill: `Runner`
below stops its thread and marks it Cancelled.

What a thread gives up: a run that leaks memory or blocks the interpreter does so in the
serve process, so only the short runbooks on the alert's path are tagged; the audits and
the sweep keep their own processes.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
import time
import uuid
from typing import Any

IN_PROCESS_TAG = "in-process"
log = logging.getLogger("runbooks.serve")


class RunCancelled(BaseException):
    """Raised inside an in-process run's thread when its flow run is cancelled.

    A BaseException, so the runbook's own `except Exception` clauses do not swallow it.
    """


class InProcessRun:
    """One flow run on a thread, with the parts of multiprocessing.Process the runner
    reads: `pid` (None: there is no process to signal), `exitcode`, `join`, `is_alive`."""

    pid = None
    running: dict[uuid.UUID, InProcessRun] = {}
    _lock = threading.Lock()

    def __init__(self, flow: Any, flow_run: Any) -> None:
        self.flow, self.flow_run = flow, flow_run
        self.exitcode: int | None = None
        self.cancelled = False
        self.thread = threading.Thread(
            target=self._run, name=f"flow-run {flow_run.name}", daemon=True
        )
        with self._lock:
            self.running[flow_run.id] = self
        self.thread.start()

    def _run(self) -> None:
        from prefect.flow_engine import run_flow

        try:
            # return_type="state": a Failed run is an outcome the engine has recorded, as
            # a process that exits after reporting it; exit code 1 is for what it did not.
            run_flow(self.flow, flow_run=self.flow_run, return_type="state")
            self.exitcode = 0
        except RunCancelled:
            self.exitcode = 0 if self.cancelled else 1
        except BaseException:
            log.exception("flow run %s ended outside Prefect's engine", self.flow_run.id)
            self.exitcode = 1
        finally:
            with self._lock:
                self.running.pop(self.flow_run.id, None)

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def cancel(self, grace_seconds: float = 30) -> bool:
        """Raise RunCancelled in the run's thread (at its next Python instruction: a run
        waiting on a pause wakes every few seconds) and wait for the thread to end."""
        self.cancelled = True
        ident = self.thread.ident
        if ident is not None and self.thread.is_alive():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(ident), ctypes.py_object(RunCancelled)
            )
        self.thread.join(grace_seconds)
        return not self.thread.is_alive()


def start_tagged_runs_in_threads(tagged: set[str]) -> bool:
    """Start the runs of the flows named in `tagged` on threads; others as before.

    Returns False when this Prefect release no longer starts runs through
    `prefect.runner._starter_direct.run_flow_in_subprocess`: then every run keeps its own
    process, which is slower and still correct.
    """
    try:
        import prefect.runner._starter_direct as direct
    except ImportError:
        return False
    original = getattr(direct, "run_flow_in_subprocess", None)
    if original is None:
        return False

    def run_flow_here_or_in_subprocess(flow: Any, flow_run: Any = None, **kwargs: Any) -> Any:
        if flow_run is not None and flow.name in tagged:
            return InProcessRun(flow, flow_run)
        return original(flow, flow_run=flow_run, **kwargs)

    direct.run_flow_in_subprocess = run_flow_here_or_in_subprocess
    without_suspension_watch()
    return True


def runner_class() -> type:
    """Prefect's Runner, cancelling in-process runs by stopping their threads: one at a
    time from the UI or API, and all of them when `runbooks serve` stops (as the runner
    kills and marks Cancelled the runs in processes of their own)."""
    from prefect import get_client
    from prefect.runner import Runner as PrefectRunner
    from prefect.states import Cancelled

    async def cancel(run: InProcessRun, state_msg: str | None) -> None:
        stopped = await asyncio.to_thread(run.cancel)
        message = state_msg or "Flow run was cancelled."
        if not stopped:
            message += " Its thread did not stop within 30 s; it is abandoned."
        async with get_client() as client:
            state = await client.set_flow_run_state(
                run.flow_run.id, Cancelled(message=message), force=True
            )
        # The flow's on_cancellation hooks, as the runner runs them after killing a process.
        for hook in getattr(run.flow, "on_cancellation_hooks", None) or []:
            try:
                await asyncio.to_thread(
                    hook, run.flow, run.flow_run, state.state or Cancelled(message=message)
                )
            except Exception:
                log.exception("on_cancellation hook of flow run %s failed", run.flow_run.id)

    class Runner(PrefectRunner):
        async def _cancel_run(self, flow_run: Any, state_msg: str | None = None) -> None:
            run_id = flow_run if isinstance(flow_run, uuid.UUID) else flow_run.id
            run = InProcessRun.running.get(run_id)
            if run is None:
                await super()._cancel_run(flow_run, state_msg)
                return
            if state_msg is None:
                # Whoever cancelled may have said why (the API's Cancelling message): that
                # reason, not the runner's stock one, goes on the incident's timeline.
                async with get_client() as client:
                    current = (await client.read_flow_run(run_id)).state
                if current is not None and current.is_cancelling():
                    state_msg = current.message or None
            await cancel(run, state_msg)

        async def cancel_all(self) -> None:
            with InProcessRun._lock:
                runs = list(InProcessRun.running.values())
            await asyncio.gather(
                *(cancel(r, "runbooks serve stopped while the run was in flight") for r in runs),
                return_exceptions=True,
            )
            await super().cancel_all()

    return Runner


async def start_runs_when_scheduled(runner: Any, deployment_ids: set[uuid.UUID]) -> None:
    """Hand the runner each run Prefect schedules for its deployments as soon as it is
    scheduled (the `prefect.flow-run.Scheduled` event, over Prefect's events websocket),
    instead of at its next poll. The poll stays, for runs scheduled while this was not
    listening and for runs scheduled for later."""
    from prefect import get_client
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    flt = EventFilter(event=EventNameFilter(name=["prefect.flow-run.Scheduled"]))
    wanted = {f"prefect.deployment.{d}" for d in deployment_ids}
    while True:
        try:
            async with get_client() as client, get_events_subscriber(filter=flt) as events:
                async for event in events:
                    if not getattr(runner, "started", False):
                        continue
                    if wanted.isdisjoint(r.id for r in event.related):
                        continue
                    await submit(runner, client, uuid.UUID(event.resource.id.rsplit(".", 1)[1]))
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the server restarting: the poll covers the gap
            log.warning("runbooks serve: events subscription lost (%s); retrying in 2 s", err)
            await asyncio.sleep(2)


async def submit(runner: Any, client: Any, flow_run_id: uuid.UUID) -> None:
    """Give the runner this one run, as its poll would have found it (the poll's query
    over every deployment took 0.05-0.4 s on a busy 2-core machine; reading one run, a
    few ms). The runner's own bookkeeping skips a run it is already submitting, and the
    server lets only one claim move the run to Pending."""
    poller = getattr(runner, "_scheduled_run_poller", None)
    hand_over = getattr(poller, "_submit_scheduled_flow_runs", None)
    group = getattr(runner, "_runs_task_group", None)
    if hand_over is None or group is None:
        await runner._get_and_submit_flow_runs()  # an older runner: ask it to poll now
        return
    flow_run = await client.read_flow_run(flow_run_id)
    due = flow_run.next_scheduled_start_time or flow_run.expected_start_time
    if flow_run.state is None or not flow_run.state.is_scheduled():
        return
    if due is not None and due.timestamp() > time.time() + 1:
        return  # scheduled for later: the poll's prefetch takes it when due
    await hand_over(flow_run_response=[flow_run], task_group=group)


def without_suspension_watch() -> None:
    """No per-run websocket watch for server-side suspension in in-process runs.

    Prefect 3.9's engine opens, for every deployment's run, a websocket that waits for a
    `Suspended` state set from outside (suspend_flow_run on another run's id) and blocks
    the run's start until it is subscribed: 0.1 s of each in-process run's start, paid
    twice on an alert's path. These runbooks never suspend (an approval pauses and
    stays in its process); a run started in a process of its own keeps the watch.
    """
    import contextlib

    import prefect.flow_engine as engine

    original = getattr(engine, "observe_flow_run_suspension", None)
    if original is None:
        return

    @contextlib.contextmanager
    def watch_unless_in_process(flow_run_id: Any, *args: Any, **kwargs: Any) -> Any:
        if flow_run_id in InProcessRun.running:
            yield
            return
        with original(flow_run_id, *args, **kwargs):
            yield

    engine.observe_flow_run_suspension = watch_unless_in_process  # type: ignore[assignment]
