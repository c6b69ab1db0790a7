"""Commands of the aggregate view: `loyalist forecast`, `loyalist peaks`, `loyalist cohorts`, `loyalist lifecycle`.

Each reads the table stored by `loyalist analyze` (steps `forecast` and `lifecycle`, loyalist.insights.aggregate)
when it is there and matches the request, and computes it otherwise. Charts go to STORE-reports/ beside the
store as PNG and self-contained offline HTML, drawn by loyalist.plots. Heavy libraries (statsforecast, matplotlib, plotly) are imported inside the commands only, so
other commands do not pay for them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from loyalist import config
from loyalist.cli import ConfigOption, DbOption, FormatOption, JsonOption, OutOption, _as_date, _db, _errors, _reports, app, emit, err, out
from loyalist.errors import LoyalistError

AsOfOption = Annotated[Optional[str], typer.Option("--as-of", help="Use only data before this date (YYYY-MM-DD); "
                                                                   "default: the day after the last order.")]
PlotsOption = Annotated[Optional[Path], typer.Option("--plots", help="Folder for the charts (PNG and offline HTML; "
                                                                     "default: STORE-reports/<command>/).")]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name))[:80] or "series"


def _open(db, config_path, as_of):
    from loyalist.analysis import data_end
    from loyalist.store import open_store

    cfg = config.load(config_path)
    path = _db(db, cfg)
    store = open_store(path, create=False)
    try:
        when = _as_date(as_of, "--as-of") or data_end(store)
    except ValueError as exc:
        store.close()
        raise LoyalistError(str(exc)) from None
    return cfg, path, store, when


def _customers(store):
    from loyalist.analysis import CUSTOMER_TABLE
    from loyalist.store import has_table

    return store.table(CUSTOMER_TABLE).execute() if has_table(store, CUSTOMER_TABLE) else None


def _stored_ok(store, table: str, as_of, explicit_as_of: bool) -> bool:
    """A stored table is used when it exists and was made for this as-of date (the latest analysis)."""
    from loyalist.store import has_table

    if not has_table(store, table) or not has_table(store, "analysis_runs"):
        return False
    runs = store.table("analysis_runs")
    last = runs.order_by(runs.run_at.desc()).limit(1).execute()
    if last.empty:
        return False
    import pandas as pd

    return pd.Timestamp(last["as_of"].iloc[0]).date() == as_of


# ---------------------------------------------------------------------------------------------------- commands
@app.command()
def forecast(
    level: Annotated[str, typer.Option("--level", help="product, category (needs product categories), total, "
                                                       "or orders (orders per week, used for staffing).")] = "total",
    horizon: Annotated[Optional[int], typer.Option("--horizon", help="Weeks ahead (default: \\[forecast] horizon, "
                                                                     "else 13).")] = None,
    series: Annotated[Optional[str], typer.Option("--series", help="Only this series (a product id, a category, "
                                                                   "or 'all' for the total).")] = None,
    plots: PlotsOption = None,
    plot_top: Annotated[int, typer.Option("--plot-top", min=0, help="Without --series, plot this many series of the level "
                                                            "(largest forecast first); 0 for none.")] = 12,
    as_of: AsOfOption = None,
    db: DbOption = None,
    fmt: FormatOption = None,
    out_file: OutOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Weekly demand forecast with 80% and 95% intervals, per product, category or in total.

    The method of each series (Croston/ADIDA/IMAPA/TSB for intermittent demand, AutoETS and ETS + seasonal
    naive for smooth demand) is chosen by a rolling-origin backtest; its error (backtest_mae) is in the
    table. Products also get the bottom-up forecast from the customer-level predictions and the reconciled
    forecast. Writes a chart per series (history, forecast, intervals)."""
    from loyalist import plots as charts
    from loyalist.insights import aggregate as agg

    with _errors():
        if level not in ("product", "category", "total", "orders"):
            raise LoyalistError(f"--level {level!r}: choose product, category, total or orders")
        cfg, path, store, when = _open(db, config_path, as_of)
        if not agg.has_products(store):
            raise LoyalistError(f"no demand to forecast: {agg.NO_PRODUCTS}")
        h_default = int((cfg.sections.get("forecast") or {}).get("horizon", 13))
        h = h_default if horizon is None else horizon
        if h < 1 or h > 104:
            raise LoyalistError("--horizon must be between 1 and 104 weeks")
        notes: list[str] = []
        if level == "category" and not agg.has_category(store):
            raise LoyalistError("the products table has no categories (ingest a product file with a category "
                                "column: `loyalist ingest products.csv --kind products`); use --level product or total")
        frame = None
        if h == h_default and _stored_ok(store, "forecasts", when, as_of is not None):
            t = store.table("forecasts")
            expr = t.filter(t.level == level)
            if series is not None:
                expr = expr.filter(expr.series_id == series)
            frame = expr.order_by(["series_id", "week"]).execute()
            if frame.empty:
                frame = None
        if frame is None:
            with err.status(f"forecasting {level} series {h} weeks ahead (method per series by backtest)"):
                frame = agg.compute_forecasts(store, when, _customers(store) if level == "product" else None, h,
                                              (level,), notes, series)
        if frame.empty:
            raise LoyalistError(f"no {level} series{' ' + repr(series) if series else ''} with sales before {when}")
        files: list[Path] = []
        if plot_top or series:
            folder = plots or _reports(path) / f"forecast_{when}"
            ids = [series] if series else list(frame.groupby("series_id")["forecast"].sum()
                                               .sort_values(ascending=False).index[:plot_top])
            hist = agg.weekly_series(store, when, level, "orders" if level == "orders" else "units")
            for sid in ids:
                fc = frame[frame["series_id"] == sid]
                hs = hist[hist["unique_id"] == sid]
                files += charts.forecast_plot(hs, fc, f"{level} {sid}: weekly {'orders' if level == 'orders' else 'units'}",
                                       folder, f"{level}_{_safe(sid)}")
        store.close()
        summary = frame.groupby("method")["series_id"].nunique().to_dict()
        err.print(f"{frame['series_id'].nunique():,} {level} series, {h} weeks from {frame['week'].min():%Y-%m-%d}; "
                  f"methods chosen: " + ", ".join(f"{m} {n}" for m, n in summary.items()), highlight=False)
        for note in notes:
            err.print(f"note: {note}", highlight=False)
        if files:
            err.print(f"charts: {files[0].parent} ({len(files) // 2} series)", highlight=False)
        emit(frame, fmt, out_file, "forecast rows")


