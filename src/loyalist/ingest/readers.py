"""Sources as DuckDB relations: the one module that knows how each file format is read.

Engine-specific by design (DuckDB's CSV and Parquet readers are the fastest here):
- CSV / TSV / other delimiters (gzip too) are never copied: the pipeline scans the file with `read_csv`
  (once in the common case, see loyalist.ingest.pipeline), typed by DuckDB where a sample shows clean
  values, with malformed lines captured by DuckDB's rejects tables (line number, column, reason) instead of
  aborting. `count_lines` counts the file's lines by hand (newline bytes; no CSV reader does only that).
- Whitespace-aligned text (CDNOW): read as single lines and split on runs of blanks in SQL.
- Parquet: `read_parquet` with the file's row number.
- Excel (.xlsx/.xlsm/.xls/.ods): python-calamine (DuckDB's excel extension downloads at run time, which is
  not possible here), every sheet or a named one, via Arrow.
- PostgreSQL: streamed to a temporary CSV with COPY (see `loyalist.ingest.postgres`), then read as CSV.
The small sources (whitespace, Parquet, Excel) are materialised as a temp table of text plus `_row`.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from loyalist.errors import SourceError

EXCEL_SUFFIXES = {".xlsx", ".xlsm", ".xls", ".xlsb", ".ods"}
SAMPLE_ROWS = 20_000
NULL_TEXT = ("", "nan", "NaN", "None", "NULL", "null", "N/A", "#N/A")


@dataclass
class CsvDialect:
    path: Path
    delimiter: str
    header: bool
    encoding: str

    @property
    def first_line(self) -> int:
        return 2 if self.header else 1


@dataclass
class Source:
    """One readable input. Either `table` (materialised: text columns plus `_row`) or `csv` (scanned)."""

    label: str
    columns: list[str]
    sample: str
    """Temp table with up to SAMPLE_ROWS rows of the source as text, for recognition and format detection."""
    table: str | None = None
    csv: CsvDialect | None = None
    rejects: list[tuple[int, str, str, str]] = field(default_factory=list)
    """Rows the reader could not split into fields, known before the scan: (row, column, value, rule)."""
    sheets: list[str] = field(default_factory=list)
    """Excel read whole: the workbook's sheets (a sheet without orders can then be left out with --sheet)."""

    def relation(self, types: dict[str, str], timestamp_format: str | None, rejects_table: str | None,
                 max_line_size: int = 10_000_000) -> str:
        """A FROM item with the source's columns (CSV: typed as `types`; others: text). A smaller
        `max_line_size` also makes the reader's buffer that small: reading the first rows then costs little."""
        if self.csv is None:
            return self.table  # type: ignore[return-value]
        d = self.csv
        cols = "{" + ", ".join(f"{duckdb_str(c)}: {duckdb_str(types.get(c, 'VARCHAR'))}" for c in self.columns) + "}"
        opts = [f"delim={duckdb_str(d.delimiter)}", f"header={str(d.header).lower()}", f"columns={cols}",
                "quote='\"'", "escape='\"'", "strict_mode=true", "ignore_errors=true", "auto_detect=false",
                f"encoding={duckdb_str(d.encoding)}", f"max_line_size={max_line_size}",
                "nullstr=[" + ", ".join(duckdb_str(x) for x in NULL_TEXT) + "]"]
        if max_line_size < 10_000_000:
            opts.append(f"buffer_size={max_line_size}")
        if timestamp_format:
            opts.append(f"timestampformat={duckdb_str(timestamp_format)}")
        if rejects_table:
            opts += ["store_rejects=true", f"rejects_table='{rejects_table}'", f"rejects_scan='{rejects_table}_scan'"]
        return f"read_csv({duckdb_str(str(d.path))}, {', '.join(opts)})"


def open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    """The file as text (gzip too), with universal newlines left to the caller (csv module)."""
    if encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig"):
        encoding = "utf-8-sig"
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="")


_open_text = open_text


