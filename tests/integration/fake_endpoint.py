"""A SageMaker runtime on loopback: ``POST /endpoints/<name>/invocations`` answers as told (ok, error, hang).

boto3's ``sagemaker-runtime`` client is pointed at it with ``endpoint_url``, so everything between
the bridge and SageMaker (botocore's request, its timeouts, its error parsing) runs for real.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODES = ("ok", "error", "hang")


class FakeEndpoint:
    """Answers each invocation by :attr:`mode`: ``ok`` one probability per CSV row, ``error`` HTTP 500 (a
    ``ModelError``), ``hang`` nothing until the mode changes or the server stops."""

    def __init__(self, prob: float = 0.625) -> None:
        self.prob = prob
        self._mode = "ok"
        self._changed = threading.Event()
        self.calls: Counter[str] = Counter()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                mode = fake.mode
                fake.calls[mode] += 1
                if mode == "hang":
                    fake._changed.wait(60)
                    mode = fake.mode if fake.mode != "hang" else "error"
                if mode == "error" or not self.path.endswith("/invocations"):
                    self._reply(
                        500,
                        json.dumps({"message": "the model crashed"}).encode(),
                        "application/json",
                        {"x-amzn-ErrorType": "ModelError"},
                    )
                    return
                rows = [line for line in body.splitlines() if line.strip()]
                self._reply(200, "\n".join([repr(fake.prob)] * len(rows)).encode(), "text/csv")

            def _reply(self, status: int, payload: bytes, content_type: str, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-endpoint", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"mode={value!r} must be one of {', '.join(MODES)}")
        self._mode = value
        self._changed.set()
        self._changed = threading.Event()

    def __enter__(self) -> FakeEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._changed.set()
        self._server.shutdown()
        self._server.server_close()
