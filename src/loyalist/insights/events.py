"""Analysis step "events" (order 90): a feed of triggers and life events, each with a plain reason, the
numbers behind it (JSON) and a suggested action.

Table `events` (appended, never rewritten): event_id, event_date, customer_id, type, reason,
evidence (JSON text), action, detected_at. Table `event_runs`: as_of, run_at, added.

Types:
    first_repeat_order, order_milestone (5th, 10th, 25th, 50th, 100th, 250th order), purchase_anniversary,
    spend_jump (an order over `jump_factor` x the customer's average earlier order, after >= 3 orders),
    new_category (first order in a product group after >= 3 orders, the group >= 25% of that day's spend;
    product group as in loyalist.features.direction), reactivation (an order after >= `reactivation_days`
    without one), lapse (the day the customer passed their lapse threshold, see loyalist.models.direction),
    entering_overdue (timing step's overdue_days > 0: the day they became overdue), growth_detected,
    decline_detected, mix_shift (from the direction step), payment_slowdown (DBT over the last 6 months up
    >= `slowdown_days` on the 6 before, or payment risk >= 0.5), contact_due (table contact_schedule).

Incremental: an event's id is a hash of type + customer + date, and only ids not already stored are
added, so re-running (with new data or a later as-of date) adds only new events. Dated events from the
history (orders, anniversaries, lapse dates) are looked for from the previous run's as-of date (at most
`max_catchup_days` back) or `lookback_days` before as_of, whichever is earlier; state events (growth,
decline, mix shift, payment slowdown, overdue) are not repeated for a customer within `refire_days` of the
previous one of the same type.

Settings ([alerts] in loyalist.toml): lookback_days (30), max_catchup_days (365), refire_days (90),
jump_factor (3), reactivation_days (180), slowdown_days (10), milestones ([5, 10, 25, 50, 100, 250]).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import ibis
import numpy as np
import pandas as pd

from loyalist.features.direction import first_group_orders, numbered_occasions
from loyalist.features.summary import purchases
from loyalist.insights import Context, step
from loyalist.store import Store, has_table, write_frame

COLUMNS = ["event_id", "event_date", "customer_id", "type", "reason", "evidence", "action", "detected_at"]
EVENT_COLUMNS = COLUMNS[:-1]
STATE_TYPES = ("entering_overdue", "growth_detected", "decline_detected", "mix_shift", "payment_slowdown")
ACTIONS = {
    "first_repeat_order": "Thank them for coming back; suggest what similar customers buy next.",
    "order_milestone": "Recognise the milestone: a thank-you note or a loyalty perk.",
    "purchase_anniversary": "Send an anniversary note; review the account with them.",
    "spend_jump": "Ask what changed (new project, stocking up?); offer volume terms if it lasts.",
    "new_category": "Follow up on the new range: complementary products, samples, a catalogue.",
    "reactivation": "Welcome them back; find out why they left and what brought them back.",
    "lapse": "Win-back contact: call or send a personal offer.",
    "entering_overdue": "Remind them before they drift: a reorder reminder or a call.",
    "growth_detected": "Account review: up-sell and volume pricing while they grow.",
    "decline_detected": "Call to ask about their needs; check service, prices and competitors.",
    "mix_shift": "Their needs are changing: discuss the new range, check what they now buy elsewhere.",
    "payment_slowdown": "Credit control: check the account, agree terms before extending more credit.",
    "contact_due": "Contact between purchases as scheduled.",
}


def event_id(kind: str, customer: str, date) -> str:
    key = f"{kind}|{customer}|{pd.Timestamp(date).date().isoformat()}"
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _frame(kind: str, customers, dates, reasons, evidence: list[dict]) -> pd.DataFrame:
    customers = pd.Series(customers, dtype=object).astype(str).to_numpy()
    dates = pd.to_datetime(pd.Series(dates)).dt.normalize().to_numpy()
    return pd.DataFrame({
        "event_id": [event_id(kind, c, d) for c, d in zip(customers, dates)],
        "event_date": dates, "customer_id": customers, "type": kind, "reason": list(reasons),
        "evidence": [json.dumps(e, default=_json_default) for e in evidence], "action": ACTIONS[kind]})


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return None if np.isnan(x) else round(float(x), 2)
    if isinstance(x, (pd.Timestamp, dt.date)):
        return str(pd.Timestamp(x).date())
    return str(x)


def _m(x: float) -> float:
    """An amount rounded to cents before it is shown: sums of the same lines in another order (DuckDB vs Spark)
    differ in the last bits, which must not flip a displayed whole number (501.4999999 vs 501.5)."""
    return round(float(x), 2)


def _r(x: float, nd: int = 2):
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=EVENT_COLUMNS)


def occasion_events(occ: pd.DataFrame, cfg: dict) -> pd.DataFrame:
    """first_repeat_order, order_milestone, spend_jump and reactivation from purchase occasions (rows of
    `numbered_occasions` in the window; each row on its own, so any batch of rows gives its own events)."""
    if occ.empty:
        return _concat([])
    occ = occ.assign(orders=occ["n"] + 1)
    out: list[pd.DataFrame] = []
    fr = occ[occ["n"] == 1]
    out.append(_frame("first_repeat_order", fr["customer_id"], fr["day"],
                      [f"second order ({_m(s):,.0f}) {g:.0f} days after the first" for s, g in zip(fr["spend"], fr["gap"])],
                      [{"orders": 2, "days_since_first": int(g), "spend": _r(s)}
                       for s, g in zip(fr["spend"], fr["gap"])]))
    milestones = cfg.get("milestones", [5, 10, 25, 50, 100, 250])
    ms = occ[occ["orders"].isin(milestones)]
    out.append(_frame("order_milestone", ms["customer_id"], ms["day"],
                      [f"{o:.0f}th order (spend {_m(s):,.0f})" for o, s in zip(ms["orders"], ms["spend"])],
                      [{"orders": int(o), "spend": _r(s)} for o, s in zip(ms["orders"], ms["spend"])]))
    factor = float(cfg.get("jump_factor", 3.0))
    j = occ[(occ["n"] >= 3) & (occ["spend"] > factor * occ["prev_mean_spend"]) & (occ["prev_mean_spend"] > 0)]
    out.append(_frame("spend_jump", j["customer_id"], j["day"],
                      [f"order of {_m(s):,.0f}, {s / m:.1f}x their average order of {_m(m):,.0f} over {n:.0f} orders"
                       for s, m, n in zip(j["spend"], j["prev_mean_spend"], j["n"])],
                      [{"spend": _r(s), "average_before": _r(m), "ratio": _r(s / m), "orders_before": int(n)}
                       for s, m, n in zip(j["spend"], j["prev_mean_spend"], j["n"])]))
    react = float(cfg.get("reactivation_days", 180))
    ra = occ[occ["gap"] >= react]
    out.append(_frame("reactivation", ra["customer_id"], ra["day"],
                      [f"ordered again ({_m(s):,.0f}) after {g:.0f} days without an order" for s, g in
                       zip(ra["spend"], ra["gap"])],
                      [{"gap_days": int(g), "spend": _r(s), "orders": int(o)} for g, s, o in
                       zip(ra["gap"], ra["spend"], ra["orders"])]))
    return _concat(out)


def new_category_candidates(t, products, as_of: dt.date, start: dt.date):
    """First orders of a product group in the window after >= 3 earlier occasions, with that day's spend:
    customer_id, product_group, day, spend, prior_orders, day_spend (the Ibis expression both engines run)."""
    ng = first_group_orders(t, products, as_of)
    ng = ng.filter((ng.day >= ibis.date(start)) & (ng.prior_orders >= 3))
    occ = purchases(t, dt.datetime.combine(as_of, dt.time()))
    occ = occ.filter(occ.day >= ibis.date(start)).select("customer_id", "day", day_spend=occ.spend)
    return ng.join(occ, ["customer_id", "day"])


def new_category_events(ng: pd.DataFrame) -> pd.DataFrame:
    """new_category from :func:`new_category_candidates` rows (all of a customer's rows together): the group
    must be >= 25% of that day's spend; one event per customer and day, the group with the largest spend (on a
    tie the first group by name)."""
    ng = ng[ng["spend"] >= 0.25 * ng["day_spend"]]
    ng = ng.sort_values(["spend", "product_group"], ascending=[False, True], kind="stable").drop_duplicates(
        ["customer_id", "day"])
    return _frame("new_category", ng["customer_id"], ng["day"],
                  [f"first order of {g} ({_m(s):,.0f}, {s / d:.0%} of that order) after {n:.0f} orders"
                   for g, s, d, n in zip(ng["product_group"], ng["spend"], ng["day_spend"], ng["prior_orders"])],
                  [{"product_group": g, "spend": _r(s), "share_of_order": _r(s / d), "orders_before": int(n)}
                   for g, s, d, n in zip(ng["product_group"], ng["spend"], ng["day_spend"], ng["prior_orders"])])


def anniversary_events(first: pd.DataFrame, as_of: dt.date, start: dt.date) -> pd.DataFrame:
    """purchase_anniversary from (customer_id, first_order, orders, revenue) rows (each row on its own)."""
    if first.empty:
        return _concat([])
    fd = pd.to_datetime(first["first_order"])
    rows = []
    for years in range(1, 1 + max(1, (pd.Timestamp(as_of) - fd.min()).days // 365)):
        ann = fd + pd.DateOffset(years=years)
        hit = (ann >= pd.Timestamp(start)) & (ann < pd.Timestamp(as_of))
        if hit.any():
            rows.append(first[hit].assign(day=ann[hit], years=years))
    if not rows:
        return _concat([])
    an = pd.concat(rows)
    return _frame("purchase_anniversary", an["customer_id"], an["day"],
                  [f"{y} year{'s' if y > 1 else ''} since the first order; {o:.0f} orders, {_m(r):,.0f} spent"
                   for y, o, r in zip(an["years"], an["orders"], an["revenue"])],
                  [{"years": int(y), "orders": int(o), "revenue": _r(r)} for y, o, r in
                   zip(an["years"], an["orders"], an["revenue"])])


def history_events(store: Store, as_of: dt.date, start: dt.date, cfg: dict, products) -> list[pd.DataFrame]:
    """Events dated by the order history in [start, as_of)."""
    t = store.table("transactions")
    occ = numbered_occasions(t, as_of)
    occ = occ.filter(occ.day >= ibis.date(start)).execute()
    out: list[pd.DataFrame] = []
    if not occ.empty:
        out.append(occasion_events(occ, cfg))
        out.append(new_category_events(new_category_candidates(t, products, as_of, start).execute()))
    out.append(anniversary_events(rfm_first_orders(t, as_of).execute(), as_of, start))
    return out


def rfm_first_orders(t, as_of: dt.date):
    """(customer_id, first_order, orders, revenue) per customer (Ibis)."""
    from loyalist.features import rfm_summary

    return rfm_summary(t, as_of).select("customer_id", "first_order", "orders", "revenue")


def direction_events(d: pd.DataFrame, as_of: dt.date, start: dt.date) -> pd.DataFrame:
    """lapse, growth_detected, decline_detected and mix_shift from rows of the direction step's table of this
    as-of date, with the customer's last_order (each row on its own)."""
    today = pd.Timestamp(as_of) - pd.Timedelta(days=1)  # the last day of data looked at
    out: list[pd.DataFrame] = []
    if "lapse_after_days" in d and not d.empty:
        lp = d[(d["trend"] == "lapsed") & d["last_order"].notna()].copy()
        lp["day"] = pd.to_datetime(lp["last_order"]) + pd.to_timedelta(lp["lapse_after_days"].round(), unit="D")
        lp = lp[(lp["day"] >= pd.Timestamp(start)) & (lp["day"] < pd.Timestamp(as_of))]
        out.append(_frame("lapse", lp["customer_id"], lp["day"], lp["trend_reason"],
                          [{"usual_gap_days": _r(g, 0), "lapse_after_days": _r(a, 0)} for g, a in
                           zip(lp["usual_gap_days"], lp["lapse_after_days"])]))
    for label, kind in (("growing", "growth_detected"), ("declining", "decline_detected")):
        g = d[d["trend"] == label]
        out.append(_frame(kind, g["customer_id"], [today] * len(g), g["trend_reason"],
                          [{"growth_rate": _r(a, 3), "p_value": _r(p, 4), "run_rate": _r(r), "run_rate_before": _r(b),
                            "projected_12m": _r(pj)} for a, p, r, b, pj in
                           zip(g["growth_rate"], g["p_value"], g["run_rate"], g["run_rate_before"], g["projected_12m"])]))
    ms = d[d["mix_shift_reason"].notna()]
    out.append(_frame("mix_shift", ms["customer_id"], [today] * len(ms), ms["mix_shift_reason"],
                      [{"distance": _r(a, 3), "normal_max": _r(b, 3), "buys_more": m, "buys_less": le} for a, b, m, le in
                       zip(ms["mix_shift"], ms["mix_shift_normal"], ms["buys_more"], ms["buys_less"])]))
    return _concat(out)


