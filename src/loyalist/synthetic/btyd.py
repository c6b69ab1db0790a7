"""Seeded simulation of customer bases from the BG/NBD and Pareto/NBD processes (with spend).

Fully vectorised numpy (no Python loop over customers): a million customers take about a second,
sufficient statistics only.  Each customer's latent traits are drawn from the model's mixing
distributions, then the observable summary is drawn *exactly* from the implied process:

BG/NBD (Fader, Hardie & Lee 2005): ``lambda ~ Gamma(r, rate alpha)``, ``p ~ Beta(a, b)``.
    With ``n ~ Poisson(lambda T)`` purchase events of the immortal process in ``(0, T]`` and
    ``D ~ Geometric(p)`` the index of the repeat purchase after which the customer drops out,
    ``x = min(n, D)``; the ``x``-th of ``n`` uniform event times is ``T * Beta(x, n - x + 1)``.
Pareto/NBD (Schmittlein, Morrison & Colombo 1987): ``lambda ~ Gamma(r, rate alpha)``,
    ``mu ~ Gamma(s, rate beta)``, lifetime ``tau ~ Exponential(mu)``; ``x ~ Poisson(lambda
    min(tau, T))`` and ``t_x = min(tau, T) * U^(1/x)`` (maximum of ``x`` uniform times).
Gamma-Gamma spend (Fader, Hardie & Lee 2005, "RFM and CLV"): ``nu ~ Gamma(q, rate v)``, each
    transaction value ``~ Gamma(p, rate nu)``; the mean of ``x`` repeat values is
    ``Gamma(p x, rate nu) / x``.

Times are in an abstract unit (say weeks).  ``transactions=True`` also returns the long table
``customer_id, order_date, amount`` (first purchase included) for end-to-end tests: the repeat
purchases other than the last are, given ``t_x``, uniform on ``(0, t_x)`` under both processes.
Amounts follow the Gamma-Gamma model with the ``spend`` parameters, by default the published
CDNOW estimates :data:`DEFAULT_SPEND` when transactions are requested without ``spend``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_SPEND",
    "SyntheticCustomers",
    "simulate_bgnbd",
    "simulate_paretonbd",
    "simulate_spend",
]


#: Gamma-Gamma spend parameters of the CDNOW sample (Fader, Hardie & Lee 2005, "RFM and CLV").
DEFAULT_SPEND = {"p": 6.25, "q": 3.74, "v": 15.44}


@dataclass
class SyntheticCustomers:
    """A simulated customer base: sufficient statistics plus the truth behind them.

    ``frequency, recency, T`` (float arrays), ``monetary_value`` (mean repeat spend, 0 for
    customers without repeat purchases; ``None`` without a spend model), ``frequency_holdout``
    (purchases in ``(T, T + holdout]``, if requested), ``alive`` (active at ``T``), ``params``
    (the true parameters of the purchase process), ``spend_params`` (Gamma-Gamma ``p, q, v`` or
    ``None``), ``latent`` (per-customer traits) and ``transactions`` (long table or ``None``).
    """

    model: str
    params: dict[str, float]
    frequency: np.ndarray
    recency: np.ndarray
    T: np.ndarray
    alive: np.ndarray
    monetary_value: np.ndarray | None = None
    frequency_holdout: np.ndarray | None = None
    spend_params: dict[str, float] | None = None
    latent: dict[str, np.ndarray] = field(default_factory=dict)
    transactions: pd.DataFrame | None = None

    @property
    def n_customers(self) -> int:
        return int(self.frequency.size)

    def to_frame(self) -> pd.DataFrame:
        """Summary table, one row per customer: ``customer_id, frequency, recency, T`` (+ spend, holdout)."""
        out = {
            "customer_id": np.arange(self.n_customers),
            "frequency": self.frequency,
            "recency": self.recency,
            "T": self.T,
        }
        if self.monetary_value is not None:
            out["monetary_value"] = self.monetary_value
        if self.frequency_holdout is not None:
            out["frequency_holdout"] = self.frequency_holdout
        return pd.DataFrame(out)


def _rng(seed: Any) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _ages(T: Any, n: int, rng: np.random.Generator, resolution: float | None) -> np.ndarray:
    """``T`` as a per-customer array: scalar, array of length ``n``, or ``(low, high)`` uniform."""
    if isinstance(T, tuple):
        if len(T) != 2 or not (0 <= T[0] <= T[1]):
            raise ValueError("T as a tuple means (low, high) of a uniform age, with 0 <= low <= high")
        out = rng.uniform(T[0], T[1], n)
    else:
        out = np.broadcast_to(np.asarray(T, dtype=float), (n,)).copy()
    if not np.all(np.isfinite(out)) or np.any(out < 0):
        raise ValueError("T must be finite and non-negative")
    if resolution is not None:
        out = np.floor(out / resolution) * resolution
    return out


def _check_positive(**params: float) -> dict[str, float]:
    for k, v in params.items():
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"parameter {k} must be positive, got {v!r}")
    return {k: float(v) for k, v in params.items()}


def _check_n(n_customers: int) -> int:
    n = int(n_customers)
    if n < 0:
        raise ValueError("n_customers must be non-negative")
    return n


def simulate_spend(
    frequency: np.ndarray, p: float, q: float, v: float, seed: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Gamma-Gamma mean repeat spend for the given frequencies.

    Returns ``(monetary_value, nu)``: the mean of ``frequency`` transaction values (0 where
    ``frequency == 0``) and each customer's latent rate ``nu ~ Gamma(q, rate v)``.
    """
    _check_positive(p=p, q=q, v=v)
    rng = _rng(seed)
    x = np.asarray(frequency, dtype=float)
    nu = rng.gamma(q, 1.0 / v, x.size)
    total = rng.gamma(np.where(x > 0, p * x, 1.0), 1.0 / nu)
    return np.where(x > 0, total / np.maximum(x, 1.0), 0.0), nu


