"""Analysis step "direction" (order 30): is each customer growing, stable, declining or lapsed; are they
changing what they buy; are there signs of dissatisfaction.

Per-customer columns added to `customer_insights`:
    trend (growing/stable/declining/lapsed), growth_rate (annualised change of spend rate, 0.25 = +25%/yr),
    trend_confidence (1 - Bonferroni p-value of the rate change; for lapsed, 1 - exp(-days since last order /
    usual gap); NaN when too little history to judge), volume_pricing_candidate (bool), mix_shift (total-
    variation distance of the recent product-group mix from the customer's past mix, NaN when not
    measurable), mix_shift_reason (text when the shift exceeds the customer's normal variation, else NULL),
    dissatisfaction_flags (text, one "; "-separated item per flag with its numbers, NULL when none),
    trend_reason (the plain-words reason behind the trend).

Result tables:
    `direction` (one row per customer): customer_id, trend, trend_score (signed -log10 p of the trend tests,
        > 0 evidence of growth, < 0 of decline, 0 when not judged), trend_driver (orders / spend / silence:
        the test that decided), trend_reason, growth_rate, order_growth_rate,
        trend_confidence, p_value, orders_per_year_before, orders_per_year_recent, run_rate_before (annual
        spend rate before the recent window), run_rate (annual spend rate in it), spend_12m (last 365 days),
        projected_12m (growing customers: next-12-month spend if the growth continues), volume_pricing_candidate,
        usual_gap_days, lapse_after_days, mix_shift, mix_shift_normal, mix_shift_reason, buys_more, buys_less,
        flag_returns, flag_baskets, flag_gaps, flag_range, dissatisfaction_flags, as_of.
    `direction_backtest`: see `loyalist.evaluation.direction` (held-out check at as_of - 6 months).

Settings ([direction] in loyalist.toml): recent_days (182, dissatisfaction and mix windows),
trend_recent_days (61), trend_early_days (365), alpha (0.05), min_history_days (90), min_orders (5),
trend_test ("spend+silence"), seasonal (false), trend_compare ("last_year" | "year_before"), season_guard
(1.25; 0 = off), lapse_min_days (180), lapse_factor (3), volume_pricing_min_12m (default: the 75th
percentile of the last 12 months' spend of active customers), mix_min_tv (0.35), backtest (true),
backtest_bootstrap (200: bootstrap replicates of the held-out check's intervals; 0 = none).

Both engines run the same code (`direction_table` on DuckDB, `direction_on_spark` on the Spark engine):
`direction_stats` and `group_mix` are Ibis expressions; `exposure_cum` (one row per day of the whole base)
and the volume-pricing threshold (a 75th percentile: pandas on DuckDB, Spark's exact `percentile` on Spark)
are the only base-wide quantities; everything else is per customer (`add_exposures`, `direction_rows`,
`add_volume_pricing`, `mix_columns`), run on Spark per Arrow batch or per customer-sorted partition by the
executors. The held-out check collects one row per customer at its cutoff (see `trends_on_spark`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pandas as pd

from loyalist.features.direction import (
    daily_activity,
    direction_stats,
    group_mix,
    has_categories,
)
from loyalist.insights import Context, step
from loyalist.models.direction import (
    DirectionParams,
    classify_trend,
    dissatisfaction,
    mix_shift,
    seasonal_index,
)
from loyalist.store import Store, write_frame

MIX_WINDOWS = 4


def params_from(config: dict) -> DirectionParams:
    keys = DirectionParams.__dataclass_fields__
    return DirectionParams(**{k: type(getattr(DirectionParams(), k))(v) for k, v in config.items() if k in keys})


def _money(x: float) -> str:
    return f"{x:,.0f}"


def _pct(x: float) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:+.0%}/yr"


def _daily_counts(t, as_of: dt.date, days: int, repeat_only: bool) -> np.ndarray:
    daily = daily_activity(t, as_of, days, repeat_only).execute()
    start = pd.Timestamp(as_of) - pd.Timedelta(days=days)
    counts = np.zeros(days)
    pos = (pd.to_datetime(daily["day"]) - start).dt.days.to_numpy()
    ok = (pos >= 0) & (pos < days)
    counts[pos[ok]] = daily["occasions"].to_numpy(float)[ok]
    return counts


def exposure_cum(t, as_of: dt.date, params: DirectionParams) -> np.ndarray:
    """Cumulative exposure over the trend windows' days (length days + 1): the seasonal index of the whole base
    when params.seasonal (from `daily_activity`, one row per day: small, computed once), else one per day.
    With params.season_guard > 0, a second row: the cumulative count of the whole base's purchase occasions
    (all of them) per day, for the season guard (see loyalist.models.direction)."""
    days = params.trend_recent_days + params.trend_early_days
    if params.seasonal:
        index = seasonal_index(_daily_counts(t, as_of, days, True))
    else:
        index = np.ones(days)
    cum = np.concatenate([[0.0], np.cumsum(index)])
    if params.season_guard > 0:
        cum = np.vstack([cum, np.concatenate([[0.0], np.cumsum(_daily_counts(t, as_of, days, False))])])
    return cum


def add_exposures(st: pd.DataFrame, as_of: dt.date, params: DirectionParams, cum: np.ndarray) -> pd.DataFrame:
    """`st` (rows of `direction_stats`) with first_age, last_age (days) and the exposure of each customer's
    early and recent trend windows and of the time since their last order (`cum` = `exposure_cum`), and the
    early window's days: e_early, e_recent, d_early, e_gap. Row by row: runs on any batch of customers."""
    E = params.trend_early_days
    days = params.trend_recent_days + E
    base = None
    if np.ndim(cum) == 2:  # the season guard's base activity rides along (see exposure_cum)
        cum, base = cum[0], cum[1]
    end = pd.Timestamp(as_of)
    first_age = (end - pd.to_datetime(st["first_day"])).dt.days.to_numpy(float)
    last_age = (end - pd.to_datetime(st["last_day"])).dt.days.to_numpy(float)
    # day index (0 = start) where each customer's early window begins: after their first purchase
    begin = np.clip(days - first_age + 1, 0, E).astype(int)
    after_last = np.clip(days - last_age + 1, 0, days).astype(int)
    st = st.copy()
    st["first_age"], st["last_age"] = first_age, last_age
    st["e_early"] = cum[E] - cum[begin]
    st["e_recent"] = np.full(len(first_age), cum[days] - cum[E])
    st["d_early"] = (E - begin).astype(float)
    st["e_gap"] = cum[days] - cum[after_last]
    # the recent window one year earlier (year-over-year comparison), after the first purchase
    R, ly = params.trend_recent_days, E - 365
    start = np.clip(np.maximum(days - first_age + 1, ly), 0, days).astype(int)
    st["d_ly"] = np.clip(ly + R - start, 0, None).astype(float) if ly >= 0 else np.zeros(len(first_age))
    st["e_ly"] = np.where(st["d_ly"] > 0, cum[min(max(ly + R, 0), days)] - cum[np.minimum(start, days)], 0.0)
    if base is not None:
        # the whole base's purchase occasions per day in the recent window over those in this customer's early
        # window (the season guard)
        with np.errstate(invalid="ignore", divide="ignore"):
            st["base_swing"] = ((base[days] - base[E]) / params.trend_recent_days) / (
                (base[E] - base[begin]) / (E - begin))
    return st


