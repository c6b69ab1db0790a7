"""The PostgreSQL source: COPY a table or a query to CSV, exactly, and fail with one clear line."""

from __future__ import annotations

import csv
import datetime as dt
import random
import socket
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from pg import pg_url  # noqa: F401

from loyalist.errors import SourceError
from loyalist.ingest.postgres import export_to_csv, mask_url, table_name_parts

N_ROWS = 3000
COLUMNS = ["customer_id", "order_id", "order_date", "product_id", "quantity", "unit_price", "note"]
TRICKY_NOTES = [
    "plain", "", "comma, inside", 'quote " inside', '""', "line\nbreak", "crlf\r\nline", "tab\there",
    "Zoë café — 東京 🎁", "  padded  ", "\\N", "NULL", "a,\"b\"\n,c", "'single'", "trailing comma,",
]


def _rows() -> list[tuple]:
    rnd = random.Random(20240131)
    rows = []
    start = dt.date(2022, 1, 1)
    for i in range(N_ROWS):
        rows.append((
            None if i % 97 == 5 else f"C{rnd.randrange(1, 400):05d}",
            100000 + i,
            None if i % 211 == 7 else start + dt.timedelta(days=rnd.randrange(0, 900)),
            f"P-{rnd.randrange(1, 120)}" if i % 13 else "Ünïcødé-ß",
            None if i % 53 == 3 else rnd.choice([1, 1, 2, 3, 12, -1]),
            None if i % 71 == 9 else (Decimal(rnd.randrange(1, 100000)) / 100).quantize(Decimal("0.01")),
            None if i % 5 == 0 else TRICKY_NOTES[i % len(TRICKY_NOTES)],
        ))
    return rows


def _as_csv(row: tuple) -> list[str]:
    """How the CSV reader sees a row: NULL (and the empty string) as '', everything else as text."""
    out = []
    for v in row:
        if v is None:
            out.append("")
        elif isinstance(v, dt.date):
            out.append(v.isoformat())
        else:
            out.append(str(v))
    return out


@pytest.fixture(scope="module")
def orders(pg_url: str) -> tuple[str, list[tuple]]:  # noqa: F811
    import psycopg

    rows = _rows()
    with psycopg.connect(pg_url) as conn:
        conn.execute("DROP SCHEMA IF EXISTS sales CASCADE")
        conn.execute("CREATE SCHEMA sales")
        conn.execute("""
            CREATE TABLE sales.orders (
                customer_id text, order_id bigint PRIMARY KEY, order_date date, product_id text,
                quantity integer, unit_price numeric(10, 2), note text)""")
        with conn.cursor() as cur, cur.copy(f"COPY sales.orders ({', '.join(COLUMNS)}) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
        conn.execute('CREATE TABLE public."Mixed Case ""Orders""" (id integer, "Amount €" numeric)')
        conn.execute('INSERT INTO public."Mixed Case ""Orders""" VALUES (1, 2.5), (2, NULL)')
        conn.execute("CREATE TABLE public.empty_orders (LIKE sales.orders)")
    return pg_url, rows


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        header, *data = list(csv.reader(f))
    return header, data


def _with_port_and_password(url: str, port: int, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, f"postgres:{password}@127.0.0.1:{port}", parts.path, "", ""))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.postgres
@pytest.mark.parametrize("name", ["sales.orders", "  Sales . ORDERS ", '"sales"."orders";'])
def test_table_round_trips_exactly(orders, tmp_path: Path, name: str) -> None:
    url, rows = orders
    dest = tmp_path / "orders.csv"
    assert export_to_csv(url, name, dest) == N_ROWS
    header, data = _read(dest)
    assert header == COLUMNS
    assert sorted(data, key=lambda r: int(r[1])) == [_as_csv(r) for r in rows]
    assert not list(tmp_path.glob("*.part"))


@pytest.mark.postgres
def test_query_round_trips_exactly(orders, tmp_path: Path) -> None:
    url, rows = orders
    dest = tmp_path / "sub" / "q.csv"
    query = """
        SELECT order_id, customer_id AS "Customer, ID", note, unit_price * quantity AS line_total
        FROM sales.orders
        WHERE note LIKE '%,%' OR note IS NULL  -- a comment with a ) parenthesis
        ORDER BY order_id;  -- and a trailing comment
    """
    expected = [[str(r[1]), r[0] or "", r[6] or "",
                 "" if r[4] is None or r[5] is None else str(r[5] * r[4])]
                for r in rows if r[6] is None or "," in r[6]]
    assert export_to_csv(url, query, dest) == len(expected) > 100
    header, data = _read(dest)
    assert header == ["order_id", "Customer, ID", "note", "line_total"]
    assert data == expected


