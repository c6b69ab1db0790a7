"""The customer-base analysis on Apache Spark (`loyalist analyze --engine spark`): same code, same answers.

What is computed where:

1. **Executors** read the canonical transactions (Parquet or CSV files, any Spark filesystem: file://, s3a://,
   hdfs://, or a table of the Spark catalog) and build the per-customer sufficient statistics with the SAME Ibis
   expressions as the DuckDB engine (`loyalist.features.rfm_summary`), compiled by the Ibis PySpark backend.
   The summary (one row per customer) is cached on the executors.
2. **Driver**: only the distinct sufficient-statistic patterns are collected — `(frequency, recency, T)` with
   the number of customers sharing each, and `(frequency, monetary_value)` of repeat customers with counts for
   the spend model. The same model classes are fitted with those counts as weights (the likelihoods are sums
   over customers, so a weighted sum over distinct patterns is the same likelihood; both engines fit through
   `loyalist.customer_base.fit_patterns`). Driver memory grows with the number of distinct patterns
   (bounded by days of history squared for the transaction model), never with order lines.
3. **Executors** score every customer with `mapInPandas`, running `loyalist.customer_base.score` (the same numpy
   code) on each Arrow batch, with the fitted parameters shipped in the task closure.
4. The per-customer table is written as a Parquet dataset (one file per Spark partition) under
   `OUT/customer_insights/`, the run report as `OUT/analysis_run.json`; optionally it is loaded into a DuckDB
   store (`--db`) so `loyalist customers` and the dashboard serve it.

Output table `customer_insights` (same columns, same types and, within floating-point summation order, the
same numbers as the DuckDB engine): customer_id, first_order, last_order, orders, revenue, frequency,
recency_days, tenure_days, p_alive, expected_orders_<h>d, prob_order_<h>d, expected_order_value,
clv_<m>m, as_of, model — plus the columns of insight steps that run on Spark.

Insight steps (`loyalist.insights`) run on Spark when registered with `spark=True` — today every step: timing,
direction, payment, crosssell, segments, value, lifecycle, forecast, events. Such a step gets a `Context` whose
`store` is a `SparkSource` (`.ibis` = the Ibis PySpark backend, `.table("transactions")`, `.table("products")`
and `.table("invoices")` (from `--products` / `--invoices`, else empty with a note), `.stored` (the `--db`
store, for the event feed's bookkeeping), `.write_result(name, frame)` for its result tables) and whose
`customers` is the per-customer table as an Ibis table on Spark (cached); it returns an Ibis table keyed by
customer_id (or None). Each step's module docstring says what it computes where; the rule is the same for all:
features by the same Ibis expressions on the executors, per-customer (and per customer x product) numeric code
per Arrow batch or per customer group (`mapInPandas` / `applyInPandas`) on the executors, global fits at the
driver on small aggregates (distinct patterns, value counts, one row per product or segment; per-customer rows
only where a global fit needs them, named in the step's docstring). Result tables with a row per customer or
customer x product are Spark DataFrames written by the executors; small ones are pandas frames from the driver;
both go under `OUT/<table>/` and, with `--db`, into the store (events, event_runs and the backtest tables are
appended, as the DuckDB engine does). A step registered without `spark=True` is named before any work starts
as not available on Spark, and asking for it (`--step NAME`) fails at once. `--model auto` takes the latest
backtest stored in `--db` whose holdout ended by the as-of date (`analysis.chosen_model`, as the DuckDB engine),
else runs the customer-base backtest on Spark (`loyalist.backtest.backtest_on_spark`: classic models on distinct
patterns, metrics from per-batch sums).

Refused before Spark starts, because the answers would differ silently: a `--db` store whose products carry
costs, margins or categories without `--products`; one holding invoices without `--invoices` (when `payment`
runs); one whose customers carry industry / region / size when `crosssell` runs (customer attributes are not
read on Spark).

Products (`products=` / `--products`, the store's products table as Parquet/CSV or a Spark table): used as the
DuckDB engine uses the store's — per-customer margins for CLV by the same Ibis expression
(`loyalist.analysis.margin_table`, joined onto the summary before scoring) and the category level of the
forecasts. Without them CLV uses the gross_margin setting and the report says so; with `db` naming a store whose
products carry costs, margins or categories, they are required (refused before Spark starts).

Hand-written here is only the glue (reading the source, collecting patterns, wiring mapInPandas): Spark does
the distribution, Ibis the SQL, the models the statistics.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from loyalist.customer_base import (
    TRANSACTION_MODELS,
    FittedBase,
    Settings,
    fit_patterns,
    score,
)
from loyalist.errors import LoyalistError
from loyalist.features import rfm_summary
from loyalist.insights import Context, Step, load_steps
from loyalist.models import GammaGamma

if TYPE_CHECKING:  # pragma: no cover
    import ibis.expr.types as ir
    from pyspark.sql import DataFrame, SparkSession

CUSTOMER_TABLE = "customer_insights"

TRANSACTION_TYPES: dict[str, str] = {
    "customer_id": "string", "order_id": "string", "order_date": "timestamp", "product_id": "string",
    "description": "string", "quantity": "float64", "unit_price": "float64", "amount": "float64",
    "currency": "string", "country": "string", "channel": "string", "is_guest": "boolean",
    "is_cancellation": "boolean", "is_return": "boolean", "is_non_product": "boolean", "price_issue": "string",
    "is_future": "boolean",
}
"""The canonical transactions columns (as in the DuckDB store's `transactions` table) and their Ibis types.
Lineage columns (line_hash, ingest_id, file_id, source_row) may be present and are ignored."""

REQUIRED = ("customer_id", "order_date", "amount", "is_guest", "is_cancellation", "is_return", "is_non_product")


def _need_pyspark():
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise LoyalistError("the Spark engine needs pyspark and a Java runtime: pip install 'loyalist[spark]' "
                            "(and e.g. apt-get install openjdk-17-jre-headless)") from None


def spark_session(master: str | None = None, conf: dict[str, str] | None = None,
                  app_name: str = "loyalist") -> SparkSession:
    """A SparkSession: `master` local[N], spark://host:port, yarn, k8s://... or sc://host:port (Spark Connect).

    Without `master`, an existing session (e.g. under spark-submit) is reused, else local[*].
    """
    _need_pyspark()
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master and master.startswith("sc://"):
        builder = builder.remote(master)
    elif master:
        builder = builder.master(master)
    settings = {"spark.ui.showConsoleProgress": "false", "spark.sql.session.timeZone": "UTC",
                "spark.sql.execution.arrow.pyspark.enabled": "true", **(conf or {})}
    for k, v in settings.items():
        builder = builder.config(k, v)
    session = builder.getOrCreate()
    if not (master and master.startswith("sc://")):
        session.sparkContext.setLogLevel("ERROR")
    return session


PRODUCTS_TYPES: dict[str, str] = {"product_id": "string", "description": "string", "category": "string",
                                  "unit_cost": "float64", "margin": "float64"}
INVOICE_TYPES: dict[str, str] = {"invoice_id": "string", "customer_id": "string", "invoice_date": "date",
                                 "due_date": "date", "amount": "float64", "paid_date": "date", "disputed": "boolean"}
APPEND_TABLES = ("backtest_metrics", "backtest_tracking", "events", "event_runs")
"""Result tables appended to the --db store (as the DuckDB engine appends them), not replaced."""
EMPTY_WITHOUT_OPTION = {"products": (PRODUCTS_TYPES, "no products table (--products): no product categories "
                                                     "(forecasts have no category level)"),
                        "invoices": (INVOICE_TYPES, "no invoices table (--invoices): no payment behaviour")}


@dataclass
class SparkSource:
    """The `store` of a Spark-capable insight step: the Ibis PySpark backend and the source tables.

    Without `--products` the Spark engine has no products table: `table("products")` is then an empty one (no
    categories, no costs), and the run report says so. Result tables of the steps are handed to `write_result(name, frame)` and written by
    the engine under OUT/<name>/ (and into --db)."""

    ibis: Any
    tables: dict[str, ir.Table]
    results: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cached: list = field(default_factory=list)
    """Spark DataFrames the steps persisted (`keep`); the engine unpersists them at the end."""
    stored: Any = None
    """The --db store (loyalist.store.Store) when given, else None: what earlier runs left there (the events
    step reads the events already stored, so it adds only new ones). Tables in APPEND_TABLES are appended to it."""

    def table(self, name: str) -> ir.Table:
        if name in EMPTY_WITHOUT_OPTION and name not in self.tables:
            import ibis

            types, note = EMPTY_WITHOUT_OPTION[name]
            if note not in self.notes:
                self.notes.append(note)
            return ibis.memtable(pd.DataFrame({c: pd.Series(dtype="object" if t in ("string", "date") else
                                                            "boolean" if t == "boolean" else t)
                                               for c, t in types.items()}), schema=types)
        if name not in self.tables:
            raise LoyalistError(f"table {name!r} is not read on the Spark engine (available: {sorted(self.tables)})")
        return self.tables[name]

    def keep(self, frame: DataFrame) -> DataFrame:
        """`frame` persisted (memory, then disk) for the step's later reads and the final write; the engine
        unpersists it at the end of the run."""
        from pyspark import StorageLevel

        frame = frame.persist(StorageLevel.MEMORY_AND_DISK)
        self.cached.append(frame)
        return frame

    def write_result(self, name: str, frame: pd.DataFrame | DataFrame | ir.Table) -> None:
        """Keep a step's result table for the engine to write under OUT/<name>/ (and into --db): a pandas frame
        (small: one row per series, segment ...) or, for tables with a row per customer or customer x product,
        a Spark DataFrame or an Ibis table on Spark, written by the executors without reaching the driver."""
        if not isinstance(frame, pd.DataFrame) and hasattr(frame, "to_pyarrow"):  # an Ibis table
            frame = self.ibis._session.sql(self.ibis.compile(frame))
        self.results[name] = frame


def _is_path(source: str) -> bool:
    return ("://" in source or "/" in source or os.sep in source or Path(source).exists()
            or source.lower().endswith((".parquet", ".csv", ".csv.gz", ".pq")))


def read_transactions(con, source: str | list[str]) -> ir.Table:
    """The canonical transactions from Parquet/CSV path(s) (files, folders, globs) or a Spark catalog table,
    cast to the canonical types; a missing required column is an error naming it."""
    import ibis

    sources = [source] if isinstance(source, str) else list(source)
    session = con._session
    if len(sources) == 1 and not _is_path(sources[0]):
        try:
            t = con.table(sources[0])
        except Exception as exc:
            raise LoyalistError(f"--source {sources[0]!r}: no such path, and no Spark table of that name "
                                f"({str(exc).splitlines()[0]})") from None
    else:
        csv = all(s.lower().rstrip("/").endswith((".csv", ".csv.gz")) for s in sources)
        try:
            sdf = (session.read.csv(sources, header=True, inferSchema=False) if csv
                   else session.read.parquet(*sources))
        except Exception as exc:
            raise LoyalistError(f"--source {', '.join(sources)}: cannot read "
                                f"({str(exc).splitlines()[0][:300]})") from None
        name = f"loyalist_transactions_{abs(hash(tuple(sources))) % 10**8}"
        sdf.createOrReplaceTempView(name)
        t = con.table(name)
    missing = [c for c in REQUIRED if c not in t.columns]
    if missing:
        raise LoyalistError(f"--source lacks the canonical column(s) {', '.join(missing)}; it must be a copy of "
                            "the store's transactions table (write one with `loyalist dump transactions --out DIR`)")
    casts = {c: t[c].cast(ty) for c, ty in TRANSACTION_TYPES.items() if c in t.columns
             and t[c].type() != ibis.dtype(ty)}
    return t.mutate(**casts) if casts else t


def _read_canonical(con, source: str, option: str, types: dict[str, str], key: str, dump: str) -> ir.Table:
    """A canonical store table from Parquet/CSV path(s) or a Spark table, with exactly `types`' columns cast to
    the store's types (a column the source lacks is NULL; lacking `key` is an error naming the option)."""
    import ibis

    session = con._session
    if not _is_path(source):
        try:
            p = con.table(source)
        except Exception as exc:
            raise LoyalistError(f"{option} {source!r}: no such path, and no Spark table of that name "
                                f"({str(exc).splitlines()[0]})") from None
    else:
        csv = source.lower().rstrip("/").endswith((".csv", ".csv.gz"))
        try:
            sdf = session.read.csv(source, header=True, inferSchema=False) if csv else session.read.parquet(source)
        except Exception as exc:
            raise LoyalistError(f"{option} {source}: cannot read ({str(exc).splitlines()[0][:300]})") from None
        name = f"loyalist_{option.strip('-')}_{abs(hash(source)) % 10**8}"
        sdf.createOrReplaceTempView(name)
        p = con.table(name)
    if key not in p.columns:
        raise LoyalistError(f"{option} lacks the column {key}; it must be a copy of the store's {dump} table "
                            f"(write one with `loyalist dump {dump} --out DIR`)")
    cols = {c: (p[c].cast(ty) if c in p.columns else ibis.null(ty)) for c, ty in types.items()}
    return p.select(**cols)


def read_products(con, source: str) -> ir.Table:
    """The canonical products table (product_id, description, category, unit_cost, margin) from Parquet/CSV
    path(s) or a Spark table (write one with `loyalist dump products --out DIR`), cast to the store's types."""
    return _read_canonical(con, source, "--products", PRODUCTS_TYPES, "product_id", "products")


def read_invoices(con, source: str) -> ir.Table:
    """The canonical invoices table (invoice_id, customer_id, invoice_date, due_date, amount, paid_date,
    disputed) from Parquet/CSV path(s) or a Spark table (`loyalist dump invoices --out DIR`)."""
    return _read_canonical(con, source, "--invoices", INVOICE_TYPES, "customer_id", "invoices")


def store_products_need_flag(db: Path | str, store=None) -> str | None:
    """Why the products of the store `db` must be given with --products (they carry costs, margins or
    categories the DuckDB engine uses), or None."""
    from loyalist.store import has_table, open_store

    own = store is None
    store = store or open_store(db, read_only=True)
    try:
        if not has_table(store, "products"):
            return None
        n = store.con.execute("SELECT count(unit_cost), count(margin), count(category) FROM products").fetchall()[0]
    finally:
        if own:
            store.close()
    if not any(n):
        return None
    return (f"{db} holds products with unit costs ({n[0]:,}), margins ({n[1]:,}) or categories ({n[2]:,}), which "
            "the DuckDB engine uses for CLV and the category forecasts: pass them with --products PATH (write them "
            f"with `loyalist dump products --db {db} --out DIR`)")


def store_invoices_need_flag(db: Path | str, store=None) -> str | None:
    """Why the invoices of the store `db` must be given with --invoices (the DuckDB engine's payment step reads
    them), or None."""
    from loyalist.store import has_table, open_store

    own = store is None
    store = store or open_store(db, read_only=True)
    try:
        n = (store.con.execute("SELECT count(*) FROM invoices").fetchall()[0][0]
             if has_table(store, "invoices") else 0)
    finally:
        if own:
            store.close()
    if not n:
        return None
    return (f"{db} holds {n:,} invoices, which the DuckDB engine's payment step uses (payment behaviour and "
            f"payment risk): pass them with --invoices PATH (write them with `loyalist dump invoices --db {db} "
            "--out DIR`)")


def store_customer_attributes_flag(db: Path | str, store=None) -> str | None:
    """Why the crosssell step cannot run on Spark for the store `db`: its customers table carries industry,
    region or size, which the DuckDB engine's look-alikes use and the Spark engine does not read; or None."""
    from loyalist.store import has_table, open_store

    own = store is None
    store = store or open_store(db, read_only=True)
    try:
        n = (store.con.execute("SELECT count(*) FROM customers WHERE industry IS NOT NULL OR region IS NOT NULL "
                               "OR size IS NOT NULL").fetchall()[0][0] if has_table(store, "customers") else 0)
    finally:
        if own:
            store.close()
    if not n:
        return None
    return (f"{db} holds {n:,} customers with industry, region or size, which the DuckDB engine's crosssell step "
            "uses for look-alikes and the Spark engine does not read yet: leave crosssell out (--step NAME for each "
            "other step) or run crosssell with the DuckDB engine")


def _portable(fitted: FittedBase) -> FittedBase:
    """The fitted models rebuilt from their parameters only: what the executors need, nothing more."""
    tm = type(fitted.transaction).from_params(**fitted.transaction.params_)
    spend = GammaGamma.from_params(**fitted.spend.params_) if fitted.spend is not None else None
    return FittedBase(fitted.name, tm, spend, list(fitted.notes))


def spark_schema(types: dict[str, str]):
    """A Spark schema from column -> kind (string, double, long, boolean, timestamp): for mapInPandas outputs."""
    from pyspark.sql import types as T

    kinds = {"string": T.StringType(), "double": T.DoubleType(), "long": T.LongType(), "boolean": T.BooleanType(),
             "timestamp": T.TimestampNTZType()}
    return T.StructType([T.StructField(c, kinds[k]) for c, k in types.items()])


def output_schema(settings: Settings):
    from pyspark.sql import types as T

    dbl = T.DoubleType()
    return T.StructType([
        T.StructField("customer_id", T.StringType()), T.StructField("first_order", T.DateType()),
        T.StructField("last_order", T.DateType()), T.StructField("orders", T.LongType()),
        T.StructField("revenue", dbl), T.StructField("frequency", T.LongType()),
        T.StructField("recency_days", T.LongType()), T.StructField("tenure_days", T.LongType()),
        T.StructField("p_alive", dbl), T.StructField(f"expected_orders_{settings.horizon_days}d", dbl),
        T.StructField(f"prob_order_{settings.horizon_days}d", dbl), T.StructField("expected_order_value", dbl),
        T.StructField(f"clv_{settings.clv_months}m", dbl), T.StructField("as_of", T.TimestampNTZType()),
        T.StructField("model", T.StringType()),
    ])


def scorer(fitted: FittedBase, settings: Settings, margin: float, as_of: dt.date
           ) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The mapInPandas function: `customer_base.score` on each batch of the per-customer summary."""
    fitted = _portable(fitted)
    as_of_ts = pd.Timestamp(as_of)

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            if batch.empty:
                continue
            m = (batch["margin"].fillna(margin).to_numpy(float) if "margin" in batch.columns
                 else margin)  # per-customer margins from product costs, as analysis.analyze
            out = score(fitted, batch, settings, m)
            out.insert(len(out.columns) - 1, "as_of", as_of_ts)
            yield out

    return run


def steps_on_spark(requested: list[str] | None = None) -> tuple[list[Step], list[Step]]:
    """(steps that run on Spark, steps that do not). A requested step that is unknown or not available on
    Spark is an error naming it, raised before any work starts. `requested=None`: every step that runs on
    Spark; `[]`: none (the customer-base analysis only)."""
    steps = load_steps()
    by_name = {s.name: s for s in steps}
    if requested is not None:
        unknown = [n for n in requested if n not in by_name]
        if unknown:
            raise LoyalistError(f"unknown analysis step(s): {', '.join(unknown)} "
                                f"(known: {', '.join(by_name) or 'none'})")
        missing = [n for n in requested if not by_name[n].spark]
        if missing:
            raise LoyalistError(f"not available on the Spark engine: {', '.join(missing)} "
                                "(run them with the DuckDB engine: loyalist analyze --db STORE)")
        chosen = [by_name[n] for n in requested]
        return chosen, [s for s in steps if s not in chosen and not s.spark]
    return [s for s in steps if s.spark], [s for s in steps if not s.spark]


@dataclass
class SparkRun:
    """What `analyze_spark` did: the report, where the table went, the steps skipped, the timings."""

    report: Any
    out: str
    customers: int
    patterns: int
    spend_patterns: int
    skipped_steps: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    table: Any = None
    """The per-customer table as a Spark DataFrame (read back from OUT)."""
    result_tables: dict[str, str] = field(default_factory=dict)
    """Result tables of the insight steps (forecasts, peak_hours ...) and where they were written."""


def _conf_given(session, key: str) -> bool:
    try:
        return session.sparkContext.getConf().contains(key)
    except Exception:  # Spark Connect has no SparkContext: keep the server's setting
        return True


def _data_end(t) -> dt.date:
    last = t.order_date.max().execute()
    if last is None or pd.isna(last):
        raise LoyalistError("the source holds no transactions")
    return pd.Timestamp(last).date() + dt.timedelta(days=1)


def _local_dir(out: str) -> Path | None:
    if out.startswith("file://"):
        return Path(out[len("file://"):])
    return None if "://" in out else Path(out)


def analyze_spark(source: str | list[str], *, out: str, session: SparkSession | None = None,
                  master: str | None = None, as_of: dt.date | None = None, model: str = "auto",
                  settings: Settings | None = None, config: dict | None = None, db: Path | str | None = None,
                  steps: list[str] | None = None, on_stage: Callable[[str], None] | None = None,
                  partitions: int | None = None, products: str | None = None,
                  invoices: str | None = None) -> SparkRun:
    """Score every customer of `source` on Spark and write the per-customer table to `out` (and `db`).

    `products`: the canonical products table (path or Spark table), used as the DuckDB engine uses the store's:
    per-customer margins for CLV (`analysis.margin_table`) and the category level of the forecasts. With `db`
    holding products with costs, margins or categories, `products` is required (else the answers would differ).
    `invoices`: the canonical invoices table (path or Spark table), for the steps that read invoices."""
    import time

    settings = settings or Settings()
    config = config or {}
    spark_cfg = config.get("spark", {})
    stage = on_stage or (lambda s: None)
    runnable, skipped = steps_on_spark(steps)  # fail before any work
    clock, seconds = time.perf_counter(), {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 3)
        clock = now

    store = None
    chosen_by = "set by the user"
    if model not in TRANSACTION_MODELS and model != "auto":
        raise LoyalistError(f"unknown model {model!r}; choose one of {', '.join(TRANSACTION_MODELS)}")
    if db is not None:
        names = {s.name for s in runnable}
        why = ((store_products_need_flag(db, store) if products is None else None)
               or (store_invoices_need_flag(db, store)  # the payment step reads them
                   if invoices is None and "payment" in names else None)
               or (store_customer_attributes_flag(db, store) if "crosssell" in names else None))
        if why:
            if store is not None:
                store.close()
            raise LoyalistError(why)
    if db is not None and store is None:
        from loyalist.store import open_store

        store = open_store(db)

    import ibis
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    stage("starting Spark")
    session = session or spark_session(master or spark_cfg.get("master"),
                                       {k: str(v) for k, v in spark_cfg.get("conf", {}).items()})
    parts = partitions or spark_cfg.get("partitions")
    if not parts and not _conf_given(session, "spark.sql.shuffle.partitions"):
        # Spark's default (200) costs a Python task per partition when scoring: far too many for a few cores
        parts = max(4, 2 * session.sparkContext.defaultParallelism)
    if parts:
        session.conf.set("spark.sql.shuffle.partitions", str(int(parts)))
    con = ibis.pyspark.connect(session)
    lap("session")
    stage("reading the transactions")
    t = read_transactions(con, source)
    tables = {"transactions": t}
    if products is not None:
        tables["products"] = read_products(con, products)
    if invoices is not None:
        tables["invoices"] = read_invoices(con, invoices)
    as_of = as_of or _data_end(t)
    if model == "auto" and store is not None:
        from loyalist.analysis import chosen_model

        choice = chosen_model(store, as_of)  # as the DuckDB engine: the latest stored backtest by as_of
        if choice is not None:
            model, chosen_by = choice[0], f"{choice[1]} (stored in {db})"
    # still "auto": the backtest runs on Spark (as analysis.analyze runs one on DuckDB)
    notes: list[str] = []
    summary_expr = rfm_summary(t, as_of)
    summary = session.sql(con.compile(summary_expr)).persist(StorageLevel.MEMORY_AND_DISK)
    source_view = SparkSource(con, tables, stored=store)
    persisted: list = source_view.cached
    try:
        if model == "auto":
            stage(f"backtesting the classic models at {as_of - dt.timedelta(days=settings.horizon_days)} (Spark)")
            model, chosen_by = _auto_model(con, t, as_of, settings, notes, source_view)
            lap("backtest")
        stage("building the per-customer sufficient statistics (Ibis on Spark)")
        patterns = (summary.groupBy("frequency", "recency", "T").agg(F.count(F.lit(1)).alias("n"))
                    .orderBy("frequency", "recency", "T").toPandas())
        if patterns.empty:
            raise LoyalistError(f"no customer bought anything before {as_of}")
        spend_patterns = (summary.filter((F.col("frequency") > 0) & (F.col("monetary_value") > 0)
                                         & ~F.isnan("monetary_value"))
                          .groupBy("frequency", "monetary_value").agg(F.count(F.lit(1)).alias("n"))
                          .orderBy("frequency", "monetary_value").toPandas())
        lap("features_and_patterns")
        stage(f"fitting {model} on {len(patterns):,} distinct patterns (driver)")
        fitted = fit_patterns(patterns, spend_patterns, model)
        notes += fitted.notes
        lap("fit")
        margin = settings.gross_margin
        margin_source = "setting"
        scoring_input = summary
        if products is not None and tables["products"].count().execute() > 0:
            from loyalist.analysis import margin_table

            # the DuckDB engine's expression (analysis.customer_margins), here on Spark
            margins = session.sql(con.compile(margin_table(t, tables["products"], as_of)))
            if margins.limit(1).count():
                margin_source = "product costs"
                scoring_input = summary.join(margins, "customer_id", "left")
        if margin_source == "setting":
            notes.append(("no --products: " if products is None else "no product costs or margins: ")
                         + f"CLV uses the gross_margin setting ({margin:g})"
                         + (", i.e. revenue, not profit" if margin == 1.0 else ""))
        if skipped:
            notes.append("insight steps not available on Spark (their columns are absent): "
                         + ", ".join(s.name for s in skipped))
        stage("scoring every customer (mapInPandas on the executors)")
        scored = scoring_input.mapInPandas(scorer(fitted, settings, margin, as_of), output_schema(settings))
        if runnable:
            scored = scored.persist(StorageLevel.MEMORY_AND_DISK)  # read by the steps and by the write
            persisted.append(scored)
            scored = _run_spark_steps(runnable, con, session, source_view, scored, as_of, settings, fitted, config,
                                      notes, stage)
            notes += source_view.notes
            lap("steps")
        target = out.rstrip("/") + f"/{CUSTOMER_TABLE}"
        scored.sortWithinPartitions("customer_id").write.mode("overwrite").parquet(target)
        result_tables = _write_results(session, out, source_view.results)  # before the cached frames go
        lap("score_and_write")
    finally:
        for frame in persisted:
            frame.unpersist()
        summary.unpersist()
    customers = int(patterns["n"].sum())
    from loyalist.analysis import AnalysisReport

    report = AnalysisReport(as_of, model, customers, fitted.transaction.params_,
                            fitted.spend.params_ if fitted.spend is not None else None,
                            margin_source, chosen_by, notes)
    run = SparkRun(report, target, customers, len(patterns), len(spend_patterns), [s.name for s in skipped], seconds,
                   result_tables=result_tables)
    report_json = json.dumps({**report.to_dict(), "engine": "spark", "source": source, "out": target,
                              "patterns": run.patterns, "spend_patterns": run.spend_patterns,
                              "steps": [s.name for s in runnable], "skipped_steps": run.skipped_steps,
                              "result_tables": result_tables, "seconds": seconds}, default=str)
    local = _local_dir(out)
    if local is not None:
        (local / "analysis_run.json").write_text(report_json + "\n", encoding="utf-8")
    else:
        session.createDataFrame([(report_json,)], "value string").coalesce(1).write.mode("overwrite").text(
            out.rstrip("/") + "/analysis_run")
    if db is not None:
        stage(f"loading the per-customer table into {db}")
        if local is None:
            raise LoyalistError("--db needs --out on the local filesystem (the store reads the Parquet files)")
        from loyalist.store import open_store, write_frame

        store = store or open_store(db)
        try:
            files = str(local.resolve() / CUSTOMER_TABLE / "*.parquet")
            # the DuckDB engine stores these as TIMESTAMP_S (pandas datetime64[s]): same types for the readers
            store.con.execute(f"CREATE OR REPLACE TABLE {CUSTOMER_TABLE} AS SELECT * REPLACE ("
                              "CAST(first_order AS TIMESTAMP_S) AS first_order, "
                              "CAST(last_order AS TIMESTAMP_S) AS last_order, CAST(as_of AS TIMESTAMP_S) AS as_of) "
                              "FROM read_parquet(?) ORDER BY customer_id", [files])  # as the DuckDB engine
            write_frame(store, "analysis_runs", pd.DataFrame([{
                "run_at": pd.Timestamp.now(tz="UTC").tz_localize(None), "as_of": pd.Timestamp(as_of),
                "model": model, "report": report_json}]), replace=False)
            from loyalist.store import has_table

            for name, frame in source_view.results.items():
                append = name in APPEND_TABLES
                if isinstance(frame, pd.DataFrame):
                    write_frame(store, name, frame, replace=not append)  # as the DuckDB engine stores them
                elif append and has_table(store, name):  # written by the executors: read their Parquet files
                    store.con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM read_parquet(?)",
                                      [str(local.resolve() / name / "*.parquet")])
                else:
                    store.con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM read_parquet(?)",
                                      [str(local.resolve() / name / "*.parquet")])
        finally:
            store.close()
        lap("load_store")
    elif store is not None:
        store.close()
    run.seconds = seconds
    return run


def _auto_model(con, t, as_of: dt.date, settings: Settings, notes: list[str], source: SparkSource) -> tuple[str, str]:
    """`--model auto` without a stored backtest: the backtest at as_of - horizon on Spark
    (`loyalist.backtest.backtest_on_spark`), its tables kept for OUT/ and --db (appended, as
    `analysis.run_backtest` appends them), and its choice, as `analysis.analyze` makes it on DuckDB."""
    from loyalist.analysis import backtest_tables, choice_from
    from loyalist.backtest import backtest_on_spark

    try:
        result = backtest_on_spark(con, t, as_of - dt.timedelta(days=settings.horizon_days), settings.horizon_days)
    except ValueError as exc:
        notes.append(f"no backtest possible ({exc}); using BG/NBD")
        return "bgnbd", "default (no backtest)"
    metrics, tracking = backtest_tables(result)
    source.write_result("backtest_metrics", metrics)
    source.write_result("backtest_tracking", tracking)
    return choice_from(metrics)


def _write_results(session, out: str, results: dict[str, Any]) -> dict[str, str]:
    """The steps' result tables as Parquet under OUT/<name>/ (pandas frames from the driver, Spark DataFrames by
    the executors); returns name -> path."""
    written = {}
    local = _local_dir(out)
    for name, frame in results.items():
        target = out.rstrip("/") + f"/{name}"
        if not isinstance(frame, pd.DataFrame):
            frame.write.mode("overwrite").parquet(target)
        elif local is not None:
            import shutil

            folder = local / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            frame.to_parquet(folder / "part-00000.parquet", index=False)
        else:
            session.createDataFrame(frame).coalesce(1).write.mode("overwrite").parquet(target)
        written[name] = target
    return written


def _run_spark_steps(runnable: list[Step], con, session, source: SparkSource, scored: DataFrame, as_of: dt.date,
                     settings: Settings, fitted: FittedBase, config: dict, notes: list[str],
                     stage: Callable[[str], None]) -> DataFrame:
    """Run the Spark-capable steps: each gets the per-customer table as an Ibis table on Spark and returns an
    Ibis table keyed by customer_id whose columns are joined on (same rules as `run_steps`), or None; its
    result tables go to `source.write_result`."""
    view = "loyalist_customer_insights"
    scored.createOrReplaceTempView(view)
    ctx = Context(source, as_of, settings, fitted, con.table(view), config, notes)
    for s in runnable:
        stage(f"analysis step: {s.name} (Spark)")
        added = s.run(ctx)
        if added is None:
            continue
        if "customer_id" not in added.columns:
            raise LoyalistError(f"analysis step {s.name!r} must return a table keyed by customer_id")
        clash = (set(added.columns) - {"customer_id"}) & set(ctx.customers.columns)
        if clash:
            raise LoyalistError(f"analysis step {s.name!r} re-defines columns {sorted(clash)}")
        ctx.customers = ctx.customers.left_join(added, "customer_id").drop("customer_id_right")
    return session.sql(con.compile(ctx.customers))