def payment_events(p: pd.DataFrame, as_of: dt.date, cfg: dict) -> pd.DataFrame:
    """payment_slowdown from rows of the payment step's table of this as-of date (each row on its own)."""
    today = pd.Timestamp(as_of) - pd.Timedelta(days=1)
    slow = p[(p["dbt_trend_6m"] >= float(cfg.get("slowdown_days", 10))) | (p["payment_risk"] >= 0.5)]
    return _frame("payment_slowdown", slow["customer_id"], [today] * len(slow), slow["payment_risk_reason"],
                  [{"dbt_6m": _r(a, 1), "dbt_prev_6m": _r(b, 1), "payment_risk": _r(r, 3),
                    "overdue_amount": _r(o)} for a, b, r, o in
                   zip(slow["dbt_6m"], slow["dbt_prev_6m"], slow["payment_risk"], slow["overdue_amount"])])


def overdue_events(c: pd.DataFrame, as_of: dt.date, start: dt.date) -> pd.DataFrame:
    """entering_overdue from per-customer rows with the timing step's overdue_days (and cycle_days)."""
    od = c[c["overdue_days"].fillna(0) > 0]
    day = pd.Timestamp(as_of) - pd.to_timedelta(od["overdue_days"].astype(float), unit="D")
    keep = (day >= pd.Timestamp(start)).to_numpy()  # became overdue inside the window
    od, day = od[keep], day[keep]
    cycle = od["cycle_days"] if "cycle_days" in od else pd.Series(np.nan, index=od.index)
    return _frame("entering_overdue", od["customer_id"], day,
                  [f"usually orders every ~{cy:.0f} days; now {o:.0f} days past that" if np.isfinite(cy)
                   else f"{o:.0f} days past their usual reorder time" for cy, o in zip(cycle, od["overdue_days"])],
                  [{"overdue_days": int(o), "cycle_days": _r(cy, 1)} for o, cy in zip(od["overdue_days"], cycle)])


