"""How numbers, dates and flags read on the pages: one formatter per kind, chosen by column name."""

from __future__ import annotations

import datetime as dt
import functools
import math
from typing import Any

import numpy as np
import pandas as pd

MONEY = ("revenue", "clv", "amount", "monetary", "spend", "expected_order_value", "value", "basket", "returned")
PROBABILITY = ("p_alive", "prob_", "probability", "retention", "share", "confidence", "auc", "brier", "churn_risk",
               "avg_p_alive", "regularity")
DATES = ("date", "_order", "_at", "week", "cutoff", "as_of", "last_bought", "month")
LABELS = {
    "p_alive": "P(alive)", "clv_12m": "CLV 12m", "expected_orders_90d": "exp. orders 90d",
    "prob_order_90d": "P(order 90d)", "prob_order_30d": "P(order 30d)", "prob_order_60d": "P(order 60d)",
    "dbt_days_6m": "days beyond terms (6m)", "customer_id": "customer", "mae": "MAE", "rmse": "RMSE",
    "auc": "AUC", "spend_mae": "spend MAE", "total_error_pct": "total error %",
}


def missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def label(column: str) -> str:
    return LABELS.get(column, column.replace("_", " "))


def number(v: Any, digits: int = 0) -> str:
    if missing(v):
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    try:
        return f"{float(v):,.{digits}f}"
    except (TypeError, ValueError):
        return str(v)


def money(v: Any, symbol: str = "") -> str:
    if missing(v):
        return "–"
    v = float(v)
    digits = 0 if abs(v) >= 1000 else 2
    return f"{'-' if v < 0 else ''}{symbol}{abs(v):,.{digits}f}"


def percent(v: Any, digits: int = 0) -> str:
    if missing(v):
        return "–"
    return f"{float(v) * 100:.{digits}f}%"


def date(v: Any) -> str:
    if missing(v):
        return "–"
    ts = pd.Timestamp(v)
    if ts.hour or ts.minute:
        return ts.strftime("%-d %b %Y %H:%M")
    return ts.strftime("%-d %b %Y")


@functools.lru_cache(maxsize=4096)
def kind(column: str) -> str:
    c = column.lower()
    if c in ("customer_id", "product_id", "order_id", "event_id", "series_id", "segment", "rfm_segment", "model"):
        return "text"
    if c.endswith("_pct"):
        return "pct_number"
    if c.endswith("_share") or c in ("share", "retention"):
        return "share"
    if c in ("auc", "brier", "mae", "rmse", "score", "overdue_score", "growth_rate", "value_score"):
        return "decimal"
    if any(c == p or c.startswith(p) or c.endswith(p) for p in PROBABILITY):
        return "probability"
    if any(p in c for p in MONEY) and "grade" not in c and "percentile" not in c:
        return "money"
    if any(c.endswith(p) or c == p.strip("_") for p in DATES) or c.startswith("date") or c.endswith("date"):
        return "date"
    return "auto"


def cell(v: Any, column: str, symbol: str = "") -> str:
    """A value as it reads in a table cell."""
    if missing(v):
        return "–"
    k = kind(column)
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (pd.Timestamp, dt.datetime, dt.date, np.datetime64)):
        return date(v)
    if isinstance(v, str):
        return v
    if k == "money":
        return money(v, symbol)
    if k == "probability":
        return f"{float(v):.2f}"
    if k == "share":
        return f"{float(v) * 100:.1f}%"
    if k == "decimal":
        return f"{float(v):,.3f}" if abs(float(v)) < 10 else f"{float(v):,.1f}"
    if k == "pct_number":
        return f"{float(v):+.1f}%"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isfinite(f) and f == int(f) and abs(f) < 1e15:
            return f"{int(f):,}"
        return f"{f:,.2f}" if abs(f) < 1e6 else f"{f:,.0f}"
    return str(v)


def numeric(column: str, v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def records(frame: pd.DataFrame | None) -> list[dict]:
    """Rows as plain dicts for JSON: NaN and NaT become None, timestamps ISO text, numpy scalars Python's."""
    if frame is None or frame.empty:
        return []
    out = []
    cols = list(frame.columns)
    for row in frame.itertuples(index=False, name=None):
        out.append({c: plain(v) for c, v in zip(cols, row)})
    return out


def plain(v: Any) -> Any:
    if missing(v) if not isinstance(v, (list, tuple, np.ndarray)) else False:
        return None
    if isinstance(v, (pd.Timestamp, dt.datetime)):
        return pd.Timestamp(v).isoformat()
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, np.datetime64):
        return pd.Timestamp(v).isoformat()
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.ndarray):
        return [plain(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): plain(x) for k, x in v.items()}
    return v


def rows(frame: pd.DataFrame | None) -> list[dict]:
    """Rows as dicts for the templates: NaN/NaT become None, timestamps stay timestamps (formatted by `cell`)."""
    if frame is None or frame.empty:
        return []
    cols = list(frame.columns)
    out = []
    for row in frame.itertuples(index=False, name=None):
        out.append({c: (None if (not isinstance(v, (list, tuple, np.ndarray, dict)) and missing(v)) else
                        v.item() if isinstance(v, np.generic) else v) for c, v in zip(cols, row)})
    return out


def table_body(records: list[dict], columns: list[str], symbol: str = "", link_customer: bool = True) -> str:
    """The <tbody> rows of a list as HTML text (escaped here: rendering cell by cell in Jinja is the slowest part
    of a page of 50 to 200 rows)."""
    from html import escape
    from urllib.parse import quote

    out = []
    for r in records:
        cells = []
        for c in columns:
            v = r.get(c)
            cls = []
            if numeric(c, v):
                cls.append("num")
            if "reason" in c or c == "evidence":
                cls.append("reason")
            attr = f' class="{" ".join(cls)}"' if cls else ""
            if c == "customer_id" and link_customer and v is not None:
                cells.append(f'<td{attr}><a href="/customers/{quote(str(v), safe="")}">{escape(str(v))}</a></td>')
            else:
                cells.append(f"<td{attr}>{escape(cell(v, c, symbol))}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out)
