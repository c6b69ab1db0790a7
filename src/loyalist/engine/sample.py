"""Canonical synthetic transactions for the engine tests and bench/spark.py (no download, seeded).

Purchase occasions come from `loyalist.synthetic.simulate_bgnbd` (daily time, ages uniform in `days`); each
occasion becomes 1 + Poisson(lines_per_order - 1) product lines sharing its amount. Lines that the features
must leave out are mixed in so the flags are exercised: returns (negative, is_return), cancellations,
non-product lines (postage) and guest lines (no customer). Built in chunks of customers as Arrow tables, so a
million customers / tens of millions of lines are written without holding them in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loyalist.synthetic import simulate_bgnbd

PARAMS = {"r": 0.9, "alpha": 45.0, "a": 0.4, "b": 4.0}
"""BG/NBD parameters in days: a purchase every ~50 days on average, modest dropout."""


def _ids(prefix: str, values: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(values), pa.string()), "")


def synthetic_chunks(n_customers: int, *, seed: int = 0, lines_per_order: float = 3.0, chunk: int = 200_000,
                     days: tuple[float, float] = (30.0, 730.0), end_date: str = "2025-01-01",
                     noise: float = 0.02, products: int = 5000) -> Iterator[pa.Table]:
    """Arrow tables with the canonical transactions columns, `chunk` customers at a time; each line's product
    is drawn uniformly from `products` products."""
    end = pd.Timestamp(end_date)
    for i, start in enumerate(range(0, n_customers, chunk)):
        n = min(chunk, n_customers - start)
        rng = np.random.default_rng([seed, i])
        sim = simulate_bgnbd(n, T=days, seed=rng, transactions=True, time_unit="D", end_date=end, **PARAMS)
        orders = sim.transactions
        cid = orders["customer_id"].to_numpy() + start
        k = 1 + rng.poisson(lines_per_order - 1, len(orders))
        idx = np.repeat(np.arange(len(orders)), k)
        date = orders["order_date"].to_numpy()[idx]
        amount = np.round(orders["amount"].to_numpy()[idx] / k[idx], 2)
        cust = cid[idx]
        order_no = np.arange(len(orders))[idx] + start * 1000
        lines = len(idx)
        quantity = np.ones(lines)
        flags = {f: np.zeros(lines, bool) for f in ("is_guest", "is_cancellation", "is_return", "is_non_product")}
        # noise lines: copies of random lines turned into returns, cancellations, postage or guest purchases
        m = int(noise * lines)
        pick = rng.integers(0, lines, 4 * m)
        kinds = np.repeat(np.arange(4), m)
        n_amount = np.where(kinds < 2, -np.abs(amount[pick]), np.abs(amount[pick]))
        n_flags = {f: kinds == j for j, f in enumerate(("is_return", "is_cancellation", "is_non_product",
                                                        "is_guest"))}
        date = np.concatenate([date, date[pick]])
        cust_all = np.concatenate([cust, cust[pick]])
        amount = np.concatenate([amount, n_amount])
        quantity = np.concatenate([quantity, np.where(kinds < 2, -1.0, 1.0)])
        order_no = np.concatenate([order_no, order_no[pick]])
        for f in flags:
            flags[f] = np.concatenate([flags[f], n_flags[f]])
        customer = _ids("C", cust_all)
        customer = pc.if_else(pa.array(flags["is_guest"]), pa.scalar(None, pa.string()), customer)
        product = np.where(flags["is_non_product"], -1, rng.integers(0, products, len(amount)))
        yield pa.table({
            "customer_id": customer,
            "order_id": _ids("O", order_no),
            "order_date": pa.array(date.astype("datetime64[us]")),
            "product_id": pc.if_else(pa.array(product < 0), pa.scalar("POST"), _ids("P", product)),
            "description": pa.nulls(len(amount), pa.string()),
            "quantity": pa.array(quantity),
            "unit_price": pa.array(np.abs(amount)),
            "amount": pa.array(amount),
            "currency": pa.array(np.full(len(amount), "GBP")),
            "country": pa.nulls(len(amount), pa.string()),
            "channel": pa.nulls(len(amount), pa.string()),
            **{f: pa.array(v) for f, v in flags.items() if f in ("is_guest", "is_cancellation", "is_return",
                                                                  "is_non_product")},
            "price_issue": pa.nulls(len(amount), pa.string()),
            "is_future": pa.array(np.zeros(len(amount), bool)),
        })


def write_synthetic(folder: str | Path, n_customers: int, **kwargs) -> int:
    """Write the synthetic transactions as Parquet files (one per chunk) into `folder`; returns the lines."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = 0
    for i, table in enumerate(synthetic_chunks(n_customers, **kwargs)):
        pq.write_table(table, folder / f"part-{i:05d}.parquet")
        rows += table.num_rows
    return rows


def load_into_store(store, folder: str | Path) -> int:
    """Append the Parquet files of `folder` to the store's transactions table (columns by name)."""
    files = str(Path(folder).resolve() / "*.parquet")
    store.con.execute("INSERT INTO transactions BY NAME SELECT * FROM read_parquet(?)", [files])
    return store.con.execute("SELECT count(*) FROM transactions").fetchall()[0][0]
