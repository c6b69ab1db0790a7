"""The customer-base backtest on Spark (`loyalist.backtest.backtest_on_spark`, `analyze --engine spark --model
auto`): the same metrics and tracking curve as the DuckDB backtest (within 1e-9 relative), the same model chosen,
backtest_metrics / backtest_tracking stored (appended) like the DuckDB engine stores them."""

from __future__ import annotations

import datetime as dt
import shutil

import duckdb
import ibis
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from spark_helpers import SYNTH_AS_OF, synthetic_store

from loyalist.analysis import backtest_tables, choice_from, chosen_model
from loyalist.backtest import backtest, backtest_on_spark, holdout_auc
from loyalist.customer_base import TRANSACTION_MODELS
from loyalist.store import open_store, write_frame

pytest.importorskip("pyspark")

from loyalist.engine.spark import analyze_spark, read_transactions

HORIZON = 90
CUTOFF = SYNTH_AS_OF - dt.timedelta(days=HORIZON)


SPARK_PARTITIONS = 3


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """The synthetic store and its Parquet files, and the DuckDB backtest of the classic models at the cutoff
    that `analyze --model auto` uses (as_of - 90 days). The store is closed: the Spark runs open it as --db."""
    folder = tmp_path_factory.mktemp("synth_bt")
    store, parquet = synthetic_store(folder, n_customers=1000, products=150)
    duck = backtest(store.table("transactions"), CUTOFF, HORIZON, models=tuple(TRANSACTION_MODELS))
    store.close()
    return folder / "synthetic.duckdb", parquet, duck


def _assert_metrics_equal(duck: pd.DataFrame, spark: pd.DataFrame) -> None:
    assert list(spark.columns) == list(duck.columns)
    assert list(spark["model"]) == list(duck["model"]) == list(TRANSACTION_MODELS)
    for c in duck.columns.drop("model"):
        np.testing.assert_allclose(spark[c].to_numpy(float), duck[c].to_numpy(float), rtol=1e-9, atol=0, err_msg=c)


def test_backtest_on_spark_equals_duckdb(spark, synth):
    _, parquet, duck = synth
    con = ibis.pyspark.connect(spark)
    got = backtest_on_spark(con, read_transactions(con, str(parquet)), CUTOFF, HORIZON)
    _assert_metrics_equal(duck.metrics, got.metrics)
    assert got.chosen == duck.chosen and got.customers == duck.customers
    assert list(got.tracking.columns) == list(duck.tracking.columns)
    assert (got.tracking["date"] == duck.tracking["date"]).all()
    assert (got.tracking["actual"] == duck.tracking["actual"]).all()
    assert (got.tracking["phase"] == duck.tracking["phase"]).all()
    for name in TRANSACTION_MODELS:
        np.testing.assert_allclose(got.tracking[name], duck.tracking[name], rtol=1e-9, atol=0)
    assert any("rhythm_gbm: not run on the Spark engine" in n for n in got.notes)
    # independent: customers who bought before the cutoff, their purchase days in the holdout, and their
    # repeat purchase days up to the end of the holdout (plain pandas on the raw lines)
    raw = pd.read_parquet(parquet)
    buy = raw[raw["customer_id"].notna() & ~raw["is_guest"] & ~raw["is_non_product"] & ~raw["is_return"]
              & ~raw["is_cancellation"]]
    days = buy.assign(day=buy["order_date"].dt.normalize()).groupby(["customer_id", "day"])["amount"].sum()
    days = days[days.fillna(0) >= 0].reset_index()
    before = days[days["day"] < pd.Timestamp(CUTOFF)]
    calib = set(before["customer_id"])
    end = pd.Timestamp(CUTOFF + dt.timedelta(days=HORIZON))
    hold = days[(days["day"] >= pd.Timestamp(CUTOFF)) & (days["day"] < end) & days["customer_id"].isin(calib)]
    assert got.customers == len(calib)
    assert (got.metrics["actual_orders"] == len(hold)).all()
    first = before.groupby("customer_id")["day"].min()
    repeat = days[days["customer_id"].isin(calib) & (days["day"] < end)]
    repeat = repeat[repeat["day"] > repeat["customer_id"].map(first)]
    last = got.tracking["date"].iloc[-1]
    assert got.tracking["actual"].iloc[-1] == (repeat["day"] <= last).sum()


