"""Synthetic reference/current parquet files for the drift peers (numpy + pyarrow only, so it
runs in the project venv or in a peer venv).

    python bench/peers/gen_drift_data.py --rows 10000 --out DIR [--numeric 20] [--categorical 5]

Writes DIR/reference.parquet, DIR/current.parquet (drifted) and DIR/current_same.parquet (a
fresh draw from the reference's distributions: no drift), and prints the column lists and what
was drifted as one JSON line. Numeric columns ``n00..``: N(mu_i, sigma_i); in the current file
the first ``--shifted`` of them move by ``--shift`` sigma. Categorical columns ``c0..``: 8
levels with unequal weights; in the current file the first one gets a new level ``new`` on
``--new-share`` of its rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

LEVELS = np.array([f"v{i}" for i in range(8)] + ["new"])


def table(
    rng: np.random.Generator,
    rows: int,
    n_numeric: int,
    n_categorical: int,
    shift: dict[int, float],
    new_share: dict[int, float],
) -> pa.Table:
    columns: dict[str, pa.Array] = {}
    for i in range(n_numeric):
        mu, sigma = float(i), 1.0 + i / 10
        columns[f"n{i:02d}"] = pa.array(rng.normal(mu + shift.get(i, 0.0) * sigma, sigma, rows))
    weights = np.arange(8, 0, -1, dtype=float)
    weights /= weights.sum()
    for j in range(n_categorical):
        codes = rng.choice(8, size=rows, p=weights)
        share = new_share.get(j, 0.0)
        if share:
            codes[rng.random(rows) < share] = 8
        columns[f"c{j}"] = pa.array(LEVELS[codes])
    return pa.table(columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="rows per file")
    parser.add_argument("--numeric", type=int, default=20)
    parser.add_argument("--categorical", type=int, default=5)
    parser.add_argument("--shifted", type=int, default=3, help="numeric columns to shift")
    parser.add_argument("--shift", type=float, default=0.2, help="in sigmas")
    parser.add_argument("--new-share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    shift = {i: args.shift for i in range(min(args.shifted, args.numeric))}
    new = {0: args.new_share} if args.categorical else {}
    for name, s, n in (("reference", {}, {}), ("current", shift, new), ("current_same", {}, {})):
        pq.write_table(
            table(rng, args.rows, args.numeric, args.categorical, s, n),
            args.out / f"{name}.parquet",
        )
    print(
        json.dumps(
            {
                "rows": args.rows,
                "numeric": ",".join(f"n{i:02d}" for i in range(args.numeric)),
                "categorical": ",".join(f"c{j}" for j in range(args.categorical)),
                "drifted": [f"n{i:02d}" for i in shift] + [f"c{j}" for j in new],
                "shift_sigma": args.shift,
                "new_share": args.new_share if new else 0.0,
            }
        )
    )


if __name__ == "__main__":
    main()
