"""Plotly figures as plain dicts (data + layout), drawn in the browser by the bundled plotly.js.

Built as dicts rather than `plotly.graph_objects` figures: the validation of graph_objects costs tens of
milliseconds per figure, which the customer page cannot afford at scale; plotly.js validates anyway.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

PALETTE = ["#2563eb", "#f97316", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#4b5563"]
BASE_LAYOUT = {
    "margin": {"l": 56, "r": 16, "t": 36, "b": 44},
    "paper_bgcolor": "rgba(0,0,0,0)",
    "plot_bgcolor": "rgba(0,0,0,0)",
    "font": {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12, "color": "#1f2937"},
    "xaxis": {"gridcolor": "#e5e7eb", "zeroline": False},
    "yaxis": {"gridcolor": "#e5e7eb", "zeroline": False},
    "legend": {"orientation": "h", "y": -0.2},
    "height": 320,
}


def _clean(v: Any) -> Any:
    if isinstance(v, (pd.Timestamp,)):
        return v.isoformat()
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if math.isnan(v) else float(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return v


def _list(values) -> list:
    if isinstance(values, pd.Series):
        if pd.api.types.is_datetime64_any_dtype(values):
            return [None if pd.isna(x) else x.isoformat() for x in values]
        values = values.tolist()
    return [_clean(v) for v in values]


def figure(data: list[dict], title: str = "", **layout: Any) -> dict:
    lay = {**BASE_LAYOUT, **layout}
    if title:
        lay["title"] = {"text": title, "x": 0, "font": {"size": 14}}
    return {"data": data, "layout": lay}


def to_json(fig: dict) -> str:
    """JSON safe to put inside a <script> element."""
    return json.dumps(fig, default=_clean).replace("</", "<\\/")


def bar(x, y, name: str = "", color: str = PALETTE[0], **kw) -> dict:
    return {"type": "bar", "x": _list(x), "y": _list(y), "name": name, "marker": {"color": color}, **kw}


def line(x, y, name: str = "", color: str = PALETTE[0], dash: str | None = None, **kw) -> dict:
    trace = {"type": "scatter", "mode": "lines", "x": _list(x), "y": _list(y), "name": name,
             "line": {"color": color, "width": 2}, **kw}
    if dash:
        trace["line"]["dash"] = dash
    return trace


def tracking(tr: pd.DataFrame, cutoff) -> dict:
    """Cumulative repeat orders, actual vs each model, with the cutoff marked (held-out time to its right)."""
    models = [c for c in tr.columns if c not in ("date", "actual", "phase", "cutoff", "horizon_days")]
    data = [line(tr["date"], tr["actual"], "actual", "#111827")]
    for i, m in enumerate(models):
        data.append(line(tr["date"], tr[m], m, PALETTE[i % len(PALETTE)], dash="dot"))
    cut = pd.Timestamp(cutoff).isoformat()
    return figure(data, "Cumulative repeat orders: actual vs predicted", yaxis={**BASE_LAYOUT["yaxis"],
                  "title": "repeat orders"},
                  shapes=[{"type": "line", "x0": cut, "x1": cut, "yref": "paper", "y0": 0, "y1": 1,
                           "line": {"color": "#9ca3af", "dash": "dash"}}],
                  annotations=[{"x": cut, "yref": "paper", "y": 1, "text": "cutoff: held-out time →",
                                "showarrow": False, "xanchor": "left", "font": {"size": 11, "color": "#6b7280"}}])


def value_distribution(g: pd.DataFrame, symbol: str = "") -> dict:
    labels = [f"{symbol}{_short(lo)}–{_short(hi)}" if np.isfinite(hi) else f"{symbol}{_short(lo)}+"
              for lo, hi in zip(g["low"], g["high"])]
    return figure([bar(labels, g["customers"], "customers", PALETTE[0],
                       hovertemplate="%{x}: %{y:,} customers<extra></extra>")],
                  "Customers by 12-month CLV", xaxis={**BASE_LAYOUT["xaxis"], "type": "category"},
                  yaxis={**BASE_LAYOUT["yaxis"], "title": "customers"})


def _short(v: float) -> str:
    v = float(v)
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            s = f"{v / div:.1f}".rstrip("0").rstrip(".")
            return s + unit
    return f"{v:,.0f}"


def timeline(orders: pd.DataFrame, next_date=None, lo=None, hi=None) -> dict:
    """One bar per order (its amount), returns below zero, and the predicted next order with its interval."""
    day = 86_400_000  # ms: bars on a date axis are as wide as this, else a lone order is invisible
    data = [bar(orders["order_date"], orders["amount"], "order amount", PALETTE[0], width=2 * day,
                customdata=_list(orders["order_id"]),
                hovertemplate="%{x|%d %b %Y}: %{y:,.2f} (order %{customdata})<extra></extra>")]
    if "returned" in orders and (orders["returned"] != 0).any():
        back = orders[orders["returned"] != 0]
        data.append(bar(back["order_date"], back["returned"], "returned / cancelled", PALETTE[4], width=2 * day))
    shapes = []
    if next_date is not None and not pd.isna(next_date):
        nd = pd.Timestamp(next_date).isoformat()
        if lo is not None and hi is not None and not pd.isna(lo) and not pd.isna(hi):
            shapes.append({"type": "rect", "x0": pd.Timestamp(lo).isoformat(), "x1": pd.Timestamp(hi).isoformat(),
                           "yref": "paper", "y0": 0, "y1": 1, "fillcolor": "rgba(22,163,74,0.12)", "line": {"width": 0}})
        shapes.append({"type": "line", "x0": nd, "x1": nd, "yref": "paper", "y0": 0, "y1": 1,
                       "line": {"color": PALETTE[2], "dash": "dash"}})
    return figure(data, "Orders", barmode="relative", shapes=shapes, bargap=0.1,
                  yaxis={**BASE_LAYOUT["yaxis"], "title": "amount"})


def heatmap(x, y, z, title: str, xtitle: str = "", ytitle: str = "", colorscale: str = "Blues") -> dict:
    return figure([{"type": "heatmap", "x": _list(x), "y": _list(y), "z": [[_clean(v) for v in row] for row in z],
                    "colorscale": colorscale, "reversescale": True}], title,
                  margin={**BASE_LAYOUT["margin"], "l": 90},
                  xaxis={**BASE_LAYOUT["xaxis"], "title": xtitle}, yaxis={**BASE_LAYOUT["yaxis"], "title": ytitle},
                  height=360)
