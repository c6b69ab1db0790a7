"""Weekly demand forecasts: method chosen per series by a rolling-origin backtest, 80% / 95% intervals, and the
bottom-up forecast from the customer-level predictions. Pure numpy/pandas/statsforecast, no I/O.

Methods (all from statsforecast 2.1, which runs on coreforecast here; nothing hand-written but the two
combinations below):
- intermittent series (most products; Syntetos-Boylan average demand interval ADI > 1.32): CrostonOptimized
  (Croston 1972), ADIDA (Nikolopoulos et al. 2011), IMAPA (Petropoulos & Kourentzes 2015), TSB
  (Teunter, Syntetos & Babai 2011, alpha_d = alpha_p = 0.1);
- smooth series: AutoETS (Hyndman et al. 2002, 2008) restricted to no trend and no season for products
  (weekly seasons of 52 are beyond ETS's m <= 24, and two years of history cannot support a trend per
  product), full non-seasonal model selection for the few aggregate series; and, for series with more than a
  year of history, "ETS+SNaive": the equal-weight mean of AutoETS and the seasonal naive forecast — the
  classic forecast combination (Bates & Granger 1969; the M4 "Comb" benchmark) that carries last year's
  season at this year's level;
- baselines, scored in the backtest but never chosen: SeasonalNaive (52 weeks) and a 13-week moving average
  (WindowAverage).
ETS+SNaive's intervals are AutoETS's conformal intervals re-centred on the combination (the seasonal naive's
own conformal windows would need a year of history before each of them).
The intermittent methods have no model-based intervals, so every method gets conformal intervals
(statsforecast ConformalIntervals: the empirical distribution of its own rolling-origin errors, Stankeviciute
et al. 2021), clipped at zero like the point forecast (6 calibration windows for a series with more than 91 weeks of
history, else 3, fewer when the history is shorter still).

Candidates per series: the four intermittent methods for an intermittent series; AutoETS (and ETS+SNaive
once the series has more than 65 weeks) for a smooth aggregate series (total, category, orders); both sets for
a smooth product.
Choice per series: the candidate with the lowest mean absolute error over the backtest windows (the last
`n_windows` origins, 13 weeks apart, each forecasting 13 weeks after the origin from the data before it),
when it beats the class default (the method best across all series with the same candidates) by more than
30%; otherwise the class default (see `choose`).
Within one series MAE and MASE rank methods identically.

Series: a product's series starts at its first sale (weeks without sales are zeros); a series with fewer than
`MIN_WEEKS` weeks is padded with leading zeros to that length, which the conformal windows need (a product
launched recently is then forecast as if it had not sold before its launch: conservative). Only products sold
in the last `active_weeks` weeks are forecast.

Bottom-up forecast (customer level): expected orders per customer per week (expected_orders_90d / (90/7),
from the fitted customer-base model) times the customer's units of each product per order over the last
year, summed over customers; divided by the product's share of units bought by registered customers (guests'
demand is not in the customer model). It is flat over the horizon (the customer model has no season).
Reconciliation: the series forecast keeps its weekly shape (season, intervals) but its 13-week level is moved
halfway toward the bottom-up level: reconciled = forecast * (1 + bottom_up_total / forecast_total) / 2
(the mean of the two level estimates; both are stored, so the user sees how far they differ).

MASE (Hyndman & Koehler 2006): mean absolute error over the horizon / in-sample mean absolute one-step naive
error of the series before the origin; series with a zero scale are left out.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

LEVELS = (80, 95)
SEASON = 52
MIN_WEEKS = 40
INTERMITTENT = ("CrostonOptimized", "ADIDA", "IMAPA", "TSB")
SMOOTH = ("AutoETS", "ETS+SNaive")
BASELINES = ("SeasonalNaive", "MovingAverage")
MARGIN = 0.30
"""A series leaves its class's default method only for one more than 30% better in its own backtest
(on Online Retail II 0.3 gave a lower median product MASE in the nested backtest than 0, 0.1 or 0.2)."""
CONFORMAL_WINDOWS = {True: 6, False: 3}
"""Conformal calibration windows: aggregate series are few, so they get more (better 95% quantiles)."""
ADI_CUTOFF = 1.32
"""Syntetos & Boylan (2005): above this average inter-demand interval a series is intermittent."""


def n_jobs(series: int) -> int:
    """Worker processes: up to 2 for many series; 1 for few, where starting processes costs more than it saves."""
    return max(1, min(2, os.cpu_count() or 1)) if series >= 1000 else 1


def dense_weekly(weekly: pd.DataFrame, end_week: pd.Timestamp, value: str = "units", start: pd.Timestamp | None = None,
                 min_weeks: int = MIN_WEEKS) -> pd.DataFrame:
    """statsforecast's long format (unique_id, ds, y) from sparse weekly rows (series_id, week, value):
    every week from the series' first sale (or `start`) to `end_week` inclusive, zeros where nothing sold,
    padded with leading zeros to at least `min_weeks` weeks."""
    w = weekly[["series_id", "week", value]].copy()
    w["week"] = pd.to_datetime(w["week"])
    w = w[w["week"] <= end_week]
    if w.empty:
        return pd.DataFrame({"unique_id": pd.Series(dtype=str), "ds": pd.Series(dtype="datetime64[ns]"),
                             "y": pd.Series(dtype=float)})
    first = w.groupby("series_id")["week"].min()
    if start is not None:
        first[:] = pd.Timestamp(start)
    first = first.clip(upper=end_week - pd.Timedelta(weeks=min_weeks - 1))
    ids = first.index.to_numpy()
    n = ((end_week - first) / pd.Timedelta(weeks=1)).astype(int).to_numpy() + 1
    uid = np.repeat(ids, n)
    offs = np.concatenate([np.arange(k) for k in n])
    ds = np.repeat(first.to_numpy(), n) + offs * np.timedelta64(7, "D")
    frame = pd.DataFrame({"unique_id": uid, "ds": ds})
    vals = w.rename(columns={"series_id": "unique_id", "week": "ds", value: "y"})
    frame = frame.merge(vals, on=["unique_id", "ds"], how="left")
    frame["y"] = frame["y"].fillna(0.0).astype(float)
    return frame.sort_values(["unique_id", "ds"], kind="stable").reset_index(drop=True)


def classify(y: pd.DataFrame) -> pd.Series:
    """ADI per series (weeks per week with demand); > ADI_CUTOFF means intermittent."""
    g = y.assign(nz=y["y"] > 0).groupby("unique_id")
    return g.size() / g["nz"].sum().clip(lower=1)


def _models(names: list[str], h: int, aggregate: bool, intervals: bool, ci_windows: int = 2):
    from statsforecast.models import (ADIDA, IMAPA, TSB, AutoETS, CrostonOptimized, SeasonalNaive,
                                      WindowAverage)
    from statsforecast.utils import ConformalIntervals

    ci = ConformalIntervals(h=h, n_windows=ci_windows) if intervals else None
    make = {
        "CrostonOptimized": lambda: CrostonOptimized(prediction_intervals=ci),
        "ADIDA": lambda: ADIDA(prediction_intervals=ci),
        "IMAPA": lambda: IMAPA(prediction_intervals=ci),
        "TSB": lambda: TSB(alpha_d=0.1, alpha_p=0.1, prediction_intervals=ci),
        "AutoETS": lambda: AutoETS(model="ZZN" if aggregate else "ANN", prediction_intervals=ci),
        "SeasonalNaive": lambda: SeasonalNaive(season_length=SEASON, prediction_intervals=ci),
        "MovingAverage": lambda: WindowAverage(window_size=13, alias="MovingAverage", prediction_intervals=ci),
    }
    return [make[n]() for n in names]


def _run(y: pd.DataFrame, names: list[str], h: int, aggregate: bool, *, cv_windows: int = 0, step: int = 13,
         intervals: bool = True, max_ci_windows: int | None = None) -> pd.DataFrame:
    """Forecast (cv_windows = 0) or rolling-origin cross-validation of the named statsforecast models, with
    ETS+SNaive added from its parts; output columns <method>, <method>-lo-80 ... clipped at zero."""
    from statsforecast import StatsForecast
    from statsforecast.models import Naive

    base = [n for n in names if n != "ETS+SNaive"]
    if "ETS+SNaive" in names:
        base = list(dict.fromkeys(base + ["AutoETS", "SeasonalNaive"]))
    shortest = int(y.groupby("unique_id").size().min()) - (cv_windows - 1) * step - (h if cv_windows else 0)
    ci_windows = max(2, min(max_ci_windows or CONFORMAL_WINDOWS[aggregate], (shortest - 1) // h))
    if "SeasonalNaive" in base and "ETS+SNaive" not in names:  # the baseline's own windows need a season before them
        ci_windows = max(2, min(ci_windows, (shortest - SEASON - 1) // h))
    sf = StatsForecast(models=_models(base, h, aggregate, intervals, ci_windows), freq="W-MON", n_jobs=n_jobs(y["unique_id"].nunique()),
                       fallback_model=Naive())
    level = list(LEVELS) if intervals else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if cv_windows:
            out = sf.cross_validation(h=h, df=y, n_windows=cv_windows, step_size=step, level=level)
        else:
            out = sf.forecast(h=h, df=y, level=level)
    out = out.reset_index() if "unique_id" not in out.columns else out
    if "ETS+SNaive" in names:
        combo = (out["AutoETS"] + out["SeasonalNaive"]) / 2
        out["ETS+SNaive"] = combo
        for suffix in ([f"-lo-{lv}" for lv in LEVELS] + [f"-hi-{lv}" for lv in LEVELS] if intervals else []):
            out[f"ETS+SNaive{suffix}"] = combo + (out[f"AutoETS{suffix}"] - out["AutoETS"])
    num = [c for c in out.columns if c not in ("unique_id", "ds", "cutoff", "y")]
    out[num] = out[num].clip(lower=0.0)
    return out


def candidates(y: pd.DataFrame, aggregate: bool) -> dict[str, list[str]]:
    """Candidate methods per series id (see the module docstring)."""
    adi = classify(y)
    length = y.groupby("unique_id").size()
    out = {}
    for uid in adi.index:
        if adi[uid] > ADI_CUTOFF:
            names = list(INTERMITTENT)
        else:
            names = ["AutoETS"] + (["ETS+SNaive"] if length[uid] > SEASON + 13 else [])
            if not aggregate:  # a smooth product is still low-volume: the smoothing methods stay candidates
                names += list(INTERMITTENT)
        out[uid] = names
    return out


def backtest_errors(cv: pd.DataFrame, methods: list[str], scale: pd.Series | None = None) -> pd.DataFrame:
    """Long table per series, cutoff and method: mae, mase (when `scale` is given), covered80/95 shares."""
    rows = []
    for m in methods:
        if m not in cv.columns:
            continue
        e = cv.assign(ae=(cv[m] - cv["y"]).abs())
        cols = {"ae": "mean"}
        for lv in LEVELS:
            if f"{m}-lo-{lv}" in cv.columns:
                lo, hi = cv[f"{m}-lo-{lv}"], cv[f"{m}-hi-{lv}"]
                inside = ((cv["y"] >= lo - 1e-9) & (cv["y"] <= hi + 1e-9)).astype(float)
                e[f"in{lv}"] = inside.where(lo.notna() & hi.notna())  # no interval: not scored
                cols[f"in{lv}"] = "mean"
        g = e.groupby(["unique_id", "cutoff"]).agg(cols).reset_index().rename(
            columns={"ae": "mae", "in80": "coverage80", "in95": "coverage95"})
        g["method"] = m
        rows.append(g)
    out = pd.concat(rows, ignore_index=True)
    if scale is not None:
        out["mase"] = out["mae"] / out.set_index(["unique_id", "cutoff"]).index.map(scale).to_numpy(float)
    return out


def naive_scale(y: pd.DataFrame, cutoffs) -> pd.Series:
    """MASE denominators: per series and cutoff, the mean absolute one-step change of y before the cutoff
    (inclusive of the cutoff week, the last one the forecaster saw)."""
    parts = []
    y = y.sort_values(["unique_id", "ds"])
    d = y.assign(diff=y.groupby("unique_id")["y"].diff().abs())
    for c in pd.to_datetime(pd.Series(list(cutoffs))).unique():
        s = d[d["ds"] <= c].groupby("unique_id")["diff"].mean()
        parts.append(pd.DataFrame({"unique_id": s.index, "cutoff": c, "scale": s.to_numpy()}))
    sc = pd.concat(parts, ignore_index=True)
    sc = sc[sc["scale"] > 0]
    return sc.set_index(["unique_id", "cutoff"])["scale"]


def choose(errors: pd.DataFrame, allowed: dict[str, list[str]], margin: float = MARGIN) -> pd.Series:
    """Per series, the allowed candidate with the lowest mean backtest MAE — but only when it beats the
    class default by more than `margin` (30%); otherwise the class default. The class default (per
    candidate set) is the method with the lowest median relative error (MAE / the series' best MAE) over all
    series of the class: a few noisy windows of one series rarely justify leaving the method that works best
    across similar series (a guard against selection noise, cf. Fildes & Petropoulos 2015)."""
    e = errors.groupby(["unique_id", "method"])["mae"].mean().reset_index()
    ok = np.array([m in allowed.get(u, ()) for u, m in zip(e["unique_id"], e["method"])], dtype=bool)
    e = e[ok]
    if e.empty:
        return pd.Series(dtype=object)
    order = {m: i for i, m in enumerate(("AutoETS", "ETS+SNaive") + INTERMITTENT)}
    e = e.assign(rank=e["method"].map(order).fillna(99),
                 cls=e["unique_id"].map(lambda u: "|".join(allowed.get(u, ()))))
    e["rel"] = e["mae"] / e.groupby("unique_id")["mae"].transform("min").where(lambda v: v > 0, 1.0)
    e.loc[e["mae"] == 0, "rel"] = 1.0
    default = (e.groupby(["cls", "method"]).agg(rel=("rel", "median"), rank=("rank", "first")).reset_index()
               .sort_values(["cls", "rel", "rank"]).drop_duplicates("cls").set_index("cls")["method"])
    best = e.sort_values(["unique_id", "mae", "rank"]).drop_duplicates("unique_id").set_index("unique_id")
    dflt = best["cls"].map(default)
    dmae = e.set_index(["unique_id", "method"])["mae"]
    dflt_mae = np.array([dmae.get((u, m), np.inf) for u, m in zip(best.index, dflt)], dtype=float)
    keep = best["mae"].to_numpy(float) < (1 - margin) * dflt_mae
    return pd.Series(np.where(keep, best["method"].to_numpy(), dflt.to_numpy()), index=best.index, dtype=object)


@dataclass
class SeriesForecast:
    forecasts: pd.DataFrame
    """series_id, week, forecast, lo80, hi80, lo95, hi95, method."""
    selection: pd.DataFrame
    """series_id, method, backtest_mae, adi, weeks: the choice per series and the backtest error behind it."""


def forecast_series(y: pd.DataFrame, h: int = 13, aggregate: bool = False, select_windows: int = 2) -> SeriesForecast:
    """Choose a method per series by a rolling-origin backtest (`select_windows` origins 13 weeks apart) and
    forecast `h` weeks with 80% and 95% conformal intervals from the chosen method."""
    if y.empty:
        empty = pd.DataFrame(columns=["series_id", "week", "forecast", "lo80", "hi80", "lo95", "hi95", "method"])
        return SeriesForecast(empty, pd.DataFrame(columns=["series_id", "method", "backtest_mae", "adi", "weeks"]))
    allowed = candidates(y, aggregate)
    all_names = sorted({m for v in allowed.values() for m in v})
    length = y.groupby("unique_id").size()
    can_cv = length[length > select_windows * 13 + 13].index
    chosen = pd.Series({u: allowed[u][0] for u in allowed}, dtype=object)
    mae = pd.Series(np.nan, index=chosen.index)
    if len(can_cv):
        groups: dict[tuple[str, ...], list[str]] = {}
        for u in can_cv:
            groups.setdefault(tuple(allowed[u]), []).append(u)
        errs = []
        for names, ids in groups.items():  # each series runs only its own candidates
            if len(names) == 1:
                continue
            cv = _run(y[y["unique_id"].isin(ids)], list(names), 13, aggregate, cv_windows=select_windows,
                      intervals=False)
            errs.append(backtest_errors(cv, list(names)))
        if errs:
            err = pd.concat(errs, ignore_index=True)
            best = choose(err, allowed)
            chosen.loc[best.index] = best
            m = err.groupby(["unique_id", "method"])["mae"].mean()
            mae.loc[best.index] = [m[(u, b)] for u, b in best.items()]
    parts = []
    # series long enough for more conformal windows get them (better 95% quantiles), the rest the minimum
    long = (length.reindex(chosen.index) > (CONFORMAL_WINDOWS[True] * 13 + 13)).map({True: "long", False: "short"})
    for (method, size), ids in chosen.groupby([chosen, long]).groups.items():
        fc = _run(y[y["unique_id"].isin(list(ids))], [method], h, aggregate,
                  max_ci_windows=CONFORMAL_WINDOWS[True] if size == "long" else CONFORMAL_WINDOWS[aggregate])
        parts.append(pd.DataFrame({
            "series_id": fc["unique_id"].to_numpy(), "week": pd.to_datetime(fc["ds"]).to_numpy(),
            "forecast": fc[method].to_numpy(float),
            "lo80": fc[f"{method}-lo-80"].to_numpy(float), "hi80": fc[f"{method}-hi-80"].to_numpy(float),
            "lo95": fc[f"{method}-lo-95"].to_numpy(float), "hi95": fc[f"{method}-hi-95"].to_numpy(float),
            "method": method}))
    forecasts = pd.concat(parts, ignore_index=True).sort_values(["series_id", "week"], kind="stable")
    adi = classify(y)
    selection = pd.DataFrame({"series_id": chosen.index, "method": chosen.to_numpy(), "backtest_mae": mae.to_numpy(),
                              "adi": adi.reindex(chosen.index).to_numpy(), "weeks": length.reindex(chosen.index).to_numpy()})
    return SeriesForecast(forecasts.reset_index(drop=True), selection)


def bottom_up(expected_orders_per_week: pd.DataFrame, customer_product: pd.DataFrame,
              registered_share: pd.Series | None = None) -> pd.Series:
    """Expected units per week per product from the customer level.

    expected_orders_per_week: customer_id, rate (expected orders per week);
    customer_product: customer_id, product_id, units_per_order (the customer's units of the product per order);
    registered_share: per product, the share of its units bought by registered customers (guests' demand is
    added back by dividing by it). Returns units per week indexed by product_id."""
    j = customer_product.merge(expected_orders_per_week, on="customer_id", how="inner")
    units = (j["rate"].to_numpy(float) * j["units_per_order"].to_numpy(float))
    per = pd.Series(units, index=j["product_id"].to_numpy()).groupby(level=0).sum()
    if registered_share is not None:
        share = registered_share.reindex(per.index).fillna(1.0).clip(lower=0.05)
        per = per / share
    return per


def reconcile(forecasts: pd.DataFrame, bottom_up_weekly: pd.Series) -> pd.DataFrame:
    """Add bottom_up (units per week) and reconciled (the series forecast's shape at the mean of the two
    13-week levels, see the module docstring) to a forecasts frame keyed by series_id."""
    f = forecasts.copy()
    bu = f["series_id"].map(bottom_up_weekly).astype(float)
    f["bottom_up"] = bu
    tot = f.groupby("series_id")["forecast"].transform("sum")
    bu_tot = bu * f.groupby("series_id")["week"].transform("count")
    ratio = np.where(tot > 0, bu_tot / tot.where(tot > 0, 1.0), np.nan)
    f["reconciled"] = np.where(bu.notna() & (tot > 0), f["forecast"] * (1 + ratio) / 2,
                               np.where(bu.notna(), (f["forecast"] + bu) / 2, f["forecast"]))
    return f
