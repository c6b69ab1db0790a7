"""BTYD benchmark: loyalist vs lifetimes 0.11.3 and pymc-marketing (MAP) on the same synthetic data.

Data come from loyalist's seeded generator (src/loyalist/synthetic/btyd.py), so the true parameters
are known and parameter recovery is checked along the way:

* BG/NBD base of 1M customers with Gamma-Gamma spend (r=0.25, alpha=4/week, a=0.8, b=2.5; ages
  uniform on 26..104 weeks; p=6.25, q=3.74, v=15.44): about 2.8M transaction lines.
* Pareto/NBD base of 100k customers (r=0.55, alpha=10.6/week, s=0.61, beta=11.7/week).

Two versions of each customer base are fitted, with identical arrays handed to every library:

* ``daily``: the summary (frequency, recency, T in days, monetary value) that loyalist's
  ``rfm_summary`` computes from the transaction lines, as in production: dates are whole days
  and purchases on the same day are merged (so the true parameters hold only approximately:
  alpha and beta become 7x the weekly values, and about 2% of customers lose a same-day purchase).
* ``continuous``: the generator's exact sufficient statistics (weeks, real-valued): the data the
  model assumes exactly, and the hardest case for loyalist's compression of repeated patterns.

Steps timed (time.perf_counter around the library call only, inputs already in memory; best of
up to 3 runs, slow peer steps once):

1. summary statistics from transactions, 1M customers / 2.8M lines: loyalist
   ``rfm_summary(table, as_of).execute()`` (Ibis expression built, compiled to SQL, run by an
   in-memory DuckDB on the already-loaded table, 1M-row result fetched into pandas; loading the
   table is not timed) vs ``lifetimes.utils.summary_data_from_transaction_data`` on the same
   lines as a pandas DataFrame;
2. BG/NBD fit at 1M customers; 3. Pareto/NBD fit at 100k; 4. Gamma-Gamma fit on the repeat
   customers of the 1M base; 5. scoring every customer: P(alive) + expected purchases in the
   next 90 days (13 weeks for the continuous data), each library with its own fitted model.

Log-likelihoods are compared apples to apples: each peer's fitted parameters are evaluated with
loyalist's per-customer log-likelihood (same formula), next to the peers' own reported values.
Peers run in isolated venvs (bench/setup_peers.sh) as subprocesses (bench/_peer_btyd.py).

    python bench/btyd.py [--out bench/results/btyd.json] [--no-peers] [--quick]

Targets (issue): BG/NBD fit >= 10x lifetimes at 1M; Pareto/NBD fit >= 30x both peers at 100k;
summary >= 5x lifetimes; loyalist log-likelihood at least the peer's (1e-6 relative tolerance).
A loyalist step that misses its target is profiled (cProfile; DuckDB phases for the summary) and
the profile is written to the JSON.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
PEERS = BENCH / ".peers"

SEED = 20240607
AGE_WEEKS = (26.0, 104.0)
END = "2025-01-01"  # end of the observation window; the summary is taken as of this midnight
AS_OF = dt.datetime(2025, 1, 1)
TRUE_BG = {"r": 0.25, "alpha": 4.0, "a": 0.8, "b": 2.5}  # weekly
TRUE_PA = {"r": 0.55, "alpha": 10.6, "s": 0.61, "beta": 11.7}  # weekly
TRUE_GG = {"p": 6.25, "q": 3.74, "v": 15.44}
HORIZON = {"daily": 90.0, "continuous": 13.0}  # scoring window: 90 days / 13 weeks
LL_RTOL = 1e-6
TARGETS = {"summary": 5.0, "bgnbd": 10.0, "pareto": 30.0}
FLAGS = ("is_guest", "is_non_product", "is_cancellation", "is_return")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def best_of(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class CpuMonitor:
    """CPU seconds used by *other* processes between checkpoints (from /proc/stat minus our own
    process and its finished children), to tell whether a measurement shared the cores."""

    def __init__(self) -> None:
        self.tick = os.sysconf("SC_CLK_TCK")
        self.marks: list[dict] = []
        self.last = self._read()

    def _read(self):
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:]]
            busy = (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / self.tick
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        t = os.times()
        return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system

    def mark(self, phase: str) -> None:
        now = self._read()
        wall = now[0] - self.last[0]
        other = (now[1] - self.last[1]) - (now[2] - self.last[2])
        self.marks.append({"phase": phase, "wall_seconds": round(wall, 1),
                           "cpu_seconds_other_processes": round(max(other, 0.0), 1),
                           "other_processes_mean_cores_busy": round(max(other, 0.0) / wall, 2) if wall > 0 else None,
                           "load_average_after": loadavg()})
        self.last = now


def wait_quiet(threshold: float, max_wait: float) -> dict:
    """Wait (up to ``max_wait`` s) for the 1-minute load average to fall below ``threshold``."""
    t0 = time.time()
    while os.getloadavg()[0] >= threshold and time.time() - t0 < max_wait:
        log(f"waiting for a quiet machine: load average {loadavg()} (want 1-min < {threshold})")
        time.sleep(15)
    return {"threshold": threshold, "waited_seconds": round(time.time() - t0, 1),
            "quiet": os.getloadavg()[0] < threshold, "load_average_at_start": loadavg()}


def machine_info() -> dict:
    import duckdb
    import ibis
    import scipy

    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    import loyalist

    src = Path(loyalist.__file__).resolve().parent

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()
        except OSError:
            return None

    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "platform": platform.platform(),
        "python": platform.python_version(),
        "loyalist_source": str(src),
        "loyalist_source_is_working_tree": src == (REPO / "src" / "loyalist").resolve(),
        "git_commit": git("rev-parse", "HEAD"),
        # a source tree exported with `git archive` may carry the commit it came from in COMMIT
        "loyalist_source_commit": ((src.parent.parent / "COMMIT").read_text().strip()
                                   if (src.parent.parent / "COMMIT").exists() else None),
        "uncommitted_changes_in_src_loyalist_of_working_tree": git("status", "--porcelain", "--", "src/loyalist"),
        "versions": {"numpy": np.__version__, "pandas": pd.__version__, "scipy": scipy.__version__,
                     "duckdb": duckdb.__version__, "ibis": ibis.__version__},
    }


# ------------------------------------------------------------------------------------- data
def days(params: dict, rate_keys: tuple[str, ...]) -> dict:
    """Weekly true parameters in days: the Gamma rates (alpha, beta) scale by 7."""
    return {k: v * 7.0 if k in rate_keys else v for k, v in params.items()}


def transactions_frame(sim) -> pd.DataFrame:
    tx = sim.transactions
    tx["order_date"] = tx["order_date"].dt.floor("s")  # timestamps to the second, as in real data
    tx = tx[tx["order_date"] < pd.Timestamp(END)].reset_index(drop=True)
    for f in FLAGS:
        tx[f] = False
    return tx


def duckdb_table(tx: pd.DataFrame, name: str):
    import duckdb
    import ibis

    raw = duckdb.connect()
    raw.register("tx_view", tx)
    raw.execute(f"CREATE TABLE {name} AS SELECT * FROM tx_view")
    raw.unregister("tx_view")
    con = ibis.duckdb.from_connection(raw)
    return raw, con.table(name)


def build_data(n_large: int, n_small: int) -> dict:
    from loyalist.synthetic.btyd import simulate_bgnbd, simulate_paretonbd

    log(f"simulating {n_large} BG/NBD customers (with transactions) and {n_small} Pareto/NBD ...")
    bg = simulate_bgnbd(n_large, **TRUE_BG, T=AGE_WEEKS, seed=SEED, spend=TRUE_GG,
                        transactions=True, end_date=END, time_unit="W")
    pa = simulate_paretonbd(n_small, **TRUE_PA, T=AGE_WEEKS, seed=SEED + 1,
                            transactions=True, end_date=END, time_unit="W")
    return {"bg": bg, "pa": pa, "bg_tx": transactions_frame(bg), "pa_tx": transactions_frame(pa)}


def summary_arrays(df: pd.DataFrame) -> dict:
    df = df.sort_values("customer_id")
    out = {"customer_id": df["customer_id"].to_numpy(np.int64),
           "frequency": df["frequency"].to_numpy(float), "recency": df["recency"].to_numpy(float),
           "T": df["T"].to_numpy(float)}
    out["monetary_value"] = np.nan_to_num(df["monetary_value"].to_numpy(float, na_value=np.nan))
    return out


# ---------------------------------------------------------------------------------- loyalist
MODELS = {"bgnbd": ("BGNBD", ("r", "alpha", "a", "b")), "pareto": ("ParetoNBD", ("r", "alpha", "s", "beta")),
          "gg": ("GammaGamma", ("p", "q", "v"))}


def model_class(kind: str):
    import loyalist.models as lm

    return getattr(lm, MODELS[kind][0])


def fit_call(kind: str, d: dict):
    cls = model_class(kind)
    if kind == "gg":
        return lambda: cls().fit(d["frequency"], d["monetary_value"])
    return lambda: cls().fit(d["frequency"], d["recency"], d["T"])


def our_loglik(kind: str, params: dict, d: dict) -> float:
    m = model_class(kind).from_params(**params)
    if kind == "gg":
        return float(np.sum(m.log_likelihood(d["frequency"], d["monetary_value"])))
    return float(np.sum(m.log_likelihood(d["frequency"], d["recency"], d["T"])))


def score_call(model, d: dict, t: float):
    def run():
        # a fresh model per run: loyalist reuses per-customer terms between the calls of one scoring
        # pass (P(alive) inside the expectation), never across timed runs
        m = type(model).from_params(**model.params_)
        pa = m.conditional_probability_alive(d["frequency"], d["recency"], d["T"])
        ey = m.conditional_expected_number_of_purchases_up_to_time(t, d["frequency"], d["recency"], d["T"])
        return pa, ey

    return run


def profile(fn, top: int = 15) -> list[str]:
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    return [line for line in s.getvalue().splitlines() if line.strip()][:top + 8]


def summary_phases(table, repeats: int = 3) -> dict:
    """Where the summary's time goes: Ibis compilation, DuckDB execution, result to pandas."""
    import ibis

    from loyalist.features import rfm_summary

    raw = table._find_backend().con
    res = {}
    _, t = best_of(lambda: ibis.to_sql(rfm_summary(table, AS_OF), dialect="duckdb"), repeats)
    res["ibis_build_and_compile_sql"] = min(t)
    sql = ibis.to_sql(rfm_summary(table, AS_OF), dialect="duckdb")
    _, t = best_of(lambda: raw.execute(f"SELECT count(*) FROM ({sql})").fetchall(), repeats)
    res["duckdb_execute_count_only"] = min(t)
    arrow, t = best_of(lambda: raw.execute(sql).to_arrow_table(), repeats)
    res["duckdb_execute_fetch_arrow"] = min(t)
    _, t = best_of(lambda: rfm_summary(table, AS_OF).execute(), repeats)
    res["rfm_summary_execute_total"] = min(t)
    res["rest_ibis_to_pandas"] = res["rfm_summary_execute_total"] - res["duckdb_execute_fetch_arrow"] - res["ibis_build_and_compile_sql"]
    plan = raw.execute("EXPLAIN ANALYZE " + sql).fetchall()
    res["duckdb_explain_analyze"] = plan[0][1].splitlines() if plan else []
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}


