"""Pareto/NBD: published CDNOW results, the 2F1 machinery against high-precision references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate

from loyalist.models import ParetoNBD
from loyalist.models.paretonbd import _hyp_series, log_J
from models_testdata import cdnow_summary

PUBLISHED = {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669}


@pytest.fixture(scope="module")
def cdnow():
    return cdnow_summary()


@pytest.fixture(scope="module")
def fitted(cdnow):
    return ParetoNBD().fit(cdnow)


def test_reproduces_published_estimates(fitted):
    assert fitted.converged_
    for k, v in PUBLISHED.items():
        assert fitted.params_[k] == pytest.approx(v, rel=2e-3), k
    assert fitted.log_likelihood_ == pytest.approx(-9594.98, abs=0.01)


def test_per_customer_log_likelihood_and_standard_errors(fitted, cdnow):
    per = fitted.log_likelihood(cdnow.frequency, cdnow.recency, cdnow["T"])
    assert per.sum() == pytest.approx(fitted.log_likelihood_, rel=1e-12)
    se = fitted.standard_errors_
    assert all(np.isfinite(v) and v > 0 for v in se.values())
    # beta is the least precisely estimated parameter on CDNOW
    assert se["beta"] / fitted.params_["beta"] > se["r"] / fitted.params_["r"]


# log J(y) = log int_y^inf (alpha+u)^-p (beta+u)^-q du; references computed with mpmath at 40
# digits from the closed form (alpha >= beta: (alpha+y)^-p (beta+y)^(1-q)/(p+q-1) 2F1(1,p;p+q;v)).
LOG_J_REFERENCE = [
    ((0.0, 0.55, 1.6, 10.6, 11.7), -2.939581628935889),
    ((30.0, 5.55, 1.6, 10.6, 11.7), -24.631463073737425),
    ((0.0, 0.3, 1.2, 50.0, 1.0), 0.06326593785316763),
    ((0.0, 2.3, 1.5, 1.0, 80.0), -6.873000962808504),
    ((0.5, 1.3, 1.05, 1.0, 800.0), -6.133477012551359),
    ((1.0, 5000.5, 1.6, 10.0, 2.0), -11998.553461342814),
    ((10000.0, 5000.5, 1.6, 10.0, 2.0), -46075.347969596405),
    ((3.0, 0.8, 1.3, 5.0, 5.0), -2.3826958756521446),
    ((0.0, 0.2, 1.1, 1000.0, 1.0), 0.49195924065806607),
    ((0.0, 0.2, 1.1, 100000.0, 1.0), -0.2487262256502595),
    ((0.0, 1.2, 1.9, 1.0, 1000000.0), -24.72333384971484),
    ((38.0, 1.55, 0.6, 10.6, 11.7), -4.613130265857355),
]


@pytest.mark.parametrize("args, expected", LOG_J_REFERENCE)
def test_log_J_against_high_precision_reference(args, expected):
    y, p, q, alpha, beta = args
    value = log_J(np.array([y]), np.array([p]), q, alpha, beta, grad=False)[0]
    assert value == pytest.approx(expected, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("args, _", LOG_J_REFERENCE)
def test_log_J_gradient_matches_finite_differences(args, _):
    y, p, q, alpha, beta = args
    out = log_J(np.array([y]), np.array([p]), q, alpha, beta)
    analytic = np.array([o[0] for o in out[1:]])
    theta = np.array([p, q, alpha, beta])

    def f(th):
        return log_J(np.array([y]), np.array([th[0]]), th[1], th[2], th[3], grad=False)[0]

    numeric = np.empty(4)
    for i in range(4):
        h = 1e-6 * theta[i]
        e = np.zeros(4)
        e[i] = h
        numeric[i] = (f(theta + e) - f(theta - e)) / (2 * h)
    scale = np.maximum(np.abs(numeric), 1.0)
    assert np.all(np.abs(analytic - numeric) / scale < 1e-6), (analytic, numeric)


def test_log_J_matches_direct_quadrature():
    for y, p, q, alpha, beta in [(2.0, 1.4, 1.7, 3.0, 9.0), (0.0, 0.9, 2.2, 20.0, 4.0)]:
        val, _ = integrate.quad(lambda u: (alpha + u) ** -p * (beta + u) ** -q, y, np.inf, epsabs=0, epsrel=1e-13)
        assert log_J(np.array([y]), np.array([p]), q, alpha, beta, grad=False)[0] == pytest.approx(np.log(val), rel=1e-10)


def test_hypergeometric_series_near_one_is_fast_and_continuous_across_integer_d():
    # d = c - 1 - b crossing the integer 1: the connection formula has cancelling poles there
    b = np.full(5, 1.3)
    d = 1.0 + np.array([-2e-3, -1e-6, 0.0, 1e-6, 2e-3])
    c = b + 1.0 + d
    v = np.full(5, 0.99999)
    logG = _hyp_series(b, c, v, False)[0]
    assert np.all(np.isfinite(logG))
    assert np.all(np.diff(logG) < 0)  # G decreases in c
    assert abs(logG[2] - 0.5 * (logG[1] + logG[3])) < 1e-9


def test_probability_alive_and_expectations(fitted, cdnow):
    x, tx, T = cdnow.frequency, cdnow.recency, cdnow["T"]
    a = fitted.conditional_probability_alive(x, tx, T)
    assert np.all((a > 0) & (a <= 1))
    same = (x > 0) & (tx == T)
    assert np.all(a[same.to_numpy()] == pytest.approx(1.0))  # bought on the last day: surely alive
    e = fitted.conditional_expected_number_of_purchases_up_to_time(39, x, tx, T)
    assert np.all(np.isfinite(e)) and np.all(e >= 0)
    pop = fitted.expected_number_of_purchases_up_to_time(np.array([0.0, 39.0, 78.0]))
    assert pop[0] == 0 and 0 < pop[1] < pop[2]
    # s = 1 limit is continuous
    m1 = ParetoNBD.from_params(r=0.5, alpha=10.0, s=1.0, beta=12.0)
    m2 = ParetoNBD.from_params(r=0.5, alpha=10.0, s=1.0 + 1e-9, beta=12.0)
    assert m1.expected_number_of_purchases_up_to_time(50.0) == pytest.approx(
        m2.expected_number_of_purchases_up_to_time(50.0), rel=1e-8
    )


def test_probability_of_purchase_within_matches_numerical_integration():
    r, alpha, s, beta = PUBLISHED.values()
    m = ParetoNBD.from_params(**PUBLISHED)
    x, tx, T, t = 3.0, 20.0, 38.0, 13.0
    # int_0^t E[lambda e^{-lambda w}] E[e^{-mu w}] dw under the posterior given alive at T
    R, A, B = r + x, alpha + T, beta + T
    integrand = lambda w: R / A * (A / (A + w)) ** (R + 1) * (B / (B + w)) ** s
    buy, _ = integrate.quad(integrand, 0, t, epsrel=1e-13)
    expected = m.conditional_probability_alive(x, tx, T) * buy
    got = m.probability_of_purchase_within(t, x, tx, T)
    assert float(got) == pytest.approx(float(expected), rel=1e-10)
    p = m.probability_of_purchase_within(np.array([0.0, 1.0, 10.0, 100.0, 1e7]), x, tx, T)
    assert p[0] == 0 and np.all(np.diff(p) > 0) and p[-1] < m.conditional_probability_alive(x, tx, T)


def test_robust_for_heavy_buyers_and_long_histories():
    m = ParetoNBD.from_params(**PUBLISHED)
    x = np.array([5000.0, 5000.0, 0.0, 30000.0])
    tx = np.array([9999.0, 100.0, 0.0, 1e6])
    T = np.array([10000.0, 10000.0, 1e7, 1e6])
    assert np.all(np.isfinite(m.log_likelihood(x, tx, T)))
    for t in (1.0, 52.0, 1e4, 1e7):
        e = m.conditional_expected_number_of_purchases_up_to_time(t, x, tx, T)
        p = m.probability_of_purchase_within(t, x, tx, T)
        assert np.all(np.isfinite(e)) and np.all(e >= 0)
        assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))
    a = m.conditional_probability_alive(x, tx, T)
    assert a[0] > 0.99 and a[1] < 1e-100
    # parameters far apart (|alpha - beta| / max ~ 1) exercise the expansion near v = 1
    far = ParetoNBD.from_params(r=0.4, alpha=1e5, s=0.8, beta=1.0)
    assert np.all(np.isfinite(far.log_likelihood(x, tx, T)))
    assert np.all(np.isfinite(far.conditional_probability_alive(x, tx, T)))


def test_polynomial_runs_match_scipy_hyp2f1_and_term_recurrences():
    """The Horner evaluation of runs of equal (b, c) (``_hyp_poly``) against scipy's ``hyp2f1``
    and against the term-recurrence path it replaces, value and derivatives."""
    from scipy.special import hyp2f1

    from loyalist.models.paretonbd import _hyp_block, _hyp_poly

    rng = np.random.default_rng(3)
    runs = [(0.3 + k, 1.9 + k) for k in range(4)] + [(1.61, 2.16 + k) for k in range(3)]
    b = np.concatenate([np.full(400, bb) for bb, _ in runs])
    c = np.concatenate([np.full(400, cc) for _, cc in runs])
    v = rng.uniform(0.0, 0.5, b.size)
    v[::97] = 0.0
    out = [np.zeros(b.size) for _ in range(4)]
    done = _hyp_poly(b, c, v, True, *out)
    assert done.all()
    np.testing.assert_allclose(np.exp(out[0]), hyp2f1(1.0, b, c, v), rtol=1e-14)
    ref = [np.zeros(b.size) for _ in range(4)]
    idx = np.flatnonzero(v > 0)  # the recurrences are used for v > 0 only
    assert _hyp_block(idx, b, c, v, 1.0 - v, True, *ref).size == 0
    np.testing.assert_allclose(out[3][v == 0], (b / c)[v == 0], rtol=1e-15)
    for got, want in zip(out, ref):
        np.testing.assert_allclose(got[idx], want[idx], rtol=1e-13, atol=1e-15)
    # derivatives against central differences of scipy's hyp2f1
    h = 1e-6
    for k, (db, dc, dv) in enumerate([(h, 0, 0), (0, h, 0), (0, 0, h)], start=1):
        sel = v > 2 * h
        num = (np.log(hyp2f1(1.0, b + db, c + dc, v + dv)) - np.log(hyp2f1(1.0, b - db, c - dc, v - dv))) / (2 * h)
        np.testing.assert_allclose(out[k][sel], num[sel], rtol=1e-6, atol=1e-9)


def test_fit_on_distinct_times_equals_likelihood_by_scipy_hyp2f1():
    """Continuous-time data (every T distinct, the sorted-pattern shortcut): the total
    log-likelihood at the fitted parameters equals the FH 2005 note's closed form evaluated
    term by term with scipy's ``hyp2f1`` (A_0 for alpha >= beta and alpha < beta)."""
    from scipy.special import gammaln, hyp2f1

    from loyalist.models import ParetoNBD
    from loyalist.synthetic.btyd import simulate_paretonbd

    sim = simulate_paretonbd(3000, r=0.55, alpha=10.6, s=0.61, beta=11.7, T=(26.0, 104.0), seed=11)
    m = ParetoNBD().fit(sim.frequency, sim.recency, sim.T)
    r, alpha, s, beta = (m.params_[k] for k in ("r", "alpha", "s", "beta"))
    x, tx, T = sim.frequency, sim.recency, sim.T
    if alpha >= beta:
        z = lambda y: (alpha - beta) / (alpha + y)  # noqa: E731
        A0 = lambda y: hyp2f1(r + s + x, s + 1, r + s + x + 1, z(y)) / (alpha + y) ** (r + s + x)  # noqa: E731
    else:
        z = lambda y: (beta - alpha) / (beta + y)  # noqa: E731
        A0 = lambda y: hyp2f1(r + s + x, r + x, r + s + x + 1, z(y)) / (beta + y) ** (r + s + x)  # noqa: E731
    a0 = A0(tx) - A0(T)
    L = (gammaln(r + x) - gammaln(r) + r * np.log(alpha) + s * np.log(beta)
         + np.log(1.0 / ((alpha + T) ** (r + x) * (beta + T) ** s) + s / (r + s + x) * a0))
    assert m.converged_
    np.testing.assert_allclose(m.log_likelihood_, L.sum(), rtol=1e-11)
    np.testing.assert_allclose(m.log_likelihood(x, tx, T), L, rtol=1e-9, atol=1e-9)
