"""Who may call the intake, and how often: bearer tokens by scope and a token bucket per
client, checked before any route runs (docs/intake.md, Auth and rate limit).

Scopes: `alert` (post alerts and incident reports: Alertmanager, the sweep), `read` (every
GET) and `act` (every other change a person makes: silences, the kill switch, ack, close,
reopen, labels, post-mortem acceptance). `RUNBOOKS_INTAKE_TOKEN` carries all three. With
no token set at all the intake is open, for local use. `/healthz`, the OpenAPI document
and Slack's endpoint (signed by Slack) take no token; only `/healthz` escapes the limit.
"""

from __future__ import annotations

import hmac
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

SETTING = {
    "all": "RUNBOOKS_INTAKE_TOKEN",
    "alert": "RUNBOOKS_INTAKE_ALERT_TOKEN",
    "read": "RUNBOOKS_INTAKE_READ_TOKEN",
    "act": "RUNBOOKS_INTAKE_ACT_TOKEN",
}
SCOPES = ("alert", "read", "act")
OPEN_PATHS = frozenset(
    {"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
     "/api/v1/slack/interactions"}
)  # fmt: skip
UNLIMITED_PATHS = frozenset({"/healthz"})
_ALERT_POSTS = re.compile(r"/api/v1/(alerts|alerts/alertmanager|model-governance/[^/]+/incidents)")


def scope_of(method: str, path: str) -> str | None:
    """The scope a request needs; None for the open paths. Anything else needs one (an
    unknown path too), so a new route is never open by accident."""
    if path in OPEN_PATHS:
        return None
    if method == "POST" and _ALERT_POSTS.fullmatch(path):
        return "alert"
    if method in ("GET", "HEAD"):
        return "read"
    return "act"


@dataclass(frozen=True)
class Tokens:
    """The configured tokens; an empty one is not set."""

    all: str = ""
    alert: str = ""
    read: str = ""
    act: str = ""

    def enabled(self) -> bool:
        return any((self.all, self.alert, self.read, self.act))

    def match(self, presented: str) -> tuple[str | None, frozenset[str]]:
        """Which configured token this is and the scopes it carries. Every configured token
        is compared, each in constant time, so the answer's timing tells nothing."""
        given = presented.encode("utf-8", "surrogateescape")
        name, scopes = None, frozenset[str]()
        for kind in ("all", *SCOPES):
            configured = getattr(self, kind)
            if configured and hmac.compare_digest(given, configured.encode()):
                name = kind
                scopes = frozenset(SCOPES) if kind == "all" else frozenset({kind})
        return name, scopes


def needs(scope: str) -> str:
    return f"the {scope} scope ({SETTING[scope]} or {SETTING['all']})"


class TokenBuckets:
    """One bucket of `burst` requests per client, refilled at `rate` a second. `take`
    answers 0 when the request may go, else the seconds until it could."""

    def __init__(
        self,
        rate: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        self.rate, self.burst = rate, max(1, burst)
        self.clock, self.max_clients = clock, max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str) -> float:
        now = self.clock()
        tokens, last = self._buckets.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[client] = (tokens - 1, now)
            wait = 0.0
        else:
            self._buckets[client] = (tokens, now)
            wait = (1 - tokens) / self.rate
        if len(self._buckets) > self.max_clients:
            self._forget_full(now)
        return wait

    def _forget_full(self, now: float) -> None:
        # A full bucket is the same as no bucket: dropping them bounds the memory that a
        # sender of many addresses could make the intake hold.
        for c, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self.rate >= self.burst:
                del self._buckets[c]


def _route_path(scope: dict[str, Any]) -> str:
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class IntakeGuard:
    """ASGI middleware: the rate limit, then the token's scope, before any route."""

    def __init__(self, app: Any, tokens: Tokens, buckets: TokenBuckets | None) -> None:
        self.app, self.tokens, self.buckets = app, tokens, buckets

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        need = scope_of(scope["method"], path)
        who, granted = None, frozenset[str]()
        if need is not None and self.tokens.enabled():
            scheme, _, value = Headers(scope=scope).get("authorization", "").partition(" ")
            if scheme.lower() == "bearer":
                who, granted = self.tokens.match(value.strip())
        if self.buckets is not None and path not in UNLIMITED_PATHS:
            # The client is the token when it is a valid one, else the address: a sender
            # trying tokens at random spends its address's bucket.
            client = f"token:{who}" if who else f"address:{(scope.get('client') or ('?',))[0]}"
            wait = self.buckets.take(client)
            if wait:
                await self._refuse(scope, receive, send, 429, self._too_many(wait), wait)
                return
        if need is not None and self.tokens.enabled():
            if who is None:
                message = (
                    "missing or wrong bearer token: send the header "
                    f"'Authorization: Bearer <token>' with a token of {needs(need)}"
                )
                await self._refuse(scope, receive, send, 401, message)
                return
            if need not in granted:
                message = (
                    f"this token may not do {scope['method']} {path}: it needs {needs(need)}; "
                    f"the token given has the {', '.join(sorted(granted))} scope"
                )
                await self._refuse(scope, receive, send, 403, message)
                return
        await self.app(scope, receive, send)

    def _too_many(self, wait: float) -> str:
        assert self.buckets is not None
        return (
            f"too many requests from this client: more than {self.buckets.burst} at once or "
            f"{self.buckets.rate:g} a second; retry after {math.ceil(wait)} s, or raise "
            "RUNBOOKS_INTAKE_RATE_PER_SECOND or RUNBOOKS_INTAKE_RATE_BURST"
        )

    @staticmethod
    async def _refuse(
        scope: Any, receive: Any, send: Any, status: int, message: str, wait: float = 0
    ) -> None:
        headers = {}
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if wait:
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
        await JSONResponse({"error": message}, status_code=status, headers=headers)(
            scope, receive, send
        )