def contact_events(cs: pd.DataFrame, as_of: dt.date, start: dt.date) -> pd.DataFrame:
    """contact_due from rows of the timing step's contact_schedule (each row on its own)."""
    cs = cs.assign(contact_date=pd.to_datetime(cs["contact_date"]))
    cs = cs[(cs["contact_date"] >= pd.Timestamp(start)) & (cs["contact_date"] < pd.Timestamp(as_of) + pd.Timedelta(days=7))]
    return _frame("contact_due", cs["customer_id"], cs["contact_date"], cs["reason"].fillna("scheduled contact"),
                  [{"contact_date": str(x.date())} for x in cs["contact_date"]])


def state_events(ctx: Context, start: dt.date, cfg: dict) -> list[pd.DataFrame]:
    """Events from the state the earlier steps found (direction, payment, timing)."""
    store, as_of, c = ctx.store, ctx.as_of, ctx.customers
    out: list[pd.DataFrame] = []
    if has_table(store, "direction"):
        d = store.table("direction").execute()
        d = d[pd.to_datetime(d["as_of"]) == pd.Timestamp(as_of)]
        out.append(direction_events(d.merge(c[["customer_id", "last_order"]], on="customer_id", how="left"),
                                    as_of, start))
    if has_table(store, "payment_behaviour"):
        p = store.table("payment_behaviour").execute()
        out.append(payment_events(p[pd.to_datetime(p["as_of"]) == pd.Timestamp(as_of)], as_of, cfg))
    if "overdue_days" in c.columns:
        out.append(overdue_events(c, as_of, start))
    if has_table(store, "contact_schedule"):
        out.append(contact_events(store.table("contact_schedule").execute(), as_of, start))
    return out


