"""Segments: behaviour features and RFM scores against plain pandas, planted micro-segments recovered,
stable re-runs, the segment tables' figures, and the `loyalist segments` command."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from sklearn.metrics import adjusted_rand_score, homogeneity_score
from typer.testing import CliRunner

from loyalist.cli import app
from loyalist.customer_base import Settings, fit_base, score
from loyalist.features import rfm_summary
from loyalist.features.behaviour import behaviour
from loyalist.ingest import ingest
from loyalist.insights import Context
from loyalist.insights.segments import describe, micro_segments, segments_step
from loyalist.insights.value import value_step
from loyalist.models.segments import (
    RFM_SEGMENTS,
    MicroSegments,
    cluster_names,
    quintile_score,
    rfm_scores,
    rfm_segment,
)
from loyalist.store import open_store, write_frame

DEMO = sorted((REPO / "data" / "demo").glob("*.csv.gz"))
AS_OF = dt.date(2011, 12, 10)


def run_my_steps(store, as_of, config=None):
    """Score the customer base and run the segments and value steps (only these), as `analyze` would."""
    summ = rfm_summary(store.table("transactions"), as_of).execute()
    fitted = fit_base(summ, "bgnbd")
    ctx = Context(store, as_of, Settings(), fitted, score(fitted, summ, Settings()), config or {}, [])
    for fn in (segments_step, value_step):
        added = fn(ctx)
        if added is not None:
            ctx.customers = ctx.customers.merge(added, on="customer_id", how="left")
    write_frame(store, "customer_insights", ctx.customers, replace=True)
    return ctx


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    path = tmp_path_factory.mktemp("seg") / "demo.duckdb"
    store = open_store(path)
    ingest(store, DEMO)
    ctx = run_my_steps(store, AS_OF)
    yield store, ctx
    store.close()


def _pandas_behaviour(tx: pd.DataFrame, as_of: dt.date) -> pd.DataFrame:
    """Independent pandas version of the behaviour features."""
    tx = tx[tx["order_date"] < pd.Timestamp(as_of)]
    base = ~tx["is_guest"] & ~tx["is_non_product"] & tx["customer_id"].notna()
    buy = tx[base & ~tx["is_cancellation"] & ~tx["is_return"]].copy()
    buy["day"] = buy["order_date"].dt.normalize()
    occ = buy.groupby(["customer_id", "day"])["amount"].sum(min_count=0).fillna(0).reset_index()
    occ = occ[occ["amount"] >= 0].sort_values(["customer_id", "day"])
    occ["gap"] = occ.groupby("customer_id")["day"].diff().dt.days
    g = occ.groupby("customer_id")
    out = pd.DataFrame({"orders": g.size(), "revenue": g["amount"].sum(), "cycle_days": g["gap"].mean(),
                        "gap_std": g["gap"].std(ddof=0), "gaps": g["gap"].count()})
    out["cycle_cv"] = np.where(out["gaps"] >= 2, out["gap_std"] / out["cycle_days"], np.nan)
    recent = pd.Timestamp(as_of) - pd.Timedelta(days=180)
    previous = pd.Timestamp(as_of) - pd.Timedelta(days=360)
    out["spend_recent"] = occ[occ["day"] >= recent].groupby("customer_id")["amount"].sum()
    out["spend_previous"] = occ[(occ["day"] >= previous) & (occ["day"] < recent)].groupby("customer_id")["amount"].sum()
    out[["spend_recent", "spend_previous"]] = out[["spend_recent", "spend_previous"]].fillna(0.0)
    both = out["spend_recent"] + out["spend_previous"]
    out["trend"] = np.where(both > 0, (out["spend_recent"] - out["spend_previous"]) / both.where(both > 0, 1), -1.0)
    out["products"] = buy[buy["amount"].fillna(0) >= 0].groupby("customer_id")["product_id"].nunique()
    back = tx[base & (tx["is_cancellation"] | tx["is_return"])]
    out["returned_value"] = back.groupby("customer_id")["amount"].apply(lambda a: a.abs().sum())
    out["returned_value"] = out["returned_value"].fillna(0.0)
    out["return_rate"] = out["returned_value"] / (out["revenue"] + out["returned_value"])
    out["days_since_last"] = (pd.Timestamp(as_of) - g["day"].max()).dt.days
    return out


def test_behaviour_features_match_pandas(demo):
    store, _ = demo
    as_of = dt.date(2011, 6, 1)
    got = behaviour(store.table("transactions"), as_of).execute().set_index("customer_id").sort_index()
    exp = _pandas_behaviour(store.table("transactions").execute(), as_of).sort_index()
    assert list(got.index) == list(exp.index)
    for col in ("orders", "revenue", "cycle_days", "cycle_cv", "products", "spend_recent", "spend_previous",
                "trend", "returned_value", "return_rate", "days_since_last"):
        np.testing.assert_allclose(got[col].to_numpy(float), exp[col].to_numpy(float), rtol=1e-9, atol=1e-9,
                                   err_msg=col)
    assert got["return_rate"].between(0, 1).all() and got["trend"].between(-1, 1).all()


def test_quintile_scores_match_pandas_qcut_without_ties():
    x = np.random.default_rng(3).lognormal(size=1000)
    expected = pd.qcut(x, 5, labels=[1, 2, 3, 4, 5]).astype(int)
    np.testing.assert_array_equal(quintile_score(x), expected)
    np.testing.assert_array_equal(quintile_score(x, higher_is_better=False), 6 - expected)


def test_rfm_scores_on_demo_match_pandas_ranks(demo):
    store, ctx = demo
    b = behaviour(store.table("transactions"), AS_OF).execute()
    r, f, m = rfm_scores(b["days_since_last"], b["orders"], b["revenue"])
    n = len(b)
    # Independent: 1 + floor(5 x share of customers strictly worse), with pandas' min-rank.
    for got, series in ((r, -b["days_since_last"]), (f, b["orders"]), (m, b["revenue"])):
        worse = series.rank(method="min").to_numpy() - 1
        np.testing.assert_array_equal(got, 1 + np.floor(5 * worse / n).astype(int))
    # Ties share a score; better values never score lower.
    for got, series in ((f, b["orders"]), (m, b["revenue"])):
        per_value = pd.Series(got).groupby(series.to_numpy()).nunique()
        assert (per_value == 1).all()
        order = np.argsort(series.to_numpy(), kind="stable")
        assert (np.diff(got[order]) >= 0).all()
    # One-order customers (a large tied block) all score F = 1; M quintiles hold ~20% each.
    assert set(f[b["orders"].to_numpy() == 1]) == {1}
    assert np.all(np.abs(np.bincount(m, minlength=6)[1:] - n / 5) <= 1)
    # The stored per-customer columns agree.
    stored = ctx.customers.set_index("customer_id")
    rfm = pd.Series([f"{a}{b_}{c}" for a, b_, c in zip(r, f, m)], index=b["customer_id"])
    assert (stored.loc[rfm.index, "rfm_score"] == rfm).all()


def test_rfm_segment_grid():
    cases = {(5, 5, 5): "champions", (1, 1, 1): "lost", (5, 1, 1): "new", (4, 1, 1): "promising",
             (1, 5, 5): "cannot lose them", (2, 4, 4): "at risk", (3, 3, 3): "need attention",
             (3, 1, 2): "about to sleep", (4, 5, 4): "loyal", (5, 2, 3): "potential loyalists",
             (2, 1, 2): "hibernating", (1, 2, 1): "hibernating"}
    r, f, m = (np.array([k[i] for k in cases]) for i in range(3))
    assert list(rfm_segment(r, f, m)) == list(cases.values())
    # Every cell of the 5x5x5 cube has a segment, and all eleven segments occur.
    grid = np.array(np.meshgrid(*[np.arange(1, 6)] * 3)).reshape(3, -1)
    assert set(rfm_segment(*grid)) == set(RFM_SEGMENTS)


def _planted(n_per: int = 150, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Four groups well apart in (value, cycle, regularity, breadth, trend, returns)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[9.0, 2.5, 0.4, 5.0, 0.3, 0.05],    # big, frequent, broad
                        [5.5, 5.0, 0.6, 2.0, -0.8, 0.05],   # small, rare, declining
                        [7.0, 4.0, 0.5, 3.5, 0.0, 0.55],    # returns-heavy
                        [6.5, 3.0, 0.2, 2.5, 0.9, 0.05]])   # growing, regular
    spread = np.array([0.3, 0.2, 0.08, 0.25, 0.1, 0.04])
    truth = np.repeat(np.arange(4), n_per)
    return centres[truth] + rng.normal(size=(len(truth), 6)) * spread, truth


def test_planted_segments_recovered_with_k_from_the_data():
    X, truth = _planted()
    model = MicroSegments(k_min=2, k_max=8, random_state=0).fit(X)
    assert model.k_ == 4
    assert adjusted_rand_score(truth, model.labels_) == pytest.approx(1.0)
    assert max(model.silhouettes_, key=model.silhouettes_.get) == 4
    names = cluster_names(model.centers_z_)
    assert len(set(names)) == 4
    by_truth = {t: names[np.bincount(model.labels_[truth == t]).argmax()] for t in range(4)}
    assert by_truth[0].startswith("high-value")
    assert "high-returns" in by_truth[2]
    assert "growing" in by_truth[3] or "regular" in by_truth[3]
    assert "low-value" in by_truth[1] or "declining" in by_truth[1] or "infrequent" in by_truth[1]
    # Same data, same seed: the same clusters and numbering; clusters are numbered by value, highest first.
    again = MicroSegments(k_min=2, k_max=8, random_state=0).fit(X)
    np.testing.assert_array_equal(model.labels_, again.labels_)
    assert np.all(np.diff(model.centers_z_[:, 0]) <= 0)
    np.testing.assert_array_equal(model.predict(X), model.labels_)


def _synthetic_transactions(seed: int = 7) -> pd.DataFrame:
    """Three planted kinds of customer, 2 years of history: big frequent broad buyers, small rare narrow
    buyers, and medium buyers who return a third of what they buy."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2022-01-01")
    rows = []
    kinds = {"big": (12, 40, 60.0, 0.0), "small": (120, 3, 8.0, 0.0), "returner": (40, 12, 25.0, 0.35)}
    for kind, (gap, n_products, price, ret) in kinds.items():
        for c in range(60):
            cid = f"{kind}-{c:03d}"
            day = start + pd.Timedelta(days=int(rng.integers(0, 30)))
            k = 0
            while day < pd.Timestamp("2023-12-20"):
                for p in rng.choice(n_products, size=min(n_products, 5), replace=False):
                    q = int(rng.integers(1, 10))
                    rows.append((cid, f"{cid}-{k}", day, f"{kind}-P{p}", q, price))
                    if ret and rng.random() < ret:
                        rows.append((cid, f"C{cid}-{k}", day + pd.Timedelta(days=3), f"{kind}-P{p}", -q, price))
                k += 1
                day += pd.Timedelta(days=max(1, int(rng.normal(gap, gap * 0.15))))
    df = pd.DataFrame(rows, columns=["customer_id", "order_id", "order_date", "product_id", "quantity", "unit_price"])
    df["amount"] = df["quantity"] * df["unit_price"]
    ret = df["quantity"] < 0
    df = df.assign(description=df["product_id"], currency="GBP", country="UK", channel=None, is_guest=False,
                   is_cancellation=ret, is_return=ret, is_non_product=False, price_issue=None, is_future=False,
                   line_hash=np.arange(len(df), dtype=np.uint64), ingest_id=1, file_id=1,
                   source_row=np.arange(len(df)))
    return df


