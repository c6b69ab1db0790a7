"""Analysis step `segments` (order 50): RFM segments and data-driven micro-segments.

Per-customer columns added to `customer_insights`:
- `rfm_segment`: the named RFM segment (champions, loyal, potential loyalists, new, promising, need attention,
  about to sleep, at risk, cannot lose them, hibernating, lost); rules in `loyalist.models.segments`.
- `rfm_score`: the three quintile scores as text "RFM", e.g. "545" (5 = best).
- `segment`: the micro-segment name. Customers with two or more purchase occasions are clustered on their
  behaviour (value, cycle, regularity, breadth of range, trend, returns; `loyalist.features.behaviour`);
  customers with a single occasion have no cycle or regularity yet, so they form two fixed segments instead:
  "one-time, recent" (the one order within the last `one_time_recent_days`, default 90) and
  "one-time, lapsed".

Result tables (one row per segment, largest first), same shape for both:
- `segments` (micro-segments) and `rfm_segments` (RFM), columns:
  segment, description (plain words with the segment's median figures), customers, revenue_share (share of
  all revenue before as_of), clv_share (share of the predicted 12-month CLV; NULL without a spend model),
  avg_p_alive (mean P(alive) from the customer-base model), churn_risk (share of the segment's customers with
  P(alive) < 0.5), growth (the segment's spend in the last 180 days over the 180 days before, minus 1; NULL
  when it bought nothing in the earlier window), suggested_action (rules below).
  Churn risk and P(alive) are the customer-base model's: under BG/NBD a customer with a single order has
  P(alive) = 1 by construction, so one-time segments show no churn risk with that model (MBG/NBD and
  Pareto/NBD do not have this property).

Both engines share one code path: the global parts are fitted once (`rfm_cuts`: the four order statistics per
RFM feature that decide every quintile score; `fit_segmenter`: k-means on all repeat customers sorted by id),
every customer is assigned by `Segmenter.assign` (any subset of customers at a time), and the tables come from
per-segment figures (`group_stats` / `_spark_stats` -> `tables`). On the Spark engine (`segments_on_spark`) the
features, the assignment (mapInPandas) and the per-segment figures run on the executors; the driver gets the
distinct values of recency, orders and revenue with their counts and, for k-means, the six clustering features
of every repeat customer (per-customer rows: clustering all of them is what makes the answers equal).

Settings, section [segments] of loyalist.toml: k_min (3), k_max (10), sample (2000 rows for the silhouette),
seed (0), window_days (180, the trend windows), one_time_recent_days (90).

Suggested actions for micro-segments, first rule that matches (z = the cluster centre in standard units):
returns z >= 1 -> look into the returns; value z >= 0.5 and (trend z <= -0.5 or churn risk >= 50%) -> contact
personally before they go; value z >= 0.5 -> retain and grow; trend z >= 0.5 -> nurture the growth; breadth
z <= -0.5 -> widen the range (cross-sell); churn risk >= 50% or trend z <= -0.5 -> low-cost reactivation;
otherwise keep them in their reorder cycle. RFM segments have one fixed action each (`RFM_ACTIONS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from loyalist.features.behaviour import behaviour
from loyalist.insights import Context, step
from loyalist.models.segments import (
    FEATURES,
    RFM_ACTIONS,
    RFM_DESCRIPTIONS,
    MicroSegments,
    RfmCuts,
    behaviour_matrix,
    cluster_names,
    cv_fill_value,
    rfm_cuts,
    rfm_scores,
    rfm_segment,
)
from loyalist.store import write_frame

SEGMENT_COLUMNS = ["segment", "description", "customers", "revenue_share", "clv_share", "avg_p_alive",
                   "churn_risk", "growth", "suggested_action"]
ONE_TIME_RECENT = "one-time, recent"
ONE_TIME_LAPSED = "one-time, lapsed"


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.1f}"


STAT_COLUMNS = ["customers", "revenue", "clv", "p_alive", "churn", "spend_recent", "spend_previous",
                "returned_value", "med_orders", "med_revenue", "med_cycle", "med_cv", "med_products", "med_days"]
"""Per-segment figures behind the segment tables and descriptions (`group_stats`; the Spark engine computes
the same ones with Spark aggregates): counts, sums (NaN skipped), means and exact medians."""


def group_stats(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per value of `frame[key]` (the index) with STAT_COLUMNS. `frame` needs the behaviour columns
    (`loyalist.features.behaviour`) and p_alive, clv_12m."""
    g = frame.assign(_churn=(frame["p_alive"] < 0.5).astype(float)).groupby(key, sort=False)
    return pd.DataFrame({
        "customers": g.size(), "revenue": g["revenue"].sum(), "clv": g["clv_12m"].sum(min_count=1),
        "p_alive": g["p_alive"].mean(), "churn": g["_churn"].mean(), "spend_recent": g["spend_recent"].sum(),
        "spend_previous": g["spend_previous"].sum(), "returned_value": g["returned_value"].sum(),
        "med_orders": g["orders"].median(), "med_revenue": g["revenue"].median(),
        "med_cycle": g["cycle_days"].median(), "med_cv": g["cycle_cv"].median(),
        "med_products": g["products"].median(), "med_days": g["days_since_last"].median(),
    })[STAT_COLUMNS]


