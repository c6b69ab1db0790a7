"""Ingest benchmark: loyalist ingest vs the floor (plain DuckDB read_csv + COUNT(*) of the same files).

Cases: both Online Retail II exports (1.07M lines, from ../shared/data; skipped when absent) and a
synthetic 10M-line CSV. Each measurement runs in its own process so its peak RSS is its own; each is run
--repeat times and the median kept (the machine is shared). Two references besides the floor: a plain copy
of the files into a DuckDB table (default settings), and the same copy with the cheapest write settings
(no string compression, insertion order not kept), which shows what the engine's own load costs at best.
Targets (issue 3): ingest <= 4x the floor; peak RSS <= 2 GB at 10M lines.

    python bench/ingest.py [--lines 10000000] [--repeat 3] [--cases online_retail_ii,synthetic] [--out FILE]
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

PERSIST_LEAN = PERSIST.replace(
    'con.execute("SET enable_progress_bar = false")',
    'con.execute("SET enable_progress_bar = false"); con.execute("SET preserve_insertion_order = false"); '
    "con.execute(\"SET disabled_compression_methods = 'dict_fsst'\")")
"""The plain copy under the cheapest write settings DuckDB has (no string compression, insertion order not
kept; the store file is ~3-4x larger): what the engine's own load costs at best."""

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


def measure(code: str, args: list[str], repeat: int = 1, fresh: Path | None = None) -> dict:
    """Wall time and peak RSS of a fresh Python process running `code`: the run with the median time of
    `repeat` runs (the machine is shared: one run can be slowed by other work); `fresh` is deleted first."""
    runs = []
    for _ in range(repeat):
        if fresh is not None:
            fresh.unlink(missing_ok=True)
        runs.append(_measure_once(code, args))
    runs.sort(key=lambda r: r["seconds"])
    best = dict(runs[len(runs) // 2])
    if repeat > 1:
        best["all_seconds"] = [r["seconds"] for r in runs]
    if fresh is not None and fresh.exists():
        best["store_mb"] = round(fresh.stat().st_size / 2**20, 1)
    return best


def _measure_once(code: str, args: list[str]) -> dict:
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


def case(name: str, files: list[str], workdir: Path, repeat: int) -> dict:
    load_before = os.getloadavg()[0]
    floor = measure(FLOOR, files, repeat)
    persist = measure(PERSIST, [str(workdir / f"{name}_plain.duckdb"), *files], repeat,
                      fresh=workdir / f"{name}_plain.duckdb")
    lean = measure(PERSIST_LEAN, [str(workdir / f"{name}_lean.duckdb"), *files], repeat,
                   fresh=workdir / f"{name}_lean.duckdb")
    run = measure(INGEST, [str(workdir / f"{name}.duckdb"), *files], repeat, fresh=workdir / f"{name}.duckdb")
    ratio = run["seconds"] / floor["seconds"]
    result = {"case": name, "lines": run["rows"], "repeat": repeat, "ingest": run, "floor_read_csv_count": floor,
              "plain_copy_into_duckdb": persist, "plain_copy_lean_settings": lean,
              "ratio_to_floor": round(ratio, 2), "ratio_to_plain_copy": round(run["seconds"] / persist["seconds"], 2),
              "plain_copy_ratio_to_floor": round(persist["seconds"] / floor["seconds"], 2),
              "lean_plain_copy_ratio_to_floor": round(lean["seconds"] / floor["seconds"], 2),
              "rows_per_second": round(run["rows"] / run["seconds"]), "target_ratio": 4.0, "meets_ratio": ratio <= 4.0,
              "load_average_1m_before": load_before, "load_average_1m": os.getloadavg()[0]}
    print(f"{name}: {run['rows']:,} lines; ingest {run['seconds']:.2f} s ({result['rows_per_second']:,} rows/s, "
          f"peak RSS {run['peak_rss_mb']:.0f} MB); floor {floor['seconds']:.2f} s -> ratio {ratio:.2f}x (target <= 4x); "
          f"plain copy into DuckDB {persist['seconds']:.2f} s ({result['plain_copy_ratio_to_floor']:.2f}x the floor) "
          f"-> ratio {result['ratio_to_plain_copy']:.2f}x; plain copy with lean settings {lean['seconds']:.2f} s "
          f"({result['lean_plain_copy_ratio_to_floor']:.2f}x the floor); load {load_before:.1f} -> "
          f"{result['load_average_1m']:.1f}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=10_000_000)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ingest.json")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the median is kept")
    ap.add_argument("--cases", default="online_retail_ii,synthetic", help="comma-separated: online_retail_ii, synthetic")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="loyalist-bench-") as tmp:
        work = Path(tmp)
        files = sorted(str(p) for p in ORII.glob("*.csv.gz"))
        if "online_retail_ii" not in args.cases:
            pass
        elif files:
            results.append(case("online_retail_ii", files, work, args.repeat))
        else:
            print(f"skipped online_retail_ii: {ORII} is absent")
        if "synthetic" in args.cases:
            big = work / "synthetic.csv"
            synthetic_csv(big, args.lines)
            r = case(f"synthetic_{args.lines / 1_000_000:g}M", [str(big)], work, args.repeat)
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
