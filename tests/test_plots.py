"""Charts of the customer-base analysis: what each one draws where, against the model it shows."""

from __future__ import annotations

import numpy as np

from loyalist import plots
from loyalist.models import BGNBD


def _drawn(monkeypatch, tmp_path, *args):
    """The matplotlib and plotly figures `p_alive_matrix` saves."""
    saved = {}

    def keep(fig_mpl, fig_html, out, name):
        saved.update(png=fig_mpl, html=fig_html)
        return []

    monkeypatch.setattr(plots, "_save", keep)
    plots.p_alive_matrix(*args, tmp_path)
    return saved["png"], saved["html"]


def test_p_alive_matrix_cells_hold_the_model_value_at_their_centres(monkeypatch, tmp_path):
    model = BGNBD.from_params(r=0.8, alpha=40.0, a=0.5, b=2.5)
    max_frequency, max_T = 12, 700.0
    fig, html = _drawn(monkeypatch, tmp_path, model, max_frequency, max_T)
    image = fig.axes[0].images[0]
    z = np.ma.filled(image.get_array(), np.nan)
    x0, x1, y0, y1 = image.get_extent()
    rows, cols = z.shape
    # the PNG: centres of the drawn cells (origin lower: row 0 at the bottom)
    frequencies = y0 + (np.arange(rows) + 0.5) * (y1 - y0) / rows
    recencies = x0 + (np.arange(cols) + 0.5) * (x1 - x0) / cols
    np.testing.assert_allclose(frequencies, np.arange(max_frequency + 1), atol=1e-9)  # was up to half an order off
    np.testing.assert_allclose(recencies, np.linspace(0, max_T, cols), atol=1e-9)
    heat = html.data[0]  # the HTML: plotly centres each cell on its x and y
    np.testing.assert_array_equal(heat.y, np.arange(max_frequency + 1))
    np.testing.assert_allclose(heat.x, recencies, atol=1e-9)
    F, R = np.meshgrid(np.arange(1, max_frequency + 1), recencies, indexing="ij")
    expected = model.conditional_probability_alive(F.ravel().astype(float), R.ravel(), np.full(F.size, max_T))
    np.testing.assert_allclose(z[1:].ravel(), expected, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(heat.z, dtype=float)[1:].ravel(), expected, rtol=1e-12)
    # frequency 0: only recency 0 is possible, where the BG/NBD's P(alive) is 1
    assert z[0, 0] == 1.0 and np.isnan(z[0, 1:]).all()
    ticks = [t for t in fig.axes[0].get_yticks() if y0 <= t <= y1]
    assert ticks and all(t == int(t) for t in ticks)  # whole repeat orders
