"""Held-out check of the direction labels: label customers with data before a cutoff, then look at what they
spent in the `horizon_days` after it; and the tuning grid that chose the defaults on separate, earlier cutoffs.

Metric (issue 7), for each cutoff, method and label:
- declining / growing: change = the group's revenue in the next `horizon_days` / its revenue in the previous
  `horizon_days`; lift = change / (the same ratio over all customers with a purchase before the cutoff).
  Growing: HIGHER lift is better (the group grows more than the base). Declining: LOWER lift is better (the
  group falls more than the base).
- lapsed: precision = share of the customers labelled lapsed with no purchase in the next `horizon_days`
  (higher is better).

Baseline (the usual spreadsheet rule): spend in the last 3 months vs the 3 months before: growing if up by
more than 25%, declining if down by more than 25% (but not zero), lapsed if no purchase in the last 3 months.
Its own change score is last3 / prior3 (and for lapsed, days since the last purchase).

Equal-size comparisons (so a win is not just "fewer, more extreme picks"):
- `baseline_top_n`: the rule's N most extreme customers by its own change score, N = loyalist's group size
  (growing: highest last3/prior3; declining: lowest, last3 > 0; lapsed: longest since the last purchase among
  those with none in 3 months);
- `loyalist_top_n`: loyalist's N strongest by its trend score (signed -log10 p), N = the rule's group size;
  when N exceeds the customers with any evidence, the rest are ranked by the raw change of their spend rate
  between loyalist's windows. Ties everywhere are broken by customer id (deterministic).

Uncertainty: 95% percentile intervals from a Poisson bootstrap over customers (each customer weighted by a
Poisson(1) draw per replicate, Hanley & MacGibbon 2006; Chamandy et al. 2012), the same weights for every
method, so the interval of the paired difference (loyalist's metric minus the baseline's) is also given.
Pooled rows sum the revenues (and counts) of all cutoffs within each replicate. Customers are taken in
customer_id order, so the draws (and the intervals) do not depend on the order an engine returns rows in.

Table `direction_backtest` columns: cutoff (NULL for pooled rows), horizon_days, method (loyalist | baseline
| baseline_top_n | loyalist_top_n), label, customers, share (of customers with a purchase before the cutoff),
prev_revenue, next_revenue, change, base_change, lift, lift_lo, lift_hi, precision, precision_lo,
precision_hi, compared_with (the other method of the pair), diff (loyalist's metric minus the baseline's in
the pair: lift for growing/declining, precision for lapsed), diff_lo, diff_hi, customers_total,
base_prev_revenue, base_next_revenue.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import replace

import ibis
import numpy as np
import pandas as pd

from loyalist.features import purchases
from loyalist.models.direction import DirectionParams, classify_trend

LABELS = ("growing", "declining", "lapsed")
BETTER = {"growing": "higher lift", "declining": "lower lift", "lapsed": "higher precision"}


def _window_spend(t, start: dt.date, end: dt.date) -> pd.DataFrame:
    occ = purchases(t, dt.datetime.combine(end, dt.time()))
    occ = occ.filter(occ.day >= ibis.date(start))
    return occ.group_by("customer_id").aggregate(spend=occ.spend.sum(), orders=occ.count()).execute()


def _rule_windows(t, cutoff: dt.date) -> pd.DataFrame:
    occ = purchases(t, dt.datetime.combine(cutoff, dt.time()))
    a, b = ibis.date(cutoff - dt.timedelta(days=91)), ibis.date(cutoff - dt.timedelta(days=182))
    return occ.group_by("customer_id").aggregate(
        last3=ibis.ifelse(occ.day >= a, occ.spend, 0.0).sum(),
        prior3=ibis.ifelse((occ.day >= b) & (occ.day < a), occ.spend, 0.0).sum(),
        last_day=occ.day.max()).execute()


def _rule_trend(last3: np.ndarray, prior3: np.ndarray) -> np.ndarray:
    return np.where(last3 <= 0, "lapsed", np.where((prior3 > 0) & (last3 > 1.25 * prior3), "growing",
                                                   np.where(last3 < 0.75 * prior3, "declining", "stable")))


def baseline_labels(t, cutoff: dt.date) -> pd.DataFrame:
    """customer_id, trend by the last-3-months vs prior-3-months rule (see the module docstring)."""
    per = _rule_windows(t, cutoff)
    return pd.DataFrame({"customer_id": per["customer_id"], "trend": _rule_trend(per["last3"], per["prior3"])})


def trend_frame(st: pd.DataFrame, r: dict[str, np.ndarray]) -> pd.DataFrame:
    """customer_id, trend, trend_score, days_since, spend_rate_change from `trend_inputs` rows and their
    classify_trend result (row by row: the Spark engine runs it on each batch of customers)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        change = (st["s_recent"] / st["e_recent"] - st["s_early"] / st["e_early"]).to_numpy(float)
    return pd.DataFrame({"customer_id": st["customer_id"].to_numpy(), "trend": r["trend"],
                         "trend_score": r["trend_score"], "days_since": st["last_age"].to_numpy(float),
                         "spend_rate_change": np.nan_to_num(change, nan=0.0, posinf=0.0, neginf=0.0)})


