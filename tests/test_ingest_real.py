"""Ingest of the real datasets in ../shared/data: row accounting, overlap, idempotence, known totals."""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import shared_file
from typer.testing import CliRunner

from loyalist import quality
from loyalist.cli import app
from loyalist.ingest import Options, ingest
from loyalist.store import open_store

pytestmark = pytest.mark.slow

ORII = ("online_retail_ii", "online_retail_II_2009-2010.csv.gz"), ("online_retail_ii", "online_retail_II_2010-2011.csv.gz")


@pytest.fixture(scope="module")
def retail_store(tmp_path_factory):
    paths = [shared_file(*p) for p in ORII]
    store = open_store(tmp_path_factory.mktemp("orii") / "s.duckdb")
    report = ingest(store, paths)
    yield store, report
    store.close()


def test_online_retail_row_accounting_and_overlap(retail_store):
    store, report = retail_store
    first, second = report.files
    assert (first.rows_read, second.rows_read) == (525_461, 541_909)
    for f in report.files:
        assert f.rows_read == f.loaded + f.duplicates + f.quarantined
    # The two exports share 1-9 Dec 2010 exactly: 22,523 identical lines, counted once.
    assert second.duplicates == 22_523
    assert first.duplicates == 0
    # Repeated lines inside one export are kept as the source has them.
    assert report.totals()["loaded"] == 525_461 + 541_909 - 22_523
    stored = store.con.execute("SELECT count(*) FROM transactions").fetchall()[0][0]
    assert stored == report.totals()["loaded"]


def test_online_retail_known_totals(retail_store):
    store, _ = retail_store
    s = quality.status(store)
    assert s.customers == 5_942
    assert s.orders == 53_628
    assert s.lines == 1_044_847
    assert s.first_order == "2009-12-01 07:45:00"
    assert s.last_order == "2011-12-09 12:50:00"
    # Lines repeated within the first export are kept (6,865 extra copies of identical lines).
    dup = store.con.execute("""SELECT sum(n - 1) FROM (SELECT count(*) AS n FROM transactions
                                                    WHERE ingest_id = 1 AND file_id = 1 GROUP BY line_hash)""").fetchall()[0][0]
    assert dup == 6_865


def test_online_retail_reingest_adds_nothing(retail_store, tmp_path):
    store, _ = retail_store
    before = store.con.execute("SELECT count(*) FROM transactions").fetchall()[0][0]
    again = ingest(store, [shared_file(*ORII[1])])
    t = again.totals()
    assert t["loaded"] == 0 and t["quarantined"] == 0 and t["duplicates"] == t["rows_read"] == 541_909
    assert store.con.execute("SELECT count(*) FROM transactions").fetchall()[0][0] == before


def test_online_retail_quality_findings(retail_store):
    store, _ = retail_store
    findings = {f.check.split(" (")[0]: f for f in quality.quality(store)}
    assert findings["guest orders"].lines == 235_287  # blank Customer ID lines after de-duplication
    non_product = store.con.execute(
        "SELECT DISTINCT upper(product_id) FROM transactions WHERE is_non_product").fetchall()
    codes = {r[0] for r in non_product}
    assert {"POST", "DOT", "M", "BANK CHARGES", "AMAZONFEE", "C2"} <= codes
    assert "85123A" not in codes
    assert findings["negative prices"].lines == 5
    cancels = store.con.execute("SELECT count(*) FROM transactions WHERE is_cancellation").fetchall()[0][0]
    matched = findings["returns / cancellations with a matching earlier purchase"].lines
    unmatched = findings["returns / cancellations without a matching original"].lines
    returns_with_customer = store.con.execute(
        "SELECT count(*) FROM transactions WHERE (is_cancellation OR is_return) AND NOT is_guest").fetchall()[0][0]
    assert matched + unmatched == returns_with_customer
    assert matched > unmatched > 0 and cancels > 0


def test_cdnow_master_whitespace_file(tmp_path):
    path = shared_file("cdnow", "CDNOW_master.txt.gz")
    store = open_store(tmp_path / "c.duckdb")
    report = ingest(store, [path])
    t = report.totals()
    assert t["rows_read"] == 69_659 and t["loaded"] + t["duplicates"] == 69_659 and t["quarantined"] == 0
    f = report.files[0]
    assert f.mapping == {"customer_id": "customer_id", "order_date": "date", "quantity": "number_of_cds",
                         "amount": "dollar_value"}
    assert f.date_format == "%Y%m%d"
    s = quality.status(store)
    assert s.customers == 23_570
    assert (s.first_order, s.last_order) == ("1997-01-01 00:00:00", "1998-06-30 00:00:00")
    # Independent parse of the same file for the revenue total.
    with gzip.open(path, "rt") as fh:
        next(fh)
        expected = sum(float(line.split()[3]) for line in fh if line.strip())
    total = store.con.execute("SELECT sum(amount) FROM transactions").fetchall()[0][0]
    assert total == pytest.approx(expected, rel=1e-12)


def test_cdnow_sample_headerless_with_map(tmp_path):
    path = shared_file("cdnow", "CDNOW_sample.txt.gz")
    store = open_store(tmp_path / "c.duckdb")
    opts = Options(mapping={"customer_id": "column0", "order_date": "column2", "quantity": "column3",
                            "amount": "column4"})
    report = ingest(store, [path], opts)
    assert report.totals()["rows_read"] == 6_919
    s = quality.status(store)
    assert s.customers == 2_357
    # No order ids: an order is a customer's purchase at one time (was 0 orders)
    with gzip.open(path, "rt") as fh:
        purchases = {tuple(line.split()[i] for i in (0, 2)) for line in fh if line.strip()}
    assert s.orders == len(purchases) and 0 < s.orders <= 6_919


def test_cli_ingest_and_status_json(tmp_path):
    paths = [str(shared_file(*p)) for p in ORII]
    db = str(tmp_path / "cli.duckdb")
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", *paths, "--db", db, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["rows_read"] == doc["loaded"] + doc["duplicates"] + doc["quarantined"] == 1_067_370
    assert [f["rows_read"] for f in doc["files"]] == [525_461, 541_909]
    res = runner.invoke(app, ["status", "--db", db, "--json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.stdout)
    assert (st["customers"], st["orders"], st["lines"]) == (5_942, 53_628, 1_044_847)
    assert st["first_order"].startswith("2009-12-01") and st["last_order"].startswith("2011-12-09")
