"""The signal publisher: a WebSocket server for subscribers, with health and metrics over HTTP on the same port.

WebSocket clients authenticate with a token (``Authorization: Bearer <token>``, the scheme in any
case, or ``?token=``; anything else gets HTTP 401 before the handshake; tokens are compared in
constant time against every configured one), then send ``{"subscribe": ["SYN00", ...]}`` (``"*"``
for every ticker) or ``{"unsubscribe": [...]}`` and receive each signal of their tickers as one JSON
message. Each client has a bounded queue drained by its own sender task; when a client reads
slower than signals come, its oldest waiting signal is dropped (and counted), so one slow client
never holds up the others or the bridge.

The reply to a subscriber message is the change it made, never the whole list, so its size is
bounded by the request's::

    {"subscribed": ["SYN00"], "unsubscribed": [], "refused": {"ZZZ": "unknown_ticker"},
     "refused_count": 1, "total": 3}

``unsubscribe`` applies first; a ticker the bridge does not serve is refused as ``unknown_ticker``
and one beyond ``max_subscriptions`` as ``over_limit`` (``refused`` names at most 20 of them,
``refused_count`` says how many); ``total`` is how many the client follows now. A message that is
not such a request is answered ``{"error": ..., "reason": ...}`` and counted by reason
(``bad_json``, ``too_deep``: nested deeper than ``max_depth``, ``bad_shape``); one larger than
``max_size`` closes the connection with code 1009 (counted as ``too_big``).

Limits, each counted in ``GET /metrics``: connections in total and per client address, counted
from the moment TCP accepts them (a connection over a limit is answered HTTP 503 with
``Retry-After`` at once and closed, before it can send anything); a connection that has not sent
a complete request within ``handshake_timeout_s`` is dropped, and a subscriber that has not sent
its first message within the same time is closed (1008). A subscriber's messages are answered at
most ``control_rate`` a second (after a burst of as many): faster ones wait, so a flood of
subscriptions costs its sender time, not the bridge. With an ``ssl`` context the same port
speaks TLS (``wss://`` and ``https://``); connections still in the TLS handshake are bounded by
the handshake timeout, not yet counted.

Plain HTTP on the same port (``process_request``), read-only:

* ``GET /health``: JSON from the service (feed connected, lag, tick rate, counters, model version);
* ``GET /metrics``: the Prometheus text exposition format (``# HELP`` / ``# TYPE`` lines);
* ``GET /signals/latest``: JSON list of the latest signal per ticker; needs a subscriber's token
  like the WebSocket (the Airflow UI plugin sends one). Health and metrics need none, for probes
  and scrapers.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import ssl as ssl_module
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State

__all__ = ["BAD_MESSAGE_REASONS", "REFUSAL_REASONS", "Metric", "SignalPublisher", "prometheus_text"]

log = logging.getLogger(__name__)
#: websockets' own per-connection lines ("connection open", "HTTP response sent") stay out of the log:
#: under a connection flood they would be the flood. Its warnings and errors still come through.
_websockets_log = logging.getLogger(f"{__name__}.websockets")
_websockets_log.setLevel(logging.WARNING)

ALL_TICKERS = "*"
#: Why a subscriber message is refused (``qe_bridge_bad_client_messages_total{reason}``).
BAD_MESSAGE_REASONS: tuple[str, ...] = ("bad_json", "too_deep", "bad_shape", "too_big")
#: Why a connection is refused before its handshake (``qe_bridge_connections_refused_total{reason}``).
REFUSAL_REASONS: tuple[str, ...] = ("max_connections", "max_connections_per_address")
#: Why a subscription is refused (``qe_bridge_subscriptions_refused_total{reason}``).
SUBSCRIPTION_REFUSALS: tuple[str, ...] = ("unknown_ticker", "over_limit")
#: A reply names at most this many refused tickers, each cut to this length.
_REFUSED_SHOWN, _NAME_SHOWN = 20, 40


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
            lines.append(
                f"{metric.name}{{{label_text}}} {_number(value)}" if label_text else f"{metric.name} {_number(value)}"
            )
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


class _GuardedConnection(ServerConnection):
    """A connection counted against the publisher's limits from the moment TCP accepts it.

    Over a limit it is answered HTTP 503 with ``Retry-After`` and closed before reading anything;
    otherwise it must complete a request within the handshake timeout (the subscriber handler
    then waits for its first message until the same deadline).
    """

    def __init__(self, publisher: SignalPublisher, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.publisher = publisher
        self.address: str | None = None  # set while the connection counts against the limits
        self.deadline = math.inf  # loop time by which the first request (then the first message) must come
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "local"
        refusal = self.publisher._admit(address)
        if refusal is not None:
            transport.write(refusal)  # type: ignore[attr-defined]
            transport.close()
            return
        self.address = address
        self.deadline = self.loop.time() + self.publisher.handshake_timeout_s
        self._timer = self.loop.call_at(self.deadline, self._opening_expired)

    def _opening_expired(self) -> None:
        if self.protocol.state is State.CONNECTING and self.response is None:
            self.publisher.counters["handshake_timeouts"] += 1
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.address is not None:
            self.publisher._release(self.address)
            self.address = None
        super().connection_lost(exc)


class _Pacer:
    """At most ``rate`` events a second after a burst of as many: how long the next one must wait."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.burst_s = max(1.0, rate) * self.interval
        self._next = -math.inf

    def delay(self, now: float) -> float:
        self._next = max(self._next, now - self.burst_s) + self.interval
        return max(0.0, self._next - now)


