"""The `crosssell` step on the Spark engine equals the DuckDB engine's: the `crosssell_gaps` table (every
customer x rank row: product, score within 1e-9 relative, evidence and the other columns exactly), the
per-customer columns top_gap_product and gaps_count, the held-out `crosssell_backtest` figures and its note;
on a synthetic store with product categories (local[2]) and, in a slow test, on Online Retail II."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from conftest import shared_file
from spark_helpers import SYNTH_AS_OF, synthetic_store

from loyalist.customer_base import Settings
from loyalist.insights import Context
from loyalist.insights.crosssell import GAP_COLUMNS, crosssell_step

pytest.importorskip("pyspark")

from loyalist.engine.spark import analyze_spark

BACKTEST_COLUMNS = ["cutoff", "horizon_days", "method", "customers", "recall_at_k", "ndcg_at_k", "hit_rate",
                    "targets", "k"]


def duckdb_crosssell(store, as_of: dt.date, customer_ids: pd.Series, config: dict | None = None):
    """The DuckDB engine's step: (gaps table, per-customer columns, backtest table, notes)."""
    notes: list[str] = []
    ctx = Context(store, as_of, Settings(), None, pd.DataFrame({"customer_id": customer_ids}), config or {}, notes)
    added = crosssell_step(ctx)
    gaps = store.con.execute("SELECT * FROM crosssell_gaps").df()
    bt = store.con.execute("SELECT * FROM crosssell_backtest").df()
    return gaps, added, bt, notes


def _text(s: pd.Series) -> pd.Series:
    return s.astype(object).where(s.notna(), "<NA>").astype(str)


def assert_same_gaps(duck: pd.DataFrame, spark: pd.DataFrame) -> None:
    assert list(spark.columns) == GAP_COLUMNS == list(duck.columns)
    assert len(spark) == len(duck) > 0
    key = ["customer_id", "rank"]
    a = duck.sort_values(key).reset_index(drop=True)
    b = spark.sort_values(key).reset_index(drop=True)
    for c in GAP_COLUMNS:
        x, y = a[c], b[c]
        if c == "as_of":
            assert (pd.to_datetime(x) == pd.to_datetime(y)).all()
        elif c in ("score", "typical_quantity", "typical_price"):
            x, y = x.to_numpy(float), y.to_numpy(float)
            assert (np.isnan(x) == np.isnan(y)).all(), c
            ok = ~np.isnan(x)
            np.testing.assert_allclose(y[ok], x[ok], rtol=1e-9, atol=0, err_msg=c)
        else:
            assert (_text(x) == _text(y)).all(), c


def assert_same_backtest(duck: pd.DataFrame, spark: pd.DataFrame) -> None:
    a = duck[BACKTEST_COLUMNS].sort_values("method").reset_index(drop=True)
    b = spark[BACKTEST_COLUMNS].sort_values("method").reset_index(drop=True)
    assert len(a) == len(b) == 2
    for c in BACKTEST_COLUMNS:
        if c == "method":
            assert (a[c] == b[c]).all()
        elif c == "cutoff":
            assert (pd.to_datetime(a[c]) == pd.to_datetime(b[c])).all()
        else:
            np.testing.assert_allclose(b[c].to_numpy(float), a[c].to_numpy(float), rtol=1e-9, atol=0, err_msg=c)


def assert_same_step(store, out, run, as_of: dt.date, config: dict | None = None) -> pd.DataFrame:
    table = pd.read_parquet(run.out)
    gaps, added, bt, notes = duckdb_crosssell(store, as_of, table["customer_id"], config)
    spark_gaps = pd.read_parquet(out / "crosssell_gaps")
    assert_same_gaps(gaps, spark_gaps)
    m = added.merge(table[["customer_id", "top_gap_product", "gaps_count"]], on="customer_id", suffixes=("_d", ""))
    assert len(m) == len(table)
    assert (m["top_gap_product_d"].fillna("<NA>") == m["top_gap_product"].fillna("<NA>")).all()
    assert (m["gaps_count_d"].to_numpy() == m["gaps_count"].to_numpy()).all()
    assert_same_backtest(bt, pd.read_parquet(out / "crosssell_backtest"))
    held = [n for n in notes if n.startswith("cross-sell gaps held out")]
    assert len(held) == 1 and held[0] in run.report.notes
    return spark_gaps


