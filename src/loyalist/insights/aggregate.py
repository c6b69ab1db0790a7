"""The aggregate view: demand forecasts, peak demand and staffing, acquisition cohorts, lifecycle stages and
conversion. Two analysis steps:

- `lifecycle` (order 60): per-customer column `lifecycle_stage` (+ `lifecycle_reason`), tables `cohorts`
  and `lifecycle_conversion`;
- `forecast` (order 70): tables `forecasts`, `forecast_backtest`, `peak_hours`, `peak_weeks`, `staffing`.
Both also run on the Spark engine (`spark=True`; `lifecycle_on_spark`, and `run_all` with a SparkSource).

Tables (columns):
- forecasts: level (product | category | total | orders), series_id, week (Monday), forecast, lo80, hi80,
  lo95, hi95, method, bottom_up (products: units per week from the customer-level predictions), reconciled
  (see loyalist.models.forecast), backtest_mae. Units for product/category/total, orders for "orders".
- forecast_backtest: level, method, series, mase_mean, mase_median, mae, coverage80, coverage95, origins, h
  (loyalist.evaluation.forecast; in `analyze` the product level is scored on a fixed random sample of
  `[forecast] backtest_products` products (default 300) to stay fast; bench/forecast.py scores them all).
- peak_hours: dow (0 = Monday), day, hour, orders, lines, share (of all orders).
- peak_weeks: week (Monday), year, week_of_year, orders, lines, units, index (orders / mean weekly orders),
  peak (bool: index >= 1.25).
- staffing: week, orders (forecast), orders_hi80, person_hours, person_hours_hi80, people, people_hi80,
  orders_per_person_hour, hours_per_person, busiest_day, busiest_hours.
- cohorts: cohort_month, months_since, customers (cohort size), active, retention, revenue,
  revenue_per_customer, cumulative_revenue_per_customer.
- lifecycle_conversion: kind (stage | first_to_second), period_start, period_end, from_stage, to_stage,
  customers, rate, base (first_to_second: customers acquired that month).

Settings: [forecast] horizon (weeks, 13), backtest_products (300); [staffing] orders_per_person_hour
(no default: without it the staffing table has orders only and a note says so), hours_per_person (37.5 a week).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import ibis.expr.types as ir
import numpy as np
import pandas as pd

from loyalist.features import aggregate as feat
from loyalist.insights import Context, step
from loyalist.models import lifecycle as lc
from loyalist.store import Store, write_frame

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
PEAK_INDEX = 1.25
PEAK_MONTH_INDEX = 1.15


NO_PRODUCTS = ("the transactions carry no product codes, and demand (forecasts, peaks, staffing) counts the product "
               "lines sold")


def has_products(store: Store) -> bool:
    t = store.table("transactions")
    return int(t.filter(t.product_id.notnull()).count().execute()) > 0


def has_category(store: Store) -> bool:
    p = store.table("products")
    return int(p.filter(p.category.notnull()).count().execute()) > 0


def last_complete_week(as_of: dt.date) -> pd.Timestamp:
    """The Monday of the last week that ended before `as_of` (a week in progress is not history yet)."""
    a = pd.Timestamp(as_of)
    this_monday = a - pd.Timedelta(days=a.dayofweek)
    return this_monday - pd.Timedelta(weeks=1)


def weekly_series(store: Store, as_of: dt.date, level: str, value: str = "units") -> pd.DataFrame:
    """Dense weekly history (unique_id, ds, y) of one level up to the last complete week before as_of."""
    from loyalist.models.forecast import dense_weekly

    t = store.table("transactions")
    end = last_complete_week(as_of)
    limit = end + pd.Timedelta(weeks=1)
    by = "total" if level == "orders" else level
    w = feat.weekly_demand(t, limit.date(), by, store.table("products") if level == "category" else None).execute()
    if level == "total" or level == "orders":
        start = w["week"].min() if len(w) else None
        return dense_weekly(w, end, value, start=pd.Timestamp(start) if start is not None else None)
    return dense_weekly(w, end, value)


def active_products(y: pd.DataFrame, weeks: int = 26) -> pd.DataFrame:
    last = y["ds"].max()
    sold = y[(y["ds"] > last - pd.Timedelta(weeks=weeks)) & (y["y"] > 0)]["unique_id"].unique()
    return y[y["unique_id"].isin(sold)]


def customer_bottom_up(store: Store, as_of: dt.date, customers: pd.DataFrame | ir.Table) -> pd.Series:
    """Units per week per product expected from the customer-level predictions (loyalist.models.forecast).

    `customers` is the per-customer table as pandas (DuckDB engine) or as an Ibis table (Spark engine: the
    customer x product join and the sum per product then run in the engine; one row per product reaches the
    driver)."""
    import ibis

    from loyalist.models.forecast import bottom_up

    rate_col = next((c for c in customers.columns if c.startswith("expected_orders_") and c.endswith("d")), None)
    if rate_col is None:
        return pd.Series(dtype=float)
    days = float(rate_col[len("expected_orders_"):-1])
    t = store.table("transactions")
    start = dt.datetime.combine(as_of - dt.timedelta(days=365), dt.time())
    lines = feat.demand_lines(t, as_of)
    lines = lines.filter(lines.order_date >= ibis.timestamp(start))
    reg = lines.filter(~lines.is_guest & lines.customer_id.notnull())
    orders = reg.group_by("customer_id").aggregate(n_orders=reg.order_id.nunique())
    cp = reg.group_by(["customer_id", "product_id"]).aggregate(units=reg.quantity.sum())
    cp = cp.join(orders, "customer_id")
    cp = cp.select("customer_id", "product_id", units_per_order=cp.units / cp.n_orders)
    share = lines.group_by("product_id").aggregate(
        reg=ibis.ifelse(~lines.is_guest & lines.customer_id.notnull(), lines.quantity, 0.0).sum(),
        all=lines.quantity.sum()).execute()
    share = pd.Series((share["reg"] / share["all"]).to_numpy(float), index=share["product_id"].to_numpy())
    if isinstance(customers, pd.DataFrame):
        rates = pd.DataFrame({"customer_id": customers["customer_id"],
                              "rate": customers[rate_col].fillna(0.0).to_numpy(float) / (days / 7.0)})
        return bottom_up(rates, cp.execute(), share)
    # Ibis table (Spark): bottom_up's join and sum per product, in the engine; then its guest share, as there
    rates = customers.select("customer_id", rate=customers[rate_col].fill_null(0.0) / (days / 7.0))
    j = cp.join(rates, "customer_id")
    per = j.group_by("product_id").aggregate(units=(j.rate * j.units_per_order).sum()).execute()
    if per.empty:
        return pd.Series(dtype=float)
    return bottom_up(pd.DataFrame({"customer_id": [0], "rate": [1.0]}),
                     pd.DataFrame({"customer_id": 0, "product_id": per["product_id"].to_numpy(),
                                   "units_per_order": per["units"].to_numpy(float)}), share)


def compute_forecasts(store: Store, as_of: dt.date, customers: pd.DataFrame | None, horizon: int = 13,
                      levels: tuple[str, ...] = ("total", "orders", "category", "product"),
                      notes: list[str] | None = None, series: str | None = None) -> pd.DataFrame:
    """Forecasts of every series of the given levels (see the module docstring for the columns)."""
    from loyalist.models.forecast import forecast_series, reconcile

    notes = notes if notes is not None else []
    parts = []
    for level in levels:
        if level == "category" and not has_category(store):
            notes.append("the products table has no categories: forecasts are per product and in total only")
            continue
        y = weekly_series(store, as_of, level, "orders" if level == "orders" else "units")
        if level == "product":
            y = active_products(y)
        if series is not None:
            y = y[y["unique_id"] == series]
        if y.empty:
            continue
        sf = forecast_series(y, horizon, aggregate=level != "product")
        f = sf.forecasts.merge(sf.selection[["series_id", "backtest_mae"]], on="series_id", how="left")
        if level == "product" and customers is not None and (not isinstance(customers, pd.DataFrame)
                                                              or len(customers)):
            f = reconcile(f, customer_bottom_up(store, as_of, customers))
        else:
            f["bottom_up"] = np.nan
            f["reconciled"] = f["forecast"]
        parts.append(f.assign(level=level))
    if not parts:
        return pd.DataFrame(columns=["level", "series_id", "week", "forecast", "lo80", "hi80", "lo95", "hi95",
                                     "method", "bottom_up", "reconciled", "backtest_mae"])
    out = pd.concat(parts, ignore_index=True)
    return out[["level", "series_id", "week", "forecast", "lo80", "hi80", "lo95", "hi95", "method", "bottom_up",
                "reconciled", "backtest_mae"]]


def compute_backtest(store: Store, as_of: dt.date, products: int | None = 300, seed: int = 0,
                     levels: tuple[str, ...] = ("total", "orders", "category", "product")) -> pd.DataFrame:
    """The forecast_backtest table (rolling origins, nested selection); `products` limits the product level to
    a fixed random sample (None: every active product)."""
    from loyalist.evaluation.forecast import backtest_levels

    series = {}
    for level in levels:
        if level == "category" and not has_category(store):
            continue
        y = weekly_series(store, as_of, level, "orders" if level == "orders" else "units")
        if level == "product":
            y = active_products(y)
            ids = np.sort(y["unique_id"].unique())
            if products is not None and len(ids) > products:
                ids = np.random.default_rng(seed).choice(ids, products, replace=False)
                y = y[y["unique_id"].isin(ids)]
        series[level] = y
    try:
        return backtest_levels(series)
    except ValueError:
        return backtest_levels({})


def compute_peaks(store: Store, as_of: dt.date) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(peak_hours, peak_weeks, sentences naming the peaks)."""
    t = store.table("transactions")
    hw = feat.hour_weekday(t, as_of).execute()
    hw["dow"] = hw["dow"].astype(int)
    hw["hour"] = hw["hour"].astype(int)
    hw["day"] = hw["dow"].map(dict(enumerate(DAYS)))
    hw["share"] = hw["orders"] / hw["orders"].sum() if len(hw) else []
    hw = hw.sort_values(["dow", "hour"]).reset_index(drop=True)[["dow", "day", "hour", "orders", "lines", "share"]]
    wk = feat.weekly_orders(t, as_of).execute().sort_values("week").reset_index(drop=True)
    if len(wk):
        full = wk[pd.to_datetime(wk["week"]) <= last_complete_week(as_of)]
        mean = full["orders"].mean() if len(full) else wk["orders"].mean()
        wk["index"] = wk["orders"] / mean
        wk["peak"] = wk["index"] >= PEAK_INDEX
    else:
        wk["index"], wk["peak"] = [], []
    wk = wk[["week", "year", "week_of_year", "orders", "lines", "units", "index", "peak"]]
    return hw, wk, describe_peaks(hw, wk)


