"""The `segments` and `value` steps on the Spark engine give the DuckDB engine's answers: the per-customer columns
(rfm_segment, rfm_score, segment, value_*), the tables segments, rfm_segments and value_backtest, with the growth
factor from a growth_rate column and from the spend trend; plus independent checks of the global ranks (RFM
quintiles, value percentiles, grade counts) against plain pandas on the Spark output."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file
from spark_helpers import BASE_COLUMNS, SYNTH_AS_OF, duckdb_table, synthetic_store

from loyalist import insights
from loyalist.customer_base import Settings, fit_base
from loyalist.features import rfm_summary
from loyalist.insights import Context, Step
from loyalist.insights.segments import segments_step
from loyalist.insights.value import value_step

pytest.importorskip("pyspark")

from loyalist.engine.spark import analyze_spark

SEGMENT_COLUMNS = ["rfm_segment", "rfm_score", "segment"]
VALUE_COLUMNS = ["value_clv", "value_margin", "value_growth", "value_risk", "value_score", "value_percentile",
                 "value_grade", "value_reason"]
TABLE_KEYS = {"segments": ["segment"], "rfm_segments": ["segment"], "value_backtest": ["ranking"]}


def _growth_rate(customers: pd.DataFrame) -> pd.Series:
    """A stand-in growth_rate (the direction step's column): from the order count, NULL for every 4th count."""
    o = customers["orders"].to_numpy()
    return pd.Series(np.where(o % 4 == 0, np.nan, (o % 5 - 2) / 4.0), index=customers.index)


def _fake_growth_step(ctx: Context):
    import ibis

    c = ctx.customers
    return c.select("customer_id", growth_rate=ibis.ifelse(c.orders % 4 == 0, ibis.null("float64"),
                                                           (c.orders % 5 - 2) / 4.0))


def duckdb_steps(store, as_of: dt.date, model: str, monkeypatch, growth: bool) -> tuple[pd.DataFrame, dict]:
    """The DuckDB engine's per-customer table with the segments and value steps and their tables (with
    `growth`, the customers have a growth_rate column, as after the direction step)."""
    customers = duckdb_table(store, as_of, model, monkeypatch)
    if growth:
        customers["growth_rate"] = _growth_rate(customers)
    fitted = fit_base(rfm_summary(store.table("transactions"), as_of).execute(), model)
    store.con.execute("DROP TABLE IF EXISTS value_backtest")
    ctx = Context(store, as_of, Settings(), fitted, customers, {}, [])
    for fn in (segments_step, value_step):
        added = fn(ctx)
        ctx.customers = ctx.customers.merge(added, on="customer_id", how="left")
    tables = {n: store.con.execute(f"SELECT * FROM {n}").df() for n in TABLE_KEYS}
    return ctx.customers, tables


def spark_steps(spark, parquet, out, as_of: dt.date, model: str, monkeypatch, growth: bool):
    steps = ["segments", "value"]
    if growth:
        monkeypatch.setitem(insights._STEPS, "test_growth", Step("test_growth", 30, _fake_growth_step, True))
        steps = ["test_growth", *steps]
    run = analyze_spark(str(parquet), out=str(out), session=spark, model=model, as_of=as_of, steps=steps,
                        partitions=3)
    table = pd.read_parquet(run.out)
    return run, table, {n: pd.read_parquet(out / n) for n in run.result_tables}


def assert_same_columns(duck: pd.DataFrame, spark: pd.DataFrame, columns: list[str], rtol: float = 1e-9) -> None:
    m = duck.merge(spark, on="customer_id", how="outer", suffixes=("_d", "_s"), indicator=True)
    assert len(m) == len(duck) == len(spark) and (m["_merge"] == "both").all()
    for c in columns:
        a, b = m[f"{c}_d"], m[f"{c}_s"]
        if a.dtype == object or b.dtype == object:
            diff = m.loc[a.astype(str) != b.astype(str), ["customer_id", f"{c}_d", f"{c}_s"]]
            assert diff.empty, (c, diff.head().to_dict("records"))
        else:
            x, y = a.to_numpy(float), b.to_numpy(float)
            assert (np.isnan(x) == np.isnan(y)).all(), c
            ok = ~np.isnan(x)
            np.testing.assert_allclose(y[ok], x[ok], rtol=rtol, atol=0, err_msg=c)


def assert_same_table(name: str, duck: pd.DataFrame, spark: pd.DataFrame, rtol: float = 1e-9) -> None:
    """Same columns, same rows matched on the table's key, text exactly, numbers within `rtol` relative."""
    drop = ["run_at"] if name == "value_backtest" else []
    duck, spark = duck.drop(columns=drop), spark.drop(columns=drop)
    assert list(spark.columns) == list(duck.columns), name
    assert len(spark) == len(duck) > 0, name
    a = duck.sort_values(TABLE_KEYS[name]).reset_index(drop=True)
    b = spark.sort_values(TABLE_KEYS[name]).reset_index(drop=True)
    for c in a.columns:
        x, y = a[c], b[c]
        if pd.api.types.is_datetime64_any_dtype(x):
            assert (pd.to_datetime(x) == pd.to_datetime(y)).all(), (name, c)
        elif x.dtype == object:
            assert (x.fillna("<NA>").astype(str) == y.fillna("<NA>").astype(str)).all(), (name, c, x, y)
        else:
            x, y = x.to_numpy(float), y.to_numpy(float)
            assert (np.isnan(x) == np.isnan(y)).all(), (name, c)
            ok = ~np.isnan(x)
            np.testing.assert_allclose(y[ok], x[ok], rtol=rtol, atol=0, err_msg=f"{name}.{c}")


def check_rfm_independently(table: pd.DataFrame) -> None:
    """The RFM quintile scores on the Spark output against plain pandas ranks of its own columns."""
    n = len(table)
    f = 1 + np.floor(5 * (table["orders"].rank(method="min") - 1) / n)
    days = table["tenure_days"] - table["recency_days"]  # days since the last purchase
    r = 1 + np.floor(5 * ((-days).rank(method="min") - 1) / n)
    assert (table["rfm_score"].str[1].astype(int) == f).all()
    assert (table["rfm_score"].str[0].astype(int) == r).all()


def check_value_ranks_independently(table: pd.DataFrame) -> None:
    """Value percentiles and grade counts on the Spark output against plain pandas ranks of its own columns."""
    n = len(table)
    pct = 100 * (table["value_score"].rank(method="average") - 0.5) / n
    np.testing.assert_allclose(table["value_percentile"], pct, rtol=1e-12)
    counts = table["value_grade"].value_counts()
    assert counts["A"] == round(0.2 * n) and counts["B"] == round(0.5 * n) - round(0.2 * n)
    a_min = table.loc[table["value_grade"] == "A", "value_score"].min()
    assert (table.loc[table["value_grade"] != "A", "value_score"] <= a_min).all()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth_seg")
    store, parquet = synthetic_store(folder, n_customers=1000, seed=5, products=150)
    yield store, parquet, folder
    store.close()


def test_synthetic_segments_and_value_on_spark_equal_duckdb(spark, synth, monkeypatch):
    """With a growth_rate column (a stand-in for the direction step's); the growth from the spend trend is
    compared on Online Retail II (the slow test below)."""
    store, parquet, folder = synth
    duck, duck_tables = duckdb_steps(store, SYNTH_AS_OF, "bgnbd", monkeypatch, growth=True)
    run, table, tables = spark_steps(spark, parquet, folder / "out", SYNTH_AS_OF, "bgnbd", monkeypatch, growth=True)
    assert list(table.columns) == BASE_COLUMNS + ["growth_rate"] + SEGMENT_COLUMNS + VALUE_COLUMNS
    assert sorted(run.result_tables) == sorted(TABLE_KEYS)
    assert_same_columns(duck, table, SEGMENT_COLUMNS + VALUE_COLUMNS)
    for name in TABLE_KEYS:
        assert_same_table(name, duck_tables[name], tables[name])
    assert table["segment"].nunique() >= 4 and table["rfm_segment"].nunique() >= 6
    # the growth factor is 1 + growth_rate within [0.5, 1.5], 1 where growth_rate is NULL
    g = table["growth_rate"].fillna(0).clip(-0.5, 0.5) + 1
    np.testing.assert_allclose(table["value_growth"], g, rtol=1e-15)
    assert table["value_reason"].str.contains("(growth rate)", regex=False).all()
    assert not any("from the spend trend" in n for n in run.report.notes)
    check_rfm_independently(table)
    check_value_ranks_independently(table)


@pytest.mark.slow
def test_online_retail_segments_and_value_on_spark_equal_duckdb(spark, tmp_path, monkeypatch):
    files = [shared_file("online_retail_ii", f"online_retail_II_{y}.csv.gz") for y in ("2009-2010", "2010-2011")]
    from loyalist.ingest import ingest
    from loyalist.store import open_store

    store = open_store(tmp_path / "orii.duckdb")
    ingest(store, files)
    as_of = dt.date(2011, 12, 10)
    duck, duck_tables = duckdb_steps(store, as_of, "bgnbd", monkeypatch, False)
    store.con.execute(f"COPY transactions TO '{tmp_path / 'tx'}' (FORMAT parquet, FILE_SIZE_BYTES '16MB')")
    store.close()
    run, table, tables = spark_steps(spark, tmp_path / "tx", tmp_path / "out", as_of, "bgnbd", monkeypatch, False)
    assert len(table) > 5000
    assert table["value_reason"].str.contains("(spend trend)", regex=False).all()
    assert any("from the spend trend" in n for n in run.report.notes)
    assert_same_columns(duck, table, SEGMENT_COLUMNS + VALUE_COLUMNS)
    for name in TABLE_KEYS:
        assert_same_table(name, duck_tables[name], tables[name])
    check_rfm_independently(table)
    check_value_ranks_independently(table)
