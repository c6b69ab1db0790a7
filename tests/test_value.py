"""Customer value: components, grades and percentiles checked independently; the held-out comparison against
past revenue recomputed with pandas; the `loyalist value` command."""

from __future__ import annotations

import datetime as dt
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, shared_file
from test_segments import _pandas_behaviour, run_my_steps
from typer.testing import CliRunner

from loyalist.cli import app
from loyalist.customer_base import Settings, fit_base, score
from loyalist.evaluation.value import RANKINGS, value_backtest
from loyalist.features import rfm_summary
from loyalist.ingest import ingest
from loyalist.insights import Context
from loyalist.insights.value import value_step
from loyalist.models.segments import grade, percentile
from loyalist.store import open_store

DEMO = sorted((REPO / "data" / "demo").glob("*.csv.gz"))
AS_OF = dt.date(2011, 12, 10)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    store = open_store(tmp_path_factory.mktemp("value") / "demo.duckdb")
    ingest(store, DEMO)
    ctx = run_my_steps(store, AS_OF)
    yield store, ctx
    store.close()


def test_value_components_multiply_and_grades_split(demo):
    store, ctx = demo
    c = ctx.customers
    n = len(c)
    np.testing.assert_allclose(c["value_score"], c["value_clv"] * c["value_margin"] * c["value_growth"] * c["value_risk"])
    np.testing.assert_allclose(c["value_clv"] * c["value_margin"], c["clv_12m"])
    np.testing.assert_allclose(c["value_risk"], c["p_alive"])
    assert (c["value_margin"] == 1.0).all()  # no product costs in the demo data and no gross_margin setting
    # Growth: the spend trend computed independently with pandas, 1 + trend / 2.
    b = _pandas_behaviour(store.table("transactions").execute(), AS_OF)
    np.testing.assert_allclose(c["value_growth"], 1 + b.loc[c["customer_id"], "trend"].to_numpy() / 2)
    # Percentile: pandas' average rank, as a mid-rank percentile.
    np.testing.assert_allclose(c["value_percentile"], 100 * (c["value_score"].rank(method="average") - 0.5) / n)
    counts = c["value_grade"].value_counts()
    assert counts["A"] == round(0.2 * n) and counts["A"] + counts["B"] == round(0.5 * n)
    by = c.groupby("value_grade")["value_score"]
    assert by.min()["A"] >= by.max()["B"] and by.min()["B"] >= by.max()["C"]
    top = c.sort_values("value_score", ascending=False).iloc[0]
    assert f"{top['value_clv']:,.0f}" in top["value_reason"] and "P(alive)" in top["value_reason"]


def test_grade_breaks_ties_by_position_and_percentile_of_ties():
    s = np.array([5.0, 1.0, 5.0, 3.0, 3.0, 0.0, 2.0, 2.0, 2.0, 9.0])
    assert list(grade(s, 0.2, 0.3)) == ["A", "C", "B", "B", "B", "C", "C", "C", "C", "A"]
    p = percentile(s)
    assert p[0] == p[2] == pytest.approx(100 * (7 + 1) / 10)  # 7 lower, 2 tied -> 7 + 1 of 10


def test_growth_rate_from_the_direction_step_is_used(demo):
    store, ctx = demo
    base = ctx.customers[[c for c in ctx.customers.columns if not c.startswith("value_")]].copy()
    rng = np.random.default_rng(0)
    base["growth_rate"] = rng.normal(0, 0.6, len(base))
    base.loc[base.index[:5], "growth_rate"] = np.nan
    c2 = Context(store, AS_OF, Settings(), ctx.fitted, base, {"value": {"backtest": False}}, [])
    out = value_step(c2)
    expected = np.clip(1 + base["growth_rate"].fillna(0.0).to_numpy(), 0.5, 1.5)
    np.testing.assert_allclose(out["value_growth"], expected)
    assert out["value_reason"].str.contains("growth rate").all()
    assert not any("spend trend" in n for n in c2.notes)


