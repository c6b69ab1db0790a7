"""Shared machinery of the customer-base models.

Everything here is pure numerics (no I/O):

* input handling: arrays or a summary ``DataFrame`` in, validated at the boundary with clear
  ``ValueError`` messages (:class:`ModelInputError`);
* pattern compression: customers sharing the same sufficient statistics are collapsed to one
  row with a count, and the likelihood is weighted by those counts (:func:`compress`);
* the maximum-likelihood driver (:func:`maximize_likelihood`): parameters are optimised on a log
  scale with ``scipy.optimize.minimize`` and the model's analytic gradient, convergence is checked
  from the gradient itself, failures are retried from other starting points and with another
  method, and what happened is reported as a :class:`ConvergenceWarning` or
  :class:`ConvergenceError` saying exactly what was tried;
* standard errors from the inverse Hessian of the negative log-likelihood at the optimum, taken
  in log space and carried to the natural parameters by the delta method.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import optimize

from loyalist.errors import LoyalistError

__all__ = [
    "ConvergenceError",
    "ConvergenceWarning",
    "ModelInputError",
    "NotFittedError",
    "BaseModel",
    "compress",
    "maximize_likelihood",
]

# Search space of the log-parameters: 1e-8 .. 1e8 covers every sensible model; an estimate at
# this boundary means the data push the model to a degenerate limit, which is reported.
LOG_BOUND = float(np.log(1e8))


class ModelInputError(LoyalistError, ValueError):
    """Inputs of a model are unusable (wrong shape, NaN, negative, inconsistent...)."""


class NotFittedError(LoyalistError, AttributeError):
    """A prediction was asked of a model that has neither been fitted nor given parameters."""


class ConvergenceError(LoyalistError, RuntimeError):
    """Maximum likelihood failed from every starting point and method tried."""


class ConvergenceWarning(UserWarning):
    """The optimiser did not meet its convergence test; the best estimate found was kept."""


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def dot(a: np.ndarray, b: np.ndarray) -> float:
    """Inner product of two 1-D float arrays.

    ``np.einsum`` rather than ``a @ b``: the latter calls multithreaded BLAS ``ddot``, whose
    thread synchronisation costs milliseconds per call on a busy machine (300x slower than the
    arithmetic for 1e5 elements).
    """
    return float(np.einsum("i,i->", a, b))


def as_1d_float(name: str, values: Any) -> np.ndarray:
    """``values`` as a 1-D float64 array, refusing NaN / infinite / non-numeric entries."""
    if values is None:
        raise ModelInputError(f"{name} is required")
    if isinstance(values, (pd.Series, pd.Index)):
        values = values.to_numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelInputError(f"{name} must be numeric: {exc}") from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ModelInputError(f"{name} must be one-dimensional, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ModelInputError(
            f"{name} contains {int(bad.sum())} NaN or infinite value(s) (first at position {i})"
        )
    return arr


def _first_bad(mask: np.ndarray) -> str:
    idx = np.flatnonzero(mask)
    return f"{idx.size} row(s), first at position {int(idx[0])}"


def columns_from(
    first: Any,
    rest: Sequence[Any],
    names: Sequence[str],
    weights: Any,
    model: str,
) -> tuple[list[Any], Any]:
    """Resolve ``fit(df)`` / ``fit(a, b, c)`` call styles into a list of columns plus weights.

    When ``first`` is a DataFrame its columns ``names`` are used (and a ``weights`` column, if
    present and no explicit weights were passed); otherwise ``first`` and ``rest`` are the arrays.
    """
    if isinstance(first, pd.DataFrame):
        if any(r is not None for r in rest):
            raise ModelInputError(
                f"{model}: pass either a summary DataFrame or arrays, not both"
            )
        missing = [n for n in names if n not in first.columns]
        if missing:
            raise ModelInputError(
                f"{model}: summary DataFrame lacks column(s) {missing}; "
                f"expected {list(names)} (optional 'weights'), got {list(first.columns)}"
            )
        cols = [first[n].to_numpy() for n in names]
        if weights is None and "weights" in first.columns:
            weights = first["weights"].to_numpy()
        return cols, weights
    cols = [first, *rest]
    for n, c in zip(names, cols):
        if c is None:
            raise ModelInputError(f"{model}: {n} is required (or pass a summary DataFrame)")
    return cols, weights


def validate_rfm(
    frequency: Any,
    recency: Any,
    T: Any,
    weights: Any = None,
    *,
    t_name: str = "T",
    integer_times: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate recency/frequency data (``frequency``, ``recency``, ``T`` or ``n_periods``).

    Returns float arrays ``x, t_x, T, w`` with rows of zero weight dropped.  Raises
    :class:`ModelInputError` (a ``ValueError``) naming the problem and the first offending row.
    """
    x = as_1d_float("frequency", frequency)
    tx = as_1d_float("recency", recency)
    T = as_1d_float(t_name, T)
    n = x.size
    if tx.size != n or T.size != n:
        raise ModelInputError(
            f"frequency, recency and {t_name} must have the same length "
            f"(got {n}, {tx.size}, {T.size})"
        )
    if n == 0:
        raise ModelInputError("no customers given (empty input)")
    w = np.ones(n) if weights is None else as_1d_float("weights", weights)
    if w.size != n:
        raise ModelInputError(f"weights has length {w.size}, expected {n}")
    if (w < 0).any():
        raise ModelInputError(f"weights must be non-negative: {_first_bad(w < 0)}")
    if (x < 0).any():
        raise ModelInputError(f"frequency must be non-negative: {_first_bad(x < 0)}")
    if (x != np.round(x)).any():
        raise ModelInputError(
            f"frequency must be a whole number of repeat purchases: {_first_bad(x != np.round(x))}"
        )
    if (tx < 0).any():
        raise ModelInputError(f"recency must be non-negative: {_first_bad(tx < 0)}")
    if (T < 0).any():
        raise ModelInputError(f"{t_name} must be non-negative: {_first_bad(T < 0)}")
    # recency may exceed T by float rounding of date arithmetic only
    over = tx > T * (1 + 1e-9) + 1e-12
    if over.any():
        raise ModelInputError(
            f"recency must not exceed {t_name} (the last purchase lies inside the observation "
            f"window): {_first_bad(over)}"
        )
    tx = np.minimum(tx, T)
    zero_f = (x == 0) & (tx != 0)
    if zero_f.any():
        raise ModelInputError(
            "recency must be 0 when frequency is 0 (recency is the age at the last repeat "
            f"purchase): {_first_bad(zero_f)}"
        )
    if integer_times:
        for name, arr in (("recency", tx), (t_name, T)):
            if (arr != np.round(arr)).any():
                raise ModelInputError(
                    f"{name} must be a whole number of periods: {_first_bad(arr != np.round(arr))}"
                )
        if (x > tx).any():
            raise ModelInputError(
                "frequency cannot exceed recency in discrete time (one transaction per period "
                f"at most): {_first_bad(x > tx)}"
            )
    keep = w > 0
    if not keep.all():
        x, tx, T, w = x[keep], tx[keep], T[keep], w[keep]
        if x.size == 0:
            raise ModelInputError("all weights are zero")
    return x, tx, T, w


