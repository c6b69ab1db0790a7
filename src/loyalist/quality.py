"""What the store holds and what is wrong with it: `loyalist status` and `loyalist quality`.

Written as Ibis expressions so the same figures come from DuckDB or any other Ibis backend.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import ibis
import ibis.expr.types as ir

from loyalist.store import Store


def _scalar(expr: ir.Scalar) -> Any:
    value = expr.execute()
    return value.item() if hasattr(value, "item") else value


def _iso(value: Any) -> str | None:
    return None if value is None or value != value else str(value)[:19]


@dataclass
class Status:
    db: str
    customers: int
    products: int
    orders: int
    lines: int
    guest_lines: int
    first_order: str | None
    last_order: str | None
    invoices: int
    customer_attributes: int
    product_attributes: int
    quarantined: int
    ingests: int
    last_ingest: str | None
    last_ingest_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def status(store: Store) -> Status:
    t = store.table("transactions")
    agg = t.aggregate(
        customers=t.customer_id.nunique(),
        products=t.product_id.nunique(),
        orders=t.order_id.nunique(),
        lines=t.count(),
        guest_lines=t.is_guest.sum(),
        first_order=t.order_date.min(),
        last_order=t.order_date.max(),
    ).execute().iloc[0]
    # Lines without an order id (CDNOW) are one order per customer and time, as the models count them.
    no_id = t.filter(t.order_id.isnull())
    orders_without_id = int(_scalar(no_id.select("customer_id", "order_date").distinct().count()))
    ing = store.table("ingests")
    last_id = _scalar(ing.ingest_id.max())
    last_files: list[str] = []
    last_at = None
    if last_id is not None and last_id == last_id:
        last = ing.filter(ing.ingest_id == int(last_id))
        last_files = [str(s) for s in last.source.execute()]
        last_at = _iso(_scalar(last.finished_at.max()))
    return Status(
        db=str(store.path),
        customers=int(agg.customers), products=int(agg.products), orders=int(agg.orders) + orders_without_id,
        lines=int(agg.lines), guest_lines=int(agg.guest_lines or 0),
        first_order=_iso(agg.first_order), last_order=_iso(agg.last_order),
        invoices=int(_scalar(store.table("invoices").count())),
        customer_attributes=int(_scalar(store.table("customers").count())),
        product_attributes=int(_scalar(store.table("products").count())),
        quarantined=int(_scalar(store.table("quarantine").count())),
        ingests=int(_scalar(ing.ingest_id.nunique())),
        last_ingest=last_at, last_ingest_files=last_files,
    )


@dataclass
class Finding:
    """One kind of data problem: how much of it there is, what loyalist does with it, what the user can do."""

    check: str
    lines: int
    share_of_lines: float
    amount: float | None
    handling: str
    decision: str | None = None
    examples: list[dict] = field(default_factory=list)


def quality(store: Store, examples: int = 5) -> list[Finding]:
    """Every data-quality check with its count; checks with nothing to report are included with 0."""
    t = store.table("transactions")
    total = int(_scalar(t.count())) or 0
    denom = max(total, 1)
    findings: list[Finding] = []

    def add(check: str, subset: ir.Table, handling: str, decision: str | None = None,
            cols: tuple[str, ...] = ("customer_id", "order_id", "order_date", "product_id", "quantity",
                                     "unit_price", "amount")) -> None:
        n = int(_scalar(subset.count()))
        amount = _scalar(subset.amount.sum()) if n else 0.0
        ex = subset.select(*cols).limit(examples).execute().astype(object)
        ex = ex.where(ex.notna(), None)
        findings.append(Finding(check, n, n / denom, None if amount is None else float(amount), handling,
                                decision, [{k: (str(v) if v is not None else None) for k, v in r.items()}
                                           for r in ex.to_dict("records")]))

    add("guest orders (blank customer id)", t.filter(t.is_guest),
        "stored and counted in demand, left out of per-customer analyses",
        "ingest with --guests quarantine to set them aside instead")
    add("non-product lines (postage, fees, manual adjustments, vouchers)", t.filter(t.is_non_product),
        "stored, flagged, left out of behaviour models",
        "extend the list in loyalist.toml [ingest] non_product_codes / non_product_description")
    add("zero prices", t.filter(t.price_issue == "zero"), "stored; left out of spend models (free items)")
    add("negative prices", t.filter(t.price_issue == "negative"),
        "stored, treated like a non-product adjustment in spend models")

    cancels = t.filter(t.is_cancellation | t.is_return).filter(t.customer_id.notnull())
    sales = t.filter(~t.is_cancellation & ~t.is_return & t.customer_id.notnull())
    s = sales.select(c_customer=sales.customer_id, c_product=sales.product_id, c_date=sales.order_date,
                     c_qty=sales.quantity)
    matched_keys = cancels.join(
        s,
        [cancels.customer_id == s.c_customer, cancels.product_id == s.c_product, s.c_date <= cancels.order_date],
    ).select(cancels.line_hash).distinct()
    matched = cancels.semi_join(matched_keys, "line_hash")
    unmatched = cancels.anti_join(matched_keys, "line_hash")
    add("returns / cancellations with a matching earlier purchase", matched,
        "stored, linked to the customer; used for return-share and dissatisfaction signals")
    add("returns / cancellations without a matching original (bought before the data starts)", unmatched,
        "stored; counted as returns for the customer, not netted against a purchase")
    add("future order dates", t.filter(t.is_future),
        "stored, flagged; analyses use only data up to today (or --as-of)")

    cur = t.filter(t.currency.notnull()).group_by("currency").aggregate(n=ibis._.count()).execute()
    if len(cur) > 1:
        main = cur.sort_values("n").iloc[-1]["currency"]
        add(f"mixed currencies ({', '.join(sorted(map(str, cur.currency)))}); most lines in {main}",
            t.filter(t.currency.notnull() & (t.currency != main)),
            "stored as given; spend figures are per currency unless converted before ingest")
    else:
        findings.append(Finding("mixed currencies", 0, 0.0, 0.0,
                                "one currency" if len(cur) else "no currency column: amounts taken as one currency"))

    # Outliers: line amounts far out on a log scale (robust z-score > 5 using the median absolute deviation).
    pos = t.filter((t.amount.abs() > 0) & ~t.is_non_product)
    logs = pos.mutate(la=pos.amount.abs().ln())
    med = _scalar(logs.la.approx_median())
    if med is not None and med == med:
        mad = _scalar((logs.la - med).abs().approx_median()) or 0.0
        if mad > 0:
            add("outlier line amounts (robust z-score above 5 on a log scale)",
                logs.filter(((logs.la - med) / (1.4826 * mad)) > 5),
                "stored as given; spend models use per-customer averages, which dampen single outliers")

    q = store.table("quarantine")
    by_rule = q.group_by("rule").aggregate(n=ibis._.count()).order_by(ibis.desc("n")).execute()
    read = total + int(by_rule["n"].sum())  # the rows read: stored lines and every quarantined row
    for rule, n in zip(by_rule["rule"], by_rule["n"]):
        findings.append(Finding(f"quarantined: {rule}", int(n), float(n) / max(read, 1), None,
                                "not stored as a transaction; kept in quarantine with file, row and column",
                                "fix the source and ingest it again, or export with loyalist quality --export"))
    return findings


def quarantine_table(store: Store) -> ir.Table:
    q = store.table("quarantine")
    return q.order_by(["ingest_id", "file_id", "row"]).select(
        "ingest_id", "kind", "source", "row", "column", "value", "rule", "record")
