"""Seasonal BG/NBD: the BG/NBD with a month-of-year purchase intensity (the model in operational time).

The BG/NBD (Fader, Hardie & Lee 2005, "'Counting Your Customers' the Easy Way", *Marketing Science* 24(2),
below FHL 2005) assumes a constant purchase rate while active. Shops are seasonal (Online Retail II's autumn
peak), so here the rate of an active customer at calendar time u is ``lambda * m(u)``: a customer-level rate
``lambda ~ Gamma(r, alpha)`` times a population-level intensity ``m(u) = exp(gamma_month(u))`` common to
all customers (the time-varying contextual factors of latent-attrition models: Bachmann, Meierer & Naef
2021, "The Role of Time-Varying Contextual Factors in Latent Attrition Models for Customer Base Analysis",
*Marketing Science* 40(4); there for the Pareto/NBD, with piecewise-constant covariates). Dropout keeps the
BG/NBD mechanism: after each repeat purchase the customer becomes inactive with probability
``p ~ Beta(a, b)``.

Because BG/NBD dropout is tied to purchase events, not to calendar time, the model is exactly the BG/NBD
in *operational time* ``M(u) = integral of m`` (a Poisson process of rate ``lambda m(u)`` is a Poisson
process of rate ``lambda`` in M): with ``tau_x = M(last) - M(first)`` and ``tau_T = M(as_of) - M(first)``
the likelihood of a customer is FHL 2005 eq. (6) at ``(x, tau_x, tau_T)`` times the Jacobian
``prod_j m(t_j)`` of the x repeat purchase times. Summed over customers the Jacobian is
``sum_months n_month * gamma_month`` with ``n_month`` the repeat purchases in that calendar month of year,
so the fit needs only ``(x, first, last)`` per customer and twelve counts. Predictions are FHL 2005
eq. (10) and P(alive) in operational time (the window ``(as_of, as_of + t]`` has length
``M(as_of + t) - M(as_of)``), computed by :class:`~loyalist.models.BGNBD` itself.

Identification and the future: ``gamma`` is centred over the months seen in the calibration data (a
constant shift is the same model with another ``alpha``); a month never seen before ``as_of`` gets the
mean intensity (``gamma = 0``). Time unit: days.

The operational-time machinery (data checks, month tables, the chain rule through ``tau = D @ m``, the fit,
predictions) is :class:`OperationalTimeModel`, shared with the seasonal Pareto/NBD
(:mod:`loyalist.models.seasonal_paretonbd`).

Written here because no maintained library fits a BG/NBD with time-varying purchase intensity (lifetimes
and pymc-marketing have constant rates; CLVTools, R, has time-varying covariates for the Pareto/NBD only).
Maximum likelihood with the analytic gradient (FHL 2005 eq. 6 differentiated in ``r, alpha, a, b`` and in
``tau``, chained through ``tau = D @ m`` with ``D`` the days of each calendar month in each interval) by
scipy's L-BFGS-B on log-parameters; vectorised over customers, no loop over customers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import optimize
from scipy import special as sc

from loyalist.models._base import (
    BaseModel,
    ConvergenceWarning,
    ModelInputError,
    NotFittedError,
)
from loyalist.models.bgnbd import BGNBD

__all__ = ["OperationalTimeModel", "SeasonalBGNBD", "month_days"]

MONTHS = tuple(f"m_{i:02d}" for i in range(1, 13))


def _days(values: Any) -> np.ndarray:
    """Dates (datetime64, date objects, strings, pandas) as integer day numbers since 1970-01-01."""
    return np.asarray(values, dtype="datetime64[D]").astype(np.int64).reshape(-1)


def month_days(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Days of each calendar month of year in ``[start, end)``: an ``(n, 12)`` array (day numbers in, as
    from ``_days``). Built from a cumulative table over the covered days (vectorised)."""
    start = np.asarray(start, np.int64)
    end = np.asarray(end, np.int64)
    lo = int(min(start.min(), end.min()))
    hi = int(max(start.max(), end.max()))
    days = np.arange(lo, hi + 1).astype("datetime64[D]")
    month = days.astype("datetime64[M]").astype(np.int64) % 12
    cum = np.zeros((days.size + 1, 12))
    cum[np.arange(1, days.size + 1), month] = 1.0
    cum = np.cumsum(cum, axis=0)
    return cum[end - lo] - cum[start - lo]


