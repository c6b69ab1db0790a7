"""The Spark engine (local mode): the per-customer table equals the DuckDB engine's, the weighted fit on
distinct patterns equals the per-customer fit, the `forecast` step's tables (aggregated on Spark, forecast at the
driver) equal the DuckDB engine's, steps that cannot run on Spark are refused by name, the CLI works end to
end. The loopback-cluster run is in test_spark_cluster.py."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import duckdb
import numpy as np
import pandas as pd
import pytest
from conftest import REPO, shared_file
from spark_helpers import (
    BASE_COLUMNS,
    FORECAST_TABLES,
    STAFFING_CONFIG,
    SYNTH_AS_OF,
    assert_same_rows,
    assert_same_table,
    duckdb_forecast_tables,
    duckdb_table,
    spark_result_tables,
    synthetic_store,
)
from typer.testing import CliRunner

from loyalist import insights
from loyalist.cli import app
from loyalist.customer_base import TRANSACTION_MODELS, fit_base
from loyalist.errors import LoyalistError
from loyalist.features import rfm_summary

pytest.importorskip("pyspark")

from loyalist.engine.spark import (
    analyze_spark,
    fit_patterns,
    steps_on_spark,
)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    store, parquet = synthetic_store(folder, products=150)  # few products: the forecast step stays quick
    yield store, parquet, folder
    store.close()


@pytest.fixture(scope="module")
def bgnbd_run(spark, synth):
    """One Spark run on the synthetic Parquet files (with the forecast step), shared by the tests that compare
    against it."""
    _, parquet, folder = synth
    run = analyze_spark(str(parquet), out=str(folder / "out_bgnbd"), session=spark, model="bgnbd", as_of=SYNTH_AS_OF,
                        config=STAFFING_CONFIG, steps=["forecast"])
    return run, pd.read_parquet(run.out)


def _patterns(summary: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    pat = summary.groupby(["frequency", "recency", "T"]).size().reset_index(name="n")
    rep = summary[(summary["frequency"] > 0) & (summary["monetary_value"] > 0)]
    spend = rep.groupby(["frequency", "monetary_value"]).size().reset_index(name="n")
    return pat, spend


@pytest.mark.parametrize("model", list(TRANSACTION_MODELS))
def test_weighted_fit_on_patterns_equals_per_customer_fit(synth, model):
    store = synth[0]
    summary = rfm_summary(store.table("transactions"), SYNTH_AS_OF).execute()
    pat, spend = _patterns(summary)
    assert len(pat) < len(summary) and pat["n"].sum() == len(summary)
    a, b = fit_base(summary, model), fit_patterns(pat, spend, model)
    for k, v in a.transaction.params_.items():
        assert b.transaction.params_[k] == pytest.approx(v, rel=1e-9)
    for k, v in a.spend.params_.items():
        assert b.spend.params_[k] == pytest.approx(v, rel=1e-9)
    assert b.transaction.n_customers_ == len(summary)


def test_synthetic_spark_equals_duckdb(spark, synth, bgnbd_run, monkeypatch):
    store, parquet, folder = synth
    for model in ("bgnbd", "paretonbd"):
        duck = duckdb_table(store, SYNTH_AS_OF, model, monkeypatch)
        if model == "bgnbd":
            run, table = bgnbd_run
        else:
            run = analyze_spark(str(parquet), out=str(folder / f"out_{model}"), session=spark, model=model,
                                as_of=SYNTH_AS_OF, steps=[])
            table = pd.read_parquet(run.out)
        assert list(duck.columns) == BASE_COLUMNS
        assert_same_table(duck, table)
        assert run.customers == len(duck) and run.patterns < len(duck)
        # independent count: customers with at least one purchase line before as_of (plain pandas)
        raw = pd.read_parquet(parquet)
        buy = raw[raw["customer_id"].notna() & ~raw["is_return"] & ~raw["is_cancellation"] & ~raw["is_non_product"]]
        assert set(table["customer_id"]) == set(buy["customer_id"])


def test_synthetic_forecast_on_spark_equals_duckdb(synth, bgnbd_run, monkeypatch):
    store, parquet, folder = synth
    run, _ = bgnbd_run
    duck = duckdb_forecast_tables(store, SYNTH_AS_OF, duckdb_table(store, SYNTH_AS_OF, "bgnbd", monkeypatch),
                                  STAFFING_CONFIG)
    assert sorted(run.result_tables) == sorted(FORECAST_TABLES)
    got = spark_result_tables(folder / "out_bgnbd")
    for name in FORECAST_TABLES:
        assert_same_rows(name, duck[name], got[name])
    f = got["forecasts"]
    assert set(f["level"]) == {"total", "orders", "product"}  # no products table on Spark: no category level
    assert f.loc[f["level"] == "product", "bottom_up"].notna().any()  # reconciled with the customer level
    assert got["staffing"]["people"].notna().all()
    assert any("no products table (--products)" in n for n in run.report.notes)
    # independent check of one aggregate: orders per weekday x hour from the raw lines, plain pandas
    raw = pd.read_parquet(parquet)
    keep = (~raw["is_non_product"] & ~raw["is_cancellation"] & ~raw["is_return"] & (raw["quantity"] > 0)
            & (raw["order_date"] < pd.Timestamp(SYNTH_AS_OF)))
    first = raw[keep].groupby("order_id")["order_date"].min()
    counts = first.groupby([first.dt.dayofweek, first.dt.hour]).size().sort_index()
    hw = got["peak_hours"].set_index(["dow", "hour"])["orders"].sort_index()
    assert list(hw.index) == list(counts.index) and (hw.to_numpy() == counts.to_numpy()).all()


def test_csv_source_gives_the_same_table(spark, synth, bgnbd_run, tmp_path):
    store, parquet, _ = synth
    csv = tmp_path / "tx.csv"
    pd.read_parquet(parquet).to_csv(csv, index=False)
    a = bgnbd_run[1]
    b = pd.read_parquet(analyze_spark(str(csv), out=str(tmp_path / "b"), session=spark, model="bgnbd",
                                      as_of=SYNTH_AS_OF, steps=[]).out)
    assert_same_table(a, b)


def test_cli_dump_then_analyze_on_spark_into_the_store(spark, tmp_path, monkeypatch):
    store, _ = synthetic_store(tmp_path, n_customers=800, seed=3, products=100)
    duck = duckdb_table(store, SYNTH_AS_OF, "bgnbd", monkeypatch)
    store.close()  # the CLI opens the store itself
    db = tmp_path / "synthetic.duckdb"
    runner = CliRunner()
    res = runner.invoke(app, ["dump", "transactions", "--db", str(db), "--out", str(tmp_path / "tx")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["analyze", "--engine", "spark", "--spark-master", "local[2]", "--source",
                              str(tmp_path / "tx"), "--out", str(tmp_path / "out"), "--model", "bgnbd",
                              "--as-of", str(SYNTH_AS_OF), "--db", str(db)])
    assert res.exit_code == 0, res.output
    assert "800 customers scored on Spark with bgnbd" in res.output
    for name in [s.name for s in insights.load_steps() if not s.spark]:  # named as not available on Spark
        assert name in res.output
    ported = ", ".join(s.name for s in insights.load_steps() if s.spark)
    assert f"insight steps that run on Spark: {ported}" in " ".join(res.output.split())
    said = " ".join(res.output.split())  # rich wraps long lines
    tables = said[said.index("result tables (Parquet"):]
    assert all(name in tables for name in FORECAST_TABLES)
    con = duckdb.connect(str(db), read_only=True)
    for name in FORECAST_TABLES:  # the forecast step's tables, stored as the DuckDB engine stores them
        assert con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0] > 0, name
        assert (tmp_path / "out" / name).is_dir()
    stored = con.execute("SELECT * FROM customer_insights").df()
    types = dict(con.execute("SELECT column_name, data_type FROM duckdb_columns() "
                             "WHERE table_name = 'customer_insights'").fetchall())
    runs = con.execute("SELECT count(*) FROM analysis_runs").fetchall()[0][0]
    con.close()
    assert types["first_order"] == "TIMESTAMP_S" and types["as_of"] == "TIMESTAMP_S"
    assert runs >= 1
    assert stored["customer_id"].is_monotonic_increasing  # stored in customer_id order, as the DuckDB engine does
    assert list(stored.columns)[:len(BASE_COLUMNS)] == BASE_COLUMNS  # + the columns of the steps run on Spark
    assert {"lifecycle_stage", "lifecycle_reason", "rfm_segment", "segment", "value_grade"} <= set(stored.columns)
    assert stored["lifecycle_stage"].notna().all()
    assert_same_table(duck, stored[BASE_COLUMNS])


@pytest.fixture
def extra_steps():
    """Register test steps and remove them afterwards (the registry is process-wide)."""
    names: list[str] = []

    def add(name: str, fn, spark: bool) -> None:
        insights.step(name, 999, spark=spark)(fn)
        names.append(name)

    yield add
    for n in names:
        insights._STEPS.pop(n, None)


def test_requested_step_not_on_spark_fails_at_once(extra_steps, synth, tmp_path):
    extra_steps("duckdb_only_demo", lambda ctx: None, spark=False)
    out = tmp_path / "never"
    res = CliRunner().invoke(app, ["analyze", "--engine", "spark", "--source", str(synth[1]), "--out", str(out),
                                   "--model", "bgnbd", "--step", "duckdb_only_demo"])
    assert res.exit_code == 1
    assert "not available on the Spark engine: duckdb_only_demo" in res.output
    assert not out.exists()  # refused before any work
    with pytest.raises(LoyalistError, match="unknown analysis step"):
        analyze_spark(str(synth[1]), out=str(out), model="bgnbd", steps=["no_such_step"])


def test_spark_capable_step_runs_on_spark(spark, extra_steps, synth, tmp_path):
    def double_orders(ctx):
        c = ctx.customers  # an Ibis table on Spark
        return c.select("customer_id", orders_x2=c.orders * 2)

    extra_steps("orders_x2_demo", double_orders, spark=True)
    run = analyze_spark(str(synth[1]), out=str(tmp_path / "o"), session=spark, model="bgnbd", as_of=SYNTH_AS_OF,
                        steps=["orders_x2_demo"])
    table = pd.read_parquet(run.out)
    assert (table["orders_x2"] == 2 * table["orders"]).all()
    assert "orders_x2_demo" not in run.skipped_steps


def test_ported_steps_run_and_the_others_are_refused_by_name():
    runnable, skipped = steps_on_spark()
    assert {"forecast", "lifecycle"} <= {s.name for s in runnable}
    assert {s.name for s in skipped} == {s.name for s in insights.load_steps() if not s.spark}
    for s in skipped:
        with pytest.raises(LoyalistError, match=f"not available on the Spark engine: {s.name}"):
            steps_on_spark([s.name])
    assert steps_on_spark([])[0] == []  # the customer-base analysis only


def test_clear_errors(spark, synth, tmp_path):
    bad = tmp_path / "bad.parquet"
    pd.DataFrame({"customer_id": ["a"], "order_date": [pd.Timestamp("2024-01-01")]}).to_parquet(
        bad, coerce_timestamps="us")
    with pytest.raises(LoyalistError, match="lacks the canonical column"):
        analyze_spark(str(bad), out=str(tmp_path / "x"), session=spark, model="bgnbd")
    res = CliRunner().invoke(app, ["analyze", "--engine", "spark", "--model", "bgnbd"])
    assert res.exit_code == 1 and "needs --source" in res.output


def test_default_install_does_not_import_pyspark():
    code = "import sys, loyalist.cli, loyalist.engine.spark; assert 'pyspark' not in sys.modules, 'pyspark imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.slow
def test_online_retail_spark_equals_duckdb(spark, tmp_path, monkeypatch):
    files = [shared_file("online_retail_ii", f"online_retail_II_{y}.csv.gz") for y in ("2009-2010", "2010-2011")]
    from loyalist.ingest import ingest
    from loyalist.store import open_store

    store = open_store(tmp_path / "orii.duckdb")
    ingest(store, files)
    as_of, model = dt.date(2011, 12, 10), "bgnbd"
    duck = duckdb_table(store, as_of, model, monkeypatch)
    # Online Retail II has no product categories, so the DuckDB engine makes no category level either
    assert store.con.execute("SELECT count(category) FROM products").fetchall()[0][0] == 0
    duck_forecast = duckdb_forecast_tables(store, as_of, duck, {})
    from spark_helpers import LIFECYCLE_TABLES

    from loyalist.insights import Context
    from loyalist.insights.aggregate import lifecycle_step

    duck_life = lifecycle_step(Context(store, as_of, None, None, duck, {}, []))
    duck_life_tables = {n: store.con.execute(f"SELECT * FROM {n}").df() for n in LIFECYCLE_TABLES}
    store.con.execute(f"COPY transactions TO '{tmp_path / 'tx'}' (FORMAT parquet, FILE_SIZE_BYTES '16MB')")
    store.close()
    run = analyze_spark(str(tmp_path / "tx"), out=str(tmp_path / "out"), session=spark, model=model, as_of=as_of,
                        steps=["lifecycle", "forecast"])
    table = pd.read_parquet(run.out)
    assert len(table) > 5000
    assert_same_table(duck, table[BASE_COLUMNS])
    m = duck_life.merge(table, on="customer_id", suffixes=("_d", ""))
    assert len(m) == len(table)
    assert (m["lifecycle_stage_d"] == m["lifecycle_stage"]).all()
    assert (m["lifecycle_reason_d"] == m["lifecycle_reason"]).all()
    for name in LIFECYCLE_TABLES:
        assert_same_rows(name, duck_life_tables[name], pd.read_parquet(tmp_path / "out" / name))
    assert np.isfinite(table["clv_12m"]).all()
    got = spark_result_tables(tmp_path / "out")
    assert (got["forecasts"]["level"] == "product").sum() > 1000
    for name in FORECAST_TABLES:
        assert_same_rows(name, duck_forecast[name], got[name])


def _with_products(folder, n_customers: int = 800, n_products: int = 40):
    """A synthetic store whose products carry unit costs, margins and categories (some products none of them),
    and the products as a Parquet file for --products."""
    store, parquet = synthetic_store(folder, n_customers=n_customers, seed=11, products=n_products)
    i = np.arange(n_products)
    prods = pd.DataFrame({
        "product_id": [f"P{k}" for k in i], "description": [f"product {k}" for k in i],
        "category": np.where(i % 4 == 3, None, np.array(["cards", "mugs", "bags"])[i % 3]),
        "unit_cost": np.where(i % 3 == 0, 1.5 + (i % 5) * 0.25, np.nan),
        "margin": np.where(i % 3 == 1, 0.2 + (i % 7) * 0.05, np.nan)})
    store.con.register("prods_df", prods)
    store.con.execute("INSERT INTO products BY NAME SELECT * FROM prods_df")
    store.con.unregister("prods_df")
    path = folder / "products.parquet"
    prods.to_parquet(path)
    return store, parquet, path, prods


def test_products_give_the_same_clv_and_category_forecasts(spark, tmp_path, monkeypatch):
    store, parquet, _, prods = _with_products(tmp_path)
    duck = duckdb_table(store, SYNTH_AS_OF, "bgnbd", monkeypatch)
    duck_fc = duckdb_forecast_tables(store, SYNTH_AS_OF, duck, {})
    store.close()  # the CLI opens it itself
    db, products = tmp_path / "synthetic.duckdb", tmp_path / "products"
    res = CliRunner().invoke(app, ["dump", "products", "--db", str(db), "--out", str(products)])
    assert res.exit_code == 0, res.output
    run = analyze_spark(str(parquet), out=str(tmp_path / "out"), session=spark, model="bgnbd", as_of=SYNTH_AS_OF,
                        steps=["forecast"], products=str(products))
    table = pd.read_parquet(run.out)
    assert run.report.margin_source == "product costs"
    assert_same_table(duck, table)
    got = spark_result_tables(tmp_path / "out")
    for name in FORECAST_TABLES:
        assert_same_rows(name, duck_fc[name], got[name])
    cats = set(got["forecasts"].loc[got["forecasts"]["level"] == "category", "series_id"])
    assert cats == {"cards", "mugs", "bags", "(no category)"}
    assert not any("no products table" in n for n in run.report.notes)
    # independent: CLV is linear in the margin, so clv(products) / clv(setting 1.0) is each customer's margin,
    # which plain pandas computes from the raw lines and the products file
    plain = pd.read_parquet(analyze_spark(str(parquet), out=str(tmp_path / "plain"), session=spark, model="bgnbd",
                                          as_of=SYNTH_AS_OF, steps=[]).out).set_index("customer_id")["clv_12m"]
    raw = pd.read_parquet(parquet)
    buy = raw[raw["customer_id"].notna() & ~raw["is_guest"] & ~raw["is_non_product"] & ~raw["is_return"]
              & ~raw["is_cancellation"] & (raw["amount"] > 0) & (raw["order_date"] < pd.Timestamp(SYNTH_AS_OF))]
    j = buy.merge(prods, on="product_id")
    j["cost"] = (j["quantity"] * j["unit_cost"]).fillna(j["amount"] * (1 - j["margin"]))
    j = j[j["cost"].notna()]
    g = j.groupby("customer_id")[["cost", "amount"]].sum()
    margin = (1 - g["cost"] / g["amount"]).reindex(plain.index).fillna(1.0)
    clv = table.set_index("customer_id")["clv_12m"].reindex(plain.index)
    ok = plain.notna()
    assert ok.sum() > 100 and (margin < 1).sum() > 100
    np.testing.assert_allclose(clv[ok], plain[ok] * margin[ok], rtol=1e-9)
    # a store with such products and no --products: refused at once, naming the flag
    with pytest.raises(LoyalistError, match="pass them with --products"):
        analyze_spark(str(parquet), out=str(tmp_path / "never"), session=spark, model="bgnbd", db=db)
    res = CliRunner().invoke(app, ["analyze", "--engine", "spark", "--source", str(parquet), "--out",
                                   str(tmp_path / "never"), "--model", "bgnbd", "--db", str(db)])
    assert res.exit_code == 1 and "--products" in res.output
    assert not (tmp_path / "never").exists()


def test_synthetic_lifecycle_on_spark_equals_duckdb(spark, synth, bgnbd_run, tmp_path):
    """The lifecycle step: stages and reasons per customer, cohorts and lifecycle_conversion equal the DuckDB
    engine's (the population gaps are medians over all customers, the counts are summed over partitions)."""
    from spark_helpers import LIFECYCLE_TABLES

    from loyalist.insights import Context
    from loyalist.insights.aggregate import lifecycle_step

    store, parquet, _ = synth
    customers = bgnbd_run[1]
    duck = lifecycle_step(Context(store, SYNTH_AS_OF, None, None, customers, {}, []))
    duck_tables = {n: store.con.execute(f"SELECT * FROM {n}").df() for n in LIFECYCLE_TABLES}
    run = analyze_spark(str(parquet), out=str(tmp_path / "out"), session=spark, model="bgnbd", as_of=SYNTH_AS_OF,
                        steps=["lifecycle"], partitions=3)
    table = pd.read_parquet(run.out)
    assert sorted(run.result_tables) == sorted(LIFECYCLE_TABLES)
    assert list(table.columns) == BASE_COLUMNS + ["lifecycle_stage", "lifecycle_reason"]
    m = duck.merge(table[["customer_id", "lifecycle_stage", "lifecycle_reason"]], on="customer_id", how="outer",
                   suffixes=("_d", "_s"), indicator=True)
    assert len(m) == len(customers) and (m["_merge"] == "both").all()
    assert (m["lifecycle_stage_d"] == m["lifecycle_stage_s"]).all()
    assert (m["lifecycle_reason_d"] == m["lifecycle_reason_s"]).all()
    assert m["lifecycle_stage_s"].nunique() >= 4
    for name in LIFECYCLE_TABLES:
        got = pd.read_parquet(tmp_path / "out" / name)
        assert_same_rows(name, duck_tables[name], got)
    conv = pd.read_parquet(tmp_path / "out" / "lifecycle_conversion")
    assert set(conv["kind"]) == {"stage", "first_to_second"}
    # independent: one-order customers are never "active" or "reactivated"; the first-to-second base of a
    # month is the number of customers whose first purchase fell in it (plain pandas on the raw lines)
    one = table[table["orders"] == 1]
    assert len(one) and one["lifecycle_stage"].isin(["new", "at risk", "lapsed"]).all()
    raw = pd.read_parquet(parquet)
    buy = raw[raw["customer_id"].notna() & ~raw["is_guest"] & ~raw["is_non_product"] & ~raw["is_return"]
              & ~raw["is_cancellation"] & (raw["order_date"] < pd.Timestamp(SYNTH_AS_OF))]
    first_month = buy.groupby("customer_id")["order_date"].min().dt.to_period("M").dt.to_timestamp()
    f2 = conv[conv["kind"] == "first_to_second"].set_index("period_start")["base"]
    assert len(f2) > 3
    assert (first_month.value_counts().reindex(f2.index).to_numpy() == f2.to_numpy()).all()


