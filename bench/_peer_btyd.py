"""Peer side of bench/btyd.py: runs lifetimes or pymc-marketing on the benchmark's input files.

Executed only by the python of a peer venv (bench/.peers/<peer>/bin/python), never imported by
loyalist.  Usage: ``python _peer_btyd.py SPEC.json OUT.json``.  SPEC lists tasks; each reads its
input from an ``.npz`` file written by bench/btyd.py (so every library sees the same numbers) and
the results (wall times, fitted parameters, reported log-likelihoods, predictions) are written to
OUT.json and the ``.npz`` files the spec names.  Only the library call is inside the timer: input
arrays/DataFrames are built beforehand.

Timing rule: up to ``repeats`` runs of a step, but no new run once ``budget`` seconds have been
spent on it (slow peer steps run once); the best time is reported with all of them.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings

import numpy as np
import pandas as pd

PEER = None  # "lifetimes" | "pymc", from the spec


def timed(fn, repeats: int, budget: float):
    times, out = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if sum(times) > budget:
            break
    return out, times


def version(name: str) -> str:
    from importlib.metadata import version as v

    try:
        return v(name)
    except Exception:  # pragma: no cover
        return "?"


# ----------------------------------------------------------------------------- lifetimes
def lt_summary(task):
    from lifetimes.utils import summary_data_from_transaction_data

    z = np.load(task["input"])
    df = pd.DataFrame({
        "customer_id": z["customer_id"],
        "order_date": pd.to_datetime(z["order_date_ns"], unit="ns"),
        "amount": z["amount"],
    })
    end = pd.Timestamp(task["observation_period_end"])

    def run():
        return summary_data_from_transaction_data(
            df, "customer_id", "order_date", monetary_value_col="amount",
            observation_period_end=end, freq="D")

    out, times = timed(run, task["repeats"], task["budget"])
    out = out.sort_index()
    np.savez(task["out"], customer_id=out.index.to_numpy(np.int64),
             frequency=out["frequency"].to_numpy(float), recency=out["recency"].to_numpy(float),
             T=out["T"].to_numpy(float), monetary_value=out["monetary_value"].to_numpy(float))
    return {"seconds": times, "rows_in": int(len(df)), "customers_out": int(len(out))}


def lt_fit(task):
    from lifetimes import BetaGeoFitter, GammaGammaFitter, ParetoNBDFitter

    z = np.load(task["input"])
    model = task["model"]
    if model == "gg":
        x, m = z["frequency"], z["monetary_value"]

        def run():
            return GammaGammaFitter(penalizer_coef=0.0).fit(x, m)
    else:
        x, tx, T = z["frequency"], z["recency"], z["T"]
        cls = BetaGeoFitter if model == "bgnbd" else ParetoNBDFitter

        def run():
            # ParetoNBDFitter starts Nelder-Mead from np.random.normal(1, 0.05, 4): seeded, so
            # every run (and every benchmark) times the same optimisation path
            np.random.seed(task.get("seed", 0))
            return cls(penalizer_coef=0.0).fit(x, tx, T)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted, times = timed(run, task["repeats"], task["budget"])
    params = {k: float(v) for k, v in fitted.params_.items()}
    n = float(x.size)
    nll = float(fitted._negative_log_likelihood_)
    res = {"seconds": times, "params": params, "n": int(n)}
    if model == "gg":
        res["reported_log_likelihood"] = -nll * n
        res["reported_log_likelihood_note"] = "-_negative_log_likelihood_ * n"
    else:
        # lifetimes fits on times rescaled by c = _scale (max age -> 10); that multiplies each
        # customer's likelihood by c^-x, undone here to compare in the input's time unit
        # (BetaGeoFitter's objective is the mean over customers, ParetoNBDFitter's the sum)
        total = -nll * n if model == "bgnbd" else -nll
        c = float(fitted._scale)
        res["reported_log_likelihood_scaled_time"] = total
        res["reported_log_likelihood"] = total + np.log(c) * float(np.sum(x))
        res["reported_log_likelihood_note"] = (
            f"{'-_negative_log_likelihood_ * n' if model == 'bgnbd' else '-_negative_log_likelihood_ (a sum)'}"
            " on lifetimes' rescaled time (c = _scale), + log(c) * sum(frequency) to express it in "
            "the input's time unit")
        res["time_scale"] = c
    if task.get("score_t") is not None and model != "gg":
        t = float(task["score_t"])

        def score():
            pa = fitted.conditional_probability_alive(x, tx, T)
            ey = fitted.conditional_expected_number_of_purchases_up_to_time(t, x, tx, T)
            return np.asarray(pa, float), np.asarray(ey, float)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (pa, ey), stimes = timed(score, task["score_repeats"], task["budget"])
        res["score_seconds"] = stimes
        np.savez(task["pred_out"], p_alive=pa, expected=ey)
    return res


# ----------------------------------------------------------------------------- pymc-marketing
def _pm_frame(z, model):
    n = z["frequency"].size
    if model == "gg":
        return pd.DataFrame({"customer_id": np.arange(n), "frequency": z["frequency"],
                             "monetary_value": z["monetary_value"]})
    return pd.DataFrame({"customer_id": np.arange(n), "frequency": z["frequency"],
                         "recency": z["recency"], "T": z["T"]})


def _pm_model(model, df):
    from pymc_extras.prior import Prior
    from pymc_marketing import clv

    flat = Prior("HalfFlat")
    if model == "bgnbd":
        # a and b given directly (flat), not through the default phi/kappa pooling priors
        return clv.BetaGeoModel(data=df, model_config={"r": flat, "alpha": flat, "a": flat, "b": flat})
    if model == "pareto":
        return clv.ParetoNBDModel(data=df, model_config={"r": flat, "alpha": flat, "s": flat, "beta": flat})
    return clv.GammaGammaModel(data=df, model_config={"p": flat, "q": flat, "v": flat})


PARAMS = {"bgnbd": ("r", "alpha", "a", "b"), "pareto": ("r", "alpha", "s", "beta"), "gg": ("p", "q", "v")}


def _pm_loglik(m, params):
    """pymc-marketing's own log-likelihood of the data at ``params`` (observed terms only)."""
    pm_model = m.model
    ip = pm_model.initial_point()
    for rv in pm_model.free_RVs:
        value_var = pm_model.rvs_to_values[rv]
        tr = pm_model.rvs_to_transforms.get(rv)
        val = np.asarray(params[rv.name], dtype=float)
        ip[value_var.name] = tr.forward(val).eval() if tr is not None else val
    # every prior is HalfFlat (log-density 0), so the model's logp is the data's log-likelihood;
    # taken over the whole model because Gamma-Gamma enters it as a Potential, not an observed RV
    fn = pm_model.compile_logp(jacobian=False, sum=True)
    return float(fn(ip))


