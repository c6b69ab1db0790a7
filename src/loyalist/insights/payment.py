"""Analysis step "payment" (order 35): B2B payment behaviour and payment risk from the `invoices` table.

Per-customer columns added to `customer_insights` (NULL for customers without invoices):
    payment_risk (0-1, see loyalist.models.payment), payment_risk_reason (plain words with the numbers),
    dbt_days_6m (amount-weighted days beyond terms of the invoices paid in the last 6 months).

Result table `payment_behaviour` (one row per customer with an invoice before as_of): customer_id,
invoices_12m, amount_12m, paid_12m, days_to_pay_12m, dbt_3m, dbt_6m, dbt_12m, dbt_prev_6m, dbt_trend_6m
(dbt_6m - dbt_prev_6m), paid_3m, paid_6m, paid_prev_6m, late_share_12m, disputed_share_12m, open_amount,
overdue_amount, overdue_1_30, overdue_31_60, overdue_61_90, overdue_90_plus, overdue_60_count,
max_days_overdue, payment_risk, payment_risk_reason, as_of. Definitions: loyalist.features.payment.

No invoices before as_of: a note, no table, no columns (never an error).
Settings ([payment] in loyalist.toml): default_terms (30 days, when an invoice has no due date).
"""

from __future__ import annotations

import datetime as dt

import ibis
import pandas as pd

from loyalist.features.payment import payment_stats
from loyalist.insights import Context, step
from loyalist.models.payment import risk_points, risk_reasons, risk_score
from loyalist.store import Store, write_frame


def payment_table(store: Store, as_of: dt.date, default_terms: int = 30) -> pd.DataFrame:
    """The `payment_behaviour` table (empty when the store holds no invoices before `as_of`)."""
    inv = store.table("invoices")
    if int(inv.filter(inv.invoice_date < ibis.date(as_of)).count().execute()) == 0:
        return pd.DataFrame()
    st = payment_stats(inv, as_of, default_terms).execute()
    st["dbt_trend_6m"] = st["dbt_6m"] - st["dbt_prev_6m"]
    points = risk_points(st)
    st["payment_risk"] = risk_score(st, points)
    st["payment_risk_reason"] = risk_reasons(st, points)
    st["as_of"] = pd.Timestamp(as_of)
    return st


@step("payment", 35)
def payment_step(ctx: Context) -> pd.DataFrame | None:
    cfg = ctx.config.get("payment", {})
    table = payment_table(ctx.store, ctx.as_of, int(cfg.get("default_terms", 30)))
    if table.empty:
        ctx.notes.append("payment: the store holds no invoices before the as-of date, so payment behaviour "
                         "and payment risk are skipped (load them with `loyalist ingest FILE --kind invoices`)")
        return None
    write_frame(ctx.store, "payment_behaviour", table, replace=True)
    known = table[table["customer_id"].isin(ctx.customers["customer_id"])]
    if len(known) < len(table):
        ctx.notes.append(f"payment: {len(table) - len(known):,} customers have invoices but no orders before the "
                         "as-of date; they are in payment_behaviour only")
    return known[["customer_id", "payment_risk", "payment_risk_reason"]].assign(dbt_days_6m=known["dbt_6m"])
