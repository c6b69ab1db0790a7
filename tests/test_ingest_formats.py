"""The same transactions arrive identically from CSV, TSV, gzip, Parquet and Excel; settings and keyed kinds."""

from __future__ import annotations

import gzip
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from loyalist.cli import app
from loyalist.ingest import Options, ingest
from loyalist.schema import Kind
from loyalist.store import open_store

ROWS = [
    # InvoiceNo, CustomerID, InvoiceDate, SKU, Qty, UnitPrice
    ("1001", "A1", "2023-01-05 10:00:00", "P1", "2", "3.50"),
    ("1001", "A1", "2023-01-05 10:00:00", "P2", "1", "10"),
    ("1002", "B2", "2023-02-11 09:30:00", "P1", "5", "3.50"),
    ("C1003", "B2", "2023-02-12 09:30:00", "P1", "-1", "3.50"),
    ("1004", "", "2023-03-01 12:00:00", "POST", "1", "18"),
]
COLUMNS = ["InvoiceNo", "CustomerID", "InvoiceDate", "SKU", "Qty", "UnitPrice"]


def _frame() -> pd.DataFrame:
    return pd.DataFrame(ROWS, columns=COLUMNS)


def _stored(store) -> list[tuple]:
    return store.con.execute("""SELECT customer_id, order_id, order_date, product_id, quantity, unit_price, amount,
                                       is_guest, is_cancellation, is_return, is_non_product
                                FROM transactions ORDER BY file_id, order_date, product_id""").fetchall()


def _write(fmt: str, tmp_path):
    df = _frame()
    if fmt == "csv":
        p = tmp_path / "t.csv"
        df.to_csv(p, index=False)
    elif fmt == "tsv":
        p = tmp_path / "t.tsv"
        df.to_csv(p, index=False, sep="\t")
    elif fmt == "semicolon":
        p = tmp_path / "t.txt"
        df.to_csv(p, index=False, sep=";")
    elif fmt == "gz":
        p = tmp_path / "t.csv.gz"
        with gzip.open(p, "wt") as fh:
            df.to_csv(fh, index=False)
    elif fmt == "parquet":
        p = tmp_path / "t.parquet"
        typed = df.assign(InvoiceDate=pd.to_datetime(df.InvoiceDate), Qty=df.Qty.astype(int),
                          UnitPrice=df.UnitPrice.astype(float), CustomerID=df.CustomerID.replace("", None))
        typed.to_parquet(p, index=False)
    else:
        p = tmp_path / "t.xlsx"
        typed = df.assign(InvoiceDate=pd.to_datetime(df.InvoiceDate), Qty=df.Qty.astype(int),
                          UnitPrice=df.UnitPrice.astype(float))
        with pd.ExcelWriter(p, engine="openpyxl") as xw:
            typed.iloc[:3].to_excel(xw, sheet_name="Jan-Feb", index=False)
            typed.iloc[3:].to_excel(xw, sheet_name="Mar", index=False)
    return p


@pytest.mark.parametrize("fmt", ["csv", "tsv", "semicolon", "gz", "parquet", "xlsx"])
def test_every_format_stores_the_same_rows(fmt, tmp_path):
    store = open_store(tmp_path / "s.duckdb")
    report = ingest(store, [_write(fmt, tmp_path)])
    t = report.totals()
    assert (t["rows_read"], t["loaded"], t["quarantined"]) == (5, 5, 0)
    rows = _stored(store)
    assert [r[0] for r in rows] == ["A1", "A1", "B2", "B2", None]
    assert [r[4] for r in rows] == [2, 1, 5, -1, 1]
    assert [r[6] for r in rows] == pytest.approx([7.0, 10.0, 17.5, -3.5, 18.0])
    assert [r[7:] for r in rows] == [(False, False, False, False), (False, False, False, False),
                                     (False, False, False, False), (False, True, True, False),
                                     (True, False, False, True)]
    assert str(rows[0][2]) == "2023-01-05 10:00:00"
    if fmt == "xlsx":
        assert [f.source.split("[")[-1] for f in report.files] == ["Jan-Feb]", "Mar]"]


def test_excel_quarantine_names_sheet_and_spreadsheet_row(tmp_path):
    store = open_store(tmp_path / "s.duckdb")
    ingest(store, [_write("xlsx", tmp_path)], Options(guests="quarantine"))
    rows = store.con.execute('SELECT source, "row", "column", rule FROM quarantine').fetchall()
    assert rows == [(f"{tmp_path / 't.xlsx'}[Mar]", 3, "CustomerID", "blank customer id (guest order)")]


