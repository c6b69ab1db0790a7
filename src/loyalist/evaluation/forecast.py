"""Rolling-origin backtest of the weekly demand forecasts: MASE and interval coverage per method, against the
seasonal-naive and moving-average baselines, in one table.

Origins: `n_windows` cutoffs `step` weeks apart ending `h` weeks before the last complete week; at each origin
every method is fitted on the weeks up to it and forecasts the next `h` weeks (statsforecast
cross_validation, conformal 80% / 95% intervals from the data before the origin only).

"selected" is the forecast loyalist actually makes, scored honestly: at each evaluation origin the method of
each series is chosen from the errors of the earlier origins whose whole horizon had ended by then (nested, so
the choice never sees the weeks it is scored on). Only origins with at least one earlier completed origin are
evaluation origins; every method is scored on the same evaluation origins.

Series scored: those with a full season (52 weeks) of history before the first origin, so the seasonal naive
is defined at every origin (on Online Retail II most active products; products launched later are forecast
but not in this table). Coverage counts only the weeks where the method had an interval (the seasonal naive's
conformal windows need a season before each of them, so its coverage rests on fewer weeks). At each origin the
conformal intervals use the calibration windows that history allows (3 for most products at the earliest
origin); the production forecast uses up to 6 for series with more than 91 weeks.

Table `forecast_backtest` columns: level, method, series, mase_mean, mase_median, mae, coverage80,
coverage95, origins, h. For the total level mase_mean = mase_median = the total series' MASE over the
evaluation origins.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from loyalist.models.forecast import (BASELINES, INTERMITTENT, backtest_errors, candidates, choose, naive_scale,
                                      _run)


def rolling_backtest(y: pd.DataFrame, aggregate: bool, h: int = 13, n_windows: int = 7, step: int = 6
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics per method, per-series/origin errors incl. "selected") for one level's series."""
    allowed = candidates(y, aggregate)
    names = sorted({m for v in allowed.values() for m in v} | set(BASELINES))
    length = y.groupby("unique_id").size()
    y = y[y["unique_id"].isin(length[length > SEASON_MIN + (n_windows - 1) * step + h].index)]
    cv = _run(y, names, h, aggregate, cv_windows=n_windows, step=step)
    scale = naive_scale(y, cv["cutoff"].unique())
    err = backtest_errors(cv, names + ["ETS+SNaive"] if "ETS+SNaive" in cv.columns else names, scale)
    err = err.dropna(subset=["mase"])
    cutoffs = sorted(err["cutoff"].unique())
    sel_rows = []
    for c in cutoffs:
        seen = err[err["cutoff"] <= c - pd.Timedelta(weeks=h)]
        if seen.empty:
            continue
        pick = choose(seen[seen["method"].isin(set(INTERMITTENT) | {"AutoETS", "ETS+SNaive"})], allowed)
        now = err[err["cutoff"] == c]
        key = now["unique_id"].map(pick)
        sel_rows.append(now[now["method"].to_numpy() == key.to_numpy()].assign(method="selected"))
    if not sel_rows:
        raise ValueError("too little history for a rolling-origin backtest with nested selection")
    selected = pd.concat(sel_rows, ignore_index=True)
    eval_cutoffs = set(selected["cutoff"])
    err = pd.concat([err[err["cutoff"].isin(eval_cutoffs)], selected], ignore_index=True)
    # Every method on the same series and origins as "selected".
    keys = set(zip(selected["unique_id"], selected["cutoff"]))
    err = err[[k in keys for k in zip(err["unique_id"], err["cutoff"])]]
    per_series = err.groupby(["method", "unique_id"]).agg(mase=("mase", "mean"), mae=("mae", "mean"),
                                                          coverage80=("coverage80", "mean"),
                                                          coverage95=("coverage95", "mean")).reset_index()
    metrics = per_series.groupby("method").agg(
        series=("unique_id", "nunique"), mase_mean=("mase", "mean"), mase_median=("mase", "median"),
        mae=("mae", "mean"), coverage80=("coverage80", "mean"), coverage95=("coverage95", "mean")).reset_index()
    metrics["origins"] = len(eval_cutoffs)
    metrics["h"] = h
    return metrics, err


SEASON_MIN = 52


def backtest_levels(series: dict[str, pd.DataFrame], h: int = 13, n_windows: int = 7, step: int = 6) -> pd.DataFrame:
    """The one table of `forecast_backtest` for each level in `series` (level -> long y frame)."""
    parts = []
    for level, y in series.items():
        if y.empty:
            continue
        m, _ = rolling_backtest(y, aggregate=level != "product", h=h, n_windows=n_windows, step=step)
        parts.append(m.assign(level=level))
    if not parts:
        return pd.DataFrame(columns=["level", "method", "series", "mase_mean", "mase_median", "mae", "coverage80",
                                     "coverage95", "origins", "h"])
    out = pd.concat(parts, ignore_index=True)
    return out[["level", "method", "series", "mase_mean", "mase_median", "mae", "coverage80", "coverage95",
                "origins", "h"]]


def passes(table: pd.DataFrame) -> dict[str, bool]:
    """The issue's requirement: selected beats seasonal naive on MASE in total and on the median product."""
    out = {}
    for level, col in (("total", "mase_mean"), ("product", "mase_median")):
        t = table[table["level"] == level].set_index("method")
        if {"selected", "SeasonalNaive"} <= set(t.index):
            out[level] = bool(t.loc["selected", col] < t.loc["SeasonalNaive", col])
    return out


__all__ = ["rolling_backtest", "backtest_levels", "passes", "np"]
