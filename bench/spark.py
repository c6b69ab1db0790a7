"""Spark engine benchmark: the customer-base analysis on DuckDB vs Spark local[2] vs a loopback standalone
cluster (two 1-core workers), on synthetic canonical transactions (loyalist.engine.sample).

For each scale (customers; lines ~ customers x lines/customer) and engine, one fresh process runs the analysis
and reports: wall time (features + fit + scoring + writing the per-customer table; the Spark session start is
reported apart), rows/s (order lines / wall), peak memory of the driver (the Python process's peak RSS, and for
Spark the driver JVM's peak RSS, VmHWM; in local mode the driver JVM also hosts the executors, on the cluster
it does not), and the distinct patterns collected to the driver. The growth ratio per doubling of customers is
(t_big / t_small) ** (1 / log2(n_big / n_small)).

    python bench/spark.py [--customers 250000,500000,1000000] [--lines-per-order 4.5] [--engines duckdb,local,cluster]
                          [--data DIR] [--merge]

--data DIR keeps the generated Parquet (DIR/tx_<customers>_<lines per order>) and reuses it on the next run, so
every engine reads the same files. --merge keeps the results already in the output file that this run does not
re-measure (same engine, customers and lines per order), so a long ladder can be built in several runs; each
result carries the date it was measured and the machine's load averages (1, 5, 15 min) at its start and end
(the 2 cores are shared: other work slows every engine).

Writes bench/results/spark.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AS_OF = dt.date(2025, 1, 1)


def _hwm_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def one(engine: str, source: Path, work: Path, lines: int) -> dict:
    """Run one measurement in this process and return its figures."""
    out: dict = {"engine": engine, "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                 "load_avg_at_start": [round(x, 1) for x in os.getloadavg()]}
    if engine == "duckdb":
        import loyalist.analysis as analysis
        from loyalist.customer_base import Settings
        from loyalist.engine.sample import load_into_store
        from loyalist.store import open_store

        store = open_store(work / "bench.duckdb", memory_limit="4GB")
        t0 = time.perf_counter()
        load_into_store(store, source)
        out["load_store_s"] = round(time.perf_counter() - t0, 2)
        analysis.run_steps = lambda ctx, on_step=None: ctx.customers  # the customer-base analysis only
        t0 = time.perf_counter()
        report, table = analysis.analyze(store, AS_OF, "bgnbd", Settings())
        out["wall_s"] = round(time.perf_counter() - t0, 2)
        out["customers"] = len(table)
        store.close()
    else:
        from loyalist.engine.cluster import LoopbackCluster
        from loyalist.engine.spark import analyze_spark, spark_session

        cluster = None
        conf = {"spark.ui.enabled": "false", "spark.driver.memory": "2g"}
        t0 = time.perf_counter()
        if engine == "cluster":
            cluster = LoopbackCluster(workers=2, cores=1, memory="3g").start()
            conf.update(cluster.session_conf("2g"))
            session = spark_session(cluster.url, conf)
        else:
            conf["spark.driver.memory"] = "6g"  # driver JVM = executors in local mode
            session = spark_session("local[2]", conf)
        out["session_s"] = round(time.perf_counter() - t0, 2)
        try:
            t0 = time.perf_counter()
            run = analyze_spark(str(source), out=str(work / "out"), session=session, model="bgnbd", as_of=AS_OF,
                                steps=[])  # the customer-base analysis only, as the DuckDB path here
            out["wall_s"] = round(time.perf_counter() - t0, 2)
            out["stages_s"] = run.seconds
            out["customers"] = run.customers
            out["patterns"] = run.patterns
            out["spend_patterns"] = run.spend_patterns
            jvm = session.sparkContext._gateway.proc.pid
            out["driver_jvm_peak_mb"] = round((_hwm_kb(jvm) or 0) / 1024, 1)
        finally:
            session.stop()
            if cluster is not None:
                cluster.stop()
    # VmHWM, not ru_maxrss: the latter keeps the forking parent's peak across exec
    out["driver_python_peak_mb"] = round((_hwm_kb(os.getpid()) or 0) / 1024, 1)
    out["lines"] = lines
    out["machine_load_1m_at_end"] = round(os.getloadavg()[0], 1)  # other work on the 2 cores slows every engine
    out["load_avg_at_end"] = [round(x, 1) for x in os.getloadavg()]
    out["rows_per_s"] = round(lines / out["wall_s"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", default="250000,500000,1000000")
    ap.add_argument("--lines-per-order", type=float, default=4.5)
    ap.add_argument("--engines", default="duckdb,local,cluster")
    ap.add_argument("--more-lines-engines", default="cluster",
                    help="at the smallest scale, also run these engines on twice the lines per order (same customers, "
                         "same patterns): does driver memory grow with order lines?")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=None, help="keep and reuse the generated Parquet here")
    ap.add_argument("--merge", action="store_true", help="keep the results of the output file not re-measured")
    ap.add_argument("--growth-only", action="store_true", help="recompute the growth figures of the output file")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed to one measurement")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "spark.json")
    ap.add_argument("--one", nargs=4, metavar=("ENGINE", "SOURCE", "WORK", "LINES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        engine, source, work, lines = args.one
        import signal

        def give_up(*_):
            raise TimeoutError(f"not finished within {args.timeout:.0f}s")  # unwinds through cluster.stop()

        signal.signal(signal.SIGALRM, give_up)
        signal.alarm(int(args.timeout))
        print(json.dumps(one(engine, Path(source), Path(work), int(lines))))
        return

    from loyalist.engine.sample import write_synthetic

    def save(results: list, growth: dict) -> None:
        _save(args, results, growth)

    if args.growth_only:
        results = json.loads(args.out.read_text())["results"]
        growth = _growth(results, args)
        _save(args, results, growth)
        print(json.dumps(growth, indent=2))
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="loyalist-bench-spark-"))
    results = []
    scales = [int(x) for x in args.customers.split(",")]
    plan = [(n, args.lines_per_order, args.engines) for n in scales]
    if args.more_lines_engines:
        plan.append((min(scales), 2 * args.lines_per_order, args.more_lines_engines))
    earlier = []
    if args.merge and args.out.exists():
        measured = {(e, n, lpo) for n, lpo, engines in plan for e in engines.split(",")}
        earlier = [r for r in json.loads(args.out.read_text())["results"]
                   if (r["engine"], r.get("customers_requested"), r.get("lines_per_order")) not in measured]
    results = list(earlier)
    for n, lpo, engines in plan:
        data_dir = args.data or work
        source = data_dir / f"tx_{n}_{lpo:g}"
        count_file = data_dir / f"tx_{n}_{lpo:g}.lines"  # beside, not inside: Spark reads every file inside
        t0 = time.perf_counter()
        if args.data is not None and count_file.exists():
            lines = int(count_file.read_text())
            print(f"{n:,} customers: {lines:,} lines reused from {source}", flush=True)
        else:
            shutil.rmtree(source, ignore_errors=True)
            lines = write_synthetic(source, n, seed=1, lines_per_order=lpo)
            count_file.write_text(str(lines))
            gen = time.perf_counter() - t0
            print(f"{n:,} customers: {lines:,} lines generated in {gen:.0f}s", flush=True)
        for engine in engines.split(","):
            run_dir = work / f"{engine}_{n}"
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            try:
                proc = subprocess.run([sys.executable, __file__, "--timeout", str(args.timeout), "--one", engine,
                                       str(source), str(run_dir), str(lines)], capture_output=True, text=True,
                                      cwd=REPO, timeout=args.timeout + 180)
            except subprocess.TimeoutExpired:
                results.append({"engine": engine, "customers_requested": n, "lines": lines,
                                "error": f"not finished within {args.timeout:.0f}s"})
                print(f"  {engine:8s} not finished within {args.timeout:.0f}s", flush=True)
                continue
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                results.append({"engine": engine, "customers_requested": n, "lines": lines, "error":
                                proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"})
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["customers_requested"] = n
            r["lines_per_order"] = lpo
            results.append(r)
            print(f"  {engine:8s} {r['wall_s']:8.1f}s  {r['rows_per_s']:>12,} lines/s  python peak "
                  f"{r['driver_python_peak_mb']:,.0f} MB" + (f", driver JVM peak {r['driver_jvm_peak_mb']:,.0f} MB"
                                                             if "driver_jvm_peak_mb" in r else ""), flush=True)
            shutil.rmtree(run_dir, ignore_errors=True)
            save(results, _growth(results, args))
        if args.data is None:
            shutil.rmtree(source, ignore_errors=True)
    growth = _growth(results, args)
    save(results, growth)
    print(json.dumps(growth, indent=2))
    print(f"written {args.out}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def _growth(results: list, args) -> dict:
    """Time ratio per doubling of customers, per engine, between each pair of successive scales measured and
    from the smallest to the largest (at the main lines per order, latest measurement of each scale); and, per
    engine measured at two line counts for the same customers, driver memory against order lines."""
    growth: dict = {}
    ok = [r for r in results if "wall_s" in r]
    for engine in dict.fromkeys(r["engine"] for r in ok):
        latest = {}
        for r in ok:
            if r["engine"] == engine and r.get("lines_per_order") == args.lines_per_order:
                latest[r["customers"]] = r  # later entries replace earlier ones
        rs = [latest[n] for n in sorted(latest)]
        if len(rs) < 2:
            continue
        steps = []
        for a, b in zip(rs, rs[1:]):
            doublings = math.log2(b["customers"] / a["customers"])
            steps.append({"from_customers": a["customers"], "to_customers": b["customers"],
                          "time_ratio_per_doubling": round((b["wall_s"] / a["wall_s"]) ** (1 / doublings), 3)})
        a, b = rs[0], rs[-1]
        doublings = math.log2(b["customers"] / a["customers"])
        growth[engine] = {"from_customers": a["customers"], "to_customers": b["customers"],
                          "time_ratio_per_doubling": round((b["wall_s"] / a["wall_s"]) ** (1 / doublings), 3),
                          "steps": steps,
                          "driver_python_peak_mb": {r["customers"]: r["driver_python_peak_mb"] for r in rs},
                          **({"driver_jvm_peak_mb": {r["customers"]: r["driver_jvm_peak_mb"] for r in rs},
                              "patterns": {r["customers"]: r["patterns"] for r in rs}}
                             if "driver_jvm_peak_mb" in rs[0] else {})}
    for engine in dict.fromkeys(r["engine"] for r in ok):
        by_n: dict = {}
        for r in ok:
            if r["engine"] == engine:
                by_n.setdefault(r["customers"], {})[r["lines"]] = r
        for n, runs in sorted(by_n.items()):
            if len(runs) < 2 or "patterns" not in next(iter(runs.values())):
                continue
            rs = [runs[k] for k in sorted(runs)]
            growth[f"{engine}_driver_memory_vs_lines_{n}"] = {
                "customers": n, "lines": [r["lines"] for r in rs], "patterns": [r["patterns"] for r in rs],
                "driver_jvm_peak_mb": [r["driver_jvm_peak_mb"] for r in rs],
                "driver_python_peak_mb": [r["driver_python_peak_mb"] for r in rs],
                "wall_s": [r["wall_s"] for r in rs]}
    return growth


def _save(args, results: list, growth: dict) -> None:
    doc = {
        "bench": "spark", "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "setup": {"as_of": str(AS_OF), "model": "bgnbd", "lines_per_order": args.lines_per_order,
                  "local": "local[2], driver 6g", "cluster": "standalone on 127.0.0.1: master + 2 workers x 1 core, "
                  "3g each, executors 2g, driver 2g", "duckdb": "loyalist.analysis.analyze on the store "
                  "(insight steps off), store memory_limit 4GB"},
        "results": results, "growth": growth,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
