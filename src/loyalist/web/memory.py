"""The list pages and the customer page served from memory: data read once when the server starts.

Why this exists: with 1M customers, DuckDB answers one list page in 15-150 ms of CPU (it scans, filters and
sorts the table again for every page) and one customer page in ~27 ms (eight point queries); 20 concurrent
clients on two cores then wait seconds (bench/results/serve.json before this module: p95 2.7 s). Here the
work that does not depend on the request is done once:

- each list's rows (the same Ibis expression as the SQL path: the list's filter, its columns, the context
  columns joined from customer_insights) are read into an Arrow table;
- a sort order per (column, direction) is computed on first use (numpy `lexsort` over Arrow's dense ranks,
  ties broken by the same columns as the SQL path, `queries.TIES`) and kept, so a
  page is a slice of it;
- filters are vectorised: choice filters compare dictionary codes, range filters compare numpy arrays,
  the text search looks up a suffix array (`TextIndex`) of the distinct lower-cased values of each search
  column, shared by every list that searches a column of that name;
- every per-customer table (customer_insights, reorders, next_products, crosssell_gaps, contact_schedule,
  events, payment_behaviour and the customer's orders, aggregated once from the transactions) is held sorted
  by customer, with an offset array, so one customer's rows are one binary search and a slice.

The semantics are those of the SQL path in `loyalist.web.queries` (tests compare both on many queries):
NULLs sort last in both directions, NaN above every number, strings by bytes, a range filter never keeps
a NULL, the search is a literal case-insensitive substring. Whatever this module cannot answer exactly
(an unusual column type, a list that is not loaded) returns None and the SQL path answers instead.

No library does this part: DuckDB is the engine being avoided per request; Polars is not a dependency and
would still re-sort per page. numpy, pyarrow.compute and a hand-written suffix array (a few lines) do it.
Memory: measured by bench/serve.py per server process (see bench/results/serve.json).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from loyalist.web.queries import (
    CUSTOMERS,
    EXPORT_LIMIT,
    LISTS,
    ORDERS_LIMIT,
    PER_CUSTOMER,
    PER_CUSTOMER_LIMIT,
    TIES,
    ListSpec,
    Query,
    orders_expr,
)

if TYPE_CHECKING:
    from loyalist.web.queries import Reader

SMALL_TEXT = 20_000
"""Sets of distinct values up to this size are searched by scanning them (faster than building an index)."""
MAX_SUFFIXES = 60_000_000
"""A search column whose values hold more bytes than this is scanned instead of indexed (memory bound)."""
FEW = 32
"""A selection of fewer than 1/FEW of a list's rows is handled as row numbers, not a mask."""


# ------------------------------------------------------------------------------------------ text search
def _large_strings(arr) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
    return pc.cast(arr, pa.large_string())


