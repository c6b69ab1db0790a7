"""Timing insight (issue 5): when each customer should order next, who is overdue, which products are due
for re-order, the purchase rhythm and a contact-between-purchases schedule.

Analysis step `timing` (order 20). Per-customer columns added to `customer_insights`:

- next_order_date, next_order_p10, next_order_p90: median and 80% interval of the date of the next order.
  The law is *defective*: a customer may never order again, so where P(ever ordering again) is below 50% /
  90% the median / upper bound is empty (NaT) -- "may not order again". Shown with P(alive).
- prob_order_30d, prob_order_60d: P(at least one order within 30 / 60 days of as_of): a logistic regression
  (`fit_stack`, fitted on an inner split before as_of only) of the renewal model's and the customer-base
  model's probabilities and the customer's rhythm; the renewal/base average when the history is too short.
- overdue_days: days since the last order beyond the customer's cycle (0 when not past it).
- overdue_score: value at stake for customers flagged overdue (expected order value x P(alive)); 0 otherwise.
  Flagged: at least 2 orders, P(a gap this long | active) < `overdue_threshold` (default 10%) and
  P(still active) >= `overdue_min_p_alive` (default 0.5: "given they are still active").
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
- `category_rhythm` (customer x product category; only when `products.category` is loaded, else a note):
  customer_id, category, times_bought, cycle_days, regularity, cycle_class, last_bought, next_date,
  overdue_days (see `category_rhythm`).
- `timing_backtest`: the held-out evaluation (loyalist.evaluation.timing) at as_of - 90 days, when the history
  allows: cutoff, horizon_days, task, method, metric columns (see that module).

Settings (loyalist.toml, section [timing]): overdue_threshold (0.10), overdue_min_p_alive (0.5),
long_cycle_days (median cycle), top_products (5), product_horizon_days (30), contact_value_quantile (0.75),
mix (see `MIX_GRID`: fixes a plain renewal/base average instead of the stack), backtest (true).

The next products are ranked by a logistic regression of the pair renewal model's probability, the
recency-weighted counts and the customer's chance of ordering (`pair_matrix`), fitted on the re-orders of
the 30 and 60 days before as_of; the 80% interval's levels are calibrated on the 90 days before as_of
(`fit_stack`). Why logistic regression (scikit-learn) and not gradient boosting: the inner split's origins
lie in other seasons than the window scored, and the linear stack carried over between seasons where
boosted trees did not: on the selection cutoff 2010-06-01 (Online Retail II, not one of the evaluation
cutoffs) AUC 0.749 / 0.752 (30 / 90 days) against 0.732 / 0.745 for scikit-learn's
HistGradientBoostingClassifier on the same features and origins.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
from scipy import special

from loyalist.features.timing import customer_gaps, product_cycles
from loyalist.insights import Context, step
from loyalist.models.next_order import GammaRenewal
from loyalist.store import write_frame

HALF_DAY = 0.5
"""Gaps are whole days fitted with a continuous law: a silence of e whole days means the gap is at least e,
i.e. the continuous gap exceeds e - 1/2 (continuity correction)."""

MIX_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULT_MIX = 0.5
SELECT_DAYS = 90
"""P(order within h) is a model average (forecast combination, Bates & Granger 1969, "The combination of
forecasts", Operational Research Quarterly 20(4)): mix x renewal + (1 - mix) x customer-base model (the BG/NBD,
Pareto/NBD ... that `analyze` fitted). `mix` is chosen by rolling origin: on the SELECT_DAYS before as_of
(models fitted on the data before as_of - SELECT_DAYS, scored on the orders in those days: all before
as_of), the grid value with the best mean AUC over 30 and 90 days. DEFAULT_MIX when the history is too
short; [timing] mix fixes it."""

PRODUCT_PRIOR_GAPS = 10.0
"""Pseudo-gaps pulling a product's pooled (log) cycle toward the population's."""


MAX_DAYS = 3650.0
"""Dates further than ten years ahead are left empty (as 'may never order again')."""


def _days(x) -> pd.Series:
    d = np.asarray(x, dtype=float)
    return pd.to_timedelta(np.where(d <= MAX_DAYS, d, np.nan), unit="D")


def base_prob_order(base_model, cg: pd.DataFrame, h: int) -> np.ndarray:
    """P(order within h) from the fitted customer-base model (BG/NBD, Pareto/NBD ...) on the same statistics
    (frequency = gaps, recency = first to last order, T = first order to as_of)."""
    f = cg["n_gaps"].to_numpy(float)
    r = cg["gap_sum"].to_numpy(float)
    T = r + cg["elapsed"].to_numpy(float)
    return np.asarray(base_model.probability_of_purchase_within(h, f, r, T), dtype=float)


def base_summary(cg: pd.DataFrame) -> pd.DataFrame:
    """`customer_gaps` in the shape the customer-base models fit on."""
    return cg.assign(frequency=cg["n_gaps"], recency=cg["gap_sum"], T=cg["gap_sum"] + cg["elapsed"],
                     monetary_value=np.nan)


def select_mix(transactions: ir.Table, as_of: dt.date, base_name: str = "bgnbd") -> tuple[float, str]:
    """Rolling-origin choice of `mix` (see MIX_GRID): fit at as_of - SELECT_DAYS, judge on the orders up to
    as_of. Returns (mix, what was done)."""
    from sklearn.metrics import roc_auc_score

    from loyalist.customer_base import fit_base
    from loyalist.features.timing import next_occasion

    c0 = as_of - dt.timedelta(days=SELECT_DAYS)
    cg0 = customer_gaps(transactions, c0).execute()
    if len(cg0) < 100 or (cg0["n_gaps"] > 0).sum() < 30:
        return DEFAULT_MIX, f"mix {DEFAULT_MIX} (default: only {len(cg0)} customers before {c0} to choose it on)"
    cm0 = fit_customer_model(cg0)
    base0 = fit_base(base_summary(cg0), base_name).transaction
    nx = cg0[["customer_id"]].merge(next_occasion(transactions, c0, as_of).execute(), on="customer_id", how="left")
    t_next = (pd.to_datetime(nx["next_day"]) - pd.Timestamp(c0)).dt.days.to_numpy(float)
    n, S = cg0["n_gaps"].to_numpy(float), cg0["gap_sum"].to_numpy(float)
    e = np.maximum(cg0["elapsed"].to_numpy(float) - HALF_DAY, 0.0)
    score = np.zeros(len(MIX_GRID))
    for h in (30, 90):
        y = np.nan_to_num(t_next, nan=np.inf) < h
        if not 0 < y.sum() < len(y):
            return DEFAULT_MIX, f"mix {DEFAULT_MIX} (default: no variation in orders after {c0})"
        pr, pb = cm0.prob_order_within(h, n, S, e), base_prob_order(base0, cg0, h)
        score += [roc_auc_score(y, w * pr + (1 - w) * pb) for w in MIX_GRID]
    best = int(np.flatnonzero(score >= score.max() - 1e-12)[-1])
    return MIX_GRID[best], (f"mix {MIX_GRID[best]} of the renewal model with {base_name}, chosen on the orders of "
                            f"{c0} to {as_of} (mean AUC {score[best] / 2:.3f})")


def fit_customer_model(cg: pd.DataFrame, seed: int = 0) -> GammaRenewal:
    return GammaRenewal(seed=seed).fit(cg["n_gaps"], cg["gap_sum"], cg["gap_logsum"],
                                       np.maximum(cg["elapsed"].to_numpy(float) - HALF_DAY, 0.0))


def score_customers(model: GammaRenewal, cg: pd.DataFrame, base_model=None, mix: float = 1.0,
                    horizons: tuple[int, ...] = (30, 60, 90), stack: Stack | None = None) -> pd.DataFrame:
    """Per customer: P(alive), P(order within h), next-order quantiles (days from as_of), cycle, overdue
    tail probability. `cg` is `customer_gaps(...)` executed.

    P(order within h) = the stack's logistic regression (`fit_stack`, with `base_model`) when `stack` has one
    for h, else mix x renewal + (1 - mix) x `base_model` (when given). The adjusted P(alive) is
    P(order within 90) / P(order within 90 | active, renewal): the dates are the renewal law's, scaled to
    the combined chance of ordering at all (equal to the renewal model's own P(alive) when mix = 1). The
    interval is [q(level), q(1 - level)] with the stack's calibrated level (0.1 without a stack)."""
    n = cg["n_gaps"].to_numpy(float)
    S = cg["gap_sum"].to_numpy(float)
    e = np.maximum(cg["elapsed"].to_numpy(float) - HALF_DAY, 0.0)
    pa_own = model.p_alive(n, S, e)
    use_base = base_model is not None and mix < 1.0

    def prob(h: int) -> np.ndarray:
        if stack is not None and h in stack.classifiers and base_model is not None:
            return stack.classifiers[h].predict_proba(customer_matrix(model, cg, base_model, h))[:, 1]
        pr = model.prob_order_within(h, n, S, e, p_alive=pa_own)
        return mix * pr + (1 - mix) * base_prob_order(base_model, cg, h) if use_base else pr

    out = pd.DataFrame({"customer_id": cg["customer_id"].to_numpy()})
    if use_base or (stack is not None and base_model is not None):
        pa = np.clip(prob(SELECT_DAYS) / np.maximum(model.conditional_cdf(SELECT_DAYS, n, S, e), 1e-12), 0.0, 1.0)
    else:
        pa = pa_own
    out["p_alive_timing"] = pa
    for h in horizons:
        out[f"prob_order_{h}d"] = prob(h)
    level = 0.1 if stack is None else stack.level
    for q, name in ((level, "days_p10"), (0.5, "days_p50"), (1 - level, "days_p90")):
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


def fit_pair_model(pc: pd.DataFrame, seed: int = 0, max_rows: int = 30_000) -> PairModel:
    """Fit on a seeded subset of pairs; rows are put in key order first, so the subset (and the fit) does
    not depend on the order in which the engine returned them."""
    scale = product_scale(pc)
    o = np.lexsort((pc["product_id"].astype(str).to_numpy(), pc["customer_id"].astype(str).to_numpy()))
    m = GammaRenewal(max_rows=max_rows, seed=seed).fit(
        pc["n_gaps"].to_numpy()[o], pc["gap_sum"].to_numpy()[o], pc["gap_logsum"].to_numpy()[o],
        np.maximum(pc["elapsed"].to_numpy(float)[o] - HALF_DAY, 0.0), scale[o])
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


def score_all(transactions: ir.Table, as_of: dt.date, base_model=None, mix: float = 1.0,
              product_horizon: int = 30, with_products: bool = True, stack: Stack | None = None,
              cg: pd.DataFrame | None = None, pc: pd.DataFrame | None = None) -> TimingScores:
    """Features from the engine (unless given), both renewal models fitted at `as_of`, everyone scored."""
    if cg is None:
        cg = customer_gaps(transactions, as_of).execute()
    if cg.empty:
        raise ValueError(f"no customer bought anything before {as_of}")
    cm = fit_customer_model(cg)
    cust = cg.merge(score_customers(cm, cg, base_model, mix, stack=stack), on="customer_id")
    pairs, pm = pd.DataFrame(), None
    if with_products:
        if pc is None:
            pc = product_cycles(transactions, as_of).execute()
        if len(pc) >= 10 and (pc["n_gaps"] > 0).sum() >= 5:
            pm = fit_pair_model(pc)
            sp = score_pairs(pm, pc, product_horizon)
            if stack is not None and stack.pair is not None:
                sp["probability"] = stacked_pair_probability(stack, cm, cg, pc, sp, product_horizon,
                                                             cust.set_index("customer_id").get(
                                                                 f"prob_order_{product_horizon}d"))
            pairs = pc.merge(sp, on=["customer_id", "product_id"])
    return TimingScores(cust, pairs, cm, pm)


def stacked_pair_probability(stack: Stack, cm: GammaRenewal, cg: pd.DataFrame, pc: pd.DataFrame,
                             sp: pd.DataFrame, horizon: int, p_customer: pd.Series | None = None) -> np.ndarray:
    """P(the customer orders the product within `horizon`) = P(the customer orders within it) x the stack's
    P(this product | the customer re-orders something) (the pair regression is fitted on customers who do)."""
    own = pd.Series(cm.prob_order_within(horizon, cg["n_gaps"].to_numpy(float), cg["gap_sum"].to_numpy(float),
                                         np.maximum(cg["elapsed"].to_numpy(float) - HALF_DAY, 0.0)),
                    index=cg["customer_id"].to_numpy())
    cond = stack.pair.predict_proba(pair_matrix(pc, sp, own))[:, 1]
    pc_ = (p_customer if p_customer is not None else own)
    return cond * pc["customer_id"].map(pc_).fillna(0.0).to_numpy(float)


def category_rhythm(cc: pd.DataFrame, as_of: dt.date, seed: int = 0) -> pd.DataFrame:
    """The purchase-repurchase rhythm per customer x category (`category_cycles` executed): the same gamma
    renewal model as the pairs, the prior scaled to the category's pooled cycle (a customer with few
    purchases in a category shrinks toward the category's rhythm).

    Columns: customer_id, category, times_bought, cycle_days (posterior mean gap), regularity (1 / (1 + CV)
    of the customer's own gaps in the category, empty with fewer than 3 purchases), cycle_class ('short' /
    'long' against the category's median cycle; empty for categories bought once), last_bought,
    next_date (last_bought + cycle, empty when bought once), overdue_days (days since the last purchase in
    the category beyond the cycle; 0 when not past it or bought once)."""
    rep = cc["n_gaps"].to_numpy(float) > 0
    n, S = cc["n_gaps"].to_numpy(float), cc["gap_sum"].to_numpy(float)
    scale = product_scale(cc.rename(columns={"category": "product_id"}))
    if len(cc) >= 10 and rep.sum() >= 5:
        m = GammaRenewal(max_rows=30_000, seed=seed).fit(n, S, cc["gap_logsum"].to_numpy(float),
                                                         np.maximum(cc["elapsed"].to_numpy(float) - HALF_DAY, 0.0),
                                                         scale)
        cycle = m.cycle(n, S, scale)
    else:  # too few repeat purchases to fit the population: the customer's own mean gap
        with np.errstate(invalid="ignore", divide="ignore"):
            cycle = np.where(rep, S / np.maximum(n, 1), np.nan)
    cycle = np.where(rep, cycle, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = S / n
        cv = np.sqrt(np.maximum(cc["gap_sqsum"].to_numpy(float) / n - mean ** 2, 0.0)) / mean
    med = pd.Series(cycle).groupby(cc["category"].to_numpy()).transform("median").to_numpy(float)
    last = pd.to_datetime(cc["last_day"]).reset_index(drop=True)
    out = pd.DataFrame({
        "customer_id": cc["customer_id"].to_numpy(), "category": cc["category"].to_numpy(),
        "times_bought": cc["occasions"].astype(int).to_numpy(), "cycle_days": np.round(cycle, 1),
        "regularity": np.where(n >= 2, 1 / (1 + cv), np.nan),
        "cycle_class": pd.Series(np.where(cycle > med, "long", "short")).where(rep, None).to_numpy(),
        "last_bought": last, "next_date": last + _days(np.round(cycle)),
        "overdue_days": np.where(rep, np.maximum(np.round(cc["elapsed"].to_numpy(float) - cycle), 0), 0).astype(int)})
    return out.sort_values(["customer_id", "category"], kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------ stacking on an inner split
HORIZONS = (30, 60, 90)
INNER_ORIGINS = 3
INNER_STEP = 30
MIN_INNER_HISTORY = 60
"""The stack is fitted on an inner split before as_of only: for horizon h, origins as_of - h - 30 j
(j < INNER_ORIGINS), each with at least MIN_INNER_HISTORY days of data before it; the models are fitted at
the origin and the labels are the orders in [origin, origin + h), all before as_of."""
INNER_PAIR_ROWS = 10_000
"""The pair renewal model at the inner origins is fitted on a seeded subset of this many pairs (speed)."""
LEVEL_GRID = tuple(np.round(np.arange(0.02, 0.2501, 0.01), 2))
MEDIAN_WEIGHTS = tuple(np.round(np.linspace(0.1, 1.0, 10), 2))
"""The renewal model's share of the days-to-next-order point (never 0: the point is loyalist's own model,
combined with Pareto/NBD's, not Pareto/NBD's alone)."""
CUSTOMER_FEATURES = ("logit_p_renewal", "logit_p_base", "log_gaps", "log_elapsed", "log_cycle", "elapsed_over_cycle",
                     "gap_cv", "log_basket", "logit_gap_tail", "log_median_within", "log_age", "log_last_gap")
PAIR_FEATURES = ("logit_p_pair_renewal", "log_times", "log_elapsed", "log_cycle", "elapsed_over_cycle", "log_recent_w30",
                 "log_recent_w90", "log_product_buyers_90d", "logit_p_customer", "log_times_vs_top_item", "log_quantity")


def _logit(p) -> np.ndarray:
    return special.logit(np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6))


def customer_matrix(model: GammaRenewal, cg: pd.DataFrame, base_model, h: int) -> np.ndarray:
    """Features for the stacked P(order within h) (CUSTOMER_FEATURES; NaN where undefined, filled with -1)."""
    n, S = cg["n_gaps"].to_numpy(float), cg["gap_sum"].to_numpy(float)
    e = np.maximum(cg["elapsed"].to_numpy(float) - HALF_DAY, 0.0)
    cyc = model.cycle(n, S)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = S / n
        cv = np.sqrt(np.maximum(cg["gap_sqsum"].to_numpy(float) / n - mean ** 2, 0.0)) / mean
        X = np.column_stack([
            _logit(model.prob_order_within(h, n, S, e)), _logit(base_prob_order(base_model, cg, h)), np.log1p(n),
            np.log1p(e), np.log(cyc), e / cyc, np.where(n >= 2, cv, np.nan),
            np.log1p(np.maximum(cg["spend"].to_numpy(float), 0.0) / cg["occasions"].to_numpy(float)),
            _logit(model.survival(e, n, S)), np.log1p(model.median_given_within(h, n, S, e)), np.log1p(S + e),
            np.log1p(cg["last_gap"].to_numpy(float))])
    return np.nan_to_num(X, nan=-1.0, posinf=50.0, neginf=-50.0)


def pair_matrix(pc: pd.DataFrame, pair_scores: pd.DataFrame, customer_p: pd.Series) -> np.ndarray:
    """Features for the stacked next-product ranking (PAIR_FEATURES). `customer_p`: P(the customer orders
    within the product horizon), indexed by customer_id."""
    e = pc["elapsed"].to_numpy(float)
    cyc = pair_scores["cycle_days"].to_numpy(float)
    buyers = (pc["elapsed"] < 90).groupby(pc["product_id"]).transform("sum").to_numpy(float)
    c_occ = pc.groupby("customer_id")["occasions"].transform("max").to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        X = np.column_stack([
            _logit(pair_scores["probability"]), np.log1p(pc["occasions"].to_numpy(float)), np.log1p(e), np.log(cyc),
            e / cyc, np.log(pc["recent_w30"].to_numpy(float) + 1e-6), np.log(pc["recent_w90"].to_numpy(float) + 1e-6),
            np.log1p(buyers), _logit(pc["customer_id"].map(customer_p).fillna(0.0).to_numpy(float)),
            np.log(pc["occasions"].to_numpy(float) / c_occ), np.log1p(np.maximum(pc["quantity"].to_numpy(float), 0.0))])
    return np.nan_to_num(X, nan=-1.0, posinf=50.0, neginf=-50.0)


def _classifier():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))


