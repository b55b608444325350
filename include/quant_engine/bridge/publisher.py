"""The signal publisher: a WebSocket server for subscribers, with health and metrics over HTTP on the same port.

WebSocket clients authenticate with a token (``Authorization: Bearer <token>`` or ``?token=``;
anything else gets HTTP 401 before the handshake), then send ``{"subscribe": ["SYN00", ...]}``
(``"*"`` for every ticker) or ``{"unsubscribe": [...]}`` and receive each signal of their tickers
as one JSON message. Each client has a bounded queue drained by its own sender task; when a client
reads slower than signals come, its oldest waiting signal is dropped (and counted), so one slow
client never holds up the others or the bridge.

Plain HTTP on the same port (``process_request``), read-only:

* ``GET /health``: JSON from the service (feed connected, lag, tick rate, counters, model version);
* ``GET /metrics``: the Prometheus text exposition format (``# HELP`` / ``# TYPE`` lines);
* ``GET /signals/latest``: JSON list of the latest signal per ticker; needs a subscriber's token
  like the WebSocket (the Airflow UI plugin sends one). Health and metrics need none, for probes
  and scrapers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["Metric", "SignalPublisher", "prometheus_text"]

log = logging.getLogger(__name__)

ALL_TICKERS = "*"


@dataclass(frozen=True)
class Metric:
    """One Prometheus metric family: its samples are ``(labels, value)`` pairs."""

    name: str
    kind: str  # "counter" or "gauge"
    help: str
    samples: Sequence[tuple[Mapping[str, str], float]] = field(default_factory=tuple)

    @classmethod
    def single(cls, name: str, kind: str, help: str, value: float) -> Metric:
        return cls(name, kind, help, (({}, value),))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def prometheus_text(metrics: Sequence[Metric]) -> str:
    """Metrics in the Prometheus text exposition format (version 0.0.4).

    Examples
    --------
    >>> print(prometheus_text([Metric("qe_drops_total", "counter", "Frames dropped.",
    ...                               [({"reason": "bad_json"}, 3)])]), end="")
    # HELP qe_drops_total Frames dropped.
    # TYPE qe_drops_total counter
    qe_drops_total{reason="bad_json"} 3
    """
    lines: list[str] = []
    for metric in metrics:
        if metric.kind not in ("counter", "gauge"):
            raise ValueError(f"metric {metric.name!r}: kind={metric.kind!r} must be counter or gauge")
        help_text = metric.help.replace("\\", "\\\\").replace("\n", "\\n")
        lines += [f"# HELP {metric.name} {help_text}", f"# TYPE {metric.name} {metric.kind}"]
        for labels, value in metric.samples:
            label_text = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
            lines.append(f"{metric.name}{{{label_text}}} {_number(value)}" if label_text
                         else f"{metric.name} {_number(value)}")
    return "\n".join(lines) + "\n"


class _Client:
    """A subscriber: its tickers and its bounded queue of encoded messages."""

    __slots__ = ("connection", "tickers", "queue", "ready", "dropped")

    def __init__(self, connection: ServerConnection, queue_size: int) -> None:
        self.connection = connection
        self.tickers: set[str] = set()
        self.queue: deque[str] = deque(maxlen=queue_size)
        self.ready = asyncio.Event()
        self.dropped = 0

    def wants(self, ticker: str) -> bool:
        return ticker in self.tickers or ALL_TICKERS in self.tickers


class SignalPublisher:
    """WebSocket fan-out of signals plus the bridge's HTTP endpoints.

    Parameters
    ----------
    tokens : collection of str
        Accepted client tokens; empty refuses every WebSocket client.
    host, port : str, int
        Where to listen; port 0 picks a free one (see :attr:`port` after :meth:`start`).
    max_size : int
        Largest message a client may send, in bytes (larger ones close the connection).
    client_queue : int
        Signals held per client before its oldest is dropped.
    health : callable, optional
        ``() -> dict`` for ``GET /health``.
    metrics : callable, optional
        ``() -> list[Metric]`` added to the publisher's own on ``GET /metrics``.
    close_timeout : float
        Seconds a closing handshake may take; a client that stopped reading cannot hold up shutdown longer.
    """

    def __init__(self, tokens: Collection[str], *, host: str = "127.0.0.1", port: int = 8766,
                 max_size: int = 2**16, client_queue: int = 1024, close_timeout: float = 2.0,
                 health: Callable[[], dict[str, Any]] | None = None,
                 metrics: Callable[[], list[Metric]] | None = None) -> None:
        if isinstance(client_queue, bool) or not isinstance(client_queue, int) or client_queue < 1:
            raise ValueError(f"client_queue={client_queue!r} must be an integer >= 1")
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 64:
            raise ValueError(f"max_size={max_size!r} must be an integer >= 64 bytes")
        self.tokens = frozenset(tokens)
        self.host, self._port = host, port
        self.max_size, self.client_queue, self.close_timeout = max_size, client_queue, close_timeout
        self._health = health or dict
        self._metrics = metrics or list
        self._clients: set[_Client] = set()
        self._server: Server | None = None
        self.latest: dict[str, dict[str, Any]] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            ("signals_published", "messages_sent", "messages_dropped", "auth_failures", "bad_messages",
             "clients_connected"), 0)

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with 0)."""
        if self._server is None:
            return self._port
        return self._server.sockets[0].getsockname()[1]

    @property
    def clients(self) -> int:
        return len(self._clients)

    async def start(self) -> None:
        """Start listening."""
        self._server = await serve(self._serve_client, self.host, self._port, process_request=self._process_request,
                                   max_size=self.max_size, close_timeout=self.close_timeout, compression=None,
                                   logger=log)

    async def stop(self) -> None:
        """Close every client (code 1001, going away) and stop listening."""
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None

    # --- publishing ---------------------------------------------------------------------------

    def publish(self, signal: Mapping[str, Any]) -> None:
        """Queue ``signal`` (a JSON-ready dict with ``ticker``) for every client subscribed to its ticker."""
        ticker = str(signal["ticker"])
        self.latest[ticker] = {k: v for k, v in signal.items() if k != "features"}
        self.counters["signals_published"] += 1
        message: str | None = None
        for client in self._clients:
            if not client.wants(ticker):
                continue
            message = message or json.dumps(signal, separators=(",", ":"))
            if len(client.queue) == client.queue.maxlen:
                client.dropped += 1
                self.counters["messages_dropped"] += 1
            client.queue.append(message)
            client.ready.set()

    def metrics(self) -> list[Metric]:
        """The publisher's own metrics."""
        c = self.counters
        return [
            Metric.single("qe_bridge_publisher_clients", "gauge", "Connected subscribers.", len(self._clients)),
            Metric.single("qe_bridge_signals_published_total", "counter", "Signals handed to the publisher.",
                          c["signals_published"]),
            Metric.single("qe_bridge_messages_sent_total", "counter", "Signal messages sent to subscribers.",
                          c["messages_sent"]),
            Metric.single("qe_bridge_messages_dropped_total", "counter",
                          "Signal messages dropped from a slow subscriber's full queue.", c["messages_dropped"]),
            Metric.single("qe_bridge_auth_failures_total", "counter", "Connections refused for a missing or bad token.",
                          c["auth_failures"]),
            Metric.single("qe_bridge_bad_client_messages_total", "counter",
                          "Subscriber messages that were not a valid subscribe/unsubscribe.", c["bad_messages"]),
        ]

    # --- HTTP ---------------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == "/health":
            return _json_response(connection, self._health())
        if url.path == "/metrics":
            response = connection.respond(200, prometheus_text([*self._metrics(), *self.metrics()]))
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
            return response
        token = None
        authorization = request.headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            token = authorization.removeprefix("Bearer ").strip()
        else:
            token = (parse_qs(url.query).get("token") or [None])[0]
        if token is None or token not in self.tokens:
            self.counters["auth_failures"] += 1
            response = connection.respond(401, "a valid token is required (Authorization: Bearer or ?token=)\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="quant-engine bridge"'
            return response
        if url.path == "/signals/latest":  # the signals themselves: subscribers' token, like the WebSocket
            return _json_response(connection, [self.latest[t] for t in sorted(self.latest)])
        return None

    # --- WebSocket clients --------------------------------------------------------------------

    async def _serve_client(self, connection: ServerConnection) -> None:
        client = _Client(connection, self.client_queue)
        self._clients.add(client)
        self.counters["clients_connected"] += 1
        sender = asyncio.create_task(self._send_loop(client))
        try:
            async for message in connection:
                reply = self._control(client, message)
                await connection.send(json.dumps(reply))
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            sender.cancel()

    def _control(self, client: _Client, message: str | bytes) -> dict[str, Any]:
        """Apply a subscribe/unsubscribe message; the reply says what the client is subscribed to now."""
        try:
            request = json.loads(message)
            if not isinstance(request, dict) or not request or set(request) - {"subscribe", "unsubscribe"}:
                raise ValueError("expected {\"subscribe\": [...]} or {\"unsubscribe\": [...]}")
            for key, tickers in request.items():
                if not isinstance(tickers, list) or not all(isinstance(t, str) and t for t in tickers):
                    raise ValueError(f"{key!r} must be a list of ticker strings")
                if key == "subscribe":
                    client.tickers.update(tickers)
                else:
                    client.tickers.difference_update(tickers)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            self.counters["bad_messages"] += 1
            return {"error": str(exc)}
        return {"subscribed": sorted(client.tickers)}

    async def _send_loop(self, client: _Client) -> None:
        while True:
            await client.ready.wait()
            client.ready.clear()
            while client.queue:
                message = client.queue.popleft()
                try:
                    await client.connection.send(message)
                except ConnectionClosed:
                    return
                self.counters["messages_sent"] += 1


def _json_response(connection: ServerConnection, payload: Any) -> Response:
    response = connection.respond(200, json.dumps(payload, default=str) + "\n")
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response
