"""Customer-value grades on held-out time, Online Retail II: of the customers graded A at a cutoff, what share
of the next 365 days' revenue do they bring, vs the same number of customers chosen by past revenue alone?

Everything is fitted on the data before each cutoff (`loyalist.evaluation.value.value_backtest`); the
rankings compared in the same run are the value metric, its parts (CLV alone, CLV x P(alive),
CLV x growth) and two naive baselines (all past revenue; revenue in the last 12 months). Also prints the time
of the segmentation step on the whole data set. Writes bench/results/value.json and the `value_backtest`
table of the bench store.

    python bench/value.py [--cutoffs 2010-09-01 2010-12-01] [--models bgnbd paretonbd] [--keep-store PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ORII = REPO.parent / "shared" / "data" / "online_retail_ii"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cutoffs", nargs="+", default=["2010-09-01", "2010-12-01"])
    ap.add_argument("--models", nargs="+", default=["bgnbd", "paretonbd"])
    ap.add_argument("--a-share", type=float, default=0.2)
    ap.add_argument("--keep-store", type=Path, default=None, help="Keep the ingested store here.")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "value.json")
    args = ap.parse_args()
    files = sorted(ORII.glob("online_retail_II_20*.csv.gz"))
    if not files:
        sys.exit(f"{ORII} is absent: this benchmark needs the Online Retail II exports")


    from loyalist.customer_base import Settings, fit_base, score
    from loyalist.evaluation.value import value_backtest
    from loyalist.features import rfm_summary
    from loyalist.ingest import ingest
    from loyalist.insights import Context
    from loyalist.insights.segments import segments_step
    from loyalist.store import open_store, write_frame

    with tempfile.TemporaryDirectory(prefix="loyalist-value-") as tmp:
        path = args.keep_store or Path(tmp) / "orii.duckdb"
        path.unlink(missing_ok=True)
        store = open_store(path)
        t0 = time.perf_counter()
        ingest(store, files)
        ingest_s = time.perf_counter() - t0
        t = store.table("transactions")
        rows, runs = [], []
        for c in args.cutoffs:
            cutoff = dt.date.fromisoformat(c)
            for model in args.models:
                t0 = time.perf_counter()
                bt = value_backtest(t, cutoff, model, 365, Settings(), args.a_share)
                seconds = time.perf_counter() - t0
                write_frame(store, "value_backtest", bt, replace=False)
                runs.append({"cutoff": c, "model": model, "seconds": round(seconds, 2)})
                r = bt.set_index("ranking")
                print(f"cutoff {c}, {model}: {int(r.loc['value_score', 'customers']):,} customers, "
                      f"{int(r.loc['value_score', 'graded_a']):,} graded A ({seconds:.1f} s)")
                for name, row in r.iterrows():
                    print(f"  {name:<17} A customers bring {row['a_revenue_share']:6.1%} of next-year revenue "
                          f"({row['vs_past_revenue'] * 100:+5.1f} points vs past revenue); "
                          f"{row['a_captured_buyers']:.0%} of them bought again")
                rows += bt.drop(columns=["run_at"]).assign(
                    cutoff=str(cutoff), horizon_end=bt["horizon_end"].dt.date.astype(str)).to_dict("records")

        # the segmentation step on the whole data (as of the day after the last order)
        as_of = dt.date(2011, 12, 10)
        summ = rfm_summary(t, as_of).execute()
        fitted = fit_base(summ, "bgnbd")
        ctx = Context(store, as_of, Settings(), fitted, score(fitted, summ, Settings()), {}, [])
        t0 = time.perf_counter()
        seg = segments_step(ctx)
        seg_s = time.perf_counter() - t0
        micro = store.table("segments").execute()
        print(f"segments step on {len(seg):,} customers: {seg_s:.1f} s; {len(micro)} micro-segments: "
              + "; ".join(f"{s} ({n:,})" for s, n in zip(micro["segment"], micro["customers"])))
        print("  " + "; ".join(ctx.notes))
        store.close()

    doc = {"benchmark": "value", "dataset": "online_retail_ii", "horizon_days": 365, "a_share": args.a_share,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "ingest_seconds": round(ingest_s, 2),
           "backtest_runs": runs, "results": rows,
           "segments_step": {"customers": len(seg), "seconds": round(seg_s, 2),
                             "segments": micro[["segment", "customers"]].to_dict("records"), "notes": ctx.notes}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