def segment_table(stats: pd.DataFrame, rev_total: float, clv_total: float, descriptions: dict[str, str],
                  actions: dict[str, str]) -> pd.DataFrame:
    """One row per segment (the index of `stats`, from `group_stats`): size, shares, P(alive), churn risk,
    growth (module docstring). `rev_total`, `clv_total`: revenue and CLV of all customers (NaN: no CLV)."""
    t = pd.DataFrame({
        "customers": stats["customers"],
        "revenue_share": stats["revenue"] / rev_total if rev_total else np.nan,
        "clv_share": (stats["clv"] / clv_total) if pd.notna(clv_total) and clv_total else np.nan,
        "avg_p_alive": stats["p_alive"],
        "churn_risk": stats["churn"],
        "growth": stats["spend_recent"] / stats["spend_previous"].replace(0, np.nan) - 1,
    })
    t.index.name = "segment"
    t = t.reset_index()
    t["description"] = t["segment"].map(descriptions)
    t["suggested_action"] = t["segment"].map(actions)
    return t.sort_values(["customers", "segment"], ascending=[False, True])[SEGMENT_COLUMNS].reset_index(drop=True)


def describe(s: pd.Series) -> str:
    """Plain words with the medians of one group of customers (one row of `group_stats`)."""
    n, orders, products = int(s["customers"]), round(s["med_orders"]), round(np.nan_to_num(s["med_products"]))
    parts = [(f"{n:,} customer{'s' if n != 1 else ''}; median revenue {_num(s['med_revenue'])} over "
              f"{orders:,} order{'s' if orders != 1 else ''}")]
    if pd.notna(s["med_cycle"]):
        cycle = round(s["med_cycle"])
        parts.append(f"orders every ~{cycle:,} day{'s' if cycle != 1 else ''}")
    if pd.notna(s["med_cv"]):
        parts.append(f"gap variation {s['med_cv']:.2f} (0 = like clockwork)")
    if products:  # 0: the data has no product codes
        parts.append(f"{products:,} distinct product{'s' if products != 1 else ''}")
    prev, rec = s["spend_previous"], s["spend_recent"]
    parts.append(f"spend last 6 months {_num(rec)} vs {_num(prev)} the 6 before" if prev or rec
                 else "nothing bought in the last 12 months")
    ret = s["returned_value"] / max(s["revenue"] + s["returned_value"], 1e-9)
    parts.append(f"returns {ret:.1%} of value")
    days = round(s["med_days"])
    parts.append(f"last order a median {days:,} day{'s' if days != 1 else ''} ago")
    return "; ".join(parts)


def _action(z: dict[str, float], churn_risk: float) -> str:
    if z["returns"] >= 1:
        return ("Look into the returns first (product fit, quality, delivery), then sell more; a returns-heavy "
                "account costs margin.")
    if z["value"] >= 0.5 and (z["trend"] <= -0.5 or churn_risk >= 0.5):
        return "Contact personally before they go: ask what changed; tailored offer on their usual products."
    if z["value"] >= 0.5:
        return "Retain and grow: account-manager contact, early access, volume terms, cross-sell from look-alikes."
    if z["trend"] >= 0.5:
        return "Nurture the growth: reorder reminders at their cycle, introduce adjacent products."
    if z["breadth"] <= -0.5:
        return "Widen the range: show the products their look-alikes buy (`loyalist gaps`)."
    if churn_risk >= 0.5 or z["trend"] <= -0.5:
        return "Low-cost reactivation: automated reminder of their usual products with a modest incentive."
    return "Keep them in their rhythm: reminders timed to their reorder cycle."


