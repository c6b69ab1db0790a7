"""Backtest, analyze and customers end to end: held-out figures checked against independent counts."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO, demo_purchases, shared_file
from typer.testing import CliRunner

from loyalist.analysis import analyze, choice_from, run_backtest
from loyalist.backtest import backtest, choose
from loyalist.cli import app
from loyalist.ingest import Options, ingest
from loyalist.store import open_store

COLUMNS = ["customer_id", "first_order", "last_order", "orders", "revenue", "frequency", "recency_days",
           "tenure_days", "p_alive", "expected_orders_90d", "prob_order_90d", "expected_order_value", "clv_12m",
           "model"]


def _occasions(paths: list[Path]) -> pd.DataFrame:
    """Independent pandas version of the purchase-occasion rule: per customer and day, positive product
    lines of non-cancelled invoices, overlapping exports counted once."""
    return demo_purchases(paths).groupby(["customer_id", "day"]).size().reset_index(name="lines")


def test_backtest_counts_the_holdout_independently(demo_store):
    cutoff, horizon = dt.date(2011, 6, 1), 90
    result = backtest(demo_store.table("transactions"), cutoff, horizon)
    occ = _occasions(DEMO)
    calib_customers = set(occ.loc[occ["day"] < pd.Timestamp(cutoff), "customer_id"])
    hold = occ[(occ["day"] >= pd.Timestamp(cutoff)) & (occ["day"] < pd.Timestamp(cutoff + dt.timedelta(days=horizon)))
               & occ["customer_id"].isin(calib_customers)]
    assert result.customers == len(calib_customers)
    m = result.metrics.set_index("model")
    assert set(m.index) >= {"bgnbd", "paretonbd", "mbgnbd"}
    assert (m["actual_orders"] == len(hold)).all()
    # Each model's metrics are computed from its own held-out predictions.
    pc = result.per_customer
    for model in m.index:
        assert m.loc[model, "predicted_orders"] == pytest.approx(pc[model].sum())
        assert m.loc[model, "mae"] == pytest.approx(np.mean(np.abs(pc[model] - pc["actual"])))
        assert 0.5 < m.loc[model, "auc"] <= 1.0 and 0 < m.loc[model, "brier"] < 0.5
    # analyze scores with a classic model: the choice is among them, whatever rhythm_gbm's MAE
    assert result.chosen == m.loc[["bgnbd", "paretonbd", "mbgnbd"], "mae"].idxmin()
    # Tracking curve: the actual cumulative repeat orders at the end equal the independent count.
    repeat = occ[occ["customer_id"].isin(calib_customers)].sort_values("day")
    repeat = repeat[repeat.groupby("customer_id").cumcount() > 0]
    end = result.tracking.iloc[-1]
    in_window = repeat["day"] < pd.Timestamp(cutoff + dt.timedelta(days=horizon))
    assert end["actual"] == (in_window & (repeat["day"] <= end["date"])).sum()


def test_the_choice_is_the_classic_model_with_the_lowest_mae_then_the_higher_auc():
    rows = pd.DataFrame({"model": ["bgnbd", "paretonbd", "mbgnbd", "rhythm_gbm"],
                         "mae": [0.70, 0.60, 0.60, 0.50], "auc": [0.80, 0.79, 0.81, 0.90],
                         "cutoff": pd.Timestamp("2011-06-01"), "horizon_days": 90})
    assert choose(rows)["model"] == "mbgnbd"  # rhythm_gbm is better but analyze cannot score with it
    assert choice_from(rows)[0] == "mbgnbd" and "0.600" in choice_from(rows)[1]
    assert choose(rows.assign(auc=0.8))["model"] == "paretonbd"  # a full tie: the model listed first
    assert choose(rows[rows["model"] == "rhythm_gbm"])["model"] == "rhythm_gbm"
    assert choice_from(rows[rows["model"] == "rhythm_gbm"]) is None


def test_analyze_as_of_uses_only_earlier_data(demo_store):
    as_of = dt.date(2011, 1, 1)
    report, table = analyze(demo_store, as_of, model="bgnbd")
    occ = _occasions(DEMO)
    before = occ[occ["day"] < pd.Timestamp(as_of)]
    assert report.customers == before["customer_id"].nunique() == len(table)
    assert list(table.columns[:len(COLUMNS) - 1]) == COLUMNS[:-1] and "model" in table.columns
    assert (pd.to_datetime(table["last_order"]) < pd.Timestamp(as_of)).all()
    per = before.groupby("customer_id")["day"].agg(["min", "max", "count"])
    t = table.set_index("customer_id")
    assert (t["orders"] == per.loc[t.index, "count"]).all()
    assert (t["recency_days"] == (per.loc[t.index, "max"] - per.loc[t.index, "min"]).dt.days).all()
    assert (t["tenure_days"] == (pd.Timestamp(as_of) - per.loc[t.index, "min"]).dt.days).all()
    for col in ("p_alive", "prob_order_90d"):
        assert t[col].between(0, 1).all()
    assert (t["expected_orders_90d"] >= 0).all() and (t["clv_12m"] >= 0).all()
    # A customer who bought often and recently is more likely alive than one long silent.
    repeaters = t[t["frequency"] >= 3]
    recent = repeaters["tenure_days"] - repeaters["recency_days"] < 30
    assert repeaters.loc[recent, "p_alive"].mean() > repeaters.loc[~recent, "p_alive"].mean()


def test_analyze_auto_runs_a_backtest_and_uses_its_choice(tmp_path):
    store = open_store(tmp_path / "s.duckdb")
    ingest(store, DEMO)
    report, _ = analyze(store)
    metrics = store.table("backtest_metrics").execute()
    classic = metrics[metrics["model"].isin(["bgnbd", "paretonbd", "mbgnbd"])]
    assert report.model == classic.sort_values("mae").iloc[0]["model"]
    assert "backtest" in report.chosen_by
    assert report.as_of == dt.date(2011, 12, 10)
    store.close()


def test_cli_backtest_analyze_customers(tmp_path):
    db = str(tmp_path / "cli.duckdb")
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", *map(str, DEMO), "--db", db]).exit_code == 0
    res = runner.invoke(app, ["backtest", "--db", db, "--cutoff", "2011-06-01", "--plots", str(tmp_path / "p"),
                              "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert {m["model"] for m in doc["metrics"]} >= {"bgnbd", "paretonbd", "mbgnbd"}
    for name in ("tracking.png", "tracking.html", "calibration_holdout.png", "calibration_holdout.html"):
        assert (tmp_path / "p" / name).stat().st_size > 1000
    html = (tmp_path / "p" / "tracking.html").read_text()
    assert "<script src=\"http" not in html and "Plotly.newPlot" in html  # library embedded: works offline
    res = runner.invoke(app, ["analyze", "--db", db, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["model"] == doc["chosen"]
    for fmt in ("csv", "json", "parquet"):
        out = tmp_path / f"c.{fmt}"
        res = runner.invoke(app, ["customers", "--db", db, "--format", fmt, "--out", str(out)])
        assert res.exit_code == 0, res.output
        frame = {"csv": pd.read_csv, "json": pd.read_json, "parquet": pd.read_parquet}[fmt](out)
        assert list(frame.columns[:13]) == COLUMNS[:13]
        assert frame["clv_12m"].is_monotonic_decreasing
    res = runner.invoke(app, ["customers", "--db", db, "--top", "5", "--format", "json"])
    assert len(json.loads(res.stdout)) == 5
    res = runner.invoke(app, ["backtest", "--db", db, "--cutoff", "yesterday"])
    assert res.exit_code == 1 and "YYYY-MM-DD" in res.output


def test_customers_format_wins_over_the_out_suffix(tmp_path):
    # `customers --format csv --out x.txt` was refused ("cannot tell the format from the name")
    from loyalist.store import write_frame

    store = open_store(tmp_path / "t.duckdb")
    write_frame(store, "customer_insights", pd.DataFrame({"customer_id": ["a", "b"], "clv_12m": [1.0, 2.0]}),
                replace=True)
    store.close()
    db, runner = str(tmp_path / "t.duckdb"), CliRunner()
    res = runner.invoke(app, ["customers", "--db", db, "--format", "csv", "--out", str(tmp_path / "x.txt")])
    assert res.exit_code == 0, res.output
    assert pd.read_csv(tmp_path / "x.txt")["customer_id"].tolist() == ["b", "a"]
    res = runner.invoke(app, ["customers", "--db", db, "--format", "json", "--out", str(tmp_path / "y.csv")])
    assert res.exit_code == 0 and [r["customer_id"] for r in json.loads((tmp_path / "y.csv").read_text())] == ["b", "a"]
    res = runner.invoke(app, ["customers", "--db", db, "--out", str(tmp_path / "z.json")])  # no --format: the suffix
    assert res.exit_code == 0 and len(json.loads((tmp_path / "z.json").read_text())) == 2
    res = runner.invoke(app, ["customers", "--db", db, "--out", str(tmp_path / "z.txt")])
    assert res.exit_code == 1 and "cannot tell the format" in res.output and not (tmp_path / "z.txt").exists()


def test_customers_before_analyze_is_a_clear_error(tmp_path):
    db = str(tmp_path / "e.duckdb")
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", str(DEMO[0]), "--db", db]).exit_code == 0
    res = runner.invoke(app, ["customers", "--db", db])
    assert res.exit_code == 1 and "loyalist analyze" in res.output


@pytest.mark.slow
def test_cdnow_sample_holdout_matches_the_published_count(tmp_path):
    """CDNOW sample, 39-week calibration (to 1997-09-30) and 39-week holdout: 1,882 repeat orders."""
    store = open_store(tmp_path / "c.duckdb")
    ingest(store, [shared_file("cdnow", "CDNOW_sample.txt.gz")],
           Options(mapping={"customer_id": "column0", "order_date": "column2", "quantity": "column3",
                            "amount": "column4"}))
    result = run_backtest(store, dt.date(1997, 10, 1), 273)
    m = result.metrics.set_index("model")
    assert result.customers == 2_357
    assert (m["actual_orders"] == 1_882).all()
    # BG/NBD under-predicts this holdout, as the literature reports (lifetimes: 1,653).
    assert 1_550 < m.loc["bgnbd", "predicted_orders"] < 1_750
    store.close()


def test_clv_uses_product_margins_when_known(tmp_path):
    store = open_store(tmp_path / "m.duckdb")
    ingest(store, DEMO)
    as_of = dt.date(2011, 9, 1)
    _, revenue_clv = analyze(store, as_of, model="bgnbd")
    products = store.con.execute("SELECT DISTINCT product_id FROM transactions WHERE product_id IS NOT NULL"
                                 ).fetchall()
    path = tmp_path / "products.csv"
    path.write_text("SKU,Margin\n" + "".join(f"{p[0]},0.25\n" for p in products))
    from loyalist.schema import Kind

    ingest(store, [path], Options(kind=Kind.products))
    report, profit_clv = analyze(store, as_of, model="bgnbd")
    assert report.margin_source == "product costs"
    merged = revenue_clv.merge(profit_clv, on="customer_id", suffixes=("_rev", "_profit"))
    assert np.allclose(merged["clv_12m_profit"], 0.25 * merged["clv_12m_rev"], rtol=1e-9)
    store.close()
