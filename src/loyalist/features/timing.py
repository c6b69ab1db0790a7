"""Purchase timing features: the gaps between purchase occasions, per customer and per customer x product.

Written once as Ibis expressions (DuckDB embedded, the same expressions run on PySpark). A purchase
occasion is a customer-day with at least one purchase line (see `loyalist.features.summary.purchases`);
for products, a product occasion is a customer-day on which that product was bought. Gaps are whole days
between consecutive occasions; every gap is at least one day because same-day orders are merged.

The renewal models (`loyalist.models.next_order`) only need sufficient statistics of the gaps, so the
engine returns, per customer (or pair): the number of completed gaps `n_gaps`, their sum `gap_sum`
(= last - first occasion, in days), the sum of their logarithms `gap_logsum`, the last gap and the days
from the last occasion to `as_of` (`elapsed`).
"""

from __future__ import annotations

import datetime as dt

import ibis
import ibis.expr.types as ir

from loyalist.features.summary import purchases


def _ts(as_of: dt.date | dt.datetime) -> dt.datetime:
    return as_of if isinstance(as_of, dt.datetime) else dt.datetime.combine(as_of, dt.time())


def _gap_stats(occ: ir.Table, keys: list[str], as_of: dt.datetime, **extra) -> ir.Table:
    """Per group of `keys`: occasions, first/last day, gap sufficient statistics, elapsed days to as_of."""
    w = ibis.window(group_by=[occ[k] for k in keys], order_by=occ.day)
    g = occ.mutate(gap=occ.day.delta(occ.day.lag().over(w), unit="day").cast("float64"))
    end = ibis.date(as_of.date())
    per = g.group_by(keys).aggregate(
        occasions=g.count(), first_day=g.day.min(), last_day=g.day.max(),
        gap_logsum=g.gap.ln().sum().fill_null(0.0), gap_sqsum=(g.gap * g.gap).sum().fill_null(0.0),
        last_gap=g.gap.argmax(g.day), **{k: v(g) for k, v in extra.items()})
    return per.mutate(n_gaps=per.occasions - 1,
                      gap_sum=per.last_day.delta(per.first_day, unit="day").cast("float64"),
                      elapsed=end.delta(per.last_day, unit="day").cast("float64"))


def customer_gaps(transactions: ir.Table, as_of: dt.date | dt.datetime) -> ir.Table:
    """One row per customer who bought before `as_of`.

    Columns: customer_id, occasions, first_day, last_day, n_gaps, gap_sum, gap_logsum, gap_sqsum, last_gap
    (NULL with one occasion), elapsed (days from the last occasion to as_of), spend (all occasions)."""
    as_of = _ts(as_of)
    occ = purchases(transactions, as_of)
    return _gap_stats(occ, ["customer_id"], as_of, spend=lambda g: g.spend.sum())


def product_occasions(transactions: ir.Table, as_of: dt.date | dt.datetime | None = None,
                      start: dt.date | None = None) -> ir.Table:
    """Customer x product x day with the quantity and amount bought (purchase lines only, in [start, as_of))."""
    t = transactions
    keep = (~t.is_guest & ~t.is_non_product & ~t.is_cancellation & ~t.is_return & t.customer_id.notnull()
            & t.product_id.notnull())
    if as_of is not None:
        keep &= t.order_date < ibis.timestamp(_ts(as_of))
    if start is not None:
        keep &= t.order_date >= ibis.timestamp(_ts(start))
    lines = t.filter(keep)
    return lines.group_by(customer_id=lines.customer_id, product_id=lines.product_id,
                          day=lines.order_date.date()).aggregate(
        quantity=lines.quantity.sum(), amount=lines.amount.sum().fill_null(0.0),
        description=lines.description.max())


def product_cycles(transactions: ir.Table, as_of: dt.date | dt.datetime) -> ir.Table:
    """One row per customer x product bought before `as_of` (the re-order cycles).

    Columns: customer_id, product_id, description (the latest), occasions (= times bought: distinct days),
    first_day, last_day, n_gaps, gap_sum, gap_logsum, gap_sqsum, last_gap, elapsed, quantity (mean per
    occasion), amount (total), recent_w30 / recent_w90 (recency-weighted counts: the sum over the pair's
    occasions of exp(-age / 30) / exp(-age / 90), age in days before as_of)."""
    as_of = _ts(as_of)
    occ = product_occasions(transactions, as_of)
    end = ibis.date(as_of.date())

    def recent(tau: float):
        return lambda g: (-(end.delta(g.day, unit="day").cast("float64")) / tau).exp().sum()

    return _gap_stats(occ, ["customer_id", "product_id"], as_of,
                      description=lambda g: g.description.argmax(g.day),
                      quantity=lambda g: g.quantity.mean(), amount=lambda g: g.amount.sum(),
                      recent_w30=recent(30.0), recent_w90=recent(90.0))


def next_occasion(transactions: ir.Table, start: dt.date, end: dt.date) -> ir.Table:
    """Per customer, the first purchase occasion in [start, end), the occasions and spend in the window
    (for held-out evaluation)."""
    occ = purchases(transactions, _ts(end))
    occ = occ.filter(occ.day >= ibis.date(start))
    return occ.group_by("customer_id").aggregate(next_day=occ.day.min(), orders=occ.count(),
                                                 spend=occ.spend.sum())


def products_bought(transactions: ir.Table, start: dt.date, end: dt.date) -> ir.Table:
    """Distinct customer x product bought in [start, end) (held-out re-orders)."""
    occ = product_occasions(transactions, end, start)
    return occ.select("customer_id", "product_id").distinct()


def category_cycles(transactions: ir.Table, products: ir.Table, as_of: dt.date | dt.datetime) -> ir.Table:
    """One row per customer x product category bought before `as_of` (the rhythm per category); products
    without a category are left out. A category occasion is a customer-day with a purchase line of a
    product in that category (`products.category`, loaded with `loyalist ingest --kind products`).

    Columns: customer_id, category, occasions (= times bought: distinct days), first_day, last_day, n_gaps,
    gap_sum, gap_logsum, gap_sqsum, last_gap, elapsed, spend (all occasions)."""
    as_of = _ts(as_of)
    occ = product_occasions(transactions, as_of)
    cats = products.filter(products.category.notnull() & products.product_id.notnull())
    cats = cats.group_by("product_id").aggregate(category=cats.category.arbitrary())
    j = occ.inner_join(cats, "product_id")
    days = j.group_by(["customer_id", "category", "day"]).aggregate(spend=j.amount.sum())
    return _gap_stats(days, ["customer_id", "category"], as_of, spend=lambda g: g.spend.sum())
