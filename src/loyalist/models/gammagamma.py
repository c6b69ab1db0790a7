"""Gamma-Gamma model of average transaction value, and discounted customer lifetime value.

Fader, P. S., Hardie, B. G. S. & Lee, K. L. (2005), "RFM and CLV: Using Iso-Value Curves for
Customer Base Analysis", *Journal of Marketing Research* 42(4), 415-430 (below: FHL 2005b), and
Fader & Hardie (2013), "The Gamma-Gamma Model of Monetary Value", brucehardie.com/notes/025
(below: FH 2013 note).

A customer's transaction values are i.i.d. ``Gamma(p, nu)`` (shape ``p``, rate ``nu``); across
customers ``nu ~ Gamma(q, v)`` (shape ``q``, rate ``v``); spend is independent of the purchase
process.  The data per customer are ``x`` (number of transactions averaged: the repeat
purchases, i.e. ``frequency >= 1``) and ``m_x`` (their mean value, ``monetary_value``).

Parameter naming: FHL 2005b call the rate of the mixing distribution ``nu ~ Gamma(q, gamma)``;
the FH 2013 note and this package use ``v`` for it.  ``params_`` therefore has the keys
``p, q, v``; ``v`` *is* the "gamma" of the paper and of ``../shared/data/README.md`` (published
CDNOW value 15.44).  ``initial_params`` and :meth:`GammaGamma.from_params` accept ``gamma`` as an
alias of ``v``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special as sc

from loyalist.models._base import (
    dot,
    BaseModel,
    ModelInputError,
    as_1d_float,
    broadcast_float,
    columns_from,
    compress,
)

__all__ = ["GammaGamma"]


def _digamma_diff(z: np.ndarray, q: float) -> np.ndarray:
    """``psi(z + q) - psi(z)`` without cancellation for large ``z`` (asymptotic series of psi)."""
    z = np.asarray(z, dtype=float)
    out = sc.digamma(z + q) - sc.digamma(z)
    big = z > 1e4
    if np.any(big):
        zb = z[big]
        zq = zb + q
        # psi(z) ~ log z - 1/(2z) - 1/(12 z^2) + 1/(120 z^4) - 1/(252 z^6)
        out[big] = (np.log1p(q / zb) + q / (2.0 * zb * zq) + q * (2.0 * zb + q) / (12.0 * zb**2 * zq**2)
                    + (1.0 / zq**4 - 1.0 / zb**4) / 120.0 - (1.0 / zq**6 - 1.0 / zb**6) / 252.0)
    return out


def _alias(params: dict[str, float] | None) -> dict[str, float] | None:
    if params is None or "gamma" not in params:
        return params
    params = dict(params)
    if "v" in params:
        raise ModelInputError("give the Gamma-Gamma scale as v or as gamma, not both")
    params["v"] = params.pop("gamma")
    return params


class GammaGamma(BaseModel):
    """Gamma-Gamma spend model (FHL 2005b; FH 2013 note).

    Parameters (``params_``): ``p`` (shape of a customer's transaction-value distribution),
    ``q`` and ``v`` (shape and rate of the Gamma mixing distribution; ``v`` is called ``gamma`` in
    FHL 2005b).  Fit on repeat customers only: ``fit(frequency, monetary_value, weights=None)``
    or ``fit(df)`` with columns ``frequency`` (>= 1) and ``monetary_value`` (> 0, the mean of
    those transactions).
    """

    _param_names = ("p", "q", "v")
    _model_name = "Gamma-Gamma"

    @classmethod
    def from_params(cls, **params: float) -> "GammaGamma":
        """A model with given parameters; ``gamma`` is accepted as an alias of ``v``."""
        return super().from_params(**_alias(params))

    def fit(
        self,
        frequency: Any,
        monetary_value: Any = None,
        weights: Any = None,
        initial_params: dict[str, float] | None = None,
    ) -> "GammaGamma":
        """Maximum-likelihood fit (FH 2013 note, likelihood of the observed means ``m_x``)."""
        (f, m), weights = columns_from(
            frequency, (monetary_value,), ("frequency", "monetary_value"), weights, self._model_name
        )
        x = as_1d_float("frequency", f)
        m = as_1d_float("monetary_value", m)
        if m.size != x.size:
            raise ModelInputError(f"frequency and monetary_value lengths differ ({x.size} vs {m.size})")
        if x.size == 0:
            raise ModelInputError("no customers given (empty input)")
        w = np.ones(x.size) if weights is None else as_1d_float("weights", weights)
        if w.size != x.size or np.any(w < 0):
            raise ModelInputError("weights must be non-negative, one per customer")
        if np.any(x != np.round(x)) or np.any(x < 1):
            bad = np.flatnonzero((x != np.round(x)) | (x < 1))
            raise ModelInputError(
                "Gamma-Gamma is fitted on repeat customers only: frequency must be a whole number "
                f">= 1 ({bad.size} row(s) violate it, first at position {int(bad[0])}); filter "
                "e.g. summary[summary.frequency > 0]"
            )
        if np.any(m <= 0):
            bad = np.flatnonzero(m <= 0)
            raise ModelInputError(
                f"monetary_value must be positive ({bad.size} row(s), first at position {int(bad[0])})"
            )
        keep = w > 0
        x, m, w = x[keep], m[keep], w[keep]
        if x.size == 0:
            raise ModelInputError("all weights are zero")
        pat = compress(x, m, weights=w)
        mean_m = float(np.average(m, weights=w))
        guesses = [
            np.array([2.0, 3.0, mean_m]),  # population mean p v/(q-1) = mean_m
            np.array([1.0, 2.0, mean_m]),
            np.array([10.0, 5.0, 0.4 * mean_m]),
        ]
        starts = self._initial(_alias(initial_params), guesses)
        return self._run_mle(pat, starts, int(np.round(w.sum())))

    @staticmethod
    def _make_loglik(pat):
        """FH 2013 note / FHL 2005b: density of the mean ``m_x`` of ``x`` transactions,

        ``f(m_x | p, q, v; x) = G(px+q) / (G(px) G(q)) v^q m_x^(px-1) x^(px) / (v + m_x x)^(px+q)``.

        Gamma functions are evaluated once per distinct ``x``; per customer only ``log(v + m_x x)``.
        """
        x, m = pat.columns
        w = pat.counts
        ux = pat.levels[0]
        ix = pat.codes[0]
        wx = np.bincount(ix, weights=w, minlength=ux.size)
        mx = m * x
        W = float(w.sum())
        const = dot(w, np.log(m))
        wxx = w * x

        def loglik(theta):
            # log f = [lnG(px+q) - lnG(px)] - lnG(q) - px log1p(v/(x m)) - q log1p(x m/v) - log m,
            # the same density with the large logarithms cancelled analytically
            p, q, v = theta
            pux = p * ux
            l1 = np.log1p(v / mx)
            l2 = np.log1p(mx / v)
            gratio = sc.gammaln(q) - sc.betaln(pux, q)  # lnG(px+q) - lnG(px), accurate for large px
            ll = dot(wx, gratio) - p * dot(wxx, l1) - q * dot(w, l2) - W * sc.gammaln(q) - const
            dpsi = _digamma_diff(pux, q)  # psi(px+q) - psi(px)
            g_p = dot(wx * ux, dpsi) - dot(wxx, l1)
            g_q = dot(wx, sc.digamma(pux + q)) - W * sc.digamma(q) - dot(w, l2)
            # d/dv: -p x/(v + x m) ... written as below to avoid forming v + x m twice
            inv = 1.0 / (v + mx)
            g_v = -p * dot(wxx, inv) + q * dot(w, mx * inv) / v
            return ll, np.array([g_p, g_q, g_v])

        return loglik

    def log_likelihood(self, frequency: Any, monetary_value: Any) -> np.ndarray:
        """Per-customer log-density of the observed mean spend at the current parameters."""
        p, q, v = self._theta()
        x = broadcast_float("frequency", frequency)
        m = broadcast_float("monetary_value", monetary_value)
        x, m = np.broadcast_arrays(x, m)
        px = p * x
        return (sc.gammaln(px + q) - sc.gammaln(px) - sc.gammaln(q) + q * np.log(v)
                + (px - 1.0) * np.log(m) + px * np.log(x) - (px + q) * np.log(v + m * x))

    def conditional_expected_average_profit(self, frequency: Any, monetary_value: Any) -> np.ndarray:
        """E[M | p, q, v; m_x, x] = p (v + x m_x) / (p x + q - 1) (FH 2013 note eq. 5; FHL 2005b).

        A weighted mean of the population mean ``p v / (q - 1)`` and the customer's own ``m_x``
        (weight ``p x / (p x + q - 1)``).  For ``frequency = 0`` it is the population mean
        (``monetary_value`` is ignored).  Infinite where ``p x + q <= 1`` (no finite mean).
        """
        p, q, v = self._theta()
        x = broadcast_float("frequency", frequency)
        m = broadcast_float("monetary_value", monetary_value)
        x, m = np.broadcast_arrays(x, m)
        den = p * x + q - 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            out = p * (v + x * np.where(x > 0, m, 0.0)) / den
        return np.where(den > 0, out, np.inf)

    def expected_average_profit(self) -> float:
        """Population mean transaction value ``p v / (q - 1)`` (infinite if ``q <= 1``)."""
        p, q, v = self._theta()
        return float(p * v / (q - 1.0)) if q > 1 else float("inf")

    def customer_lifetime_value(
        self,
        transaction_model: Any,
        frequency: Any,
        recency: Any,
        T: Any,
        monetary_value: Any,
        horizon: int = 12,
        freq_unit_per_period: float = 1.0,
        discount_rate: float = 0.01,
        margin: float = 1.0,
    ) -> np.ndarray:
        """Discounted expected value of each customer's purchases over the next ``horizon`` periods.

        ``CLV = sum_{k=1}^{horizon} margin * E[M] * (E[Y(k u)] - E[Y((k-1) u)]) / (1+d)^k`` with
        ``u = freq_unit_per_period`` (model time units per period, e.g. 4.345 weeks per month for a
        transaction model fitted in weeks), ``d = discount_rate`` per period, ``E[Y(t)]`` the
        transaction model's ``conditional_expected_number_of_purchases_up_to_time`` and ``E[M]``
        :meth:`conditional_expected_average_profit` (FHL 2005b, discrete approximation of the DERT
        as in the ``lifetimes`` package).  Vectorised over customers, one model call per period.
        """
        horizon = int(horizon)
        if horizon < 0:
            raise ModelInputError("horizon must be a non-negative number of periods")
        if not (freq_unit_per_period > 0):
            raise ModelInputError("freq_unit_per_period must be positive")
        if not (discount_rate > -1):
            raise ModelInputError("discount_rate must exceed -1")
        spend = self.conditional_expected_average_profit(frequency, monetary_value) * margin
        prev = np.zeros(np.broadcast(np.asarray(frequency, float), np.asarray(recency, float),
                                     np.asarray(T, float)).shape)
        clv = np.zeros_like(prev)
        for k in range(1, horizon + 1):
            cur = transaction_model.conditional_expected_number_of_purchases_up_to_time(
                k * freq_unit_per_period, frequency, recency, T
            )
            clv = clv + (cur - prev) / (1.0 + discount_rate) ** k
            prev = cur
        return clv * spend
