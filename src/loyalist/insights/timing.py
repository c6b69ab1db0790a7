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
  Mar 2010); 71 days since the last; usual basket £412; ...; value at stake £380 (expected order £400 x P(still
  active))").
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

The step also runs on the Spark engine (`loyalist analyze --engine spark`) with the same answers: the same Ibis
features, fits and numpy scoring code; see `timing_on_spark` for what runs where. What reaches the driver there,
and grows with what: the renewal fits' rows (at most RENEWAL_ROWS customers and PAIR_ROWS pairs, whatever the
data), one row per product / category; and, for the stack (`fit_stack`, global logistic regressions), per-customer
rows: the customer gaps at the five inner origins (about ten numbers per customer and origin, so O(customers))
and the pair regression's training rows (PAIR_FEATURES of the pairs of customers who re-ordered something in
the 30 days after each of two origins: O(re-ordering customers x their products)); the held-out backtest
collects its per-customer rows at the cutoff (AUC and the paired bootstrap need them). Nothing grows with order
lines. Both engines feed the fits the same numbers in the same order (`canonical`), so they agree to the bit on
the fitted parameters.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
from scipy import special

from loyalist.features.summary import SUM_GRID, snap
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


STAT_FLOATS = ("gap_logsum", "spend", "quantity", "amount", "recent_w30", "recent_w90")
"""The engine's floating-point sums in the timing features, snapped (loyalist.features.summary.snap) and put in
key order (`canonical`) before any model sees them."""


