"""Ingest: map, type, validate, de-duplicate and store source rows, with every row accounted for.

The rule for duplicates (README, "Duplicates and overlapping exports"):
- transactions have no key: an order line is identified by its normalised content. A source adds, for each
  distinct line, only the copies beyond those already stored: if the store holds a line twice and the
  source has it three times, one is loaded and two are duplicates. So two exports that overlap in time
  count the shared lines once, the same file ingested again adds nothing, and lines repeated inside one
  export are kept as the source has them.
- invoices, customers and products have a key: a row identical to the stored one is a duplicate, a changed
  row updates the stored one (an invoice that has since been paid), and within one source the last row
  with a key wins while earlier, different rows with that key are quarantined with the reason.

Everything runs inside one DuckDB transaction, so an ingest that fails or is killed leaves the store as it
was. The heavy lifting is SQL in the engine; Python only builds the statements. A CSV of transactions is
never copied and in the common case read once (`_load_csv_transactions`): one INSERT stores every row that
breaks no rule and is not stored yet, while a thread counts the file's lines; lines = header + stored +
rejected proves nothing was held back. Only when the count says otherwise is the file scanned again, with
the same typed expressions, for the rows held back (rule breakers, lines already stored), and only for a
file whose records span lines (or with blank lines between them) does Python's csv module map records to
file lines. Rows are never deleted inside the transaction: DuckDB would rewrite the whole insert at commit.
The small keyed kinds (invoices, customers, products) and materialised sources keep the two-scan path.
"""

from __future__ import annotations

import json
import re
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import duckdb

from loyalist import schema
from loyalist.errors import LoyalistError, SourceError
from loyalist.ingest import readers
from loyalist.ingest.readers import NULL_TEXT, Source, duckdb_ident, duckdb_str
from loyalist.schema import FieldType, Kind
from loyalist.store import Store, content_hash_sql

