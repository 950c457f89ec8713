"""Running the mock provider: in the foreground (`aigw mock-provider`) or on a free port in a
background thread (tests)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any, Self

import uvicorn

from aigw.mock.app import create_mock_app

_START_TIMEOUT_S = 10.0


def _uvicorn_config(app: Any, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, log_level="warning", access_log=False, lifespan="off",
        ws="none",
    )  # fmt: skip


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Run the mock provider in the foreground until interrupted."""
    print(f"aigw mock provider listening on http://{host}:{port}", flush=True)
    uvicorn.Server(_uvicorn_config(create_mock_app(), host, port)).run()


class MockServer:
    """The mock provider on a free loopback port in a daemon thread.

    with MockServer() as mock:
        httpx.post(f"{mock.url}/v1/chat/completions", json=...)
        mock.requests()
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = create_mock_app()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        self._server = uvicorn.Server(_uvicorn_config(self.app, self.host, self.port))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        """Every request received so far, oldest first."""
        return list(self.app.state.received)

    def clear(self) -> None:
        self.app.state.received.clear()

    def start(self) -> Self:
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the mock provider did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=_START_TIMEOUT_S)
        self._socket.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