def test_planted_customer_kinds_become_segments(tmp_path):
    store = open_store(tmp_path / "syn.duckdb")
    tx = _synthetic_transactions()
    write_frame(store, "transactions", tx, replace=False)
    ctx = run_my_steps(store, dt.date(2024, 1, 1), {"segments": {"k_min": 2}})
    seg = ctx.customers.set_index("customer_id")["segment"]
    kind = seg.index.str.split("-").str[0]
    main = seg.groupby(kind).agg(lambda s: s.value_counts().index[0])
    purity = seg.groupby(kind).agg(lambda s: s.value_counts().iloc[0] / len(s))
    # No segment mixes two planted kinds; the big buyers and the returners are each found whole. (The small
    # buyers may be split further: with ~6 orders each, their spend trend is noisy enough to separate them.)
    assert homogeneity_score(kind, seg.to_numpy()) == pytest.approx(1.0)
    assert purity["big"] >= 0.95 and purity["returner"] >= 0.95, purity
    assert main.nunique() == 3
    assert "frequent" in main["big"] or "high-value" in main["big"]
    assert "high-returns" in main["returner"]
    assert "low-value" in " ".join(seg[kind == "small"].unique())
    table = store.table("segments").execute()
    assert table["customers"].sum() == len(seg) == 180
    assert table["revenue_share"].sum() == pytest.approx(1.0)
    store.close()


