"""Acceptance pass over issue 4's user-facing surface (backtest, analyze --as-of, customers): each test pins a
defect a new user hit, checked against independent pandas where a number can be checked."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest
from conftest import DEMO, demo_lines, demo_purchases
from typer.testing import CliRunner

from loyalist.analysis import chosen_model
from loyalist import backtest as bt
from loyalist.backtest import backtest
from loyalist.cli import app
from loyalist.ingest import ingest
from loyalist.store import open_store, write_frame

COLUMNS = ["customer_id", "first_order", "last_order", "orders", "revenue", "frequency", "recency_days",
           "tenure_days", "p_alive", "expected_orders_90d", "prob_order_90d", "expected_order_value", "clv_12m"]


def _last_order() -> dt.date:
    return demo_lines()["day"].max().date()  # independent of the store: the raw exports' last day


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "acc.duckdb"
    store = open_store(path)
    ingest(store, DEMO)
    store.close()
    return path


def test_backtest_refuses_a_holdout_that_runs_past_the_data(demo_store):
    """Before: a cutoff of 2011-12-01 scored 90 days of which 81 have no data (actual 81 orders, BG/NBD +687%),
    a cutoff after the data scored an empty holdout (AUC nan), and either became the choice `analyze` used."""
    last = _last_order()
    t = demo_store.table("transactions")
    latest = last + dt.timedelta(days=1 - 90)
    bt.check_holdout(t, latest, 90)  # a holdout that ends the day after the last order is complete
    with pytest.raises(ValueError, match=f"past the last order \\({last}\\): choose a cutoff on or before {latest} "
                                         f"or a horizon of at most 9 days"):
        backtest(t, last - dt.timedelta(days=8), 90)  # 2011-12-01: 9 days of data left
    with pytest.raises(ValueError, match=f"on or before {last + dt.timedelta(days=1 - 30)}$"):
        backtest(t, last + dt.timedelta(days=30), 30)  # a cutoff after the data: no "shorter horizon" to offer


def test_backtest_cli_error_and_nothing_stored(db):
    res = CliRunner().invoke(app, ["backtest", "--db", str(db), "--cutoff", "2012-01-01", "--horizon", "30"])
    assert res.exit_code == 1 and "past the last order" in res.output, res.output
    store = open_store(db)  # (the command's own connection may still be open in this process)
    from loyalist.store import has_table

    assert not has_table(store, "backtest_metrics") or store.table("backtest_metrics").count().execute() == 0
    store.close()


def test_backtest_notes_are_not_repeated_per_model(demo_store):
    """Before: 'spend model skipped ...' was printed once per classic model (three identical notes)."""
    result = backtest(demo_store.table("transactions"), dt.date(2009, 12, 5), 90,
                      models=("bgnbd", "paretonbd", "mbgnbd"))
    assert len(result.notes) == len(set(result.notes))
    assert sum("spend model skipped" in n for n in result.notes) == 1


def test_analyze_as_of_ignores_backtests_scored_on_later_orders(tmp_path):
    """`--as-of` uses only earlier data, so the model choice too: a backtest whose holdout ends after as_of
    measured its choice on later orders. Before: the latest stored backtest was used whatever its dates."""
    store = open_store(tmp_path / "c.duckdb")

    def run(cutoff: str, run_at: str, best: str) -> pd.DataFrame:
        return pd.DataFrame({"model": ["bgnbd", "paretonbd", "mbgnbd"],
                             "mae": [0.5 if m == best else 0.6 for m in ("bgnbd", "paretonbd", "mbgnbd")],
                             "auc": 0.8, "cutoff": pd.Timestamp(cutoff), "horizon_days": 90,
                             "run_at": pd.Timestamp(run_at)})

    write_frame(store, "backtest_metrics", run("2010-06-01", "2026-01-01", "paretonbd"), replace=True)
    write_frame(store, "backtest_metrics", run("2011-06-01", "2026-01-02", "mbgnbd"), replace=False)
    assert chosen_model(store)[0] == "mbgnbd"  # no as_of: the latest backtest
    assert chosen_model(store, dt.date(2011, 8, 30))[0] == "mbgnbd"  # its holdout ended that day
    model, why = chosen_model(store, dt.date(2011, 8, 29))
    assert model == "paretonbd" and "2010-06-01" in why
    assert chosen_model(store, dt.date(2010, 8, 29)) is None  # none ended by then: analyze runs its own
    store.close()


def test_analyze_as_of_after_the_last_order(db):
    """Scoring as of a date after the data (a shop that stopped exporting) works end to end. Before: the timing
    step crashed formatting an empty money column and the cross-sell step on an empty gap list and an empty
    holdout; and a stored backtest scored on days after as_of chose the model."""
    store = open_store(db)
    write_frame(store, "backtest_metrics", pd.DataFrame(
        {"model": ["bgnbd", "paretonbd", "mbgnbd"], "mae": [0.7, 0.7, 0.5], "auc": 0.8,
         "cutoff": pd.Timestamp("2012-12-01"), "horizon_days": 90, "run_at": pd.Timestamp("2026-01-01")}),
        replace=True)
    store.close()
    as_of = dt.date(2013, 1, 1)
    res = CliRunner().invoke(app, ["analyze", "--db", str(db), "--as-of", str(as_of), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["model"] == "bgnbd" and doc["chosen_by"] == "default (no backtest)"  # not the 2012-12-01 run
    assert any("no backtest possible" in n and "past the last order" in n for n in doc["notes"])
    res = CliRunner().invoke(app, ["customers", "--db", str(db), "--format", "json"])
    table = pd.DataFrame(json.loads(res.stdout))
    occ = demo_purchases()
    first = occ.groupby("customer_id")["day"].min()
    assert list(table.columns[:len(COLUMNS)]) == COLUMNS and len(table) == len(first)
    t = table.set_index("customer_id")
    assert (t["tenure_days"] == (pd.Timestamp(as_of) - first.loc[t.index]).dt.days).all()
    assert t["p_alive"].between(0, 1).all() and t["prob_order_90d"].between(0, 1).all()
    # a year without orders: nobody is expected to order as much as in the data's last 90 days
    assert t["expected_orders_90d"].max() < 1


def test_analyze_as_of_the_day_after_the_first_order(db):
    """One day of history: no repeat customer, no spend model. Before: the cross-sell step crashed on an empty
    held-out window ('zero-size array'), and the summary said 'nan% of repeat customers' and 'CLV total: 0'."""
    res = CliRunner().invoke(app, ["analyze", "--db", str(db), "--as-of", "2009-12-02"])
    assert res.exit_code == 0, res.output
    assert "no repeat customers yet" in res.stdout and "nan%" not in res.stdout
    assert "12-month CLV total: none (no spend model" in res.stdout
    first_day = demo_purchases().groupby("customer_id")["day"].min()
    assert f"{(first_day < pd.Timestamp('2009-12-02')).sum():,} customers scored" in res.stdout


def test_customers_top_and_format_errors(tmp_path):
    store = open_store(tmp_path / "t.duckdb")
    write_frame(store, "customer_insights", pd.DataFrame({"customer_id": ["a", "b"], "clv_12m": [1.0, 2.0]}),
                replace=True)
    store.close()
    db, runner = tmp_path / "t.duckdb", CliRunner()
    assert len(json.loads(runner.invoke(app, ["customers", "--db", str(db), "--top", "1", "--format", "json"]
                                        ).stdout)) == 1
    for n in ("0", "-3"):  # before: 0 printed every row, -3 a DuckDB traceback
        res = runner.invoke(app, ["customers", "--db", str(db), "--top", n])
        assert res.exit_code == 2 and "--top" in res.output, res.output  # a usage error, as for `direction`
    res = runner.invoke(app, ["customers", "--db", str(db), "--format", "xml"])
    assert res.exit_code == 1 and "unknown format 'xml'" in res.output  # before: "needs --out FILE"


def test_analyze_horizon_clashing_with_the_timing_columns_is_a_clear_error(db):
    """Before: `analyze --horizon 30` fitted everything, then died with a RuntimeError traceback (the timing step
    re-defines prob_order_30d); --horizon 0 was accepted."""
    runner = CliRunner()
    for h in ("30", "60"):
        res = runner.invoke(app, ["analyze", "--db", str(db), "--horizon", h])
        assert res.exit_code == 1 and f"prob_order_{h}d is the timing step's column" in res.output, res.output
    res = runner.invoke(app, ["analyze", "--db", str(db), "--horizon", "0"])
    assert res.exit_code == 1 and "--horizon must be at least 1 day" in res.output


def test_backtest_table_shows_the_spend_error_once(tmp_path, monkeypatch):
    """The spend error is the Gamma-Gamma's, one number for all rows. Before: a 'spend mae' column repeated it in
    every row, rhythm_gbm's too (it predicts no spend)."""
    import loyalist.analysis as analysis
    from loyalist.backtest import BacktestResult

    metrics = pd.DataFrame({"model": ["bgnbd", "rhythm_gbm"], "predicted_orders": [10.0, 9.0],
                            "actual_orders": 12.0, "total_error_pct": [-16.7, -25.0], "mae": [0.5, 0.4],
                            "rmse": 0.9, "auc": 0.8, "brier": 0.1, "spend_mae": 186.55, "spend_customers": 217})
    days = pd.date_range("2011-01-01", periods=4, freq="7D")
    tracking = pd.DataFrame({"date": days, "actual": [0, 3, 6, 12], "bgnbd": [0, 3, 6, 10.0],
                             "phase": ["calibration"] * 2 + ["holdout"] * 2})
    per = pd.DataFrame({"customer_id": ["a", "b"], "frequency": [0, 2], "actual": [0.0, 1.0], "bgnbd": [0.1, 0.9],
                        "rhythm_gbm": [0.0, 1.0]})
    fake = BacktestResult(dt.date(2011, 1, 15), 14, metrics, tracking, "bgnbd", 2, per)
    monkeypatch.setattr(analysis, "run_backtest", lambda store, cut, h, models: fake)
    store = open_store(tmp_path / "f.duckdb")
    store.close()
    res = CliRunner().invoke(app, ["backtest", "--db", str(tmp_path / "f.duckdb"), "--cutoff", "2011-01-15",
                                   "--plots", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert "spend mae" not in res.stdout and res.stdout.count("186.6") == 1
    assert "Gamma-Gamma" in res.stdout and "217 customers" in res.stdout


def test_backtest_and_analyze_do_not_create_a_store_at_a_mistyped_path(tmp_path):
    """Before: both created an empty store file at a mistyped --db and then said it holds no transactions."""
    runner = CliRunner()
    missing = tmp_path / "typo.duckdb"
    for args in (["backtest", "--cutoff", "2011-06-01"], ["analyze"]):
        res = runner.invoke(app, [*args, "--db", str(missing)])
        assert res.exit_code == 1 and "no store here yet" in res.output and not missing.exists(), res.output
    empty = tmp_path / "empty.duckdb"
    open_store(empty).close()
    for args in (["backtest", "--cutoff", "2011-06-01"], ["analyze"]):
        res = runner.invoke(app, [*args, "--db", str(empty)])
        assert res.exit_code == 1 and "holds no transactions yet" in res.output, res.output


def test_backtest_with_runs_a_candidate_beside_the_classic_models_and_refuses_unknown_names(db):
    """`--with` adds an on-request candidate to the table; the choice stays among the classic models."""
    res = CliRunner().invoke(app, ["backtest", "--db", str(db), "--cutoff", "2011-06-01", "--horizon", "90",
                                   "--with", "paretonbd_seasonal", "--json"])
    assert res.exit_code == 0, res.output
    metrics = pd.DataFrame(json.loads(res.output[res.output.index("{"):])["metrics"])
    assert set(metrics["model"]) == {*bt.DEFAULT_MODELS, "paretonbd_seasonal"}
    assert json.loads(res.output[res.output.index("{"):])["chosen"] in bt.TRANSACTION_MODELS
    res = CliRunner().invoke(app, ["backtest", "--db", str(db), "--cutoff", "2011-06-01", "--with", "foo"])
    assert res.exit_code == 1 and "--with 'foo'" in res.output, res.output
