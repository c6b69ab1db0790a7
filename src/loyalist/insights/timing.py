"""Timing insight (issue 5): when each customer should order next, who is overdue, which products are due
for re-order, the purchase rhythm and a contact-between-purchases schedule.

Analysis step `timing` (order 20). Per-customer columns added to `customer_insights`:

- next_order_date, next_order_p10, next_order_p90: median and 80% interval of the date of the next order.
  The law is *defective*: a customer may never order again, so where P(ever ordering again) is below 50% /
  90% the median / upper bound is empty (NaT) -- "may not order again". Shown with P(alive).
- prob_order_30d, prob_order_60d: P(at least one order within 30 / 60 days of as_of).
- overdue_days: days since the last order beyond the customer's cycle (0 when not past it).
- overdue_score: value at stake for customers flagged overdue (expected order value x P(alive)); 0 otherwise.
  Flagged: at least 2 orders and P(a gap this long | active) < `overdue_threshold` (default 10%).
- overdue_reason: plain words with the numbers, for flagged customers ("Orders every ~24 days (9 orders since
  Mar 2010); 71 days since the last; usual basket £412").
- cycle_days: posterior expected days between orders (own gaps shrunk toward the population).
- cycle_regularity: 1 / (1 + CV) of the customer's own gaps (1 = clockwork; empty with fewer than 3 orders).
- cycle_class: 'short' or 'long' (cycle shorter / longer than `long_cycle_days`, default the median cycle
  of repeat customers); empty for one-order customers.
- contact_due_date: for high-value long-cycle customers, the next contact between purchases (at one and two
  thirds of the expected cycle after the last order).

Result tables written by the step:

- `reorders` (customer x product bought on >= 2 days): customer_id, product_id, description, times_bought,
  cycle_days, last_bought, next_reorder_date, expected_quantity, overdue_days, reason.
- `next_products` (top-k per customer): customer_id, rank, product_id, description, probability
  (P(the customer orders this product within `product_horizon_days`, default 30)).
- `contact_schedule`: customer_id, contact_date, reason.
- `timing_backtest`: the held-out evaluation (loyalist.evaluation.timing) at as_of - 90 days, when the history
  allows: cutoff, horizon_days, task, method, metric columns (see that module).

Settings (loyalist.toml, section [timing]): overdue_threshold (0.10), long_cycle_days (median cycle),
top_products (5), product_horizon_days (30), contact_value_quantile (0.75), alive_weight (see
`ALIVE_WEIGHT`), backtest (true).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import ibis.expr.types as ir
import numpy as np
import pandas as pd

from loyalist.features.timing import customer_gaps, product_cycles
from loyalist.models.next_order import GammaRenewal, blend_alive

HALF_DAY = 0.5
"""Gaps are whole days fitted with a continuous law: a silence of e whole days means the gap is at least e,
i.e. the continuous gap exceeds e - 1/2 (continuity correction)."""

ALIVE_WEIGHT = 1.0
"""Logit weight of the renewal model's own P(alive) against the customer-base model's (BG/NBD ...), for
repeat customers. Chosen on the selection cutoff 2010-06-01 of Online Retail II only (never on the
evaluation cutoffs): weights 0, .25, .5, .75 gave AUC 0.730/0.733 (30/90 days), weight 1 gave 0.735/0.737
and the lowest Brier score, so the renewal model's own P(alive) is used by default; [timing] alive_weight
sets another blend."""

PRODUCT_PRIOR_GAPS = 10.0
"""Pseudo-gaps pulling a product's pooled (log) cycle toward the population's."""


def _days(x) -> pd.Series:
    return pd.to_timedelta(np.asarray(x, dtype=float), unit="D")


def base_p_alive(base_model, cg: pd.DataFrame) -> np.ndarray | None:
    """P(alive) from the fitted customer-base model (BG/NBD, Pareto/NBD ...) on the same statistics."""
    if base_model is None:
        return None
    f = cg["n_gaps"].to_numpy(float)
    r = cg["gap_sum"].to_numpy(float)
    T = r + cg["elapsed"].to_numpy(float)
    return np.asarray(base_model.conditional_probability_alive(f, r, T), dtype=float)


def fit_customer_model(cg: pd.DataFrame, seed: int = 0) -> GammaRenewal:
    return GammaRenewal(seed=seed).fit(cg["n_gaps"], cg["gap_sum"], cg["gap_logsum"],
                                       np.maximum(cg["elapsed"].to_numpy(float) - HALF_DAY, 0.0))


def score_customers(model: GammaRenewal, cg: pd.DataFrame, p_base: np.ndarray | None = None,
                    weight: float = ALIVE_WEIGHT, horizons: tuple[int, ...] = (30, 60, 90)) -> pd.DataFrame:
    """Per customer: P(alive), P(order within h), next-order quantiles (days from as_of), cycle, overdue
    tail probability. `cg` is `customer_gaps(...)` executed."""
    n = cg["n_gaps"].to_numpy(float)
    S = cg["gap_sum"].to_numpy(float)
    e = np.maximum(cg["elapsed"].to_numpy(float) - HALF_DAY, 0.0)
    pa_own = model.p_alive(n, S, e)
    # BG/NBD-type models call every one-order customer alive (they cannot drop out before a repeat), so
    # the blend applies to repeat customers only.
    pa = pa_own if p_base is None else np.where(n > 0, blend_alive(pa_own, p_base, weight), pa_own)
    out = pd.DataFrame({"customer_id": cg["customer_id"].to_numpy()})
    out["p_alive_timing"] = pa
    for h in horizons:
        out[f"prob_order_{h}d"] = model.prob_order_within(h, n, S, e, p_alive=pa)
    for q, name in ((0.1, "days_p10"), (0.5, "days_p50"), (0.9, "days_p90")):
        # Days from as_of: the continuous gap beyond e - 1/2, back to whole days after as_of.
        out[name] = np.maximum(model.residual_quantile(q, n, S, e, p_alive=pa) - HALF_DAY, 0.0)
    out["tail_prob"] = model.survival(e, n, S)  # P(a gap at least this long | active)
    out["cycle_days"] = model.cycle(n, S)
    with np.errstate(invalid="ignore", divide="ignore"):
        own_mean = S / n
        var = cg["gap_sqsum"].to_numpy(float) / n - own_mean ** 2
        cv = np.sqrt(np.maximum(var, 0.0)) / own_mean
    out["cycle_regularity"] = np.where(n >= 2, 1 / (1 + cv), np.nan)
    return out


def product_scale(pc: pd.DataFrame, prior_gaps: float = PRODUCT_PRIOR_GAPS) -> np.ndarray:
    """Each pair's prior scale: its product's pooled geometric-mean gap across customers relative to the
    population's, shrunk toward 1 with `prior_gaps` pseudo-gaps (so a product few re-order is like any)."""
    n = pc["n_gaps"].to_numpy(float)
    L = pc["gap_logsum"].to_numpy(float)
    mu = L.sum() / max(n.sum(), 1.0)
    per = pd.DataFrame({"p": pc["product_id"].to_numpy(), "n": n, "L": L}).groupby("p", sort=False)
    n_p = per["n"].transform("sum").to_numpy(float)
    L_p = per["L"].transform("sum").to_numpy(float)
    log_m = (L_p + prior_gaps * mu) / (n_p + prior_gaps)
    return np.exp(log_m - mu)


