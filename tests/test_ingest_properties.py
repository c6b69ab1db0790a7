"""Property-based tests of ingest: random transaction tables, written as CSV / TSV / semicolon CSV / Parquet.

Each generated cell carries the text written to the file and the value an independent Python parse expects
(or a mark that it is bad). Invariants checked:
- rows_read == loaded + duplicates + quarantined, and the quarantine table holds exactly the bad rows, each
  at its file line with the source column of the first bad field;
- every good row is stored at its line with exactly the expected values and flags;
- ingesting a file again adds nothing; two overlapping exports store the union with multiset semantics (the
  stored count of a line is the largest count of it within any one file), whatever the order or grouping;
- column recognition finds the right source columns whatever their order and synonyms;
- date detection returns the format the dates were written in (ISO for what DuckDB's ISO cast reads).
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import uuid
from collections import Counter
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from loyalist import schema
from loyalist.ingest import Options, ingest
from loyalist.ingest.pipeline import DATE_FORMATS, ISO, _typed, detect_date_format
from loyalist.schema import Kind
from loyalist.store import open_store

SETTINGS = settings(max_examples=40, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])

# Display names a source might use for each field; every one normalises to a synonym of that field only.
NAMES = {
    "customer_id": ["CustomerID", "Customer ID", "customer_id", "Cust ID", "Client ID", "Account No", "Member ID"],
    "order_id": ["InvoiceNo", "Invoice", "Order ID", "order_number", "Receipt No", "Transaction ID"],
    "order_date": ["InvoiceDate", "OrderDate", "Order Date", "Date", "created_at", "Purchase Date", "Timestamp"],
    "product_id": ["StockCode", "SKU", "Product ID", "Item Code", "product_code", "Article No"],
    "description": ["Description", "Product Name", "Item Name", "Title"],
    "quantity": ["Qty", "Quantity", "Units", "Quantity Ordered"],
    "unit_price": ["UnitPrice", "Price", "Unit Price", "Price Each", "Item Price"],
    "amount": ["Total", "Amount", "Line Total", "Revenue", "Sales"],
}
DISTRACTORS = ["Notes", "Warehouse", "Batch"]
FIELD_ORDER = [f.name for f in schema.FIELDS[Kind.transactions]]

TWO_DIGIT_YEAR = [f for f in DATE_FORMATS if "%y" in f]
WITH_OFFSET = [f for f in DATE_FORMATS if "%z" in f]
GOOD_FORMATS = [f for f in DATE_FORMATS if f not in TWO_DIGIT_YEAR and f not in WITH_OFFSET]
ISO_READABLE = {"%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y/%m/%d"}
"""Formats DuckDB's own ISO cast reads correctly; detection may return ISO for these."""

NULLS = ("", "nan", "NULL", "N/A", "None")
BAD = object()  # expected value of a cell that must send its row to quarantine


@dataclass(frozen=True)
class Cell:
    text: str | None  # None: left empty (a NULL in Parquet, an empty field in text)
    value: object  # the expected canonical value, or BAD


# ------------------------------------------------------------------------------------- cell strategies


@st.composite
def customer_cells(draw) -> Cell:
    n = draw(st.integers(0, 30))
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return Cell(draw(st.sampled_from(NULLS + ("  ",))), None)  # a guest line
    if kind == 1:
        return Cell(f"1{n:04d}.0", f"1{n:04d}")  # went through a float
    if kind == 2:
        return Cell(f"  C{n:03d} ", f"C{n:03d}")
    if kind == 3:
        return Cell(f"1{n:04d}", f"1{n:04d}")
    return Cell(f"C{n:03d}", f"C{n:03d}")


@st.composite
def order_cells(draw) -> Cell:
    n = draw(st.integers(0, 40))
    prefix = draw(st.sampled_from(["", "", "", "C", "c"]))
    if draw(st.integers(0, 9)) == 0:
        return Cell(None, None)
    return Cell(f"{prefix}49{n:04d}", f"{prefix}49{n:04d}")


