"""Held-out evaluation of the timing models (issue 5): fit on everything before a cutoff, score what happens
after it, against baselines, in one metrics table (stored as `timing_backtest`).

Columns of the table: cutoff, horizon_days, task, method, mix, median_weight, min_p_alive, customers,
positives, auc, brier, mae_days, coverage_80, coverage_n, precision_at_5, recall_at_5, flagged, order_rate,
base_rate, lift, value_recovered, and on the BG/NBD and Pareto/NBD rows auc_margin_lo/hi, mae_margin_lo/hi
(95% paired-bootstrap interval of loyalist's margin over that model, `_margin_ci`). Empty where a metric
does not apply to the task or method.

Tasks and methods:

- task "orders" (per customer who bought before the cutoff, horizon h): did the customer order in
  [cutoff, cutoff + h)? `auc` and `brier` of P(order within h); `mae_days`: days from the cutoff to the next
  order, among those who ordered within h, against each method's point prediction (for the probabilistic
  methods the median of the next-order time given it falls within h).
  `coverage_80` -- what the 80% interval promises and how it is checked. next_order_p10 / p90 are the
  bounds of a predictive interval for the day of the next order under a *defective* law (the customer may
  never order again); an upper bound exists only when P(ordering again) >= 90% (otherwise the interval is
  open: "may not order again"), and an open interval is not an 80% statement that the data after the cutoff
  can check (never ordering lies beyond any test window). The test window censors the rest: an interval
  that ends after the end of the data cannot be judged for a customer who has not ordered by then. So
  `coverage_80` is computed over the `coverage_n` customers whose interval is closed and ends within the
  follow-up (end of data - cutoff) -- a choice made from the prediction alone, never from the outcome, so
  the share is not biased toward those who came back -- as the share whose first order after the cutoff
  falls in [p10, p90] (whole days; no order in the follow-up = not covered). The previous definition also
  counted open intervals of customers who did not return as covered, which rewards wide intervals. The
  interval's levels are calibrated on the inner split (split conformal; `loyalist.insights.timing.fit_stack`).
  Methods: `loyalist` (P(order within h) stacked by logistic regression on the gamma renewal model with
  dropout, loyalist.models.next_order, BG/NBD and the customer's rhythm, fitted on origins before the cutoff;
  the point prediction a weighted mean of the renewal and Pareto/NBD medians, weight `median_weight` chosen
  before the cutoff; see `fit_stack`), `renewal_only` (the renewal model alone, shown for comparison),
  `bgnbd` and `paretonbd` alone (P(order within h); the median of their Lomax next-purchase time given
  alive), `mean_interval` (next order = last + the customer's mean gap; population mean for one-order
  customers) and `last_gap` (last + the last gap). A rule's score for the AUC is -|due - h/2| (due in the
  middle of the window ranks first); rules give no probability, so no Brier score.
- task "overdue" (h = 90): customers loyalist flags overdue at the cutoff (at least two orders,
  P(a gap this long | active) < 10% and P(still active) >= `min_p_alive`, 0.5 as in the step; the row
  `p_alive>=0` is the list without the P(alive) condition, for comparison): `order_rate` = share of them who
  order within h, `base_rate` = the same share among all customers active in the year before the cutoff,
  `lift` = order_rate / base_rate, `value_recovered` = what the flagged customers spent within h.
- task "next_products" (h = product horizon, 30 days): items re-ordered = products a customer had bought
  before the cutoff and bought again within h. Over customers with at least one such item:
  `precision_at_5` and `recall_at_5` of each method's top 5. Methods: `loyalist` (the pair renewal model and
  recency-weighted counts stacked by logistic regression fitted before the cutoff), `most_frequent` (the
  customer's most often bought items), `mean_interval` and `last_interval` (product due at last + mean / last
  gap of the pair, the product's pooled mean gap when bought once).
"""

from __future__ import annotations

import datetime as dt