def pm_fit(task):
    z = np.load(task["input"])
    model = task["model"]
    df = _pm_frame(z, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # warm-up on a small slice: pytensor compiles (and caches) its C modules here, so the
        # timed fit pays graph building + compilation from the cache + optimisation, not gcc
        t0 = time.perf_counter()
        _pm_model(model, df.iloc[:2000].copy()).fit(method="map", progressbar=False)
        warm = time.perf_counter() - t0

        holder = {}

        def run():
            m = _pm_model(model, df)
            m.fit(method="map", progressbar=False)
            holder["m"] = m
            return m

        fitted, times = timed(run, task["repeats"], task["budget"])
    post = fitted.idata.posterior
    params = {k: float(post[k].values.ravel()[0]) for k in PARAMS[model]}
    res = {"seconds": times, "params": params, "n": int(len(df)), "warmup_seconds": warm,
           "priors": "HalfFlat on every parameter (MAP = maximum likelihood)"}
    try:
        res["reported_log_likelihood"] = _pm_loglik(fitted, params)
        res["reported_log_likelihood_note"] = "model.compile_logp(jacobian=False) at the MAP (flat priors: log-likelihood)"
    except Exception as exc:  # pragma: no cover
        res["reported_log_likelihood"] = None
        res["reported_log_likelihood_note"] = f"unavailable: {exc!r}"
    if task.get("score_t") is not None and model != "gg":
        t = float(task["score_t"])

        def score():
            pa = fitted.expected_probability_alive()
            ey = fitted.expected_purchases(future_t=t)
            return np.asarray(pa.values, float).ravel(), np.asarray(ey.values, float).ravel()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (pa, ey), stimes = timed(score, task["score_repeats"], task["budget"])
        res["score_seconds"] = stimes
        np.savez(task["pred_out"], p_alive=pa, expected=ey)
    return res


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    peer = spec["peer"]
    if peer == "lifetimes":
        versions = {k: version(k) for k in ("lifetimes", "numpy", "pandas", "scipy", "autograd")}
        handlers = {"summary": lt_summary, "fit": lt_fit}
    else:
        versions = {k: version(k) for k in ("pymc-marketing", "pymc", "pytensor", "numpy", "pandas", "scipy")}
        handlers = {"fit": pm_fit}
    out = {"peer": peer, "versions": versions, "results": {}}
    for task in spec["tasks"]:
        label = task["label"]
        print(f"[{peer}] {label} ...", file=sys.stderr, flush=True)
        try:
            out["results"][label] = handlers[task["task"]](task)
        except Exception as exc:
            out["results"][label] = {"error": repr(exc), "traceback": traceback.format_exc()}
        json.dump(out, open(sys.argv[2], "w"), indent=1)  # after each task: partial results survive
        r = out["results"][label]
        print(f"[{peer}] {label}: {r.get('seconds', r.get('error'))}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
