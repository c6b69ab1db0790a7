"""The direction (order 30) and payment (order 35) steps on the Spark engine: the `direction`,
`direction_backtest` and `payment_behaviour` tables and the per-customer columns equal the DuckDB engine's (same
rows, numbers within 1e-9 relative, text exactly), on synthetic data (invoices from the project's generator,
product categories for part of the products, seasonal exposure on) and on Online Retail II (slow); without
--invoices the payment step notes it and skips; a --db store holding invoices without --invoices is refused
before Spark starts."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file
from spark_helpers import SYNTH_AS_OF, assert_same_rows, synthetic_invoices, synthetic_store
from typer.testing import CliRunner

from loyalist.cli import app
from loyalist.customer_base import Settings
from loyalist.errors import LoyalistError
from loyalist.features import rfm_summary
from loyalist.insights import Context
from loyalist.insights.direction import direction_step
from loyalist.insights.payment import payment_step

pytest.importorskip("pyspark")

from loyalist.engine.spark import SparkSource, analyze_spark

TABLES = {"direction": ["customer_id"], "direction_backtest": ["cutoff", "method", "label"],
          "payment_behaviour": ["customer_id"]}
COLUMNS = ["trend", "growth_rate", "trend_confidence", "volume_pricing_candidate", "mix_shift", "mix_shift_reason",
           "dissatisfaction_flags", "trend_reason", "payment_risk", "payment_risk_reason", "dbt_days_6m"]
CONFIG = {"direction": {"seasonal": True, "backtest_bootstrap": 50}}


def duckdb_reference(store, as_of: dt.date, config: dict) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, list]:
    """The DuckDB engine's direction and payment steps on the store: their tables, their per-customer columns
    (for every customer with a purchase, as `analyze` joins them) and the notes."""
    customers = rfm_summary(store.table("transactions"), as_of).execute()[["customer_id"]]
    ctx = Context(store, as_of, Settings(), None, customers, config, [])
    cols = customers.merge(direction_step(ctx), on="customer_id", how="left")
    cols = cols.merge(payment_step(ctx), on="customer_id", how="left")
    tables = {name: store.con.execute(f"SELECT * FROM {name}").df() for name in TABLES}
    return tables, cols, ctx.notes


@pytest.fixture(scope="module")
def synth(tmp_path_factory, spark):
    """A synthetic store with invoices and product categories (for part of the products), the DuckDB engine's
    reference, and one Spark run of the two steps (loaded into a second store with --db)."""
    folder = tmp_path_factory.mktemp("synth_direction")
    store, parquet = synthetic_store(folder, n_customers=1500, seed=5, products=150)
    invoices = synthetic_invoices(store, folder)
    i = np.arange(150)
    prods = pd.DataFrame({"product_id": [f"P{k}" for k in i],
                          "category": np.where(i % 5 == 4, None, np.array(["cards", "mugs", "bags", "tins"])[i % 4])})
    store.con.register("prods_df", prods)
    store.con.execute("INSERT INTO products BY NAME SELECT * FROM prods_df")
    store.con.unregister("prods_df")
    products = folder / "products"
    store.con.execute(f"COPY (SELECT * FROM products) TO '{products}' (FORMAT parquet)")
    duck, cols, notes = duckdb_reference(store, SYNTH_AS_OF, CONFIG)
    store.close()
    run = analyze_spark(str(parquet), out=str(folder / "out"), session=spark, model="bgnbd", as_of=SYNTH_AS_OF,
                        config=CONFIG, steps=["direction", "payment"], invoices=str(invoices),
                        products=str(products), db=folder / "spark.duckdb")
    return {"folder": folder, "parquet": parquet, "duck": duck, "cols": cols, "notes": notes, "run": run,
            "products": products}


def test_synthetic_direction_and_payment_on_spark_equal_duckdb(synth):
    run, folder, duck = synth["run"], synth["folder"], synth["duck"]
    assert set(TABLES) <= set(run.result_tables)
    d = duck["direction"]
    # the data exercise what is compared: every label, mix shifts named by category, flags, candidates, payers
    assert {"growing", "declining", "stable", "lapsed"} <= set(d["trend"])
    assert d["mix_shift_reason"].notna().sum() >= 5 and d["dissatisfaction_flags"].notna().sum() >= 20
    assert d["buys_more"].fillna("").str.contains("cards|mugs|bags|tins").any()
    assert d["volume_pricing_candidate"].sum() >= 1
    assert len(duck["payment_behaviour"]) == 402 and (duck["payment_behaviour"]["payment_risk"] > 0.5).sum() > 10
    import duckdb

    con = duckdb.connect(str(folder / "spark.duckdb"), read_only=True)
    try:
        for name, key in TABLES.items():
            assert_same_rows(name, duck[name], pd.read_parquet(folder / "out" / name), key)
            assert_same_rows(name, duck[name], con.execute(f"SELECT * FROM {name}").df(), key)  # loaded into --db
    finally:
        con.close()
    table = pd.read_parquet(run.out)
    assert_same_rows("customer_insights", synth["cols"][["customer_id", *COLUMNS]], table[["customer_id", *COLUMNS]],
                ["customer_id"])
    for note in synth["notes"]:  # e.g. the invoiced customers without orders
        if note.startswith("payment:"):
            assert note in run.report.notes
    assert "direction" not in run.skipped_steps and "payment" not in run.skipped_steps


def test_spend_12m_against_plain_pandas(synth):
    """Independent: each customer's spend over the last 365 days, from the raw Parquet lines."""
    raw = pd.read_parquet(synth["parquet"])
    end = pd.Timestamp(SYNTH_AS_OF)
    buy = raw[raw["customer_id"].notna() & ~raw["is_guest"] & ~raw["is_non_product"] & ~raw["is_return"]
              & ~raw["is_cancellation"] & (raw["order_date"] < end)]
    year = buy[buy["order_date"] >= end - pd.Timedelta(days=365)]
    ref = year.groupby("customer_id")["amount"].sum()
    got = pd.read_parquet(synth["folder"] / "out" / "direction").set_index("customer_id")["spend_12m"]
    assert set(got.index) == set(buy["customer_id"])
    np.testing.assert_allclose(got.reindex(ref.index), ref, rtol=1e-9)
    assert (got.drop(ref.index) == 0).all()


