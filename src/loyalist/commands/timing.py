"""`loyalist next`, `loyalist overdue`, `loyalist reorders`: the timing results of `loyalist analyze`
(issue 5), printed or exported (--format csv|json|parquet|xlsx --out FILE)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from loyalist.cli import ConfigOption, DbOption, FormatOption, OutOption, TopOption, _db, _errors, app, config, emit
from loyalist.errors import LoyalistError

NEXT_COLUMNS = ["customer_id", "last_order", "orders", "cycle_days", "cycle_regularity", "cycle_class",
                "next_order_date", "next_order_p10", "next_order_p90", "prob_order_30d", "prob_order_60d",
                "prob_order_90d", "contact_due_date"]
OVERDUE_COLUMNS = ["customer_id", "overdue_score", "overdue_days", "last_order", "orders", "cycle_days",
                   "expected_order_value", "overdue_reason"]


def _open(db, config_path):
    from loyalist.store import open_store

    cfg = config.load(config_path)
    return open_store(_db(db, cfg), read_only=True)


def _customers(store, columns: list[str]):
    from loyalist.analysis import CUSTOMER_TABLE
    from loyalist.store import has_table

    if not has_table(store, CUSTOMER_TABLE):
        raise LoyalistError(f"{store.path}: no timing results yet; run `loyalist analyze --db {store.path}` first")
    if "next_order_date" not in store.table(CUSTOMER_TABLE).columns:
        raise LoyalistError(f"{store.path}: no timing results: the last analysis skipped its timing step (its notes "
                            "say why, e.g. too few repeat customers)")
    t = store.table(CUSTOMER_TABLE)
    return t.select(*[c for c in columns if c in t.columns])


@app.command("next")
def next_order(
    db: DbOption = None,
    customer: Annotated[Optional[str], typer.Option("--customer", help="Only this customer.")] = None,
    top: TopOption = None,
    fmt: FormatOption = None,
    out_file: OutOption = None,
    config_path: ConfigOption = None,
) -> None:
    """When each customer should order next: median date, 80% interval, P(order within 30/60/90 days).

    The interval allows for the customer never ordering again: an empty upper end (or date) means the
    chance of another order at all is below 90% (50%). Soonest expected orders first."""
    with _errors():
        store = _open(db, config_path)
        t = _customers(store, NEXT_COLUMNS)
        if customer is not None:
            t = t.filter(t.customer_id == customer)
        expr = t.order_by([t.next_order_date.asc(nulls_first=False), t.prob_order_30d.desc(), t.customer_id])
        frame = (expr if top is None else expr.limit(top)).execute()
        store.close()
        if customer is not None and frame.empty:
            raise LoyalistError(f"--customer {customer!r}: no such customer in the analysis")
        emit(frame, fmt, out_file, "customers")


@app.command()
def overdue(
    db: DbOption = None,
    min_value: Annotated[float, typer.Option("--min-value", help="Only customers with at least this value at "
                                                                "stake (expected order value x P(alive)).")] = 0.0,
    top: TopOption = None,
    fmt: FormatOption = None,
    out_file: OutOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Customers who should have bought but did not: a silence this long is improbable (< 10%) under their own
    rhythm if they are still active. Ranked by value at stake; each row says why."""
    with _errors():
        store = _open(db, config_path)
        t = _customers(store, OVERDUE_COLUMNS)
        t = t.filter((t.overdue_score > 0) & (t.overdue_score >= min_value))
        expr = t.order_by([t.overdue_score.desc(), t.customer_id])
        frame = (expr if top is None else expr.limit(top)).execute()
        store.close()
        emit(frame, fmt, out_file, "overdue customers")


@app.command()
def reorders(
    db: DbOption = None,
    customer: Annotated[Optional[str], typer.Option("--customer", help="Only this customer's products.")] = None,
    overdue_only: Annotated[bool, typer.Option("--overdue", help="Only items past their usual re-order cycle.")] = False,
    next_products: Annotated[bool, typer.Option("--next-products", help="Instead: the products each customer is "
                                                                       "most likely to order next, with probabilities.")] = False,
    by_category: Annotated[bool, typer.Option("--by-category", help="Instead: the purchase rhythm per customer x "
                                                                   "product category (needs categories: `loyalist "
                                                                   "ingest --kind products`).")] = False,
    top: TopOption = None,
    fmt: FormatOption = None,
    out_file: OutOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Re-order cycles per customer x product: usual cycle, expected re-order date and quantity, days overdue and
    why ("usually re-orders 85123A every ~35 days; 61 days since last"). Most overdue first."""
    from loyalist.store import has_table

    with _errors():
        store = _open(db, config_path)
        if next_products and by_category:
            raise LoyalistError("choose one of --next-products and --by-category")
        name = "next_products" if next_products else "category_rhythm" if by_category else "reorders"
        if by_category and not has_table(store, name):
            raise LoyalistError(f"{store.path}: no category_rhythm table: the products need categories (`loyalist "
                                f"ingest --kind products FILE`), then run `loyalist analyze --db {store.path}`")
        if not has_table(store, name):
            from loyalist.insights.aggregate import has_products

            if not has_products(store):
                raise LoyalistError(f"{store.path}: the transactions carry no product codes, so there are no "
                                    "re-order cycles or next products")
            _customers(store, [])  # no analysis, or one whose timing step was skipped: say so
            raise LoyalistError(f"{store.path}: no {name} table yet; run `loyalist analyze --db {store.path}`")
        t = store.table(name)
        if customer is not None:
            t = t.filter(t.customer_id == customer)
        if next_products:
            expr = t.order_by([t.customer_id, t["rank"]])
        elif by_category:
            if overdue_only:
                t = t.filter(t.overdue_days > 0)
            expr = t.order_by([t.customer_id, t.category])
        else:
            if overdue_only:
                t = t.filter(t.overdue_days > 0)
            expr = t.order_by([t.overdue_days.desc(), t.customer_id, t.product_id])
        frame = (expr if top is None else expr.limit(top)).execute()
        store.close()
        if customer is not None and frame.empty:
            raise LoyalistError(f"--customer {customer!r}: no {name.replace('_', ' ')} for this customer")
        emit(frame, fmt, out_file, name.replace("_", " "))
