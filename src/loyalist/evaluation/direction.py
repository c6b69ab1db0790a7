"""Held-out check of the direction labels: label customers with data before a cutoff, then look at what they
spent in the `horizon_days` after it.

For each cutoff and method (loyalist's tests, and the baseline rule), and for each label:
- declining / growing: the group's revenue in the next `horizon_days` divided by its revenue in the
  previous `horizon_days` (change), and that change divided by the same ratio over all customers with a
  purchase before the cutoff (lift; below 1 = the group fell more than the base, above 1 = it grew more);
- lapsed: precision = share of the customers labelled lapsed with no purchase in the next `horizon_days`.

Baseline (the usual spreadsheet rule): spend in the last 3 months vs the 3 months before: growing if up by
more than 25%, declining if down by more than 25% (but not zero), lapsed if no purchase in the last 3 months.

Table `direction_backtest` columns: cutoff, horizon_days, method (loyalist | baseline), label, customers,
share (of customers with a purchase before the cutoff), prev_revenue, next_revenue, change, base_change,
lift, precision (lapsed only), customers_total, base_prev_revenue, base_next_revenue; with several cutoffs,
also one pooled row per method and label (cutoff NULL) over all of them.
"""

from __future__ import annotations

import datetime as dt

import ibis
import numpy as np
import pandas as pd

from loyalist.features import purchases
from loyalist.models.direction import DirectionParams


def _window_spend(t, start: dt.date, end: dt.date) -> pd.DataFrame:
    occ = purchases(t, dt.datetime.combine(end, dt.time()))
    occ = occ.filter(occ.day >= ibis.date(start))
    return occ.group_by("customer_id").aggregate(spend=occ.spend.sum(), orders=occ.count()).execute()


def baseline_labels(t, cutoff: dt.date) -> pd.DataFrame:
    """customer_id, trend by the last-3-months vs prior-3-months rule (see the module docstring)."""
    occ = purchases(t, dt.datetime.combine(cutoff, dt.time()))
    a, b = ibis.date(cutoff - dt.timedelta(days=91)), ibis.date(cutoff - dt.timedelta(days=182))
    per = occ.group_by("customer_id").aggregate(
        last3=ibis.ifelse(occ.day >= a, occ.spend, 0.0).sum(),
        prior3=ibis.ifelse((occ.day >= b) & (occ.day < a), occ.spend, 0.0).sum()).execute()
    trend = np.where(per["last3"] <= 0, "lapsed",
                     np.where((per["prior3"] > 0) & (per["last3"] > 1.25 * per["prior3"]), "growing",
                              np.where(per["last3"] < 0.75 * per["prior3"], "declining", "stable")))
    return pd.DataFrame({"customer_id": per["customer_id"], "trend": trend})


def score_labels(labels: pd.DataFrame, prev: pd.DataFrame, nxt: pd.DataFrame) -> pd.DataFrame:
    df = labels.merge(prev.rename(columns={"spend": "prev", "orders": "prev_orders"}), on="customer_id", how="left")
    df = df.merge(nxt.rename(columns={"spend": "next", "orders": "next_orders"}), on="customer_id", how="left")
    df[["prev", "next", "next_orders"]] = df[["prev", "next", "next_orders"]].fillna(0)
    base_change = df["next"].sum() / df["prev"].sum()
    rows = []
    for label in ("growing", "declining", "lapsed"):
        g = df[df["trend"] == label]
        change = g["next"].sum() / g["prev"].sum() if g["prev"].sum() > 0 else np.nan
        rows.append({"label": label, "customers": len(g), "share": len(g) / len(df), "prev_revenue": g["prev"].sum(),
                     "next_revenue": g["next"].sum(), "change": change, "base_change": base_change,
                     "lift": change / base_change if label != "lapsed" else np.nan,
                     "precision": (g["next_orders"] == 0).mean() if label == "lapsed" and len(g) else np.nan,
                     "customers_total": len(df), "base_prev_revenue": df["prev"].sum(),
                     "base_next_revenue": df["next"].sum()})
    return pd.DataFrame(rows)


def backtest_direction(t, cutoffs: list[dt.date], params: DirectionParams | None = None,
                       horizon_days: int = 182, products=None) -> pd.DataFrame:
    """The `direction_backtest` table for each cutoff (see the module docstring)."""
    from loyalist.insights.direction import direction_table

    params = params or DirectionParams()
    last = t.order_date.max().execute()
    out = []
    for cutoff in cutoffs:
        if last is None or pd.Timestamp(cutoff) + pd.Timedelta(days=horizon_days) > pd.Timestamp(last) + pd.Timedelta(days=1):
            raise ValueError(f"the data ends {pd.Timestamp(last).date() if last is not None else '-'}, before "
                             f"{cutoff} + {horizon_days} days")
        prev = _window_spend(t, cutoff - dt.timedelta(days=horizon_days), cutoff)
        nxt = _window_spend(t, cutoff, cutoff + dt.timedelta(days=horizon_days))
        ours = direction_table(t, products, cutoff, params, mix=False)[["customer_id", "trend"]]
        if ours.empty:
            raise ValueError(f"no purchases before {cutoff}")
        for method, labels in (("loyalist", ours), ("baseline", baseline_labels(t, cutoff))):
            s = score_labels(labels, prev, nxt)
            s.insert(0, "method", method)
            s.insert(0, "horizon_days", horizon_days)
            s.insert(0, "cutoff", pd.Timestamp(cutoff))
            out.append(s)
    table = pd.concat(out, ignore_index=True)
    if len(cutoffs) < 2:
        return table
    extra = pooled(table)[table.columns]
    return pd.DataFrame({c: pd.concat([table[c], extra[c]], ignore_index=True) for c in table.columns})


def pooled(table: pd.DataFrame) -> pd.DataFrame:
    """One row per method and label over all cutoffs (cutoff NULL): revenues summed over the cutoffs, lift
    against the pooled change of all customers, precision over all customers labelled lapsed."""
    rows = []
    for (method, label), g in table.groupby(["method", "label"], sort=False):
        base_change = g["base_next_revenue"].sum() / g["base_prev_revenue"].sum()
        change = g["next_revenue"].sum() / g["prev_revenue"].sum() if g["prev_revenue"].sum() > 0 else np.nan
        n = int(g["customers"].sum())
        rows.append({"cutoff": pd.NaT, "horizon_days": int(g["horizon_days"].iloc[0]), "method": method,
                     "label": label, "customers": n, "share": n / g["customers_total"].sum(),
                     "prev_revenue": g["prev_revenue"].sum(), "next_revenue": g["next_revenue"].sum(),
                     "change": change, "base_change": base_change,
                     "lift": change / base_change if label != "lapsed" else np.nan,
                     "precision": (g["precision"] * g["customers"]).sum() / n if label == "lapsed" and n else np.nan,
                     "customers_total": int(g["customers_total"].sum()),
                     "base_prev_revenue": g["base_prev_revenue"].sum(), "base_next_revenue": g["base_next_revenue"].sum()})
    return pd.DataFrame(rows)
