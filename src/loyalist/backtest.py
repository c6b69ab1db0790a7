"""Backtest on held-out time: fit on everything before a cutoff, score the horizon after it.

Every model is judged on what happened after the cutoff, never on the data it was fitted on:
total repeat orders predicted vs actual, per-customer MAE and RMSE of the order count, AUC and Brier score
of P(at least one order), and the error of the expected order value. Among the classic models (the ones
`loyalist analyze` scores customers with) the one with the lowest per-customer MAE is chosen (AUC breaks
ties; :func:`choose`); `loyalist analyze` uses it. The other predictors are shown for comparison.

Besides the classic models (BG/NBD, Pareto/NBD, MBG/NBD) it backtests `rhythm_gbm`: gradient-boosted trees
(scikit-learn's HistGradientBoosting) on BG/NBD outputs and RFM/rhythm features, trained on an earlier split
of the calibration data only (features at cutoff - h', outcomes in the h' days before the cutoff), so its
holdout figures are as honest as the others'.

`btyd_stack` (and `btyd_stack_unguarded`, the same without its guard; both on request, e.g. by
bench/predictor.py, not in the default list) blends and recalibrates BG/NBD and Pareto/NBD on a reference
window before the cutoff (see :func:`fit_predict_stack`). `bgnbd_seasonal` (on request too) is the BG/NBD with
a month-of-year purchase intensity (loyalist.models.seasonal, via loyalist.backtest_seasonal), and
`paretonbd_seasonal` the Pareto/NBD in the same operational time (loyalist.models.seasonal_paretonbd). Measured
(bench/results/predictor.json): none of them beats both classic models on every metric on CDNOW and Online
Retail II (the seasonal model does at one of three Online Retail II cutoffs), so `analyze` keeps choosing
among the classic models.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import ibis
import ibis.expr.types as ir
import numpy as np
import pandas as pd
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
)
from sklearn.metrics import roc_auc_score

from loyalist.customer_base import TRANSACTION_MODELS, fit_base
from loyalist.features import purchases, rfm_summary, rhythm
from loyalist.features.summary import snap

GBM = "rhythm_gbm"
SEASONAL = "bgnbd_seasonal"  # loyalist.backtest_seasonal: the seasonal BG/NBD, on request (bench/predictor.py)
SEASONAL_PARETO = "paretonbd_seasonal"  # the seasonal Pareto/NBD, on request too
STACK = "btyd_stack"
STACK_UNGUARDED = "btyd_stack_unguarded"  # the blend without its guard: reported by bench/predictor.py
DEFAULT_MODELS = (*TRANSACTION_MODELS, GBM)
ON_REQUEST = (SEASONAL, SEASONAL_PARETO, STACK, STACK_UNGUARDED)
"""Candidates a backtest runs only when asked (`loyalist backtest --with`, `models=`): shown beside the
classic models, never `analyze`'s choice (it scores customers with a classic model)."""


@dataclass
class BacktestResult:
    cutoff: dt.date
    horizon_days: int
    metrics: pd.DataFrame
    tracking: pd.DataFrame
    chosen: str
    customers: int
    per_customer: pd.DataFrame
    """customer_id, frequency (calibration), actual holdout orders, and each model's expected orders."""
    notes: list[str] = field(default_factory=list)
    per_customer_prob: pd.DataFrame | None = None
    """customer_id and each model's P(at least one order in the horizon), rows as in per_customer (for paired
    comparisons, e.g. bench/predictor.py's bootstrap); None on Spark."""

    def to_dict(self) -> dict:
        return {"cutoff": str(self.cutoff), "horizon_days": self.horizon_days, "customers": self.customers,
                "chosen": self.chosen, "notes": self.notes,
                "metrics": self.metrics.replace({np.nan: None}).to_dict("records")}


def _date(d: dt.date | str) -> dt.date:
    return d if isinstance(d, dt.date) else dt.date.fromisoformat(str(d))


def actuals_table(transactions: ir.Table, start: dt.date, days: int) -> ir.Table:
    """Purchase occasions and spend per customer in [start, start + days) (the Ibis expression both engines run)."""
    end = start + dt.timedelta(days=days)
    occ = purchases(transactions, dt.datetime.combine(end, dt.time()))
    occ = occ.filter(occ.day >= ibis.date(start))
    return occ.group_by("customer_id").aggregate(holdout_orders=occ.count(), holdout_spend=occ.spend.sum())


