"""A real HTTP webhook receiver for tests: a threaded `http.server` on a free loopback port.

    with Receiver() as receiver:
        url = receiver.url("/a")                      # one path per endpoint under test
        receiver.behave("/a", fail_first=2)           # 500 to the first two POSTs, then 204
        receiver.behave("/b", delay_s=3)              # answer slowly
        ...
        receiver.received("/a")                       # [Received(headers, body, status, at)]

Every POST is recorded, whatever it was answered. Being threaded, it runs beside any event loop
(also the gateway's, in end-to-end tests) and never blocks it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from standardwebhooks import Webhook


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: str
    status: int
    at: float

    @property
    def event(self) -> dict[str, Any]:
        return dict(orjson.loads(self.body))

    @property
    def id(self) -> str:
        return self.headers["webhook-id"]

    def verified(self, secret: str) -> dict[str, Any]:
        """The body, after `standardwebhooks` checked its signature (raises if it is wrong)."""
        return dict(Webhook(secret).verify(self.body, self.headers))


@dataclass
class _Behaviour:
    fail_first: int = 0
    fail_status: int = 500
    delay_s: float = 0.0
    seen: int = 0


@dataclass
class Receiver:
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _log: list[Received] = field(default_factory=list)
    _behaviours: dict[str, _Behaviour] = field(default_factory=dict)

    def __enter__(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length).decode()
                status, delay = receiver._decide(self.path)
                if delay:
                    time.sleep(delay)
                headers = {key.lower(): value for key, value in self.headers.items()}
                with receiver._lock:
                    receiver._log.append(Received(self.path, headers, body, status, time.time()))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def behave(
        self, path: str, *, fail_first: int = 0, fail_status: int = 500, delay_s: float = 0.0
    ) -> None:
        with self._lock:
            self._behaviours[path] = _Behaviour(fail_first, fail_status, delay_s)

    def _decide(self, path: str) -> tuple[int, float]:
        with self._lock:
            behaviour = self._behaviours.setdefault(path, _Behaviour())
            behaviour.seen += 1
            failing = behaviour.seen <= behaviour.fail_first
            return (behaviour.fail_status if failing else 204), behaviour.delay_s

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._log if path is None or r.path == path]

    def delivered(self, path: str) -> list[Received]:
        """The POSTs to `path` that were answered 2xx."""
        return [r for r in self.received(path) if 200 <= r.status < 300]


async def until(condition: Callable[[], bool], within: float = 10.0, step: float = 0.02) -> bool:
    """Poll `condition` without blocking the event loop; True once it holds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(step)
    return condition()
