"""Bitemporal point-in-time join: quant-engine's OfflineStore against raw DuckDB, pandas and Feast.

One feature group of 500 tickers x 2,000 business days x 10 features (1,000,000 rows, one Parquet
file per day in SageMaker's layout) is written as two commits: the full history, then a vendor
restatement of 1% of the rows (every ticker on 20 random days) with a later ``write_time``.
100,000 unique (ticker, ts) entity rows, half of them exactly at a feature's event time, are
joined with the bitemporal filter on: ``as_of`` before the restatement (it must not leak in) and
after it (the latest write of each event wins), with a TTL of 10 days, 90 days or none.

Every case runs on two layouts of the same rows: the day files as written, and after
``OfflineStore.compact()`` (run, as a nightly job would, before the restatement arrived): one
snapshot of the history with the restatement's 20 day files beside it. On each layout every
contender reads the files the store reads and returns the entity rows in order:

* ``OfflineStore.point_in_time_join``;
* a raw DuckDB ``ASOF LEFT JOIN`` over those files with a ``write_time <= as_of`` filter,
  written the way the store writes it (the latest write folded into a 128-bit ASOF key when
  corrections qualify, the plain event time when none do): the tightest hand-written baseline;
* pandas ``merge_asof`` after reading the files with pyarrow, filtering and deduplicating;
* Feast 0.67's DuckDB offline store (``get_historical_features``), in ``.bench-venv-feast/``
  created from ``bench/requirements-feast.txt`` when missing, driven as a subprocess of this
  script. Feast has no global ``as_of``: its file source is pointed at exactly the files that
  hold the rows committed at or before ``as_of``, and ``created_timestamp_column="write_time"``
  picks the latest write. Its join is an inequality join over every earlier row of the ticker
  inside the TTL, so its time grows with the TTL; without a TTL (about 90 s and 12 GiB here) it
  runs once, on the compacted layout only (``--no-feast-unbounded`` skips it).

Each figure is the median of ``--repeats`` runs, interleaved across contenders so a busy moment
hits each alike, after one warm-up; every contender's values are checked to be identical to the
store's before any ratio is printed. Finally it runs ``run_online_bench()`` from
``bench/online_store.py`` when that file is present.

Run: ``.venv/bin/python bench/feature_store.py`` (``make bench`` runs it too).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
FEAST_VENV = ROOT / ".bench-venv-feast"
FEAST_REQUIREMENTS = ROOT / "bench" / "requirements-feast.txt"
GROUP = "bench_features"
FEATURES = [f"f{i:02d}" for i in range(10)]
WRITE_TIME_HISTORY = pd.Timestamp("2030-01-01", tz="UTC")
WRITE_TIME_CORRECTIONS = pd.Timestamp("2030-02-01", tz="UTC")
CORRECTED_FRACTION = 0.01
TTL_SHORT = pd.Timedelta(days=10)
TTL_LONG = pd.Timedelta(days=90)
CLOSE = pd.Timedelta(hours=21)  # event times are the daily close, 21:00 UTC


# -- data ----------------------------------------------------------------------------------------


def make_history(n_tickers: int, n_days: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2015-01-01", periods=n_days, tz="UTC") + CLOSE
    frame = pd.DataFrame(
        {
            "ticker": np.repeat([f"T{i:04d}" for i in range(n_tickers)], n_days),
            "event_time": np.tile(days, n_tickers),
        }
    )
    for name in FEATURES:
        frame[name] = rng.normal(size=len(frame))
    return frame


def make_corrections(history: pd.DataFrame, seed: int) -> pd.DataFrame:
    """A vendor restatement: every ticker's features on a few random days, 1% of all rows."""
    rng = np.random.default_rng(seed + 1)
    days = history["event_time"].unique()
    n_days = max(1, int(len(days) * CORRECTED_FRACTION))
    restated = rng.choice(days, size=n_days, replace=False)
    corrected = history[history["event_time"].isin(restated)].copy()
    corrected[FEATURES] += 1.0
    return corrected.reset_index(drop=True)


