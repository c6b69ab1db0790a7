"""Ingest: map, type, validate, de-duplicate and store source rows, with every row accounted for.

The rule for duplicates (README, "Duplicates and overlapping exports"):
- transactions have no key: an order line is identified by its normalised content. Within one source,
  the n-th copy of a line is kept as the source has it; a line whose content and copy number are already
  stored (from an earlier source or the same file ingested again) is counted as a duplicate. So two exports
  that overlap in time count the shared lines once, and repeated lines inside one export stay.
- invoices, customers and products have a key: a row identical to the stored one is a duplicate, a changed
  row updates the stored one (an invoice that has since been paid), and within one source the last row
  with a key wins while earlier, different rows with that key are quarantined with the reason.

Everything runs inside one DuckDB transaction, so an ingest that fails or is killed leaves the store as it
was. The heavy lifting is SQL in the engine; Python only builds the statements.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import duckdb

from loyalist import schema
from loyalist.errors import LoyalistError, SourceError
from loyalist.ingest import readers
from loyalist.ingest.readers import RawSource, duckdb_ident, duckdb_str
from loyalist.schema import FieldType, Kind
from loyalist.store import Store

DATE_FORMATS = (
    "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y%m%d", "%Y/%m/%d",
    "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%d/%m/%Y", "%m/%d/%Y %H:%M:%S", "%m/%d/%Y %H:%M", "%m/%d/%Y",
    "%d.%m.%Y %H:%M", "%d.%m.%Y", "%d-%m-%Y %H:%M", "%d-%m-%Y", "%d/%m/%y", "%m/%d/%y",
    "%Y-%m-%d %H:%M:%S %z", "%Y-%m-%dT%H:%M:%S%z",
)
ISO = "iso"
"""DuckDB's own ISO-8601 cast (fractions, 'T' separator); tried first."""

ID_FIELDS = {"customer_id", "order_id", "product_id", "invoice_id"}
NULL_TEXT = ("", "nan", "NaN", "None", "NULL", "null", "N/A", "#N/A")
TRUE_TEXT = ("1", "true", "t", "yes", "y", "x")
FALSE_TEXT = ("0", "false", "f", "no", "n", "", "nan", "none", "null")


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


ProgressFn = Callable[[str, float], None]
"""progress(stage description, fraction done of the current source)."""


def ingest(store: Store, paths: Sequence[str | Path], options: Options | None = None,
           progress: ProgressFn | None = None) -> IngestReport:
    """Load every source in `paths` into the store in one transaction; return the row accounting."""
    options = options or Options()
    progress = progress or (lambda stage, frac: None)
    con = store.con
    started = time.perf_counter()
    ingest_id = con.execute("SELECT coalesce(max(ingest_id), 0) + 1 FROM ingests").fetchall()[0][0]
    reports: list[FileReport] = []
    con.execute("BEGIN TRANSACTION")
    try:
        file_id = 0
        for path in paths:
            for raw in _read(con, str(path), options, f"src{ingest_id}_{len(reports)}", progress):
                file_id += 1
                t0 = time.perf_counter()
                report = _load(con, raw, options, ingest_id, file_id, progress)
                report.seconds = time.perf_counter() - t0
                if not report.balanced():  # an internal invariant: never store a run that loses rows
                    raise LoyalistError(f"{raw.label}: row accounting does not add up ({report}); nothing stored")
                con.execute(
                    "INSERT INTO ingests VALUES (?, ?, now(), now(), ?, ?, ?, ?, ?, ?, ?)",
                    [ingest_id, file_id, options.kind.value, raw.label, report.rows_read, report.loaded,
                     report.duplicates, report.quarantined,
                     json.dumps({"mapping": report.mapping, "date_format": report.date_format,
                                 "guests": options.guests})])
                reports.append(report)
                for t in (raw.table,):
                    con.execute(f"DROP TABLE IF EXISTS {t}")
        progress("committing", 1.0)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return IngestReport(ingest_id, reports, time.perf_counter() - started)


