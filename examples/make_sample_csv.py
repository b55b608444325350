"""Write a small bar file in the shape people bring: ``ticker,date,open,high,low,close,volume``, plain dates.

The bars come from the engine's synthetic market (seeded, so every run writes the same file) with its
edge scaled up (``--edge-scale``, default 3): on a few tickers and years the default weak edge is
too faint for a first model to clear the promotion rule, and the walkthrough should end in a
champion. Use your own file instead whenever you have one.

    python examples/make_sample_csv.py --tickers 4 --years 3 --out my.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

from quant_engine.data.synthetic import Shift, SyntheticMarket
from quant_engine.storage.atomic import write_bytes_atomic


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickers", type=int, default=4, help="number of tickers SYN00.. (default 4)")
    parser.add_argument("--years", type=int, default=3, help="years of daily bars ending 2021-12-31 (default 3)")
    parser.add_argument("--edge-scale", type=float, default=3.0, help="multiple of the synthetic edge (default 3)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True, help="the CSV file to write")
    args = parser.parse_args(argv)
    start, end = f"{2022 - args.years}-01-01", "2021-12-31"
    market = SyntheticMarket(
        n_tickers=args.tickers,
        seed=args.seed,
        start=start,
        end=end,
        shifts=[Shift(start, "concept", edge_scale=args.edge_scale)] if args.edge_scale != 1 else [],
    )
    bars = market.fetch(None, start, end)
    bars = bars.assign(date=bars["ts"].dt.tz_convert("America/New_York").dt.strftime("%Y-%m-%d"))
    columns = ["ticker", "date", "open", "high", "low", "close", "volume"]
    write_bytes_atomic(args.out, bars[columns].to_csv(index=False, float_format="%.4f").encode())
    span = f"{bars['date'].min()} .. {bars['date'].max()}"
    print(f"wrote {len(bars)} bars of {args.tickers} tickers ({span}) to {args.out}")


if __name__ == "__main__":
    main()
