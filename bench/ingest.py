"""Ingest benchmark: loyalist ingest vs the floor (plain DuckDB read_csv + COUNT(*) of the same files).

Cases: both Online Retail II exports (1.07M lines, from ../shared/data; skipped when absent) and a
synthetic 10M-line CSV. Each measurement runs in its own process so its peak RSS is its own.
Targets (issue 3): ingest <= 4x the floor; peak RSS <= 2 GB at 10M lines.

    python bench/ingest.py [--lines 10000000] [--out bench/results/ingest.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORII = REPO.parent / "shared" / "data" / "online_retail_ii"

FLOOR = """
import duckdb, sys
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
n = sum(con.execute("SELECT count(*) FROM read_csv(?)", [p]).fetchall()[0][0] for p in sys.argv[1:])
print(n)
"""

PERSIST = """
import duckdb, sys
con = duckdb.connect(sys.argv[1])
con.execute("SET enable_progress_bar = false")
con.execute("CREATE TABLE t AS SELECT * FROM read_csv(?)", [sys.argv[2:]])
print(con.execute("SELECT count(*) FROM t").fetchall()[0][0])
"""
"""A second reference: the same files copied into a DuckDB table as they are, with no checks at all."""

INGEST = """
import sys
from loyalist.store import open_store
from loyalist.ingest import ingest
store = open_store(sys.argv[1])
r = ingest(store, sys.argv[2:])
t = r.totals()
assert t["rows_read"] == t["loaded"] + t["duplicates"] + t["quarantined"]
print(t["rows_read"])
store.close()
"""


def measure(code: str, args: list[str]) -> dict:
    """Wall time and peak RSS of a fresh Python process running `code`."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out = proc.stdout.read().strip()
    if status != 0:
        raise SystemExit(f"benchmark step failed: {code[:40]}... {args}")
    return {"seconds": round(wall, 3), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "rows": int(out)}


def synthetic_csv(path: Path, lines: int) -> None:
    import duckdb

    con = duckdb.connect()
    con.execute(f"""
        COPY (SELECT 'C' || (i * 7919 % 1000000) AS CustomerID, 'INV' || (i // 4) AS InvoiceNo,
                     TIMESTAMP '2019-01-01' + to_seconds(((i * 104729) % 126230400)::BIGINT) AS InvoiceDate,
                     'SKU' || (i * 31 % 50000) AS StockCode, 'Product ' || (i * 31 % 50000) AS Description,
                     1 + i % 24 AS Quantity, round(0.25 + (i * 13 % 4000) / 100, 2) AS UnitPrice,
                     'United Kingdom' AS Country
              FROM range({lines}) r(i)) TO '{path}' (HEADER)""")
    con.close()


def case(name: str, files: list[str], workdir: Path) -> dict:
    floor = measure(FLOOR, files)
    plain = workdir / f"{name}_plain.duckdb"
    plain.unlink(missing_ok=True)
    persist = measure(PERSIST, [str(plain), *files])
    db = workdir / f"{name}.duckdb"
    db.unlink(missing_ok=True)
    run = measure(INGEST, [str(db), *files])
    ratio = run["seconds"] / floor["seconds"]
    result = {"case": name, "lines": run["rows"], "ingest": run, "floor_read_csv_count": floor,
              "plain_copy_into_duckdb": persist,
              "ratio_to_floor": round(ratio, 2), "ratio_to_plain_copy": round(run["seconds"] / persist["seconds"], 2),
              "rows_per_second": round(run["rows"] / run["seconds"]), "target_ratio": 4.0, "meets_ratio": ratio <= 4.0,
              "load_average_1m": os.getloadavg()[0]}
    print(f"{name}: {run['rows']:,} lines; ingest {run['seconds']:.2f} s ({result['rows_per_second']:,} rows/s, "
          f"peak RSS {run['peak_rss_mb']:.0f} MB); floor {floor['seconds']:.2f} s -> ratio {ratio:.2f}x (target <= 4x); "
          f"plain copy into DuckDB {persist['seconds']:.2f} s -> ratio {result['ratio_to_plain_copy']:.2f}x")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=10_000_000)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ingest.json")
    ap.add_argument("--cases", default="online_retail_ii,synthetic", help="comma-separated: online_retail_ii, synthetic")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="loyalist-bench-") as tmp:
        work = Path(tmp)
        files = sorted(str(p) for p in ORII.glob("*.csv.gz"))
        if "online_retail_ii" not in args.cases:
            pass
        elif files:
            results.append(case("online_retail_ii", files, work))
        else:
            print(f"skipped online_retail_ii: {ORII} is absent")
        if "synthetic" in args.cases:
            big = work / "synthetic.csv"
            synthetic_csv(big, args.lines)
            r = case(f"synthetic_{args.lines / 1_000_000:g}M", [str(big)], work)
            r["target_peak_rss_mb"] = 2048
            r["meets_rss"] = r["ingest"]["peak_rss_mb"] <= 2048
            results.append(r)
    doc = {"benchmark": "ingest", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
