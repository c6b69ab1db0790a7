"""The embedded DuckDB store: its schema and how to open it.

This is the one module that knows the store's physical schema (DDL). Everything that reads the store
does so through Ibis expressions on `Store.ibis`, so the same queries run on other Ibis backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import ibis

from loyalist.errors import LoyalistError

SCHEMA_VERSION = 1

DDL = """
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS ingests (
    ingest_id INTEGER, file_id INTEGER, started_at TIMESTAMP, finished_at TIMESTAMP, kind VARCHAR,
    source VARCHAR, rows_read BIGINT, loaded BIGINT, duplicates BIGINT, quarantined BIGINT, options VARCHAR
);
CREATE TABLE IF NOT EXISTS transactions (
    customer_id VARCHAR, order_id VARCHAR, order_date TIMESTAMP, product_id VARCHAR, description VARCHAR,
    quantity DOUBLE, unit_price DOUBLE, amount DOUBLE, currency VARCHAR, country VARCHAR, channel VARCHAR,
    is_guest BOOLEAN, is_cancellation BOOLEAN, is_return BOOLEAN, is_non_product BOOLEAN,
    price_issue VARCHAR, is_future BOOLEAN,
    line_hash UHUGEINT, occurrence INTEGER, ingest_id INTEGER, file_id INTEGER, source_row BIGINT
);
CREATE TABLE IF NOT EXISTS invoices (
    invoice_id VARCHAR, customer_id VARCHAR, invoice_date DATE, due_date DATE, amount DOUBLE,
    paid_date DATE, disputed BOOLEAN,
    line_hash UHUGEINT, ingest_id INTEGER, file_id INTEGER, source_row BIGINT
);
CREATE TABLE IF NOT EXISTS customers (
    customer_id VARCHAR, industry VARCHAR, region VARCHAR, size VARCHAR, signup_date DATE,
    line_hash UHUGEINT, ingest_id INTEGER, file_id INTEGER, source_row BIGINT
);
CREATE TABLE IF NOT EXISTS products (
    product_id VARCHAR, description VARCHAR, category VARCHAR, unit_cost DOUBLE, margin DOUBLE,
    line_hash UHUGEINT, ingest_id INTEGER, file_id INTEGER, source_row BIGINT
);
CREATE TABLE IF NOT EXISTS quarantine (
    ingest_id INTEGER, file_id INTEGER, kind VARCHAR, source VARCHAR, "row" BIGINT, "column" VARCHAR,
    value VARCHAR, rule VARCHAR, record VARCHAR
);
"""

DEFAULT_DB = "loyalist.duckdb"


@dataclass
class Store:
    """An open store: the raw DuckDB connection (for ingest and DDL only) and an Ibis backend on it."""

    path: Path
    con: duckdb.DuckDBPyConnection
    ibis: ibis.BaseBackend

    def table(self, name: str) -> ibis.Table:
        return self.ibis.table(name)

    def close(self) -> None:
        self.con.close()


def open_store(path: str | Path = DEFAULT_DB, *, read_only: bool = False, create: bool = True) -> Store:
    """Open (and when writable, create or upgrade) the store at `path`."""
    path = Path(path)
    if read_only or not create:
        if not path.exists():
            raise LoyalistError(f"{path}: no store here yet; run `loyalist ingest FILE --db {path}` first")
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        raise LoyalistError(f"{path}: cannot open the store ({str(exc).splitlines()[0]})") from None
    except duckdb.Error as exc:
        raise LoyalistError(f"{path}: not a loyalist store ({str(exc).splitlines()[0]})") from None
    con.execute("SET TimeZone = 'UTC'")
    if not read_only:
        con.execute(DDL)
        con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
    return Store(path=path, con=con, ibis=ibis.duckdb.from_connection(con))