def test_same_data_from_two_formats_is_a_duplicate(tmp_path):
    store = open_store(tmp_path / "s.duckdb")
    ingest(store, [_write("csv", tmp_path)])
    again = ingest(store, [_write("parquet", tmp_path)])
    assert again.totals()["duplicates"] == 5 and again.totals()["loaded"] == 0


def test_guests_can_be_quarantined(tmp_path):
    store = open_store(tmp_path / "s.duckdb")
    report = ingest(store, [_write("csv", tmp_path)], Options(guests="quarantine"))
    assert report.totals()["quarantined"] == 1 and report.totals()["loaded"] == 4
    row = store.con.execute('SELECT "row", "column", rule FROM quarantine').fetchall()
    assert row == [(6, "CustomerID", "blank customer id (guest order)")]


def test_explicit_map_and_date_format(tmp_path):
    p = tmp_path / "erp.csv"
    p.write_text("Acct;Posted;Item;Units;Net\nK-1;03/02/2021;X;2;9,50\nK-2;13/02/2021;Y;1;4\n")
    store = open_store(tmp_path / "s.duckdb")
    opts = Options(mapping={"customer_id": "Acct", "order_date": "Posted", "product_id": "Item",
                            "quantity": "Units", "amount": "Net"}, date_format="%d/%m/%Y")
    p.write_text("Acct;Posted;Item;Units;Net\nK-1;03/02/2021;X;2;9,50\nK-2;13/02/2021;Y;1;1,234.50\n")
    report = ingest(store, [p], opts)
    # '9,50' could be 9.5 or 950: never guessed, quarantined with its reason. '1,234.50' is unambiguous.
    assert (report.totals()["loaded"], report.totals()["quarantined"]) == (1, 1)
    assert store.con.execute('SELECT "row", "column", value, rule FROM quarantine').fetchall() == [
        (2, "Net", "9,50", "not a number (amount)")]
    assert store.con.execute("SELECT order_date::DATE::VARCHAR, amount FROM transactions").fetchall() == [
        ("2021-02-13", 1234.5)]


