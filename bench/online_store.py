"""Online store read latency: ``SQLiteOnlineStore.get`` against a raw sqlite3 primary-key lookup.

Baseline: the least any SQLite-backed store can do for the same read, a prepared
``SELECT f0, ..., f9 FROM baseline WHERE ticker = ?`` + ``fetchone()`` on a persistent connection
to a WAL-mode table keyed by ticker with one REAL column per feature. The store adds its own work
on top (argument checks, blob decoding, the record dict with a ``pd.Timestamp``); the ratio says
what that costs. Target: a 10-feature ``get`` at p99 <= 0.1 ms.

Run: ``python bench/online_store.py [--tickers 500] [--features 10] [--reads 10000]``.
"""

from __future__ import annotations

import argparse
import gc
import sqlite3
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from quant_engine.features.online_store import SQLiteOnlineStore

#: Reads made before timing starts (statement cache, page cache, branch predictors).
WARMUP_READS = 1_000
TARGET_P99_MS = 0.1


def _latencies_us(readers: Sequence[Callable[[str], object]], tickers: Sequence[str]) -> np.ndarray:
    """Per-call latency in microseconds, shape ``(len(readers), len(tickers))``.

    The readers take turns on each ticker, so load from other processes on a shared machine falls
    on both alike; garbage collection is paused so that it lands in no single call.
    """
    timer = time.perf_counter_ns
    out = np.empty((len(readers), len(tickers)))
    gc.disable()
    try:
        for i, ticker in enumerate(tickers):
            for j, read in enumerate(readers):
                start = timer()
                read(ticker)
                out[j, i] = timer() - start
    finally:
        gc.enable()
    return out / 1_000.0


def _populate(
    directory: Path, tickers: list[str], n_features: int, seed: int
) -> tuple[SQLiteOnlineStore, sqlite3.Connection]:
    """The store and the baseline table, holding the same random feature values."""
    rng = np.random.default_rng(seed)
    names = [f"feature_{i}" for i in range(n_features)]
    values = rng.standard_normal((len(tickers), n_features))
    frame = pd.DataFrame(values, columns=names)
    frame.insert(0, "ticker", tickers)
    frame.insert(1, "event_time", pd.Timestamp("2024-06-28 20:00", tz="UTC"))
    store = SQLiteOnlineStore(directory / "online.sqlite", "bench")
    store.put(frame)

    baseline = sqlite3.connect(directory / "baseline.sqlite", isolation_level=None)
    baseline.execute("PRAGMA journal_mode=WAL")
    columns = ", ".join(f"{n} REAL NOT NULL" for n in names)
    baseline.execute(
        f"CREATE TABLE baseline (ticker TEXT PRIMARY KEY, event_time_ns INTEGER NOT NULL, {columns}) WITHOUT ROWID"
    )
    placeholders = ", ".join("?" * (n_features + 2))
    baseline.executemany(
        f"INSERT INTO baseline VALUES ({placeholders})",
        [(t, 0, *row) for t, row in zip(tickers, values.tolist(), strict=True)],
    )
    return store, baseline


def run_online_bench(
    n_tickers: int = 500,
    n_features: int = 10,
    n_reads: int = 10_000,
    *,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, float]:
    """Time ``n_reads`` random single-ticker reads from the store and from the raw baseline.

    Parameters
    ----------
    n_tickers, n_features : int
        Size of the populated feature group.
    n_reads : int
        Timed reads per contender, after :data:`WARMUP_READS` untimed ones; the same random
        ticker sequence for both, taking turns.
    seed : int
        Seeds the feature values and the read sequence.
    verbose : bool
        Print each figure and the ratios.

    Returns
    -------
    dict
        ``store_p50_us, store_p99_us, baseline_p50_us, baseline_p99_us`` (microseconds),
        ``ratio_p50, ratio_p99`` (store / baseline) and ``meets_target`` (1.0 when the store's p99
        is within :data:`TARGET_P99_MS`, else 0.0).
    """
    for name, value in (("n_tickers", n_tickers), ("n_features", n_features), ("n_reads", n_reads)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")
    tickers = [f"T{i:05d}" for i in range(n_tickers)]
    sequence = [tickers[i] for i in np.random.default_rng(seed + 1).integers(0, n_tickers, WARMUP_READS + n_reads)]
    warmup, timed = sequence[:WARMUP_READS], sequence[WARMUP_READS:]

    with tempfile.TemporaryDirectory(prefix="qe-online-bench-") as scratch:
        store, baseline = _populate(Path(scratch), tickers, n_features, seed)
        select = f"SELECT {', '.join(f'feature_{i}' for i in range(n_features))} FROM baseline WHERE ticker = ?"

        def raw_lookup(ticker: str) -> object:
            return baseline.execute(select, (ticker,)).fetchone()

        try:
            _latencies_us((store.get, raw_lookup), warmup)
            store_us, baseline_us = _latencies_us((store.get, raw_lookup), timed)
        finally:
            store.close()
            baseline.close()

    results = {
        "store_p50_us": float(np.percentile(store_us, 50)),
        "store_p99_us": float(np.percentile(store_us, 99)),
        "baseline_p50_us": float(np.percentile(baseline_us, 50)),
        "baseline_p99_us": float(np.percentile(baseline_us, 99)),
    }
    results["ratio_p50"] = results["store_p50_us"] / results["baseline_p50_us"]
    results["ratio_p99"] = results["store_p99_us"] / results["baseline_p99_us"]
    results["meets_target"] = float(results["store_p99_us"] <= TARGET_P99_MS * 1_000.0)
    if verbose:
        print(f"online store read, {n_tickers} tickers x {n_features} features, {n_reads} random single-ticker reads")
        print(
            f"  SQLiteOnlineStore.get      p50 {results['store_p50_us']:7.2f} us   "
            f"p99 {results['store_p99_us']:7.2f} us"
        )
        print(
            f"  raw sqlite3 PK lookup      p50 {results['baseline_p50_us']:7.2f} us   "
            f"p99 {results['baseline_p99_us']:7.2f} us   (baseline)"
        )
        print(f"  ratio store / baseline     p50 {results['ratio_p50']:7.2f}x      p99 {results['ratio_p99']:7.2f}x")
        verdict = "meets" if results["meets_target"] else "MISSES"
        print(f"  target p99 <= {TARGET_P99_MS} ms: {verdict}")
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=500)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--reads", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run_online_bench(args.tickers, args.features, args.reads, seed=args.seed)


if __name__ == "__main__":
    main()
