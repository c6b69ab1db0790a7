"""Behaviour features per customer for segmentation and the value metric (Ibis expressions).

One row per customer with a purchase occasion before `as_of` (the occasions of `loyalist.features.summary`:
customer x day, positive product lines, no guests, no returns or cancellations, no non-product lines):

| column | meaning |
| --- | --- |
| customer_id | |
| orders | purchase occasions (days with a purchase) |
| revenue | spend over all occasions |
| avg_order_value | revenue / orders |
| first_order, last_order | first and last occasion (dates) |
| days_since_last | as_of - last occasion, days |
| tenure_days | as_of - first occasion, days |
| cycle_days | mean gap between consecutive occasions, days (NULL with one occasion) |
| cycle_cv | coefficient of variation of those gaps (std / mean; NULL with fewer than 3 occasions) — regularity: |
|  | 0 = like clockwork, >= 1 = erratic |
| products | distinct products bought (breadth of range) |
| spend_recent | spend in the `window_days` days before as_of |
| spend_previous | spend in the `window_days` days before that |
| trend | (spend_recent - spend_previous) / (spend_recent + spend_previous), in [-1, 1]: +1 = all of the last |
|  | 2 x window in the recent half (new or growing), -1 = nothing recently (declining or lapsed); -1 also when |
|  | nothing was bought in either window (lapsed longer) |
| returned_value | value of returned or cancelled product lines before as_of (positive number) |
| return_rate | returned_value / (revenue + returned_value) |

Written once as Ibis expressions, so they run embedded in DuckDB or on the PySpark backend.
"""

from __future__ import annotations

import datetime as dt

import ibis
import ibis.expr.types as ir

from loyalist.features.summary import purchases


def _ts(as_of: dt.date | dt.datetime) -> dt.datetime:
    return as_of if isinstance(as_of, dt.datetime) else dt.datetime.combine(as_of, dt.time())


def behaviour(transactions: ir.Table, as_of: dt.date | dt.datetime, window_days: int = 180) -> ir.Table:
    """The behaviour features above, one row per customer who bought before `as_of`."""
    as_of_ts = _ts(as_of)
    end = ibis.date(as_of_ts.date())
    recent_from = ibis.date((as_of_ts - dt.timedelta(days=window_days)).date())
    previous_from = ibis.date((as_of_ts - dt.timedelta(days=2 * window_days)).date())
    occ = purchases(transactions, as_of_ts)
    w = ibis.window(group_by=occ.customer_id, order_by=occ.day)
    occ = occ.mutate(gap=occ.day.delta(occ.day.lag().over(w), unit="day"))
    per = occ.group_by("customer_id").aggregate(
        orders=occ.count(), revenue=occ.spend.sum(), first_order=occ.day.min(), last_order=occ.day.max(),
        cycle_days=occ.gap.mean(), gap_std=occ.gap.std(how="pop"), gaps=occ.gap.count(),
        spend_recent=ibis.ifelse(occ.day >= recent_from, occ.spend, 0.0).sum(),
        spend_previous=ibis.ifelse((occ.day >= previous_from) & (occ.day < recent_from), occ.spend, 0.0).sum())

    t = transactions
    base = ~t.is_guest & ~t.is_non_product & t.customer_id.notnull() & (t.order_date < ibis.timestamp(as_of_ts))
    bought = t.filter(base & ~t.is_cancellation & ~t.is_return & (t.amount.fill_null(0.0) >= 0))
    breadth = bought.group_by("customer_id").aggregate(products=bought.product_id.nunique())
    back = t.filter(base & (t.is_cancellation | t.is_return))
    returns = back.group_by("customer_id").aggregate(returned_value=back.amount.abs().sum().fill_null(0.0))

    j = per.left_join(breadth, per.customer_id == breadth.customer_id).drop("customer_id_right")
    j = j.left_join(returns, j.customer_id == returns.customer_id).drop("customer_id_right")
    returned = j.returned_value.fill_null(0.0)
    both = j.spend_recent + j.spend_previous
    return j.select(
        "customer_id", "orders", "revenue",
        avg_order_value=j.revenue / j.orders,
        first_order=j.first_order, last_order=j.last_order,
        days_since_last=end.delta(j.last_order, unit="day"),
        tenure_days=end.delta(j.first_order, unit="day"),
        cycle_days=j.cycle_days,
        cycle_cv=ibis.ifelse((j.gaps >= 2) & (j.cycle_days > 0), j.gap_std / j.cycle_days, ibis.null("float64")),
        products=j.products.fill_null(0),
        spend_recent=j.spend_recent, spend_previous=j.spend_previous,
        trend=ibis.ifelse(both > 0, (j.spend_recent - j.spend_previous) / both, -1.0),
        returned_value=returned,
        return_rate=ibis.ifelse(j.revenue + returned > 0, returned / (j.revenue + returned), 0.0),
    )