import ibis.expr.types as ir
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from loyalist.customer_base import fit_base
from loyalist.features.timing import (
    next_occasion,
    products_bought,
)
from loyalist.insights.timing import (
    base_summary,
    coverage_80,
    fit_customer_model,
    fit_pair_model,
    fit_stack,
    gaps_frame,
    pairs_frame,
    point_days,
    score_customers,
    score_pairs,
    select_mix,
    stacked_pair_probability,
    top_k,
)

BASELINES = ("bgnbd", "paretonbd", "mean_interval", "last_gap")
PRODUCT_BASELINES = ("most_frequent", "mean_interval", "last_interval")
OVERDUE_THRESHOLD = 0.10
OVERDUE_MIN_ALIVE = 0.5
"""Flagged overdue: P(a gap this long | active) < OVERDUE_THRESHOLD and P(still active) >= OVERDUE_MIN_ALIVE
(the step's defaults, [timing] overdue_threshold / overdue_min_p_alive)."""
OVERDUE_ALIVE_SHOWN = (0.0, 0.5)
"""The overdue list is also scored without the P(alive) condition (0), for comparison."""
NOT_BASELINES = ("renewal_only", "p_alive>=0")
"""Rows shown for comparison that are part of loyalist's own model, not baselines."""


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else np.nan


def _lomax_median_within(model, h: int, f, r, T) -> np.ndarray:
    """BG/NBD and Pareto/NBD: given alive, the next purchase time is Lomax (rate ~ Gamma(r + x, alpha + T));
    the median of it truncated to [0, h]."""
    p = model.params_
    shape, scale = p["r"] + f, p["alpha"] + T
    F = 1 - (scale / (scale + h)) ** shape
    u = 1 - 0.5 * F
    return scale * (u ** (-1 / shape) - 1)


def _rule_scores(gap: np.ndarray, elapsed: np.ndarray, h: int) -> tuple[np.ndarray, np.ndarray]:
    due = gap - elapsed  # days from the cutoff until the rule's next order
    return -np.abs(due - h / 2), np.clip(due, 0, h - 1)


BOOTSTRAP = 200


def _margin_ci(y: np.ndarray, p_ours: np.ndarray, p_base: np.ndarray, err_ours: np.ndarray, err_base: np.ndarray,
               reps: int = BOOTSTRAP, seed: int = 0) -> dict:
    """95% percentile intervals of loyalist's margin over a baseline (AUC: ours - base; MAE: base - ours, over
    those who ordered), by a paired bootstrap over customers (Efron & Tibshirani 1993, "An introduction to the
    bootstrap", ch. 13): how much of the margin another sample of customers could undo."""
    rng = np.random.default_rng(seed)
    auc, mae = [], []
    idx_pos = np.flatnonzero(y)
    for _ in range(reps):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            auc.append(roc_auc_score(y[i], p_ours[i]) - roc_auc_score(y[i], p_base[i]))
        j = rng.choice(idx_pos, len(idx_pos)) if len(idx_pos) else idx_pos
        if len(j):
            mae.append(float(np.mean(err_base[j]) - np.mean(err_ours[j])))
    lo_hi = (lambda v: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v else (np.nan, np.nan))
    (a_lo, a_hi), (m_lo, m_hi) = lo_hi(auc), lo_hi(mae)
    return {"auc_margin_lo": a_lo, "auc_margin_hi": a_hi, "mae_margin_lo": m_lo, "mae_margin_hi": m_hi}