CUTOFF_COLUMNS = ["customer_id", "trend", "trend_score", "prev", "next", "next_orders", "last3", "prior3",
                  "days_since", "spend_rate_change", "rule"]


def cutoff_frame(t, cutoff: dt.date, params: DirectionParams, horizon_days: int = 182,
                 with_inputs: bool = False, trends: pd.DataFrame | None = None
                 ) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """One row per customer with a purchase before `cutoff`, sorted by customer_id (the bootstrap weights
    follow the rows, so the order must not depend on the engine): prev / next revenue and next orders,
    loyalist's trend and trend_score, the rule's trend, last3, prior3 and days since the last purchase. With
    `with_inputs`, also the `trend_inputs` frame, row-aligned with it (for re-classifying with other settings).
    `trends`: the `trend_frame` already computed (the Spark engine computes it on the executors)."""
    from loyalist.insights.direction import trend_inputs

    st = None
    if trends is None:
        st, r = trend_inputs(t, cutoff, params)
        if st.empty:
            raise ValueError(f"no purchases before {cutoff}")
        trends = trend_frame(st, r)
    elif trends.empty:
        raise ValueError(f"no purchases before {cutoff}")
    order = np.argsort(trends["customer_id"].astype(str).to_numpy(), kind="stable")
    df = trends.iloc[order].reset_index(drop=True)
    prev = _window_spend(t, cutoff - dt.timedelta(days=horizon_days), cutoff).set_index("customer_id")
    nxt = _window_spend(t, cutoff, cutoff + dt.timedelta(days=horizon_days)).set_index("customer_id")
    rule = _rule_windows(t, cutoff).set_index("customer_id")
    ids = df["customer_id"]
    df["prev"] = prev["spend"].reindex(ids).fillna(0.0).to_numpy()
    df["next"] = nxt["spend"].reindex(ids).fillna(0.0).to_numpy()
    df["next_orders"] = nxt["orders"].reindex(ids).fillna(0).to_numpy()
    df["last3"] = rule["last3"].reindex(ids).fillna(0.0).to_numpy()
    df["prior3"] = rule["prior3"].reindex(ids).fillna(0.0).to_numpy()
    df["rule"] = _rule_trend(df["last3"].to_numpy(), df["prior3"].to_numpy())
    df = df[CUTOFF_COLUMNS]
    if with_inputs:
        if st is None:
            raise ValueError("with_inputs needs the trend inputs (not available with `trends`)")
        return df, st.iloc[order].reset_index(drop=True)
    return df


def _top(score: np.ndarray, eligible: np.ndarray, n: int, then: np.ndarray | None = None,
         ids: np.ndarray | None = None) -> np.ndarray:
    """Mask of the n highest `score` among `eligible`; ties broken by the highest `then`, then by id, so the
    pick does not depend on the order rows come back from the store."""
    idx = np.flatnonzero(eligible)
    keys = [np.asarray(ids)[idx] if ids is not None else idx, -(then[idx] if then is not None else 0 * idx),
            -score[idx]]
    pick = idx[np.lexsort(keys)[:n]]
    m = np.zeros(len(score), bool)
    m[pick] = True
    return m


