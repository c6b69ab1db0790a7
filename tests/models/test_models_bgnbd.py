"""BG/NBD: published CDNOW results (Fader, Hardie & Lee 2005) and prediction properties."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loyalist.models import BGNBD, ModelInputError, NotFittedError
from loyalist.models._base import compress
from models_testdata import CALIBRATION_END, cdnow_daily, cdnow_summary

PUBLISHED = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}


@pytest.fixture(scope="module")
def cdnow():
    return cdnow_summary()


@pytest.fixture(scope="module")
def fitted(cdnow):
    return BGNBD().fit(cdnow)


def test_cdnow_summary_matches_the_papers_sample(cdnow):
    assert len(cdnow) == 2357
    assert int((cdnow.frequency > 0).sum()) == 946
    assert cdnow["T"].max() == pytest.approx(38.857, abs=1e-3)
    assert (cdnow.recency <= cdnow["T"]).all()


def test_reproduces_published_estimates(fitted):
    assert fitted.converged_
    for k, v in PUBLISHED.items():
        assert fitted.params_[k] == pytest.approx(v, rel=2e-3), k
    assert fitted.log_likelihood_ == pytest.approx(-9582.43, abs=0.01)
    assert fitted.n_customers_ == 2357


def test_log_likelihood_total_matches_per_customer_sum(fitted, cdnow):
    per = fitted.log_likelihood(cdnow.frequency, cdnow.recency, cdnow["T"])
    assert per.shape == (2357,)
    assert per.sum() == pytest.approx(fitted.log_likelihood_, rel=1e-12)


def test_standard_errors_positive_and_finite(fitted):
    se = fitted.standard_errors_
    assert set(se) == set(PUBLISHED)
    for k, v in se.items():
        assert np.isfinite(v) and v > 0, k
        assert v < fitted.params_[k]  # all four parameters are well identified on CDNOW
    summary = fitted.summary()
    assert list(summary.index) == ["r", "alpha", "a", "b"]
    assert (summary.lower_95 < summary.estimate).all() and (summary.estimate < summary.upper_95).all()


def test_arrays_dataframe_and_weights_give_the_same_fit(fitted, cdnow):
    arrays = BGNBD().fit(cdnow.frequency.to_numpy(), cdnow.recency.to_numpy(), cdnow["T"].to_numpy())
    pat = compress(cdnow.frequency.to_numpy(), cdnow.recency.to_numpy(), cdnow["T"].to_numpy())
    x, tx, T = pat.columns
    weighted = BGNBD().fit(x, tx, T, weights=pat.counts)
    table = pd.DataFrame({"frequency": x, "recency": tx, "T": T, "weights": pat.counts})
    from_df = BGNBD().fit(table)  # weights column picked up
    assert pat.size < len(cdnow)
    for other in (arrays, weighted, from_df):
        assert other.log_likelihood_ == pytest.approx(fitted.log_likelihood_, abs=1e-6)
        for k in PUBLISHED:
            assert other.params_[k] == pytest.approx(fitted.params_[k], rel=1e-5)
    assert weighted.n_customers_ == 2357


def test_hardie_conditional_expectation_and_population_curve():
    model = BGNBD.from_params(**PUBLISHED)
    # FHL 2005, section 5: customer with x=2, t_x=30.43, T=38.86 expects 1.226 purchases in 39 weeks
    e = model.conditional_expected_number_of_purchases_up_to_time(39, 2, 30.43, 38.86)
    assert float(e) == pytest.approx(1.226, abs=5e-4)
    # eq. (7), per customer: E[X(78)] = 1.86 (cumulative repeat purchases over the 78 weeks)
    curve = model.expected_number_of_purchases_up_to_time(np.array([0.0, 39.0, 78.0]))
    assert curve[0] == 0.0
    assert curve[2] == pytest.approx(1.8605, abs=1e-4)
    assert curve[1] < curve[2]
    # mpmath reference (40 digits) of eq. (7) at t = 78
    assert curve[2] == pytest.approx(1.8605190579427686, rel=1e-12)


def test_probability_alive_properties():
    model = BGNBD.from_params(**PUBLISHED)
    p = model.conditional_probability_alive([0, 2, 2, 20], [0, 30.43, 5.0, 38.0], [38.86, 38.86, 38.86, 38.86])
    assert p[0] == 1.0  # no repeat purchase: cannot have dropped out in the BG/NBD
    assert 0 < p[2] < p[1] < 1  # long silence since the last purchase lowers P(alive)
    # closed form at the published parameters
    ref = 1 / (1 + 0.793 / (2.426 + 2 - 1) * ((4.414 + 38.86) / (4.414 + 30.43)) ** (0.243 + 2))
    assert p[1] == pytest.approx(ref, rel=1e-12)


def test_probability_of_purchase_within():
    model = BGNBD.from_params(**PUBLISHED)
    t = np.array([0.0, 1.0, 10.0, 39.0, 1e6])
    p = model.probability_of_purchase_within(t, 2, 30.43, 38.86)
    alive = model.conditional_probability_alive(2, 30.43, 38.86)
    assert p[0] == 0.0
    assert np.all(np.diff(p) > 0)
    assert p[-1] == pytest.approx(alive, rel=1e-6)  # an active customer eventually buys again
    # definition: P(alive) * (1 - E[exp(-lambda t)]) with lambda ~ Gamma(r+x, alpha+T)
    lam_term = 1 - ((4.414 + 38.86) / (4.414 + 38.86 + 39.0)) ** (0.243 + 2)
    assert p[3] == pytest.approx(alive * lam_term, rel=1e-12)
    # a purchase within t is never more likely than the expected number of purchases
    e = model.conditional_expected_number_of_purchases_up_to_time(t[1:4], 2, 30.43, 38.86)
    assert np.all(p[1:4] <= e)


def test_predictions_vectorised_and_broadcast(fitted, cdnow):
    x, tx, T = cdnow.frequency, cdnow.recency, cdnow["T"]
    for f in (fitted.conditional_probability_alive,):
        out = f(x, tx, T)
        assert out.shape == (2357,) and np.all((out > 0) & (out <= 1))
    e = fitted.conditional_expected_number_of_purchases_up_to_time(39, x, tx, T)
    assert e.shape == (2357,) and np.all(np.isfinite(e)) and np.all(e >= 0)
    # the 39-week holdout (1997-10-01 .. 1998-06-30) has 1,882 purchase days in the data; the
    # aggregate conditional forecast is close (BG/NBD slightly under-forecasts CDNOW, FHL 2005)
    daily = cdnow_daily()
    actual = int((daily["date"] > CALIBRATION_END).sum())
    assert actual == 1882
    assert abs(e.sum() - actual) / actual < 0.15
    grid = fitted.conditional_expected_number_of_purchases_up_to_time(
        np.array([[1.0], [39.0]]), x.to_numpy()[None, :], tx.to_numpy()[None, :], T.to_numpy()[None, :]
    )
    assert grid.shape == (2, 2357) and np.all(grid[1] > grid[0])


def test_robust_for_heavy_buyers_and_long_histories():
    model = BGNBD.from_params(**PUBLISHED)
    x = np.array([5000.0, 5000.0, 0.0, 30000.0])
    tx = np.array([9999.0, 100.0, 0.0, 1e6])
    T = np.array([10000.0, 10000.0, 1e7, 1e6])
    ll = model.log_likelihood(x, tx, T)
    assert np.all(np.isfinite(ll))
    for t in (1.0, 52.0, 1e4, 1e7):
        e = model.conditional_expected_number_of_purchases_up_to_time(t, x, tx, T)
        p = model.probability_of_purchase_within(t, x, tx, T)
        assert np.all(np.isfinite(e)) and np.all(e >= 0)
        assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    a = model.conditional_probability_alive(x, tx, T)
    assert a[0] > 0.99 and a[1] < 1e-100  # recent heavy buyer alive; long-silent one gone
    # a steady heavy buyer keeps buying at about x/T per week
    e = model.conditional_expected_number_of_purchases_up_to_time(10.0, 5000, 9999.9, 10000)
    assert float(e) == pytest.approx(5.0, rel=0.01)
    assert np.all(np.isfinite(model.expected_number_of_purchases_up_to_time([1e-9, 1.0, 1e8])))


def test_fit_with_extreme_customers_stays_finite():
    rng = np.random.default_rng(3)
    x = rng.poisson(0.5, 500).astype(float)
    T = np.full(500, 40.0)
    tx = np.where(x > 0, rng.uniform(1, 40, 500), 0.0)
    x[0], tx[0], T[0] = 5000, 9999, 10000
    m = BGNBD().fit(x, tx, T)
    assert np.isfinite(m.log_likelihood_)
    assert all(np.isfinite(v) and v > 0 for v in m.params_.values())


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(frequency=[-1, 0], recency=[0, 0], T=[5, 5]), "frequency must be non-negative"),
        (dict(frequency=[1, 0], recency=[6, 0], T=[5, 5]), "recency must not exceed T"),
        (dict(frequency=[0, 0], recency=[2, 0], T=[5, 5]), "recency must be 0 when frequency is 0"),
        (dict(frequency=[np.nan, 0], recency=[0, 0], T=[5, 5]), "NaN"),
        (dict(frequency=[1.5, 0], recency=[1, 0], T=[5, 5]), "whole number"),
        (dict(frequency=[1, 0], recency=[1, 0], T=[5]), "same length"),
        (dict(frequency=[1, 0], recency=[1, 0], T=[5, -1]), "T must be non-negative"),
    ],
)
def test_invalid_inputs_raise_clear_value_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        BGNBD().fit(bad["frequency"], bad["recency"], bad["T"])


def test_dataframe_missing_columns_and_misc_errors():
    with pytest.raises(ModelInputError, match="lacks column"):
        BGNBD().fit(pd.DataFrame({"frequency": [1], "recency": [1]}))
    with pytest.raises(ValueError, match="weights must be non-negative"):
        BGNBD().fit([1, 0], [1, 0], [5, 5], weights=[1, -1])
    with pytest.raises(NotFittedError, match="call fit"):
        BGNBD().conditional_probability_alive(1, 1, 5)
    with pytest.raises(ModelInputError, match="parameters are"):
        BGNBD.from_params(r=1, alpha=1, a=1)
    with pytest.raises(ValueError, match="penalizer"):
        BGNBD(penalizer=-1).fit([1, 0], [1, 0], [5, 5])


def test_init_stores_hyperparameters_only():
    m = BGNBD(penalizer=0.1, max_iter=50, tol=1e-6)
    assert (m.penalizer, m.max_iter, m.tol) == (0.1, 50, 1e-6)
    assert not hasattr(m, "params_") and not hasattr(m, "standard_errors_")


def test_penalizer_shrinks_parameters(cdnow, fitted):
    pen = BGNBD(penalizer=0.05).fit(cdnow)
    assert pen.log_likelihood_ < fitted.log_likelihood_
    assert sum(v**2 for v in pen.params_.values()) < sum(v**2 for v in fitted.params_.values())


def test_expectation_when_dropout_law_is_very_concentrated():
    """Real data can drive a and b to thousands (dropout probability ~ constant): the conditional
    expectation stays finite, positive, and agrees with the series / 2F1 forms where those still work."""
    import numpy as np

    from loyalist.models import bgnbd as m

    u = np.array([0.01, 0.1, 0.4, 1.0, 3.0])
    R = np.array([1.5, 3.0, 10.0, 2.0, 50.0])
    B = np.array([300.0, 500, 1000, 400, 2000])
    for a in (40.0, 80.0):
        reference = np.concatenate([m._series_branch(u[:3], R[:3], a, B[:3]), m._hyp2f1_branch(u[3:], R[3:], a, B[3:])])
        assert np.allclose(m._quadrature_branch(u, R, a, B), reference, rtol=1e-10)
    model = m.BGNBD.from_params(r=0.83, alpha=70.8, a=4211.56, b=1508180.0)
    f = np.array([0.0, 1.0, 5.0, 40.0])
    rec = np.array([0.0, 10.0, 100.0, 300.0])
    T = np.array([100.0, 100.0, 200.0, 320.0])
    e = model.conditional_expected_number_of_purchases_up_to_time(90.0, f, rec, T)
    assert np.all(np.isfinite(e)) and np.all(e > 0) and np.all(np.diff(e) > 0)
    # Dropout only removes purchases: below the posterior mean rate times t, and close to it when p ~ 0.003.
    assert 0.9 < e[-1] / ((0.83 + 40) / (70.8 + 320) * 90) < 1.0


def test_series_runs_equal_term_by_term_sum_and_scipy_hyp2f1():
    """Scoring many customers sums the FHL 2005 eq. (10) series per frequency by Horner's rule
    (``_series_runs``); it must equal the term-by-term loop and the closed form with scipy's
    ``hyp2f1`` (the form lifetimes uses)."""
    from scipy.special import hyp2f1

    from loyalist.models import BGNBD
    from loyalist.models.bgnbd import _series_sum

    rng = np.random.default_rng(5)
    n = 20000
    x = rng.poisson(2.0, n).astype(float)
    T = rng.uniform(26.0, 104.0, n)
    tx = np.where(x > 0, T * rng.uniform(0, 1, n), 0.0)
    m = BGNBD.from_params(r=0.25, alpha=4.0, a=0.8, b=2.5)
    r, alpha, a, b = 0.25, 4.0, 0.8, 2.5
    t = 13.0
    got = m.conditional_expected_number_of_purchases_up_to_time(t, x, tx, T)
    # closed form, FHL 2005 eq. (10)
    z = t / (alpha + T + t)
    pa = 1.0 / (1.0 + (x > 0) * a / (b + x - 1.0) * ((alpha + T) / (alpha + tx)) ** (r + x))
    want = ((a + b + x - 1.0) / (a - 1.0)
            * (1.0 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp2f1(r + x, b + x, a + b + x - 1.0, z)) * pa)
    np.testing.assert_allclose(got, want, rtol=1e-11)
    # the loop it replaces, on the same inputs
    eps = a - 1.0
    u = t / (alpha + T)
    L1 = -np.log1p(u)
    zz = u / (1.0 + u)
    C = eps + b + x
    from scipy import special as sc

    head = -C * L1 * sc.exprel(eps * L1)
    loop = (head - np.exp(eps * L1) * _series_sum(zz, r + x, eps, C, head)) * pa
    np.testing.assert_allclose(got, loop, rtol=1e-13)


def test_scoring_whole_days_computed_once_per_distinct_row_equals_per_customer():
    """With whole-day T the bracket of eq. (10) is computed once per distinct (x, T)
    (``repeated_rows``): the result must equal the customer-by-customer evaluation."""
    from loyalist.models import BGNBD
    from loyalist.models._base import repeated_rows
    from loyalist.models.bgnbd import expected_purchases_while_active

    rng = np.random.default_rng(9)
    n = 40000
    x = rng.poisson(1.5, n).astype(float)
    T = rng.integers(180, 730, n).astype(float)
    tx = np.where(x > 0, np.floor(T * rng.uniform(0, 1, n)), 0.0)
    assert repeated_rows(np.full(n, 90.0), x, T) is not None  # the shortcut is taken
    m = BGNBD.from_params(r=0.25, alpha=28.0, a=0.8, b=2.5)
    got = m.conditional_expected_number_of_purchases_up_to_time(90.0, x, tx, T)
    active = expected_purchases_while_active(np.full(n, 90.0), 0.25 + x, 0.8, 2.5 + x, 28.0 + T)
    np.testing.assert_allclose(got, m.conditional_probability_alive(x, tx, T) * active, rtol=1e-14)