@dataclass
class Patterns:
    """Distinct rows of some columns, with the summed weight of the rows sharing each.

    ``columns[k][inverse] == original column k``; ``levels[k]`` are the distinct values of column
    ``k`` and ``codes[k]`` gives, per pattern, the index of its value in ``levels[k]`` (so that
    quantities depending on one column only are computed once per distinct value).
    Iterating yields ``(columns, counts, inverse)``.
    """

    columns: tuple[np.ndarray, ...]
    counts: np.ndarray
    inverse: np.ndarray
    levels: tuple[np.ndarray, ...]
    codes: tuple[np.ndarray, ...]

    def __iter__(self):
        return iter((self.columns, self.counts, self.inverse))

    @property
    def size(self) -> int:
        return int(self.counts.size)

    def subsample(self, n_draws: int, seed: int = 0) -> "Patterns":
        """``n_draws`` customers drawn with replacement in proportion to the weights, recompressed."""
        rng = np.random.default_rng(seed)
        cum = self.__dict__.get("_cumulative")
        if cum is None:
            cum = np.cumsum(self.counts)
            self.__dict__["_cumulative"] = cum
        if np.all(self.counts == self.counts[0]):  # equal weights: uniform pattern draws
            idx = rng.integers(0, self.size, n_draws)
        else:  # sorted needles keep the binary searches cache-friendly
            idx = np.searchsorted(cum, np.sort(rng.random(n_draws)) * cum[-1], side="right")
        idx = np.minimum(idx, self.size - 1)
        idx, cnt = np.unique(idx, return_counts=True)
        return compress(*(c[idx] for c in self.columns), weights=cnt.astype(float))


