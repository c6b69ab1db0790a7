"""The seasonal BG/NBD and Pareto/NBD as backtest predictors (`bgnbd_seasonal`, `paretonbd_seasonal`, on
request: bench/predictor.py).

:class:`loyalist.models.seasonal.SeasonalBGNBD` and :class:`loyalist.models.SeasonalParetoNBD` need, besides each customer's frequency and first and last
purchase day (from ``rfm_summary``), the repeat purchase occasions per calendar month of year before the
cutoff: :func:`repeat_purchases_by_month` computes them with one Ibis expression (runs on any backend).
Everything is fitted on data before the cutoff only.
"""

from __future__ import annotations

import datetime as dt

import ibis.expr.types as ir
import numpy as np
import pandas as pd

from loyalist.features import purchases

SEASONAL = "bgnbd_seasonal"
SEASONAL_PARETO = "paretonbd_seasonal"


def repeat_purchases_by_month_table(transactions: ir.Table, as_of: dt.date) -> ir.Table:
    """(month 1..12, n): repeat purchase occasions (after each customer's first purchase day) before `as_of`
    per calendar month of year."""
    occ = purchases(transactions, dt.datetime.combine(as_of, dt.time()))
    first = occ.group_by("customer_id").aggregate(first_day=occ.day.min())
    rep = occ.join(first, "customer_id")
    rep = rep.filter(rep.day > rep.first_day)
    return rep.group_by(month=rep.day.month()).aggregate(n=rep.count())


def repeat_purchases_by_month(transactions: ir.Table, as_of: dt.date) -> np.ndarray:
    """The 12 counts of :func:`repeat_purchases_by_month_table`, January first (zeros for absent months)."""
    counts = repeat_purchases_by_month_table(transactions, as_of).execute()
    out = np.zeros(12)
    out[counts["month"].to_numpy(int) - 1] = counts["n"].to_numpy(float)
    return out


def fit_predict_seasonal(transactions: ir.Table, calib: pd.DataFrame, cutoff: dt.date,
                         horizon: int, name: str = SEASONAL) -> tuple[pd.DataFrame, str]:
    """Fit the seasonal model `name` (:class:`SeasonalBGNBD` for ``bgnbd_seasonal``,
    :class:`SeasonalParetoNBD` for ``paretonbd_seasonal``) on the customers of `calib` (``rfm_summary`` at
    `cutoff`) and predict the `horizon` days after the cutoff: (customer_id, expected, prob) and a note with the
    fitted intensity."""
    from loyalist.models.seasonal import SeasonalBGNBD
    from loyalist.models.seasonal_paretonbd import SeasonalParetoNBD

    cls, classic = {SEASONAL: (SeasonalBGNBD, "BG/NBD"), SEASONAL_PARETO: (SeasonalParetoNBD, "Pareto/NBD")}[name]
    x = calib["frequency"].to_numpy(float)
    first = pd.to_datetime(calib["first_order"]).to_numpy("datetime64[D]")
    last = pd.to_datetime(calib["last_order"]).to_numpy("datetime64[D]")
    m = cls().fit(x, first, last, cutoff, repeat_purchases_by_month(transactions, cutoff))
    pred = pd.DataFrame({
        "customer_id": calib["customer_id"].to_numpy(),
        "expected": m.conditional_expected_number_of_purchases_up_to_time(horizon, x, first, last, cutoff),
        "prob": m.probability_of_purchase_within(horizon, x, first, last, cutoff)})
    months = ", ".join(f"{k[2:]}: {v:.2f}" for k, v in m.params_.items()
                       if k.startswith("m_") and m.seen_months_[int(k[2:]) - 1])
    return pred, (f"{name}: log-likelihood {m.log_likelihood_:,.1f} vs {classic} {m.base_log_likelihood_:,.1f}; "
                  f"monthly intensity (months seen before the cutoff; the others 1) {months}"
                  f"{'' if m.converged_ else ' (optimiser did not converge: ' + m.optimizer_message_ + ')'}")
