"""The intake: where alerts enter. Validate, persist before answering, group into incidents,
and stage the Prefect event that starts the runbook (delivered by the outbox).

Endpoints are documented in docs/intake.md.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import BackgroundTasks, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlmodel import Session, col, func, select
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.intake_guard import IntakeGuard, TokenBuckets, Tokens
from deployments.outbox import OutboxDeliverer
from runbooks import remediation, silences
from runbooks.alerts import (
    AlertIn,
    AlertPayloadError,
    parse_alertmanager,
    parse_generic,
    parse_report,
)
from runbooks.changes import recent_changes
from runbooks.escalation import NoSuchIncident, acknowledge_incident
from runbooks.incidents import IncidentStateError, add_timeline, close, reopen
from runbooks.ingest import IngestResult, ingest, open_reported_incident
from runbooks.labels import LabelInputError, add_label, label_view, labels_of, parse_label
from runbooks.models import Action, Alert, Incident, TimelineEvent, utcnow
from runbooks.policy import Policy
from runbooks.postmortem import build as build_postmortem
from runbooks.postmortem import gather as gather_postmortem
from runbooks.postmortem import redraft as redraft_postmortem
from runbooks.reporting import ReportInputError, incident_report, parse_moment
from runbooks.store import migrate, session_scope, writer_slot

log = logging.getLogger("runbooks.intake")
WRITE_ATTEMPTS = 5
# Ids are 64-bit signed in the store; a larger one is refused (422), not sent to the
# driver (which raised OverflowError: a 500).
MAX_ID = 2**63 - 1
IncidentId = Annotated[int, Path(ge=1, le=MAX_ID, description="The incident's id.")]


def _retryable(err: OperationalError) -> bool:
    text = str(err.orig).lower()
    return any(m in text for m in ("deadlock", "database is locked", "could not serialize"))


def store_alerts(
    database_url: str, alerts: list[AlertIn], policy: Policy, writers: int = 2
) -> IngestResult:
    """One post in one transaction, retried whole when it collided with another post."""
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            with writer_slot(database_url, writers), session_scope(database_url) as s:
                return ingest(s, alerts, policy)
        except OperationalError as err:
            # Two posts folding alerts into the same incidents can deadlock (PostgreSQL
            # aborts one) or find SQLite locked (another process writing): the whole post is
            # retried, so the sender gets its 202, never a 5xx for a collision.
            if attempt == WRITE_ATTEMPTS or not _retryable(err):
                raise
            time.sleep(random.uniform(0.01, 0.05) * attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


STATUS_CHANGES = {"close": close, "reopen": reopen}


def tell_acknowledged(incident_id: int, by: str) -> None:
    """PagerDuty's acknowledge and the thread's message; never raises (notify's rule)."""
    # Imported here, off the event loop: it brings Prefect and slack_sdk.
    from tasks.notifications import notify

    notify.fn(incident_id, "acknowledged", data={"by": by, "via": "api"})


class IntakeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def alert_view(a: Alert) -> dict[str, Any]:
    view = a.model_dump(mode="json")
    view["suppressed"] = a.suppressed_reason is not None
    return view


def incident_view(s: Session, incident: Incident, timeline: bool) -> dict[str, Any]:
    view: dict[str, Any] = incident.model_dump(mode="json", exclude={"open_group_key"})
    alerts = s.exec(select(Alert).where(Alert.incident_id == incident.id).order_by(col(Alert.id)))
    view["alerts"] = [alert_view(a) for a in alerts]
    view["suppressed"] = incident.suppressed_reason is not None
    if timeline:
        events = s.exec(
            select(TimelineEvent)
            .where(TimelineEvent.incident_id == incident.id)
            .order_by(col(TimelineEvent.at), col(TimelineEvent.id))
        )
        view["timeline"] = [
            e.model_dump(mode="json", include={"at", "actor", "kind", "message", "data"})
            for e in events
        ]
        actions = s.exec(
            select(Action).where(Action.incident_id == incident.id).order_by(col(Action.id))
        )
        view["actions"] = [a.model_dump(mode="json", exclude={"incident_id"}) for a in actions]
    return view


def validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e.get("loc", ())[1:]) or "request"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "; ".join(parts)


