"""Per-customer sufficient statistics for the customer-base models (frequency, recency, T, spend).

A purchase occasion is a calendar day on which the customer bought at least one product line with a
positive amount (same-day orders merged, as in the BTYD literature). Guest lines, non-product lines
(postage, fees), cancellations and returns are left out here; returns are features of their own.
Time is measured in days from the customer's first purchase occasion.

Written once as Ibis expressions: the DuckDB store runs them embedded, the PySpark backend on a cluster.
"""

from __future__ import annotations

import datetime as dt

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd

SUM_GRID = 2.0 ** -24
"""The engines' floating-point sums (spend, quantities, weights) are snapped to multiples of SUM_GRID (6e-8) by
`snap` before any model sees them: a sum over a group depends on the order the engine adds in (DuckDB's
threads, Spark's partitions) in its last bits, and maximum-likelihood fits and trees amplify such bits (two
DuckDB runs on the demo data differed by 2e-4 in prob_order_60d before this). On the grid the models see the
same numbers on every run and on both engines, and sums of snapped values are exact (order-free) while they stay
below 2^29."""


def snap(df: pd.DataFrame, columns) -> pd.DataFrame:
    """`df` with those of `columns` it has snapped to the SUM_GRID (see there)."""
    df = df.copy()
    for c in columns:
        if c in df:
            df[c] = np.floor(df[c].to_numpy(float) / SUM_GRID + 0.5) * SUM_GRID
    return df


def purchases(transactions: ir.Table, as_of: dt.datetime | None = None) -> ir.Table:
    """Purchase occasions: one row per customer and day with that day's spend (NULL amounts count as 0)."""
    t = transactions
    keep = ~t.is_guest & ~t.is_non_product & ~t.is_cancellation & ~t.is_return & t.customer_id.notnull()
    if as_of is not None:
        keep &= t.order_date < ibis.timestamp(as_of)
    lines = t.filter(keep)
    occasions = lines.group_by(customer_id=lines.customer_id, day=lines.order_date.date()).aggregate(
        spend=lines.amount.sum().fill_null(0.0), lines=lines.count())
    return occasions.filter(occasions.spend >= 0)


def rfm_summary(transactions: ir.Table, as_of: dt.datetime | dt.date) -> ir.Table:
    """One row per customer with a purchase before `as_of`: the models' sufficient statistics in days.

    Columns: customer_id, first_order, last_order, orders (occasions), frequency (repeat occasions),
    recency (days first -> last), T (days first -> as_of), revenue (all occasions), monetary_value
    (mean spend of the repeat occasions, NULL without repeats), first_spend.
    """
    as_of_ts = dt.datetime.combine(as_of, dt.time()) if not isinstance(as_of, dt.datetime) else as_of
    occ = purchases(transactions, as_of_ts)
    per = occ.group_by("customer_id").aggregate(
        first_order=occ.day.min(), last_order=occ.day.max(), orders=occ.count(),
        revenue=occ.spend.sum(), first_spend=occ.spend.argmin(occ.day))
    end = ibis.date(as_of_ts.date())
    repeat_revenue = per.revenue - per.first_spend
    return per.select(
        "customer_id", "first_order", "last_order", "orders",
        frequency=per.orders - 1,
        recency=per.last_order.delta(per.first_order, unit="day"),
        T=end.delta(per.first_order, unit="day"),
        revenue=per.revenue,
        monetary_value=ibis.ifelse(per.orders > 1, repeat_revenue / (per.orders - 1), ibis.null("float64")),
        first_spend=per.first_spend,
    )


def rhythm(transactions: ir.Table, as_of: dt.datetime | dt.date, recent_days: int = 90) -> ir.Table:
    """Per customer: the rhythm of repeat purchases before `as_of` — mean and standard deviation of the gaps
    between purchase occasions (days), the last gap, and the occasions and spend in the last `recent_days`."""
    as_of_ts = dt.datetime.combine(as_of, dt.time()) if not isinstance(as_of, dt.datetime) else as_of
    occ = purchases(transactions, as_of_ts)
    w = ibis.window(group_by=occ.customer_id, order_by=occ.day)
    gaps = occ.mutate(gap=occ.day.delta(occ.day.lag().over(w), unit="day"))
    since = ibis.date((as_of_ts - dt.timedelta(days=recent_days)).date())
    per = gaps.group_by("customer_id").aggregate(
        gap_mean=gaps.gap.mean(), gap_std=gaps.gap.std(how="pop"), last_gap=gaps.gap.argmax(gaps.day),
        recent_orders=(gaps.day >= since).sum(),
        recent_spend=ibis.ifelse(gaps.day >= since, gaps.spend, 0.0).sum())
    return per
