"""Cross-sell gaps benchmark: speed and memory on Online Retail II, and the held-out accuracy (issue 6).

1. Speed: the gaps of every Online Retail II customer (~5,900 x ~5,300 products), from the store to the
   finished table with its evidence (`loyalist.insights.crosssell.compute_gaps`), in a fresh process so its
   peak RSS is its own. Target: <= 15 s on 2 cores. CPU seconds and the machine's load average are printed
   too: on a shared machine wall time includes waiting for a core.
2. Accuracy on held-out time: at cutoffs 2010-09-01, 2011-03-01 and 2011-09-01, recall@10 and NDCG@10 of the
   products each customer buys for the first time in the next 90 days, for loyalist's look-alikes, global
   popularity and `implicit` ALS with default settings, in the same run. Required: recall@10 >= 1.5 x
   popularity's and >= ALS's. The settings were chosen at 2010-06-01 (reported as "validation"), whose 90-day
   window ends before the first reported cutoff.
3. Scale (optional, --scale N): a synthetic store-free run of the numeric core on N customers x N/10 products
   (Zipf-popular products, 40 distinct products per customer) to show time and memory grow with the
   purchases, not with customers x products.

    python bench/crosssell.py [--scale 1000000] [--out bench/results/crosssell.json]
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
REPORTED = ["2010-09-01", "2011-03-01", "2011-09-01"]
VALIDATION = ["2010-06-01"]

GAPS = """
import json, sys, time
t0 = time.perf_counter(); c0 = time.process_time()
from loyalist.analysis import data_end
from loyalist.insights import crosssell as cs
from loyalist.store import open_store
store = open_store(sys.argv[1], read_only=True)
as_of = data_end(store)
t1 = time.perf_counter()
opts = cs.settings({})
data = cs.prepare(store.table("transactions"), as_of, None, opts)
t2 = time.perf_counter()
model = cs.model_for(opts)
model.fit(data.strength, data.votes, attributes=data.attributes, popularity=data.popularity)
t3 = time.perf_counter()
g = model.recommend(int(opts["top"]), exclude=data.exclude, allowed=data.allowed)
t4 = time.perf_counter(); c4 = time.process_time()
frame = cs.compute_gaps(store, as_of, {})  # the whole step as analyze runs it (features again + model + text)
t5 = time.perf_counter(); c5 = time.process_time()
print(json.dumps({"as_of": str(as_of), "customers": len(data.customers), "products": len(data.products),
                  "purchased_pairs": int(data.strength.nnz), "gap_rows": len(frame),
                  "phases": {"open": round(t1 - t0, 3), "features": round(t2 - t1, 3), "neighbours": round(t3 - t2, 3),
                             "rank": round(t4 - t3, 3)},
                  "end_to_end_seconds": round(t5 - t4, 3), "end_to_end_cpu_seconds": round(c5 - c4, 3),
                  "cpu_seconds_all_phases": round(time.process_time() - c0, 3)}))
