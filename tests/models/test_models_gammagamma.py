"""Gamma-Gamma spend model: published CDNOW fit (Fader, Hardie & Lee 2005, "RFM and CLV") and CLV."""

from __future__ import annotations

import numpy as np
import pytest

from loyalist.models import BGNBD, BGBB, GammaGamma, ModelInputError, ParetoNBD
from models_testdata import cdnow_summary

PUBLISHED = {"p": 6.25, "q": 3.74, "v": 15.44}


@pytest.fixture(scope="module")
def repeaters():
    s = cdnow_summary()
    return s[s.frequency > 0]


@pytest.fixture(scope="module")
def fitted(repeaters):
    return GammaGamma().fit(repeaters)


def test_reproduces_published_estimates(fitted, repeaters):
    # 946 customers with repeat purchases; monetary value = mean of their repeat purchase days
    assert len(repeaters) == 946
    assert fitted.converged_
    for k, v in PUBLISHED.items():
        assert fitted.params_[k] == pytest.approx(v, rel=2e-3), k
    assert fitted.log_likelihood_ == pytest.approx(-4055.92, abs=0.01)
    assert all(np.isfinite(v) and v > 0 for v in fitted.standard_errors_.values())
    per = fitted.log_likelihood(repeaters.frequency, repeaters.monetary_value)
    assert per.sum() == pytest.approx(fitted.log_likelihood_, rel=1e-12)


def test_gamma_is_an_alias_of_v():
    a = GammaGamma.from_params(p=6.25, q=3.74, gamma=15.44)
    assert a.params_ == {"p": 6.25, "q": 3.74, "v": 15.44}
    with pytest.raises(ModelInputError, match="not both"):
        GammaGamma.from_params(p=1, q=2, v=3, gamma=3)


def test_conditional_expected_average_profit(fitted):
    p, q, v = fitted.params_.values()
    x = np.array([0.0, 1.0, 5.0, 5000.0])
    m = np.array([0.0, 30.0, 30.0, 30.0])
    e = fitted.conditional_expected_average_profit(x, m)
    pop = p * v / (q - 1)
    assert e[0] == pytest.approx(pop)
    assert fitted.expected_average_profit() == pytest.approx(pop)
    # FH 2013 note eq. (5): weighted average of population mean and observed mean
    w = p * x[1:] / (p * x[1:] + q - 1)
    assert e[1:] == pytest.approx((1 - w) * pop + w * 30.0, rel=1e-12)
    assert abs(e[3] - 30.0) < 0.01  # many transactions: the customer's own mean dominates
    assert np.isinf(GammaGamma.from_params(p=0.1, q=0.5, v=1.0).conditional_expected_average_profit(1, 10.0))


def test_customer_lifetime_value_properties(fitted):
    s = cdnow_summary()
    bg = BGNBD().fit(s)
    args = (s.frequency.to_numpy(), s.recency.to_numpy(), s["T"].to_numpy(), s.monetary_value.to_numpy())
    clv = fitted.customer_lifetime_value(bg, *args, horizon=12, freq_unit_per_period=4.35, discount_rate=0.01)
    assert clv.shape == (2357,) and np.all(np.isfinite(clv)) and np.all(clv >= 0)
    # without discounting, CLV = spend * margin * expected purchases over the whole horizon
    flat = fitted.customer_lifetime_value(bg, *args, horizon=12, freq_unit_per_period=4.35, discount_rate=0.0, margin=0.3)
    spend = fitted.conditional_expected_average_profit(args[0], args[3])
    purchases = bg.conditional_expected_number_of_purchases_up_to_time(12 * 4.35, *args[:3])
    assert flat == pytest.approx(0.3 * spend * purchases, rel=1e-10)
    assert np.all(clv < flat / 0.3 + 1e-9)  # discounting lowers value
    assert np.all(fitted.customer_lifetime_value(bg, *args, horizon=0) == 0)
    # discrete sum agrees with the explicit formula for one customer
    i = int(np.argmax(s.frequency.to_numpy()))
    manual = 0.0
    for k in range(1, 13):
        cur = bg.conditional_expected_number_of_purchases_up_to_time(k * 4.35, *(a[i] for a in args[:3]))
        prev = bg.conditional_expected_number_of_purchases_up_to_time((k - 1) * 4.35, *(a[i] for a in args[:3]))
        manual += (cur - prev) / 1.01**k
    assert clv[i] == pytest.approx(float(manual * spend[i]), rel=1e-10)
    # works with any transaction model exposing the conditional expectation
    pn = ParetoNBD.from_params(r=0.553, alpha=10.578, s=0.606, beta=11.669)
    assert np.all(np.isfinite(fitted.customer_lifetime_value(pn, *args, horizon=6, freq_unit_per_period=4.35)))
    bb = BGBB.from_params(alpha=1.2, beta=0.75, gamma=0.66, delta=2.8)
    v = fitted.customer_lifetime_value(bb, [2, 0], [4, 0], [6, 6], [20.0, 0.0], horizon=5, freq_unit_per_period=1)
    assert v.shape == (2,) and v[0] > v[1] > 0


def test_robust_for_heavy_buyers(fitted):
    x = np.array([5000.0, 1.0])
    m = np.array([12.5, 1e6])
    assert np.all(np.isfinite(fitted.log_likelihood(x, m)))
    assert np.all(np.isfinite(fitted.conditional_expected_average_profit(x, m)))
    fit = GammaGamma().fit(np.r_[x, 2, 3, 4, 5, 6, 1, 2], np.r_[m, 20, 35, 15, 60, 22, 9, 40])
    assert np.isfinite(fit.log_likelihood_)


@pytest.mark.parametrize(
    "freq, money, message",
    [
        ([0, 2], [10.0, 5.0], "repeat customers only"),
        ([1.5, 2], [10.0, 5.0], "whole number"),
        ([1, 2], [-1.0, 5.0], "monetary_value must be positive"),
        ([1, 2], [np.nan, 5.0], "NaN"),
        ([1, 2], [1.0], "lengths differ"),
    ],
)
def test_invalid_inputs(freq, money, message):
    with pytest.raises(ValueError, match=message):
        GammaGamma().fit(freq, money)