@pytest.mark.postgres
def test_null_and_empty_string_are_distinct_in_the_file(orders, tmp_path: Path) -> None:
    url, _ = orders
    dest = tmp_path / "n.csv"
    query = "SELECT NULL::text AS a, ''::text AS b, 'x'::text AS c, now()::timestamptz(0) AS d"
    assert export_to_csv(url, query, dest) == 1
    lines = dest.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "a,b,c,d"
    assert lines[1].startswith(',"",x,') and lines[1].endswith("+00")  # timestamps in UTC


@pytest.mark.postgres
def test_quoted_identifiers_and_empty_tables(orders, tmp_path: Path) -> None:
    url, _ = orders
    dest = tmp_path / "m.csv"
    assert export_to_csv(url, 'public."Mixed Case ""Orders"""', dest) == 2
    assert _read(dest) == (["id", "Amount €"], [["1", "2.5"], ["2", ""]])
    assert export_to_csv(url, "empty_orders", dest) == 0
    assert _read(dest) == (COLUMNS, [])


@pytest.mark.postgres
def test_large_result_streams_and_counts(orders, tmp_path: Path) -> None:
    url, _ = orders
    dest = tmp_path / "big.csv"
    n = 300_000
    assert export_to_csv(url, f"SELECT g AS order_id, md5(g::text) AS h FROM generate_series(1, {n}) g", dest) == n
    with open(dest, "rb") as f:
        assert sum(1 for _ in f) == n + 1


@pytest.mark.postgres
def test_export_cannot_modify_the_source(orders, tmp_path: Path) -> None:
    url, _ = orders
    with pytest.raises(SourceError, match="read-only transaction"):
        export_to_csv(url, "WITH d AS (DELETE FROM sales.orders RETURNING *) SELECT * FROM d", tmp_path / "x.csv")
    assert export_to_csv(url, "sales.orders", tmp_path / "y.csv") == N_ROWS


def _assert_one_clean_line(message: str, secret: str) -> None:
    assert "\n" not in message and "\r" not in message
    assert secret not in message
    assert "postgres:***@127.0.0.1:" in message


@pytest.mark.postgres
def test_wrong_port(orders, tmp_path: Path) -> None:
    url, _ = orders
    port = _free_port()
    bad = _with_port_and_password(url, port, "s3cr3t-pw")
    dest = tmp_path / "x.csv"
    with pytest.raises(SourceError) as info:
        export_to_csv(bad, "sales.orders", dest)
    msg = str(info.value)
    _assert_one_clean_line(msg, "s3cr3t-pw")
    assert f":{port}/" in msg and "cannot connect" in msg and "refused" in msg.lower()
    assert not dest.exists() and not list(tmp_path.iterdir())


@pytest.mark.postgres
def test_missing_table(orders, tmp_path: Path) -> None:
    url, _ = orders
    port = urlsplit(url).port
    # Trust authentication ignores the password, so the URL still connects.
    with_pw = _with_port_and_password(url, port, "s3cr3t-pw")
    dest = tmp_path / "x.csv"
    with pytest.raises(SourceError) as info:
        export_to_csv(with_pw, "sales.no_such_table", dest)
    msg = str(info.value)
    _assert_one_clean_line(msg, "s3cr3t-pw")
    assert "table sales.no_such_table" in msg and 'relation "sales.no_such_table" does not exist' in msg
    assert not dest.exists() and not list(tmp_path.iterdir())


@pytest.mark.postgres
def test_syntax_error_in_query(orders, tmp_path: Path) -> None:
    url, _ = orders
    with_pw = _with_port_and_password(url, urlsplit(url).port, "s3cr3t-pw")
    dest = tmp_path / "x.csv"
    with pytest.raises(SourceError) as info:
        export_to_csv(with_pw, "SELECT order_id, FROM sales.orders WHERE", dest)
    msg = str(info.value)
    _assert_one_clean_line(msg, "s3cr3t-pw")
    assert "cannot read query: syntax error at or near \"FROM\" at character 18 of the query" in msg
    assert not dest.exists()


@pytest.mark.postgres
def test_missing_column_names_it(orders, tmp_path: Path) -> None:
    url, _ = orders
    with pytest.raises(SourceError, match='column "nope" does not exist at line 2, column 15 of the query'):
        export_to_csv(url, "SELECT 1\n  , 2 AS two, nope FROM sales.orders", tmp_path / "x.csv")


