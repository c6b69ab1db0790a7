"""The synthetic BTYD generator, and the models checked against data simulated from them."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from loyalist.models import BGNBD, GammaGamma, ParetoNBD
from loyalist.synthetic import DEFAULT_SPEND, simulate_bgnbd, simulate_paretonbd, simulate_spend

BG = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PN = {"r": 0.553, "alpha": 10.578, "s": 0.606, "beta": 11.669}
GG = {"p": 6.25, "q": 3.74, "v": 15.44}


@pytest.mark.parametrize("simulate, params", [(simulate_bgnbd, BG), (simulate_paretonbd, PN)])
def test_summary_invariants_and_determinism(simulate, params):
    a = simulate(20_000, **params, T=(27, 39), seed=7, spend=GG, holdout=39)
    b = simulate(20_000, **params, T=(27, 39), seed=7, spend=GG, holdout=39)
    c = simulate(20_000, **params, T=(27, 39), seed=8)
    assert np.array_equal(a.frequency, b.frequency) and np.array_equal(a.recency, b.recency)
    assert not np.array_equal(a.frequency, c.frequency)
    assert np.all(a.frequency == np.round(a.frequency)) and np.all(a.frequency >= 0)
    assert np.all((a.recency >= 0) & (a.recency <= a.T))
    assert np.all(a.recency[a.frequency == 0] == 0) and np.all(a.recency[a.frequency > 0] > 0)
    assert np.all((a.T >= 27) & (a.T <= 39))
    assert np.all(a.monetary_value[a.frequency == 0] == 0) and np.all(a.monetary_value[a.frequency > 0] > 0)
    assert np.all(a.frequency_holdout[~a.alive] == 0)
    df = a.to_frame()
    assert list(df.columns) == ["customer_id", "frequency", "recency", "T", "monetary_value", "frequency_holdout"]
    assert len(df) == 20_000


def test_one_million_customers_in_seconds():
    start = time.perf_counter()
    sim = simulate_bgnbd(1_000_000, **BG, T=(27, 39), seed=1, spend=GG)
    elapsed = time.perf_counter() - start
    assert sim.n_customers == 1_000_000
    assert elapsed < 10.0  # about 0.5 s on a laptop core; generous for loaded CI machines
    # moments against the model: E[X(T)] averaged over T ~ U(27, 39)
    model = BGNBD.from_params(**BG)
    grid = np.linspace(27, 39, 121)
    expected = float(np.mean(model.expected_number_of_purchases_up_to_time(grid)))
    assert sim.frequency.mean() == pytest.approx(expected, rel=0.01)


def test_transactions_table_is_consistent_with_the_summary():
    sim = simulate_paretonbd(3_000, **PN, T=(27, 39), seed=3, spend=GG, transactions=True,
                             end_date="1997-09-30", time_unit="W")
    tx = sim.transactions
    assert list(tx.columns) == ["customer_id", "order_date", "amount"]
    assert len(tx) == int(sim.frequency.sum()) + sim.n_customers
    assert (tx["amount"] > 0).all()
    assert tx["order_date"].max() <= pd.Timestamp("1997-09-30")
    g = tx.groupby("customer_id")
    week = pd.Timedelta(weeks=1)
    first, last = g["order_date"].min(), g["order_date"].max()
    assert np.array_equal((g.size() - 1).to_numpy(), sim.frequency)
    assert np.allclose(((last - first) / week).to_numpy(), sim.recency, atol=1e-6)
    assert np.allclose(((pd.Timestamp("1997-09-30") - first) / week).to_numpy(), sim.T, atol=1e-6)
    rep = tx[tx["order_date"] > tx["customer_id"].map(first)]
    mean_rep = rep.groupby("customer_id")["amount"].mean().reindex(range(sim.n_customers)).fillna(0.0)
    assert np.allclose(mean_rep.to_numpy(), sim.monetary_value)


def test_transactions_without_spend_use_the_default_spend_model():
    sim = simulate_bgnbd(500, **BG, T=30.0, seed=4, transactions=True, time_unit="D", end_date="2024-12-31")
    assert sim.spend_params == DEFAULT_SPEND
    assert (sim.transactions["amount"] > 0).all()
    assert sim.transactions["order_date"].min() >= pd.Timestamp("2024-12-01")


def test_resolution_rounds_to_a_grid():
    sim = simulate_bgnbd(5_000, **BG, T=(27, 39), seed=2, resolution=1 / 7)
    days_T, days_r = sim.T * 7, sim.recency * 7
    assert np.allclose(days_T, np.round(days_T)) and np.allclose(days_r, np.round(days_r))
    assert np.all(sim.recency <= sim.T)


def _within(model, params, n_se=4.0):
    for k, v in params.items():
        se = model.standard_errors_[k]
        assert np.isfinite(se) and se > 0
        assert abs(model.params_[k] - v) < n_se * se, (k, model.params_[k], v, se)


def test_bgnbd_parameter_recovery():
    sim = simulate_bgnbd(50_000, **BG, T=(27, 39), seed=11)
    m = BGNBD().fit(sim.frequency, sim.recency, sim.T)
    assert m.converged_
    _within(m, BG)


def test_paretonbd_parameter_recovery():
    sim = simulate_paretonbd(50_000, **PN, T=(27, 39), seed=12)
    m = ParetoNBD().fit(sim.frequency, sim.recency, sim.T)
    assert m.converged_
    _within(m, PN)


def test_gammagamma_parameter_recovery():
    x = np.random.default_rng(5).poisson(3.0, 40_000) + 1.0
    m_x, _ = simulate_spend(x, **GG, seed=6)
    m = GammaGamma().fit(x, m_x)
    assert m.converged_
    _within(m, GG)


@pytest.mark.parametrize("simulate, model_cls, params", [(simulate_bgnbd, BGNBD, BG), (simulate_paretonbd, ParetoNBD, PN)])
def test_conditional_predictions_are_calibrated_on_simulated_holdout(simulate, model_cls, params):
    # the true parameters predict the simulated future: expected purchases, P(any purchase),
    # P(alive), averaged over customers, match the realised holdout within sampling error
    sim = simulate(200_000, **params, T=(27, 39), seed=21, holdout=39.0)
    model = model_cls.from_params(**params)
    args = (sim.frequency, sim.recency, sim.T)
    hold = sim.frequency_holdout
    n = sim.n_customers
    e = model.conditional_expected_number_of_purchases_up_to_time(39.0, *args)
    assert abs(e.mean() - hold.mean()) < 4 * hold.std() / np.sqrt(n)
    p = model.probability_of_purchase_within(39.0, *args)
    bought = (hold > 0).astype(float)
    assert abs(p.mean() - bought.mean()) < 4 * np.sqrt(p.mean() * (1 - p.mean()) / n)
    a = model.conditional_probability_alive(*args)
    alive = sim.alive.astype(float)
    assert abs(a.mean() - alive.mean()) < 4 * np.sqrt(a.mean() * (1 - a.mean()) / n)
    # and per frequency group (the posterior depends on the history, not just on averages)
    for lo, hi in [(0, 0), (1, 2), (3, 10)]:
        sel = (sim.frequency >= lo) & (sim.frequency <= hi)
        assert abs(e[sel].mean() - hold[sel].mean()) < 4 * hold[sel].std() / np.sqrt(sel.sum()) + 1e-3


def test_invalid_generator_arguments():
    with pytest.raises(ValueError, match="positive"):
        simulate_bgnbd(10, r=-1, alpha=1, a=1, b=1)
    with pytest.raises(ValueError, match="low, high"):
        simulate_paretonbd(10, **PN, T=(5, 1))
    with pytest.raises(ValueError, match="non-negative"):
        simulate_bgnbd(-1, **BG)
    empty = simulate_bgnbd(0, **BG)
    assert empty.n_customers == 0