def repeated_rows(*columns: np.ndarray, sample: int = 2048):
    """``(distinct columns, inverse)`` when the rows of ``columns`` repeat a lot, else None.

    For predictions on many customers: values depending on a few statistics (e.g. frequency and T in
    whole days) are then computed once per distinct row.  Whether hashing pays is judged first from an
    evenly spaced sample of rows (continuous-valued data: nearly all distinct, nothing hashed).
    """
    cols = [np.asarray(c, dtype=np.float64).ravel() + 0.0 for c in columns]
    n = cols[0].size
    if n < 8 * sample:
        return None
    k = np.arange(0, n, n // sample)
    for c in cols:  # a column with mostly distinct values in the sample is continuous: no repeats
        srt = np.sort(c[k])
        if 1 + np.count_nonzero(srt[1:] != srt[:-1]) > 0.5 * k.size:
            return None
    key = np.zeros(n, np.int64)
    radix = 1
    levels = []
    for c in cols:
        cd, lv = pd.factorize(c, sort=False)
        levels.append(np.asarray(lv, np.float64))
        radix *= max(lv.size, 1)
        if radix >= 2**62:
            return None
        key = key * max(lv.size, 1) + cd
    inverse, ukeys = pd.factorize(key, sort=False)
    if ukeys.size > n // 4:
        return None
    rem = np.asarray(ukeys, np.int64)
    out = []
    for lv in reversed(levels):
        out.append(lv[rem % max(lv.size, 1)])
        rem = rem // max(lv.size, 1)
    return out[::-1], inverse


def _n_distinct(col: np.ndarray) -> int:
    srt = np.sort(col)
    return int(np.count_nonzero(srt[1:] != srt[:-1])) + 1 if srt.size else 0


def compress(*columns: np.ndarray, weights: np.ndarray | None = None) -> Patterns:
    """Collapse identical rows of ``columns`` to unique patterns (hash-based, O(n)).

    Each column is factorised (``pandas.factorize``), the integer codes are combined into one
    key per row and the keys factorised again; weights are summed per pattern.  When a column is
    nearly all-distinct (continuous-valued data) deduplication cannot pay for itself: rows are
    then kept as patterns, and such columns get one level per row, so nothing is hashed in vain.
    """
    cols = [np.asarray(c, dtype=np.float64) + 0.0 for c in columns]  # + 0.0 merges -0.0 into 0.0
    n = cols[0].size
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    card = [_n_distinct(c) for c in cols]

    def factorize(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        codes, uniq = pd.factorize(c, sort=False)
        return codes.astype(np.int64), np.asarray(uniq, dtype=np.float64)

    if n and max(card) > 0.8 * n:
        levels, codes = [], []
        for c, k in zip(cols, card):
            if k > 0.3 * n:
                levels.append(c)
                codes.append(np.arange(n, dtype=np.int64))
            else:
                cd, lv = factorize(c)
                levels.append(lv)
                codes.append(cd)
        return Patterns(tuple(cols), w.copy(), np.arange(n, dtype=np.int64), tuple(levels), tuple(codes))

    levels, col_codes, sizes = [], [], []
    radix = 1
    for c in cols:
        cd, lv = factorize(c)
        levels.append(lv)
        col_codes.append(cd)
        sizes.append(max(lv.size, 1))
        radix *= max(lv.size, 1)
    if radix >= 2**62:  # combined key would overflow: sort-based fallback
        stacked = np.column_stack(col_codes)
        _, first, inverse = np.unique(stacked, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1).astype(np.int64)
        pat_codes = [c[first] for c in col_codes]
    else:
        key = np.zeros(n, dtype=np.int64)
        for cd, size in zip(col_codes, sizes):
            key = key * size + cd
        inverse, ukeys = pd.factorize(key, sort=False)
        inverse = inverse.astype(np.int64)
        rem = np.asarray(ukeys, dtype=np.int64)
        pat_codes = []
        for size in reversed(sizes):
            pat_codes.append(rem % size)
            rem = rem // size
        pat_codes.reverse()
    counts = np.bincount(inverse, weights=w, minlength=len(pat_codes[0]))
    pcols = tuple(lv[c] for lv, c in zip(levels, pat_codes))
    return Patterns(pcols, counts.astype(np.float64), inverse, tuple(levels), tuple(pat_codes))


# --------------------------------------------------------------------------------------------
# maximum likelihood
# --------------------------------------------------------------------------------------------


@dataclass
class MLEResult:
    params: np.ndarray  # natural scale
    log_likelihood: float  # total weighted log-likelihood (without penalty)
    converged: bool
    message: str
    n_evaluations: int
    attempts: list[str] = field(default_factory=list)
    at_bound: list[int] = field(default_factory=list)
    hess_inv: np.ndarray | None = None  # BFGS inverse-Hessian estimate (log-params, mean -LL)


def _objective_factory(
    loglik: Callable[[np.ndarray], tuple[float, np.ndarray]],
    total_weight: float,
    penalizer: float,
):
    """Mean negative log-likelihood per customer (+ penalty) and its gradient in log space."""
    counter = {"n": 0}
    last: list = [None, None]  # the last point evaluated and its result (re-asked by the checks)

    def fun(phi: np.ndarray) -> tuple[float, np.ndarray]:
        if last[0] is not None and np.array_equal(phi, last[0]):
            f, g = last[1]
            return f, g.copy()
        counter["n"] += 1
        theta = np.exp(phi)
        with np.errstate(all="ignore"):
            ll, grad = loglik(theta)
        f = -ll / total_weight + penalizer * float(np.sum(theta**2))
        g = (-grad / total_weight + 2.0 * penalizer * theta) * theta
        if not np.isfinite(f) or not np.all(np.isfinite(g)):
            # make the line search back off instead of crashing
            f, g = 1e300, np.zeros_like(phi)
        last[0], last[1] = np.array(phi, dtype=float), (f, g.copy())
        return f, g

    return fun, counter


def _projected_gradient(phi: np.ndarray, g: np.ndarray, lo: float, hi: float) -> np.ndarray:
    pg = g.copy()
    pg[(phi <= lo + 1e-9) & (g > 0)] = 0.0
    pg[(phi >= hi - 1e-9) & (g < 0)] = 0.0
    return pg


def maximize_likelihood(
    loglik: Callable[[np.ndarray], tuple[float, np.ndarray]],
    starts: Iterable[np.ndarray],
    *,
    total_weight: float,
    param_names: Sequence[str],
    model: str,
    penalizer: float = 0.0,
    max_iter: int = 1000,
    tol: float = 1e-7,
    hess_inv0: np.ndarray | None = None,
    quiet: bool = False,
) -> MLEResult:
    """Maximise ``loglik`` (natural parameters -> (total LL, gradient)) over positive parameters.

    The optimiser works on ``log(theta)`` (box ``1e-8 .. 1e8``) with BFGS and the analytic
    gradient, minimising the mean negative log-likelihood per customer (so ``tol`` does not depend
    on the sample size).  Convergence means: finite optimum and largest projected gradient
    component <= ``tol``.  Failing that, BFGS is restarted from where it stopped, then bounded
    L-BFGS-B is tried, then the other starting points, then Nelder-Mead polished by BFGS.  If
    nothing converges, the best finite estimate is returned with ``converged=False`` and a
    :class:`ConvergenceWarning` saying what was tried; if nothing finite was ever found,
    :class:`ConvergenceError` is raised.  ``hess_inv0`` seeds BFGS's inverse Hessian for the
    first start (warm starts); ``quiet`` suppresses the warnings (used for warm-start stages).
    """
    fun, counter = _objective_factory(loglik, total_weight, penalizer)
    lo, hi = -LOG_BOUND, LOG_BOUND
    bounds = [(lo, hi)] * len(param_names)
    attempts: list[str] = []
    best: tuple[float, np.ndarray, float] | None = None  # (f, phi, max|pg|)
    last_hess_inv: list[np.ndarray | None] = [None]

    def fun_ext(phi: np.ndarray) -> tuple[float, np.ndarray]:
        # unconstrained extension for BFGS: outside the box, a quadratic wall
        phic = np.clip(phi, lo, hi)
        f, g = fun(phic)
        out = phi - phic
        if np.any(out != 0):
            g = np.where(out != 0, 0.0, g) + 2.0 * out
            f = f + float(np.sum(out**2))
        return f, g

    def consider(tag: str, phi: np.ndarray, message: str) -> bool:
        nonlocal best
        phi = np.clip(phi, lo, hi)
        f, g = fun(phi)
        pg = float(np.max(np.abs(_projected_gradient(phi, g, lo, hi)))) if f < 1e299 else np.inf
        attempts.append(f"{tag}: {message.strip()} (mean -LL {f:.10g}, max |gradient| {pg:.2e})")
        if f < 1e299 and (best is None or f < best[0] - 1e-12 or (f <= best[0] + 1e-12 and pg < best[2])):
            best = (f, phi, pg)
        return f < 1e299 and pg <= tol

    # BFGS (pure numpy) first: scipy's L-BFGS-B calls multithreaded BLAS on tiny matrices, whose
    # thread wake-ups cost milliseconds per iteration on a busy machine; it is the fallback.
    def run(tag: str, x0: np.ndarray, method: str, maxiter: int, h0: np.ndarray | None = None) -> bool:
        try:
            if method == "BFGS":
                options = {"maxiter": maxiter, "gtol": tol}
                if h0 is not None:
                    h0 = 0.5 * (h0 + h0.T)
                    lam, vec = np.linalg.eigh(h0)
                    if np.all(np.isfinite(lam)) and lam.max() > 0:
                        lam = np.clip(lam, 1e-6 * lam.max(), None)
                        h0 = (vec * lam) @ vec.T
                        options["hess_inv0"] = 0.5 * (h0 + h0.T)  # scipy demands exact symmetry
                res = optimize.minimize(fun_ext, x0, jac=True, method="BFGS", options=options)
                last_hess_inv[0] = getattr(res, "hess_inv", None)
            else:
                res = optimize.minimize(
                    fun, np.clip(x0, lo, hi), jac=True, method="L-BFGS-B", bounds=bounds,
                    options={"maxiter": maxiter, "ftol": 1e-15, "gtol": tol * 1e-2, "maxcor": 20},
                )
        except Exception as exc:  # pragma: no cover - defensive: report, try the next
            attempts.append(f"{tag} ({method}): raised {exc!r}")
            return False
        return consider(tag, res.x, f"{method} {res.message} after {res.nit} iterations")

    starts = [np.log(np.clip(np.asarray(s, dtype=float), 1e-8, 1e8)) for s in starts]
    done = False
    for k, x0 in enumerate(starts):
        if run(f"start {k + 1}", x0, "BFGS", max_iter, hess_inv0 if k == 0 else None):
            done = True
            break
        if best is not None and k == 0:
            # restart from where it stopped (fresh curvature), then the bounded method
            if run(f"start {k + 1} restarted", best[1], "BFGS", max_iter) or run(
                f"start {k + 1} bounded", best[1], "L-BFGS-B", max_iter
            ):
                done = True
                break
    if not done and best is not None:
        try:
            res = optimize.minimize(
                lambda p: fun_ext(p)[0], best[1], method="Nelder-Mead",
                options={"maxiter": max(200, max_iter), "xatol": 1e-10, "fatol": 1e-14},
            )
            consider("Nelder-Mead from best point", res.x, f"Nelder-Mead {res.message}")
            done = run("polish after Nelder-Mead", best[1], "BFGS", max_iter)
        except Exception as exc:  # pragma: no cover
            attempts.append(f"Nelder-Mead: raised {exc!r}")

    if best is None:
        raise ConvergenceError(
            f"{model}: maximum likelihood failed, the log-likelihood was never finite. Tried: "
            + "; ".join(attempts)
            + ". Check the inputs (units of recency/T, outliers) or pass initial_params."
        )
    f, phi, pg = best
    theta = np.exp(phi)
    at_bound = [i for i in range(len(phi)) if phi[i] <= lo + 1e-6 or phi[i] >= hi - 1e-6]
    converged = bool(pg <= tol)
    ll = -(f - penalizer * float(np.sum(theta**2))) * total_weight
    message = "converged" if converged else (
        f"{model}: the optimiser did not converge (largest gradient component {pg:.3g} of the "
        f"mean log-likelihood in log-parameters exceeds tol={tol:g}). Tried: "
        + "; ".join(attempts)
        + ". The best estimate found is kept (converged_ is False); consider more iterations "
        "(max_iter), a penalizer, or other initial_params."
    )
    if not converged and not quiet:
        warnings.warn(message, ConvergenceWarning, stacklevel=3)
    if at_bound and not quiet:
        names = ", ".join(f"{param_names[i]}={theta[i]:.3g}" for i in at_bound)
        warnings.warn(
            f"{model}: estimate at the edge of the search space ({names}): the data push the "
            "model towards a degenerate limit; treat these parameters with caution.",
            ConvergenceWarning,
            stacklevel=3,
        )
    return MLEResult(theta, float(ll), converged, message, counter["n"], attempts, at_bound,
                     last_hess_inv[0])


def hessian_log(
    loglik: Callable[[np.ndarray], tuple[float, np.ndarray]],
    theta: np.ndarray,
    *,
    penalizer: float,
    total_weight: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Hessian and gradient of the total penalised negative LL in log-parameters ``phi``.

    Central differences (step 1e-5) of the analytic gradient; symmetrised.
    """
    k = theta.size
    phi = np.log(theta)

    def grad_phi(p: np.ndarray) -> np.ndarray:
        th = np.exp(p)
        with np.errstate(all="ignore"):
            _, g = loglik(th)
        return (-g + 2.0 * penalizer * total_weight * th) * th

    g0 = grad_phi(phi)
    H = np.empty((k, k))
    for i in range(k):
        h = 1e-5 * max(1.0, abs(phi[i]))
        e = np.zeros(k)
        e[i] = h
        H[:, i] = (grad_phi(phi + e) - grad_phi(phi - e)) / (2 * h)
    return 0.5 * (H + H.T), g0


def standard_errors(
    loglik: Callable[[np.ndarray], tuple[float, np.ndarray]],
    theta: np.ndarray,
    *,
    penalizer: float,
    total_weight: float,
    param_names: Sequence[str],
    model: str,
) -> dict[str, float]:
    """Standard errors from the inverse Hessian of the negative log-likelihood at ``theta``.

    The Hessian is taken in log-parameters ``phi`` (central differences of the analytic
    gradient), converted exactly to natural parameters (``H_theta = D^-1 (H_phi - diag(g_phi))
    D^-1`` with ``D = diag(theta)``; the gradient term vanishes at an interior optimum, so this is
    the delta method) and inverted.  A penalizer, if any, is part of the objective differentiated.
    NaN (with a warning) if the Hessian is not positive definite.
    """
    H, g0 = hessian_log(loglik, theta, penalizer=penalizer, total_weight=total_weight)
    Dinv = np.diag(1.0 / theta)
    H_theta = Dinv @ (H - np.diag(g0)) @ Dinv
    nan = {n: float("nan") for n in param_names}
    if not np.all(np.isfinite(H_theta)):
        warnings.warn(f"{model}: Hessian not finite; standard errors unavailable", ConvergenceWarning, stacklevel=3)
        return nan
    try:
        L = np.linalg.cholesky(H_theta)
    except np.linalg.LinAlgError:
        warnings.warn(
            f"{model}: the Hessian of the negative log-likelihood is not positive definite at the "
            "estimate (flat or degenerate likelihood); standard errors set to NaN",
            ConvergenceWarning,
            stacklevel=3,
        )
        return nan
    Linv = np.linalg.inv(L)
    cov = Linv.T @ Linv
    return {n: float(np.sqrt(cov[i, i])) for i, n in enumerate(param_names)}


# --------------------------------------------------------------------------------------------
# estimator base class
# --------------------------------------------------------------------------------------------


class BaseModel:
    """sklearn-style estimator skeleton shared by the models.

    Hyperparameters (stored untouched by ``__init__``):

    penalizer : float, default 0
        L2 penalty ``penalizer * sum(params**2)`` added to the mean negative log-likelihood per
        customer (the convention of the ``lifetimes`` package). 0 gives the plain MLE.
    max_iter : int, default 1000
        Iteration cap of each optimiser run.
    tol : float, default 1e-7
        Convergence test: largest gradient component of the mean log-likelihood with respect to
        the log-parameters.

    Fitted attributes: ``params_`` (dict of floats), ``log_likelihood_`` (total weighted
    log-likelihood at the estimate, without the penalty), ``standard_errors_`` (dict; computed
    from the Hessian on first access), ``converged_``, ``n_customers_`` (sum of weights),
    ``optimizer_message_`` and ``n_evaluations_`` (full-data likelihood evaluations).
    """

    _param_names: tuple[str, ...] = ()
    _model_name = "model"

    def __init__(self, penalizer: float = 0.0, max_iter: int = 1000, tol: float = 1e-7):
        self.penalizer = penalizer
        self.max_iter = max_iter
        self.tol = tol

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Hyperparameters (sklearn convention)."""
        return {"penalizer": self.penalizer, "max_iter": self.max_iter, "tol": self.tol}

    def set_params(self, **params: Any):
        """Set hyperparameters (sklearn convention); returns the model."""
        for k, v in params.items():
            if k not in ("penalizer", "max_iter", "tol"):
                raise ModelInputError(f"unknown hyperparameter {k!r}")
            setattr(self, k, v)
        return self

    # -- construction from known parameters ------------------------------------------------
    @classmethod
    def from_params(cls, **params: float):
        """A model with given parameters (e.g. published estimates), usable for predictions."""
        missing = [n for n in cls._param_names if n not in params]
        extra = [n for n in params if n not in cls._param_names]
        if missing or extra:
            raise ModelInputError(
                f"{cls._model_name} parameters are {list(cls._param_names)}; "
                f"missing {missing}, unexpected {extra}"
            )
        model = cls()
        model.params_ = {n: float(params[n]) for n in cls._param_names}
        for n, v in model.params_.items():
            if not (np.isfinite(v) and v > 0):
                raise ModelInputError(f"{cls._model_name}: parameter {n} must be positive, got {v}")
        return model

    def _theta(self) -> np.ndarray:
        params = getattr(self, "params_", None)
        if params is None:
            raise NotFittedError(
                f"this {type(self).__name__} has no parameters yet: call fit(...) first "
                f"(or build it with {type(self).__name__}.from_params(...))"
            )
        return np.array([params[n] for n in self._param_names], dtype=float)

    def _check_hyper(self) -> None:
        if not (np.isfinite(self.penalizer) and self.penalizer >= 0):
            raise ModelInputError(f"penalizer must be a non-negative number, got {self.penalizer!r}")
        if int(self.max_iter) < 1:
            raise ModelInputError(f"max_iter must be >= 1, got {self.max_iter!r}")
        if not (self.tol > 0):
            raise ModelInputError(f"tol must be positive, got {self.tol!r}")

    def _initial(self, initial_params: dict[str, float] | None, guesses: list[np.ndarray]) -> list[np.ndarray]:
        if initial_params is None:
            return guesses
        missing = [n for n in self._param_names if n not in initial_params]
        if missing:
            raise ModelInputError(f"initial_params lacks {missing}")
        x0 = np.array([float(initial_params[n]) for n in self._param_names])
        if not np.all(np.isfinite(x0) & (x0 > 0)):
            raise ModelInputError(f"initial_params must be positive numbers, got {initial_params}")
        return [x0, *guesses]

    # Above this many distinct patterns, a first fit on a weighted subsample of customers gives
    # the full-data optimiser a starting point and inverse Hessian, which saves most of the
    # expensive full-data iterations (the answer is still the full-data MLE).
    _WARM_START_PATTERNS = 40_000
    _WARM_START_DRAWS = 5_000
    _WARM_START_GROWTH = 5

    @staticmethod
    def _make_loglik(pat: Patterns):  # pragma: no cover - implemented by each model
        raise NotImplementedError

    def _run_mle(self, pat: Patterns, starts: list[np.ndarray], n_customers: int):
        self._check_hyper()
        common = dict(param_names=self._param_names, model=self._model_name,
                      penalizer=float(self.penalizer), max_iter=int(self.max_iter), tol=float(self.tol))
        hess_inv0 = None
        # stages of growing subsamples (5k, 25k, ... customers), each warm-started by the last
        draws = self._WARM_START_DRAWS
        while pat.size > self._WARM_START_PATTERNS and 2 * draws <= pat.size:
            sub = pat.subsample(draws, seed=0)
            try:
                sub_ll = self._make_loglik(sub)
                sub_w = float(sub.counts.sum())
                pre = maximize_likelihood(sub_ll, starts, total_weight=sub_w, quiet=True,
                                          hess_inv0=hess_inv0, **common)
            except (ConvergenceError, np.linalg.LinAlgError):
                break
            if not pre.converged:
                break
            starts = [pre.params, *starts[-3:]]
            first = hess_inv0 is None
            hess_inv0 = pre.hess_inv
            if first:
                # exact (finite-difference) curvature of the first subsample's mean -LL: BFGS
                # then starts with near-Newton steps on the next stage.  Later stages keep
                # BFGS's updated estimate (the mean curvature is a population quantity: a
                # second finite-difference Hessian on 5x the data costs more than it saves)
                H, _ = hessian_log(sub_ll, pre.params, penalizer=float(self.penalizer), total_weight=sub_w)
                H = H / sub_w
                if np.all(np.isfinite(H)):
                    lam, vec = np.linalg.eigh(H)
                    if lam.min() > 0:
                        hess_inv0 = (vec / lam) @ vec.T
            draws *= self._WARM_START_GROWTH
        loglik = self._make_loglik(pat)
        total_weight = float(pat.counts.sum())
        res = maximize_likelihood(loglik, starts, total_weight=total_weight, hess_inv0=hess_inv0, **common)
        self.params_ = {n: float(v) for n, v in zip(self._param_names, res.params)}
        self.log_likelihood_ = res.log_likelihood
        self.converged_ = res.converged
        self.n_customers_ = int(n_customers)
        self.optimizer_message_ = res.message
        self.n_evaluations_ = res.n_evaluations
        # standard errors are computed on first access (a Hessian costs 2k gradient evaluations)
        self._fit_patterns = pat
        self._standard_errors = None
        return self

    @property
    def standard_errors_(self) -> dict[str, float]:
        """Asymptotic standard errors of ``params_`` (inverse Hessian of the negative LL at the
        optimum, delta method to natural parameters; computed on first access, then cached)."""
        cached = self.__dict__.get("_standard_errors")
        if cached is not None:
            return cached
        pat = self.__dict__.get("_fit_patterns")
        if pat is None or "params_" not in self.__dict__:
            raise NotFittedError(
                f"standard_errors_ needs a {type(self).__name__} fitted to data (call fit first)"
            )
        se = standard_errors(
            self._make_loglik(pat), self._theta(), penalizer=float(self.penalizer),
            total_weight=float(pat.counts.sum()), param_names=self._param_names,
            model=self._model_name,
        )
        self._standard_errors = se
        return se

    def _cached(self, name: str, fn, *arrays: np.ndarray):
        """``fn(*arrays)``, reusing the last result when called again with equal inputs and parameters.

        Scoring asks P(alive), the expected orders and P(order) of the same customers in turn, and each
        needs the same per-customer terms: comparing the inputs with the last ones costs a pass over them,
        recomputing costs special functions.  The cache holds copies of the inputs (so later changes to
        the caller's arrays cannot go unnoticed) and is not pickled.
        """
        key = (name, tuple(self._theta().tolist()))
        last = self.__dict__.get("_last_result")
        if (last is not None and last[0] == key and len(last[1]) == len(arrays)
                and all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(last[1], arrays))):
            return last[2]
        out = fn(*arrays)
        self._last_result = (key, tuple(np.array(a, copy=True) for a in arrays), out)
        return out

    def __getstate__(self):
        # pickle the standard errors, not the training patterns they come from
        state = dict(self.__dict__)
        if state.get("_fit_patterns") is not None:
            state["_standard_errors"] = self.standard_errors_
        state.pop("_fit_patterns", None)
        state.pop("_last_result", None)
        return state

    def summary(self) -> pd.DataFrame:
        """Estimates with standard errors and 95% Wald intervals on the log scale."""
        theta = self._theta()
        try:
            se_map = self.standard_errors_
        except NotFittedError:
            se_map = {}
        se = np.array([se_map.get(n, np.nan) for n in self._param_names])
        half = 1.959963984540054 * se / theta
        return pd.DataFrame(
            {
                "estimate": theta,
                "standard_error": se,
                "lower_95": theta * np.exp(-half),
                "upper_95": theta * np.exp(half),
            },
            index=pd.Index(self._param_names, name="parameter"),
        )

    def __repr__(self) -> str:
        params = getattr(self, "params_", None)
        if params is None:
            return f"{type(self).__name__}(penalizer={self.penalizer!r})"
        inner = ", ".join(f"{k}={v:.4g}" for k, v in params.items())
        return f"{type(self).__name__}({inner})"


def warn_if_no_repeat_purchases(x: np.ndarray, w: np.ndarray, model: str) -> None:
    """The purchase-rate parameters are not identified when nobody bought twice."""
    if not np.any((x > 0) & (w > 0)):
        warnings.warn(
            f"{model}: no customer has a repeat purchase (all frequency = 0); the purchase-rate "
            "parameters are not identified and the estimates are a degenerate limit",
            ConvergenceWarning,
            stacklevel=3,
        )


def broadcast_float(name: str, value: Any) -> np.ndarray:
    """Prediction inputs: float array (scalars allowed), finite, non-negative."""
    arr = np.asarray(value.to_numpy() if isinstance(value, (pd.Series, pd.Index)) else value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ModelInputError(f"{name} contains NaN or infinite values")
    if np.any(arr < 0):
        raise ModelInputError(f"{name} must be non-negative")
    return arr


def prediction_inputs(frequency, recency, T, *, t_name: str = "T"):
    """Validate per-customer prediction inputs; scalars and arrays broadcast together."""
    x = broadcast_float("frequency", frequency)
    tx = broadcast_float("recency", recency)
    T = broadcast_float(t_name, T)
    x, tx, T = np.broadcast_arrays(x, tx, T)
    if np.any(x != np.round(x)):
        raise ModelInputError("frequency must be a whole number of repeat purchases")
    if np.any(tx > T * (1 + 1e-9) + 1e-12):
        raise ModelInputError(f"recency must not exceed {t_name}")
    if np.any((x == 0) & (tx != 0)):
        raise ModelInputError("recency must be 0 when frequency is 0")
    return x.astype(float), np.minimum(tx, T).astype(float), T.astype(float)