def count_lines(path: Path, encoding: str = "utf-8") -> int | None:
    """Lines in the file up to its last non-blank one (blank lines between included; a last line without a
    newline counts), by counting newline bytes; None when the file is not in an ASCII-compatible encoding or cannot be read this way.

    Cheaper than any CSV scan (a memory scan of the bytes, gzip inflated by zlib without holding the GIL),
    so it can run in a thread next to DuckDB's scan of the same file."""
    import codecs

    try:
        if codecs.lookup(encoding).name in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"):
            return None
    except LookupError:
        return None
    if path.suffix.lower() in (".zst", ".zstd", ".bz2", ".xz", ".zip"):  # compressions read by DuckDB only
        return None
    n, tail = 0, b""
    buf = bytearray(1 << 22)
    try:
        with (gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb", buffering=0)) as fh:
            while True:
                k = fh.readinto(buf)
                if not k:
                    break
                n += buf.count(b"\n", 0, k)
                tail = bytes(buf[max(0, k - 4096):k])
    except (OSError, EOFError):
        return None
    if not tail:
        return 0
    # Blank lines at the very end are no records and move no line number: leave them out.
    ending = tail[len(tail.rstrip(b"\r\n")):]
    return n + (not tail.endswith(b"\n")) - max(0, ending.count(b"\n") - 1)


def _sample_lines(path: Path, encoding: str, n: int = 50) -> list[str]:
    try:
        with _open_text(path, encoding) as fh:
            lines = []
            for line in fh:
                if line.strip():
                    lines.append(line.rstrip("\r\n"))
                if len(lines) >= n:
                    break
            return lines
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise SourceError(f"{path}: cannot read the file ({exc})") from None
    except LookupError:
        raise SourceError(f"{path}: unknown encoding {encoding!r}; give utf-8, utf-16 or latin-1") from None
    except UnicodeError as exc:  # utf-16 without a byte-order mark: the reader would see no rows at all
        raise SourceError(f"{path}: not readable as {encoding} ({exc}); a UTF-16 file starts with its "
                          "byte-order mark, so this one is probably in another encoding: try --encoding utf-8 or "
                          "latin-1") from None


def _check_utf8(path: Path, size: int = 1 << 20) -> None:
    """Refuse a file whose first MiB is not UTF-8, naming the line, rather than quarantine most of it."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(size)
    except (OSError, EOFError) as exc:
        what = "the gzip file (truncated or corrupt)" if path.suffix == ".gz" else "the file"
        raise SourceError(f"{path}: cannot read {what}: {exc}") from None
    if b"\x00" in head[:4096] and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SourceError(f"{path}: not a text file (it contains NUL bytes); give a CSV, Parquet or Excel file")
    if len(head) == size:
        head = head[: head.rfind(b"\n") + 1]  # do not judge a character cut by the read
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = head.count(b"\n", 0, exc.start) + 1
        raise SourceError(f"{path}: line {line} is not valid UTF-8 (byte 0x{head[exc.start]:02x}); the file is "
                          "probably in another encoding: try --encoding latin-1 (or utf-16)") from None


def _looks_whitespace_aligned(lines: list[str]) -> bool:
    """True for files like CDNOW: no usual delimiter, columns separated by runs of blanks."""
    if not lines or any(d in lines[0] for d in (",", ";", "\t", "|")):
        return False
    counts = {len(line.split()) for line in lines}
    return len(counts) == 1 and counts.pop() > 1


def _header_is_data(first: list[str]) -> bool:
    """A first line whose fields are all numbers or dates is data, not a header."""
    return all(re.fullmatch(r"[-+]?[\d.,/:\- ]+", f.strip()) for f in first if f.strip())


def read_delimited(con: duckdb.DuckDBPyConnection, path: Path, table: str, *, delimiter: str | None = None,
                   header: bool | None = None, encoding: str = "utf-8") -> Source:
    """Sniff the dialect and sample a delimited text file; the pipeline scans the file itself."""
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: the file is empty")
    lines = _sample_lines(path, encoding)
    if not lines:
        raise SourceError(f"{path}: the file has no rows (only blank lines)")
    if encoding.lower().replace("-", "").replace("_", "") in ("utf8", "utf8sig"):
        _check_utf8(path)
    if delimiter is None and _looks_whitespace_aligned(lines):
        return _read_whitespace(con, path, table, lines, header)
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff("\n".join(lines[:20]), delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    first = next(csv.reader([lines[0]], delimiter=delimiter))
    if header is None:
        header = not _header_is_data(first)
    columns = [c.strip() or f"column{i}" for i, c in enumerate(first)] if header else \
        [f"column{i}" for i in range(len(first))]
    if len(set(columns)) != len(columns):
        dup = next(c for c in columns if columns.count(c) > 1)
        raise SourceError(f"{path}: the header names column {dup!r} more than once")
    dialect = CsvDialect(path, delimiter, header, encoding)
    src = Source(str(path), columns, f"{table}_sample", csv=dialect)
    try:
        # A 2 MiB buffer: the default (16 MiB+, gzip too) took 0.1 s of CPU for 20,000 rows. A longer line
        # is left out of the sample (ignore_errors), not an error: the full scan reads it.
        con.execute(f"CREATE TEMP TABLE {table}_sample AS SELECT * FROM {src.relation({}, None, None, 1 << 21)} "
                    f"LIMIT {SAMPLE_ROWS}")
    except duckdb.Error as exc:
        raise SourceError(f"{path}: cannot read as {'tab' if delimiter == chr(9) else repr(delimiter)}-delimited "
                          f"text ({_first_line(exc)})") from None
    return src


def _ordinal(table: str) -> str:
    """0-based position of each row of a freshly created table, in the order the reader produced it.

    DuckDB numbers the rows of a table created inside a still-open transaction from a large offset, so the
    raw rowid is not a position; its distance from the smallest rowid is (one CTAS inserts contiguously).
    """
    return f"(rowid - (SELECT min(rowid) FROM {table}))"


def _materialised(con: duckdb.DuckDBPyConnection, label: str, table: str, columns: list[str],
                  rejects: list | None = None) -> Source:
    con.execute(f"CREATE TEMP TABLE {table}_sample AS SELECT * EXCLUDE (_row) FROM {table} LIMIT {SAMPLE_ROWS}")
    return Source(label, columns, f"{table}_sample", table=table, rejects=rejects or [])


def _read_whitespace(con: duckdb.DuckDBPyConnection, path: Path, table: str, lines: list[str],
                     header: bool | None) -> Source:
    width = len(lines[0].split())
    if header is None:
        header = not _header_is_data(lines[0].split())
    names = lines[0].split() if header else [f"column{i}" for i in range(width)]
    fields = ", ".join(f"parts[{i + 1}] AS {duckdb_ident(n)}" for i, n in enumerate(names))
    first = 2 if header else 1
    try:
        con.execute(f"""
            CREATE TEMP TABLE {table}_text AS
            SELECT line FROM read_csv({duckdb_str(str(path))}, columns={{'line': 'VARCHAR'}}, delim='\\x1f',
                                      quote='', escape='', header=false, auto_detect=false)""")
        con.execute(f"""CREATE TEMP TABLE {table}_lines AS
                        SELECT {_ordinal(table + '_text')} + 1 AS _line,
                               regexp_split_to_array(trim(line), '\\s+') AS parts
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
    return _materialised(con, str(path), table, names, rejects)


def read_parquet(con: duckdb.DuckDBPyConnection, path: Path, table: str) -> Source:
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    try:
        cols = [c[0] for c in con.execute(f"SELECT * FROM read_parquet({duckdb_str(str(path))}) LIMIT 0").description]
        casts = ", ".join(f"CAST({duckdb_ident(c)} AS VARCHAR) AS {duckdb_ident(c)}" for c in cols)
        con.execute(f"""CREATE TEMP TABLE {table} AS
                        SELECT file_row_number + 1 AS _row, {casts}
                        FROM read_parquet({duckdb_str(str(path))}, file_row_number=true)""")
    except duckdb.Error as exc:
        raise SourceError(f"{path}: cannot read as Parquet ({_first_line(exc)})") from None
    return _materialised(con, str(path), table, cols)


def read_excel(con: duckdb.DuckDBPyConnection, path: Path, table: str, sheet: str | None) -> list[Source]:
    """Every sheet (or the named one) as its own source; row numbers are the spreadsheet's row numbers."""
    import pyarrow as pa
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
        start = next((k for k, r in enumerate(rows) if any(str(v).strip() for v in r)), None)
        if start is None:
            continue
        header = [str(v).strip() or f"column{j}" for j, v in enumerate(rows[start])]
        dup = next((h for h in header if header.count(h) > 1), None)
        if dup is not None:
            raise SourceError(f"{path}[{name}]: the header (row {start + 1}) names column {dup!r} more than once")
        cols: dict[str, list] = {"_row": [], **{h: [] for h in header}}
        for k, r in enumerate(rows[start + 1:]):
            if not any(str(v).strip() for v in r):
                continue
            cols["_row"].append(start + k + 2)
            for j, h in enumerate(header):
                cols[h].append(_cell_text(r[j] if j < len(r) else ""))
        arrow = pa.table({k: pa.array(v, type=pa.int64() if k == "_row" else pa.string()) for k, v in cols.items()})
        name_t = f"{table}_{i}"
        con.register(f"{name_t}_arrow", arrow)
        con.execute(f"CREATE TEMP TABLE {name_t} AS SELECT * FROM {name_t}_arrow")
        con.unregister(f"{name_t}_arrow")
        sources.append(_materialised(con, f"{path}[{name}]", name_t, header))
        if sheet is None and len(names) > 1:
            sources[-1].sheets = names
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