def test_payment_without_invoices_before_as_of_drops_the_stored_table(spark, synth, tmp_path):
    """--invoices all dated after --as-of: the payment step is skipped, and the payment_behaviour table an earlier
    run left in --db is dropped (as the DuckDB engine drops it), so no reader shows that run's figures."""
    from loyalist.store import has_table, open_store, write_frame

    _, parquet, _ = synth
    db = tmp_path / "spark.duckdb"
    store = open_store(db)
    write_frame(store, "payment_behaviour", pd.DataFrame({"customer_id": ["C1"], "payment_risk": [0.9],
                                                          "as_of": [pd.Timestamp("2030-01-01")]}), replace=True)
    store.close()
    later = SYNTH_AS_OF + dt.timedelta(days=5)
    pd.DataFrame({"invoice_id": ["I1"], "customer_id": ["C1"], "invoice_date": [later], "due_date": [later],
                  "amount": [100.0], "paid_date": [later], "disputed": [False]}).to_parquet(tmp_path / "inv.parquet")
    run = analyze_spark(str(parquet), out=str(tmp_path / "out"), session=spark, model="bgnbd", as_of=SYNTH_AS_OF,
                        steps=["payment"], invoices=str(tmp_path / "inv.parquet"), db=db)
    assert [n for n in run.report.notes if n.startswith("payment:")] == [(
        "payment: the store holds no invoices before the as-of date, so payment behaviour and payment risk are "
        "skipped; the payment_behaviour table of an earlier run (as of 2030-01-01) was removed")]  # --invoices given
    assert "payment_behaviour" not in run.result_tables and "payment_risk" not in pd.read_parquet(run.out).columns
    store = open_store(db, read_only=True)
    assert not has_table(store, "payment_behaviour")
    store.close()