PRODUCTS = ["85123A", "22423", "84879", "47566", "POST", "M", "BANK CHARGES", "DOT", "gift_0001_20", "TEST001",
            "c2", "AMAZONFEE"]
DESCRIPTIONS = ["WHITE HANGING HEART", "REGENCY CAKESTAND 3 TIER", "POSTAGE", "Manual", "Discount",
                "MUG, LARGE", "carriage", "PARTY BUNTING", "", "N/A"]


def money_text(cents: int, style: int) -> str:
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    if style == 1:
        return f"{sign}£{whole}.{frac:02d}"
    if style == 2 and whole >= 1000:
        return f"{sign}{whole:,}.{frac:02d}"
    if style == 3:
        return f"{sign}$ {whole}.{frac:02d}"
    return f"{sign}{whole}.{frac:02d}"


def plain_value(text: str) -> float:
    """The independent parse of a well-formed money/quantity text: strip signs of currency, blanks, commas."""
    return float(re.sub(r"[£$\s,]", "", text))


@st.composite
def number_cells(draw, *, money: bool, bad_ok: bool) -> Cell:
    kind = draw(st.integers(0, 11))
    if kind == 0:
        return Cell(draw(st.sampled_from([None, "", "  "])), None)
    if kind == 1 and bad_ok:
        text = draw(st.sampled_from(["twelve", "1.2.3", "--", "inf", "-Infinity", "9,50", "12x"]))
        return Cell(text, BAD)
    if money:
        cents = draw(st.integers(-20_000, 250_000))
        text = money_text(cents, draw(st.integers(0, 3)))
    else:
        q = draw(st.integers(-50, 2_500))
        text = f"{q:,}" if draw(st.booleans()) else str(q)
    return Cell(text, plain_value(text))


def date_text_cell(d: dt.datetime, fmt: str) -> Cell:
    text = d.strftime(fmt)
    return Cell(text, dt.datetime.strptime(text, fmt))


@st.composite
def date_cells(draw, fmt: str, *, anchor: bool = False, bad_ok: bool = True) -> Cell:
    if not anchor and bad_ok:
        kind = draw(st.integers(0, 14))
        if kind == 0:
            return Cell(draw(st.sampled_from([None, ""])), BAD)  # a required field left blank
        if kind == 1:
            return Cell(draw(st.sampled_from(["notadate", "31/02/2010", "2010-02-30", "??"])), BAD)
    d = draw(st.datetimes(min_value=dt.datetime(1995, 1, 1), max_value=dt.datetime(2030, 12, 31)))
    if anchor:  # a day > 12 tells day-first from month-first
        d = d.replace(day=draw(st.integers(13, 28)))
    return date_text_cell(d.replace(microsecond=0), fmt)


# ------------------------------------------------------------------------------------------ tables


@dataclass
class Spec:
    fields: list[str]
    fmt: str


@dataclass
class Layout:
    names: dict[str, str]
    columns: list[str]  # display names in file order (fields and distractors)
    writer: str  # csv, tsv, semicolon, parquet


Row = dict  # field -> Cell


@st.composite
def specs(draw) -> Spec:
    fields = ["customer_id", "order_id", "order_date", "product_id", "quantity", "unit_price"]
    if draw(st.booleans()):
        fields.append("description")
    if draw(st.booleans()):
        fields.append("amount")
    return Spec([f for f in FIELD_ORDER if f in fields], draw(st.sampled_from(GOOD_FORMATS)))


@st.composite
def layouts(draw, spec: Spec) -> Layout:
    names = {f: draw(st.sampled_from(NAMES[f])) for f in spec.fields}
    extra = draw(st.lists(st.sampled_from(DISTRACTORS), unique=True, max_size=2))
    columns = draw(st.permutations([names[f] for f in spec.fields] + extra))
    return Layout(names, columns, draw(st.sampled_from(["csv", "csv", "tsv", "semicolon", "parquet"])))


