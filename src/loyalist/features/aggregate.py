"""Aggregate-view features: weekly demand series, order counts by hour x weekday and by week, acquisition
cohorts and per-customer lifecycle snapshots.

Written once as Ibis expressions (the DuckDB store runs them embedded, the PySpark backend on a cluster); the
results are small (one row per series and week, per hour and weekday, per cohort and month), so pandas takes
over from there.

Demand counts every product line that was sold: guest lines included (a guest's order still empties the shelf),
non-product lines (postage, fees), cancellations and returns left out, positive quantities only. Weeks start on
Monday (ISO weeks). Customer-side features (cohorts, lifecycle) use the purchase occasions of
`loyalist.features.summary.purchases` (customer x day, guests excluded), the same unit as the customer-base
models.
"""

from __future__ import annotations

import datetime as dt

import ibis
import ibis.expr.types as ir

from loyalist.features.summary import purchases


def _ts(as_of: dt.date | dt.datetime) -> dt.datetime:
    return as_of if isinstance(as_of, dt.datetime) else dt.datetime.combine(as_of, dt.time())


def demand_lines(transactions: ir.Table, as_of: dt.date | dt.datetime | None = None) -> ir.Table:
    """The lines that count as demand (see the module docstring), before `as_of`."""
    t = transactions
    keep = (~t.is_non_product & ~t.is_cancellation & ~t.is_return & (t.quantity > 0)
            & t.product_id.notnull() & t.order_date.notnull())
    if as_of is not None:
        keep &= t.order_date < ibis.timestamp(_ts(as_of))
    return t.filter(keep)


def weekly_demand(transactions: ir.Table, as_of: dt.date | dt.datetime | None = None, by: str = "product",
                  products: ir.Table | None = None) -> ir.Table:
    """Units, order lines and orders per series and week (Monday), weeks with sales only.

    by: "product" (series_id = product_id), "category" (series_id = the products table's category; products
    without one are grouped as "(no category)"), or "total" (series_id = "all").
    Columns: series_id, week (date), units, lines, orders.
    """
    lines = demand_lines(transactions, as_of)
    if by == "product":
        key = lines.product_id
    elif by == "category":
        if products is None:
            raise ValueError("the category level needs the products table")
        cats = products.group_by("product_id").aggregate(category=products.category.max())
        lines = lines.left_join(cats, lines.product_id == cats.product_id).select(lines, cats.category)
        key = lines.category.fill_null("(no category)")
    elif by == "total":
        key = ibis.literal("all")
    else:
        raise ValueError(f"unknown level {by!r}: product, category or total")
    lines = lines.mutate(series_id=key, week=lines.order_date.truncate("W").date())
    return lines.group_by(["series_id", "week"]).aggregate(
        units=lines.quantity.sum(), lines=lines.count(), orders=lines.order_id.nunique())


def hour_weekday(transactions: ir.Table, as_of: dt.date | dt.datetime | None = None) -> ir.Table:
    """Orders and order lines by weekday (0 = Monday) and hour of the order time: dow, hour, orders, lines.

    An order spanning several timestamps counts once, at its first line's time."""
    lines = demand_lines(transactions, as_of)
    per_order = lines.group_by("order_id").aggregate(at=lines.order_date.min(), lines=lines.count())
    per_order = per_order.mutate(dow=per_order.at.day_of_week.index(), hour=per_order.at.hour())
    return per_order.group_by(["dow", "hour"]).aggregate(orders=per_order.count(), lines=per_order.lines.sum())


def weekly_orders(transactions: ir.Table, as_of: dt.date | dt.datetime | None = None) -> ir.Table:
    """Orders, lines and units per calendar week: week (Monday), year, week_of_year (ISO), orders, lines, units."""
    lines = demand_lines(transactions, as_of)
    per_order = lines.group_by("order_id").aggregate(at=lines.order_date.min(), lines=lines.count(),
                                                     units=lines.quantity.sum())
    per_order = per_order.mutate(week=per_order.at.truncate("W").date())
    g = per_order.group_by("week").aggregate(orders=per_order.count(), lines=per_order.lines.sum(),
                                             units=per_order.units.sum())
    return g.mutate(year=g.week.year(), week_of_year=g.week.week_of_year())


def cohort_activity(transactions: ir.Table, as_of: dt.date | dt.datetime) -> ir.Table:
    """Per acquisition cohort (month of the first purchase occasion) and month since it: customers who bought
    and their spend. Columns: cohort_month, months_since, active, revenue, orders."""
    occ = purchases(transactions, _ts(as_of))
    first = occ.group_by("customer_id").aggregate(first_day=occ.day.min())
    j = occ.join(first, "customer_id")
    cm = j.first_day.truncate("M")
    j = j.mutate(cohort_month=cm, month=j.day.truncate("M"))
    j = j.mutate(months_since=(j.month.year() - j.cohort_month.year()) * 12 + j.month.month() - j.cohort_month.month())
    return j.group_by(["cohort_month", "months_since"]).aggregate(
        active=j.customer_id.nunique(), revenue=j.spend.sum(), orders=j.count())


def lifecycle_snapshots(transactions: ir.Table, snapshots: list[dt.date]) -> ir.Table:
    """Each customer's purchase history as seen at each snapshot date (orders strictly before it).

    Columns: snapshot, customer_id, orders, first_order, last_order, span_days (first -> last),
    since_last_days (last -> snapshot), last_gap_days (gap that ended at the last order; NULL with one order).
    """
    occ = purchases(transactions, _ts(max(snapshots)))
    w = ibis.window(group_by=occ.customer_id, order_by=occ.day)
    occ = occ.mutate(gap=occ.day.delta(occ.day.lag().over(w), unit="day"))
    snaps = ibis.memtable({"snapshot": list(snapshots)}).mutate(snapshot=ibis._.snapshot.cast("date"))
    j = occ.join(snaps, occ.day < snaps.snapshot)
    g = j.group_by(["snapshot", "customer_id"]).aggregate(
        orders=j.count(), first_order=j.day.min(), last_order=j.day.max(), last_gap_days=j.gap.argmax(j.day))
    return g.mutate(span_days=g.last_order.delta(g.first_order, unit="day"),
                    since_last_days=g.snapshot.delta(g.last_order, unit="day"))