def trend_inputs(t, as_of: dt.date, params: DirectionParams) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The per-customer aggregates (`direction_stats`) with their exposures, and the classify_trend result."""
    st = direction_stats(t, as_of, params.recent_days, params.trend_recent_days, params.trend_early_days).execute()
    if st.empty:
        return st, {}
    st = add_exposures(st, as_of, params, exposure_cum(t, as_of, params))
    return st, classify_from(st, params)


def classify_from(st: pd.DataFrame, params: DirectionParams) -> dict[str, np.ndarray]:
    """classify_trend on a `trend_inputs` frame (used again by the tuning grid with other settings)."""
    return classify_trend(st["first_age"], st["last_age"], st["orders"], st["n_early"], st["s_early"],
                          st["q_early"], st["n_recent"], st["s_recent"], st["q_recent"], st["e_early"],
                          st["e_recent"], st["d_early"], params, gap_exposure=st["e_gap"],
                          last_year=(st["n_ly"], st["s_ly"], st["q_ly"], st["e_ly"], st["d_ly"]) if "d_ly" in st else None,
                          base_swing=st.get("base_swing"))


DIRECTION_COLUMNS = ["customer_id", "trend", "trend_score", "trend_driver", "growth_rate", "order_growth_rate",
                     "trend_confidence", "p_value", "orders_per_year_before", "orders_per_year_recent",
                     "run_rate_before", "run_rate", "spend_12m", "projected_12m", "usual_gap_days",
                     "lapse_after_days", "trend_reason", "volume_pricing_candidate", "flag_returns", "flag_baskets",
                     "flag_gaps", "flag_range", "dissatisfaction_flags", "mix_shift", "mix_shift_normal",
                     "mix_shift_reason", "buys_more", "buys_less", "as_of"]
"""The `direction` table's columns, in order."""
MIX_COLUMNS = ["mix_shift", "mix_shift_normal", "mix_shift_reason", "buys_more", "buys_less"]


