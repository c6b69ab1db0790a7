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


def p_alive_matrix(model, max_frequency: int, max_T: float, out: Path) -> list[Path]:
    """P(alive) over frequency x recency for a customer observed for max_T days."""
    freqs = np.arange(0, max_frequency + 1)
    rec = np.linspace(0, max_T, 60)
    F, R = np.meshgrid(freqs, rec, indexing="ij")
    valid = (F > 0) | (R == 0)
    P = np.full(F.shape, np.nan)
    P[valid] = model.conditional_probability_alive(F[valid].astype(float), R[valid], np.full(valid.sum(), max_T))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    im = ax.imshow(P, origin="lower", aspect="auto", cmap="viridis", extent=[0, max_T, 0, max_frequency], vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, label="P(alive)")
    ax.set_xlabel("recency (days from first to last order)")
    ax.set_ylabel("repeat orders")
    ax.set_title(f"P(alive) for a customer observed {max_T:.0f} days")
    html = go.Figure(go.Heatmap(z=P, x=rec, y=freqs, zmin=0, zmax=1, colorbar={"title": "P(alive)"}))
    html.update_layout(title="P(alive) by frequency and recency", xaxis_title="recency (days)",
                       yaxis_title="repeat orders")
    return _save(fig, html, out, "p_alive_matrix")
