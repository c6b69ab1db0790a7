"""Shared by the Spark tests: a synthetic store, the DuckDB reference table, and the comparison."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from loyalist.customer_base import Settings
from loyalist.engine.sample import load_into_store, write_synthetic
from loyalist.store import open_store

BASE_COLUMNS = ["customer_id", "first_order", "last_order", "orders", "revenue", "frequency", "recency_days",
                "tenure_days", "p_alive", "expected_orders_90d", "prob_order_90d", "expected_order_value",
                "clv_12m", "as_of", "model"]
SYNTH_AS_OF = dt.date(2025, 1, 1)


def synthetic_store(folder: Path, n_customers: int = 3000, seed: int = 7):
    """A store holding synthetic canonical transactions, and the Parquet folder they came from."""
    parquet = folder / "synthetic_tx"
    write_synthetic(parquet, n_customers, seed=seed, chunk=max(n_customers // 2, 1))
    store = open_store(folder / "synthetic.duckdb")
    load_into_store(store, parquet)
    return store, parquet


def duckdb_table(store, as_of: dt.date, model: str, monkeypatch) -> pd.DataFrame:
    """The DuckDB engine's per-customer table (`loyalist.analysis.analyze`), customer-base columns only: the
    insight steps (not the subject here, and not on Spark) are switched off for the reference run."""
    import loyalist.analysis as analysis

    with monkeypatch.context() as m:
        m.setattr(analysis, "run_steps", lambda ctx, on_step=None: ctx.customers)
        _, table = analysis.analyze(store, as_of, model, Settings())
    return table


def assert_same_table(duck: pd.DataFrame, spark: pd.DataFrame, rtol: float = 1e-9) -> None:
    """Same customers, same columns, equal values (numbers within `rtol` relative)."""
    assert list(spark.columns) == list(duck.columns)
    assert len(spark) == len(duck)
    assert spark["customer_id"].is_unique
    m = duck.merge(spark, on="customer_id", how="outer", suffixes=("_d", "_s"), indicator=True)
    assert (m["_merge"] == "both").all(), m["_merge"].value_counts()
    for c in duck.columns:
        if c == "customer_id":
            continue
        a, b = m[f"{c}_d"], m[f"{c}_s"]
        if c in ("first_order", "last_order", "as_of"):
            assert (pd.to_datetime(a) == pd.to_datetime(b)).all(), c
        elif c == "model":
            assert (a == b).all()
        else:
            a, b = a.to_numpy(float), b.to_numpy(float)
            assert (np.isnan(a) == np.isnan(b)).all(), c
            ok = ~np.isnan(a)
            np.testing.assert_allclose(b[ok], a[ok], rtol=rtol, atol=0, err_msg=c)
