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

Settings, section [segments] of loyalist.toml: k_min (3), k_max (10), sample (2000 rows for the silhouette),
seed (0), window_days (180, the trend windows), one_time_recent_days (90).

Suggested actions for micro-segments, first rule that matches (z = the cluster centre in standard units):
returns z >= 1 -> look into the returns; value z >= 0.5 and (trend z <= -0.5 or churn risk >= 50%) -> contact
personally before they go; value z >= 0.5 -> retain and grow; trend z >= 0.5 -> nurture the growth; breadth
z <= -0.5 -> widen the range (cross-sell); churn risk >= 50% or trend z <= -0.5 -> low-cost reactivation;
otherwise keep them in their reorder cycle. RFM segments have one fixed action each (`RFM_ACTIONS`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from loyalist.features.behaviour import behaviour
from loyalist.insights import Context, step
from loyalist.models.segments import (
    FEATURES,
    RFM_ACTIONS,
    RFM_DESCRIPTIONS,
    MicroSegments,
    behaviour_matrix,
    cluster_names,
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


def segment_table(frame: pd.DataFrame, key: str, descriptions: dict[str, str], actions: dict[str, str]
                  ) -> pd.DataFrame:
    """One row per value of `frame[key]`: size, shares, P(alive), churn risk, growth (module docstring).
    `frame` needs revenue, clv_12m, p_alive, spend_recent, spend_previous."""
    g = frame.assign(_churn=(frame["p_alive"] < 0.5).astype(float)).groupby(key, sort=False)
    rev_total = frame["revenue"].sum()
    clv_total = frame["clv_12m"].sum(min_count=1)
    t = pd.DataFrame({
        "customers": g.size(),
        "revenue_share": g["revenue"].sum() / rev_total if rev_total else np.nan,
        "clv_share": (g["clv_12m"].sum(min_count=1) / clv_total) if pd.notna(clv_total) and clv_total else np.nan,
        "avg_p_alive": g["p_alive"].mean(),
        "churn_risk": g["_churn"].mean(),
        "growth": g["spend_recent"].sum() / g["spend_previous"].sum().replace(0, np.nan) - 1,
    }).reset_index().rename(columns={key: "segment"})
    t["description"] = t["segment"].map(descriptions)
    t["suggested_action"] = t["segment"].map(actions)
    return t.sort_values(["customers", "segment"], ascending=[False, True])[SEGMENT_COLUMNS].reset_index(drop=True)


def describe(rows: pd.DataFrame) -> str:
    """Plain words with the medians of one group of customers."""
    n = len(rows)
    orders = rows["orders"].median()
    parts = [(f"{n:,} customer{'s' if n != 1 else ''}; median revenue {_num(rows['revenue'].median())} over "
              f"{orders:.0f} order{'s' if orders != 1 else ''}")]
    if rows["cycle_days"].notna().any():
        parts.append(f"orders every ~{rows['cycle_days'].median():.0f} days")
    if rows["cycle_cv"].notna().any():
        parts.append(f"gap variation {rows['cycle_cv'].median():.2f} (0 = like clockwork)")
    parts.append(f"{rows['products'].median():.0f} distinct products")
    prev, rec = rows["spend_previous"].sum(), rows["spend_recent"].sum()
    parts.append(f"spend last 6 months {_num(rec)} vs {_num(prev)} the 6 before" if prev or rec
                 else "nothing bought in the last 12 months")
    ret = rows["returned_value"].sum() / max(rows["revenue"].sum() + rows["returned_value"].sum(), 1e-9)
    parts.append(f"returns {ret:.1%} of value")
    parts.append(f"last order a median {rows['days_since_last'].median():.0f} days ago")
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


def micro_segments(b: pd.DataFrame, cfg: dict, p_alive: pd.Series | None = None
                   ) -> tuple[pd.Series, dict[str, str], dict[str, str], MicroSegments | None]:
    """Segment name per customer (index of `b`), descriptions, actions, and the fitted model (or None when
    there are too few repeat customers to cluster). `b` is the behaviour frame; rows are sorted by customer
    id before fitting, so the result does not depend on the row order."""
    b = b.sort_values("customer_id", kind="stable")
    recent_days = int(cfg.get("one_time_recent_days", 90))
    names = pd.Series(np.where(b["days_since_last"] < recent_days, ONE_TIME_RECENT, ONE_TIME_LAPSED),
                      index=b.index, dtype=object)
    repeat = b["orders"] >= 2
    descriptions: dict[str, str] = {}
    actions: dict[str, str] = {
        ONE_TIME_RECENT: "Win the second order: welcome contact, recommendations from look-alikes, a small "
                         "incentive within the usual first gap.",
        ONE_TIME_LAPSED: "Low-cost automated reactivation only; leave out of paid campaigns.",
    }
    model = None
    rep = b[repeat]
    k_min = int(cfg.get("k_min", 3))
    if len(rep) > max(k_min, 2) + 1:
        X = behaviour_matrix(rep["revenue"], rep["cycle_days"], rep["cycle_cv"], rep["products"], rep["trend"],
                             rep["return_rate"])
        try:
            model = MicroSegments(k_min=k_min, k_max=int(cfg.get("k_max", 10)), sample=int(cfg.get("sample", 2000)),
                                  random_state=int(cfg.get("seed", 0))).fit(X)
        except ValueError:
            model = None
    if model is not None:
        labels = cluster_names(model.centers_z_)
        names.loc[rep.index] = np.asarray(labels, dtype=object)[model.labels_]
        pa = p_alive if p_alive is not None else pd.Series(np.nan, index=b.index)
        for i, label in enumerate(labels):
            members = rep.index[model.labels_ == i]
            z = dict(zip(FEATURES, model.centers_z_[i]))
            descriptions[label] = describe(b.loc[members])
            actions[label] = _action(z, float((pa.loc[members] < 0.5).mean()))
    elif len(rep):
        names.loc[rep.index] = "repeat customers"
        descriptions["repeat customers"] = describe(rep)
        actions["repeat customers"] = "Keep them in their rhythm: reminders timed to their reorder cycle."
    for label in (ONE_TIME_RECENT, ONE_TIME_LAPSED):
        rows = b[names == label]
        if len(rows):
            descriptions[label] = describe(rows)
    return names, descriptions, actions, model


@step("segments", 50)
def segments_step(ctx: Context) -> pd.DataFrame | None:
    cfg = ctx.config.get("segments", {}) or {}
    cust = ctx.customers
    if cust.empty:
        ctx.notes.append("segments: no customers to segment")
        return None
    b = behaviour(ctx.store.table("transactions"), ctx.as_of, int(cfg.get("window_days", 180))).execute()
    if b.empty or not (b["revenue"] > 0).any():
        ctx.notes.append("segments skipped: the transactions carry no amounts, so value and RFM cannot be scored")
        return None
    b = b[b["customer_id"].isin(cust["customer_id"])].sort_values("customer_id", kind="stable").reset_index(drop=True)
    base = cust[["customer_id", "p_alive", "clv_12m"]]
    frame = b.merge(base, on="customer_id", how="left")

    r, f, m = rfm_scores(frame["days_since_last"].to_numpy(float), frame["orders"].to_numpy(float),
                         frame["revenue"].to_numpy(float))
    frame["rfm_segment"] = rfm_segment(r, f, m)
    frame["rfm_score"] = [f"{a}{b_}{c}" for a, b_, c in zip(r, f, m)]
    rfm_desc = {s: f"{RFM_DESCRIPTIONS[s]}. " + describe(frame[frame["rfm_segment"] == s])
                for s in frame["rfm_segment"].unique()}
    rfm = segment_table(frame, "rfm_segment", rfm_desc, RFM_ACTIONS)

    names, desc, actions, model = micro_segments(frame, cfg, frame["p_alive"])
    frame["segment"] = names
    micro = segment_table(frame, "segment", desc, actions)
    if model is not None:
        sil = ", ".join(f"k={k}: {s:.3f}" for k, s in model.silhouettes_.items())
        ctx.notes.append(f"segments: {model.k_} behaviour clusters of the {int((frame['orders'] >= 2).sum()):,} "
                         f"repeat customers, k chosen by the highest silhouette ({sil}), plus one-time buyers")
    else:
        ctx.notes.append("segments: too few repeat customers to cluster; repeat customers form one segment")
    write_frame(ctx.store, "segments", micro, replace=True)
    write_frame(ctx.store, "rfm_segments", rfm, replace=True)
    return frame[["customer_id", "rfm_segment", "rfm_score", "segment"]]
