"""Customer-base scoring: fit a transaction model and the spend model on sufficient statistics, then score
every customer (P(alive), expected orders, P(order), expected order value, CLV).

Pure numpy/pandas on one summary frame (one row per customer), so the same code scores a partition of
customers on Spark (mapInPandas). Time is in days throughout.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from loyalist.models import BGNBD, MBGNBD, GammaGamma, ParetoNBD
from loyalist.models._base import BaseModel

TRANSACTION_MODELS: dict[str, type[BaseModel]] = {"bgnbd": BGNBD, "paretonbd": ParetoNBD, "mbgnbd": MBGNBD}
DAYS_PER_MONTH = 365.25 / 12


@dataclass
class Settings:
    horizon_days: int = 90
    clv_months: int = 12
    annual_discount_rate: float = 0.10
    gross_margin: float = 1.0
    """Used when products carry no cost or margin; 1.0 means CLV is in revenue, and the output says so."""


@dataclass
class FittedBase:
    """The fitted transaction model (by name) and spend model, with notes on what was skipped."""

    name: str
    transaction: BaseModel
    spend: GammaGamma | None
    notes: list[str] = field(default_factory=list)


def fit_base(summary: pd.DataFrame, model: str = "bgnbd") -> FittedBase:
    """Fit `model` on (frequency, recency, T) and Gamma-Gamma on repeat customers' average spend."""
    mv = summary["monetary_value"].to_numpy(float)
    repeat = (summary["frequency"].to_numpy() > 0) & np.isfinite(mv) & (mv > 0)
    return fit_patterns(summary[["frequency", "recency", "T"]].assign(n=1.0),
                        summary.loc[repeat, ["frequency", "monetary_value"]].assign(n=1.0), model)


def fit_patterns(patterns: pd.DataFrame, spend_patterns: pd.DataFrame, model: str) -> FittedBase:
    """`fit_base` on weighted rows: `patterns` (frequency, recency, T, n) and `spend_patterns` (frequency,
    monetary_value, n) of repeat customers with amounts. With n = the number of customers sharing a row, the
    weighted likelihood equals the per-customer one (how the Spark engine fits on distinct patterns)."""
    if model not in TRANSACTION_MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(TRANSACTION_MODELS)}")
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tm = TRANSACTION_MODELS[model]().fit(patterns["frequency"].to_numpy(float),
                                             patterns["recency"].to_numpy(float), patterns["T"].to_numpy(float),
                                             weights=patterns["n"].to_numpy(float))
    notes += [f"{model}: {w.message}" for w in caught]
    spend = None
    if (spend_patterns["n"].sum() if len(spend_patterns) else 0) >= 20:
        try:
            spend = GammaGamma().fit(spend_patterns["frequency"].to_numpy(float),
                                     spend_patterns["monetary_value"].to_numpy(float),
                                     weights=spend_patterns["n"].to_numpy(float))
        except Exception as exc:  # the spend model is optional: say why it is missing
            notes.append(f"spend model not fitted: {exc}")
    else:
        notes.append("spend model skipped: fewer than 20 repeat customers with amounts "
                     "(expected_order_value and clv_12m are empty)")
    return FittedBase(model, tm, spend, notes)


def score(fitted: FittedBase, summary: pd.DataFrame, settings: Settings | None = None,
          margin: np.ndarray | float | None = None) -> pd.DataFrame:
    """One row per customer of `summary` with the stable per-customer columns."""
    s = settings or Settings()
    f = summary["frequency"].to_numpy(float)
    r = summary["recency"].to_numpy(float)
    T = summary["T"].to_numpy(float)
    tm = fitted.transaction
    out = pd.DataFrame({
        "customer_id": summary["customer_id"].to_numpy(),
        "first_order": summary["first_order"].to_numpy(),
        "last_order": summary["last_order"].to_numpy(),
        "orders": summary["orders"].to_numpy(),
        "revenue": summary["revenue"].to_numpy(float),
        "frequency": summary["frequency"].to_numpy(),
        "recency_days": summary["recency"].to_numpy(),
        "tenure_days": summary["T"].to_numpy(),
    })
    out["p_alive"] = tm.conditional_probability_alive(f, r, T)
    out[f"expected_orders_{s.horizon_days}d"] = tm.conditional_expected_number_of_purchases_up_to_time(
        s.horizon_days, f, r, T)
    out[f"prob_order_{s.horizon_days}d"] = tm.probability_of_purchase_within(s.horizon_days, f, r, T)
    if fitted.spend is not None:
        mv = np.nan_to_num(summary["monetary_value"].to_numpy(float), nan=0.0)
        out["expected_order_value"] = fitted.spend.conditional_expected_average_profit(f, mv)
        monthly = (1 + s.annual_discount_rate) ** (1 / 12) - 1
        m = s.gross_margin if margin is None else margin
        out[f"clv_{s.clv_months}m"] = fitted.spend.customer_lifetime_value(
            tm, f, r, T, mv, horizon=s.clv_months, freq_unit_per_period=DAYS_PER_MONTH,
            discount_rate=monthly, margin=1.0) * m
    else:
        out["expected_order_value"] = np.nan
        out[f"clv_{s.clv_months}m"] = np.nan
    out["model"] = fitted.name
    return out
