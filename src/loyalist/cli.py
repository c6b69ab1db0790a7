"""The `loyalist` command line (typer + rich).

Errors the user can act on are printed as one line and the exit code is 1; usage errors exit 2.
Progress goes to standard error so `--json` output on standard output stays machine-readable.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from loyalist import __version__, config
from loyalist.errors import LoyalistError
from loyalist.schema import Kind

app = typer.Typer(
    name="loyalist",
    help="Purchase-behaviour insight for customer retention, from ordinary transaction records.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(width=None if sys.stdout.isatty() else 140)  # logs and pipes get whole table rows
err = Console(stderr=True)

DbOption = Annotated[Optional[Path], typer.Option("--db", help="Store file (default: loyalist.toml's db, "
                                                               "else ./loyalist.duckdb).")]
ConfigOption = Annotated[Optional[Path], typer.Option("--config", help="Settings file (default ./loyalist.toml).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the figures as one JSON object.")]
FormatOption = Annotated[str | None, typer.Option("--format", help="csv, json, parquet or xlsx (default: the --out "
                                                                  "file's suffix, else csv; parquet/xlsx need --out).")]
OutOption = Annotated[Optional[Path], typer.Option("--out", help="Write to this file instead of printing.")]
TopOption = Annotated[int | None, typer.Option("--top", min=1, help="Only the first N rows.")]


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


@contextmanager
def _errors():
    try:
        yield
    except LoyalistError as exc:
        raise _fail(str(exc)) from None
    except KeyboardInterrupt:
        raise _fail("interrupted; the store is unchanged by the unfinished step") from None


def _db(db: Path | None, cfg: config.Config) -> Path:
    from loyalist.store import DEFAULT_DB

    return db or Path(cfg.db or DEFAULT_DB)


def _reports(db: Path) -> Path:
    """Where charts of a store go: a folder beside it, e.g. shop.duckdb -> shop-reports/."""
    return db.with_name(f"{db.stem}-reports")


class RowsPerSecond(ProgressColumn):
    """Rows and rows per second: from the rows known so far (task field `rows`) over the elapsed time."""

    def render(self, task: Task) -> Text:
        rows = task.fields.get("rows")
        elapsed = task.elapsed or 0
        if not rows or elapsed <= 0:
            return Text("– rows/s", style="cyan")
        return Text(f"{rows:,} rows, {rows / elapsed:,.0f} rows/s", style="cyan")


def progress_bar(disable: bool = False) -> Progress:
    """A bar driven by the engine's own progress estimate (percent of the current statement)."""
    return Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), RowsPerSecond(),
                    TimeElapsedColumn(), console=err, disable=disable, transient=False)


@app.callback(invoke_without_command=True)
def main(version: Annotated[bool, typer.Option("--version", help="Show the version and exit.")] = False) -> None:
    if version:
        out.print(f"loyalist {__version__}")
        raise typer.Exit(0)


def _parse_map(items: list[str]) -> dict[str, str]:
    mapping = {}
    for item in items:
        if "=" not in item:
            raise LoyalistError(f"--map {item!r}: write it as canonical=source, e.g. --map customer_id='Cust No'")
        k, v = item.split("=", 1)
        mapping[k.strip()] = v.strip()
    return mapping


