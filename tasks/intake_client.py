"""The intake's HTTP API, from the side of its clients: the monitoring sweep posting the
alerts it raises, `runbooks incidents` and `runbooks silence`, the demo's monitor.

The only module that knows the intake's paths and its bearer token. A refusal keeps the
intake's own words (they name the field and the fix); an intake that does not answer is
an `IntakeUnreachable` naming the URL and where it came from.
"""

from __future__ import annotations

from typing import Any

import httpx

from runbooks.settings import Settings
from tasks.retry import transient_http

TIMEOUT = httpx.Timeout(10.0, connect=3.0)
PAGE = 500


class IntakeUnreachable(RuntimeError):
    """The intake did not answer; the message names the URL and what to check, `reason`
    what the transport said."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class IntakeRefused(httpx.HTTPStatusError):
    """The intake answered with an error status; `error` is its own message."""

    def __init__(self, response: httpx.Response) -> None:
        request = response.request
        super().__init__(
            f"{request.method} {request.url} -> {response.status_code}: {response.text[:300]}",
            request=request,
            response=response,
        )
        self.error = _error_of(response)

    def __reduce__(self) -> tuple[Any, ...]:
        # A failed task's exception may be pickled; httpx's own takes keyword arguments.
        return (type(self), (self.response,))


def _error_of(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text
    return body.get("error", response.text) if isinstance(body, dict) else response.text


def transient(exc: BaseException) -> bool:
    """What a task may retry: no answer, 429 or 5xx; never a refusal of the request."""
    return isinstance(exc, IntakeUnreachable) or transient_http(exc)


class IntakeClient:
    """The intake at `url` (default RUNBOOKS_INTAKE_URL), sending `token` (default
    RUNBOOKS_INTAKE_TOKEN) as the bearer; `url_from` says where the URL came from, for
    the message when nothing answers there."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        url_from: str = "RUNBOOKS_INTAKE_URL",
        timeout: httpx.Timeout | float = TIMEOUT,
    ) -> None:
        if url is None or token is None:
            # Settings() and not the cached get_settings(): the environment of this run.
            env = Settings()
            url = env.intake_url if url is None else url
            token = env.intake_token if token is None else token
        self.url = url.rstrip("/")
        self.token = token
        self.url_from = url_from
        self.timeout = timeout

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """One request; its JSON answer, or IntakeRefused / IntakeUnreachable."""
        url = self.url + path
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            r = httpx.request(method, url, headers=headers, timeout=self.timeout, **kw)
        except httpx.TransportError as err:
            raise IntakeUnreachable(
                f"intake at {url} did not answer ({type(err).__name__}: {err}); is `runbooks "
                f"serve` running there? Check {self.url_from}",
                str(err),
            ) from err
        if r.status_code >= 400:
            raise IntakeRefused(r)
        return r.json()

    def post_alerts(self, alerts: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any]:
        """Generic alerts (docs/intake.md); one post is stored in one transaction."""
        return self.call("POST", "/api/v1/alerts", json=alerts)

    def get_incident(self, incident_id: int) -> dict[str, Any]:
        """The incident with its alerts, timeline and actions."""
        return self.call("GET", f"/api/v1/incidents/{incident_id}")

    def change_status(self, incident_id: int, change: str, by: str, why: str) -> dict[str, Any]:
        """close or reopen: {"changed": bool, "incident": {...}}."""
        body = {"by": by, **({"why": why} if why else {})}
        return self.call("POST", f"/api/v1/incidents/{incident_id}/{change}", json=body)

    def get_postmortem(self, incident_id: int) -> dict[str, Any]:
        """The incident's post-mortem: the stored one, else one built on the spot."""
        return self.call("GET", f"/api/v1/incidents/{incident_id}/postmortem")

    def accept_postmortem(self, incident_id: int, by: str) -> dict[str, Any]:
        """Accept the post-mortem: the resolved incident closes."""
        path = f"/api/v1/incidents/{incident_id}/postmortem/accept"
        return self.call("POST", path, json={"by": by})

    def list_incidents(self, **params: Any) -> dict[str, Any]:
        """One page of incidents, newest first: {"items": [...], "total": N}."""
        return self.call("GET", "/api/v1/incidents", params=params)

    def incidents_of(self, model: str) -> list[dict[str, Any]]:
        """Every incident of the model, oldest page last (the intake answers newest first)."""
        items: list[dict[str, Any]] = []
        while True:
            page = self.list_incidents(model=model, limit=PAGE, offset=len(items))
            items += page["items"]
            if not page["items"] or len(items) >= page["total"]:
                return items

    def add_silence(self, silence: dict[str, Any]) -> dict[str, Any]:
        return self.call("POST", "/api/v1/silences", json=silence)

    def list_silences(self, state: str) -> dict[str, Any]:
        return self.call("GET", "/api/v1/silences", params={"state": state})

    def expire_silence(self, silence_id: str, by: str = "") -> dict[str, Any]:
        params = {"by": by} if by else {}
        return self.call("DELETE", f"/api/v1/silences/{silence_id}", params=params)

    def add_label(self, incident_id: int, label: dict[str, Any]) -> dict[str, Any]:
        """A root-cause label (runbooks/labels.py); the stored label."""
        return self.call("POST", f"/api/v1/incidents/{incident_id}/labels", json=label)

    def list_labels(self, incident_id: int) -> dict[str, Any]:
        """The incident's labels, oldest first: {"items": [...], "total": N}."""
        return self.call("GET", f"/api/v1/incidents/{incident_id}/labels")

    def report(self, since: str, until: str | None = None) -> dict[str, Any]:
        """The incident report (runbooks/reporting.py) as JSON."""
        params = {"since": since} | ({"until": until} if until else {})
        return self.call("GET", "/api/v1/report", params=params)
