"""BG/BB model of repeat buying in discrete time.

Fader, P. S., Hardie, B. G. S. & Shang, J. (2010), "Customer-Base Analysis in a Discrete-Time
Noncontractual Setting", *Marketing Science* 29(6), 1086-1108 (below: FHS 2010).

Each of ``n`` transaction opportunities after the first (e.g. yearly donation drives) is a
Bernoulli trial: while alive a customer transacts with probability ``p ~ Beta(alpha, beta)``;
at the start of each opportunity an alive customer becomes permanently inactive with probability
``theta ~ Beta(gamma, delta)``.  Data per customer: ``x`` transactions in ``n`` opportunities,
``t_x`` the opportunity of the last one (0 when ``x = 0``), all whole numbers with
``x <= t_x <= n``.  Time (``t`` in predictions) counts future opportunities.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import special as sc

from loyalist.models._base import (
    dot,
    BaseModel,
    ModelInputError,
    broadcast_float,
    columns_from,
    compress,
    prediction_inputs,
    validate_rfm,
    warn_if_no_repeat_purchases,
)

__all__ = ["BGBB"]

_CHUNK = 2_000_000  # grid cells per block in the likelihood and in predictions


def _sum_survival(gamma: float, D: np.ndarray, N: np.ndarray) -> np.ndarray:
    """``S = E[sum_{k=1}^N (1-theta)^k]`` for ``theta ~ Beta(gamma, D)``.

    Telescoping the Beta functions (as in FHS 2010's expressions for E[X(n)] and E[X(n, n+n*)]):
    ``S = D/(gamma-1) [1 - G(gamma+D) G(D+N+1) / (G(D+1) G(gamma+D+N))]``, computed as
    ``-D expm1(Delta)/(gamma-1)`` with ``Delta`` a log-ratio that vanishes at ``gamma = 1``, where
    the limit ``D (psi(D+N+1) - psi(D+1))`` is used.
    """
    D, N = np.broadcast_arrays(np.asarray(D, float), np.asarray(N, float))
    g1 = gamma - 1.0
    if abs(g1) < 1e-7:
        ratio = -(sc.digamma(D + N + 1.0) - sc.digamma(D + 1.0))
        delta = ratio * g1
    else:
        delta = (sc.gammaln(D + N + 1.0) - sc.gammaln(D + 1.0)) - (
            sc.gammaln(gamma + D + N) - sc.gammaln(gamma + D)
        )
        ratio = delta / g1
    out = -D * ratio * sc.exprel(delta)
    return np.where(N > 0, out, 0.0)


class BGBB(BaseModel):
    """Beta-geometric / beta-Bernoulli model (FHS 2010).

    Parameters (``params_``): ``alpha``, ``beta`` (Beta heterogeneity of the transaction
    probability) and ``gamma``, ``delta`` (Beta heterogeneity of the dropout probability).

    ``fit(frequency, recency, n_periods, weights=None)`` or ``fit(df)`` with columns
    ``frequency, recency, n_periods`` (``periods`` is accepted for ``n_periods``, as in the FHS
    2010 donation data) and an optional ``weights`` column (number of customers per row).
    """

    _param_names = ("alpha", "beta", "gamma", "delta")
    _model_name = "BG/BB"

    def fit(
        self,
        frequency: Any,
        recency: Any = None,
        n_periods: Any = None,
        weights: Any = None,
        initial_params: dict[str, float] | None = None,
    ) -> "BGBB":
        """Maximum-likelihood fit (FHS 2010 likelihood) with analytic gradient on log-parameters."""
        if isinstance(frequency, pd.DataFrame) and "n_periods" not in frequency.columns and "periods" in frequency.columns:
            frequency = frequency.rename(columns={"periods": "n_periods"})
        (f, rec, nn), weights = columns_from(
            frequency, (recency, n_periods), ("frequency", "recency", "n_periods"), weights, self._model_name
        )
        x, tx, n, w = validate_rfm(f, rec, nn, weights, t_name="n_periods", integer_times=True)
        warn_if_no_repeat_purchases(x, w, self._model_name)
        pat = compress(x, tx, n, weights=w)
        guesses = [
            np.array([1.0, 1.0, 1.0, 1.0]),
            np.array([0.5, 2.0, 0.5, 5.0]),
            np.array([2.0, 0.5, 2.0, 0.5]),
        ]
        starts = self._initial(initial_params, guesses)
        return self._run_mle(pat, starts, int(np.round(w.sum())))

    @staticmethod
    def _make_loglik(pat):
        """FHS 2010, likelihood of a randomly chosen customer with history ``(x, t_x, n)``:

        ``L = B(alpha+x, beta+n-x)/B(alpha,beta) B(gamma, delta+n)/B(gamma,delta)
              + sum_{i=0}^{n-t_x-1} B(alpha+x, beta+t_x-x+i)/B(alpha,beta)
                                    B(gamma+1, delta+t_x+i)/B(gamma,delta)``

        summed in log space over a (pattern x i) grid; the Beta functions of the sum depend on
        ``(x, j = t_x+i)`` and ``j`` only, so they are tabulated once per evaluation.
        """
        x, tx, n = (c.astype(np.int64) for c in pat.columns)
        w = pat.counts
        ux, ix = np.unique(x, return_inverse=True)
        L = n - tx  # number of dropout terms per pattern
        Lmax = int(L.max())
        jmax = int(n.max())
        W = float(w.sum())
        rows_per_block = max(1, _CHUNK // max(Lmax + 1, 1))
        i_grid = np.arange(Lmax)

        def loglik(theta):
            al, be, ga, de = theta
            psi_ab, psi_gd = sc.digamma(al + be), sc.digamma(ga + de)
            norm = sc.betaln(al, be) + sc.betaln(ga, de)
            dn = np.array([sc.digamma(al) - psi_ab, sc.digamma(be) - psi_ab,
                           sc.digamma(ga) - psi_gd, sc.digamma(de) - psi_gd])
            j = np.arange(max(jmax, 1))
            # tables for the dropout terms
            Xa = (al + ux)[:, None]
            Bj = (be + j)[None, :] - ux[:, None]
            valid_xj = Bj > 0
            Bj = np.where(valid_xj, Bj, 1.0)
            Tp = sc.betaln(Xa, Bj)
            psi_abj = sc.digamma(al + be + j)
            Tp_a = sc.digamma(Xa) - psi_abj[None, :]
            Tp_b = sc.digamma(Bj) - psi_abj[None, :]
            Tt = sc.betaln(ga + 1.0, de + j)
            psi_gdj = sc.digamma(ga + de + 1.0 + j)
            Tt_g = sc.digamma(ga + 1.0) - psi_gdj
            Tt_d = sc.digamma(de + j) - psi_gdj
            # alive term per pattern
            A = sc.betaln(al + x, be + n - x) + sc.betaln(ga, de + n)
            psi_abn = sc.digamma(al + be + n)
            psi_gdn = sc.digamma(ga + de + n)
            A_d = np.stack([
                sc.digamma(al + x) - psi_abn,
                sc.digamma(be + n - x) - psi_abn,
                sc.digamma(ga) - psi_gdn,
                sc.digamma(de + n) - psi_gdn,
            ])
            ll = -W * norm
            grad = -W * dn
            for s0 in range(0, x.size, rows_per_block):
                sl = slice(s0, s0 + rows_per_block)
                jj = tx[sl, None] + i_grid[None, :]
                mask = i_grid[None, :] < L[sl, None]
                jj = np.where(mask, jj, 0)
                xi = ix[sl, None]
                terms = np.where(mask, Tp[xi, jj] + Tt[jj], -np.inf)
                Ab = A[sl]
                M = np.maximum(Ab, terms.max(axis=1) if Lmax else Ab)
                ea = np.exp(Ab - M)
                et = np.exp(terms - M[:, None])
                tot = ea + et.sum(axis=1)
                wb = w[sl]
                ll += dot(wb, (M + np.log(tot)))
                qa = wb * ea / tot
                qt = (wb / tot)[:, None] * et
                grad[0] += dot(qa, A_d[0, sl]) + float(np.sum(qt * Tp_a[xi, jj]))
                grad[1] += dot(qa, A_d[1, sl]) + float(np.sum(qt * Tp_b[xi, jj]))
                grad[2] += dot(qa, A_d[2, sl]) + float(np.sum(qt * Tt_g[jj]))
                grad[3] += dot(qa, A_d[3, sl]) + float(np.sum(qt * Tt_d[jj]))
            return ll, grad

        return loglik

    # ------------------------------------------------------------------ per customer
    def _inputs(self, frequency, recency, n_periods):
        x, tx, n = prediction_inputs(frequency, recency, n_periods, t_name="n_periods")
        for name, arr in (("frequency", x), ("recency", tx), ("n_periods", n)):
            if np.any(arr != np.round(arr)):
                raise ModelInputError(f"{name} must be whole numbers of periods")
        if np.any(x > tx):
            raise ModelInputError("frequency cannot exceed recency in discrete time")
        return x, tx, n

    def log_likelihood(self, frequency: Any, recency: Any, n_periods: Any) -> np.ndarray:
        """Per-customer log-likelihood (FHS 2010) at the current parameters."""
        theta = self._theta()
        x, tx, n = self._inputs(frequency, recency, n_periods)
        shape = x.shape
        (ux, utx, un), _, inv = compress(x.ravel(), tx.ravel(), n.ravel())
        out = np.empty(ux.size)
        for k in range(ux.size):  # per distinct pattern, through the fitted-likelihood code
            f = self._make_loglik(compress(ux[k:k + 1], utx[k:k + 1], un[k:k + 1]))
            out[k] = f(theta)[0]
        return out[inv].reshape(shape)

    def _log_alive_next(self, x, tx, n):
        al, be, ga, de = self._theta()
        num = sc.betaln(al + x, be + n - x) + sc.betaln(ga, de + n + 1.0) - sc.betaln(al, be) - sc.betaln(ga, de)
        return num - self.log_likelihood(x, tx, n)

    def conditional_probability_alive(self, frequency: Any, recency: Any, n_periods: Any) -> np.ndarray:
        """P(alive at opportunity n+1 | x, t_x, n) (FHS 2010, P(alive) expression):

        ``B(alpha+x, beta+n-x)/B(alpha,beta) B(gamma, delta+n+1)/B(gamma,delta) / L``.
        """
        x, tx, n = self._inputs(frequency, recency, n_periods)
        return np.minimum(np.exp(self._log_alive_next(x, tx, n)), 1.0)

    def conditional_expected_number_of_purchases_up_to_time(
        self, t: Any, frequency: Any, recency: Any, n_periods: Any
    ) -> np.ndarray:
        """E[X(n, n+t) | x, t_x, n]: expected transactions in the next ``t`` opportunities.

        FHS 2010's conditional expectation, in the equivalent form ``P(alive at n+1) (alpha+x)/(alpha+beta+n)
        E[sum_{k=1}^t (1-theta)^(k-1)]`` with posterior ``theta ~ Beta(gamma, delta+n+1)``.
        """
        al, be, ga, de = self._theta()
        t = broadcast_float("t", t)
        x, tx, n = self._inputs(frequency, recency, n_periods)
        t, x, tx, n = np.broadcast_arrays(t, x, tx, n)
        if np.any(t != np.round(t)):
            raise ModelInputError("t counts future transaction opportunities: whole numbers only")
        per_period = (al + x) / (al + be + n)
        surv = 1.0 + _sum_survival(ga, de + n + 1.0, t - 1.0)
        return np.where(t > 0, self.conditional_probability_alive(x, tx, n) * per_period * surv, 0.0)

    def probability_of_purchase_within(self, t: Any, frequency: Any, recency: Any, n_periods: Any) -> np.ndarray:
        """P(at least one transaction in opportunities n+1 .. n+t | x, t_x, n).

        Derived from the FHS 2010 assumptions (cf. their conditional PMF at ``x* = 0``): a
        customer alive at ``n+1`` makes a first transaction at opportunity ``n+k`` with
        probability ``(1-p)^(k-1) p (1-theta)^(k-1)``; under the posterior
        ``p ~ Beta(alpha+x, beta+n-x)``, ``theta ~ Beta(gamma, delta+n+1)`` (independent) this is
        ``B(alpha+x+1, beta+n-x+k-1)/B(alpha+x, beta+n-x) B(gamma, delta+n+k)/B(gamma, delta+n+1)``,
        summed over ``k = 1..t`` and multiplied by P(alive at n+1).
        """
        al, be, ga, de = self._theta()
        t = broadcast_float("t", t)
        x, tx, n = self._inputs(frequency, recency, n_periods)
        t, x, tx, n = np.broadcast_arrays(t, x, tx, n)
        if np.any(t != np.round(t)):
            raise ModelInputError("t counts future transaction opportunities: whole numbers only")
        shape = x.shape
        xf, nf, tf = x.ravel(), n.ravel(), t.ravel()
        (ux, un, ut), _, inv = compress(xf, nf, tf)
        kmax = int(ut.max()) if ut.size else 0
        first = np.zeros(ux.size)
        if kmax > 0:
            rows = max(1, _CHUNK // kmax)
            k = np.arange(1, kmax + 1)[None, :]
            for s0 in range(0, ux.size, rows):
                sl = slice(s0, s0 + rows)
                a_, b_ = al + ux[sl, None], be + un[sl, None] - ux[sl, None]
                D = de + un[sl, None] + 1.0
                lt = (sc.betaln(a_ + 1.0, b_ + k - 1.0) - sc.betaln(a_, b_)
                      + sc.betaln(ga, D + k - 1.0) - sc.betaln(ga, D))
                lt = np.where(k <= ut[sl, None], lt, -np.inf)
                first[sl] = np.exp(sc.logsumexp(lt, axis=1))
        buy = np.minimum(first[inv], 1.0).reshape(shape)
        return self.conditional_probability_alive(x, tx, n) * buy

    def expected_number_of_purchases_up_to_time(self, t: Any) -> np.ndarray:
        """Population E[X(t)] over ``t`` opportunities (FHS 2010, mean of the BG/BB PMF):

        ``alpha/(alpha+beta) delta/(gamma-1) [1 - G(gamma+delta) G(1+delta+t) / (G(gamma+delta+t) G(1+delta))]``.
        """
        al, be, ga, de = self._theta()
        t = broadcast_float("t", t)
        return al / (al + be) * _sum_survival(ga, np.full(t.shape, de), t)