def _hours(hs: list[int]) -> str:
    hs = sorted(hs)
    spans, start = [], hs[0]
    for a, b in zip(hs, hs[1:] + [None]):
        if b != a + 1:
            spans.append(f"{start:02d}:00-{a + 1:02d}:00")
            if b is not None:
                start = b
    return ", ".join(spans)


def describe_peaks(hw: pd.DataFrame, wk: pd.DataFrame) -> list[str]:
    out = []
    if len(hw):
        day = hw.groupby("day")["orders"].sum().sort_values(ascending=False)
        total = day.sum()
        out.append(f"Busiest day: {day.index[0]} ({day.iloc[0] / total:.0%} of orders); quietest with orders: "
                   f"{day.index[-1]} ({day.iloc[-1] / total:.1%}).")
        hour = hw.groupby("hour")["orders"].sum()
        top = hour[hour >= hour.max() * 0.8].index.tolist()
        out.append(f"Peak hours: {_hours(top)} ({hour[top].sum() / total:.0%} of orders).")
        cell = hw.sort_values("orders", ascending=False).iloc[0]
        out.append(f"Single busiest slot: {cell['day']} {int(cell['hour']):02d}:00-{int(cell['hour']) + 1:02d}:00 "
                   f"({int(cell['orders']):,} order{'' if int(cell['orders']) == 1 else 's'} over the history).")
    if len(wk):
        w = wk.assign(month=pd.to_datetime(wk["week"]).dt.month)
        by_month = w.groupby("month")["orders"].mean() / w["orders"].mean()
        names = {m: pd.Timestamp(2000, m, 1).strftime("%B") for m in range(1, 13)}
        peak = [m for m in by_month.index if by_month[m] >= PEAK_MONTH_INDEX]
        if peak:
            out.append("Peak season: " + ", ".join(f"{names[m]} ({by_month[m]:.2f} x an average week)" for m in peak)
                       + ".")
        low = by_month.sort_values().index[0]
        out.append(f"Quietest month: {names[low]} ({by_month[low]:.2f} x an average week).")
        if wk["peak"].any():
            top = wk.loc[wk["orders"].idxmax()]
            weeks, most = int(wk["peak"].sum()), int(top["orders"])
            out.append(f"{weeks} week{'' if weeks == 1 else 's'} had >= {PEAK_INDEX:.2f} x the weekly mean of orders; "
                       f"the busiest, week of {pd.Timestamp(top['week']).date()} (ISO week {int(top['week_of_year'])}), "
                       f"had {most:,} order{'' if most == 1 else 's'} ({top['index']:.2f} x).")
    return out