def test_segment_tables_figures_match_the_customers(demo):
    store, ctx = demo
    cust = ctx.customers
    b = behaviour(store.table("transactions"), AS_OF).execute()
    full = cust.merge(b[["customer_id", "spend_recent", "spend_previous"]], on="customer_id")
    assert cust["segment"].notna().all() and set(cust["rfm_segment"]) <= set(RFM_SEGMENTS)
    for table, key in (("segments", "segment"), ("rfm_segments", "rfm_segment")):
        t = store.table(table).execute().set_index("segment")
        assert list(t.columns) == ["description", "customers", "revenue_share", "clv_share", "avg_p_alive",
                                   "churn_risk", "growth", "suggested_action"]
        assert t.index.is_unique and t["customers"].sum() == len(cust)
        assert t["revenue_share"].sum() == pytest.approx(1.0) and t["clv_share"].sum() == pytest.approx(1.0)
        g = full.groupby(key)
        np.testing.assert_allclose(t.loc[g.size().index, "customers"], g.size())
        np.testing.assert_allclose(t.loc[g.size().index, "revenue_share"], g["revenue"].sum() / cust["revenue"].sum())
        np.testing.assert_allclose(t.loc[g.size().index, "avg_p_alive"], g["p_alive"].mean())
        np.testing.assert_allclose(t.loc[g.size().index, "churn_risk"], g["p_alive"].apply(lambda p: (p < 0.5).mean()))
        growth = g["spend_recent"].sum() / g["spend_previous"].sum().replace(0, np.nan) - 1
        np.testing.assert_allclose(t.loc[g.size().index, "growth"], growth)
        assert t["description"].str.contains("customer").all() and t["suggested_action"].str.len().gt(10).all()
    micro = store.table("segments").execute()
    assert {"one-time, recent", "one-time, lapsed"} <= set(micro["segment"])
    assert (cust.loc[cust["orders"] == 1, "segment"].str.startswith("one-time")).all()
    assert not (cust.loc[cust["orders"] > 1, "segment"].str.startswith("one-time")).any()
    assert any(n.startswith("segments:") and "silhouette" in n for n in ctx.notes)


