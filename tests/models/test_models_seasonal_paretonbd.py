"""Seasonal Pareto/NBD (Pareto/NBD in operational time): equivalence with ParetoNBD when the intensity is flat,
analytic gradient vs central differences, recovery of a known monthly intensity from a simulation."""

from __future__ import annotations

import numpy as np
import pytest
from seasonal_sim import AS_OF, START, TRUE_M, simulate_seasonal

from loyalist.models import ParetoNBD
from loyalist.models.seasonal import MONTHS, SeasonalBGNBD, _days, month_days
from loyalist.models.seasonal_paretonbd import SeasonalParetoNBD

TRUE = {"r": 0.6, "alpha": 25.0, "s": 0.8, "beta": 300.0}


@pytest.fixture(scope="module")
def synthetic():
    return simulate_seasonal(20_000, 7, **TRUE)


def test_recovers_the_monthly_intensity_and_beats_the_plain_paretonbd(synthetic):
    x, first, last, by_month = synthetic
    m = SeasonalParetoNBD().fit(x, first, last, AS_OF, by_month)
    assert m.converged_ and m.seen_months_.all()
    got = np.array([m.params_[k] for k in MONTHS])
    want = TRUE_M / np.exp(np.log(TRUE_M).mean())  # geometric mean 1
    np.testing.assert_allclose(got, want, rtol=0.06)
    # alpha is in operational days: the mean intensity over the data is exp(-mean log TRUE_M) per calendar day
    assert m.params_["r"] == pytest.approx(TRUE["r"], rel=0.1)
    assert m.params_["s"] == pytest.approx(TRUE["s"], rel=0.25)
    assert m.log_likelihood_ > m.base_log_likelihood_ + 100


def test_flat_intensity_is_the_paretonbd_in_days(synthetic):
    x, first, last, _ = (v[:4000] if i < 3 else v for i, v in enumerate(synthetic))
    x = np.asarray(x)
    rec = (last - first).astype(float)
    T = (AS_OF - first).astype(float)
    m = SeasonalParetoNBD.from_params(**TRUE, **{k: 1.0 for k in MONTHS})
    pn = ParetoNBD.from_params(**TRUE)
    np.testing.assert_allclose(m.conditional_expected_number_of_purchases_up_to_time(90, x, first, last, AS_OF),
                               pn.conditional_expected_number_of_purchases_up_to_time(90, x, rec, T), rtol=1e-12)
    np.testing.assert_allclose(m.probability_of_purchase_within(90, x, first, last, AS_OF),
                               pn.probability_of_purchase_within(90, x, rec, T), rtol=1e-12)
    np.testing.assert_allclose(m.conditional_probability_alive(x, first, last, AS_OF),
                               pn.conditional_probability_alive(x, rec, T), rtol=1e-12)
    # the log-likelihood at a flat intensity is ParetoNBD's (the Jacobian term vanishes)
    d0, d1 = _days(first), _days(last)
    end = int(_days([AS_OF])[0])
    DT, Dx = month_days(d0, np.full(d0.size, end)), month_days(d0, d1)
    theta = np.r_[np.log([TRUE[k] for k in ("r", "alpha", "s", "beta")]), np.zeros(12)]
    rep = np.full(12, x.sum() / 12)
    ll, _ = SeasonalParetoNBD._loglik(theta, x, Dx, DT, rep, np.ones(12, bool))
    assert ll == pytest.approx(pn.log_likelihood(x, rec, T).sum(), rel=1e-12)


def test_flat_data_fit_equals_the_paretonbd_fit():
    """Without seasonality in the data the fitted intensity stays near flat and the fit near ParetoNBD's."""
    rng = np.random.default_rng(11)
    n = 6000
    first = START + rng.integers(0, 366, n).astype("timedelta64[D]")
    lam = rng.gamma(0.6, 1 / 25.0, n)
    mu = rng.gamma(0.8, 1 / 300.0, n)
    horizon = (AS_OF - first).astype(float)
    life = np.minimum(rng.exponential(1.0, n) / mu, horizon)
    # purchases as a Poisson process over the lifetime, on whole days (same-day purchases merged)
    k = rng.poisson(lam * life)
    rows = np.repeat(np.arange(n), k)
    offs = np.floor(rng.random(rows.size) * life[rows]).astype(int)
    keep = offs > 0
    uniq = np.unique(np.c_[rows[keep], offs[keep]], axis=0)
    x = np.bincount(uniq[:, 0], minlength=n).astype(float)
    last_off = np.zeros(n, int)
    np.maximum.at(last_off, uniq[:, 0], uniq[:, 1])
    last = first + last_off.astype("timedelta64[D]")
    rep_days = first[uniq[:, 0]] + uniq[:, 1].astype("timedelta64[D]")
    by_month = np.bincount(rep_days.astype("datetime64[M]").astype(int) % 12, minlength=12).astype(float)
    m = SeasonalParetoNBD().fit(x, first, last, AS_OF, by_month)
    months = np.array([m.params_[k] for k in MONTHS])
    assert np.all(np.abs(np.log(months)) < 0.12)
    assert m.log_likelihood_ - m.base_log_likelihood_ < 15  # 11 extra parameters, no seasonality
    assert m.params_["r"] == pytest.approx(m.base_params_["r"], rel=0.1)


def test_analytic_gradient_matches_central_differences(synthetic):
    x, first, last, _ = (v[:3000] if i < 3 else v for i, v in enumerate(synthetic))
    x = np.asarray(x)
    d0, d1 = _days(first), _days(last)
    end = int(_days([AS_OF])[0])
    DT, Dx = month_days(d0, np.full(d0.size, end)), month_days(d0, d1)
    seen = np.ones(12, bool)
    rep = np.full(12, x.sum() / 12)
    for point in ([0.4, 15.0, 0.8, 200.0], [1.5, 40.0, 0.3, 20.0]):  # alpha < beta and alpha > beta
        theta = np.r_[np.log(point), np.random.default_rng(0).normal(0, 0.3, 12)]
        g = SeasonalParetoNBD._loglik(theta, x, Dx, DT, rep, seen)[1]
        h = 1e-5
        fd = np.array([(SeasonalParetoNBD._loglik(theta + h * e, x, Dx, DT, rep, seen)[0]
                        - SeasonalParetoNBD._loglik(theta - h * e, x, Dx, DT, rep, seen)[0]) / (2 * h)
                       for e in np.eye(theta.size)])
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-5 * np.abs(g).max())


def test_the_seasonal_bgnbd_shares_the_operational_time_machinery(synthetic):
    """Both seasonal models compute operational times the same way (one implementation)."""
    _, first, last, _ = (v[:500] if i < 3 else v for i, v in enumerate(synthetic))
    months = {k: float(v) for k, v in zip(MONTHS, TRUE_M)}
    a = SeasonalParetoNBD.from_params(**TRUE, **months).operational(90, first, last, AS_OF)
    b = SeasonalBGNBD.from_params(r=0.5, alpha=20.0, a=0.7, b=3.0, **months).operational(90, first, last, AS_OF)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    # and an independent day-by-day sum of the intensity for the 90-day window
    days = np.arange(AS_OF, AS_OF + 90)
    assert a[2] == pytest.approx(TRUE_M[days.astype("datetime64[M]").astype(int) % 12].sum())
