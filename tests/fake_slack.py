"""A Slack Web API that answers as Slack does, on a real port: chat.postMessage and
chat.update with `{"ok": true, "channel": "C..", "ts": ".."}`, threads checked (a reply to a
ts that is not a message in that channel is `thread_not_found`, an update needs the
channel's id as Slack's does). It can be told to fail the next calls: HTTP 429 with
Retry-After, a 5xx, or an `ok: false` error. Also takes Slack's response_url posts.

And Socket Mode as Slack runs it: apps.connections.open (an xapp- token only) gives a ws://
URL on a real websocket server, which greets each connection with `hello`, sends
`interactive` envelopes (`press`), again with retry_attempt + 1 (`redeliver`), and keeps
the envelope ids the client acknowledges.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection, serve


@dataclass
class Call:
    method: str
    token: str
    body: dict[str, Any]
    at: float = field(default_factory=time.monotonic)


@dataclass
class Fault:
    status: int = 200
    error: str = ""
    retry_after: int | None = None


class FakeSlack:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.responses: list[dict[str, Any]] = []  # posts to response_url
        self.messages: dict[str, dict[str, dict[str, Any]]] = {}  # channel id -> ts -> msg
        self.faults: list[Fault] = []
        self.down = False  # every call answers 503
        self._lock = threading.Lock()
        self._seq = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.startswith("/response/"):
                    outer.responses.append(json.loads(raw))
                    return self._answer(200, {"ok": True})
                method = self.path.rsplit("/", 1)[-1]
                if "json" in (self.headers.get("Content-Type") or ""):
                    body = json.loads(raw or b"{}")
                else:
                    body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                status, answer, headers = outer._handle(method, token, body)
                self._answer(status, answer, headers)

            def _answer(
                self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
            ) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self.base_url = f"http://127.0.0.1:{self.port}/api/"
        self.response_url = f"http://127.0.0.1:{self.port}/response/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.sockets: list[ServerConnection] = []
        self.acks: list[str] = []
        self.envelopes: dict[str, dict[str, Any]] = {}
        self.ws = serve(self._socket, "127.0.0.1", 0, compression=None)
        self.ws_url = f"ws://127.0.0.1:{self.ws.socket.getsockname()[1]}/link/"
        self._ws_thread = threading.Thread(target=self.ws.serve_forever, daemon=True)

    def start(self) -> FakeSlack:
        self._thread.start()
        self._ws_thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.ws.shutdown()

    # -- Socket Mode ----------------------------------------------------------------------

    def _socket(self, conn: ServerConnection) -> None:
        conn.send(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": len(self.sockets) + 1,
                    "debug_info": {"host": "fake", "approximate_connection_time": 3600},
                    "connection_info": {"app_id": "A0FAKE"},
                }
            )
        )
        with self._lock:
            self.sockets.append(conn)
        try:
            for message in conn:
                envelope_id = json.loads(message).get("envelope_id")
                if envelope_id:
                    with self._lock:
                        self.acks.append(envelope_id)
        except ConnectionClosed:
            pass
        finally:
            with self._lock:
                self.sockets.remove(conn)

    def press(self, payload: dict[str, Any]) -> str:
        """Send a block action down the newest Socket Mode connection; its envelope id."""
        with self._lock:
            self._seq += 1
            envelope_id = f"env-{self._seq:04d}"
            self.envelopes[envelope_id] = {
                "envelope_id": envelope_id,
                "type": "interactive",
                "payload": payload,
                "accepts_response_payload": False,
                "retry_attempt": 0,
                "retry_reason": "",
            }
        self._send(self.envelopes[envelope_id])
        return envelope_id

    def redeliver(self, envelope_id: str) -> None:
        """What Slack does with an envelope it thinks was not acknowledged."""
        envelope = self.envelopes[envelope_id]
        envelope.update(retry_attempt=envelope["retry_attempt"] + 1, retry_reason="timeout")
        self._send(envelope)

    def _send(self, envelope: dict[str, Any]) -> None:
        with self._lock:
            if not self.sockets:
                raise RuntimeError("no Socket Mode connection is open")
            conn = self.sockets[-1]
        conn.send(json.dumps(envelope))

    def fail_next(
        self, n: int = 1, *, status: int = 200, error: str = "", retry_after: int | None = None
    ) -> None:
        self.faults += [Fault(status, error, retry_after) for _ in range(n)]

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.responses.clear()
            self.faults.clear()
            self.down = False

    def posts(self, method: str = "chat.postMessage") -> list[Call]:
        return [c for c in self.calls if c.method == method]

    @staticmethod
    def channel_id(name: str) -> str:
        return "C" + name.lstrip("#").upper().replace("-", "")[:10]

    def _handle(
        self, method: str, token: str, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            self.calls.append(Call(method, token, body))
            if self.down:
                return 503, {"ok": False, "error": "service_unavailable"}, {}
            if self.faults:
                f = self.faults.pop(0)
                if f.status == 429:
                    return (
                        429,
                        {"ok": False, "error": "ratelimited"},
                        {"Retry-After": str(f.retry_after or 1)},
                    )
                if f.status >= 500:
                    return f.status, {"ok": False, "error": "internal_error"}, {}
                return 200, {"ok": False, "error": f.error}, {}
            if not token:
                return 200, {"ok": False, "error": "not_authed"}, {}
            if method == "apps.connections.open":
                if not token.startswith("xapp-"):
                    return 200, {"ok": False, "error": "not_allowed_token_type"}, {}
                return 200, {"ok": True, "url": self.ws_url}, {}
            if token.startswith("xapp-"):
                return 200, {"ok": False, "error": "not_allowed_token_type"}, {}
            if method == "chat.postMessage":
                return self._post(body)
            if method == "chat.update":
                return self._update(body)
            return 200, {"ok": False, "error": "unknown_method"}, {}

    def _post(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        channel = body.get("channel", "")
        cid = channel if channel.startswith("C") else self.channel_id(channel)
        msgs = self.messages.setdefault(cid, {})
        thread = body.get("thread_ts")
        if thread and thread not in msgs:
            return 200, {"ok": False, "error": "thread_not_found"}, {}
        self._seq += 1
        ts = f"{1_700_000_000 + self._seq}.{self._seq:06d}"
        msgs[ts] = {"ts": ts, "text": body.get("text"), "blocks": body.get("blocks"), **body}
        return 200, {"ok": True, "channel": cid, "ts": ts, "message": msgs[ts]}, {}

    def _update(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        cid, ts = body.get("channel", ""), body.get("ts", "")
        if cid not in self.messages:
            return 200, {"ok": False, "error": "channel_not_found"}, {}
        if ts not in self.messages[cid]:
            return 200, {"ok": False, "error": "message_not_found"}, {}
        self.messages[cid][ts].update(text=body.get("text"), blocks=body.get("blocks"))
        return 200, {"ok": True, "channel": cid, "ts": ts, "text": body.get("text")}, {}