def staffing_table(order_forecast: pd.DataFrame, hw: pd.DataFrame, throughput: float | None,
                   hours_per_person: float = 37.5) -> pd.DataFrame:
    """Person-hours and people per forecast week from the weekly orders forecast and a throughput."""
    f = order_forecast.sort_values("week")
    s = pd.DataFrame({"week": f["week"].to_numpy(), "orders": f["forecast"].to_numpy(float),
                      "orders_hi80": f["hi80"].to_numpy(float)})
    if throughput:
        s["person_hours"] = s["orders"] / throughput
        s["person_hours_hi80"] = s["orders_hi80"] / throughput
        s["people"] = np.ceil(s["person_hours"] / hours_per_person).astype(int)
        s["people_hi80"] = np.ceil(s["person_hours_hi80"] / hours_per_person).astype(int)
    else:
        for c in ("person_hours", "person_hours_hi80", "people", "people_hi80"):
            s[c] = np.nan
    s["orders_per_person_hour"] = throughput if throughput else np.nan
    s["hours_per_person"] = hours_per_person
    if len(hw):
        day = hw.groupby("day")["orders"].sum()
        hour = hw.groupby("hour")["orders"].sum()
        s["busiest_day"] = f"{day.idxmax()} ({day.max() / day.sum():.0%} of a week's orders)"
        s["busiest_hours"] = _hours(hour[hour >= hour.max() * 0.8].index.tolist())
    else:
        s["busiest_day"], s["busiest_hours"] = "", ""
    return s


