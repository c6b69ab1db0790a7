"""Cut the bundled demo dataset from the full Online Retail II files in ../shared/data.

A customer-complete subset: every line (orders, returns, cancellations) of a seeded random sample of
customers, plus the guest lines of the same invoices' days at the same rate, written back in the original
two yearly exports with their original columns and their real overlap (1-9 Dec 2010), so the demo
exercises column recognition, quality checks and overlap de-duplication exactly as a user's files would.

    python scripts/make_demo_data.py [--customers 800] [--seed 7]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "online_retail_ii"
FILES = ("online_retail_II_2009-2010.csv.gz", "online_retail_II_2010-2011.csv.gz")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=800)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=REPO / "data" / "demo")
    args = ap.parse_args()
    con = duckdb.connect()
    files = [str(SOURCE / f) for f in FILES]
    con.execute(f"""CREATE TABLE ids AS SELECT DISTINCT "Customer ID" AS id
                    FROM read_csv({files!r}, all_varchar=true) WHERE "Customer ID" IS NOT NULL
                    ORDER BY hash(id || '{args.seed}') LIMIT {args.customers}""")
    args.out.mkdir(parents=True, exist_ok=True)
    for f in FILES:
        out = args.out / f.replace("online_retail_II", "online_retail_II_demo")
        # Guest lines: one invoice in 40, so the quality report has guests to show.
        con.execute(f"""COPY (SELECT * FROM read_csv('{SOURCE / f}', all_varchar=true)
                              WHERE "Customer ID" IN (SELECT id FROM ids)
                                 OR ("Customer ID" IS NULL AND hash(Invoice || '{args.seed}') % 40 = 0))
                        TO '{out}' (HEADER, COMPRESSION gzip)""")
        n = con.execute(f"SELECT count(*) FROM read_csv('{out}')").fetchone()[0]
        print(f"{out.relative_to(REPO)}: {n:,} lines, {out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
