"""Lifecycle stage of each customer from their own purchase rhythm, stage-to-stage conversion, and
first-to-second-order conversion. Pure, vectorised numpy/pandas on per-customer snapshots (no I/O).

Stages at a snapshot date, with d = days since the customer's last order and g = the customer's typical gap:
- lapsed:      d > LAPSED_MULT x g      (4 x: under a memoryless rhythm a live customer waits that long
                                         only e^-4 = 2% of the time)
- at risk:     d > AT_RISK_MULT x g     (2 x: e^-2 = 14% of the time)
- new:         one order so far and not yet at risk
- reactivated: the gap that ended with the last order was longer than LAPSED_MULT x their typical gap
               before it (they had lapsed and came back), and not yet at risk again
- active:      everyone else (ordered within 2 x their own typical gap)

Typical gap with shrinkage (so two orders do not define a rhythm): on the log scale, a weighted mean of the
customer's own mean gap (weight = their number of gaps) and the population's median gap (weight
PRIOR_GAPS = 2):  log g = (n log mean_gap + k log g_pop) / (n + k). One-order customers get g = g_pop.
The population gap is the median of the mean gaps of customers with at least two orders at that snapshot.
This is empirical-Bayes-style partial pooling (cf. Efron & Morris 1975) on the scale where gaps are roughly
symmetric; it is a few lines of arithmetic, so no library is used.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

STAGES = ("new", "active", "at risk", "lapsed", "reactivated")
AT_RISK_MULT = 2.0
LAPSED_MULT = 4.0
PRIOR_GAPS = 2.0


def _shrunk(mean_gap: np.ndarray, n_gaps: np.ndarray, pop_gap: float | np.ndarray, k: float) -> np.ndarray:
    own = np.log(np.maximum(np.nan_to_num(mean_gap, nan=1.0), 1.0))
    pop = np.log(np.maximum(pop_gap, 1.0))
    return np.exp((n_gaps * own + k * pop) / (n_gaps + k))


def assign_stages(snap: pd.DataFrame, at_risk: float = AT_RISK_MULT, lapsed: float = LAPSED_MULT,
                  prior_gaps: float = PRIOR_GAPS, population_gap: pd.Series | None = None) -> pd.DataFrame:
    """Stage per row of `snap` (columns: snapshot, customer_id, orders, span_days, since_last_days,
    last_gap_days). Adds typical_gap_days, population_gap_days, stage.

    `population_gap` (snapshot -> population gap, fallback applied): given when `snap` is only a part of the
    customers (the Spark engine scores a batch at a time; the medians are computed over all customers there),
    else computed from `snap`."""
    s = snap.copy()
    orders = s["orders"].to_numpy(float)
    span = s["span_days"].to_numpy(float)
    since = s["since_last_days"].to_numpy(float)
    last_gap = s["last_gap_days"].to_numpy(float)
    n_gaps = orders - 1
    mean_gap = np.where(n_gaps > 0, span / np.maximum(n_gaps, 1), np.nan)
    if population_gap is None:
        pop = s.assign(mg=mean_gap).groupby("snapshot")["mg"].transform("median").to_numpy(float)
        pop = np.where(np.isfinite(pop), pop, np.nanmedian(mean_gap) if np.isfinite(mean_gap).any() else 30.0)
    else:
        pop = s["snapshot"].map(population_gap).to_numpy(float)
    g = _shrunk(mean_gap, n_gaps, pop, prior_gaps)
    # typical gap before the last one (for reactivation)
    prev_n = np.maximum(n_gaps - 1, 0)
    prev_mean = np.where(prev_n > 0, (span - np.nan_to_num(last_gap)) / np.maximum(prev_n, 1), np.nan)
    g_prev = _shrunk(prev_mean, prev_n, pop, prior_gaps)
    stage = np.full(len(s), "active", dtype=object)
    reactivated = (orders >= 2) & (np.nan_to_num(last_gap) > lapsed * g_prev)
    stage[reactivated] = "reactivated"
    stage[orders == 1] = "new"
    stage[since > at_risk * g] = "at risk"
    stage[since > lapsed * g] = "lapsed"
    s["typical_gap_days"] = g
    s["population_gap_days"] = pop
    s["stage"] = stage
    return s


def _count(n: pd.Series, word: str) -> pd.Series:
    """'1 day', '3 days' (n whole numbers)."""
    return n.astype(str) + " " + word + np.where(n.to_numpy() == 1, "", "s")


def stage_reason(s: pd.DataFrame) -> pd.Series:
    """One line per customer with the numbers behind the stage (from `assign_stages`)."""
    g = s["typical_gap_days"].round().astype(int)
    pop = _count(s["population_gap_days"].round().astype(int), "day")
    d = _count(s["since_last_days"].astype(int), "day")
    n = s["orders"].astype(int)
    repeat = ("orders every ~" + _count(g, "day") + " (" + _count(n, "order") + ", shrunk toward the population's ~"
              + pop + "); " + d + " since the last")
    back = "; came back after " + _count(s["last_gap_days"].astype(float).fillna(0).round().astype(int), "day") + " away"
    repeat = repeat + back.where(s["stage"] == "reactivated", "")
    return repeat.where(n > 1, "1 order, " + d + " ago; the population orders every ~" + pop)


def conversion(stages: pd.DataFrame) -> pd.DataFrame:
    """Stage-to-stage transitions between consecutive snapshots: period_start, period_end, from_stage,
    to_stage, customers, rate (share of the from_stage customers at period_start). Customers acquired during
    a period appear from the next one."""
    return conversion_rates(transition_counts(stages))


def transition_counts(stages: pd.DataFrame, snapshots: list | None = None) -> pd.DataFrame:
    """period_start, period_end, from_stage, to_stage, customers: how many customers moved between stages from
    one snapshot to the next. Additive over customers: counts of parts of the customers (each customer's rows
    in one part, `snapshots` = all snapshot dates) sum to the counts of the whole (the Spark engine)."""
    st = stages[["snapshot", "customer_id", "stage"]]
    snaps = sorted(st["snapshot"].unique()) if snapshots is None else sorted(snapshots)
    nxt = dict(zip(snaps[:-1], snaps[1:]))
    a = st[st["snapshot"].isin(list(nxt))].assign(period_end=lambda f: f["snapshot"].map(nxt))
    j = a.merge(st.rename(columns={"snapshot": "period_end", "stage": "to_stage"}), on=["period_end", "customer_id"])
    g = j.groupby(["snapshot", "period_end", "stage", "to_stage"]).size().rename("customers").reset_index()
    return g.rename(columns={"snapshot": "period_start", "stage": "from_stage"})


def conversion_rates(counts: pd.DataFrame) -> pd.DataFrame:
    """`transition_counts` with rate (share of the from_stage customers at period_start) and kind."""
    g = counts.copy()
    g["rate"] = g["customers"] / g.groupby(["period_start", "from_stage"])["customers"].transform("sum")
    g["kind"] = "stage"
    return g


def first_to_second(first_orders: pd.Series, second_orders: pd.Series, as_of, within_days: int = 90) -> pd.DataFrame:
    """Per acquisition month: customers, how many made a second order within `within_days` of the first, and
    the rate; only months whose every customer has had the full window before `as_of`."""
    f = pd.to_datetime(first_orders)
    s = pd.to_datetime(second_orders.reindex(first_orders.index))
    df = pd.DataFrame({"month": f.dt.to_period("M").dt.to_timestamp(), "first": f, "second": s})
    df["conv"] = (df["second"] - df["first"]).dt.days.le(within_days) & df["second"].notna()
    month_end = df["month"] + pd.offsets.MonthBegin(1)
    df = df[month_end + pd.Timedelta(days=within_days) <= pd.Timestamp(as_of)]
    g = df.groupby("month").agg(customers=("conv", "size"), converted=("conv", "sum")).reset_index()
    g["rate"] = g["converted"] / g["customers"]
    return pd.DataFrame({"period_start": g["month"], "period_end": g["month"] + pd.offsets.MonthBegin(1),
                         "from_stage": "first order", "to_stage": f"second order within {within_days} days",
                         "customers": g["converted"].astype(int), "rate": g["rate"],
                         "kind": "first_to_second", "base": g["customers"].astype(int)})