@app.command()
def ingest(
    paths: Annotated[list[str], typer.Argument(help="Files (CSV/TSV/whitespace text, .gz too, Parquet, Excel) "
                                                    "or a postgresql:// URL with --query.")],
    db: DbOption = None,
    kind: Annotated[Optional[Kind], typer.Option("--kind", help="What the files hold.")] = None,
    map_: Annotated[Optional[list[str]], typer.Option("--map", help="canonical=source column; repeatable. "
                                                                   "Overrides recognition by name.")] = None,
    date_format: Annotated[Optional[str], typer.Option("--date-format", help="strptime format of the dates, e.g. "
                                                                            "'%d/%m/%Y %H:%M' (default: detected).")] = None,
    guests: Annotated[Optional[str], typer.Option("--guests", help="Lines with a blank customer: 'keep' (stored, "
                                                                  "flagged, used for demand only) or 'quarantine'.")] = None,
    sheet: Annotated[Optional[str], typer.Option("--sheet", help="Excel: read only this sheet (default: all).")] = None,
    delimiter: Annotated[Optional[str], typer.Option("--delimiter", help="Field delimiter, one character; '\\t' or "
                                                                      "'tab' for tab (default: detected).")] = None,
    encoding: Annotated[str, typer.Option("--encoding", help="Text encoding: utf-8, utf-16 or latin-1.")] = "utf-8",
    query: Annotated[Optional[str], typer.Option("--query", help="PostgreSQL: a table name or a SELECT query.")] = None,
    json_: JsonOption = False,
    config_path: ConfigOption = None,
) -> None:
    """Load transaction exports (or invoices, customer or product attributes) into the store.

    Every row read is loaded, recognised as a duplicate of a stored row, or quarantined with its reason;
    the counts are printed and add up. The whole run is one transaction: on failure nothing changes.
    """
    from loyalist.ingest import Options
    from loyalist.ingest import ingest as run_ingest
    from loyalist.store import open_store

    with _errors():
        cfg = config.load(config_path)
        settings = cfg.ingest
        mapping = {**settings.get("map", {}), **_parse_map(map_ or [])}
        guest_rule = guests or settings.get("guests", "keep")
        if guest_rule not in ("keep", "quarantine"):
            raise LoyalistError(f"--guests {guest_rule!r}: choose 'keep' or 'quarantine'")
        opts = Options(
            kind=kind or Kind(settings.get("kind", "transactions")), mapping=mapping,
            date_format=date_format or settings.get("date_format"), guests=guest_rule, sheet=sheet,
            delimiter=delimiter, encoding=encoding, query=query,
        )
        opts.non_product_codes += tuple(settings.get("non_product_codes", ()))
        store = open_store(_db(db, cfg))
        with progress_bar() as bar:
            task = bar.add_task("starting", total=100.0, rows=0)

            def report(stage: str, frac: float, rows_done: int | None = None) -> None:
                bar.update(task, description=escape(stage[:60]), **({"rows": rows_done} if rows_done is not None else {}))

            with _QueryWatcher(store.con, bar, task):
                result = run_ingest(store, paths, opts, progress=report)
            bar.update(task, description="done", completed=100.0, rows=result.totals()["rows_read"])
        store.close()
    if json_:
        out.print_json(json.dumps(result.to_dict()))
        return
    table = Table(title=escape(f"ingest #{result.ingest_id} into {_db(db, cfg)}"), title_justify="left")
    for c in ("source", "rows read", "loaded", "duplicates", "quarantined"):
        table.add_column(c, justify="left" if c == "source" else "right")
    for f in result.files:
        table.add_row(escape(f.source), f"{f.rows_read:,}", f"{f.loaded:,}", f"{f.duplicates:,}", f"{f.quarantined:,}")
    t = result.totals()
    table.add_row("[bold]total", f"[bold]{t['rows_read']:,}", f"[bold]{t['loaded']:,}", f"[bold]{t['duplicates']:,}",
                  f"[bold]{t['quarantined']:,}")
    out.print(table)
    rate = t["rows_read"] / result.seconds if result.seconds else 0
    out.print(f"{t['rows_read']:,} rows in {result.seconds:.1f} s ({rate:,.0f} rows/s); "
              f"loaded + duplicates + quarantined = {t['loaded'] + t['duplicates'] + t['quarantined']:,}")
    for f in result.files:
        out.print(escape(f"  {f.source}: columns {', '.join(f'{k}<-{v!r}' for k, v in f.mapping.items())}; "
                         f"dates {f.date_format}"), highlight=False)
        for note in f.notes:
            out.print(escape(f"  {f.source}: note: {note}"), highlight=False)
    if t["quarantined"]:
        out.print(f"[yellow]{t['quarantined']:,} row{'s' if t['quarantined'] != 1 else ''} quarantined:[/] "
                  f"see `loyalist quality` "
                  f"or `loyalist quality --export quarantine.csv`")


