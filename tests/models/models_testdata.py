"""Real-data fixtures for the model tests: the CDNOW 1/10 sample and the FHS donation data.

The CDNOW calibration summary follows Fader, Hardie & Lee (2005): 39-week calibration period
1997-01-01 .. 1997-09-30, weekly units, purchases on the same day merged into one; frequency =
number of repeat purchase days in calibration, recency = last minus first purchase (weeks),
T = 1997-09-30 minus first purchase (weeks).  ``monetary_value`` is the mean value of the repeat
purchase days in calibration (0 without repeats), the input of the published Gamma-Gamma fit.
"""

from __future__ import annotations

from functools import lru_cache

import pandas as pd

from conftest import shared_file

CALIBRATION_END = pd.Timestamp("1997-09-30")


@lru_cache(maxsize=1)
def cdnow_daily() -> pd.DataFrame:
    """One row per customer and purchase day: ``id, date, value`` (same-day purchases summed)."""
    path = shared_file("cdnow", "CDNOW_sample.txt.gz")
    raw = pd.read_csv(
        path, sep=r"\s+", header=None, names=["id", "sample_id", "date", "cds", "value"],
        dtype={"date": str},
    )
    raw["date"] = pd.to_datetime(raw["date"], format="%Y%m%d")
    return raw.groupby(["id", "date"], as_index=False).agg(value=("value", "sum"))


@lru_cache(maxsize=1)
def cdnow_summary() -> pd.DataFrame:
    """Calibration summary indexed by customer id: frequency, recency, T, monetary_value."""
    daily = cdnow_daily()
    first = daily.groupby("id")["date"].min()
    cal = daily[daily["date"] <= CALIBRATION_END].merge(first.rename("first"), left_on="id", right_index=True)
    g = cal.groupby("id")
    repeat = cal[cal["date"] > cal["first"]].groupby("id")["value"].mean()
    out = pd.DataFrame(
        {
            "frequency": (g.size() - 1).astype(float),
            "recency": (g["date"].max() - first).dt.days / 7.0,
            "T": (CALIBRATION_END - first).dt.days / 7.0,
        }
    )
    out["monetary_value"] = repeat.reindex(out.index).fillna(0.0)
    return out


@lru_cache(maxsize=1)
def donations() -> pd.DataFrame:
    """FHS (2010) donation data: frequency, recency, periods, weights (22 patterns, 11,104 donors)."""
    return pd.read_csv(shared_file("donations", "donations.csv"))