REPEAT = "repeat customers"
KEEP_RHYTHM = "Keep them in their rhythm: reminders timed to their reorder cycle."
ONE_TIME_ACTIONS = {
    ONE_TIME_RECENT: "Win the second order: welcome contact, recommendations from look-alikes, a small "
                     "incentive within the usual first gap.",
    ONE_TIME_LAPSED: "Low-cost automated reactivation only; leave out of paid campaigns.",
}
MATRIX_COLUMNS = ["revenue", "cycle_days", "cycle_cv", "products", "trend", "return_rate"]


@dataclass
class Segmenter:
    """What assigns every customer (any subset of them, e.g. one Spark partition) its RFM and micro-segment:
    the RFM cut points of all customers, the k-means model fitted on all repeat customers (None: too few to
    cluster), the cluster names and the gap-CV imputation value. Built once (`fit_segmenter`, global), applied
    per batch (`assign`)."""

    cuts: RfmCuts
    model: MicroSegments | None
    labels: list[str]
    cv_fill: float
    recent_days: int
    has_repeat: bool

    def assign(self, b: pd.DataFrame) -> pd.DataFrame:
        """customer_id, rfm_segment, rfm_score, segment for the rows of `b` (behaviour columns)."""
        r, f, m = rfm_scores(b["days_since_last"].to_numpy(float), b["orders"].to_numpy(float),
                             b["revenue"].to_numpy(float), self.cuts)
        names = np.where(b["days_since_last"].to_numpy(float) < self.recent_days, ONE_TIME_RECENT,
                         ONE_TIME_LAPSED).astype(object)
        repeat = b["orders"].to_numpy(float) >= 2
        if repeat.any():
            if self.model is not None:
                rep = b[repeat]
                X = behaviour_matrix(*(rep[c].to_numpy(float) for c in MATRIX_COLUMNS), cv_fill=self.cv_fill)
                with threadpool_limits(limits=1):
                    names[repeat] = np.asarray(self.labels, dtype=object)[self.model.predict(X)]
            else:
                names[repeat] = REPEAT
        return pd.DataFrame({"customer_id": b["customer_id"].to_numpy(), "rfm_segment": rfm_segment(r, f, m),
                             "rfm_score": [f"{a}{b_}{c}" for a, b_, c in zip(r, f, m)], "segment": names})

    def actions(self, stats: pd.DataFrame) -> dict[str, str]:
        """The suggested action per micro-segment (rules in the module docstring); `stats` from group_stats."""
        actions = dict(ONE_TIME_ACTIONS)
        if self.model is not None:
            for i, label in enumerate(self.labels):
                churn = float(stats.loc[label, "churn"]) if label in stats.index else float("nan")
                actions[label] = _action(dict(zip(FEATURES, self.model.centers_z_[i])), churn)
        elif self.has_repeat:
            actions[REPEAT] = KEEP_RHYTHM
        return actions


def fit_segmenter(cfg: dict, cuts: RfmCuts, rep: pd.DataFrame) -> Segmenter:
    """The global part of the segmentation: `rep` = the repeat customers' MATRIX_COLUMNS sorted by customer id
    (k-means is fitted on all of them; the sort makes it independent of the row order)."""
    k_min = int(cfg.get("k_min", 3))
    cv_fill = cv_fill_value(rep["cycle_cv"].to_numpy(float))
    model = None
    if len(rep) > max(k_min, 2) + 1:
        X = behaviour_matrix(*(rep[c].to_numpy(float) for c in MATRIX_COLUMNS), cv_fill=cv_fill)
        try:
            model = MicroSegments(k_min=k_min, k_max=int(cfg.get("k_max", 10)), sample=int(cfg.get("sample", 2000)),
                                  random_state=int(cfg.get("seed", 0))).fit(X)
        except ValueError:
            model = None
    labels = cluster_names(model.centers_z_) if model is not None else []
    return Segmenter(cuts, model, labels, cv_fill, int(cfg.get("one_time_recent_days", 90)), len(rep) > 0)


def descriptions(stats: pd.DataFrame, prefix: dict[str, str] | None = None) -> dict[str, str]:
    return {s: (f"{prefix[s]}. " if prefix else "") + describe(row) for s, row in stats.iterrows()}