@st.composite
def row_values(draw, spec: Spec, *, anchor: bool = False) -> Row:
    bad_ok = not anchor
    row: Row = {}
    for f in spec.fields:
        if f == "customer_id":
            row[f] = draw(customer_cells())
        elif f == "order_id":
            row[f] = draw(order_cells())
        elif f == "order_date":
            row[f] = draw(date_cells(spec.fmt, anchor=anchor, bad_ok=bad_ok))
        elif f == "product_id":
            p = draw(st.sampled_from(PRODUCTS))
            row[f] = Cell(p, p)
        elif f == "description":
            text = draw(st.sampled_from(DESCRIPTIONS))
            row[f] = Cell(text, None if text in NULLS else text)
        elif f == "quantity":
            row[f] = draw(number_cells(money=False, bad_ok=bad_ok))
        else:
            row[f] = draw(number_cells(money=True, bad_ok=bad_ok))
    row["_extra"] = draw(st.sampled_from(["", "fragile", "back order", "42"]))
    return row


@st.composite
def row_lists(draw, spec: Spec, min_size: int = 1, max_size: int = 18) -> list[Row]:
    """Rows with an anchor row somewhere, random exact repeats, and few enough bad dates to detect the format."""
    rows = draw(st.lists(row_values(spec), min_size=min_size - 1, max_size=max_size - 1))
    rows.insert(draw(st.integers(0, len(rows))), draw(row_values(spec, anchor=True)))
    for i in draw(st.lists(st.integers(0, len(rows) - 1), max_size=4)):
        rows.insert(draw(st.integers(0, len(rows))), rows[i])
    dates = [r["order_date"] for r in rows if r["order_date"].text not in (None, "")]
    good = [c for c in dates if c.value is not BAD]
    assume(len(good) >= 0.6 * len(dates))
    return rows


def write(rows: list[Row], layout: Layout, directory) -> tuple[object, int]:
    """Write the rows; return the path and the line/row number of the first data row."""
    by_name = {name: f for f, name in layout.names.items()}

    def text(row: Row, column: str) -> str | None:
        f = by_name.get(column)
        return row[f].text if f else row["_extra"]

    if layout.writer == "parquet":
        path = directory / "t.parquet"
        pq.write_table(pa.table({c: pa.array([text(r, c) for r in rows], pa.string()) for c in layout.columns}), path)
        return path, 1
    delimiter = {"csv": ",", "tsv": "\t", "semicolon": ";"}[layout.writer]
    path = directory / ("t.tsv" if layout.writer == "tsv" else "t.csv")
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, delimiter=delimiter, lineterminator="\n")
        w.writerow(layout.columns)
        for r in rows:
            w.writerow(["" if text(r, c) is None else text(r, c) for c in layout.columns])
    return path, 2


# ---------------------------------------------------------------------------- the independent model


NOW = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
NON_PRODUCT_RE = re.compile(schema.NON_PRODUCT_DESCRIPTION)


def first_bad(row: Row, spec: Spec) -> str | None:
    """The field whose rule the row breaks first (fields are validated in schema order), or None."""
    for f in spec.fields:
        if row[f].value is BAD:
            return f
    return None


def expected_rule(field: str, text: str | None) -> set[str]:
    if field == "order_date":
        if text is None or not text.strip():
            return {"missing order_date"}
        return {"missing order_date", "unparseable date (order_date; expected "}  # prefix; see the check
    if text.strip().lower().lstrip("-+") in ("nan", "inf", "infinity"):
        return {f"not a finite number ({field})"}
    return {f"not a number ({field})"}


