"""BG/NBD model of repeat buying in continuous time.

Fader, P. S., Hardie, B. G. S. & Lee, K. L. (2005), "'Counting Your Customers' the Easy Way: An
Alternative to the Pareto/NBD Model", *Marketing Science* 24(2), 275-284 (below: FHL 2005), and
the companion notes by Fader & Hardie on brucehardie.com, "Computing P(alive) Using the BG/NBD
Model" (2008) and "Implementing the BG/NBD Model for Customer Base Analysis in Excel" (2005).

Assumptions (FHL 2005, model development): while active a customer buys as a Poisson process of rate
``lambda ~ Gamma(r, alpha)``; after each *repeat* purchase they become inactive with probability
``p ~ Beta(a, b)``.  Data per customer: ``x`` repeat purchases (frequency), ``t_x`` the time of the
last one measured from the first purchase (recency; 0 when ``x = 0``) and ``T`` the time between
the first purchase and the end of the observation window, all in one time unit (e.g. weeks).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import special as sc

from loyalist.models._base import (
    dot,
    BaseModel,
    columns_from,
    compress,
    prediction_inputs,
    broadcast_float,
    repeated_rows,
    validate_rfm,
    warn_if_no_repeat_purchases,
)

__all__ = ["BGNBD", "expected_purchases_while_active"]


def _series_branch(t_over: np.ndarray, R: np.ndarray, a: float, B: np.ndarray) -> np.ndarray:
    """Series evaluation of :func:`expected_purchases_while_active` for ``z <= 0.3``.

    With ``z = u/(1+u)``, ``u = t/(alpha+T)``, ``eps = a-1`` and ``C = a+B-1``, Euler's transform
    turns the FHL 2005 eq. (10) bracket into
    ``E = -C log(1-z) exprel(eps log(1-z)) - (1-z)^eps * S``, with
    ``S = sum_{n>=1} (C-R)_n (eps+1)_{n-1} / ((C+1)_{n-1} n!) z^n``; no term is singular at
    ``a = 1`` or ``C = 0`` and every quantity stays O(1) however large ``x`` is.
    """
    eps = a - 1.0
    C = eps + B
    L1 = -np.log1p(t_over)  # log(1 - z)
    z = t_over / (1.0 + t_over)
    head = -C * L1 * sc.exprel(eps * L1)
    done = _series_runs(z, R, eps, C, head)
    if done is not None:
        S, ok = done
        if ok.all():
            return head - np.exp(eps * L1) * S
        rest = ~ok
        S[rest] = _series_sum(z[rest], R[rest], eps, C[rest], head[rest])
        return head - np.exp(eps * L1) * S
    return head - np.exp(eps * L1) * _series_sum(z, R, eps, C, head)


_RUN_MIN = 256  # runs of equal (C, R) at least this long are summed by Horner's rule
_RUN_MAX_TERMS = 400
_BLOCK = 16384


def _series_runs(z, R, eps, C, head):
    """The series ``S`` of :func:`_series_branch` where the elements share ``(C, R)`` in runs.

    ``C = a-1+b+x`` and ``R = r+x`` depend on the frequency ``x`` only (a few dozen values for a
    million customers), so per distinct ``(C, R)`` the series is a power series in ``z`` with
    scalar coefficients ``c_1 = C-R``, ``c_(n+1) = c_n (C-R+n)(eps+n) / ((C+n)(n+1))``.  Its
    length ``N`` is fixed per run from the run's largest ``z``: the neglected tail is bounded by
    ``|c_(N+1)| zmax^(N+1) / (1-rho)`` with ``rho = zmax * sup_(k>N) |c_(k+1)/c_k|`` (the ratio
    tends to 1, so ``rho < 1`` for ``z <= 0.3``), required below ``1e-17`` of the run's smallest
    ``|head|`` (the stopping rule of the term-by-term loop, made a priori).  Each run then costs
    two vector operations per term (Horner) instead of the loop's half dozen.  Elements are put
    in runs by a hash factorisation of ``C`` and a stable (radix) sort of its codes.  Returns
    ``(S, ok)`` (``ok`` False where the caller must use the loop) or None when there are no
    long runs.
    """
    n = z.size
    if n < 4 * _RUN_MIN:
        return None
    dRC = R - C  # a constant up to rounding here (both are "+ x"): else no runs
    if not np.all(np.abs(dRC - dRC[0]) <= 1e-13 * (1.0 + np.abs(C))):
        return None
    codes, uniq = pd.factorize(C, sort=False)
    if uniq.size > n // _RUN_MIN:
        return None
    uniq = np.asarray(uniq, float)
    # within a run, 8 bins of z: small z needs far fewer terms than the run's largest
    zb = np.minimum((z * (8.0 / 0.3)).astype(np.int64), 7)
    codes = codes * 8 + zb
    codes = codes.astype(np.int16 if 8 * uniq.size < 2**15 else np.int32)
    order = np.argsort(codes, kind="stable")
    sc_ = codes[order]
    edges = np.flatnonzero(sc_[1:] != sc_[:-1]) + 1
    edges = [0, *edges.tolist(), n]
    zo = z[order]
    S = np.zeros(n)
    ok = np.zeros(n, bool)
    k = np.arange(1, _RUN_MAX_TERMS + 2, dtype=float)
    for i0, i1 in zip(edges[:-1], edges[1:]):
        if i1 - i0 < _RUN_MIN // 8:
            continue
        Cc = float(uniq[sc_[i0] // 8])
        Rc = float(R[order[i0]])  # equal within the run up to an ulp
        zr = zo[i0:i1]
        zmax, zmin = float(zr.max()), float(zr.min())
        # |head| = |C| (1 - (1-z)^eps)/eps increases with z: its smallest value is at zmin
        L1m = float(np.log1p(-zmin))
        hmin = abs(Cc * L1m * float(sc.exprel(eps * L1m)))
        if not zmax > 0 or not hmin > 0:
            continue
        d = Cc - Rc
        with np.errstate(all="ignore"):
            q = (d + k) * (eps + k) / ((Cc + k) * (k + 1.0))  # c_(k+1) / c_k
            c = d * np.concatenate([[1.0], np.cumprod(q[:-1])])  # c_1 .. c_(K+1)
            sup = np.maximum.accumulate(np.abs(q)[::-1])[::-1]  # sup_(j>=k) |q_j|
            rho = zmax * np.maximum(sup, 1.0)
            tail = np.abs(c[1:]) * zmax ** k[1:] / (1.0 - rho[1:])  # tail after N = k terms
        good = np.flatnonzero((rho[1:] < 1.0) & (tail <= 1e-17 * hmin) & np.isfinite(tail))
        if good.size == 0:
            continue
        N = int(good[0]) + 1
        cl = c[:N].tolist()
        for j0 in range(i0, i1, _BLOCK):  # cache-sized blocks: Horner's passes stay in L2
            j1 = min(j0 + _BLOCK, i1)
            zb_ = zo[j0:j1]
            H = S[j0:j1]
            H.fill(cl[N - 1])
            for j in range(N - 2, -1, -1):
                H *= zb_
                H += cl[j]
            H *= zb_
        ok[i0:i1] = True
    if not ok.any():
        return None
    Sout = np.empty(n)
    Sout[order] = S
    okout = np.empty(n, bool)
    okout[order] = ok
    return Sout, okout


def _series_sum(z, R, eps, C, head):
    """``S`` of :func:`_series_branch`, term by term until every element's next term is below
    1e-17 of ``|S| + |head|``."""
    term = (C - R) * z
    S = term.copy()
    n = 1
    while True:
        term = term * (C - R + n) * (eps + n) / ((C + n) * (n + 1)) * z
        S += term
        n += 1
        if np.all(np.abs(term) <= 1e-17 * (np.abs(S) + np.abs(head))) or n > 400:
            break
    return S


QUADRATURE_ABOVE_A = 100.0
"""Beyond this ``a`` the dropout probability's Beta law is so concentrated that the series needs
thousands of terms (its terms first grow like ``(a z)^n / n!``) and ``2F1`` loses accuracy; the
expectation is then integrated numerically over that law instead."""


def _quadrature_branch(u: np.ndarray, R: np.ndarray, a: float, B: np.ndarray, nodes: int = 96) -> np.ndarray:
    """``E[(1 - (1 + p u)^-R) / p]`` for ``p ~ Beta(a, B)`` by Gauss-Legendre quadrature between the
    1e-12 and 1 - 1e-12 quantiles (the inner expectation over ``lambda ~ Gamma(R, alpha_T)`` is the
    Gamma Laplace transform, exact).  Used for large ``a``, where the law of ``p`` is unimodal and narrow."""
    from scipy import stats

    x, w = np.polynomial.legendre.leggauss(nodes)
    lo = stats.beta.ppf(1e-12, a, B)[:, None]
    hi = stats.beta.ppf(1 - 1e-12, a, B)[:, None]
    p = lo + (hi - lo) * (x[None, :] + 1.0) / 2.0
    dens = np.exp(stats.beta.logpdf(p, a, B[:, None])) * w[None, :]
    g = -np.expm1(-R[:, None] * np.log1p(p * u[:, None])) / p
    return np.einsum("ij,ij->i", dens, g) / dens.sum(axis=1)


def _hyp2f1_branch(t_over: np.ndarray, R: np.ndarray, a: float, B: np.ndarray) -> np.ndarray:
    """``C/(a-1) * [1 - (1-z)^(a-1) 2F1(C-R, a-1; C; z)]`` with scipy's 2F1 (accurate here).

    Where ``a-1`` or ``C`` is within 1e-4 of 0 the removable singularity is bridged by a
    fourth-order symmetric extrapolation in ``a`` (the function is analytic in ``a``).
    """

    def direct(a_: float | np.ndarray) -> np.ndarray:
        eps = a_ - 1.0
        C = eps + B
        L1 = -np.log1p(t_over)
        z = t_over / (1.0 + t_over)
        F = sc.hyp2f1(C - R, eps, C, z)
        with np.errstate(all="ignore"):
            pos = F > 0
            inner = np.where(pos, -np.expm1(eps * L1 + np.log(np.where(pos, F, 1.0))),
                             1.0 - np.exp(eps * L1) * F)
            return C * inner / eps

    eps = a - 1.0
    C = eps + B
    near = (abs(eps) < 1e-4) | (np.abs(C) < 1e-4)
    out = np.empty(np.broadcast(t_over, R, B).shape)
    if np.any(~near):
        out[...] = direct(a)
    if np.any(near):
        d = 2e-4
        e1 = 0.5 * (direct(a + d) + direct(a - d))
        e2 = 0.5 * (direct(a + 2 * d) + direct(a - 2 * d))
        out = np.where(near, (4.0 * e1 - e2) / 3.0, out)
    return out


def expected_purchases_while_active(
    t: np.ndarray, R: np.ndarray, a: float, B: np.ndarray, alpha_T: np.ndarray
) -> np.ndarray:
    """``E[(1 - exp(-lambda p t)) / p]`` for ``lambda ~ Gamma(R, alpha_T)``, ``p ~ Beta(a, B)``.

    This is the expected number of purchases in the next ``t`` time units of a customer known to
    be active, whose purchase rate and dropout probability have the given (posterior) laws:
    ``(1 - exp(-lambda p t))/p`` is the BG/NBD expectation for fixed ``lambda, p`` (FHL 2005,
    derivation of eq. 7); integrating gives the hypergeometric form of FHL 2005 eqs. (7), (10):
    ``(a+B-1)/(a-1) * [1 - (alpha_T/(alpha_T+t))^R 2F1(R, B; a+B-1; t/(alpha_T+t))]``.

    * ``R = r, B = b, alpha_T = alpha``: population ``E[X(t)]`` of eq. (7);
    * ``R = r+x, B = b+x, alpha_T = alpha+T``: the bracket of eq. (10) (BG/NBD);
    * ``R = r+x, B = b+x+1``: MBG/NBD (Batislam et al. 2007).

    Evaluated without overflow for any ``x`` (thousands of purchases) and any ``T``: small
    ``z = t/(alpha_T+t)`` by a convergent series free of removable singularities, larger ``z`` by
    scipy's Gauss hypergeometric function after Euler's transformation, whose parameters
    ``(a+B-1-R, a-1; a+B-1)`` stay moderate (the large ``x`` cancels from the numerator).
    """
    t, R, B, alpha_T = np.broadcast_arrays(
        np.asarray(t, float), np.asarray(R, float), np.asarray(B, float), np.asarray(alpha_T, float)
    )
    u = t / alpha_T
    out = np.zeros(u.shape)
    if a > QUADRATURE_ABOVE_A:
        positive = u > 0
        out[positive] = _quadrature_branch(u[positive], R[positive], a, B[positive])
        return out
    small = (u <= 0.3 / 0.7) & (u > 0)
    large = u > 0.3 / 0.7
    if small.all():  # the usual case: no masked copies
        return _series_branch(u.ravel(), R.ravel(), a, B.ravel()).reshape(u.shape)
    if small.any():
        out[small] = _series_branch(u[small], R[small], a, B[small])
    if large.any():
        out[large] = _hyp2f1_branch(u[large], R[large], a, B[large])
    return out


class RAlphaABModel(BaseModel):
    """Shared by BG/NBD and MBG/NBD (same data, same parameters r, alpha, a, b): validate, compress to
    distinct patterns, start from a few scale-aware guesses, maximise the model's likelihood."""

    _param_names = ("r", "alpha", "a", "b")

    def fit(
        self,
        frequency: Any,
        recency: Any = None,
        T: Any = None,
        weights: Any = None,
        initial_params: dict[str, float] | None = None,
    ):
        """Maximum-likelihood fit with analytic gradient on log-parameters (likelihood: ``_make_loglik``)."""
        (f, rec, TT), weights = columns_from(frequency, (recency, T), ("frequency", "recency", "T"), weights,
                                             self._model_name)
        x, tx, T_, w = validate_rfm(f, rec, TT, weights)
        warn_if_no_repeat_purchases(x, w, self._model_name)
        pat = compress(x, tx, T_, weights=w)
        scale = max(float(np.average(T_, weights=w)), 1e-6)
        mean_x = max(float(np.average(x, weights=w)), 0.05)
        guesses = [
            np.array([1.0, scale / (2.0 * mean_x), 1.0, 3.0]),
            np.array([0.5, scale / 10.0, 0.5, 1.0]),
            np.array([2.0, scale, 2.0, 10.0]),
        ]
        starts = self._initial(initial_params, guesses)
        return self._run_mle(pat, starts, int(np.round(w.sum())))