def direction_rows(st: pd.DataFrame, params: DirectionParams) -> pd.DataFrame:
    """The per-customer part of the `direction` table from `add_exposures` rows: trend, rates, reason and the
    dissatisfaction flags (every column but the volume-pricing flag, the mix shift and as_of). Each row depends
    only on its own customer, so the Spark engine runs this on each batch of customers (mapInPandas)."""
    R = params.recent_days
    st = st.reset_index(drop=True)
    r = classify_from(st, params)
    last_age = st["last_age"].to_numpy(float)
    out = pd.DataFrame({"customer_id": st["customer_id"], "trend": r["trend"], "trend_score": r["trend_score"],
                        "trend_driver": r["driver"], "growth_rate": r["growth_rate"],
                        "order_growth_rate": r["order_growth_rate"], "trend_confidence": r["trend_confidence"],
                        "p_value": r["p_value"], "orders_per_year_before": r["early_rate"],
                        "orders_per_year_recent": r["recent_rate"], "run_rate_before": r["run_rate_prev"],
                        "run_rate": r["run_rate"], "spend_12m": st["s_12m"].to_numpy(float),
                        "projected_12m": r["projected_12m"], "usual_gap_days": r["usual_gap_days"],
                        "lapse_after_days": r["lapse_after_days"]})
    days_since = last_age
    months = R / 30.4
    tmonths = params.trend_recent_days / 30.4
    adj = ", seasonally adjusted" if params.seasonal else ""
    reason = np.where(
        out["trend"] == "lapsed",
        [f"no order for {d:.0f} days (usual gap {g:.0f} day{'' if round(g) == 1 else 's'}; lapsed after {la:.0f})" if np.isfinite(g)
         else f"one order only, {d:.0f} days ago" for d, g, la in zip(days_since, r["usual_gap_days"],
                                                                       r["lapse_after_days"])],
        [(f"no order for {d:.0f} days, unlikely for {n:.0f} orders in the last {w:.0f} days at an even pace; "
          if drv == "silence" and np.isfinite(p) and p < params.alpha else "")
         + f"spend {_money(a)}/yr over the last {tmonths:.0f} months vs {_money(b)}/yr "
         + ("in the same months a year earlier" if cw == "last_year" else "in the year before")
         + f" (growth {_pct(g)}{adj}); {o2:.1f} vs {o1:.1f} orders/yr; "
         + (f"p = {p:.3f}" if np.isfinite(p) else "too little history to judge (stable by default)")
         for a, b, g, o2, o1, p, drv, d, n, w, cw in zip(
             out["run_rate"], out["run_rate_before"], out["growth_rate"], out["orders_per_year_recent"],
             out["orders_per_year_before"], out["p_value"], out["trend_driver"], days_since,
             st["n_early"] + st["n_recent"], st["d_early"] + params.trend_recent_days, r["compared_with"])])
    out["trend_reason"] = reason
    # no earlier window (first order within the recent window): nothing to compare with; the recent figures
    # count repeat orders only, so "spend 0/yr ... vs nan/yr" would misstate a new customer's buying
    new = ~np.isfinite(out["run_rate_before"].to_numpy(float)) & (out["trend"] != "lapsed").to_numpy()
    if new.any():
        out.loc[new, "trend_reason"] = [
            f"first order {a:.0f} day{'' if round(a) == 1 else 's'} ago, {n:.0f} order{'' if n == 1 else 's'} so "
            "far: too little history to judge (stable by default)"
            for a, n in zip(st["first_age"].to_numpy(float)[new], st["orders"].to_numpy(float)[new])]
    guarded = np.asarray(r["season_guarded"]) != 0
    if guarded.any():
        swing = st["base_swing"].to_numpy(float)[guarded]
        up = np.asarray(r["season_guarded"])[guarded] > 0
        out.loc[guarded, "trend_reason"] = out.loc[guarded, "trend_reason"] + [
            f"; not labelled {'growing' if u else 'declining'}: the whole customer base buys {w:.2f}x as often "
            f"in these months as in the comparison window (season) and there is no year-ago window to compare "
            f"with" for u, w in zip(up, swing)]

    d = dissatisfaction(st["s_recent_all"], st["s_prior"], st["returned_recent"], st["returned_prior"],
                        st["return_lines_recent"], st["b_recent"], st["ls_recent"], st["ls2_recent"], st["b_prior"],
                        st["ls_prior"], st["ls2_prior"], st["gaps_early"], st["gap_sum_early"], st["gaps_recent"],
                        st["gap_sum_recent"], last_age, st["range_recent"], st["range_prior"], params.alpha)
    active = (out["trend"] != "lapsed").to_numpy()  # early warnings are for customers still buying
    for k in ("flag_returns", "flag_baskets", "flag_gaps", "flag_range"):
        d[k] = d[k] & active
    d["flag_range"] = d["flag_range"] & (d["range_recent"] > 0)
    parts = pd.DataFrame(index=out.index)
    parts["returns"] = np.where(d["flag_returns"], [
        f"returns up: {a:.0%} of value returned/cancelled in the last {months:.0f} months vs {b:.0%} before"
        for a, b in zip(d["return_share_recent"], d["return_share_prior"])], "")
    parts["baskets"] = np.where(d["flag_baskets"], [
        f"baskets shrinking: typical order {_money(a)} vs {_money(b)} before ({r - 1:+.0%}, p = {p:.3f})"
        for a, b, r, p in zip(d["basket_recent"], d["basket_prior"], d["basket_ratio"], d["basket_p"])], "")
    parts["gaps"] = np.where(d["flag_gaps"], [
        f"gaps widening: {a:.0f} days now vs usual {b:.0f}" for a, b in
        zip(d["current_gap_days"], d["usual_gap_days"])], "")
    parts["range"] = np.where(d["flag_range"], [
        f"range dropping: {a:.0f} distinct products in the last {months:.0f} months vs {b:.0f} in the {months:.0f} before"
        for a, b in zip(d["range_recent"], d["range_prior"])], "")
    flags = parts.apply(lambda c: c.str.len() > 0)
    text = parts.where(flags, None).apply(lambda row: "; ".join(x for x in row if x), axis=1) if len(parts) else []
    out["flag_returns"], out["flag_baskets"] = d["flag_returns"], d["flag_baskets"]
    out["flag_gaps"], out["flag_range"] = d["flag_gaps"], d["flag_range"]
    out["dissatisfaction_flags"] = pd.Series(text, index=out.index, dtype=object).replace("", None)
    return out