def _transactions(
    rng: np.random.Generator,
    x: np.ndarray,
    tx: np.ndarray,
    T: np.ndarray,
    spend: dict[str, float] | None,
    nu: np.ndarray | None,
    end_date: Any,
    time_unit: str,
) -> tuple[pd.DataFrame, np.ndarray | None]:
    """Long table of purchases consistent with ``(x, t_x, T)``; also the mean repeat spend."""
    xi = x.astype(np.int64)
    n = xi.size
    counts = xi + 1
    cid = np.repeat(np.arange(n), counts)
    starts = np.cumsum(counts) - counts
    slot = np.arange(cid.size) - np.repeat(starts, counts)
    txr = tx[cid]
    t = np.where(slot == 0, 0.0, np.where(slot == xi[cid], txr, rng.uniform(0.0, 1.0, cid.size) * txr))
    order = np.lexsort((t, cid))
    cid, t = cid[order], t[order]
    # after sorting, the first row of each customer is the first purchase (time 0)
    is_first = np.r_[True, cid[1:] != cid[:-1]]
    unit_ns = pd.Timedelta(1, unit=time_unit).value
    end = np.datetime64(pd.Timestamp(end_date).as_unit("ns").to_datetime64(), "ns")
    offset = np.round((T[cid] - t) * unit_ns).astype("int64").astype("timedelta64[ns]")
    df = pd.DataFrame({"customer_id": cid, "order_date": end - offset})
    monetary = None
    if spend is not None:
        amount = rng.gamma(spend["p"], 1.0 / nu[cid])
        df["amount"] = amount
        rep = ~is_first
        sums = np.bincount(cid[rep], weights=amount[rep], minlength=n)
        monetary = np.where(xi > 0, sums / np.maximum(xi, 1), 0.0)
    return df, monetary


def _finish(
    model, params, rng, x, tx, T, alive, latent, spend, transactions, end_date, time_unit,
    resolution, holdout_counts,
) -> SyntheticCustomers:
    monetary = None
    nu = None
    if spend is None and transactions:
        spend = DEFAULT_SPEND
    if spend is not None:
        spend = _check_positive(**{k: spend[k] for k in ("p", "q", "v")})
        monetary, nu = simulate_spend(x, spend["p"], spend["q"], spend["v"], rng)
        latent["nu"] = nu
    table = None
    if transactions:
        table, m2 = _transactions(rng, x, tx, T, spend, nu, end_date, time_unit)
        if m2 is not None:
            monetary = m2
    if resolution is not None:
        tx = np.floor(tx / resolution) * resolution
    return SyntheticCustomers(
        model=model, params=params, frequency=x.astype(float), recency=tx, T=T, alive=alive,
        monetary_value=monetary, frequency_holdout=holdout_counts, spend_params=spend, latent=latent,
        transactions=table,
    )


