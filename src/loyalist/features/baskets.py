"""Customer x product interactions (what, how much, how often) as Ibis expressions, for the cross-sell work.

Written once in Ibis so the DuckDB store runs them embedded and the PySpark backend on a cluster; only
portable operations are used (count, sum, min, max, nunique, median, argmax).

A purchase line is `~is_guest & ~is_non_product & ~is_cancellation & ~is_return` with a customer and a
product code (as in `loyalist.features.summary`). A return line is a product line of a known customer that is
a return or a cancellation (credit note). Non-product lines (postage, fees, manual adjustments) never appear.

Tables returned:

- `interactions(t, as_of)`: customer_id, product_id, orders (distinct orders with the product), days (distinct
  days), quantity, amount, first_bought, last_bought, and, with `half_life_days`, recency_weight = the sum over
  the days the product was bought of 0.5 ** (days before as_of / half_life_days).
- `purchase_days(t, as_of)`: customer_id, product_id, day, last_at (the latest order time that day): one row per
  customer, product and buying day; the cross-sell step computes its recency weights from these in numpy, so
  both engines sum the same terms in the same order (`loyalist.insights.crosssell.build_data`).
- `returned(t, as_of)`: customer_id, product_id, returned_lines (pairs with at least one return line).
- `product_stats(t, as_of)`: product_id, description (the latest), buyers, orders, typical_quantity (median
  units per purchase line), typical_price (median unit price of the paid lines), first_sold, last_sold.
- `first_purchases(t, start, days)`: customer_id, product_id for products a customer bought in
  [start, start + days) and never before `start` (the held-out target of the cross-sell backtest).
"""

from __future__ import annotations

import datetime as dt

import ibis
import ibis.expr.types as ir


def _ts(d: dt.date | dt.datetime) -> ir.TimestampScalar:
    return ibis.timestamp(d if isinstance(d, dt.datetime) else dt.datetime.combine(d, dt.time()))


def _product_lines(t: ir.Table) -> ir.BooleanColumn:
    return ~t.is_guest & ~t.is_non_product & t.customer_id.notnull() & t.product_id.notnull()


def purchase_lines(t: ir.Table, as_of: dt.date | dt.datetime | None = None,
                   since: dt.date | dt.datetime | None = None) -> ir.Table:
    """Purchase lines (no returns, cancellations, guests or non-product lines) in [since, as_of)."""
    keep = _product_lines(t) & ~t.is_cancellation & ~t.is_return
    if as_of is not None:
        keep &= t.order_date < _ts(as_of)
    if since is not None:
        keep &= t.order_date >= _ts(since)
    return t.filter(keep)


def interactions(t: ir.Table, as_of: dt.date | dt.datetime | None = None,
                 half_life_days: float | None = None) -> ir.Table:
    """One row per customer and product bought before `as_of` (see the module docstring for the columns)."""
    lines = purchase_lines(t, as_of)
    daily = lines.group_by(["customer_id", "product_id", lines.order_date.date().name("day")]).aggregate(
        orders=lines.order_id.nunique(), quantity=lines.quantity.sum(), amount=lines.amount.sum().fill_null(0.0),
        first_bought=lines.order_date.min(), last_bought=lines.order_date.max())
    aggs = {"orders": daily.orders.sum(), "days": daily.count(), "quantity": daily.quantity.sum(),
            "amount": daily.amount.sum(), "first_bought": daily.first_bought.min(),
            "last_bought": daily.last_bought.max()}
    if half_life_days is not None:
        if as_of is None:
            raise ValueError("recency weights need an as_of date")
        age = ibis.date(_ts(as_of).date()).delta(daily.day, unit="day").cast("float64")
        aggs["recency_weight"] = (ibis.literal(0.5) ** (age / float(half_life_days))).sum()
    return daily.group_by(["customer_id", "product_id"]).aggregate(**aggs)


def purchase_days(t: ir.Table, as_of: dt.date | dt.datetime | None = None) -> ir.Table:
    """One row per customer, product and day with a purchase before `as_of` (see the module docstring)."""
    lines = purchase_lines(t, as_of)
    return lines.group_by(["customer_id", "product_id", lines.order_date.date().name("day")]).aggregate(
        last_at=lines.order_date.max())


def returned(t: ir.Table, as_of: dt.date | dt.datetime | None = None) -> ir.Table:
    """Customer x product pairs with at least one return or cancellation line before `as_of`."""
    keep = _product_lines(t) & (t.is_return | t.is_cancellation)
    if as_of is not None:
        keep &= t.order_date < _ts(as_of)
    lines = t.filter(keep)
    return lines.group_by(["customer_id", "product_id"]).aggregate(returned_lines=lines.count())


def product_stats(t: ir.Table, as_of: dt.date | dt.datetime | None = None) -> ir.Table:
    """Per product bought before `as_of`: description, buyers, typical order line (median units and price)."""
    lines = purchase_lines(t, as_of)
    paid = lines.unit_price > 0
    return lines.group_by("product_id").aggregate(
        description=lines.description.argmax(lines.order_date),
        buyers=lines.customer_id.nunique(), orders=lines.order_id.nunique(),
        typical_quantity=lines.quantity.median(),
        typical_price=ibis.ifelse(paid, lines.unit_price, ibis.null("float64")).median(),
        first_sold=lines.order_date.min(), last_sold=lines.order_date.max())


def first_purchases(t: ir.Table, start: dt.date, days: int) -> ir.Table:
    """Customer x product pairs bought in [start, start + days) that the customer never bought before `start`."""
    window = purchase_lines(t, start + dt.timedelta(days=days), start)
    new = window.group_by(["customer_id", "product_id"]).aggregate()
    before = purchase_lines(t, start)
    before = before.group_by(["customer_id", "product_id"]).aggregate()
    return new.anti_join(before, ["customer_id", "product_id"])
