"""The `events` step on Spark (`loyalist.insights.events.events_on_spark`): the same new events as the DuckDB
engine's step (same ids, dates, types, reasons, evidence and actions) with the steps that feed it and run on
Spark at the time (timing, direction, payment when they are ported), and the same incremental behaviour:
events already stored in --db are not added again, a later as-of date adds only new ones, event_runs counts
them."""

from __future__ import annotations

import datetime as dt
import shutil

import duckdb
import pandas as pd
import pytest
from spark_helpers import SYNTH_AS_OF, duckdb_table, synthetic_store

from loyalist import insights
from loyalist.customer_base import Settings, fit_base
from loyalist.features import rfm_summary
from loyalist.insights import Context
from loyalist.insights.events import COLUMNS, events_step
from loyalist.store import open_store

pytest.importorskip("pyspark")

from loyalist.engine.spark import analyze_spark

FEEDERS = ("timing", "direction", "payment")  # the steps whose results the events step reads
CONFIG = {"direction": {"backtest": False}, "timing": {"backtest": False}, "alerts": {"lookback_days": 60}}
FIRST = SYNTH_AS_OF - dt.timedelta(days=45)


def spark_feeders() -> list:
    """The feeding steps that run on Spark now (the comparison runs them on both engines)."""
    return [s for s in insights.load_steps() if s.name in FEEDERS and s.spark]


SPARK_PARTITIONS = 3


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """Copies of one synthetic store: for the DuckDB engine and as the Spark engine's --db, per test."""
    folder = tmp_path_factory.mktemp("synth_events")
    store, parquet = synthetic_store(folder, n_customers=600, products=150)
    store.close()
    for name in ("duck_a", "spark_a", "duck_b", "spark_b"):
        shutil.copy(folder / "synthetic.duckdb", folder / f"{name}.duckdb")
    return folder, parquet


def duckdb_events(db, as_of: dt.date, monkeypatch, feeders: list) -> pd.DataFrame:
    """The DuckDB engine's events step after the `feeders` (steps that also run on Spark); returns the events it
    added (the rows of `events` with the run's detected_at)."""
    store = open_store(db)
    try:
        table = duckdb_table(store, as_of, "bgnbd", monkeypatch)
        fitted = fit_base(rfm_summary(store.table("transactions"), as_of).execute(), "bgnbd")
        ctx = Context(store, as_of, Settings(), fitted, table, CONFIG, [])
        for s in feeders:
            added = s.run(ctx)
            if added is not None:
                ctx.customers = ctx.customers.merge(added, on="customer_id", how="left")
        assert events_step(ctx) is None
        ev = store.con.execute("SELECT * FROM events").df()
        added = int(store.con.execute("SELECT added FROM event_runs ORDER BY run_at DESC LIMIT 1").fetchall()[0][0])
        return ev[ev["detected_at"] == ev["detected_at"].max()] if added else ev.iloc[:0]
    finally:
        store.close()


def spark_events(spark, parquet, out, db, as_of: dt.date, feeders: list):
    run = analyze_spark(str(parquet), out=str(out), session=spark, model="bgnbd", as_of=as_of, config=CONFIG,
                        steps=[s.name for s in feeders] + ["events"], db=db)
    return run, pd.read_parquet(out / "events")


def assert_same_events(duck: pd.DataFrame, got: pd.DataFrame) -> None:
    assert list(got.columns) == COLUMNS
    assert got["event_id"].is_unique and duck["event_id"].is_unique
    a = duck.drop(columns="detected_at").sort_values("event_id", ignore_index=True)
    b = got.drop(columns="detected_at").sort_values("event_id", ignore_index=True)
    assert len(a) == len(b), (a["type"].value_counts(), b["type"].value_counts())
    assert (pd.to_datetime(a["event_date"]) == pd.to_datetime(b["event_date"])).all()
    for c in ("event_id", "customer_id", "type", "reason", "evidence", "action"):
        assert (a[c].astype(str) == b[c].astype(str)).all(), c


