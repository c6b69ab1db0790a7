"""Per-customer aggregates behind the direction, dissatisfaction, mix-shift and event signals (Ibis).

Everything here is an Ibis expression over the store's `transactions` (and `products`) tables, so the same
code runs embedded on DuckDB and on the PySpark backend; the statistics on top are in
`loyalist.models.direction` (pure numpy).

Windows, relative to `as_of` with `R = recent_days` (default 182, about six months):
- recent  = [as_of - R, as_of)
- prior   = [as_of - 2R, as_of - R)      (the same length, for like-for-like comparisons)
- early   = [first purchase, as_of - R)   (the customer's own past, for the rate test)
The first purchase occasion is excluded from the rate counts: the history starts at it, so counting it would
inflate the early rate (the usual conditioning of repeat-purchase models, e.g. Fader, Hardie & Lee 2005).

Product group (for mix shift and "first order in a new category"): the `category` of the product in the
`products` table when present; otherwise a group derived from the data: the last word of the product
description, which in wholesale/retail catalogues is usually the noun naming the kind of product
("... T-LIGHT HOLDER" -> HOLDER, "... LUNCH BAG" -> BAG, "... MUG" -> MUG), after dropping trailing colour,
size, pattern and pack words ("JUMBO BAG RED RETROSPOT" -> BAG); without a description, the product id.
"""

from __future__ import annotations

import datetime as dt

import ibis
import ibis.expr.types as ir

from loyalist.features.summary import purchases


def _ts(d: dt.date | dt.datetime) -> dt.datetime:
    return d if isinstance(d, dt.datetime) else dt.datetime.combine(d, dt.time())


def _purchase_lines(t: ir.Table, as_of: dt.datetime) -> ir.Table:
    keep = (~t.is_guest & ~t.is_non_product & ~t.is_cancellation & ~t.is_return & t.customer_id.notnull()
            & (t.order_date < ibis.timestamp(as_of)))
    return t.filter(keep)


def numbered_occasions(t: ir.Table, as_of: dt.date | dt.datetime) -> ir.Table:
    """Purchase occasions with their number (0 = first), the gap to the previous one (days) and the mean
    spend of the earlier occasions: customer_id, day, spend, lines, n, gap, prev_mean_spend."""
    occ = purchases(t, _ts(as_of))
    w = ibis.window(group_by=occ.customer_id, order_by=occ.day)
    cw = ibis.cumulative_window(group_by=occ.customer_id, order_by=occ.day)
    occ = occ.mutate(n=ibis.row_number().over(w), gap=occ.day.delta(occ.day.lag().over(w), unit="day"),
                     cum_spend=occ.spend.sum().over(cw))
    return occ.mutate(prev_mean_spend=ibis.ifelse(occ.n > 0, (occ.cum_spend - occ.spend) / occ.n,
                                                  ibis.null("float64"))).drop("cum_spend")