def window_start(cfg: dict, as_of: dt.date, previous: dt.date | None) -> dt.date:
    """The first day dated events are looked for: the previous run's as-of date (at most `max_catchup_days`
    back) or `lookback_days` before as_of, whichever is earlier."""
    start = as_of - dt.timedelta(days=int(cfg.get("lookback_days", 30)))
    if previous is not None and previous < as_of:
        start = max(min(start, previous), as_of - dt.timedelta(days=int(cfg.get("max_catchup_days", 365))))
    return start


def previous_as_of(store: Store | None) -> dt.date | None:
    """The as-of date of the latest stored event run (None without one)."""
    if store is None or not has_table(store, "event_runs"):
        return None
    prev = store.table("event_runs").as_of.max().execute()
    return None if prev is None or pd.isna(prev) else pd.Timestamp(prev).date()


def stored_events(store: Store | None) -> pd.DataFrame | None:
    """(event_id, customer_id, type, event_date) of the events already stored, or None."""
    if store is None or not has_table(store, "events"):
        return None
    return store.table("events").select("event_id", "customer_id", "type", "event_date").execute()


def last_state_events(old: pd.DataFrame) -> pd.Series:
    """The date of the latest stored state event per (customer_id, type): not repeated within refire_days."""
    return old[old["type"].isin(STATE_TYPES)].groupby(["customer_id", "type"])["event_date"].max()