def _with_categories(folder):
    store, parquet = synthetic_store(folder, n_customers=700, seed=5, products=60)
    i = np.arange(60)
    prods = pd.DataFrame({"product_id": [f"P{k}" for k in i], "description": [f"product {k}" for k in i],
                          "category": np.where(i % 5 == 4, None, np.array(["cards", "mugs", "bags", "toys"])[i % 4]),
                          "unit_cost": np.nan, "margin": np.nan})
    store.con.register("prods_df", prods)
    store.con.execute("INSERT INTO products BY NAME SELECT * FROM prods_df")
    store.con.unregister("prods_df")
    prods.to_parquet(folder / "products.parquet")
    return store, parquet, folder / "products.parquet"


def test_synthetic_crosssell_equals_duckdb(spark, tmp_path):
    store, parquet, products = _with_categories(tmp_path)
    out = tmp_path / "out"
    run = analyze_spark(str(parquet), out=str(out), session=spark, model="bgnbd", as_of=SYNTH_AS_OF,
                        steps=["crosssell"], products=str(products))
    gaps = assert_same_step(store, out, run, SYNTH_AS_OF)
    # the lists are not trivial: full lists, several categories, category gaps flagged
    assert (gaps.groupby("customer_id").size() == 10).mean() > 0.9
    assert gaps["new_category"].any() and gaps["category"].notna().any() and gaps["category"].isna().any()
    # a customer's gaps never hold a product they bought before as_of (independent pandas reading)
    raw = pd.read_parquet(parquet)
    raw = raw[(raw["order_date"] < pd.Timestamp(SYNTH_AS_OF)) & raw["customer_id"].notna()
              & raw["product_id"].notna() & ~raw["is_non_product"] & ~raw["is_guest"]]
    had = set(zip(raw["customer_id"].astype(str), raw["product_id"].astype(str)))
    assert not any((c, p) in had for c, p in zip(gaps["customer_id"], gaps["product_id"]))
    store.close()


@pytest.mark.slow
def test_online_retail_crosssell_equals_duckdb(spark, tmp_path):
    # the first export (Dec 2009 - Dec 2010, ~4,300 customers) keeps the test short; the two exports together
    # (as of 2011-12-10, 5,853 customers) were checked equal the same way when the step was ported
    files = [shared_file("online_retail_ii", "online_retail_II_2009-2010.csv.gz")]
    from loyalist.ingest import ingest
    from loyalist.store import open_store

    store = open_store(tmp_path / "orii.duckdb")
    ingest(store, files)
    as_of = dt.date(2010, 12, 1)
    store.con.execute(f"COPY transactions TO '{tmp_path / 'tx'}' (FORMAT parquet, FILE_SIZE_BYTES '16MB')")
    out = tmp_path / "out"
    run = analyze_spark(str(tmp_path / "tx"), out=str(out), session=spark, model="bgnbd", as_of=as_of,
                        steps=["crosssell"])
    gaps = assert_same_step(store, out, run, as_of)
    assert gaps["customer_id"].nunique() > 3500
    store.close()


def test_store_with_customer_attributes_refuses_crosssell(tmp_path):
    """The Spark engine does not read the customers table, whose industry / region / size the DuckDB engine's
    look-alikes use: with such a --db store, crosssell is refused before any work, never silently different."""
    from loyalist.errors import LoyalistError
    from loyalist.store import open_store

    db = tmp_path / "attrs.duckdb"
    store = open_store(db)
    store.con.execute("INSERT INTO customers (customer_id, industry) VALUES ('c1', 'retail'), ('c2', NULL)")
    store.close()
    out = tmp_path / "never"
    with pytest.raises(LoyalistError, match=r"holds 1 customers with industry, region or size.*crosssell"):
        analyze_spark(str(tmp_path / "absent.parquet"), out=str(out), model="bgnbd", db=db, steps=["crosssell"])
    assert not out.exists()