class OperationalTimeModel(BaseModel):
    """A classic purchase model (four parameters) in operational time ``M(u)`` with a month-of-year intensity
    ``m = exp(gamma_month)``: the machinery shared by :class:`SeasonalBGNBD` and
    :class:`loyalist.models.seasonal_paretonbd.SeasonalParetoNBD` (data checks, the month tables, the
    likelihood's chain rule through ``tau = D @ m``, the fit, the operational times of predictions).

    A subclass names its classic model (``_classic``, a class with ``from_params`` and the prediction
    methods on ``(x, t_x, T)``) and its four parameter names, and implements ``_classic_loglik(params, x, tx,
    T)``: the sum over customers of the classic log-likelihood at operational times, its gradient in the four
    (natural) parameters, and per customer its derivatives in ``T`` and ``t_x``.
    """

    _classic: Any = None
    _classic_names: tuple[str, ...] = ()

    # ------------------------------------------------------------------ data
    @staticmethod
    def _inputs(frequency, first_order, last_order, as_of):
        x = np.asarray(frequency, float).reshape(-1)
        d0, d1 = _days(first_order), _days(last_order)
        end = int(_days([as_of])[0])
        if not (x.size == d0.size == d1.size) or x.size == 0:
            raise ModelInputError(f"frequency, first_order and last_order must be non-empty and of one length "
                                  f"(got {x.size}, {d0.size}, {d1.size})")
        if not np.all(np.isfinite(x)) or (x < 0).any() or (x != np.round(x)).any():
            raise ModelInputError("frequency must hold whole non-negative numbers of repeat purchases")
        if (d1 < d0).any() or (d1 >= end).any():
            raise ModelInputError("need first_order <= last_order < as_of for every customer")
        if ((x == 0) & (d1 != d0)).any():
            raise ModelInputError("a customer without repeat purchases must have last_order == first_order")
        return x, d0, d1, end

    # ------------------------------------------------------------------ likelihood
    @staticmethod
    def _classic_loglik(params: np.ndarray, x, tx, T):
        raise NotImplementedError

    @classmethod
    def _loglik(cls, theta: np.ndarray, x, Dx, DT, n_rep, seen):
        """Total log-likelihood and its gradient with respect to ``theta = (log of the four classic
        parameters, G)`` where ``gamma[seen] = G - mean(G)``: the classic likelihood at operational times
        ``tau = D @ m`` plus the Jacobian ``n_rep @ gamma`` of the repeat purchase times."""
        params = np.exp(theta[:4])
        G = theta[4:]
        gamma = np.zeros(12)
        gamma[seen] = G - G.mean()
        m = np.exp(gamma)
        tx, T = Dx @ m, DT @ m
        ll, g, dT, dx = cls._classic_loglik(params, x, tx, T)
        ll = ll + n_rep @ gamma
        g_gamma = (dT @ DT + dx @ Dx) * m + n_rep  # d ll / d gamma_month
        gs = g_gamma[seen]
        g_G = gs - gs.mean()
        return float(ll), np.r_[g * params, g_G]

    def fit(self, frequency: Any, first_order: Any, last_order: Any, as_of: Any, repeat_by_month: Any,
            initial_params: dict[str, float] | None = None):
        """Maximum likelihood (see the class docstring for the arguments); returns self."""
        self._check_hyper()
        x, d0, d1, end = self._inputs(frequency, first_order, last_order, as_of)
        n_rep = np.asarray(repeat_by_month, float).reshape(-1)
        if n_rep.size != 12 or (n_rep < 0).any():
            raise ModelInputError("repeat_by_month must hold 12 non-negative counts (January first)")
        if abs(n_rep.sum() - x.sum()) > 1e-6 * max(1.0, x.sum()):
            raise ModelInputError(f"repeat_by_month sums to {n_rep.sum():g} but the customers have "
                                  f"{x.sum():g} repeat purchases")
        if not (x > 0).any():
            raise ModelInputError("nobody bought twice: the purchase rate cannot be estimated")
        order = np.argsort(x, kind="stable")  # runs of equal frequency (the Pareto/NBD's 2F1 polynomials)
        x, d0, d1 = x[order], d0[order], d1[order]
        DT = month_days(d0, np.full(d0.size, end))
        Dx = month_days(d0, d1)
        seen = month_days(np.array([d0.min()]), np.array([end]))[0] > 0
        base = self._classic().fit(x, (d1 - d0).astype(float), (end - d0).astype(float))
        start = initial_params or base.params_
        theta0 = np.r_[np.log([start[k] for k in self._classic_names]), np.zeros(int(seen.sum()))]
        n = float(x.size)

        def fun(theta):
            ll, g = self._loglik(theta, x, Dx, DT, n_rep, seen)
            return -ll / n, -g / n

        res = optimize.minimize(fun, theta0, jac=True, method="L-BFGS-B",
                                options={"maxiter": int(self.max_iter), "gtol": float(self.tol)})
        classic = np.exp(res.x[:4])
        gamma = np.zeros(12)
        gamma[seen] = res.x[4:] - res.x[4:].mean()
        self.params_ = {**{k: float(v) for k, v in zip(self._classic_names, classic)},
                        **{k: float(v) for k, v in zip(MONTHS, np.exp(gamma))}}
        self.log_likelihood_ = -float(res.fun) * n
        self.base_log_likelihood_ = float(base.log_likelihood_)
        self.base_params_ = dict(base.params_)
        self.seen_months_ = seen
        self.converged_ = bool(res.success) and float(np.max(np.abs(res.jac))) < 1e-3
        self.optimizer_message_ = str(res.message)
        self.n_customers_ = int(x.size)
        if not self.converged_:
            import warnings

            warnings.warn(f"{self._model_name}: optimiser stopped without convergence ({res.message})",
                          ConvergenceWarning, stacklevel=2)
        return self

    @property
    def standard_errors_(self) -> dict[str, float]:
        raise NotFittedError(f"standard errors are not computed for the {self._model_name}")

    # ------------------------------------------------------------------ predictions
    def _m(self) -> np.ndarray:
        theta = self._theta()
        return theta[4:]

    def operational(self, t: float, first_order: Any, last_order: Any, as_of: Any):
        """(tau_x, tau_T, tau_t): the customers' recency and age and the next ``t`` days in operational time."""
        m = self._m()
        d0, d1 = _days(first_order), _days(last_order)
        end = int(_days([as_of])[0])
        ends = np.full(d0.size, end)
        tau_x = month_days(d0, d1) @ m
        tau_T = month_days(d0, ends) @ m
        tau_t = float((month_days(np.array([end]), np.array([end + round(float(t))])) @ m)[0])
        return tau_x, tau_T, tau_t

    def classic_model(self):
        """The classic model at the fitted (operational-time) parameters."""
        return self._classic.from_params(**dict(zip(self._classic_names, self._theta()[:4])))

    def conditional_expected_number_of_purchases_up_to_time(self, t: float, frequency: Any, first_order: Any,
                                                            last_order: Any, as_of: Any) -> np.ndarray:
        """Expected purchases in the ``t`` days after ``as_of``: the classic conditional expectation in
        operational time."""
        tau_x, tau_T, tau_t = self.operational(t, first_order, last_order, as_of)
        return self.classic_model().conditional_expected_number_of_purchases_up_to_time(tau_t, frequency, tau_x,
                                                                                        tau_T)

    def probability_of_purchase_within(self, t: float, frequency: Any, first_order: Any, last_order: Any,
                                       as_of: Any) -> np.ndarray:
        """P(at least one purchase in the ``t`` days after ``as_of``) (the classic model's
        probability_of_purchase_within in operational time)."""
        tau_x, tau_T, tau_t = self.operational(t, first_order, last_order, as_of)
        return self.classic_model().probability_of_purchase_within(tau_t, frequency, tau_x, tau_T)

    def conditional_probability_alive(self, frequency: Any, first_order: Any, last_order: Any,
                                      as_of: Any) -> np.ndarray:
        """P(active at ``as_of``) (the classic P(alive) in operational time)."""
        tau_x, tau_T, _ = self.operational(0, first_order, last_order, as_of)
        return self.classic_model().conditional_probability_alive(frequency, tau_x, tau_T)