@dataclass
class PairModel:
    model: GammaRenewal
    scale: np.ndarray


def fit_pair_model(pc: pd.DataFrame, seed: int = 0) -> PairModel:
    scale = product_scale(pc)
    m = GammaRenewal(max_rows=30_000, seed=seed).fit(
        pc["n_gaps"], pc["gap_sum"], pc["gap_logsum"], np.maximum(pc["elapsed"].to_numpy(float) - HALF_DAY, 0.0),
        scale)
    return PairModel(m, scale)


def score_pairs(pm: PairModel, pc: pd.DataFrame, horizon: int = 30) -> pd.DataFrame:
    """Per customer x product: P(re-order within `horizon`), cycle, conditional median days to re-order."""
    m, s = pm.model, pm.scale
    n = pc["n_gaps"].to_numpy(float)
    S = pc["gap_sum"].to_numpy(float)
    e = np.maximum(pc["elapsed"].to_numpy(float) - HALF_DAY, 0.0)
    out = pc[["customer_id", "product_id"]].copy()
    out["probability"] = m.prob_order_within(horizon, n, S, e, s)
    out["cycle_days"] = m.cycle(n, S, s)
    rep = n > 0  # the conditional median re-order time is only reported for repeat pairs
    days = np.full(n.shape, np.nan)
    days[rep] = np.maximum(m.residual_quantile(0.5, n[rep], S[rep], e[rep], s[rep]) - HALF_DAY, 0.0)
    out["days_p50"] = days
    return out


def top_k(scored: pd.DataFrame, k: int, score: str = "probability") -> pd.DataFrame:
    """The k best rows per customer by `score` (ties: product_id), with rank 1..k. Vectorised."""
    s = scored.sort_values(["customer_id", score, "product_id"], ascending=[True, False, True], kind="stable")
    s = s.assign(rank=s.groupby("customer_id", sort=False).cumcount() + 1)
    return s[s["rank"] <= k]


@dataclass
class TimingScores:
    customers: pd.DataFrame
    """customer_gaps joined with score_customers."""
    pairs: pd.DataFrame
    """product_cycles joined with score_pairs."""
    customer_model: GammaRenewal
    pair_model: PairModel


def score_all(transactions: ir.Table, as_of: dt.date, base_model=None, weight: float = ALIVE_WEIGHT,
              product_horizon: int = 30, with_products: bool = True) -> TimingScores:
    """Features from the engine, both renewal models fitted at `as_of`, everyone scored."""
    cg = customer_gaps(transactions, as_of).execute()
    if cg.empty:
        raise ValueError(f"no customer bought anything before {as_of}")
    cm = fit_customer_model(cg)
    cust = cg.merge(score_customers(cm, cg, base_p_alive(base_model, cg), weight), on="customer_id")
    pairs, pm = pd.DataFrame(), None
    if with_products:
        pc = product_cycles(transactions, as_of).execute()
        if len(pc) >= 10 and (pc["n_gaps"] > 0).sum() >= 5:
            pm = fit_pair_model(pc)
            pairs = pc.merge(score_pairs(pm, pc, product_horizon), on=["customer_id", "product_id"])
    return TimingScores(cust, pairs, cm, pm)