def test_weighted_auc_equals_the_auc_over_customers():
    rng = np.random.default_rng(3)
    prob = rng.choice(np.linspace(0.05, 0.95, 23), 4000)  # many ties, as customers sharing a pattern
    pos = rng.random(4000) < prob
    counts = pd.DataFrame({"prob": prob, "pos": pos}).groupby(["prob", "pos"]).size().reset_index(name="n")
    w = holdout_auc(counts["pos"].to_numpy(bool), counts["prob"].to_numpy(float), counts["n"].to_numpy(float))
    assert w == pytest.approx(roc_auc_score(pos, prob), rel=1e-12)
    assert np.isnan(holdout_auc(np.zeros(5, bool), np.linspace(0, 1, 5)))


def test_model_auto_backtests_on_spark_and_stores_it(spark, synth, tmp_path):
    db, parquet, duck = synth
    expected_model, expected_reason = choice_from(duck.metrics.assign(cutoff=pd.Timestamp(CUTOFF),
                                                                      horizon_days=HORIZON))
    # no backtest in --db: it runs on Spark, its tables go under OUT/ and are appended to the store as
    # analysis.run_backtest appends them; the next run uses the stored choice
    run = analyze_spark(str(parquet), out=str(tmp_path / "b"), session=spark, as_of=SYNTH_AS_OF, steps=[], db=db)
    assert run.report.model == expected_model and run.report.chosen_by == expected_reason
    assert {"backtest_metrics", "backtest_tracking"} <= set(run.result_tables)
    stored = pd.read_parquet(tmp_path / "b" / "backtest_metrics")
    _assert_metrics_equal(duck.metrics, stored[duck.metrics.columns])
    assert stored["chosen"].sum() == 1 and stored.loc[stored["chosen"], "model"].item() == expected_model
    assert (pd.to_datetime(stored["cutoff"]) == pd.Timestamp(CUTOFF)).all()
    with duckdb.connect(str(db), read_only=True) as con:
        m = con.execute("SELECT * FROM backtest_metrics").df()
        tracking_rows = con.execute("SELECT count(*) FROM backtest_tracking").fetchall()[0][0]
        runs = con.execute("SELECT model FROM analysis_runs").df()
    assert sorted(m["model"]) == sorted(TRANSACTION_MODELS) and tracking_rows == len(duck.tracking)
    assert list(runs["model"]) == [expected_model]
    again = analyze_spark(str(parquet), out=str(tmp_path / "c"), session=spark, as_of=SYNTH_AS_OF, steps=[], db=db)
    assert again.report.model == expected_model and f"(stored in {db})" in again.report.chosen_by
    assert "backtest_metrics" not in again.result_tables
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM backtest_metrics").fetchall()[0][0] == len(TRANSACTION_MODELS)


def test_model_auto_ignores_a_stored_backtest_whose_holdout_ended_after_as_of(spark, synth, tmp_path):
    db, parquet, duck = synth
    db = shutil.copy(db, tmp_path / "store.duckdb")
    store = open_store(db)
    metrics, _ = backtest_tables(duck)  # holdout CUTOFF .. SYNTH_AS_OF
    write_frame(store, "backtest_metrics", metrics, replace=True)
    store.close()
    # as of SYNTH_AS_OF the stored backtest is used, as the DuckDB engine uses it
    run = analyze_spark(str(parquet), out=str(tmp_path / "a"), session=spark, as_of=SYNTH_AS_OF, steps=[], db=db)
    assert run.report.chosen_by.endswith(f"in the backtest at {CUTOFF} over {HORIZON} days (stored in {db})")
    assert "backtest_metrics" not in run.result_tables
    # 30 days earlier its holdout ends after as_of (it measured orders after as_of): a backtest at as_of - 90
    # runs on Spark instead, and the choice is the one the DuckDB engine makes from the store at that as_of
    as_of = SYNTH_AS_OF - dt.timedelta(days=30)
    early = analyze_spark(str(parquet), out=str(tmp_path / "b"), session=spark, as_of=as_of, steps=[], db=db)
    cutoff = as_of - dt.timedelta(days=HORIZON)
    assert early.report.chosen_by.endswith(f"in the backtest at {cutoff} over {HORIZON} days")
    assert "backtest_metrics" in early.result_tables
    store = open_store(db, read_only=True)
    assert chosen_model(store, as_of) == (early.report.model, early.report.chosen_by)
    store.close()
