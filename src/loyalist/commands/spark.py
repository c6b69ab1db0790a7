"""Commands for running beyond one machine: `loyalist dump` (a store table as Parquet/CSV files for Spark) and
the Spark branch of `loyalist analyze --engine spark` (see loyalist.engine.spark; pyspark is imported only
when that engine is used)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer

from loyalist.cli import ConfigOption, DbOption, _db, _errors, app, config, err, out
from loyalist.errors import LoyalistError

DUMPABLE = ("transactions", "invoices", "customers", "products")


@app.command()
def dump(
    table: Annotated[str, typer.Argument(help="Store table: transactions, invoices, customers or products.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write (replaced if it exists).")],
    db: DbOption = None,
    fmt: Annotated[str, typer.Option("--format", help="parquet (default) or csv.")] = "parquet",
    file_mb: Annotated[int, typer.Option("--file-mb", help="Split into files of about this many MB, so that "
                                                         "Spark reads them in parallel.")] = 128,
    config_path: ConfigOption = None,
) -> None:
    """Write a canonical store table as Parquet (or CSV) files: the `--source` of `loyalist analyze --engine spark`.

    The files have exactly the store table's columns and flags (the canonical data model); copy the folder to
    HDFS/S3 or register it as a Spark table for a cluster."""
    import shutil

    from loyalist.store import has_table, open_store

    with _errors():
        if table not in DUMPABLE:
            raise LoyalistError(f"{table!r}: choose one of {', '.join(DUMPABLE)}")
        if fmt not in ("parquet", "csv"):
            raise LoyalistError(f"--format {fmt!r}: choose parquet or csv")
        cfg = config.load(config_path)
        store = open_store(_db(db, cfg), read_only=True)
        try:
            if not has_table(store, table):
                raise LoyalistError(f"the store has no {table} table")
            if out_dir.exists():
                shutil.rmtree(out_dir)
            opts = "FORMAT parquet" if fmt == "parquet" else "FORMAT csv, HEADER true"
            with err.status(f"writing {table} to {out_dir}"):
                store.con.execute(f"COPY (SELECT * FROM {table}) TO '{out_dir}' "
                                  f"({opts}, FILE_SIZE_BYTES '{int(file_mb)}MB')")
            rows = store.con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
        finally:
            store.close()
    files = sorted(out_dir.glob("*"))
    err.print(f"{rows:,} {table} rows written to {out_dir} ({len(files)} {fmt} file(s))")


def analyze_on_spark(engine: str, db: Path | None, as_of: dt.date | None, model: str, settings, cfg: config.Config,
                     master: str | None, source: list[str] | None, spark_out: str | None, steps: list[str] | None,
                     json_: bool, products: str | None = None, invoices: str | None = None) -> None:
    """`loyalist analyze --engine spark ...` (called from the analyze command; errors are LoyalistError)."""
    if engine != "spark":
        if engine == "duckdb":
            raise LoyalistError("--spark-master, --source, --out, --step, --products and --invoices are for "
                                "--engine spark")
        raise LoyalistError(f"--engine {engine!r}: choose duckdb or spark")
    if not source:
        raise LoyalistError("--engine spark needs --source: the canonical transactions as Parquet/CSV path(s) or a "
                            "Spark table (write them from a store with `loyalist dump transactions --out DIR`)")
    from loyalist.engine.spark import analyze_spark, steps_on_spark

    runnable, skipped = steps_on_spark(steps)  # unknown or Spark-incapable requested steps fail here, at once
    if skipped:
        err.print("[bold yellow]not available on Spark[/] (skipped, their columns are absent from the output): "
                  + ", ".join(s.name for s in skipped), highlight=False)
    if runnable:
        err.print("insight steps that run on Spark: " + ", ".join(s.name for s in runnable), highlight=False)
    target = spark_out or "loyalist-spark-out"
    with err.status("starting Spark") as status:
        run = analyze_spark(source if len(source) > 1 else source[0], out=target, master=master, as_of=as_of,
                            model=model, settings=settings, config=cfg.sections, db=db, steps=steps,
                            on_stage=status.update, products=products, invoices=invoices)
    report = run.report
    if json_:
        out.print_json(json.dumps({**report.to_dict(), "engine": "spark", "out": run.out, "patterns": run.patterns,
                                   "skipped_steps": run.skipped_steps, "result_tables": run.result_tables,
                                   "seconds": run.seconds}, default=str))
        return
    out.print(f"as of {report.as_of}: {report.customers:,} customers scored on Spark with {report.model} "
              f"({report.chosen_by}); fitted on {run.patterns:,} distinct (frequency, recency, T) patterns",
              highlight=False)
    out.print("  parameters: " + ", ".join(f"{k}={v:.4g}" for k, v in report.params.items()), highlight=False)
    for note in report.notes:
        out.print(f"  note: {note}", highlight=False)
    out.print(f"  per-customer table (Parquet): {run.out}" + (f"; also stored in {db}" if db else ""),
              highlight=False)
    if run.result_tables:
        out.print(f"  result tables (Parquet, under {target}): " + ", ".join(run.result_tables)
                  + (f"; also stored in {db}" if db else ""), highlight=False)