@dataclass
class Stack:
    """What was fitted on the inner split before as_of (see `fit_stack`)."""

    classifiers: dict
    """horizon -> logistic regression of 'ordered within h' on CUSTOMER_FEATURES."""
    median_weight: dict
    """horizon -> weight of the renewal model's conditional median against Pareto/NBD's (days-to-next-order)."""
    pair: object | None
    """logistic regression of 're-ordered within the product horizon' on PAIR_FEATURES (None: no products)."""
    level: float
    """the interval is [q(level), q(1 - level)] of the next-order law, `level` calibrated to 80% coverage."""
    how: list


def next_order_days(transactions: ir.Table, start: dt.date, end: dt.date, ids: pd.Series) -> np.ndarray:
    """Days from `start` to each customer's first order in [start, end) (NaN: none)."""
    from loyalist.features.timing import next_occasion

    nx = pd.DataFrame({"customer_id": ids.to_numpy()}).merge(next_occasion(transactions, start, end).execute(),
                                                            on="customer_id", how="left")
    return (pd.to_datetime(nx["next_day"]) - pd.Timestamp(start)).dt.days.to_numpy(float)


def coverage_80(p10: np.ndarray, p90: np.ndarray, t_next: np.ndarray, follow: float) -> tuple[float, int]:
    """Coverage of the 80% next-order interval, censored by the follow-up (see loyalist.evaluation.timing):
    over customers whose interval is closed (P(ordering again) >= 90%) and ends within the `follow` days
    observed (decidable from the prediction alone), the share whose first order after the origin (t_next
    days, NaN = none seen) falls in [p10, p90] (whole days)."""
    judged = np.isfinite(p90) & (p90 < follow)
    t = np.nan_to_num(t_next, nan=np.inf)
    inside = (t >= np.floor(p10)) & (t <= np.ceil(p90))
    n = int(judged.sum())
    return (float(inside[judged].mean()) if n else np.nan), n