def _occasions(tx: pd.DataFrame) -> pd.DataFrame:
    """Independent purchase occasions: customer x day spend of product lines, no returns or guests."""
    keep = ~tx["is_guest"] & ~tx["is_non_product"] & ~tx["is_cancellation"] & ~tx["is_return"] & tx["customer_id"].notna()
    lines = tx[keep].assign(day=tx["order_date"].dt.normalize())
    occ = lines.groupby(["customer_id", "day"])["amount"].sum().reset_index()
    return occ[occ["amount"] >= 0]


def _check_against_pandas(bt: pd.DataFrame, tx: pd.DataFrame, cutoff: dt.date) -> None:
    occ = _occasions(tx)
    c0, c1 = pd.Timestamp(cutoff), pd.Timestamp(cutoff + dt.timedelta(days=365))
    past = occ[occ["day"] < c0].groupby("customer_id")["amount"].sum()
    nxt = occ[(occ["day"] >= c0) & (occ["day"] < c1)].groupby("customer_id")["amount"].sum()
    known_next = nxt.reindex(past.index).fillna(0.0)
    n_a = round(0.2 * len(past))
    top = past.reset_index().sort_values(["amount", "customer_id"], ascending=[False, True])["customer_id"][:n_a]
    r = bt.set_index("ranking")
    assert list(bt["ranking"]) == list(RANKINGS)
    assert (bt["customers"] == len(past)).all() and (bt["graded_a"] == n_a).all()
    assert r.loc["past_revenue", "a_revenue"] == pytest.approx(known_next.loc[top].sum())
    assert r.loc["past_revenue", "a_revenue_share"] == pytest.approx(known_next.loc[top].sum() / known_next.sum())
    assert r.loc["past_revenue", "a_share_of_all"] == pytest.approx(known_next.loc[top].sum() / nxt.sum())
    assert r.loc["past_revenue", "a_captured_buyers"] == pytest.approx((known_next.loc[top] > 0).mean())
    np.testing.assert_allclose(bt["vs_past_revenue"], bt["a_revenue_share"] - r.loc["past_revenue", "a_revenue_share"])
    assert bt["a_revenue_share"].between(0.2, 1).all()  # every ranking beats a random fifth


def test_value_backtest_matches_pandas_on_demo(demo):
    store, ctx = demo
    cutoff = dt.date(2010, 12, 1)
    bt = value_backtest(store.table("transactions"), cutoff)
    _check_against_pandas(bt, store.table("transactions").execute(), cutoff)
    # The metric's A customers are the top fifth by the score computed at the cutoff only.
    summ = rfm_summary(store.table("transactions"), cutoff).execute()
    assert pd.to_datetime(summ["last_order"]).max() < pd.Timestamp(cutoff)
    # The analysis step stored its own check a year before as_of.
    stored = store.table("value_backtest").execute()
    assert set(stored["ranking"]) == set(RANKINGS)
    assert (stored["cutoff"] == pd.Timestamp(AS_OF - dt.timedelta(days=365))).all()
    assert any(n.startswith("value: held out at") for n in ctx.notes)


def test_held_out_check_is_skipped_when_the_year_runs_past_the_data(demo):
    # --as-of after the data: the held-out year ran past it and the note said "brought nan% of the next year's
    # revenue" (or a share of a partial year)
    store, ctx = demo
    rows = store.table("value_backtest").count().execute()
    for as_of in (dt.date(2012, 3, 1), dt.date(2013, 3, 1)):
        c2 = Context(store, as_of, Settings(), ctx.fitted, ctx.customers.drop(columns=[
            c for c in ctx.customers.columns if c.startswith("value_")]), {}, [])
        value_step(c2)
        cutoff = as_of - dt.timedelta(days=365)
        assert (f"value: no held-out check of the grades: it needs the whole year after {cutoff} (to {as_of}), "
                f"and the data ends 2011-12-09") in c2.notes, c2.notes
        assert not any("nan" in n for n in c2.notes)
    assert store.table("value_backtest").count().execute() == rows
    # the same as-of again: the stored check is reported, not recomputed and not silently dropped
    c3 = Context(store, AS_OF, Settings(), ctx.fitted, ctx.customers.drop(columns=[
        c for c in ctx.customers.columns if c.startswith("value_")]), {}, [])
    value_step(c3)
    assert [n for n in c3.notes if n.startswith("value: held out")] == [
        n for n in ctx.notes if n.startswith("value: held out")]
    assert store.table("value_backtest").count().execute() == rows


