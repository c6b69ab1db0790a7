"""Commands of the direction, payment and event-feed capability: `loyalist direction`, `loyalist payments`,
`loyalist alerts`.

`direction` and `payments` print or export the tables stored by `loyalist analyze` (steps `direction` and
`payment`); `alerts` lists the event feed and can deliver it to a webhook (loyalist.alerts).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from loyalist import config
from loyalist.cli import (
    ConfigOption,
    DbOption,
    FormatOption,
    OutOption,
    TopOption,
    _as_date,
    _db,
    _errors,
    app,
    emit,
    err,
    out,
)
from loyalist.errors import LoyalistError


def _stored(db, config_path, table: str, what: str, hint: str = ""):
    from loyalist.store import has_table, open_store

    cfg = config.load(config_path)
    store = open_store(_db(db, cfg), read_only=True)
    if not has_table(store, table):
        store.close()
        raise LoyalistError(f"{store.path}: no {what} yet; {hint}run `loyalist analyze --db {store.path}`")
    return store


@app.command()
def direction(
    db: DbOption = None,
    trend: Annotated[str | None, typer.Option("--trend", help="Only this trend: growing, stable, declining or "
                                                                 "lapsed.")] = None,
    flagged: Annotated[bool, typer.Option("--flagged", help="Only customers with a mix shift, a dissatisfaction "
                                                            "flag or a volume-pricing flag.")] = False,
    fmt: FormatOption = None,
    out_file: OutOption = None,
    top: TopOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Each customer's direction: trend with growth rate and confidence, run-rates and 12-month projection,
    volume-pricing candidates, product-mix shift and dissatisfaction flags, each with its reason.

    Sorted by confidence of the trend (most certain first). The held-out check of the labels is in
    `loyalist direction-backtest`."""
    with _errors():
        if trend is not None and trend not in ("growing", "stable", "declining", "lapsed"):
            raise LoyalistError(f"--trend {trend!r}: choose growing, stable, declining or lapsed")
        store = _stored(db, config_path, "direction", "direction table")
        t = store.table("direction")
        if trend:
            t = t.filter(t.trend == trend)
        if flagged:
            t = t.filter(t.volume_pricing_candidate | t.mix_shift_reason.notnull() | t.dissatisfaction_flags.notnull())
        t = t.order_by([t.trend_confidence.desc(), t.customer_id])
        if top:
            t = t.limit(top)
        frame = t.execute()
        store.close()
        emit(frame, fmt, out_file, "customers")


@app.command("direction-backtest")
def direction_backtest(db: DbOption = None, fmt: FormatOption = None, out_file: OutOption = None,
                       config_path: ConfigOption = None) -> None:
    """The held-out check of the direction labels written by `loyalist analyze`: customers labelled at
    as_of - 6 months, their next 6 months' revenue vs the 6 before (lift against all customers), precision
    of 'lapsed', next to the last-3-months-vs-prior-3-months rule, with 95% bootstrap intervals and the
    equal-size comparisons (the rule's top-N at loyalist's size, loyalist's top-N at the rule's size).
    Growing: higher lift is better; declining: lower lift is better; lapsed: higher precision."""
    with _errors():
        store = _stored(db, config_path, "direction_backtest", "direction backtest")
        frame = store.table("direction_backtest").execute()
        store.close()
        emit(frame, fmt, out_file, "rows")


@app.command()
def payments(
    db: DbOption = None,
    fmt: FormatOption = None,
    out_file: OutOption = None,
    top: TopOption = None,
    min_risk: Annotated[float, typer.Option("--min-risk", min=0.0, max=1.0,
                                            help="Only customers with payment risk at least this (0-1).")] = 0.0,
    config_path: ConfigOption = None,
) -> None:
    """B2B payment behaviour per customer (from invoices): days to pay, days beyond terms over 3/6/12 months
    and its trend, late and disputed shares, open overdue amount by age, payment risk with its reason.
    Riskiest first."""
    with _errors():
        store = _stored(db, config_path, "payment_behaviour", "payment behaviour",
                        "load invoices (`loyalist ingest FILE --kind invoices`), then ")
        t = store.table("payment_behaviour")
        t = t.filter(t.payment_risk >= min_risk).order_by([t.payment_risk.desc(), t.customer_id])
        if top:
            t = t.limit(top)
        frame = t.execute()
        store.close()
        emit(frame, fmt, out_file, "customers")


@app.command()
def alerts(
    db: DbOption = None,
    since: Annotated[str | None, typer.Option("--since", help="Only events dated on or after this day "
                                                                 "(YYYY-MM-DD).")] = None,
    type_: Annotated[list[str] | None, typer.Option("--type", help="Only this event type; repeatable (e.g. "
                                                                      "lapse, growth_detected, payment_slowdown).")] = None,
    webhook: Annotated[str | None, typer.Option("--webhook", help="POST each event (JSON) to this URL, once per "
                                                                     "event and URL; retried with back-off.")] = None,
    attempts: Annotated[int, typer.Option("--attempts", min=1, help="Tries per event for the webhook.")] = 5,
    backoff: Annotated[float, typer.Option("--backoff", min=0.0,
                                           help="First retry delay in seconds (doubles each try).")] = 0.5,
    fmt: FormatOption = None,
    out_file: OutOption = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the events as JSON (as --format json); with "
                                                       "--webhook, the delivery report as one JSON object.")] = False,
    config_path: ConfigOption = None,
) -> None:
    """The event feed: first repeat orders, milestones, anniversaries, spend jumps, new categories, overdue,
    lapse, reactivation, growth or decline, mix shift, payment slowdown, contacts due — each with its date,
    reason, evidence (JSON) and suggested action. `loyalist analyze` adds new events on every run."""
    from loyalist import alerts as feed
    from loyalist.insights.events import ACTIONS
    from loyalist.store import has_table, open_store

    with _errors():
        for t in type_ or []:
            if t not in ACTIONS:
                raise LoyalistError(f"--type {t!r}: choose one of {', '.join(ACTIONS)}")
        cfg = config.load(config_path)
        store = open_store(_db(db, cfg), read_only=webhook is None)
        if not has_table(store, "events"):
            store.close()
            raise LoyalistError(f"{store.path}: no event feed yet; run `loyalist analyze --db {store.path}` first")
        frame = feed.list_events(store, _as_date(since, "--since"), type_)
        if webhook is not None:
            if not webhook.startswith(("http://", "https://")):
                raise LoyalistError(f"--webhook {webhook!r}: give an http:// or https:// URL")
            with err.status(f"delivering {len(frame):,} events to {webhook}"):
                report = feed.deliver(store, webhook, frame, attempts=attempts, backoff=backoff)
            store.close()
            if json_:
                out.print_json(json.dumps(report.to_dict()))
            else:
                out.print(f"{report.sent:,} events delivered to {webhook}; {report.already:,} already delivered "
                          f"before; {len(report.failed):,} failed", highlight=False)
                for eid, why in report.failed[:10]:
                    out.print(f"  failed {eid}: {why}", highlight=False)
            if report.failed:
                raise typer.Exit(1)
            return
        store.close()
        emit(frame, "json" if json_ else fmt, out_file, "events")
