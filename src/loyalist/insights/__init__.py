"""Insight steps: what `loyalist analyze` computes after the customer-base models have scored everyone.

Each capability (timing, direction, cross-sell, segments, aggregate view ...) registers one or more steps
with `@step(name, order)`. A step receives the `Context` (the store, the as-of date, the fitted base models,
the per-customer table built so far, the settings file) and

- writes its own result tables into the store (with `loyalist.store.write_frame`), and
- returns a frame keyed by `customer_id` whose other columns are added to the per-customer table
  (or None when it adds no per-customer column).

Steps run in `order` (lower first), so a later step may read the columns an earlier one added
(e.g. the value metric reads `growth_rate`). A step that cannot run on what the store holds (no amounts, no
products, no invoices) adds a plain note to `ctx.notes` and returns None: it is skipped, never an error.

Modules in this package are imported by `load_steps()`, so adding a capability means adding a module here.
"""

from __future__ import annotations

import datetime as dt
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from loyalist.customer_base import FittedBase, Settings
from loyalist.store import Store


@dataclass
class Context:
    store: Store
    as_of: dt.date
    settings: Settings
    fitted: FittedBase
    customers: pd.DataFrame
    """The per-customer table so far: the customer-base columns plus those of the steps already run."""
    config: dict[str, Any] = field(default_factory=dict)
    """The whole settings file (loyalist.toml) as a dict; a step reads its own section."""
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Step:
    name: str
    order: int
    run: Callable[[Context], pd.DataFrame | None]
    spark: bool = False
    """Whether the step also runs on the Spark engine (`loyalist analyze --engine spark`)."""


_STEPS: dict[str, Step] = {}


def step(name: str, order: int, spark: bool = False) -> Callable:
    """Register `fn(ctx) -> frame | None` as the analysis step `name`."""

    def register(fn: Callable[[Context], pd.DataFrame | None]) -> Callable:
        if name in _STEPS and _STEPS[name].run is not fn:
            raise RuntimeError(f"two analysis steps are named {name!r}")
        _STEPS[name] = Step(name, order, fn, spark)
        return fn

    return register


def load_steps() -> list[Step]:
    """Every registered step, in run order (importing this package's modules registers them)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return sorted(_STEPS.values(), key=lambda s: (s.order, s.name))


def run_steps(ctx: Context, on_step: Callable[[Step], None] | None = None) -> pd.DataFrame:
    """Run every step and return the per-customer table with the columns they add."""
    for s in load_steps():
        if on_step is not None:
            on_step(s)
        added = s.run(ctx)
        if added is None:
            continue
        if "customer_id" not in added.columns or added["customer_id"].duplicated().any():
            raise RuntimeError(f"analysis step {s.name!r} must return one row per customer_id")
        clash = (set(added.columns) - {"customer_id"}) & set(ctx.customers.columns)
        if clash:
            raise RuntimeError(f"analysis step {s.name!r} re-defines columns {sorted(clash)}")
        ctx.customers = ctx.customers.merge(added, on="customer_id", how="left")
    return ctx.customers
