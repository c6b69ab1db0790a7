"""Timing (issue 5): renewal model against simulation and known rhythms; gap features against plain pandas on
the raw demo files; the analysis step, the CLI and the held-out evaluation on the demo store."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import demo_purchases, shared_file
from typer.testing import CliRunner

from loyalist.analysis import CUSTOMER_TABLE
from loyalist.cli import app
from loyalist.customer_base import Settings, fit_base, score
from loyalist.evaluation.timing import evaluate, versus_baselines
from loyalist.features import rfm_summary
from loyalist.features.timing import customer_gaps, product_cycles
from loyalist.ingest import Options, ingest
from loyalist.insights import Context
from loyalist.insights.timing import (
    LEVEL_GRID,
    MEDIAN_WEIGHTS,
    MIX_GRID,
    base_prob_order,
    base_summary,
    coverage_80,
    fit_customer_model,
    fit_stack,
    score_customers,
    select_mix,
    timing,
)
from loyalist.models.next_order import GammaRenewal
from loyalist.store import open_store, write_frame

AS_OF = dt.date(2011, 9, 1)
CONTRACT = ["next_order_date", "next_order_p10", "next_order_p90", "prob_order_30d", "prob_order_60d",
            "overdue_days", "overdue_score", "overdue_reason", "cycle_days", "cycle_regularity", "cycle_class",
            "contact_due_date"]


# ------------------------------------------------------------------------------------------ the model
def _simulate(n_cust=3000, k=4.0, alpha=6.0, beta=150.0, q=0.0, window=720.0, seed=1):
    """Customers with gamma gaps (rate ~ Gamma(alpha, beta)), dropout q after each purchase, observed over
    `window` days from their first purchase; returns sufficient statistics and the true rates."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(alpha, 1 / beta, n_cust)
    gaps = rng.gamma(k, 1 / lam[:, None], (n_cust, 80))
    drop = rng.random((n_cust, 80)) < q
    alive = np.cumprod(~drop, axis=1).astype(bool)  # alive after purchase j (gap j happens if alive)
    times = np.cumsum(gaps, axis=1)
    seen = (times < window) & alive
    n = seen.sum(axis=1)
    S = np.where(seen, gaps, 0).sum(axis=1)
    L = np.where(seen, np.log(gaps), 0).sum(axis=1)
    e = window - S
    return n.astype(float), S, L, e, lam


def test_fit_recovers_known_rhythm():
    n, S, L, e, lam = _simulate(q=0.05)
    m = GammaRenewal().fit(n, S, L, e)
    p = m.params_
    assert p["k"] == pytest.approx(4.0, rel=0.15)
    # Mean gap of the population prior k * beta / (alpha - 1) = 120 days.
    assert p["k"] * p["beta"] / (p["alpha"] - 1) == pytest.approx(120.0, rel=0.15)
    assert p["a"] / (p["a"] + p["b"]) == pytest.approx(0.05, abs=0.03)
    # Customers with many gaps: the cycle is their own (true mean gap k / lambda), shrunk only slightly.
    many = n >= 10
    cyc = m.cycle(n[many], S[many])
    true = 4.0 / lam[many]
    assert np.median(np.abs(cyc / true - 1)) < 0.15


def test_survival_matches_simulation_and_quantiles_invert():
    m = GammaRenewal.from_params(k=2.0, alpha=3.0, beta=60.0, a=1.0, b=9.0)
    rng = np.random.default_rng(0)
    # Posterior for n=3 gaps summing to 90: lambda ~ Gamma(3 + 6, 60 + 90); gap | lambda ~ Gamma(2, lambda).
    lam = rng.gamma(9.0, 1 / 150.0, 400_000)
    x = rng.gamma(2.0, 1 / lam)
    for t in (5.0, 30.0, 80.0):
        assert m.survival(t, 3, 90.0) == pytest.approx((x > t).mean(), abs=0.004)
    # Conditional on 40 quiet days, P(order within 30) = P(40 < X <= 70) / P(X > 40).
    cond = ((x > 40) & (x <= 70)).sum() / (x > 40).sum()
    assert m.conditional_cdf(30.0, 3, 90.0, 40.0) == pytest.approx(cond, abs=0.005)
    pa = m.p_alive(3, 90.0, 40.0)
    assert m.prob_order_within(30.0, 3, 90.0, 40.0) == pytest.approx(pa * cond, abs=0.005)
    # P(alive): pi S / (1 - pi + pi S) with pi = (b + n) / (a + b + n).
    pi, s = 12 / 13, m.survival(40.0, 3, 90.0)
    assert pa == pytest.approx(pi * s / (1 - pi + pi * s))
    # Quantiles invert the CDF; the defective law's quantile is infinite above P(alive).
    for q in (0.1, 0.5, 0.8):
        t = m.residual_quantile(q, 3, 90.0, 40.0)
        assert m.conditional_cdf(t, 3, 90.0, 40.0) == pytest.approx(q, abs=1e-6)
        t = m.residual_quantile(q, 3, 90.0, 40.0, p_alive=0.9)
        assert 0.9 * m.conditional_cdf(t, 3, 90.0, 40.0) == pytest.approx(q, abs=1e-6)
    assert np.isinf(m.residual_quantile(0.95, 3, 90.0, 40.0, p_alive=0.9))


