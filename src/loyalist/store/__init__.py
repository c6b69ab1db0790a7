"""The store: where ingested records live (DuckDB by default)."""

from loyalist.store.duckdb_store import DEFAULT_DB, Store, content_hash_sql, open_store

__all__ = ["DEFAULT_DB", "Store", "content_hash_sql", "open_store"]