def _nesting(value: Any, limit: int) -> int:
    """How deeply lists and objects nest in a parsed JSON value, counted up to ``limit + 1``."""
    depth, level = 0, [value]
    while depth <= limit:
        containers = [v for v in level if isinstance(v, (list, dict))]
        if not containers:
            break
        depth += 1
        level = [item for c in containers for item in (c.values() if isinstance(c, dict) else c)]
    return depth


class _BadMessage(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SignalPublisher:
    """WebSocket fan-out of signals plus the bridge's HTTP endpoints, within explicit limits.

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
    served : collection of str, optional
        The tickers there are signals for; subscriptions to others are refused. None: any name.
    max_connections, max_connections_per_address : int
        Open TCP connections (subscribers, HTTP requests, handshakes) in all, and per client address.
    handshake_timeout_s : float
        Seconds from accept to a complete request, and to a subscriber's first message.
    max_subscriptions : int
        Tickers one subscriber may follow (``"*"`` is one).
    max_depth : int
        Deepest nesting of lists and objects in a subscriber message.
    control_rate : float
        Subscriber messages answered per second and connection, after a burst of as many.
    ssl : ssl.SSLContext, optional
        Serve TLS (``wss://``, ``https://``).
    health : callable, optional
        ``() -> dict`` for ``GET /health``.
    metrics : callable, optional
        ``() -> list[Metric]`` added to the publisher's own on ``GET /metrics``.
    close_timeout : float
        Seconds a closing handshake may take; a client that stopped reading cannot hold up shutdown longer.
    """

    def __init__(
        self,
        tokens: Collection[str],
        *,
        host: str = "127.0.0.1",
        port: int = 8766,
        max_size: int = 2**16,
        client_queue: int = 1024,
        served: Collection[str] | None = None,
        max_connections: int = 256,
        max_connections_per_address: int = 32,
        handshake_timeout_s: float = 5.0,
        max_subscriptions: int = 1000,
        max_depth: int = 4,
        control_rate: float = 20.0,
        ssl: ssl_module.SSLContext | None = None,
        close_timeout: float = 2.0,
        health: Callable[[], dict[str, Any]] | None = None,
        metrics: Callable[[], list[Metric]] | None = None,
    ) -> None:
        for name, value, least in (
            ("client_queue", client_queue, 1),
            ("max_size", max_size, 64),
            ("max_connections", max_connections, 1),
            ("max_connections_per_address", max_connections_per_address, 1),
            ("max_subscriptions", max_subscriptions, 1),
            ("max_depth", max_depth, 2),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(
                    f"{name}={value!r} must be an integer >= {least}" + (" bytes" if name == "max_size" else "")
                )
        for name, number in (("handshake_timeout_s", handshake_timeout_s), ("control_rate", control_rate)):
            if not (isinstance(number, (int, float)) and math.isfinite(number) and number > 0):
                raise ValueError(f"{name}={number!r} must be a number > 0")
        self._tokens = tuple(t.encode() for t in dict.fromkeys(tokens))
        self.host, self._port = host, port
        self.max_size, self.client_queue, self.close_timeout = max_size, client_queue, close_timeout
        self.served = None if served is None else frozenset(served)
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        self.handshake_timeout_s = float(handshake_timeout_s)
        self.max_subscriptions, self.max_depth, self.control_rate = max_subscriptions, max_depth, float(control_rate)
        self.ssl = ssl
        self._health = health or dict
        self._metrics = metrics or list
        self._clients: set[_Client] = set()
        self._server: Server | None = None
        self._open_by_address: Counter[str] = Counter()
        self.open_connections = 0
        self._refusal = _refusal_bytes(math.ceil(self.handshake_timeout_s))
        self.latest: dict[str, dict[str, Any]] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "signals_published",
                "messages_sent",
                "messages_dropped",
                "auth_failures",
                "bad_messages",
                "clients_connected",
                "handshake_timeouts",
                "first_message_timeouts",
                "control_messages_delayed",
            ),
            0,
        )
        self.refused: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)
        self.bad_messages: dict[str, int] = dict.fromkeys(BAD_MESSAGE_REASONS, 0)
        self.subscriptions_refused: dict[str, int] = dict.fromkeys(SUBSCRIPTION_REFUSALS, 0)

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with 0)."""
        if self._server is None:
            return self._port
        return self._server.sockets[0].getsockname()[1]

    @property
    def clients(self) -> int:
        return len(self._clients)

    @property
    def subscriptions(self) -> int:
        """Tickers followed, summed over subscribers."""
        return sum(len(client.tickers) for client in self._clients)

    async def start(self) -> None:
        """Start listening."""
        self._server = await serve(
            self._serve_client,
            self.host,
            self._port,
            process_request=self._process_request,
            # websockets annotates create_connection as a class but documents and calls it as a factory
            create_connection=self._connection,  # type: ignore[arg-type]
            max_size=self.max_size,
            max_queue=4,
            open_timeout=self.handshake_timeout_s,
            close_timeout=self.close_timeout,
            compression=None,
            ssl=self.ssl,
            logger=_websockets_log,
        )

    async def stop(self) -> None:
        """Close every client (code 1001, going away) and stop listening."""
        if self._server is not None:
            self._server.close(close_connections=True)
            await self._server.wait_closed()
            self._server = None

    # --- connection limits --------------------------------------------------------------------

    def _connection(self, *args: Any, **kwargs: Any) -> _GuardedConnection:
        return _GuardedConnection(self, *args, **kwargs)

    def _admit(self, address: str) -> bytes | None:
        """Count a new connection from ``address``; the 503 answer to send instead when a limit is reached."""
        if self.open_connections >= self.max_connections:
            self.refused["max_connections"] += 1
            return self._refusal
        if self._open_by_address[address] >= self.max_connections_per_address:
            self.refused["max_connections_per_address"] += 1
            return self._refusal
        self.open_connections += 1
        self._open_by_address[address] += 1
        return None

    def _release(self, address: str) -> None:
        self.open_connections -= 1
        self._open_by_address[address] -= 1
        if self._open_by_address[address] <= 0:
            del self._open_by_address[address]

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
            Metric.single(
                "qe_bridge_publisher_connections",
                "gauge",
                "Open TCP connections counted against the limits (subscribers, HTTP, handshakes).",
                self.open_connections,
            ),
            Metric.single(
                "qe_bridge_publisher_max_connections",
                "gauge",
                "Connections allowed at once (after clamping to the file-descriptor limit).",
                self.max_connections,
            ),
            Metric(
                "qe_bridge_connections_refused_total",
                "counter",
                "Connections answered 503 before their handshake, by the limit they hit.",
                [({"reason": r}, n) for r, n in self.refused.items()],
            ),
            Metric.single(
                "qe_bridge_handshake_timeouts_total",
                "counter",
                "Connections dropped for not completing a request within the handshake timeout.",
                c["handshake_timeouts"],
            ),
            Metric.single(
                "qe_bridge_first_message_timeouts_total",
                "counter",
                "Subscribers closed for not sending a message within the handshake timeout.",
                c["first_message_timeouts"],
            ),
            Metric.single(
                "qe_bridge_subscriptions", "gauge", "Tickers followed, summed over subscribers.", self.subscriptions
            ),
            Metric(
                "qe_bridge_subscriptions_refused_total",
                "counter",
                "Subscriptions refused: tickers not served, or beyond a subscriber's limit.",
                [({"reason": r}, n) for r, n in self.subscriptions_refused.items()],
            ),
            Metric.single(
                "qe_bridge_control_messages_delayed_total",
                "counter",
                "Subscriber messages held back by the per-connection rate limit.",
                c["control_messages_delayed"],
            ),
            Metric.single(
                "qe_bridge_signals_published_total",
                "counter",
                "Signals handed to the publisher.",
                c["signals_published"],
            ),
            Metric.single(
                "qe_bridge_messages_sent_total", "counter", "Signal messages sent to subscribers.", c["messages_sent"]
            ),
            Metric.single(
                "qe_bridge_messages_dropped_total",
                "counter",
                "Signal messages dropped from a slow subscriber's full queue.",
                c["messages_dropped"],
            ),
            Metric.single(
                "qe_bridge_auth_failures_total",
                "counter",
                "Connections refused for a missing or bad token.",
                c["auth_failures"],
            ),
            Metric(
                "qe_bridge_bad_client_messages_total",
                "counter",
                "Subscriber messages that were not a valid subscribe/unsubscribe, by reason.",
                [({"reason": r}, n) for r, n in self.bad_messages.items()],
            ),
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
        if not self._authorized(request, url.query):
            self.counters["auth_failures"] += 1
            response = connection.respond(401, "a valid token is required (Authorization: Bearer or ?token=)\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="quant-engine bridge"'
            return response
        if url.path == "/signals/latest":  # the signals themselves: subscribers' token, like the WebSocket
            return _json_response(connection, [self.latest[t] for t in sorted(self.latest)])
        return None

    def _authorized(self, request: Request, query: str) -> bool:
        """Whether the request carries a configured token: compared with each of them, in constant time."""
        headers = request.headers.get_all("Authorization")
        if len(headers) > 1:
            return False
        token = None
        if headers:
            scheme, _, value = headers[0].strip().partition(" ")
            if scheme.lower() == "bearer":
                token = value.strip()
        if token is None:
            token = next(iter(parse_qs(query).get("token", [])), None)
        if not token:
            return False
        supplied = token.encode()
        matched = False
        for expected in self._tokens:  # every one, whatever matched: the time says nothing about the tokens
            matched |= hmac.compare_digest(expected, supplied)
        return matched

    # --- WebSocket clients --------------------------------------------------------------------

    async def _serve_client(self, connection: ServerConnection) -> None:
        assert isinstance(connection, _GuardedConnection), "serve() makes every connection with self._connection"
        client = _Client(connection, self.client_queue)
        self._clients.add(client)
        self.counters["clients_connected"] += 1
        sender = asyncio.create_task(self._send_loop(client))
        pacer = _Pacer(self.control_rate)
        try:
            try:
                async with asyncio.timeout_at(connection.deadline):
                    message = await connection.recv()
            except TimeoutError:
                self.counters["first_message_timeouts"] += 1
                await connection.close(
                    CloseCode.POLICY_VIOLATION, f"no subscription within {self.handshake_timeout_s:g} s"
                )
                return
            while True:
                await connection.send(json.dumps(self._control(client, message), separators=(",", ":")))
                delay = pacer.delay(asyncio.get_running_loop().time())
                if delay > 0:
                    self.counters["control_messages_delayed"] += 1
                    await asyncio.sleep(delay)
                message = await connection.recv()
        except ConnectionClosed as closed:
            if closed.sent is not None and closed.sent.code == CloseCode.MESSAGE_TOO_BIG:
                self._count_bad("too_big")
        finally:
            self._clients.discard(client)
            sender.cancel()

    def _control(self, client: _Client, message: str | bytes) -> dict[str, Any]:
        """Apply a subscribe/unsubscribe message; the reply says what changed (see the module docstring)."""
        try:
            request = self._parse(message)
        except _BadMessage as exc:
            self._count_bad(exc.reason)
            return {"error": str(exc), "reason": exc.reason}
        removed = [t for t in dict.fromkeys(request.get("unsubscribe", ())) if t in client.tickers]
        client.tickers.difference_update(removed)
        added: list[str] = []
        refused: dict[str, str] = {}
        for ticker in dict.fromkeys(request.get("subscribe", ())):
            if ticker in client.tickers:
                continue
            if self.served is not None and ticker != ALL_TICKERS and ticker not in self.served:
                refused[ticker] = "unknown_ticker"
            elif len(client.tickers) >= self.max_subscriptions:
                refused[ticker] = "over_limit"
            else:
                client.tickers.add(ticker)
                added.append(ticker)
        for reason in refused.values():
            self.subscriptions_refused[reason] += 1
        shown = {name[:_NAME_SHOWN]: reason for name, reason in list(refused.items())[:_REFUSED_SHOWN]}
        return {
            "subscribed": added,
            "unsubscribed": removed,
            "refused": shown,
            "refused_count": len(refused),
            "total": len(client.tickers),
        }

    def _parse(self, message: str | bytes) -> dict[str, list[str]]:
        try:
            request = json.loads(message)
        except RecursionError:
            raise _BadMessage("too_deep", f"nested deeper than {self.max_depth}") from None
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise _BadMessage("bad_json", f"not JSON: {exc}") from None
        if _nesting(request, self.max_depth) > self.max_depth:
            raise _BadMessage("too_deep", f"nested deeper than {self.max_depth}")
        if not isinstance(request, dict) or not request or set(request) - {"subscribe", "unsubscribe"}:
            raise _BadMessage("bad_shape", 'expected {"subscribe": [...]} or {"unsubscribe": [...]}')
        for key, tickers in request.items():
            if not isinstance(tickers, list) or not all(isinstance(t, str) and t for t in tickers):
                raise _BadMessage("bad_shape", f"{key!r} must be a list of ticker strings")
        return request

    def _count_bad(self, reason: str) -> None:
        self.counters["bad_messages"] += 1
        self.bad_messages[reason] += 1

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


def _refusal_bytes(retry_after_s: int) -> bytes:
    """The HTTP 503 a connection over a limit gets before anything is read from it."""
    body = b"too many connections; retry later\n"
    headers = Headers(
        [
            ("Retry-After", str(max(1, retry_after_s))),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
    )
    return Response(503, "Service Unavailable", headers, body).serialize()
