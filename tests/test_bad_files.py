"""Every file in tests/data/bad/ (one defect each, see its README.md) and exactly what ingest does with it.

Errors: a `SourceError` whose one-line message names the file and the problem, and a store left exactly as it
was. Quarantines: the exact file line numbers (header = line 1), column and rule. Always: rows_read ==
loaded + duplicates + quarantined. Tests marked xfail(strict) pin down product bugs (see their reasons).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loyalist.errors import LoyalistError, SourceError
from loyalist.ingest import Options, ingest
from loyalist.schema import Kind
from loyalist.store import open_store

BAD = Path(__file__).parent / "data" / "bad"
TABLES = ("transactions", "quarantine", "ingests", "invoices", "customers", "products")


# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path / "store.duckdb")
    yield s
    s.close()


@pytest.fixture
def seeded(store):
    """A store that already holds loaded and quarantined rows, to show that a failed ingest changes nothing."""
    run(store, "bad_numbers.csv")
    run(store, "invoice_repeated_key.csv", kind=Kind.invoices)
    assert snapshot(store)["transactions"] and snapshot(store)["quarantine"]
    return store


def run(store, name: str, **options):
    """Ingest one corpus file; check the row accounting of the report and of the quarantine table."""
    report = ingest(store, [BAD / name], Options(**options))
    for f in report.files:
        assert f.rows_read == f.loaded + f.duplicates + f.quarantined, f
    t = report.totals()
    assert t["rows_read"] == t["loaded"] + t["duplicates"] + t["quarantined"]
    in_table = store.con.execute("SELECT count(*) FROM quarantine WHERE ingest_id = ?",
                                 [report.ingest_id]).fetchone()[0]
    assert in_table == t["quarantined"]
    return report


def totals(report) -> tuple[int, int, int, int]:
    t = report.totals()
    return t["rows_read"], t["loaded"], t["duplicates"], t["quarantined"]


def quarantined(store) -> list[tuple]:
    """(line, column, value, rule) of every quarantined row, in line order."""
    return store.con.execute('SELECT "row", "column", value, rule FROM quarantine ORDER BY ingest_id, "row"'
                             ).fetchall()


def stored(store, columns: str = "source_row", table: str = "transactions") -> list[tuple]:
    return store.con.execute(f"SELECT {columns} FROM {table} ORDER BY source_row").fetchall()


def snapshot(store) -> dict[str, list[tuple]]:
    return {t: store.con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}


def assert_error(store, name: str, *fragments: str, **options) -> str:
    """The ingest raises a one-line SourceError naming the file and each fragment (regex), the store is
    unchanged, and the same connection can still ingest afterwards."""
    before = snapshot(store)
    path = BAD / name
    with pytest.raises(SourceError) as info:
        ingest(store, [path], Options(**options))
    message = str(info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for fragment in fragments:
        assert re.search(fragment, message), (fragment, message)
    assert snapshot(store) == before
    run(store, "cancellations.csv")  # the failed run left nothing behind that breaks the next one
    return message


D = dt.datetime


# --------------------------------------------------------------------------- unreadable files: errors


def test_random_bytes_is_an_error_naming_the_file(seeded):
    assert_error(seeded, "random_bytes.csv")


def test_random_bytes_error_says_the_file_is_not_text(seeded):
    assert_error(seeded, "random_bytes.csv", r"(?i)binary|not (a )?text|not .*delimited|encoding")


def test_truncated_gzip_is_an_error(seeded):
    assert_error(seeded, "truncated.csv.gz", "cannot read", r"(?i)gzip")


def test_corrupt_xlsx_is_an_error(seeded):
    assert_error(seeded, "corrupt.xlsx", "cannot read as a spreadsheet", r"(?i)zip")


def test_excel_header_naming_a_column_twice_is_an_error(seeded, tmp_path):
    """Was a pyarrow traceback ('Column 4 named Price expected length 2 but got length 4')."""
    import openpyxl

    wb = openpyxl.Workbook()
    wb.active.title = "data"
    wb.active.append(["Invoice", "Customer ID", "InvoiceDate", "Price", "Price"])
    wb.active.append(["1", "C1", "2023-01-05", 1.5, 9])
    path = tmp_path / "twice.xlsx"
    wb.save(path)
    before = snapshot(seeded)
    with pytest.raises(SourceError, match=r"twice.xlsx\[data\]: the header \(row 1\) names column 'Price' more"):
        ingest(seeded, [path])
    assert snapshot(seeded) == before


def test_workbook_with_a_sheet_without_orders_points_to_sheet(seeded, tmp_path):
    import pandas as pd

    path = tmp_path / "book.xlsx"
    with pd.ExcelWriter(path) as w:
        pd.DataFrame({"Invoice": ["1"], "Customer ID": ["C1"], "InvoiceDate": ["2023-01-05"]}).to_excel(
            w, sheet_name="orders", index=False)
        pd.DataFrame({"Note": ["exported by the ERP"]}).to_excel(w, sheet_name="About", index=False)
    before = snapshot(seeded)
    with pytest.raises(SourceError) as info:  # the hint was only --map, for a sheet that holds no orders at all
        ingest(seeded, [path])
    assert str(info.value).endswith("set it with --map customer_id=COLUMN, or, if this sheet holds no transactions, "
                                    "ingest the sheets that do one at a time with --sheet NAME (sheets: orders, About)")
    assert snapshot(seeded) == before
    assert totals(ingest(seeded, [path], Options(sheet="orders"))) == (1, 1, 0, 0)


def test_not_parquet_is_an_error(seeded):
    assert_error(seeded, "not_parquet.parquet", "cannot read as Parquet")


def test_empty_file_is_an_error(seeded):
    assert_error(seeded, "empty.csv", "the file is empty")


def test_only_blank_lines_is_an_error(seeded):
    assert_error(seeded, "blank_lines.csv", r"no rows \(only blank lines\)")


# ------------------------------------------------------------------- missing required columns: errors


def test_no_customer_column_is_an_error(seeded):
    assert_error(seeded, "no_customer_column.csv", "no column for required field 'customer_id'",
                 "columns: Invoice, StockCode, Quantity, InvoiceDate, Price, Country",
                 "--map customer_id=COLUMN")


def test_no_date_column_is_an_error(seeded):
    assert_error(seeded, "no_date_column.csv", "no column for required field 'order_date'",
                 "--map order_date=COLUMN")


def test_failed_file_rolls_back_the_whole_run(seeded):
    """Two sources in one run, the second unreadable: the first is not stored either."""
    before = snapshot(seeded)
    with pytest.raises(SourceError, match="empty.csv: the file is empty"):
        ingest(seeded, [BAD / "future_dates.csv", BAD / "empty.csv"])
    assert snapshot(seeded) == before


def test_missing_path_and_directory_are_errors(seeded):
    before = snapshot(seeded)
    with pytest.raises(SourceError, match=r"nope\.csv: no such file"):
        ingest(seeded, [BAD / "nope.csv"])
    with pytest.raises(SourceError, match="is a directory"):
        ingest(seeded, [BAD])
    assert snapshot(seeded) == before


# ---------------------------------------------------------------------------- quarantined values


def test_unparseable_dates_are_quarantined_with_line_and_column(store):
    report = run(store, "bad_dates.csv")
    assert totals(report) == (5, 3, 0, 2)
    assert [(r, c, v) for r, c, v, _ in quarantined(store)] == [
        (3, "InvoiceDate", "yesterday"), (5, "InvoiceDate", "2009-13-45 25:00:00")]
    assert stored(store, "source_row, order_date") == [
        (2, D(2009, 12, 1, 7, 45)), (4, D(2009, 12, 1, 7, 46)), (6, D(2009, 12, 1, 9, 6))]


def test_reingesting_a_file_keeps_one_copy_of_its_quarantined_rows(store):
    from loyalist import quality

    first = run(store, "bad_numbers.csv")
    rows = quarantined(store)
    second = run(store, "bad_numbers.csv")
    assert totals(second) == (6, 0, 2, 4) and totals(first)[3] == 4  # each run accounts for every row
    assert quarantined(store) == rows  # was each bad row twice: status said 8 quarantined rows for 4
    assert quality.status(store).quarantined == 4
    assert store.con.execute("SELECT DISTINCT ingest_id FROM quarantine").fetchall() == [(second.ingest_id,)]


def test_unparseable_dates_rule_says_unparseable(store):
    run(store, "bad_dates.csv")
    assert {rule for *_, rule in quarantined(store)} == {"unparseable date (order_date; expected ISO 8601)"}


def test_unparseable_numbers_are_quarantined(store):
    report = run(store, "bad_numbers.csv")
    assert totals(report) == (6, 2, 0, 4)
    assert quarantined(store) == [
        (2, "Quantity", "twelve", "not a number (quantity)"),
        (4, "Price", "free", "not a number (unit_price)"),
        (6, "Quantity", "2x", "not a number (quantity)"),
        (7, "Price", "inf", "not a finite number (unit_price)"),
    ]
    assert stored(store, "source_row, quantity, unit_price") == [(3, 12.0, 6.75), (5, 10.0, 5.95)]


def test_latin1_read_as_utf8_is_refused_with_the_line_and_a_hint(store):
    before = snapshot(store)
    with pytest.raises(SourceError) as err:
        run(store, "latin1_encoding.csv")
    msg = str(err.value)
    assert "latin1_encoding.csv" in msg and "line 2" in msg and "UTF-8" in msg and "--encoding latin-1" in msg
    assert snapshot(store) == before


def test_latin1_with_encoding_option_loads_everything(store):
    report = run(store, "latin1_encoding.csv", encoding="latin-1")
    assert totals(report) == (3, 3, 0, 0)
    assert stored(store, "source_row, description, unit_price") == [
        (2, "CAFÉ CRÈME MUG", 6.95), (3, "TEA TOWEL", 2.55), (4, "DOOR MAT", 5.95)]


def test_utf16_file_keeps_its_column_names(store, tmp_path):
    path = tmp_path / "utf16.csv"
    path.write_bytes((BAD / "latin1_encoding.csv").read_bytes().decode("latin-1").encode("utf-16"))
    report = ingest(store, [path], Options(encoding="utf-16"))
    assert totals(report) == (3, 3, 0, 0)
    assert report.files[0].mapping["customer_id"] == "Customer ID"  # was '\x00C\x00u...' (header read as UTF-8)
    assert stored(store, "description") == [("CAFÉ CRÈME MUG",), ("TEA TOWEL",), ("DOOR MAT",)]


def test_utf8_file_read_as_utf16_is_refused_not_read_as_no_rows(seeded):
    """It was read as one line of garbage: 0 rows read, 0 loaded, exit code 0."""
    assert_error(seeded, "semicolon.csv", "not readable as utf-16", "--encoding utf-8", encoding="utf-16")
    assert_error(seeded, "semicolon.csv", "unknown encoding 'klingon'", encoding="klingon")


@pytest.mark.parametrize("options, fragment", [
    ({"date_format": "%Q"}, "--date-format '%Q': .*%Q"),
    ({"date_format": "%d/%m/%"}, "--date-format '%d/%m/%'"),
    ({"date_format": "dd/mm/yyyy"}, "--date-format 'dd/mm/yyyy': give strptime codes"),
    ({"delimiter": ";;"}, "--delimiter ';;': give one character"),
    ({"delimiter": ""}, "--delimiter '': give one character"),
])
def test_unusable_date_format_or_delimiter_is_a_one_line_error(seeded, options, fragment):
    """A bad strptime code and a two-character delimiter were tracebacks from DuckDB and the csv module."""
    before = snapshot(seeded)
    with pytest.raises(LoyalistError) as info:
        ingest(seeded, [BAD / "semicolon.csv"], Options(**options))
    assert "\n" not in str(info.value) and re.search(fragment, str(info.value)), str(info.value)
    assert snapshot(seeded) == before


def test_tab_delimiter_spelled_backslash_t(store, tmp_path):
    path = tmp_path / "tabs.txt"
    path.write_text((BAD / "tab_delimited.tsv").read_text())
    for spelling in ("\\t", "tab"):
        report = ingest(store, [path], Options(delimiter=spelling))
        assert report.files[0].mapping["customer_id"] == "Customer ID"
    assert totals(report) == (2, 0, 2, 0)


def test_header_only_file_loads_nothing(store):
    report = run(store, "header_only.csv")
    assert totals(report) == (0, 0, 0, 0)
    assert report.files[0].mapping["customer_id"] == "Customer ID"
    assert stored(store) == [] and quarantined(store) == []


def test_too_many_fields_is_quarantined_with_its_line(store):
    report = run(store, "too_many_fields.csv")
    assert totals(report) == (3, 2, 0, 1)
    [(row, _, value, rule)] = quarantined(store)
    assert row == 3 and "EXTRA,FIELDS" in value and re.search(r"(?i)too many|columns|fields", rule)
    assert stored(store) == [(2,), (4,)]


def test_too_few_fields_is_quarantined_with_its_line(store):
    report = run(store, "too_few_fields.csv")
    assert totals(report) == (3, 2, 0, 1)
    assert quarantined(store) == [(3, "Price", "489436,48173C,MAT,10,2009-12-01 09:06:00",
                                   "MISSING COLUMNS: Expected Number of Columns: 8 Found: 5")]
    assert stored(store) == [(2,), (4,)]


def test_multiline_quoted_field_keeps_file_line_numbers(store):
    report = run(store, "multiline_quoted_field.csv")
    assert totals(report) == (3, 2, 0, 1)
    assert [(r, c, v) for r, c, v, _ in quarantined(store)] == [(4, "InvoiceDate", "notadate")]
    assert stored(store) == [(2,), (5,)]


def test_multiline_quoted_field_value_is_kept(store):
    run(store, "multiline_quoted_field.csv")
    assert ("MUG\nWITH A LINE BREAK",) in stored(store, "description")


def test_date_beyond_2200_is_quarantined(store):
    report = run(store, "year_beyond_2200.csv")
    assert totals(report) == (3, 2, 0, 1)
    assert quarantined(store) == [(3, "InvoiceDate", "2209-12-01 07:45:00", "date out of range (order_date)")]
    assert stored(store) == [(2,), (4,)]


def test_two_digit_years_are_read_as_this_century(store):
    report = run(store, "two_digit_years.csv")
    assert totals(report) == (2, 2, 0, 0)
    assert stored(store, "source_row, order_date") == [(2, D(2010, 12, 31)), (3, D(2011, 2, 1))]


def test_two_digit_years_rows_are_all_accounted_for(store):
    report = run(store, "two_digit_years.csv")
    assert totals(report)[0] == 2 and report.files[0].balanced()


# ---------------------------------------------------------------------- guests and flags


def test_guest_lines_are_kept_and_flagged_by_default(store):
    report = run(store, "guest_lines.csv")
    assert totals(report) == (5, 5, 0, 0)
    assert stored(store, "source_row, customer_id, is_guest") == [
        (2, "13085", False), (3, None, True), (4, None, True), (5, None, True), (6, "15362", False)]


def test_guest_lines_quarantined_when_asked(store):
    report = run(store, "guest_lines.csv", guests="quarantine")
    assert totals(report) == (5, 2, 0, 3)
    assert quarantined(store) == [
        (3, "Customer ID", None, "blank customer id (guest order)"),
        (4, "Customer ID", "   ", "blank customer id (guest order)"),
        # The CSV reader reads the usual spellings of "no value" ('nan', 'NULL', 'N/A') as NULL.
        (5, "Customer ID", None, "blank customer id (guest order)"),
    ]
    assert stored(store) == [(2,), (6,)]


def test_quarantined_rows_keep_the_source_text(store, tmp_path):
    """Columns the CSV reader types itself were kept as it typed them: '2.0' for '2', '2009-12-05 00:00:00' for
    '05/12/2009' in the record, and '2250-01-01 00:00:00' as the value of a date out of range."""
    path = tmp_path / "day_first.csv"
    path.write_text("Invoice,Customer ID,InvoiceDate,StockCode,Quantity,Price\n"
                    "1,C1,05/12/2009,P1,2,1.50\n2,,06/12/2009,P2,3,2\n3,C3,01/01/2250,P3,1,0.5\n")
    report = ingest(store, [path], Options(guests="quarantine"))
    assert totals(report) == (3, 1, 0, 2) and report.files[0].date_format == "%d/%m/%Y"
    rows = store.con.execute('SELECT "row", "column", value, rule, record FROM quarantine ORDER BY "row"').fetchall()
    assert [r[:4] for r in rows] == [(3, "Customer ID", None, "blank customer id (guest order)"),
                                     (4, "InvoiceDate", "01/01/2250", "date out of range (order_date)")]
    assert [json.loads(r[4]) for r in rows] == [
        {"Invoice": "2", "Customer ID": None, "InvoiceDate": "06/12/2009", "StockCode": "P2", "Quantity": "3",
         "Price": "2"},
        {"Invoice": "3", "Customer ID": "C3", "InvoiceDate": "01/01/2250", "StockCode": "P3", "Quantity": "1",
         "Price": "0.5"}]


@pytest.mark.parametrize("suffix", ["parquet", "xlsx"])
def test_unreadable_date_in_parquet_or_excel_is_unparseable_not_missing(store, tmp_path, suffix):
    import pandas as pd

    frame = pd.DataFrame({"Invoice": ["1", "2", "3"], "Customer ID": ["C1", "C2", "C3"],
                          "InvoiceDate": ["2023-01-05", "yesterday", None], "Quantity": [1, 2, 3]})
    path = tmp_path / f"orders.{suffix}"
    frame.to_parquet(path) if suffix == "parquet" else frame.to_excel(path, index=False)
    report = ingest(store, [path])
    assert totals(report) == (3, 1, 0, 2)
    first = 1 if suffix == "parquet" else 2  # Parquet rows from 1; spreadsheet rows (header on row 1)
    assert quarantined(store) == [  # 'yesterday' was quarantined as 'missing order_date'
        (first + 1, "InvoiceDate", "yesterday", "unparseable date (order_date; expected ISO 8601)"),
        (first + 2, "InvoiceDate", None, "missing order_date")]


def test_future_dates_are_loaded_and_flagged(store):
    report = run(store, "future_dates.csv")
    assert totals(report) == (2, 2, 0, 0)
    assert stored(store, "source_row, order_date, is_future") == [
        (2, D(2009, 12, 1, 7, 45), False), (3, D(2099, 12, 1, 7, 45), True)]


def test_zero_and_negative_prices_are_loaded_and_flagged(store):
    report = run(store, "zero_negative_prices.csv")
    assert totals(report) == (3, 3, 0, 0)
    assert stored(store, "source_row, unit_price, price_issue, is_non_product") == [
        (2, 6.95, None, False), (3, 0.0, "zero", False), (4, -53594.36, "negative", True)]


def test_non_product_lines_are_loaded_and_flagged(store):
    report = run(store, "non_product_lines.csv")
    assert totals(report) == (4, 4, 0, 0)
    assert stored(store, "product_id, is_non_product") == [
        ("85048", False), ("POST", True), ("M", True), ("BANK CHARGES", True)]


def test_cancellations_are_flagged(store):
    report = run(store, "cancellations.csv")
    assert totals(report) == (2, 2, 0, 0)
    assert stored(store, "order_id, quantity, is_cancellation, is_return") == [
        ("489434", 12.0, False, False), ("C489449", -12.0, True, True)]


def test_exact_duplicate_line_inside_one_file_is_kept_twice(store):
    report = run(store, "duplicate_line.csv")
    assert totals(report) == (3, 3, 0, 0)
    assert stored(store, "source_row, product_id") == [(2, "85048"), (3, "79323P"), (4, "85048")]
    again = run(store, "duplicate_line.csv")
    assert totals(again) == (3, 0, 3, 0)


def test_ids_that_went_through_a_float_lose_the_fraction(store):
    report = run(store, "float_ids.csv")
    assert totals(report) == (3, 3, 0, 0)
    assert stored(store, "customer_id") == [("13085",), ("13085",), ("12346",)]


def test_currency_symbols_and_thousand_separators(store):
    report = run(store, "currency_thousands.csv")
    assert totals(report) == (3, 3, 0, 0)
    assert stored(store, "quantity, unit_price, amount") == [
        (12.0, 1234.5, 12 * 1234.5), (1200.0, 6.75, 1200 * 6.75), (12.0, 2.55, 12 * 2.55)]


def test_decimal_comma_is_quarantined_not_guessed(store):
    """'2,95' could be 2.95 or 295 and '1.234,50' is European; neither is guessed."""
    report = run(store, "decimal_comma.csv")
    assert totals(report) == (2, 0, 0, 2)
    assert report.files[0].date_format == "%d.%m.%Y %H:%M"
    assert quarantined(store) == [(2, "Price", "2,95", "not a number (unit_price)"),
                                  (3, "Price", "1.234,50", "not a number (unit_price)")]


# ------------------------------------------------------------------------- layouts and formats


def test_semicolon_delimited(store):
    report = run(store, "semicolon.csv")
    assert totals(report) == (2, 2, 0, 0)
    assert stored(store, "customer_id, description, unit_price") == [
        ("13085", "MUG", 6.95), ("12682", "MUG, LARGE", 6.75)]


def test_tab_delimited_tsv(store):
    report = run(store, "tab_delimited.tsv")
    assert totals(report) == (2, 2, 0, 0)
    assert stored(store, "customer_id, description, quantity") == [
        ("13085", "MUG, LARGE", 12.0), ("12682", "MUG", 6.0)]


def test_whitespace_aligned_without_header_needs_a_mapping(seeded):
    assert_error(seeded, "whitespace_aligned.txt", "no column for required field 'customer_id'",
                 "columns: column0, column1, column2, column3", "--map customer_id=COLUMN")


def test_whitespace_aligned_with_mapping(store):
    report = run(store, "whitespace_aligned.txt", mapping={
        "customer_id": "column0", "order_date": "column1", "quantity": "column2", "amount": "column3"})
    assert report.files[0].date_format == "%Y%m%d"
    assert totals(report) == (4, 4, 0, 0)
    assert stored(store, "source_row, customer_id, order_date, quantity, amount") == [
        (1, "00001", D(1997, 1, 1), 1.0, 11.77), (2, "00002", D(1997, 1, 12), 1.0, 12.0),
        (3, "00002", D(1997, 1, 12), 5.0, 77.0), (4, "00003", D(1997, 1, 2), 2.0, 20.76)]


def test_day_first_dates(store):
    report = run(store, "day_first_dates.csv")
    assert report.files[0].date_format == "%d/%m/%Y %H:%M"
    assert stored(store, "order_date") == [(D(2010, 12, 31, 14, 5),), (D(2011, 2, 1, 9, 30),),
                                           (D(2011, 1, 13, 17, 0),)]


def test_yyyymmdd_dates(store):
    report = run(store, "yyyymmdd_dates.csv")
    assert report.files[0].date_format == "%Y%m%d"
    assert totals(report) == (3, 3, 0, 0)
    assert stored(store, "customer_id, order_date, unit_price") == [
        ("00001", D(1997, 1, 1), 11.77), ("00002", D(1997, 1, 12), 77.0 / 5), ("00003", D(1997, 12, 31), 20.76 / 2)]


def test_flags_are_never_null_without_a_product_column(store):
    run(store, "yyyymmdd_dates.csv")
    flags = stored(store, "is_guest, is_cancellation, is_return, is_non_product, is_future")
    assert all(v is not None for row in flags for v in row), flags


def test_timezone_offsets_are_honoured(store):
    run(store, "timezone_offsets.csv")
    assert stored(store, "order_date") == [(D(2010, 12, 1, 8, 0),), (D(2010, 12, 1, 8, 0),)]


def test_utf8_bom_and_crlf(store):
    report = run(store, "utf8_bom_crlf.csv")
    assert totals(report) == (1, 1, 0, 0)
    assert report.files[0].mapping["order_id"] == "Invoice"
    assert stored(store, "source_row, customer_id, country") == [(2, "13085", "United Kingdom")]


# ------------------------------------------------------------------ invoices and customer attributes


def test_invoice_due_before_issue_is_quarantined(store):
    report = run(store, "invoice_due_before_issue.csv", kind=Kind.invoices)
    assert totals(report) == (3, 2, 0, 1)
    assert quarantined(store) == [(3, "DueDate", "2023-01-01", "due date before invoice date")]
    assert stored(store, "invoice_id, due_date, paid_date", "invoices") == [
        ("INV-001", dt.date(2023, 2, 9), dt.date(2023, 2, 1)), ("INV-003", dt.date(2023, 3, 3), None)]


def test_invoice_key_repeated_with_different_values(store):
    report = run(store, "invoice_repeated_key.csv", kind=Kind.invoices)
    assert totals(report) == (4, 2, 1, 1)
    assert quarantined(store) == [
        (2, "InvoiceNo", "INV-001", "superseded by a later row with the same invoice_id (row 4)")]
    assert stored(store, "source_row, invoice_id, paid_date", "invoices") == [
        (4, "INV-001", dt.date(2023, 2, 1)), (5, "INV-002", None)]


def test_customer_attributes(store):
    report = run(store, "customer_attributes.csv", kind=Kind.customers)
    assert totals(report) == (4, 3, 0, 1)
    assert report.files[0].mapping == {"customer_id": "Customer ID", "industry": "Industry", "region": "Region",
                                       "size": "Size", "signup_date": "Customer Since"}
    assert [(r, c, v) for r, c, v, _ in quarantined(store)] == [(5, "Customer ID", None)]
    assert stored(store, "customer_id, industry, region, size, signup_date", "customers") == [
        ("13085", "Retail", "North", "Small", dt.date(2009, 1, 15)),
        ("13078", "Wholesale", "South", "Large", dt.date(2008, 6, 30)),
        ("12682", "Retail", None, "Medium", None)]


def test_customer_attributes_blank_key_rule(store):
    run(store, "customer_attributes.csv", kind=Kind.customers)
    [(_, _, _, rule)] = quarantined(store)
    assert "guest" not in rule


# ------------------------------------------------------------------------------------------- CLI


def cli(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loyalist.cli", "ingest", *args, "--db", str(tmp_path / "c.duckdb")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("name, fragment", [
    ("random_bytes.csv", "random_bytes.csv"),
    ("truncated.csv.gz", "cannot read"),
    ("corrupt.xlsx", "cannot read as a spreadsheet"),
    ("empty.csv", "the file is empty"),
    ("no_customer_column.csv", "no column for required field 'customer_id'"),
])
def test_cli_error_is_one_line_without_traceback(tmp_path, name, fragment):
    result = cli(tmp_path, str(BAD / name), "--json")
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: ") and str(BAD / name) in errors[0] and fragment in errors[0]
    assert result.stdout == ""


def test_cli_quarantine_run_succeeds_and_counts_add_up(tmp_path):
    import json

    result = cli(tmp_path, str(BAD / "bad_numbers.csv"), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["rows_read"], out["loaded"], out["duplicates"], out["quarantined"]) == (6, 2, 0, 4)


def test_cli_wrong_encoding_option_is_one_line(tmp_path):
    result = cli(tmp_path, str(BAD / "latin1_encoding.csv"), "--encoding", "utf-16")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "latin1_encoding.csv" in errors[0] and "utf-16" in errors[0], result.stderr


def test_error_types():
    assert issubclass(SourceError, LoyalistError)
