"""Signal publisher: token auth, subscriptions, a slow client never stalls others, HTTP health/metrics/latest."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from quant_engine.bridge.publisher import Metric, SignalPublisher, prometheus_text

TOKEN = "s3cret"
N_SIGNALS = 160


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(asyncio.wait_for(coro, 30))


async def started(**options: object) -> SignalPublisher:
    publisher = SignalPublisher({TOKEN}, port=0, **options)
    await publisher.start()
    return publisher


def delta(
    *, subscribed: list[str] = (), unsubscribed: list[str] = (), refused: dict[str, str] | None = None, total: int
) -> dict:
    """The reply to a subscriber message: what it changed."""
    refused = refused or {}
    return {
        "subscribed": list(subscribed),
        "unsubscribed": list(unsubscribed),
        "refused": refused,
        "refused_count": len(refused),
        "total": total,
    }


def http_get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_clients_need_a_token_by_header_or_query() -> None:
    async def main() -> None:
        publisher = await started()
        url = f"ws://127.0.0.1:{publisher.port}/"
        for bad in ({}, {"additional_headers": {"Authorization": "Bearer wrong"}}):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, **bad):
                    pass
            assert refused.value.response.status_code == 401
        async with connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            await ws.send(json.dumps({"subscribe": ["A"]}))
            assert json.loads(await ws.recv()) == delta(subscribed=["A"], total=1)
        async with connect(f"{url}?token={TOKEN}") as ws:
            await ws.send(json.dumps({"subscribe": ["*"]}))
            assert json.loads(await ws.recv()) == delta(subscribed=["*"], total=1)
        assert publisher.counters["auth_failures"] == 2
        await publisher.stop()

    run(main())


def test_subscribers_get_their_tickers_only_and_bad_messages_are_answered() -> None:
    async def main() -> None:
        publisher = await started()
        async with connect(f"ws://127.0.0.1:{publisher.port}/?token={TOKEN}") as ws:
            await ws.send("not json")
            assert "error" in json.loads(await ws.recv())
            await ws.send(json.dumps({"subscribe": "A"}))
            assert "list of ticker strings" in json.loads(await ws.recv())["error"]
            await ws.send(json.dumps({"subscribe": ["A", "B"]}))
            await ws.recv()
            await ws.send(json.dumps({"unsubscribe": ["B"]}))
            assert json.loads(await ws.recv()) == delta(unsubscribed=["B"], total=1)  # the change, not the list
            for ticker in ("B", "A", "C", "A"):
                publisher.publish({"ticker": ticker, "prob": 0.6})
            got = [json.loads(await ws.recv()) for _ in range(2)]
            assert [g["ticker"] for g in got] == ["A", "A"]
        assert publisher.counters["bad_messages"] == 2
        await publisher.stop()

    run(main())


def test_a_slow_client_drops_its_oldest_signals_and_never_stalls_a_fast_one() -> None:
    async def main() -> tuple[int, int]:
        publisher = await started(client_queue=8, close_timeout=0.2)
        url = f"ws://127.0.0.1:{publisher.port}/?token={TOKEN}"
        async with connect(url, max_queue=1, close_timeout=0.2) as slow, connect(url) as fast:
            for ws in (slow, fast):
                await ws.send(json.dumps({"subscribe": ["*"]}))
                await ws.recv()
            payload = "x" * 64_000
            received = 0
            for i in range(N_SIGNALS):  # ~10 MB: more than the socket buffers hold for the slow one
                publisher.publish({"ticker": "A", "i": i, "pad": payload})
                while received < i - 4:  # the fast client keeps up
                    json.loads(await fast.recv())
                    received += 1
            while received < N_SIGNALS:
                last = json.loads(await fast.recv())
                received += 1
            assert last["i"] == N_SIGNALS - 1
        await publisher.stop()
        return received, publisher.counters["messages_dropped"]

    received, dropped = run(main())
    assert received == N_SIGNALS and dropped > 0


def test_messages_over_max_size_close_the_connection() -> None:
    async def main() -> None:
        publisher = await started(max_size=256)
        async with connect(f"ws://127.0.0.1:{publisher.port}/?token={TOKEN}") as ws:
            await ws.send(json.dumps({"subscribe": ["A" * 500]}))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 1009  # message too big
        await publisher.stop()

    run(main())


def test_http_health_metrics_and_latest_signals() -> None:
    async def main() -> tuple[tuple, ...]:
        publisher = await started(
            health=lambda: {"status": "ok", "feed_connected": True},
            metrics=lambda: [Metric.single("qe_bridge_ticks_total", "counter", "Ticks.", 7)],
        )
        publisher.publish({"ticker": "B", "prob": 0.4, "features": {"x": 1.0}})
        publisher.publish({"ticker": "A", "prob": 0.7})
        port = publisher.port
        results = await asyncio.gather(
            *(
                asyncio.to_thread(http_get, port, p)
                for p in ("/health", "/metrics", f"/signals/latest?token={TOKEN}", "/", "/signals/latest")
            )
        )
        await publisher.stop()
        return tuple(results)

    health, metrics, latest, plain, latest_without_token = run(main())
    assert health[0] == 200 and health[1] == "application/json" and json.loads(health[2])["feed_connected"] is True
    assert latest[0] == 200 and json.loads(latest[2]) == [{"ticker": "A", "prob": 0.7}, {"ticker": "B", "prob": 0.4}]
    assert metrics[0] == 200 and metrics[1].startswith("text/plain; version=0.0.4")
    assert "# TYPE qe_bridge_ticks_total counter\nqe_bridge_ticks_total 7\n" in metrics[2]
    assert "qe_bridge_signals_published_total 2" in metrics[2]
    for line in metrics[2].splitlines():  # every sample line parses as name{labels} value
        assert (
            line.startswith("# HELP ")
            or line.startswith("# TYPE ")
            or re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? \S+", line)
        ), line
    assert plain[0] == 401  # the WebSocket path without a token
    assert latest_without_token[0] == 401  # the signals are for subscribers only


def test_prometheus_text_escapes_and_formats() -> None:
    text = prometheus_text([Metric("m", "gauge", "line\nbreak", [({"reason": 'a"b'}, 0.5), ({}, float("nan"))])])
    assert text == '# HELP m line\\nbreak\n# TYPE m gauge\nm{reason="a\\"b"} 0.5\nm NaN\n'
    with pytest.raises(ValueError, match="kind='summary'"):
        prometheus_text([Metric("m", "summary", "h")])