def direction_stats(t: ir.Table, as_of: dt.date | dt.datetime, recent_days: int = 182,
                    trend_recent_days: int = 91, trend_early_days: int = 365) -> ir.Table:
    """One row per customer with a purchase before `as_of`.

    Columns: customer_id, first_day, last_day, orders;
    trend windows (recent = the last `trend_recent_days`, early = the `trend_early_days` before it, repeat
    occasions only): n_early, s_early, q_early (orders, spend, sum of squared order values), n_recent,
    s_recent, q_recent; n_ly, s_ly, q_ly: the same for the recent trend window one year (365 days) earlier
    (the year-over-year comparison);
    like-for-like windows of `recent_days` (recent and prior, all occasions): s_recent_all, n_prior, s_prior,
    b_recent, ls_recent, ls2_recent, b_prior, ls_prior, ls2_prior (orders, sum of log order value and of its
    square, for the basket test); s_12m (spend in the last 365 days); gaps_early, gap_sum_early (gaps
    ending before the recent window), gaps_recent, gap_sum_recent (gaps ending inside it); range_recent,
    range_prior (distinct products); returned_recent, returned_prior, return_lines_recent (absolute value
    and count of return and cancellation lines).
    """
    as_of = _ts(as_of)
    split = ibis.date((as_of - dt.timedelta(days=recent_days)).date())
    prior = ibis.date((as_of - dt.timedelta(days=2 * recent_days)).date())
    year = ibis.date((as_of - dt.timedelta(days=365)).date())
    t_split = ibis.date((as_of - dt.timedelta(days=trend_recent_days)).date())
    t_start = ibis.date((as_of - dt.timedelta(days=trend_recent_days + trend_early_days)).date())
    occ = numbered_occasions(t, as_of)
    is_recent = occ.day >= split
    is_prior = (occ.day >= prior) & ~is_recent
    repeat = occ.n > 0
    t_recent = repeat & (occ.day >= t_split)
    t_early = repeat & (occ.day >= t_start) & (occ.day < t_split)
    ly_start = ibis.date((as_of - dt.timedelta(days=365 + trend_recent_days)).date())
    t_ly = repeat & (occ.day >= ly_start) & (occ.day < ibis.date((as_of - dt.timedelta(days=365)).date()))
    pos = occ.spend > 0
    logb = ibis.ifelse(pos, occ.spend.log(), 0.0)

    def s(cond, val):
        return ibis.ifelse(cond, val, 0.0).sum()

    per = occ.group_by("customer_id").aggregate(
        first_day=occ.day.min(), last_day=occ.day.max(), orders=occ.count(),
        n_early=s(t_early, 1.0), s_early=s(t_early, occ.spend), q_early=s(t_early, occ.spend * occ.spend),
        n_recent=s(t_recent, 1.0), s_recent=s(t_recent, occ.spend), q_recent=s(t_recent, occ.spend * occ.spend),
        n_ly=s(t_ly, 1.0), s_ly=s(t_ly, occ.spend), q_ly=s(t_ly, occ.spend * occ.spend),
        s_recent_all=s(is_recent, occ.spend), n_prior=s(is_prior, 1.0), s_prior=s(is_prior, occ.spend),
        b_recent=s(is_recent & pos, 1.0), ls_recent=s(is_recent & pos, logb), ls2_recent=s(is_recent & pos, logb * logb),
        b_prior=s(is_prior & pos, 1.0), ls_prior=s(is_prior & pos, logb), ls2_prior=s(is_prior & pos, logb * logb),
        s_12m=s(occ.day >= year, occ.spend),
        gaps_early=s(repeat & ~is_recent, 1.0), gap_sum_early=s(repeat & ~is_recent, occ.gap.cast("float64")),
        gaps_recent=s(repeat & is_recent, 1.0), gap_sum_recent=s(repeat & is_recent, occ.gap.cast("float64")),
    )
    lines = _purchase_lines(t, as_of)
    lday = lines.order_date.date()
    rng = lines.group_by("customer_id").aggregate(
        range_recent=lines.product_id.nunique(where=lday >= split),
        range_prior=lines.product_id.nunique(where=(lday >= prior) & (lday < split)))
    back = t.filter((t.is_return | t.is_cancellation) & ~t.is_guest & ~t.is_non_product & t.customer_id.notnull()
                    & (t.order_date < ibis.timestamp(as_of)) & (t.order_date >= ibis.timestamp(prior)))
    bday = back.order_date.date()
    ret = back.group_by("customer_id").aggregate(
        returned_recent=ibis.ifelse(bday >= split, back.amount.abs().fill_null(0.0), 0.0).sum(),
        returned_prior=ibis.ifelse(bday < split, back.amount.abs().fill_null(0.0), 0.0).sum(),
        return_lines_recent=ibis.ifelse(bday >= split, 1, 0).sum())
    out = per.left_join(rng, "customer_id").drop("customer_id_right")
    out = out.left_join(ret, "customer_id").drop("customer_id_right")
    return out.mutate(range_recent=out.range_recent.fill_null(0), range_prior=out.range_prior.fill_null(0),
                      returned_recent=out.returned_recent.fill_null(0.0),
                      returned_prior=out.returned_prior.fill_null(0.0),
                      return_lines_recent=out.return_lines_recent.fill_null(0))


