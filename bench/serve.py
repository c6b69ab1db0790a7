"""Dashboard latency at scale: list pages and the customer page with 1M customers, 20 concurrent clients.

    .venv/bin/python bench/serve.py [--customers 1000000] [--requests 2000] [--clients 20] [--rebuild]

The store (/tmp/loyalist-bench-serve/serve-<N>.duckdb or $LOYALIST_BENCH_WORK, kept unless --rebuild):
- transactions: a seeded BG/NBD customer base with Gamma-Gamma spend (loyalist.synthetic.simulate_bgnbd,
  the parameters of bench/btyd.py), ingested with loyalist's own ingest;
- customer_insights: the real customer-base scoring (`loyalist.analysis.analyze` with model bgnbd; the other
  capabilities' analysis steps are NOT run, to keep the build within minutes and independent of them);
- the other capabilities' columns and tables (segment, trend, overdue_*, payment_risk, crosssell_gaps,
  contact_schedule, events ...) are written directly with synthetic values of the contract's shape, so
  every list page has realistic row counts to filter, sort and page through. They are load, not insight.

Then `loyalist serve` runs on 127.0.0.1 (a free port) and 20 asyncio clients (httpx) send a bounded number of
requests (default 2,000 after a warm-up of each URL shape): random list pages (search, filters, sort
columns, deep pages) and random customer pages. p50/p95 per kind go to bench/results/serve.json.
Target: p95 < 300 ms for list pages and for the customer page.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
WORK = Path(os.environ.get("LOYALIST_BENCH_WORK", "/tmp/loyalist-bench-serve"))
RESULTS = ROOT / "bench" / "results" / "serve.json"
SEED = 20240607


def build_store(path: Path, n: int) -> dict:
    from loyalist import analysis
    from loyalist.ingest import ingest
    from loyalist.store import open_store, write_frame
    from loyalist.synthetic import DEFAULT_SPEND, simulate_bgnbd

    timings = {}
    t0 = time.perf_counter()
    sim = simulate_bgnbd(n, r=0.25, alpha=4.0, a=0.8, b=2.5, T=(26.0, 104.0), seed=SEED, transactions=True,
                         spend=DEFAULT_SPEND, end_date="2011-12-01")
    tx = sim.transactions
    tx["customer_id"] = "C" + tx["customer_id"].astype(str).str.zfill(7)
    tx["order_date"] = tx["order_date"].dt.floor("min")
    tx["order_id"] = "O" + pd.Series(np.arange(len(tx)), index=tx.index).astype(str)
    WORK.mkdir(parents=True, exist_ok=True)
    parquet = WORK / f"serve-{n}-transactions.parquet"
    tx.to_parquet(parquet, index=False)
    timings["simulate_s"] = round(time.perf_counter() - t0, 1)
    if path.exists():
        path.unlink()
    store = open_store(path, memory_limit="8GB")
    t0 = time.perf_counter()
    ingest(store, [str(parquet)])
    timings["ingest_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    with mock.patch.object(analysis, "run_steps", lambda ctx, on_step=None: ctx.customers):
        analysis.analyze(store, model="bgnbd")
    timings["analyze_customer_base_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    ci = store.con.execute("SELECT * FROM customer_insights ORDER BY customer_id").df()  # as analyze stores it
    rng = np.random.default_rng(SEED)
    m = len(ci)
    as_of = pd.Timestamp(ci["as_of"].iloc[0])
    last = pd.to_datetime(ci["last_order"])
    overdue = rng.random(m) < 0.15
    cols = pd.DataFrame({
        "customer_id": ci["customer_id"],
        "segment": rng.choice(["Champions", "Loyal", "Potential", "Needs attention", "At risk", "Hibernating", "New"], m),
        "rfm_segment": rng.choice(["555", "454", "344", "233", "111"], m),
        "value_grade": rng.choice(["A", "B", "C", "D"], m),
        "value_score": rng.random(m), "value_percentile": rng.integers(0, 100, m).astype(float),
        "lifecycle_stage": rng.choice(["new", "active", "lapsing", "lost"], m),
        "trend": rng.choice(["growing", "stable", "declining", "lapsed"], m, p=[0.1, 0.5, 0.2, 0.2]),
        "growth_rate": rng.normal(0, 0.3, m), "trend_confidence": rng.random(m),
        "volume_pricing_candidate": rng.random(m) < 0.03,
        "mix_shift": False, "mix_shift_reason": None, "dissatisfaction_flags": None,
        "payment_risk": np.where(rng.random(m) < 0.05, rng.random(m), 0.0),
        "payment_risk_reason": None, "dbt_days_6m": rng.exponential(5, m),
        "next_order_date": last + pd.to_timedelta(rng.integers(5, 120, m), "D"),
        "next_order_p10": last + pd.Timedelta(days=5), "next_order_p90": last + pd.Timedelta(days=150),
        "prob_order_30d": rng.random(m), "prob_order_60d": rng.random(m),
        "overdue_days": np.where(overdue, rng.integers(1, 200, m), 0).astype(float),
        "overdue_score": np.where(overdue, rng.random(m), 0.0),
        "overdue_reason": np.where(overdue, "orders every ~40 days; none for 90", None),
        "cycle_days": rng.uniform(7, 120, m), "cycle_regularity": rng.random(m),
        "cycle_class": rng.choice(["short", "long"], m), "contact_due_date": as_of + pd.to_timedelta(rng.integers(0, 60, m), "D"),
    })
    write_frame(store, "customer_insights", ci.merge(cols, on="customer_id", how="left"), replace=True)
    ids = ci["customer_id"].to_numpy()
    gap_ids = np.repeat(ids[rng.random(m) < 0.5], 3)  # every table in customer_id order, as the steps write them
    k = len(gap_ids)
    write_frame(store, "crosssell_gaps", pd.DataFrame({
        "customer_id": gap_ids, "rank": np.tile([1, 2, 3], k // 3), "product_id": rng.choice([f"P{i}" for i in range(500)], k),
        "description": rng.choice([f"PRODUCT {i}" for i in range(500)], k), "score": rng.random(k),
        "evidence": "bought by 14 of 20 look-alikes"}), replace=True)
    write_frame(store, "contact_schedule", pd.DataFrame({
        "customer_id": ids, "contact_date": as_of + pd.to_timedelta(rng.integers(0, 90, m), "D"),
        "reason": "next order due"}), replace=True)
    ev = rng.random(m) < 0.3
    write_frame(store, "events", pd.DataFrame({
        "event_id": [f"E{i}" for i in range(int(ev.sum()))], "event_date": as_of - pd.to_timedelta(rng.integers(0, 90, ev.sum()), "D"),
        "customer_id": ids[ev], "type": rng.choice(["overdue", "declining", "payment_late", "churn_risk"], ev.sum()),
        "reason": "synthetic", "evidence": "{}", "action": "call", "detected_at": as_of}), replace=True)
    store.close()
    timings["contract_tables_s"] = round(time.perf_counter() - t0, 1)
    timings["transaction_lines"] = int(len(tx))
    timings["customers"] = int(m)
    return timings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def urls(ids: list[str], rng: random.Random) -> tuple[str, str]:
    """A random request: ('list', url) or ('customer', url)."""
    if rng.random() < 0.35:
        return "customer", f"/customers/{rng.choice(ids)}"
    name = rng.choice(["customers", "at-risk", "overdue", "growing", "cross-sell", "payment-risk", "contact-due",
                       "alerts"])
    params = {"page": rng.choice([1, 1, 2, 5, 50, 400])}
    sorts = {"customers": ["clv_12m", "revenue", "p_alive", "last_order"], "at-risk": ["revenue", "p_alive"],
             "overdue": ["overdue_score", "overdue_days"], "growing": ["growth_rate", "revenue"],
             "cross-sell": ["score"], "payment-risk": ["payment_risk"], "contact-due": ["contact_date"],
             "alerts": ["event_date"]}
    params["sort"] = rng.choice(sorts[name])
    params["order"] = rng.choice(["asc", "desc"])
    r = rng.random()
    if r < 0.25:
        params["q"] = rng.choice(ids)[: rng.choice([5, 6, 7])]
    elif r < 0.5 and name in ("customers", "at-risk", "overdue", "growing", "payment-risk"):
        params["segment"] = rng.choice(["Champions", "Loyal", "At risk", "New"])
    elif r < 0.65 and name in ("customers", "at-risk"):
        params["min_p_alive"] = rng.choice(["0.1", "0.2", "0.3"])
    elif r < 0.75 and name == "alerts":
        params["type"] = rng.choice(["overdue", "declining"])
    from urllib.parse import urlencode

    return "list", f"/lists/{name}?{urlencode(params)}"


async def _get(port: int, path: str) -> tuple[int, int]:
    """One GET on a new connection, closed after it: (status, body bytes). A minimal HTTP/1.1 client
    (content-length or chunked bodies), so the client's own CPU, on the same two cores as the server, stays small.

    A new connection per request, as a dashboard user clicking every few seconds makes (uvicorn closes idle
    connections after 5 s); it also lets whichever server process is free take the request (a kept-alive
    connection stays with the process that accepted it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await _exchange(reader, writer, path)
    finally:
        writer.close()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> tuple[int, int]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    low = head.lower()
    i = low.find(b"content-length:")
    if i >= 0:
        n = int(low[i + 15:low.index(b"\r\n", i)])
        await reader.readexactly(n)
        return status, n
    n = 0
    while True:  # chunked
        size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
        await reader.readexactly(size + 2)
        n += size
        if size == 0:
            return status, n


async def load(port: int, ids: list[str], n_requests: int, clients: int, seed: int) -> dict:
    rng = random.Random(seed)
    plan = [urls(ids, rng) for _ in range(n_requests)]
    queue: asyncio.Queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    times: dict[str, list[float]] = {"list": [], "customer": []}
    errors: list[str] = []

    async def worker():
        while True:
            try:
                kind, url = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            t0 = time.perf_counter()
            status, _ = await _get(port, url)
            dt = time.perf_counter() - t0
            if status != 200:
                errors.append(f"{status} {url}")
            else:
                times[kind].append(dt)

    cpu0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    client_cpu = time.process_time() - cpu0
    out = {"requests": n_requests, "clients": clients, "wall_s": round(wall, 2),
           "throughput_rps": round(n_requests / wall, 1), "errors": len(errors), "error_examples": errors[:5],
           "client_cpu_s": round(client_cpu, 2),
           "client_cpu_share_of_machine": round(client_cpu / (wall * (os.cpu_count() or 1)), 3)}
    for kind, ts in times.items():
        a = np.array(ts) * 1000
        out[kind] = {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 1),
                     "p95_ms": round(float(np.percentile(a, 95)), 1), "max_ms": round(float(a.max()), 1),
                     "meets_target_p95_300ms": bool(np.percentile(a, 95) < 300)}
    return out


