"""Seasonal Pareto/NBD: the Pareto/NBD with a month-of-year intensity (the model in operational time).

The Pareto/NBD (Schmittlein, Morrison & Colombo 1987, "Counting Your Customers: Who Are They and What Will
They Do Next?", *Management Science* 33(1); below SMC 1987; the likelihood as derived in Fader & Hardie 2005,
"A Note on Deriving the Pareto/NBD Model and Related Expressions", brucehardie.com/notes/009, below FH 2005
note) with both clocks running in *operational time* ``M(u) = integral of m``, ``m(u) = exp(gamma_month(u))``
a month-of-year intensity common to all customers: while alive a customer buys at rate ``lambda m(u)``
(``lambda ~ Gamma(r, alpha)``) and drops out at hazard ``mu m(u)`` (``mu ~ Gamma(s, beta)``). (Time-varying
contextual factors in the Pareto/NBD: Bachmann, Meierer & Naef 2021, *Marketing Science* 40(4); there the
factors enter the purchase and the dropout process with separate coefficients; here one intensity scales
both, which is what makes the model exactly the Pareto/NBD in M and keeps the fit on ``(x, first, last)``.)

Likelihood of a customer: the FH 2005 note's likelihood (``L = G(r+x)/G(r) alpha^r beta^s [(alpha+T)^-(r+x)
(beta+T)^-s + s (J(t_x) - J(T))]``, the integral form behind its 2F1 expression, evaluated by
:func:`loyalist.models.paretonbd.log_J`) at ``tau_x = M(last) - M(first)``, ``tau_T = M(as_of) - M(first)``,
times the Jacobian ``prod_j m(t_j)`` of the repeat purchase times (summed over customers:
``n_month @ gamma``). Its derivatives in the operational times are short: ``d log L / d tau_T = -(r+x) /
(alpha+tau_T) P(alive)`` (the dropout terms cancel) and ``d log L / d tau_x = -s (alpha+tau_x)^-(r+x)
(beta+tau_x)^-(s+1) / bracket``; with ``log_J``'s analytic derivatives in ``(p, q, alpha, beta)`` the whole
gradient is analytic, chained to ``gamma`` through ``tau = D @ m`` by
:class:`~loyalist.models.seasonal.OperationalTimeModel` (shared with the seasonal BG/NBD). Predictions
(conditional expectation, P(alive), P(at least one purchase)) are :class:`~loyalist.models.ParetoNBD`'s in
operational time. Identification and unseen months as in :mod:`loyalist.models.seasonal`. Time unit: days.

Written here because no maintained Python library fits it (lifetimes and pymc-marketing: constant rates;
CLVTools, R, has the covariate form with separate purchase and dropout coefficients, not in Python).
"""

from __future__ import annotations

import numpy as np
from scipy import special as sc

from loyalist.models.paretonbd import ParetoNBD, log_J
from loyalist.models.seasonal import MONTHS, OperationalTimeModel

__all__ = ["SeasonalParetoNBD"]


class SeasonalParetoNBD(OperationalTimeModel):
    """Pareto/NBD with a month-of-year intensity of purchasing and dropout (see the module docstring).

    ``fit(frequency, first_order, last_order, as_of, repeat_by_month)`` as
    :class:`~loyalist.models.SeasonalBGNBD`. Parameters (``params_``): ``r, alpha, s, beta`` (SMC 1987, alpha
    and beta in operational days) and ``m_01 .. m_12`` (geometric mean 1 over the months seen; unseen months
    1). Predictions take the customers' dates (``t`` in days after ``as_of``):
    ``conditional_expected_number_of_purchases_up_to_time``, ``probability_of_purchase_within``,
    ``conditional_probability_alive``.
    """

    _param_names = ("r", "alpha", "s", "beta", *MONTHS)
    _classic_names = ("r", "alpha", "s", "beta")
    _classic = ParetoNBD
    _model_name = "seasonal Pareto/NBD"

    @staticmethod
    def _classic_loglik(params: np.ndarray, x, tx, T):
        """FH 2005 note likelihood summed over customers at operational times, its gradient in ``r, alpha,
        s, beta`` (as in ParetoNBD's fit, one pattern per customer) and per customer its derivatives in
        ``T`` and ``t_x`` (module docstring)."""
        r, alpha, s, beta = params
        la_, lb_ = np.log(alpha), np.log(beta)
        L1a, L1b = np.log1p(T / alpha), np.log1p(T / beta)
        # everything below carries alpha^r beta^s inside (``shift``; see paretonbd.log_J)
        la = -(r + x) * L1a - x * la_ - s * L1b  # alive at T
        J2, J2p, J2q, J2a, J2b = log_J(T, r + x, s + 1.0, alpha, beta, shift=(r, s))
        J1, J1p, J1q, J1a, J1b = log_J(tx, r + x, s + 1.0, alpha, beta, shift=(r, s))
        ls = np.log(s)
        M = np.maximum(la, ls + J1)
        ea, e1, e2 = np.exp(la - M), np.exp(ls + J1 - M), np.exp(ls + J2 - M)
        diff = e1 - e2
        off = (tx == T) | (diff <= 0)
        diff[off] = 0.0
        Bk = ea + diff
        n = float(x.size)
        ll = float(np.sum(sc.gammaln(r + x) - sc.gammaln(r) + M + np.log(Bk)))
        wa, w1, w2 = ea / Bk, e1 / Bk, e2 / Bk
        w1[off] = 0.0
        w2[off] = 0.0
        lA, lB = L1a + la_, L1b + lb_
        g_r = np.sum(sc.digamma(r + x) - sc.digamma(r)) + n * la_ - wa @ lA + (w1 @ J1p - w2 @ J2p)
        g_alpha = n * r / alpha - (wa * (r + x)) @ (1.0 / (alpha + T)) + (w1 @ J1a - w2 @ J2a)
        g_s = n * lb_ - wa @ lB + (w1.sum() - w2.sum()) / s + (w1 @ J1q - w2 @ J2q)
        g_beta = n * s / beta - s * (wa @ (1.0 / (beta + T))) + (w1 @ J1b - w2 @ J2b)
        # d log L / d T: -(r+x)/(alpha+T) P(alive); d log L / d t_x: s dJ(t_x)/dt_x / bracket
        dT = -(r + x) / (alpha + T) * wa
        lnum = ls - (r + x) * np.log1p(tx / alpha) - x * la_ - (s + 1.0) * np.log1p(tx / beta) - lb_
        dx = np.where(off, 0.0, -np.exp(lnum - M) / Bk)
        return ll, np.array([g_r, g_alpha, g_s, g_beta]), dT, dx
