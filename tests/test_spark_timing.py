"""The `timing` step on the Spark engine gives the DuckDB engine's answers: the per-customer columns
(next_order_date ... contact_due_date), the tables contact_schedule, reorders, next_products, category_rhythm and
timing_backtest (same rows; numbers within 1e-9 relative, text and dates exactly); the seeded subset the renewal
fits use is picked on Spark as GammaRenewal picks it; plus independent checks of the pair counts against plain
pandas on the raw lines."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file
from spark_helpers import BASE_COLUMNS, SYNTH_AS_OF, assert_same_rows, synthetic_store

from loyalist import insights
from loyalist.customer_base import Settings
from loyalist.insights.timing import (
    STAT_COLUMNS,
    _fit_rows_model,
    _spark_fit_rows,
    canonical,
    timing,
)
from loyalist.models.next_order import GammaRenewal

pytest.importorskip("pyspark")

from loyalist.engine.spark import analyze_spark

TIMING_COLUMNS = ["next_order_date", "next_order_p10", "next_order_p90", "prob_order_30d", "prob_order_60d",
                  "overdue_days", "overdue_score", "overdue_reason", "cycle_days", "cycle_regularity", "cycle_class",
                  "contact_due_date"]
TABLE_KEYS = {"contact_schedule": ["customer_id", "contact_date"], "reorders": ["customer_id", "product_id"],
              "next_products": ["customer_id", "rank"], "category_rhythm": ["customer_id", "category"],
              "timing_backtest": ["cutoff", "horizon_days", "task", "method"]}


def duckdb_timing(store, as_of: dt.date, monkeypatch, config: dict) -> tuple[pd.DataFrame, dict, list[str]]:
    """The DuckDB engine's per-customer table with the customer-base columns and the timing step's, its result
    tables and notes."""
    from loyalist import analysis

    notes: list[str] = []

    def only_timing(ctx, on_step=None):
        added = timing(ctx)
        notes.extend(ctx.notes)
        return ctx.customers.merge(added, on="customer_id", how="left")

    with monkeypatch.context() as m:
        m.setattr(analysis, "run_steps", only_timing)
        _, table = analysis.analyze(store, as_of, "bgnbd", Settings(), config)
    tables = {n: store.con.execute(f"SELECT * FROM {n}").df() for n in TABLE_KEYS
              if store.con.execute(f"SELECT count(*) FROM information_schema.tables WHERE table_name = '{n}'"
                                   ).fetchall()[0][0]}
    return table, tables, notes


def spark_timing(spark, parquet, out, as_of: dt.date, config: dict, products=None):
    run = analyze_spark(str(parquet), out=str(out), session=spark, model="bgnbd", as_of=as_of, config=config,
                        steps=["timing"], products=None if products is None else str(products))
    tables = {n: pd.read_parquet(out / n) for n in TABLE_KEYS if (out / n).exists()}
    return run, pd.read_parquet(run.out), tables


def assert_same_timing(duck: pd.DataFrame, duck_tables: dict, table: pd.DataFrame, tables: dict) -> None:
    assert list(table.columns) == BASE_COLUMNS + TIMING_COLUMNS
    assert_same_rows("customer_insights", duck[BASE_COLUMNS + TIMING_COLUMNS], table, ["customer_id"])
    assert sorted(tables) == sorted(duck_tables)
    for name, frame in duck_tables.items():
        assert_same_rows(name, frame, tables[name], TABLE_KEYS[name])


def _with_categories(folder, n_customers: int = 800, n_products: int = 40):
    """A synthetic store whose products carry categories (a quarter of them none), and those products as a
    Parquet file for --products."""
    store, parquet = synthetic_store(folder, n_customers=n_customers, seed=11, products=n_products)
    i = np.arange(n_products)
    prods = pd.DataFrame({"product_id": [f"P{k}" for k in i], "description": [f"product {k}" for k in i],
                          "category": np.where(i % 4 == 3, None, np.array(["cards", "mugs", "bags"])[i % 3])})
    store.con.register("prods_df", prods)
    store.con.execute("INSERT INTO products BY NAME SELECT * FROM prods_df")
    store.con.unregister("prods_df")
    path = folder / "products.parquet"
    prods.to_parquet(path)
    return store, parquet, path


@pytest.fixture(scope="module")
def synth_runs(spark, tmp_path_factory):
    """One DuckDB and one Spark run of the timing step on the same synthetic data with product categories."""
    folder = tmp_path_factory.mktemp("synth_timing")
    store, parquet, products = _with_categories(folder)
    mp = pytest.MonkeyPatch()
    try:
        duck = duckdb_timing(store, SYNTH_AS_OF, mp, {})
    finally:
        mp.undo()
        store.close()
    return duck, spark_timing(spark, parquet, folder / "out", SYNTH_AS_OF, {}, products), parquet


def test_timing_is_a_spark_step():
    step = {s.name: s for s in insights.load_steps()}["timing"]
    assert step.spark


def test_synthetic_timing_on_spark_equals_duckdb(synth_runs):
    (duck, duck_tables, duck_notes), (run, table, tables), parquet = synth_runs
    assert sorted(duck_tables) == sorted(TABLE_KEYS)  # every table, category_rhythm and the backtest included
    assert_same_timing(duck, duck_tables, table, tables)
    assert [n for n in run.report.notes if n.startswith("timing")] == [n for n in duck_notes if n.startswith("timing")]
    assert any("next products stacked" in n for n in duck_notes)  # the stacked pair regression was fitted
    # not trivially equal: flags, classes and lists are there
    assert (table["overdue_score"] > 0).sum() > 5 and set(table["cycle_class"].dropna()) == {"short", "long"}
    assert len(tables["contact_schedule"]) > 5 and len(tables["reorders"]) > 100
    assert set(tables["category_rhythm"]["category"]) == {"cards", "mugs", "bags"}
    bt = tables["timing_backtest"]
    assert {"orders", "overdue", "next_products"} <= set(bt["task"])
    # independent: times bought per customer x product (distinct days with a purchase line) from the raw lines
    raw = pd.read_parquet(parquet)
    buy = raw[raw["customer_id"].notna() & raw["product_id"].notna() & ~raw["is_guest"] & ~raw["is_non_product"]
              & ~raw["is_return"] & ~raw["is_cancellation"] & (raw["order_date"] < pd.Timestamp(SYNTH_AS_OF))]
    days = buy.assign(day=buy["order_date"].dt.normalize()).groupby(["customer_id", "product_id"])["day"].nunique()
    got = tables["reorders"].set_index(["customer_id", "product_id"])["times_bought"]
    assert set(got.index) == set(days[days >= 2].index)
    assert (got.sort_index() == days[days >= 2].sort_index()).all()
    top = tables["next_products"]
    assert top.groupby("customer_id")["rank"].max().max() == 5 and top["probability"].between(0, 1).all()


def test_renewal_subset_picked_on_spark_as_gamma_renewal_picks_it(spark, synth_runs):
    """With more rows than max_rows the fit uses GammaRenewal's seeded subset of the rows in key order: picked
    on Spark by rank (zipWithIndex), only those rows collected, the same parameters as the DuckDB engine's fit."""
    parquet = synth_runs[2]
    import ibis

    from loyalist.features.timing import product_cycles

    con = ibis.pyspark.connect(spark)
    spark.read.parquet(str(parquet)).createOrReplaceTempView("tx_subset_test")
    t = con.table("tx_subset_test")
    sdf = spark.sql(con.compile(product_cycles(t, SYNTH_AS_OF)))
    keys = ["customer_id", "product_id"]
    full = canonical(sdf.toPandas(), keys)
    assert len(full) > 500
    rows = _spark_fit_rows(sdf, keys, 300, seed=3)
    assert len(rows) == 300
    ref = GammaRenewal(max_rows=300, seed=3).fit(*(full[c].to_numpy(float) for c in STAT_COLUMNS[:3]),
                                                  np.maximum(full["elapsed"].to_numpy(float) - 0.5, 0.0))
    got = _fit_rows_model(rows, seed=3)
    assert got.params_ == ref.params_  # bit for bit: the same rows in the same order


@pytest.mark.slow
def test_online_retail_timing_on_spark_equals_duckdb(spark, tmp_path, monkeypatch):
    """Online Retail II (5,900 customers, ~480,000 customer x product pairs at the end): the step without its
    backtest (kept short; the backtest is compared on the synthetic data)."""
    files = [shared_file("online_retail_ii", f"online_retail_II_{y}.csv.gz") for y in ("2009-2010", "2010-2011")]
    from loyalist.ingest import ingest
    from loyalist.store import open_store

    store = open_store(tmp_path / "orii.duckdb")
    ingest(store, files)
    as_of, config = dt.date(2011, 12, 10), {"timing": {"backtest": False}}
    duck, duck_tables, _ = duckdb_timing(store, as_of, monkeypatch, config)
    store.con.execute(f"COPY transactions TO '{tmp_path / 'tx'}' (FORMAT parquet, FILE_SIZE_BYTES '16MB')")
    store.close()
    _, table, tables = spark_timing(spark, tmp_path / "tx", tmp_path / "out", as_of, config)
    assert len(table) > 5000 and len(tables["reorders"]) > 100_000
    assert_same_timing(duck, {n: f for n, f in duck_tables.items() if n != "timing_backtest"}, table, tables)
