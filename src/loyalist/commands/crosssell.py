"""`loyalist gaps` and `loyalist gaps-backtest`: cross-sell gaps per customer and their held-out accuracy."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from rich.table import Table

from loyalist import config
from loyalist.cli import (
    ConfigOption,
    DbOption,
    FormatOption,
    JsonOption,
    OutOption,
    _as_date,
    _db,
    _errors,
    app,
    emit,
    err,
    out,
)
from loyalist.errors import LoyalistError


@app.command()
def gaps(
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer's gaps.")] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Gaps per customer (at most the number stored: "
                                                   "top in the crosssell section of loyalist.toml, 10).")] = 10,
    db: DbOption = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="Compute from orders before this date instead of "
                                                                 "reading the stored table (YYYY-MM-DD).")] = None,
    fmt: FormatOption = None,
    out_file: OutOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Products each customer's look-alikes buy and the customer never has, ranked, with the evidence.

    Reads the table `crosssell_gaps` written by `loyalist analyze`; computes it when it is missing (or for
    --as-of). Products the customer bought or returned, and non-product lines (postage, fees), are never
    suggested. Export with --format csv|json|parquet|xlsx --out FILE."""
    from loyalist.insights.aggregate import has_products
    from loyalist.insights.crosssell import compute_gaps, settings, stored_or_computed
    from loyalist.store import open_store

    with _errors():
        cfg = config.load(config_path)
        try:
            opts = settings(cfg.sections)
        except ValueError as exc:
            raise LoyalistError(str(exc)) from None
        store = open_store(_db(db, cfg), read_only=as_of is None, create=False)
        if not has_products(store):
            store.close()
            raise LoyalistError(f"{store.path}: the transactions carry no product codes, so there are no "
                                "cross-sell gaps")
        with err.status("finding each customer's look-alikes and the products they buy"):
            if as_of is not None:
                frame = compute_gaps(store, _as_date(as_of, "--as-of"), {"crosssell": {**opts, "top": top}})
            else:
                frame = stored_or_computed(store, None, cfg.sections)
        accuracy = _held_out(store)
        store.close()
        if accuracy:
            err.print(accuracy, highlight=False, soft_wrap=True)
        if customer is not None:
            frame = frame[frame["customer_id"].astype(str) == customer]
            if frame.empty:
                raise LoyalistError(f"--customer {customer!r}: no gaps for this customer (unknown customer, "
                                    "or nothing their look-alikes buy that they lack)")
        frame = frame[frame["rank"] <= top].sort_values(["customer_id", "rank"]).reset_index(drop=True)
        if customer is not None and out_file is None and fmt is None:
            _print_customer(frame, customer)
            return
        emit(frame, fmt, out_file, "gaps")


def _held_out(store) -> str | None:
    """One line with the latest held-out figures of the gaps (table crosssell_backtest), if any."""
    from loyalist.store import has_table

    if not has_table(store, "crosssell_backtest"):
        return "held-out accuracy: not measured yet (run `loyalist analyze` or `loyalist gaps-backtest`)"
    b = store.table("crosssell_backtest").execute()
    b = b[b["run_at"] == b["run_at"].max()]
    b = b[b["cutoff"] == b["cutoff"].max()].set_index("method")
    if "lookalikes" not in b.index:
        return None
    la = b.loc["lookalikes"]
    n = int(la["customers"])
    parts = [(f"held out at {la['cutoff']:%Y-%m-%d} ({int(la['horizon_days'])} days, {n:,} "
              f"customer{'' if n == 1 else 's'}): recall@{int(la['k'])} {la['recall_at_k']:.3f}")]
    for method, name in (("popularity", "popularity"), ("als_default", "implicit ALS")):
        if method in b.index:
            parts.append(f"{name} {b.loc[method, 'recall_at_k']:.3f}")
    return ", ".join(parts[:1]) + (" vs " + ", ".join(parts[1:]) if len(parts) > 1 else "")