def volume_threshold(spend_12m_live: pd.Series, volume_min_12m: float | None) -> float:
    """The 12-month spend a growing customer's projection must reach to be a volume-pricing candidate: the
    setting, else the 75th percentile (linear interpolation) of the last 12 months' spend of the customers not
    lapsed (on Spark the same exact percentile is computed by Spark: `percentile`)."""
    if volume_min_12m is not None:
        return float(volume_min_12m)
    return float(spend_12m_live.quantile(0.75)) if len(spend_12m_live) else 0.0


def add_volume_pricing(out: pd.DataFrame, threshold: float, max_growth: float = 1.0) -> pd.DataFrame:
    """`out` (`direction_rows`) with volume_pricing_candidate and its numbers appended to trend_reason
    (`max_growth` = params.max_projected_growth, the cap on the growth the projection continues)."""
    out = out.copy()
    vp = (out["trend"] == "growing") & (out["projected_12m"] >= threshold)
    out["volume_pricing_candidate"] = vp.to_numpy(bool)

    def growth(g: float) -> str:  # say when the projection continues less growth than measured
        return _pct(g) + (f", projected at {_pct(max_growth)} at most" if np.isfinite(g) and g > max_growth else "")

    vp_reason = [f"; volume pricing candidate: run-rate {_money(a)}/yr, projected {_money(p)} over the next 12 "
                 f"months (growth {growth(g)}; threshold {_money(threshold)})" for a, p, g in
                 zip(out.loc[vp, "run_rate"], out.loc[vp, "projected_12m"], out.loc[vp, "growth_rate"])]
    out.loc[vp, "trend_reason"] = out.loc[vp, "trend_reason"] + pd.Series(vp_reason, index=out.index[vp])
    return out