def micro_segments(b: pd.DataFrame, cfg: dict, p_alive: pd.Series | None = None
                   ) -> tuple[pd.Series, dict[str, str], dict[str, str], MicroSegments | None]:
    """Segment name per customer (index of `b`), descriptions, actions, and the fitted model (or None when
    there are too few repeat customers to cluster). `b` is the behaviour frame; rows are sorted by customer
    id before fitting, so the result does not depend on the row order."""
    b = b.sort_values("customer_id", kind="stable")
    seg = fit_segmenter(cfg, rfm_cuts(b["days_since_last"], b["orders"], b["revenue"]),
                        b.loc[b["orders"] >= 2, MATRIX_COLUMNS])
    names = pd.Series(seg.assign(b)["segment"].to_numpy(), index=b.index, dtype=object)
    pa = p_alive if p_alive is not None else pd.Series(np.nan, index=b.index)
    stats = group_stats(b.assign(segment=names, p_alive=pa.reindex(b.index), clv_12m=np.nan), "segment")
    return names, descriptions(stats), seg.actions(stats), seg.model


def _note(seg: Segmenter, repeat: int) -> str:
    if seg.model is not None:
        sil = ", ".join(f"k={k}: {s:.3f}" for k, s in seg.model.silhouettes_.items())
        return (f"segments: {seg.model.k_} behaviour clusters of the {repeat:,} repeat customers, k chosen by the "
                f"highest silhouette ({sil}), plus one-time buyers")
    return "segments: too few repeat customers to cluster; repeat customers form one segment"


