"""`loyalist analyze` and `loyalist backtest`: run the customer-base analysis on the store and keep the results.

The model used by `analyze` is the one the latest backtest chose for this store (lowest per-customer MAE on
held-out time among the classic models, which also give P(alive) and CLV). Without a backtest, `analyze`
runs one first at as_of - horizon when the history allows it, so the choice is always measured.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import ibis
import numpy as np
import pandas as pd

from loyalist.backtest import DEFAULT_MODELS, BacktestResult, backtest, choose
from loyalist.customer_base import TRANSACTION_MODELS, Settings, fit_base, score
from loyalist.features import rfm_summary
from loyalist.insights import Context, Step, run_steps
from loyalist.store import Store, has_table, write_frame

CUSTOMER_TABLE = "customer_insights"


@dataclass
class AnalysisReport:
    as_of: dt.date
    model: str
    customers: int
    params: dict[str, float]
    spend_params: dict[str, float] | None
    margin_source: str
    chosen_by: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, dt.date) else v) for k, v in self.__dict__.items()}


def data_end(store: Store) -> dt.date:
    """The day after the last order: the natural 'as of' date for a store."""
    t = store.table("transactions")
    last = t.order_date.max().execute()
    if last is None or pd.isna(last):
        raise ValueError("the store holds no transactions yet")
    return pd.Timestamp(last).date() + dt.timedelta(days=1)


def run_backtest(store: Store, cutoff: dt.date, horizon_days: int,
                 models: tuple[str, ...] = DEFAULT_MODELS) -> BacktestResult:
    result = backtest(store.table("transactions"), cutoff, horizon_days, models)
    metrics, tracking = backtest_tables(result)
    write_frame(store, "backtest_metrics", metrics, replace=False)
    write_frame(store, "backtest_tracking", tracking, replace=False)
    return result


def backtest_tables(result: BacktestResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows a backtest appends to `backtest_metrics` and `backtest_tracking` (both engines)."""
    metrics = result.metrics.assign(cutoff=pd.Timestamp(result.cutoff), horizon_days=result.horizon_days,
                                    chosen=result.metrics["model"] == result.chosen,
                                    run_at=pd.Timestamp.now(tz="UTC").tz_localize(None), customers=result.customers)
    tracking = result.tracking.assign(cutoff=pd.Timestamp(result.cutoff), horizon_days=result.horizon_days)
    return metrics, tracking


def chosen_model(store: Store, as_of: dt.date | None = None) -> tuple[str, str] | None:
    """(model, reason) from the latest backtest, restricted to the classic models; with `as_of`, the latest
    backtest whose holdout ended by then (a choice measured on later orders would use data after as_of)."""
    if not has_table(store, "backtest_metrics"):
        return None
    m = store.table("backtest_metrics")
    if as_of is not None:
        m = m.filter(m.cutoff.date() + m.horizon_days.as_interval("D") <= ibis.date(as_of))
    return choice_from(m.filter(m.run_at == m.run_at.max()).execute())


def choice_from(latest: pd.DataFrame) -> tuple[str, str] | None:
    """(model, reason) from one backtest's metrics rows: `backtest.choose` among the classic models (both
    engines); None when the rows hold no classic model."""
    if not latest["model"].isin(list(TRANSACTION_MODELS)).any():
        return None
    best = choose(latest)
    return str(best["model"]), (f"lowest per-customer MAE ({best['mae']:.3f}) in the backtest at "
                                f"{pd.Timestamp(best['cutoff']).date()} over {int(best['horizon_days'])} days")


def customer_margins(store: Store, as_of: dt.date) -> tuple[pd.DataFrame | None, str]:
    """Gross margin per customer from product costs or margins, when the store has them."""
    if store.table("products").count().execute() == 0:
        return None, "setting"
    per = margin_table(store.table("transactions"), store.table("products"), as_of).execute()
    return (per, "product costs") if len(per) else (None, "setting")


