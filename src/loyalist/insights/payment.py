"""Analysis step "payment" (order 35): B2B payment behaviour and payment risk from the `invoices` table.

Per-customer columns added to `customer_insights` (NULL for customers without invoices):
    payment_risk (0-1, see loyalist.models.payment), payment_risk_reason (plain words with the numbers),
    dbt_days_6m (amount-weighted days beyond terms of the invoices paid in the last 6 months).

Result table `payment_behaviour` (one row per customer with an invoice before as_of): customer_id,
invoices_12m, amount_12m, paid_12m, days_to_pay_12m, dbt_3m, dbt_6m, dbt_12m, dbt_prev_6m, dbt_trend_6m
(dbt_6m - dbt_prev_6m), paid_3m, paid_6m, paid_prev_6m, late_share_12m, disputed_share_12m, open_amount,
overdue_amount, overdue_1_30, overdue_31_60, overdue_61_90, overdue_90_plus, overdue_60_count,
max_days_overdue, payment_risk, payment_risk_reason, as_of. Definitions: loyalist.features.payment.

No invoices before as_of: a note, no columns (never an error), and no table: a `payment_behaviour` table an
earlier run left in the store is dropped (else `loyalist payments`, the customer page and the events would show
that run's figures as current).
Settings ([payment] in loyalist.toml): default_terms (30 days, when an invoice has no due date).

On the Spark engine (`payment_on_spark`; invoices from `--invoices`): `payment_stats` is the same Ibis
expression on Spark and `payment_rows` (the trend, score and reason) runs per Arrow batch on the executors;
only the invoice count reaches the driver. Without --invoices: the same note, no table, no columns (and an earlier
run's table dropped from --db).
"""

from __future__ import annotations

import datetime as dt

import ibis
import pandas as pd

from loyalist.features.payment import payment_stats
from loyalist.insights import Context, step
from loyalist.models.payment import risk_points, risk_reasons, risk_score
from loyalist.store import Store, has_table, write_frame

PAYMENT_TYPES = {"customer_id": "string", "invoices_12m": "long", "amount_12m": "double", "paid_12m": "long",
                 "days_to_pay_12m": "double", "dbt_3m": "double", "dbt_6m": "double", "dbt_12m": "double",
                 "dbt_prev_6m": "double", "paid_3m": "long", "paid_6m": "long", "paid_prev_6m": "long",
                 "late_share_12m": "double", "disputed_share_12m": "double", "open_amount": "double",
                 "overdue_amount": "double", "overdue_1_30": "double", "overdue_31_60": "double",
                 "overdue_61_90": "double", "overdue_90_plus": "double", "overdue_60_count": "double",
                 "max_days_overdue": "double", "dbt_trend_6m": "double", "payment_risk": "double",
                 "payment_risk_reason": "string", "as_of": "timestamp"}
"""The `payment_behaviour` table's columns, in order, and their types (as the DuckDB engine's frame holds them)."""


def payment_rows(st: pd.DataFrame, as_of: dt.date) -> pd.DataFrame:
    """The `payment_behaviour` rows from `payment_stats` rows: the trend, the risk score and its reason. Row by
    row (the Spark engine runs it on each batch of customers)."""
    st = st.copy()
    for c, k in PAYMENT_TYPES.items():  # the same types whichever engine aggregated
        if k == "double" and c in st.columns:
            st[c] = st[c].astype(float)
        elif k == "long" and c in st.columns:
            st[c] = st[c].astype("int64")
    st["dbt_trend_6m"] = st["dbt_6m"] - st["dbt_prev_6m"]
    points = risk_points(st)
    st["payment_risk"] = risk_score(st, points)
    st["payment_risk_reason"] = risk_reasons(st, points)
    st["as_of"] = pd.Timestamp(as_of)
    return st


def _has_invoices(inv, as_of: dt.date) -> bool:
    return int(inv.filter(inv.invoice_date < ibis.date(as_of)).count().execute()) > 0