class TextIndex:
    """Literal substring search over a set of distinct strings (already lower-cased).

    `match(q)` returns the ids (positions) of the values containing q. Above SMALL_TEXT values it uses a
    suffix array: every suffix of every value, cut to its first 8 bytes and packed big-endian into a uint64
    (so integer order is byte order), sorted; the suffixes starting with q's first 8 bytes are one
    `searchsorted` range. Queries longer than 8 bytes check those candidates with `match_substring`.
    """

    def __init__(self, values: pa.Array) -> None:
        self.values = _large_strings(values)
        self.keys: np.ndarray | None = None
        self.owner: np.ndarray | None = None
        n = len(self.values)
        if n <= SMALL_TEXT:
            return
        offsets = np.frombuffer(self.values.buffers()[1], dtype=np.int64)[self.values.offset:self.values.offset + n + 1]
        data = np.frombuffer(self.values.buffers()[2], dtype=np.uint8)
        lengths = np.diff(offsets)
        total = int(lengths.sum())
        if total > MAX_SUFFIXES or total == 0:
            return
        keys = np.empty(total, dtype=np.uint64)
        owner = np.empty(total, dtype=np.int32)
        padded = np.concatenate([data[int(offsets[0]):int(offsets[-1])], np.zeros(8, np.uint8)])
        base = offsets - offsets[0]
        done, step = 0, max(1, n // 16)
        for s0 in range(0, n, step):  # in blocks of strings, to bound the temporary arrays
            s1 = min(n, s0 + step)
            lens = lengths[s0:s1]
            m = int(lens.sum())
            who = np.repeat(np.arange(s0, s1, dtype=np.int32), lens)
            starts = np.arange(int(base[s0]), int(base[s1]), dtype=np.int64)
            ends = base[1:][who]
            k = np.zeros(m, dtype=np.uint64)
            for j in range(8):
                pos = starts + j
                b = padded[np.minimum(pos, len(padded) - 1)].astype(np.uint64)
                b[pos >= ends] = 0
                k |= b << np.uint64(8 * (7 - j))
            keys[done:done + m] = k
            owner[done:done + m] = who
            done += m
        order = np.argsort(keys)
        self.keys = keys[order]
        del keys
        self.owner = owner[order]

    def __len__(self) -> int:
        return len(self.values)

    def match(self, q: str) -> np.ndarray:
        if self.keys is None:
            return np.flatnonzero(pc.match_substring(self.values, q).to_numpy(zero_copy_only=False))
        qb = q.encode("utf-8")
        head = qb[:8]
        lo = np.uint64(int.from_bytes(head.ljust(8, b"\0"), "big"))
        hi = np.uint64(int.from_bytes(head.ljust(8, b"\xff"), "big"))
        i0, i1 = np.searchsorted(self.keys, lo, "left"), np.searchsorted(self.keys, hi, "right")
        ids = np.unique(self.owner[i0:i1])
        if len(qb) > 8 and len(ids):
            ok = pc.match_substring(self.values.take(pa.array(ids)), q).to_numpy(zero_copy_only=False)
            ids = ids[ok]
        return ids

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + (self.keys.nbytes + self.owner.nbytes if self.keys is not None else 0)


def _ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)]) without the Python loop."""
    lens = ends - starts
    keep = lens > 0
    starts, lens = starts[keep], lens[keep]
    if not len(lens):
        return np.zeros(0, dtype=np.int64)
    out = np.ones(int(lens.sum()), dtype=np.int64)
    out[0] = starts[0]
    heads = np.cumsum(lens)[:-1]
    out[heads] = starts[1:] - (starts[:-1] + lens[:-1] - 1)
    return np.cumsum(out)


# ------------------------------------------------------------------------------------------ one list
class _Search:
    """One search column of one list: each row's id in the shared TextIndex, and rows grouped by id."""

    def __init__(self, index: TextIndex, codes: np.ndarray) -> None:
        self.index = index
        self.codes = codes  # -1 for NULL
        order = np.argsort(codes, kind="stable")
        self.order = order.astype(np.int32)
        self.offsets = np.searchsorted(codes[order], np.arange(-1, len(index) + 1)).astype(np.int64)
        # offsets[i + 1]..offsets[i + 2] are the rows of value i (offsets[0]..offsets[1] are the NULLs)

    def rows(self, q: str) -> np.ndarray | None:
        """Rows matching q: sorted row numbers, or None when the matches are many (then use `mask`)."""
        ids = self.index.match(q)
        if len(ids) * FEW > len(self.index):
            return None
        return np.sort(self.order[_ranges(self.offsets[ids + 1], self.offsets[ids + 2])])

    def mask(self, q: str) -> np.ndarray:
        ids = self.index.match(q)
        hit = np.zeros(len(self.index) + 1, dtype=bool)
        hit[ids] = True
        return hit[self.codes]  # code -1 reads the last (False) slot

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.order.nbytes + self.offsets.nbytes


