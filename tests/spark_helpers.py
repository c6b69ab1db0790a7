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


def synthetic_store(folder: Path, n_customers: int = 3000, seed: int = 7, products: int = 5000):
    """A store holding synthetic canonical transactions, and the Parquet folder they came from."""
    parquet = folder / "synthetic_tx"
    write_synthetic(parquet, n_customers, seed=seed, chunk=max(n_customers // 2, 1), products=products)
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


FORECAST_TABLES = {  # the forecast step's result tables -> the columns that identify a row
    "forecasts": ["level", "series_id", "week"],
    "forecast_backtest": ["level", "method"],
    "peak_hours": ["dow", "hour"],
    "peak_weeks": ["week"],
    "staffing": ["week"],
}
STAFFING_CONFIG = {"staffing": {"orders_per_person_hour": 4}}


def duckdb_forecast_tables(store, as_of: dt.date, customers: pd.DataFrame, config: dict) -> dict[str, pd.DataFrame]:
    """The DuckDB engine's forecast step on the store (it reads only the customer-base columns of `customers`)."""
    from loyalist.insights import Context
    from loyalist.insights.aggregate import forecast_step

    ctx = Context(store, as_of, Settings(), None, customers, config, [])
    assert forecast_step(ctx) is None
    return {name: store.con.execute(f"SELECT * FROM {name}").df() for name in FORECAST_TABLES}


def spark_result_tables(out: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(out / name) for name in FORECAST_TABLES}


LIFECYCLE_TABLES = {  # the lifecycle step's result tables -> the columns that identify a row
    "cohorts": ["cohort_month", "months_since"],
    "lifecycle_conversion": ["kind", "period_start", "from_stage", "to_stage"],
}


def assert_same_rows(name: str, duck: pd.DataFrame, spark: pd.DataFrame, key: list[str] | None = None,
                     rtol: float = 1e-9) -> None:
    """Same columns, same rows (matched on `key`, default the table's key), numbers within `rtol` relative,
    text, flags and dates exactly (missing equals missing)."""
    assert list(spark.columns) == list(duck.columns), name
    assert len(spark) == len(duck), name
    key = key or {**FORECAST_TABLES, **LIFECYCLE_TABLES}[name]
    a = duck.sort_values(key, kind="stable").reset_index(drop=True)
    b = spark.sort_values(key, kind="stable").reset_index(drop=True)
    for c in a.columns:
        x, y = a[c], b[c]
        if pd.api.types.is_datetime64_any_dtype(x) or pd.api.types.is_datetime64_any_dtype(y):
            x, y = pd.to_datetime(x), pd.to_datetime(y)
            assert ((x == y) | (x.isna() & y.isna())).all(), (name, c)
        elif pd.api.types.is_bool_dtype(x) or x.dtype == object or y.dtype == object:
            xs = x.astype(object).where(x.notna(), None).astype(str)
            ys = y.astype(object).where(y.notna(), None).astype(str)
            assert (xs == ys).all(), (name, c, list(zip(xs[xs != ys][:3], ys[xs != ys][:3])))
        else:
            x, y = x.to_numpy(float), y.to_numpy(float)
            assert (np.isnan(x) == np.isnan(y)).all(), (name, c)
            ok = ~np.isnan(x)
            np.testing.assert_allclose(y[ok], x[ok], rtol=rtol, atol=0, err_msg=f"{name}.{c}")


def synthetic_invoices(store, folder: Path, customers: int = 400, seed: int = 3, extra: int = 2) -> Path:
    """Invoices from the project's generator (`loyalist.synthetic.invoices.simulate_invoices`) for the first
    `customers` customers of the store (plus `extra` invoiced customers without orders), loaded with the
    ordinary ingest (`--kind invoices`) and dumped as `loyalist dump invoices` does; returns the Parquet folder."""
    from loyalist.ingest.pipeline import Options, ingest
    from loyalist.schema import Kind
    from loyalist.synthetic.invoices import simulate_invoices

    ids = sorted(store.con.execute("SELECT DISTINCT customer_id FROM transactions WHERE customer_id IS NOT NULL "
                                   "AND NOT is_guest").df()["customer_id"])[:customers]
    sim = simulate_invoices(customer_ids=ids + [f"NOORDERS{i}" for i in range(extra)], as_of=SYNTH_AS_OF, seed=seed)
    csv = sim.write_csv(folder / "invoices.csv")
    ingest(store, [csv], Options(kind=Kind.invoices))
    out = folder / "invoices_parquet"
    store.con.execute(f"COPY (SELECT * FROM invoices) TO '{out}' (FORMAT parquet)")
    return out
