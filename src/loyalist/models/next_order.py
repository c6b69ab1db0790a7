"""When will a customer (or a customer x product pair) buy next: a hierarchical gamma renewal model with
beta-geometric dropout, fitted once by maximum likelihood on the population.

The model
---------
For entity i (a customer, or a customer x product pair):

* gaps between purchases are i.i.d. Gamma(k, lambda_i) (shape k shared by the population, rate per entity);
* lambda_i ~ Gamma(alpha, beta * s_i) across the population (s_i = 1 for customers; for pairs the
  product's own cycle relative to the population, so a short-history pair shrinks toward its product);
* after every purchase the entity drops out for good with probability q_i, q_i ~ Beta(a, b) (the
  beta-geometric dropout of the BG/NBD, Fader, Hardie & Lee 2005, "Counting your customers the easy way",
  Marketing Science 24(2), but attached to a renewal process instead of a Poisson one).

The gamma-gamma mixture of the gap is the compound gamma (generalised beta prime) law: with n completed
gaps summing to S, the posterior of lambda is Gamma(alpha' = alpha + n k, beta' = beta s + S) (conjugacy,
e.g. Gelman et al., Bayesian Data Analysis, 3rd ed., sec. 2.6 / Fink 1997 "A compendium of conjugate
priors") and the posterior predictive gap X satisfies X / (X + beta') ~ Beta(k, alpha'), so

    S_post(x) = P(X > x | data) = I_{beta'/(beta'+x)}(alpha', k)                      (1)

(I the regularised incomplete beta). For k = 1 it is the Lomax law of the Pareto/NBD's inter-purchase time.
Empirical-Bayes shrinkage comes for free: a customer with one order (n = 0) gets the population's wide
predictive law; one with 20 regular gaps gets a narrow one around their own cycle.

With e days since the last purchase, the probability that the entity is still active is (Bayes)

    pi = (b + n) / (a + b + n),  P(alive | data) = pi S_post(e) / (1 - pi + pi S_post(e))          (2)

and the probability of a purchase within h days is

    P(order within h) = P(alive) [S_post(e) - S_post(e + h)] / S_post(e).                          (3)

The log-likelihood of entity i, integrated over lambda_i and q_i (used for the maximum-likelihood fit):

    (k-1) sum log x_j - n log Gamma(k) + alpha log(beta s) - log Gamma(alpha) + log Gamma(alpha + n k)
    - (alpha + n k) log(beta s + S) + log B(a, b + n) - log B(a, b)
    + log[a / (a + b + n) + (b + n) / (a + b + n) S_post(e)]                                         (4)

(the first line is the compound-gamma marginal of the completed gaps; the second the beta-geometric
survival of n dropout chances, then either dropout or an open gap longer than e).

P(alive) may be blended with the customer-base model's P(alive) (BG/NBD or Pareto/NBD, which use the
counts and recency in a different way) on the logit scale: `blend_alive`.

Why hand-written: no maintained library fits a renewal process with gamma-heterogeneous rates and
dropout on sufficient statistics (lifetimes and pymc-marketing have only Poisson-type BTYD models), and the
closed forms above are short; scipy supplies the special functions and the optimiser. Pure numpy/scipy,
vectorised over entities, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

PARAMS = ("k", "alpha", "beta", "a", "b")


def _arr(x) -> np.ndarray:
    return np.asarray(x, dtype=float)


@dataclass
class RenewalData:
    """Sufficient statistics per entity (arrays of one length)."""

    n_gaps: np.ndarray
    gap_sum: np.ndarray
    gap_logsum: np.ndarray
    elapsed: np.ndarray
    scale: np.ndarray | None = None

    @classmethod
    def from_frame(cls, df, scale=None) -> RenewalData:
        return cls(_arr(df["n_gaps"]), _arr(df["gap_sum"]), _arr(df["gap_logsum"]), _arr(df["elapsed"]),
                   None if scale is None else _arr(scale))


class GammaRenewal:
    """Hierarchical gamma renewal model with beta-geometric dropout (see the module docstring).

    sklearn conventions: `fit(...)` returns self; fitted state `params_`, `log_likelihood_`, `n_fit_`.
    """

    def __init__(self, max_rows: int | None = 200_000, seed: int = 0):
        self.max_rows = max_rows
        self.seed = seed

    # ------------------------------------------------------------------ fitting
    @staticmethod
    def _loglik(theta: np.ndarray, d: RenewalData) -> np.ndarray:
        k, alpha, beta, a, b = np.exp(theta)
        n, S, L, e = d.n_gaps, d.gap_sum, d.gap_logsum, d.elapsed
        bs = beta * (1.0 if d.scale is None else d.scale)
        ap = alpha + n * k
        bp = bs + S
        ll = ((k - 1) * L - n * special.gammaln(k) + alpha * np.log(bs) - special.gammaln(alpha)
              + special.gammaln(ap) - ap * np.log(bp)
              + special.betaln(a, b + n) - special.betaln(a, b))
        surv = special.betainc(ap, k, bp / (bp + e))
        ll += np.log(a / (a + b + n) + (b + n) / (a + b + n) * surv + 1e-300)
        return ll

    def fit(self, n_gaps, gap_sum, gap_logsum, elapsed, scale=None) -> GammaRenewal:
        d = self._validate(n_gaps, gap_sum, gap_logsum, elapsed, scale)
        if d.n_gaps.size < 10 or (d.n_gaps > 0).sum() < 5:
            raise ValueError("need at least 10 entities and 5 with a repeat purchase to fit the renewal model")
        if self.max_rows is not None and d.n_gaps.size > self.max_rows:
            # A seeded random subset: the population has five parameters, a subset pins them down.
            idx = np.random.default_rng(self.seed).choice(d.n_gaps.size, self.max_rows, replace=False)
            d = RenewalData(d.n_gaps[idx], d.gap_sum[idx], d.gap_logsum[idx], d.elapsed[idx],
                            None if d.scale is None else d.scale[idx])
        rep = d.n_gaps > 0
        mean_gap = float(d.gap_sum[rep].sum() / d.n_gaps[rep].sum())
        x0 = np.log([1.0, 3.0, 2.0 * mean_gap, 1.0, 3.0])

        def nll(theta):
            if np.any(np.abs(theta) > 12):
                return 1e20
            v = -self._loglik(theta, d).sum()
            return v if np.isfinite(v) else 1e20

        res = optimize.minimize(nll, x0, method="L-BFGS-B")
        if not res.success:  # fall back on the derivative-free simplex from where L-BFGS-B stopped
            res = optimize.minimize(nll, res.x, method="Nelder-Mead",
                                    options={"maxiter": 3000, "maxfev": 3000, "xatol": 1e-5, "fatol": 1e-4})
        self.params_ = dict(zip(PARAMS, map(float, np.exp(res.x))))
        self.log_likelihood_ = float(-res.fun)
        self.n_fit_ = int(d.n_gaps.size)
        return self

    @classmethod
    def from_params(cls, **params: float) -> GammaRenewal:
        m = cls()
        m.params_ = {p: float(params[p]) for p in PARAMS}
        return m

    @staticmethod
    def _validate(n_gaps, gap_sum, gap_logsum, elapsed, scale=None) -> RenewalData:
        d = RenewalData(_arr(n_gaps), _arr(gap_sum), _arr(gap_logsum), _arr(elapsed),
                        None if scale is None else _arr(scale))
        shapes = {x.shape for x in (d.n_gaps, d.gap_sum, d.gap_logsum, d.elapsed)}
        if len(shapes) != 1 or (d.scale is not None and d.scale.shape not in shapes):
            raise ValueError("n_gaps, gap_sum, gap_logsum, elapsed (and scale) must have one length")
        if np.any(d.n_gaps < 0) or np.any(d.gap_sum < 0) or np.any(d.elapsed < 0):
            raise ValueError("gap counts, sums and elapsed days must be non-negative")
        if np.any((d.n_gaps > 0) & (d.gap_sum < d.n_gaps)):
            raise ValueError("gaps are whole days >= 1: gap_sum must be at least n_gaps")
        if d.scale is not None and np.any(d.scale <= 0):
            raise ValueError("scale must be positive")
        return d

    def _check(self) -> None:
        if not hasattr(self, "params_"):
            raise RuntimeError("fit the model first")

    # --------------------------------------------------------------- prediction
    def _post(self, n, S, scale=None):
        self._check()
        p = self.params_
        bs = p["beta"] * (1.0 if scale is None else _arr(scale))
        return p["alpha"] + _arr(n) * p["k"], bs + _arr(S)

    def survival(self, x, n, S, scale=None) -> np.ndarray:
        """S_post(x) = P(next gap > x | completed gaps), equation (1)."""
        ap, bp = self._post(n, S, scale)
        return special.betainc(ap, self.params_["k"], bp / (bp + _arr(x)))

    def p_alive(self, n, S, e, scale=None) -> np.ndarray:
        """P(still active | n gaps, e days of silence), equation (2)."""
        a, b = self.params_["a"], self.params_["b"]
        pi = (b + _arr(n)) / (a + b + _arr(n))
        s = self.survival(e, n, S, scale)
        return pi * s / (1 - pi + pi * s)

    def conditional_cdf(self, h, n, S, e, scale=None) -> np.ndarray:
        """P(next order within h days | active, e days of silence) = 1 - S_post(e + h) / S_post(e)."""
        s0 = self.survival(e, n, S, scale)
        s1 = self.survival(_arr(e) + _arr(h), n, S, scale)
        return np.where(s0 > 0, 1 - s1 / np.maximum(s0, 1e-300), 1.0)

    def prob_order_within(self, h, n, S, e, scale=None, p_alive=None) -> np.ndarray:
        """Equation (3); `p_alive` replaces the model's own P(alive) when given (e.g. a blend)."""
        pa = self.p_alive(n, S, e, scale) if p_alive is None else _arr(p_alive)
        return pa * self.conditional_cdf(h, n, S, e, scale)

    def residual_quantile(self, q, n, S, e, scale=None, p_alive=None) -> np.ndarray:
        """Days from now until the next order at probability level q (array or scalar).

        With `p_alive` (not None) the law is defective (the customer may never order again): the quantile
        is +inf where p_alive < q. With p_alive=None it is the quantile given the customer is active."""
        k = self.params_["k"]
        ap, bp = self._post(n, S, scale)
        e = _arr(e)
        s0 = self.survival(e, n, S, scale)
        qq = _arr(q) if p_alive is None else _arr(q) / np.maximum(_arr(p_alive), 1e-12)
        never = qq >= 1
        target = s0 * (1 - np.clip(qq, 0, 1 - 1e-12))
        u = special.betaincinv(ap, k, np.clip(target, 1e-300, 1.0))
        x = bp * (1 - u) / np.maximum(u, 1e-300)
        t = np.maximum(x - e, 0.0)
        return np.where(never, np.inf, t)

    def median_given_within(self, h, n, S, e, scale=None) -> np.ndarray:
        """Point prediction of the days to the next order for someone who orders within h days: the median
        of the next-order time truncated to [0, h] (used for the days-to-next-order MAE)."""
        F = self.conditional_cdf(h, n, S, e, scale)
        return np.minimum(self.residual_quantile(0.5 * F, n, S, e, scale), _arr(h))

    def mean_gap(self, n, S, scale=None) -> np.ndarray:
        """Posterior expected gap E[X | data] = k beta' / (alpha' - 1) (infinite when alpha' <= 1);
        the 'cycle' in days."""
        ap, bp = self._post(n, S, scale)
        return np.where(ap > 1, self.params_["k"] * bp / np.maximum(ap - 1, 1e-12), np.inf)

    def cycle(self, n, S, scale=None) -> np.ndarray:
        """The cycle in days: the posterior mean gap, or the predictive median where the mean is infinite."""
        n, S = np.broadcast_arrays(_arr(n), _arr(S))
        out = self.mean_gap(n, S, scale)
        bad = ~np.isfinite(out)
        if bad.any():
            sc = None if scale is None else np.broadcast_to(_arr(scale), n.shape)[bad]
            out[bad] = self.median_gap(n[bad], S[bad], sc)
        return out

    def median_gap(self, n, S, scale=None) -> np.ndarray:
        """Posterior predictive median gap (finite for everyone; used when alpha' <= 1)."""
        return self.residual_quantile(0.5, n, S, np.zeros_like(_arr(n)), scale)


def blend_alive(p_renewal, p_base, weight: float) -> np.ndarray:
    """Logit-scale blend of two P(alive): weight 1 -> the renewal model's, 0 -> the base model's."""
    eps = 1e-9
    pr = np.clip(_arr(p_renewal), eps, 1 - eps)
    pb = np.clip(_arr(p_base), eps, 1 - eps)
    z = weight * special.logit(pr) + (1 - weight) * special.logit(pb)
    return special.expit(z)