def simulate_bgnbd(
    n_customers: int,
    r: float,
    alpha: float,
    a: float,
    b: float,
    T: Any = 52.0,
    *,
    seed: Any = None,
    spend: dict[str, float] | None = None,
    holdout: float = 0.0,
    transactions: bool = False,
    resolution: float | None = None,
    end_date: Any = "2025-01-01",
    time_unit: str = "W",
) -> SyntheticCustomers:
    """Simulate ``n_customers`` from the BG/NBD process (see module docstring).

    ``T``: scalar, per-customer array, or ``(low, high)`` for uniform ages.  ``spend``:
    ``{"p":, "q":, "v":}`` Gamma-Gamma parameters for ``monetary_value``.  ``holdout``: length
    of a future window whose purchase counts are returned as ``frequency_holdout``.
    ``resolution``: round ``T`` and recency down to this grid (e.g. ``1/7`` for daily dates in
    weeks) to mimic date-based summaries (summary only; purchases are not merged).
    ``transactions``: also build the long table, dated so that the window ends at ``end_date``
    with ``time_unit`` as the unit of time (a pandas ``Timedelta`` unit such as ``"W"``/``"D"``).
    """
    params = _check_positive(r=r, alpha=alpha, a=a, b=b)
    n = _check_n(n_customers)
    rng = _rng(seed)
    T_ = _ages(T, n, rng, resolution)
    lam = rng.gamma(r, 1.0 / alpha, n)
    p = rng.beta(a, b, n)
    events = rng.poisson(lam * T_)
    D = rng.geometric(np.clip(p, 1e-300, 1.0))  # repeat purchase after which the customer leaves
    x = np.minimum(events, D)
    pos = x > 0
    tx = np.zeros(n)
    tx[pos] = T_[pos] * rng.beta(x[pos], events[pos] - x[pos] + 1)
    alive = D > events
    hold = None
    if holdout > 0:
        future = rng.poisson(lam * holdout)
        hold = np.where(alive, np.minimum(future, D - events), 0).astype(float)
    latent = {"lambda": lam, "p": p}
    return _finish("BG/NBD", params, rng, x, tx, T_, alive, latent, spend, transactions,
                   end_date, time_unit, resolution, hold)


def simulate_paretonbd(
    n_customers: int,
    r: float,
    alpha: float,
    s: float,
    beta: float,
    T: Any = 52.0,
    *,
    seed: Any = None,
    spend: dict[str, float] | None = None,
    holdout: float = 0.0,
    transactions: bool = False,
    resolution: float | None = None,
    end_date: Any = "2025-01-01",
    time_unit: str = "W",
) -> SyntheticCustomers:
    """Simulate ``n_customers`` from the Pareto/NBD process (options as :func:`simulate_bgnbd`)."""
    params = _check_positive(r=r, alpha=alpha, s=s, beta=beta)
    n = _check_n(n_customers)
    rng = _rng(seed)
    T_ = _ages(T, n, rng, resolution)
    lam = rng.gamma(r, 1.0 / alpha, n)
    mu = rng.gamma(s, 1.0 / beta, n)
    tau = rng.exponential(1.0, n) / np.maximum(mu, 1e-300)
    active = np.minimum(tau, T_)
    x = rng.poisson(lam * active)
    pos = x > 0
    tx = np.zeros(n)
    tx[pos] = active[pos] * rng.uniform(0.0, 1.0, int(pos.sum())) ** (1.0 / x[pos])
    alive = tau > T_
    hold = None
    if holdout > 0:
        window = np.clip(np.minimum(tau, T_ + holdout) - T_, 0.0, None)
        hold = rng.poisson(lam * window).astype(float)
    latent = {"lambda": lam, "mu": mu, "tau": tau}
    return _finish("Pareto/NBD", params, rng, x, tx, T_, alive, latent, spend, transactions,
                   end_date, time_unit, resolution, hold)
