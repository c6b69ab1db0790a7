"""`loyalist segments` and `loyalist value`: the segment tables and the ranked customer-value list.

Both read what `loyalist analyze` stored (tables `segments`, `rfm_segments`, `customer_insights`,
`value_backtest`); when it is missing they say which command to run. Without --format/--out they print a
table; with them they export (csv or json to standard output, any format to --out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.table import Table

from loyalist.cli import (
    ConfigOption,
    DbOption,
    OutOption,
    TopOption,
    _db,
    _errors,
    app,
    emit,
    err,
    out,
)
from loyalist.config import load as load_config
from loyalist.errors import LoyalistError

CUSTOMER_TABLE = "customer_insights"
FmtOption = Annotated[str | None, typer.Option("--format", help="Export as csv, json, parquet or xlsx "
                                                                   "(parquet/xlsx need --out); default: a table.")]
MEMBER_COLUMNS = ["customer_id", "segment", "rfm_segment", "rfm_score", "orders", "revenue", "days_since_last",
                  "p_alive", "clv_12m", "value_grade", "value_score"]
VALUE_COLUMNS = ["customer_id", "value_grade", "value_percentile", "value_score", "value_clv", "value_margin",
                 "value_growth", "value_risk", "revenue", "orders", "segment", "rfm_segment", "value_reason"]


def _open(db: Path | None, config_path: Path | None, table: str):
    from loyalist.store import has_table, open_store

    cfg = load_config(config_path)
    path = _db(db, cfg)
    store = open_store(path, read_only=True)
    if not has_table(store, table):
        store.close()
        raise LoyalistError(f"{path}: no `{table}` table yet; run `loyalist analyze --db {path}` first "
                            "(it computes segments and the value metric)")
    return store


def _print(frame: pd.DataFrame, title: str, formats: dict[str, str], wrap: tuple[str, ...] = ()) -> None:
    table = Table(title=title, title_justify="left")
    for c in frame.columns:
        table.add_column(c.replace("_", " "), justify="right" if c in formats else "left",
                         overflow="fold" if c in wrap else "ellipsis", ratio=3 if c in wrap else None)
    for _, row in frame.iterrows():
        table.add_row(*["" if pd.isna(row[c]) else format(row[c], formats[c]) if c in formats else str(row[c])
                        for c in frame.columns])
    out.print(table)


@app.command()
def segments(
    rfm: Annotated[bool, typer.Option("--rfm", help="Show the RFM segments (champions ... lost) instead of the "
                                                    "behaviour micro-segments.")] = False,
    customers: Annotated[str | None, typer.Option("--customers", help="List the members of this segment "
                                                                         "(name as shown; case-insensitive).")] = None,
    db: DbOption = None,
    fmt: FmtOption = None,
    out_file: OutOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Customer segments: size, share of revenue and of predicted CLV, average P(alive), churn risk (share with
    P(alive) < 0.5), growth (spend of the last 6 months vs the 6 before) and a suggested action.

    Micro-segments come from clustering behaviour (value, cycle, regularity, range, trend, returns); --rfm
    shows the classic RFM segments. --customers NAME lists a segment's members."""
    with _errors():
        table = "rfm_segments" if rfm else "segments"
        store = _open(db, config_path, CUSTOMER_TABLE if customers else table)
        try:
            if customers is None:
                frame = store.table(table).execute()
                title = "RFM segments" if rfm else "micro-segments"
            else:
                col = "rfm_segment" if rfm else "segment"
                t = store.table(CUSTOMER_TABLE)
                if col not in t.columns:
                    raise LoyalistError(f"{store.path}: the per-customer table has no {col} column; "
                                        f"run `loyalist analyze --db {store.path}` again")
                names = t.select(col).distinct().execute()[col].dropna().tolist()
                match = [n for n in names if n.lower() == customers.strip().lower()]
                if not match:
                    raise LoyalistError(f"--customers {customers!r}: no such {'RFM ' if rfm else ''}segment "
                                        f"(segments: {'; '.join(sorted(names))})")
                t = t.mutate(days_since_last=t.tenure_days - t.recency_days)  # as_of - last order
                cols = [c for c in MEMBER_COLUMNS if c in t.columns]
                expr = t.filter(t[col] == match[0]).select(cols)
                sort = "clv_12m" if "clv_12m" in cols else "revenue"
                frame = expr.order_by([expr[sort].desc(), expr.customer_id]).execute()
                title = f"{len(frame):,} customers in {'RFM ' if rfm else ''}segment {match[0]!r}"
        finally:
            store.close()
        if fmt is None and out_file is None:
            if customers is None:
                _print(frame.drop(columns=["description"]), title,
                       {"customers": ",", "revenue_share": ".1%", "clv_share": ".1%", "avg_p_alive": ".2f",
                        "churn_risk": ".0%", "growth": "+.0%"}, wrap=("suggested_action",))
                for name, text in zip(frame["segment"], frame["description"]):
                    out.print(f"[bold]{name}[/]: {text}", highlight=False)
            else:
                _print(frame, title, {"orders": ",", "revenue": ",.0f", "days_since_last": ",", "p_alive": ".2f",
                                      "clv_12m": ",.0f", "value_score": ",.0f"})
            return
        emit(frame, fmt, out_file, "rows")


