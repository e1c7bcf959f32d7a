"""PagerDuty's Events API v2 on a real port (POST /v2/enqueue: 202 with the dedup_key,
400 for an event without routing_key or event_action), and a webhook receiver: both
record what came and can be told to answer the next posts with another status."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    raw: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def body(self) -> Any:
        return json.loads(self.raw)


class Recorder:
    """A real HTTP server that records posts; `statuses` answers the next ones."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.statuses: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                got = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, raw)
                outer.received.append(got)
                status, body = outer.answer(got)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, got: Received) -> tuple[int, dict[str, Any]]:
        if self.statuses:
            return self.statuses.pop(0), {"status": "error", "message": "told to fail"}
        return 200, {"ok": True}

    def reset(self) -> None:
        self.received.clear()
        self.statuses.clear()
        self.echo = False

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakePagerDuty(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.events_url = f"{self.url}/v2/enqueue"
        # A careless server quoting the request back: what the product writes must not.
        self.echo = False

    def answer(self, got: Received) -> tuple[int, dict[str, Any]]:
        if self.statuses:
            status = self.statuses.pop(0)
            if status == 400:
                return 400, {
                    "status": "invalid event",
                    "message": "Event object is invalid",
                    "errors": ["'payload.severity' is invalid"],
                    **({"event": got.body} if self.echo else {}),
                }
            return status, {"status": "throttled" if status == 429 else "error"}
        event = got.body
        if got.path != "/v2/enqueue" or not event.get("routing_key"):
            return 400, {"status": "invalid event", "errors": ["'routing_key' is missing"]}
        if event.get("event_action") not in ("trigger", "acknowledge", "resolve"):
            return 400, {"status": "invalid event", "errors": ["'event_action' is invalid"]}
        return 202, {
            "status": "success",
            "message": "Event processed",
            "dedup_key": event.get("dedup_key") or "generated",
        }

    def events(self) -> list[dict[str, Any]]:
        return [r.body for r in self.received]
