"""The Spark engine on a real standalone cluster started on loopback by the test (one master, two workers,
one core each) and stopped by it: the per-customer table (with the segments and value steps) equals the DuckDB
engine's, and the work ran on the workers' executors."""

from __future__ import annotations

import pandas as pd
import pytest
from spark_helpers import SYNTH_AS_OF, assert_same_rows, assert_same_table, duckdb_table, synthetic_store
from test_spark_segments import (
    SEGMENT_COLUMNS,
    TABLE_KEYS,
    VALUE_COLUMNS,
    assert_same_columns,
    duckdb_steps,
)

pytest.importorskip("pyspark")

from loyalist.engine.cluster import LoopbackCluster
from loyalist.engine.spark import analyze_spark, spark_session


@pytest.fixture(scope="module")
def cluster():
    with LoopbackCluster(workers=2, cores=1, memory="1g") as c:
        yield c
    assert c.status() is None  # the master is gone


@pytest.fixture(scope="module")
def spark(cluster):
    session = spark_session(cluster.url, {**cluster.session_conf("768m"), "spark.driver.memory": "1g",
                                          "spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4"})
    yield session
    session.stop()


def test_cluster_has_two_one_core_workers(cluster, spark):
    status = cluster.status()
    assert status["aliveworkers"] == 2 and status["cores"] == 2
    assert [w["cores"] for w in status["workers"]] == [1, 1]
    assert spark.sparkContext.master == cluster.url
    apps = status["activeapps"]
    assert len(apps) == 1 and apps[0]["cores"] == 2  # our application holds both workers' cores


def test_cluster_spark_equals_duckdb(cluster, spark, tmp_path, monkeypatch):
    """The customer-base table and, as one example of the insight steps (each is tested in local mode), the
    segments and value steps' columns and tables."""
    store, parquet = synthetic_store(tmp_path, n_customers=2000, seed=11)
    model = "bgnbd"
    duck = duckdb_table(store, SYNTH_AS_OF, model, monkeypatch)
    duck_steps, duck_tables = duckdb_steps(store, SYNTH_AS_OF, model, monkeypatch, growth=False)
    store.close()
    run = analyze_spark(str(parquet), out=str(tmp_path / "out"), session=spark, model=model, as_of=SYNTH_AS_OF,
                        steps=["segments", "value"])
    table = pd.read_parquet(run.out)
    assert_same_table(duck, table[list(duck.columns)])
    assert_same_columns(duck_steps, table, SEGMENT_COLUMNS + VALUE_COLUMNS)
    for name in TABLE_KEYS:
        assert_same_rows(name, duck_tables[name].drop(columns="run_at", errors="ignore"),
                         pd.read_parquet(tmp_path / "out" / name).drop(columns="run_at", errors="ignore"),
                         TABLE_KEYS[name])
    # the tasks ran in executors on the two workers (not in the driver)
    executors = spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
    assert executors == 2
    assert len(list((tmp_path / "out" / "customer_insights").glob("part-*.parquet"))) >= 2