def _pareto_median_within(model, h: int, cg: pd.DataFrame) -> np.ndarray:
    """Pareto/NBD / BG/NBD: given alive, the next purchase is Lomax (rate ~ Gamma(r + x, alpha + T)); the
    median of it truncated to [0, h]."""
    p = model.params_
    shape = p["r"] + cg["n_gaps"].to_numpy(float)
    scale = p["alpha"] + cg["gap_sum"].to_numpy(float) + cg["elapsed"].to_numpy(float)
    F = 1 - (scale / (scale + h)) ** shape
    return scale * ((1 - 0.5 * F) ** (-1 / shape) - 1)


def point_days(model: GammaRenewal, pareto, cg: pd.DataFrame, h: int, weight: float) -> np.ndarray:
    """Point prediction of the days to the next order for a customer who orders within h: `weight` x the
    renewal model's median given within h + (1 - weight) x Pareto/NBD's (forecast combination)."""
    n, S = cg["n_gaps"].to_numpy(float), cg["gap_sum"].to_numpy(float)
    e = np.maximum(cg["elapsed"].to_numpy(float) - HALF_DAY, 0.0)
    ren = np.maximum(model.median_given_within(h, n, S, e) - HALF_DAY, 0.0)
    if pareto is None or weight >= 1:
        return ren
    return weight * ren + (1 - weight) * np.maximum(_pareto_median_within(pareto, h, cg) - HALF_DAY, 0.0)