# -------------------------------------------------------------------------------------- peers
def peer_python(peer: str) -> Path:
    return PEERS / peer / "bin" / "python"


def ensure_peers(peers: list[str], setup: bool) -> list[str]:
    missing = [p for p in peers if not (PEERS / p / ".installed").exists()]
    if missing and setup:
        log(f"peer venvs missing ({', '.join(missing)}): running bench/setup_peers.sh ...")
        subprocess.run(["bash", str(BENCH / "setup_peers.sh"), *missing], check=False)
        missing = [p for p in peers if not (PEERS / p / ".installed").exists()]
    if missing:
        log(f"peer venvs unavailable: {missing}; install them with `bash bench/setup_peers.sh`")
    return [p for p in peers if p not in missing]


def run_peer(peer: str, tasks: list[dict], work: Path, timeout: float) -> dict:
    spec = work / f"{peer}_spec.json"
    out = work / f"{peer}_out.json"
    spec.write_text(json.dumps({"peer": peer, "tasks": tasks}))
    log(f"running {peer} ({len(tasks)} tasks) ...")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([str(peer_python(peer)), str(BENCH / "_peer_btyd.py"), str(spec), str(out)],
                              timeout=timeout)
        err = f"exit status {proc.returncode}"
    except subprocess.TimeoutExpired:
        err = f"timed out after {timeout} s"
    log(f"{peer} done in {time.perf_counter() - t0:.0f} s")
    if out.exists():
        res = json.loads(out.read_text())
    else:
        res = {"peer": peer, "results": {}, "error": err[-3000:]}
    res["wall_seconds_total"] = round(time.perf_counter() - t0, 1)
    return res