def test_micro_segments_stable_across_runs_and_row_order(demo):
    store, ctx = demo
    b = behaviour(store.table("transactions"), AS_OF).execute()
    first, desc, _, model = micro_segments(b, {})
    shuffled = b.sample(frac=1.0, random_state=5)
    second, desc2, _, model2 = micro_segments(shuffled, {})
    a = pd.Series(first.to_numpy(), index=b.loc[first.index, "customer_id"]).sort_index()
    c = pd.Series(second.to_numpy(), index=shuffled.loc[second.index, "customer_id"]).sort_index()
    assert (a == c).all() and desc == desc2 and model.k_ == model2.k_
    # and the stored column is the same result
    stored = ctx.customers.set_index("customer_id")["segment"].sort_index()
    assert (stored.loc[a.index] == a).all()


def test_cli_segments(demo, tmp_path):
    store, _ = demo
    store.con.execute("CHECKPOINT")
    db = str(tmp_path / "copy.duckdb")  # the fixture holds the store open read-write
    shutil.copy(store.path, db)
    runner = CliRunner()
    res = runner.invoke(app, ["segments", "--db", db])
    assert res.exit_code == 0, res.output
    assert "micro-segments" in res.stdout and "one-time, lapsed" in res.stdout
    res = runner.invoke(app, ["segments", "--rfm", "--db", db, "--format", "json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert {r["segment"] for r in rows} <= set(RFM_SEGMENTS) and sum(r["customers"] for r in rows) == 789
    res = runner.invoke(app, ["segments", "--rfm", "--customers", "Champions", "--db", db, "--format", "csv"])
    assert res.exit_code == 0, res.output
    members = pd.read_csv(pd.io.common.StringIO(res.stdout), dtype={"customer_id": str})
    assert len(members) == next(r["customers"] for r in rows if r["segment"] == "champions")
    assert (members["rfm_segment"] == "champions").all()
    assert members["clv_12m"].is_monotonic_decreasing
    b = behaviour(store.table("transactions"), AS_OF).execute().set_index("customer_id")
    assert (members["days_since_last"].to_numpy() == b.loc[members["customer_id"], "days_since_last"].to_numpy()).all()
    res = runner.invoke(app, ["segments", "--customers", "no such thing", "--db", db])
    assert res.exit_code == 1 and "no such segment" in res.output
    names = store.table("segments").execute()["segment"]
    assert "; ".join(sorted(names)) in " ".join(res.output.split())  # the names hold commas: "; " between them
    res = runner.invoke(app, ["segments", "--db", db, "--out", str(tmp_path / "seg.xlsx")])
    assert res.exit_code == 0 and (tmp_path / "seg.xlsx").stat().st_size > 1000


def test_describe_counts_in_words():
    # a median of 1.4 orders read "1 orders"; 1 day, 1 product were "1 days", "1 distinct products"
    row = pd.Series({"customers": 1, "med_revenue": 120.0, "med_orders": 1.4, "med_cycle": 1.2, "med_cv": 0.5,
                     "med_products": 1.0, "spend_previous": 0.0, "spend_recent": 120.0, "returned_value": 0.0,
                     "revenue": 120.0, "med_days": 0.8})
    text = describe(row)
    assert text.startswith("1 customer; median revenue 120 over 1 order; orders every ~1 day; ")
    assert "; 1 distinct product; " in text and text.endswith("; last order a median 1 day ago")
    more = describe(pd.Series({**row, "customers": 3, "med_orders": 2.6, "med_cycle": 30.2, "med_products": 4,
                               "med_days": 45.0}))
    assert more.startswith("3 customers; median revenue 120 over 3 orders; orders every ~30 days; ")
    assert "; 4 distinct products; " in more and more.endswith("; last order a median 45 days ago")
    # no product codes (CDNOW): no "0 distinct products"
    assert "product" not in describe(pd.Series({**row, "med_products": 0.0}))