def canonical(row: Row, spec: Spec) -> dict:
    v = {f: row[f].value for f in spec.fields}
    qty, price = v.get("quantity"), v.get("unit_price")
    if "amount" in spec.fields:
        given_amount = v["amount"]
        amount = given_amount if given_amount is not None else (
            qty * price if qty is not None and price is not None else None)
        if price is None and given_amount is not None and qty is not None and qty != 0:
            price = given_amount / qty
    else:
        amount = qty * price if qty is not None and price is not None else None
    product, description = v["product_id"], v.get("description")
    return {
        "customer_id": v["customer_id"], "order_id": v["order_id"], "order_date": v["order_date"],
        "product_id": product, "description": description, "quantity": qty, "unit_price": price, "amount": amount,
        "is_guest": v["customer_id"] is None,
        "is_cancellation": bool(v["order_id"] and re.fullmatch(schema.CANCELLED_ORDER_ID, v["order_id"])),
        "is_return": (qty or 0) < 0 or (amount or 0) < 0,
        "is_non_product": (product.upper() in schema.NON_PRODUCT_CODES
                           or any(product.upper().startswith(p) for p in schema.NON_PRODUCT_CODE_PREFIXES)
                           or bool(description and NON_PRODUCT_RE.search(description))),
        "price_issue": None if price is None else ("negative" if price < 0 else "zero" if price == 0 else None),
        "is_future": v["order_date"] > NOW + dt.timedelta(days=1),
    }


LINE = ("customer_id", "order_id", "order_date", "product_id", "description", "quantity", "unit_price", "amount")
STORED = ", ".join(LINE) + ", is_guest, is_cancellation, is_return, is_non_product, price_issue, is_future"


def line_key(values) -> tuple:
    """A hashable identity of a stored line; floats by repr so that -0.0 and 0.0 stay apart, as in the store."""
    return tuple(repr(x) if isinstance(x, float) else x for x in values)


def good_lines(rows: list[Row], spec: Spec) -> Counter:
    return Counter(line_key(canonical(r, spec)[k] for k in LINE) for r in rows if first_bad(r, spec) is None)


def stored_lines(store) -> Counter:
    return Counter(line_key(r) for r in store.con.execute(f"SELECT {', '.join(LINE)} FROM transactions").fetchall())


def fresh(tmp_path):
    d = tmp_path / uuid.uuid4().hex
    d.mkdir()
    return d


def balanced(report) -> None:
    for f in report.files:
        assert f.rows_read == f.loaded + f.duplicates + f.quarantined, f
    t = report.totals()
    assert t["rows_read"] == t["loaded"] + t["duplicates"] + t["quarantined"]


# --------------------------------------------------------------------------------------- properties


@st.composite
def tables(draw):
    spec = draw(specs())
    return spec, draw(layouts(spec)), draw(row_lists(spec))


