"""File line numbers of stored and quarantined rows when records span lines or blank lines sit between them.

The expected line of each record is counted while the file is written (header = line 1; a record starts
on the line after everything written before it), independently of any CSV parser.
"""

from __future__ import annotations

import gzip

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loyalist.ingest import ingest
from loyalist.store import open_store

HEADER = "Invoice,StockCode,Description,Quantity,InvoiceDate,Price,Customer ID,Country"


def good(i: int, description: str) -> str:
    quoted = '"' + description.replace('"', '""') + '"'
    return f"{489000 + i},P{i},{quoted},{1 + i % 7},2010-01-{1 + i % 28:02d} 10:{i % 60:02d}:00,{1 + i % 5}.25,C{i % 9},UK"


def bad_date(i: int) -> str:
    return f"{489000 + i},P{i},BAD,1,notadate,1.25,C1,UK"


def too_few(i: int) -> str:
    return f"{489000 + i},P{i},SHORT"


def write(path, records: list[tuple[str, str, int]], newline: str = "\n") -> dict[str, list[int]]:
    """records: (kind, text, blank lines before it). Returns the expected start line of each kind of record."""
    lines = 1  # the header
    out = [HEADER]
    expected: dict[str, list[int]] = {"good": [], "bad_date": [], "too_few": []}
    for kind, text, blanks in records:
        out.extend([""] * blanks)
        lines += blanks
        expected[kind].append(lines + 1)
        out.append(text)
        lines += text.count("\n") + 1
    data = ("\n".join(out) + "\n").replace("\n", newline)  # line breaks inside fields too
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", newline="") as fh:
            fh.write(data)
    else:
        path.write_bytes(data.encode())
    return expected


def check(tmp_path, path, expected: dict[str, list[int]]) -> None:
    store = open_store(tmp_path / "s.duckdb")
    try:
        report = ingest(store, [path])
        [f] = report.files
        n = sum(len(v) for v in expected.values())
        assert (f.rows_read, f.loaded, f.duplicates, f.quarantined) == (
            n, len(expected["good"]), 0, len(expected["bad_date"]) + len(expected["too_few"]))
        assert not f.notes
        stored = [r[0] for r in store.con.execute("SELECT source_row FROM transactions ORDER BY 1").fetchall()]
        assert stored == expected["good"]
        q = store.con.execute('SELECT "row", rule FROM quarantine ORDER BY 1').fetchall()
        assert [r for r, rule in q if rule.startswith("unparseable date")] == expected["bad_date"]
        assert [r for r, rule in q if rule.startswith("MISSING COLUMNS")] == expected["too_few"]
    finally:
        store.close()


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("suffix", [".csv", ".csv.gz"])
def test_lines_after_multiline_fields_blank_lines_and_bad_rows(tmp_path, newline, suffix):
    records = [("good", good(0, "MUG\nWITH\nBREAKS"), 0), ("good", good(1, "TOWEL"), 1), ("too_few", too_few(2), 0),
               ("bad_date", bad_date(3), 0), ("good", good(4, 'A "quoted"\nname'), 2), ("good", good(5, "PLATE"), 0)]
    path = tmp_path / f"f{suffix}"
    expected = write(path, records, newline)
    assert expected == {"good": [2, 6, 11, 13], "bad_date": [8], "too_few": [7]}
    check(tmp_path, path, expected)


def test_single_line_records_need_no_renumbering(tmp_path):
    records = [("good", good(i, f"ITEM {i}"), 0) for i in range(5)] + [("too_few", too_few(5), 0)] + \
              [("good", good(i, f"ITEM {i}"), 0) for i in range(6, 9)]
    path = tmp_path / "f.csv"
    expected = write(path, records)
    assert expected["too_few"] == [7] and expected["good"][-1] == 10
    check(tmp_path, path, expected)


record = st.tuples(
    st.sampled_from(["good", "good", "good", "bad_date", "too_few"]),
    st.lists(st.sampled_from(["a", "b c", "\n", '"', ","]), max_size=4).map("".join),
    st.integers(0, 2),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(record, min_size=1, max_size=12).filter(  # most dates readable: the format is detected
    lambda specs: sum(k == "good" for k, _, _ in specs) > sum(k == "bad_date" for k, _, _ in specs)))
def test_every_record_keeps_its_first_file_line(tmp_path_factory, specs):
    tmp = tmp_path_factory.mktemp("lines")
    records = []
    for i, (kind, text, blanks) in enumerate(specs):
        body = good(i, f"D{i}{text}") if kind == "good" else bad_date(i) if kind == "bad_date" else too_few(i)
        records.append((kind, body, blanks))
    path = tmp / "f.csv"
    expected = write(path, records)
    check(tmp, path, expected)


@pytest.mark.parametrize("newline, trailing", [("\n", ""), ("\n", "\n"), ("\n", "\n\n\n"), ("\r\n", "\r\n\r\n")])
def test_blank_lines_at_the_end_change_nothing(tmp_path, newline, trailing):
    records = [("good", good(i, f"ITEM {i}"), 0) for i in range(3)] + [("bad_date", bad_date(3), 0)] + \
              [("good", good(4, "LAST"), 0)]
    path = tmp_path / "f.csv"
    expected = write(path, records, newline)
    path.write_bytes(path.read_bytes() + trailing.encode())
    assert expected == {"good": [2, 3, 4, 6], "bad_date": [5], "too_few": []}
    check(tmp_path, path, expected)


def test_keyed_kinds_keep_file_lines_too(tmp_path):
    from loyalist.ingest import Options
    from loyalist.schema import Kind

    path = tmp_path / "invoices.csv"
    path.write_text("InvoiceNo,CustomerID,InvoiceDate,DueDate,Amount,Note\n"          # 1
                    'I1,C1,2020-01-01,2020-01-31,10,"a\nb"\n'                          # 2-3
                    "I2,C2,2020-01-02,2020-02-01,xx,n\n"                               # 4 not a number
                    "\n"                                                               # 5
                    "I3,C3,2020-01-03\n"                                               # 6 too few fields
                    'I4,C4,2020-01-04,2020-02-04,12,"c\n\nd"\n'                        # 7-9
                    "I5,C5,2020-01-05,2020-01-01,13,n\n"                               # 10 due before invoice
                    "I6,C6,2020-01-06,2020-02-06,14,n\n")                              # 11
    store = open_store(tmp_path / "s.duckdb")
    try:
        report = ingest(store, [path], Options(kind=Kind.invoices))
        assert report.totals()["rows_read"] == 6 and report.files[0].balanced() and not report.files[0].notes
        assert store.con.execute("SELECT invoice_id, source_row FROM invoices ORDER BY 2").fetchall() == [
            ("I1", 2), ("I4", 7), ("I6", 11)]
        assert store.con.execute('SELECT "row", "column", value FROM quarantine ORDER BY 1').fetchall() == [
            (4, "Amount", "xx"), (6, "DueDate", "I3,C3,2020-01-03"), (10, "DueDate", "2020-01-01")]
    finally:
        store.close()