class _QueryWatcher:
    """Moves the bar while DuckDB runs a long statement, from the engine's own progress estimate."""

    def __init__(self, con, bar: Progress, task) -> None:
        self.con, self.bar, self.task = con, bar, task
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.25):
            try:
                pct = self.con.query_progress()
            except Exception:  # progress is best-effort; never disturb the ingest itself
                return
            if pct is not None and pct >= 0:
                self.bar.update(self.task, total=100.0, completed=pct)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


@app.command()
def status(db: DbOption = None, json_: JsonOption = False, config_path: ConfigOption = None) -> None:
    """What the store holds: customers, products, orders, lines, date range, invoices and attribute rows,
    quarantined rows, last ingest."""
    from loyalist import quality
    from loyalist.store import open_store

    with _errors():
        cfg = config.load(config_path)
        store = open_store(_db(db, cfg), read_only=True)
        s = quality.status(store)
        store.close()
    if json_:
        out.print_json(json.dumps(s.to_dict()))
        return
    table = Table(title=escape(f"store {s.db}"), title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for label, value in [
        ("customers", f"{s.customers:,}"), ("products", f"{s.products:,}"), ("orders", f"{s.orders:,}"),
        ("order lines", f"{s.lines:,}"), ("  of which guest lines", f"{s.guest_lines:,}"),
        ("first order", s.first_order or "–"), ("last order", s.last_order or "–"),
        ("invoices", f"{s.invoices:,}"), ("customer attribute rows", f"{s.customer_attributes:,}"),
        ("product attribute rows", f"{s.product_attributes:,}"), ("quarantined rows", f"{s.quarantined:,}"),
        ("ingests", f"{s.ingests:,}"), ("last ingest", s.last_ingest or "–"),
    ]:
        table.add_row(label, value)
    out.print(table)


@app.command()
def quality(
    db: DbOption = None,
    export: Annotated[Optional[Path], typer.Option("--export", help="Write the quarantined rows (file, row, "
                                                                    "column, value, rule, record) to this file.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="csv, json, parquet or xlsx (default: from --export's suffix).")] = None,
    json_: JsonOption = False,
    config_path: ConfigOption = None,
) -> None:
    """The data-quality report: guests, odd prices, non-product lines, returns, future dates, currencies,
    outliers and quarantined rows, each with how loyalist handles it and the decision left to you."""
    from dataclasses import asdict

    from loyalist import quality as q
    from loyalist.export import write_frame
    from loyalist.store import open_store

    with _errors():
        if fmt is not None and export is None:
            raise LoyalistError(f"--format {fmt}: give the file to write with --export FILE")
        cfg = config.load(config_path)
        store = open_store(_db(db, cfg), read_only=True)
        findings = q.quality(store)
        if export is not None:
            frame = q.quarantine_table(store).execute()
            write_frame(frame, export, fmt)
        store.close()
    if json_:
        out.print_json(json.dumps({"findings": [asdict(f) for f in findings],
                                   "exported": str(export) if export else None}, default=str))
        return
    table = Table(title="data quality", title_justify="left")
    for c in ("check", "lines", "share", "amount", "how it is handled / your decision"):
        table.add_column(c, justify="right" if c in ("lines", "share", "amount") else "left")
    for f in findings:
        table.add_row(escape(f.check), f"{f.lines:,}", f"{f.share_of_lines:.2%}",
                      "–" if f.amount is None else f"{f.amount:,.2f}",
                      escape(f.handling) + (f"\n[dim]{escape(f.decision)}[/]" if f.decision else ""))
    out.print(table)
    if export is not None:
        out.print(escape(f"quarantined rows written to {export}"), highlight=False)


def _as_date(value: str | None, option: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise LoyalistError(f"{option} {value!r}: give a date as YYYY-MM-DD") from None


def _settings(cfg: config.Config, horizon: int):
    from loyalist.customer_base import Settings

    v = cfg.value
    return Settings(horizon_days=horizon, annual_discount_rate=float(v.get("discount_rate_annual", 0.10)),
                    gross_margin=float(v.get("gross_margin", 1.0)))


@app.command()
def backtest(
    cutoff: Annotated[str, typer.Option("--cutoff", help="Fit on orders before this date (YYYY-MM-DD), score after it.")],
    horizon: Annotated[int, typer.Option("--horizon", help="Holdout length in days.")] = 90,
    with_: Annotated[Optional[list[str]], typer.Option(
        "--with", help="Also backtest a candidate shown for comparison, never analyze's choice (repeatable): "
                       "paretonbd_seasonal, bgnbd_seasonal (month-of-year seasonality), btyd_stack.")] = None,
    db: DbOption = None,
    plots: Annotated[Optional[Path], typer.Option("--plots", help="Folder for the tracking and calibration plots "
                                                                "(PNG and HTML; default: STORE-reports/ beside the store).")] = None,
    json_: JsonOption = False,
    config_path: ConfigOption = None,
) -> None:
    """Backtest every model on held-out time and choose the one `loyalist analyze` uses.

    Shows, per model: repeat orders predicted vs actual, per-customer MAE and RMSE, AUC and Brier score of
    P(order in the holdout), and the error of the expected order value."""
    from loyalist import plots as charts
    from loyalist.analysis import run_backtest
    from loyalist.backtest import DEFAULT_MODELS, ON_REQUEST
    from loyalist.store import open_store

    with _errors():
        cfg = config.load(config_path)
        cut = _as_date(cutoff, "--cutoff")
        if horizon < 1:
            raise LoyalistError("--horizon must be at least 1 day")
        for name in with_ or []:
            if name not in ON_REQUEST:
                raise LoyalistError(f"--with {name!r}: choose {', '.join(ON_REQUEST)} (the classic models and "
                                    f"rhythm_gbm always run)")
        store = open_store(_db(db, cfg), create=False)  # a mistyped --db: say so, do not create an empty store
        with err.status(f"backtesting at {cut} over {horizon} days"):
            try:
                result = run_backtest(store, cut, horizon, (*DEFAULT_MODELS, *dict.fromkeys(with_ or [])))
            except ValueError as exc:
                raise LoyalistError(str(exc)) from None
        store.close()
        folder = plots or _reports(_db(db, cfg)) / f"backtest_{cut}_{horizon}d"
        files = charts.tracking_plot(result.tracking, cut, folder)
        best = result.per_customer[["frequency", "actual", result.chosen]].rename(columns={result.chosen: "predicted"})
        files += charts.calibration_holdout_plot(best, folder)
    if json_:
        out.print_json(json.dumps({**result.to_dict(), "plots": [str(f) for f in files]}))
        return
    table = Table(title=f"backtest: fit before {cut}, holdout {horizon} days, {result.customers:,} customers",
                  title_justify="left")
    cols = ["model", "predicted_orders", "actual_orders", "total_error_pct", "mae", "rmse", "auc", "brier"]
    for c in cols:
        table.add_column(c.replace("_", " "), justify="left" if c == "model" else "right")
    for _, row in result.metrics.iterrows():
        mark = " *" if row["model"] == result.chosen else ""
        fmt = {"predicted_orders": ",.0f", "actual_orders": ",.0f", "total_error_pct": "+.1f", "spend_mae": ",.1f"}
        table.add_row(row["model"] + mark, *[format(row[c], fmt.get(c, ".3f")) for c in cols[1:]])
    out.print(table)
    if "spend_mae" in result.metrics:  # one spend model (Gamma-Gamma) for all: its error once, not per row
        spend = result.metrics.iloc[0]
        out.print(f"expected order value (Gamma-Gamma, the same for every model): mean absolute error "
                  f"{spend['spend_mae']:,.1f} against the holdout's average order value, over the "
                  f"{int(spend['spend_customers']):,} customers who ordered in the holdout", highlight=False)
    out.print(f"* chosen, the model `loyalist analyze` uses (lowest per-customer MAE among the classic models; "
              f"the others are shown for comparison). Plots: {folder}")
    for note in result.notes:
        out.print(f"  note: {note}", highlight=False)


@app.command()
def analyze(
    db: DbOption = None,
    as_of: Annotated[Optional[str], typer.Option("--as-of", help="Use only data before this date (YYYY-MM-DD); "
                                                                 "default: the day after the last order.")] = None,
    model: Annotated[str, typer.Option("--model", help="auto (the backtest's choice), bgnbd, paretonbd or mbgnbd.")] = "auto",
    horizon: Annotated[int, typer.Option("--horizon", help="Days ahead for expected orders and P(order): columns "
                                                          "expected_orders_<N>d, prob_order_<N>d (not 30 or 60: "
                                                          "the timing step's columns).")] = 90,
    json_: JsonOption = False,
    config_path: ConfigOption = None,
    engine: Annotated[str, typer.Option("--engine", help="duckdb (the store, default) or spark (see 'Running on a "
                                                        "cluster' in the README).")] = "duckdb",
    spark_master: Annotated[Optional[str], typer.Option("--spark-master", help="Spark: local[N], spark://HOST:PORT, "
                                                                              "yarn, sc://HOST:PORT (Spark Connect).")] = None,
    source: Annotated[Optional[list[str]], typer.Option("--source", help="Spark: canonical transactions as Parquet/CSV "
                                                                        "path(s) or a Spark table (see `loyalist dump`).")] = None,
    spark_out: Annotated[Optional[str], typer.Option("--out", help="Spark: folder for the per-customer Parquet "
                                                                  "dataset (default ./loyalist-spark-out).")] = None,
    steps: Annotated[Optional[list[str]], typer.Option("--step", help="Spark: run only these insight steps "
                                                                     "(fails at once if one cannot run on Spark).")] = None,
    products: Annotated[Optional[str], typer.Option("--products", help="Spark: the canonical products table as "
                                                                      "Parquet/CSV (`loyalist dump products`): "
                                                                      "costs for CLV, categories for forecasts.")] = None,
    invoices: Annotated[Optional[str], typer.Option("--invoices", help="Spark: the canonical invoices table as "
                                                                      "Parquet/CSV (`loyalist dump invoices`): "
                                                                      "payment behaviour.")] = None,
) -> None:
    """Score every customer: P(alive), expected orders and P(order) in the next days, expected order value,
    12-month CLV. The per-customer table is stored; `loyalist customers` prints or exports it."""
    from loyalist.analysis import analyze as run_analysis
    from loyalist.store import open_store

    with _errors():
        cfg = config.load(config_path)
        if model not in ("auto", "bgnbd", "paretonbd", "mbgnbd"):
            raise LoyalistError(f"--model {model!r}: choose auto, bgnbd, paretonbd or mbgnbd")
        from loyalist.analysis import check_horizon

        try:
            check_horizon(horizon)
        except ValueError as exc:
            raise LoyalistError(str(exc)) from None
        if engine != "duckdb" or source or spark_master or spark_out or steps or products or invoices:
            from loyalist.commands.spark import analyze_on_spark

            return analyze_on_spark(engine, db, _as_date(as_of, "--as-of"), model, _settings(cfg, horizon), cfg,
                                    spark_master, source, spark_out, steps, json_, products, invoices)
        store = open_store(_db(db, cfg), create=False)
        with err.status("fitting the customer-base models and scoring every customer") as status:
            try:
                report, table = run_analysis(store, _as_date(as_of, "--as-of"), model, _settings(cfg, horizon),
                                             cfg.sections, lambda s: status.update(f"analysis step: {s.name}"))
            except ValueError as exc:
                raise LoyalistError(str(exc)) from None
            folder = _reports(_db(db, cfg)) / f"analysis_{report.as_of}"
            from loyalist import plots as charts
            from loyalist.customer_base import TRANSACTION_MODELS

            fitted = TRANSACTION_MODELS[report.model].from_params(**report.params)
            files = charts.p_alive_matrix(fitted, int(min(table["frequency"].quantile(0.99), 60)),
                                          float(table["tenure_days"].max()), folder)
        store.close()
    if json_:
        out.print_json(json.dumps({**report.to_dict(), "plots": [str(f) for f in files]}, default=str))
        return
    out.print(f"as of {report.as_of}: {report.customers:,} customers scored with {report.model} "
              f"({report.chosen_by})", highlight=False)
    out.print("  parameters: " + ", ".join(f"{k}={v:.4g}" for k, v in report.params.items()), highlight=False)
    repeaters = table[table["frequency"] > 0]
    active = (f"{(repeaters['p_alive'] >= 0.5).mean():.0%} of repeat customers likely still active (P(alive) >= 0.5)"
              if len(repeaters) else "no repeat customers yet")
    clv = table[f"clv_{12}m"]
    clv_total = (f"{clv.sum():,.0f} (margin from {report.margin_source})" if clv.notna().any()
                 else "none (no spend model, see the notes)")
    out.print(f"  {active}; expected orders next {horizon} days: "
              f"{table[f'expected_orders_{horizon}d'].sum():,.0f}; 12-month CLV total: {clv_total}", highlight=False)
    for note in report.notes:
        out.print(f"  note: {note}", highlight=False)
    out.print(f"  per-customer table: loyalist customers --db {_db(db, cfg)} [--out customers.csv]; "
              f"P(alive) matrix: {folder}")


@app.command()
def customers(
    db: DbOption = None,
    fmt: FormatOption = None,
    out_file: OutOption = None,
    sort: Annotated[str, typer.Option("--sort", help="Column to sort by, descending.")] = "clv_12m",
    top: TopOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Print or export the per-customer table written by `loyalist analyze`."""
    from loyalist.analysis import CUSTOMER_TABLE
    from loyalist.store import has_table, open_store

    with _errors():
        cfg = config.load(config_path)
        store = open_store(_db(db, cfg), read_only=True)
        if not has_table(store, CUSTOMER_TABLE):
            raise LoyalistError(f"{store.path}: no per-customer table yet; run `loyalist analyze` first")
        t = store.table(CUSTOMER_TABLE)
        if sort not in t.columns:
            raise LoyalistError(f"--sort {sort!r}: no such column (columns: {', '.join(t.columns)})")
        expr = t.order_by([t[sort].desc(), t.customer_id])
        if top is not None:
            expr = expr.limit(top)
        frame = expr.execute()
        store.close()
        emit(frame, fmt, out_file, "customers")


def emit(frame, fmt: str | None, out_file: Path | None, what: str) -> None:
    """Write a result table to `out_file` (in --format when given, else the format its suffix names) or print it
    to stdout (--format, default csv)."""
    from loyalist.export import frame_to_text, write_frame

    if out_file is not None:
        write_frame(frame, out_file, fmt)
        err.print(f"{len(frame):,} {what} written to {out_file}")
    else:
        sys.stdout.write(frame_to_text(frame, fmt or "csv"))


import loyalist.commands  # noqa: E402,F401  (registers each capability's commands on `app`)


def run() -> None:  # pragma: no cover - console entry point wrapper
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