def actuals(transactions: ir.Table, start: dt.date, days: int) -> pd.DataFrame:
    """Purchase occasions and spend per customer in [start, start + days)."""
    return actuals_table(transactions, start, days).execute()


def features(transactions: ir.Table, as_of: dt.date) -> pd.DataFrame:
    """Calibration sufficient statistics plus rhythm features, one row per customer: in customer_id order and
    with the spend sums snapped (loyalist.features.summary.snap), because the engine returns rows in any order
    and sums in any order, and the gradient-boosted trees trained on them amplify both (rhythm_gbm's total at
    one Online Retail II cutoff moved by 14 orders between runs before this)."""
    summ = rfm_summary(transactions, as_of).execute()
    rh = rhythm(transactions, as_of).execute()
    df = summ.merge(rh, on="customer_id", how="left").sort_values("customer_id", ignore_index=True)
    return snap(df, ("revenue", "monetary_value", "first_spend", "recent_spend", "gap_mean", "gap_std"))


def _gbm_matrix(df: pd.DataFrame, bg, horizon: int) -> np.ndarray:
    f, r, T = (df[c].to_numpy(float) for c in ("frequency", "recency", "T"))
    cols = [f, r, T, T - r, df["monetary_value"].fillna(0).to_numpy(float), df["first_spend"].to_numpy(float),
            df["gap_mean"].to_numpy(float), df["gap_std"].to_numpy(float), df["last_gap"].to_numpy(float),
            df["recent_orders"].fillna(0).to_numpy(float), df["recent_spend"].fillna(0).to_numpy(float),
            bg.conditional_probability_alive(f, r, T),
            bg.conditional_expected_number_of_purchases_up_to_time(horizon, f, r, T),
            (T - r) / np.where(f > 0, r / np.maximum(f, 1), np.nan)]
    return np.column_stack(cols)


