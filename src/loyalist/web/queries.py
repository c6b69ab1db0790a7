"""Every read the dashboard, the REST API, the report and the CRM export make: one place, Ibis expressions.

The store is opened read-only. Each worker thread gets its own DuckDB cursor and Ibis backend (a DuckDB
connection must not be shared between threads), so concurrent requests never block each other on Python
objects. User input never reaches SQL text: values become Ibis literals (quoted by the compiler), column
names are checked against the table's schema and the list's whitelist first.

While the server holds the store open read-only, no other process can write it (DuckDB's file lock), so
what the store holds is fixed for the server's lifetime: which tables exist, their columns and the
overview aggregates are read once and kept.

The lists (`LISTS`) are declared here, each with the table and columns it needs from the capability that
computes them (the table contract in docs); a list whose table or column is absent reports what to run.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import duckdb
import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd

from loyalist.errors import LoyalistError

CUSTOMERS = "customer_insights"
RUN_ANALYZE = "not computed yet: run `loyalist analyze`"
MAX_PER_PAGE = 500
EXPORT_LIMIT = 1_048_575  # an XLSX sheet holds 1,048,576 rows including the header
TIES = ("customer_id", "rank", "product_id", "event_id", "contact_date")
"""Sort ties are broken by these columns (those the list's table has), ascending."""
PER_CUSTOMER = [("reorders", "next_reorder_date", False), ("next_products", "rank", False),
                ("crosssell_gaps", "rank", False), ("contact_schedule", "contact_date", False),
                ("events", "event_date", True), ("payment_behaviour", None, False)]
"""The customer page's tables: (table, order column, descending)."""
PER_CUSTOMER_LIMIT = 200
ORDERS_LIMIT = 5000


# --------------------------------------------------------------------------------------------- the lists
@dataclass(frozen=True)
class ListSpec:
    """A list page: which rows of which table, which columns, how it may be filtered and sorted."""

    name: str
    title: str
    description: str
    table: str
    needs: tuple[str, ...]
    """Columns that must exist (else the page says which analysis to run)."""
    columns: tuple[str, ...]
    """Columns shown, in order (those absent from the store are left out)."""
    sort: str
    descending: bool = True
    where: Callable[[ir.Table, set[str]], Any] | None = None
    search: tuple[str, ...] = ("customer_id",)
    choices: tuple[str, ...] = ()
    """Categorical columns offered as select filters."""
    ranges: tuple[str, ...] = ()
    """Numeric or date columns offered as from/to filters."""
    from_customers: tuple[str, ...] = ()
    """For lists of another table: customer_insights columns joined in for context."""
    capability: str = ""
    inputs: tuple[tuple[str, str], ...] = ()
    """(store table, how to load it) the capability needs rows in: without them `loyalist analyze` skips it."""


def _at_risk(t: ir.Table, cols: set[str]):
    cond = (t.frequency > 0) & (t.p_alive < 0.5)
    return cond


def _growing(t: ir.Table, cols: set[str]):
    cond = t.trend == "growing"
    if "volume_pricing_candidate" in cols:
        cond = cond | t.volume_pricing_candidate.cast("boolean").fill_null(False)
    return cond


def _payment(t: ir.Table, cols: set[str]):
    if t.payment_risk.type().is_numeric():
        return t.payment_risk.notnull() & (t.payment_risk > 0)
    return t.payment_risk.notnull() & ~t.payment_risk.lower().isin(["", "none", "low", "ok"])


LISTS: dict[str, ListSpec] = {s.name: s for s in [
    ListSpec("customers", "All customers", "Every scored customer, with what each capability found.",
             CUSTOMERS, ("customer_id",),
             ("customer_id", "segment", "value_grade", "lifecycle_stage", "trend", "orders", "revenue", "last_order",
              "p_alive", "expected_orders_90d", "clv_12m", "next_order_date"),
             "clv_12m", choices=("segment", "value_grade", "lifecycle_stage", "trend", "rfm_segment"),
             ranges=("p_alive", "clv_12m", "orders", "last_order"), capability="the customer-base analysis"),
    ListSpec("at-risk", "At risk", "Repeat customers who have probably stopped buying (P(alive) below 0.5), "
             "most valuable first: the ones worth a call.",
             CUSTOMERS, ("p_alive", "frequency"),
             ("customer_id", "reason", "p_alive", "orders", "revenue", "first_order", "last_order", "segment",
              "trend", "lifecycle_stage", "clv_12m"),
             "revenue", where=_at_risk, choices=("segment", "trend", "lifecycle_stage"),
             ranges=("p_alive", "revenue", "last_order"), capability="the customer-base analysis"),
    ListSpec("overdue", "Overdue", "Customers whose next order is later than their own rhythm predicts.",
             CUSTOMERS, ("overdue_days", "overdue_score"),
             ("customer_id", "overdue_reason", "overdue_days", "overdue_score", "cycle_days", "cycle_class",
              "next_order_date", "last_order", "p_alive", "revenue", "segment"),
             "overdue_score", where=lambda t, c: t.overdue_days > 0, choices=("cycle_class", "segment"),
             ranges=("overdue_days", "overdue_score", "revenue"), capability="timing (next order and re-orders)"),
    ListSpec("growing", "Growing / volume pricing", "Customers buying more over time, and those whose volume "
             "would justify a price break.",
             CUSTOMERS, ("trend",),
             ("customer_id", "trend", "growth_rate", "trend_confidence", "volume_pricing_candidate",
              "mix_shift_reason", "revenue", "orders", "clv_12m", "segment"),
             "growth_rate", where=_growing, choices=("trend", "volume_pricing_candidate", "segment"),
             ranges=("growth_rate", "revenue"), capability="direction and payment"),
    ListSpec("cross-sell", "Cross-sell gaps", "Products a customer's peers buy and the customer does not, "
             "with the evidence.",
             "crosssell_gaps", ("customer_id", "product_id", "score"),
             ("customer_id", "rank", "product_id", "description", "score", "evidence", "revenue", "segment"),
             "score", search=("customer_id", "product_id", "description"), ranges=("score", "rank"),
             from_customers=("revenue", "segment"), capability="cross-sell"),
    ListSpec("payment-risk", "Payment risk", "Customers who pay later than they used to, or dispute invoices.",
             CUSTOMERS, ("payment_risk",),
             ("customer_id", "payment_risk", "payment_risk_reason", "dbt_days_6m", "revenue", "orders", "segment"),
             "payment_risk", where=_payment, choices=("segment",), ranges=("dbt_days_6m", "revenue"),
             capability="direction and payment", inputs=(("invoices", "`loyalist ingest FILE --kind invoices`"),)),
    ListSpec("contact-due", "Contact due", "Who to contact when, and why.",
             "contact_schedule", ("customer_id", "contact_date"),
             ("contact_date", "customer_id", "reason", "revenue", "p_alive", "segment"),
             "contact_date", descending=False, search=("customer_id", "reason"), ranges=("contact_date",),
             from_customers=("revenue", "p_alive", "segment"), capability="timing (contact schedule)"),
    ListSpec("alerts", "Alerts", "Events detected in the customers' behaviour, newest first.",
             "events", ("event_id", "customer_id", "event_date"),
             ("event_date", "customer_id", "type", "reason", "action", "detected_at"),
             "event_date", search=("customer_id", "reason"), choices=("type",), ranges=("event_date",),
             capability="direction and events"),
]}


# --------------------------------------------------------------------------------------------- the reader
@dataclass
class Page:
    """One page of a list: the rows, how many match in all, and the query that produced them."""

    spec: ListSpec
    rows: pd.DataFrame
    total: int
    page: int
    per_page: int
    sort: str
    descending: bool
    columns: list[str]
    missing: str | None = None
    """Why the list is empty: what to run (None when the list is computed)."""

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


@dataclass
class Query:
    """What the user asked of a list (validated by `Reader.clean`)."""

    q: str | None = None
    filters: dict[str, str] = field(default_factory=dict)
    """column -> value for choice filters; 'min:col' / 'max:col' -> value for range filters."""
    sort: str | None = None
    descending: bool | None = None
    page: int = 1
    per_page: int = 50


class _Params:
    """Placeholders for values in an Ibis expression: compiled once per query shape, bound at each run.

    Ibis inlines literals when it compiles; a placeholder is a unique string literal (cast to the value's
    type) that `Reader.prepared` turns into a DuckDB named parameter ($name) in the compiled SQL, so the
    expensive compile happens once per shape and every value is bound, never spliced into SQL text.
    """

    LIMIT, OFFSET = 987_654_321, 123_456_789

    def __init__(self) -> None:
        self.names: list[str] = []

    def _lit(self, name: str):
        self.names.append(name)
        return ibis.literal(f"__lp_{name}__")

    def str(self, name: str):
        return self._lit(name)

    def num(self, name: str):
        return self._lit(name).cast("float64")

    def ts(self, name: str):
        return self._lit(name).cast("timestamp")

    def bool(self, name: str):
        return self._lit(name).cast("boolean")


class Reader:
    """Read-only access to one store for all of a server's threads."""

    def __init__(self, path: str | Path, preload: bool = False) -> None:
        """With `preload`, the lists and the per-customer tables are read into memory now
        (`loyalist.web.memory`): pages then cost milliseconds instead of a DuckDB query each."""
        path = Path(path)
        if not path.exists():
            raise LoyalistError(f"{path}: no store here yet; run `loyalist ingest FILE --db {path}` first")
        try:
            self._con = duckdb.connect(str(path), read_only=True)
        except duckdb.Error as exc:
            raise LoyalistError(f"{path}: cannot open the store read-only ({str(exc).splitlines()[0]}); "
                                "is another loyalist command writing it?") from None
        self._con.execute("SET TimeZone = 'UTC'")
        self.path = path
        self._local = threading.local()
        self._cache: dict[Any, Any] = {}
        self._totals: dict[tuple, int] = {}
        self._lock = threading.Lock()
        rows = self._con.execute("SELECT table_name, column_name FROM duckdb_columns() "
                                 "WHERE schema_name = 'main' ORDER BY table_name, column_index").fetchall()
        self.schema: dict[str, list[str]] = {}
        for table, column in rows:
            self.schema.setdefault(table, []).append(column)
        self.memory = None
        if preload:
            from loyalist.web.memory import Memory

            self._con.execute("SET memory_limit = '1GB'")  # DuckDB's cache of blocks is not needed after this
            self.memory = Memory(self)
            # a fresh connection: the old one's buffer pool still holds the blocks the preload read
            self._con.close()
            self._con = duckdb.connect(str(path), read_only=True)
            self._con.execute("SET TimeZone = 'UTC'")
            self._local = threading.local()

    def close(self) -> None:
        self._con.close()

    # -- plumbing
    def _backend(self):
        be = getattr(self._local, "backend", None)
        if be is None:
            cur = self._local.cursor = self._con.cursor()
            cur.execute("SET TimeZone = 'UTC'")
            be = self._local.backend = ibis.duckdb.from_connection(cur)
            self._local.tables = {}
        return be

    def table(self, name: str) -> ir.Table:
        be = self._backend()
        t = self._local.tables.get(name)
        if t is None:
            t = self._local.tables[name] = be.table(name)
        return t

    def has(self, table: str, *columns: str) -> bool:
        cols = self.schema.get(table)
        return cols is not None and all(c in cols for c in columns)

    def run(self, expr) -> pd.DataFrame:
        return self._backend().execute(expr)

    def prepared(self, key: tuple, build: Callable[[_Params], Any], values: dict[str, Any],
                 limit: int | None = None, offset: int = 0, sliced: bool = False) -> pd.DataFrame:
        """Run the expression `build(params)` with `values` bound; its SQL is compiled once per `key`.

        `limit`/`offset` are bound too: added at the end, or, with `sliced`, where `build` put
        `.limit(_Params.LIMIT, offset=_Params.OFFSET)` itself."""
        entry = self._cache.get(("sql",) + key)
        if entry is None:
            params = _Params()
            expr = build(params)
            if limit is not None and not sliced:
                expr = expr.limit(_Params.LIMIT, offset=_Params.OFFSET)
            sql = str(self._backend().compile(expr))
            for name in dict.fromkeys(params.names):
                sentinel = f"'__lp_{name}__'"
                if sentinel not in sql:
                    raise RuntimeError(f"placeholder {name} lost in compilation")
                sql = sql.replace(sentinel, f"${name}")
            if limit is not None:
                sql = sql.replace(f"LIMIT {_Params.LIMIT}", "LIMIT $_limit").replace(f"OFFSET {_Params.OFFSET}",
                                                                                      "OFFSET $_offset")
            entry = (sql, tuple(dict.fromkeys(params.names)))
            with self._lock:
                self._cache[("sql",) + key] = entry
        sql, names = entry
        bound = {n: values[n] for n in names}
        if limit is not None:
            bound.update(_limit=int(limit), _offset=int(offset))
        self._backend()
        return self._local.cursor.execute(sql, bound).df()

    def scalar(self, expr) -> Any:
        return self._backend().execute(expr)

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            value = make()
            with self._lock:
                self._cache[key] = value
        return self._cache[key]

    # -- facts about the store
    def as_of(self) -> dt.date | None:
        def make():
            if not self.has(CUSTOMERS, "as_of"):
                return None
            t = self.table(CUSTOMERS)
            v = self.scalar(t.as_of.max())
            return None if v is None or pd.isna(v) else pd.Timestamp(v).date()
        return self.cached("as_of", make)

    def currency(self) -> str:
        def make():
            t = self.table("transactions")
            top = self.run(t.filter(t.currency.notnull()).group_by("currency").aggregate(n=ibis._.count())
                           .order_by(ibis.desc("n")).limit(1))
            return str(top["currency"].iloc[0]) if len(top) else ""
        return self.cached("currency", make)

    def latest_run(self) -> dict | None:
        def make():
            if not self.has("analysis_runs", "run_at"):
                return None
            t = self.table("analysis_runs")
            r = self.run(t.order_by(ibis.desc("run_at")).limit(1))
            if r.empty:
                return None
            import json
            out = r.iloc[0].to_dict()
            try:
                out["report"] = json.loads(out.get("report") or "{}")
            except ValueError:
                out["report"] = {}
            return out
        return self.cached("latest_run", make)

    # -- the lists
    def list_columns(self, spec: ListSpec) -> list[str]:
        have = set(self.schema.get(spec.table, [])) | (set(spec.from_customers) & set(self.schema.get(CUSTOMERS, [])))
        return [c for c in spec.columns if c in have or c == "reason" and spec.name == "at-risk"]

    def missing(self, spec: ListSpec) -> str | None:
        absent = [c for c in spec.needs if c not in self.schema.get(spec.table, [])]
        if not absent:
            return None
        for table, load in spec.inputs:  # without these rows analyze skips it, however often it runs
            if not self.cached(f"rows:{table}", lambda t=table: t in self.schema and
                               self._con.cursor().execute(f"SELECT count(*) > 0 FROM {t}").fetchone()[0]):
                return f"not computed: the store holds no {table}; load them with {load}, then run `loyalist analyze`"
        if spec.table not in self.schema:
            return f"{RUN_ANALYZE} ({spec.capability} writes the table `{spec.table}`)"
        return f"{RUN_ANALYZE} ({spec.capability} adds {', '.join(f'`{c}`' for c in absent)})"

    def _base(self, spec: ListSpec) -> ir.Table:
        """The list's rows from its own table (context columns from customer_insights are joined to a page's
        rows only, after sorting and slicing: joining first would cost a join of the whole table per page)."""
        t = self.table(spec.table)
        cols = set(self.schema[spec.table])
        if spec.where is not None:
            t = t.filter(spec.where(t, cols))
        return t

    def _context(self, spec: ListSpec) -> list[str]:
        own = set(self.schema.get(spec.table, []))
        return [c for c in spec.from_customers if self.has(CUSTOMERS, c) and c not in own]

    def choices(self, spec: ListSpec, column: str, limit: int = 60) -> list[str]:
        def make():
            if self.missing(spec) or column not in self.list_table_columns(spec):
                return []
            t = self._base(spec)
            vals = self.run(t.select(v=t[column].cast("string")).filter(ibis._.v.notnull()).distinct()
                            .order_by("v").limit(limit))
            return [str(v) for v in vals["v"]]
        return self.cached(f"choices:{spec.name}:{column}", make)

    def list_table_columns(self, spec: ListSpec) -> list[str]:
        """Columns a list may be filtered and sorted by: its own table's (not the joined context columns)."""
        return list(self.schema.get(spec.table, []))

    def column_kind(self, spec: ListSpec, column: str) -> str:
        """'number', 'date', 'bool' or 'text' for a column of the list."""
        def make():
            t = self._base(spec) if not self.missing(spec) else None
            if t is None or column not in t.columns:
                return "text"
            ty = t[column].type()
            if ty.is_boolean():
                return "bool"
            if ty.is_numeric():
                return "number"
            if ty.is_temporal():
                return "date"
            return "text"
        return self.cached(f"kind:{spec.name}:{column}", make)

    def clean(self, spec: ListSpec, query: Query) -> Query:
        """The query restricted to what the list allows (unknown columns and bad values dropped)."""
        have = set(self.list_table_columns(spec))
        shown = set(self.list_columns(spec)) & have
        filters: dict[str, str] = {}
        for key, value in query.filters.items():
            if value is None or str(value).strip() == "":
                continue
            value = str(value).strip()[:200]
            if key in spec.choices and key in have:
                if self.column_kind(spec, key) == "bool" and \
                        value.lower() not in ("true", "t", "1", "yes", "y", "false", "f", "0", "no", "n"):
                    continue  # what DuckDB cannot cast to a boolean is ignored, like a malformed number
                filters[key] = value
            elif key.startswith(("min:", "max:")) and key[4:] in spec.ranges and key[4:] in have:
                kind = self.column_kind(spec, key[4:])
                try:
                    if kind == "date":  # the store holds 1900-2200 (ingest's rule); pandas cannot hold year 1 or 9999
                        day = dt.date.fromisoformat(value)
                        value = min(max(day, dt.date(1900, 1, 1)), dt.date(2200, 1, 1)).isoformat()
                    elif not math.isfinite(float(value)):
                        continue
                except ValueError:
                    continue
                filters[key] = value
        sort = query.sort if query.sort in shown else spec.sort if spec.sort in have else None
        desc = spec.descending if query.descending is None else query.descending
        return Query(q=(query.q or "").strip()[:200] or None, filters=filters, sort=sort, descending=desc,
                     page=max(1, int(query.page)), per_page=min(max(1, int(query.per_page)), MAX_PER_PAGE))

    def _filtered(self, spec: ListSpec, query: Query, p: _Params) -> ir.Table:
        t = self._base(spec)
        if query.q:
            conds = [t[c].cast("string").lower().contains(p.str("q")) for c in spec.search if c in t.columns]
            if conds:
                cond = conds[0]
                for c in conds[1:]:
                    cond = cond | c
                t = t.filter(cond)
        for key in sorted(query.filters):
            name = _pname(key)
            if key.startswith(("min:", "max:")):
                col = key[4:]
                lit = p.ts(name) if self.column_kind(spec, col) == "date" else p.num(name)
                t = t.filter(t[col] >= lit if key.startswith("min:") else t[col] <= lit)
            elif self.column_kind(spec, key) == "bool":
                t = t.filter(t[key] == p.bool(name))
            else:
                t = t.filter(t[key].cast("string") == p.str(name))
        return t

    def _values(self, query: Query) -> dict[str, Any]:
        values: dict[str, Any] = {"q": (query.q or "").lower()}
        for key, value in query.filters.items():
            values[_pname(key)] = value
        return values

    def _shape(self, spec: ListSpec, query: Query) -> tuple:
        return (spec.name, bool(query.q), tuple(sorted(query.filters)), query.sort, query.descending)

    def _ordered(self, t: ir.Table, query: Query, spec: ListSpec) -> ir.Table:
        keys = []
        if query.sort:
            keys.append(ibis.desc(query.sort) if query.descending else ibis.asc(query.sort))
        tie = [c for c in TIES if c in t.columns and c != query.sort]
        return t.order_by(keys + tie)

    def _select(self, spec: ListSpec, query: Query, p: _Params) -> ir.Table:
        """Filtered, sorted, sliced (placeholders for LIMIT/OFFSET), then the context columns joined."""
        t = self._filtered(spec, query, p)
        data_cols = [c for c in self.list_columns(spec) if c in t.columns]
        t = self._ordered(t, query, spec).select(*dict.fromkeys(data_cols + self._reason_inputs(spec, t)))
        t = t.limit(_Params.LIMIT, offset=_Params.OFFSET)
        join = self._context(spec)
        if join:
            c = self.table(CUSTOMERS).select("customer_id", *join)
            t = t.left_join(c, t.customer_id == c.customer_id).drop("customer_id_right")
            t = self._ordered(t, query, spec)
        return t

    def page(self, spec: ListSpec, query: Query) -> Page:
        why = self.missing(spec)
        if why:
            return Page(spec, pd.DataFrame(), 0, 1, min(max(1, int(query.per_page)), MAX_PER_PAGE), query.sort or "",
                        bool(query.descending), [], why)
        query = self.clean(spec, query)
        if self.memory is not None:
            got = self.memory.page(spec, query, query.page, query.per_page)
            if got is not None:
                total, page, rows = got
                return Page(spec, self._decorate(spec, rows), total, page, query.per_page, query.sort or "",
                            bool(query.descending), self.list_columns(spec))
        values = self._values(query)
        shape = self._shape(spec, query)
        key = ("total",) + shape + tuple(sorted(values.items()))
        total = self._totals.get(key)
        if total is None:  # the store cannot change while it is open read-only: a count stays true
            total = int(self.prepared(("count",) + shape,
                                      lambda p: self._filtered(spec, query, p).aggregate(n=ibis._.count()),
                                      values).iloc[0, 0])
            with self._lock:
                if len(self._totals) > 10_000:
                    self._totals.clear()
                self._totals[key] = total
        pages = max(1, math.ceil(total / query.per_page))
        page = min(query.page, pages)
        rows = self.prepared(("rows",) + shape, lambda p: self._select(spec, query, p), values,
                             limit=query.per_page, offset=(page - 1) * query.per_page, sliced=True)
        rows = self._decorate(spec, rows)
        return Page(spec, rows, total, page, query.per_page, query.sort or "", bool(query.descending),
                    self.list_columns(spec))

    def export(self, spec: ListSpec, query: Query) -> pd.DataFrame:
        """Every row of the list (as filtered and sorted), for CSV/XLSX download or a CRM."""
        why = self.missing(spec)
        if why:
            raise LoyalistError(why)
        query = self.clean(spec, query)
        got = self.memory.page(spec, query) if self.memory is not None else None
        if got is not None:
            rows = got[2]
        else:
            rows = self.prepared(("rows",) + self._shape(spec, query), lambda p: self._select(spec, query, p),
                                 self._values(query), limit=EXPORT_LIMIT, sliced=True)
        rows = self._decorate(spec, rows)
        return rows[[c for c in self.list_columns(spec) if c in rows.columns]]

    def _reason_inputs(self, spec: ListSpec, t: ir.Table) -> list[str]:
        if spec.name == "at-risk":
            return [c for c in ("p_alive", "orders", "first_order", "last_order", "revenue")
                    if c in t.columns]
        return []

    def _decorate(self, spec: ListSpec, rows: pd.DataFrame) -> pd.DataFrame:
        if spec.name == "at-risk":
            rows = rows.assign(reason=at_risk_reason(rows, self.as_of(), self.currency()))
        return rows

    # -- one customer
    def customer(self, customer_id: str) -> dict[str, Any] | None:
        """Everything the store knows about one customer: insights row and each capability's rows."""
        if CUSTOMERS not in self.schema:
            return None
        if self.memory is not None and self.memory.insights is not None:
            return self.memory.customer(str(customer_id))
        values = {"cid": str(customer_id)}

        def one(table: str, order: str | None = None, descending: bool = False):
            def build(p: _Params):
                x = self.table(table)
                x = x.filter(x.customer_id.cast("string") == p.str("cid"))
                if order and order in x.columns:
                    x = x.order_by(ibis.desc(order) if descending else order)
                return x
            return build

        row = self.prepared(("customer", CUSTOMERS), one(CUSTOMERS), values)
        if row.empty:
            return None
        out: dict[str, Any] = {"insights": row.iloc[0].to_dict()}
        for table, order, desc in PER_CUSTOMER:
            if not self.has(table, "customer_id"):
                out[table] = None
                continue
            out[table] = self.prepared(("customer", table), one(table, order, desc), values, limit=PER_CUSTOMER_LIMIT)
        out["orders"] = self.orders(customer_id)
        return out

    def orders(self, customer_id: str) -> pd.DataFrame:
        """The customer's orders: date, order id, lines, amount, returned amount."""
        def build(p: _Params):
            t = self.table("transactions")
            return orders_expr(t.filter(t.customer_id == p.str("cid")))
        return self.prepared(("orders",), build, {"cid": str(customer_id)}, limit=ORDERS_LIMIT)

    # -- overview figures
    def overview(self) -> dict[str, Any] | None:
        def make():
            if CUSTOMERS not in self.schema:
                return None
            t = self.table(CUSTOMERS)
            aggs = dict(customers=t.count(), revenue=t.revenue.sum(), repeaters=(t.frequency > 0).sum(),
                        active=(t.p_alive >= 0.5).sum(), clv=t.clv_12m.sum(),
                        expected_orders=t.expected_orders_90d.sum() if "expected_orders_90d" in t.columns else ibis.null())
            r = self.run(t.aggregate(**aggs)).iloc[0].to_dict()
            return r
        return self.cached("overview", make)

    def value_distribution(self) -> pd.DataFrame:
        """Customers and CLV per CLV bracket (brackets at 1, 2, 5 x powers of ten)."""
        def make():
            t = self.table(CUSTOMERS)
            v = t.clv_12m.fill_null(0)
            edges = [0] + [m * 10 ** e for e in range(0, 8) for m in (1, 2, 5)]
            cases = [(v < edges[i + 1], i) for i in range(len(edges) - 1)]
            b = t.mutate(bucket=ibis.cases(*cases, else_=len(edges) - 1))
            g = self.run(b.group_by("bucket").aggregate(customers=b.count(), clv=b.clv_12m.sum()).order_by("bucket"))
            g["low"] = [edges[int(i)] for i in g["bucket"]]
            g["high"] = [edges[int(i) + 1] if int(i) + 1 < len(edges) else np.inf for i in g["bucket"]]
            return g
        return self.cached("value_distribution", make)

    def counts(self, column: str, table: str = CUSTOMERS) -> pd.DataFrame:
        def make():
            t = self.table(table)
            agg = {"customers": t.count()}
            if "revenue" in t.columns:
                agg["revenue"] = t.revenue.sum()
            if "clv_12m" in t.columns:
                agg["clv"] = t.clv_12m.sum()
            return self.run(t.group_by(column).aggregate(**agg).order_by(ibis.desc("customers")))
        return self.cached(f"counts:{table}:{column}", make)

    def backtest(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The latest customer-base backtest: metrics per model and the tracking curve."""
        def make():
            if not self.has("backtest_metrics", "run_at"):
                return pd.DataFrame(), pd.DataFrame()
            m = self.table("backtest_metrics")
            latest = self.run(m.filter(m.run_at == m.run_at.max()))
            tracking = pd.DataFrame()
            if self.has("backtest_tracking", "cutoff") and len(latest):
                tr = self.table("backtest_tracking")
                cut = pd.Timestamp(latest["cutoff"].iloc[0])
                hz = int(latest["horizon_days"].iloc[0])
                tracking = self.run(tr.filter((tr.cutoff == ibis.literal(cut)) & (tr.horizon_days == hz))
                                    .order_by("date"))
                # several backtests at the same cutoff append identical curves: keep one
                tracking = tracking.drop_duplicates("date", keep="last")
            return latest, tracking
        return self.cached("backtest", make)

    def whole(self, table: str, order: list[str] | None = None, limit: int = 10_000) -> pd.DataFrame | None:
        """A small result table in full (segments, forecasts, cohorts ...), or None when absent."""
        def make():
            if table not in self.schema:
                return None
            t = self.table(table)
            if order:
                t = t.order_by([c for c in order if c in t.columns])
            return self.run(t.limit(limit))
        return self.cached(f"whole:{table}:{order}:{limit}", make)

    def forecasts(self, level: str | None = None, series_id: str | None = None) -> pd.DataFrame | None:
        if "forecasts" not in self.schema:
            return None

        def build(p: _Params):
            t = self.table("forecasts")
            if level:
                t = t.filter(t.level.cast("string") == p.str("level"))
            if series_id:
                t = t.filter(t.series_id.cast("string") == p.str("series"))
            return t.order_by([c for c in ("level", "series_id", "week") if c in t.columns])
        return self.prepared(("forecasts", bool(level), bool(series_id)), build,
                             {"level": level, "series": series_id}, limit=20_000)

    def events(self, since: dt.date | None = None, type_: str | None = None, customer_id: str | None = None,
               page: int = 1, per_page: int = 50) -> tuple[int, pd.DataFrame] | None:
        if not self.has("events", "event_date"):
            return None

        def build(p: _Params):
            t = self.table("events")
            if since:
                t = t.filter(t.event_date >= p.ts("since"))
            if type_:
                t = t.filter(t.type.cast("string") == p.str("type"))
            if customer_id:
                t = t.filter(t.customer_id.cast("string") == p.str("cid"))
            return t

        shape = (bool(since), bool(type_), bool(customer_id))
        values = {"since": str(since) if since else None, "type": type_, "cid": customer_id}
        total = int(self.prepared(("events-count",) + shape, lambda p: build(p).aggregate(n=ibis._.count()),
                                  values).iloc[0, 0])
        rows = self.prepared(("events",) + shape,
                             lambda p: build(p).order_by([ibis.desc("event_date"), "event_id"]), values,
                             limit=per_page, offset=(page - 1) * per_page)
        return total, rows

    def quality(self) -> dict[str, Any]:
        def make():
            out: dict[str, Any] = {}
            q = self.table("quarantine")
            out["by_rule"] = self.run(q.group_by("rule").aggregate(rows=q.count(), files=q.source.nunique(),
                                                                    example=q.value.cast("string").max())
                                      .order_by(ibis.desc("rows")))
            out["examples"] = self.run(q.order_by(["ingest_id", "file_id", "row"]).select(
                "source", "row", "column", "value", "rule").limit(200))
            t = self.table("transactions")
            out["flags"] = self.run(t.aggregate(
                lines=t.count(), guest=t.is_guest.sum(), cancellation=t.is_cancellation.sum(),
                returns=t.is_return.sum(), non_product=t.is_non_product.sum(),
                price_issue=t.price_issue.notnull().sum(), future=t.is_future.sum())).iloc[0].to_dict()
            out["ingests"] = self.run(self.table("ingests").order_by(["ingest_id", "file_id"]))
            return out
        return self.cached("quality", make)


def orders_expr(t: ir.Table, by_customer: bool = False) -> ir.Table:
    """Orders from transaction lines: date, lines bought, amount, amount returned (per customer with
    `by_customer`, ordered by customer, date and order id)."""
    t = t.filter(~t.is_guest & ~t.is_non_product)
    back = t.is_cancellation | t.is_return
    keys = ["customer_id", "order_id"] if by_customer else ["order_id"]
    g = t.group_by(keys).aggregate(
        order_date=t.order_date.min(),
        lines=(~back).sum().cast("int32"),  # DuckDB sums to HUGEINT, which pandas reads as float
        amount=ibis.cases((~back, t.amount), else_=0.0).sum(),
        returned=ibis.cases((back, -t.amount.abs()), else_=0.0).sum(),
    )
    return g.order_by(keys[:-1] + ["order_date", "order_id"])


def _pname(key: str) -> str:
    return "f_" + key.replace(":", "_")


def at_risk_reason(rows: pd.DataFrame, as_of: dt.date | None, currency: str = "") -> pd.Series:
    """'P(alive) 0.31: 5 orders since Mar 2010, last on 2 Mar 2011 (284 days ago); £1,234 in all' per row
    (a part whose number is missing is left out). A loop over the rows: a page has 25-500 of them, and pandas'
    per-column string operations cost more than the loop at that size."""
    if rows.empty:
        return pd.Series([], dtype=object)
    sym = {"GBP": "£", "EUR": "€", "USD": "$"}.get(currency, "")
    ref = pd.Timestamp(as_of) if as_of is not None else None
    n = len(rows)
    firsts = pd.to_datetime(rows["first_order"]) if "first_order" in rows else [pd.NaT] * n
    revenues = rows["revenue"] if "revenue" in rows else [None] * n
    out = []
    for p, orders, first, last, revenue in zip(rows["p_alive"], rows["orders"], firsts,
                                               pd.to_datetime(rows["last_order"]), revenues):
        text = f"P(alive) {p:.2f}: " + (f"{int(orders):,} orders" if pd.notna(orders) else "orders unknown")
        if pd.notna(first):
            text += f" since {first:%b %Y}"
        if pd.notna(last):
            text += f", last on {last.day} {last:%b %Y}"
            if ref is not None:
                text += f" ({(ref - last.normalize()).days:,} days ago)"
        if revenue is not None and pd.notna(revenue):
            text += f"; {sym}{revenue:,.0f} in all"
        out.append(text)
    return pd.Series(out, index=rows.index, dtype=object)
