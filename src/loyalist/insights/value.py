"""Analysis step `value` (order 55): one ranked customer-value score of where to invest, with its parts.

    value_score = value_clv x value_margin x value_growth x value_risk

Per-customer columns added to `customer_insights`:
- `value_clv`: predicted 12-month CLV in revenue from the customer-base models (clv_12m / margin)
- `value_margin`: the gross margin applied (from product costs or margins when the store has them, else the
  `gross_margin` setting; 1.0 means the score is in revenue)
- `value_growth`: growth factor. From `growth_rate` (the direction step, order 30) when that column is present:
  1 + growth_rate (annualised, 0.25 = +25%/yr) kept within [0.5, 1.5]; otherwise from this module's own proxy, the spend trend
  (last 180 days vs the 180 before, in [-1, 1]; `loyalist.features.behaviour`): 1 + trend / 2, in [0.5, 1.5].
- `value_risk`: P(alive) from the customer-base model (risk adjustment; see `loyalist.models.segments.value_score`
  for why P(alive) is applied although the CLV already averages over it)
- `value_score`, `value_percentile` (0..100, mid-rank), `value_grade` (A = top 20% of customers by score,
  B = next 30%, C = the rest; [value] a_share, b_share in loyalist.toml), `value_reason` (the sum in words).

Result table `value_backtest` (appended, one row per ranking and cutoff; columns in
`loyalist.evaluation.value`): at as_of - 365 days, when there is enough history, the A customers of the
metric vs the same number chosen by past revenue, by their share of the following year's revenue. A cutoff
already in the table for the same model is not recomputed. `bench/value.py` runs it on Online Retail II.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from loyalist.evaluation.value import value_backtest
from loyalist.features.behaviour import behaviour
from loyalist.insights import Context, step
from loyalist.models.segments import (
    grade,
    growth_factor_from_rate,
    growth_factor_from_trend,
    percentile,
    value_score,
)
from loyalist.store import has_table, write_frame

BACKTEST_TABLE = "value_backtest"


def _margins(ctx: Context) -> tuple[np.ndarray, str]:
    from loyalist.analysis import (
        customer_margins,  # late import: analysis imports the insight steps
    )

    default = float(ctx.settings.gross_margin)
    per, source = customer_margins(ctx.store, ctx.as_of)
    if per is None:
        return np.full(len(ctx.customers), default), ("gross_margin setting" if default != 1.0 else
                                                      "none (margin 1.0: the score is in revenue)")
    m = ctx.customers[["customer_id"]].merge(per, on="customer_id", how="left")["margin"]
    return m.fillna(default).to_numpy(float), source


def _backtest(ctx: Context, cfg: dict) -> None:
    if not cfg.get("backtest", True):
        return
    cutoff = ctx.as_of - dt.timedelta(days=365)
    model = ctx.fitted.name
    if has_table(ctx.store, BACKTEST_TABLE):
        t = ctx.store.table(BACKTEST_TABLE)
        done = t.filter((t.cutoff == pd.Timestamp(cutoff)) & (t.model == model)).count().execute()
        if done:
            return
    first = ctx.customers["first_order"].min()
    if pd.isna(first) or (cutoff - pd.Timestamp(first).date()).days < 180:
        ctx.notes.append(f"value: no held-out check of the grades (needs 180 days of history before {cutoff} "
                         "and a year after it)")
        return
    try:
        bt = value_backtest(ctx.store.table("transactions"), cutoff, model, 365, ctx.settings,
                            float(cfg.get("a_share", 0.2)))
    except ValueError as exc:
        ctx.notes.append(f"value: no held-out check of the grades ({exc})")
        return
    write_frame(ctx.store, BACKTEST_TABLE, bt, replace=False)
    r = bt.set_index("ranking")
    ctx.notes.append(
        f"value: held out at {cutoff}, the {r.loc['value_score', 'graded_a']:,} customers graded A brought "
        f"{r.loc['value_score', 'a_revenue_share']:.1%} of the next year's revenue vs "
        f"{r.loc['past_revenue', 'a_revenue_share']:.1%} for the same number chosen by past revenue")


def reasons(frame: pd.DataFrame, growth_source: str) -> list[str]:
    """The score as a sum in words, one per customer."""
    return [f"12-month CLV {c:,.0f} x margin {m:.0%} x growth {g:.2f} ({growth_source}) x P(alive) {p:.2f} "
            f"= {s:,.0f}; top {max(100 - q, 0.1):.1f}% of customers"
            for c, m, g, p, s, q in zip(frame["value_clv"], frame["value_margin"], frame["value_growth"],
                                         frame["value_risk"], frame["value_score"], frame["value_percentile"])]


@step("value", 55)
def value_step(ctx: Context) -> pd.DataFrame | None:
    cfg = ctx.config.get("value", {}) or {}
    cust = ctx.customers
    clv_col = f"clv_{ctx.settings.clv_months}m"
    if cust.empty or clv_col not in cust or not cust[clv_col].notna().any():
        ctx.notes.append("value skipped: no predicted CLV (the spend model needs amounts and repeat customers)")
        return None
    margin, margin_source = _margins(ctx)
    if "growth_rate" in cust and cust["growth_rate"].notna().any():
        growth = growth_factor_from_rate(cust["growth_rate"].to_numpy(float))
        growth_source = "growth rate"
    else:
        b = behaviour(ctx.store.table("transactions"), ctx.as_of).execute()
        trend = cust[["customer_id"]].merge(b[["customer_id", "trend"]], on="customer_id", how="left")["trend"]
        growth = growth_factor_from_trend(trend.to_numpy(float))
        growth_source = "spend trend"
        ctx.notes.append("value: growth from the spend trend (last 180 days vs the 180 before), "
                         "as no growth_rate column was present")
    clv = cust[clv_col].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        clv_revenue = np.where(margin != 0, clv / margin, np.nan)
    p_alive = cust["p_alive"].to_numpy(float)
    out = pd.DataFrame({"customer_id": cust["customer_id"].to_numpy(), "value_clv": clv_revenue,
                        "value_margin": margin, "value_growth": growth, "value_risk": p_alive})
    out["value_score"] = value_score(clv_revenue, margin, growth, p_alive)
    out["value_percentile"] = percentile(out["value_score"].to_numpy())
    order = np.argsort(out["customer_id"].astype(str).to_numpy(), kind="stable")  # ties broken by customer id
    g = np.empty(len(out), dtype=object)
    g[order] = grade(out["value_score"].to_numpy()[order], float(cfg.get("a_share", 0.2)),
                     float(cfg.get("b_share", 0.3)))
    out["value_grade"] = g
    out["value_reason"] = reasons(out, growth_source)
    ctx.notes.append(f"value: margin from {margin_source}; grades A/B/C = top {float(cfg.get('a_share', 0.2)):.0%}"
                     f" / next {float(cfg.get('b_share', 0.3)):.0%} / rest by value_score")
    _backtest(ctx, cfg)
    return out
