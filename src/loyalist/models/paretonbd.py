"""Pareto/NBD model of repeat buying in continuous time.

Schmittlein, D. C., Morrison, D. G. & Colombo, R. (1987), "Counting Your Customers: Who Are They
and What Will They Do Next?", *Management Science* 33(1), 1-24 (below: SMC 1987), with the
expressions as derived in Fader, P. S. & Hardie, B. G. S. (2005), "A Note on Deriving the
Pareto/NBD Model and Related Expressions", brucehardie.com/notes/009 (below: FH 2005 note).

Assumptions: while alive a customer buys as a Poisson process of rate ``lambda ~ Gamma(r, alpha)``;
their unobserved lifetime is exponential with rate ``mu ~ Gamma(s, beta)``; ``lambda`` and ``mu``
are independent.  Data: ``x`` repeat purchases, recency ``t_x``, age ``T`` (one time unit).

Numerics
--------
The likelihood (FH 2005 note, with its ``A_0`` term for the cases alpha >= beta and
alpha < beta) contains Gauss hypergeometric
functions ``2F1(r+s+x, s+1 | r+x; r+s+x+1; .)`` whose parameter derivatives have no closed form.
They are handled here through the integral they come from,

    ``L = G(r+x)/G(r) alpha^r beta^s [ (alpha+T)^-(r+x) (beta+T)^-s + s * int_{t_x}^T
          (alpha+y)^-(r+x) (beta+y)^-(s+1) dy ]``   (FH 2005 note, before integrating out the dropout time)

written as ``s (J(t_x) - J(T))`` with ``J(y) = int_y^inf (alpha+u)^-p (beta+u)^-q du``.  By Euler's
transformation of the ``A_0`` hypergeometric, ``J(y) = (alpha+u)^-p (beta+u)^-q (m+y)/(p+q-1)
* 2F1(1, b; p+q; v)`` with ``m = min(alpha, beta)``, ``v = |alpha-beta|/(max(alpha,beta)+y)`` in
``[0, 1)`` and ``b = p`` if ``alpha >= beta`` else ``q`` (see :func:`log_J`).  That ``2F1`` has all
positive terms with ratio below ``v``; it is summed in log space together with its exact
derivatives in ``b``, ``p+q`` and ``v``, which makes the gradient of the log-likelihood analytic
(no numerical differentiation), free of overflow for thousands of purchases or very long ``T``.
Each ``J`` is computed once per distinct ``(x, t_x)`` and ``(x, T)`` pair.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special as sc

from loyalist.models._base import (
    dot,
    BaseModel,
    broadcast_float,
    columns_from,
    compress,
    prediction_inputs,
    validate_rfm,
    warn_if_no_repeat_purchases,
)

__all__ = ["ParetoNBD", "log_J"]

_MAX_TERMS = 200_000


_CHUNK = 8192  # elements per block: keeps the series' working arrays in cache


def _hyp_series(b: np.ndarray, c: np.ndarray, v: np.ndarray, grad: bool):
    """``G = 2F1(1, b; c; v) = sum_n (b)_n/(c)_n v^n`` for ``0 <= v < 1``, ``0 < b < c``.

    Returns ``log G`` and, with ``grad``, ``dG/db / G``, ``dG/dc / G``, ``dG/dv / G`` (term-wise
    derivatives: ``d log t_n/db = sum_{k<n} 1/(b+k)``, ``d log t_n/dc = -sum_{k<n} 1/(c+k)``,
    ``d t_n/dv = n t_n / v``).  All terms are positive, start at 1 and decrease with ratio
    ``(b+n)/(c+n) v < v``, so the summation is stable and cannot overflow.  Elements leave the
    (shrinking) active set once the remaining tail, bounded geometrically, is below 1e-16 of the
    sum (derivative tails included).  Processed in cache-sized blocks.
    """
    n_el = v.size
    logG = np.zeros(n_el)
    gb = np.zeros(n_el)
    gc = np.zeros(n_el)
    gv = np.zeros(n_el)
    if grad:
        zero = v <= 0
        gv[zero] = (b / c)[zero]
    # v close to 1 with a small c - b: the series needs up to 1e5+ terms, the expansion around
    # v = 1 converges fast instead
    near1 = (v > 0.95) & (c - b <= 30.0) & (b * (1.0 - v) <= 2.0)
    todo = np.flatnonzero((v > 0) & ~near1)
    for s0 in range(0, todo.size, _CHUNK):
        _hyp_block(todo[s0:s0 + _CHUNK], b, c, v, grad, logG, gb, gc, gv)
    if near1.any():
        k = np.flatnonzero(near1)
        lg, db, dc, dv = _hyp_near_one(b[k], c[k], v[k])
        logG[k] = lg
        if grad:
            gb[k], gc[k], gv[k] = db, dc, dv
    return logG, gb, gc, gv


def _connection(b, c, v):
    """``2F1(1, b; c; v)`` and its derivatives in ``b, c, v`` by the connection formula at 1.

    Abramowitz & Stegun 15.3.6 with ``a = 1`` (the second hypergeometric collapses to a power):
    ``G = (c-1)/d 2F1(1, b; 1-d; 1-v) + G(c) G(-d)/G(b) (1-v)^d v^(1-c)``, ``d = c-1-b``
    (``d`` not an integer; see :func:`_hyp_near_one`).  Returns ``(G, dG/db, dG/dc, dG/dv)``.
    """
    d = c - 1.0 - b
    w = 1.0 - v
    # S1 = sum_n (b)_n / (1-d)_n w^n with term-wise derivatives
    t = np.ones_like(v)
    S, Sb, Sd, Sw = t.copy(), np.zeros_like(v), np.zeros_like(v), np.zeros_like(v)
    P = np.zeros_like(v)
    Q = np.zeros_like(v)
    for n in range(400):
        ratio = (b + n) / (1.0 - d + n)
        P = P + 1.0 / (b + n)
        Q = Q + 1.0 / (1.0 - d + n)
        t = t * ratio * w
        S += t
        Sb += t * P
        Sd += t * Q
        Sw += t * (n + 1)
        if np.all(np.abs(t) * (n + 2) <= 1e-17 * np.abs(S)):
            break
    Sw = Sw / w
    A = (c - 1.0) / d * S
    # dA: S depends on b and d = c-1-b
    A_b = (c - 1.0) * ((Sb - Sd) / d + S / d**2)
    A_c = S / d + (c - 1.0) * (Sd / d - S / d**2)
    A_v = -(c - 1.0) / d * Sw
    lnB = sc.gammaln(c) + sc.gammaln(-d) - sc.gammaln(b) + d * np.log(w) + (1.0 - c) * np.log(v)
    Bv = sc.gammasgn(-d) * np.exp(lnB)
    psi_md = sc.digamma(-d)
    B_b = Bv * (psi_md - sc.digamma(b) - np.log(w))
    B_c = Bv * (sc.digamma(c) - psi_md + np.log(w) - np.log(v))
    B_v = Bv * (-d / w + (1.0 - c) / v)
    return A + Bv, A_b + B_b, A_c + B_c, A_v + B_v


def _hyp_near_one(b, c, v):
    """``log 2F1(1, b; c; v)`` and relative derivatives for ``v`` near 1 (:func:`_connection`).

    Where ``d = c-1-b`` is within 5e-4 of a non-negative integer the two terms have cancelling
    poles: the function (analytic in ``c``) is then interpolated by a quintic through ``d``
    values 1e-3, 2e-3 and 3e-3 either side of the integer.
    """
    d = c - 1.0 - b
    k = np.round(d)
    near = (np.abs(d - k) < 5e-4) & (k >= 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        G, Gb, Gc, Gv = _connection(b, c, v)  # entries near a pole are replaced below
    if near.any():
        i = np.flatnonzero(near)
        nodes = np.array([-3e-3, -2e-3, -1e-3, 1e-3, 2e-3, 3e-3])
        x0 = (d - k)[i]
        vals = [ _connection(b[i], (c - (d - k))[i] + h, v[i]) for h in nodes ]
        # Lagrange weights at x0 for the four nodes
        wts = []
        for j, hj in enumerate(nodes):
            wj = np.ones_like(x0)
            for m_, hm in enumerate(nodes):
                if m_ != j:
                    wj = wj * (x0 - hm) / (hj - hm)
            wts.append(wj)
        G[i] = sum(wj * val[0] for wj, val in zip(wts, vals))
        Gb[i] = sum(wj * val[1] for wj, val in zip(wts, vals))
        Gc[i] = sum(wj * val[2] for wj, val in zip(wts, vals))
        Gv[i] = sum(wj * val[3] for wj, val in zip(wts, vals))
    return np.log(G), Gb / G, Gc / G, Gv / G


def _hyp_block(idx, b, c, v, grad, logG, gb, gc, gv) -> None:
    bb, cc, vv = b[idx], c[idx], v[idx]
    m = idx.size
    t = np.ones(m)  # current term
    G = np.ones(m)
    tol = 1e-16 * (1.0 - vv) ** 2
    if grad:
        P = np.zeros(m)  # d log term / db
        Q = np.zeros(m)  # d log term / dc
        Gb = np.zeros(m)
        Gc = np.zeros(m)
        Gn = np.zeros(m)  # sum n t_n
    ib = np.empty(m)
    ic = np.empty(m)
    rho = np.empty(m)
    tmp = np.empty(m)
    n = 0
    while True:
        np.add(bb, n, out=ib)
        np.add(cc, n, out=ic)
        np.divide(ib, ic, out=rho)
        rho *= vv
        t *= rho
        G += t
        n += 1
        if grad:
            np.reciprocal(ib, out=ib)
            P += ib
            np.reciprocal(ic, out=ic)
            Q -= ic
            np.multiply(t, P, out=tmp)
            Gb += tmp
            np.multiply(t, Q, out=tmp)
            Gc += tmp
            np.multiply(t, n, out=tmp)
            Gn += tmp
        if n % 2 and n < _MAX_TERMS:
            continue
        np.multiply(G, tol, out=tmp)
        done = t * (n + 1.0) <= tmp
        if n >= _MAX_TERMS:  # pathological v ~ 1: add the geometric tail estimate and stop
            geo = rho / np.maximum(1.0 - rho, 1e-300)
            G += t * geo
            if grad:
                Gb += t * geo * P
                Gc += t * geo * Q
                Gn += t * geo * (n + 1.0 / np.maximum(1.0 - rho, 1e-300))
            done[:] = True
        if not done.any():
            continue
        fin = idx[done]
        Gd = G[done]
        logG[fin] = np.log(Gd)
        if grad:
            gb[fin] = Gb[done] / Gd
            gc[fin] = Gc[done] / Gd
            gv[fin] = Gn[done] / (Gd * vv[done])
        if done.all():
            return
        keep = ~done
        idx, bb, cc, vv, tol, t, G = idx[keep], bb[keep], cc[keep], vv[keep], tol[keep], t[keep], G[keep]
        if grad:
            P, Q, Gb, Gc, Gn = P[keep], Q[keep], Gb[keep], Gc[keep], Gn[keep]
        m = idx.size
        ib, ic, rho, tmp = np.empty(m), np.empty(m), np.empty(m), np.empty(m)


def log_J(y, p, q, alpha: float, beta: float, grad: bool = True):
    """``log J`` with ``J(y) = int_y^inf (alpha+u)^(-p) (beta+u)^(-q) du`` (``p, q > 0``, ``p+q > 1``).

    Closed form (FH 2005 note, the ``A_0`` expressions, after Euler's transformation
    ``2F1(a, b; c; z) = (1-z)^(c-a-b) 2F1(c-a, c-b; c; z)``):

    * ``alpha >= beta``: ``J = (alpha+y)^-p (beta+y)^(1-q) / (p+q-1) * 2F1(1, p; p+q; v)``,
      ``v = (alpha-beta)/(alpha+y)``;
    * ``alpha < beta``:  ``J = (alpha+y)^(1-p) (beta+y)^-q / (p+q-1) * 2F1(1, q; p+q; v)``,
      ``v = (beta-alpha)/(beta+y)``.

    Returns ``log J`` and, with ``grad``, its partial derivatives in ``p, q, alpha, beta``.
    """
    y = np.asarray(y, float)
    p = np.broadcast_to(np.asarray(p, float), y.shape)
    q = np.broadcast_to(np.asarray(q, float), y.shape)
    A = alpha + y
    B = beta + y
    lA, lB = np.log(A), np.log(B)
    c = p + q
    K = c - 1.0
    if alpha >= beta:
        v = (alpha - beta) / A
        b = p
        lm = lB
    else:
        v = (beta - alpha) / B
        b = q
        lm = lA
    logG, gb, gc, gv = _hyp_series(b, c, v, grad)
    logJ = -p * lA - q * lB + lm - np.log(K) + logG
    if not grad:
        return logJ
    d_p = -lA - 1.0 / K + gc
    d_q = -lB - 1.0 / K + gc
    if alpha >= beta:
        d_p = d_p + gb
        d_alpha = -p / A + gv * (B / (A * A))
        d_beta = -q / B + 1.0 / B - gv / A
    else:
        d_q = d_q + gb
        d_alpha = -p / A + 1.0 / A - gv / B
        d_beta = -q / B + gv * (A / (B * B))
    return logJ, d_p, d_q, d_alpha, d_beta


def _g_ratio(a, u):
    """``(1 - (1+u)^-a) / a`` without cancellation, equal to ``log1p(u)`` at ``a = 0``."""
    L = np.log1p(u)
    return L * sc.exprel(-a * L)


class ParetoNBD(BaseModel):
    """Pareto/NBD model (SMC 1987; FH 2005 note).

    Parameters (``params_``): ``r``, ``alpha`` (Gamma heterogeneity of the purchase rate) and
    ``s``, ``beta`` (Gamma heterogeneity of the dropout rate).

    The likelihood's gradient is analytic: the ``2F1`` terms are summed as series whose
    parameter-derivatives are accumulated alongside (module docstring); numerical
    differentiation is used only for the Hessian behind ``standard_errors_``.
    """

    _param_names = ("r", "alpha", "s", "beta")
    _model_name = "Pareto/NBD"

    def fit(
        self,
        frequency: Any,
        recency: Any = None,
        T: Any = None,
        weights: Any = None,
        initial_params: dict[str, float] | None = None,
    ) -> "ParetoNBD":
        """Maximum-likelihood fit (FH 2005 note likelihood) with analytic gradient."""
        (f, rec, TT), weights = columns_from(
            frequency, (recency, T), ("frequency", "recency", "T"), weights, self._model_name
        )
        x, tx, T_, w = validate_rfm(f, rec, TT, weights)
        warn_if_no_repeat_purchases(x, w, self._model_name)
        pat = compress(x, tx, T_, weights=w)
        scale = max(float(np.average(T_, weights=w)), 1e-6)
        mean_x = max(float(np.average(x, weights=w)), 0.05)
        guesses = [
            np.array([1.0, scale / (2.0 * mean_x), 1.0, scale / (2.0 * mean_x)]),
            np.array([0.5, scale / 10.0, 0.5, scale]),
            np.array([2.0, scale, 2.0, scale / 10.0]),
        ]
        starts = self._initial(initial_params, guesses)
        return self._run_mle(pat, starts, int(np.round(w.sum())))

    @staticmethod
    def _make_loglik(pat):
        """Log-likelihood (FH 2005 note, integral form of the likelihood) and analytic gradient."""
        x, tx, T = pat.columns
        w = pat.counts
        ux, uT = pat.levels[0], pat.levels[2]
        ix, iT = pat.codes[0], pat.codes[2]
        wx = np.bincount(ix, weights=w, minlength=ux.size)
        (pxT, pT), _, iPT = compress(x, T)  # distinct (x, T) pairs
        (pxt, ptx), _, iPt = compress(x, tx)  # distinct (x, t_x) pairs
        W = float(w.sum())
        same = tx == T  # J(t_x) - J(T) is exactly 0

        def loglik(theta):
            r, alpha, s, beta = theta
            lg = sc.gammaln(r + ux) - sc.gammaln(r)
            dlg = sc.digamma(r + ux) - sc.digamma(r)
            la_, lb_ = np.log(alpha), np.log(beta)
            ll = dot(wx, lg) + W * (r * la_ + s * lb_)
            g = np.array([dot(wx, dlg) + W * la_, W * r / alpha, W * lb_, W * s / beta])

            lAu = np.log(alpha + uT)
            lBu = np.log(beta + uT)
            lAT = lAu[iT]
            lBT = lBu[iT]
            la = -(r + x) * lAT - s * lBT
            J2, J2p, J2q, J2a, J2b = log_J(pT, r + pxT, s + 1.0, alpha, beta)
            J1, J1p, J1q, J1a, J1b = log_J(ptx, r + pxt, s + 1.0, alpha, beta)
            ls = np.log(s)
            lj2 = J2[iPT]
            lj1 = J1[iPt]
            # likelihood bracket relative to exp(M): A_T + s (J(t_x) - J(T))
            M = np.maximum(la, ls + lj1)
            ea = np.exp(la - M)
            e1 = np.exp(ls + lj1 - M)
            e2 = np.exp(ls + lj2 - M)
            diff = e1 - e2
            off = same | (diff <= 0)
            diff[off] = 0.0
            Bk = ea + diff
            ll += dot(w, (M + np.log(Bk)))
            wB = w / Bk
            wa = wB * ea
            w1 = wB * e1
            w2 = wB * e2
            w1[off] = 0.0
            w2[off] = 0.0
            # sum over customers of w * dJ[pair] = dJ @ (weights aggregated per pair)
            c1 = np.bincount(iPt, weights=w1, minlength=ptx.size)
            c2 = np.bincount(iPT, weights=w2, minlength=pT.size)
            cA = np.bincount(iT, weights=wa, minlength=uT.size)
            cAx = np.bincount(iT, weights=wa * x, minlength=uT.size)
            iAu = 1.0 / (alpha + uT)
            iBu = 1.0 / (beta + uT)
            s12 = float(c1.sum() - c2.sum())
            g[0] += -dot(cA, lAu) + (dot(c1, J1p) - dot(c2, J2p))
            g[1] += -dot((r * cA + cAx), iAu) + (dot(c1, J1a) - dot(c2, J2a))
            g[2] += -dot(cA, lBu) + s12 / s + (dot(c1, J1q) - dot(c2, J2q))
            g[3] += -s * dot(cA, iBu) + (dot(c1, J1b) - dot(c2, J2b))
            return ll, g

        return loglik

    # ------------------------------------------------------------------ per-customer pieces
    def _log_parts(self, x, tx, T):
        """``log`` of the alive-at-T term, and of the likelihood bracket (FH 2005 note)."""
        r, alpha, s, beta = self._theta()
        la = -(r + x) * np.log(alpha + T) - s * np.log(beta + T)
        (ux, ut), _, inv1 = compress(x.ravel(), tx.ravel())
        (vx, vT), _, inv2 = compress(x.ravel(), T.ravel())
        lj1 = np.log(s) + log_J(ut, r + ux, s + 1.0, alpha, beta, grad=False)[inv1].reshape(x.shape)
        lj2 = np.log(s) + log_J(vT, r + vx, s + 1.0, alpha, beta, grad=False)[inv2].reshape(x.shape)
        M = np.maximum(la, lj1)
        diff = np.clip(np.exp(lj1 - M) - np.exp(lj2 - M), 0.0, None)
        diff = np.where(tx == T, 0.0, diff)
        return la, M + np.log(np.exp(la - M) + diff)

    def log_likelihood(self, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """Per-customer log-likelihood (FH 2005 note) at the current parameters."""
        r, alpha, s, beta = self._theta()
        x, tx, T = prediction_inputs(frequency, recency, T)
        _, lbr = self._log_parts(x, tx, T)
        return sc.gammaln(r + x) - sc.gammaln(r) + r * np.log(alpha) + s * np.log(beta) + lbr

    def conditional_probability_alive(self, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """P(alive at T | x, t_x, T) (SMC 1987; FH 2005 note, P(alive) expression).

        ``(alpha+T)^-(r+x) (beta+T)^-s / [likelihood bracket]`` = ``1 / (1 + s/(r+s+x) (alpha+T)^(r+x)
        (beta+T)^s A_0)``, computed as a difference of logs.
        """
        x, tx, T = prediction_inputs(frequency, recency, T)
        la, lbr = self._log_parts(x, tx, T)
        return np.minimum(np.exp(la - lbr), 1.0)

    def conditional_expected_number_of_purchases_up_to_time(
        self, t: Any, frequency: Any, recency: Any, T: Any
    ) -> np.ndarray:
        """E[Y(t) | x, t_x, T] (SMC 1987; FH 2005 note, conditional expectation).

        ``(r+x)(beta+T) / ((alpha+T)(s-1)) [1 - ((beta+T)/(beta+T+t))^(s-1)] P(alive)``; the
        ``s = 1`` limit ``(r+x)(beta+T)/(alpha+T) log(1 + t/(beta+T))`` is handled continuously.
        """
        r, alpha, s, beta = self._theta()
        t = broadcast_float("t", t)
        x, tx, T = prediction_inputs(frequency, recency, T)
        t, x, tx, T = np.broadcast_arrays(t, x, tx, T)
        active = (r + x) / (alpha + T) * (beta + T) * _g_ratio(s - 1.0, t / (beta + T))
        return self.conditional_probability_alive(x, tx, T) * active

    def probability_of_purchase_within(self, t: Any, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """P(at least one purchase in ``(T, T+t]`` | x, t_x, T).

        Derivation (from the SMC 1987 assumptions): given alive at ``T`` with rates ``lambda, mu``
        the next purchase, at an exponential(``lambda``) time ``w``, falls in the window if it
        precedes both ``t`` and death: probability ``int_0^t lambda e^{-(lambda+mu) w} dw``.  Under
        the posterior ``lambda ~ Gamma(r+x, alpha+T)``, ``mu ~ Gamma(s, beta+T)`` (independent, as
        in the FH 2005 note's derivation of the conditional expectation) this is
        ``(r+x) (alpha+T)^(r+x) (beta+T)^s int_T^(T+t) (alpha+u)^-(r+x+1) (beta+u)^-s du``,
        evaluated as ``J(T) - J(T+t)`` with :func:`log_J`; the result is multiplied by P(alive).
        """
        r, alpha, s, beta = self._theta()
        t = broadcast_float("t", t)
        x, tx, T = prediction_inputs(frequency, recency, T)
        t, x, tx, T = np.broadcast_arrays(t, x, tx, T)
        xf, Tf, tf = x.ravel(), T.ravel(), t.ravel()
        (ux, uT), _, inv = compress(xf, Tf)
        lj0 = log_J(uT, r + ux + 1.0, s, alpha, beta, grad=False)[inv]
        (vx, vT), _, inv2 = compress(xf, Tf + tf)
        lj1 = log_J(vT, r + vx + 1.0, s, alpha, beta, grad=False)[inv2]
        pre = np.log(r + xf) + (r + xf) * np.log(alpha + Tf) + s * np.log(beta + Tf)
        with np.errstate(divide="ignore"):
            buy = np.exp(pre + lj0 + np.log(-np.expm1(np.minimum(lj1 - lj0, 0.0))))
        buy = np.where(tf > 0, np.minimum(buy, 1.0), 0.0).reshape(x.shape)
        return self.conditional_probability_alive(x, tx, T) * buy

    def expected_number_of_purchases_up_to_time(self, t: Any) -> np.ndarray:
        """Population E[X(t)] (SMC 1987; FH 2005 note, expected number of transactions).

        ``r beta / (alpha (s-1)) [1 - (beta/(beta+t))^(s-1)]`` (continuous at ``s = 1``).
        """
        r, alpha, s, beta = self._theta()
        t = broadcast_float("t", t)
        return r / alpha * beta * _g_ratio(s - 1.0, t / beta)