def payment_table(store: Store, as_of: dt.date, default_terms: int = 30) -> pd.DataFrame:
    """The `payment_behaviour` table (empty when the store holds no invoices before `as_of`)."""
    inv = store.table("invoices")
    if not _has_invoices(inv, as_of):
        return pd.DataFrame()
    return payment_rows(payment_stats(inv, as_of, default_terms).execute(), as_of)


def payment_on_spark(source, as_of: dt.date, default_terms: int = 30):
    """`payment_table` on the Spark engine (`source` = loyalist.engine.spark.SparkSource), as a persisted
    Spark DataFrame, or None without invoices before as_of: `payment_stats` is the same Ibis expression on
    Spark (executors), `payment_rows` runs on each Arrow batch of customers (mapInPandas, executors); nothing
    but the count of invoices reaches the driver."""

    from loyalist.engine.spark import spark_schema

    inv = source.table("invoices")
    if not _has_invoices(inv, as_of):
        return None
    con = source.ibis

    def rows(batches):
        for b in batches:
            if len(b):
                yield payment_rows(b, as_of)[list(PAYMENT_TYPES)]

    stats = con._session.sql(con.compile(payment_stats(inv, as_of, default_terms)))
    table = source.keep(stats.mapInPandas(rows, spark_schema(PAYMENT_TYPES)))
    return table


NO_INVOICES = ("payment: the store holds no invoices before the as-of date, so payment behaviour and payment "
               "risk are skipped")


def drop_stale_table(store: Store | None) -> str:
    """Drop the `payment_behaviour` table an earlier run left in `store` (None: no store); the note's words
    saying so, or ''."""
    if store is None or not has_table(store, "payment_behaviour"):
        return ""
    as_of = store.con.execute("SELECT max(as_of) FROM payment_behaviour").fetchall()[0][0]
    store.con.execute("DROP TABLE payment_behaviour")
    when = f" (as of {pd.Timestamp(as_of).date()})" if as_of is not None else ""
    return f"; the payment_behaviour table of an earlier run{when} was removed"


@step("payment", 35, spark=True)
def payment_step(ctx: Context) -> pd.DataFrame | None:
    """On the Spark engine `ctx.store` is a SparkSource: the table is `payment_on_spark` (invoices from
    --invoices), handed to its `write_result`."""
    cfg = ctx.config.get("payment", {})
    terms = int(cfg.get("default_terms", 30))
    write = getattr(ctx.store, "write_result", None)
    if write is not None:
        table = payment_on_spark(ctx.store, ctx.as_of, terms)
        if table is None:
            given = "invoices" in ctx.store.tables  # --invoices given, but all dated on or after as_of
            ctx.notes.append(NO_INVOICES + ("" if given else " (give them to the Spark engine with --invoices "
                                            "PATH|TABLE; `loyalist dump invoices --out DIR` writes them from a store)")
                             + drop_stale_table(ctx.store.stored))
            return None
        write("payment_behaviour", table)
        con = ctx.store.ibis
        view = f"loyalist_payment_{abs(hash((str(ctx.as_of), id(table)))) % 10**8}"
        table.createOrReplaceTempView(view)
        pay = con.table(view)
        known = pay.semi_join(ctx.customers, "customer_id").count().execute()
        unknown = int(pay.count().execute()) - int(known)
        if unknown:
            ctx.notes.append(f"payment: {unknown:,} customers have invoices but no orders before the "
                             "as-of date; they are in payment_behaviour only")
        return pay.select("customer_id", "payment_risk", "payment_risk_reason", dbt_days_6m=pay.dbt_6m)
    table = payment_table(ctx.store, ctx.as_of, terms)
    if table.empty:
        ctx.notes.append(NO_INVOICES + " (load them with `loyalist ingest FILE --kind invoices`)"
                         + drop_stale_table(ctx.store))
        return None
    write_frame(ctx.store, "payment_behaviour", table, replace=True)
    known = table[table["customer_id"].isin(ctx.customers["customer_id"])]
    if len(known) < len(table):
        ctx.notes.append(f"payment: {len(table) - len(known):,} customers have invoices but no orders before the "
                         "as-of date; they are in payment_behaviour only")
    return known[["customer_id", "payment_risk", "payment_risk_reason"]].assign(dbt_days_6m=known["dbt_6m"])