# --------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(BENCH / "results" / "btyd.json"))
    ap.add_argument("--customers-large", type=int, default=1_000_000)
    ap.add_argument("--customers-small", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3, help="loyalist runs per step (best reported)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--peers", default="lifetimes,pymc")
    ap.add_argument("--no-setup", action="store_true", help="do not install missing peer venvs")
    ap.add_argument("--quiet-load", type=float, default=0.5, help="wait for 1-min load below this")
    ap.add_argument("--max-wait", type=float, default=300.0, help="seconds to wait for a quiet machine")
    ap.add_argument("--peer-timeout", type=float, default=1500.0)
    ap.add_argument("--quick", action="store_true", help="100k/20k customers, for a smoke test")
    ap.add_argument("--keep-work", action="store_true", help="keep the temporary input/prediction files")
    args = ap.parse_args()
    if args.quick:
        args.customers_large, args.customers_small = 100_000, 20_000

    warnings.simplefilter("ignore")
    peers = [] if args.no_peers else ensure_peers([p for p in args.peers.split(",") if p], not args.no_setup)
    started = time.perf_counter()
    quiet = wait_quiet(args.quiet_load, args.max_wait)
    mon = CpuMonitor()
    info = machine_info()
    data = build_data(args.customers_large, args.customers_small)
    bg, pa, bg_tx, pa_tx = data["bg"], data["pa"], data["bg_tx"], data["pa_tx"]
    mon.mark("simulate data")

    from loyalist.features import rfm_summary

    result: dict = {
        "benchmark": "bench/btyd.py", "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": info, "quiet_check": quiet,
        "timing_rule": "time.perf_counter around the library call only (inputs in memory); loyalist: best of "
                       f"{args.repeats}; peers: best of up to 3 runs, one run when a run takes long "
                       "(budget per step); seconds lists every run",
        "data": {}, "steps": {}, "requirements": [], "peers": {}, "profiles": {},
        "notes": [
            "ratios are peer time / loyalist time of the best runs; every run is listed under seconds",
            "loyalist fit times exclude standard errors, which loyalist computes lazily on first access "
            "(standard_errors_seconds); lifetimes' BG/NBD and Gamma-Gamma fits include an autograd Hessian. "
            "ratio_fit_peer_over_loyalist_incl_standard_errors charges loyalist for them too",
            "lifetimes' ParetoNBDFitter starts Nelder-Mead from np.random.normal(1, 0.05, 4); np.random is "
            "seeded (0) before each fit so the timed path is reproducible. Its run time depends strongly on "
            "that start (5.7 s vs 179 s seen for two unseeded starts on a 20k-customer daily base)",
            "pymc-marketing is fitted with HalfFlat priors so that its MAP is the maximum-likelihood "
            "estimate and the log-likelihoods are comparable; its Pareto/NBD MAP time depends strongly on "
            "the data (daily vs continuous)",
            "cpu_monitor: CPU used by other processes per phase (other sessions share this machine); "
            "peers are single-threaded, DuckDB uses both cores",
        ],
    }
    # --- summary statistics ------------------------------------------------------------------
    log("loyalist: rfm_summary on DuckDB ...")
    raw, table = duckdb_table(bg_tx, "transactions")
    summ, times = best_of(lambda: rfm_summary(table, AS_OF).execute(), args.repeats)
    s_bg = summary_arrays(summ)
    mon.mark("loyalist summary")
    _, raw_pa_table = duckdb_table(pa_tx, "transactions_pa")
    s_pa = summary_arrays(rfm_summary(raw_pa_table, AS_OF).execute())
    result["steps"]["summary"] = {
        "what": f"summary statistics from {len(bg_tx)} transaction lines of {bg.n_customers} customers",
        "loyalist_included": "building the Ibis expression, SQL compilation, DuckDB execution on the "
                             "in-memory table (2 threads), fetching the 1M-row result as pandas",
        "loyalist_excluded": "creating the in-memory DuckDB table from the DataFrame (one-off load)",
        "lifetimes_included": "summary_data_from_transaction_data(df, 'customer_id', 'order_date', "
                              "monetary_value_col='amount', observation_period_end=END, freq='D') on the "
                              "same lines as a pandas DataFrame",
        "loyalist": {"seconds": times, "best": min(times), "median": float(np.median(times))},
    }

    # --- datasets ----------------------------------------------------------------------------
    rep = s_bg["frequency"] > 0
    kbg = bg.frequency > 0
    datasets = {
        "bgnbd_daily": ("bgnbd", "daily", {k: s_bg[k] for k in ("frequency", "recency", "T")},
                        days(TRUE_BG, ("alpha",)), "days"),
        "bgnbd_continuous": ("bgnbd", "continuous", {"frequency": bg.frequency, "recency": bg.recency, "T": bg.T},
                             dict(TRUE_BG), "weeks"),
        "pareto_daily": ("pareto", "daily", {k: s_pa[k] for k in ("frequency", "recency", "T")},
                         days(TRUE_PA, ("alpha", "beta")), "days"),
        "pareto_continuous": ("pareto", "continuous", {"frequency": pa.frequency, "recency": pa.recency, "T": pa.T},
                              dict(TRUE_PA), "weeks"),
        "gg_daily": ("gg", "daily", {"frequency": s_bg["frequency"][rep], "monetary_value": s_bg["monetary_value"][rep]},
                     dict(TRUE_GG), "currency"),
        "gg_exact": ("gg", "exact", {"frequency": bg.frequency[kbg], "monetary_value": bg.monetary_value[kbg]},
                     dict(TRUE_GG), "currency"),
    }
    merged = int(np.sum(bg.frequency) - np.sum(s_bg["frequency"]))
    result["data"] = {
        "generator": "loyalist.synthetic.btyd (seeded)", "seed": SEED,
        "bgnbd_base": {"customers": bg.n_customers, "transaction_lines": len(bg_tx),
                       "true_weekly": TRUE_BG, "spend_true": TRUE_GG, "ages_weeks": AGE_WEEKS,
                       "mean_frequency": float(bg.frequency.mean()),
                       "repeat_customers": int(kbg.sum()),
                       "repeat_purchases_merged_same_day_in_daily_summary": merged},
        "pareto_base": {"customers": pa.n_customers, "transaction_lines": len(pa_tx), "true_weekly": TRUE_PA,
                        "ages_weeks": AGE_WEEKS, "mean_frequency": float(pa.frequency.mean())},
        "versions": {name: {"customers": int(v[2]["frequency"].size), "model": v[0], "time_unit": v[4],
                            "true_params": v[3]} for name, v in datasets.items()},
        "notes": "daily = summary computed by loyalist rfm_summary from the transaction lines (whole days, "
                 "same-day purchases merged; true alpha/beta are 7x the weekly values and hold only "
                 "approximately); continuous = the generator's exact sufficient statistics in weeks. "
                 "gg_daily: repeat customers of the daily summary; gg_exact: the generator's exact spend.",
    }

    work = Path(tempfile.mkdtemp(prefix="btyd_bench_"))
    np.savez(work / "tx.npz", customer_id=bg_tx["customer_id"].to_numpy(np.int64),
             order_date_ns=bg_tx["order_date"].to_numpy("datetime64[ns]").astype(np.int64),
             amount=bg_tx["amount"].to_numpy(float))
    for name, (_, _, d, _, _) in datasets.items():
        np.savez(work / f"{name}.npz", **d)

    # --- loyalist fits and scoring -------------------------------------------------------------
    ours: dict = {}
    for name, (kind, variant, d, true, unit) in datasets.items():
        log(f"loyalist: {name} fit ...")
        model, times = best_of(fit_call(kind, d), args.repeats)
        t0 = time.perf_counter()
        se = model.standard_errors_
        se_time = time.perf_counter() - t0
        params = dict(model.params_)
        entry = {"seconds": times, "best": min(times), "standard_errors_seconds": se_time,
                 "params": params, "standard_errors": se, "log_likelihood": model.log_likelihood_,
                 "log_likelihood_recomputed": our_loglik(kind, params, d), "converged": model.converged_,
                 "n_evaluations": getattr(model, "n_evaluations_", None),
                 "recovery": {k: {"true": true[k], "estimate": params[k],
                                  "relative_error": params[k] / true[k] - 1.0,
                                  "z": (params[k] - true[k]) / se[k] if se[k] and np.isfinite(se[k]) else None}
                              for k in params}}
        if kind != "gg":
            (pa_, ey), stimes = best_of(score_call(model, d, HORIZON[variant]), args.repeats)
            entry["score_seconds"] = stimes
            entry["score_best"] = min(stimes)
            entry["score_horizon"] = HORIZON[variant]
            entry["mean_p_alive"] = float(np.mean(pa_))
            entry["mean_expected"] = float(np.mean(ey))
        ours[name] = entry
        mon.mark(f"loyalist {name}")

    # --- peers ---------------------------------------------------------------------------------
    fit_tasks = []
    for name, (kind, variant, d, _, _) in datasets.items():
        task = {"task": "fit", "label": name, "model": kind, "input": str(work / f"{name}.npz"),
                "repeats": 3, "budget": 6.0}
        if kind != "gg":
            task.update(score_t=HORIZON[variant], score_repeats=3, pred_out=str(work / f"{name}_PEER_pred.npz"))
        fit_tasks.append(task)
    peer_res: dict = {}
    for peer in peers:
        tasks = []
        if peer == "lifetimes":
            tasks.append({"task": "summary", "label": "summary", "input": str(work / "tx.npz"),
                          "observation_period_end": END, "repeats": 3, "budget": 8.0,
                          "out": str(work / "lifetimes_summary.npz")})
        for t in fit_tasks:
            t = dict(t)
            if "pred_out" in t:
                t["pred_out"] = t["pred_out"].replace("PEER", peer)
            tasks.append(t)
        mon.mark(f"before {peer}")
        peer_res[peer] = run_peer(peer, tasks, work, args.peer_timeout)
        mon.mark(f"{peer} (all steps)")
        result["peers"][peer] = {"versions": peer_res[peer].get("versions"),
                                 "wall_seconds_total": peer_res[peer].get("wall_seconds_total"),
                                 "error": peer_res[peer].get("error")}
    result["peers"]["venvs"] = "bench/.peers/<peer> (bench/setup_peers.sh); lifetimes needs numpy<2/pandas<2, " \
                               "pymc-marketing numpy>=2, hence one venv each"
    if "pymc" in peers:
        result["peers"]["pymc_setup"] = ("clv BetaGeoModel / ParetoNBDModel / GammaGammaModel, fit(method='map') "
                                         "(pymc.find_MAP, L-BFGS-B), HalfFlat priors on every parameter so that MAP "
                                         "is the maximum-likelihood estimate; a warm-up fit on 2,000 customers first "
                                         "compiles and caches pytensor's C code; the timed fit includes building the "
                                         "model, compiling its functions (from the cache) and optimising")

    # --- summary comparison ----------------------------------------------------------------------
    lt = peer_res.get("lifetimes", {}).get("results", {})
    step = result["steps"]["summary"]
    if "summary" in lt and "seconds" in lt["summary"]:
        z = np.load(work / "lifetimes_summary.npz")
        same = {}
        for k in ("frequency", "recency", "T"):
            same[k] = bool(np.array_equal(z["customer_id"], s_bg["customer_id"]) and np.array_equal(z[k], s_bg[k]))
        mv = np.max(np.abs(z["monetary_value"] - s_bg["monetary_value"]) / np.maximum(np.abs(s_bg["monetary_value"]), 1e-12))
        step["lifetimes"] = {"seconds": lt["summary"]["seconds"], "best": min(lt["summary"]["seconds"]),
                             "median": float(np.median(lt["summary"]["seconds"]))}
        step["ratio_lifetimes_over_loyalist"] = step["lifetimes"]["best"] / step["loyalist"]["best"]
        step["ratio_of_medians"] = step["lifetimes"]["median"] / step["loyalist"]["median"]
        step["outputs_identical"] = {**same, "monetary_value_max_relative_difference": float(mv)}
    elif "summary" in lt:
        step["lifetimes"] = {"error": lt["summary"].get("error")}

    # --- fit comparison --------------------------------------------------------------------------
    for name, (kind, variant, d, true, unit) in datasets.items():
        o = ours[name]
        step = {"model": kind, "data": variant, "customers": int(d["frequency"].size), "time_unit": unit,
                "loyalist": o, "peers": {}}
        for peer in peers:
            r = peer_res.get(peer, {}).get("results", {}).get(name)
            if r is None or "seconds" not in r:
                step["peers"][peer] = {"error": (r or {}).get("error", "not run")}
                continue
            ll_peer = our_loglik(kind, r["params"], d)
            p = {"seconds": r["seconds"], "best": min(r["seconds"]), "params": r["params"],
                 "ratio_fit_peer_over_loyalist": min(r["seconds"]) / o["best"],
                 "ratio_fit_peer_over_loyalist_incl_standard_errors": min(r["seconds"]) / (o["best"] + o["standard_errors_seconds"]),
                 "log_likelihood_at_peer_params_by_loyalist_formula": ll_peer,
                 "log_likelihood_reported_by_peer": r.get("reported_log_likelihood"),
                 "reported_note": r.get("reported_log_likelihood_note"),
                 "loyalist_minus_peer_log_likelihood": o["log_likelihood"] - ll_peer,
                 "relative_ll_difference": (o["log_likelihood"] - ll_peer) / abs(ll_peer),
                 "ll_at_least_peer": o["log_likelihood"] >= ll_peer - LL_RTOL * abs(ll_peer)}
            for k in ("warmup_seconds", "priors", "time_scale"):
                if k in r:
                    p[k] = r[k]
            if "score_seconds" in r:
                p["score_seconds"] = r["score_seconds"]
                p["score_best"] = min(r["score_seconds"])
                p["ratio_score_peer_over_loyalist"] = p["score_best"] / o["score_best"]
                pred = np.load(work / f"{name}_{peer}_pred.npz")
                m = model_class(kind).from_params(**r["params"])
                pa_, ey = score_call(m, d, HORIZON[variant])()
                p["predictions_vs_loyalist_at_peer_params"] = {
                    "p_alive_max_abs_difference": float(np.max(np.abs(pred["p_alive"] - pa_))),
                    "expected_max_relative_difference": float(np.max(np.abs(pred["expected"] - ey) / np.maximum(np.abs(ey), 1e-12))),
                    "expected_non_finite_in_peer": int(np.sum(~np.isfinite(pred["expected"])))}
            step["peers"][peer] = p
        result["steps"][name] = step

    # --- requirements ----------------------------------------------------------------------------
    reqs = result["requirements"]

    def req(what, value, target, ok, step_name):
        reqs.append({"requirement": what, "value": value, "target": target, "pass": bool(ok), "step": step_name})

    s = result["steps"]["summary"]
    if "ratio_lifetimes_over_loyalist" in s:
        r = s["ratio_lifetimes_over_loyalist"]
        req("summary >= 5x lifetimes", round(r, 2), ">= 5", r >= TARGETS["summary"], "summary")
    for name in ("bgnbd_daily", "bgnbd_continuous"):
        p = result["steps"][name]["peers"].get("lifetimes", {})
        if "ratio_fit_peer_over_loyalist" in p:
            r = p["ratio_fit_peer_over_loyalist"]
            req(f"BG/NBD fit at {result['steps'][name]['customers']} >= 10x lifetimes ({name})", round(r, 2),
                ">= 10", r >= TARGETS["bgnbd"], name)
    for name in ("pareto_daily", "pareto_continuous"):
        for peer, p in result["steps"][name]["peers"].items():
            if "ratio_fit_peer_over_loyalist" in p:
                r = p["ratio_fit_peer_over_loyalist"]
                req(f"Pareto/NBD fit at {result['steps'][name]['customers']} >= 30x {peer} ({name})", round(r, 2),
                    ">= 30", r >= TARGETS["pareto"], name)
    for name in datasets:
        for peer, p in result["steps"][name]["peers"].items():
            if "ll_at_least_peer" in p:
                req(f"log-likelihood >= {peer}'s within 1e-6 relative ({name})",
                    p["relative_ll_difference"], ">= -1e-6", p["ll_at_least_peer"], name)

    # --- profiles of misses ------------------------------------------------------------------------
    for rq in reqs:
        if rq["pass"] or rq["step"] in result["profiles"] or "log-likelihood" in rq["requirement"]:
            continue
        name = rq["step"]
        log(f"profiling loyalist step {name} (missed its target) ...")
        if name == "summary":
            result["profiles"][name] = {"phases_seconds": summary_phases(table),
                                        "cprofile_tottime": profile(lambda: rfm_summary(table, AS_OF).execute())}
        else:
            kind, _, d, _, _ = datasets[name]
            result["profiles"][name] = {"cprofile_tottime": profile(fit_call(kind, d))}
    # informational: where the summary's time goes (its ratio is close to the target)
    if "summary" not in result["profiles"]:
        log("loyalist summary phases ...")
        result["profiles"]["summary (informational)"] = {"phases_seconds": summary_phases(table)}
    # informational: scoring steps where a peer is faster than loyalist
    for name, st in result["steps"].items():
        if name == "summary" or "score_best" not in st["loyalist"] or f"scoring {name}" in result["profiles"]:
            continue
        if any(v.get("ratio_score_peer_over_loyalist", 2.0) < 1.0 for v in st["peers"].values()):
            kind, variant, d, _, _ = datasets[name]
            m = model_class(kind).from_params(**st["loyalist"]["params"])
            log(f"profiling loyalist scoring {name} (a peer is faster) ...")
            result["profiles"][f"scoring {name}"] = {"cprofile_tottime": profile(score_call(m, d, HORIZON[variant]))}
    raw.close()
    if args.keep_work:
        log(f"input and prediction files kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    mon.mark("profiles")
    result["cpu_monitor"] = mon.marks
    result["quiet_check"]["load_average_at_end"] = loadavg()
    result["total_wall_seconds"] = round(time.perf_counter() - started, 1)

    table_txt = render(result, peers)
    print(table_txt)
    result["table"] = table_txt.splitlines()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float, ensure_ascii=False) + "\n")
    log(f"wrote {args.out}")