def fit_predict_gbm(transactions: ir.Table, calib: pd.DataFrame, cutoff: dt.date, horizon: int, bg=None,
                    seed: int = 0) -> tuple[pd.DataFrame | None, str]:
    """Train on an earlier split of the data before `cutoff`; predict orders and P(order) after it for the
    customers of `calib` (their features at the cutoff; `bg`: BG/NBD already fitted on them, if any).

    Trained on the last h' days before the cutoff (features at cutoff - h', orders in those h' days), h' = h
    or half the history when that is shorter; counts are scaled by h/h' and probabilities by a constant
    hazard. (Training on the same season a year earlier was tried and was worse on Online Retail II: the
    customer mix a year earlier is too different.)
    """
    history = (cutoff - pd.Timestamp(calib["first_order"].min()).date()).days
    train_h = min(horizon, history // 2)
    if train_h < 14:
        return None, f"{GBM} skipped: {history} days of history before the cutoff is too short to train on"
    c0 = cutoff - dt.timedelta(days=train_h)
    train = features(transactions, c0)
    if len(train) < 200:
        return None, f"{GBM} skipped: only {len(train)} customers before the training cutoff {c0}"
    y = train[["customer_id"]].merge(actuals(transactions, c0, train_h), on="customer_id", how="left")
    y_count = y["holdout_orders"].fillna(0).to_numpy(float)
    bg_train = fit_base(train, "bgnbd").transaction
    X = _gbm_matrix(train, bg_train, train_h)
    reg = HistGradientBoostingRegressor(loss="poisson", max_iter=300, learning_rate=0.05, random_state=seed).fit(X, y_count)
    clf = None
    if 0 < (y_count > 0).mean() < 1:
        clf = HistGradientBoostingClassifier(max_iter=300, learning_rate=0.05, random_state=seed).fit(X, y_count > 0)
    bg = bg or fit_base(calib, "bgnbd").transaction
    Xt = _gbm_matrix(calib, bg, train_h)
    scale = horizon / train_h
    pred = pd.DataFrame({"customer_id": calib["customer_id"], "expected": reg.predict(Xt) * scale})
    p_short = clf.predict_proba(Xt)[:, 1] if clf is not None else np.full(len(calib), (y_count > 0).mean())
    pred["prob"] = 1 - (1 - p_short) ** scale
    return pred, f"{GBM}: trained on features at {c0} and the orders of the {train_h} days after it"


def reference_split(first_order: dt.date, cutoff: dt.date, horizon: int) -> tuple[dt.date, int, str] | None:
    """The window before `cutoff` on which :func:`fit_predict_stack` learns its calibration: (start, days,
    why). The same season a year earlier when a year before the cutoff there were already at least
    max(horizon, 180) days of history (seasonal shops: Online Retail II's autumn peak), else the latest
    min(horizon, history / 2) days (the cohort's recent trend: CDNOW's single cohort). None when too short."""
    history = (cutoff - first_order).days
    if horizon <= 365 and history - 365 >= max(horizon, 180):
        return cutoff - dt.timedelta(days=365), horizon, "the same season a year earlier"
    days = min(horizon, history // 2)
    if days < 14:
        return None
    return cutoff - dt.timedelta(days=days), days, f"the last {days} days before the cutoff"


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p / (1 - p))


def _poisson_deviance(y: np.ndarray, mu: np.ndarray) -> float:
    """Mean Poisson deviance: the proper score of an expected count (MAE rewards predicting the median)."""
    from sklearn.metrics import mean_poisson_deviance

    return float(mean_poisson_deviance(y, np.maximum(mu, 1e-9)))


def _stack_inputs(summary: pd.DataFrame, horizon: int, models: dict) -> tuple[np.ndarray, np.ndarray]:
    """Per customer: log of the classic models' mean expected orders and logit of their mean P(order) over
    `horizon` (one input each: the two models' own predictions are too collinear to weigh separately)."""
    f, r, T = (summary[c].to_numpy(float) for c in ("frequency", "recency", "T"))
    e = np.mean([tm.conditional_expected_number_of_purchases_up_to_time(horizon, f, r, T) for tm in models.values()], 0)
    p = np.mean([tm.probability_of_purchase_within(horizon, f, r, T) for tm in models.values()], 0)
    return np.log(e + 1e-9)[:, None], _logit(p)[:, None]


_STACK_MODELS = ("bgnbd", "paretonbd")


def _stack_at(transactions: ir.Table, first: dt.date, cutoff: dt.date, horizon: int, calib: pd.DataFrame,
              fitted: dict) -> tuple[dict | None, str]:
    """Blend learned on the reference window of `cutoff`, applied to `calib` (customers at `cutoff`, with the
    classic models `fitted` on them) over `horizon` days. Also returns what the reference window taught:
    its customers, actual orders and the classic models fitted at its start (to validate a blend on it)."""
    from sklearn.linear_model import LogisticRegression, PoissonRegressor

    ref = reference_split(first, cutoff, horizon)
    if ref is None:
        return None, f"too little history before {cutoff} for a reference window"
    start, days, why = ref
    train = features(transactions, start)
    if len(train) < 200:
        return None, f"only {len(train)} customers before the reference start {start}"
    y = train[["customer_id"]].merge(actuals(transactions, start, days), on="customer_id", how="left")
    y = y["holdout_orders"].fillna(0).to_numpy(float)
    if not 0 < (y > 0).mean() < 1:
        return None, "no variation in the reference window's orders"
    ref_models = {n: fit_base(train, n).transaction for n in _STACK_MODELS}
    E0, P0 = _stack_inputs(train, days, ref_models)
    reg = PoissonRegressor(alpha=1e-6, max_iter=1000).fit(E0, y)
    clf = LogisticRegression(C=1e6, max_iter=1000).fit(P0, y > 0)
    E1, P1 = _stack_inputs(calib, horizon, fitted)
    out = {"expected": reg.predict(E1), "prob": clf.predict_proba(P1)[:, 1], "start": start, "days": days,
           "train": train, "y": y, "ref_models": ref_models}
    return out, (f"blend learned on {why} ({start} + {days} days, {len(train):,} customers): "
                 f"log E = {reg.intercept_:+.2f} {reg.coef_[0]:+.2f} x log(mean BG/NBD, Pareto/NBD expectation)")


def fit_predict_stack(transactions: ir.Table, calib: pd.DataFrame, cutoff: dt.date, horizon: int,
                      fitted: dict | None = None, guard: bool = True) -> tuple[pd.DataFrame | None, str]:
    """`btyd_stack`: BG/NBD and Pareto/NBD blended and recalibrated on an earlier window, before the cutoff.

    On the reference window of :func:`reference_split` (all before `cutoff`), BG/NBD and Pareto/NBD are fitted
    on the data before its start and predict its orders; a Poisson regression (log link) of the actual orders
    on the log of the models' mean expectation, and a logistic regression of "ordered at least once" on the
    logit of their mean probability, learn a level and a slope the stationary models miss (the cohort's trend,
    or the season when the reference is the same season a year earlier). These regressions are applied to the
    models fitted on all data before `cutoff`, predicting `horizon` days.

    Guard, also decided before the cutoff: the same recipe is first run one step earlier (learned on the
    reference window's own reference window, applied at the reference window's start) and scored on the
    reference window. If it was not better there than the better classic model (per-customer MAE), the
    stack falls back to that model's predictions (as on Online Retail II at a winter cutoff, whose only
    reference window is the autumn peak). No number after the cutoff is used anywhere.
    """
    first = pd.Timestamp(calib["first_order"].min()).date()
    fitted = {n: (fitted or {}).get(n) or fit_base(calib, n).transaction for n in _STACK_MODELS}
    main, note = _stack_at(transactions, first, cutoff, horizon, calib, fitted)
    if main is None:
        return None, f"{STACK} skipped: {note}"
    # validation one step earlier, on the reference window
    train, y, days = main["train"], main["y"], main["days"]
    f, r, T = (train[c].to_numpy(float) for c in ("frequency", "recency", "T"))
    dev = {n: _poisson_deviance(y, tm.conditional_expected_number_of_purchases_up_to_time(days, f, r, T))
           for n, tm in main["ref_models"].items()}
    best = min(dev, key=dev.get)
    if not guard:
        pred = pd.DataFrame({"customer_id": calib["customer_id"].to_numpy(), "expected": main["expected"],
                             "prob": main["prob"]})
        return pred, f"{STACK_UNGUARDED}: {note} (no guard)"
    val, vnote = _stack_at(transactions, first, main["start"], days, train, main["ref_models"])
    if val is not None:
        dev_stack = _poisson_deviance(y, val["expected"])
        verdict = (f"validated on {main['start']} + {days} days: mean Poisson deviance {dev_stack:.4f} vs "
                   f"{best} {dev[best]:.4f}")
        if dev_stack < dev[best]:
            pred = pd.DataFrame({"customer_id": calib["customer_id"].to_numpy(), "expected": main["expected"],
                                 "prob": main["prob"]})
            return pred, f"{STACK}: {note}; {verdict}"
    else:
        verdict = f"not validated ({vnote})"
    tm = fitted[best]
    f, r, T = (calib[c].to_numpy(float) for c in ("frequency", "recency", "T"))
    pred = pd.DataFrame({"customer_id": calib["customer_id"].to_numpy(),
                         "expected": tm.conditional_expected_number_of_purchases_up_to_time(horizon, f, r, T),
                         "prob": tm.probability_of_purchase_within(horizon, f, r, T)})
    return pred, f"{STACK}: uses {best} unchanged ({verdict}; the blend: {note})"


def metric_sums(expected: np.ndarray, prob: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The sums the holdout metrics are made of, over the customers given (a whole population, or one batch of
    it on a Spark executor: sums of batches add up). `y`: actual holdout orders."""
    pos = (y > 0).astype(float)
    return {"n": float(len(y)), "predicted": float(expected.sum()), "actual": float(y.sum()),
            "abs_err": float(np.abs(expected - y).sum()), "sq_err": float(((expected - y) ** 2).sum()),
            "brier": float(((pos - np.clip(prob, 0, 1)) ** 2).sum()), "positives": float(pos.sum())}


def holdout_auc(pos: np.ndarray, prob: np.ndarray, weight: np.ndarray | None = None) -> float:
    """AUC of P(order) for "ordered at least once in the holdout"; `weight`: customers per (prob, pos) row when
    the input is counts (the same value as over the customers one by one). NaN without both outcomes."""
    w = np.ones(len(pos)) if weight is None else np.asarray(weight, float)
    npos = float(w[pos].sum())
    if not 0 < npos < float(w.sum()):
        return np.nan
    return float(roc_auc_score(pos, prob, sample_weight=weight))


def metric_row(name: str, s: dict[str, float], auc: float) -> dict:
    """One row of the metrics table from :func:`metric_sums` (both engines)."""
    n = s["n"]
    return {
        "model": name,
        "predicted_orders": s["predicted"],
        "actual_orders": s["actual"],
        "total_error_pct": float(100 * (s["predicted"] - s["actual"]) / max(s["actual"], 1)),
        "mae": s["abs_err"] / n,
        "rmse": float(np.sqrt(s["sq_err"] / n)),
        "auc": auc,
        "brier": s["brier"] / n,
    }


def spend_errors(spend_pred: np.ndarray, holdout_orders: np.ndarray, holdout_spend: np.ndarray) -> tuple[float, int]:
    """(sum of |predicted - observed average order value|, customers) over those with both, in the holdout."""
    with np.errstate(divide="ignore", invalid="ignore"):
        obs = holdout_spend / holdout_orders
    ok = np.isfinite(obs) & np.isfinite(spend_pred)
    return float(np.abs(spend_pred[ok] - obs[ok]).sum()), int(ok.sum())


def finish_metrics(rows: list[dict], spend: tuple[float, int] | None) -> tuple[pd.DataFrame, str]:
    """The metrics table (with the spend error when a spend model was fitted) and the chosen model
    (:func:`choose`)."""
    metrics = pd.DataFrame(rows)
    if spend is not None:
        total, count = spend
        metrics["spend_mae"] = total / count if count else np.nan
        metrics["spend_customers"] = int(count)
    return metrics, str(choose(metrics)["model"])


def choose(metrics: pd.DataFrame) -> pd.Series:
    """The metrics row of the model `analyze` uses: among the classic models (TRANSACTION_MODELS, the ones it
    scores customers with) the lowest per-customer MAE, the higher AUC on a tie, then the model listed first;
    among all rows only when no classic model was backtested."""
    classic = metrics[metrics["model"].isin(list(TRANSACTION_MODELS))]
    pool = classic if len(classic) else metrics
    return pool.sort_values(["mae", "auc"], ascending=[True, False], kind="mergesort").iloc[0]


def check_holdout(transactions: ir.Table, cutoff: dt.date, horizon_days: int) -> None:
    """ValueError when the holdout [cutoff, cutoff + horizon) runs past the data: the days after the last order
    would count as days without orders and every model would look wrong (a cutoff after the data: no holdout)."""
    t = transactions.filter(~transactions.is_future) if "is_future" in transactions.columns else transactions
    last = t.order_date.max().execute()
    if last is None or pd.isna(last):
        raise ValueError("the store holds no transactions yet")
    last = pd.Timestamp(last).date()
    end = cutoff + dt.timedelta(days=horizon_days)
    if end > last + dt.timedelta(days=1):
        latest = last + dt.timedelta(days=1 - horizon_days)
        room = (last - cutoff).days + 1
        shorter = f" or a horizon of at most {room} days" if room >= 1 else ""
        raise ValueError(f"the holdout {cutoff} + {horizon_days} days runs to {end}, past the last order "
                         f"({last}): choose a cutoff on or before {latest}{shorter}")


def backtest(transactions: ir.Table, cutoff: dt.date | str, horizon_days: int = 90,
             models: tuple[str, ...] = DEFAULT_MODELS) -> BacktestResult:
    cutoff = _date(cutoff)
    unknown = [m for m in models if m not in (*DEFAULT_MODELS, *ON_REQUEST)]
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r}; choose among {', '.join((*DEFAULT_MODELS, *ON_REQUEST))}")
    check_holdout(transactions, cutoff, horizon_days)
    notes: list[str] = []
    calib = features(transactions, cutoff)
    if len(calib) < 50:
        raise ValueError(f"only {len(calib)} customers bought before {cutoff}; choose a later cutoff")
    act = calib[["customer_id"]].merge(actuals(transactions, cutoff, horizon_days), on="customer_id", how="left")
    y = act["holdout_orders"].fillna(0).to_numpy(float)
    f, r, T = (calib[c].to_numpy(float) for c in ("frequency", "recency", "T"))
    rows, predicted = [], {}
    per_customer = pd.DataFrame({"customer_id": calib["customer_id"], "frequency": f, "actual": y})
    per_customer_prob = pd.DataFrame({"customer_id": calib["customer_id"]})
    spend = None
    for name in models:
        if name in (GBM, STACK, STACK_UNGUARDED, SEASONAL, SEASONAL_PARETO):
            if name in (SEASONAL, SEASONAL_PARETO):
                from loyalist.backtest_seasonal import fit_predict_seasonal

                pred, note = fit_predict_seasonal(transactions, calib, cutoff, horizon_days, name)
            elif name == GBM:
                pred, note = fit_predict_gbm(transactions, calib, cutoff, horizon_days, predicted.get("bgnbd"))
            else:
                pred, note = fit_predict_stack(transactions, calib, cutoff, horizon_days, predicted,
                                               guard=name == STACK)
            notes.append(note)
            if pred is None:
                continue
            expected, prob = pred["expected"].to_numpy(float), pred["prob"].to_numpy(float)
        else:
            fitted = fit_base(calib, name)
            notes += [n for n in fitted.notes if n not in notes]  # e.g. "spend model skipped" once, not per model
            tm = fitted.transaction
            expected = tm.conditional_expected_number_of_purchases_up_to_time(horizon_days, f, r, T)
            prob = tm.probability_of_purchase_within(horizon_days, f, r, T)
            predicted[name] = tm
            if fitted.spend is not None and spend is None:
                mv = np.nan_to_num(calib["monetary_value"].to_numpy(float), nan=0.0)
                spend = spend_errors(fitted.spend.conditional_expected_average_profit(f, mv),
                                     act["holdout_orders"].to_numpy(float), act["holdout_spend"].to_numpy(float))
        per_customer[name] = expected
        per_customer_prob[name] = prob
        rows.append(metric_row(name, metric_sums(expected, prob, y), holdout_auc(y > 0, prob)))
    metrics, best = finish_metrics(rows, spend)
    tracking = tracking_curve(transactions, calib, predicted, cutoff, horizon_days)
    return BacktestResult(cutoff, horizon_days, metrics, tracking, best, len(calib), per_customer, notes,
                          per_customer_prob)


def repeat_days(transactions: ir.Table, cutoff: dt.date, horizon_days: int) -> ir.Table:
    """(day, n): repeat purchase occasions per day up to cutoff + horizon of the customers who bought before
    the cutoff (the actual line of the tracking plot; the Ibis expression both engines run)."""
    end = cutoff + dt.timedelta(days=horizon_days)
    first = purchases(transactions, dt.datetime.combine(cutoff, dt.time()))
    first = first.group_by("customer_id").aggregate(first_day=first.day.min())
    occ = purchases(transactions, dt.datetime.combine(end, dt.time()))
    j = occ.join(first, "customer_id")
    j = j.filter(j.day > j.first_day)
    return j.group_by("day").aggregate(n=j.count())


def tracking_curve(transactions: ir.Table, calib: pd.DataFrame, models: dict, cutoff: dt.date,
                   horizon_days: int, step_days: int = 7) -> pd.DataFrame:
    """Cumulative repeat purchases of the calibration customers, week by week through calibration and
    holdout: actual, and each model's population expectation E[X(t)] summed over customers from their
    first purchase (the classic tracking plot)."""
    repeats = repeat_days(transactions, cutoff, horizon_days).execute()
    cohorts = pd.to_datetime(calib["first_order"]).value_counts().rename_axis("first_order").reset_index(name="n")
    return tracking_from(repeats, cohorts, models, cutoff, horizon_days, step_days)


def tracking_from(repeats: pd.DataFrame, cohorts: pd.DataFrame, models: dict, cutoff: dt.date,
                  horizon_days: int, step_days: int = 7) -> pd.DataFrame:
    """The tracking curve from small aggregates (both engines): `repeats` (day, n) from :func:`repeat_days`,
    `cohorts` (first_order, n: customers per first-purchase day)."""
    end = cutoff + dt.timedelta(days=horizon_days)
    cohorts = cohorts.assign(first_order=pd.to_datetime(cohorts["first_order"])).sort_values("first_order")
    start = cohorts["first_order"].iloc[0]
    grid = pd.date_range(start, pd.Timestamp(end), freq=f"{step_days}D")
    out = pd.DataFrame({"date": grid})
    repeats = repeats.assign(day=pd.to_datetime(repeats["day"])).sort_values("day")
    cum = np.concatenate([[0], np.cumsum(repeats["n"].to_numpy(np.int64))])
    out["actual"] = cum[np.searchsorted(repeats["day"].to_numpy(), grid.to_numpy(), side="right")]
    # Group customers by first-purchase day so each model call covers one cohort.
    cohort_days = cohorts["first_order"].to_numpy()
    counts = cohorts["n"].to_numpy(np.int64)
    for name, tm in models.items():
        ages = (grid.to_numpy()[:, None] - cohort_days[None, :]) / np.timedelta64(1, "D")
        ages = np.maximum(ages, 0.0)
        flat = tm.expected_number_of_purchases_up_to_time(ages.ravel()).reshape(ages.shape)
        out[name] = (flat * counts[None, :]).sum(axis=1)
    out["phase"] = np.where(out["date"] <= pd.Timestamp(cutoff), "calibration", "holdout")
    return out


def backtest_on_spark(con, transactions: ir.Table, cutoff: dt.date | str, horizon_days: int = 90) -> BacktestResult:
    """:func:`backtest` of the classic models on the Spark engine (`con`: the Ibis PySpark backend), the same
    numbers as on DuckDB (within floating-point summation order).

    What runs where: the calibration summary (`rfm_summary` at the cutoff) and the holdout counts
    (:func:`actuals_table`) are the same Ibis expressions, run on Spark and joined there. The driver collects
    the distinct (frequency, recency, T) and (frequency, monetary_value) patterns with their counts and fits
    every classic model on them (`customer_base.fit_patterns`, as the engine's analysis does). The executors
    score every customer (mapInPandas, the models rebuilt from their parameters) and reduce each batch to
    :func:`metric_sums` and the spend error per model, plus customer counts per (P(order), ordered) pair;
    Spark sums these, and the driver turns the sums into the metrics table (:func:`metric_row`, AUC from the
    counts by :func:`holdout_auc`). The tracking curve comes from repeat occasions per day and customers per
    first-purchase day, aggregated on Spark (:func:`repeat_days`, :func:`tracking_from`). Driver memory grows
    with the distinct patterns and P(order) values, never with order lines.

    `rhythm_gbm` does not run here: it trains gradient-boosted trees on per-customer feature rows, which would
    have to reach the driver; the choice (`analyze`'s) is among the classic models on both engines, so it is
    the same. `per_customer` of the result is None (the per-customer predictions stay on the executors).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from loyalist.customer_base import fit_patterns

    cutoff = _date(cutoff)
    session = con._session
    summ = rfm_summary(transactions, cutoff)
    act = actuals_table(transactions, cutoff, horizon_days)
    j = summ.left_join(act, "customer_id")
    j = j.select("customer_id", "frequency", "recency", "T", "monetary_value", "first_order",
                 holdout_orders=j.holdout_orders.fill_null(0).cast("float64"), holdout_spend=j.holdout_spend)
    calib = session.sql(con.compile(j)).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        patterns = (calib.groupBy("frequency", "recency", "T").agg(F.count(F.lit(1)).alias("n"))
                    .orderBy("frequency", "recency", "T").toPandas())
        customers = int(patterns["n"].sum()) if len(patterns) else 0
        if customers < 50:
            raise ValueError(f"only {customers} customers bought before {cutoff}; choose a later cutoff")
        spend_patterns = (calib.filter((F.col("frequency") > 0) & (F.col("monetary_value") > 0)
                                       & ~F.isnan("monetary_value"))
                          .groupBy("frequency", "monetary_value").agg(F.count(F.lit(1)).alias("n"))
                          .orderBy("frequency", "monetary_value").toPandas())
        notes: list[str] = []
        fitted_models: dict = {}
        spend_params = None
        for name in TRANSACTION_MODELS:
            fitted = fit_patterns(patterns, spend_patterns, name)
            notes += fitted.notes
            fitted_models[name] = fitted.transaction
            if fitted.spend is not None and spend_params is None:
                spend_params = dict(fitted.spend.params_)
        notes.append(f"{GBM}: not run on the Spark engine (it trains on per-customer feature rows at the driver); "
                     "the model is chosen among the classic models, as on DuckDB")
        shipped = {n: (type(tm), dict(tm.params_)) for n, tm in fitted_models.items()}
        h = horizon_days
        sums_cols = ["n", "predicted", "actual", "abs_err", "sq_err", "brier", "positives"]
        out_cols = ["kind", "model", "prob", "pos", *sums_cols]

        def run(batches):
            from loyalist.models import GammaGamma

            models = {n: cls.from_params(**prm) for n, (cls, prm) in shipped.items()}
            spend = GammaGamma.from_params(**spend_params) if spend_params is not None else None
            for b in batches:
                if b.empty:
                    continue
                f, r, TT = (b[c].to_numpy(float) for c in ("frequency", "recency", "T"))
                y = b["holdout_orders"].to_numpy(float)
                pos = y > 0
                for name, tm in models.items():
                    e = tm.conditional_expected_number_of_purchases_up_to_time(h, f, r, TT)
                    p = tm.probability_of_purchase_within(h, f, r, TT)
                    yield pd.DataFrame([{"kind": "sums", "model": name, **metric_sums(e, p, y)}]).reindex(
                        columns=out_cols)
                    c = pd.DataFrame({"prob": p, "pos": pos}).groupby(["prob", "pos"]).size().reset_index(name="n")
                    yield c.assign(kind="auc", model=name, n=c["n"].astype(float)).reindex(columns=out_cols)
                if spend is not None:
                    mv = np.nan_to_num(b["monetary_value"].to_numpy(float), nan=0.0)
                    total, count = spend_errors(spend.conditional_expected_average_profit(f, mv), y,
                                                b["holdout_spend"].to_numpy(float))
                    yield pd.DataFrame([{"kind": "spend", "model": "", "abs_err": total,
                                         "n": float(count)}]).reindex(columns=out_cols)

        dbl = T.DoubleType()
        schema = T.StructType([T.StructField("kind", T.StringType()), T.StructField("model", T.StringType()),
                               T.StructField("prob", dbl), T.StructField("pos", T.BooleanType()),
                               *[T.StructField(c, dbl) for c in sums_cols]])
        parts = (calib.select("frequency", "recency", "T", "monetary_value", "holdout_orders", "holdout_spend")
                 .mapInPandas(run, schema).groupBy("kind", "model", "prob", "pos")
                 .agg(*[F.sum(c).alias(c) for c in sums_cols]).toPandas())
        rows = []
        for name in TRANSACTION_MODELS:
            srow = parts[(parts["kind"] == "sums") & (parts["model"] == name)].iloc[0]
            a = parts[(parts["kind"] == "auc") & (parts["model"] == name)]
            auc = holdout_auc(a["pos"].to_numpy(bool), a["prob"].to_numpy(float), a["n"].to_numpy(float))
            rows.append(metric_row(name, {c: float(srow[c]) for c in sums_cols}, auc))
        sp = parts[parts["kind"] == "spend"]
        spend_sum = (float(sp["abs_err"].iloc[0]), int(sp["n"].iloc[0])) if len(sp) else None
        metrics, best = finish_metrics(rows, spend_sum)
        repeats = session.sql(con.compile(repeat_days(transactions, cutoff, horizon_days))).toPandas()
        cohorts = calib.groupBy("first_order").agg(F.count(F.lit(1)).alias("n")).toPandas()
        tracking = tracking_from(repeats, cohorts, fitted_models, cutoff, horizon_days)
    finally:
        calib.unpersist()
    return BacktestResult(cutoff, horizon_days, metrics, tracking, best, customers, None, notes)
