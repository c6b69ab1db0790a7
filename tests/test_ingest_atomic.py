"""An ingest that fails or is killed part-way leaves the store exactly as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from loyalist.errors import SourceError
from loyalist.ingest import ingest
from loyalist.store import open_store


def _snapshot(db: Path) -> tuple:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return tuple(
            con.execute(f"SELECT count(*), coalesce(sum(hash(t)), 0) FROM {table} t").fetchall()[0]
            for table in ("transactions", "quarantine", "ingests", "invoices", "customers", "products")
        )
    finally:
        con.close()


def _write_csv(path: Path, lines: int, seed: int) -> None:
    con = duckdb.connect()
    con.execute(f"""
        COPY (SELECT 'C' || (i % 50000) AS CustomerID, 'O' || (i // 3) AS InvoiceNo,
                     TIMESTAMP '2020-01-01' + to_minutes((i * 7 + {seed}) % 900000) AS InvoiceDate,
                     'P' || (i % 4000) AS StockCode, 'item ' || (i % 4000) AS Description,
                     1 + i % 12 AS Quantity, round(0.5 + (i % 97) / 10, 2) AS UnitPrice
              FROM range({lines}) r(i)) TO '{path}' (HEADER)""")
    con.close()


@pytest.fixture
def seeded_store(tmp_path):
    small = tmp_path / "small.csv"
    _write_csv(small, 1_000, seed=1)
    db = tmp_path / "s.duckdb"
    store = open_store(db)
    ingest(store, [small])
    store.close()
    return db


def test_failed_ingest_leaves_store_unchanged(seeded_store, tmp_path):
    before = _snapshot(seeded_store)
    good = tmp_path / "good.csv"
    _write_csv(good, 5_000, seed=2)
    bad = tmp_path / "bad.csv"
    bad.write_text("Foo,Bar\n1,2\n")  # no customer or date column: the second file fails
    store = open_store(seeded_store)
    with pytest.raises(SourceError, match="required field 'customer_id'"):
        ingest(store, [good, bad])
    store.close()
    assert _snapshot(seeded_store) == before


def test_killed_ingest_leaves_store_unchanged(seeded_store, tmp_path):
    big = tmp_path / "big.csv"
    _write_csv(big, 3_000_000, seed=3)
    before = _snapshot(seeded_store)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = 0
    for delay in (2.0, 3.5):
        proc = subprocess.Popen([sys.executable, "-m", "loyalist.cli", "ingest", str(big), "--db", str(seeded_store)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        if proc.returncode == -signal.SIGKILL:
            assert _snapshot(seeded_store) == before, f"store changed by an ingest killed after {delay}s"
    assert killed, "the ingest finished before it could be killed; make the file bigger"
    # And the store still works: a complete ingest afterwards succeeds and counts add up.
    store = open_store(seeded_store)
    report = ingest(store, [tmp_path / "small.csv"])
    assert report.totals()["duplicates"] == 1_000
    store.close()
