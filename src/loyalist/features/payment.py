"""Per-customer payment behaviour from the `invoices` table, as Ibis expressions (DuckDB or PySpark).

Only what was known at `as_of` is used: invoices issued before it, payments dated before it (a later
payment date means the invoice was still open at `as_of`). A missing due date is taken as the invoice date
plus `default_terms` days.

Definitions (days):
- days to pay = paid_date - invoice_date;
- days beyond terms (DBT) of a paid invoice = max(paid_date - due_date, 0); dbt_3m / dbt_6m / dbt_12m
  are amount-weighted means over invoices PAID in the last 3 / 6 / 12 months, dbt_prev_6m over those paid
  6-12 months ago (the trend is dbt_6m - dbt_prev_6m, and dbt_3m - dbt_12m);
- late share = share of invoices paid in the last 12 months that were paid after their due date;
- disputed share = share of invoices issued in the last 12 months flagged disputed;
- open overdue = unpaid at as_of and past due; aging buckets by days past due: 1-30, 31-60, 61-90, 90+.
"""

from __future__ import annotations

import datetime as dt

import ibis
import ibis.expr.types as ir


def payment_stats(invoices: ir.Table, as_of: dt.date, default_terms: int = 30) -> ir.Table:
    """One row per customer with an invoice before `as_of`: customer_id, invoices_12m, amount_12m, paid_12m,
    days_to_pay_12m, dbt_3m, dbt_6m, dbt_12m, dbt_prev_6m, paid_3m, paid_6m, paid_prev_6m, late_share_12m,
    disputed_share_12m, open_amount, overdue_amount, overdue_1_30, overdue_31_60, overdue_61_90,
    overdue_90_plus (amounts), overdue_60_count (invoices more than 60 days past due), max_days_overdue."""
    end = ibis.date(as_of)
    i = invoices.filter(invoices.customer_id.notnull() & (invoices.invoice_date < end))
    due = ibis.coalesce(i.due_date, i.invoice_date + ibis.interval(days=default_terms))
    paid_known = i.paid_date.notnull() & (i.paid_date < end)
    w = ibis.coalesce(i.amount.abs(), 1.0)
    i = i.mutate(due=due, paid_known=paid_known, w=w,
                 dtp=ibis.ifelse(paid_known, i.paid_date.delta(i.invoice_date, unit="day"), ibis.null("int64")),
                 dbt=ibis.ifelse(paid_known, ibis.greatest(i.paid_date.delta(due, unit="day"), 0), ibis.null("int64")),
                 overdue_days=ibis.ifelse(~paid_known, end.delta(due, unit="day"), ibis.null("int64")))

    def since(days: int):
        return ibis.date(as_of - dt.timedelta(days=days))

    def paid_in(a: int, b: int = 0):
        return i.paid_known & (i.paid_date >= since(a)) & (i.paid_date < since(b) if b else True)

    def wmean(cond):
        return (ibis.ifelse(cond, i.w * i.dbt, 0.0).sum() / ibis.ifelse(cond, i.w, 0.0).sum().nullif(0.0))

    issued12 = i.invoice_date >= since(365)
    od = i.overdue_days
    open_amt = ibis.ifelse(~i.paid_known, ibis.coalesce(i.amount, 0.0), 0.0)

    def bucket(lo: int, hi: int | None):
        cond = (od >= lo) & ((od <= hi) if hi else True)
        return ibis.ifelse(cond, ibis.coalesce(i.amount, 0.0), 0.0).sum()

    return i.group_by("customer_id").aggregate(
        invoices_12m=issued12.sum(), amount_12m=ibis.ifelse(issued12, ibis.coalesce(i.amount, 0.0), 0.0).sum(),
        paid_12m=paid_in(365).sum(),
        days_to_pay_12m=ibis.ifelse(paid_in(365), i.dtp, ibis.null("int64")).mean(),
        dbt_3m=wmean(paid_in(91)), dbt_6m=wmean(paid_in(182)), dbt_12m=wmean(paid_in(365)),
        dbt_prev_6m=wmean(paid_in(365, 182)),
        paid_3m=paid_in(91).sum(), paid_6m=paid_in(182).sum(), paid_prev_6m=paid_in(365, 182).sum(),
        late_share_12m=ibis.ifelse(paid_in(365), ibis.ifelse(i.dbt > 0, 1.0, 0.0), ibis.null("float64")).mean(),
        disputed_share_12m=ibis.ifelse(issued12, ibis.ifelse(i.disputed.fill_null(False), 1.0, 0.0),
                                       ibis.null("float64")).mean(),
        open_amount=open_amt.sum(), overdue_amount=bucket(1, None),
        overdue_1_30=bucket(1, 30), overdue_31_60=bucket(31, 60), overdue_61_90=bucket(61, 90),
        overdue_90_plus=bucket(91, None), overdue_60_count=(od > 60).fill_null(False).sum(),
        max_days_overdue=od.max(),
    )
