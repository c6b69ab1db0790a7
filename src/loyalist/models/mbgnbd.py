"""MBG/NBD model: the BG/NBD with a possible dropout right after the first purchase.

Batislam, E. P., Denizel, M. & Filiztekin, A. (2007), "Empirical validation and comparison of
models for customer base analysis", *International Journal of Research in Marketing* 24(3),
201-209 (below: BDF 2007).  It changes one assumption of the BG/NBD (Fader, Hardie & Lee 2005):
a customer may become inactive with probability ``p`` after *every* purchase, including the
first one at time 0, so a customer with no repeat purchase can be inactive (in the BG/NBD such a
customer is always alive).  Same data (``x, t_x, T``) and parameters ``r, alpha, a, b``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special as sc

from loyalist.models._base import (
    dot,
    broadcast_float,
    prediction_inputs,
)
from loyalist.models.bgnbd import RAlphaABModel, expected_purchases_while_active

__all__ = ["MBGNBD"]


class MBGNBD(RAlphaABModel):
    """Modified BG/NBD (BDF 2007).

    Parameters (``params_``): ``r``, ``alpha`` (Gamma purchase-rate heterogeneity) and ``a``,
    ``b`` (Beta dropout-probability heterogeneity).  Same interface as :class:`~loyalist.models.BGNBD`.
    """

    _model_name = "MBG/NBD"

    @staticmethod
    def _make_loglik(pat):
        """BDF 2007 likelihood (the MBG/NBD counterpart of FHL 2005 eq. 6):

        ``L = G(r+x)/G(r) alpha^r [ B(a, b+x+1)/B(a,b) (alpha+T)^-(r+x)
                                   + B(a+1, b+x)/B(a,b) (alpha+t_x)^-(r+x) ]``

        (alive at ``T`` after surviving ``x+1`` dropout chances, or dropped out right after the
        purchase at ``t_x``; for ``x = 0``, ``t_x = 0`` and the second term is an immediate
        dropout).  Evaluated as first term + softplus of the log-ratio, as for the BG/NBD.
        """
        x, tx, T = pat.columns
        w = pat.counts
        ux, utx, uT = pat.levels
        ix, itx, iT = pat.codes
        W = float(w.sum())
        nx, nT = ux.size, uT.size
        wx = np.bincount(ix, weights=w, minlength=nx)
        wT = np.bincount(iT, weights=w, minlength=nT)
        wxT = np.bincount(iT, weights=w * x, minlength=nT)

        def loglik(theta):
            r, alpha, a, b = theta
            lg = sc.gammaln(r + ux) - sc.gammaln(r)
            dlg = sc.digamma(r + ux) - sc.digamma(r)
            bab = sc.betaln(a, b)
            psi_ab = sc.digamma(a + b)
            psi_abx1 = sc.digamma(a + b + ux + 1.0)
            B1 = sc.betaln(a, b + ux + 1.0) - bab
            dB1_a = psi_ab - psi_abx1
            dB1_b = sc.digamma(b + ux + 1.0) - psi_abx1 - sc.digamma(b) + psi_ab
            dB = sc.betaln(a + 1.0, b + ux) - sc.betaln(a, b + ux + 1.0)  # log(term 2 / term 1) part
            dB_b = -1.0 / (b + ux)  # psi(b+x) - psi(b+x+1); d/da is 1/a
            la = np.log(alpha)
            lT = np.log(alpha + uT)
            iaT = 1.0 / (alpha + uT)
            atx = alpha + utx
            ll = dot(wx, (lg + B1)) + W * r * la - r * dot(wT, lT) - dot(wxT, lT)
            g_r = dot(wx, dlg) + W * la - dot(wT, lT)
            g_alpha = W * r / alpha - r * dot(wT, iaT) - dot(wxT, iaT)
            g_a = dot(wx, dB1_a)
            g_b = dot(wx, dB1_b)
            R = r + x
            dl = np.log(atx)[itx] - lT[iT]
            d = dB[ix] - R * dl
            e = np.exp(-np.abs(d))
            ll += dot(w, (np.maximum(d, 0.0) + np.log1p(e)))
            wq2 = w * (np.where(d > 0, 1.0, e) / (1.0 + e))
            g_r -= dot(wq2, dl)
            g_alpha -= dot((wq2 * R), ((1.0 / atx)[itx] - iaT[iT]))
            cnt = np.bincount(ix, weights=wq2, minlength=nx)
            g_a += float(cnt.sum()) / a
            g_b += dot(cnt, dB_b)
            return ll, np.array([g_r, g_alpha, g_a, g_b])

        return loglik

    def log_likelihood(self, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """Per-customer log-likelihood at the current parameters."""
        r, alpha, a, b = self._theta()
        x, tx, T = prediction_inputs(frequency, recency, T)
        base = sc.gammaln(r + x) - sc.gammaln(r) + r * np.log(alpha) - sc.betaln(a, b)
        t1 = sc.betaln(a, b + x + 1.0) - (r + x) * np.log(alpha + T)
        t2 = sc.betaln(a + 1.0, b + x) - (r + x) * np.log(alpha + tx)
        return base + np.logaddexp(t1, t2)

    def conditional_probability_alive(self, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """P(alive | x, t_x, T) = 1 / (1 + a/(b+x) ((alpha+T)/(alpha+t_x))^(r+x)) (BDF 2007).

        Unlike the BG/NBD this is below 1 also for ``x = 0``.
        """
        r, alpha, a, b = self._theta()
        x, tx, T = prediction_inputs(frequency, recency, T)
        lo = np.log(a) - np.log(b + x) + (r + x) * (np.log(alpha + T) - np.log(alpha + tx))
        return sc.expit(-lo)

    def conditional_expected_number_of_purchases_up_to_time(
        self, t: Any, frequency: Any, recency: Any, T: Any
    ) -> np.ndarray:
        """E[Y(t) | x, t_x, T] (BDF 2007):

        ``(a+b+x)/(a-1) [1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x+1; a+b+x; t/(alpha+T+t))]
        / (1 + a/(b+x) ((alpha+T)/(alpha+t_x))^(r+x))``, i.e. ``P(alive)`` times the expectation for
        an active customer with posterior ``p ~ Beta(a, b+x+1)``, ``lambda ~ Gamma(r+x, alpha+T)``.
        """
        r, alpha, a, b = self._theta()
        t = broadcast_float("t", t)
        x, tx, T = prediction_inputs(frequency, recency, T)
        t, x, tx, T = np.broadcast_arrays(t, x, tx, T)
        active = expected_purchases_while_active(t, r + x, a, b + x + 1.0, alpha + T)
        return self.conditional_probability_alive(x, tx, T) * active

    def probability_of_purchase_within(self, t: Any, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """P(at least one purchase in ``(T, T+t]``) = P(alive) [1 - ((alpha+T)/(alpha+T+t))^(r+x)].

        As for the BG/NBD: an active customer's next purchase is exponential with rate
        ``lambda ~ Gamma(r+x, alpha+T)`` a posteriori and dropout happens only after purchases.
        """
        r, alpha, a, b = self._theta()
        t = broadcast_float("t", t)
        x, tx, T = prediction_inputs(frequency, recency, T)
        t, x, tx, T = np.broadcast_arrays(t, x, tx, T)
        buy = -np.expm1(-(r + x) * np.log1p(t / (alpha + T)))
        return self.conditional_probability_alive(x, tx, T) * buy

    def expected_number_of_purchases_up_to_time(self, t: Any) -> np.ndarray:
        """Population E[X(t)] = b/(a-1) [1 - (alpha/(alpha+t))^r 2F1(r, b+1; a+b; t/(alpha+t))] (BDF 2007)."""
        r, alpha, a, b = self._theta()
        t = broadcast_float("t", t)
        ones = np.ones(t.shape)
        return b / (a + b) * expected_purchases_while_active(t, r * ones, a, (b + 1.0) * ones, alpha * ones)