# --- no server needed ---

@pytest.mark.parametrize(("url", "masked"), [
    ("postgresql://bob:pa:ss@@db.example:5433/shop", "postgresql://bob:***@db.example:5433/shop"),
    ("postgres://bob@db/shop", "postgres://bob@db/shop"),
    ("postgresql://db/shop?user=bob&password=hunter2&sslmode=require",
     "postgresql://db/shop?user=bob&password=***&sslmode=require"),
    ("host=db user=bob password='a b c' dbname=shop", "host=db user=bob password=*** dbname=shop"),
    ("host=db password=hunter2", "host=db password=***"),
])
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


@pytest.mark.parametrize(("text", "parts"), [
    ("orders", ["orders"]),
    ("Sales.Orders", ["sales", "orders"]),
    ('"Sales"."Big ""Orders"""', ["Sales", 'Big "Orders"']),
    ("db.sales.orders;", ["db", "sales", "orders"]),
    ("SELECT * FROM orders", None),
    ("orders o", None),
    ("TABLE orders", None),
    ("a.b.c.d", None),
])
def test_table_name_parts(text: str, parts: list[str] | None) -> None:
    assert table_name_parts(text) == parts


def test_unreachable_server_names_the_url(tmp_path: Path) -> None:
    url = f"postgresql://u:topsecret@127.0.0.1:{_free_port()}/db"
    with pytest.raises(SourceError) as info:
        export_to_csv(url, "orders", tmp_path / "x.csv")
    msg = str(info.value)
    assert msg.startswith("postgresql://u:***@127.0.0.1:") and "topsecret" not in msg and "\n" not in msg


@pytest.mark.parametrize(("query", "problem"), [
    ("SELECT 1; DROP TABLE sales.orders", "give one query"),
    ("  ;  -- nothing", "no table name or query given"),
])
def test_query_must_be_one_statement(tmp_path: Path, query: str, problem: str) -> None:
    with pytest.raises(SourceError, match=rf"^postgresql://u:\*\*\*@127\.0\.0\.1:1/db: {problem}"):
        export_to_csv("postgresql://u:pw@127.0.0.1:1/db", query, tmp_path / "x.csv")


@pytest.mark.parametrize(("query", "problem"), [
    ("SELECT 'abc", "unterminated quoted string at character 8 of the query"),
    ('SELECT "abc', "unterminated quoted identifier at character 8 of the query"),
    ("SELECT $x$abc", r"unterminated \$x\$-quoted string at character 8 of the query"),
    ("SELECT 1 /* abc", "unterminated /\\* comment in the query"),
])
def test_unterminated_quotes_are_reported_plainly(tmp_path: Path, query: str, problem: str) -> None:
    with pytest.raises(SourceError, match=rf": {problem}$"):
        export_to_csv("postgresql://u:pw@127.0.0.1:1/db", query, tmp_path / "x.csv")


@pytest.mark.postgres
def test_cli_ingest_from_postgres_accounts_for_every_row(orders, tmp_path: Path) -> None:
    """End to end: `loyalist ingest postgresql://... --query TABLE` stores the rows, and again adds nothing."""
    import json

    from typer.testing import CliRunner

    from loyalist.cli import app

    url, rows = orders
    db = str(tmp_path / "pg.duckdb")
    runner = CliRunner()
    first = runner.invoke(app, ["ingest", url, "--query", "sales.orders", "--db", db, "--json"])
    assert first.exit_code == 0, first.output
    doc = json.loads(first.stdout)
    assert doc["rows_read"] == len(rows) == doc["loaded"] + doc["duplicates"] + doc["quarantined"]
    no_date = [r for r in rows if r[2] is None]
    guests = sum(1 for r in rows if r[0] is None and r[2] is not None)
    assert (doc["loaded"], doc["quarantined"]) == (len(rows) - len(no_date), len(no_date))
    again = json.loads(runner.invoke(app, ["ingest", url, "--query", "sales.orders", "--db", db, "--json"]).stdout)
    assert (again["loaded"], again["duplicates"], again["quarantined"]) == (0, len(rows) - len(no_date), len(no_date))
    status = json.loads(runner.invoke(app, ["status", "--db", db, "--json"]).stdout)
    assert status["lines"] == len(rows) - len(no_date) and status["guest_lines"] == guests