def _proc(pid: int) -> dict:
    """CPU seconds and memory of one process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    mem = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            mem[line.split(":")[0]] = int(line.split()[1]) * 1024
    return {"cpu_s": (int(stat[11]) + int(stat[12])) / tick, "rss_bytes": mem.get("VmRSS"), "peak_rss_bytes": mem.get("VmHWM")}


def _tree(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid] + [p for k in kids for p in _tree(int(k))]


def _healthz(port: int) -> dict | None:
    """GET /healthz on a new connection (so the kernel may hand it to any worker that is serving)."""
    import http.client

    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", "/healthz", headers={"Connection": "close"})
        r = c.getresponse()
        body = r.read()
        c.close()
        return json.loads(body) if r.status == 200 else None
    except (OSError, ValueError):
        return None


async def _warm(port: int, paths: list[str]) -> None:
    for path in paths:
        await _get(port, path)


REQUEST_MIX = ("35% customer pages (/customers/ID, ID drawn from a reservoir sample of 20,000 customers); 65% list "
               "pages, the list uniform over the 8 lists (customers, at-risk, overdue, growing, cross-sell, "
               "payment-risk, contact-due, alerts); page uniform over [1, 1, 2, 5, 50, 400] (clamped to the last "
               "page); sort uniform over 1-4 columns of the list, order asc/desc 50/50; filters: 25% a search q = "
               "the first 5-7 characters of a random customer id, else 25% a segment filter (lists that have "
               "it), else 15% min_p_alive in {0.1, 0.2, 0.3} (customers, at-risk), else 10% an alert type "
               "(alerts); seeded, so every run sends the same plan. Each request on a new connection. No response is cached: each request "
               "filters, sorts and slices (or looks up the customer) and renders the page")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--workers", type=int, default=2, help="loyalist serve --workers (server processes)")
    ap.add_argument("--no-preload", action="store_true", help="serve with --no-preload (every page a DuckDB query)")
    ap.add_argument("--out", default=str(RESULTS), help="where the JSON goes (default bench/results/serve.json)")
    args = ap.parse_args()
    db = WORK / f"serve-{args.customers}.duckdb"
    build = None
    if args.rebuild or not db.exists():
        print(f"building the store {db} ...", flush=True)
        build = build_store(db, args.customers)
        print(f"  {build}", flush=True)
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    n_customers = con.execute("SELECT count(*) FROM customer_insights").fetchone()[0]
    n_lines = con.execute("SELECT count(*) FROM transactions").fetchone()[0]
    ids = [r[0] for r in con.execute("SELECT customer_id FROM customer_insights USING SAMPLE 20000 ROWS "
                                     "(reservoir, 7)").fetchall()]
    con.close()
    port = _free_port()
    exe = Path(sys.executable).parent / "loyalist"
    cmd = [str(exe), "serve", "--db", str(db), "--port", str(port), "--workers", str(args.workers)]
    if args.no_preload:
        cmd.append("--no-preload")
    t_start = time.perf_counter()
    server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pids: dict[int, dict] = {}
        while len(pids) < args.workers:  # every worker answers only once its preload is done
            if server.poll() is not None:
                raise SystemExit(f"the server stopped (exit {server.returncode})")
            h = _healthz(port)
            if h is None:
                time.sleep(0.5)
                continue
            pids[h["pid"]] = h
            time.sleep(0.05)
        ready_s = time.perf_counter() - t_start
        print(f"  {args.workers} worker(s) ready after {ready_s:.1f} s", flush=True)
        # warm-up, not measured: every (list, sort, order) with and without a search, a few times per worker
        # (sort orders are computed on first use and kept), then a sample of the plan's shapes
        rng = random.Random(1)
        sorts = {"customers": ["clv_12m", "revenue", "p_alive", "last_order"], "at-risk": ["revenue", "p_alive"],
                 "overdue": ["overdue_score", "overdue_days"], "growing": ["growth_rate", "revenue"],
                 "cross-sell": ["score"], "payment-risk": ["payment_risk"], "contact-due": ["contact_date"],
                 "alerts": ["event_date"]}
        warm = [f"/lists/{name}?sort={c}&order={o}{q}" for name, cs in sorts.items() for c in cs
                for o in ("asc", "desc") for q in ("", f"&q={rng.choice(ids)[:6]}")]
        warm = warm * (3 * args.workers) + [urls(ids, rng)[1] for _ in range(200)]
        rng.shuffle(warm)
        t0 = time.perf_counter()
        async def warm_up():
            await asyncio.gather(*(_warm(port, warm[i::4]) for i in range(4)))
        asyncio.run(warm_up())
        warm_s = time.perf_counter() - t0
        procs = _tree(server.pid)
        cpu_before = {p: _proc(p)["cpu_s"] for p in procs}
        load_before = os.getloadavg()
        result = asyncio.run(load(port, ids, args.requests, args.clients, SEED))
        load_after = os.getloadavg()
        per_proc = {p: _proc(p) for p in procs}
    finally:
        server.terminate()
        server.wait(timeout=30)
    server_cpu = sum(v["cpu_s"] - cpu_before[p] for p, v in per_proc.items())
    workers = [{"pid": p, "rss_mb": round(v["rss_bytes"] / 2**20), "peak_rss_mb": round(v["peak_rss_bytes"] / 2**20),
                "cpu_s_during_run": round(v["cpu_s"] - cpu_before[p], 1),
                "preload": (pids.get(p) or {}).get("memory")}
               for p, v in per_proc.items() if p in pids]
    report = {
        "benchmark": "bench/serve.py",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "store": {"customers": int(n_customers), "transaction_lines": int(n_lines),
                  "how": "synthetic BG/NBD transactions ingested; customer_insights from the real customer-base "
                         "scoring (analyze, model bgnbd, other steps not run); other capabilities' columns and "
                         "tables written directly with synthetic values of the contract's shape",
                  "build": build},
        "server": {"workers": args.workers, "preload": not args.no_preload, "ready_after_s": round(ready_s, 1),
                   "cpu_s_during_run": round(server_cpu, 1),
                   "cpu_share_of_machine": round(server_cpu / (result["wall_s"] * (os.cpu_count() or 1)), 3),
                   "per_worker": workers},
        "warmup": {"requests": len(warm), "seconds": round(warm_s, 1)},
        "request_mix": REQUEST_MIX,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        **result,
        "target": "p95 < 300 ms for list pages and the customer page, 20 concurrent clients, loopback",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: report[k] for k in ("store", "list", "customer", "throughput_rps", "errors",
                                             "load_average_before")}, indent=1))


if __name__ == "__main__":
    main()