class SeasonalBGNBD(OperationalTimeModel):
    """BG/NBD with a month-of-year purchase intensity (see the module docstring).

    ``fit(frequency, first_order, last_order, as_of, repeat_by_month)``: repeat purchases per customer,
    first and last purchase dates, the end of the observation (exclusive: data up to the day before), and the
    number of repeat purchases (purchase occasions after each customer's first) in each calendar month of
    year over all customers (12 numbers, January first). Parameters (``params_``): ``r, alpha, a, b`` (FHL
    2005, alpha in operational days) and ``m_01 .. m_12`` (the monthly intensity, geometric mean 1 over the
    months seen; unseen months 1). ``seen_months_`` says which months the data covered.

    Predictions take the customers' dates: ``conditional_expected_number_of_purchases_up_to_time(t,
    frequency, first_order, last_order, as_of)`` (t in days after ``as_of``), ``probability_of_purchase_within``,
    ``conditional_probability_alive``; ``operational(...)`` gives the operational times for any BG/NBD formula.
    """

    _param_names = ("r", "alpha", "a", "b", *MONTHS)
    _classic_names = ("r", "alpha", "a", "b")
    _classic = BGNBD
    _model_name = "seasonal BG/NBD"

    @staticmethod
    def _classic_loglik(params: np.ndarray, x, tx, T):
        """FHL 2005 eq. (6) summed over customers at operational times, its gradient in ``r, alpha, a, b``
        and per customer its derivatives in ``T`` and ``t_x``."""
        r, alpha, a, b = params
        pos = x > 0
        lT, lx = np.log(alpha + T), np.log(alpha + tx)
        bab = sc.betaln(a, b)
        t1 = sc.betaln(a, b + x) - (r + x) * lT
        with np.errstate(divide="ignore"):
            t2 = np.where(pos, sc.betaln(a + 1, np.where(pos, b + x - 1, 1.0)) - (r + x) * lx, -np.inf)
        mix = np.logaddexp(t1, t2)
        q2 = np.exp(t2 - mix)  # share of the "dropped out after the last purchase" term
        q1 = 1.0 - q2
        ll = np.sum(sc.gammaln(r + x) - sc.gammaln(r) + r * np.log(alpha) - bab + mix)
        R = r + x
        g_r = np.sum(sc.digamma(r + x) - sc.digamma(r) + np.log(alpha) - q1 * lT - q2 * lx)
        g_alpha = np.sum(r / alpha - q1 * R / (alpha + T) - q2 * R / (alpha + tx))
        psi_ab, psi_abx = sc.digamma(a + b), sc.digamma(a + b + x)
        g_a = np.sum(-(sc.digamma(a) - psi_ab) + q1 * (sc.digamma(a) - psi_abx) + q2 * (sc.digamma(a + 1) - psi_abx))
        g_b = np.sum(-(sc.digamma(b) - psi_ab) + q1 * (sc.digamma(b + x) - psi_abx)
                     + q2 * np.where(pos, sc.digamma(np.where(pos, b + x - 1, 1.0)) - psi_abx, 0.0))
        dT = -q1 * R / (alpha + T)
        dx = -q2 * R / (alpha + tx)
        return float(ll), np.array([g_r, g_alpha, g_a, g_b]), dT, dx

    def _bgnbd(self) -> BGNBD:
        return self.classic_model()