def direction_table(t, products, as_of: dt.date, params: DirectionParams | None = None,
                    volume_min_12m: float | None = None, mix_min_tv: float = 0.35, mix: bool = True) -> pd.DataFrame:
    """The `direction` table (see the module docstring) from the transactions (and products) Ibis tables."""
    params = params or DirectionParams()
    st = direction_stats(t, as_of, params.recent_days, params.trend_recent_days, params.trend_early_days).execute()
    if st.empty:
        return pd.DataFrame(columns=["customer_id", "trend", "trend_score"])
    out = direction_rows(add_exposures(st, as_of, params, exposure_cum(t, as_of, params)), params)
    threshold = volume_threshold(out.loc[out["trend"] != "lapsed", "spend_12m"], volume_min_12m)
    out = add_volume_pricing(out, threshold, params.max_projected_growth)
    out["mix_shift"], out["mix_shift_normal"] = np.nan, np.nan
    out["mix_shift_reason"], out["buys_more"], out["buys_less"] = None, None, None
    if mix:
        g = group_mix(t, products, as_of, params.recent_days, MIX_WINDOWS).execute()
        m = mix_columns(g, mix_min_tv, out["customer_id"])
        for c in MIX_COLUMNS:
            out[c] = m[c].to_numpy()
    out["as_of"] = pd.Timestamp(as_of)
    return out[DIRECTION_COLUMNS]


def mix_columns(g: pd.DataFrame, min_tv: float, customers: pd.Series | None = None) -> pd.DataFrame:
    """The mix-shift columns (customer_id, mix_shift, mix_shift_normal, mix_shift_reason, buys_more, buys_less)
    from `group_mix` rows, one row per customer of `customers` (default: those in `g`), in that order. Each
    customer's columns depend on their own rows only (the Spark engine runs this on each partition of
    customers); rows are taken in (customer, window, group) order so the sums do not depend on the order the
    engine returned them in."""
    g = g[g["window"].between(0, MIX_WINDOWS - 1)]
    g = g.assign(product_group=g["product_group"].astype(str)).sort_values(
        ["customer_id", "window", "product_group"], kind="stable")
    ids = pd.Index(pd.unique(g["customer_id"]) if customers is None else customers)
    out = pd.DataFrame({"customer_id": np.asarray(ids, dtype=object), "mix_shift": np.nan,
                        "mix_shift_normal": np.nan, "mix_shift_reason": None, "buys_more": None, "buys_less": None})
    g = g[g["customer_id"].isin(ids)]
    if g.empty:
        return out
    groups, gi = np.unique(g["product_group"].to_numpy(), return_inverse=True)
    ci = ids.get_indexer(g["customer_id"])
    m = mix_shift(ci, g["window"].to_numpy(), gi, g["spend"].to_numpy(float), len(out), MIX_WINDOWS, min_tv=min_tv)
    out["mix_shift"], out["mix_shift_normal"] = m["tv_recent"], m["tv_normal"]
    pairs = pd.DataFrame({"c": m["pair_customer"], "group": groups[m["pair_group"]],
                          "now": m["share_recent"], "before": m["share_past"]})
    pairs = pairs[m["flagged"][pairs["c"]]]
    if pairs.empty:
        return out
    pairs["delta"] = pairs["now"] - pairs["before"]

    def named(frame: pd.DataFrame) -> pd.Series:
        txt = frame["group"] + " (" + (frame["now"] * 100).round().astype(int).astype(str) + "% vs " + \
              (frame["before"] * 100).round().astype(int).astype(str) + "%)"
        return txt.groupby(frame["c"]).agg(", ".join)

    # ties in the change are named in group order (pairs come sorted by customer and group)
    more = named(pairs[pairs["delta"] > 0.01].sort_values("delta", ascending=False, kind="stable")
                 .groupby("c").head(3))
    less = named(pairs[pairs["delta"] < -0.01].sort_values("delta", kind="stable").groupby("c").head(3))
    idx = np.flatnonzero(m["flagged"])
    more_s = more.reindex(idx)
    less_s = less.reindex(idx)
    out.loc[out.index[idx], "buys_more"] = more_s.to_numpy()
    out.loc[out.index[idx], "buys_less"] = less_s.to_numpy()
    reason = [f"spend mix moved {tv:.2f} from their past mix (normally at most {nv:.2f} between half-years): "
              f"more {mo if isinstance(mo, str) else '-'}; less {le if isinstance(le, str) else '-'}"
              for tv, nv, mo, le in zip(m["tv_recent"][idx], m["tv_normal"][idx], more_s, less_s)]
    out.loc[out.index[idx], "mix_shift_reason"] = reason
    return out