def fit_stack(transactions: ir.Table, as_of: dt.date, base_name: str = "bgnbd", with_products: bool = True,
              product_horizon: int = 30, horizons: tuple[int, ...] = HORIZONS) -> Stack | None:
    """Fit loyalist's combination on the inner split before `as_of` (never on what follows it):

    - P(order within h): logistic regression (stacking, Wolpert 1992 "Stacked generalization", Neural
      Networks 5(2)) of the orders in [o, o + h) on the renewal model's and the customer-base model's
      probabilities and the customer's rhythm (CUSTOMER_FEATURES), origins o = as_of - h - 30 j;
    - the days-to-next-order point: the weight of the renewal median against Pareto/NBD's (MEDIAN_WEIGHTS)
      with the least absolute error at o = as_of - h (orders in [o, as_of));
    - the next products: logistic regression of the re-orders in [o, o + H) on the pair renewal model and
      recency-weighted counts (PAIR_FEATURES), o = as_of - H and as_of - 2H (customers with a re-order);
    - the interval level: on o = as_of - 90 the level whose [q(level), q(1 - level)] covers 80% (split
      conformal calibration, e.g. Angelopoulos & Bates 2023, "Conformal prediction: a gentle introduction").

    None when the history before as_of is too short for any inner origin."""
    from loyalist.customer_base import fit_base
    from loyalist.features.timing import product_cycles, products_bought

    first = transactions.filter(transactions.customer_id.notnull()).order_date.min().execute()
    first = pd.Timestamp(first).date()
    fits: dict = {}

    def at(o: dt.date):
        if o not in fits:
            cg = customer_gaps(transactions, o).execute()
            if len(cg) < 100 or (cg["n_gaps"] > 0).sum() < 30:
                fits[o] = None
            else:
                summ = base_summary(cg)
                fits[o] = (cg, fit_customer_model(cg), fit_base(summ, base_name).transaction,
                           next_order_days(transactions, o, as_of, cg["customer_id"]))
        return fits[o]

    def ok(o: dt.date) -> bool:
        return (o - first).days >= MIN_INNER_HISTORY and at(o) is not None

    classifiers, weights, how = {}, {}, []
    for h in horizons:
        Xs, ys = [], []
        for j in range(INNER_ORIGINS):
            o = as_of - dt.timedelta(days=h + INNER_STEP * j)
            if not ok(o):
                break
            cg, cm, base, tn = at(o)
            Xs.append(customer_matrix(cm, cg, base, h))
            ys.append(np.nan_to_num(tn, nan=np.inf) < h)
        if not Xs:
            return None
        y = np.concatenate(ys)
        if not 0 < y.sum() < len(y):
            return None
        classifiers[h] = _classifier().fit(np.vstack(Xs), y)
        how.append(f"P(order within {h} d) stacked on {len(Xs)} origin(s) before {as_of} ({len(y):,} rows)")
    # Days-to-next-order point: the weight on the origin as_of - h (the latest window of h days).
    for h in classifiers:
        cg, cm, _, tn = at(as_of - dt.timedelta(days=h))
        pos = np.nan_to_num(tn, nan=np.inf) < h
        try:
            pareto = fit_base(base_summary(cg), "paretonbd").transaction
            err = [np.mean(np.abs(point_days(cm, pareto, cg, h, w) - tn)[pos]) for w in MEDIAN_WEIGHTS]
            weights[h] = float(MEDIAN_WEIGHTS[int(np.nanargmin(err))])
        except Exception:  # Pareto/NBD did not fit (or no one ordered): the renewal median alone
            weights[h] = 1.0
    # Interval level, on the origin of the longest horizon (90 days).
    h_cal = max(classifiers)
    o = as_of - dt.timedelta(days=h_cal)
    cg, cm, base, tn = at(o)
    n, S = cg["n_gaps"].to_numpy(float), cg["gap_sum"].to_numpy(float)
    e = np.maximum(cg["elapsed"].to_numpy(float) - HALF_DAY, 0.0)
    p_h = classifiers[h_cal].predict_proba(customer_matrix(cm, cg, base, h_cal))[:, 1]
    pa = np.clip(p_h / np.maximum(cm.conditional_cdf(h_cal, n, S, e), 1e-12), 0.0, 1.0)
    cov = []
    for lv in LEVEL_GRID:
        lo = np.maximum(cm.residual_quantile(lv, n, S, e, p_alive=pa) - HALF_DAY, 0.0)
        hi = np.maximum(cm.residual_quantile(1 - lv, n, S, e, p_alive=pa) - HALF_DAY, 0.0)
        cov.append(coverage_80(lo, hi, tn, float(h_cal))[0])
    cov = np.asarray(cov, dtype=float)
    level = float(LEVEL_GRID[int(np.nanargmin(np.abs(cov - 0.8)))]) if np.isfinite(cov).any() else 0.1
    how.append(f"80% interval = [q({level:.2f}), q({1 - level:.2f})], calibrated on the orders of {o} to {as_of}")
    pair = None
    if with_products:
        Xs, ys = [], []
        for j in (1, 2):
            o = as_of - dt.timedelta(days=product_horizon * j)
            if not ok(o):
                break
            pc = product_cycles(transactions, o).execute()
            if len(pc) < 10 or (pc["n_gaps"] > 0).sum() < 5:
                break
            cg, cm, _, _ = at(o)
            later = products_bought(transactions, o, o + dt.timedelta(days=product_horizon)).execute()
            y = pc[["customer_id", "product_id"]].merge(later.assign(_y=1), on=["customer_id", "product_id"],
                                                         how="left")["_y"].notna().to_numpy()
            keep = pd.Series(y).groupby(pc["customer_id"].to_numpy()).transform("sum").to_numpy() > 0
            if not keep.any():
                continue
            pm = fit_pair_model(pc, max_rows=INNER_PAIR_ROWS)
            sp = score_pairs(pm, pc, product_horizon)
            cust_p = pd.Series(cm.prob_order_within(product_horizon, cg["n_gaps"].to_numpy(float),
                                                    cg["gap_sum"].to_numpy(float),
                                                    np.maximum(cg["elapsed"].to_numpy(float) - HALF_DAY, 0.0)),
                               index=cg["customer_id"].to_numpy())
            Xs.append(pair_matrix(pc, sp, cust_p)[keep])
            ys.append(y[keep])
        if Xs and 0 < np.concatenate(ys).sum() < sum(map(len, ys)):
            pair = _classifier().fit(np.vstack(Xs), np.concatenate(ys))
            how.append(f"next products stacked on {len(Xs)} origin(s) before {as_of}")
    return Stack(classifiers, weights, pair, level, how)