def test_one_order_customer_gets_a_wide_interval():
    n, S, L, e, _ = _simulate(k=8.0, beta=75.0)  # regular buyers (CV of a gap 0.35), mean gap 120 days
    m = GammaRenewal().fit(n, S, L, e)
    one = m.residual_quantile(np.array([0.1, 0.9]), 0, 0.0, 10.0)
    regular = m.residual_quantile(np.array([0.1, 0.9]), 20, 2400.0, 10.0)
    assert (one[1] - one[0]) > 1.3 * (regular[1] - regular[0])


def test_fit_validates_its_input():
    with pytest.raises(ValueError):
        GammaRenewal().fit([1, 2], [3], [0.1, 0.2], [1, 1])
    with pytest.raises(ValueError):
        GammaRenewal().fit([2] * 20, [1] * 20, [0] * 20, [5] * 20)  # 2 gaps of whole days cannot sum to 1
    with pytest.raises(RuntimeError):
        GammaRenewal().survival(1.0, 0, 0.0)


# ----------------------------------------------------------------------------- features vs pandas
def _lines(until: dt.date | None = AS_OF) -> pd.DataFrame:
    """Independent pandas reading of the demo files: purchase lines (same rules as test_analysis)."""
    df = demo_purchases()
    return df if until is None else df[df["day"] < pd.Timestamp(until)]


