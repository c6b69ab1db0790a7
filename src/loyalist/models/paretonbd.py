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
``[0, 1)`` and ``b = p`` if ``alpha >= beta`` else ``q`` (see :func:`log_J`).  That ``2F1`` is
evaluated (:func:`_hyp_series`) by its power series (all terms positive, ratio below ``v``) where
that converges quickly, and near ``v = 1`` by the connection formula or by Gauss-Legendre
quadrature of Euler's integral, in each case together with its exact derivatives in ``b``,
``p+q`` and ``v``: the gradient of the log-likelihood is analytic (no numerical
differentiation), free of overflow for thousands of purchases or very long ``T``, and every
evaluation takes bounded time for any parameters (``v -> 1`` arises when ``alpha`` and ``beta``
are far apart, e.g. ``s, beta -> inf`` for data without heterogeneity in the dropout rate).  The
large terms ``s log(beta)`` and ``q log(beta+y)`` are combined analytically (``shift`` of
:func:`log_J`).  Each ``J`` is computed once per distinct ``(x, t_x)`` and ``(x, T)`` pair.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
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

_SERIES_TERMS = 400  # the power series is used only where it provably converges within this
_CHUNK = 8192  # elements per block: keeps the series' working arrays in cache


def _hyp_series(b, c, v, grad: bool, w=None, d=None):
    """``G = 2F1(1, b; c; v) = sum_n (b)_n/(c)_n v^n`` for ``0 <= v < 1``, ``0 < b < c``, ``c > 1``.

    Returns ``log G`` and, with ``grad``, ``dG/db / G``, ``dG/dc / G``, ``dG/dv / G``.  ``w = 1 - v``
    and ``d = c - b`` may be passed when known more accurately than by subtraction (``v`` near 1,
    ``b >> c - b``).

    Three evaluations, chosen per element so that each is accurate (``log G`` to ~1e-15 relative,
    ~1e-11 at worst next to integer ``c-1-b`` with ``v`` near 1)
    and costs bounded time:

    * the power series (:func:`_hyp_block`) where it provably reaches its stopping rule within
      ``_SERIES_TERMS`` terms (checked in closed form from ``log t_N``): ``v`` not close to 1, or
      ``b << c``;
    * near ``v = 1`` with ``b w <= 1``: the connection formula (:func:`_hyp_connection`), a few
      dozen terms, where its a-posteriori rounding bound accepts it;
    * otherwise Euler's integral ``G = (c-1) int_0^inf exp(F(D)) dD`` with
      ``F = (1-d) D - b log(1 + w (e^D - 1))`` (:func:`_hyp_quad`): a log-concave integrand,
      integrated by Gauss-Legendre panels sized to it; any ``b, c, v`` (~200 nodes).

    (The power series alone needs up to ``1e5``+ slowly decaying terms per element as ``v -> 1``
    with ``b(1-v)`` not small: a fit whose optimiser walks towards ``s, beta -> inf`` -- no
    heterogeneity in the dropout rate, as on Online Retail II -- then seemed to hang.)
    """
    b = np.asarray(b, float)
    c = np.asarray(c, float)
    v = np.asarray(v, float)
    w = 1.0 - v if w is None else np.asarray(w, float)
    d = c - b if d is None else np.asarray(d, float)
    n_el = v.size
    logG = np.zeros(n_el)
    if grad:
        gb = np.zeros(n_el)
        gc = np.zeros(n_el)
        gv = np.zeros(n_el)
    else:  # never read: one shared scratch array
        gb = gc = gv = np.empty(n_el)
    if grad:
        zero = v <= 0
        gv[zero] = (b / c)[zero]
    pos = v > 0
    # runs of equal (b, c) (callers sort by frequency): fixed-length polynomials, Horner's rule
    done = _hyp_poly(b, c, v, grad, logG, gb, gc, gv)
    if done is not None:
        pos &= ~done
    # series feasibility: the stopping rule t_N (N+1) <= 1e-16 w^2 (G >= 1) holds at N terms,
    # with log t_N = N log v + log (b)_N - log (c)_N (terms decrease, so it then stops by N);
    # t_N <= v^N settles most elements without the log-gamma functions
    N = float(_SERIES_TERMS - 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        lim = np.log(1e-16) + 2.0 * np.log(w) - 1.0 - np.log(N + 1.0)
        lv = N * np.log(np.where(pos, v, 1.0))
        fast = pos & (lv <= lim)
        hard = np.flatnonzero(pos & ~fast)
        if hard.size:
            bh, ch = b[hard], c[hard]
            logtN = lv[hard] + sc.gammaln(bh + N) - sc.gammaln(bh) - sc.gammaln(ch + N) + sc.gammaln(ch)
            fast[hard] = logtN <= lim[hard]
    todo = np.flatnonzero(fast)
    left = []
    for s0 in range(0, todo.size, _CHUNK):
        left.append(_hyp_block(todo[s0:s0 + _CHUNK], b, c, v, w, grad, logG, gb, gc, gv))
    # the rest (and, defensively, any element the series did not finish): near v = 1 with
    # b w <= 1 the connection formula where it is free of cancellation, else quadrature
    k = np.flatnonzero(pos & ~fast)
    if left:
        k = np.concatenate([k, *left])
    near = (v[k] > 0.5) & (b[k] * w[k] <= 1.0)
    if near.any():
        kn = k[near]
        lg, db, dc, dv, ok = _hyp_connection(b[kn], d[kn], v[kn], w[kn], grad)
        kk = kn[ok]
        logG[kk] = lg[ok]
        if grad:
            gb[kk], gc[kk], gv[kk] = db[ok], dc[ok], dv[ok]
        k = np.concatenate([k[~near], kn[~ok]])
    if k.size:
        lg, db, dc, dv = _hyp_quad(b[k], d[k], v[k], w[k], grad)
        logG[k] = lg
        if grad:
            gb[k], gc[k], gv[k] = db, dc, dv
    return logG, gb, gc, gv


_POLY_VMAX = 0.5  # runs of equal (b, c): elements with v up to this use _hyp_poly
_POLY_MAX_TERMS = 80
_POLY_MIN_RUN = 256  # shorter runs are left to the term recurrences (Python overhead per run)


def _poly_terms(vmax: float, ratio: float) -> int | None:
    """Terms ``N`` after which the tails of ``G`` and of its derivative series are below ~1e-17
    of their sums for every ``v <= vmax``: the coefficients ``(b)_n/(c)_n`` are at most 1 and
    the derivative weights at most ``n (1 + c/b)``, so ``vmax^(N+1) (N+2) <= 1e-17 (1-vmax)^2
    min(1, b/c)`` bounds every geometric tail."""
    if vmax <= 0.0:
        return 1
    lv = float(np.log(vmax))
    target = float(np.log(1e-17) + 2.0 * np.log1p(-vmax) + min(0.0, np.log(ratio)))
    for N in range(1, _POLY_MAX_TERMS + 1):
        if (N + 1) * lv + np.log(N + 2.0) <= target:
            return N
    return None


def _hyp_poly(b, c, v, grad, logG, gb, gc, gv) -> np.ndarray | None:
    """``2F1(1, b; c; v)`` where the elements come in runs of equal ``(b, c)``, in place.

    In the likelihood ``b`` and ``c`` depend on the frequency only (a few dozen distinct values
    for 1e5 customers) and ``v`` mostly stays small, so within a run the series is a polynomial
    with *scalar* coefficients ``(b)_n/(c)_n`` of a length fixed in advance (:func:`_poly_terms`),
    and so are the derivative series (coefficients times ``sum_{k<n} 1/(b+k)``,
    ``-sum_{k<n} 1/(c+k)`` and ``n``): each is evaluated by Horner's rule, two vector operations
    per term instead of the dozen of :func:`_hyp_block`'s term recurrences.  ``log G`` is taken
    as ``log1p(v H)`` with ``H = sum_{n>=1} (b)_n/(c)_n v^(n-1)`` (no rounding of the leading 1).
    All coefficients are positive (``c`` sums negative), so the sums do not cancel.  Returns the
    mask of elements done (None when the input has no useful runs).
    """
    n = v.size
    if n < _POLY_MIN_RUN:
        return None
    chg = np.flatnonzero((b[1:] != b[:-1]) | (c[1:] != c[:-1])) + 1
    if chg.size > n // 16:
        return None
    edges = np.concatenate([[0], chg, [n]])
    long_ = np.flatnonzero(np.diff(edges) >= _POLY_MIN_RUN)
    if long_.size == 0:
        return None
    done = np.zeros(n, bool)
    small = (v >= 0) & (v <= _POLY_VMAX)
    for i0, i1 in zip(edges[long_].tolist(), edges[long_ + 1].tolist()):
        ok = small[i0:i1]
        allok = bool(ok.all())
        if allok:
            vv = v[i0:i1]
            idx = slice(i0, i1)
        elif ok.any():
            idx = np.arange(i0, i1)[ok]
            vv = v[idx]
        else:
            continue
        bb, cc = float(b[i0]), float(c[i0])
        N = _poly_terms(float(vv.max()), bb / cc)
        if N is None:
            continue
        k = np.arange(N, dtype=float)
        a = np.empty(N + 1)
        a[0] = 1.0
        np.cumprod((bb + k) / (cc + k), out=a[1:])
        al = a.tolist()
        H = np.full(vv.size, al[N])  # sum_{n>=1} a_n v^(n-1)
        for j in range(N - 1, 0, -1):
            H *= vv
            H += al[j]
        H *= vv
        logG[idx] = np.log1p(H)
        done[idx] = True
        if grad:
            P = np.zeros(N + 1)
            np.cumsum(1.0 / (bb + k), out=P[1:])
            Q = np.zeros(N + 1)
            np.cumsum(-1.0 / (cc + k), out=Q[1:])
            ab, ac = (a * P).tolist(), (a * Q).tolist()
            av = (np.arange(1, N + 1) * a[1:]).tolist()  # d/dv: sum n a_n v^(n-1)
            Gb = np.full(vv.size, ab[N])
            Gc = np.full(vv.size, ac[N])
            Gv = np.full(vv.size, av[N - 1])
            for j in range(N - 1, -1, -1):
                Gb *= vv
                Gb += ab[j]
                Gc *= vv
                Gc += ac[j]
            for j in range(N - 2, -1, -1):
                Gv *= vv
                Gv += av[j]
            H += 1.0  # G
            gb[idx] = Gb / H
            gc[idx] = Gc / H
            gv[idx] = Gv / H
    return done


def _hyp_block(idx, b, c, v, w, grad, logG, gb, gc, gv) -> np.ndarray:
    """Power series for ``idx`` in place; returns the elements not finished in ``_SERIES_TERMS``.

    Term-wise derivatives: ``d log t_n/db = sum_{k<n} 1/(b+k)``, ``d log t_n/dc = -sum_{k<n}
    1/(c+k)``, ``d t_n/dv = n t_n / v``.  All terms are positive, start at 1 and decrease with
    ratio ``(b+n)/(c+n) v < v``, so the summation is stable and cannot overflow.  Elements leave
    the (shrinking) active set once the remaining tail, bounded geometrically, is below 1e-16 of
    the sum (derivative tails included).
    """
    bb, cc, vv = b[idx], c[idx], v[idx]
    m = idx.size
    t = np.ones(m)  # current term
    G = np.ones(m)
    tol = 1e-16 * w[idx] ** 2
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
        if n % 2:
            continue
        np.multiply(G, tol, out=tmp)
        done = t * (n + 1.0) <= tmp
        if not done.any() and n < _SERIES_TERMS:
            continue
        fin = idx[done]
        Gd = G[done]
        logG[fin] = np.log(Gd)
        if grad:
            gb[fin] = Gb[done] / Gd
            gc[fin] = Gc[done] / Gd
            gv[fin] = Gn[done] / (Gd * vv[done])
        if done.all():
            return idx[:0]
        if n >= _SERIES_TERMS:  # not expected (feasibility was checked): caller uses quadrature
            return idx[~done]
        keep = ~done
        idx, bb, cc, vv, tol, t, G = idx[keep], bb[keep], cc[keep], vv[keep], tol[keep], t[keep], G[keep]
        if grad:
            P, Q, Gb, Gc, Gn = P[keep], Q[keep], Gb[keep], Gc[keep], Gn[keep]
        m = idx.size
        ib, ic, rho, tmp = np.empty(m), np.empty(m), np.empty(m), np.empty(m)


def _log_poch(b, m):
    """``log G(b+m)/G(b)`` for ``b > 0``, ``m > 0`` with absolute error ~1e-16 (1 + |value|) (a
    difference of ``gammaln`` loses ``1e-16 gammaln(b)``, and ``scipy.special.poch`` about as
    much for ``b`` in the thousands).  Stirling's series at ``x = b + N >= 20`` (error < 1e-17), shifted
    down by ``log G(x+m)/G(x) - log G(b+m)/G(b) = sum_{k<N} log1p(m/(b+k))``."""
    b = np.asarray(b, float)
    m = np.asarray(m, float)
    N = 20
    low = b < N
    x = np.where(low, b + N, b)

    def R(z):  # Stirling remainder of log G(z) (Bernoulli terms to z^-9)
        z2 = 1.0 / (z * z)
        return (1.0 / 12 - z2 * (1.0 / 360 - z2 * (1.0 / 1260 - z2 * (1.0 / 1680 - z2 / 1188)))) / z

    out = (x - 0.5) * np.log1p(m / x) + m * (np.log(x + m) - 1.0) + (R(x + m) - R(x))
    if low.any():
        i = np.flatnonzero(low)
        k = np.arange(N)
        out[i] -= np.log1p(m[i, None] / (b[i, None] + k)).sum(1)
    return out


_CONNECTION_TERMS = 300
_CONNECTION_MAX_LOSS = 1e5  # accepted cancellation between the connection formula's parts: in G
_CONNECTION_MAX_LOSS_GRAD = 1e6  # ... in its derivatives (relative to their natural scales)


def _hyp_connection(b, P, v, w, grad):
    """``log 2F1(1, b; b+P; v)`` and relative derivatives by the connection formula at ``v = 1``.

    Abramowitz & Stegun 15.3.6 with ``a = 1`` (the second hypergeometric collapses to a power),
    ``e = c-1-b = P-1``:  ``G = (c-1)/e 2F1(1, b; 1-e; w) + G(c) G(-e)/G(b) w^e v^(1-c)``.  For
    ``b w <= 1`` the series in ``w = 1-v`` converges within a few dozen terms.  Both parts have
    poles at integer ``e`` that cancel in the sum; instead of special-casing them, the rounding
    error of ``G`` and of each derivative is bounded from the parts' absolute values.  Elements
    losing more than a factor ``_CONNECTION_MAX_LOSS`` to cancellation in ``G`` (error above
    ~1e-11; ``e`` within ~1e-5 of an integer when ``b w ~ 1``), or ``_CONNECTION_MAX_LOSS_GRAD``
    in a derivative (above ~1e-10 of its natural scale: ``1 + |log w|`` per unit of ``b`` or
    ``c``, ``(1 + (c-1) w) / w`` for ``v``; ``e`` within ~1e-4 of an integer), or whose series
    does not settle within ``_CONNECTION_TERMS`` terms, are reported in ``ok = False`` (the
    caller integrates them instead).  Returns ``(log G, dG/db / G, dG/dc / G, dG/dv / G, ok)``.
    """
    n_el = b.size
    e = P - 1.0
    K = P + b - 1.0  # c - 1
    c = K + 1.0
    one_e = 1.0 - e
    # S = sum_n T_n, T_n = (b)_n / (1-e)_n w^n, with term-wise derivative sums and |.| sums
    S, Sb, Sd, Sw = np.ones(n_el), np.zeros(n_el), np.zeros(n_el), np.zeros(n_el)
    Sa, Sba, Sda, Swa = np.ones(n_el), np.zeros(n_el), np.zeros(n_el), np.zeros(n_el)
    t = np.ones(n_el)
    Pn = np.zeros(n_el)
    Qn = np.zeros(n_el)
    act = np.arange(n_el)
    settled = np.zeros(n_el, bool)
    bb, oe, ww = b, one_e, w
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # integer e: caught below
        for n in range(_CONNECTION_TERMS):
            Pn = Pn + 1.0 / (bb + n)
            Qn = Qn + 1.0 / (oe + n)
            t = t * ((bb + n) / (oe + n) * ww)
            at = np.abs(t)
            S[act] += t
            Sa[act] += at
            Sb[act] += t * Pn
            Sba[act] += at * np.abs(Pn)
            Sd[act] += t * Qn
            Sda[act] += at * np.abs(Qn)
            Sw[act] += t * (n + 1)
            Swa[act] += at * (n + 1)
            # once n+2 > e the later ratios are positive, monotone, with limit w: geometric tail
            rho = np.maximum((bb + n + 1) / (oe + n + 1) * ww, ww)  # bounds all later ratios
            tail = at * rho / (1.0 - rho) ** 2 * (n + 3 + np.abs(Pn) + np.abs(Qn) + 1.0 / (bb + n))
            done = (oe + n + 1 > 0) & (rho < 0.9) & (tail <= 1e-17 * Sa[act])
            if done.any():
                settled[act[done]] = True
                keep = ~done
                act, t, Pn, Qn = act[keep], t[keep], Pn[keep], Qn[keep]
                bb, oe, ww = bb[keep], oe[keep], ww[keep]
                if act.size == 0:
                    break
    with np.errstate(all="ignore"):  # unsettled or pole elements: inf/nan, rejected below
        Sw, Swa = Sw / w, Swa / w
        A = K / e * S
        Aa = K / np.abs(e) * Sa
        lpc = _log_poch(b, P)  # log G(c)/G(b)
        lpc_err = 4e-16 * (1.0 + np.abs(lpc))
        lv = np.log1p(-w)
        lw = np.log(w)
        lgm = sc.gammaln(-e)
        lnB = lpc + lgm + e * lw - K * lv
        Bv = sc.gammasgn(-e) * np.exp(lnB)
        Ba = np.abs(Bv)
        G = A + Bv
        Gerr = 1e-16 * (Aa + Ba * (1.0 + np.abs(lgm) + np.abs(e * lw) + np.abs(K * lv))) + Ba * lpc_err
        ok = settled & np.isfinite(G) & (G > 0) & (Gerr <= 1e-16 * _CONNECTION_MAX_LOSS * G)
        logG = np.log(G)
        if not grad:
            return logG, None, None, None, ok
        # d/db at fixed c (de/db = -1), d/dc at fixed b (de/dc = 1), d/dv (dw/dv = -1)
        A_b = K * ((Sb - Sd) / e + S / e**2)
        A_c = S / e + K * (Sd / e - S / e**2)
        A_v = -K / e * Sw
        psi_me = sc.digamma(-e)
        psi_b = sc.digamma(b)
        psi_c = sc.digamma(c)
        B_b = Bv * (psi_me - psi_b - lw)
        B_c = Bv * (psi_c - psi_me + lw - lv)
        B_v = Bv * (-e / w - K / (1.0 - w))
        # rounding bounds of the derivatives, relative to their natural scales (G per unit of
        # log-argument for b and c, G / w for v)
        Ab_a = K * ((Sba + Sda) / np.abs(e) + Sa / e**2)
        Ac_a = Sa / np.abs(e) + K * (Sda / np.abs(e) + Sa / e**2)
        Av_a = K / np.abs(e) * Swa
        sB = Ba * (1.0 + lpc_err * 1e16)
        Bb_a = sB * (np.abs(psi_me) + np.abs(psi_b) + np.abs(lw))
        Bc_a = sB * (np.abs(psi_c) + np.abs(psi_me) + np.abs(lw) + np.abs(lv))
        Bv_a = sB * (np.abs(e) / w + K / (1.0 - w))
        lim = 1e-16 * _CONNECTION_MAX_LOSS_GRAD * G
        ok &= (1e-16 * (Ab_a + Bb_a) <= lim * (1.0 - lw)) & (1e-16 * (Ac_a + Bc_a) <= lim * (1.0 - lw))
        ok &= 1e-16 * (Av_a + Bv_a) * w <= lim * (1.0 + K * w)
        return logG, (A_b + B_b) / G, (A_c + B_c) / G, (A_v + B_v) / G, ok


# Gauss-Legendre rule on [0, 1] used on every panel of the quadrature
_GL_X, _GL_W = np.polynomial.legendre.leggauss(12)
_GL_X = 0.5 * (_GL_X + 1.0)
_GL_W = 0.5 * _GL_W
_PANEL_DROP = 4.0  # target decrease of log(integrand) across a panel
_PANEL_DROP_MAX = 8.0  # panels whose log(integrand) decreases more are halved
_PANEL_WIDTH = 1.5  # widest panel next to the integrand's complex singularities
_PANEL_GROWTH = 0.3  # farther away: at most this fraction of the distance to them
_TAIL_DROP = 40.0  # a march stops once log(integrand) fell by this much and ...
_TAIL_TOL = 1e-17  # ... the (concavity) bound on every neglected tail is below this, relatively
_MAX_PANELS = 500  # per side; generous (geometric panel growth needs < 100 for any input)


def _quad_terms(D, P, Q, K, w, v, full=False):
    """``F(D)`` (log integrand of :func:`_hyp_quad`) and ``t = w + v e^-D``; with ``full`` also
    ``e^-D``, ``expm1(-D)`` and ``phi = -log t`` accurate to ~1e-16 relative also for tiny ``D``.

    ``F = (1-P) D - Q l`` with ``l = log1p(w expm1 D)``; for ``P < 1`` the equal form
    ``(1-P) phi - K l`` (``phi = D - l``, ``K = P+Q-1``) avoids the cancellation between
    ``(1-P) D`` and ``Q l`` at large ``D``.  Both forms are sums of same-signed terms otherwise.
    """
    e = np.exp(-D)
    em = np.expm1(-D)
    t = w + v * e
    phi = -np.log(t)
    if full:
        near0 = t > 0.5  # phi ~ v D: -log1p(v expm1(-D)) keeps its relative accuracy
        if near0.any():
            phi[near0] = -np.log1p(np.broadcast_to(v, D.shape)[near0] * em[near0])
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        lp = np.log1p(-w * (em / e))  # w expm1(D), accurate for every D <= 700
    big = D > 700.0
    if big.any():
        lp = np.where(big, D - phi, lp)
    F = np.where(P < 1.0, (1.0 - P) * phi - K * lp, (1.0 - P) * D - Q * lp)
    if full:
        return F, t, e, em, phi
    return F, t


def _hyp_quad(b, d, v, w, grad):
    """``log 2F1(1, b; b+d; v)`` and relative derivatives in ``b``, ``c = b+d``, ``v`` by quadrature.

    Euler's integral ``2F1(1, b; c; v) = (c-1) int_0^1 (1-u)^(c-2) (1-vu)^(-b) du`` with
    ``u = 1 - e^-D`` is ``G = (c-1) int_0^inf exp(F(D)) dD``, ``F = (1-d) D - b log(1 + w(e^D-1))``,
    ``w = 1 - v``.  ``F`` is concave (``F'' = -b s (1-s)``, ``s = w e^D / t`` with ``t = w + v e^-D``)
    with its maximum at ``D* = max(0, log((1-d) v / (w (c-1))))``.  From ``D*`` the integral is
    marched outwards in panels over which ``F`` drops by about ``_PANEL_DROP`` (from the local
    slope and curvature; halved until the drop is at most ``_PANEL_DROP_MAX``), no wider than
    ``_PANEL_WIDTH`` near ``Re D = log(v/w) +- log(b)`` where ``F`` is strongly curved and next to
    its complex singularities (``Im D = +-pi``), growing geometrically away from there.  A march
    stops when ``F`` has dropped by ``_TAIL_DROP`` and the concavity bound ``e^F / |F'|`` on the
    rest, for the integrand and for each moment below, is below ``_TAIL_TOL`` of the sum so far.
    Each panel gets a 12-point Gauss-Legendre rule (relative error ~1e-16 on such panels).

    Derivatives are moments of the same integrand (differentiation under the integral):
    ``d log G/db = <phi>`` with ``phi = -log t``; ``d log G/dc = -(b/(c-1)) <D v e^-D / t>`` (by
    parts, free of the cancellation in ``1/(c-1) - <D>``); ``d log G/dv = <b (1-e^-D) / t>``.
    """
    P = np.asarray(d, float)
    Q = np.asarray(b, float)
    n = P.size
    K = P + Q - 1.0
    xs = np.log(v) - np.log(w)  # Re D of the singularities of the integrand
    LQ = np.log(np.maximum(Q, 1.0))  # |F''| >= 1 roughly within xs -+ LQ
    up = (1.0 - P) > Q * w
    with np.errstate(divide="ignore", invalid="ignore"):
        Dm = np.where(up, np.log(np.where(up, 1.0 - P, 1.0)) - np.log(K) + xs, 0.0)
    Dm = np.maximum(Dm, 0.0)
    Fm, _ = _quad_terms(Dm, P, Q, K, w, v)
    lows, highs, owners = [], [], []
    low1 = np.zeros(n)  # lower bounds of int exp(F - Fm) and of the moments' integrals
    lowm = np.zeros((3, n))

    def moments(D, t, i):
        return np.stack([-np.log(t), D * v[i] * np.exp(-D) / t, Q[i] * -np.expm1(-D) / t])

    for side in (1.0, -1.0):  # right of the maximum, then left of it (if interior)
        idx = np.arange(n) if side > 0 else np.flatnonzero(Dm > 0)
        a = Dm[idx]
        Fa = Fm[idx]
        ta = w[idx] + v[idx] * np.exp(-a)
        ga = moments(a, ta, idx)
        for _ in range(_MAX_PANELS):
            if idx.size == 0:
                break
            Pi, Qi, Ki, wi, vi, xi, Li = P[idx], Q[idx], K[idx], w[idx], v[idx], xs[idx], LQ[idx]
            s = wi / ta
            slope = side * ((1.0 - Pi) - Qi * s)  # d F / d(distance from the maximum)
            s1 = np.maximum(-slope, 0.0)
            s2 = Qi * s * (vi * np.exp(-a) / ta)
            with np.errstate(divide="ignore"):  # flat and straight: the width cap applies
                h = 2.0 * _PANEL_DROP / (s1 + np.sqrt(s1 * s1 + 2.0 * s2 * _PANEL_DROP))
            far = np.maximum(np.maximum(xi - Li - a, a - xi - Li), 0.0)
            h = np.minimum(h, np.maximum(_PANEL_WIDTH, _PANEL_GROWTH * far))
            if side < 0:
                h = np.minimum(h, a)
            for _ in range(60):
                e = a + side * h
                Fe, te = _quad_terms(e, Pi, Qi, Ki, wi, vi)
                bad = Fa - Fe > _PANEL_DROP_MAX
                if not bad.any():
                    break
                h = np.where(bad, 0.5 * h, h)
            lows.append(np.minimum(a, e))
            highs.append(np.maximum(a, e))
            owners.append(idx)
            rel = Fe - Fm[idx]
            ge = moments(e, te, idx)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                ex = np.exp(rel)
                low1[idx] += h * ex
                lowm[:, idx] += h * np.minimum(ga, ge) * ex
                a, Fa, ta, ga = e, Fe, te, ge
                s = wi / ta
                s1 = -side * ((1.0 - Pi) - Qi * s)  # decay rate of the integrand beyond a
                pos = s1 > 0
                s1p = np.where(pos, s1, 1.0)
                T1 = np.where(pos, ex / s1p, np.inf)
                if side > 0:
                    # tails of the moments: D <= a + (D - a); phi <= min(D, -log w);
                    # psi <= min(b/w, b e^D)
                    TD = np.where(pos, ex * (a / s1p + 1.0 / s1p**2), np.inf)
                    Tphi = np.minimum(-np.log(wi) * T1, TD)
                    Tpsi = np.minimum(Qi / wi * T1,
                                      np.where(s1 > 1.0, Qi * np.exp(a + rel) / (s1p - 1.0), np.inf))
                    lm = lowm[:, idx]
                    stop = ((rel < -_TAIL_DROP) & (T1 <= _TAIL_TOL * low1[idx])
                            & (Tphi <= _TAIL_TOL * lm[0]) & (TD <= _TAIL_TOL * lm[1])
                            & (Tpsi <= _TAIL_TOL * lm[2]))
                else:  # the moments' weights increase with D: the integrand's bound suffices
                    stop = (a <= 0.0) | ((rel < -_TAIL_DROP) & (T1 <= _TAIL_TOL * low1[idx]))
            keep = ~stop
            idx, a, Fa, ta, ga = idx[keep], a[keep], Fa[keep], ta[keep], ga[:, keep]
        # _MAX_PANELS is a safety cap only: panel widths grow geometrically away from the curved
        # region, and a sweep over b, d in [1e-8, 1e8], w in [1e-16, 1] needed < 100 per side.
        # Were it ever reached, the unfinished tails would simply be left out.
    A = np.concatenate(lows)
    H = np.concatenate(highs) - A
    E = np.concatenate(owners)
    nodes = A[:, None] + H[:, None] * _GL_X
    PE, QE, KE, wE, vE = (z[E][:, None] for z in (P, Q, K, w, v))
    if grad:
        Fn, tn, en, emn, phi = _quad_terms(nodes, PE, QE, KE, wE, vE, full=True)
    else:
        Fn, tn = _quad_terms(nodes, PE, QE, KE, wE, vE)
    ef = (H[:, None] * _GL_W) * np.exp(Fn - Fm[E][:, None])
    S = np.bincount(E, weights=ef.sum(1), minlength=n)
    logG = np.log(K) + Fm + np.log(S)
    if not grad:
        return logG, None, None, None
    Sb = np.bincount(E, weights=(ef * phi).sum(1), minlength=n)
    ef /= tn  # the weights of the c and v moments have t in the denominator
    Sc = np.bincount(E, weights=(ef * (nodes * en)).sum(1), minlength=n)
    Sv = np.bincount(E, weights=(ef * emn).sum(1), minlength=n)
    return logG, Sb / S, -(Q / K) * v * (Sc / S), -Q * (Sv / S)


def log_J(y, p, q, alpha: float, beta: float, grad: bool = True, shift=None):
    """``log J`` with ``J(y) = int_y^inf (alpha+u)^(-p) (beta+u)^(-q) du`` (``p, q > 0``, ``p+q > 1``).

    Closed form (FH 2005 note, the ``A_0`` expressions, after Euler's transformation
    ``2F1(a, b; c; z) = (1-z)^(c-a-b) 2F1(c-a, c-b; c; z)``):

    * ``alpha >= beta``: ``J = (alpha+y)^-p (beta+y)^(1-q) / (p+q-1) * 2F1(1, p; p+q; v)``,
      ``v = (alpha-beta)/(alpha+y)``;
    * ``alpha < beta``:  ``J = (alpha+y)^(1-p) (beta+y)^-q / (p+q-1) * 2F1(1, q; p+q; v)``,
      ``v = (beta-alpha)/(beta+y)``.

    Returns ``log J`` and, with ``grad``, its partial derivatives in ``p, q, alpha, beta``.  With
    ``shift = (k_a, k_b)`` the value returned is ``log J + k_a log(alpha) + k_b log(beta)`` (the
    derivatives stay those of ``log J``), computed as ``-p log1p(y/alpha) - (p-k_a) log(alpha)``
    etc.: with ``q ~ s`` in the thousands and ``beta ~ 1e8`` (a fit drifting towards homogeneous
    dropout) ``q log(beta+y)`` and ``s log(beta)`` are ~1e5 each and their difference would be
    left with ~1e-11 of rounding noise, enough to stall the optimiser's line search.
    """
    y = np.asarray(y, float)
    p = np.broadcast_to(np.asarray(p, float), y.shape)
    q = np.broadcast_to(np.asarray(q, float), y.shape)
    A = alpha + y
    B = beta + y
    la0, lb0 = np.log(alpha), np.log(beta)
    L1a, L1b = np.log1p(y / alpha), np.log1p(y / beta)
    lA, lB = L1a + la0, L1b + lb0  # log(alpha + y), log(beta + y)
    c = p + q
    K = c - 1.0
    if alpha >= beta:
        v = (alpha - beta) / A
        w = B / A  # 1 - v without cancellation
        b, d = p, q
        lm = lB
    else:
        v = (beta - alpha) / B
        w = A / B
        b, d = q, p
        lm = lA
    logG, gb, gc, gv = _hyp_series(b, c, v, grad, w=w, d=d)
    if shift is None:
        base = -p * lA - q * lB
    else:
        ka, kb = shift
        base = -p * L1a - (p - ka) * la0 - q * L1b - (q - kb) * lb0
    logJ = base + lm - np.log(K) + logG
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


def _pairs(x: np.ndarray, y: np.ndarray):
    """Distinct ``(x, y)`` pairs sorted by ``x`` (stable), and each row's pair index: the
    ``2F1`` parameters depend on ``x`` only, so sorted pairs form the runs :func:`_hyp_poly`
    evaluates as polynomials."""
    x = np.asarray(x, float) + 0.0  # + 0.0 merges -0.0 into 0.0
    y = np.asarray(y, float) + 0.0
    n = y.size
    if n > 8192:
        # hashing pays only when pairs repeat: judge from an evenly spaced sample of 2,048 rows
        k = np.arange(0, n, n // 2048)
        sx, sy = x[k], y[k]
        o = np.lexsort((sy, sx))
        distinct = 1 + np.count_nonzero((np.diff(sx[o]) != 0) | (np.diff(sy[o]) != 0))
        many_distinct = distinct > 0.6 * k.size
    else:
        many_distinct = False
    if many_distinct:  # e.g. continuous times: evaluate every row, in order of x
        px, py, inv = x, y, None
    elif (fy := pd.factorize(y, sort=False))[1].size == n:
        px, py, inv = x, y, None
    else:
        cy, uy = fy
        cx, ux = pd.factorize(x, sort=False)
        inv, uk = pd.factorize(cx.astype(np.int64) * uy.size + cy, sort=False)
        uk = np.asarray(uk, np.int64)
        px, py = np.asarray(ux, float)[uk // uy.size], np.asarray(uy, float)[uk % uy.size]
    if px.size < 2 or np.all(px[1:] >= px[:-1]):
        return px, py, (np.arange(px.size) if inv is None else inv)
    # frequencies are whole numbers: a 16-bit key sorts by radix
    key = px.astype(np.int16) if px.max() < 2**15 else px
    order = np.argsort(key, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return px[order], py[order], (rank if inv is None else rank[inv])


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
        # patterns in order of x (the sum does not care): with all-distinct T (continuous
        # data) the (x, T) pairs are then the patterns themselves, in the same order, and the
        # gathers / scatters between the two become no-ops (``None`` below)
        order = np.argsort(x, kind="stable")
        x, tx, T, w, ix = x[order], tx[order], T[order], w[order], ix[order]
        if uT.size == x.size:
            uT, iT = T, None
        else:
            iT = iT[order]
        wx = np.bincount(ix, weights=w, minlength=ux.size)
        pxT, pT, iPT = _pairs(x, T)  # distinct (x, T) pairs
        pxt, ptx, iPt = _pairs(x, tx)  # distinct (x, t_x) pairs
        if pT.size == x.size:
            iPT = None
        if ptx.size == x.size:
            iPt = None
        W = float(w.sum())
        same = tx == T  # J(t_x) - J(T) is exactly 0

        def gather(a, idx):
            return a if idx is None else a[idx]

        def scatter(idx, wts, size):
            return wts if idx is None else np.bincount(idx, weights=wts, minlength=size)

        def loglik(theta):
            r, alpha, s, beta = theta
            lg = sc.gammaln(r + ux) - sc.gammaln(r)
            dlg = sc.digamma(r + ux) - sc.digamma(r)
            la_, lb_ = np.log(alpha), np.log(beta)
            # log-likelihood values carry r log(alpha) + s log(beta) inside (``shift``): the
            # large terms cancel analytically instead of numerically (see log_J)
            # value sums: numpy's pairwise summation (``dot``'s running sum leaves ~1e-13 relative
            # noise at 1e4 customers, as much as a BFGS step changes the mean LL near the optimum)
            ll = float(np.sum(wx * lg))
            g = np.array([dot(wx, dlg) + W * la_, W * r / alpha, W * lb_, W * s / beta])

            L1a = np.log1p(uT / alpha)
            L1b = np.log1p(uT / beta)
            lAu = L1a + la_  # log(alpha + T)
            lBu = L1b + lb_
            # alive-at-T term times alpha^r beta^s
            la = -(r + x) * gather(L1a, iT) - x * la_ - s * gather(L1b, iT)
            J2, J2p, J2q, J2a, J2b = log_J(pT, r + pxT, s + 1.0, alpha, beta, shift=(r, s))
            J1, J1p, J1q, J1a, J1b = log_J(ptx, r + pxt, s + 1.0, alpha, beta, shift=(r, s))
            ls = np.log(s)
            lj2 = gather(J2, iPT)
            lj1 = gather(J1, iPt)
            # likelihood bracket relative to exp(M): A_T + s (J(t_x) - J(T))
            M = np.maximum(la, ls + lj1)
            ea = np.exp(la - M)
            e1 = np.exp(ls + lj1 - M)
            e2 = np.exp(ls + lj2 - M)
            diff = e1 - e2
            off = same | (diff <= 0)
            diff[off] = 0.0
            Bk = ea + diff
            ll += float(np.sum(w * (M + np.log(Bk))))
            wB = w / Bk
            wa = wB * ea
            w1 = wB * e1
            w2 = wB * e2
            w1[off] = 0.0
            w2[off] = 0.0
            # sum over customers of w * dJ[pair] = dJ @ (weights aggregated per pair)
            c1 = scatter(iPt, w1, ptx.size)
            c2 = scatter(iPT, w2, pT.size)
            cA = scatter(iT, wa, uT.size)
            cAx = scatter(iT, wa * x, uT.size)
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
        """``log`` of the alive-at-T term, and of the likelihood bracket (FH 2005 note), both
        multiplied by ``alpha^r beta^s`` (no cancellation of large terms, see :func:`log_J`);
        reused across the scoring calls on the same customers (``_cached``)."""
        return self._cached("log_parts", self._log_parts_computed, x, tx, T)

    def _log_parts_computed(self, x, tx, T):
        r, alpha, s, beta = self._theta()
        la = -(r + x) * np.log1p(T / alpha) - x * np.log(alpha) - s * np.log1p(T / beta)
        ux, ut, inv1 = _pairs(x.ravel(), tx.ravel())
        vx, vT, inv2 = _pairs(x.ravel(), T.ravel())
        sh = (r, s)
        lj1 = np.log(s) + log_J(ut, r + ux, s + 1.0, alpha, beta, False, sh)[inv1].reshape(x.shape)
        lj2 = np.log(s) + log_J(vT, r + vx, s + 1.0, alpha, beta, False, sh)[inv2].reshape(x.shape)
        M = np.maximum(la, lj1)
        diff = np.clip(np.exp(lj1 - M) - np.exp(lj2 - M), 0.0, None)
        diff = np.where(tx == T, 0.0, diff)
        return la, M + np.log(np.exp(la - M) + diff)

    def log_likelihood(self, frequency: Any, recency: Any, T: Any) -> np.ndarray:
        """Per-customer log-likelihood (FH 2005 note) at the current parameters."""
        r, alpha, s, beta = self._theta()
        x, tx, T = prediction_inputs(frequency, recency, T)
        _, lbr = self._log_parts(x, tx, T)
        return sc.gammaln(r + x) - sc.gammaln(r) + lbr

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
        ux, uT, inv = _pairs(xf, Tf)
        lj0 = log_J(uT, r + ux + 1.0, s, alpha, beta, grad=False)[inv]
        vx, vT, inv2 = _pairs(xf, Tf + tf)
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