# ---------------------------------------------------------------------------------------------- the step
CURRENCY_SYMBOLS = {"GBP": "£", "EUR": "€", "USD": "$", "JPY": "¥"}


def _currency(transactions: ir.Table) -> str:
    c = transactions.filter(transactions.currency.notnull())
    top = c.group_by("currency").aggregate(n=c.count()).order_by(ibis.desc("n")).limit(1).execute()
    if top.empty:
        return ""
    code = str(top["currency"].iloc[0])
    return CURRENCY_SYMBOLS.get(code, code + " ")


def _fmt_int(x: pd.Series) -> pd.Series:
    return x.round().astype("Int64").astype(str)


def _money(x: pd.Series, sym: str) -> pd.Series:
    return sym + x.map("{:,.0f}".format)


def customer_columns(ts: TimingScores, customers: pd.DataFrame, as_of: dt.date, cfg: dict, sym: str
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-customer timing columns and the contact schedule (see the module docstring)."""
    c = ts.customers.merge(customers[[x for x in ("customer_id", "expected_order_value", "clv_12m")
                                      if x in customers]], on="customer_id", how="left")
    now = pd.Timestamp(as_of)
    out = pd.DataFrame({"customer_id": c["customer_id"].to_numpy()})
    for q, name in (("days_p50", "next_order_date"), ("days_p10", "next_order_p10"), ("days_p90", "next_order_p90")):
        d = c[q].to_numpy(float)
        out[name] = (now + _days(np.where(np.isfinite(d), np.round(d), np.nan))).to_numpy()
    out["prob_order_30d"] = c["prob_order_30d"].to_numpy(float)
    out["prob_order_60d"] = c["prob_order_60d"].to_numpy(float)
    n = c["n_gaps"].to_numpy(float)
    el = c["elapsed"].to_numpy(float)
    cycle = c["cycle_days"].to_numpy(float)
    thr = float(cfg.get("overdue_threshold", 0.10))
    min_alive = float(cfg.get("overdue_min_p_alive", 0.5))
    flagged = (n > 0) & (c["tail_prob"].to_numpy(float) < thr) & (c["p_alive_timing"].to_numpy(float) >= min_alive)
    basket = c["spend"] / c["occasions"]
    value = c["expected_order_value"].fillna(basket) if "expected_order_value" in c else basket
    out["overdue_days"] = np.where(n > 0, np.maximum(np.round(el - cycle), 0), 0).astype(int)
    out["overdue_score"] = np.where(flagged, value.to_numpy(float) * c["p_alive_timing"].to_numpy(float), 0.0)
    first = pd.to_datetime(c["first_day"])
    reason = ("Orders every ~" + _fmt_int(c["cycle_days"]) + " days (" + c["occasions"].astype(str) + " orders since "
              + first.dt.strftime("%b %Y") + "); " + _fmt_int(c["elapsed"]) + " days since the last; usual basket "
              + _money(basket, sym) + "; a gap this long happens " + (100 * c["tail_prob"]).map("{:.1f}".format)
              + "% of the time for an active customer; P(still active) "
              + (100 * c["p_alive_timing"]).map("{:.0f}".format) + "%")
    out["overdue_reason"] = reason.where(flagged, None).to_numpy()
    out["cycle_days"] = np.where(n > 0, cycle, np.nan)
    out["cycle_regularity"] = c["cycle_regularity"].to_numpy(float)
    long_days = float(cfg.get("long_cycle_days", np.nanmedian(cycle[n > 0]) if (n > 0).any() else np.inf))
    out["cycle_class"] = pd.Series(np.where(cycle > long_days, "long", "short")).where(n > 0, None).to_numpy()
    # Contact between purchases: high-value long-cycle customers who are likely still active.
    vcol = "clv_12m" if "clv_12m" in c and c["clv_12m"].notna().any() else None
    v = c[vcol].to_numpy(float) if vcol else value.to_numpy(float)
    vq = float(cfg.get("contact_value_quantile", 0.75))
    high = np.isfinite(v) & (v >= np.nanquantile(v, vq)) if np.isfinite(v).any() else np.zeros(len(c), bool)
    pick = high & (out["cycle_class"].to_numpy() == "long") & (c["p_alive_timing"].to_numpy(float) >= 0.5)
    last = pd.to_datetime(c["last_day"])
    sched = []
    for frac, label in ((1 / 3, "one third"), (2 / 3, "two thirds")):
        when = (last + _days(np.round(frac * cycle))).dt.normalize()
        keep = pick & (when >= now).to_numpy()
        sched.append(pd.DataFrame({
            "customer_id": c["customer_id"][keep], "contact_date": when[keep],
            "reason": ("Long-cycle customer: orders every ~" + _fmt_int(c["cycle_days"][keep]) + " days, last on "
                       + last[keep].dt.strftime("%d %b %Y") + "; " + ("12-month value " if vcol else "usual basket ")
                       + _money(pd.Series(v[keep], index=c.index[keep]), sym) + "; a non-sales contact at " + label
                       + " of the cycle")}))
    # Past two thirds but not yet due: contact now.
    two = (last + _days(np.round(2 / 3 * cycle))).dt.normalize()
    late = pick & (two < now).to_numpy() & (el < cycle)
    sched.append(pd.DataFrame({
        "customer_id": c["customer_id"][late], "contact_date": now,
        "reason": ("Long-cycle customer: orders every ~" + _fmt_int(c["cycle_days"][late]) + " days; "
                   + _fmt_int(c["elapsed"][late]) + " days since the last, two thirds of the cycle passed: "
                   "a non-sales contact now")}))
    schedule = pd.concat(sched, ignore_index=True).sort_values(["customer_id", "contact_date"], kind="stable")
    schedule["contact_date"] = pd.to_datetime(schedule["contact_date"])
    due = schedule.groupby("customer_id")["contact_date"].min()
    out["contact_due_date"] = out["customer_id"].map(due).to_numpy()
    out["contact_due_date"] = pd.to_datetime(out["contact_due_date"])
    return out, schedule.reset_index(drop=True)


def reorder_tables(ts: TimingScores, as_of: dt.date, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`reorders` (pairs bought on >= 2 days) and `next_products` (top k per customer)."""
    p = ts.pairs
    now = pd.Timestamp(as_of)
    rep = p[p["occasions"] >= 2]
    reorders = pd.DataFrame({
        "customer_id": rep["customer_id"], "product_id": rep["product_id"], "description": rep["description"],
        "times_bought": rep["occasions"].astype(int), "cycle_days": rep["cycle_days"].round(1),
        "last_bought": pd.to_datetime(rep["last_day"]),
        "next_reorder_date": now + _days(np.round(rep["days_p50"].to_numpy(float))),
        "expected_quantity": rep["quantity"].round(1),
        "overdue_days": np.maximum(np.round(rep["elapsed"] - rep["cycle_days"]), 0).astype(int)})
    reorders["reason"] = ("Usually re-orders " + rep["product_id"].astype(str) + " every ~"
                          + _fmt_int(rep["cycle_days"]) + " days (" + rep["occasions"].astype(str) + " times since "
                          + pd.to_datetime(rep["first_day"]).dt.strftime("%b %Y") + "); "
                          + _fmt_int(rep["elapsed"]) + " days since the last; usual quantity "
                          + rep["quantity"].map("{:,.0f}".format))
    reorders = reorders.sort_values(["customer_id", "overdue_days"], ascending=[True, False], kind="stable")
    top = top_k(p[["customer_id", "product_id", "description", "probability"]], k)
    nxt = top[["customer_id", "rank", "product_id", "description", "probability"]].reset_index(drop=True)
    return reorders.reset_index(drop=True), nxt


def write_category_rhythm(ctx: Context) -> None:
    """Table `category_rhythm` when the products table has categories; a note otherwise."""
    from loyalist.features.timing import category_cycles
    from loyalist.store import has_table

    if not has_table(ctx.store, "products") or ctx.store.table("products").filter(
            ctx.store.table("products").category.notnull()).count().execute() == 0:
        ctx.notes.append("timing: no product categories in the data (load them with `loyalist ingest --kind "
                         "products`), so no rhythm per category")
        return
    cc = category_cycles(ctx.store.table("transactions"), ctx.store.table("products"), ctx.as_of).execute()
    if cc.empty:
        ctx.notes.append("timing: no purchase of a product with a category, so no rhythm per category")
        return
    write_frame(ctx.store, "category_rhythm", category_rhythm(cc, ctx.as_of), replace=True)


@step("timing", 20)
def timing(ctx: Context) -> pd.DataFrame | None:
    """Next-order dates, overdue customers, re-order cycles, rhythm and the contact schedule."""
    from loyalist.evaluation.timing import evaluate

    cfg = ctx.config.get("timing", {}) or {}
    t = ctx.store.table("transactions")
    has_products = t.filter(t.product_id.notnull()).count().execute() > 0
    if not has_products:
        ctx.notes.append("timing: the data has no products, so no re-order cycles or next products")
    horizon = int(cfg.get("product_horizon_days", 30))
    try:
        stack = None
        if "mix" in cfg:
            mix, how = float(cfg["mix"]), f"mix {cfg['mix']} (set in the settings file)"
        else:
            stack = fit_stack(t, ctx.as_of, ctx.fitted.name, has_products, horizon)
            if stack is None:
                mix, how = select_mix(t, ctx.as_of, ctx.fitted.name)
            else:
                mix, how = 1.0, "; ".join(stack.how)
        ctx.notes.append(f"timing: {how}")
        ts = score_all(t, ctx.as_of, ctx.fitted.transaction, mix, horizon, has_products, stack=stack)
    except ValueError as exc:
        ctx.notes.append(f"timing skipped: {exc}")
        return None
    sym = _currency(t)
    cols, schedule = customer_columns(ts, ctx.customers, ctx.as_of, cfg, sym)
    write_frame(ctx.store, "contact_schedule", schedule, replace=True)
    if has_products and not ts.pairs.empty:
        reorders, nxt = reorder_tables(ts, ctx.as_of, int(cfg.get("top_products", 5)))
        write_frame(ctx.store, "reorders", reorders, replace=True)
        write_frame(ctx.store, "next_products", nxt, replace=True)
    write_category_rhythm(ctx)
    if cfg.get("backtest", True):
        cutoff = ctx.as_of - dt.timedelta(days=90)
        try:
            if pd.Timestamp(ts.customers["first_day"].min()).date() > cutoff - dt.timedelta(days=90):
                raise ValueError("less than 90 days of history before the cutoff")
            metrics = evaluate(t, cutoff, (30, 90), end=ctx.as_of, base_name=ctx.fitted.name,
                               product_horizon=horizon, products=has_products,
                               mix=float(cfg["mix"]) if "mix" in cfg else None)
            write_frame(ctx.store, "timing_backtest", metrics.assign(as_of=pd.Timestamp(ctx.as_of)), replace=True)
        except ValueError as exc:
            ctx.notes.append(f"timing backtest skipped at {cutoff}: {exc}")
    return cols[cols["customer_id"].isin(ctx.customers["customer_id"])]