"""

SCALE = """
import json, sys, time
import numpy as np, scipy.sparse as sp
from loyalist.models.crosssell import LookAlikeRecommender
n = int(sys.argv[1]); m = max(n // 10, 100); per = 40
rng = np.random.default_rng(0)
# Zipf-like product popularity; each customer buys `per` products; customers fall in 200 taste groups
# that prefer a shifted slice of the catalogue (so look-alikes exist).
group = rng.integers(0, 200, n)
w = 1.0 / np.arange(1, m + 1) ** 0.8
w /= w.sum()
base = rng.choice(m, size=(n, per), p=w)
items = (base + group[:, None] * (m // 200)) % m
rows = np.repeat(np.arange(n), per)
x = sp.csr_matrix((rng.random(n * per) + 0.5, (rows, items.ravel())), shape=(n, m))
x.sum_duplicates()
t0 = time.perf_counter()
model = LookAlikeRecommender(n_neighbors=100, num_threads=2, chunk_size=4096).fit(x, popularity=np.asarray((x > 0).sum(axis=0)).ravel())
t1 = time.perf_counter()
g = model.recommend(10)
t2 = time.perf_counter()
print(json.dumps({"customers": n, "products": m, "purchased_pairs": int(x.nnz), "neighbours_seconds": round(t1 - t0, 2),
                  "rank_seconds": round(t2 - t1, 2), "filled": float((g.items >= 0).mean())}))
"""


def measure(code: str, args: list[str]) -> dict:
    """Wall time, CPU time and peak RSS of a fresh Python process running `code` (its stdout is JSON)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out = proc.stdout.read().strip()
    if status != 0:
        raise SystemExit(f"benchmark step failed ({args})")
    return {"process_seconds": round(wall, 3), "process_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), **json.loads(out.splitlines()[-1])}


def build_store(folder: Path) -> Path:
    from loyalist.ingest import ingest
    from loyalist.store import open_store

    db = folder / "orii.duckdb"
    store = open_store(db)
    ingest(store, sorted(ORII.glob("*.csv.gz")))
    store.close()
    return db


def accuracy(db: Path) -> tuple[list[dict], dict]:
    import datetime as dt

    from loyalist.evaluation.crosssell import evaluate
    from loyalist.store import open_store

    store = open_store(db, read_only=True)
    t = store.table("transactions")
    rows = []
    for role, cutoffs in (("validation", VALIDATION), ("reported", REPORTED)):
        m = evaluate(t, [dt.date.fromisoformat(c) for c in cutoffs])
        for r in m.to_dict("records"):
            rows.append({"role": role, **r, "cutoff": str(r["cutoff"].date())})
    store.close()
    summary = {}
    for cutoff in REPORTED:
        by = {r["method"]: r for r in rows if r["cutoff"] == cutoff}
        la, pop, als = (by[k] for k in ("lookalikes", "popularity", "als_default"))
        summary[cutoff] = {"recall_vs_popularity": round(la["recall_at_k"] / pop["recall_at_k"], 3),
                           "recall_vs_als": round(la["recall_at_k"] / als["recall_at_k"], 3),
                           "ndcg_vs_popularity": round(la["ndcg_at_k"] / pop["ndcg_at_k"], 3),
                           "ndcg_vs_als": round(la["ndcg_at_k"] / als["ndcg_at_k"], 3)}
    mean = {m: sum(r["recall_at_k"] for r in rows if r["role"] == "reported" and r["method"] == m) / len(REPORTED)
            for m in ("lookalikes", "popularity", "als_default")}
    summary["mean_recall_at_10"] = {k: round(v, 5) for k, v in mean.items()}
    summary["mean_recall_vs_popularity"] = round(mean["lookalikes"] / mean["popularity"], 3)
    summary["mean_recall_vs_als"] = round(mean["lookalikes"] / mean["als_default"], 3)
    summary["meets_1_5x_popularity_every_cutoff"] = all(summary[c]["recall_vs_popularity"] >= 1.5 for c in REPORTED)
    summary["at_least_als_every_cutoff"] = all(summary[c]["recall_vs_als"] >= 1.0 for c in REPORTED)
    summary["at_least_als_on_mean"] = summary["mean_recall_vs_als"] >= 1.0
    return rows, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=0, help="also run the numeric core on N synthetic customers")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "crosssell.json")
    ap.add_argument("--skip-accuracy", action="store_true",
                    help="measure the speed only; keep the accuracy of the existing results file")
    args = ap.parse_args()
    if not ORII.exists():
        raise SystemExit(f"{ORII} is absent: the benchmark needs Online Retail II")
    result: dict = {"benchmark": "crosssell", "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        db = build_store(Path(tmp))
        speed = measure(GAPS, [str(db)])
        speed["target_seconds"] = 15.0
        speed["meets_target"] = speed["end_to_end_seconds"] <= 15.0
        result["speed"] = speed
        print(f"gaps for {speed['customers']:,} customers x {speed['products']:,} products "
              f"({speed['purchased_pairs']:,} purchased pairs): {speed['end_to_end_seconds']:.2f} s end to end "
              f"({speed['end_to_end_cpu_seconds']:.2f} CPU s over all threads) "
              f"(phases {speed['phases']}), peak RSS {speed['peak_rss_mb']:.0f} MB; target <= 15 s; "
              f"load average at start {result['load_average_at_start']}; on an idle machine the wall time is at "
              f"most the CPU seconds unless it waits on the disk", flush=True)
        if args.skip_accuracy and args.out.exists():
            result["accuracy"] = json.loads(args.out.read_text()).get("accuracy")
        else:
            t0 = time.perf_counter()
            rows, summary = accuracy(db)
            result["accuracy"] = {"horizon_days": 90, "k": 10, "rows": rows, "summary": summary,
                                  "seconds": round(time.perf_counter() - t0, 1)}
            for r in rows:
                print(f"  {r['role']:10} {r['cutoff']} {r['method']:12} customers {r['customers']:5,} "
                      f"recall@10 {r['recall_at_k']:.4f} NDCG@10 {r['ndcg_at_k']:.4f} ({r['seconds']:.1f} s)")
            print("  " + json.dumps(summary), flush=True)
    if args.scale:
        result["scale"] = measure(SCALE, [str(args.scale)])
        print(f"scale: {json.dumps(result['scale'])}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
