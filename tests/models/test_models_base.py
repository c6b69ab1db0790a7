"""Shared machinery: compression, the MLE driver's failure handling, analytic gradients."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

from loyalist.models import (
    BGBB,
    BGNBD,
    MBGNBD,
    ConvergenceError,
    ConvergenceWarning,
    GammaGamma,
    NotFittedError,
    ParetoNBD,
)
from loyalist.models._base import compress, maximize_likelihood
from models_testdata import cdnow_summary


def test_compress_roundtrip_and_counts():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, 1000).astype(float)
    t = rng.integers(0, 5, 1000).astype(float)
    w = rng.uniform(0.5, 2.0, 1000)
    pat = compress(x, t, weights=w)
    assert pat.size <= 20
    assert np.array_equal(pat.columns[0][pat.inverse], x)
    assert np.array_equal(pat.columns[1][pat.inverse], t)
    assert pat.counts.sum() == pytest.approx(w.sum())
    for k in range(2):
        assert np.array_equal(pat.levels[k][pat.codes[k]], pat.columns[k])
    rows = {tuple(r) for r in np.column_stack(pat.columns)}
    assert len(rows) == pat.size  # patterns are distinct
    # continuous data: rows kept as they are, nothing lost
    y = rng.uniform(size=500)
    cont = compress(np.zeros(500), y)
    assert cont.size == 500 and np.array_equal(cont.columns[1][cont.inverse], y)
    # -0.0 and 0.0 are one value
    assert compress(np.array([0.0, -0.0, 0.0]), np.ones(3)).size == 1


def test_subsample_keeps_total_draws():
    pat = compress(np.repeat([0.0, 1.0, 2.0], [70, 20, 10]), np.ones(100))
    sub = pat.subsample(1000, seed=1)
    assert sub.counts.sum() == 1000
    assert set(sub.columns[0]) <= {0.0, 1.0, 2.0}


def test_convergence_failure_gives_clear_warning_and_keeps_best_estimate():
    s = cdnow_summary()
    with pytest.warns(ConvergenceWarning) as record:
        m = BGNBD(max_iter=1).fit(s)
    msg = " ".join(str(r.message) for r in record)
    assert "did not converge" in msg and "Tried:" in msg and "BFGS" in msg and "max_iter" in msg
    assert m.converged_ is False
    assert np.isfinite(m.log_likelihood_) and all(v > 0 for v in m.params_.values())
    assert "did not converge" in m.optimizer_message_


def test_never_finite_likelihood_raises_convergence_error():
    def broken(theta):
        return float("nan"), np.full(theta.size, np.nan)

    with pytest.raises(ConvergenceError, match="never finite") as info:
        maximize_likelihood(broken, [np.ones(2)], total_weight=1.0, param_names=("a", "b"), model="toy")
    assert "Tried" in str(info.value)
    assert isinstance(info.value, RuntimeError)


def test_estimate_at_search_boundary_is_reported():
    # log-likelihood increasing without bound in theta[0]: the optimum is the box edge
    def runaway(theta):
        return float(np.log(theta[0]) - (theta[1] - 1.0) ** 2), np.array([1.0 / theta[0], -2 * (theta[1] - 1.0)])

    with pytest.warns(ConvergenceWarning, match="edge of the search space"):
        res = maximize_likelihood(runaway, [np.ones(2)], total_weight=1.0, param_names=("a", "b"), model="toy")
    assert res.params[0] == pytest.approx(1e8, rel=1e-6) and res.params[1] == pytest.approx(1.0, abs=1e-6)


def test_standard_errors_are_lazy_cached_and_survive_pickling():
    s = cdnow_summary()
    m = BGNBD().fit(s)
    assert m.__dict__.get("_standard_errors") is None
    se = m.standard_errors_
    assert m.standard_errors_ is se
    clone = pickle.loads(pickle.dumps(BGNBD().fit(s)))
    assert "_fit_patterns" not in clone.__dict__
    assert clone.standard_errors_ == pytest.approx(se)
    assert clone.params_ == pytest.approx(m.params_)
    with pytest.raises(NotFittedError):
        BGNBD.from_params(r=1, alpha=1, a=1, b=1).standard_errors_


def test_initial_params_are_used_and_validated():
    s = cdnow_summary()
    m = BGNBD().fit(s, initial_params={"r": 0.24, "alpha": 4.4, "a": 0.79, "b": 2.4})
    assert m.params_["alpha"] == pytest.approx(4.414, rel=2e-3)
    with pytest.raises(ValueError, match="initial_params"):
        BGNBD().fit(s, initial_params={"r": 1.0})
    g = GammaGamma().fit(s[s.frequency > 0], initial_params={"p": 6.0, "q": 3.0, "gamma": 15.0})
    assert g.params_["v"] == pytest.approx(15.44, rel=2e-3)


# ------------------------------------------------------------------ analytic gradients

GRAD_CASES = [
    (BGNBD, (np.array([0, 1, 2, 7, 5000.0]), np.array([0, 3.0, 20.0, 30.0, 9999.0]), np.array([39, 39, 39, 39, 10000.0])),
     [np.array([0.243, 4.414, 0.793, 2.426]), np.array([2.0, 0.5, 3.0, 0.2]), np.array([0.05, 100.0, 0.1, 50.0])]),
    (MBGNBD, (np.array([0, 1, 2, 7, 5000.0]), np.array([0, 3.0, 20.0, 30.0, 9999.0]), np.array([39, 39, 39, 39, 10000.0])),
     [np.array([0.525, 6.183, 0.891, 1.614]), np.array([2.0, 0.5, 3.0, 0.2]), np.array([0.05, 100.0, 0.1, 50.0])]),
    (ParetoNBD, (np.array([0, 1, 2, 7, 5000.0]), np.array([0, 3.0, 20.0, 30.0, 9999.0]), np.array([39, 39, 39, 39, 10000.0])),
     [np.array([0.553, 10.578, 0.606, 11.669]), np.array([2.0, 0.5, 3.0, 40.0]), np.array([0.3, 80.0, 1.0, 2.0]),
      np.array([0.4, 1e4, 0.7, 1.0])]),
    (BGBB, (np.array([0, 1, 3, 6, 5000.0]), np.array([0, 2, 5, 6, 9000.0]), np.array([6, 6, 6, 6, 10000.0])),
     [np.array([1.204, 0.750, 0.657, 2.783]), np.array([0.2, 5.0, 3.0, 0.5]), np.array([1.0, 1.0, 1.0, 1.0])]),
    (GammaGamma, (np.array([1, 2, 5, 30, 5000.0]), np.array([12.5, 40.0, 22.0, 9.0, 35.0])),
     [np.array([6.25, 3.74, 15.44]), np.array([0.5, 1.5, 200.0]), np.array([50.0, 10.0, 2.0])]),
]


@pytest.mark.parametrize("model, data, points", GRAD_CASES, ids=lambda v: getattr(v, "__name__", ""))
def test_analytic_gradient_matches_finite_differences(model, data, points):
    weights = np.array([3.0, 1.0, 2.0, 1.0, 1.0])
    pat = compress(*data, weights=weights)
    loglik = model._make_loglik(pat)
    for theta in points:
        ll, grad = loglik(theta)
        assert np.isfinite(ll) and np.all(np.isfinite(grad))
        # five-point central differences in log-parameters (the optimiser's coordinates)
        num = np.empty(theta.size)
        for i in range(theta.size):
            h = 1e-4

            def at(k):
                th = theta.copy()
                th[i] *= np.exp(k * h)
                return loglik(th)[0]

            num[i] = (at(-2) - 8 * at(-1) + 8 * at(1) - at(2)) / (12 * h)
        analytic = grad * theta
        scale = max(1.0, np.max(np.abs(num)))
        assert np.max(np.abs(analytic - num)) / scale < 1e-6, (model.__name__, theta, analytic, num)


def test_weights_equal_repeated_rows():
    s = cdnow_summary().iloc[:400]
    rep = s.loc[s.index.repeat(3)]
    a = ParetoNBD().fit(rep)
    b = ParetoNBD().fit(s.frequency, s.recency, s["T"], weights=np.full(len(s), 3.0))
    assert a.log_likelihood_ == pytest.approx(b.log_likelihood_, rel=1e-9)
    assert a.n_customers_ == b.n_customers_ == 1200
    for k in a.params_:
        assert a.params_[k] == pytest.approx(b.params_[k], rel=1e-5)


def test_no_warnings_on_published_fits():
    s = cdnow_summary()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for model in (BGNBD(), ParetoNBD(), MBGNBD()):
            model.fit(s)
            model.standard_errors_


def test_no_repeat_purchases_is_flagged():
    with pytest.warns(ConvergenceWarning, match="no customer has a repeat purchase"):
        BGNBD().fit([0, 0, 0], [0, 0, 0], [10, 20, 30])


def test_sklearn_style_hyperparameters():
    m = ParetoNBD(penalizer=0.01)
    assert m.get_params() == {"penalizer": 0.01, "max_iter": 1000, "tol": 1e-7}
    assert m.set_params(max_iter=5) is m and m.max_iter == 5
    with pytest.raises(ValueError, match="unknown hyperparameter"):
        m.set_params(alpha=1.0)
    assert "ParetoNBD(penalizer=0.01)" == repr(m)
    assert repr(BGNBD.from_params(r=1, alpha=2, a=3, b=4)) == "BGNBD(r=1, alpha=2, a=3, b=4)"


def test_scoring_cache_sees_changed_inputs_and_is_not_changed_by_callers():
    """P(alive) and the Pareto/NBD per-customer terms are reused between the calls of one scoring pass
    (``BaseModel._cached``); changed inputs or parameters must be recomputed, and writing into a
    returned array must not alter later answers."""
    import pickle

    from loyalist.models import BGNBD, ParetoNBD

    x = np.array([0.0, 2.0, 5.0, 1.0])
    tx = np.array([0.0, 10.0, 30.0, 3.0])
    T = np.array([20.0, 40.0, 41.0, 50.0])
    for m in (BGNBD.from_params(r=0.25, alpha=4.0, a=0.8, b=2.5),
              ParetoNBD.from_params(r=0.55, alpha=10.6, s=0.61, beta=11.7)):
        fresh = lambda: type(m).from_params(**m.params_)  # noqa: E731
        p1 = m.conditional_probability_alive(x, tx, T)
        want = p1.copy()
        p1[:] = -1.0  # the caller scribbles on its result
        np.testing.assert_array_equal(m.conditional_probability_alive(x, tx, T), want)
        tx2 = tx.copy()
        m.conditional_probability_alive(x, tx2, T)
        tx2[1] = 39.0  # the same array object changed in place: recomputed
        np.testing.assert_array_equal(m.conditional_probability_alive(x, tx2, T),
                                      fresh().conditional_probability_alive(x, tx2, T))
        e = m.conditional_expected_number_of_purchases_up_to_time(13.0, x, tx, T)
        np.testing.assert_array_equal(e, fresh().conditional_expected_number_of_purchases_up_to_time(13.0, x, tx, T))
        m2 = pickle.loads(pickle.dumps(m))
        assert "_last_result" not in m2.__dict__
        m.params_ = {**m.params_, "r": m.params_["r"] * 2}  # new parameters: recomputed
        np.testing.assert_array_equal(m.conditional_probability_alive(x, tx, T),
                                      fresh().conditional_probability_alive(x, tx, T))
