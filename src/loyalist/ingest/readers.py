"""Reading sources into DuckDB as raw text columns, with each row's line number in its source.

Engine-specific by design (DuckDB's CSV and Parquet readers are the fastest here). Everything is read as
text first so that a bad value becomes a quarantined row with its reason instead of a failed load; the
typing and validation happen afterwards, in SQL (see `loyalist.ingest.pipeline`).

- CSV / TSV / other delimiters (gzip too): DuckDB's `read_csv`, with malformed lines captured by its
  rejects tables (line number, column, reason) rather than aborting the load.
- Whitespace-aligned text (CDNOW): read as single lines and split on runs of blanks in SQL.
- Parquet: `read_parquet` with the file's row number.
- Excel (.xlsx/.xlsm/.xls/.ods): python-calamine (DuckDB's excel extension downloads at run time, which
  is not possible here), every sheet or a named one, converted to Arrow.
- PostgreSQL: streamed to a temporary CSV with COPY (see `loyalist.ingest.postgres`) and then read as CSV.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from loyalist.errors import SourceError

EXCEL_SUFFIXES = {".xlsx", ".xlsm", ".xls", ".xlsb", ".ods"}


@dataclass
class RawSource:
    """A source read into a DuckDB temp table `table` of text columns plus `_row` (line/row number)."""

    label: str
    table: str
    columns: list[str]
    rows_read: int
    rejects: list[tuple[int, str, str, str]] = field(default_factory=list)
    """Rows the reader itself could not split into fields: (row, column, value, rule)."""


def _open_text(path: Path) -> io.TextIOBase:
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")


def _sample_lines(path: Path, n: int = 50) -> list[str]:
    try:
        with _open_text(path) as fh:
            lines = []
            for line in fh:
                if line.strip():
                    lines.append(line.rstrip("\r\n"))
                if len(lines) >= n:
                    break
            return lines
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise SourceError(f"{path}: cannot read the file ({exc})") from None


def _looks_whitespace_aligned(lines: list[str]) -> bool:
    """True for files like CDNOW: no usual delimiter, columns separated by runs of blanks."""
    if not lines or any(d in lines[0] for d in (",", ";", "\t", "|")):
        return False
    counts = {len(line.split()) for line in lines}
    return len(counts) == 1 and counts.pop() > 1


def _header_is_data(first: list[str]) -> bool:
    """A first line whose fields are all numbers or dates is data, not a header."""
    return all(re.fullmatch(r"[-+]?[\d.,/:\- ]+", f.strip()) for f in first if f.strip())


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def read_delimited(con: duckdb.DuckDBPyConnection, path: Path, table: str, *, delimiter: str | None = None,
                   header: bool | None = None, encoding: str = "utf-8") -> RawSource:
    """Read CSV/TSV (optionally gzip) as text; malformed lines are returned as rejects with their line."""
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: the file is empty")
    lines = _sample_lines(path)
    if not lines:
        raise SourceError(f"{path}: the file has no rows (only blank lines)")
    if delimiter is None and _looks_whitespace_aligned(lines):
        return _read_whitespace(con, path, table, lines, header)
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff("\n".join(lines[:20]), delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    if header is None:
        header = not _header_is_data(next(csv.reader([lines[0]], delimiter=delimiter)))
    opts = (f"delim={duckdb_str(delimiter)}, header={str(header).lower()}, all_varchar=true, "
            f"quote='\"', escape='\"', strict_mode=false, null_padding=false, ignore_errors=true, "
            f"store_rejects=true, rejects_table='{table}_rej', rejects_scan='{table}_scan', "
            f"encoding={duckdb_str(encoding)}, sample_size=-1, max_line_size=10000000")
    try:
        con.execute(f"CREATE TEMP TABLE {table}_read AS SELECT * FROM read_csv({_quote(path)}, {opts})")
    except duckdb.Error as exc:
        raise SourceError(f"{path}: cannot read as {'tab' if delimiter == chr(9) else repr(delimiter)}-delimited "
                          f"text ({_first_line(exc)})") from None
    columns = [c[0] for c in con.execute(f"SELECT * FROM {table}_read LIMIT 0").description]
    rejects = con.execute(
        f"SELECT line, coalesce(column_name, ''), coalesce(csv_line, ''), error_type || ': ' || error_message "
        f"FROM {table}_rej ORDER BY line").fetchall()
    first_data_line = 2 if header else 1
    if rejects:
        # Good rows take the line numbers not used by rejected lines, in order (one line per record).
        con.execute(f"""
            CREATE TEMP TABLE {table} AS
            WITH free AS (
                SELECT l, row_number() OVER (ORDER BY l) - 1 AS idx
                FROM range({first_data_line}, {first_data_line} + (SELECT count(*) FROM {table}_read)
                           + (SELECT count(DISTINCT line) FROM {table}_rej)) t(l)
                WHERE l NOT IN (SELECT line FROM {table}_rej))
            SELECT f.l AS _row, g.* EXCLUDE (idx)
            FROM (SELECT {_ordinal(table + '_read')} AS idx, * FROM {table}_read) g JOIN free f USING (idx)
            ORDER BY _row""")
    else:
        con.execute(f"CREATE TEMP TABLE {table} AS SELECT {_ordinal(table + '_read')} + {first_data_line} AS _row, * "
                    f"FROM {table}_read")
    con.execute(f"DROP TABLE {table}_read")
    n = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    seen = {r[0] for r in rejects}
    return RawSource(str(path), table, columns, n + len(seen),
                     [(r[0], r[1], r[2][:500], r[3]) for r in _first_per_line(rejects)])


def _ordinal(table: str) -> str:
    """0-based position of each row of a freshly created table, in the order the reader produced it.

    DuckDB numbers the rows of a table created inside a still-open transaction from a large offset, so the
    raw rowid is not a position; its distance from the smallest rowid is (one CTAS inserts contiguously).
    """
    return f"(rowid - (SELECT min(rowid) FROM {table}))"


def _first_per_line(rejects: list[tuple]) -> list[tuple]:
    seen: set[int] = set()
    out = []
    for r in rejects:
        if r[0] not in seen:
            seen.add(r[0])
            out.append(r)
    return out


def _read_whitespace(con: duckdb.DuckDBPyConnection, path: Path, table: str, lines: list[str],
                     header: bool | None) -> RawSource:
    width = len(lines[0].split())
    if header is None:
        header = not _header_is_data(lines[0].split())
    names = lines[0].split() if header else [f"column{i}" for i in range(width)]
    fields = ", ".join(f"parts[{i + 1}] AS {duckdb_ident(n)}" for i, n in enumerate(names))
    first = 2 if header else 1
    try:
        con.execute(f"""
            CREATE TEMP TABLE {table}_text AS
            SELECT line FROM read_csv({_quote(path)}, columns={{'line': 'VARCHAR'}}, delim='\\x1f', quote='',
                                      escape='', header=false, auto_detect=false)""")
        con.execute(f"""CREATE TEMP TABLE {table}_lines AS
                        SELECT {_ordinal(table + '_text')} + 1 AS _line, regexp_split_to_array(trim(line), '\\s+') AS parts
                        FROM {table}_text""")
        con.execute(f"DROP TABLE {table}_text")
    except duckdb.Error as exc:
        raise SourceError(f"{path}: cannot read as whitespace-separated text ({_first_line(exc)})") from None
    con.execute(f"""CREATE TEMP TABLE {table} AS SELECT _line AS _row, {fields} FROM {table}_lines
                    WHERE _line >= {first} AND len(parts) = {width} AND trim(parts[1]) <> ''""")
    rejects = con.execute(f"""SELECT _line, '', array_to_string(parts, ' '),
                                     'wrong number of fields: expected {width}, found ' || len(parts)
                              FROM {table}_lines WHERE _line >= {first} AND len(parts) <> {width}
                                    AND NOT (len(parts) = 1 AND trim(parts[1]) = '')
                              ORDER BY _line""").fetchall()
    con.execute(f"DROP TABLE {table}_lines")
    n = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    return RawSource(str(path), table, names, n + len(rejects), rejects)


def read_parquet(con: duckdb.DuckDBPyConnection, path: Path, table: str) -> RawSource:
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    try:
        cols = [c[0] for c in con.execute(f"SELECT * FROM read_parquet({_quote(path)}) LIMIT 0").description]
        casts = ", ".join(f"CAST({duckdb_ident(c)} AS VARCHAR) AS {duckdb_ident(c)}" for c in cols)
        con.execute(f"""CREATE TEMP TABLE {table} AS
                        SELECT file_row_number + 1 AS _row, {casts}
                        FROM read_parquet({_quote(path)}, file_row_number=true)""")
    except duckdb.Error as exc:
        raise SourceError(f"{path}: cannot read as Parquet ({_first_line(exc)})") from None
    n = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    return RawSource(str(path), table, cols, n)


def read_excel(con: duckdb.DuckDBPyConnection, path: Path, table: str, sheet: str | None) -> list[RawSource]:
    """Every sheet (or the named one) as its own source; row numbers are the spreadsheet's row numbers."""
    from python_calamine import CalamineWorkbook

    if not path.exists():
        raise SourceError(f"{path}: no such file")
    try:
        wb = CalamineWorkbook.from_path(str(path))
    except Exception as exc:  # calamine raises its own error types for corrupt files
        raise SourceError(f"{path}: cannot read as a spreadsheet ({_first_line(exc)})") from None
    names = wb.sheet_names
    if sheet is not None:
        if sheet not in names:
            raise SourceError(f"{path}: no sheet named {sheet!r} (sheets: {', '.join(names)})")
        names = [sheet]
    sources = []
    for i, name in enumerate(names):
        rows = wb.get_sheet_by_name(name).to_python(skip_empty_area=False)
        rows = [r for r in rows]
        # Header: the first non-empty row.
        start = next((k for k, r in enumerate(rows) if any(str(v).strip() for v in r)), None)
        if start is None:
            continue
        header = [str(v).strip() or f"column{j}" for j, v in enumerate(rows[start])]
        body = rows[start + 1:]
        cols: dict[str, list] = {"_row": [], **{h: [] for h in header}}
        for k, r in enumerate(body):
            if not any(str(v).strip() for v in r):
                continue
            cols["_row"].append(start + k + 2)
            for j, h in enumerate(header):
                v = r[j] if j < len(r) else ""
                cols[h].append(_cell_text(v))
        arrow = pa.table({k: pa.array(v, type=pa.int64() if k == "_row" else pa.string())
                          for k, v in cols.items()})
        name_t = f"{table}_{i}"
        con.register(f"{name_t}_arrow", arrow)
        con.execute(f"CREATE TEMP TABLE {name_t} AS SELECT * FROM {name_t}_arrow")
        con.unregister(f"{name_t}_arrow")
        sources.append(RawSource(f"{path}[{name}]", name_t, header, arrow.num_rows))
    if not sources:
        raise SourceError(f"{path}: the workbook has no rows")
    return sources


def _cell_text(v: object) -> str | None:
    if v is None or v == "":
        return None
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    if hasattr(v, "isoformat"):
        return v.isoformat(sep=" ") if hasattr(v, "hour") else v.isoformat()
    return str(v)


def duckdb_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def duckdb_ident(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