def new_events(ctx: Context) -> pd.DataFrame:
    """The events of this run that are not stored yet (see the module docstring for the rules)."""
    cfg = ctx.config.get("alerts", {})
    store, as_of = ctx.store, ctx.as_of
    start = window_start(cfg, as_of, previous_as_of(store))
    from loyalist.insights.direction import products_for

    frames = [f for f in history_events(store, as_of, start, cfg, products_for(store)) + state_events(ctx, start, cfg)
              if len(f)]
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    ev = pd.concat(frames, ignore_index=True).drop_duplicates("event_id")
    old = stored_events(store)
    if old is not None:
        ev = ev[~ev["event_id"].isin(old["event_id"])]
        refire = pd.Timedelta(days=int(cfg.get("refire_days", 90)))
        last = last_state_events(old)
        if len(last):
            prior = pd.to_datetime(pd.Series(list(zip(ev["customer_id"], ev["type"]))).map(last).to_numpy())
            recent = ev["type"].isin(STATE_TYPES).to_numpy() & (ev["event_date"].to_numpy() - prior < refire)
            ev = ev[~np.asarray(recent, bool)]
    ev["detected_at"] = pd.Timestamp.now(tz="UTC").tz_localize(None)
    return ev.sort_values(["event_date", "customer_id", "type"])[COLUMNS].reset_index(drop=True)


def _event_schema():
    from pyspark.sql import types as T

    return T.StructType([T.StructField("event_id", T.StringType()), T.StructField("event_date", T.TimestampNTZType()),
                         *[T.StructField(c, T.StringType()) for c in EVENT_COLUMNS[2:]]])


def _per_batch(build):
    """mapInPandas function: `build(rows) -> events` on each Arrow batch (for builders whose rows stand alone)."""

    def run(batches):
        for b in batches:
            if b.empty:
                continue
            ev = build(b)
            if len(ev):
                yield ev[EVENT_COLUMNS].astype({"event_date": "datetime64[ns]"})

    return run


def _per_partition(build):
    """mapInPandas function: `build` once on all batches of a partition (the rows of a customer together)."""

    def run(batches):
        part = [b for b in batches if not b.empty]
        if part:
            ev = build(pd.concat(part, ignore_index=True))
            if len(ev):
                yield ev[EVENT_COLUMNS].astype({"event_date": "datetime64[ns]"})

    return run