def _read(con: duckdb.DuckDBPyConnection, source: str, options: Options, table: str,
          progress: ProgressFn) -> list[RawSource]:
    progress(f"reading {source}", 0.0)
    if source.startswith(("postgresql://", "postgres://")):
        from loyalist.ingest.postgres import export_to_csv

        if not options.query:
            raise SourceError(f"{_mask(source)}: give the table or query to read with --query")
        tmp = Path(tempfile.mkdtemp(prefix="loyalist-pg-")) / "export.csv"
        export_to_csv(source, options.query, tmp)
        raw = readers.read_delimited(con, tmp, table, delimiter=",", header=True)
        raw.label = f"{_mask(source)} ({options.query})"
        tmp.unlink()
        tmp.parent.rmdir()
        return [raw]
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


def _mask(url: str) -> str:
    import re

    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def detect_date_format(con: duckdb.DuckDBPyConnection, table: str, column: str) -> str:
    """The format that parses the most of a sample of values (ISO first; day-first wins a tie with
    month-first, as most of the world writes dates that way); raises when none parses most values."""
    col = duckdb_ident(column)
    sample = f"(SELECT trim({col}) AS v FROM {table} WHERE nullif(trim({col}), '') IS NOT NULL LIMIT 20000)"
    probes = [f"count(try_cast(v AS TIMESTAMP))"] + [f"count(try_strptime(v, {duckdb_str(f)}))"
                                                     for f in DATE_FORMATS]
    row = con.execute(f"SELECT count(*), {', '.join(probes)} FROM {sample}").fetchall()[0]
    total, counts = row[0], row[1:]
    if total == 0:
        return ISO
    candidates = (ISO,) + DATE_FORMATS
    best = max(range(len(counts)), key=lambda i: (counts[i], -i))
    if counts[best] < 0.5 * total:
        example = con.execute(f"SELECT v FROM {sample} LIMIT 1").fetchall()[0][0]
        raise SourceError(f"column {column!r}: cannot recognise the date format (e.g. {example!r}); "
                          f"give it with --date-format, e.g. --date-format '%d/%m/%Y'")
    return candidates[best]


def _typed(field_: schema.Field, column: str, date_format: str | None) -> str:
    """SQL for the canonical value of a source column (NULL when blank or unparseable)."""
    v = f"nullif(trim({duckdb_ident(column)}), '')"
    if field_.type is FieldType.text:
        nulls = ", ".join(duckdb_str(x) for x in NULL_TEXT)
        if field_.name in ID_FIELDS:  # '13085.0' (an id that went through a float) is '13085'
            return f"CASE WHEN {v} IN ({nulls}) THEN NULL ELSE regexp_replace({v}, '^(\\d+)\\.0+$', '\\1') END"
        return f"CASE WHEN {v} IN ({nulls}) THEN NULL ELSE {v} END"
    if field_.type is FieldType.number:
        # Currency signs and blanks go; commas only as thousands separators ('1,234.50'). Anything else
        # with a comma ('9,50') is ambiguous and is quarantined rather than guessed.
        bare = f"regexp_replace({v}, '[£$€¥\\s]', '', 'g')"
        thousands = f"CASE WHEN regexp_matches({bare}, '^[-+]?\\d{{1,3}}(,\\d{{3}})+(\\.\\d+)?$') " \
                    f"THEN replace({bare}, ',', '') ELSE {bare} END"
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


