"""PostgreSQL as an ingest source: stream a table or query into a CSV file with COPY.

Why it is written this way:

- DuckDB's own ``postgres`` extension is not used: DuckDB downloads extensions at run
  time, and that download is not reachable on the machines this project runs on. psycopg 3
  (a normal Python dependency, with libpq bundled in ``psycopg[binary]``) is.
- ``COPY (query) TO STDOUT WITH (FORMAT csv, HEADER true)`` makes the *server* render the
  rows as CSV; the client writes the blocks straight to disk as they arrive. Memory stays
  constant however many rows there are (millions are fine), and no Python object is built
  per row or per value.
- The result is an ordinary CSV file, so the one CSV ingest path then reads, maps,
  validates and quarantines these rows exactly as it does rows from a file: there is no
  second, subtly different validation path for database sources.

Values are written as PostgreSQL's CSV format writes them: dates ISO (``2024-01-31``),
timestamps in UTC, numbers without thousands separators, NULL as an empty unquoted field
and the empty string as ``""``; text is UTF-8. The export runs in a READ ONLY transaction,
so a query can never change the source database.

Failures (cannot connect, bad query, missing table, cannot write the file) raise
:class:`loyalist.errors.SourceError` with one line naming the URL (password masked).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from loyalist.errors import SourceError

__all__ = ["export_to_csv", "mask_url", "table_name_parts"]

#: Seconds to wait for the server to accept a connection, unless the URL says otherwise.
CONNECT_TIMEOUT = 10

# One identifier: unquoted (PostgreSQL folds it to lower case) or double-quoted ("" is a quote).
_IDENT = r'(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_$\u0080-\uffff]*|"(?:[^"]|"")+")'
_TABLE_NAME = re.compile(rf"\s*({_IDENT})(?:\s*\.\s*({_IDENT}))?(?:\s*\.\s*({_IDENT}))?\s*;?\s*")


def mask_url(url: str) -> str:
    """The connection URL (or ``key=value`` conninfo string) with any password replaced by ``***``."""
    if "://" in url:
        try:
            parts = urlsplit(url)
            netloc = parts.netloc
            if "@" in netloc:
                userinfo, hostinfo = netloc.rsplit("@", 1)
                if ":" in userinfo:
                    userinfo = userinfo.split(":", 1)[0] + ":***"
                netloc = f"{userinfo}@{hostinfo}"
            query = parts.query
            if query:
                pairs = parse_qsl(query, keep_blank_values=True)
                if any(k.lower() == "password" for k, _ in pairs):
                    query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs],
                                      safe="*")
            return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
        except ValueError:  # malformed URL (e.g. a bad port): fall back to a blunt mask
            return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    # key=value conninfo: password=secret or password='sec ret'
    return re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url, flags=re.IGNORECASE)


def table_name_parts(text: str) -> list[str] | None:
    """The parts of ``text`` if it is a bare, possibly schema-qualified table name, else None.

    PostgreSQL's rules apply: unquoted parts are folded to lower case, double-quoted parts are
    kept exactly (``Sales."Big Orders"`` -> ``["sales", "Big Orders"]``).
    """
    m = _TABLE_NAME.fullmatch(text)
    if not m:
        return None
    parts = []
    for part in (g for g in m.groups() if g is not None):
        if part.startswith('"'):
            parts.append(part[1:-1].replace('""', '"'))
        else:
            parts.append(part.lower())
    return parts


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")


def _single_statement(query: str) -> str:
    """``query`` without trailing semicolons; one statement only (it goes inside ``COPY (...)``).

    A small scanner that knows PostgreSQL's quotes, E'' strings, $$ strings and comments, so a
    ``;`` inside any of those is left alone.
    """
    i, n = 0, len(query)
    last = -1            # index just past the last significant (non-space, non-comment) character
    semicolons = []      # top-level semicolons
    while i < n:
        c = query[i]
        if c.isspace():
            i += 1
            continue
        if query.startswith("--", i):
            j = query.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if query.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if query.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif query.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            if depth:
                raise ValueError("unterminated /* comment in the query")
            continue
        if c in "'\"":
            escapes = c == "'" and i > 0 and query[i - 1] in "eE" and (
                i < 2 or not (query[i - 2].isalnum() or query[i - 2] in "_$"))
            start, closed = i, False
            i += 1
            while i < n:
                if escapes and query[i] == "\\":
                    i += 2
                elif query[i] == c:
                    if query.startswith(c, i + 1):  # doubled quote
                        i += 2
                    else:
                        i += 1
                        closed = True
                        break
                else:
                    i += 1
            if not closed:
                kind = "quoted string" if c == "'" else "quoted identifier"
                raise ValueError(f"unterminated {kind} at character {start + 1} of the query")
            last = i
            continue
        if c == "$" and not (i > 0 and (query[i - 1].isalnum() or query[i - 1] in "_$")):
            m = _DOLLAR_TAG.match(query, i)
            if m:
                end = query.find(m.group(), m.end())
                if end < 0:
                    raise ValueError(f"unterminated {m.group()}-quoted string at character {i + 1} of the query")
                i = end + len(m.group())
                last = i
                continue
        if c == ";":
            semicolons.append(i)
        else:
            last = i + 1
        i += 1
    significant = [p for p in semicolons if p < last]
    if significant:
        raise ValueError("give one query (a SELECT), not several statements separated by ';': "
                         f"{_one_line(query)[:80]}")
    body = query[:last].strip() if last >= 0 else ""
    if not body:
        raise ValueError("no table name or query given")
    return body


_QUERY_PREFIX = "COPY (\n"


def _copy_statement(query_or_table: str) -> tuple[sql.Composable, str, str | None]:
    """The COPY statement, how to name the source in messages, and the query (None for a table)."""
    parts = table_name_parts(query_or_table)
    csv_options = sql.SQL(" TO STDOUT WITH (FORMAT csv, HEADER true)")
    if parts is not None:
        name = sql.Identifier(*parts)
        stmt = sql.SQL("COPY (SELECT * FROM {}){}").format(name, csv_options)
        return stmt, "table " + ".".join(parts), None
    query = _single_statement(query_or_table)
    # Newlines around the query: a trailing "-- comment" must not swallow the closing parenthesis.
    stmt = sql.SQL(_QUERY_PREFIX + "{}\n){}").format(sql.SQL(query), csv_options)  # type: ignore[arg-type]
    return stmt, "query", query


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _where_in(query: str, position: int) -> str:
    """Words for the 1-based character ``position`` of the COPY statement wrapping ``query``."""
    offset = position - 1 - len(_QUERY_PREFIX)
    if offset < 0 or offset >= len(query):
        return "at the end of the query"
    line = query.count("\n", 0, offset) + 1
    column = offset - (query.rfind("\n", 0, offset) + 1) + 1
    return f"at line {line}, column {column} of the query" if "\n" in query else f"at character {column} of the query"


def _describe(exc: psycopg.Error, query: str | None = None) -> str:
    """One line from a psycopg error: the server's message, and where in the query the error is."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if not primary:
        return _one_line(str(exc)) or type(exc).__name__
    text = primary
    detail = getattr(diag, "message_detail", None)
    if detail:
        text += f" ({detail})"
    position = getattr(diag, "statement_position", None)
    if position and query is not None and str(position).isdigit():
        text += " " + _where_in(query, int(position))
    hint = getattr(diag, "message_hint", None)
    if hint:
        text += f"; hint: {hint}"
    return _one_line(text)