def evaluate(transactions: ir.Table, cutoff: dt.date, horizons: tuple[int, ...] = (30, 90),
             end: dt.date | None = None, base_name: str = "bgnbd", mix: float | None = None,
             product_horizon: int = 30, k: int = 5, baselines: tuple[str, ...] = BASELINES,
             products: bool = True, spark=None) -> pd.DataFrame:
    """The metrics table at one cutoff (see the module docstring). `end`: the end of the data (exclusive);
    default the day after the last order. `base_name`: the customer-base model loyalist mixes with; `mix`:
    None chooses it by rolling origin on the 90 days before the cutoff (`select_mix`), as `analyze` does.
    `spark`: the Spark engine's source (`loyalist.engine.spark.SparkSource`): the per-customer rows are collected
    (AUC, the bootstrap and the stack need them at the driver) but the pairs stay on Spark."""
    if end is None:
        last = transactions.order_date.max().execute()
        end = pd.Timestamp(last).date() + dt.timedelta(days=1)
    if cutoff >= end:
        raise ValueError(f"cutoff {cutoff} is not before the end of the data ({end})")
    cg = gaps_frame(transactions, cutoff)
    if len(cg) < 50 or (cg["n_gaps"] > 0).sum() < 20:
        raise ValueError(f"only {len(cg)} customers bought before {cutoff}; choose a later cutoff")
    nx = cg[["customer_id"]].merge(next_occasion(transactions, cutoff, end).execute(), on="customer_id", how="left")
    t_next = (pd.to_datetime(nx["next_day"]) - pd.Timestamp(cutoff)).dt.days.to_numpy(float)
    follow = float((end - cutoff).days)
    summ = base_summary(cg)
    f, r, T = (summ[c].to_numpy(float) for c in ("frequency", "recency", "T"))
    n, S, el = cg["n_gaps"].to_numpy(float), cg["gap_sum"].to_numpy(float), cg["elapsed"].to_numpy(float)
    base = {name: fit_base(summ, name).transaction for name in ("bgnbd", "paretonbd") if name in baselines}
    mixed_with = base.get(base_name) or fit_base(summ, base_name).transaction
    pareto = base.get("paretonbd")
    stack = None
    if mix is None:
        stack = fit_stack(transactions, cutoff, base_name, with_products=products, product_horizon=product_horizon,
                          horizons=tuple(sorted({*horizons, 90})), spark=spark)
        if stack is None:
            mix, _ = select_mix(transactions, cutoff, base_name)
    cm = fit_customer_model(cg)
    hs = tuple(sorted({*horizons, 90}))
    sc = score_customers(cm, cg, mixed_with, 1.0 if mix is None else mix, hs, stack=stack)
    renewal = score_customers(cm, cg, None, 1.0, hs)
    pop_gap = S[n > 0].sum() / n[n > 0].sum()
    gaps = {"mean_interval": np.where(n > 0, S / np.maximum(n, 1), pop_gap),
            "last_gap": np.where(n > 0, cg["last_gap"].fillna(pop_gap).to_numpy(float), pop_gap)}
    rows = []
    row0 = {"cutoff": pd.Timestamp(cutoff)}
    for h in horizons:
        y = np.nan_to_num(t_next, nan=np.inf) < h
        ordered = y.copy()
        common = {**row0, "horizon_days": h, "task": "orders", "customers": len(cg), "positives": int(y.sum())}
        e_half = np.maximum(el - 0.5, 0.0)
        p = sc[f"prob_order_{h}d"].to_numpy(float)
        weight = stack.median_weight.get(h, 1.0) if stack is not None else 1.0
        if pareto is None and weight < 1:
            pareto = fit_base(summ, "paretonbd").transaction
        pred = point_days(cm, pareto, cg, h, weight)
        ours_p, ours_err = p, np.abs(pred - t_next)
        cov, cov_n = coverage_80(sc["days_p10"].to_numpy(float), sc["days_p90"].to_numpy(float), t_next, follow)
        rows.append({**common, "method": "loyalist", "mix": mix, "median_weight": weight, "auc": _auc(y, p),
                     "brier": float(np.mean((p - y) ** 2)), "mae_days": float(np.mean(np.abs(pred - t_next)[ordered])),
                     "coverage_80": cov, "coverage_n": cov_n})
        # The renewal model alone (mix 1), for comparison: part of loyalist, not a baseline.
        pr = renewal[f"prob_order_{h}d"].to_numpy(float)
        cov, cov_n = coverage_80(renewal["days_p10"].to_numpy(float), renewal["days_p90"].to_numpy(float), t_next,
                               follow)
        rows.append({**common, "method": "renewal_only", "mix": 1.0, "auc": _auc(y, pr),
                     "brier": float(np.mean((pr - y) ** 2)),
                     "mae_days": float(np.mean(np.abs(np.maximum(cm.median_given_within(h, n, S, e_half) - 0.5, 0.0)
                                                      - t_next)[ordered])),
                     "coverage_80": cov, "coverage_n": cov_n})
        for name, m in base.items():
            pb = m.probability_of_purchase_within(h, f, r, T)
            pred = np.maximum(_lomax_median_within(m, h, f, r, T) - 0.5, 0.0)
            rows.append({**common, "method": name, "auc": _auc(y, pb), "brier": float(np.mean((pb - y) ** 2)),
                         "mae_days": float(np.mean(np.abs(pred - t_next)[ordered])),
                         **_margin_ci(y, ours_p, pb, ours_err, np.abs(pred - t_next))})
        for name, gap in gaps.items():
            if name not in baselines:
                continue
            score, pred = _rule_scores(gap, el, h)
            rows.append({**common, "method": name, "auc": _auc(y, score),
                         "mae_days": float(np.mean(np.abs(pred - t_next)[ordered]))})
    # Overdue list, judged over 90 days.
    h = 90
    y90 = np.nan_to_num(t_next, nan=np.inf) < h
    spend = cg[["customer_id"]].merge(
        next_occasion(transactions, cutoff, min(end, cutoff + dt.timedelta(days=h))).execute(),
        on="customer_id", how="left")["spend"].fillna(0.0).to_numpy(float)
    active = el <= 365
    tail, pa = sc["tail_prob"].to_numpy(float), sc["p_alive_timing"].to_numpy(float)
    for min_alive in (OVERDUE_MIN_ALIVE, *(x for x in OVERDUE_ALIVE_SHOWN if x != OVERDUE_MIN_ALIVE)):
        flagged = (n > 0) & (tail < OVERDUE_THRESHOLD) & (pa >= min_alive)
        if flagged.any() and active.any():
            rows.append({**row0, "horizon_days": h, "task": "overdue",
                         "method": "loyalist" if min_alive == OVERDUE_MIN_ALIVE else f"p_alive>={min_alive:g}",
                         "min_p_alive": min_alive, "customers": int(active.sum()), "flagged": int(flagged.sum()),
                         "order_rate": float(y90[flagged].mean()), "base_rate": float(y90[active].mean()),
                         "lift": float(y90[flagged].mean() / max(y90[active].mean(), 1e-12)),
                         "value_recovered": float(spend[flagged].sum())})
    if products and spark is not None:
        from loyalist.insights.timing import _spark_evaluate_products

        rows += _spark_evaluate_products(spark, transactions, cutoff, product_horizon, k, stack, cm, cg)
    elif products:
        rows += _evaluate_products(transactions, cutoff, product_horizon, k, stack, cm, cg)
    return pd.DataFrame(rows)