def events_on_spark(ctx: Context):
    """:func:`new_events` on the Spark engine (`ctx.store` a SparkSource, `ctx.customers` an Ibis table on Spark):
    a Spark DataFrame of the new events (COLUMNS), persisted (in `ctx.store.cached`).

    What runs where: the occasions, the new-category candidates and the first orders are the same Ibis
    expressions, run on Spark; the same builders (occasion_events, anniversary_events ...) run per Arrow batch on
    the executors (mapInPandas; new_category_events per partition of customers, as it keeps one group per
    customer and day). The state events read what the earlier steps that ran on Spark left: their result tables
    (direction, payment_behaviour, contact_schedule) and the per-customer columns (overdue_days); a step that
    did not run leaves no such events, as on DuckDB when a step is skipped. The incremental bookkeeping is at
    the driver: the previous run's as-of date and the events already stored come from the --db store (none
    without --db: every event of the window is new), the stored ids and the latest state event per customer
    and type (they grow with the events stored, never with order lines) are shipped to Spark and anti-joined.
    """
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from loyalist.insights.direction import products_for

    source = ctx.store
    con = source.ibis
    session = con._session
    cfg = ctx.config.get("alerts", {})
    as_of = ctx.as_of
    stored = source.stored
    start = window_start(cfg, as_of, previous_as_of(stored))
    t = source.table("transactions")
    schema = _event_schema()

    def spark(expr):
        return session.sql(con.compile(expr))

    def frame(x):  # a step's result table: pandas (small) or a Spark DataFrame
        return session.createDataFrame(x) if isinstance(x, pd.DataFrame) else x

    as_of_ts = dt.datetime.combine(as_of, dt.time())
    occ = numbered_occasions(t, as_of)
    occ = occ.filter(occ.day >= ibis.date(start))
    parts = [spark(occ).mapInPandas(_per_batch(lambda b: occasion_events(b, cfg)), schema),
             spark(new_category_candidates(t, products_for(source), as_of, start)).repartition("customer_id")
             .mapInPandas(_per_partition(new_category_events), schema),
             spark(rfm_first_orders(t, as_of)).mapInPandas(_per_batch(lambda b: anniversary_events(b, as_of, start)),
                                                           schema)]
    results, customers = source.results, ctx.customers
    if "direction" in results:
        d = frame(results["direction"])
        d = d.filter(F.col("as_of").cast("timestamp_ntz") == F.lit(as_of_ts))
        d = d.join(spark(customers.select("customer_id", "last_order")), "customer_id", "left")
        parts.append(d.mapInPandas(_per_batch(lambda b: direction_events(b, as_of, start)), schema))
    if "payment_behaviour" in results:
        p = frame(results["payment_behaviour"])
        p = p.filter(F.col("as_of").cast("timestamp_ntz") == F.lit(as_of_ts))
        parts.append(p.mapInPandas(_per_batch(lambda b: payment_events(b, as_of, cfg)), schema))
    if "overdue_days" in customers.columns:
        cols = [c for c in ("customer_id", "overdue_days", "cycle_days") if c in customers.columns]
        parts.append(spark(customers.select(*cols)).mapInPandas(
            _per_batch(lambda b: overdue_events(b, as_of, start)), schema))
    if "contact_schedule" in results:
        parts.append(frame(results["contact_schedule"]).mapInPandas(
            _per_batch(lambda b: contact_events(b, as_of, start)), schema))
    ev = parts[0]
    for p in parts[1:]:
        ev = ev.unionByName(p)
    ev = ev.dropDuplicates(["event_id"])
    old = stored_events(stored)
    if old is not None and len(old):
        ids = session.createDataFrame(old[["event_id"]].astype(str), "event_id string")
        ev = ev.join(ids, "event_id", "left_anti")
        last = last_state_events(old).rename("prior").reset_index()
        if len(last):
            last = session.createDataFrame(last.astype({"customer_id": str, "type": str,
                                                        "prior": "datetime64[ns]"}),
                                           T.StructType([T.StructField("customer_id", T.StringType()),
                                                         T.StructField("type", T.StringType()),
                                                         T.StructField("prior", T.TimestampNTZType())]))
            refire = int(cfg.get("refire_days", 90))
            ev = ev.join(last, ["customer_id", "type"], "left")
            recent = (F.col("type").isin(list(STATE_TYPES)) & F.col("prior").isNotNull()
                      & (F.col("event_date") < F.col("prior") + F.expr(f"INTERVAL {refire} DAYS")))
            ev = ev.filter(~recent).drop("prior")
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).to_pydatetime()
    ev = (ev.withColumn("detected_at", F.lit(now).cast("timestamp_ntz"))
          .orderBy("event_date", "customer_id", "type").select(*COLUMNS))

    ev = source.keep(ev)
    return ev



@step("events", 90, spark=True)
def events_step(ctx: Context) -> pd.DataFrame | None:
    """On the Spark engine `ctx.store` is a SparkSource: the new events are `events_on_spark` (a Spark DataFrame),
    appended with the run to --db by the engine (OUT/events holds this run's new events)."""
    write = getattr(ctx.store, "write_result", None)
    if write is not None:
        ev = events_on_spark(ctx)
        added = int(ev.count())
        write("events", ev)
    else:
        ev = new_events(ctx)
        added = len(ev)
        if len(ev):
            write_frame(ctx.store, "events", ev, replace=False)
        elif not has_table(ctx.store, "events"):
            write_frame(ctx.store, "events", ev.astype({"event_date": "datetime64[ns]",
                                                        "detected_at": "datetime64[ns]"}), replace=False)
    runs = pd.DataFrame([{"as_of": pd.Timestamp(ctx.as_of), "run_at": pd.Timestamp.now(tz="UTC").tz_localize(None),
                          "added": added}])
    if write is not None:
        write("event_runs", runs)
    else:
        write_frame(ctx.store, "event_runs", runs, replace=False)
    ctx.notes.append(f"events: {added:,} new events in the feed (`loyalist alerts`)")
    return None