def _connect_kwargs(url: str) -> dict[str, object]:
    kwargs: dict[str, object] = {"client_encoding": "UTF8", "application_name": "loyalist ingest"}
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error:
        params = {}
    if "connect_timeout" not in params and not os.environ.get("PGCONNECT_TIMEOUT"):
        kwargs["connect_timeout"] = CONNECT_TIMEOUT
    return kwargs


def export_to_csv(url: str, query_or_table: str, dest: Path) -> int:
    """Write the rows of a table or query at ``url`` to ``dest`` as CSV with a header line.

    ``query_or_table`` is either a table name (``orders``, ``sales.orders``, ``"Sales"."Orders"``),
    read as ``SELECT * FROM`` it, or a query (``SELECT ... FROM ... WHERE ...``). Returns the
    number of data rows written (the header not counted). The file is written to a temporary
    name beside ``dest`` and renamed at the end, so a failed export never leaves a partial file.
    """
    dest = Path(dest)
    where = mask_url(url)
    try:
        statement, what, query = _copy_statement(query_or_table)
    except ValueError as exc:
        raise SourceError(f"{where}: {exc}") from None
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SourceError(f"{where}: cannot write {dest}: {exc.strerror or exc}") from None

    try:
        conn = psycopg.connect(url, **_connect_kwargs(url))  # type: ignore[arg-type]
    except psycopg.Error as exc:
        raise SourceError(f"{where}: cannot connect: {_mask_secrets(_describe(exc), url)}") from None
    except Exception as exc:  # e.g. an unparsable URL
        raise SourceError(f"{where}: cannot connect: {_mask_secrets(_one_line(str(exc)), url)}") from None

    try:
        with conn:
            conn.read_only = True  # the export can never modify the source database
            with conn.cursor() as cur:
                # Fixed output formats, whatever the server or role defaults are.
                cur.execute("SET LOCAL DateStyle = 'ISO, YMD'")
                cur.execute("SET LOCAL TimeZone = 'UTC'")
                with open(part, "wb") as out, cur.copy(statement) as copy:
                    for block in copy:
                        out.write(block)
                rows = cur.rowcount
            conn.rollback()  # read-only: nothing to commit
        os.replace(part, dest)
    except psycopg.Error as exc:
        _remove(part)
        raise SourceError(f"{where}: cannot read {what}: {_mask_secrets(_describe(exc, query), url)}") from None
    except OSError as exc:
        _remove(part)
        raise SourceError(f"{where}: cannot write {dest}: {exc.strerror or exc}") from None
    except BaseException:
        _remove(part)
        raise
    finally:
        conn.close()
    return max(rows, 0)


def _mask_secrets(message: str, url: str) -> str:
    """A server or libpq message with the URL's password (if it shows up at all) masked."""
    try:
        password = psycopg.conninfo.conninfo_to_dict(url).get("password")
    except Exception:
        password = None
    if password:
        message = message.replace(str(password), "***")
    return message.replace(url, mask_url(url)) if url else message


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
