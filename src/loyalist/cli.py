"""The `loyalist` command line (typer + rich).

Errors the user can act on are printed as one line and the exit code is 1; usage errors exit 2.
Progress goes to standard error so `--json` output on standard output stays machine-readable.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
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
out = Console()
err = Console(stderr=True)

DbOption = Annotated[Optional[Path], typer.Option("--db", help="Store file (default: loyalist.toml's db, "
                                                               "else ./loyalist.duckdb).")]
ConfigOption = Annotated[Optional[Path], typer.Option("--config", help="Settings file (default ./loyalist.toml).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the figures as one JSON object.")]


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
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


class RowsPerSecond(ProgressColumn):
    """Rows handled per second, for bars whose unit is rows."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            elapsed = task.elapsed or 0
            speed = task.completed / elapsed if elapsed > 0 else None
        return Text(f"{speed:,.0f} rows/s" if speed else "– rows/s", style="cyan")


def progress_bar(disable: bool = False) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TextColumn("{task.completed:,.0f} rows"),
                    RowsPerSecond(), TimeElapsedColumn(), console=err, disable=disable, transient=False)


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
    delimiter: Annotated[Optional[str], typer.Option("--delimiter", help="Field delimiter (default: detected).")] = None,
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
            task = bar.add_task("starting", total=None)
            state = {"rows": 0}

            def report(stage: str, frac: float) -> None:
                bar.update(task, description=stage[:60])

            watcher = _QueryWatcher(store.con, bar, task)
            with watcher:
                result = run_ingest(store, paths, opts, progress=report)
            rows = result.totals()["rows_read"]
            bar.update(task, description="done", total=rows, completed=rows)
            del state
        store.close()
    if json_:
        out.print_json(json.dumps(result.to_dict()))
        return
    table = Table(title=f"ingest #{result.ingest_id} into {_db(db, cfg)}", title_justify="left")
    for c in ("source", "rows read", "loaded", "duplicates", "quarantined"):
        table.add_column(c, justify="left" if c == "source" else "right")
    for f in result.files:
        table.add_row(f.source, f"{f.rows_read:,}", f"{f.loaded:,}", f"{f.duplicates:,}", f"{f.quarantined:,}")
    t = result.totals()
    table.add_row("[bold]total", f"[bold]{t['rows_read']:,}", f"[bold]{t['loaded']:,}", f"[bold]{t['duplicates']:,}",
                  f"[bold]{t['quarantined']:,}")
    out.print(table)
    rate = t["rows_read"] / result.seconds if result.seconds else 0
    out.print(f"{t['rows_read']:,} rows in {result.seconds:.1f} s ({rate:,.0f} rows/s); "
              f"loaded + duplicates + quarantined = {t['loaded'] + t['duplicates'] + t['quarantined']:,}")
    for f in result.files:
        out.print(f"  {f.source}: columns {', '.join(f'{k}<-{v!r}' for k, v in f.mapping.items())}; "
                  f"dates {f.date_format}", highlight=False)
    if t["quarantined"]:
        out.print(f"[yellow]{t['quarantined']:,} rows quarantined:[/] see `loyalist quality` "
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
    """What the store holds: customers, products, orders, lines, date range, last ingest, quality counts."""
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
    table = Table(title=f"store {s.db}", title_justify="left", show_header=False)
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
        table.add_row(f.check, f"{f.lines:,}", f"{f.share_of_lines:.2%}",
                      "–" if f.amount is None else f"{f.amount:,.2f}",
                      f.handling + (f"\n[dim]{f.decision}[/]" if f.decision else ""))
    out.print(table)
    if export is not None:
        out.print(f"quarantined rows written to {export}")


def run() -> None:  # pragma: no cover - console entry point wrapper
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
