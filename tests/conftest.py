"""Shared fixtures: where the real datasets live, and skipping cleanly when they do not."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

pytest_plugins = ["pg"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LOYALIST_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """Path to a file under ../shared/data, or skip the test saying what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"real dataset {path} is absent (it lives in ../shared/data beside the repository, "
            "which a user's clone does not have); set LOYALIST_SHARED_DATA to point elsewhere"
        )
    return path


DEMO = sorted((REPO / "data" / "demo").glob("*.csv.gz"))
"""The bundled demo data (two Online Retail II exports, 800 customers)."""


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """A fresh store holding the demo data, one per test module."""
    from loyalist.ingest import ingest
    from loyalist.store import open_store

    store = open_store(tmp_path_factory.mktemp("demo") / "demo.duckdb")
    ingest(store, DEMO)
    yield store
    store.close()


# The Online Retail II non-product codes, written out here so the tests do not lean on loyalist.schema's list.
NON_PRODUCT_CODES = ("POST", "DOT", "M", "C2", "D", "S", "B", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS")


@pytest.fixture(scope="module")
def spark(request):
    """A local[2] Spark session for one test module, stopped at its end (so test_spark_cluster can start its
    own on the cluster). A module sets SPARK_PARTITIONS to exercise more shuffle partitions than the default 2."""
    pytest.importorskip("pyspark")
    from loyalist.engine.spark import spark_session

    parts = str(getattr(request.module, "SPARK_PARTITIONS", 2))
    session = spark_session("local[2]", {"spark.driver.memory": "1g", "spark.ui.enabled": "false",
                                          "spark.sql.shuffle.partitions": parts})
    yield session
    session.stop()


def demo_lines(paths: list[Path] = DEMO) -> pd.DataFrame:
    """Independent pandas reading of two Online Retail II exports: the second export repeats the first one's
    last days line for line, so those are counted once. Adds customer_id (NaN for guests), day, non_product
    (postage, fees, adjustments) and cancelled (invoice 'C...')."""
    from loyalist.schema import NON_PRODUCT_DESCRIPTION

    first, second = (pd.read_csv(p, dtype={"Customer ID": str, "Invoice": str, "StockCode": str},
                                 parse_dates=["InvoiceDate"]) for p in paths)
    df = pd.concat([first, second[second["InvoiceDate"] > first["InvoiceDate"].max()]])
    code = df["StockCode"].str.upper()
    return df.assign(
        customer_id=df["Customer ID"].str.replace(r"\.0+$", "", regex=True),
        day=df["InvoiceDate"].dt.normalize(),
        non_product=(code.isin(NON_PRODUCT_CODES) | code.str.startswith(("ADJUST", "TEST", "GIFT_"))
                     | df["Description"].fillna("").str.match(NON_PRODUCT_DESCRIPTION)),
        cancelled=df["Invoice"].str.startswith("C"))


def demo_purchases(paths: list[Path] = DEMO) -> pd.DataFrame:
    """The purchase lines of demo_lines: known customer, not cancelled, positive quantity, price >= 0,
    a product."""
    df = demo_lines(paths)
    return df[df["customer_id"].notna() & ~df["cancelled"] & (df["Quantity"] > 0) & (df["Price"] >= 0)
              & ~df["non_product"]].copy()