def whole_customers(batches: Iterator[pd.DataFrame], key: str = "customer_id") -> Iterator[pd.DataFrame]:
    """Regroup a partition's Arrow batches, sorted by `key` within the partition, so that each frame holds all
    the rows of the customers in it (a customer cut by a batch boundary is carried over to the next frame):
    per-customer work on long rows runs with bounded memory, a batch at a time."""
    carry = None
    for b in batches:
        if b.empty:
            continue
        if carry is not None:
            b = pd.concat([carry, b], ignore_index=True)
        tail = (b[key] == b[key].iloc[-1]).to_numpy()
        carry = b[tail]
        if (~tail).any():
            yield b[~tail]
    if carry is not None and len(carry):
        yield carry


DIRECTION_TYPES = {c: ("string" if c in ("customer_id", "trend", "trend_driver", "trend_reason",
                                         "dissatisfaction_flags", "mix_shift_reason", "buys_more", "buys_less")
                       else "boolean" if c == "volume_pricing_candidate" or c.startswith("flag_")
                       else "timestamp" if c == "as_of" else "double") for c in DIRECTION_COLUMNS}


def direction_on_spark(source, as_of: dt.date, params: DirectionParams, volume_min_12m: float | None = None,
                       mix_min_tv: float = 0.35, products=None):
    """`direction_table` on the Spark engine (`source` = loyalist.engine.spark.SparkSource), as a Spark
    DataFrame (None when nobody bought before as_of), same rows and columns:

    - executors: `direction_stats` and `group_mix` (the same Ibis expressions, on Spark); `direction_rows`
      (trend tests, rates, reasons, dissatisfaction flags) on each Arrow batch of customers (mapInPandas);
      `mix_columns` on the group-mix rows repartitioned by customer and sorted within partitions, a few whole
      customers at a time; the volume-pricing flag and its reason (`add_volume_pricing`) per batch;
    - driver: the seasonal exposure (one row per day, only with `seasonal`) and the volume-pricing threshold,
      an exact 75th percentile computed by Spark (`percentile`, linear interpolation as pandas).
    The result is persisted (read by the write and by the per-customer join)."""
    from pyspark.sql import functions as F

    from loyalist.engine.spark import spark_schema

    con = source.ibis
    session = con._session
    t = source.table("transactions")
    stats = session.sql(con.compile(direction_stats(t, as_of, params.recent_days, params.trend_recent_days,
                                                    params.trend_early_days)))
    cum = exposure_cum(t, as_of, params)
    core_cols = [c for c in DIRECTION_COLUMNS if c not in ("volume_pricing_candidate", "as_of", *MIX_COLUMNS)]

    def rows(batches):
        for b in batches:
            if len(b):
                yield direction_rows(add_exposures(b, as_of, params, cum), params)[core_cols]

    core = stats.mapInPandas(rows, spark_schema({c: DIRECTION_TYPES[c] for c in core_cols}))
    core = source.keep(core)
    if not core.limit(1).count():
        return None
    if volume_min_12m is None:
        q = core.filter(F.col("trend") != "lapsed").agg(F.percentile("spend_12m", F.lit(0.75))).first()[0]
        threshold = float(q) if q is not None else 0.0
    else:
        threshold = volume_threshold(pd.Series(dtype=float), volume_min_12m)

    def mixes(batches):
        for part in whole_customers(batches):
            yield mix_columns(part, mix_min_tv)

    g = session.sql(con.compile(group_mix(t, products, as_of, params.recent_days, MIX_WINDOWS)))
    g = g.filter((F.col("window") >= 0) & (F.col("window") < MIX_WINDOWS))
    mix = (g.repartition("customer_id").sortWithinPartitions("customer_id")  # a customer in one partition
           .mapInPandas(mixes, spark_schema({"customer_id": "string",
                                               **{c: DIRECTION_TYPES[c] for c in MIX_COLUMNS}})))
    as_of_ts = pd.Timestamp(as_of)

    def finish(batches):
        for b in batches:
            if len(b):
                b = add_volume_pricing(b, threshold, params.max_projected_growth)
                b["as_of"] = as_of_ts
                yield b[DIRECTION_COLUMNS]

    table = core.join(mix, "customer_id", "left").mapInPandas(finish, spark_schema(DIRECTION_TYPES))
    table = source.keep(table)
    return table