def _load(con: duckdb.DuckDBPyConnection, raw: RawSource, options: Options, ingest_id: int, file_id: int,
          progress: ProgressFn) -> FileReport:
    kind = options.kind
    report = FileReport(raw.label, kind.value, rows_read=raw.rows_read)
    try:
        mapping = schema.recognise_columns(kind, raw.columns, options.mapping)
    except ValueError as exc:
        raise SourceError(f"{raw.label}: {exc}") from None
    missing = [f.name for f in schema.FIELDS[kind] if f.required and f.name not in mapping]
    if missing:
        f = schema.field(kind, missing[0])
        raise SourceError(
            f"{raw.label}: no column for required field {f.name!r} (columns: {', '.join(raw.columns)}; "
            f"recognised names include {', '.join(f.synonyms[:5])}); set it with --map {f.name}=COLUMN")
    report.mapping = mapping
    fields = [f for f in schema.FIELDS[kind] if f.name in mapping]
    date_fields = [f for f in fields if f.type in (FieldType.timestamp, FieldType.date)]
    formats: dict[str, str] = {}
    for f in date_fields:
        try:
            formats[f.name] = options.date_format or detect_date_format(con, raw.table, mapping[f.name])
        except SourceError as exc:
            raise SourceError(f"{raw.label}: {exc}") from None
    report.date_format = formats.get(date_fields[0].name) if date_fields else None
    progress(f"validating {raw.label}", 0.3)

    # 1. Typed values, and the first rule each row breaks (NULL when it breaks none).
    typed = [f"{_typed(f, mapping[f.name], formats.get(f.name))} AS c__{f.name}" for f in fields]
    rules: list[tuple[str, str, str]] = []  # (condition, column, rule text)
    for f in fields:
        src = mapping[f.name]
        raw_v = f"nullif(trim({duckdb_ident(src)}), '')"
        c = f"c__{f.name}"
        if f.required and not (kind is Kind.transactions and f.name == "customer_id" and options.guests == "keep"):
            what = "blank customer id (guest order)" if f.name == "customer_id" else f"missing {f.name}"
            rules.append((f"{c} IS NULL", src, what))
        if f.type is FieldType.number:
            rules.append((f"{raw_v} IS NOT NULL AND {c} IS NULL", src, f"not a number ({f.name})"))
            rules.append((f"isinf({c}) OR isnan({c})", src, f"not a finite number ({f.name})"))
        if f.type in (FieldType.timestamp, FieldType.date):
            fmt = formats[f.name]
            rules.append((f"{raw_v} IS NOT NULL AND {c} IS NULL", src,
                          f"unparseable date ({f.name}; expected {'ISO 8601' if fmt == ISO else fmt})"))
            rules.append((f"year({c}) < 1900 OR year({c}) > 2200", src, f"date out of range ({f.name})"))
    if kind is Kind.invoices:
        if "due_date" in mapping:
            rules.append(("c__due_date < c__invoice_date", mapping["due_date"], "due date before invoice date"))
        if "paid_date" in mapping:
            rules.append(("c__paid_date < c__invoice_date", mapping["paid_date"], "paid before invoiced"))
    rule_sql = ("CASE " + " ".join(f"WHEN {c} THEN {i}" for i, (c, _, _) in enumerate(rules)) + " END"
                if rules else "NULL")
    raw_cols = ", ".join(duckdb_ident(c) for c in raw.columns)
    con.execute(f"""CREATE TEMP TABLE {raw.table}_t AS
                    SELECT _row, {', '.join('c__' + f.name for f in fields)}, {rule_sql} AS _rule
                    FROM (SELECT _row, {raw_cols}, {', '.join(typed)} FROM {raw.table})""")
    _quarantine_rules(con, raw, rules, ingest_id, file_id, kind)
    for row, column, value, rule in raw.rejects:
        con.execute("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [ingest_id, file_id, kind.value, raw.label, row, column, value, rule, value])
    quarantined = con.execute(f"SELECT count(*) FROM {raw.table}_t WHERE _rule IS NOT NULL").fetchall()[0][0]
    report.quarantined = quarantined + len(raw.rejects)
    progress(f"de-duplicating {raw.label}", 0.6)

    # 2. Canonical rows, hashed on their content.
    if kind is Kind.transactions:
        loaded, dups = _store_transactions(con, raw, options, mapping, ingest_id, file_id)
    else:
        loaded, dups, superseded, updated = _store_keyed(con, raw, kind, mapping, ingest_id, file_id)
        report.quarantined += superseded
        report.updated = updated
    report.loaded, report.duplicates = loaded, dups
    con.execute(f"DROP TABLE {raw.table}_t")
    progress(f"stored {raw.label}", 1.0)
    return report


def _record_json(raw: RawSource, alias: str = "r") -> str:
    """The source row as JSON text, kept with a quarantined row so nothing is lost."""
    return "to_json(struct_pack(" + ", ".join(
        f"{duckdb_ident(c)} := {alias}.{duckdb_ident(c)}" for c in raw.columns) + "))::VARCHAR"


def _quarantine_rules(con, raw: RawSource, rules, ingest_id: int, file_id: int, kind: Kind) -> None:
    if not rules:
        return
    columns = "CASE _rule " + " ".join(f"WHEN {i} THEN {duckdb_str(c)}" for i, (_, c, _) in enumerate(rules)) + " END"
    texts = "CASE _rule " + " ".join(f"WHEN {i} THEN {duckdb_str(r)}" for i, (_, _, r) in enumerate(rules)) + " END"
    values = "CASE _rule " + " ".join(f"WHEN {i} THEN CAST(r.{duckdb_ident(c)} AS VARCHAR)"
                                      for i, (_, c, _) in enumerate(rules)) + " END"
    con.execute(f"""INSERT INTO quarantine
                    SELECT {ingest_id}, {file_id}, {duckdb_str(kind.value)}, {duckdb_str(raw.label)}, _row,
                           {columns}, {values}, {texts}, {_record_json(raw)}
                    FROM {raw.table}_t q JOIN {raw.table} r USING (_row) WHERE _rule IS NOT NULL""")


def _hash(cols: Sequence[str]) -> str:
    parts = ", ".join(f"coalesce(CAST({c} AS VARCHAR), chr(0))" for c in cols)
    return f"md5_number(concat_ws(chr(31), {parts}))"


def _store_transactions(con, raw: RawSource, options: Options, mapping: dict[str, str], ingest_id: int,
                        file_id: int) -> tuple[int, int]:
    t = f"{raw.table}_t"

    def col(name: str) -> str:
        return f"c__{name}" if name in mapping else "NULL"

    qty, price, amount = col("quantity"), col("unit_price"), col("amount")
    amount_sql = f"coalesce({amount}, {qty} * {price})" if amount != "NULL" and qty != "NULL" and price != "NULL" \
        else (amount if amount != "NULL" else (f"{qty} * {price}" if qty != "NULL" and price != "NULL" else "NULL"))
    price_sql = f"coalesce({price}, CASE WHEN {qty} <> 0 THEN {amount} / {qty} END)" \
        if price != "NULL" and amount != "NULL" and qty != "NULL" else \
        (price if price != "NULL" else (f"CASE WHEN {qty} <> 0 THEN {amount} / {qty} END"
                                        if qty != "NULL" and amount != "NULL" else "NULL"))
    codes = ", ".join(duckdb_str(c.upper()) for c in options.non_product_codes) or "NULL"
    prefixes = " OR ".join(f"starts_with(upper(product_id), {duckdb_str(p.upper())})"
                           for p in options.non_product_prefixes) or "false"
    non_product = (f"(upper(product_id) IN ({codes}) OR {prefixes} OR "
                   f"coalesce(regexp_matches(description, {duckdb_str(options.non_product_description)}), false))")
    cancelled = f"coalesce({col('cancelled')}, false)" if "cancelled" in mapping else "false"
    content = ["customer_id", "order_id", "order_date", "product_id", "description", "quantity", "unit_price",
               "amount", "currency", "country", "channel"]
    con.execute(f"""
        CREATE TEMP TABLE {t}_c AS
        WITH c AS (
            SELECT _row, c__customer_id AS customer_id, {col('order_id')} AS order_id, c__order_date AS order_date, {col('product_id')} AS product_id,
                   {col('description')} AS description, {qty} AS quantity, {price_sql} AS unit_price,
                   {amount_sql} AS amount, {col('currency')} AS currency, {col('country')} AS country,
                   {col('channel')} AS channel, {cancelled} AS _cancelled
            FROM {t} WHERE _rule IS NULL),
        h AS (SELECT *, {_hash(content)} AS line_hash FROM c)
        SELECT *, row_number() OVER (PARTITION BY line_hash ORDER BY _row)::INTEGER AS occurrence FROM h""")
    before = con.execute("SELECT count(*) FROM transactions").fetchall()[0][0]
    con.execute(f"""
        INSERT INTO transactions
        SELECT customer_id, order_id, order_date, product_id, description, quantity, unit_price, amount,
               currency, country, channel,
               customer_id IS NULL AS is_guest,
               (_cancelled OR coalesce(regexp_matches(order_id, {duckdb_str(schema.CANCELLED_ORDER_ID)}), false))
                   AS is_cancellation,
               (coalesce(quantity, 0) < 0 OR coalesce(amount, 0) < 0) AS is_return,
               {non_product} AS is_non_product,
               CASE WHEN unit_price < 0 THEN 'negative' WHEN unit_price = 0 THEN 'zero' END AS price_issue,
               order_date > now()::TIMESTAMP + INTERVAL 1 DAY AS is_future,
               line_hash, occurrence, {ingest_id}, {file_id}, _row
        FROM {t}_c s
        WHERE NOT EXISTS (SELECT 1 FROM transactions x
                          WHERE x.line_hash = s.line_hash AND x.occurrence = s.occurrence)""")
    after = con.execute("SELECT count(*) FROM transactions").fetchall()[0][0]
    total = con.execute(f"SELECT count(*) FROM {t}_c").fetchall()[0][0]
    con.execute(f"DROP TABLE {t}_c")
    return after - before, total - (after - before)


def _store_keyed(con, raw: RawSource, kind: Kind, mapping: dict[str, str], ingest_id: int,
                 file_id: int) -> tuple[int, int, int, int]:
    """Returns (loaded, duplicates, quarantined as superseded, of loaded: updates of stored rows)."""
    t = f"{raw.table}_t"
    table = kind.value
    key = schema.KEYS[kind][0]
    names = [f.name for f in schema.FIELDS[kind]]
    select = ", ".join(f"{'c__' + n if n in mapping else 'NULL'} AS {n}" for n in names)
    con.execute(f"""CREATE TEMP TABLE {t}_c AS
                    WITH c AS (SELECT _row, {select} FROM {t} WHERE _rule IS NULL)
                    SELECT *, {_hash(names)} AS line_hash,
                           row_number() OVER (PARTITION BY {key} ORDER BY _row DESC) AS _rank,
                           first_value(_row) OVER (PARTITION BY {key} ORDER BY _row DESC) AS _last_row,
                           first_value({_hash(names)}) OVER (PARTITION BY {key} ORDER BY _row DESC) AS _last_hash
                    FROM c""")
    # Earlier rows with the same key: identical to the last one -> duplicate; different -> quarantined.
    con.execute(f"""INSERT INTO quarantine
                    SELECT {ingest_id}, {file_id}, {duckdb_str(kind.value)}, {duckdb_str(raw.label)}, c._row,
                           {duckdb_str(mapping[key])}, c.{key},
                           'superseded by a later row with the same {key} (row ' || c._last_row || ')',
                           {_record_json(raw)}
                    FROM {t}_c c JOIN {raw.table} r USING (_row)
                    WHERE c._rank > 1 AND c.line_hash <> c._last_hash""")
    superseded = con.execute(f"SELECT count(*) FROM {t}_c WHERE _rank > 1 AND line_hash <> _last_hash"
                             ).fetchall()[0][0]
    in_file_dups = con.execute(f"SELECT count(*) FROM {t}_c WHERE _rank > 1 AND line_hash = _last_hash"
                               ).fetchall()[0][0]
    con.execute(f"DELETE FROM {t}_c WHERE _rank > 1")
    stored_same = con.execute(f"SELECT count(*) FROM {t}_c c JOIN {table} s USING (line_hash)").fetchall()[0][0]
    updated = con.execute(f"""SELECT count(*) FROM {t}_c c JOIN {table} s USING ({key})
                              WHERE s.line_hash <> c.line_hash""").fetchall()[0][0]
    con.execute(f"""DELETE FROM {table} WHERE {key} IN
                    (SELECT c.{key} FROM {t}_c c JOIN {table} s USING ({key}) WHERE s.line_hash <> c.line_hash)""")
    con.execute(f"""INSERT INTO {table}
                    SELECT {', '.join(names)}, line_hash, {ingest_id}, {file_id}, _row FROM {t}_c c
                    WHERE NOT EXISTS (SELECT 1 FROM {table} s WHERE s.line_hash = c.line_hash)""")
    total = con.execute(f"SELECT count(*) FROM {t}_c").fetchall()[0][0]
    con.execute(f"DROP TABLE {t}_c")
    return total - stored_same, stored_same + in_file_dups, superseded, updated
