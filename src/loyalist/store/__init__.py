"""The store: where ingested records live (DuckDB by default)."""

from loyalist.store.duckdb_store import DEFAULT_DB, Store, content_hash_sql, has_table, open_store, write_frame

__all__ = ["DEFAULT_DB", "Store", "content_hash_sql", "has_table", "open_store", "write_frame"]