def trends_on_spark(source, params: DirectionParams):
    """`trend_frame` at a cutoff on the Spark engine: `direction_stats` on Spark, exposures and
    classify_trend per batch on the executors; the frame (one row per customer: id, trend, score, days since
    the last order, spend-rate change) is collected at the driver, where the held-out check's top-N picks and
    paired Poisson bootstrap run on it as on one machine (they rank and weight all customers together)."""
    from loyalist.engine.spark import spark_schema
    from loyalist.evaluation.direction import trend_frame

    con = source.ibis
    session = con._session
    t = source.table("transactions")
    schema = spark_schema({"customer_id": "string", "trend": "string", "trend_score": "double",
                            "days_since": "double", "spend_rate_change": "double"})

    def at(cutoff: dt.date) -> pd.DataFrame:
        cum = exposure_cum(t, cutoff, params)

        def rows(batches):
            for b in batches:
                if len(b):
                    st = add_exposures(b, cutoff, params, cum)
                    yield trend_frame(st, classify_from(st, params))

        stats = session.sql(con.compile(direction_stats(t, cutoff, params.recent_days, params.trend_recent_days,
                                                        params.trend_early_days)))
        return stats.mapInPandas(rows, schema).toPandas()

    return at


def products_for(store: Store):
    """The products table when it carries categories (else None: the group is derived from descriptions)."""
    p = store.table("products")
    return p if has_categories(p) else None


@step("direction", 30, spark=True)
def direction_step(ctx: Context) -> pd.DataFrame | None:
    """On the Spark engine `ctx.store` is a SparkSource: the table is `direction_on_spark`, the held-out
    check `backtest_direction` with the trends computed on the executors (`trends_on_spark`); the tables go to
    its `write_result`."""
    cfg = ctx.config.get("direction", {})
    params = params_from(cfg)
    t = ctx.store.table("transactions")
    products = products_for(ctx.store)
    if products is None:
        ctx.notes.append("direction: no product categories in the store; product groups for the mix shift are "
                         "derived from the last word of the product description")
    write = getattr(ctx.store, "write_result", None)
    columns = ["customer_id", "trend", "growth_rate", "trend_confidence", "volume_pricing_candidate",
               "mix_shift", "mix_shift_reason", "dissatisfaction_flags", "trend_reason"]
    if write is not None:
        table = direction_on_spark(ctx.store, ctx.as_of, params, cfg.get("volume_pricing_min_12m"),
                                   float(cfg.get("mix_min_tv", 0.35)), products)
        empty = table is None
    else:
        table = direction_table(t, products, ctx.as_of, params, cfg.get("volume_pricing_min_12m"),
                                float(cfg.get("mix_min_tv", 0.35)))
        empty = table.empty
    if empty:
        ctx.notes.append("direction: no purchases before the as-of date; skipped")
        return None
    if write is not None:
        write("direction", table)
    else:
        write_frame(ctx.store, "direction", table, replace=True)
    if cfg.get("backtest", True):
        from loyalist.evaluation.direction import backtest_direction

        cutoff = ctx.as_of - dt.timedelta(days=params.recent_days)
        try:
            bt = backtest_direction(t, [cutoff], params, horizon_days=params.recent_days,
                                    n_boot=int(cfg.get("backtest_bootstrap", 200)),
                                    trends_for=trends_on_spark(ctx.store, params) if write is not None else None)
            if write is not None:
                write("direction_backtest", bt)
            else:
                write_frame(ctx.store, "direction_backtest", bt, replace=True)
        except ValueError as exc:
            ctx.notes.append(f"direction: no held-out check ({exc})")
    if write is not None:
        con = ctx.store.ibis
        view = f"loyalist_direction_{abs(hash((str(ctx.as_of), id(table)))) % 10**8}"
        table.select(*columns).createOrReplaceTempView(view)
        return con.table(view)
    return table[columns]