def tables(seg: Segmenter, rfm_stats: pd.DataFrame, micro_stats: pd.DataFrame, rev_total: float,
           clv_total: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(segments, rfm_segments) from the per-segment figures: the same on both engines."""
    rfm = segment_table(rfm_stats, rev_total, clv_total, descriptions(rfm_stats, RFM_DESCRIPTIONS), RFM_ACTIONS)
    micro = segment_table(micro_stats, rev_total, clv_total, descriptions(micro_stats), seg.actions(micro_stats))
    return micro, rfm


@step("segments", 50, spark=True)
def segments_step(ctx: Context) -> pd.DataFrame | None:
    cfg = ctx.config.get("segments", {}) or {}
    if hasattr(ctx.store, "write_result"):  # the Spark engine
        return segments_on_spark(ctx, cfg)
    cust = ctx.customers
    if cust.empty:
        ctx.notes.append("segments: no customers to segment")
        return None
    b = behaviour(ctx.store.table("transactions"), ctx.as_of, int(cfg.get("window_days", 180))).execute()
    if b.empty or not (b["revenue"] > 0).any():
        ctx.notes.append(NO_AMOUNTS)
        return None
    b = b[b["customer_id"].isin(cust["customer_id"])].sort_values("customer_id", kind="stable").reset_index(drop=True)
    base = cust[["customer_id", "p_alive", "clv_12m"]]
    frame = b.merge(base, on="customer_id", how="left")
    cuts = rfm_cuts(frame["days_since_last"].to_numpy(float), frame["orders"].to_numpy(float),
                    frame["revenue"].to_numpy(float))
    seg = fit_segmenter(cfg, cuts, frame.loc[frame["orders"] >= 2, MATRIX_COLUMNS])
    labels = seg.assign(frame)
    frame[["rfm_segment", "rfm_score", "segment"]] = labels[["rfm_segment", "rfm_score", "segment"]].to_numpy()
    micro, rfm = tables(seg, group_stats(frame, "rfm_segment"), group_stats(frame, "segment"),
                        frame["revenue"].sum(), frame["clv_12m"].sum(min_count=1))
    ctx.notes.append(_note(seg, int((frame["orders"] >= 2).sum())))
    write_frame(ctx.store, "segments", micro, replace=True)
    write_frame(ctx.store, "rfm_segments", rfm, replace=True)
    return labels


NO_AMOUNTS = "segments skipped: the transactions carry no amounts, so value and RFM cannot be scored"


def _spark_stats(frame, key: str) -> pd.DataFrame:
    """`group_stats` with Spark aggregates (NaN skipped as pandas does; exact medians)."""
    from pyspark.sql import functions as F

    def v(c):
        return F.when(F.isnan(F.col(c)), None).otherwise(F.col(c))

    g = frame.groupBy(key).agg(
        F.count(F.lit(1)).alias("customers"), F.sum(v("revenue")).alias("revenue"), F.sum(v("clv_12m")).alias("clv"),
        F.avg(v("p_alive")).alias("p_alive"), F.avg(F.when(F.col("p_alive") < 0.5, 1.0).otherwise(0.0)).alias("churn"),
        F.sum(v("spend_recent")).alias("spend_recent"), F.sum(v("spend_previous")).alias("spend_previous"),
        F.sum(v("returned_value")).alias("returned_value"), F.median(v("orders")).alias("med_orders"),
        F.median(v("revenue")).alias("med_revenue"), F.median(v("cycle_days")).alias("med_cycle"),
        F.median(v("cycle_cv")).alias("med_cv"), F.median(v("products")).alias("med_products"),
        F.median(v("days_since_last")).alias("med_days")).toPandas()
    g = g.set_index(key)
    g.index.name = None
    g["customers"] = g["customers"].astype("int64")
    return g[STAT_COLUMNS].astype({c: float for c in STAT_COLUMNS[1:]})


def segments_on_spark(ctx: Context, cfg: dict):
    """The segments step on the Spark engine (`ctx.store` a SparkSource, `ctx.customers` an Ibis table on Spark).

    Executors: the behaviour features (the same Ibis expression), the distinct values of recency, orders and
    revenue with their counts, the per-customer assignment (`Segmenter.assign`, mapInPandas: the same numpy and
    scikit-learn code) and the per-segment figures (Spark sums, means and exact medians).
    Driver: the RFM cut points from those value counts (one row per distinct value: days of history, order
    counts, and revenue, which is nearly one row per customer), and the k-means fit, which needs the six
    clustering features of every repeat customer: these per-customer rows (6 numbers each) are collected
    because clustering all repeat customers is what the DuckDB engine does and what makes the answers equal.
    Only one row per segment comes back otherwise."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    source = ctx.store
    con = source.ibis
    session = con._session
    b = behaviour(source.table("transactions"), ctx.as_of, int(cfg.get("window_days", 180)))
    base = ctx.customers.select("customer_id", "p_alive", "clv_12m")
    j = b.join(base, "customer_id")  # inner: the customers of the per-customer table
    frame = session.sql(con.compile(j))
    dbl = ("orders", "revenue", "days_since_last", "cycle_days", "cycle_cv", "products", "spend_recent",
           "spend_previous", "trend", "returned_value", "return_rate", "p_alive", "clv_12m")
    frame = frame.select("customer_id", *[F.col(c).cast("double").alias(c) for c in dbl])
    frame = source.keep(frame)
    if not frame.filter(F.col("revenue") > 0).limit(1).count():
        ctx.notes.append(NO_AMOUNTS if frame.limit(1).count() else "segments: no customers to segment")
        return None

    def counts(c):
        vc = frame.groupBy(c).count().toPandas()
        return vc[c].to_numpy(float), vc["count"].to_numpy(np.int64)

    (d, dn), (o, on), (r, rn) = counts("days_since_last"), counts("orders"), counts("revenue")
    cuts = rfm_cuts(d, o, r, (dn, on, rn))
    rep = frame.filter(F.col("orders") >= 2).orderBy("customer_id").select(*MATRIX_COLUMNS).toPandas()
    seg = fit_segmenter(cfg, cuts, rep)

    def run(batches):
        for batch in batches:
            if batch.empty:
                continue
            labels = seg.assign(batch)
            yield batch.assign(rfm_segment=labels["rfm_segment"].to_numpy(), rfm_score=labels["rfm_score"].to_numpy(),
                               segment=labels["segment"].to_numpy())

    schema = T.StructType(frame.schema.fields + [T.StructField(c, T.StringType())
                                                 for c in ("rfm_segment", "rfm_score", "segment")])
    assigned = source.keep(frame.mapInPandas(run, schema))
    tot = assigned.agg(F.sum(F.when(F.isnan("revenue"), None).otherwise(F.col("revenue"))).alias("rev"),
                       F.sum(F.when(F.isnan("clv_12m"), None).otherwise(F.col("clv_12m"))).alias("clv")).first()
    rev_total = float(tot["rev"]) if tot["rev"] is not None else 0.0
    clv_total = float(tot["clv"]) if tot["clv"] is not None else float("nan")
    micro, rfm = tables(seg, _spark_stats(assigned, "rfm_segment"), _spark_stats(assigned, "segment"),
                        rev_total, clv_total)
    ctx.notes.append(_note(seg, len(rep)))
    source.write_result("segments", micro)
    source.write_result("rfm_segments", rfm)
    view = f"loyalist_segments_{abs(hash((str(ctx.as_of), id(assigned)))) % 10**8}"
    assigned.select("customer_id", "rfm_segment", "rfm_score", "segment").createOrReplaceTempView(view)
    return con.table(view)