@app.command()
def peaks(
    throughput: Annotated[Optional[float], typer.Option("--throughput", help="Orders one person handles per hour "
                                                                             "(default: \\[staffing] orders_per_person_hour).")] = None,
    hours_per_person: Annotated[Optional[float], typer.Option("--hours-per-person", help="Working hours per person "
                                                                                        "and week (default 37.5).")] = None,
    table: Annotated[str, typer.Option("--table", help="What to export: staffing, hours or weeks.")] = "staffing",
    plots: PlotsOption = None,
    as_of: AsOfOption = None,
    db: DbOption = None,
    fmt: FormatOption = None,
    out_file: OutOption = None,
    json_: JsonOption = False,
    config_path: ConfigOption = None,
) -> None:
    """Peak demand: orders and lines by hour of day x weekday (heatmap) and by week of year, the peak periods
    in words, and a staffing table for the next weeks from the orders forecast and your throughput."""
    from loyalist import plots as charts
    from loyalist.insights import aggregate as agg

    with _errors():
        if table not in ("staffing", "hours", "weeks"):
            raise LoyalistError(f"--table {table!r}: choose staffing, hours or weeks")
        cfg, path, store, when = _open(db, config_path, as_of)
        if not agg.has_products(store):
            raise LoyalistError(f"no peaks: {agg.NO_PRODUCTS}")
        st = cfg.sections.get("staffing") or {}
        tp = throughput if throughput is not None else st.get("orders_per_person_hour")
        if tp is not None and float(tp) <= 0:
            raise LoyalistError("the throughput (orders per person-hour) must be positive")
        hpp = float(st.get("hours_per_person", 37.5)) if hours_per_person is None else hours_per_person
        if hpp <= 0:
            raise LoyalistError("the working hours per person and week must be positive")
        hw, wk, sentences = agg.compute_peaks(store, when)
        if hw.empty:
            raise LoyalistError(f"no orders before {when}")
        h = int((cfg.sections.get("forecast") or {}).get("horizon", 13))
        fc = None
        if _stored_ok(store, "forecasts", when, as_of is not None):
            t = store.table("forecasts")
            fc = t.filter(t.level == "orders").execute()
        if fc is None or fc.empty:
            with err.status("forecasting weekly orders"):
                fc = agg.compute_forecasts(store, when, None, h, ("orders",))
        staff = agg.staffing_table(fc, hw, float(tp) if tp else None, hpp)
        folder = plots or _reports(path) / f"peaks_{when}"
        files = charts.heatmap_plot(hw, folder) + charts.weeks_plot(wk, folder)
        store.close()
    frames = {"staffing": staff, "hours": hw, "weeks": wk}
    if out_file is not None or fmt is not None:
        emit(frames[table], fmt, out_file, f"{table} rows")
        if out_file is None:
            return
    if json_:
        out.print_json(json.dumps({"peaks": sentences, "staffing": json.loads(staff.to_json(orient="records",
                                                                                            date_format="iso")),
                                   "charts": [str(f) for f in files]}))
        return
    for s in sentences:
        out.print(s, highlight=False)
    tbl = Table(title=f"staffing for the next {len(staff)} weeks"
                      + (f" at {float(tp):g} orders per person-hour, {hpp:g} h per person" if tp else ""),
                title_justify="left")
    cols = ["week", "orders", "orders (80% high)"] + (["person-hours", "people", "people (80% high)"] if tp else [])
    for c in cols:
        tbl.add_column(c, justify="left" if c == "week" else "right")
    for _, r in staff.iterrows():
        row = [f"{r['week']:%Y-%m-%d}", f"{r['orders']:,.0f}", f"{r['orders_hi80']:,.0f}"]
        if tp:
            row += [f"{r['person_hours']:,.1f}", f"{int(r['people'])}", f"{int(r['people_hi80'])}"]
        tbl.add_row(*row)
    out.print(tbl)
    if not tp:
        out.print("Set a throughput (--throughput N or [staffing] orders_per_person_hour in loyalist.toml) to turn "
                  "orders into person-hours and people.", highlight=False, markup=False)
    out.print(f"Charts: {folder}", highlight=False)