def test_value_step_skips_without_clv(demo):
    store, ctx = demo
    base = ctx.customers[["customer_id", "p_alive", "first_order"]].assign(clv_12m=np.nan)
    c2 = Context(store, AS_OF, Settings(), ctx.fitted, base, {}, [])
    assert value_step(c2) is None and any("value skipped" in n for n in c2.notes)


def test_cli_value(demo, tmp_path):
    store, ctx = demo
    store.con.execute("CHECKPOINT")
    db = str(tmp_path / "copy.duckdb")
    shutil.copy(store.path, db)
    runner = CliRunner()
    res = runner.invoke(app, ["value", "--db", db, "--top", "5", "--format", "csv"])
    assert res.exit_code == 0, res.output
    top = pd.read_csv(pd.io.common.StringIO(res.stdout), dtype={"customer_id": str})
    expected = ctx.customers.sort_values(["value_score", "customer_id"], ascending=[False, True]).head(5)
    assert list(top["customer_id"]) == list(expected["customer_id"])
    assert {"value_clv", "value_margin", "value_growth", "value_risk", "value_grade", "value_reason"} <= set(top)
    assert "held-out check" in res.stderr
    res = runner.invoke(app, ["value", "--db", db, "--grade", "a", "--out", str(tmp_path / "a.parquet")])
    assert res.exit_code == 0, res.output
    a = pd.read_parquet(tmp_path / "a.parquet")
    assert len(a) == (ctx.customers["value_grade"] == "A").sum() and (a["value_grade"] == "A").all()
    res = runner.invoke(app, ["value", "--db", db, "--top", "3"])
    assert res.exit_code == 0 and "customers by value" in res.stdout
    res = runner.invoke(app, ["value", "--db", db, "--grade", "D"])
    assert res.exit_code == 1 and "choose A, B or C" in res.output
    empty = str(tmp_path / "empty.duckdb")
    open_store(empty).close()
    res = runner.invoke(app, ["value", "--db", empty])
    assert res.exit_code == 1 and "loyalist analyze" in res.output


@pytest.mark.slow
def test_value_backtest_online_retail_ii(tmp_path):
    files = [shared_file("online_retail_ii", f"online_retail_II_{y}.csv.gz") for y in ("2009-2010", "2010-2011")]
    store = open_store(tmp_path / "orii.duckdb")
    ingest(store, files)
    cutoff = dt.date(2010, 12, 1)
    bt = value_backtest(store.table("transactions"), cutoff)
    _check_against_pandas(bt, store.table("transactions").execute(), cutoff)
    assert bt["customers"].iloc[0] > 4000
    store.close()


def test_base_scores_used_by_the_backtest_are_fitted_before_the_cutoff(demo):
    store, _ = demo
    cutoff = dt.date(2010, 12, 1)
    summ = rfm_summary(store.table("transactions"), cutoff).execute().sort_values("customer_id")
    fitted = fit_base(summ, "bgnbd")
    scored = score(fitted, summ, Settings())
    bt = value_backtest(store.table("transactions"), cutoff).set_index("ranking")
    # CLV alone: its A customers are the top fifth by the cutoff's clv_12m; recompute their next-year revenue.
    occ = _occasions(store.table("transactions").execute())
    nxt = occ[(occ["day"] >= pd.Timestamp(cutoff)) & (occ["day"] < pd.Timestamp(cutoff + dt.timedelta(days=365)))]
    nxt = nxt.groupby("customer_id")["amount"].sum()
    n_a = round(0.2 * len(scored))
    top = scored.sort_values(["clv_12m", "customer_id"], ascending=[False, True])["customer_id"][:n_a]
    assert bt.loc["clv", "a_revenue"] == pytest.approx(nxt.reindex(top).fillna(0).sum())