def _gap_stats(days: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    d = days.sort_values([*keys, "day"])
    d["gap"] = d.groupby(keys)["day"].diff().dt.days
    g = d.groupby(keys)
    return pd.DataFrame({"occasions": g.size(), "gap_sum": g["gap"].sum(), "logsum": np.log(d["gap"]).groupby(
        [d[k] for k in keys]).sum(), "last_gap": g["gap"].last(),
        "elapsed": (pd.Timestamp(AS_OF) - g["day"].max()).dt.days})


def test_customer_gaps_match_pandas(demo_store):
    lines = _lines()
    exp = _gap_stats(lines[["customer_id", "day"]].drop_duplicates(), ["customer_id"])
    got = customer_gaps(demo_store.table("transactions"), AS_OF).execute().set_index("customer_id").loc[exp.index]
    assert len(got) == len(exp)
    assert (got["occasions"] == exp["occasions"]).all()
    assert (got["n_gaps"] == exp["occasions"] - 1).all()
    assert np.allclose(got["gap_sum"], exp["gap_sum"])
    assert np.allclose(got["gap_logsum"], exp["logsum"])
    assert np.allclose(got["last_gap"].fillna(-1), exp["last_gap"].fillna(-1))
    assert (got["elapsed"] == exp["elapsed"]).all()


def test_product_cycles_match_pandas(demo_store):
    lines = _lines()
    days = lines[["customer_id", "StockCode", "day"]].drop_duplicates().rename(columns={"StockCode": "product_id"})
    exp = _gap_stats(days, ["customer_id", "product_id"])
    qty = lines.groupby(["customer_id", "StockCode", "day"])["Quantity"].sum().groupby(level=[0, 1]).mean()
    got = product_cycles(demo_store.table("transactions"), AS_OF).execute()
    got["product_id"] = got["product_id"].str.upper()
    got = got.set_index(["customer_id", "product_id"])
    exp.index = exp.index.set_levels(exp.index.levels[1].str.upper(), level=1)
    assert len(got) == len(exp)
    got = got.loc[exp.index]
    assert (got["occasions"] == exp["occasions"]).all()
    assert np.allclose(got["gap_sum"], exp["gap_sum"])
    assert np.allclose(got["gap_logsum"], exp["logsum"])
    assert (got["elapsed"] == exp["elapsed"]).all()
    assert np.allclose(got["quantity"], qty.loc[exp.index.tolist()].to_numpy())


def test_model_average_with_the_customer_base_model(demo_store):
    cg = customer_gaps(demo_store.table("transactions"), AS_OF).execute()
    cm = fit_customer_model(cg)
    bg = fit_base(base_summary(cg), "bgnbd").transaction
    alone = score_customers(cm, cg, None, 1.0)
    half = score_customers(cm, cg, bg, 0.5)
    for h in (30, 60, 90):
        assert np.allclose(half[f"prob_order_{h}d"],
                           0.5 * alone[f"prob_order_{h}d"] + 0.5 * base_prob_order(bg, cg, h))
    # BG/NBD's own P(order within 90) for the statistics (frequency, recency, T) of rfm_summary.
    summ = rfm_summary(demo_store.table("transactions"), AS_OF).execute().set_index("customer_id").loc[cg["customer_id"]]
    direct = bg.probability_of_purchase_within(90, summ["frequency"].to_numpy(float), summ["recency"].to_numpy(float),
                                               summ["T"].to_numpy(float))
    assert np.allclose(base_prob_order(bg, cg, 90), direct)
    # The adjusted P(alive) reproduces the combined 90-day probability where it is not capped at 1.
    n, S = cg["n_gaps"].to_numpy(float), cg["gap_sum"].to_numpy(float)
    e = np.maximum(cg["elapsed"].to_numpy(float) - 0.5, 0)
    F = cm.conditional_cdf(90, n, S, e)
    ok = half["p_alive_timing"] < 1
    assert np.allclose((half["p_alive_timing"] * F)[ok], half["prob_order_90d"][ok])
    assert np.allclose(alone["p_alive_timing"], cm.p_alive(n, S, e))
    mix, how = select_mix(demo_store.table("transactions"), AS_OF, "bgnbd")
    assert mix in MIX_GRID and "chosen on the orders of 2011-06-03 to 2011-09-01" in how


# ------------------------------------------------------------------------------------- the analysis step
@pytest.fixture(scope="module")
def analysed(demo_store):
    summary = rfm_summary(demo_store.table("transactions"), AS_OF).execute()
    fitted = fit_base(summary, "bgnbd")
    table = score(fitted, summary, Settings())
    ctx = Context(demo_store, AS_OF, Settings(), fitted, table, {"timing": {}}, [])
    cols = timing(ctx)
    merged = table.merge(cols, on="customer_id", how="left")
    write_frame(demo_store, CUSTOMER_TABLE, merged, replace=True)
    return merged, ctx


def test_step_columns_are_consistent(analysed, demo_store):
    t, ctx = analysed
    assert set(CONTRACT) <= set(t.columns)
    assert t["customer_id"].is_unique
    assert t[["prob_order_30d", "prob_order_60d"]].stack().between(0, 1).all()
    assert (t["prob_order_30d"] <= t["prob_order_60d"] + 1e-12).all()
    now = pd.Timestamp(AS_OF)
    both = t.dropna(subset=["next_order_p10", "next_order_date"])
    assert (both["next_order_p10"] >= now).all() and (both["next_order_p10"] <= both["next_order_date"]).all()
    both = t.dropna(subset=["next_order_p90", "next_order_date"])
    assert (both["next_order_date"] <= both["next_order_p90"]).all()
    # One-order customers: no cycle of their own, no class, never flagged overdue.
    one = t["orders"] == 1
    assert t.loc[one, "cycle_class"].isna().all() and (t.loc[one, "overdue_score"] == 0).all()
    assert set(t.loc[~one, "cycle_class"]) <= {"short", "long"}
    # Overdue: flagged rows carry a reason with the numbers; the days since the last order are right.
    flagged = t[t["overdue_score"] > 0]
    assert len(flagged) > 0 and flagged["overdue_reason"].notna().all()
    row = flagged.iloc[0]
    since = (now - pd.Timestamp(row["last_order"])).days
    assert f"{since} days since the last" in row["overdue_reason"]
    assert f"({row['orders']} orders since" in row["overdue_reason"]
    assert (f"value at stake {row['overdue_score']:,.0f} (expected order {row['expected_order_value']:,.0f} x "
            "P(still active))") in row["overdue_reason"]
    assert t.loc[t["overdue_score"] == 0, "overdue_reason"].isna().all()
    assert ((t["cycle_regularity"] > 0) & (t["cycle_regularity"] <= 1)).sum() == t["cycle_regularity"].notna().sum()
    # Contact schedule: future dates for high-value long-cycle customers only.
    sched = demo_store.table("contact_schedule").execute()
    assert len(sched) > 0 and (sched["contact_date"] >= now).all()
    cls = t.set_index("customer_id").loc[sched["customer_id"], "cycle_class"]
    assert (cls == "long").all()
    due = sched.groupby("customer_id")["contact_date"].min()
    assert (t.set_index("customer_id").loc[due.index, "contact_due_date"] == due).all()


def test_reorders_and_next_products(analysed, demo_store):
    lines = _lines()
    reorders = demo_store.table("reorders").execute()
    assert (reorders["times_bought"] >= 2).all()
    days = lines.groupby(["customer_id", "StockCode"])["day"].agg(["nunique", "max"])
    days.index = days.index.set_levels(days.index.levels[1].str.upper(), level=1)
    key = list(zip(reorders["customer_id"], reorders["product_id"].str.upper()))
    assert (days.loc[key, "nunique"].to_numpy() == reorders["times_bought"].to_numpy()).all()
    assert (days.loc[key, "max"].to_numpy() == reorders["last_bought"].to_numpy()).all()
    assert len(reorders) == (days["nunique"] >= 2).sum()
    assert (reorders["next_reorder_date"] >= pd.Timestamp(AS_OF)).all()
    late = reorders[reorders["overdue_days"] > 0].iloc[0]
    assert f"every ~{round(late['cycle_days'])} days" in late["reason"]
    nxt = demo_store.table("next_products").execute()
    assert nxt.groupby("customer_id")["rank"].max().le(5).all()
    assert nxt["probability"].between(0, 1).all()
    ordered = nxt.sort_values(["customer_id", "rank"])
    assert (ordered.groupby("customer_id")["probability"].diff().dropna() <= 1e-12).all()
    # Only products the customer bought before.
    assert days.index.isin(list(zip(nxt["customer_id"], nxt["product_id"].str.upper()))).sum() == len(nxt)
    bt = demo_store.table("timing_backtest").execute()
    assert {"loyalist", "bgnbd", "mean_interval", "last_gap"} <= set(bt["method"])


def test_reasons_count_one_day_one_order_one_time():
    # the reasons said "every ~1 days", "1 days since the last", "(1 times since ...)"
    from loyalist.insights.timing import (
        ColumnGlobals,
        customer_block,
        reorder_tables_from,
    )

    as_of = dt.date(2011, 3, 1)
    c = pd.DataFrame({"customer_id": ["a"], "days_p50": [1.0], "days_p10": [0.0], "days_p90": [3.0],
                      "prob_order_30d": [0.9], "prob_order_60d": [0.95], "n_gaps": [1], "elapsed": [0.6],
                      "cycle_days": [1.2], "tail_prob": [0.05], "p_alive_timing": [0.9], "spend": [100.0],
                      "occasions": [2], "first_day": [pd.Timestamp("2011-01-05")], "cycle_regularity": [np.nan],
                      "last_day": [pd.Timestamp("2011-02-27")]})
    cols, schedule = customer_block(c, as_of, {}, "£", ColumnGlobals(long_days=0.5, vcol=None, v_min=0.0))
    assert cols["overdue_reason"][0].startswith("Orders every ~1 day (2 orders since Jan 2011); 1 day since the "
                                                "last; usual basket £50; ")
    # the score in the reason: the usual basket (no expected order value here) x P(still active) 0.9
    assert cols["overdue_score"][0] == pytest.approx(45.0)
    assert cols["overdue_reason"][0].endswith("P(still active) 90%; value at stake £45 (expected order £50 x P(still "
                                              "active))")
    assert schedule["reason"].tolist() == [("Long-cycle customer: orders every ~1 day; 1 day since the last, two "
                                            "thirds of the cycle passed: a non-sales contact now")]
    p = pd.DataFrame({"customer_id": ["a", "a"], "product_id": ["X", "Y"], "description": ["x", "y"],
                      "occasions": [2, 3], "cycle_days": [1.2, 20.0], "last_day": [pd.Timestamp("2011-02-27")] * 2,
                      "first_day": [pd.Timestamp("2011-01-05")] * 2, "days_p50": [1.0, 5.0], "quantity": [1.0, 4.0],
                      "elapsed": [1.0, 16.0], "probability": [0.5, 0.4]})
    reorders, _ = reorder_tables_from(p, as_of, 5)
    assert reorders.set_index("product_id")["reason"].to_dict() == {
        "X": "Usually re-orders X every ~1 day (2 times since Jan 2011); 1 day since the last; usual quantity 1",
        "Y": "Usually re-orders Y every ~20 days (3 times since Jan 2011); 16 days since the last; usual quantity 4"}


def test_cli_next_overdue_reorders(analysed, demo_store, tmp_path):
    runner = CliRunner()
    demo_store.con.execute("CHECKPOINT")  # the CLI opens its own connection: give it a copy of the store
    db = str(tmp_path / "copy.duckdb")
    shutil.copy(demo_store.path, db)
    res = runner.invoke(app, ["next", "--db", db, "--top", "5", "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == 5 and {"next_order_date", "next_order_p10", "next_order_p90", "prob_order_30d"} <= set(rows[0])
    res = runner.invoke(app, ["overdue", "--db", db, "--min-value", "100", "--format", "csv",
                              "--out", str(tmp_path / "o.csv")])
    assert res.exit_code == 0, res.output
    o = pd.read_csv(tmp_path / "o.csv")
    t, _ = analysed
    assert len(o) == ((t["overdue_score"] > 0) & (t["overdue_score"] >= 100)).sum()
    assert o["overdue_score"].is_monotonic_decreasing and o["overdue_reason"].notna().all()
    cust = t.loc[t["orders"] >= 5, "customer_id"].iloc[0]
    res = runner.invoke(app, ["reorders", "--db", db, "--customer", cust, "--format", "parquet",
                              "--out", str(tmp_path / "r.parquet")])
    assert res.exit_code == 0, res.output
    r = pd.read_parquet(tmp_path / "r.parquet")
    assert (r["customer_id"] == cust).all() and len(r) > 0
    res = runner.invoke(app, ["reorders", "--db", db, "--next-products", "--customer", cust, "--format", "json"])
    assert res.exit_code == 0 and [x["rank"] for x in json.loads(res.stdout)] == list(range(1, 6))
    res = runner.invoke(app, ["next", "--db", db, "--customer", "no-such-customer"])
    assert res.exit_code == 1 and "no such customer" in res.output
    # --format wins over the --out suffix (was refused: "cannot tell the format from the name")
    res = runner.invoke(app, ["overdue", "--db", db, "--format", "csv", "--out", str(tmp_path / "o.txt")])
    assert res.exit_code == 0, res.output
    txt = pd.read_csv(tmp_path / "o.txt")
    assert len(txt) == (t["overdue_score"] > 0).sum() and txt["overdue_score"].is_monotonic_decreasing
    res = runner.invoke(app, ["next", "--db", db, "--top", "3", "--out", str(tmp_path / "n.json")])
    assert res.exit_code == 0 and len(json.loads((tmp_path / "n.json").read_text())) == 3


def test_cli_top_out_of_range_is_a_usage_error(tmp_path):
    # `next/overdue/reorders --top -3` ended in a DuckDB traceback and --top 0 listed every row
    db = str(tmp_path / "none.duckdb")
    for command in ("next", "overdue", "reorders"):
        for n in ("0", "-3"):
            res = CliRunner().invoke(app, [command, "--top", n, "--db", db])
            assert res.exit_code == 2 and "--top" in res.output and "greater than or equal to 1" in res.output, res.output
            assert "Traceback" not in res.output


def test_store_without_products(tmp_path):
    # CDNOW has no product codes: the step also said "no product categories in the data (load them with `loyalist
    # ingest --kind products`)", and `reorders` told to run `loyalist analyze` (already run)
    store = open_store(tmp_path / "c.duckdb")
    ingest(store, [shared_file("cdnow", "CDNOW_sample.txt.gz")],
           Options(mapping={"customer_id": "column0", "order_date": "column2", "quantity": "column3",
                            "amount": "column4"}))
    as_of = dt.date(1998, 7, 1)
    summary = rfm_summary(store.table("transactions"), as_of).execute()
    fitted = fit_base(summary, "bgnbd")
    ctx = Context(store, as_of, Settings(), fitted, score(fitted, summary, Settings()), {"timing": {"backtest": False}},
                  [])
    cols = timing(ctx)
    assert len(cols) == len(summary) and cols["next_order_date"].notna().any()
    assert ctx.notes[0] == "timing: the data has no products, so no re-order cycles or next products"
    assert not any("categor" in n for n in ctx.notes), ctx.notes
    store.close()
    for args in (["reorders"], ["reorders", "--next-products"]):
        res = CliRunner().invoke(app, [*args, "--db", str(tmp_path / "c.duckdb")])
        assert res.exit_code == 1 and "the transactions carry no product codes, so there are no re-order cycles" in (
            res.output), res.output


def test_cli_after_an_analysis_without_timing_says_so(tmp_path):
    # one customer: analyze skipped the timing step, and next/overdue/reorders said "run `loyalist analyze`" again
    path = tmp_path / "one.csv"
    path.write_text("customer_id,order_date,product_id,quantity,amount\na,2011-01-03,X,1,10\na,2011-02-03,X,2,20\n")
    store = open_store(tmp_path / "one.duckdb")
    ingest(store, [path])
    write_frame(store, CUSTOMER_TABLE, pd.DataFrame({"customer_id": ["a"], "clv_12m": [1.0]}), replace=True)
    store.close()
    for command in ("next", "overdue", "reorders"):
        res = CliRunner().invoke(app, [command, "--db", str(tmp_path / "one.duckdb")])
        assert res.exit_code == 1 and "the last analysis skipped its timing step" in res.output, res.output


def test_mix_default_says_what_choosing_it_needs(demo_store):
    # "only 500 customers before ... to choose it on" when the customers were enough and the repeat ones too few
    mix, how = select_mix(demo_store.table("transactions"), dt.date(2010, 4, 1), "bgnbd")
    days = demo_purchases().query("day < '2010-01-01'").groupby("customer_id")["day"].nunique()
    assert (len(days), (days > 1).sum()) == (141, 25)
    assert mix == 0.5 and how == ("mix 0.5 (default: choosing it needs 100 customers before 2010-01-01, 30 of them "
                                  "with a repeat order; there are 141, 25 with a repeat order)")


def test_cli_before_analyze_says_what_to_run(tmp_path):
    db = str(tmp_path / "e.duckdb")
    open_store(db).close()
    res = CliRunner().invoke(app, ["overdue", "--db", db])
    assert res.exit_code == 1 and "loyalist analyze" in res.output


# --------------------------------------------------------------------------------------- evaluation
def test_evaluation_counts_the_holdout_independently(demo_store):
    cutoff, end = dt.date(2011, 6, 1), dt.date(2011, 12, 10)
    m = evaluate(demo_store.table("transactions"), cutoff, (30, 90), end=end)
    occ = _lines(until=None)
    before = set(occ.loc[occ["day"] < pd.Timestamp(cutoff), "customer_id"])
    orders = m[m["task"] == "orders"]
    assert (orders["customers"] == len(before)).all()
    for h in (30, 90):
        after = occ[(occ["day"] >= pd.Timestamp(cutoff)) & (occ["day"] < pd.Timestamp(cutoff) + pd.Timedelta(days=h))]
        expected = len(before & set(after["customer_id"]))
        assert (orders.loc[orders["horizon_days"] == h, "positives"] == expected).all()
    ours = orders[orders["method"] == "loyalist"]
    assert ours["auc"].between(0.6, 1).all() and ours["coverage_80"].between(0.6, 0.95).all()
    assert set(orders["method"]) == {"loyalist", "renewal_only", "bgnbd", "paretonbd", "mean_interval", "last_gap"}
    assert orders.loc[orders["method"] == "loyalist", "median_weight"].isin(MEDIAN_WEIGHTS).all()
    prods = m[m["task"] == "next_products"]
    assert set(prods["method"]) == {"loyalist", "most_frequent", "mean_interval", "last_interval"}
    assert prods["precision_at_5"].between(0, 1).all() and prods["recall_at_5"].between(0, 1).all()
    vs = versus_baselines(m)
    assert set(vs["metric"]) == {"auc", "mae_days", "precision_at_5"}
    row = vs[(vs["metric"] == "auc") & (vs["horizon_days"] == 90)].iloc[0]
    best = orders[(orders["horizon_days"] == 90) & ~orders["method"].isin(["loyalist", "renewal_only"])]["auc"].max()
    assert row["margin"] == pytest.approx(row["loyalist"] - best)


# --------------------------------------------------------------------------- rhythm per product category
def test_category_rhythm_on_a_store_with_categories(analysed, demo_store, tmp_path):
    from loyalist.insights.timing import write_category_rhythm

    _, ctx = analysed
    assert any("no product categories" in n for n in ctx.notes)  # the demo data has none: a note, no table
    ids = demo_store.table("transactions").product_id.execute().dropna().unique()
    cats = {"A": "candles", "B": "bags", "C": None}
    prods = pd.DataFrame({"product_id": ids, "description": None, "category": [cats["ABC"[len(p) % 3]] for p in ids],
                          "unit_cost": np.nan, "margin": np.nan})
    write_frame(demo_store, "products", prods, replace=True)
    notes: list[str] = []
    write_category_rhythm(Context(demo_store, AS_OF, ctx.settings, ctx.fitted, ctx.customers, {}, notes))
    got = demo_store.table("category_rhythm").execute().set_index(["customer_id", "category"])
    # Independent: the raw file's purchase lines, category by product code, customer x category x day.
    lines = _lines()
    cat = dict(zip(prods["product_id"].str.upper(), prods["category"]))
    lines["category"] = lines["StockCode"].str.upper().map(cat)
    days = lines.dropna(subset=["category"])[["customer_id", "category", "day"]].drop_duplicates()
    exp = _gap_stats(days, ["customer_id", "category"])
    assert len(got) == len(exp) and set(got.index.get_level_values("category")) == {"candles", "bags"}
    got = got.loc[exp.index]
    assert (got["times_bought"].to_numpy() == exp["occasions"].to_numpy()).all()
    last = days.groupby(["customer_id", "category"])["day"].max().loc[exp.index]
    assert (got["last_bought"].to_numpy() == last.to_numpy()).all()
    rep = exp["occasions"] >= 2
    assert got.loc[~rep.to_numpy(), "cycle_days"].isna().all() and got.loc[rep.to_numpy(), "cycle_days"].gt(0).all()
    # Regularity is 1 / (1 + CV) of the customer's own gaps in the category.
    d = days.sort_values(["customer_id", "category", "day"])
    d["gap"] = d.groupby(["customer_id", "category"])["day"].diff().dt.days
    stats = d.groupby(["customer_id", "category"])["gap"].agg(["mean", lambda x: x.std(ddof=0), "count"]).loc[exp.index]
    three = (stats["count"] >= 2).to_numpy()
    cv = (stats.iloc[:, 1] / stats["mean"]).to_numpy()[three]
    assert np.allclose(got["regularity"].to_numpy()[three], 1 / (1 + cv))
    assert got["regularity"].to_numpy()[~three].tolist() == [None] * (~three).sum() or \
        np.isnan(got["regularity"].to_numpy(float)[~three]).all()
    # Class against the category's median cycle; the next date one cycle after the last purchase.
    g = got[rep.to_numpy()].reset_index()
    med = g.groupby("category")["cycle_days"].transform("median")
    assert ((g["cycle_class"] == "long") == (g["cycle_days"] > med + 0.05)).mean() > 0.99
    lag = (g["next_date"] - g["last_bought"]).dt.days - g["cycle_days"]  # cycle_days is shown to 0.1 day
    assert lag.abs().le(0.55).all()
    demo_store.con.execute("CHECKPOINT")  # the CLI opens its own connection: give it a copy of the store
    db = str(tmp_path / "copy.duckdb")
    shutil.copy(demo_store.path, db)
    res = CliRunner().invoke(app, ["reorders", "--db", db, "--by-category", "--customer", g["customer_id"].iloc[0],
                                   "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {r["category"] for r in rows} <= {"candles", "bags"} and all("cycle_days" in r for r in rows)
    write_frame(demo_store, "products", prods.iloc[:0], replace=True)


# ------------------------------------------------------------------------ interval and inner split
def test_interval_note_survives_the_console(analysed):
    # `analyze` prints the notes through rich, whose markup took "[q(0.10), q(0.90)]" for a tag: the note read
    # "80% interval = , calibrated on ..."
    from rich.console import Console

    _, ctx = analysed
    console = Console(file=io.StringIO(), width=10_000)
    console.print(f"note: {next(n for n in ctx.notes if '80% interval' in n)}", highlight=False)
    m = re.search(r"80% interval = quantiles (0\.\d\d) to (0\.\d\d) of the next-order law \(calibrated on the "
                  r"orders of 2011-06-03 to 2011-09-01\)", console.file.getvalue())
    assert m, console.file.getvalue()
    assert float(m[1]) + float(m[2]) == pytest.approx(1.0) and float(m[1]) in LEVEL_GRID


def test_interval_note_says_when_the_level_is_not_calibrated(demo_store, monkeypatch):
    # no customer's interval decidable on the calibration window: the default level, said as such (the note
    # claimed "calibrated on the orders of ...")
    import loyalist.insights.timing as timing_module

    monkeypatch.setattr(timing_module, "INNER_ORIGINS", 1)
    monkeypatch.setattr(timing_module, "coverage_80", lambda *args: (np.nan, 0))
    stack = fit_stack(demo_store.table("transactions"), dt.date(2011, 6, 1), "bgnbd", with_products=False,
                      horizons=(30,))
    assert stack.level == 0.1
    assert ("80% interval = quantiles 0.10 to 0.90 of the next-order law (not calibrated: no customer's interval "
            "could be checked on the orders of 2011-05-02 to 2011-06-01)") in stack.how


def test_step_backtest_needs_the_data_up_to_the_as_of_date(demo_store):
    # analyze --as-of 2012-03-01: the held-out 90 days from 2011-12-02 had 7 days of data and were scored as 90
    from loyalist.insights.timing import check_backtest_window

    t = demo_store.table("transactions")
    first = pd.Timestamp("2009-12-01")
    with pytest.raises(ValueError, match=r"^it needs the 90 days to 2012-03-01, and the data ends 2011-12-09$"):
        check_backtest_window(t, first, dt.date(2011, 12, 2), dt.date(2012, 3, 1))
    check_backtest_window(t, first, dt.date(2011, 9, 11), dt.date(2011, 12, 10))  # the day after the last order
    with pytest.raises(ValueError, match="less than 90 days of history"):
        check_backtest_window(t, first, dt.date(2010, 1, 1), dt.date(2010, 4, 1))


def test_stack_after_the_data_without_warnings(demo_store):
    # analyze --as-of 2012-03-01 printed numpy's "Mean of empty slice" warnings: nobody ordered in the window
    # that weighs the days-to-next-order point
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # recorded: the step's own `except` would catch errors
        warnings.simplefilter("always")
        stack = fit_stack(demo_store.table("transactions"), dt.date(2012, 3, 1), "bgnbd", with_products=False,
                          horizons=(30,))
    assert stack is not None and stack.median_weight == {30: 1.0}
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]


def test_coverage_counts_only_intervals_decidable_from_the_prediction():
    p10 = np.array([0, 5, 10, 0, 2, 50.0])
    p90 = np.array([20, 30, 40, np.inf, 200, 90.0])
    t = np.array([3, np.nan, 12, np.nan, 1, 95.0])  # NaN: no order seen in the follow-up
    cov, n = coverage_80(p10, p90, t, follow=100.0)
    # Judged: the closed intervals ending before day 100 (rows 0, 1, 2, 5); row 1 never ordered: not covered.
    assert n == 4 and cov == pytest.approx(2 / 4)


def test_stack_is_fitted_on_data_before_the_cutoff_only(demo_store, monkeypatch):
    import loyalist.insights.timing as timing_module

    monkeypatch.setattr(timing_module, "INNER_ORIGINS", 1)  # one origin is enough to show what it sees
    t = demo_store.table("transactions")
    cutoff = dt.date(2011, 6, 1)
    full = fit_stack(t, cutoff, "bgnbd", with_products=False, horizons=(30,))
    cut = fit_stack(t.filter(t.order_date < dt.datetime(2011, 6, 1)), cutoff, "bgnbd", with_products=False,
                    horizons=(30,))
    assert full is not None and set(full.classifiers) == {30}
    for h in (30,):
        # Equal up to the optimiser's tolerance (the engine may return rows in another order).
        assert np.allclose(full.classifiers[h][-1].coef_, cut.classifiers[h][-1].coef_, atol=1e-3)
        assert full.median_weight[h] == cut.median_weight[h]
    assert full.level == cut.level