def compute_cohorts(store: Store, as_of: dt.date) -> pd.DataFrame:
    act = feat.cohort_activity(store.table("transactions"), as_of).execute()
    if act.empty:
        return pd.DataFrame(columns=["cohort_month", "months_since", "customers", "active", "retention", "revenue",
                                     "revenue_per_customer", "cumulative_revenue_per_customer"])
    act["cohort_month"] = pd.to_datetime(act["cohort_month"])
    size = act[act["months_since"] == 0].set_index("cohort_month")["active"]
    last = (pd.Timestamp(as_of) - pd.Timedelta(days=1)).to_period("M").to_timestamp()
    # dense: every month from the cohort's month to the month of the last day before as_of, zero when nobody bought
    # (not the as-of month itself when as_of is its first day: none of it was observed)
    rows = [(c, m) for c in size.index for m in range(0, (last.year - c.year) * 12 + last.month - c.month + 1)]
    grid = pd.DataFrame(rows, columns=["cohort_month", "months_since"])
    out = grid.merge(act, on=["cohort_month", "months_since"], how="left").fillna({"active": 0, "revenue": 0.0})
    out["customers"] = out["cohort_month"].map(size).astype(int)
    out["active"] = out["active"].astype(int)
    out["retention"] = out["active"] / out["customers"]
    out["revenue_per_customer"] = out["revenue"] / out["customers"]
    out = out.sort_values(["cohort_month", "months_since"]).reset_index(drop=True)
    out["cumulative_revenue_per_customer"] = out.groupby("cohort_month")["revenue_per_customer"].cumsum()
    return out[["cohort_month", "months_since", "customers", "active", "retention", "revenue",
                "revenue_per_customer", "cumulative_revenue_per_customer"]]