@app.command()
def cohorts(
    plots: PlotsOption = None,
    as_of: AsOfOption = None,
    db: DbOption = None,
    fmt: FormatOption = None,
    out_file: OutOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Acquisition cohorts (month of first order): the share of each cohort buying in each later month
    (retention) and revenue per customer, with retention and revenue curves."""
    from loyalist import plots as charts
    from loyalist.insights import aggregate as agg

    with _errors():
        _, path, store, when = _open(db, config_path, as_of)
        if _stored_ok(store, "cohorts", when, as_of is not None):
            co = store.table("cohorts").execute()
        else:
            co = agg.compute_cohorts(store, when)
        if co.empty:
            raise LoyalistError(f"no customer purchases before {when}")
        import pandas as pd

        co["cohort_month"] = pd.to_datetime(co["cohort_month"])
        folder = plots or _reports(path) / f"cohorts_{when}"
        files = charts.cohort_plot(co, folder)
        store.close()
    if out_file is not None or fmt is not None:
        emit(co, fmt, out_file, "cohort rows")
        err.print(f"charts: {files[0].parent}", highlight=False)
        return
    piv = co.pivot(index="cohort_month", columns="months_since", values="retention")
    show = [m for m in (1, 2, 3, 6, 9, 12, 18, 24) if m in piv.columns]
    tbl = Table(title="retention by acquisition cohort (share of the cohort buying in month N)", title_justify="left")
    tbl.add_column("cohort")
    tbl.add_column("customers", justify="right")
    for m in show:
        tbl.add_column(f"M{m}", justify="right")
    tbl.add_column("revenue/customer to date", justify="right")
    size = co.groupby("cohort_month")["customers"].first()
    cum = co.groupby("cohort_month")["cumulative_revenue_per_customer"].last()
    for month, r in piv.iterrows():
        tbl.add_row(f"{month:%Y-%m}", f"{int(size[month]):,}",
                    *["" if pd.isna(r.get(m)) else f"{r[m]:.0%}" for m in show], f"{cum[month]:,.0f}")
    out.print(tbl)
    out.print(f"Charts: {files[0].parent}", highlight=False)


@app.command()
def lifecycle(
    table: Annotated[str, typer.Option("--table", help="What to export: customers (stage per customer) or "
                                                       "conversion (stage-to-stage and first-to-second rates).")] = "customers",
    as_of: AsOfOption = None,
    db: DbOption = None,
    fmt: FormatOption = None,
    out_file: OutOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Lifecycle stage of each customer (new, active, at risk, lapsed, reactivated — thresholds from the
    customer's own ordering rhythm), stage-to-stage conversion per month and first-to-second-order conversion."""
    from loyalist.insights import aggregate as agg

    with _errors():
        if table not in ("customers", "conversion"):
            raise LoyalistError(f"--table {table!r}: choose customers or conversion")
        _, path, store, when = _open(db, config_path, as_of)
        now, conv = agg.compute_lifecycle(store, when)
        store.close()
        if now.empty:
            raise LoyalistError(f"no customer purchases before {when}")
    per = now[["customer_id", "stage", "orders", "last_order", "since_last_days", "typical_gap_days",
               "lifecycle_reason"]].rename(columns={"stage": "lifecycle_stage"})
    if out_file is not None or fmt is not None:
        emit(per if table == "customers" else conv, fmt, out_file, f"{table} rows")
        return
    counts = per["lifecycle_stage"].value_counts()
    tbl = Table(title=f"lifecycle stages as of {when}", title_justify="left")
    tbl.add_column("stage")
    tbl.add_column("customers", justify="right")
    tbl.add_column("share", justify="right")
    from loyalist.models.lifecycle import STAGES

    for s in STAGES:
        n = int(counts.get(s, 0))
        tbl.add_row(s, f"{n:,}", f"{n / max(len(per), 1):.0%}")
    out.print(tbl)
    st = conv[conv["kind"] == "stage"]
    if len(st):
        recent = st[st["period_start"] >= st["period_start"].max() - __import__("pandas").DateOffset(months=11)]
        g = recent.groupby(["from_stage", "to_stage"])["customers"].sum()
        rate = g / g.groupby(level=0).transform("sum")
        t2 = Table(title="monthly stage-to-stage conversion, last 12 months (share of the from-stage)",
                   title_justify="left")
        t2.add_column("from \\ to")
        for s in STAGES:
            t2.add_column(s, justify="right")
        for f in STAGES:
            if f in rate.index.get_level_values(0):
                t2.add_row(f, *[f"{rate.get((f, s), 0):.0%}" for s in STAGES])
        out.print(t2)
    f2 = conv[conv["kind"] == "first_to_second"]
    if len(f2):
        tot = f2["customers"].sum() / f2["base"].sum()
        last = f2.sort_values("period_start").tail(6)
        out.print(f"First-to-second-order conversion within 90 days: {tot:.0%} overall ("
                  f"{int(f2['customers'].sum()):,} of {int(f2['base'].sum()):,} new customers); last cohorts: "
                  + ", ".join(f"{r.period_start:%Y-%m} {r.rate:.0%}" for r in last.itertuples()), highlight=False)
    out.print(f"Per-customer stages: loyalist lifecycle --db {path} --out stages.csv", highlight=False)