# ------------------------------------------------------------------------------------- output
def fmt(t):
    return "-" if t is None else (f"{t:.3f}" if t < 10 else f"{t:.1f}")


def render(res: dict, peers: list[str]) -> str:
    lines = []
    head = f"{'step':<44}{'loyalist s':>11}" + "".join(f"{p + ' s':>13}{'ratio':>8}" for p in peers) + "  requirement"
    lines += [head, "-" * len(head)]
    targets = {"summary": ("lifetimes", 5), "bgnbd_daily": ("lifetimes", 10), "bgnbd_continuous": ("lifetimes", 10),
               "pareto_daily": (None, 30), "pareto_continuous": (None, 30)}

    def row(label, ours, peer_times, step):
        cells = ""
        verdicts = []
        for p in peers:
            t = peer_times.get(p)
            ratio = t / ours if (t is not None and ours) else None
            cells += f"{fmt(t):>13}{(f'{ratio:.1f}x' if ratio else '-'):>8}"
            tg = targets.get(step) if step else None
            if tg and ratio and (tg[0] is None or tg[0] == p):
                verdicts.append(f">={tg[1]}x {p}: {'PASS' if ratio >= tg[1] else 'FAIL'}")
        lines.append(f"{label:<44}{fmt(ours):>11}{cells}  {'; '.join(verdicts)}")

    s = res["steps"]["summary"]
    row(f"summary ({res['data']['bgnbd_base']['transaction_lines'] / 1e6:.2f}M lines)", s["loyalist"]["best"],
        {"lifetimes": s.get("lifetimes", {}).get("best")}, "summary")
    names = {"bgnbd": "BG/NBD", "pareto": "Pareto/NBD", "gg": "Gamma-Gamma"}
    for name, st in res["steps"].items():
        if name == "summary":
            continue
        n = st["customers"]
        label = f"{names[st['model']]} fit {n // 1000}k {st['data']}"
        row(label, st["loyalist"]["best"], {p: v.get("best") for p, v in st["peers"].items()}, name)
    for name, st in res["steps"].items():
        if name == "summary" or "score_best" not in st["loyalist"]:
            continue
        label = f"scoring {names[st['model']]} {st['customers'] // 1000}k {st['data']}"
        row(label, st["loyalist"]["score_best"], {p: v.get("score_best") for p, v in st["peers"].items()}, None)
    lines.append("")
    lines.append("log-likelihood (loyalist formula at each library's estimate); relative = (LL_loyalist - LL_peer)/|LL_peer|")
    for name, st in res["steps"].items():
        if name == "summary":
            continue
        o = st["loyalist"]
        cells = "  ".join(f"{p}: {v['log_likelihood_at_peer_params_by_loyalist_formula']:.6f} "
                          f"(rel {v['relative_ll_difference']:+.1e} {'ok' if v['ll_at_least_peer'] else 'WORSE'})"
                          for p, v in st["peers"].items() if "relative_ll_difference" in v)
        lines.append(f"  {name:<18} loyalist {o['log_likelihood']:.6f}  {cells}")
    lines.append("")
    lines.append("parameter recovery (loyalist estimate vs generator truth; z = (est - true)/SE)")
    for name, st in res["steps"].items():
        if name == "summary":
            continue
        rec = st["loyalist"]["recovery"]
        cells = "  ".join(f"{k}={v['estimate']:.4g} (true {v['true']:.4g}, {100 * v['relative_error']:+.1f}%, "
                          f"z {v['z']:+.1f})" if v["z"] is not None else f"{k}={v['estimate']:.4g}"
                          for k, v in rec.items())
        lines.append(f"  {name:<18} {cells}")
    lines.append("")
    lines.append("requirements")
    for rq in res["requirements"]:
        v = rq["value"]
        lines.append(f"  {'PASS' if rq['pass'] else 'FAIL'}  {rq['requirement']}: {v if isinstance(v, str) else f'{v:.3g}'}")
    marks = res.get("cpu_monitor", [])
    if marks:
        lines.append("cores used by other processes during each phase (mean): " + ", ".join(
            f"{m['phase']} {m['other_processes_mean_cores_busy']}" for m in marks))
    q = res["quiet_check"]
    lines.append(f"load average at start {q['load_average_at_start']}, at end {q.get('load_average_at_end')}; "
                 f"total {res.get('total_wall_seconds')} s")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
