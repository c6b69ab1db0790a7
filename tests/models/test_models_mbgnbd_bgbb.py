"""MBG/NBD on CDNOW (Batislam et al. 2007) and BG/BB on the donation data (Fader, Hardie & Shang 2010)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import special

from loyalist.models import BGBB, BGNBD, MBGNBD, ModelInputError
from models_testdata import cdnow_summary, donations

MBG_PUBLISHED = {"r": 0.525, "alpha": 6.183, "a": 0.891, "b": 1.614}
BGBB_PUBLISHED = {"alpha": 1.204, "beta": 0.750, "gamma": 0.657, "delta": 2.783}


# ---------------------------------------------------------------- MBG/NBD


@pytest.fixture(scope="module")
def mbg():
    return MBGNBD().fit(cdnow_summary())


def test_mbgnbd_reproduces_published_estimates(mbg):
    assert mbg.converged_
    for k, v in MBG_PUBLISHED.items():
        assert mbg.params_[k] == pytest.approx(v, rel=2e-3), k
    # slightly better than the BG/NBD's -9582.43 on the same data
    assert -9582.43 < mbg.log_likelihood_ < -9581.0
    assert all(np.isfinite(v) and v > 0 for v in mbg.standard_errors_.values())


def test_mbgnbd_predictions(mbg):
    s = cdnow_summary()
    per = mbg.log_likelihood(s.frequency, s.recency, s["T"])
    assert per.sum() == pytest.approx(mbg.log_likelihood_, rel=1e-12)
    a = mbg.conditional_probability_alive([0, 0, 3], [0, 0, 38], [1.0, 38.0, 38.0])
    assert a[0] < 1 and a[1] < a[0] and a[2] > a[1]  # unlike the BG/NBD, x=0 customers can be gone
    r, alpha, a_, b = mbg.params_.values()
    assert a[1] == pytest.approx(1 / (1 + a_ / b * ((alpha + 38) / alpha) ** r), rel=1e-12)
    e = mbg.conditional_expected_number_of_purchases_up_to_time([0.0, 10.0, 39.0], 2, 30.43, 38.86)
    p = mbg.probability_of_purchase_within([0.0, 10.0, 39.0], 2, 30.43, 38.86)
    assert e[0] == 0 and p[0] == 0 and np.all(p[1:] < e[1:]) and np.all(np.diff(e) > 0)
    # population E[X(t)] = b/(a-1) [1 - (alpha/(alpha+t))^r 2F1(r, b+1; a+b; t/(alpha+t))]
    t = 78.0
    ref = b / (a_ - 1) * (1 - (alpha / (alpha + t)) ** r * special.hyp2f1(r, b + 1, a_ + b, t / (alpha + t)))
    assert mbg.expected_number_of_purchases_up_to_time(t) == pytest.approx(ref, rel=1e-10)


def test_mbgnbd_robust_for_heavy_buyers():
    m = MBGNBD.from_params(**MBG_PUBLISHED)
    x, tx, T = np.array([5000.0, 0.0]), np.array([9999.0, 0.0]), np.array([10000.0, 1e7])
    assert np.all(np.isfinite(m.log_likelihood(x, tx, T)))
    for t in (1.0, 1e4, 1e7):
        assert np.all(np.isfinite(m.conditional_expected_number_of_purchases_up_to_time(t, x, tx, T)))
        assert np.all(np.isfinite(m.probability_of_purchase_within(t, x, tx, T)))


# ---------------------------------------------------------------- BG/BB


@pytest.fixture(scope="module")
def bgbb():
    return BGBB().fit(donations())


def test_bgbb_reproduces_published_estimates(bgbb):
    assert bgbb.converged_
    for k, v in BGBB_PUBLISHED.items():
        assert bgbb.params_[k] == pytest.approx(v, rel=2e-3), k
    assert bgbb.log_likelihood_ == pytest.approx(-33225.6, abs=0.05)  # FHS 2010 Table 2
    assert bgbb.n_customers_ == 11104
    assert all(np.isfinite(v) and v > 0 for v in bgbb.standard_errors_.values())


def test_bgbb_accepts_n_periods_and_arrays(bgbb):
    d = donations()
    arrays = BGBB().fit(d.frequency, d.recency, d.periods, weights=d.weights)
    renamed = BGBB().fit(d.rename(columns={"periods": "n_periods"}))
    for other in (arrays, renamed):
        assert other.log_likelihood_ == pytest.approx(bgbb.log_likelihood_, abs=1e-6)
    per = bgbb.log_likelihood(d.frequency, d.recency, d.periods)
    assert float(per @ d.weights) == pytest.approx(bgbb.log_likelihood_, rel=1e-12)


def _posterior_integral(params, x, tx, n, g):
    """E[g(p, theta, alive-part, dead-part) | data] by Gauss-Jacobi quadrature over both priors.

    The integrands are polynomials in ``p`` and ``theta`` (degree < 20), so a 30-node rule with
    the Beta prior as weight function is exact up to rounding.
    """
    al, be, ga, de = params
    up, wp = special.roots_jacobi(30, be - 1, al - 1)  # weight (1-u)^(be-1) (1+u)^(al-1)
    ut, wt = special.roots_jacobi(30, de - 1, ga - 1)
    p, th = (1 + up)[:, None] / 2, (1 + ut)[None, :] / 2
    w = wp[:, None] * wt[None, :]
    alive = p**x * (1 - p) ** (n - x) * (1 - th) ** n
    dead = sum(p**x * (1 - p) ** (tx - x + i) * th * (1 - th) ** (tx + i) for i in range(int(n - tx)))
    return float(np.sum(w * g(p, th, alive, dead)) / np.sum(w * (alive + dead)))


@pytest.mark.parametrize("x, tx, n", [(2, 4, 6), (0, 0, 6), (6, 6, 6)])
def test_bgbb_predictions_match_brute_force_integration(x, tx, n):
    params = tuple(BGBB_PUBLISHED.values())
    m = BGBB.from_params(**BGBB_PUBLISHED)
    k = 5
    # alive at n+1: alive through n, then survives once more
    alive = _posterior_integral(params, x, tx, n, lambda p, th, a, d: a * (1 - th))
    # expected transactions in the next k opportunities
    exp_tx = _posterior_integral(
        params, x, tx, n, lambda p, th, a, d: a * sum(p * (1 - th) ** j for j in range(1, k + 1))
    )
    # at least one transaction: first one at opportunity n+j
    buy = _posterior_integral(
        params, x, tx, n,
        lambda p, th, a, d: a * sum((1 - th) ** j * (1 - p) ** (j - 1) * p for j in range(1, k + 1)),
    )
    assert float(m.conditional_probability_alive(x, tx, n)) == pytest.approx(alive, rel=1e-10)
    assert float(m.conditional_expected_number_of_purchases_up_to_time(k, x, tx, n)) == pytest.approx(exp_tx, rel=1e-10)
    assert float(m.probability_of_purchase_within(k, x, tx, n)) == pytest.approx(buy, rel=1e-10)


def test_bgbb_population_expectation_and_gamma_one_limit():
    m = BGBB.from_params(**BGBB_PUBLISHED)
    al, be, ga, de = BGBB_PUBLISHED.values()
    n = np.arange(0, 12)
    brute = [al / (al + be) * sum(np.exp(special.betaln(ga, de + k) - special.betaln(ga, de)) for k in range(1, j + 1)) for j in n]
    assert m.expected_number_of_purchases_up_to_time(n) == pytest.approx(np.array(brute), rel=1e-10)
    g1 = BGBB.from_params(alpha=1.2, beta=0.75, gamma=1.0, delta=2.8)
    g2 = BGBB.from_params(alpha=1.2, beta=0.75, gamma=1.0 + 1e-6, delta=2.8)
    assert g1.expected_number_of_purchases_up_to_time(10) == pytest.approx(g2.expected_number_of_purchases_up_to_time(10), rel=1e-5)
    assert g1.conditional_expected_number_of_purchases_up_to_time(5, 2, 4, 6) == pytest.approx(
        g2.conditional_expected_number_of_purchases_up_to_time(5, 2, 4, 6), rel=1e-5
    )


def test_bgbb_robust_for_long_histories():
    m = BGBB.from_params(**BGBB_PUBLISHED)
    x, tx, n = np.array([5000.0, 0.0, 3.0]), np.array([9990.0, 0.0, 5.0]), np.array([10000.0, 10000.0, 10000.0])
    assert np.all(np.isfinite(m.log_likelihood(x, tx, n)))
    for t in (1, 50, 1000):
        e = m.conditional_expected_number_of_purchases_up_to_time(t, x, tx, n)
        p = m.probability_of_purchase_within(t, x, tx, n)
        assert np.all(np.isfinite(e)) and np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    fit = BGBB().fit(pd.DataFrame({"frequency": [5000, 2, 0, 40], "recency": [9990, 4, 0, 50],
                                   "n_periods": [10000, 6, 6, 60], "weights": [1, 30, 40, 5]}))
    assert np.isfinite(fit.log_likelihood_)


def test_bgbb_input_validation():
    with pytest.raises(ModelInputError, match="whole number"):
        BGBB().fit([1.0], [1.5], [6])
    with pytest.raises(ModelInputError, match="cannot exceed recency"):
        BGBB().fit([3], [2], [6])
    with pytest.raises(ModelInputError, match="whole numbers"):
        BGBB.from_params(**BGBB_PUBLISHED).conditional_expected_number_of_purchases_up_to_time(1.5, 1, 2, 6)


def test_bgnbd_and_mbgnbd_agree_when_mbg_dropout_is_negligible():
    # with b large both dropout processes vanish: both models reduce to the NBD
    bg = BGNBD.from_params(r=0.7, alpha=5.0, a=1.0, b=1e7)
    mbg = MBGNBD.from_params(r=0.7, alpha=5.0, a=1.0, b=1e7)
    args = (np.array([0.0, 3.0]), np.array([0.0, 20.0]), np.array([30.0, 30.0]))
    assert bg.log_likelihood(*args) == pytest.approx(mbg.log_likelihood(*args), rel=1e-6)
    assert bg.conditional_expected_number_of_purchases_up_to_time(10, *args) == pytest.approx(
        mbg.conditional_expected_number_of_purchases_up_to_time(10, *args), rel=1e-5
    )