class ListData:
    """One list's rows in memory with what its filters and sorts need."""

    def __init__(self, spec: ListSpec, table: pa.Table, out_columns: list[str], kinds: dict[str, str],
                 own: frozenset[str], search_codes: dict[str, tuple[TextIndex, np.ndarray]]) -> None:
        self.spec = spec
        self.own = own
        """The columns of the list's own table (ties and filters use these; context columns are joined)."""
        self.table = table
        self.out = table.select(out_columns)
        self.n = table.num_rows
        self.kinds = kinds
        self._lock = threading.Lock()
        self._orders: dict[tuple[str | None, bool], np.ndarray] = {}
        self._inverse: dict[tuple[str | None, bool], np.ndarray] = {}
        self._ties: dict[str, np.ndarray] = {}
        self.choices: dict[str, tuple[np.ndarray, dict[str, int]]] = {}
        self.values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.search: dict[str, _Search] = {}
        for c in spec.choices:
            if c in table.column_names and kinds.get(c) != "bool":
                self._choice(c)
        for c in set(spec.ranges) | {c for c in spec.choices if kinds.get(c) == "bool"}:
            if c in table.column_names:
                self._numeric(c)
        for c, (index, codes) in search_codes.items():
            self.search[c] = _Search(index, codes)

    # -- preparation
    def _choice(self, c: str) -> None:
        col = self.table[c]
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type) or pa.types.is_integer(col.type)
                or pa.types.is_string_view(col.type)):
            return
        enc = pc.dictionary_encode(_large_strings(pc.cast(col, pa.large_string())))
        codes = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
        self.choices[c] = (codes, {v: i for i, v in enumerate(enc.dictionary.to_pylist())})

    def _numeric(self, c: str) -> None:
        col = self.table[c]
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        kind = self.kinds.get(c)
        t = col.type
        if kind == "date" and (pa.types.is_timestamp(t) or pa.types.is_date(t)):
            # microseconds since the epoch: wall time for TIMESTAMP/DATE, UTC for TIMESTAMPTZ (the session
            # time zone of the SQL path is UTC, so a date filter means midnight UTC there too)
            us = pa.timestamp("us", tz=t.tz) if pa.types.is_timestamp(t) else pa.timestamp("us")
            v = pc.cast(col, us, safe=False).cast(pa.int64())
            self.values[c] = (v.fill_null(0).to_numpy(zero_copy_only=False), valid)
        elif kind == "number" and (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
            v = pc.cast(col, pa.float64()).fill_null(0).to_numpy(zero_copy_only=False)
            self.values[c] = (np.where(np.isnan(v), np.inf, v), valid)  # DuckDB: NaN above every number
        elif kind == "bool" and pa.types.is_boolean(t):
            self.values[c] = (col.fill_null(False).to_numpy(zero_copy_only=False), valid)

    def _tie(self, c: str) -> np.ndarray | None:
        """Ascending key of a tie-breaking column (kept: every sort order needs it)."""
        got = self._ties.get(c)
        if got is None:
            key = _sort_key(self.table[c], False)
            if key is None:
                return None
            got = self._ties[c] = key.astype(np.int32) if len(key) < 2**31 - 2 else key
        return got

    def order(self, sort: str | None, descending: bool) -> np.ndarray | None:
        """Row numbers in the order of the SQL path's ORDER BY sort [DESC], then the TIES columns."""
        key = (sort, bool(descending) if sort else False)
        got = self._orders.get(key)
        if got is not None:
            return got
        with self._lock:
            got = self._orders.get(key)
            if got is not None:
                return got
            keys = []
            if sort:
                k = _sort_key(self.table[sort], bool(descending))
                if k is None:
                    return None
                keys.append(k)
            for c in TIES:
                if c in self.table.column_names and c != sort and c in self.own:
                    k = self._tie(c)
                    if k is None:
                        return None
                    keys.append(k)
            got = np.lexsort(tuple(reversed(keys))).astype(np.int32) if keys else np.arange(self.n, dtype=np.int32)
            self._orders[key] = got
            return got

    def inverse(self, sort: str | None, descending: bool) -> np.ndarray:
        key = (sort, bool(descending) if sort else False)
        got = self._inverse.get(key)
        if got is None:
            perm = self.order(sort, descending)
            got = np.empty(self.n, dtype=np.int32)
            got[perm] = np.arange(self.n, dtype=np.int32)
            self._inverse[key] = got
        return got

    # -- answering
    def select(self, query: Query) -> tuple[np.ndarray | None, np.ndarray | None] | None:
        """(rows, mask): sorted row numbers or a boolean mask (both None: every row); None if unsupported."""
        rows: np.ndarray | None = None
        masks: list[np.ndarray] = []
        if query.q:
            q = query.q.lower()
            cols = [c for c in self.spec.search if c in self.own]
            if any(c not in self.search for c in cols):
                return None
            if cols:
                found = [self.search[c].rows(q) for c in cols]
                if all(f is not None for f in found):
                    rows = found[0] if len(found) == 1 else np.unique(np.concatenate(found))
                else:
                    m = np.zeros(self.n, dtype=bool)
                    for c, f in zip(cols, found):
                        if f is None:
                            m |= self.search[c].mask(q)
                        else:
                            m[f] = True
                    masks.append(m)
        for key in sorted(query.filters):
            value = query.filters[key]
            if key.startswith(("min:", "max:")):
                col = key[4:]
                if col not in self.values:
                    return None
                v, valid = self.values[col]
                kind = self.kinds.get(col)
                if kind == "date":
                    lit = np.int64(pd.Timestamp(value).value // 1000)
                else:
                    lit = float(value)
                    if np.isnan(lit):
                        lit = np.inf
                sub = v if rows is None else v[rows]
                ok = (sub >= lit) if key.startswith("min:") else (sub <= lit)
                ok &= valid if rows is None else valid[rows]
            elif self.kinds.get(key) == "bool":
                if key not in self.values:
                    return None
                b = _boolean(value)
                if b is None:
                    return None
                v, valid = self.values[key]
                ok = (v == b) & valid if rows is None else (v[rows] == b) & valid[rows]
            else:
                if key not in self.choices:
                    return None
                codes, lookup = self.choices[key]
                code = lookup.get(value)
                if code is None:
                    ok = np.zeros(self.n if rows is None else len(rows), dtype=bool)
                else:
                    ok = (codes == code) if rows is None else (codes[rows] == code)
            if rows is None:
                masks.append(ok)
            else:
                rows = rows[ok]
        mask = None
        if masks:
            mask = masks[0]
            for m in masks[1:]:
                mask = mask & m
        return rows, mask

    def slice(self, query: Query, page: int, per_page: int) -> tuple[int, int, np.ndarray] | None:
        """(total, page, row numbers of that page of the filtered, sorted list), or None when unsupported.

        The page is clamped to the last one, as the SQL path does."""
        sel = self.select(query)
        if sel is None:
            return None
        rows, mask = sel
        perm = self.order(query.sort, bool(query.descending))
        if perm is None:
            return None
        if rows is None and mask is not None:
            total = int(np.count_nonzero(mask))
            if total * FEW < self.n:
                rows = np.flatnonzero(mask)
        total = len(rows) if rows is not None else self.n if mask is None else total
        page = min(max(1, page), max(1, -(-total // per_page)))
        offset, need = (page - 1) * per_page, min(total, page * per_page)
        if rows is not None:
            if offset >= total:
                return total, page, np.zeros(0, dtype=np.int64)
            pos = self.inverse(query.sort, bool(query.descending))[rows]
            if need < total // 4:
                pos = pos[np.argpartition(pos, need - 1)[:need]]
            pos = np.sort(pos)
            return total, page, perm[pos[offset:need]]
        if mask is None:
            return total, page, perm[offset:need]
        if need * 2 >= total:
            return total, page, perm[mask[perm]][offset:need]
        got: list[np.ndarray] = []
        have, start = 0, 0
        step = max(4096, int(need * self.n / max(total, 1) * 1.25))
        while have < need and start < self.n:
            chunk = perm[start:start + step]
            hit = chunk[mask[chunk]]
            got.append(hit)
            have += len(hit)
            start += step
            step *= 2
        return total, page, np.concatenate(got)[offset:need]

    def rows(self, idx: np.ndarray) -> pd.DataFrame:
        return self.out.take(pa.array(idx, type=pa.int64())).to_pandas()

    @property
    def nbytes(self) -> int:
        """Bytes of what this list holds besides its Arrow columns (those may be shared with other lists)."""
        n = sum(a.nbytes for a in self._orders.values()) + sum(a.nbytes for a in self._inverse.values())
        n += sum(a.nbytes for a in self._ties.values())
        n += sum(c.nbytes for c, _ in self.choices.values()) + sum(v.nbytes + m.nbytes for v, m in self.values.values())
        n += sum(s.nbytes for s in self.search.values())
        return n


def _boolean(value: str) -> bool | None:
    v = str(value).strip().lower()
    if v in ("true", "t", "1", "yes", "y"):
        return True
    if v in ("false", "f", "0", "no", "n"):
        return False
    return None


# ------------------------------------------------------------------------------------------ per customer
def _sort_key(col, descending: bool) -> np.ndarray | None:
    """An int64 key whose ascending order is the SQL ORDER BY col [DESC] order (NULLs last either way), or None
    for a type Arrow cannot rank."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    n = len(col)
    if pa.types.is_null(col.type):
        return np.zeros(n, np.int64)
    try:
        r = pc.rank(col, "ascending", tiebreaker="dense").to_numpy(zero_copy_only=False).astype(np.int64)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    valid = col.is_valid().to_numpy(zero_copy_only=False)
    top = int(r[valid].max()) if valid.any() else 0
    return np.where(valid, (top + 1 - r) if descending else r, top + 1)


class _PerCustomer:
    """A table's rows grouped by customer (customers in the order of `Memory.ids`): one slice per customer.

    `codes` is each row's customer number (-1: not a scored customer, never shown); `key` orders the rows
    within a customer (None: as stored)."""

    def __init__(self, table: pa.Table, codes: np.ndarray, n_customers: int, key: np.ndarray | None = None) -> None:
        keep = np.flatnonzero(codes >= 0)
        if key is None:
            order = keep[np.argsort(codes[keep], kind="stable")]
        else:
            order = keep[np.lexsort((key[keep], codes[keep]))]
        self.table = table
        self.codes = codes
        self.order = order
        self.offsets = np.searchsorted(codes[order], np.arange(n_customers + 1)).astype(np.int64)

    def rows(self, i: int, limit: int) -> pd.DataFrame:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.table.take(pa.array(self.order[a:min(b, a + limit)])).to_pandas()

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.order.nbytes + self.offsets.nbytes


# ------------------------------------------------------------------------------------------ everything
@dataclass
class LoadReport:
    seconds: float
    nbytes: int
    lists: dict[str, int]
    tables: dict[str, int]
    phases: dict[str, float]


class Memory:
    """Every list and every per-customer table of a store, in memory (see the module docstring).

    Each table is read once (`self.whole`); the customer page's groupings and the lists over the same table
    share its Arrow columns (a list over customer_insights with a filter holds a copy of its own rows' columns)."""

    def __init__(self, reader: Reader) -> None:
        t0 = time.perf_counter()
        self.phases: dict[str, float] = {}
        self.reader = reader
        self.lists: dict[str, ListData] = {}
        self.tables: dict[str, _PerCustomer] = {}
        self.whole: dict[str, pa.Table] = {}
        self.insights: pa.Table | None = None
        self.ids: np.ndarray | None = None
        self._ids_arrow: pa.Array | None = None
        self.orders: _PerCustomer | None = None
        be = reader._backend()

        # per-customer tables (the customer page)
        if reader.has(CUSTOMERS, "customer_id") and self._is_text(CUSTOMERS, "customer_id"):
            ci = be.to_pyarrow(reader.table(CUSTOMERS).order_by("customer_id")).combine_chunks()
            if len(ci) > 1 and not pc.all(pc.less_equal(_large_strings(ci["customer_id"][:-1]),
                                                       _large_strings(ci["customer_id"][1:]))).as_py():
                ci = ci.take(pc.sort_indices(_large_strings(ci["customer_id"])))  # byte order for searchsorted
            self._ids_arrow = _large_strings(ci["customer_id"])
            self.ids = self._ids_arrow.to_numpy(zero_copy_only=False).astype(str)
            self.insights = self.whole[CUSTOMERS] = ci
            n = ci.num_rows
            self._phase("customer_insights", t0)
            for table, col, desc in PER_CUSTOMER:
                if not reader.has(table, "customer_id") or not self._is_text(table, "customer_id"):
                    continue
                t1 = time.perf_counter()
                full = self.whole[table] = be.to_pyarrow(reader.table(table)).combine_chunks()
                key = _sort_key(full[col], desc) if col and col in full.column_names else None
                self.tables[table] = _PerCustomer(full, self._codes(full), n, key)
                self._phase(table, t1)
            if reader.has("transactions", "customer_id", "order_id", "order_date", "amount"):
                t1 = time.perf_counter()
                orders = be.to_pyarrow(orders_expr(reader.table("transactions"), by_customer=True)).combine_chunks()
                self.orders = _PerCustomer(orders.drop_columns(["customer_id"]), self._codes(orders), n)
                self._phase("orders", t1)

        # the lists
        t1 = time.perf_counter()
        loaded: dict[str, tuple[ListSpec, pa.Table, list[str], dict[str, str], str | None, np.ndarray | None]] = {}
        for spec in LISTS.values():
            if reader.missing(spec):
                continue
            got = self._load_list(spec)
            if got is not None:
                loaded[spec.name] = got
        self._phase("lists", t1)
        t1 = time.perf_counter()
        # one text index per search column name, over the distinct lower-cased values of every table searched
        lowered: dict[tuple[str, str], pa.Array] = {}  # (source, column) -> lower-cased column
        for name, (spec, table, _, _, source, _) in loaded.items():
            for c in spec.search:
                if c in table.column_names and c in reader.list_table_columns(spec):
                    src = (source or f"list:{name}", c)
                    if src not in lowered:
                        lowered[src] = pc.utf8_lower(_large_strings(
                            self.whole[source][c] if source else table[c]))
        texts: dict[str, TextIndex] = {}
        for c in dict.fromkeys(c for _, c in lowered):
            arrays = [pc.unique(a) for (_, col), a in lowered.items() if col == c]
            texts[c] = TextIndex(pc.unique(pa.chunked_array(arrays).combine_chunks()).drop_null())
        codes = {src: pc.index_in(a, value_set=texts[src[1]].values).fill_null(-1).to_numpy(zero_copy_only=False)
                 .astype(np.int32) for src, a in lowered.items()}
        del lowered
        self._phase("text_index", t1)
        t1 = time.perf_counter()
        for name, (spec, table, out, kinds, source, pos) in loaded.items():
            search = {}
            for c in spec.search:
                got = codes.get((source or f"list:{name}", c))
                if got is not None:
                    search[c] = (texts[c], got if pos is None else got[pos])
            self.lists[name] = ListData(spec, table, out, kinds, frozenset(reader.list_table_columns(spec)), search)
        self._phase("list_filters", t1)
        self.texts = texts
        self.load_seconds = time.perf_counter() - t0

    def _phase(self, name: str, since: float) -> None:
        self.phases[name] = round(time.perf_counter() - since, 2)

    def _is_text(self, table: str, column: str) -> bool:
        return self.reader.table(table)[column].type().is_string()

    def _codes(self, table: pa.Table) -> np.ndarray:
        """Each row's position in the sorted customer_insights (-1 when it is not there)."""
        cid = _large_strings(table["customer_id"])
        return pc.index_in(cid, value_set=self._ids_arrow).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    def _load_list(self, spec: ListSpec):
        r = self.reader
        t = r._base(spec)
        own = set(r.list_table_columns(spec))
        data_cols = [c for c in r.list_columns(spec) if c in t.columns]
        reason = r._reason_inputs(spec, t)
        out = list(dict.fromkeys(data_cols + reason))
        extra = [c for c in (*TIES, *spec.search, *spec.choices, *spec.ranges) if c in own and c in t.columns]
        cols = list(dict.fromkeys(out + extra))
        for c in cols:  # the text search compares text: other types go to the SQL path
            if c in spec.search and not t[c].type().is_string():
                return None
        join = r._context(spec)
        kinds = {c: r.column_kind(spec, c) for c in (*spec.ranges, *spec.choices) if c in own}
        whole = self.whole.get(spec.table)
        if whole is not None and (spec.where is None or spec.table == CUSTOMERS):
            # the list's rows are rows of a table already in memory: select them there (the list's filter is
            # still the Ibis expression, run once here; its customer ids locate the rows)
            table = whole.select(cols)
            pos = None
            if spec.where is not None:
                ids = r._backend().to_pyarrow(t.select("customer_id"))["customer_id"]
                pos = np.sort(pc.index_in(_large_strings(ids), value_set=self._ids_arrow).drop_null().to_numpy())
                table = table.take(pa.array(pos))
            if join:
                ci = self.tables[spec.table].codes if spec.table in self.tables else self._codes(table)
                ci = pa.array(ci if pos is None else ci[pos], mask=(ci if pos is None else ci[pos]) < 0)
                for c in join:
                    table = table.append_column(c, self.insights[c].take(ci))
                out = out + join
            return spec, table, out, kinds, spec.table, pos
        t = t.select(*cols)
        if join:
            c = r.table(CUSTOMERS).select("customer_id", *join)
            t = t.left_join(c, t.customer_id == c.customer_id).drop("customer_id_right")
            out = out + join
        return spec, r._backend().to_pyarrow(t).combine_chunks(), out, kinds, None, None

    # -- answering
    def page(self, spec: ListSpec, query: Query, page: int = 1,
             per_page: int = EXPORT_LIMIT) -> tuple[int, int, pd.DataFrame] | None:
        """(total, page, rows) of a cleaned query, or None when the SQL path must answer."""
        data = self.lists.get(spec.name)
        if data is None or data.spec is not spec:
            return None
        got = data.slice(query, page, per_page)
        if got is None:
            return None
        total, page, idx = got
        return total, page, data.rows(idx)

    def customer_index(self, customer_id: str) -> int | None:
        if self.ids is None:
            return None
        i = int(np.searchsorted(self.ids, customer_id))
        return i if i < len(self.ids) and self.ids[i] == customer_id else None

    def customer(self, customer_id: str) -> dict[str, Any] | None:
        i = self.customer_index(str(customer_id))
        if i is None:
            return None
        out: dict[str, Any] = {"insights": self.insights.slice(i, 1).to_pandas().iloc[0].to_dict()}
        for table, _, _ in PER_CUSTOMER:
            got = self.tables.get(table)
            out[table] = got.rows(i, PER_CUSTOMER_LIMIT) if got is not None else None
        out["orders"] = self.orders.rows(i, ORDERS_LIMIT) if self.orders is not None else None
        return out

    def report(self) -> LoadReport:
        lists = {k: v.nbytes for k, v in self.lists.items()}
        tables = {k: v.nbytes for k, v in self.whole.items()}
        tables.update({f"{k} (by customer)": v.nbytes for k, v in self.tables.items()})
        if self.orders is not None:
            tables["orders"] = self.orders.table.nbytes + self.orders.nbytes
        tables["text_index"] = sum(t.nbytes for t in self.texts.values())
        return LoadReport(round(self.load_seconds, 2), sum(lists.values()) + sum(tables.values()), lists, tables,
                          self.phases)