def daily_activity(t: ir.Table, as_of: dt.date | dt.datetime, days: int, repeat_only: bool = True) -> ir.Table:
    """Repeat-purchase occasions of the whole customer base per day in the `days` before `as_of`
    (day, occasions): the seasonal exposure of the trend test (see loyalist.models.direction). With
    `repeat_only` False, all purchase occasions (first orders too: the season guard's base activity, free of
    the data's start, where every customer's first order in the data is not a repeat)."""
    as_of = _ts(as_of)
    occ = numbered_occasions(t, as_of)
    keep = occ.day >= ibis.date((as_of - dt.timedelta(days=days)).date())
    occ = occ.filter((occ.n > 0) & keep if repeat_only else keep)
    return occ.group_by("day").aggregate(occasions=occ.count())


_MODIFIERS = ("RED|WHITE|BLUE|PINK|GREEN|BLACK|IVORY|CREAM|GOLD|SILVER|PURPLE|ORANGE|YELLOW|BROWN|GREY|"
              "NATURAL|COLOUR|COLOURS|ASSORTED|SMALL|LARGE|MEDIUM|MINI|JUMBO|DESIGN|DESIGNS|RETROSPOT|"
              "SPOT|SPOTS|POLKADOT|PAISLEY|VINTAGE|SET|SETS|OF|AND|IN|WITH|[0-9A-Z]?[0-9]+[A-Z]*|[^A-Z0-9 ]+")
_TRAILING_MODIFIERS = rf"(\s+({_MODIFIERS}))+$"
"""Trailing colour, size, pattern and pack words that follow the product noun in many descriptions
("JUMBO BAG RED RETROSPOT" -> BAG, "LUNCH BOX I LOVE LONDON" -> LONDON is accepted noise)."""


def product_group(t: ir.Table, products: ir.Table | None) -> ir.Table:
    """`t` with a `product_group` column (see the module docstring for the rule)."""
    desc = t.description.strip().upper().re_replace(_TRAILING_MODIFIERS, "")
    derived = desc.re_extract(r"([A-Z][A-Z]+)$", 1).nullif("")
    if products is None:
        return t.mutate(product_group=ibis.coalesce(derived, t.product_id))
    cat = products.select(products.product_id, category=products.category.strip().nullif("")).filter(
        lambda p: p.category.notnull()).distinct(on="product_id")
    j = t.left_join(cat, t.product_id == cat.product_id)
    return j.mutate(product_group=ibis.coalesce(j.category, derived, j.product_id)).drop("category", "product_id_right")


def has_categories(products: ir.Table) -> bool:
    return int(products.filter(products.category.notnull() & (products.category.strip() != "")).count().execute()) > 0


def group_mix(t: ir.Table, products: ir.Table | None, as_of: dt.date | dt.datetime, window_days: int = 182,
              windows: int = 4) -> ir.Table:
    """Spend per customer, window and product group: customer_id, window (0 = the most recent `window_days`,
    1 the one before ...), product_group, spend. Only purchase lines with a positive amount."""
    as_of = _ts(as_of)
    start = as_of - dt.timedelta(days=window_days * windows)
    lines = _purchase_lines(t, as_of)
    lines = lines.filter((lines.order_date >= ibis.timestamp(start)) & (lines.amount > 0))
    lines = product_group(lines, products)
    k = (ibis.date(as_of.date()).delta(lines.order_date.date(), unit="day") - 1) // window_days
    lines = lines.mutate(window=k.cast("int64"))
    return lines.group_by("customer_id", "window", "product_group").aggregate(spend=lines.amount.sum())


def first_group_orders(t: ir.Table, products: ir.Table | None, as_of: dt.date | dt.datetime) -> ir.Table:
    """For each customer and product group: the day of its first purchase, the spend that day, and how many
    purchase occasions the customer had before that day (customer_id, product_group, day, spend, prior_orders)."""
    as_of = _ts(as_of)
    lines = product_group(_purchase_lines(t, as_of).filter(lambda x: x.amount > 0), products)
    lines = lines.mutate(day=lines.order_date.date())
    per_day = lines.group_by("customer_id", "product_group", "day").aggregate(spend=lines.amount.sum())
    first = per_day.group_by("customer_id", "product_group").aggregate(day=per_day.day.min())
    first = first.join(per_day, ["customer_id", "product_group", "day"])
    occ = numbered_occasions(t, as_of).select("customer_id", "day", "n")
    return first.join(occ, ["customer_id", "day"]).select("customer_id", "product_group", "day", "spend",
                                                          prior_orders="n")