def margin_table(t: ibis.Table, p: ibis.Table, as_of: dt.date) -> ibis.Table:
    """(customer_id, margin): 1 - cost / revenue of the customer's purchase lines before as_of whose product
    has a unit cost or a margin (the Ibis expression both engines run; customers without one are absent)."""
    lines = t.filter(~t.is_guest & ~t.is_non_product & ~t.is_return & ~t.is_cancellation & (t.amount > 0)
                     & (t.order_date < ibis.timestamp(dt.datetime.combine(as_of, dt.time()))))
    j = lines.join(p, lines.product_id == p.product_id)
    j = j.mutate(cost=ibis.coalesce(j.quantity * j.unit_cost, j.amount * (1 - j.margin)))
    j = j.filter(j.cost.notnull())
    return j.group_by(j.customer_id).aggregate(margin=1 - j.cost.sum() / j.amount.sum())


def check_horizon(h: int) -> None:
    """ValueError for a scoring horizon whose columns (expected_orders_<h>d, prob_order_<h>d) clash with the timing
    step's prob_order_30d / prob_order_60d (run_steps refuses a re-defined column, after all the work)."""
    if h < 1:
        raise ValueError("--horizon must be at least 1 day")
    if h in (30, 60):
        raise ValueError(f"a horizon of {h} days (--horizon {h}): prob_order_{h}d is the timing step's column (its "
                         "own next-order model; `loyalist next` lists P(order within 30/60/90 days)); choose another "
                         "horizon, e.g. the default 90")


def analyze(store: Store, as_of: dt.date | None = None, model: str = "auto", settings: Settings | None = None,
            config: dict | None = None, on_step: Callable[[Step], None] | None = None
            ) -> tuple[AnalysisReport, pd.DataFrame]:
    """Score every customer as of `as_of` (default: the day after the last order), run every insight step
    (loyalist.insights) on top, and store the per-customer table."""
    settings = settings or Settings()
    check_horizon(settings.horizon_days)
    as_of = as_of or data_end(store)
    notes: list[str] = []
    if model == "auto":
        choice = chosen_model(store, as_of)
        if choice is None:
            cutoff = as_of - dt.timedelta(days=settings.horizon_days)
            try:
                run_backtest(store, cutoff, settings.horizon_days)
                choice = chosen_model(store, as_of)
            except ValueError as exc:
                notes.append(f"no backtest possible ({exc}); using BG/NBD")
        model, chosen_by = choice if choice else ("bgnbd", "default (no backtest)")
    else:
        chosen_by = "set by the user"
    summary = rfm_summary(store.table("transactions"), as_of).execute()
    if summary.empty:
        raise ValueError(f"no customer bought anything before {as_of}")
    fitted = fit_base(summary, model)
    notes += fitted.notes
    margins, margin_source = customer_margins(store, as_of)
    margin: np.ndarray | float = settings.gross_margin
    if margins is not None:
        m = summary[["customer_id"]].merge(margins, on="customer_id", how="left")["margin"]
        margin = m.fillna(settings.gross_margin).to_numpy(float)
    elif settings.gross_margin == 1.0:
        notes.append("no product costs or margins and no gross_margin setting: CLV is in revenue, not profit")
    table = score(fitted, summary, settings, margin)
    table.insert(len(table.columns) - 1, "as_of", pd.Timestamp(as_of))
    ctx = Context(store, as_of, settings, fitted, table, config or {}, notes)
    table = run_steps(ctx, on_step)
    # stored in customer_id order: DuckDB's min/max zone maps then find one customer's row without a full
    # scan (the dashboard's customer page; 3-7x faster lookups at 1M customers)
    write_frame(store, CUSTOMER_TABLE, table.sort_values("customer_id", kind="stable", ignore_index=True), replace=True)
    report = AnalysisReport(as_of, model, len(table), fitted.transaction.params_,
                            fitted.spend.params_ if fitted.spend is not None else None,
                            margin_source, chosen_by, notes)
    write_frame(store, "analysis_runs", pd.DataFrame([{"run_at": pd.Timestamp.now(tz="UTC").tz_localize(None),
                                                       "as_of": pd.Timestamp(as_of), "model": model,
                                                       "report": json.dumps(report.to_dict())}]), replace=False)
    return report, table
