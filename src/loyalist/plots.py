"""Charts of the customer-base analysis, as PNG (matplotlib) and self-contained interactive HTML (plotly,
with its JavaScript embedded so the file works offline)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _save(fig_mpl, fig_html: go.Figure, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    png, html = out / f"{name}.png", out / f"{name}.html"
    fig_mpl.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig_mpl)
    fig_html.write_html(html, include_plotlyjs=True, full_html=True)
    return [png, html]


def tracking_plot(tracking: pd.DataFrame, cutoff, out: Path) -> list[Path]:
    """Cumulative repeat orders, actual vs each model, with the cutoff marked."""
    models = [c for c in tracking.columns if c not in ("date", "actual", "phase", "cutoff", "horizon_days")]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(tracking["date"], tracking["actual"], color="black", lw=2, label="actual")
    for m in models:
        ax.plot(tracking["date"], tracking[m], lw=1.3, ls="--", label=m)
    ax.axvline(pd.Timestamp(cutoff), color="grey", ls=":")
    ax.set_title("Cumulative repeat orders: calibration | holdout")
    ax.set_ylabel("repeat orders")
    ax.legend()
    html = go.Figure([go.Scatter(x=tracking["date"], y=tracking["actual"], name="actual", line={"color": "black"})]
                     + [go.Scatter(x=tracking["date"], y=tracking[m], name=m, line={"dash": "dash"}) for m in models])
    html.add_vline(x=pd.Timestamp(cutoff).timestamp() * 1000, line_dash="dot")
    html.update_layout(title="Cumulative repeat orders (cutoff dotted)", yaxis_title="repeat orders")
    return _save(fig, html, out, "tracking")


def calibration_holdout_plot(frame: pd.DataFrame, out: Path) -> list[Path]:
    """Mean holdout orders by calibration frequency: actual vs predicted (frame: frequency, actual, predicted)."""
    f = frame.assign(bucket=np.minimum(frame["frequency"], 7))
    g = f.groupby("bucket")[["actual", "predicted"]].mean().reset_index()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(g["bucket"], g["actual"], "o-", color="black", label="actual")
    ax.plot(g["bucket"], g["predicted"], "s--", label="predicted")
    ax.set_xlabel("repeat orders in calibration (7 = 7+)")
    ax.set_ylabel("mean orders in holdout")
    ax.legend()
    html = go.Figure([go.Scatter(x=g["bucket"], y=g["actual"], name="actual", mode="lines+markers"),
                      go.Scatter(x=g["bucket"], y=g["predicted"], name="predicted", mode="lines+markers")])
    html.update_layout(title="Calibration vs holdout", xaxis_title="repeat orders in calibration (7 = 7+)",
                       yaxis_title="mean orders in holdout")
    return _save(fig, html, out, "calibration_holdout")


def _cell_edges(centres: np.ndarray) -> tuple[float, float]:
    """The outer edges of evenly spaced cells centred on `centres` (imshow's extent spans edges, not centres:
    spanning the centres shifts every row by up to one cell)."""
    half = ((centres[1] - centres[0]) / 2 if len(centres) > 1 else 0) or 0.5
    return float(centres[0] - half), float(centres[-1] + half)


def p_alive_matrix(model, max_frequency: int, max_T: float, out: Path) -> list[Path]:
    """P(alive) over frequency x recency for a customer observed for max_T days, each cell centred on its
    frequency and recency in both the PNG and the HTML (NaN where no customer can be: no repeat order but a
    recency above 0)."""
    freqs = np.arange(0, max_frequency + 1)
    rec = np.linspace(0, max_T, 60)
    F, R = np.meshgrid(freqs, rec, indexing="ij")
    valid = (F > 0) | (R == 0)
    P = np.full(F.shape, np.nan)
    P[valid] = model.conditional_probability_alive(F[valid].astype(float), R[valid], np.full(valid.sum(), max_T))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    im = ax.imshow(P, origin="lower", aspect="auto", cmap="viridis", extent=[*_cell_edges(rec), *_cell_edges(freqs)],
                   vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="P(alive)")
    ax.set_xlabel("recency (days from first to last order)")
    ax.set_ylabel("repeat orders")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # whole orders: no tick at 2.5 orders
    ax.set_title(f"P(alive) for a customer observed {max_T:.0f} days")
    html = go.Figure(go.Heatmap(z=P, x=rec, y=freqs, zmin=0, zmax=1, colorbar={"title": "P(alive)"}))
    html.update_layout(title="P(alive) by frequency and recency", xaxis_title="recency (days)",
                       yaxis_title="repeat orders")
    return _save(fig, html, out, "p_alive_matrix")


# Charts of the aggregate view (loyalist forecast, peaks, cohorts).
def forecast_plot(history, fc, title: str, folder: Path, name: str) -> list[Path]:
    """History, forecast and the 80% / 95% intervals of one series."""


    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(history["ds"], history["y"], color="black", lw=1.2, label="history")
    ax.fill_between(fc["week"], fc["lo95"], fc["hi95"], color="tab:blue", alpha=0.15, label="95% interval")
    ax.fill_between(fc["week"], fc["lo80"], fc["hi80"], color="tab:blue", alpha=0.3, label="80% interval")
    ax.plot(fc["week"], fc["forecast"], color="tab:blue", lw=1.8, label=f"forecast ({fc['method'].iloc[0]})")
    ax.set_title(title)
    ax.legend(loc="upper left")
    x = list(fc["week"])
    html = go.Figure([
        go.Scatter(x=history["ds"], y=history["y"], name="history", line={"color": "black"}),
        go.Scatter(x=x + x[::-1], y=list(fc["hi95"]) + list(fc["lo95"])[::-1], fill="toself", name="95% interval",
                   line={"width": 0}, fillcolor="rgba(31,119,180,0.15)"),
        go.Scatter(x=x + x[::-1], y=list(fc["hi80"]) + list(fc["lo80"])[::-1], fill="toself", name="80% interval",
                   line={"width": 0}, fillcolor="rgba(31,119,180,0.3)"),
        go.Scatter(x=x, y=fc["forecast"], name=f"forecast ({fc['method'].iloc[0]})", line={"color": "#1f77b4"}),
    ])
    html.update_layout(title=title, yaxis_title="per week")
    return _save(fig, html, folder, name)


def heatmap_plot(hw, folder: Path) -> list[Path]:


    from loyalist.insights.aggregate import DAYS

    hours = list(range(int(hw["hour"].min()), int(hw["hour"].max()) + 1)) if len(hw) else list(range(24))
    grid = np.zeros((7, len(hours)))
    for d, h, o in zip(hw["dow"], hw["hour"], hw["orders"]):
        grid[int(d), hours.index(int(h))] = o
    fig, ax = plt.subplots(figsize=(9, 3.6))
    im = ax.imshow(grid, aspect="auto", cmap="magma_r")
    ax.set_yticks(range(7), DAYS)
    ax.set_xticks(range(len(hours)), [f"{h:02d}" for h in hours])
    ax.set_xlabel("hour of day")
    ax.set_title("Orders by weekday and hour")
    fig.colorbar(im, ax=ax, label="orders")
    html = go.Figure(go.Heatmap(z=grid, x=[f"{h:02d}:00" for h in hours], y=list(DAYS), colorscale="Magma",
                                reversescale=True, colorbar={"title": "orders"}))
    html.update_layout(title="Orders by weekday and hour", yaxis={"autorange": "reversed"})
    return _save(fig, html, folder, "peak_hours")


def weeks_plot(wk, folder: Path) -> list[Path]:


    fig, ax = plt.subplots(figsize=(9, 3.6))
    traces = []
    for year, g in wk.groupby("year"):
        ax.plot(g["week_of_year"], g["orders"], marker=".", label=str(year))
        traces.append(go.Scatter(x=g["week_of_year"], y=g["orders"], name=str(year), mode="lines+markers"))
    ax.set_xlabel("ISO week of year")
    ax.set_ylabel("orders")
    ax.set_title("Orders by week of year")
    ax.legend()
    html = go.Figure(traces)
    html.update_layout(title="Orders by week of year", xaxis_title="ISO week", yaxis_title="orders")
    return _save(fig, html, folder, "peak_weeks")


def cohort_plot(co, folder: Path) -> list[Path]:

    from plotly.subplots import make_subplots

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    html = make_subplots(rows=1, cols=2, subplot_titles=("Retention", "Cumulative revenue per customer"))
    for month, g in co.groupby("cohort_month"):
        g = g[g["months_since"] > 0] if len(g) > 1 else g
        label = f"{month:%Y-%m} ({int(g['customers'].iloc[0])})"
        a1.plot(g["months_since"], g["retention"], lw=1, label=label)
        a2.plot(g["months_since"], g["cumulative_revenue_per_customer"], lw=1)
        html.add_trace(go.Scatter(x=g["months_since"], y=g["retention"], name=label, legendgroup=label), 1, 1)
        html.add_trace(go.Scatter(x=g["months_since"], y=g["cumulative_revenue_per_customer"], name=label,
                                  legendgroup=label, showlegend=False), 1, 2)
    a1.set_xlabel("months since first order")
    a1.set_ylabel("share of the cohort buying")
    a1.set_title("Retention by acquisition cohort")
    a2.set_xlabel("months since first order")
    a2.set_ylabel("cumulative revenue per customer")
    a2.set_title("Revenue by acquisition cohort")
    if co["cohort_month"].nunique() <= 14:
        a1.legend(fontsize=7)
    html.update_layout(title="Acquisition cohorts (month of first order)")
    return _save(fig, html, folder, "cohorts")


# ---------------------------------------------------------------------------------------------------- helpers
