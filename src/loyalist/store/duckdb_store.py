"""The embedded DuckDB store: its schema and how to open it.

This is the one module that knows the store's physical schema (DDL). Everything that reads the store
does so through Ibis expressions on `Store.ibis`, so the same queries run on other Ibis backends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

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
    line_hash UBIGINT, ingest_id INTEGER, file_id INTEGER, source_row BIGINT
);
CREATE TABLE IF NOT EXISTS invoices (
    invoice_id VARCHAR, customer_id VARCHAR, invoice_date DATE, due_date DATE, amount DOUBLE,
    paid_date DATE, disputed BOOLEAN,
    line_hash UBIGINT, ingest_id INTEGER, file_id INTEGER, source_row BIGINT
);
CREATE TABLE IF NOT EXISTS customers (
    customer_id VARCHAR, industry VARCHAR, region VARCHAR, size VARCHAR, signup_date DATE,
    line_hash UBIGINT, ingest_id INTEGER, file_id INTEGER, source_row BIGINT
);
CREATE TABLE IF NOT EXISTS products (
    product_id VARCHAR, description VARCHAR, category VARCHAR, unit_cost DOUBLE, margin DOUBLE,
    line_hash UBIGINT, ingest_id INTEGER, file_id INTEGER, source_row BIGINT
);
CREATE TABLE IF NOT EXISTS quarantine (
    ingest_id INTEGER, file_id INTEGER, kind VARCHAR, source VARCHAR, "row" BIGINT, "column" VARCHAR,
    value VARCHAR, rule VARCHAR, record VARCHAR
);
"""

DEFAULT_DB = "loyalist.duckdb"

CONTENT_COLUMNS = {
    "transactions": ("customer_id", "order_id", "order_date", "product_id", "description", "quantity",
                     "unit_price", "amount", "currency", "country", "channel"),
    "invoices": ("invoice_id", "customer_id", "invoice_date", "due_date", "amount", "paid_date", "disputed"),
    "customers": ("customer_id", "industry", "region", "size", "signup_date"),
    "products": ("product_id", "description", "category", "unit_cost", "margin"),
}
"""The columns whose values identify a stored row's content (see loyalist.ingest.pipeline)."""


def content_hash_sql(columns: list[str]) -> str:
    """64-bit hash of a row's typed values, used to recognise content already stored.

    DuckDB's hash() is fast but may change between DuckDB releases, so the store records the version that
    made its hashes and `open_store` recomputes them after an upgrade. With 64 bits, the chance that two
    different lines collide is about n^2 / 3.7e19: 3e-6 for ten million lines.
    """
    return f"hash({', '.join(columns)})"


def write_frame(store: "Store", table: str, frame, *, replace: bool) -> None:
    """Store a result table (insights, backtest metrics) written by the analysis stages."""
    con = store.con
    con.register("_frame", frame)
    try:
        exists = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]).fetchall()[0][0]
        if replace or not exists:
            con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM _frame")
        else:
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _frame")
    finally:
        con.unregister("_frame")


def has_table(store: "Store", table: str) -> bool:
    return store.con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]).fetchall()[0][0] > 0


def _rehash_if_needed(con: duckdb.DuckDBPyConnection) -> None:
    made_by = con.execute("SELECT value FROM meta WHERE key = 'hash_version'").fetchall()
    if made_by and made_by[0][0] == duckdb.__version__:
        return
    for table, cols in CONTENT_COLUMNS.items():
        con.execute(f"UPDATE {table} SET line_hash = {content_hash_sql(list(cols))}")
    con.execute("INSERT OR REPLACE INTO meta VALUES ('hash_version', ?)", [duckdb.__version__])


@dataclass
class Store:
    """An open store: the raw DuckDB connection (for ingest and DDL only) and an Ibis backend on it.

    The Ibis backend is made on first use: importing Ibis takes about half a second, which an ingest
    (raw DuckDB only) does not need to pay."""

    path: Path
    con: duckdb.DuckDBPyConnection
    _ibis: Any = field(default=None, repr=False)

    @property
    def ibis(self):  # -> ibis.BaseBackend
        if self._ibis is None:
            import ibis

            self._ibis = ibis.duckdb.from_connection(self.con)
        return self._ibis

    def table(self, name: str):  # -> ibis.Table
        return self.ibis.table(name)

    def close(self) -> None:
        self.con.close()


def open_store(path: str | Path = DEFAULT_DB, *, read_only: bool = False, create: bool = True,
               memory_limit: str = "1GB") -> Store:
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
    con.execute("SET enable_progress_bar = true")  # tracked for the CLI bar ...
    con.execute("SET enable_progress_bar_print = false")  # ... but never printed by DuckDB itself
    con.execute(f"SET memory_limit = '{memory_limit}'")
    if not read_only:
        con.execute(DDL)
        con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        _rehash_if_needed(con)
    return Store(path=path, con=con)
