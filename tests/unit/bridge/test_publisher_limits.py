"""The publisher as an exposed service: connection limits answered 503 before the handshake, timeouts for
silent connections, bounded subscriptions and replies, bad frames counted by reason, auth in constant time
and case-insensitive, TLS."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

from quant_engine.bridge.publisher import SignalPublisher, prometheus_text

TOKEN = "s3cret-token-42"


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(asyncio.wait_for(coro, 60))


async def started(**options: object) -> SignalPublisher:
    publisher = SignalPublisher({TOKEN, "another-token"}, port=0, **options)
    await publisher.start()
    return publisher


async def raw_connection(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain TCP connection from ``source`` that sends nothing (what an attacker holding sockets does)."""
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def settle(condition, timeout: float = 10.0) -> None:  # noqa: ANN001
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def test_connections_over_a_limit_get_503_with_retry_after_before_any_request() -> None:
    async def main() -> None:
        publisher = await started(max_connections=4, max_connections_per_address=3, handshake_timeout_s=30)
        held = [await raw_connection(publisher.port) for _ in range(3)]
        await settle(lambda: publisher.open_connections == 3)
        reader, writer = await raw_connection(publisher.port)  # a fourth from the same address
        answer = await asyncio.wait_for(reader.read(), 5)  # answered and closed without sending a byte
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n") and b"\r\nRetry-After: 30\r\n" in answer
        assert publisher.refused == {"max_connections": 0, "max_connections_per_address": 1}
        held.append(await raw_connection(publisher.port, source="127.0.0.2"))  # another address: room left
        await settle(lambda: publisher.open_connections == 4)
        reader, _ = await raw_connection(publisher.port, source="127.0.0.3")  # but none in total
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 503")
        assert publisher.refused["max_connections"] == 1
        with pytest.raises(InvalidStatus) as refused:  # a real client sees the status
            async with connect(f"ws://127.0.0.1:{publisher.port}/?token={TOKEN}"):
                pass
        assert refused.value.response.status_code == 503
        for _, writer in held:
            writer.close()
        await settle(lambda: publisher.open_connections == 0)
        async with connect(f"ws://127.0.0.1:{publisher.port}/?token={TOKEN}") as ws:  # room again
            await ws.send(json.dumps({"subscribe": ["A"]}))
            assert json.loads(await ws.recv())["total"] == 1
        text = prometheus_text(publisher.metrics())
        assert 'qe_bridge_connections_refused_total{reason="max_connections_per_address"} 1' in text
        assert 'qe_bridge_connections_refused_total{reason="max_connections"} 2' in text
        assert "qe_bridge_publisher_max_connections 4" in text
        await publisher.stop()

    run(main())


def test_silent_connections_and_subscribers_that_never_subscribe_are_dropped() -> None:
    async def main() -> None:
        publisher = await started(handshake_timeout_s=0.3)
        reader, _ = await raw_connection(publisher.port)
        assert await asyncio.wait_for(reader.read(), 10) == b""  # dropped, nothing said
        async with connect(f"ws://127.0.0.1:{publisher.port}/?token={TOKEN}") as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd.code == 1008 and "no subscription within 0.3 s" in closed.value.rcvd.reason
        async with connect(f"ws://127.0.0.1:{publisher.port}/?token={TOKEN}") as ws:  # a prompt one stays
            await ws.send(json.dumps({"subscribe": ["A"]}))
            await ws.recv()
            await asyncio.sleep(0.5)
            publisher.publish({"ticker": "A", "prob": 0.5})
            assert json.loads(await ws.recv())["ticker"] == "A"
        await settle(lambda: publisher.open_connections == 0)
        assert publisher.counters["handshake_timeouts"] == 1 and publisher.counters["first_message_timeouts"] == 1
        await publisher.stop()

    run(main())


def test_subscriptions_are_bounded_to_served_tickers_and_replies_to_the_change() -> None:
    async def main() -> None:
        publisher = await started(served={"A", "B", "C"}, max_subscriptions=2, max_size=2**20)
        async with connect(f"ws://127.0.0.1:{publisher.port}/?token={TOKEN}", max_size=2**20) as ws:
            await ws.send(json.dumps({"subscribe": ["A", "ZZZ", "A", "B", "C"]}))
            assert json.loads(await ws.recv()) == {
                "subscribed": ["A", "B"],
                "unsubscribed": [],
                "refused": {"ZZZ": "unknown_ticker", "C": "over_limit"},
                "refused_count": 2,
                "total": 2,
            }
            await ws.send(json.dumps({"unsubscribe": ["B"], "subscribe": ["C"]}))  # unsubscribe applies first
            assert json.loads(await ws.recv()) == {
                "subscribed": ["C"],
                "unsubscribed": ["B"],
                "refused": {},
                "refused_count": 0,
                "total": 2,
            }
            flood = [f"NEW{i:05d}" + "x" * 60 for i in range(5_000)]  # what filled 1.73 M subscriptions before
            await ws.send(json.dumps({"subscribe": flood}))
            reply = await ws.recv()
            assert len(reply) < 2_000 and json.loads(reply)["refused_count"] == 5_000
            assert len(json.loads(reply)["refused"]) == 20 and max(map(len, json.loads(reply)["refused"])) == 40
            assert publisher.subscriptions == 2
        assert publisher.subscriptions_refused == {"unknown_ticker": 5_001, "over_limit": 1}
        await publisher.stop()

    run(main())


