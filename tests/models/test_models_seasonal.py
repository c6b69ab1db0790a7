"""Seasonal BG/NBD (BG/NBD in operational time): equivalences, gradient, parameter recovery, data statistic."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import approx_fprime
from seasonal_sim import AS_OF, TRUE_M, simulate_seasonal

from loyalist.models import BGNBD, ModelInputError
from loyalist.models.seasonal import MONTHS, SeasonalBGNBD, _days, month_days

TRUE = {"r": 0.5, "alpha": 20.0, "a": 0.7, "b": 3.0}


@pytest.fixture(scope="module")
def synthetic():
    return simulate_seasonal(20_000, 1, **TRUE)


def test_recovers_the_monthly_intensity_and_beats_the_plain_bgnbd(synthetic):
    x, first, last, by_month = synthetic
    m = SeasonalBGNBD().fit(x, first, last, AS_OF, by_month)
    assert m.converged_ and m.seen_months_.all()
    got = np.array([m.params_[k] for k in MONTHS])
    want = TRUE_M / np.exp(np.log(TRUE_M).mean())  # geometric mean 1
    np.testing.assert_allclose(got, want, rtol=0.05)
    assert m.params_["r"] == pytest.approx(TRUE["r"], rel=0.05)
    assert m.params_["a"] == pytest.approx(TRUE["a"], rel=0.1)
    assert m.log_likelihood_ > m.base_log_likelihood_ + 100


def test_flat_intensity_is_the_bgnbd_in_days(synthetic):
    x, first, last, _ = synthetic
    m = SeasonalBGNBD.from_params(**TRUE, **{k: 1.0 for k in MONTHS})
    bg = BGNBD.from_params(**TRUE)
    rec = (last - first).astype(float)
    T = (AS_OF - first).astype(float)
    np.testing.assert_allclose(m.conditional_expected_number_of_purchases_up_to_time(90, x, first, last, AS_OF),
                               bg.conditional_expected_number_of_purchases_up_to_time(90, x, rec, T), rtol=1e-12)
    np.testing.assert_allclose(m.probability_of_purchase_within(90, x, first, last, AS_OF),
                               bg.probability_of_purchase_within(90, x, rec, T), rtol=1e-12)
    np.testing.assert_allclose(m.conditional_probability_alive(x, first, last, AS_OF),
                               bg.conditional_probability_alive(x, rec, T), rtol=1e-12)


def test_analytic_gradient_matches_finite_differences(synthetic):
    x, first, last, _ = (v[:3000] if i < 3 else v for i, v in enumerate(synthetic))
    x = np.asarray(x)
    d0, d1 = _days(first), _days(last)
    end = int(_days([AS_OF])[0])
    DT, Dx = month_days(d0, np.full(d0.size, end)), month_days(d0, d1)
    seen = np.ones(12, bool)
    rep = np.full(12, x.sum() / 12)
    theta = np.r_[np.log([0.4, 15.0, 0.8, 2.5]), np.random.default_rng(0).normal(0, 0.3, 12)]
    f = lambda th: SeasonalBGNBD._loglik(th, x, Dx, DT, rep, seen)[0]
    g = SeasonalBGNBD._loglik(theta, x, Dx, DT, rep, seen)[1]
    np.testing.assert_allclose(g, approx_fprime(theta, f, 1e-6), rtol=1e-4, atol=1e-3 * np.abs(g).max())


def test_month_days_counts_calendar_days():
    s = _days(["2020-01-30", "2020-02-01"])
    e = _days(["2020-03-02", "2021-02-01"])
    d = month_days(s, e)
    assert d[0].tolist() == [2, 29, 1] + [0] * 9  # Jan 30-31, all of Feb 2020 (leap), Mar 1
    assert d[1].sum() == 366 and d[1][1] == 29 and d[1][0] == 31


def test_input_errors():
    with pytest.raises(ModelInputError, match="12"):
        SeasonalBGNBD().fit([1, 0], ["2020-01-01", "2020-02-01"], ["2020-01-05", "2020-02-01"], "2020-03-01", [1])
    with pytest.raises(ModelInputError, match="sums to"):
        SeasonalBGNBD().fit([1, 0], ["2020-01-01", "2020-02-01"], ["2020-01-05", "2020-02-01"], "2020-03-01",
                            [2] + [0] * 11)
    with pytest.raises(ModelInputError, match="as_of"):
        SeasonalBGNBD().fit([1, 0], ["2020-01-01", "2020-02-01"], ["2020-01-05", "2020-03-05"], "2020-03-01",
                            [1] + [0] * 11)


def test_repeat_purchases_by_month_matches_pandas():
    import duckdb
    import ibis

    from loyalist.backtest_seasonal import repeat_purchases_by_month

    rng = np.random.default_rng(3)
    n = 3000
    tx = pd.DataFrame({"customer_id": rng.integers(0, 400, n).astype(str),
                       "order_date": pd.Timestamp("2020-01-01") + pd.to_timedelta(rng.integers(0, 700, n), "D")
                       + pd.to_timedelta(rng.integers(0, 86400, n), "s"),
                       "amount": rng.gamma(2, 10, n)})
    for f in ("is_guest", "is_non_product", "is_cancellation", "is_return"):
        tx[f] = False
    con = duckdb.connect()
    con.register("v", tx)
    con.execute("CREATE TABLE transactions AS SELECT * FROM v")
    table = ibis.duckdb.from_connection(con).table("transactions")
    as_of = dt.date(2021, 6, 15)
    got = repeat_purchases_by_month(table, as_of)
    # independent: distinct (customer, day) before as_of, minus each customer's first day
    occ = tx[tx["order_date"] < pd.Timestamp(as_of)].assign(day=lambda d: d["order_date"].dt.normalize())
    occ = occ.drop_duplicates(["customer_id", "day"])
    rep = occ[occ["day"] > occ.groupby("customer_id")["day"].transform("min")]
    want = rep["day"].dt.month.value_counts().reindex(range(1, 13), fill_value=0).to_numpy(float)
    np.testing.assert_array_equal(got, want)