@app.command()
def value(
    top: TopOption = None,
    grade: Annotated[str | None, typer.Option("--grade", help="Only customers of this grade (A, B or C).")] = None,
    db: DbOption = None,
    fmt: FmtOption = None,
    out_file: OutOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Customers ranked by value: predicted 12-month CLV x margin x growth x P(alive), with each part, the
    grade (A = top 20%, B = next 30%, C = rest), the percentile and the reason in words.

    Below the list: the held-out check (customers graded A a year before the data ends, and the share of the
    following year's revenue they brought, vs the same number chosen by past revenue)."""
    from loyalist.store import has_table

    with _errors():
        if grade is not None and grade.upper() not in ("A", "B", "C"):
            raise LoyalistError(f"--grade {grade!r}: choose A, B or C")
        store = _open(db, config_path, CUSTOMER_TABLE)
        try:
            t = store.table(CUSTOMER_TABLE)
            if "value_score" not in t.columns:
                raise LoyalistError(f"{store.path}: no value metric in the per-customer table (the data has no "
                                    "predicted CLV, or the analysis predates it); run `loyalist analyze` again")
            cols = [c for c in VALUE_COLUMNS if c in t.columns]
            expr = t.select(cols)
            if grade is not None:
                expr = expr.filter(expr.value_grade == grade.upper())
            expr = expr.order_by([expr.value_score.desc(), expr.customer_id])
            if top is not None:
                expr = expr.limit(top)
            frame = expr.execute()
            check = None
            if has_table(store, "value_backtest"):
                bt = store.table("value_backtest")
                check = bt.filter(bt.run_at == bt.run_at.max()).execute()
        finally:
            store.close()
        if fmt is None and out_file is None:
            _print(frame.drop(columns=["value_reason"]), f"{len(frame):,} customers by value",
                   {"value_percentile": ".1f", "value_score": ",.0f", "value_clv": ",.0f", "value_margin": ".0%",
                    "value_growth": ".2f", "value_risk": ".2f", "revenue": ",.0f", "orders": ","})
        else:
            emit(frame, fmt, out_file, "customers")
        r = None if check is None or check.empty else check.set_index("ranking")
        if r is not None and pd.notna(r.loc["value_score", "a_revenue_share"]):
            v, p = r.loc["value_score"], r.loc["past_revenue"]
            err.print(f"held-out check at {pd.Timestamp(v['cutoff']).date()}: the {int(v['graded_a']):,} customers "
                      f"graded A brought {v['a_revenue_share']:.1%} of the next {int(v['horizon_days'])} days' "
                      f"revenue; the same number chosen by past revenue brought {p['a_revenue_share']:.1%} "
                      f"({(v['a_revenue_share'] - p['a_revenue_share']) * 100:+.1f} points)", highlight=False)
        else:
            err.print("no held-out check of the grades yet (it needs a year of data after a cutoff with history "
                      "before it)", highlight=False)
