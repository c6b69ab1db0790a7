"""A shop with a known month-of-year purchase intensity, simulated for the seasonal model tests.

Independent of the model code (plain numpy): customers first buy uniformly in 2020, then buy at rate lambda in
operational time M (M' = TRUE_M of the month) until they drop out, observed until 2022-01-01; calendar days
come from operational times by searching the cumulative intensity. Dropout is BG/NBD's (after each purchase
with probability p ~ Beta(a, b)) or Pareto/NBD's (an exponential lifetime in operational time, mu ~ Gamma(s,
beta)). Purchases on the day of the previous one merge, as in rfm_summary.
"""

from __future__ import annotations

import numpy as np

# a shop twice as busy in November and December, half as busy in August
TRUE_M = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 2.0, 2.0])
START, AS_OF = np.datetime64("2020-01-01"), np.datetime64("2022-01-01")


def simulate_seasonal(n: int, seed: int, r: float, alpha: float, a: float | None = None, b: float | None = None,
                      s: float | None = None, beta: float | None = None):
    """(frequency, first, last, repeat_by_month) of `n` customers; BG/NBD dropout when `a, b` are given, else
    Pareto/NBD dropout with `s, beta`."""
    bgnbd = a is not None
    rng = np.random.default_rng(seed)
    days = np.arange(START, AS_OF + 1)
    m_day = TRUE_M[days.astype("datetime64[M]").astype(int) % 12]
    M = np.r_[0.0, np.cumsum(m_day[:-1])]  # operational time at the start of each day
    first_i = rng.integers(0, 366, n)
    lam = rng.gamma(r, 1 / alpha, n)
    p = rng.beta(a, b, n) if bgnbd else None
    mu = None if bgnbd else rng.gamma(s, 1 / beta, n)
    t_op = M[first_i] + rng.random(n) * m_day[first_i]  # the moment of the first purchase within its day
    stop = M[-1] if bgnbd else np.minimum(t_op + rng.exponential(1.0, n) / mu, M[-1])
    alive = np.ones(n, bool)
    x = np.zeros(n)
    last_i = first_i.copy()
    rep_days = []
    while True:  # purchase by purchase (vectorised over customers)
        t_op = t_op + rng.exponential(1.0, n) / lam
        buy = alive & (t_op < stop)
        if not buy.any():
            break
        day = np.searchsorted(M, t_op[buy], side="right") - 1
        new = day > last_i[buy]
        idx = np.flatnonzero(buy)[new]
        x[idx] += 1
        last_i[idx] = day[new]
        rep_days.append(day[new])
        if bgnbd:
            alive &= buy & (rng.random(n) >= p)
    rep = np.concatenate(rep_days)
    by_month = np.bincount(days[rep].astype("datetime64[M]").astype(int) % 12, minlength=12).astype(float)
    return x, days[first_i], days[last_i], by_month