def compute_lifecycle(store: Store, as_of: dt.date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(stages at as_of per customer with the reason, lifecycle_conversion table)."""
    t = store.table("transactions")
    snaps = _snapshot_dates(t, as_of)
    if snaps is None:
        return pd.DataFrame(), pd.DataFrame()
    snap = feat.lifecycle_snapshots(t, snaps).execute()
    snap["snapshot"] = pd.to_datetime(snap["snapshot"])
    st = lc.assign_stages(snap)
    conv = lc.conversion(st[st["snapshot"] < pd.Timestamp(as_of)]) if len(snaps) > 2 else pd.DataFrame()
    now = st[st["snapshot"] == pd.Timestamp(as_of)].copy()
    now["lifecycle_reason"] = now["stage"] + ": " + lc.stage_reason(now)
    # first-to-second order conversion from the purchase occasions
    f2 = _first_to_second(_first_two(t, as_of).execute(), as_of)
    if len(conv):
        conv["base"] = conv.groupby(["period_start", "from_stage"])["customers"].transform("sum")
    conv = pd.concat([conv, f2], ignore_index=True) if len(conv) else f2
    conv = conv[["kind", "period_start", "period_end", "from_stage", "to_stage", "customers", "rate", "base"]]
    return now, conv


def _snapshot_dates(t: ir.Table, as_of: dt.date) -> list[dt.date] | None:
    first = t.filter(t.customer_id.notnull()).order_date.min().execute()
    if first is None or pd.isna(first):
        return None
    start = pd.Timestamp(first).to_period("M").to_timestamp() + pd.offsets.MonthBegin(1)
    snaps = [d.date() for d in pd.date_range(start, pd.Timestamp(as_of), freq="MS")]
    return sorted(set(snaps) | {as_of})


def _first_two(t: ir.Table, as_of: dt.date) -> ir.Table:
    """customer_id, first, second: the days of each customer's first two purchase occasions (second = first
    with one occasion)."""
    import ibis

    from loyalist.features.summary import purchases

    occ = purchases(t, dt.datetime.combine(as_of, dt.time()))
    w = ibis.window(group_by=occ.customer_id, order_by=occ.day)
    ranked = occ.mutate(n=ibis.row_number().over(w))
    first_two = ranked.filter(ranked.n <= 1)  # ibis row_number() counts from 0: the first two occasions
    return first_two.group_by("customer_id").aggregate(first=first_two.day.min(), second=first_two.day.max())


def _first_to_second(two: pd.DataFrame, as_of: dt.date) -> pd.DataFrame:
    two = two.copy()
    two["first"] = pd.to_datetime(two["first"])
    two["second"] = pd.to_datetime(two["second"])
    two.loc[two["first"] == two["second"], "second"] = pd.NaT
    two = two.set_index("customer_id")
    return lc.first_to_second(two["first"], two["second"], as_of)


def lifecycle_on_spark(source, as_of: dt.date) -> tuple[ir.Table | None, pd.DataFrame]:
    """`compute_lifecycle` on the Spark engine (`source` = loyalist.engine.spark.SparkSource): the snapshots,
    the population gaps (exact medians, Spark `percentile`) and the first two orders are the same Ibis
    expressions run on Spark; `lc.assign_stages` and `lc.stage_reason` run per Arrow batch (mapInPandas) with
    the population gaps of all customers; `lc.transition_counts` runs per partition of customers and
    `lc.first_to_second` per batch, and their counts (one row per month x stage pair) are summed at the
    driver, where the rates are computed as on one machine. Returns (Ibis table customer_id, lifecycle_stage,
    lifecycle_reason; the lifecycle_conversion table)."""
    import ibis
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    con = source.ibis
    session = con._session
    t = source.table("transactions")
    snaps = _snapshot_dates(t, as_of)
    if snaps is None:
        return None, pd.DataFrame()
    snap = feat.lifecycle_snapshots(t, snaps)
    # mean gap of customers with two orders or more, as lc.assign_stages computes it (NULL: one order)
    snap = snap.mutate(mg=ibis.ifelse(snap.orders > 1, snap.span_days / (snap.orders - 1), ibis.null("float64")))
    per = snap.group_by("snapshot").aggregate(pop=snap.mg.median()).execute()
    overall = snap.mg.median().execute()
    fallback = float(overall) if overall is not None and np.isfinite(overall) else 30.0
    pop = pd.Series(per["pop"].to_numpy(float), index=pd.to_datetime(per["snapshot"]))
    pop = pd.Series(np.where(np.isfinite(pop.to_numpy()), pop.to_numpy(), fallback), index=pop.index)
    as_of_ts = pd.Timestamp(as_of)

    def stages(batches):
        for b in batches:
            if b.empty:
                continue
            b["snapshot"] = pd.to_datetime(b["snapshot"])
            st = lc.assign_stages(b.drop(columns="mg"), population_gap=pop)
            now = (st["snapshot"] == as_of_ts).to_numpy()
            reason = pd.Series(None, index=st.index, dtype=object)
            if now.any():
                reason[now] = st.loc[now, "stage"] + ": " + lc.stage_reason(st[now])
            yield pd.DataFrame({"snapshot": st["snapshot"], "customer_id": st["customer_id"],
                                "stage": st["stage"].astype(str), "lifecycle_reason": reason})

    schema = T.StructType([T.StructField("snapshot", T.TimestampNTZType()),
                           T.StructField("customer_id", T.StringType()), T.StructField("stage", T.StringType()),
                           T.StructField("lifecycle_reason", T.StringType())])
    st = source.keep(session.sql(con.compile(snap)).mapInPandas(stages, schema))
    conv = pd.DataFrame()
    if len(snaps) > 2:
        before = [pd.Timestamp(d) for d in snaps if pd.Timestamp(d) < as_of_ts]

        def transitions(batches):
            part = [b for b in batches if not b.empty]
            if not part:
                return
            df = pd.concat(part, ignore_index=True)
            df["snapshot"] = pd.to_datetime(df["snapshot"])
            g = lc.transition_counts(df, before)
            if len(g):
                yield g

        cschema = T.StructType([T.StructField("period_start", T.TimestampNTZType()),
                                T.StructField("period_end", T.TimestampNTZType()),
                                T.StructField("from_stage", T.StringType()), T.StructField("to_stage", T.StringType()),
                                T.StructField("customers", T.LongType())])
        counts = (st.filter(F.col("snapshot") < F.lit(as_of_ts.to_pydatetime()))
                  .select("snapshot", "customer_id", "stage").repartition("customer_id")  # a customer in one part
                  .mapInPandas(transitions, cschema).toPandas())
        keys = ["period_start", "period_end", "from_stage", "to_stage"]
        counts = counts.groupby(keys)["customers"].sum().reset_index()
        counts["period_start"] = pd.to_datetime(counts["period_start"])
        counts["period_end"] = pd.to_datetime(counts["period_end"])
        conv = lc.conversion_rates(counts)

    def f2(batches):
        for b in batches:
            if b.empty:
                continue
            g = _first_to_second(b, as_of)
            if len(g):
                yield g[f2_cols]

    # lc.first_to_second per batch of customers; its counts (customers = converted, base) summed per month
    f2_cols = ["period_start", "period_end", "from_stage", "to_stage", "kind", "customers", "base"]
    fschema = T.StructType([T.StructField("period_start", T.TimestampNTZType()),
                            T.StructField("period_end", T.TimestampNTZType()),
                            T.StructField("from_stage", T.StringType()), T.StructField("to_stage", T.StringType()),
                            T.StructField("kind", T.StringType()),
                            T.StructField("customers", T.LongType()), T.StructField("base", T.LongType())])
    parts = session.sql(con.compile(_first_two(t, as_of))).mapInPandas(f2, fschema).toPandas()
    g = parts.groupby(f2_cols[:5])[["customers", "base"]].sum().reset_index()
    g["period_start"] = pd.to_datetime(g["period_start"])
    g["period_end"] = pd.to_datetime(g["period_end"])
    g["rate"] = g["customers"] / g["base"]  # as lc.first_to_second: converted / customers of the month
    f2_table = g
    if len(conv):
        conv["base"] = conv.groupby(["period_start", "from_stage"])["customers"].transform("sum")
    conv = pd.concat([conv, f2_table], ignore_index=True) if len(conv) else f2_table
    conv = conv[["kind", "period_start", "period_end", "from_stage", "to_stage", "customers", "rate", "base"]]
    view = f"loyalist_lifecycle_{abs(hash((str(as_of), id(st)))) % 10**8}"
    st.filter(F.col("snapshot") == F.lit(as_of_ts.to_pydatetime())).select(
        "customer_id", F.col("stage").alias("lifecycle_stage"), "lifecycle_reason").createOrReplaceTempView(view)
    return con.table(view), conv


@step("lifecycle", 60, spark=True)
def lifecycle_step(ctx: Context) -> pd.DataFrame | None:
    """On the Spark engine `ctx.store` is a SparkSource: cohorts are the same Ibis aggregation, the stages
    `lifecycle_on_spark`; the tables go to its `write_result`."""
    store = ctx.store
    cohorts = compute_cohorts(store, ctx.as_of)
    write = getattr(store, "write_result", None)
    if write is not None:
        write("cohorts", cohorts)
        now_t, conv = lifecycle_on_spark(store, ctx.as_of)
        if now_t is None:
            ctx.notes.append("lifecycle: no customer purchases before the as-of date")
            return None
        write("lifecycle_conversion", conv)
        return now_t
    write_frame(store, "cohorts", cohorts, replace=True)
    now, conv = compute_lifecycle(store, ctx.as_of)
    if now.empty:
        ctx.notes.append("lifecycle: no customer purchases before the as-of date")
        return None
    write_frame(store, "lifecycle_conversion", conv, replace=True)
    out = ctx.customers[["customer_id"]].merge(
        now[["customer_id", "stage", "lifecycle_reason"]].rename(columns={"stage": "lifecycle_stage"}),
        on="customer_id", how="left")
    return out


def _config(ctx_config: dict) -> tuple[int, int, float | None, float]:
    fc = ctx_config.get("forecast", {}) or {}
    st = ctx_config.get("staffing", {}) or {}
    tp = st.get("orders_per_person_hour")
    return (int(fc.get("horizon", 13)), int(fc.get("backtest_products", 300)),
            float(tp) if tp else None, float(st.get("hours_per_person", 37.5)))


def run_all(store: Store, as_of: dt.date, customers: pd.DataFrame | ir.Table | None, config: dict, notes: list[str],
            backtest: bool = True, write: Callable[[str, pd.DataFrame], None] | None = None
            ) -> dict[str, pd.DataFrame]:
    """Forecasts, backtest, peaks and staffing; writes every table (`write(name, frame)`, by default into the
    store) and returns them. `store` may be the Spark engine's source (`loyalist.engine.spark.SparkSource`): the
    same Ibis expressions then aggregate on Spark, and the weekly series (small) are forecast here."""
    horizon, bt_products, throughput, hours = _config(config)
    if not has_products(store):
        notes.append(f"forecast, peaks and staffing skipped: {NO_PRODUCTS}")
        return {}
    fc = compute_forecasts(store, as_of, customers, horizon, notes=notes)
    hw, wk, _ = compute_peaks(store, as_of)
    orders_fc = fc[fc["level"] == "orders"]
    staff = staffing_table(orders_fc, hw, throughput, hours)
    if throughput is None:
        notes.append("staffing: set staffing.orders_per_person_hour in loyalist.toml (or `loyalist peaks "
                     "--throughput N`) to turn the order forecast into person-hours")
    tables = {"forecasts": fc, "peak_hours": hw, "peak_weeks": wk, "staffing": staff}
    if backtest:
        tables["forecast_backtest"] = compute_backtest(store, as_of, bt_products)
    for name, frame in tables.items():
        if write is None:
            write_frame(store, name, frame, replace=True)
        else:
            write(name, frame)
    return tables


@step("forecast", 70, spark=True)
def forecast_step(ctx: Context) -> pd.DataFrame | None:
    """On the Spark engine `ctx.store` is a SparkSource (its `write_result` keeps the tables for the engine to
    write as Parquet) and `ctx.customers` an Ibis table; the code path is otherwise the same."""
    t = ctx.store.table("transactions")
    if t.count().execute() == 0:
        ctx.notes.append("forecast: no transactions")
        return None
    run_all(ctx.store, ctx.as_of, ctx.customers, ctx.config, ctx.notes, write=getattr(ctx.store, "write_result", None))
    return None
