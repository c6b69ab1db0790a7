"""`loyalist export --to postgresql://...`: the per-customer insights and every list, into a CRM's side database.

Tables written into the schema (default `loyalist`), each replaced whole on every export:

- `customer_insights`: the store's per-customer table as is (every column; primary key customer_id).
- `list_<name>` for each dashboard list (at_risk, overdue, growing, cross_sell, payment_risk, contact_due,
  alerts): the list's rows, columns and reasons exactly as the dashboard's CSV download has them. A list
  whose capability has not run yet is not written (and an older copy is dropped, so nothing stale stays).
- `export_runs`: one row per export (exported_at, store, as_of, tables as JSON), appended.

Idempotent: the whole export is one PostgreSQL transaction that drops and re-creates the tables, so
running it twice leaves the same tables, and a reader sees the previous export or the new one, never half.
Rows go in with COPY (psycopg 3). Identifiers are quoted with psycopg.sql, values are never spliced.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd

from loyalist.errors import LoyalistError
from loyalist.web.queries import CUSTOMERS, LISTS, Query, Reader


def _pg_type(s: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(s):
        return "boolean"
    if pd.api.types.is_integer_dtype(s):
        return "bigint"
    if pd.api.types.is_float_dtype(s):
        return "double precision"
    if pd.api.types.is_datetime64_any_dtype(s):
        return "timestamptz" if getattr(s.dtype, "tz", None) is not None else "timestamp"
    non_null = s.dropna()
    if len(non_null) and all(isinstance(v, (dt.date,)) and not isinstance(v, dt.datetime) for v in non_null.head(50)):
        return "date"
    return "text"


def _value(v):
    if v is None:
        return None
    if isinstance(v, float) and np.isnan(v):
        return None
    if v is pd.NaT:
        return None
    if isinstance(v, pd.Timestamp):
        return v.to_pydatetime()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, dict, np.ndarray)):
        return json.dumps(v.tolist() if isinstance(v, np.ndarray) else v, default=str)
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def _write(cur, schema: str, table: str, frame: pd.DataFrame, key: str | None = None) -> int:
    from psycopg import sql

    ident = sql.Identifier(schema, table)
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
    cols = [sql.SQL("{} {}").format(sql.Identifier(str(c)), sql.SQL(_pg_type(frame[c]))) for c in frame.columns]
    if key is not None and key in frame.columns and frame[key].notna().all() and not frame[key].duplicated().any():
        cols.append(sql.SQL("PRIMARY KEY ({})").format(sql.Identifier(key)))
    cur.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, sql.SQL(", ").join(cols)))
    names = sql.SQL(", ").join(sql.Identifier(str(c)) for c in frame.columns)
    with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(ident, names)) as copy:
        for row in frame.itertuples(index=False, name=None):
            copy.write_row([_value(v) for v in row])
    return len(frame)


def export_postgres(db: str | Path, url: str, schema: str = "loyalist") -> dict[str, int | str]:
    """Write customer_insights and the lists into `schema` at `url`; returns rows per table, or for a list not
    computed, why (what to run or load)."""
    import psycopg
    from psycopg import sql

    if not url.startswith(("postgresql://", "postgres://")):
        raise LoyalistError(f"--to {url!r}: give a postgresql://user@host:port/database URL")
    if not schema or len(schema) > 63:
        raise LoyalistError("--schema: give a schema name of 1 to 63 characters")
    reader = Reader(db)
    try:
        if CUSTOMERS not in reader.schema:
            raise LoyalistError(f"{reader.path}: no per-customer table yet; run `loyalist analyze` first")
        frames: dict[str, pd.DataFrame | str] = {CUSTOMERS: reader.run(reader.table(CUSTOMERS).order_by("customer_id"))}
        for spec in LISTS.values():
            if spec.name == "customers":
                continue
            name = "list_" + spec.name.replace("-", "_")
            frames[name] = reader.missing(spec) or reader.export(spec, Query())
        as_of = reader.as_of()
        store = str(reader.path)
    finally:
        reader.close()
    written: dict[str, int | str] = {}
    try:
        with psycopg.connect(url, connect_timeout=15) as conn:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
                for table, frame in frames.items():
                    if isinstance(frame, str):
                        cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, table)))
                        written[table] = frame
                    else:
                        written[table] = _write(cur, schema, table, frame,
                                                key="customer_id" if table == CUSTOMERS else None)
                cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (exported_at timestamptz, store text, "
                                    "as_of date, tables jsonb)").format(sql.Identifier(schema, "export_runs")))
                cur.execute(sql.SQL("INSERT INTO {} VALUES (now(), %s, %s, %s)").format(
                    sql.Identifier(schema, "export_runs")), [store, as_of, json.dumps(written)])
    except psycopg.Error as exc:
        raise LoyalistError(f"PostgreSQL export failed: {' '.join(str(exc).split())}") from None
    return written