def canonical(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Snapped (`snap`) and in key order: what the engine returned, independent of how it computed it."""
    return snap(df, STAT_FLOATS).sort_values(keys, kind="stable").reset_index(drop=True)


def gaps_frame(transactions: ir.Table, as_of: dt.date) -> pd.DataFrame:
    """`customer_gaps` executed, canonical (one row per customer, in customer_id order)."""
    return canonical(customer_gaps(transactions, as_of).execute(), ["customer_id"])


def pairs_frame(transactions: ir.Table, as_of: dt.date) -> pd.DataFrame:
    """`product_cycles` executed, canonical (one row per customer x product, in key order)."""
    return canonical(product_cycles(transactions, as_of).execute(), ["customer_id", "product_id"])


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
    cg0 = gaps_frame(transactions, c0)
    n0, repeat0 = len(cg0), int((cg0["n_gaps"] > 0).sum())
    if n0 < 100 or repeat0 < 30:
        return DEFAULT_MIX, (f"mix {DEFAULT_MIX} (default: choosing it needs 100 customers before {c0}, 30 of them "
                             f"with a repeat order; there are {n0:,}, {repeat0:,} with a repeat order)")
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
    sums = pd.DataFrame({"product_id": pc["product_id"].to_numpy(), "n": n, "L": L}).groupby(
        "product_id", sort=True)[["n", "L"]].sum()
    return pc["product_id"].map(scale_from_sums(sums, prior_gaps)).to_numpy(float)


def scale_from_sums(sums: pd.DataFrame, prior_gaps: float = PRODUCT_PRIOR_GAPS) -> pd.Series:
    """`product_scale` per product from its sums of n_gaps (`n`) and gap_logsum (`L`) over customers (indexed
    by product_id): what an engine aggregates (sums of snapped values are exact, so any engine's are the same)."""
    n_p, L_p = sums["n"].to_numpy(float), sums["L"].to_numpy(float)
    mu = L_p.sum() / max(n_p.sum(), 1.0)
    log_m = (L_p + prior_gaps * mu) / (n_p + prior_gaps)
    return pd.Series(np.exp(log_m - mu), index=sums.index)


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
        cg = gaps_frame(transactions, as_of)
    if cg.empty:
        raise ValueError(f"no customer bought anything before {as_of}")
    cm = fit_customer_model(cg)
    cust = cg.merge(score_customers(cm, cg, base_model, mix, stack=stack), on="customer_id")
    pairs, pm = pd.DataFrame(), None
    if with_products:
        if pc is None:
            pc = pairs_frame(transactions, as_of)
        if len(pc) >= 10 and (pc["n_gaps"] > 0).sum() >= 5:
            pm = fit_pair_model(pc)
            sp = score_pairs(pm, pc, product_horizon)
            if stack is not None and stack.pair is not None:
                sp["probability"] = stacked_pair_probability(stack, cm, cg, pc, sp, product_horizon,
                                                             cust.set_index("customer_id").get(
                                                                 f"prob_order_{product_horizon}d"))
            pairs = pc.merge(sp, on=["customer_id", "product_id"])
    return TimingScores(cust, pairs, cm, pm)


def own_prob(cm: GammaRenewal, cg: pd.DataFrame, horizon: int) -> pd.Series:
    """The renewal model's own P(order within `horizon`) per customer (indexed by customer_id)."""
    return pd.Series(cm.prob_order_within(horizon, cg["n_gaps"].to_numpy(float), cg["gap_sum"].to_numpy(float),
                                          np.maximum(cg["elapsed"].to_numpy(float) - HALF_DAY, 0.0)),
                     index=cg["customer_id"].to_numpy())


def stacked_pair_probability(stack: Stack, cm: GammaRenewal | None, cg: pd.DataFrame | None, pc: pd.DataFrame,
                             sp: pd.DataFrame, horizon: int, p_customer: pd.Series | None = None,
                             own: pd.Series | None = None, buyers: np.ndarray | None = None) -> np.ndarray:
    """P(the customer orders the product within `horizon`) = P(the customer orders within it) x the stack's
    P(this product | the customer re-orders something) (the pair regression is fitted on customers who do).
    `own` (`own_prob`) and `buyers` (see `pair_matrix`) may be given instead of being computed from cm, cg, pc."""
    own = own_prob(cm, cg, horizon) if own is None else own
    cond = stack.pair.predict_proba(pair_matrix(pc, sp, own, buyers))[:, 1]
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
    m = None
    if len(cc) >= 10 and rep.sum() >= 5:
        m = GammaRenewal(max_rows=30_000, seed=seed).fit(n, S, cc["gap_logsum"].to_numpy(float),
                                                         np.maximum(cc["elapsed"].to_numpy(float) - HALF_DAY, 0.0),
                                                         scale)
    cycle = _category_cycle(cc, m, scale)  # without m (too few repeat purchases): the customer's own mean gap
    med = pd.Series(cycle).groupby(cc["category"].to_numpy()).transform("median").to_numpy(float)
    return _category_block(cc, cycle, med, as_of)


def _category_cycle(cc: pd.DataFrame, m: GammaRenewal | None, scale: np.ndarray) -> np.ndarray:
    """category_rhythm's cycle per row: the fitted model's (None: the customer's own mean gap); NaN if bought once."""
    rep = cc["n_gaps"].to_numpy(float) > 0
    n, S = cc["n_gaps"].to_numpy(float), cc["gap_sum"].to_numpy(float)
    if m is not None:
        cycle = m.cycle(n, S, scale)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            cycle = np.where(rep, S / np.maximum(n, 1), np.nan)
    return np.where(rep, cycle, np.nan)


def _category_block(cc: pd.DataFrame, cycle: np.ndarray, med: np.ndarray, as_of: dt.date) -> pd.DataFrame:
    """category_rhythm's rows of any set of rows `cc`, given their cycles and their category's median cycle."""
    rep = cc["n_gaps"].to_numpy(float) > 0
    n, S = cc["n_gaps"].to_numpy(float), cc["gap_sum"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = S / n
        cv = np.sqrt(np.maximum(cc["gap_sqsum"].to_numpy(float) / n - mean ** 2, 0.0)) / mean
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


def product_buyers(pc: pd.DataFrame) -> np.ndarray:
    """Per pair: how many customers bought its product in the last 90 days (all pairs of `pc`)."""
    return (pc["elapsed"] < 90).groupby(pc["product_id"]).transform("sum").to_numpy(float)


def pair_matrix(pc: pd.DataFrame, pair_scores: pd.DataFrame, customer_p: pd.Series,
                buyers: np.ndarray | None = None) -> np.ndarray:
    """Features for the stacked next-product ranking (PAIR_FEATURES). `customer_p`: P(the customer orders
    within the product horizon), indexed by customer_id. `buyers`: `product_buyers` over all pairs (computed
    from `pc` when not given: then `pc` must hold every pair). Every other feature is within one customer's
    pairs, so any set of whole customers can be scored on its own."""
    e = pc["elapsed"].to_numpy(float)
    cyc = pair_scores["cycle_days"].to_numpy(float)
    buyers = product_buyers(pc) if buyers is None else np.asarray(buyers, dtype=float)
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
              product_horizon: int = 30, horizons: tuple[int, ...] = HORIZONS, spark=None) -> Stack | None:
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

    None when the history before as_of is too short for any inner origin. `spark`: the Spark engine's source
    (`loyalist.engine.spark.SparkSource`): the pairs then stay on Spark (`_spark_pair_rows`) and only the
    training rows of the pair regression reach the driver."""
    from loyalist.customer_base import fit_base
    from loyalist.features.timing import products_bought

    first = transactions.filter(transactions.customer_id.notnull()).order_date.min().execute()
    first = pd.Timestamp(first).date()
    fits: dict = {}

    def at(o: dt.date):
        if o not in fits:
            cg = gaps_frame(transactions, o)
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
        if not pos.any():  # no one ordered in the latest window (as_of after the data): the renewal median alone
            weights[h] = 1.0
            continue
        try:
            pareto = fit_base(base_summary(cg), "paretonbd").transaction
            err = [np.mean(np.abs(point_days(cm, pareto, cg, h, w) - tn)[pos]) for w in MEDIAN_WEIGHTS]
            weights[h] = float(MEDIAN_WEIGHTS[int(np.nanargmin(err))])
        except Exception:  # Pareto/NBD did not fit: the renewal median alone
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
    if np.isfinite(cov).any():
        level = float(LEVEL_GRID[int(np.nanargmin(np.abs(cov - 0.8)))])
        calibrated = f"calibrated on the orders of {o} to {as_of}"
    else:
        level = 0.1
        calibrated = f"not calibrated: no customer's interval could be checked on the orders of {o} to {as_of}"
    # no square brackets: the command line prints notes as rich markup, where "[q(0.1), ...]" is a tag and vanished
    how.append(f"80% interval = quantiles {level:.2f} to {1 - level:.2f} of the next-order law ({calibrated})")
    pair = None
    if with_products:
        Xs, ys = [], []
        for j in (1, 2):
            o = as_of - dt.timedelta(days=product_horizon * j)
            if not ok(o):
                break
            if spark is not None:
                cg, cm, _, _ = at(o)
                got = _spark_pair_rows(spark, transactions, o, product_horizon, own_prob(cm, cg, product_horizon))
                if got is None:
                    break
                if len(got[1]):
                    Xs.append(got[0])
                    ys.append(got[1])
                continue
            pc = pairs_frame(transactions, o)
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


def _count(x: pd.Series, word: str) -> pd.Series:
    """'1 day', '35 days': x rounded to a whole number of `word`s."""
    n = x.round().astype("Int64")
    return n.astype(str) + " " + word + np.where((n == 1).fillna(False).to_numpy(bool), "", "s")


def _money(x: pd.Series, sym: str) -> pd.Series:
    return sym + x.map("{:,.0f}".format).astype(str)  # astype: an empty map is float64, and str + float fails


def customer_columns(ts: TimingScores, customers: pd.DataFrame, as_of: dt.date, cfg: dict, sym: str
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The per-customer timing columns and the contact schedule (see the module docstring)."""
    c = ts.customers.merge(customers[[x for x in ("customer_id", "expected_order_value", "clv_12m")
                                      if x in customers]], on="customer_id", how="left")
    return customer_block(c, as_of, cfg, sym, column_globals(c, cfg))


def _contact_value(c: pd.DataFrame, vcol: str | None) -> np.ndarray:
    """The value that picks the customers for the contact schedule: clv_12m (`vcol`), else the usual basket."""
    if vcol:
        return c[vcol].to_numpy(float)
    basket = c["spend"] / c["occasions"]
    value = c["expected_order_value"].fillna(basket) if "expected_order_value" in c else basket
    return value.to_numpy(float)


@dataclass
class ColumnGlobals:
    """What `customer_block` needs from the whole population: the long-cycle threshold (the median cycle of
    repeat customers unless set), which value picks the contacts and its `contact_value_quantile`."""

    long_days: float
    vcol: str | None
    v_min: float


def column_globals(c: pd.DataFrame, cfg: dict) -> ColumnGlobals:
    n, cycle = c["n_gaps"].to_numpy(float), c["cycle_days"].to_numpy(float)
    long_days = float(cfg.get("long_cycle_days", np.nanmedian(cycle[n > 0]) if (n > 0).any() else np.inf))
    vcol = "clv_12m" if "clv_12m" in c and c["clv_12m"].notna().any() else None
    v = _contact_value(c, vcol)
    vq = float(cfg.get("contact_value_quantile", 0.75))
    return ColumnGlobals(long_days, vcol, float(np.nanquantile(v, vq)) if np.isfinite(v).any() else np.inf)


def customer_block(c: pd.DataFrame, as_of: dt.date, cfg: dict, sym: str, g: ColumnGlobals
                   ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`customer_columns` of any set of customers `c` (scored customers joined with expected_order_value and
    clv_12m), given the population's `column_globals`: every row depends on its own customer only."""
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
    reason = ("Orders every ~" + _count(c["cycle_days"], "day") + " (" + _count(c["occasions"], "order") + " since "
              + first.dt.strftime("%b %Y") + "); " + _count(c["elapsed"], "day") + " since the last; usual basket "
              + _money(basket, sym) + "; a gap this long happens " + (100 * c["tail_prob"]).map("{:.1f}".format)
              + "% of the time for an active customer; P(still active) "
              + (100 * c["p_alive_timing"]).map("{:.0f}".format) + "%; value at stake "
              + _money(pd.Series(out["overdue_score"].to_numpy(), index=c.index), sym) + " (expected order "
              + _money(value, sym) + " x P(still active))")
    out["overdue_reason"] = reason.where(flagged, None).to_numpy()
    out["cycle_days"] = np.where(n > 0, cycle, np.nan)
    out["cycle_regularity"] = c["cycle_regularity"].to_numpy(float)
    long_days = g.long_days
    out["cycle_class"] = pd.Series(np.where(cycle > long_days, "long", "short")).where(n > 0, None).to_numpy()
    # Contact between purchases: high-value long-cycle customers who are likely still active.
    vcol = g.vcol
    v = _contact_value(c, vcol)
    high = np.isfinite(v) & (v >= g.v_min)
    pick = high & (out["cycle_class"].to_numpy() == "long") & (c["p_alive_timing"].to_numpy(float) >= 0.5)
    last = pd.to_datetime(c["last_day"])
    sched = []
    for frac, label in ((1 / 3, "one third"), (2 / 3, "two thirds")):
        when = (last + _days(np.round(frac * cycle))).dt.normalize()
        keep = pick & (when >= now).to_numpy()
        sched.append(pd.DataFrame({
            "customer_id": c["customer_id"][keep], "contact_date": when[keep],
            "reason": ("Long-cycle customer: orders every ~" + _count(c["cycle_days"][keep], "day") + ", last on "
                       + last[keep].dt.strftime("%d %b %Y") + "; " + ("12-month value " if vcol else "usual basket ")
                       + _money(pd.Series(v[keep], index=c.index[keep]), sym) + "; a non-sales contact at " + label
                       + " of the cycle")}))
    # Past two thirds but not yet due: contact now.
    two = (last + _days(np.round(2 / 3 * cycle))).dt.normalize()
    late = pick & (two < now).to_numpy() & (el < cycle)
    sched.append(pd.DataFrame({
        "customer_id": c["customer_id"][late], "contact_date": now,
        "reason": ("Long-cycle customer: orders every ~" + _count(c["cycle_days"][late], "day") + "; "
                   + _count(c["elapsed"][late], "day") + " since the last, two thirds of the cycle passed: "
                   "a non-sales contact now")}))
    schedule = pd.concat(sched, ignore_index=True).sort_values(["customer_id", "contact_date"], kind="stable")
    schedule["contact_date"] = pd.to_datetime(schedule["contact_date"])
    due = schedule.groupby("customer_id")["contact_date"].min()
    out["contact_due_date"] = out["customer_id"].map(due).to_numpy()
    out["contact_due_date"] = pd.to_datetime(out["contact_due_date"])
    return out, schedule.reset_index(drop=True)


def reorder_tables(ts: TimingScores, as_of: dt.date, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`reorders` (pairs bought on >= 2 days) and `next_products` (top k per customer)."""
    return reorder_tables_from(ts.pairs, as_of, k)


def reorder_tables_from(p: pd.DataFrame, as_of: dt.date, k: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`reorder_tables` of the scored pairs `p` (product_cycles joined with score_pairs) of any set of whole
    customers (every row depends on its customer's pairs only)."""
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
                          + _count(rep["cycle_days"], "day") + " (" + _count(rep["occasions"], "time") + " since "
                          + pd.to_datetime(rep["first_day"]).dt.strftime("%b %Y") + "); "
                          + _count(rep["elapsed"], "day") + " since the last; usual quantity "
                          + rep["quantity"].map("{:,.0f}".format))
    reorders = reorders.sort_values(["customer_id", "overdue_days"], ascending=[True, False], kind="stable")
    top = top_k(p[["customer_id", "product_id", "description", "probability"]], k)
    nxt = top[["customer_id", "rank", "product_id", "description", "probability"]].reset_index(drop=True)
    return reorders.reset_index(drop=True), nxt


NO_CATEGORIES = ("timing: no product categories in the data (load them with `loyalist ingest --kind products`), "
                 "so no rhythm per category")


def write_category_rhythm(ctx: Context) -> None:
    """Table `category_rhythm` when the products table has categories; a note otherwise."""
    from loyalist.features.timing import category_cycles
    from loyalist.store import has_table

    if not has_table(ctx.store, "products") or ctx.store.table("products").filter(
            ctx.store.table("products").category.notnull()).count().execute() == 0:
        ctx.notes.append(NO_CATEGORIES)
        return
    cc = canonical(category_cycles(ctx.store.table("transactions"), ctx.store.table("products"), ctx.as_of).execute(),
                   ["customer_id", "category"])
    if cc.empty:
        ctx.notes.append("timing: no purchase of a product with a category, so no rhythm per category")
        return
    write_frame(ctx.store, "category_rhythm", category_rhythm(cc, ctx.as_of), replace=True)


def check_backtest_window(transactions: ir.Table, first_day, cutoff: dt.date, as_of: dt.date) -> None:
    """The step's held-out check at `cutoff` needs 90 days of history before it and the data up to `as_of`
    (ValueError: why not)."""
    if pd.Timestamp(first_day).date() > cutoff - dt.timedelta(days=90):
        raise ValueError("less than 90 days of history before the cutoff")
    last = pd.Timestamp(transactions.order_date.max().execute()).date()
    if last < as_of - dt.timedelta(days=1):
        raise ValueError(f"it needs the {(as_of - cutoff).days} days to {as_of}, and the data ends {last}")


@step("timing", 20, spark=True)
def timing(ctx: Context) -> pd.DataFrame | ir.Table | None:
    """Next-order dates, overdue customers, re-order cycles, rhythm and the contact schedule. On the Spark
    engine (`ctx.store` a SparkSource) the same fits at the driver and `timing_on_spark` for the scoring."""
    from loyalist.evaluation.timing import evaluate

    spark = ctx.store if hasattr(ctx.store, "write_result") else None
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
            stack = fit_stack(t, ctx.as_of, ctx.fitted.name, has_products, horizon, spark=spark)
            if stack is None:
                mix, how = select_mix(t, ctx.as_of, ctx.fitted.name)
            else:
                mix, how = 1.0, "; ".join(stack.how)
        ctx.notes.append(f"timing: {how}")
        if spark is not None:
            return _finish_on_spark(ctx, cfg, stack, mix, horizon, has_products)
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
    if has_products:
        write_category_rhythm(ctx)
    if cfg.get("backtest", True):
        cutoff = ctx.as_of - dt.timedelta(days=90)
        try:
            check_backtest_window(t, ts.customers["first_day"].min(), cutoff, ctx.as_of)
            metrics = evaluate(t, cutoff, (30, 90), end=ctx.as_of, base_name=ctx.fitted.name,
                               product_horizon=horizon, products=has_products,
                               mix=float(cfg["mix"]) if "mix" in cfg else None)
            write_frame(ctx.store, "timing_backtest", metrics.assign(as_of=pd.Timestamp(ctx.as_of)), replace=True)
        except ValueError as exc:
            ctx.notes.append(f"timing backtest skipped at {cutoff}: {exc}")
    return cols[cols["customer_id"].isin(ctx.customers["customer_id"])]


# ------------------------------------------------------------------------------------ on the Spark engine
RENEWAL_ROWS = 200_000
"""GammaRenewal's default max_rows: the customer renewal model is fitted on at most this many customers."""
PAIR_ROWS = 30_000
"""fit_pair_model's max_rows."""
STAT_COLUMNS = ["n_gaps", "gap_sum", "gap_logsum", "elapsed"]


def _sdf(source, expr: ir.Table):
    """An Ibis expression on the Spark engine's backend as a Spark DataFrame (nothing is collected)."""
    con = source.ibis
    return con._session.sql(con.compile(expr))


def _snap_col(name: str):
    """`snap` as a Spark column expression (the same IEEE operations: x / 2^-24 + 0.5, floor, x 2^-24)."""
    from pyspark.sql import functions as F

    return (F.floor(F.col(name) / SUM_GRID + 0.5) * SUM_GRID).alias(name)


def _spark_fit_rows(sdf, keys: list[str], max_rows: int, seed: int = 0) -> pd.DataFrame:
    """The rows `GammaRenewal(max_rows, seed).fit` uses of all rows of `sdf` in key order (the order `canonical`
    gives them on DuckDB): all rows when there are at most `max_rows`, else its seeded subset, in the subset's
    order. Only those rows (keys and STAT_COLUMNS) reach the driver: at most `max_rows`, whatever the data."""
    sel = sdf.select(*keys, *STAT_COLUMNS)
    total = sel.count()
    if total <= max_rows:
        return canonical(sel.toPandas(), keys)
    idx = np.random.default_rng(seed).choice(total, max_rows, replace=False)  # as GammaRenewal.fit draws it
    want = sdf.sparkSession.sparkContext.broadcast(frozenset(int(i) for i in idx))
    picked = (sel.orderBy(*keys).rdd.zipWithIndex().filter(lambda r: r[1] in want.value)
              .map(lambda r: (*r[0], r[1])).collect())
    df = pd.DataFrame(picked, columns=[*keys, *STAT_COLUMNS, "_i"])
    pos = pd.Series(np.arange(len(idx)), index=idx)
    df = snap(df, STAT_FLOATS).assign(_pos=df["_i"].map(pos).to_numpy())
    return df.sort_values("_pos").drop(columns=["_i", "_pos"]).reset_index(drop=True)


def _fit_rows_model(rows: pd.DataFrame, scale=None, seed: int = 0) -> GammaRenewal:
    """GammaRenewal fitted on `_spark_fit_rows` (already the subset: the same fit as with max_rows on all)."""
    return GammaRenewal(max_rows=None, seed=seed).fit(
        rows["n_gaps"].to_numpy(float), rows["gap_sum"].to_numpy(float), rows["gap_logsum"].to_numpy(float),
        np.maximum(rows["elapsed"].to_numpy(float) - HALF_DAY, 0.0), scale)


def _spark_product_sums(pc_sdf, key: str = "product_id") -> pd.DataFrame:
    """Per product (indexed by product_id, sorted): n (sum of n_gaps), L (sum of snapped gap_logsum), S (sum
    of gap_sum), buyers (pairs bought in the last 90 days). One row per product reaches the driver."""
    from pyspark.sql import functions as F

    g = pc_sdf.select(key, "n_gaps", "gap_sum", "elapsed", _snap_col("gap_logsum")).groupBy(
        key).agg(F.sum(F.col("n_gaps").cast("double")).alias("n"), F.sum("gap_logsum").alias("L"),
                          F.sum("gap_sum").alias("S"),
                          F.sum((F.col("elapsed") < 90).cast("double")).alias("buyers")).toPandas()
    return g.set_index(key).sort_index()


def _products_frame(session, sums: pd.DataFrame, scale: pd.Series):
    """Per product scale and buyers as a (small) Spark DataFrame, to join onto the pairs."""
    from pyspark.sql import functions as F

    pdf = pd.DataFrame({"product_id": sums.index.to_numpy(), "scale": scale.reindex(sums.index).to_numpy(float),
                        "buyers": sums["buyers"].to_numpy(float), "pooled": (sums["S"] / sums["n"]).to_numpy(float)})
    return F.broadcast(session.createDataFrame(pdf, "product_id string, scale double, buyers double, pooled double"))


def _customer_frame(session, values: pd.Series, name: str):
    """Per-customer values held at the driver (inner origins only) as a Spark DataFrame."""
    return session.createDataFrame(pd.DataFrame({"customer_id": values.index.to_numpy(),
                                                 name: values.to_numpy(float)}), f"customer_id string, {name} double")


def _pair_model_on_spark(pc_sdf, max_rows: int) -> tuple[GammaRenewal, pd.DataFrame, pd.Series] | None:
    """fit_pair_model on Spark: (the model, the product sums, the product scale), or None when too few pairs."""
    from pyspark.sql import functions as F

    total = pc_sdf.count()
    if total < 10 or pc_sdf.filter(F.col("n_gaps") > 0).count() < 5:
        return None
    sums = _spark_product_sums(pc_sdf)
    scale = scale_from_sums(sums)
    rows = _spark_fit_rows(pc_sdf, ["customer_id", "product_id"], max_rows)
    return _fit_rows_model(rows, rows["product_id"].map(scale).to_numpy(float)), sums, scale


PAIR_STAT_DDL = ("customer_id string, product_id string, occasions bigint, n_gaps double, gap_sum double, "
                 "gap_logsum double, elapsed double, recent_w30 double, recent_w90 double, quantity double")


def _spark_pair_rows(source, transactions: ir.Table, o: dt.date, horizon: int, own: pd.Series
                     ) -> tuple[np.ndarray, np.ndarray] | None:
    """The pair regression's training rows at origin `o` (fit_stack's inner loop) with the pairs on Spark:
    PAIR_FEATURES of the pairs of customers who re-ordered something in [o, o + horizon) and the labels,
    in key order. None when there are too few pairs (fit_stack stops). `own`: the customers' own
    P(order within horizon) at o (held at the driver for the stack's customer rows)."""
    from pyspark.sql import functions as F

    from loyalist.features.timing import products_bought

    session = source.ibis._session
    keys = ["customer_id", "product_id"]
    pc = source.keep(_sdf(source, product_cycles(transactions, o)))
    fitted = _pair_model_on_spark(pc, INNER_PAIR_ROWS)
    if fitted is None:
        return None
    model, sums, scale = fitted
    later = _sdf(source, products_bought(transactions, o, o + dt.timedelta(days=horizon))).withColumn("y", F.lit(1.0))
    lab = pc.join(later, keys, "left").fillna({"y": 0.0})
    keep = lab.groupBy("customer_id").agg(F.max("y").alias("_any")).filter(F.col("_any") > 0).select("customer_id")
    rows = (lab.join(keep, "customer_id", "left_semi")
            .select(*[c.split()[0] for c in PAIR_STAT_DDL.split(", ")], "y")
            .join(_products_frame(session, sums, scale), "product_id", "left")
            .join(_customer_frame(session, own, "own_p"), "customer_id", "left"))
    cols = list(PAIR_FEATURES)

    def features(b: pd.DataFrame) -> pd.DataFrame:
        b = snap(b, STAT_FLOATS).sort_values("product_id", kind="stable").reset_index(drop=True)
        sp = score_pairs(PairModel(model, b["scale"].to_numpy(float)), b, horizon)
        own_b = pd.Series(b["own_p"].to_numpy(float)[:1], index=b["customer_id"].to_numpy()[:1])
        X = pair_matrix(b, sp, own_b, b["buyers"].to_numpy(float))
        return pd.concat([b[keys], pd.DataFrame(X, columns=cols), b[["y"]]], axis=1)

    ddl = "customer_id string, product_id string, " + ", ".join(f"{c} double" for c in cols) + ", y double"
    got = canonical(rows.groupBy("customer_id").applyInPandas(features, ddl).toPandas(), keys)
    return got[cols].to_numpy(float), got["y"].to_numpy(float) > 0


def _spark_evaluate_products(source, transactions: ir.Table, cutoff: dt.date, h: int, k: int, stack, cm, cg
                             ) -> list[dict]:
    """loyalist.evaluation.timing._evaluate_products with the pairs on Spark: each customer's top k per method
    and hits are computed per customer on the executors; one row per judged customer reaches the driver."""
    from pyspark.sql import functions as F

    from loyalist.evaluation.timing import PRODUCT_BASELINES, _rule_scores
    from loyalist.features.timing import products_bought

    session = source.ibis._session
    keys = ["customer_id", "product_id"]
    pc = source.keep(_sdf(source, product_cycles(transactions, cutoff)))
    fitted = _pair_model_on_spark(pc, PAIR_ROWS)
    if fitted is None:
        return []
    model, sums, scale = fitted
    fallback_all = float(sums["S"].sum() / max(sums["n"].sum(), 1))
    use_stack = stack is not None and stack.pair is not None
    later = _sdf(source, products_bought(transactions, cutoff, cutoff + dt.timedelta(days=h))).withColumn(
        "relevant", F.lit(1.0))
    rows = (pc.select(*[c.split()[0] for c in PAIR_STAT_DDL.split(", ")], "last_gap")
            .join(later, keys, "left").fillna({"relevant": 0.0})
            .join(_products_frame(session, sums, scale), "product_id", "left"))
    if use_stack:
        rows = rows.join(_customer_frame(session, own_prob(cm, cg, h), "own_p"), "customer_id", "left")
    methods = ("loyalist", *PRODUCT_BASELINES)

    def hits(b: pd.DataFrame) -> pd.DataFrame:
        b = snap(b, STAT_FLOATS).sort_values("product_id", kind="stable").reset_index(drop=True)
        rel = b["relevant"].to_numpy(float) > 0
        if not rel.any():
            return pd.DataFrame(columns=["customer_id", "n_rel", *methods])
        sp = score_pairs(PairModel(model, b["scale"].to_numpy(float)), b, h)
        if use_stack:
            own = pd.Series(b["own_p"].to_numpy(float)[:1], index=b["customer_id"].to_numpy()[:1])
            sp["probability"] = stacked_pair_probability(stack, None, None, b, sp, h, own=own,
                                                         buyers=b["buyers"].to_numpy(float))
        n, S, el = (b[c].to_numpy(float) for c in ("n_gaps", "gap_sum", "elapsed"))
        pooled = b["pooled"].to_numpy(float)
        fallback = np.where(np.isfinite(pooled), pooled, fallback_all)
        scored = b[keys].assign(loyalist=sp["probability"].to_numpy(), relevant=rel)
        scored["most_frequent"] = n + 1 - 1e-6 * el
        scored["mean_interval"] = _rule_scores(np.where(n > 0, S / np.maximum(n, 1), fallback), el, h)[0]
        last_gap = b["last_gap"].to_numpy(float)
        scored["last_interval"] = _rule_scores(np.where(n > 0, np.nan_to_num(last_gap, nan=fallback), fallback),
                                               el, h)[0]
        row = {"customer_id": b["customer_id"].iloc[0], "n_rel": float(rel.sum())}
        for m in methods:
            top = top_k(scored[["customer_id", "product_id", m, "relevant"]], k, m)
            row[m] = float(top["relevant"].sum())
        return pd.DataFrame([row])

    ddl = "customer_id string, n_rel double, " + ", ".join(f"`{m}` double" for m in methods)
    judged = (rows.groupBy("customer_id").applyInPandas(hits, ddl).toPandas()
              .sort_values("customer_id", kind="stable").reset_index(drop=True))
    out = []
    for m in methods:
        hit = pd.Series(judged[m].to_numpy(float))
        n_rel = pd.Series(judged["n_rel"].to_numpy(float))
        out.append({"cutoff": pd.Timestamp(cutoff), "horizon_days": h, "task": "next_products", "method": m,
                    "customers": len(judged), "positives": int(n_rel.sum()),
                    "precision_at_5": float((hit / k).mean()), "recall_at_5": float((hit / n_rel).mean())})
    return out


SCORED_DDL = {"customer_id": "string", "occasions": "bigint", "first_day": "date", "last_day": "date",
              "n_gaps": "double", "gap_sum": "double", "elapsed": "double", "spend": "double",
              "expected_order_value": "double", "clv_12m": "double", "p_alive_timing": "double",
              "days_p10": "double", "days_p50": "double", "days_p90": "double", "tail_prob": "double",
              "cycle_days": "double", "cycle_regularity": "double", "own_p": "double"}
COLUMNS_DDL = ("customer_id string, next_order_date timestamp_ntz, next_order_p10 timestamp_ntz, "
               "next_order_p90 timestamp_ntz, prob_order_30d double, prob_order_60d double, overdue_days bigint, "
               "overdue_score double, overdue_reason string, cycle_days double, cycle_regularity double, "
               "cycle_class string, contact_due_date timestamp_ntz")
SCHEDULE_DDL = "customer_id string, contact_date timestamp_ntz, reason string"
REORDERS = ["customer_id", "product_id", "description", "times_bought", "cycle_days", "last_bought",
            "next_reorder_date", "expected_quantity", "overdue_days", "reason"]
NEXT_PRODUCTS = ["customer_id", "rank", "product_id", "description", "probability"]
PAIRS_OUT_DDL = ("kind string, customer_id string, product_id string, description string, times_bought bigint, "
                 "cycle_days double, last_bought timestamp_ntz, next_reorder_date timestamp_ntz, "
                 "expected_quantity double, overdue_days bigint, reason string, rank bigint, probability double")


def _ddl(cols: dict) -> str:
    return ", ".join(f"{c} {t}" for c, t in cols.items())


def _percentile(sdf, column: str, q: float, where=None) -> float | None:
    """Exact percentile (linear interpolation, as numpy's) of the non-null, non-NaN values, on Spark."""
    from pyspark.sql import functions as F

    f = sdf.filter(F.col(column).isNotNull() & ~F.isnan(column))
    if where is not None:
        f = f.filter(where)
    v = f.agg(F.percentile(column, F.lit(q)).alias("v")).collect()[0]["v"]
    return None if v is None else float(v)


def timing_on_spark(ctx: Context, cfg: dict, stack: Stack | None, mix: float, horizon: int,
                    has_products: bool) -> ir.Table | None:
    """The step's scoring on the Spark engine (`ctx.store` is a SparkSource), with the same functions as on
    DuckDB:

    - executors: the features (customer_gaps, product_cycles: the same Ibis expressions), the scoring of every
      customer (`score_customers` then `customer_block`, mapInPandas) and of every customer x product
      (`score_pairs`, `stacked_pair_probability`, `reorder_tables_from`, applyInPandas grouped by customer),
      the contact schedule, reorders and next_products (written by the executors, never collected);
    - driver: the renewal fits on at most RENEWAL_ROWS customers / PAIR_ROWS pairs (the seeded subset
      GammaRenewal draws, picked on Spark by rank in key order), one row per product (pooled cycles, buyers),
      two exact percentiles (the long-cycle threshold and the contact-value quantile).
    Returns the per-customer columns as an Ibis table on Spark (None when no one bought before as_of)."""
    from pyspark.sql import functions as F

    source, as_of = ctx.store, ctx.as_of
    con = source.ibis
    t = source.table("transactions")
    cg_sdf = source.keep(_sdf(source, customer_gaps(t, as_of)))
    if cg_sdf.limit(1).count() == 0:
        ctx.notes.append(f"timing skipped: no customer bought anything before {as_of}")
        return None
    cm = _fit_rows_model(_spark_fit_rows(cg_sdf, ["customer_id"], RENEWAL_ROWS))
    have = [c for c in ("expected_order_value", "clv_12m") if c in ctx.customers.columns]
    values = _sdf(source, ctx.customers.select("customer_id", *have))
    base, sym = ctx.fitted.transaction, _currency(t)
    hs = HORIZONS  # as score_all
    ddl = {**SCORED_DDL, **{f"prob_order_{h}d": "double" for h in hs}}

    def score(batches):
        for b in batches:
            if b.empty:
                continue
            b = snap(b, STAT_FLOATS).reset_index(drop=True)
            for c in ("expected_order_value", "clv_12m"):
                if c not in b:
                    b[c] = np.nan
            sc = score_customers(cm, b, base, mix, hs, stack=stack)
            c = b.merge(sc, on="customer_id")
            c["own_p"] = own_prob(cm, b, horizon).to_numpy()
            yield c[list(ddl)].astype({"occasions": "int64"})

    scored = source.keep(cg_sdf.join(values, "customer_id", "left").mapInPandas(score, _ddl(ddl)))
    long_days = cfg.get("long_cycle_days")
    if long_days is None:
        long_days = _percentile(scored, "cycle_days", 0.5, F.col("n_gaps") > 0)
    vcol = ("clv_12m" if "clv_12m" in have
            and scored.filter(F.col("clv_12m").isNotNull() & ~F.isnan("clv_12m")).limit(1).count() else None)
    if vcol:
        vsdf = scored.select(F.col("clv_12m").alias("v"))
    else:
        basket = F.col("spend") / F.col("occasions")
        eov = F.col("expected_order_value")
        vsdf = scored.select(F.when(eov.isNull() | F.isnan(eov), basket).otherwise(eov).alias("v"))
    v_min = _percentile(vsdf, "v", float(cfg.get("contact_value_quantile", 0.75)))
    g = ColumnGlobals(np.inf if long_days is None else float(long_days), vcol, np.inf if v_min is None else v_min)

    def block(which: int):
        def run(batches):
            for b in batches:
                if b.empty:
                    continue
                b["first_day"] = pd.to_datetime(b["first_day"])
                b["last_day"] = pd.to_datetime(b["last_day"])
                out = customer_block(b, as_of, cfg, sym, g)[which]
                if len(out):
                    yield out
        return run

    cols = source.keep(scored.mapInPandas(block(0), COLUMNS_DDL))
    source.write_result("contact_schedule", scored.mapInPandas(block(1), SCHEDULE_DDL))
    if has_products:
        _pairs_on_spark(ctx, t, scored, stack, horizon, int(cfg.get("top_products", 5)))
    view = f"loyalist_timing_{abs(hash((str(as_of), id(cols)))) % 10**8}"
    cols.createOrReplaceTempView(view)
    return con.table(view)


def _pairs_on_spark(ctx: Context, t: ir.Table, scored, stack: Stack | None, horizon: int, k: int) -> None:
    """reorders and next_products on Spark (see `timing_on_spark`)."""
    from pyspark.sql import functions as F

    source, as_of = ctx.store, ctx.as_of
    session = source.ibis._session
    pc = source.keep(_sdf(source, product_cycles(t, as_of)))
    fitted = _pair_model_on_spark(pc, PAIR_ROWS)
    if fitted is None:
        return
    model, sums, scale = fitted
    use_stack = stack is not None and stack.pair is not None
    rows = (pc.join(_products_frame(session, sums, scale), "product_id", "left")
            .join(scored.select("customer_id", "own_p", F.col(
                f"prob_order_{horizon}d" if horizon in HORIZONS else "own_p").alias("p_customer")),
                  "customer_id", "left"))
    extra = ["scale", "buyers", "pooled", "own_p", "p_customer"]

    def pairs(b: pd.DataFrame) -> pd.DataFrame:
        b = snap(b, STAT_FLOATS).sort_values("product_id", kind="stable").reset_index(drop=True)
        sp = score_pairs(PairModel(model, b["scale"].to_numpy(float)), b, horizon)
        if use_stack:
            cid = b["customer_id"].to_numpy()[:1]
            sp["probability"] = stacked_pair_probability(
                stack, None, None, b, sp, horizon, p_customer=pd.Series(b["p_customer"].to_numpy(float)[:1], cid),
                own=pd.Series(b["own_p"].to_numpy(float)[:1], cid), buyers=b["buyers"].to_numpy(float))
        p = b.drop(columns=extra).merge(sp, on=["customer_id", "product_id"])
        p["first_day"] = pd.to_datetime(p["first_day"])
        p["last_day"] = pd.to_datetime(p["last_day"])
        reorders, nxt = reorder_tables_from(p, as_of, k)
        out = pd.concat([reorders.assign(kind="reorders"), nxt.assign(kind="next_products")], ignore_index=True)
        for c in ("times_bought", "overdue_days", "rank"):
            out[c] = out[c].astype("Int64") if c in out else pd.array([pd.NA] * len(out), "Int64")
        for c in ("last_bought", "next_reorder_date"):
            out[c] = pd.to_datetime(out[c]) if c in out else pd.NaT
        for c in PAIRS_OUT_DDL.split(", "):
            name = c.split()[0]
            if name not in out:
                out[name] = None
        return out[[c.split()[0] for c in PAIRS_OUT_DDL.split(", ")]]

    both = source.keep(rows.groupBy("customer_id").applyInPandas(pairs, PAIRS_OUT_DDL))
    source.write_result("reorders", both.filter(F.col("kind") == "reorders").select(*REORDERS))
    source.write_result("next_products", both.filter(F.col("kind") == "next_products").select(*NEXT_PRODUCTS))


def _finish_on_spark(ctx: Context, cfg: dict, stack: Stack | None, mix: float, horizon: int,
                     has_products: bool) -> ir.Table | None:
    """The rest of the step on the Spark engine: scoring (`timing_on_spark`), category rhythm, backtest."""
    from pyspark.sql import functions as F

    from loyalist.evaluation.timing import evaluate

    source = ctx.store
    t = source.table("transactions")
    added = timing_on_spark(ctx, cfg, stack, mix, horizon, has_products)
    if added is None:
        return None
    if has_products:
        category_rhythm_on_spark(ctx)
    if cfg.get("backtest", True):
        cutoff = ctx.as_of - dt.timedelta(days=90)
        try:
            first = _sdf(source, customer_gaps(t, ctx.as_of)).agg(F.min("first_day")).collect()[0][0]
            check_backtest_window(t, first, cutoff, ctx.as_of)
            metrics = evaluate(t, cutoff, (30, 90), end=ctx.as_of, base_name=ctx.fitted.name,
                               product_horizon=horizon, products=has_products,
                               mix=float(cfg["mix"]) if "mix" in cfg else None, spark=source)
            source.write_result("timing_backtest", metrics.assign(as_of=pd.Timestamp(ctx.as_of)))
        except ValueError as exc:
            ctx.notes.append(f"timing backtest skipped at {cutoff}: {exc}")
    return added


def category_rhythm_on_spark(ctx: Context) -> None:
    """`write_category_rhythm` on the Spark engine: the rows per customer x category stay on Spark (cycles and
    rows per batch, mapInPandas); the fit uses at most 30,000 of them and one row per category (sums, exact
    median cycle) reaches the driver."""
    from pyspark.sql import functions as F

    from loyalist.features.timing import category_cycles

    source, as_of = ctx.store, ctx.as_of
    products = source.table("products")
    if products.filter(products.category.notnull()).count().execute() == 0:
        ctx.notes.append(NO_CATEGORIES)
        return
    cc = source.keep(_sdf(source, category_cycles(source.table("transactions"), products, as_of)))
    total = cc.count()
    if total == 0:
        ctx.notes.append("timing: no purchase of a product with a category, so no rhythm per category")
        return
    sums = _spark_product_sums(cc, "category")
    scale = scale_from_sums(sums)
    m = None
    if total >= 10 and cc.filter(F.col("n_gaps") > 0).count() >= 5:
        rows = _spark_fit_rows(cc, ["customer_id", "category"], 30_000)
        m = _fit_rows_model(rows, rows["category"].map(scale).to_numpy(float))
    scale_df = F.broadcast(source.ibis._session.createDataFrame(
        pd.DataFrame({"category": scale.index.to_numpy(), "scale": scale.to_numpy(float)}),
        "category string, scale double"))

    def cycles(batches):
        for b in batches:
            if len(b):
                b = snap(b, STAT_FLOATS)
                b["cycle"] = _category_cycle(b, m, b["scale"].to_numpy(float))
                yield b[["customer_id", "category", "cycle"]]

    cyc = source.keep(cc.join(scale_df, "category", "left").mapInPandas(
        cycles, "customer_id string, category string, cycle double"))
    med = (cyc.filter(~F.isnan("cycle")).groupBy("category")
           .agg(F.percentile("cycle", F.lit(0.5)).alias("med")).toPandas().set_index("category")["med"])
    med_df = F.broadcast(source.ibis._session.createDataFrame(
        pd.DataFrame({"category": med.index.to_numpy(), "med": med.to_numpy(float)}), "category string, med double"))
    ddl = ("customer_id string, category string, times_bought bigint, cycle_days double, regularity double, "
           "cycle_class string, last_bought timestamp_ntz, next_date timestamp_ntz, overdue_days bigint")

    def block(batches):
        for b in batches:
            if len(b):
                b = b.reset_index(drop=True)
                yield _category_block(b, b["cycle"].to_numpy(float), b["med"].to_numpy(float), as_of)

    rows = cc.join(cyc, ["customer_id", "category"]).join(med_df, "category", "left")
    source.write_result("category_rhythm", rows.mapInPandas(block, ddl))