ZONED_FORMATS = ("%Y-%m-%d %H:%M:%S %z", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S%z")
"""Tried before the ISO cast, which would silently drop a UTC offset; stored converted to UTC."""
DATE_FORMATS = ZONED_FORMATS + (
    "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y%m%d", "%Y/%m/%d",
    "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d/%m/%Y", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y",
    "%d.%m.%Y %H:%M", "%d.%m.%Y", "%d-%m-%Y %H:%M", "%d-%m-%Y", "%d/%m/%y %H:%M", "%d/%m/%y",
    "%m/%d/%y %H:%M", "%m/%d/%y",
)
ISO = "iso"
"""DuckDB's own ISO-8601 cast (fractions, 'T' separator); tried first."""

ID_FIELDS = {"customer_id", "order_id", "product_id", "invoice_id"}
TRUE_TEXT = ("1", "true", "t", "yes", "y", "x")
FALSE_TEXT = ("0", "false", "f", "no", "n", "", "nan", "none", "null")
BY_RECORD = "rows are numbered by record, not by file line: the file's records could not be matched to its lines"
"""A file's note when its line numbers could not be mapped (its quarantined records then stay as typed)."""


@dataclass
class Options:
    """What the user decided for this ingest (CLI flags or loyalist.toml)."""

    kind: Kind = Kind.transactions
    mapping: dict[str, str] = field(default_factory=dict)
    date_format: str | None = None
    guests: str = "keep"
    """'keep': guest lines (blank customer) are stored, flagged, left out of customer analyses but counted in
    demand; 'quarantine': set aside with that reason."""
    sheet: str | None = None
    delimiter: str | None = None
    encoding: str = "utf-8"
    query: str | None = None
    non_product_codes: tuple[str, ...] = schema.NON_PRODUCT_CODES
    non_product_prefixes: tuple[str, ...] = schema.NON_PRODUCT_CODE_PREFIXES
    non_product_description: str = schema.NON_PRODUCT_DESCRIPTION


@dataclass
class FileReport:
    source: str
    kind: str
    rows_read: int = 0
    loaded: int = 0
    duplicates: int = 0
    quarantined: int = 0
    updated: int = 0
    mapping: dict[str, str] = field(default_factory=dict)
    date_format: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def balanced(self) -> bool:
        return self.rows_read == self.loaded + self.duplicates + self.quarantined


@dataclass
class IngestReport:
    ingest_id: int
    files: list[FileReport]
    seconds: float

    def totals(self) -> dict[str, int]:
        keys = ("rows_read", "loaded", "duplicates", "quarantined", "updated")
        return {k: sum(getattr(f, k) for f in self.files) for k in keys}

    def to_dict(self) -> dict:
        return {"ingest_id": self.ingest_id, "seconds": round(self.seconds, 3), **self.totals(),
                "files": [asdict(f) for f in self.files]}


ProgressFn = Callable[..., None]
"""progress(stage description, fraction done of the current source, rows_done=rows read so far)."""


def ingest(store: Store, paths: Sequence[str | Path], options: Options | None = None,
           progress: ProgressFn | None = None) -> IngestReport:
    """Load every source in `paths` into the store in one transaction; return the row accounting."""
    con = store.con
    options = _checked(con, options or Options())
    progress = progress or (lambda stage, frac, rows_done=None: None)
    started = time.perf_counter()
    ingest_id = con.execute("SELECT coalesce(max(ingest_id), 0) + 1 FROM ingests").fetchall()[0][0]
    reports: list[FileReport] = []
    con.execute("BEGIN TRANSACTION")
    try:
        file_id = 0
        with tempfile.TemporaryDirectory(prefix="loyalist-ingest-") as tmp:
            for path in paths:
                for src in _read(con, str(path), options, f"src{ingest_id}_{len(reports)}", progress, Path(tmp)):
                    file_id += 1
                    t0 = time.perf_counter()
                    report = _load(con, src, options, ingest_id, file_id, progress)
                    report.seconds = time.perf_counter() - t0
                    if not report.balanced():  # an internal invariant: never store a run that loses rows
                        raise LoyalistError(f"{src.label}: row accounting does not add up ({report}); "
                                            "nothing stored")
                    con.execute(
                        "INSERT INTO ingests VALUES (?, ?, now(), now(), ?, ?, ?, ?, ?, ?, ?)",
                        [ingest_id, file_id, options.kind.value, src.label, report.rows_read, report.loaded,
                         report.duplicates, report.quarantined,
                         json.dumps({"mapping": report.mapping, "date_format": report.date_format,
                                     "guests": options.guests})])
                    reports.append(report)
                    progress(f"stored {src.label}", 1.0, rows_done=sum(r.rows_read for r in reports))
                    for t in (src.table, src.sample):
                        if t:
                            con.execute(f"DROP TABLE IF EXISTS {t}")
        # A source read again quarantines its bad rows again: the store keeps the latest copy of each, so the
        # quarantine (status, quality) counts them once; the ingests table keeps every run's counts.
        con.execute("""DELETE FROM quarantine q WHERE q.ingest_id < $id AND EXISTS (
                           SELECT 1 FROM quarantine n WHERE n.ingest_id = $id AND n.kind = q.kind
                               AND n.source = q.source AND n."row" = q."row" AND n.rule = q.rule
                               AND n."column" IS NOT DISTINCT FROM q."column"
                               AND n.value IS NOT DISTINCT FROM q.value AND n.record IS NOT DISTINCT FROM q.record)""",
                    {"id": ingest_id})
        progress("committing", 1.0)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return IngestReport(ingest_id, reports, time.perf_counter() - started)


def _checked(con: duckdb.DuckDBPyConnection, options: Options) -> Options:
    """The options with the delimiter spelled as one character; a clear error for a delimiter or date format
    the readers cannot use (both would otherwise fail deep inside the read)."""
    delimiter = options.delimiter
    if delimiter is not None:
        delimiter = "\t" if delimiter.lower() in ("\\t", "tab") else delimiter
        if len(delimiter) != 1 or delimiter in ('"', "\n", "\r"):
            raise LoyalistError(f"--delimiter {options.delimiter!r}: give one character, e.g. ';' or '|' "
                                "(tab: '\\t')")
    fmt = options.date_format
    if fmt is not None and fmt != ISO:
        if "%" not in fmt:
            raise LoyalistError(f"--date-format {fmt!r}: give strptime codes, e.g. '%d/%m/%Y %H:%M'")
        try:
            con.execute("SELECT try_strptime('', ?)", [fmt])
        except duckdb.Error as exc:
            detail = str(exc).splitlines()[0].split(": ", 1)[-1]
            raise LoyalistError(f"--date-format {fmt!r}: {detail}; give strptime codes, e.g. "
                                "'%d/%m/%Y %H:%M'") from None
    return replace(options, delimiter=delimiter)


def _read(con: duckdb.DuckDBPyConnection, source: str, options: Options, table: str,
          progress: ProgressFn, tmp: Path) -> list[Source]:
    if source.startswith(("postgresql://", "postgres://")):
        from loyalist.ingest.postgres import export_to_csv, mask_url

        label = mask_url(source)
        progress(f"reading {label}", 0.0)
        if not options.query:
            raise SourceError(f"{label}: give the table or query to read with --query")
        csv_path = tmp / f"{table}.csv"
        export_to_csv(source, options.query, csv_path)
        src = readers.read_delimited(con, csv_path, table, delimiter=",", header=True)
        src.label = f"{label} ({options.query})"
        return [src]
    progress(f"reading {source}", 0.0)
    path = Path(source)
    suffixes = [s.lower() for s in path.suffixes]
    if not path.exists():
        raise SourceError(f"{path}: no such file")
    if path.is_dir():
        raise SourceError(f"{path}: is a directory; give the files inside it")
    if suffixes and suffixes[-1] in readers.EXCEL_SUFFIXES:
        return readers.read_excel(con, path, table, options.sheet)
    if suffixes and suffixes[-1] == ".parquet":
        return [readers.read_parquet(con, path, table)]
    delimiter = options.delimiter
    if delimiter is None and any(s in (".tsv", ".tab") for s in suffixes):
        delimiter = "\t"
    return [readers.read_delimited(con, path, table, delimiter=delimiter, encoding=options.encoding)]


def _order_level_amount(con, src: Source, mapping: dict[str, str]) -> bool:
    """True when the amount column is an order total written on each order's first line only (Shopify's
    'Total'): in the sample, every order with several lines has it on the first line and blank after."""
    order, amount = duckdb_ident(mapping["order_id"]), duckdb_ident(mapping["amount"])
    row = con.execute(f"""
        WITH s AS (SELECT {order} AS o, {amount} IS NULL OR trim(CAST({amount} AS VARCHAR)) = '' AS blank,
                          row_number() OVER () AS k FROM {src.sample}),
             r AS (SELECT o, blank, row_number() OVER (PARTITION BY o ORDER BY k) AS nth,
                          count(*) OVER (PARTITION BY o) AS n FROM s WHERE o IS NOT NULL)
        SELECT count(DISTINCT o), count(DISTINCT o) FILTER (WHERE NOT ((nth = 1 AND NOT blank) OR (nth > 1 AND blank)))
        FROM r WHERE n > 1""").fetchall()[0]
    multi, breaking = row
    return multi >= 3 and breaking == 0


def detect_date_format(con: duckdb.DuckDBPyConnection, table: str, column: str) -> str:
    """The format that parses the most of a sample of values (ISO first; day-first wins a tie with
    month-first, as most of the world writes dates that way); raises when none parses most values."""
    col = duckdb_ident(column)
    # Distinct values only (a format parses a value or not however often it repeats); at most 4,000 of
    # them, chosen by hash so the choice does not depend on the file's order: 21 formats x 20,000 values
    # took a quarter of a second per file.
    sample = (f"(SELECT v FROM (SELECT DISTINCT trim({col}) AS v FROM {table} WHERE nullif(trim({col}), '') IS NOT NULL) "
              f"ORDER BY hash(v), v LIMIT 4000)")
    def plausible(ts: str) -> str:  # a year outside 1900-2200 means the format misread the text ('31/12/10')
        return f"count(CASE WHEN year({ts}) BETWEEN 1900 AND 2200 THEN 1 END)"

    candidates = ZONED_FORMATS + (ISO,) + DATE_FORMATS[len(ZONED_FORMATS):]
    probes = [plausible("try_cast(v AS TIMESTAMP)" if f == ISO else f"try_strptime(v, {duckdb_str(f)})")
              for f in candidates]
    row = con.execute(f"SELECT count(*), {', '.join(probes)} FROM {sample}").fetchall()[0]
    total, counts = row[0], row[1:]
    if total == 0:
        return ISO
    best = max(range(len(counts)), key=lambda i: (counts[i], -i))
    if counts[best] < 0.5 * total:
        example = con.execute(f"SELECT v FROM {sample} LIMIT 1").fetchall()[0][0]
        raise SourceError(f"column {column!r}: cannot recognise the date format (e.g. {example!r}); "
                          f"give it with --date-format, e.g. --date-format '%d/%m/%Y'")
    return candidates[best]


def _column_types(con, src: Source, kind: Kind, fields: list[schema.Field], mapping: dict[str, str],
                  formats: dict[str, str]) -> tuple[dict[str, str], str | None]:
    """For a scanned CSV: which mapped columns DuckDB's reader can type itself (the fast path).

    Numbers whose sample values are all plain become DOUBLE; date columns become TIMESTAMP when they share
    one strptime format (or ISO). Everything else stays text and is typed in SQL, more slowly but able to
    clean '£1,234.50' or mixed formats. A value the reader cannot type is rejected with its line and
    column and quarantined like any other bad value.
    """
    if src.csv is None or kind is not Kind.transactions:  # small keyed kinds keep their source text
        return {}, None
    types: dict[str, str] = {}
    date_formats = {formats[f.name] for f in fields if f.name in formats}
    shared = date_formats.pop() if len(date_formats) == 1 else None
    if shared is not None and "%z" not in shared:
        for f in fields:
            if f.name in formats:
                types[mapping[f.name]] = "TIMESTAMP"
    for f in fields:
        if f.type is FieldType.number:
            col = duckdb_ident(mapping[f.name])
            bad = con.execute(f"SELECT count(*) FROM {src.sample} WHERE {col} IS NOT NULL "
                              f"AND try_cast({col} AS DOUBLE) IS NULL").fetchall()[0][0]
            if not bad:
                types[mapping[f.name]] = "DOUBLE"
    timestamp_format = shared if shared not in (None, ISO) and any(t == "TIMESTAMP" for t in types.values()) else None
    return types, timestamp_format


def _typed(field_: schema.Field, column: str, sql_type: str, date_format: str | None, float_id: bool,
           scanned: bool) -> str:
    """SQL for the canonical value of a source column (NULL when blank or unparseable)."""
    c = duckdb_ident(column)
    if sql_type == "DOUBLE" or sql_type == "TIMESTAMP":
        return c if field_.type is not FieldType.date else f"CAST({c} AS DATE)"
    v = f"nullif(trim({c}), '')"
    if field_.type is FieldType.text:
        if scanned:  # the CSV reader already turned the NULL_TEXT spellings into NULL
            value = v if field_.name in ID_FIELDS else c
        else:
            nulls = ", ".join(duckdb_str(x) for x in NULL_TEXT)
            value = f"CASE WHEN {v} IN ({nulls}) THEN NULL ELSE {v} END"
        if float_id:  # '13085.0' (an id that went through a float) is '13085'
            return f"regexp_replace({value}, '^(\\d+)\\.0+$', '\\1')"
        return value
    if field_.type is FieldType.number:
        # Currency signs and blanks go; commas only as thousands separators ('1,234.50'). Anything else
        # with a comma ('9,50') is ambiguous and is quarantined rather than guessed.
        bare = f"regexp_replace({v}, '[£$€¥\\s]', '', 'g')"
        thousands = (f"CASE WHEN regexp_matches({bare}, '^[-+]?\\d{{1,3}}(,\\d{{3}})+(\\.\\d+)?$') "
                     f"THEN replace({bare}, ',', '') ELSE {bare} END")
        return f"coalesce(try_cast({v} AS DOUBLE), try_cast({thousands} AS DOUBLE))"
    if field_.type in (FieldType.timestamp, FieldType.date):
        if date_format in (None, ISO):
            ts = f"try_cast({v} AS TIMESTAMP)"
        elif "%z" in date_format:
            ts = f"CAST(try_strptime({v}, {duckdb_str(date_format)}) AS TIMESTAMP)"
        else:
            ts = f"try_strptime({v}, {duckdb_str(date_format)})"
        return ts if field_.type is FieldType.timestamp else f"CAST({ts} AS DATE)"
    trues = ", ".join(duckdb_str(x) for x in TRUE_TEXT)
    falses = ", ".join(duckdb_str(x) for x in FALSE_TEXT)
    return (f"CASE WHEN lower(coalesce({v}, '')) IN ({falses}) THEN false "
            f"WHEN lower({v}) IN ({trues}) THEN true ELSE true END")


@dataclass
class _Plan:
    """The SQL pieces for one source: typed canonical columns and the rules a row may break."""

    typed: list[str]
    rules: list[tuple[str, str, str]]  # (condition on c__ columns, source column, rule text)
    rule_text: dict[str, str]          # source column -> rule text when the CSV reader cannot type it

    def rule_case(self) -> str:
        if not self.rules:
            return "NULL::INTEGER"
        return "CASE " + " ".join(f"WHEN {c} THEN {i}" for i, (c, _, _) in enumerate(self.rules)) + " END"


def _plan(kind: Kind, fields: list[schema.Field], mapping: dict[str, str], formats: dict[str, str],
          types: dict[str, str], options: Options, float_ids: set[str], scanned: bool) -> _Plan:
    typed, rules, rule_text = [], [], {}
    for f in fields:
        src = mapping[f.name]
        sql_type = types.get(src, "VARCHAR")
        typed.append(f"{_typed(f, src, sql_type, formats.get(f.name), f.name in float_ids, scanned)} AS c__{f.name}")
        raw_v = f"nullif(trim(CAST({duckdb_ident(src)} AS VARCHAR)), '')" if sql_type == "VARCHAR" else None
        c = f"c__{f.name}"
        if f.type is FieldType.number:
            rule_text[src] = f"not a number ({f.name})"
            if raw_v:
                rules.append((f"{raw_v} IS NOT NULL AND {c} IS NULL", src, rule_text[src]))
            rules.append((f"isinf({c}) OR isnan({c})", src, f"not a finite number ({f.name})"))
        if f.type in (FieldType.timestamp, FieldType.date):
            fmt = formats[f.name]
            rule_text[src] = f"unparseable date ({f.name}; expected {'ISO 8601' if fmt == ISO else fmt})"
            if raw_v:
                rules.append((f"{raw_v} IS NOT NULL AND {c} IS NULL", src, rule_text[src]))
            rules.append((f"year({c}) < 1900 OR year({c}) > 2200", src, f"date out of range ({f.name})"))
        # After the value rules: a value that is there but unreadable is not 'missing'.
        if f.required and not (kind is Kind.transactions and f.name == "customer_id" and options.guests == "keep"):
            guest = kind is Kind.transactions and f.name == "customer_id"
            what = "blank customer id (guest order)" if guest else f"missing {f.name}"
            rules.append((f"{c} IS NULL", src, what))
    if kind is Kind.invoices:
        if "due_date" in mapping:
            rules.append(("c__due_date < c__invoice_date", mapping["due_date"], "due date before invoice date"))
        if "paid_date" in mapping:
            rules.append(("c__paid_date < c__invoice_date", mapping["paid_date"], "paid before invoiced"))
    return _Plan(typed, rules, rule_text)


def _load(con: duckdb.DuckDBPyConnection, src: Source, options: Options, ingest_id: int, file_id: int,
          progress: ProgressFn) -> FileReport:
    kind = options.kind
    report = FileReport(src.label, kind.value)
    try:
        mapping = schema.recognise_columns(kind, src.columns, options.mapping)
    except ValueError as exc:
        raise SourceError(f"{src.label}: {exc}") from None
    missing = [f.name for f in schema.FIELDS[kind] if f.required and f.name not in mapping]
    if missing:
        f = schema.field(kind, missing[0])
        raise SourceError(
            f"{src.label}: no column for required field {f.name!r} (columns: {', '.join(src.columns)}; "
            f"recognised names include {', '.join(f.synonyms[:5])}); set it with --map {f.name}=COLUMN"
            + (f", or, if this sheet holds no {kind.value}, ingest the sheets that do one at a time with --sheet "
               f"NAME (sheets: {', '.join(src.sheets)})" if src.sheets else ""))
    if kind is Kind.transactions and {"amount", "quantity", "unit_price", "order_id"} <= set(mapping) \
            and _order_level_amount(con, src, mapping):
        report.notes.append(f"column {mapping.pop('amount')!r} holds order totals (on each order's first line "
                            "only): line amount taken as quantity x unit price")
    report.mapping = mapping
    fields = [f for f in schema.FIELDS[kind] if f.name in mapping]
    formats: dict[str, str] = {}
    for f in fields:
        if f.type in (FieldType.timestamp, FieldType.date):
            try:
                formats[f.name] = options.date_format or detect_date_format(con, src.sample, mapping[f.name])
            except SourceError as exc:
                raise SourceError(f"{src.label}: {exc}") from None
    report.date_format = next(iter(formats.values()), None)
    types, timestamp_format = _column_types(con, src, kind, fields, mapping, formats)
    float_ids = {f for f in ID_FIELDS if f in mapping and types.get(mapping[f], "VARCHAR") == "VARCHAR"
                 and con.execute(f"SELECT count(*) FROM {src.sample} "
                                 f"WHERE regexp_matches({duckdb_ident(mapping[f])}, '^\\d+\\.0+$')").fetchall()[0][0]}
    plan = _plan(kind, fields, mapping, formats, types, options, float_ids, scanned=src.csv is not None)
    progress(f"checking {src.label}", 0.2)
    if src.csv is not None and kind is Kind.transactions:
        return _load_csv_transactions(con, src, plan, types, timestamp_format, mapping, options, ingest_id,
                                      file_id, progress, report)

    exc, rejects_table = f"{src.table or src.sample}_exc", f"{src.sample}_rej"
    # CSV: provisional line = first data line + ordinal among the reader's good rows; corrected below.
    row_sql = "_row" if src.csv is None else f"row_number() OVER () + {src.csv.first_line - 1}"
    raw_cols = ", ".join(duckdb_ident(c) for c in src.columns)
    content = _content_sql(kind, mapping)
    keyed = kind is not Kind.transactions
    # Scan 1: the exceptions (every row, for the small keyed kinds).
    exception_filter = "true" if keyed else (
        "_rule IS NOT NULL OR EXISTS (SELECT 1 FROM transactions x WHERE x.line_hash = s.line_hash)")
    con.execute(f"""
        CREATE TEMP TABLE {exc} AS
        SELECT * FROM (
            SELECT *, {content_hash_sql(content)} AS line_hash,
                   {plan.rule_case()} AS _rule
            FROM (SELECT {row_sql} AS _row, {raw_cols}, {', '.join(plan.typed)}
                  FROM {src.relation(types, timestamp_format, rejects_table)})) s
        WHERE {exception_filter}""")
    rejects = list(src.rejects)
    if src.csv is not None:
        csv_rejects = _reader_rejects(con, rejects_table, plan)
        report.rows_read = _count_rows(con, src)
        rejects += _file_lines(con, src, csv_rejects, report.rows_read, "false", exc, report)
    else:
        report.rows_read = con.execute(f"SELECT count(*) FROM {src.table}").fetchall()[0][0] + len(src.rejects)
    _quarantine(con, src, exc, plan, rejects, ingest_id, file_id, kind)
    report.quarantined = con.execute(f"SELECT count(*) FROM {exc} WHERE _rule IS NOT NULL").fetchall()[0][0] \
        + len(rejects)
    progress(f"storing {src.label}", 0.5)
    if keyed:
        loaded, dups, superseded, updated = _store_keyed(con, src, exc, kind, mapping, ingest_id, file_id)
        report.quarantined += superseded
        report.updated = updated
    else:
        loaded, dups = _store_transactions(con, src, exc, plan, types, timestamp_format, mapping, options,
                                           ingest_id, file_id)
    report.loaded, report.duplicates = loaded, dups
    con.execute(f"DROP TABLE {exc}")
    progress(f"stored {src.label}", 1.0)
    return report


def _load_csv_transactions(con, src: Source, plan: _Plan, types: dict[str, str], timestamp_format: str | None,
                           mapping: dict[str, str], options: Options, ingest_id: int, file_id: int,
                           progress: ProgressFn, report: FileReport) -> FileReport:
    """Transactions from a delimited file: in the common case one scan of the file stores every row.

    1. One INSERT reads the file with DuckDB's CSV reader (typed where the sample allowed), numbers the rows,
       computes the canonical columns, flags and content hash, and stores every row that breaks no rule and
       whose content the store does not hold yet. Lines the reader cannot split or type land in its rejects
       table with their line and column.
    2. The file's physical lines are counted (a bare line count, the cheapest scan there is). When every
       record is one line, lines = header + stored + rejected exactly proves that no row was held back.
    3. Only otherwise (a row broke a rule, a line is already stored, a record spans lines, blank lines) is
       the file scanned again for the rows the INSERT held back: rule breakers are quarantined, and of a
       line the store already holds n times the copies beyond the n-th are stored (the rest are duplicates).
       When records span several lines (a quoted field with a line break) or blank lines sit between them,
       Python's csv module reads the file once to give each record its first physical line, and the
       stored line numbers are corrected.
    Deleting rows inside the transaction is avoided on purpose: DuckDB then rewrites the whole insert at
    commit.
    """
    assert src.csv is not None
    first = src.csv.first_line
    rej = f"{src.sample}_rej"
    content = _content_sql(Kind.transactions, mapping)
    raw_cols = ", ".join(duckdb_ident(c) for c in src.columns)
    any_stored = con.execute("SELECT count(*) FROM transactions").fetchall()[0][0] > 0
    where = f"ingest_id = {ingest_id} AND file_id = {file_id}"
    stored_elsewhere = f"(SELECT line_hash FROM transactions WHERE NOT ({where}))"

    def scan(relation: str) -> str:
        return f"""(SELECT *, {content_hash_sql(content)} AS line_hash, {plan.rule_case()} AS _rule
                    FROM (SELECT _k + {first - 1} AS _row, {raw_cols}, {', '.join(plan.typed)}
                          FROM (SELECT row_number() OVER () AS _k, * FROM {relation})))"""

    progress(f"storing {src.label}", 0.3)
    counted: list[int | None] = []
    counter = threading.Thread(target=lambda: counted.append(readers.count_lines(src.csv.path, src.csv.encoding)),
                               daemon=True)
    counter.start()  # the file's lines are counted while DuckDB reads it (gzip: DuckDB inflates on one core)
    fresh = "_rule IS NULL" + (" AND NOT EXISTS (SELECT 1 FROM transactions x WHERE x.line_hash = s.line_hash)"
                               if any_stored else "")
    try:
        inserted = con.execute(f"""INSERT INTO transactions
            {_canonical_sql(scan(src.relation(types, timestamp_format, rej)) + ' s', fresh, mapping, options,
                            ingest_id, file_id)}""").fetchall()[0][0]
    finally:
        counter.join()
    rejects = _reader_rejects(con, rej, plan)
    rejected_lines = sorted({r[0] for r in rejects})
    progress(f"checking {src.label}", 0.7)
    header = first - 1
    lines = counted[0] if counted else None
    if lines is None or lines < header + inserted + len(rejected_lines):
        lines = _physical_lines(con, src)  # DuckDB's own count ('\r' line ends, other encodings)
    exc = f"{src.sample}_exc"
    held_back = "false"
    if lines != header + inserted + len(rejected_lines):
        held_back = " OR ".join(["_rule IS NOT NULL"] * bool(plan.rules)
                                + [f"line_hash IN {stored_elsewhere}"] * any_stored) or "false"
    con.execute(f"CREATE TEMP TABLE {exc} AS SELECT * FROM {scan(src.relation(types, timestamp_format, None))} s "
                f"WHERE {held_back}")
    violators, known = con.execute(f"SELECT count(_rule), count(*) - count(_rule) FROM {exc}").fetchall()[0]
    records = inserted + len(rejected_lines) + violators + known
    if lines is not None and lines < header + records:
        lines = _physical_lines(con, src)
    if lines is not None and lines < header + records:
        raise LoyalistError(f"{src.label}: {records} records read from {lines} lines; nothing stored")
    rejects = _file_lines(con, src, rejects, records, where, exc, report, lines)
    _quarantine(con, src, exc, plan, rejects, ingest_id, file_id, Kind.transactions)
    if violators and any(t != "VARCHAR" for t in types.values()) and BY_RECORD not in report.notes:
        progress(f"quarantining {src.label}", 0.8)
        _source_text(con, src, types, ingest_id, file_id, exc)
    extra = 0
    if known:
        progress(f"de-duplicating {src.label}", 0.9)
        # Lines already stored: load only the copies beyond those the store held before this file.
        ranked = f"""(SELECT e.*, row_number() OVER (PARTITION BY e.line_hash ORDER BY e._row) AS _copy, n.n_stored
                      FROM {exc} e JOIN (SELECT line_hash, count(*) AS n_stored FROM transactions
                                         WHERE NOT ({where}) AND line_hash IN (SELECT line_hash FROM {exc})
                                         GROUP BY line_hash) n USING (line_hash)
                      WHERE e._rule IS NULL)"""
        extra = con.execute(f"INSERT INTO transactions "
                            f"{_canonical_sql(ranked + ' k', '_copy > n_stored', mapping, options, ingest_id, file_id)}"
                            ).fetchall()[0][0]
    con.execute(f"DROP TABLE {exc}")
    report.rows_read = records
    report.quarantined = len(rejects) + violators
    report.loaded, report.duplicates = inserted + extra, known - extra
    progress(f"stored {src.label}", 1.0)
    return report


def _file_lines(con, src: Source, rejects: list[tuple[int, str, str, str]], records: int, where: str, exc: str,
                report: FileReport, lines: int | None = None) -> list[tuple[int, str, str, str]]:
    """Give this file's stored rows (`where`), its exception rows (`exc`._row) and the reader's rejects their
    file lines. The rows carry first data line + ordinal among the reader's good rows; rejects carry DuckDB's
    line, which counts records and blank lines. With one record per line (lines = header + records) the
    rows after a rejected line move down by the rejected lines before them; otherwise the lines come from
    `_map_physical_lines`. Returns the rejects with file lines."""
    assert src.csv is not None
    header = src.csv.first_line - 1
    if lines is None:
        lines = readers.count_lines(src.csv.path, src.csv.encoding)
        if lines is None or lines < header + records:
            lines = _physical_lines(con, src)
    rejected_lines = sorted({r[0] for r in rejects})
    if lines is None or lines == header + records:
        # One record per line: a record's line is its ordinal among all records (DuckDB numbers rejects so).
        if rejected_lines:
            _shift_past_rejects(con, src, rejected_lines, where, exc)
        return rejects
    mapped = _map_physical_lines(con, src, rejected_lines, records, where, exc)
    if mapped is None:
        report.notes.append(BY_RECORD)
        if rejected_lines:
            _shift_past_rejects(con, src, rejected_lines, where, exc)
        return rejects
    return [(mapped.get(r[0], r[0]), *r[1:]) for r in rejects]


def _source_text(con, src: Source, types: dict[str, str], ingest_id: int, file_id: int, exc: str) -> None:
    """Give this file's quarantined rule breakers their record (and a typed column's value) as the file writes them.

    The columns the CSV reader typed itself come back as numbers and timestamps ('2.0', '2023-01-05
    00:00:00' for '2' and '05/01/2023'): Python's csv module (same dialect) reads those rows' lines again."""
    import csv

    import pyarrow as pa

    assert src.csv is not None
    d = src.csv
    wanted = {r for (r,) in con.execute(f"SELECT DISTINCT _row FROM {exc} WHERE _rule IS NOT NULL").fetchall()}
    last = max(wanted)
    rows, records, texts = [], [], []
    try:
        with readers.open_text(d.path, d.encoding) as fh:
            reader = csv.reader(fh, delimiter=d.delimiter, quotechar='"', doublequote=True, strict=False)
            line = 0
            for rec in reader:
                start, line = line + 1, reader.line_num
                if start in wanted and len(rec) == len(src.columns):
                    values = [v if v != "" else None for v in rec]
                    rows.append(start)
                    records.append(json.dumps(dict(zip(src.columns, values)), ensure_ascii=False,
                                              separators=(",", ":")))
                    texts.append(json.dumps(values, ensure_ascii=False))
                if line >= last:
                    break
    except (OSError, csv.Error, UnicodeError):  # e.g. a field beyond the csv module's size limit: keep the typed text
        return
    con.register("_source_text_arrow", pa.table({"r": pa.array(rows, pa.int64()), "record": records,
                                                 "texts": texts}))
    try:
        typed = [(i, c) for i, c in enumerate(src.columns) if types.get(c, "VARCHAR") != "VARCHAR"]
        value = ("CASE q.\"column\" " + " ".join(f"WHEN {duckdb_str(c)} THEN json_extract_string(t.texts, {i})"
                                                for i, c in typed) + " ELSE q.value END")
        con.execute(f"""UPDATE quarantine q SET record = t.record, value = {value}
                        FROM _source_text_arrow t
                        WHERE q.ingest_id = {ingest_id} AND q.file_id = {file_id} AND q."row" = t.r""")
    finally:
        con.unregister("_source_text_arrow")


def _reader_rejects(con, rejects_table: str, plan: _Plan) -> list[tuple[int, str, str, str]]:
    """Lines DuckDB's CSV reader rejected (malformed, or a value it could not type) as quarantine rows
    (DuckDB's line number, column, value, rule|record): one per line, the root cause first."""
    rows = con.execute(f"""
        SELECT line, coalesce(column_name, ''), coalesce(csv_line, ''), error_type, error_message
        FROM {rejects_table} ORDER BY line, error_type = 'CAST'""").fetchall()
    con.execute(f"DROP TABLE {rejects_table}")
    con.execute(f"DROP TABLE {rejects_table}_scan")
    out: list[tuple[int, str, str, str]] = []
    seen: set[int] = set()
    for line, column, csv_line, etype, message in rows:
        if line in seen:
            continue
        seen.add(line)
        csv_line = csv_line.strip("\r\n")  # DuckDB keeps the line break before a line after a CRLF
        if etype == "CAST" and column in plan.rule_text:
            m = re.search(r'Could not convert string "(.*)" to', message)
            out.append((line, column, m.group(1) if m else csv_line[:500], plan.rule_text[column] + "|" + csv_line))
        else:
            out.append((line, column, csv_line[:500], f"{etype}: {message}"))
    return out


def _physical_lines(con, src: Source) -> int | None:
    """The number of lines in the file (blank ones included), counted by DuckDB with no quoting; None when
    the file cannot be read that way."""
    assert src.csv is not None
    d = src.csv
    try:
        return con.execute(f"""SELECT count(*) FROM read_csv({duckdb_str(str(d.path))}, columns={{'l': 'VARCHAR'}},
                                   header=false, auto_detect=false, delim='\x1f', quote='', escape='',
                                   strict_mode=false, max_line_size=10000000,
                                   encoding={duckdb_str(d.encoding)})""").fetchall()[0][0]
    except duckdb.Error:
        return None


def _shift_past_rejects(con, src: Source, rejected_lines: list[int], where: str, exc: str) -> None:
    """Rows after a rejected line sit that many lines further down: add the number of rejected lines
    before each stored and each rule-breaking row (numbered by ordinal among the reader's good rows)."""
    assert src.csv is not None
    first = src.csv.first_line
    # Good row k (0-based) sits on line first + k + (number of rejected lines before it).
    good_before = [line - first - i for i, line in enumerate(rejected_lines)]
    values = ", ".join(f"({g}, {i + 1})" for i, g in enumerate(good_before))
    shift = f"(SELECT g, n FROM (VALUES {values}) v(g, n))"
    for table, col in (("transactions", "source_row"), (exc, "_row")):
        cond = where if table == "transactions" else "true"
        con.execute(f"""UPDATE {table} SET {col} = {col} + s.n
                        FROM (SELECT r.{col} AS old, max(v.n) AS n
                              FROM (SELECT DISTINCT {col} FROM {table} WHERE {cond} AND {col} >= {first + good_before[0]}) r
                              JOIN {shift} v ON v.g <= r.{col} - {first}
                              GROUP BY r.{col}) s
                        WHERE {cond} AND {table}.{col} = s.old""")


def _map_physical_lines(con, src: Source, rejected_lines: list[int], records: int, where: str,
                        exc: str) -> dict[int, int] | None:
    """Renumber the file's rows by physical line when records span lines or blank lines sit between them.

    Python's csv module (same dialect) reads the file once and gives the first line of every record; its
    records are matched to DuckDB's: the reader numbers a rejected record by records and blank lines
    before it, and the good rows by their order. Returns DuckDB's line -> file line for the rejected
    records, or None when the two readers do not see the same number of records."""
    import csv

    assert src.csv is not None
    d = src.csv
    starts: list[int] = []   # file line of each record after the header
    duck: list[int] = []     # DuckDB's number for it
    try:
        with readers.open_text(d.path, d.encoding) as fh:
            reader = csv.reader(fh, delimiter=d.delimiter, quotechar='"', doublequote=True, strict=False)
            prev, duck_no = 0, 0
            for rec in reader:
                line, prev = prev + 1, reader.line_num
                duck_no += 1
                if line <= d.first_line - 1:
                    continue
                if not rec:  # a blank line: not a record, but DuckDB counts it
                    continue
                starts.append(line)
                duck.append(duck_no)
    except (OSError, csv.Error, UnicodeError):
        return None
    if len(starts) != records:
        return None
    rejected = set(rejected_lines)
    good_lines = [s for s, k in zip(starts, duck) if k not in rejected]
    first = d.first_line
    import pyarrow as pa

    table = pa.table({"old": pa.array(range(first, first + len(good_lines)), pa.int64()),
                      "new": pa.array(good_lines, pa.int64())})
    con.register("_line_map_arrow", table)
    try:
        con.execute("CREATE TEMP TABLE _line_map AS SELECT * FROM _line_map_arrow WHERE old <> new")
    finally:
        con.unregister("_line_map_arrow")
    con.execute(f"""UPDATE transactions SET source_row = m.new FROM _line_map m
                    WHERE {where} AND transactions.source_row = m.old""")
    con.execute(f"UPDATE {exc} SET _row = m.new FROM _line_map m WHERE {exc}._row = m.old")
    con.execute("DROP TABLE _line_map")
    return {k: s for s, k in zip(starts, duck) if k in rejected}


SQL_TYPES = {FieldType.text: "VARCHAR", FieldType.timestamp: "TIMESTAMP", FieldType.date: "DATE",
             FieldType.number: "DOUBLE", FieldType.boolean: "BOOLEAN"}


def _content_sql(kind: Kind, mapping: dict[str, str]) -> list[str]:
    """Typed canonical values that identify a row's content; an unmapped field is a NULL of its type, so
    the same row hashes alike whichever source (and whichever columns) it came from."""
    return [f"c__{f.name}" if f.name in mapping else f"NULL::{SQL_TYPES[f.type]}"
            for f in schema.FIELDS[kind] if f.name != "cancelled"]


def _count_rows(con, src: Source) -> int:
    """Rows in a CSV counted independently of the two scans: records DuckDB can split into the header's
    columns (typing is not checked by a bare count) plus lines it could not split."""
    assert src.csv is not None
    bare = src.relation({}, None, f"{src.sample}_cnt")
    good = con.execute(f"SELECT count(*) FROM {bare}").fetchall()[0][0]
    structural = con.execute(f"SELECT count(DISTINCT line) FROM {src.sample}_cnt").fetchall()[0][0]
    con.execute(f"DROP TABLE {src.sample}_cnt")
    con.execute(f"DROP TABLE {src.sample}_cnt_scan")
    return good + structural


def _record_json(src: Source, alias: str = "r") -> str:
    """The source row as JSON text, kept with a quarantined row so nothing is lost."""
    return "to_json(struct_pack(" + ", ".join(
        f"{duckdb_ident(c)} := CAST({alias}.{duckdb_ident(c)} AS VARCHAR)" for c in src.columns) + "))::VARCHAR"


def _quarantine(con, src: Source, exc: str, plan: _Plan, rejects, ingest_id: int, file_id: int, kind: Kind) -> None:
    if plan.rules:
        rules = plan.rules
        columns = "CASE _rule " + " ".join(f"WHEN {i} THEN {duckdb_str(c)}" for i, (_, c, _) in enumerate(rules)) + " END"
        texts = "CASE _rule " + " ".join(f"WHEN {i} THEN {duckdb_str(r)}" for i, (_, _, r) in enumerate(rules)) + " END"
        values = "CASE _rule " + " ".join(f"WHEN {i} THEN CAST(r.{duckdb_ident(c)} AS VARCHAR)"
                                          for i, (_, c, _) in enumerate(rules)) + " END"
        con.execute(f"""INSERT INTO quarantine
                        SELECT {ingest_id}, {file_id}, {duckdb_str(kind.value)}, {duckdb_str(src.label)}, _row,
                               {columns}, {values}, {texts}, {_record_json(src)}
                        FROM {exc} r WHERE _rule IS NOT NULL""")
    for row, column, value, rule in rejects:
        rule, _, record = rule.partition("|")
        con.execute("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [ingest_id, file_id, kind.value, src.label, row, column, value, rule, record or value])


def _canonical_sql(rel: str, extra_where: str, mapping: dict[str, str], options: Options, ingest_id: int,
                   file_id: int) -> str:
    """SELECT of transactions rows (all columns, flags computed) from a relation of c__ typed columns,
    line_hash and _row."""
    def col(name: str) -> str:
        return f"c__{name}" if name in mapping else "NULL"

    qty, price, amount = col("quantity"), col("unit_price"), col("amount")
    has = {n: n in mapping for n in ("quantity", "unit_price", "amount")}
    if has["amount"]:
        amount_sql = f"coalesce({amount}, {qty} * {price})" if has["quantity"] and has["unit_price"] else amount
    else:
        amount_sql = f"{qty} * {price}" if has["quantity"] and has["unit_price"] else "NULL"
    if has["unit_price"]:
        price_sql = f"coalesce({price}, CASE WHEN {qty} <> 0 THEN {amount} / {qty} END)" \
            if has["quantity"] and has["amount"] else price
    else:
        price_sql = f"CASE WHEN {qty} <> 0 THEN {amount} / {qty} END" if has["quantity"] and has["amount"] else "NULL"
    codes = ", ".join(duckdb_str(c.upper()) for c in options.non_product_codes) or "NULL"
    prefixes = " OR ".join(f"starts_with(upper(product_id), {duckdb_str(p.upper())})"
                           for p in options.non_product_prefixes) or "false"
    non_product = (f"coalesce(upper(product_id) IN ({codes}) OR {prefixes} OR "
                   f"regexp_matches(description, {duckdb_str(options.non_product_description)}), false)")
    cancelled = f"coalesce({col('cancelled')}, false)" if "cancelled" in mapping else "false"
    return f"""
        SELECT customer_id, order_id, order_date, product_id, description, quantity, unit_price, amount,
               currency, country, channel,
               customer_id IS NULL AS is_guest,
               (_cancelled OR coalesce(regexp_matches(order_id, {duckdb_str(schema.CANCELLED_ORDER_ID)}), false))
                   AS is_cancellation,
               (coalesce(quantity, 0) < 0 OR coalesce(amount, 0) < 0) AS is_return,
               {non_product} AS is_non_product,
               CASE WHEN unit_price < 0 THEN 'negative' WHEN unit_price = 0 THEN 'zero' END AS price_issue,
               order_date > now()::TIMESTAMP + INTERVAL 1 DAY AS is_future,
               line_hash, {ingest_id} AS ingest_id, {file_id} AS file_id, _row AS source_row
        FROM (SELECT c__customer_id AS customer_id, {col('order_id')} AS order_id, c__order_date AS order_date,
                     {col('product_id')} AS product_id, {col('description')} AS description,
                     {qty} AS quantity, {price_sql} AS unit_price, {amount_sql} AS amount,
                     {col('currency')} AS currency, {col('country')} AS country, {col('channel')} AS channel,
                     {cancelled} AS _cancelled, line_hash, _row
              FROM {rel} WHERE {extra_where})"""


def _store_transactions(con, src: Source, exc: str, plan: _Plan, types: dict[str, str], timestamp_format,
                        mapping: dict[str, str], options: Options, ingest_id: int, file_id: int) -> tuple[int, int]:
    def canonical(rel: str, extra_where: str) -> str:
        return _canonical_sql(rel, extra_where, mapping, options, ingest_id, file_id)

    content = _content_sql(Kind.transactions, mapping)
    # Scan 2 (a materialised source; CSV transactions take _load_csv_transactions): every valid row whose
    # content is not stored yet (all its copies in this source).
    assert src.csv is None
    relation = src.relation(types, timestamp_format, None)
    scan = f"""(SELECT *, {content_hash_sql(content)} AS line_hash, {plan.rule_case()} AS _rule
                FROM (SELECT _row, {', '.join(duckdb_ident(c) for c in src.columns)},
                             {', '.join(plan.typed)}
                      FROM {relation}))"""
    fresh = con.execute(f"""
        INSERT INTO transactions {canonical(scan + ' s', '_rule IS NULL AND NOT EXISTS (SELECT 1 FROM transactions x '
                                                         'WHERE x.line_hash = s.line_hash)')}""").fetchall()[0][0]
    # Lines already stored: load only the copies beyond those the store holds.
    known = con.execute(f"SELECT count(*) FROM {exc} WHERE _rule IS NULL").fetchall()[0][0]
    extra = 0
    if known:
        ranked = f"""(SELECT e.*, row_number() OVER (PARTITION BY e.line_hash ORDER BY e._row) AS _copy, n.n_stored
                      FROM {exc} e JOIN (SELECT line_hash, count(*) AS n_stored FROM transactions
                                         WHERE line_hash IN (SELECT line_hash FROM {exc})
                                         GROUP BY line_hash) n USING (line_hash)
                      WHERE e._rule IS NULL)"""
        extra = con.execute(f"INSERT INTO transactions {canonical(ranked + ' k', '_copy > n_stored')}").fetchall()[0][0]
    return fresh + extra, known - extra


def _store_keyed(con, src: Source, exc: str, kind: Kind, mapping: dict[str, str], ingest_id: int,
                 file_id: int) -> tuple[int, int, int, int]:
    """Returns (loaded, duplicates, quarantined as superseded, of loaded: updates of stored rows)."""
    table = kind.value
    key = schema.KEYS[kind][0]
    names = [f.name for f in schema.FIELDS[kind]]
    select = ", ".join(f"{'c__' + n if n in mapping else 'NULL'} AS {n}" for n in names)
    c = f"{exc}_c"
    con.execute(f"""CREATE TEMP TABLE {c} AS
                    SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY _row DESC) AS _rank,
                           first_value(_row) OVER (PARTITION BY {key} ORDER BY _row DESC) AS _last_row,
                           first_value(line_hash) OVER (PARTITION BY {key} ORDER BY _row DESC) AS _last_hash
                    FROM (SELECT _row, {select}, line_hash FROM {exc} WHERE _rule IS NULL)""")
    # Earlier rows with the same key: identical to the last one -> duplicate; different -> quarantined.
    con.execute(f"""INSERT INTO quarantine
                    SELECT {ingest_id}, {file_id}, {duckdb_str(kind.value)}, {duckdb_str(src.label)}, c._row,
                           {duckdb_str(mapping[key])}, c.{key},
                           'superseded by a later row with the same {key} (row ' || c._last_row || ')',
                           {_record_json(src)}
                    FROM {c} c JOIN {exc} r USING (_row)
                    WHERE c._rank > 1 AND c.line_hash <> c._last_hash""")
    superseded = con.execute(f"SELECT count(*) FROM {c} WHERE _rank > 1 AND line_hash <> _last_hash").fetchall()[0][0]
    in_file_dups = con.execute(f"SELECT count(*) FROM {c} WHERE _rank > 1 AND line_hash = _last_hash").fetchall()[0][0]
    con.execute(f"DELETE FROM {c} WHERE _rank > 1")
    stored_same = con.execute(f"SELECT count(*) FROM {c} JOIN {table} s USING (line_hash)").fetchall()[0][0]
    updated = con.execute(f"""SELECT count(*) FROM {c} c JOIN {table} s USING ({key})
                              WHERE s.line_hash <> c.line_hash""").fetchall()[0][0]
    con.execute(f"""DELETE FROM {table} WHERE {key} IN
                    (SELECT c.{key} FROM {c} c JOIN {table} s USING ({key}) WHERE s.line_hash <> c.line_hash)""")
    con.execute(f"""INSERT INTO {table}
                    SELECT {', '.join(names)}, line_hash, {ingest_id}, {file_id}, _row FROM {c} c
                    WHERE NOT EXISTS (SELECT 1 FROM {table} s WHERE s.line_hash = c.line_hash)""")
    total = con.execute(f"SELECT count(*) FROM {c}").fetchall()[0][0]
    con.execute(f"DROP TABLE {c}")
    return total - stored_same, stored_same + in_file_dups, superseded, updated
