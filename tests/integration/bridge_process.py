"""The bridge as a user runs it: ``quant-engine bridge run`` and ``quant-engine feed serve`` as subprocesses.

For the tests that attack it: a store with history and a champion, the two processes with their
environment, their health, metrics and memory, and an honest subscriber that records every signal.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb
from websockets.asyncio.client import connect

from quant_engine.backends import make_model_registry
from quant_engine.features.registry import get_feature_set
from quant_engine.monitoring.run import record_baseline
from quant_engine.training.registry import ModelMetadata

FEATURES = get_feature_set("default").names
QUANT_ENGINE = str(Path(sys.executable).with_name("quant-engine"))
TOKEN = "honest-token-7f3a"


def register_champion(home: Path, seed: int = 1) -> str:
    """A small booster on seeded feature rows, registered with its monitoring baseline and promoted."""
    rng = np.random.default_rng(seed)
    rows = pd.DataFrame(rng.normal(size=(300, len(FEATURES))), columns=FEATURES)
    rows["realized_vol_20"] = rng.uniform(0.0, 5.0, size=len(rows))
    rows["label"] = (rows["log_return_5"] + 0.5 * rng.normal(size=len(rows)) > 0).astype(int)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 2, "seed": seed},
        xgb.DMatrix(rows[FEATURES].to_numpy(np.float32), label=rows["label"], feature_names=FEATURES),
        5,
    )
    path = home / f"champion-{seed}.json"
    booster.save_model(str(path))
    registry = make_model_registry()
    version = registry.register(
        path,
        ModelMetadata(
            features=FEATURES,
            data_start="2021-01-01T00:00Z",
            data_end="2021-03-31T21:00Z",
            data_fingerprint=f"seed{seed}",
        ),
    )
    record_baseline(registry, version, booster, rows.iloc[:200], rows.iloc[200:], FEATURES)
    registry.promote(version, f"seed {seed}")
    return version


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Process:
    """A subprocess whose output lines are read as they come (a full pipe would block it), by a thread."""

    def __init__(
        self, command: Sequence[str], env: dict[str, str], *, preexec_fn: Callable[[], None] | None = None
    ) -> None:
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=preexec_fn
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                if predicate(line):
                    return line
            seen = len(self.lines)
            if not self.alive():
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{self.process.args[:4]} never said it (exit {self.process.poll()}):\n" + "\n".join(self.lines[-40:])
        )

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, and the exit status; SIGKILL if it does not go."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(5)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(5)


class FeedProcess(_Process):
    """``quant-engine feed serve --source store``: the stored bars replayed from ``anchor`` (Unix seconds)."""

    def __init__(
        self, home: Path, start: str, end: str, *, speed: float, anchor: float, port: int = 0, extra: Sequence[str] = ()
    ) -> None:
        anchor_file = home / f"anchor-{time.time_ns()}.json"
        anchor_file.write_text(json.dumps({"anchor": anchor, "speed": speed}))
        super().__init__(
            [
                QUANT_ENGINE,
                "feed",
                "serve",
                "--source",
                "store",
                "--start",
                start,
                "--end",
                end,
                "--speed",
                str(speed),
                "--port",
                str(port),
                "--anchor-file",
                str(anchor_file),
                "--ticks-per-bar",
                "6",
                *extra,
            ],
            {**os.environ, "QE_HOME": str(home)},
        )
        line = self.wait_for_line(lambda text: text.startswith("feed serving on "))
        self.url = line.split()[3]
        self.port = int(self.url.rsplit(":", 1)[1])

    def health(self) -> dict:
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5).read())


class BridgeProcess(_Process):
    """``quant-engine bridge run`` configured by environment variables, logging JSON lines."""

    def __init__(
        self,
        home: Path,
        feed_url: str,
        tickers: Sequence[str],
        settings: dict[str, str] | None = None,
        *,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        env = {
            **os.environ,
            "QE_HOME": str(home),
            "QE_BACKEND": "local",
            "QE_FEED_URL": feed_url,
            "QE_BRIDGE_PORT": "0",
            "QE_BRIDGE_TOKENS": TOKEN,
            "QE_BRIDGE_TICKERS": ",".join(tickers),
            **(settings or {}),
        }
        super().__init__([QUANT_ENGINE, "bridge", "run"], env, preexec_fn=preexec_fn)
        listening = self.wait_for_line(lambda text: '"bridge listening"' in text)
        self.port = json.loads(listening)["port"]

    def records(self) -> list[dict]:
        out = []
        for line in list(self.lines):
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"message": line, "level": "RAW"})
        return out

    def get(self, path: str, *, attempts: int = 50) -> str:
        """An HTTP GET, retried while the bridge refuses it (503 at its connection limit, no descriptors left)."""
        last: Exception | None = None
        for _ in range(attempts):
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5).read().decode()
            except (urllib.error.URLError, OSError) as exc:
                last = exc
                time.sleep(0.2)
        raise AssertionError(f"GET {path} kept failing: {last}")

    def health(self) -> dict:
        return json.loads(self.get("/health"))

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as ``{'name{labels}': value}``."""
        out = {}
        for line in self.get("/metrics").splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def open_files(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))


class Subscriber:
    """An honest client: subscribed to every ticker, it records each signal and when it arrived."""

    def __init__(self, port: int, *, scheme: str = "Bearer") -> None:
        self.url = f"ws://127.0.0.1:{port}/"
        self.headers = {"Authorization": f"{scheme} {TOKEN}"}
        self.signals: list[dict] = []
        self.arrivals: list[float] = []
        self.subscribed = asyncio.Event()
        self.closed: Exception | None = None

    async def run(self) -> None:
        try:
            async with connect(self.url, additional_headers=self.headers, max_size=2**20) as ws:
                await ws.send(json.dumps({"subscribe": ["*"]}))
                await ws.recv()
                self.subscribed.set()
                async for message in ws:
                    self.arrivals.append(time.monotonic())
                    self.signals.append(json.loads(message))
        except Exception as exc:  # noqa: BLE001 - recorded for the test to report
            self.closed = exc

    async def wait_for(self, condition: Callable[[list[dict]], bool], timeout: float = 120.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition(self.signals):
                if self.closed is not None:
                    raise AssertionError(f"the honest subscriber was disconnected: {self.closed!r}")
                await asyncio.sleep(0.02)


def assert_every_bar_once_in_order(signals: list[dict], bars: pd.DataFrame, after: pd.Timestamp) -> None:
    """The subscriber got every stored bar closing after ``after``, once each, each ticker's in time order."""
    got = [(s["ticker"], pd.Timestamp(s["ts"])) for s in signals]
    assert len(got) == len(set(got)), "a bar was published twice"
    expected = {(t, ts) for t, ts in zip(bars["ticker"], bars["ts"], strict=True) if ts > after}
    assert expected <= set(got), f"missing {sorted(expected - set(got))[:5]}"
    assert set(got) <= set(zip(bars["ticker"], bars["ts"], strict=True)), "a bar that was never replayed"
    for ticker in {t for t, _ in got}:
        times = [ts for t, ts in got if t == ticker]
        assert times == sorted(times), f"{ticker}'s signals out of order"