def test_without_invoices_the_payment_step_notes_and_skips(spark, synth):
    """On the Spark engine without --invoices: a note, no table, no columns, no error."""
    import ibis

    from loyalist.engine.spark import read_transactions

    con = ibis.pyspark.connect(spark)
    source = SparkSource(con, {"transactions": read_transactions(con, str(synth["parquet"]))})
    ctx = Context(source, SYNTH_AS_OF, Settings(), None, None, {}, [])
    assert payment_step(ctx) is None
    assert any(n.startswith("payment: the store holds no invoices") and "--invoices" in n for n in ctx.notes)
    assert any("no invoices table (--invoices)" in n for n in source.notes)
    assert "payment_behaviour" not in source.results


def test_store_with_invoices_needs_the_flag(synth, tmp_path):
    """A --db store holding invoices and no --invoices: refused before Spark starts, naming the flag and the
    dump command (the payment answers would silently differ)."""
    db = synth["folder"] / "synthetic.duckdb"
    out = tmp_path / "never"
    for steps in (None, ["payment"]):
        with pytest.raises(LoyalistError, match=r"holds [\d,]+ invoices.*--invoices PATH.*dump invoices"):
            analyze_spark(str(synth["parquet"]), out=str(out), model="bgnbd", db=db, steps=steps,
                          products=str(synth["products"]))
    res = CliRunner().invoke(app, ["analyze", "--engine", "spark", "--source", str(synth["parquet"]), "--out",
                                   str(out), "--model", "bgnbd", "--db", str(db), "--products",
                                   str(synth["products"])])
    assert res.exit_code == 1 and "--invoices" in res.output
    assert not out.exists()


@pytest.mark.slow
def test_online_retail_direction_and_payment_on_spark_equal_duckdb(spark, tmp_path):
    files = [shared_file("online_retail_ii", f"online_retail_II_{y}.csv.gz") for y in ("2009-2010", "2010-2011")]
    from loyalist.ingest import ingest
    from loyalist.ingest.pipeline import Options
    from loyalist.schema import Kind
    from loyalist.store import open_store
    from loyalist.synthetic.invoices import simulate_invoices

    store = open_store(tmp_path / "orii.duckdb")
    ingest(store, files)
    as_of = dt.date(2011, 12, 10)
    ids = sorted(rfm_summary(store.table("transactions"), as_of).execute()["customer_id"])[::3]
    sim = simulate_invoices(customer_ids=ids, as_of=as_of, seed=11)
    ingest(store, [sim.write_csv(tmp_path / "invoices.csv")], Options(kind=Kind.invoices))
    duck, cols, _ = duckdb_reference(store, as_of, {})
    store.con.execute(f"COPY transactions TO '{tmp_path / 'tx'}' (FORMAT parquet, FILE_SIZE_BYTES '16MB')")
    store.con.execute(f"COPY invoices TO '{tmp_path / 'inv'}' (FORMAT parquet)")
    store.close()
    run = analyze_spark(str(tmp_path / "tx"), out=str(tmp_path / "out"), session=spark, model="bgnbd", as_of=as_of,
                        steps=["direction", "payment"], invoices=str(tmp_path / "inv"))
    assert len(duck["direction"]) > 5000 and len(duck["payment_behaviour"]) == len(ids)
    for name, key in TABLES.items():
        assert_same_rows(name, duck[name], pd.read_parquet(tmp_path / "out" / name), key)
    table = pd.read_parquet(run.out)
    assert_same_rows("customer_insights", cols[["customer_id", *COLUMNS]], table[["customer_id", *COLUMNS]],
                ["customer_id"])