@SETTINGS
@given(table=tables())
def test_every_row_is_stored_exactly_or_quarantined_at_its_line(tmp_path, table):
    spec, layout, rows = table
    d = fresh(tmp_path)
    path, first_line = write(rows, layout, d)
    store = open_store(d / "s.duckdb")
    try:
        report = ingest(store, [path], Options())
        balanced(report)
        [file] = report.files
        assert file.mapping == layout.names
        assert file.date_format == spec.fmt or (file.date_format == ISO and spec.fmt in ISO_READABLE)

        bad = {first_line + i: (layout.names[first_bad(r, spec)], r[first_bad(r, spec)].text, first_bad(r, spec))
               for i, r in enumerate(rows) if first_bad(r, spec)}
        got_q = {row: (column, value, rule) for row, column, value, rule in store.con.execute(
            'SELECT "row", "column", value, rule FROM quarantine').fetchall()}
        assert set(got_q) == set(bad)
        for line, (column, text, field) in bad.items():
            got_column, got_value, got_rule = got_q[line]
            assert got_column == column, (line, got_q[line], bad[line])
            if (text or "").strip().lower().lstrip("+-") in ("inf", "infinity", "nan"):
                # A non-finite number typed by the CSV reader comes back in its canonical spelling.
                assert float(got_value) == float(text.strip())
            else:
                assert (got_value or "").strip() == (text or "").strip()
            rules = expected_rule(field, text)
            assert got_rule in rules or any(got_rule.startswith(r) for r in rules if r.endswith(" ")), got_rule

        expected = {first_line + i: canonical(r, spec) for i, r in enumerate(rows) if not first_bad(r, spec)}
        got = {r[0]: dict(zip(STORED.split(", "), r[1:])) for r in store.con.execute(
            f"SELECT source_row, {STORED} FROM transactions").fetchall()}
        assert set(got) == set(expected)
        for line, want in expected.items():
            have = got[line]
            if abs(want["order_date"] - NOW - dt.timedelta(days=1)) < dt.timedelta(hours=2):
                have.pop("is_future"), want.pop("is_future")  # too close to call
            assert have == want, line
        assert (file.loaded, file.duplicates, file.quarantined) == (len(expected), 0, len(bad))

        # The same file again adds nothing: every good row is a duplicate, the bad ones are set aside again.
        before = stored_lines(store)
        again = ingest(store, [path], Options())
        balanced(again)
        assert (again.files[0].loaded, again.files[0].duplicates, again.files[0].quarantined) == (
            0, len(expected), len(bad))
        assert stored_lines(store) == before
    finally:
        store.close()


@st.composite
def overlapping(draw):
    spec = draw(specs())
    a = draw(row_lists(spec))
    tail = a[len(a) - draw(st.integers(0, len(a))):]
    b = draw(row_lists(spec, max_size=10))
    b_rows = tail + b
    for i in draw(st.lists(st.integers(0, len(b_rows) - 1), max_size=3)):  # more repeats inside B
        b_rows.insert(draw(st.integers(0, len(b_rows))), b_rows[i])
    return spec, draw(layouts(spec)), a, draw(layouts(spec)), b_rows, draw(st.sampled_from(["ab", "ba", "together"]))


@SETTINGS
@given(case=overlapping())
def test_overlapping_exports_store_the_multiset_union(tmp_path, case):
    spec, layout_a, a, layout_b, b, order = case
    da, db = fresh(tmp_path), fresh(tmp_path)
    path_a, _ = write(a, layout_a, da)
    path_b, _ = write(b, layout_b, db)
    count_a, count_b = good_lines(a, spec), good_lines(b, spec)
    union = Counter({k: max(count_a[k], count_b[k]) for k in count_a | count_b})
    store = open_store(da / "s.duckdb")
    try:
        if order == "together":
            reports = [ingest(store, [path_a, path_b], Options())]
        else:
            first, second = (path_a, path_b) if order == "ab" else (path_b, path_a)
            reports = [ingest(store, [first], Options()), ingest(store, [second], Options())]
        for r in reports:
            balanced(r)
        assert stored_lines(store) == union
        files = [f for r in reports for f in r.files]
        by_source = {f.source: f for f in files}
        fa, fb = by_source[str(path_a)], by_source[str(path_b)]
        earlier, later, c_earlier, c_later = (fa, fb, count_a, count_b) if order != "ba" else (fb, fa, count_b, count_a)
        assert earlier.loaded == sum(c_earlier.values()) and earlier.duplicates == 0
        assert later.loaded == sum(max(0, c_later[k] - c_earlier[k]) for k in c_later)
        assert later.duplicates == sum(c_later.values()) - later.loaded
        assert sum(f.loaded for f in files) == sum(union.values())
    finally:
        store.close()


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_column_recognition_under_permutations_and_synonyms(data):
    fields = data.draw(st.lists(st.sampled_from(sorted(NAMES)), unique=True, min_size=1))
    names = {f: data.draw(st.sampled_from(NAMES[f])) for f in fields}
    extra = data.draw(st.lists(st.sampled_from(DISTRACTORS), unique=True))
    columns = data.draw(st.permutations([names[f] for f in fields] + extra))
    assert schema.recognise_columns(Kind.transactions, columns) == names