def test_bad_frames_are_counted_by_reason_and_the_client_is_told() -> None:
    async def main() -> None:
        publisher = await started(max_size=2**20)
        async with connect(f"ws://127.0.0.1:{publisher.port}/?token={TOKEN}", max_size=2**20) as ws:
            for frame, reason in (
                ("[" * 200_000, "too_deep"),  # the C parser's recursion limit
                (json.dumps({"subscribe": [[[["A"]]]]}), "too_deep"),  # deeper than max_depth
                ("{not json", "bad_json"),
                (json.dumps({"subscribe": "A"}), "bad_shape"),
                (json.dumps({"subscribe": ["A"], "admin": True}), "bad_shape"),
            ):
                await ws.send(frame)
                answer = json.loads(await ws.recv())
                assert answer["reason"] == reason and "error" in answer, frame[:40]
            await ws.send(json.dumps({"subscribe": ["A"]}))  # still served
            assert json.loads(await ws.recv())["subscribed"] == ["A"]
        small = await started(max_size=256)
        async with connect(f"ws://127.0.0.1:{small.port}/?token={TOKEN}") as ws:
            await ws.send(json.dumps({"subscribe": ["A" * 500]}))
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd.code == 1009  # told by the close code
        await settle(lambda: small.bad_messages["too_big"] == 1)
        assert publisher.bad_messages == {"bad_json": 1, "too_deep": 2, "bad_shape": 2, "too_big": 0}
        assert 'qe_bridge_bad_client_messages_total{reason="too_deep"} 2' in prometheus_text(publisher.metrics())
        await publisher.stop()
        await small.stop()

    run(main())


def test_a_flood_of_subscriber_messages_is_paced_not_refused() -> None:
    async def main() -> None:
        publisher = await started(control_rate=50)
        async with connect(f"ws://127.0.0.1:{publisher.port}/?token={TOKEN}") as ws:
            for i in range(80):
                await ws.send(json.dumps({"subscribe": [f"T{i}"]}))
            replies = [json.loads(await ws.recv()) for _ in range(80)]
        assert [r["total"] for r in replies] == list(range(1, 81))  # every message answered, in order
        assert publisher.counters["control_messages_delayed"] >= 20  # those beyond the burst of 50 waited
        await publisher.stop()

    run(main())


def test_tokens_in_any_scheme_case_compared_against_all_and_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        publisher = await started()
        url = f"ws://127.0.0.1:{publisher.port}/"
        for scheme in ("Bearer", "bearer", "BEARER"):
            async with connect(url, additional_headers={"Authorization": f"{scheme} another-token"}) as ws:
                await ws.send(json.dumps({"subscribe": ["A"]}))
                await ws.recv()
        for headers in (
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": "Bearer s3cret-token-4"},
            [("Authorization", f"Bearer {TOKEN}"), ("Authorization", f"Bearer {TOKEN}")],
        ):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url, additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 401
        assert publisher.counters["auth_failures"] == 3
        await publisher.stop()

    with caplog.at_level(logging.DEBUG):
        run(main())
    ours = [r for r in caplog.records if r.name.startswith("quant_engine")]  # the client's own debug lines aside
    assert not any(TOKEN in r.getMessage() or "another-token" in r.getMessage() for r in ours)


def self_signed(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_serves_wss_and_https_and_refuses_plain_text(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))

    async def main() -> dict:
        publisher = await started(ssl=server_context, health=lambda: {"status": "ok"})
        async with connect(f"wss://127.0.0.1:{publisher.port}/?token={TOKEN}", ssl=client_context) as ws:
            await ws.send(json.dumps({"subscribe": ["A"]}))
            await ws.recv()
            publisher.publish({"ticker": "A", "prob": 0.5})
            assert json.loads(await ws.recv())["prob"] == 0.5
        with pytest.raises(InvalidMessage):  # a plain-text client gets no HTTP answer from a TLS port
            async with connect(f"ws://127.0.0.1:{publisher.port}/?token={TOKEN}", open_timeout=5):
                pass
        health = await asyncio.to_thread(
            lambda: json.loads(
                urllib.request.urlopen(
                    f"https://127.0.0.1:{publisher.port}/health", context=client_context, timeout=5
                ).read()
            )
        )
        await publisher.stop()
        return health

    assert run(main()) == {"status": "ok"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_connections": 0}, "max_connections=0 must be an integer >= 1"),
        ({"max_depth": 1}, "max_depth=1 must be an integer >= 2"),
        ({"handshake_timeout_s": 0}, "handshake_timeout_s=0 must be a number > 0"),
        ({"control_rate": float("nan")}, "control_rate=nan"),
    ],
)
def test_bad_limits_are_named(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SignalPublisher({TOKEN}, **options)