class BGNBD(RAlphaABModel):
    """Beta-geometric / negative binomial distribution model (FHL 2005).

    Parameters (``params_``): ``r``, ``alpha`` (Gamma heterogeneity of the purchase rate, shape
    and rate) and ``a``, ``b`` (Beta heterogeneity of the dropout probability).

    ``fit(frequency, recency, T, weights=None)`` or ``fit(summary_df)`` with columns
    ``frequency, recency, T`` (and optional ``weights``).  After fitting: ``params_``,
    ``log_likelihood_`` (total, weighted), ``standard_errors_``, ``converged_``, ``n_customers_``.
    All predictions are vectorised; time is in the unit used for fitting.
    """

    _model_name = "BG/NBD"  # likelihood: FHL 2005 eq. (6), see _make_loglik

    @staticmethod
    def _make_loglik(pat):
        """Total log-likelihood and gradient over compressed patterns.

        FHL 2005 eq. (6):
        ``L = B(a,b+x)/B(a,b) G(r+x)/G(r) alpha^r/(alpha+T)^(r+x)
              + 1{x>0} B(a+1,b+x-1)/B(a,b) G(r+x)/G(r) alpha^r/(alpha+t_x)^(r+x)``
        written as ``log L = log(first term) + 1{x>0} log(1 + exp(d))`` with ``d`` the log-ratio
        of the second term to the first (a softplus: no overflow).  Gamma and Beta functions and
        their digamma derivatives are computed once per distinct ``x``, logarithms once per
        distinct ``T`` / ``t_x``; sums over customers are dot products with the pattern counts.
        """
        x, tx, T = pat.columns
        w = pat.counts
        ux, uT, utx = pat.levels[0], pat.levels[2], pat.levels[1]
        ix, itx, iT = pat.codes
        W = float(w.sum())
        nx, nT = ux.size, uT.size
        wx = np.bincount(ix, weights=w, minlength=nx)  # weight per distinct x
        wT = np.bincount(iT, weights=w, minlength=nT)  # weight per distinct T
        wxT = np.bincount(iT, weights=w * x, minlength=nT)  # sum of w*x per distinct T
        pos = x > 0
        ix1, iT1, itx1, w1, x1 = ix[pos], iT[pos], itx[pos], w[pos], x[pos]
        ux_pos = ux > 0
        bx1 = np.where(ux_pos, ux - 1.0, 0.0)

        def loglik(theta: np.ndarray):
            r, alpha, a, b = theta
            # per distinct x
            lg = sc.gammaln(r + ux) - sc.gammaln(r)
            dlg_r = sc.digamma(r + ux) - sc.digamma(r)
            bab = sc.betaln(a, b)
            psi_ab = sc.digamma(a + b)
            psi_abx = sc.digamma(a + b + ux)
            psi_b = sc.digamma(b)
            B1 = sc.betaln(a, b + ux) - bab
            dB1_a = psi_ab - psi_abx
            dB1_b = sc.digamma(b + ux) - psi_abx - psi_b + psi_ab
            # second term relative to the first, per distinct x > 0 (0 where x = 0: unused)
            dB = np.where(ux_pos, sc.betaln(a + 1.0, b + bx1) - bab - B1, 0.0)
            dB_a = 1.0 / a  # (psi(a+1) - psi(a)); the psi(a+b+x) terms cancel
            dB_b = np.where(ux_pos, sc.digamma(b + bx1) - sc.digamma(b + ux), 0.0)
            la = np.log(alpha)
            lT = np.log(alpha + uT)
            iaT = 1.0 / (alpha + uT)

            # first term, all customers
            ll = dot(wx, (lg + B1)) + W * r * la - r * dot(wT, lT) - dot(wxT, lT)
            g_r = dot(wx, dlg_r) + W * la - dot(wT, lT)
            g_alpha = W * r / alpha - r * dot(wT, iaT) - dot(wxT, iaT)
            g_a = dot(wx, dB1_a)
            g_b = dot(wx, dB1_b)
            # mixture with the "dropped out after t_x" term, x > 0
            if ix1.size:
                R = r + x1
                atx = alpha + utx
                dl = np.log(atx)[itx1] - lT[iT1]
                d = dB[ix1] - R * dl
                e = np.exp(-np.abs(d))
                ll += dot(w1, (np.maximum(d, 0.0) + np.log1p(e)))
                q2 = np.where(d > 0, 1.0, e) / (1.0 + e)  # share of the second term
                wq2 = w1 * q2
                g_r -= dot(wq2, dl)
                g_alpha -= dot((wq2 * R), ((1.0 / atx)[itx1] - iaT[iT1]))
                cnt = np.bincount(ix1, weights=wq2, minlength=nx)
                g_a += dB_a * float(cnt.sum())
                g_b += dot(cnt, dB_b)
            return ll, np.array([g_r, g_alpha, g_a, g_b])

        return loglik

    def log_likelihood(self, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """Per-customer log-likelihood (FHL 2005 eq. 6) at the current parameters."""
        r, alpha, a, b = self._theta()
        x, tx, T = prediction_inputs(frequency, recency, T)
        base = sc.gammaln(r + x) - sc.gammaln(r) + r * np.log(alpha) - sc.betaln(a, b)
        t1 = sc.betaln(a, b + x) - (r + x) * np.log(alpha + T)
        with np.errstate(divide="ignore"):
            t2 = np.where(x > 0, sc.betaln(a + 1, np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + tx), -np.inf)
        return base + np.logaddexp(t1, t2)

    # ------------------------------------------------------------------ predictions
    def _p_alive(self, x, tx, T):
        """P(alive) of checked inputs, reused across the scoring calls on the same customers."""
        return self._cached("p_alive", lambda *a: sc.expit(-self._log_odds_inactive(*a)), x, tx, T)

    def _log_odds_inactive(self, x, tx, T):
        r, alpha, a, b = self._theta()
        with np.errstate(divide="ignore", invalid="ignore"):
            # log((alpha+T)/(alpha+t_x)) as one log1p (also exact for T = t_x)
            lo = (np.log(a) - np.log(np.maximum(b + x - 1.0, 1e-300))
                  + (r + x) * np.log1p((T - tx) / (alpha + tx)))
        return np.where(x > 0, lo, -np.inf)

    def conditional_probability_alive(self, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """P(active at T | x, t_x, T) = 1 / (1 + 1{x>0} a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x)).

        Fader, Hardie & Lee (2008), "Computing P(alive) using the BG/NBD model" (its reciprocal is
        also the denominator of FHL 2005 eq. 10); evaluated as a logistic function of the
        log-odds, so it never overflows.
        """
        x, tx, T = prediction_inputs(frequency, recency, T)
        return self._p_alive(x, tx, T).copy()  # the cached array stays untouched by the caller

    def conditional_expected_number_of_purchases_up_to_time(
        self, t: Any, frequency: Any, recency: Any, T: Any
    ) -> np.ndarray:
        """E[Y(t) | x, t_x, T]: expected purchases in ``(T, T+t]`` (FHL 2005 eq. 10).

        ``(a+b+x-1)/(a-1) [1 - ((alpha+T)/(alpha+T+t))^(r+x) 2F1(r+x, b+x; a+b+x-1;
        t/(alpha+T+t))] / (1 + 1{x>0} a/(b+x-1) ((alpha+T)/(alpha+t_x))^(r+x))``, i.e.
        ``P(alive) * E[(1-exp(-lambda p t))/p | active]`` with posterior ``lambda ~ Gamma(r+x,
        alpha+T)``, ``p ~ Beta(a, b+x)``; see :func:`expected_purchases_while_active`.
        """
        r, alpha, a, b = self._theta()
        t = broadcast_float("t", t)
        x, tx, T = prediction_inputs(frequency, recency, T)
        t, x, tx, T = np.broadcast_arrays(t, x, tx, T)
        rep = repeated_rows(t, x, T)  # the bracket depends on (t, x, T) only: once per distinct row
        if rep is not None:
            (ut, ux, uT), inv = rep
            active = expected_purchases_while_active(ut, r + ux, a, b + ux, alpha + uT)[inv].reshape(x.shape)
        else:
            active = expected_purchases_while_active(t, r + x, a, b + x, alpha + T)
        return self._p_alive(x, tx, T) * active  # inputs already checked

    def probability_of_purchase_within(self, t: Any, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """P(at least one purchase in ``(T, T+t]`` | x, t_x, T).

        A customer inactive at ``T`` never buys again; one still active buys in the window unless
        the exponential waiting time to the next purchase exceeds ``t`` (dropout in the BG/NBD
        happens only right after a purchase, FHL 2005 model assumptions).  Given activity
        at T the data multiply the Gamma prior of ``lambda`` by ``lambda^x exp(-lambda T)``, so
        ``lambda | active ~ Gamma(r+x, alpha+T)`` independently of ``p`` and:
        ``P = P(alive) * [1 - ((alpha+T)/(alpha+T+t))^(r+x)]``.
        """
        r, alpha, a, b = self._theta()
        t = broadcast_float("t", t)
        x, tx, T = prediction_inputs(frequency, recency, T)
        t, x, tx, T = np.broadcast_arrays(t, x, tx, T)
        no_buy = -np.expm1(-(r + x) * np.log1p(t / (alpha + T)))
        return self.conditional_probability_alive(x, tx, T) * no_buy

    def expected_number_of_purchases_up_to_time(self, t: Any) -> np.ndarray:
        """Population E[X(t)] for a customer with first purchase at 0 (FHL 2005 eq. 7).

        ``(a+b-1)/(a-1) [1 - (alpha/(alpha+t))^r 2F1(r, b; a+b-1; t/(alpha+t))]``.
        """
        r, alpha, a, b = self._theta()
        t = broadcast_float("t", t)
        return expected_purchases_while_active(t, np.full(t.shape, r), a, np.full(t.shape, b), np.full(t.shape, alpha))