def test_day_first_dates_are_detected(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("Customer,Date,Amount\na,05/01/2022,1\nb,25/12/2022,2\n")
    store = open_store(tmp_path / "s.duckdb")
    report = ingest(store, [p])
    assert report.files[0].date_format == "%d/%m/%Y"
    assert store.con.execute("SELECT max(order_date)::DATE::VARCHAR FROM transactions").fetchall()[0][0] == "2022-12-25"


def test_config_file_supplies_mapping(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "loyalist.toml").write_text(
        'db = "shop.duckdb"\n[ingest]\nguests = "quarantine"\n[ingest.map]\ncustomer_id = "Who"\norder_date = "When"\n')
    (tmp_path / "x.csv").write_text("Who,When,What\nann,2024-05-01,tea\n,2024-05-02,milk\n")
    res = CliRunner().invoke(app, ["ingest", "x.csv", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["loaded"], doc["quarantined"]) == (1, 1)
    assert (tmp_path / "shop.duckdb").exists()


def test_invoices_update_by_key(tmp_path):
    first = tmp_path / "inv1.csv"
    first.write_text("InvoiceNo,Customer,InvoiceDate,DueDate,Amount,PaidDate\n"
                     "I1,A,2024-01-01,2024-01-31,100,\nI2,A,2024-02-01,2024-03-02,50,2024-02-20\n")
    second = tmp_path / "inv2.csv"
    second.write_text("InvoiceNo,Customer,InvoiceDate,DueDate,Amount,PaidDate\n"
                      "I1,A,2024-01-01,2024-01-31,100,2024-02-15\nI2,A,2024-02-01,2024-03-02,50,2024-02-20\n")
    store = open_store(tmp_path / "s.duckdb")
    r1 = ingest(store, [first], Options(kind=Kind.invoices))
    r2 = ingest(store, [second], Options(kind=Kind.invoices))
    assert r1.totals()["loaded"] == 2
    assert (r2.totals()["loaded"], r2.totals()["updated"], r2.totals()["duplicates"]) == (1, 1, 1)
    rows = store.con.execute("SELECT invoice_id, paid_date::VARCHAR FROM invoices ORDER BY 1").fetchall()
    assert rows == [("I1", "2024-02-15"), ("I2", "2024-02-20")]


def test_products_and_customers_attributes(tmp_path):
    p = tmp_path / "products.csv"
    p.write_text("SKU,Category,Cost\nP1,Tea,1.2\nP2,Cups,4\n")
    c = tmp_path / "customers.csv"
    c.write_text("CustomerID,Industry,Region,Customer Since\nA1,Cafe,North,2019-04-01\n")
    store = open_store(tmp_path / "s.duckdb")
    assert ingest(store, [p], Options(kind=Kind.products)).totals()["loaded"] == 2
    assert ingest(store, [c], Options(kind=Kind.customers)).totals()["loaded"] == 1
    assert store.con.execute("SELECT category, unit_cost FROM products ORDER BY product_id").fetchall() == [
        ("Tea", 1.2), ("Cups", 4.0)]
    assert store.con.execute("SELECT industry, signup_date::VARCHAR FROM customers").fetchall() == [
        ("Cafe", "2019-04-01")]


@pytest.mark.parametrize("suffix", ["csv", "xlsx", "parquet", "json"])
def test_quality_report_and_quarantine_export(tmp_path, suffix):
    db = str(tmp_path / "s.duckdb")
    store = open_store(db)
    ingest(store, [_write("csv", tmp_path)], Options(guests="quarantine"))
    store.close()
    runner = CliRunner()
    out = tmp_path / f"q.{suffix}"
    res = runner.invoke(app, ["quality", "--db", db, "--export", str(out), "--json"])
    assert res.exit_code == 0, res.output
    findings = {f["check"]: f for f in json.loads(res.stdout)["findings"]}
    assert findings["quarantined: blank customer id (guest order)"]["lines"] == 1
    assert findings["returns / cancellations with a matching earlier purchase"]["lines"] == 1
    assert findings["non-product lines (postage, fees, manual adjustments, vouchers)"]["lines"] == 0
    frame = {"csv": pd.read_csv, "xlsx": pd.read_excel, "parquet": pd.read_parquet, "json": pd.read_json}[suffix](out)
    assert len(frame) == 1
    row = frame.iloc[0]
    assert (int(row["row"]), row["column"], row["rule"]) == (6, "CustomerID", "blank customer id (guest order)")
    assert json.loads(row["record"])["SKU"] == "POST"


def test_quarantine_shares_are_of_all_rows_read(tmp_path):
    p = tmp_path / "mixed.csv"
    p.write_text("order,customer,date,product,qty,price\nO1,C1,2023-01-05,P1,2,1.5\nO2,C2,2023-01-06,P2,two,2\n"
                 "O3,C1,2023-01-07,P1,1,abc\nO4,C3,2023-01-08,P3,3.5,4\nO5,C4,2023-01-09,P3,1,\n")
    store = open_store(tmp_path / "s.duckdb")
    assert ingest(store, [p]).totals()["quarantined"] == 2
    from loyalist import quality

    shares = {f.check: f.share_of_lines for f in quality.quality(store) if f.check.startswith("quarantined")}
    # one row of five read for each rule (was 1 / (3 stored + 1) = 25%)
    assert shares == {"quarantined: not a number (quantity)": 0.2, "quarantined: not a number (unit_price)": 0.2}


def test_cli_counts_one_quarantined_row_in_the_singular(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("Customer,Date,Amount\na,2023-01-05,1\nb,notadate,2\n")
    res = CliRunner().invoke(app, ["ingest", str(p), "--db", str(tmp_path / "s.duckdb")])
    assert res.exit_code == 0 and "1 row quarantined: see `loyalist quality`" in res.stdout, res.output
    help_text = " ".join(CliRunner().invoke(app, ["status", "--help"]).stdout.split())
    assert "quarantined rows, last ingest" in help_text and "quality counts" not in help_text


def test_quality_format_without_export_is_refused(tmp_path):
    db = str(tmp_path / "s.duckdb")
    open_store(db).close()
    res = CliRunner().invoke(app, ["quality", "--db", db, "--format", "xlsx"])  # was ignored: the table printed
    assert res.exit_code == 1 and "--format xlsx: give the file to write with --export FILE" in res.output


def test_quarantine_export_to_an_impossible_folder_is_one_line(tmp_path):
    db = str(tmp_path / "s.duckdb")
    store = open_store(db)
    ingest(store, [_write("csv", tmp_path)], Options(guests="quarantine"))
    store.close()
    (tmp_path / "afile").write_text("")
    res = CliRunner().invoke(app, ["quality", "--db", db, "--export", str(tmp_path / "afile" / "q.csv")])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.exception  # not a traceback
    assert "cannot write" in res.output and "afile" in res.output


def test_cli_shows_names_with_brackets_and_the_notes(tmp_path):
    """Sheet names, paths and texts in [brackets] were read as rich markup and vanished from the output
    ('data.xlsx[sales]' printed as 'data.xlsx'), and the per-file notes were only in --json."""
    book = tmp_path / "[2024] book.xlsx"
    with pd.ExcelWriter(book) as w:
        _frame().to_excel(w, sheet_name="sales", index=False)
    shop = tmp_path / "orders.csv"
    shop.write_text("Name,Email,Created at,Lineitem quantity,Lineitem price,Lineitem sku,Total\n"
                    "#1,a@x.com,2023-01-05,2,4.50,T,14.00\n#1,a@x.com,2023-01-05,1,5.00,M,\n"
                    "#2,b@x.com,2023-01-06,3,4.50,T,13.50\n#3,c@x.com,2023-01-07,1,5.00,M,9.50\n"
                    "#3,c@x.com,2023-01-07,1,4.50,T,\n#4,d@x.com,2023-01-08,1,5.00,M,9.50\n#4,d@x.com,2023-01-08,1,4.50,T,\n")
    db = str(tmp_path / "s.duckdb")
    res = CliRunner().invoke(app, ["ingest", str(book), str(shop), "--db", db])
    assert res.exit_code == 0, res.output
    assert f"{book}[sales]" in res.stdout.replace("\n", "")
    assert "note: column 'Total' holds order totals" in res.stdout
    res = CliRunner().invoke(app, ["quality", "--db", db])
    assert "loyalist.toml [ingest]" in res.stdout
    res = CliRunner().invoke(app, ["ingest", str(tmp_path / "[old]" / "x.csv"), "--db", db])
    assert res.exit_code == 1 and f"error: {tmp_path / '[old]' / 'x.csv'}: no such file" in res.output


def test_shopify_orders_export(tmp_path):
    """A Shopify orders export: one row per line item, order-level Total on the first row only, UTC offsets."""
    p = tmp_path / "orders_export.csv"
    p.write_text(
        "Name,Email,Financial Status,Created at,Lineitem quantity,Lineitem name,Lineitem price,Lineitem sku,"
        "Total,Currency,Billing Country\n"
        "#1001,ann@example.com,paid,2023-01-05 10:31:07 -0500,2,Green tea,4.50,TEA-G,14.00,USD,US\n"
        "#1001,ann@example.com,,2023-01-05 10:31:07 -0500,1,Mug,5.00,MUG-1,,USD,US\n"
        "#1002,bob@example.com,paid,2023-01-06 09:00:00 +0100,3,Green tea,4.50,TEA-G,13.50,EUR,FR\n"
        "#1003,cy@example.com,paid,2023-01-07 12:00:00 +0000,1,Mug,5.00,MUG-1,16.00,USD,US\n"
        "#1003,cy@example.com,,2023-01-07 12:00:00 +0000,2,Green tea,4.50,TEA-G,,USD,US\n"
        "#1004,dee@example.com,paid,2023-01-08 12:00:00 +0000,1,Mug,5.00,MUG-1,9.50,USD,US\n"
        "#1004,dee@example.com,,2023-01-08 12:00:00 +0000,1,Green tea,4.50,TEA-G,,USD,US\n")
    store = open_store(tmp_path / "s.duckdb")
    report = ingest(store, [p])
    f = report.files[0]
    assert f.mapping == {"customer_id": "Email", "order_id": "Name", "order_date": "Created at",
                         "product_id": "Lineitem sku", "description": "Lineitem name",
                         "quantity": "Lineitem quantity", "unit_price": "Lineitem price", "currency": "Currency",
                         "country": "Billing Country"}
    rows = store.con.execute("SELECT customer_id, order_id, order_date::VARCHAR, product_id, amount, currency "
                             "FROM transactions ORDER BY order_date, product_id").fetchall()
    assert rows[:3] == [("ann@example.com", "#1001", "2023-01-05 15:31:07", "MUG-1", 5.0, "USD"),
                        ("ann@example.com", "#1001", "2023-01-05 15:31:07", "TEA-G", 9.0, "USD"),
                        ("bob@example.com", "#1002", "2023-01-06 08:00:00", "TEA-G", 13.5, "EUR")]
    assert [r[4] for r in rows[3:]] == [5.0, 9.0, 5.0, 4.5]
    assert "order totals" in report.files[0].notes[0]
    from loyalist import quality

    mixed = [x for x in quality.quality(store) if x.check.startswith("mixed currencies")][0]
    assert mixed.lines == 1 and "EUR" in mixed.check and "USD" in mixed.check
