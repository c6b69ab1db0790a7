"""Held-out test of the customer-value grades: do the customers graded A bring next year's revenue?

At a cutoff, everything is computed from the data before it (the customer-base model is fitted there, the
behaviour features end there); then each ranking picks the same number of A customers (the top `a_share`,
20% by default) and we measure the share of the next `horizon_days` (365) of revenue that they bring.
Revenue after the cutoff is the spend on purchase occasions (`loyalist.backtest.actuals`: product lines,
returns not netted), over all customers known at the cutoff (`a_revenue_share`); `a_share_of_all` divides by
the revenue of every customer, new ones included.

Rankings compared in the same run:
- `value_score`: the metric (CLV x margin x growth factor x P(alive); `loyalist.insights.value`), with the
  growth factor from the spend trend (the backtest cannot use another step's growth_rate at a past cutoff)
- `clv`: predicted 12-month CLV x margin alone
- `clv_x_p_alive`, `clv_x_growth`: one adjustment each
- `past_revenue`: the baseline users apply: all revenue before the cutoff
- `revenue_last_12m`: a stronger naive baseline: revenue in the 365 days before the cutoff (the same as
  `past_revenue` when the history is shorter than a year, as at both Online Retail II cutoffs of bench/value.py)

Table `value_backtest` (one row per cutoff and ranking): cutoff, horizon_days, model, ranking, customers,
graded_a, a_revenue (next-year revenue of the A customers), a_revenue_share, a_share_of_all,
vs_past_revenue (a_revenue_share minus the past-revenue baseline's, in share points), a_captured_buyers (share
of the A customers who bought again within the horizon), run_at.
"""

from __future__ import annotations

import datetime as dt

import ibis.expr.types as ir
import numpy as np
import pandas as pd

from loyalist.backtest import actuals
from loyalist.customer_base import Settings, fit_base, score
from loyalist.features import rfm_summary
from loyalist.features.behaviour import behaviour
from loyalist.models.segments import grade, growth_factor_from_trend, value_score

RANKINGS = ("value_score", "clv", "clv_x_p_alive", "clv_x_growth", "past_revenue", "revenue_last_12m")


def value_backtest(transactions: ir.Table, cutoff: dt.date, model: str = "bgnbd", horizon_days: int = 365,
                   settings: Settings | None = None, a_share: float = 0.2) -> pd.DataFrame:
    """One row per ranking (RANKINGS) with the next-year revenue share of its A customers."""
    s = settings or Settings()
    summ = rfm_summary(transactions, cutoff).execute()
    if len(summ) < 50:
        raise ValueError(f"only {len(summ)} customers bought before {cutoff}; choose a later cutoff")
    summ = summ.sort_values("customer_id", kind="stable").reset_index(drop=True)
    fitted = fit_base(summ, model)
    if fitted.spend is None:
        raise ValueError("no spend model at the cutoff (too few repeat customers with amounts)")
    scored = score(fitted, summ, s, s.gross_margin)
    b = behaviour(transactions, cutoff).execute()
    frame = scored[["customer_id", "revenue", "p_alive", f"clv_{s.clv_months}m"]].merge(
        b[["customer_id", "trend"]], on="customer_id", how="left")
    ahead = actuals(transactions, cutoff, horizon_days)
    frame = frame.merge(ahead, on="customer_id", how="left")
    next_rev = frame["holdout_spend"].fillna(0.0).to_numpy(float)
    bought = frame["holdout_orders"].fillna(0).to_numpy() > 0
    end = cutoff + dt.timedelta(days=horizon_days)
    everyone = actuals(transactions, cutoff, horizon_days)["holdout_spend"].sum()
    last12 = actuals(transactions, cutoff - dt.timedelta(days=365), 365)
    frame = frame.merge(last12.rename(columns={"holdout_spend": "rev12"})[["customer_id", "rev12"]],
                        on="customer_id", how="left")

    clv = frame[f"clv_{s.clv_months}m"].to_numpy(float) / (s.gross_margin or 1.0)  # revenue CLV
    growth = growth_factor_from_trend(frame["trend"].to_numpy(float))
    p_alive = frame["p_alive"].to_numpy(float)
    one = np.ones(len(frame))
    scores = {
        "value_score": value_score(clv, s.gross_margin, growth, p_alive),
        "clv": value_score(clv, s.gross_margin, one, one),
        "clv_x_p_alive": value_score(clv, s.gross_margin, one, p_alive),
        "clv_x_growth": value_score(clv, s.gross_margin, growth, one),
        "past_revenue": frame["revenue"].to_numpy(float),
        "revenue_last_12m": frame["rev12"].fillna(0.0).to_numpy(float),
    }
    total = next_rev.sum()
    rows = []
    for name in RANKINGS:
        is_a = grade(scores[name], a_share, 0.0) == "A"
        a_rev = float(next_rev[is_a].sum())
        rows.append({"cutoff": pd.Timestamp(cutoff), "horizon_days": horizon_days, "horizon_end": pd.Timestamp(end),
                     "model": model, "ranking": name, "customers": len(frame), "graded_a": int(is_a.sum()),
                     "a_revenue": a_rev, "a_revenue_share": a_rev / total if total else np.nan,
                     "a_share_of_all": a_rev / everyone if everyone else np.nan,
                     "a_captured_buyers": float(bought[is_a].mean()) if is_a.any() else np.nan})
    out = pd.DataFrame(rows)
    base = out.loc[out["ranking"] == "past_revenue", "a_revenue_share"].iloc[0]
    out["vs_past_revenue"] = out["a_revenue_share"] - base
    out["run_at"] = pd.Timestamp.now(tz="UTC").tz_localize(None)
    return out
