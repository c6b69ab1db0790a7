"""Payment-risk score: pure numpy on the per-customer payment statistics of `loyalist.features.payment`.

A transparent points scorecard (the usual form of a credit-control score, e.g. Siddiqi, "Credit Risk
Scorecards", 2006, ch. 2) rather than a fitted classifier: a store has no labels of which customers went
bad, so there is nothing to fit on. Points, then risk = 1 / (1 + exp(-(points - 3))) in (0, 1):

    slowdown      0.15 per day that the last 6 months' DBT exceeds the 6 months before (trend), and
                  0.10 per day that the last 3 months' exceed the last 12 months'
    level         0.02 per day of DBT over the last 6 months (chronic but steady lateness weighs little)
    overdue       3 x (share of the last 12 months' invoiced amount now more than 60 days overdue)
                  + 0.5 per invoice more than 60 days overdue (at most 3)
    disputes      4 x max(0, disputed share of the last 12 months' invoices - 5%)

The reason names the components that add the most points, with their numbers. The weights were set by
judgement, then checked (never tuned on the test itself) on synthetic histories with known deteriorating
payers: `tests/test_payment.py` asserts they are ranked first (AUC), and `bench/direction.py` reports it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ("dbt_3m", "dbt_6m", "dbt_12m", "dbt_prev_6m", "amount_12m", "overdue_60_count", "overdue_61_90",
           "overdue_90_plus", "disputed_share_12m")


def risk_points(stats: pd.DataFrame) -> pd.DataFrame:
    """Points per component (columns slowdown, level, overdue, disputes) for each row of `stats`."""
    g = {c: stats[c].to_numpy(float) for c in COLUMNS}
    trend6 = np.nan_to_num(g["dbt_6m"] - g["dbt_prev_6m"], nan=0.0)
    trend3 = np.nan_to_num(g["dbt_3m"] - g["dbt_12m"], nan=0.0)
    level = np.nan_to_num(g["dbt_6m"], nan=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        od_share = np.nan_to_num((g["overdue_61_90"] + g["overdue_90_plus"]) / g["amount_12m"], nan=0.0, posinf=1.0)
    return pd.DataFrame({
        "slowdown": 0.15 * np.maximum(trend6, 0) + 0.10 * np.maximum(trend3, 0),
        "level": 0.02 * np.maximum(level, 0),
        "overdue": 3 * np.clip(od_share, 0, 1) + 0.5 * np.minimum(np.nan_to_num(g["overdue_60_count"]), 3),
        "disputes": 4 * np.maximum(np.nan_to_num(g["disputed_share_12m"]) - 0.05, 0),
    }, index=stats.index)


def risk_score(stats: pd.DataFrame, points: pd.DataFrame | None = None) -> np.ndarray:
    total = (risk_points(stats) if points is None else points).sum(axis=1).to_numpy()
    return 1 / (1 + np.exp(-(total - 3.0)))


def risk_reasons(stats: pd.DataFrame, points: pd.DataFrame | None = None, min_points: float = 0.3) -> list[str]:
    """Plain words for the components worth at least `min_points`, largest first; 'pays as usual' if none."""
    points = risk_points(stats) if points is None else points
    s = stats
    text = pd.DataFrame(index=s.index)

    def days(x: pd.Series) -> pd.Series:
        return x.round().astype("Int64").astype(str)

    six = ("paid " + days(s["dbt_6m"] - s["dbt_prev_6m"]) + " days later on average over the last 6 months than "
           "the 6 before (DBT " + days(s["dbt_6m"]) + " vs " + days(s["dbt_prev_6m"]) + " days)")
    three = ("paid " + days(s["dbt_3m"] - s["dbt_12m"]) + " days later on average over the last 3 months than "
             "over the last 12 (DBT " + days(s["dbt_3m"]) + " vs " + days(s["dbt_12m"]) + " days)")
    # name the comparison that gave the slowdown points (the 6-month one may be flat or falling)
    g = {c: s[c].to_numpy(float) for c in ("dbt_3m", "dbt_6m", "dbt_12m", "dbt_prev_6m")}
    pts6 = 0.15 * np.maximum(np.nan_to_num(g["dbt_6m"] - g["dbt_prev_6m"], nan=0.0), 0)
    pts3 = 0.10 * np.maximum(np.nan_to_num(g["dbt_3m"] - g["dbt_12m"], nan=0.0), 0)
    text["slowdown"] = six.where(pts6 >= pts3, three)
    text["level"] = "pays " + days(s["dbt_6m"]) + " days beyond terms on average"
    n60 = s["overdue_60_count"].astype("Int64")
    one = (n60 == 1).fillna(False).to_numpy(bool)
    text["overdue"] = (n60.astype(str) + np.where(one, " invoice", " invoices") + " 60+ days overdue ("
                       + (s["overdue_61_90"] + s["overdue_90_plus"]).map("{:,.0f}".format) + ")")
    text["disputes"] = ((s["disputed_share_12m"] * 100).round().astype("Int64").astype(str)
                        + "% of the last 12 months' invoices disputed")
    order = np.argsort(-points.to_numpy(), axis=1)
    pts = points.to_numpy()
    txt = text[list(points.columns)].to_numpy()
    out = []
    for row in range(len(points)):  # formatting text only; the numbers are computed above, vectorised
        parts = [txt[row, j] for j in order[row] if pts[row, j] >= min_points and isinstance(txt[row, j], str)
                 and "<NA>" not in txt[row, j]]
        out.append("; ".join(parts) if parts else "pays as usual")
    return out