def _evaluate_products(transactions: ir.Table, cutoff: dt.date, h: int, k: int, stack=None, cm=None,
                       cg=None) -> list[dict]:
    pc = pairs_frame(transactions, cutoff)
    if len(pc) < 10 or (pc["n_gaps"] > 0).sum() < 5:
        return []
    later = products_bought(transactions, cutoff, cutoff + dt.timedelta(days=h)).execute()
    later["relevant"] = 1
    pm = fit_pair_model(pc)
    sp = score_pairs(pm, pc, h)
    if stack is not None and stack.pair is not None:
        sp["probability"] = stacked_pair_probability(stack, cm, cg, pc, sp, h)
    scored = pc.assign(loyalist=sp["probability"].to_numpy())
    n, S, el = (pc[c].to_numpy(float) for c in ("n_gaps", "gap_sum", "elapsed"))
    per_product = pc.groupby("product_id")[["gap_sum", "n_gaps"]].transform("sum")
    pooled = (per_product["gap_sum"] / per_product["n_gaps"]).to_numpy(float)
    fallback = np.where(np.isfinite(pooled), pooled, S[n > 0].sum() / max(n[n > 0].sum(), 1))
    scored["most_frequent"] = n + 1 - 1e-6 * el  # times bought, the most recent first on ties
    scored["mean_interval"] = _rule_scores(np.where(n > 0, S / np.maximum(n, 1), fallback), el, h)[0]
    last_gap = pc["last_gap"].to_numpy(float)
    scored["last_interval"] = _rule_scores(np.where(n > 0, np.nan_to_num(last_gap, nan=fallback), fallback), el, h)[0]
    scored = scored.merge(later, on=["customer_id", "product_id"], how="left")
    scored["relevant"] = scored["relevant"].notna()
    n_rel = scored.groupby("customer_id")["relevant"].sum()
    judged = n_rel[n_rel > 0]
    scored = scored[scored["customer_id"].isin(judged.index)]
    rows = []
    for method in ("loyalist", *PRODUCT_BASELINES):
        top = top_k(scored[["customer_id", "product_id", method, "relevant"]], k, method)
        hits = top.groupby("customer_id")["relevant"].sum().reindex(judged.index, fill_value=0)
        rows.append({"cutoff": pd.Timestamp(cutoff), "horizon_days": h, "task": "next_products", "method": method,
                     "customers": len(judged), "positives": int(judged.sum()),
                     "precision_at_5": float((hits / k).mean()), "recall_at_5": float((hits / judged).mean())})
    return rows