def make_entities(history: pd.DataFrame, n_rows: int, seed: int) -> pd.DataFrame:
    """Unique (ticker, ts) rows: half exactly at an event time, half at a random second."""
    rng = np.random.default_rng(seed + 2)
    tickers = history["ticker"].unique()
    days = history["event_time"].unique()
    first = pd.Timestamp(days.min()) - pd.Timedelta(days=3)  # a few rows before any feature exists
    chosen: set[tuple[str, int]] = set()
    while len(chosen) < n_rows:
        need = n_rows - len(chosen)
        ticker = rng.choice(tickers, size=need)
        exact = rng.random(need) < 0.5
        at_close = pd.DatetimeIndex(rng.choice(days, size=need)).as_unit("ns").asi8
        seconds = rng.integers(0, (pd.Timestamp(days.max()) - first).value // 10**9, size=need)
        anywhere = first.value + seconds * 10**9  # whole seconds: Feast (ibis) keeps only microseconds
        chosen.update(zip(ticker.tolist(), np.where(exact, at_close, anywhere).tolist(), strict=True))
    pairs = sorted(chosen)
    order = rng.permutation(len(pairs))
    return pd.DataFrame(
        {
            "ticker": [pairs[i][0] for i in order],
            "ts": pd.to_datetime([pairs[i][1] for i in order], utc=True).as_unit("ns"),
        }
    )


# -- contenders ----------------------------------------------------------------------------------


def join_store(store, entities: pd.DataFrame, as_of, ttl) -> np.ndarray:
    return store.point_in_time_join(entities, FEATURES, as_of=as_of, ttl=ttl)[FEATURES].to_numpy()


def join_raw_duckdb(paths: list[str], entities: pd.DataFrame, as_of, ttl, *, versioned: bool) -> np.ndarray:
    """The tightest hand-written query: the store's own ASOF formulation without the store around it.

    With ``versioned`` the ASOF key is (event_time, write_time) packed into a HUGEINT, so the
    latest write of an event wins without a GROUP BY; without it, the plain event time.
    """
    import duckdb

    if versioned:
        entity_key = "(epoch_ns(ts)::HUGEINT << 64) + 18446744073709551615::HUGEINT"
        feature_key = (
            "(epoch_ns(event_time)::HUGEINT << 64) + (epoch_ns(write_time)::HUGEINT + 9223372036854775808::HUGEINT)"
        )
    else:
        entity_key, feature_key = "ts", "event_time"
    stale = f"f.event_time < e.ts - to_microseconds({ttl.value // 1000})" if ttl is not None else "false"
    features = ", ".join(FEATURES)
    with duckdb.connect() as con:
        con.register(
            "entities",
            pa.table(
                {
                    "row_id": np.arange(len(entities)),
                    "ticker": entities["ticker"].to_numpy(dtype=str),
                    "ts": pa.array(entities["ts"].array.asi8, pa.timestamp("ns", tz="UTC")),
                }
            ),
        )
        result = con.sql(f"""
            SELECT e.row_id, {", ".join(f"CASE WHEN {stale} THEN NULL ELSE f.{c} END AS {c}" for c in FEATURES)}
            FROM (SELECT row_id, ticker, ts, {entity_key} AS k FROM entities) e
            ASOF LEFT JOIN (
                SELECT ticker, event_time, {features}, {feature_key} AS k FROM read_parquet({paths!r})
                WHERE write_time <= make_timestamptz({as_of.value // 1000})
            ) f ON e.ticker = f.ticker AND e.k >= f.k
            ORDER BY e.row_id
        """).to_arrow_table()
    return np.column_stack([result[c].to_numpy(zero_copy_only=False) for c in FEATURES])


def join_pandas(paths: list[str], entities: pd.DataFrame, as_of, ttl) -> np.ndarray:
    rows = pq.read_table(paths, columns=["ticker", "event_time", *FEATURES, "write_time"]).to_pandas()
    rows = rows[rows["write_time"] <= as_of]
    rows = rows.sort_values(["event_time", "ticker", "write_time"]).drop_duplicates(
        ["ticker", "event_time"], keep="last"
    )
    left = entities.assign(row_id=np.arange(len(entities))).sort_values("ts")
    merged = pd.merge_asof(
        left,
        rows.drop(columns="write_time"),
        left_on="ts",
        right_on="event_time",
        by="ticker",
        direction="backward",
        allow_exact_matches=True,
        tolerance=ttl,
    )
    return merged.sort_values("row_id")[FEATURES].to_numpy()


# -- Feast, in its own virtualenv ------------------------------------------------------------------


def feast_worker(spec_path: str) -> None:
    """Runs inside ``.bench-venv-feast``: one ``get_historical_features`` per line read from stdin.

    Each input line names a case; the reply line gives the seconds the retrieval took (measured
    here, so process start-up and the pipe stay out of the figure) and, the first time, where
    the values were saved.
    """
    from datetime import timedelta

    import feast
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.repo_config import RepoConfig
    from feast.types import Float64

    spec = json.loads(Path(spec_path).read_text())
    workdir = Path(spec["workdir"])
    entities = pd.read_parquet(spec["entities"]).rename(columns={"ts": "event_timestamp"})
    entities["row_id"] = np.arange(len(entities))
    store = FeatureStore(
        config=RepoConfig(
            project="bench",
            provider="local",
            registry=str(workdir / "registry.db"),
            offline_store={"type": "duckdb"},
            online_store={"type": "sqlite", "path": str(workdir / "online.db")},
            entity_key_serialization_version=3,
            repo_path=str(workdir),
        )
    )
    ticker = Entity(name="ticker", join_keys=["ticker"], value_type=ValueType.STRING)
    refs = {}
    for case in spec["cases"]:
        source = FileSource(
            name=f"src_{case['name']}",
            path=case["glob"],
            timestamp_field="event_time",
            created_timestamp_column="write_time",
        )
        view = FeatureView(
            name=f"fv_{case['name']}",
            entities=[ticker],
            source=source,
            ttl=timedelta(seconds=case["ttl_s"]),
            schema=[Field(name=f, dtype=Float64) for f in FEATURES],
        )
        store.apply([ticker, view])
        refs[case["name"]] = [f"fv_{case['name']}:{f}" for f in FEATURES]
    print(json.dumps({"version": feast.__version__}), flush=True)
    saved = set()
    for line in sys.stdin:
        name = json.loads(line)["case"]
        start = time.perf_counter()
        result = store.get_historical_features(entity_df=entities, features=refs[name]).to_df()
        seconds = time.perf_counter() - start
        reply = {"seconds": seconds}
        if name not in saved:
            out = workdir / f"feast_{name}.parquet"
            result.sort_values("row_id")[FEATURES].reset_index(drop=True).to_parquet(out)
            saved.add(name)
            reply["values"] = str(out)
        print(json.dumps(reply), flush=True)


def feast_python() -> tuple[Path | None, str]:
    """The Feast bench venv's interpreter, creating the venv when missing; or None and why not."""
    python = FEAST_VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {FEAST_VENV.name}/ from {FEAST_REQUIREMENTS.relative_to(ROOT)} ...", flush=True)
        for step in (
            ["python3.11", "-m", "venv", str(FEAST_VENV)],
            [str(python), "-m", "pip", "install", "--quiet", "-r", str(FEAST_REQUIREMENTS)],
        ):
            try:
                done = subprocess.run(step, capture_output=True, text=True, timeout=1200)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return None, f"{' '.join(step[:3])} failed: {exc}"
            if done.returncode:
                return None, f"{' '.join(step[:3])} failed: {(done.stderr or done.stdout).strip()[-500:]}"
    check = subprocess.run(
        [str(python), "-c", "import feast; print(feast.__version__)"], capture_output=True, text=True
    )
    if check.returncode:
        return None, f"feast does not import in {FEAST_VENV.name}/: {check.stderr.strip()[-300:]}"
    return python, check.stdout.strip()


class FeastClient:
    """Drives :func:`feast_worker` in the Feast venv, one retrieval per call."""

    def __init__(self, python: Path, workdir: Path, entities_path: Path, cases: list[dict]) -> None:
        spec = workdir / "feast_spec.json"
        spec.write_text(json.dumps({"workdir": str(workdir), "entities": str(entities_path), "cases": cases}))
        self.log = open(workdir / "feast_stderr.log", "w+")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen(
            [str(python), str(Path(__file__).resolve()), "--feast-worker", str(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=workdir,
        )
        self.version = self._reply()["version"]

    def _reply(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            self.log.seek(0)
            raise RuntimeError(f"Feast worker died:\n{self.log.read()[-3000:]}")
        return json.loads(line)

    def run(self, case: str) -> dict:
        self.process.stdin.write(json.dumps({"case": case}) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.log.close()


# -- the run -------------------------------------------------------------------------------------


def check_same(name: str, ours: np.ndarray, theirs: np.ndarray) -> None:
    if ours.shape != theirs.shape:
        raise SystemExit(f"{name} returned shape {theirs.shape}, the store {ours.shape}: not like for like")
    same = (ours == theirs) | (np.isnan(ours) & np.isnan(theirs))
    if not same.all():
        raise SystemExit(f"{name} disagrees with the store on {int((~same).any(axis=1).sum())} entity rows")


def run_online() -> None:
    path = ROOT / "bench" / "online_store.py"
    if not path.exists():
        print("bench/online_store.py is absent: online store bench skipped")
        return
    spec = importlib.util.spec_from_file_location("bench_online_store", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print("== online store (bench/online_store.py: run_online_bench)")
    module.run_online_bench()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tickers", type=int, default=500)
    parser.add_argument("--days", type=int, default=2000)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per contender, after a warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-feast", action="store_true", help="skip the Feast baseline")
    parser.add_argument("--no-online", action="store_true", help="skip bench/online_store.py")
    parser.add_argument(
        "--no-feast-unbounded",
        dest="feast_unbounded",
        action="store_false",
        help="skip Feast without a TTL (about 90 s and 12 GiB at full size)",
    )
    parser.add_argument("--feast-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.feast_worker:
        feast_worker(args.feast_worker)
        return

    from quant_engine.features.offline_store import OfflineStore
    from quant_engine.storage.filesystem import LocalFileSystem

    workdir = Path(tempfile.mkdtemp(prefix="qe-bench-feature-store-"))
    feast = None
    try:
        history = make_history(args.tickers, args.days, args.seed)
        corrections = make_corrections(history, args.seed)
        entities = make_entities(history, args.entities, args.seed)
        start = time.perf_counter()
        days_store = OfflineStore(LocalFileSystem(workdir / "days"), GROUP)
        first = days_store.write(history, write_time=WRITE_TIME_HISTORY)
        shutil.copytree(workdir / "days", workdir / "compacted")
        second = days_store.write(corrections, write_time=WRITE_TIME_CORRECTIONS)
        compacted_store = OfflineStore(LocalFileSystem(workdir / "compacted"), GROUP)
        snapshot = compacted_store.compact()  # the nightly job's compaction, before the restatement arrives
        second_compacted = compacted_store.write(corrections, write_time=WRITE_TIME_CORRECTIONS)
        print(
            f"point-in-time join: {len(history):,} feature rows ({args.tickers} tickers x {args.days} days x "
            f"{len(FEATURES)} features) in {len(first.files):,} Parquet files, then {second.rows_corrected:,} "
            f"corrections in {len(second.files)} more; {len(entities):,} entity rows; stores ready in "
            f"{time.perf_counter() - start:.1f} s; median of {args.repeats} interleaved runs after a warm-up"
        )

        def local(store, *keys: str) -> list[str]:
            return [str(store.fs.local_path(key)) for key in keys]

        day_files = local(days_store, *(f"{GROUP}/{k}" for c in (first, second) for k in c.files))
        compacted_files = local(compacted_store, snapshot, *(f"{GROUP}/{k}" for k in second_compacted.files))
        pattern = workdir / "days" / GROUP / "data" / "year=*" / "month=*" / "day=*"
        restated = workdir / "feast-compacted-after"  # Feast reads one path: link the same files into one folder
        restated.mkdir()
        for number, path in enumerate(compacted_files):
            (restated / f"{number:05d}.parquet").symlink_to(path)
        before = {
            "title": "before the corrections",
            "as_of": WRITE_TIME_HISTORY + pd.Timedelta(days=1),
            "versioned": False,
            "files": "before",
        }
        after = {"title": "after the corrections", "as_of": WRITE_TIME_CORRECTIONS, "versioned": True, "files": "after"}
        unbounded = "once" if args.feast_unbounded else None
        layouts = [
            (
                "day files: SageMaker's layout as written",
                days_store,
                day_files,
                {"before": str(pattern / f"{first.commit_id}.parquet"), "after": str(pattern / "*.parquet")},
                [
                    {**before, "ttl": TTL_SHORT, "feast": "repeat"},
                    {**after, "ttl": TTL_SHORT, "feast": "repeat"},
                    {**after, "ttl": None, "feast": None},
                ],
            ),
            (
                "compacted: one snapshot of the history, the restatement's day files beside it",
                compacted_store,
                compacted_files,
                {"before": compacted_files[0], "after": str(restated / "*.parquet")},
                [
                    {**before, "ttl": TTL_SHORT, "feast": "repeat"},
                    {**after, "ttl": TTL_SHORT, "feast": "repeat"},
                    {**after, "ttl": TTL_LONG, "feast": "repeat"},
                    {**after, "ttl": None, "feast": unbounded},
                ],
            ),
        ]

        def feast_case(layout: int, case: dict) -> str:
            return f"l{layout}_{case['files']}_{0 if case['ttl'] is None else case['ttl'].days}"

        python, feast_note = (None, "--no-feast given") if args.no_feast else feast_python()
        if python is not None:
            entities_path = workdir / "entities.parquet"
            entities.to_parquet(entities_path)
            feast = FeastClient(
                python,
                workdir,
                entities_path,
                [
                    {
                        "name": feast_case(i, c),
                        "glob": globs[c["files"]],
                        "ttl_s": 0 if c["ttl"] is None else int(c["ttl"].total_seconds()),
                    }
                    for i, (_, _, _, globs, cases) in enumerate(layouts)
                    for c in cases
                    if c["feast"]
                ],
            )
            feast_note = f"Feast {feast.version} duckdb"

        for i, (layout, store, paths, _, cases) in enumerate(layouts):
            print(f"\n#### {layout}")
            for case in cases:
                as_of, ttl = case["as_of"], case["ttl"]
                contenders = {
                    "OfflineStore.point_in_time_join": lambda: join_store(store, entities, as_of, ttl),
                    "raw DuckDB ASOF JOIN" + (" (version key)" if case["versioned"] else ""): lambda: join_raw_duckdb(
                        paths, entities, as_of, ttl, versioned=case["versioned"]
                    ),
                    "pandas merge_asof": lambda: join_pandas(paths, entities, as_of, ttl),
                }
                times: dict[str, list[float]] = {name: [] for name in contenders}
                ours = contenders["OfflineStore.point_in_time_join"]()  # warm-up, and the reference values
                for name, fn in list(contenders.items())[1:]:
                    check_same(name, ours, fn())
                run_feast = feast is not None and case["feast"] is not None
                if run_feast:
                    first_run = feast.run(feast_case(i, case))
                    check_same(feast_note, ours, pd.read_parquet(first_run["values"]).to_numpy())
                    times[feast_note] = [first_run["seconds"]] if case["feast"] == "once" else []
                for _ in range(args.repeats):  # interleaved, so a busy moment hits every contender alike
                    for name, fn in contenders.items():
                        start = time.perf_counter()
                        fn()
                        times[name].append(time.perf_counter() - start)
                    if run_feast and case["feast"] == "repeat":
                        times[feast_note].append(feast.run(feast_case(i, case))["seconds"])

                ttl_text = f"TTL {ttl.days} days" if ttl is not None else "no TTL"
                print(f"== as_of {as_of:%Y-%m-%d} ({case['title']}), {ttl_text}")
                medians = {name: statistics.median(ts) for name, ts in times.items()}
                for name, ts in times.items():
                    once = " (one run: it is slow)" if len(ts) == 1 and args.repeats > 1 else ""
                    print(f"  {name:>36}: {medians[name]:.3f} s  ({', '.join(f'{t:.3f}' for t in ts)}){once}")
                ours_s = medians["OfflineStore.point_in_time_join"]
                raw_name = list(contenders)[1]
                print(
                    f"  store / raw DuckDB: {ours_s / medians[raw_name]:.2f}x (target <= 1.3x); "
                    f"pandas / store: {medians['pandas merge_asof'] / ours_s:.1f}x",
                    end="",
                )
                if run_feast:
                    print(f"; Feast / store: {medians[feast_note] / ours_s:.1f}x (target >= 4x)")
                elif feast is None:
                    print(f"; Feast baseline skipped: {feast_note}")
                elif ttl is None and i == 0:
                    print("; Feast without a TTL runs once, on the compacted layout below")
                else:
                    print("; Feast without a TTL skipped (--no-feast-unbounded)")
                print("  values identical across every contender above")
    finally:
        if feast is not None:
            feast.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if not args.no_online:
        print()
        run_online()


if __name__ == "__main__":
    main()