def _print_customer(frame, customer: str) -> None:
    table = Table(title=f"cross-sell gaps of customer {customer} (as of {frame['as_of'].iloc[0]:%Y-%m-%d})",
                  title_justify="left")
    for col, just in (("rank", "right"), ("product_id", "left"), ("description", "left"), ("score", "right"),
                      ("evidence", "left")):
        table.add_column(col.replace("_", " "), justify=just)
    for _, row in frame.iterrows():
        table.add_row(str(row["rank"]), str(row["product_id"]), str(row["description"]), f"{row['score']:.3f}",
                      str(row["evidence"]))
    out.print(table)


@app.command("gaps-backtest")
def gaps_backtest(
    cutoff: Annotated[list[str] | None, typer.Option("--cutoff", help="Fit before this date, score the horizon "
                                                                        "after it (repeatable; default: the last "
                                                                        "order minus the horizon).")] = None,
    horizon: Annotated[int, typer.Option("--horizon", help="Holdout length in days.")] = 90,
    k: Annotated[int, typer.Option("--k", help="List length for recall@k and NDCG@k.")] = 10,
    no_als: Annotated[bool, typer.Option("--no-als", help="Skip the implicit ALS baseline (faster).")] = False,
    db: DbOption = None,
    json_: JsonOption = False,
    config_path: ConfigOption = None,
) -> None:
    """Held-out accuracy of the gaps: recall@k and NDCG@k of the products customers buy for the first time
    after each cutoff, for loyalist's look-alikes against global popularity and implicit ALS (default
    settings), in the same run. Stored in table `crosssell_backtest`."""
    from loyalist.analysis import data_end
    from loyalist.evaluation.crosssell import METHODS, evaluate
    from loyalist.insights.aggregate import has_products
    from loyalist.insights.crosssell import settings
    from loyalist.store import open_store, write_frame

    with _errors():
        cfg = config.load(config_path)
        if horizon < 1 or k < 1:
            raise LoyalistError("--horizon and --k must be at least 1")
        try:
            opts = settings(cfg.sections)
        except ValueError as exc:
            raise LoyalistError(str(exc)) from None
        store = open_store(_db(db, cfg), create=False)  # a mistyped --db: say so, do not create an empty store
        if not has_products(store):
            store.close()
            raise LoyalistError(f"{store.path}: the transactions carry no product codes, so there are no "
                                "cross-sell gaps to backtest")
        try:
            end = data_end(store)
        except ValueError as exc:
            raise LoyalistError(str(exc)) from None
        cutoffs = [_as_date(c, "--cutoff") for c in cutoff] if cutoff else [end - dt.timedelta(days=horizon)]
        methods = [m for m in METHODS if not (no_als and m == "als_default")]
        with err.status(f"backtesting the gaps at {', '.join(map(str, cutoffs))} over {horizon} days"):
            metrics = evaluate(store.table("transactions"), cutoffs, horizon, k, opts, methods)
        if metrics.empty or (metrics["customers"] == 0).all():
            raise LoyalistError("no customer bought a new product after the cutoff(s): nothing to score")
        write_frame(store, "crosssell_backtest", metrics.assign(run_at=dt.datetime.now(dt.UTC).replace(tzinfo=None)),
                    replace=False)
        store.close()
    if json_:
        out.print_json(metrics.assign(cutoff=metrics["cutoff"].astype(str)).to_json(orient="records"))
        return
    table = Table(title=f"cross-sell backtest: first-time products in the {horizon} days after each cutoff",
                  title_justify="left")
    for c in ("cutoff", "method", "customers", f"recall@{k}", f"NDCG@{k}", "hit rate", "seconds"):
        table.add_column(c, justify="left" if c in ("cutoff", "method") else "right")
    for _, r in metrics.iterrows():
        table.add_row(f"{r['cutoff']:%Y-%m-%d}", r["method"], f"{r['customers']:,}", f"{r['recall_at_k']:.4f}",
                      f"{r['ndcg_at_k']:.4f}", f"{r['hit_rate']:.3f}", f"{r['seconds']:.1f}")
    out.print(table)