# ------------------------------------------------------------------------------------ date detection


CON = duckdb.connect()
CON.execute("SET TimeZone = 'UTC'")


def detect(values: list[str | None]) -> tuple[str, list]:
    table = f"d_{uuid.uuid4().hex}"
    CON.execute(f"CREATE TEMP TABLE {table} AS SELECT unnest(?::VARCHAR[]) AS v", [values])
    try:
        fmt = detect_date_format(CON, table, "v")
        sql = _typed(schema.field(Kind.transactions, "order_date"), "v", "VARCHAR", fmt, False, False)
        parsed = [r[0] for r in CON.execute(f"SELECT {sql} FROM {table}").fetchall()]
        return fmt, parsed
    finally:
        CON.execute(f"DROP TABLE {table}")


dates = st.datetimes(min_value=dt.datetime(1901, 1, 1), max_value=dt.datetime(2199, 12, 31)).map(
    lambda d: d.replace(microsecond=0))


@settings(max_examples=50, deadline=None)
@given(fmt=st.sampled_from(GOOD_FORMATS), ds=st.lists(dates, min_size=1, max_size=30), anchor_day=st.integers(13, 31),
       junk=st.lists(st.sampled_from([None, "", "n/a", "unknown"]), max_size=8), data=st.data())
def test_date_detection_finds_the_written_format(fmt, ds, anchor_day, junk, data):
    anchor = ds[0]
    for day in range(anchor_day, 12, -1):  # the anchor has a day > 12 (the largest valid one <= anchor_day)
        try:
            anchor = anchor.replace(day=day)
            break
        except ValueError:
            continue
    ds = [anchor] + ds[1:]
    texts = [d.strftime(fmt) for d in ds]
    junk = junk[: len(texts) - 1]  # keep the junk well under half of the non-blank values
    values = data.draw(st.permutations(texts + junk))
    got, parsed = detect(values)
    assert got == fmt or (got == ISO and fmt in ISO_READABLE), (fmt, got, values)
    expected = [dt.datetime.strptime(v, fmt) if v in texts else None for v in values]
    assert parsed == expected


@settings(max_examples=30, deadline=None)
@given(fmt=st.sampled_from(["%d/%m/%Y", "%m/%d/%Y", "%d/%m/%Y %H:%M", "%m/%d/%Y %H:%M"]),
       ds=st.lists(dates.map(lambda d: d.replace(day=min(d.day, 12))), min_size=1, max_size=20))
def test_ambiguous_day_month_dates_are_read_day_first(fmt, ds):
    """When no day exceeds 12 both readings parse everything; the documented tie-break is day-first."""
    got, _ = detect([d.strftime(fmt) for d in ds])
    assert got == fmt.replace("%m/%d", "%d/%m")


@pytest.mark.parametrize("fmt", TWO_DIGIT_YEAR)
def test_two_digit_year_formats_are_detected(fmt):
    ds = [dt.datetime(2010, 12, 31), dt.datetime(2011, 1, 13), dt.datetime(2009, 6, 15)]
    got, parsed = detect([d.strftime(fmt) for d in ds])
    assert got == fmt and parsed == ds


@pytest.mark.parametrize("fmt", WITH_OFFSET)
def test_offset_formats_are_read_in_utc(fmt):
    tz = dt.timezone(dt.timedelta(hours=2))
    ds = [dt.datetime(2010, 12, 31, 10, 0, tzinfo=tz), dt.datetime(2011, 1, 13, 23, 30, tzinfo=tz)]
    _, parsed = detect([d.strftime(fmt) for d in ds])
    assert parsed == [d.astimezone(dt.timezone.utc).replace(tzinfo=None) for d in ds]