def _stored(db) -> tuple[pd.DataFrame, pd.DataFrame]:
    with duckdb.connect(str(db), read_only=True) as con:
        return (con.execute("SELECT * FROM events").df(),
                con.execute("SELECT * FROM event_runs ORDER BY run_at").df())


def test_history_events_on_spark_equal_duckdb_and_incremental(spark, synth, monkeypatch):
    """The events dated by the order history (no feeding step): equal on both engines at two as-of dates; the
    second run adds only new events; the same as-of again adds none."""
    folder, parquet = synth
    assert next(s for s in insights.load_steps() if s.name == "events").spark
    duck_db, spark_db = folder / "duck_a.duckdb", folder / "spark_a.duckdb"
    duck1 = duckdb_events(duck_db, FIRST, monkeypatch, [])
    run1, got1 = spark_events(spark, parquet, folder / "a1", spark_db, FIRST, [])
    assert {"events", "event_runs"} <= set(run1.result_tables)
    assert len(duck1) > 30 and duck1["type"].nunique() >= 4
    assert_same_events(duck1, got1)
    duck2 = duckdb_events(duck_db, SYNTH_AS_OF, monkeypatch, [])
    _, got2 = spark_events(spark, parquet, folder / "a2", spark_db, SYNTH_AS_OF, [])
    assert len(duck2) > 0
    assert_same_events(duck2, got2)
    assert not set(got2["event_id"]) & set(got1["event_id"])
    _, got3 = spark_events(spark, parquet, folder / "a3", spark_db, SYNTH_AS_OF, [])
    assert len(got3) == 0
    stored, runs = _stored(spark_db)
    assert stored["event_id"].is_unique and len(stored) == len(got1) + len(got2)
    assert runs["added"].tolist() == [len(got1), len(got2), 0]
    assert_same_events(_stored(duck_db)[0], stored)
    # independent: second orders in the window of the first run, from the raw lines with plain pandas
    raw = pd.read_parquet(parquet)
    buy = raw[raw["customer_id"].notna() & ~raw["is_guest"] & ~raw["is_non_product"] & ~raw["is_return"]
              & ~raw["is_cancellation"] & (raw["order_date"] < pd.Timestamp(FIRST))]
    days = buy.assign(day=buy["order_date"].dt.normalize()).groupby(["customer_id", "day"])["amount"].sum()
    days = days[days.fillna(0) >= 0].reset_index()
    second = days.sort_values("day").groupby("customer_id").nth(1)
    start = pd.Timestamp(FIRST - dt.timedelta(days=CONFIG["alerts"]["lookback_days"]))
    want = set(second.loc[second["day"] >= start, "customer_id"])
    assert set(got1.loc[got1["type"] == "first_repeat_order", "customer_id"]) == want


@pytest.mark.slow
def test_events_with_the_feeding_steps_on_spark_equal_duckdb(spark, synth, monkeypatch):
    """With the steps that feed the events and run on Spark now (timing, direction, payment when ported): the
    state events (lapse, growth/decline, mix shift, overdue, contact due ...) equal too. Slow (the feeding steps
    run on both engines), so one as-of date only."""
    folder, parquet = synth
    feeders = spark_feeders()
    if not feeders:
        pytest.skip("none of the feeding steps runs on Spark yet")
    duck_db, spark_db = folder / "duck_b.duckdb", folder / "spark_b.duckdb"
    duck1 = duckdb_events(duck_db, FIRST, monkeypatch, feeders)
    _, got1 = spark_events(spark, parquet, folder / "b1", spark_db, FIRST, feeders)
    assert_same_events(duck1, got1)
    history = {"first_repeat_order", "order_milestone", "spend_jump", "reactivation", "new_category",
               "purchase_anniversary"}
    assert set(got1["type"]) - history  # some state events
    assert_same_events(_stored(duck_db)[0], _stored(spark_db)[0])