def versus_baselines(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per cutoff, horizon and task: loyalist's AUC, MAE and precision@5 against the best baseline of each
    (margin > 0 means loyalist is better: higher AUC / precision, lower MAE)."""
    out = []
    for (cut, h, task), g in metrics.groupby(["cutoff", "horizon_days", "task"]):
        ours = g[g["method"] == "loyalist"]
        others = g[~g["method"].isin(["loyalist", *NOT_BASELINES])]
        if ours.empty or others.empty:
            continue
        for metric, higher in (("auc", True), ("mae_days", False), ("precision_at_5", True)):
            if metric not in g or others[metric].isna().all():
                continue
            o = float(ours[metric].iloc[0])
            best_i = others[metric].idxmax() if higher else others[metric].idxmin()
            b = float(others.loc[best_i, metric])
            out.append({"cutoff": cut, "horizon_days": h, "task": task, "metric": metric, "loyalist": o,
                        "best_baseline": str(others.loc[best_i, "method"]), "baseline_value": b,
                        "margin": (o - b) if higher else (b - o), "beats_all": bool((o > b) if higher else (o < b))})
    return pd.DataFrame(out)


def margins_by_baseline(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per cutoff, horizon, metric (AUC, MAE, precision@5) and baseline: loyalist's value, the baseline's and
    the margin (loyalist minus baseline for AUC / precision, baseline minus loyalist for MAE: > 0 = better)."""
    out = []
    for (cut, h, task), g in metrics.groupby(["cutoff", "horizon_days", "task"]):
        ours = g[g["method"] == "loyalist"]
        others = g[~g["method"].isin(["loyalist", *NOT_BASELINES])]
        for metric, higher in (("auc", True), ("mae_days", False), ("precision_at_5", True)):
            if ours.empty or metric not in g or pd.isna(ours[metric].iloc[0]):
                continue
            o = float(ours[metric].iloc[0])
            for _, b in others.dropna(subset=[metric]).iterrows():
                v = float(b[metric])
                ci = {"auc": "auc_margin", "mae_days": "mae_margin"}.get(metric)
                lo, hi = ((b.get(f"{ci}_lo", np.nan), b.get(f"{ci}_hi", np.nan)) if ci else (np.nan, np.nan))
                out.append({"cutoff": cut, "horizon_days": h, "metric": metric, "baseline": b["method"],
                            "loyalist": o, "baseline_value": v, "margin": (o - v) if higher else (v - o),
                            "margin_ci95_lo": lo, "margin_ci95_hi": hi})
    return pd.DataFrame(out)