def groups(df: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    """(method, label) -> customer mask, including the equal-size selections (see the module docstring)."""
    l3, p3 = df["last3"].to_numpy(float), df["prior3"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where((p3 > 0) & (l3 > 0), l3 / p3, np.nan)
    both = np.isfinite(ratio)
    # ties in the ratio are broken by the size of the change
    up_score = np.nan_to_num(ratio) + 1e-12 * (l3 - p3)
    down_score = -np.nan_to_num(ratio) - 1e-12 * (l3 - p3)
    score = df["trend_score"].to_numpy(float)
    ours_live = df["trend"].to_numpy() != "lapsed"
    ids = df["customer_id"].astype(str).to_numpy()
    # beyond the customers with evidence (score 0: too little history) loyalist's ranking falls back on the
    # raw change of the spend rate between its windows
    rate = df["spend_rate_change"].to_numpy(float)
    out = {}
    for label in LABELS:
        mine, rule = df["trend"].to_numpy() == label, df["rule"].to_numpy() == label
        out[("loyalist", label)], out[("baseline", label)] = mine, rule
        if label == "growing":
            out[("baseline_top_n", label)] = _top(up_score, both, int(mine.sum()), ids=ids)
            out[("loyalist_top_n", label)] = _top(score, ours_live, int(rule.sum()), rate, ids)
        elif label == "declining":
            out[("baseline_top_n", label)] = _top(down_score, both, int(mine.sum()), ids=ids)
            out[("loyalist_top_n", label)] = _top(-score, ours_live, int(rule.sum()), -rate, ids)
        else:
            out[("baseline_top_n", label)] = _top(df["days_since"].to_numpy(float), l3 <= 0, int(mine.sum()), ids=ids)
    return out


PAIRS = {"loyalist": "baseline", "loyalist_top_n": "baseline", "baseline_top_n": "loyalist"}


def _sums(df: pd.DataFrame, masks: dict, weights: np.ndarray | None) -> dict:
    """Group sums (point estimate when weights is None, else one per bootstrap replicate)."""
    prev, nxt = df["prev"].to_numpy(float), df["next"].to_numpy(float)
    gone = (df["next_orders"].to_numpy() == 0).astype(float)
    dot = (lambda v: float(v.sum())) if weights is None else (lambda v: weights @ v)
    s = {"base": (dot(prev), dot(nxt))}
    for key, m in masks.items():
        mf = m.astype(float)
        s[key] = (dot(prev * mf), dot(nxt * mf), dot(mf), dot(gone * mf))
    return s


def _boot_sums(df: pd.DataFrame, masks: dict, rng: np.random.Generator, n_boot: int) -> dict:
    """_sums for `n_boot` Poisson-bootstrap replicates, drawn in chunks of replicates so that the weight
    matrix stays below ~20M entries however many customers there are."""
    chunk = max(1, min(n_boot, int(2e7 // max(len(df), 1))))
    parts = [_sums(df, masks, rng.poisson(1.0, (min(chunk, n_boot - i), len(df))).astype(float))
             for i in range(0, n_boot, chunk)]
    return {k: tuple(np.concatenate([p[k][j] for p in parts]) for j in range(len(parts[0][k]))) for k in parts[0]}


def _metrics(s: dict, key) -> tuple:
    """(lift, precision) from summed (group prev, next, count, gone) and base (prev, next)."""
    bp, bn = s["base"]
    gp, gn, c, gone = s[key]
    with np.errstate(invalid="ignore", divide="ignore"):
        lift = np.where(np.asarray(gp) > 0, (np.asarray(gn) / gp) / (np.asarray(bn) / bp), np.nan)
        precision = np.where(np.asarray(c) > 0, np.asarray(gone) / c, np.nan)
    return lift, precision


def _add(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    return {k: tuple(x + y for x, y in zip(a[k], b[k])) for k in a}


def _rows(s: dict, boot: dict | None, cutoff, horizon_days: int, n_total: int) -> list[dict]:
    rows = []
    bp, bn = s["base"]
    for key in s:
        if key == "base":
            continue
        method, label = key
        gp, gn, c, _ = s[key]
        lift, prec = (float(x) for x in _metrics(s, key))
        row = {"cutoff": cutoff, "horizon_days": horizon_days, "method": method, "label": label,
               "customers": int(round(c)), "share": c / n_total if n_total else np.nan, "prev_revenue": gp,
               "next_revenue": gn, "change": gn / gp if gp > 0 else np.nan, "base_change": bn / bp,
               "lift": lift if label != "lapsed" else np.nan, "lift_lo": np.nan, "lift_hi": np.nan,
               "precision": prec if label == "lapsed" else np.nan, "precision_lo": np.nan, "precision_hi": np.nan,
               "compared_with": None, "diff": np.nan, "diff_lo": np.nan, "diff_hi": np.nan,
               "customers_total": n_total, "base_prev_revenue": bp, "base_next_revenue": bn}
        col = "precision" if label == "lapsed" else "lift"
        other = PAIRS.get(method)
        if other is not None and (other, label) in s:
            row["compared_with"] = other
            mine, theirs = (key, (other, label)) if method != "baseline_top_n" else ((other, label), key)
            row["diff"] = _metrics(s, mine)[col == "precision"] - _metrics(s, theirs)[col == "precision"]
            row["diff"] = float(row["diff"])
        if boot is not None:
            v = _metrics(boot, key)[col == "precision"]
            if np.isfinite(v).mean() > 0.9:
                row[f"{col}_lo"], row[f"{col}_hi"] = np.nanpercentile(v, [2.5, 97.5])
            if row["compared_with"] is not None:
                d = _metrics(boot, mine)[col == "precision"] - _metrics(boot, theirs)[col == "precision"]
                if np.isfinite(d).mean() > 0.9:
                    row["diff_lo"], row["diff_hi"] = np.nanpercentile(d, [2.5, 97.5])
        rows.append(row)
    return rows


def backtest_direction(t, cutoffs: list[dt.date], params: DirectionParams | None = None,
                       horizon_days: int = 182, products=None, n_boot: int = 1000, seed: int = 0,
                       trends_for=None, params_by_cutoff: dict | None = None) -> pd.DataFrame:
    """The `direction_backtest` table for each cutoff, plus pooled rows when there are several (see the module
    docstring). `n_boot` = 0 skips the bootstrap intervals. `trends_for(cutoff)`: the `trend_frame` at a
    cutoff when computed elsewhere (the Spark engine: on the executors). `params_by_cutoff`: {cutoff: params}
    overriding `params` at those cutoffs (the nested evaluation's per-cutoff choice)."""
    params = params or DirectionParams()
    last = t.order_date.max().execute()
    rng = np.random.default_rng(seed)
    rows, pooled_s, pooled_b, n_all = [], None, None, 0
    for cutoff in cutoffs:
        if last is None or pd.Timestamp(cutoff) + pd.Timedelta(days=horizon_days) > pd.Timestamp(last) + pd.Timedelta(days=1):
            raise ValueError(f"the data ends {pd.Timestamp(last).date() if last is not None else '-'}, before "
                             f"{cutoff} + {horizon_days} days")
        df = cutoff_frame(t, cutoff, (params_by_cutoff or {}).get(cutoff, params), horizon_days,
                          trends=trends_for(cutoff) if trends_for is not None else None)
        masks = groups(df)
        s = _sums(df, masks, None)
        b = _boot_sums(df, masks, rng, n_boot) if n_boot else None
        rows += _rows(s, b, pd.Timestamp(cutoff), horizon_days, len(df))
        pooled_s = _add(pooled_s, s)
        pooled_b = _add(pooled_b, b) if b is not None else None
        n_all += len(df)
    if len(cutoffs) > 1:
        rows += _rows(pooled_s, pooled_b, pd.NaT, horizon_days, n_all)
    return pd.DataFrame(rows)


def stable_false_alarms(params: DirectionParams | None = None, n: int = 20000, seed: int = 11) -> dict:
    """Simulate customers whose buying does NOT change (Poisson orders, lognormal order values, 120-900 days
    of history, no seasonality) and count how many loyalist and the rule label growing or declining (with
    `trend_compare` = "last_year", customers with over a year of history are compared year over year)."""
    p = params or DirectionParams()
    rng = np.random.default_rng(seed)
    R, E = p.trend_recent_days, p.trend_early_days
    age = rng.uniform(120, 900, n)
    lam = rng.gamma(1.2, 1 / 25, n)
    mu, sig = rng.normal(5, 1, n), rng.uniform(0.3, 1.3, n)
    k = rng.poisson(lam * age)
    cust = np.repeat(np.arange(n), k)
    when = rng.uniform(0, age[cust])  # days before as_of
    value = np.exp(mu[cust] + sig[cust] * rng.standard_normal(len(cust)))

    def agg(mask, what):
        return np.bincount(cust[mask], what[mask], n)

    one = np.ones(len(cust))
    rec, early = when < R, (when >= R) & (when < R + E)
    last = np.full(n, np.inf)
    np.minimum.at(last, cust, when)
    last = np.minimum(last, age)  # the first purchase sits at `age` days before as_of
    d1 = np.clip(age - R, 0, E)
    ly = (when >= 365) & (when < 365 + R)  # the recent window one year earlier
    d_ly = np.clip(age - 365, 0, R)
    r = classify_trend(age, last, 1 + k, agg(early, one), agg(early, value), agg(early, value ** 2), agg(rec, one),
                       agg(rec, value), agg(rec, value ** 2), d1, np.full(n, float(R)), d1, p, gap_exposure=last,
                       last_year=(agg(ly, one), agg(ly, value), agg(ly, value ** 2), d_ly, d_ly))
    ours = np.isin(r["trend"], ["growing", "declining"])
    base = np.isin(_rule_trend(agg(when < 91, value), agg((when >= 91) & (when < 182), value)),
                   ["growing", "declining"])
    return {"customers": n, "loyalist_labelled_share": float(ours.mean()),
            "loyalist_labelled_share_of_eligible": float(ours[r["eligible"]].mean()),
            "loyalist_eligible_share": float(r["eligible"].mean()),
            "baseline_labelled_share": float(base.mean()), "target": "<= 0.05 labelled growing or declining"}


TUNING_GRID = {"trend_recent_days": (61, 91, 122), "seasonal": (True, False),
               "trend_test": ("orders+spend", "spend", "spend+silence", "orders+spend+silence"),
               "min_orders": (3, 5), "alpha": (0.05,)}


SETTING_KEYS = ("trend_recent_days", "seasonal", "trend_test", "min_orders", "alpha")
_FRAME_KEYS = ("trend_recent_days", "seasonal", "trend_early_days", "recent_days")
"""Settings that change the per-customer inputs (the rest only re-classify the same inputs)."""


def grid_sums(t, cutoffs: list[dt.date], grid: dict | None = None, horizon_days: int = 182,
              base: DirectionParams | None = None) -> tuple[list[DirectionParams], list[float], dict]:
    """Every setting of `grid` (a dict of DirectionParams fields -> values; the other fields from `base`)
    labelled at every cutoff: (settings, their false-alarm share on 10,000 stable synthetic customers,
    {(setting index, cutoff): group sums of loyalist's and the rule's growing / declining groups})."""
    from loyalist.insights.direction import classify_from

    grid = grid or TUNING_GRID
    base = base or DirectionParams()
    keys = list(grid)
    settings = [replace(base, **dict(zip(keys, v))) for v in itertools.product(*(grid[k] for k in keys))]
    fas = [stable_false_alarms(p, n=10000)["loyalist_labelled_share"] for p in settings]
    sums, frames = {}, {}
    for i, p in enumerate(settings):
        fk = tuple(getattr(p, k) for k in _FRAME_KEYS)
        for c in cutoffs:
            if (fk, c) not in frames:
                df, st = cutoff_frame(t, c, p, horizon_days, with_inputs=True)
                frames[(fk, c)] = (st, df)
            st, df = frames[(fk, c)]
            df = df.assign(trend=classify_from(st, p)["trend"])  # rows aligned: df was built from st
            masks = {k: v for k, v in groups(df).items() if k[0] in ("loyalist", "baseline") and k[1] != "lapsed"}
            sums[(i, c)] = _sums(df, masks, None)
    return settings, fas, sums


def grid_table(settings: list[DirectionParams], fas: list[float], sums: dict, cutoffs) -> pd.DataFrame:
    """One row per setting scored on `cutoffs` (a subset of those in `sums`): wins per label, pooled lifts,
    labelled customers, wins (growing + declining) and margin (see `tune_direction`)."""
    rows = []
    for i, p in enumerate(settings):
        total, wins = None, {"growing": 0, "declining": 0}
        for c in cutoffs:
            s = sums[(i, c)]
            for label in wins:
                mine, theirs = _metrics(s, ("loyalist", label))[0], _metrics(s, ("baseline", label))[0]
                wins[label] += bool(mine > theirs) if label == "growing" else bool(mine < theirs)
            total = _add(total, s)
        m = {f"{who}_{label}": float(_metrics(total, (who, label))[0])
             for who in ("loyalist", "baseline") for label in ("growing", "declining")}
        rows.append({**{k: getattr(p, k) for k in SETTING_KEYS + ("trend_compare",)}, "false_alarms": fas[i],
                     "wins_growing": wins["growing"], "wins_declining": wins["declining"], **m,
                     "growing_customers": int(total[("loyalist", "growing")][2]),
                     "declining_customers": int(total[("loyalist", "declining")][2])})
    g = pd.DataFrame(rows)
    g["wins"] = g["wins_growing"] + g["wins_declining"]
    g["margin"] = (np.nan_to_num(g["loyalist_growing"] - g["baseline_growing"], nan=-1)
                   + np.nan_to_num(g["baseline_declining"] - g["loyalist_declining"], nan=-1))
    return g


def pick(g: pd.DataFrame, max_false_alarms: float = 0.05) -> int:
    """Row index of the chosen setting (the rule in `tune_direction`; exact ties: the first in grid order)."""
    ok = g[g["false_alarms"] <= max_false_alarms]
    return int(ok.sort_values(["wins", "margin"], ascending=False, kind="stable").index[0])


def tune_direction(t, cutoffs: list[dt.date], grid: dict | None = None, horizon_days: int = 182,
                   max_false_alarms: float = 0.05, base: DirectionParams | None = None) -> tuple[pd.DataFrame, dict]:
    """Score every setting of `grid` on the tuning `cutoffs` (no bootstrap) and pick one.

    Rule (uses the tuning cutoffs only): among settings with <= `max_false_alarms` of
    stable synthetic customers labelled, the most cutoffs where loyalist beats the rule (growing and declining
    counted together; a cutoff where loyalist labels nobody is a loss), then the largest pooled margin
    (loyalist's growing lift - the rule's) + (the rule's declining lift - loyalist's).
    Returns (grid table, chosen setting)."""
    settings, fas, sums = grid_sums(t, cutoffs, grid, horizon_days, base)
    g = grid_table(settings, fas, sums, cutoffs)
    best = g.loc[pick(g, max_false_alarms)]
    chosen = {k: best[k].item() if hasattr(best[k], "item") else best[k] for k in SETTING_KEYS}
    return g, chosen


def nested_direction(t, cutoffs: list[dt.date], origins: list[dt.date], grid: dict | None = None,
                     horizon_days: int = 182, base: DirectionParams | None = None, max_false_alarms: float = 0.05,
                     n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, list[dict]]:
    """Rolling-origin (nested) evaluation: for each evaluation cutoff, the setting is chosen by the
    `tune_direction` rule on the `origins` whose outcome windows END BEFORE that cutoff (origin +
    `horizon_days` <= cutoff: everything used was known at the cutoff, as it would be on a user's store), then
    the cutoff is scored with it. Returns (the `backtest_direction` table over `cutoffs` with each cutoff's own
    setting, one record per cutoff: the origins used and the setting chosen)."""
    settings, fas, sums = grid_sums(t, origins, grid, horizon_days, base)
    chosen, picks = {}, []
    for c in cutoffs:
        usable = [o for o in origins if o + dt.timedelta(days=horizon_days) <= c]
        if not usable:
            raise ValueError(f"no origin with its outcome window before {c}")
        g = grid_table(settings, fas, sums, usable)
        i = pick(g, max_false_alarms)
        chosen[c] = settings[i]
        picks.append({"cutoff": str(c), "origins": [str(o) for o in usable],
                      "chosen": {k: _plain(g.loc[i, k]) for k in SETTING_KEYS + ("trend_compare",)},
                      "on_origins": {k: _round(g.loc[i, k]) for k in ("wins", "margin", "loyalist_growing",
                                                                       "baseline_growing", "loyalist_declining",
                                                                       "baseline_declining", "false_alarms")}})
    bt = backtest_direction(t, cutoffs, base, horizon_days, n_boot=n_boot, seed=seed, params_by_cutoff=chosen)
    return bt, picks


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def _round(x):
    x = float(x)
    return round(x, 4) if np.isfinite(x) else None


DESCRIBE_COLUMNS = ["method", "label", "customers", "lift", "new_share", "lift_new", "lift_not_new",
                    "eligible_share", "lift_eligible", "lift_not_eligible", "median_orders", "largest_next_share", "lift_loo_min", "lift_loo_max",
                    "median_prev_vs_typical", "median_largest_order_share"]


def describe_groups(t, cutoffs: list[dt.date], params: DirectionParams | None = None,
                    horizon_days: int = 182) -> pd.DataFrame:
    """Who is in each growing / declining group (loyalist's, the rule's, and the equal-size picks of `groups`),
    pooled over `cutoffs` (a customer at two cutoffs counts twice): what kind of customers make a group's lift.

    One row per (method, label), columns `DESCRIBE_COLUMNS`:
    - customers, lift: as in `backtest_direction` (pooled sums; the base is every customer at every cutoff);
    - new_share: share whose first purchase lies inside the previous `horizon_days` (new customers, whose
      previous window covers only part of a half-year as a customer); lift_new / lift_not_new: the lift of
      those / the others;
    - eligible_share: share with enough history for loyalist's tests (`classify_trend`'s `eligible`);
      lift_eligible / lift_not_eligible: the lift of those / the others;
    - median_orders: median purchase occasions to date;
    - largest_next_share: the share of the group's next-window revenue from its single largest customer;
      lift_loo_min / lift_loo_max: the lowest / highest lift with any one customer (at one cutoff) left out of
      the group (the base kept as it is): how much a single customer carries the group's lift;
    - median_prev_vs_typical: median of the previous window's spend over the customer's own spend per
      `horizon_days` in the 365 days before that window (customers with a purchase there only): > 1 means the
      previous window was above the customer's usual level (a spike, after which the next window tends to
      fall back), < 1 below it;
    - median_largest_order_share: median share of the previous window's spend in its largest purchase occasion.
    """
    from loyalist.insights.direction import classify_from

    params = params or DirectionParams()
    frames = []
    for cutoff in cutoffs:
        df, st = cutoff_frame(t, cutoff, params, horizon_days, with_inputs=True)
        start = cutoff - dt.timedelta(days=horizon_days)
        ids = df["customer_id"]
        before = _window_spend(t, start - dt.timedelta(days=365), start).set_index("customer_id")["spend"]
        occ = purchases(t, dt.datetime.combine(cutoff, dt.time()))
        occ = occ.filter(occ.day >= ibis.date(start))
        largest = occ.group_by("customer_id").aggregate(m=occ.spend.max()).execute().set_index("customer_id")["m"]
        d = df[["customer_id", "prev", "next"]].assign(
            new=st["first_age"].to_numpy(float) <= horizon_days, eligible=classify_from(st, params)["eligible"],
            orders=st["orders"].to_numpy(float), before=before.reindex(ids).fillna(0.0).to_numpy(),
            largest=largest.reindex(ids).fillna(0.0).to_numpy())
        for (method, label), mask in groups(df).items():
            if label != "lapsed":
                frames.append(d[mask].assign(method=method, label=label))
        frames.append(d.assign(method="", label=""))
    rows = pd.concat(frames, ignore_index=True)
    base = rows[rows["method"] == ""]
    base_change = base["next"].sum() / base["prev"].sum()

    def lift(g: pd.DataFrame) -> float:
        p = g["prev"].sum()
        return float(g["next"].sum() / p / base_change) if p > 0 else np.nan

    out = []
    for (method, label), g in rows[rows["method"] != ""].groupby(["method", "label"], sort=True):
        nxt, prv = g["next"].sum(), g["prev"].sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            typical = g["before"] * horizon_days / 365
            vs = (g["prev"] / typical).where(g["before"] > 0)
            lg = (g["largest"] / g["prev"]).where(g["prev"] > 0)
            loo = ((nxt - g["next"]) / (prv - g["prev"]) / base_change).where(prv - g["prev"] > 0)
        out.append({"method": method, "label": label, "customers": len(g), "lift": lift(g),
                    "new_share": float(g["new"].mean()) if len(g) else np.nan,
                    "lift_new": lift(g[g["new"]]), "lift_not_new": lift(g[~g["new"]]),
                    "eligible_share": float(g["eligible"].mean()) if len(g) else np.nan,
                    "lift_eligible": lift(g[g["eligible"]]), "lift_not_eligible": lift(g[~g["eligible"]]),
                    "median_orders": float(g["orders"].median()),
                    "largest_next_share": float(g["next"].max() / nxt) if nxt > 0 else np.nan,
                    "lift_loo_min": float(loo.min()), "lift_loo_max": float(loo.max()),
                    "median_prev_vs_typical": float(vs.median()), "median_largest_order_share": float(lg.median())})
    return pd.DataFrame(out, columns=DESCRIBE_COLUMNS)