def page(s: Session, q: Any, newest: Any, limit: int, offset: int) -> tuple[list[Any], int]:
    """One page, newest first, and the count of every match (not just the page)."""
    if not 1 <= limit <= 500:
        raise IntakeError(400, f"limit must be between 1 and 500, got {limit}")
    if not 0 <= offset <= MAX_ID:
        raise IntakeError(400, f"offset must be between 0 and {MAX_ID}, got {offset}")
    total = s.exec(select(func.count()).select_from(q.subquery())).one()
    return list(s.exec(q.order_by(newest.desc()).offset(offset).limit(limit)).all()), total


def create_app(
    database_url: str,
    policy: Policy,
    *,
    token: str = "",
    max_body_bytes: int = 1_048_576,
    writers: int = 2,
    deliverer: OutboxDeliverer | None = None,
    slack_socket_mode: bool = False,
    max_pending: int = 32,
    alert_token: str = "",
    read_token: str = "",
    act_token: str = "",
    rate_per_second: float = 0.0,
    rate_burst: int = 1,
) -> FastAPI:
    """The intake app. `deliverer` is poked after each commit so events leave at once.
    With `slack_socket_mode` it also takes Slack's button presses over a websocket.
    More than `max_pending` alert posts in flight and the next one gets 503 at once.
    `token` has every scope, the others one (deployments/intake_guard.py); each client
    may make `rate_burst` requests at once and `rate_per_second` after (0: no limit)."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
        await run_in_threadpool(migrate, database_url)
        if deliverer is not None:
            deliverer.start()
        socket = None
        if slack_socket_mode:
            from deployments import slack_interactions

            poke = deliverer.poke if deliverer is not None else (lambda: None)
            socket = slack_interactions.over_socket_mode(policy, database_url, poke).start()
            _app.state.slack_socket = socket
        yield
        if socket is not None:
            await run_in_threadpool(socket.stop)
        if deliverer is not None:
            await run_in_threadpool(deliverer.stop)

    app = FastAPI(title="ML Runbooks intake", version="1", lifespan=lifespan)

    @app.exception_handler(IntakeError)
    async def _intake_error(_r: Request, exc: IntakeError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _store_unreachable(
        r: Request, exc: OperationalError | InterfaceError
    ) -> JSONResponse:
        # PostgreSQL down or restarting ("connection refused", "the database system is
        # shutting down"): a 503 that Alertmanager retries, at once, instead of a bare 500
        # and a traceback per request (seen with the store restarted mid-storm).
        reason = str(getattr(exc, "orig", exc) or type(exc).__name__).strip().splitlines()[0]
        log.warning("%s %s: the incident store is unreachable: %s", r.method, r.url.path, reason)
        return JSONResponse(
            {
                "error": f"the incident store is unreachable ({reason}); this request did not "
                "complete: send it again after Retry-After (a resent alert is stored once); "
                "if it lasts, check the database RUNBOOKS_DATABASE_URL names"
            },
            status_code=503,
            headers={"Retry-After": str(random.randint(1, 5))},
        )

    @app.exception_handler(AlertPayloadError)
    async def _payload_error(_r: Request, exc: AlertPayloadError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def _parameter_error(_r: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own answer is {"detail": [...]}; the intake's name the parameter.
        return JSONResponse({"error": validation_message(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _routing_error(r: Request, exc: StarletteHTTPException) -> JSONResponse:
        # An unknown path (404) or method (405), in the intake's form.
        return JSONResponse(
            {"error": f"{r.method} {r.url.path}: {exc.detail}; the routes are in docs/intake.md"},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    app.add_middleware(
        IntakeGuard,
        tokens=Tokens(token, alert_token, read_token, act_token),
        buckets=TokenBuckets(rate_per_second, rate_burst) if rate_per_second > 0 else None,
    )

    async def body_of(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            raise IntakeError(
                413,
                f"body of {declared} bytes is over the limit of "
                f"{max_body_bytes}; split the post or raise "
                "RUNBOOKS_INTAKE_MAX_BODY_BYTES",
            )
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > max_body_bytes:
                raise IntakeError(
                    413,
                    f"body is over the limit of {max_body_bytes} bytes; "
                    "split the post or raise RUNBOOKS_INTAKE_MAX_BODY_BYTES",
                )
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise IntakeError(400, f"body is not valid JSON: {err}") from None

    async def person_body(request: Request, doing: str, why: bool = False) -> dict[str, Any]:
        """A person's request body: {"by": NAME} (and "why" when `why`); 422 naming the
        field otherwise. `doing` finishes "say who ...". "by" comes back stripped."""
        body = await body_of(request)
        fields = {"by", "why"} if why else {"by"}
        example = '{"by": "alice", "why": "..."}' if why else '{"by": "alice"}'
        if not isinstance(body, dict):
            raise IntakeError(422, f"body must be an object like {example}, got {body!r}")
        unknown = sorted(set(body) - fields)
        if unknown:
            takes = 'takes "by" and "why"' if why else 'takes only "by"'
            raise IntakeError(422, f"unknown fields {unknown}; this {takes}")
        by = body.get("by")
        if not isinstance(by, str) or not by.strip():
            raise IntakeError(422, f'by: say who {doing}, e.g. {{"by": "alice"}}; got {by!r}')
        return {**body, "by": by.strip()}

    def store(alerts: list[AlertIn]) -> IngestResult:
        result = store_alerts(database_url, alerts, policy, writers)
        if deliverer is not None:
            deliverer.poke()
        return result

    def accepted(result: IngestResult) -> JSONResponse:
        return JSONResponse(
            {
                "accepted": len(result.items),
                "incidents": result.incident_ids,
                "alerts": [vars(i) for i in result.items],
            },
            status_code=202,
        )

    in_flight = 0  # alert posts being read, waiting for a writer slot, or writing

    async def take_alerts(request: Request, parse: Callable[[Any], list[AlertIn]]) -> JSONResponse:
        """Backpressure: past `max_pending` posts in flight, answer 503 and Retry-After at
        once rather than queue a post past its sender's timeout (Alertmanager's is 10 s; it
        retries a 5xx). Nothing refused was stored. Counted on the event loop, before any
        thread: reads and /healthz keep threads of their own."""
        nonlocal in_flight
        if in_flight >= max_pending:
            return JSONResponse(
                {
                    "error": f"the intake has {in_flight} alert posts in flight, its limit; "
                    "nothing of this post was stored: send it again after Retry-After, "
                    "or raise RUNBOOKS_INTAKE_MAX_PENDING or add an intake replica"
                },
                status_code=503,
                headers={"Retry-After": str(random.randint(1, 5))},
            )
        in_flight += 1
        try:
            alerts = parse(await body_of(request))
            return accepted(await run_in_threadpool(store, alerts))
        finally:
            in_flight -= 1

    @app.post("/api/v1/alerts/alertmanager", status_code=202)
    async def alertmanager(request: Request) -> JSONResponse:
        return await take_alerts(request, parse_alertmanager)

    @app.post("/api/v1/alerts", status_code=202)
    async def generic(request: Request) -> JSONResponse:
        return await take_alerts(request, lambda body: parse_generic(body, utcnow()))

    @app.post("/api/v1/model-governance/{model_id}/incidents", status_code=201)
    async def report(model_id: str, request: Request) -> JSONResponse:
        rep, alert = parse_report(model_id, await body_of(request), utcnow())

        def write() -> dict[str, Any]:
            with session_scope(database_url) as s:
                incident = open_reported_incident(s, alert, rep.severity, rep.type, rep.description)
                view = incident_view(s, incident, timeline=True)
            if deliverer is not None:
                deliverer.poke()
            return view

        return JSONResponse(await run_in_threadpool(write), status_code=201)

    @app.get("/api/v1/incidents")
    def list_incidents(
        request: Request,
        status: str | None = None,
        model: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        with session_scope(database_url) as s:
            q = select(Incident)
            if status:
                q = q.where(Incident.status == status)
            if model:
                q = q.where(Incident.model == model)
            rows, total = page(s, q, col(Incident.id), limit, offset)
            return {"total": total, "items": [incident_view(s, i, timeline=False) for i in rows]}

    @app.get("/api/v1/incidents/{incident_id}")
    def get_incident(incident_id: IncidentId) -> dict[str, Any]:
        with session_scope(database_url) as s:
            incident = s.get(Incident, incident_id)
            if incident is None:
                raise IntakeError(404, f"no incident {incident_id}; list them at /api/v1/incidents")
            return incident_view(s, incident, timeline=True)

    @app.post("/api/v1/incidents/{incident_id}/close")
    async def close_incident(incident_id: IncidentId, request: Request) -> dict[str, Any]:
        """A person closes a resolved incident (as `runbooks incidents ID --close`)."""
        return await change_status(incident_id, "close", request)

    @app.post("/api/v1/incidents/{incident_id}/reopen")
    async def reopen_incident(incident_id: IncidentId, request: Request) -> dict[str, Any]:
        """A person reopens an ended incident (as `runbooks incidents ID --reopen`): triage
        decides again and the escalation clock runs from now."""
        return await change_status(incident_id, "reopen", request)

    async def change_status(incident_id: int, change: str, request: Request) -> dict[str, Any]:
        """Each change on the timeline with who and why; doing it twice changes nothing."""
        body = await person_body(request, "does it", why=True)
        by, why = body["by"], body.get("why") or f"{change}d by hand"
        if not isinstance(why, str):
            raise IntakeError(422, f"why: a sentence, got {why!r}")

        def write() -> tuple[bool, dict[str, Any]]:
            with session_scope(database_url) as s:
                incident = s.get(Incident, incident_id)
                if incident is None:
                    raise IntakeError(404, f"no incident {incident_id}")
                try:
                    changed = STATUS_CHANGES[change](s, incident, by, why)
                except IncidentStateError as err:
                    raise IntakeError(409, str(err)) from None
                s.flush()
                return changed, incident_view(s, incident, timeline=True)

        changed, view = await run_in_threadpool(write)
        if changed and deliverer is not None:
            deliverer.poke()  # a reopening's ml.incident.opened waits in the outbox
        return {"changed": changed, "incident": view}

    @app.post("/api/v1/incidents/{incident_id}/ack")
    async def acknowledge(
        incident_id: IncidentId, request: Request, background: BackgroundTasks
    ) -> dict[str, Any]:
        """Somebody has it (as `runbooks ack`): the escalation chain stops. PagerDuty and
        the incident's thread are told after the answer, so that it comes at once."""
        by = (await person_body(request, "acknowledges"))["by"]

        def write() -> tuple[Any, dict[str, Any]]:
            with session_scope(database_url) as s:
                try:
                    ack = acknowledge_incident(s, incident_id, by, "api")
                except NoSuchIncident as err:
                    raise IntakeError(404, str(err)) from None
                except IncidentStateError as err:
                    raise IntakeError(409, str(err)) from None
                return ack, incident_view(s, s.get(Incident, incident_id), timeline=True)

        ack, view = await run_in_threadpool(write)
        if ack.first:
            if deliverer is not None:
                deliverer.poke()  # ml.incident.acknowledged waits in the outbox
            background.add_task(tell_acknowledged, incident_id, ack.by)
        return {**view, "message": ack.line}

    @app.get("/api/v1/incidents/{incident_id}/postmortem")
    def get_postmortem(incident_id: IncidentId) -> dict[str, Any]:
        """The stored post-mortem; else built now from the store and not stored (a draft of
        an active incident, or one the postmortem flow has not written yet)."""
        with session_scope(database_url) as s:
            try:
                incident, facts, labels = gather_postmortem(s, incident_id)
            except NoSuchIncident as err:
                raise IntakeError(404, str(err)) from None
            if incident.postmortem is not None:
                return {**incident.postmortem, "stored": True}
            report = build_postmortem(incident, facts, labels, policy, utcnow())
            return {**report.model_dump(mode="json"), "stored": False}

    @app.post("/api/v1/incidents/{incident_id}/postmortem/accept")
    async def accept_postmortem(incident_id: IncidentId, request: Request) -> dict[str, Any]:
        """A person accepts the post-mortem: the resolved incident closes."""
        by = (await person_body(request, "accepts it"))["by"]

        def write() -> dict[str, Any]:
            with session_scope(database_url) as s:
                try:
                    incident, facts, labels = gather_postmortem(s, incident_id)
                    close(s, incident, by, f"post-mortem accepted by {by}")
                except NoSuchIncident as err:
                    raise IntakeError(404, str(err)) from None
                except IncidentStateError as err:
                    raise IntakeError(409, str(err)) from None
                if incident.postmortem_accepted_by is None:
                    if incident.postmortem is None:
                        # What was accepted is kept: the report as it stood then.
                        report = build_postmortem(incident, facts, labels, policy, utcnow())
                        incident.postmortem = report.model_dump(mode="json")
                    incident.postmortem_accepted_by = by
                    s.add(incident)
                    add_timeline(s, incident_id, by, "postmortem", f"post-mortem accepted by {by}")
                s.flush()
                return incident_view(s, incident, timeline=True)

        return await run_in_threadpool(write)

    @app.post("/api/v1/incidents/{incident_id}/labels", status_code=201)
    async def label_incident(incident_id: IncidentId, request: Request) -> JSONResponse:
        """A person's root cause for the incident (as `runbooks label`): one timeline line."""
        body = await body_of(request)
        try:
            fields = parse_label(body)
        except LabelInputError as err:
            raise IntakeError(422, str(err)) from None

        def write() -> dict[str, Any]:
            with session_scope(database_url) as s:
                try:
                    label = label_view(add_label(s, incident_id, **fields))
                except NoSuchIncident as err:
                    raise IntakeError(404, str(err)) from None
                redraft_postmortem(s, incident_id, policy, utcnow())
                return label

        return JSONResponse(await run_in_threadpool(write), status_code=201)

    @app.get("/api/v1/incidents/{incident_id}/labels")
    def list_labels(incident_id: IncidentId) -> dict[str, Any]:
        with session_scope(database_url) as s:
            try:
                items = [label_view(label) for label in labels_of(s, incident_id)]
            except NoSuchIncident as err:
                raise IntakeError(404, str(err)) from None
        return {"total": len(items), "items": items}

    @app.get("/api/v1/report")
    def report_incidents(
        request: Request, since: str = "30d", until: str | None = None
    ) -> dict[str, Any]:
        """The incident report (runbooks/reporting.py) over those opened in [since, until)."""
        now = utcnow()
        try:
            start = parse_moment("since", since, now)
            end = parse_moment("until", until, now) if until else now
        except ReportInputError as err:
            raise IntakeError(422, str(err)) from None
        if start >= end:
            raise IntakeError(
                422,
                f"since ({start.isoformat()}) must be before until ({end.isoformat()}); "
                "give an earlier since or a later until",
            )
        with session_scope(database_url) as s:
            return incident_report(s, start, end, now).model_dump(mode="json")

    @app.get("/api/v1/alerts")
    def list_alerts(
        request: Request,
        model: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        if status not in (None, "firing", "resolved", "suppressed"):
            raise IntakeError(400, f"status {status!r}: use firing, resolved or suppressed")
        with session_scope(database_url) as s:
            q = select(Alert)
            if model:
                q = q.where(Alert.model == model)
            if status == "suppressed":
                q = q.where(Alert.status == "firing", col(Alert.suppressed_reason).is_not(None))
            elif status:
                q = q.where(Alert.status == status)
            rows, total = page(s, q, col(Alert.id), limit, offset)
            return {"total": total, "items": [alert_view(a) for a in rows]}

    @app.post("/api/v1/silences", status_code=201)
    async def add_silence(request: Request) -> JSONResponse:
        body = await body_of(request)

        def write() -> dict[str, Any]:
            now = utcnow()
            silence = silences.build(body, now)
            with session_scope(database_url) as s:
                return silences.view(silences.add(s, silence), now)

        try:
            return JSONResponse(await run_in_threadpool(write), status_code=201)
        except silences.SilenceInputError as err:
            raise IntakeError(422, str(err)) from None

    @app.get("/api/v1/silences")
    def list_silences(state: str | None = None) -> dict[str, Any]:
        try:
            with session_scope(database_url) as s:
                items = silences.listing(s, state, utcnow())
        except silences.SilenceInputError as err:
            raise IntakeError(400, str(err)) from None
        return {"total": len(items), "items": items}

    @app.delete("/api/v1/silences/{silence_id}")
    def expire_silence(silence_id: str, by: str = "") -> dict[str, Any]:
        """Expire a silence now; `?by=NAME` says who (kept as a change record)."""
        now = utcnow()
        with session_scope(database_url) as s:
            row = silences.expire(s, silence_id, now, by.strip())
            if row is None:
                raise IntakeError(404, f"no silence {silence_id}; list them at /api/v1/silences")
            return silences.view(row, now)

    @app.get("/api/v1/changes")
    def list_changes(limit: int = 50) -> dict[str, Any]:
        """Who added or expired silences and switched the kill switch, newest first."""
        if not 1 <= limit <= 500:
            raise IntakeError(422, f"limit: between 1 and 500, got {limit}")
        with session_scope(database_url) as s:
            rows = recent_changes(s, limit)
            return {"items": [r.model_dump(mode="json") for r in rows]}

    @app.get("/api/v1/automation")
    def automation_status() -> dict[str, Any]:
        with session_scope(database_url) as s:
            items = [remediation.pause_view(p) for p in remediation.automation_pauses(s)]
        return {"paused": bool(items), "items": items}

    @app.post("/api/v1/automation/pause")
    async def pause_automation(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        return await run_in_threadpool(switch, body, True)

    @app.post("/api/v1/automation/resume")
    async def resume_automation(request: Request) -> dict[str, Any]:
        body = await body_of(request)
        return await run_in_threadpool(switch, body, False)

    def switch(body: dict[str, Any], pause: bool) -> dict[str, Any]:
        """The kill switch over HTTP, as `runbooks automation pause|resume`."""
        fields = {"model", "by", "comment"} if pause else {"model", "by"}
        if not isinstance(body, dict):
            raise IntakeError(422, f'body must be an object like {{"by": "alice"}}, got {body!r}')
        unknown = sorted(set(body) - fields)
        if unknown:
            raise IntakeError(422, f"unknown fields {unknown}; this takes {sorted(fields)}")
        for name in fields:
            if name in body and not isinstance(body[name], str | None):
                raise IntakeError(422, f"{name} must be a string, got {body[name]!r}")
        by = (body.get("by") or "").strip()
        if not by:
            raise IntakeError(422, 'by: say who switches automation, e.g. {"by": "alice"}')
        model = body.get("model") or None
        with session_scope(database_url) as s:
            try:
                line = remediation.switch_automation(s, pause, model, by, body.get("comment") or "")
            except ValueError as err:
                raise IntakeError(422, str(err)) from None
            except remediation.NotPaused as err:
                raise IntakeError(409, str(err)) from None
            items = [remediation.pause_view(p) for p in remediation.automation_pauses(s)]
        return {"message": line, "paused": bool(items), "items": items}

    @app.post("/api/v1/slack/interactions")
    async def slack_interaction(request: Request) -> JSONResponse:
        """Slack's button presses. No bearer token: Slack signs them (docs/notifications.md)."""
        raw = await request.body()
        if len(raw) > max_body_bytes:
            raise IntakeError(413, f"body is over the limit of {max_body_bytes} bytes")

        def handle() -> Any:
            # Imported here, off the event loop: it brings Prefect and slack_sdk.
            from deployments import slack_interactions

            return slack_interactions.handle_http(raw, dict(request.headers), policy, database_url)

        reply = await run_in_threadpool(handle)
        if deliverer is not None:
            deliverer.poke()
        return JSONResponse(
            reply.body, status_code=reply.status, background=BackgroundTask(reply.after)
        )

    @app.get("/healthz")
    def healthz(request: Request) -> dict[str, str]:
        with session_scope(database_url) as s:
            s.exec(select(1)).one()
        health = {"status": "ok"}
        socket = getattr(request.app.state, "slack_socket", None)
        if socket is not None:
            # Not a reason to be unhealthy: the HTTP endpoints work without Slack.
            health["slack_socket_mode"] = (
                "connected" if socket.connected() else socket.error or "connecting"
            )
        return health

    return app
