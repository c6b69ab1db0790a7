"""Acquisition cohorts against an independent pandas computation on the raw demo files; the cohorts command."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO, demo_purchases
from typer.testing import CliRunner

from loyalist.cli import app
from loyalist.ingest import ingest
from loyalist.insights import aggregate as agg
from loyalist.store import open_store

AS_OF = dt.date(2011, 12, 10)


def occasions() -> pd.DataFrame:
    """Purchase occasions (customer x day, positive product lines of non-cancelled invoices, guests out)."""
    df = demo_purchases()
    df["spend"] = df["Quantity"] * df["Price"]
    return df.groupby(["customer_id", "day"], as_index=False)["spend"].sum()


@pytest.fixture(scope="module")
def store(demo_store):
    return demo_store


def test_cohort_retention_and_revenue_match_pandas(store):
    occ = occasions()
    occ["month"] = occ["day"].dt.to_period("M")
    occ["cohort"] = occ.groupby("customer_id")["month"].transform("min")
    occ["k"] = (occ["month"] - occ["cohort"]).apply(lambda x: x.n)
    size = occ.groupby("cohort")["customer_id"].nunique()
    active = occ.groupby(["cohort", "k"])["customer_id"].nunique()
    revenue = occ.groupby(["cohort", "k"])["spend"].sum()

    co = agg.compute_cohorts(store, AS_OF)
    co["cohort"] = pd.to_datetime(co["cohort_month"]).dt.to_period("M")
    assert co["cohort"].nunique() == len(size)
    assert co.groupby("cohort")["customers"].first().to_dict() == size.to_dict()
    m0 = co[co["months_since"] == 0]
    assert (m0["retention"] == 1.0).all()
    got = co.set_index(["cohort", "months_since"])
    for (c, k), n in active.items():
        assert got.loc[(c, k), "active"] == n
        assert got.loc[(c, k), "retention"] == pytest.approx(n / size[c])
        assert got.loc[(c, k), "revenue"] == pytest.approx(revenue[(c, k)], rel=1e-9, abs=1e-6)
    # months without purchases are present as zeros, up to the as-of month
    assert len(co) == sum((2011 - c.year) * 12 + 12 - c.month + 1 for c in size.index)
    assert (co.loc[~co.set_index(["cohort", "months_since"]).index.isin(active.index), "active"] == 0).all()
    # cumulative revenue per customer is the running sum
    first = co[co["cohort"] == size.index[0]]
    np.testing.assert_allclose(first["cumulative_revenue_per_customer"].to_numpy(),
                               np.cumsum(first["revenue"].to_numpy()) / size.iloc[0])


def test_no_month_without_an_observed_day(store):
    # as of the 1st of a month, that month was shown as 0% retention for every cohort (CDNOW as of 1998-07-01:
    # "M18 0%" for the January 1997 cohort); nothing of it was observed
    co = agg.compute_cohorts(store, dt.date(2011, 12, 1))
    months = pd.to_datetime(co["cohort_month"]).dt.to_period("M") + co["months_since"]
    assert months.max() == pd.Period("2011-11", "M")
    first = co[co["cohort_month"] == co["cohort_month"].min()]
    assert first["months_since"].max() == (2011 - 2009) * 12 + 11 - 12  # December 2009 to November 2011


def test_cohorts_command(store, tmp_path):
    db = tmp_path / "c.duckdb"
    s = open_store(db)
    ingest(s, DEMO)
    s.close()
    r = CliRunner().invoke(app, ["cohorts", "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert "retention by acquisition cohort" in r.stdout and "2009-12" in r.stdout
    assert (tmp_path / "c-reports" / f"cohorts_{AS_OF}" / "cohorts.png").exists()
    assert (tmp_path / "c-reports" / f"cohorts_{AS_OF}" / "cohorts.html").exists()
    out = tmp_path / "cohorts.csv"
    r = CliRunner().invoke(app, ["cohorts", "--db", str(db), "--out", str(out)])
    assert r.exit_code == 0, r.output
    f = pd.read_csv(out)
    assert {"cohort_month", "months_since", "customers", "retention", "revenue"} <= set(f.columns)
