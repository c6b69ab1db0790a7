"""Cross-sell gaps: the sparse recommender against a dense reference, planted look-alike groups, exclusions
checked independently from the raw files, cold start, the held-out evaluation and the CLI."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from conftest import DEMO, demo_lines
from typer.testing import CliRunner

from loyalist.cli import app
from loyalist.evaluation.crosssell import evaluate_cutoff, ranking_metrics
from loyalist.features import baskets
from loyalist.ingest import ingest
from loyalist.insights import Context
from loyalist.insights.crosssell import compute_gaps, crosssell_step, prepare
from loyalist.models.crosssell import LookAlikeRecommender, top_n_sparse
from loyalist.store import has_table, open_store

# ---------------------------------------------------------------- the numeric core against dense references

def test_top_n_sparse_matches_a_dense_sort():
    rng = np.random.default_rng(1)
    for density, n in ((0.05, 3), (0.6, 5), (0.9, 10)):
        m = sp.random(40, 300, density=density, format="csr", random_state=rng)
        m.data = np.round(m.data * 20) / 20 + 0.05  # many ties: lower column first
        items, scores = top_n_sparse(m, n)
        dense = m.toarray()
        for r in range(dense.shape[0]):
            nz = np.flatnonzero(dense[r])
            want = nz[np.lexsort((nz, -dense[r, nz]))][:n]
            assert items[r, :want.size].tolist() == want.tolist()
            assert (items[r, want.size:] == -1).all()
            np.testing.assert_allclose(scores[r, :want.size], dense[r, want])


def _dense_reference(strength: np.ndarray, k: int, k1: float, b: float):
    """Plain numpy BM25 (Robertson & Zaragoza) + cosine + top-k look-alikes, written independently."""
    n = strength.shape[0]
    df = (strength > 0).sum(axis=0)
    idf = np.log(n) - np.log1p(df)
    lengths = strength.sum(axis=1)
    norm = (1 - b) + b * lengths / lengths.mean()
    raw = np.where(strength > 0, strength * (k1 + 1) / (k1 * norm[:, None] + strength) * idf, 0.0)
    w = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    sim = w @ w.T
    np.fill_diagonal(sim, -np.inf)
    neighbours = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return sim, neighbours, raw


def _dense_item_part(raw: np.ndarray, bought: np.ndarray, k: int) -> np.ndarray:
    """Product-to-product part: item(u, i) = sum over u's products j among the k nearest of product i (largest
    dot products of the weighted buyer columns) of that dot product."""
    t = raw.T @ raw
    np.fill_diagonal(t, 0)
    keep = np.zeros_like(t, bool)
    np.put_along_axis(keep, np.argsort(-t, axis=1, kind="stable")[:, :k], True, axis=1)
    return bought.astype(float) @ np.where(keep & (t > 0), t, 0.0).T


def test_recommender_matches_a_dense_reference_with_exclusions():
    rng = np.random.default_rng(7)
    n, m, k = 60, 40, 8
    strength = np.where(rng.random((n, m)) < 0.25, rng.random((n, m)) * 5 + 0.1, 0.0)
    strength[np.arange(n), rng.integers(0, m, n)] = 1.0  # nobody is empty
    exclude = (strength > 0) | (rng.random((n, m)) < 0.05)  # bought, or "returned"
    allowed = np.ones(m, bool)
    allowed[[3, 17]] = False
    model = LookAlikeRecommender(n_neighbors=k, popularity_weight=0.0, item_weight=0.3, item_neighbors=6,
                                 chunk_size=7, num_threads=1)
    model.fit(sp.csr_matrix(strength))
    g = model.recommend(5, exclude=sp.csr_matrix(exclude.astype(float)), allowed=allowed)
    sim, neighbours, raw = _dense_reference(strength, k, model.bm25_k1, model.bm25_b)
    bought = strength > 0
    items_part = _dense_item_part(raw, bought, 6)
    for u in range(n):
        nb = neighbours[u]
        assert set(model.similarity_[u].indices) == set(nb)
        user = (sim[u, nb][:, None] * bought[nb]).sum(axis=0)
        score = 0.7 * user / user.max() + 0.3 * items_part[u] / items_part[u].max()
        score[exclude[u] | ~allowed] = 0
        cand = np.flatnonzero(score > 0)
        want = cand[np.lexsort((cand, -score[cand]))][:5]
        got = g.items[u][g.items[u] >= 0]
        assert got.tolist() == want.tolist()
        np.testing.assert_allclose(g.scores[u][: got.size], score[want], rtol=1e-9)
        assert g.lookalikes_buying[u][: got.size].tolist() == bought[nb][:, want].sum(axis=0).tolist()
        assert not exclude[u, got].any() and allowed[got].all()


def test_attributes_give_look_alikes_to_customers_without_purchases():
    # Two industries with disjoint ranges; the last customer bought nothing but is in industry 1.
    strength = sp.lil_matrix((21, 10))
    for u in range(10):
        strength[u, [0, 1, 2, 3] if u % 2 else [0, 1, 2, 4]] = 1
    for u in range(10, 20):
        strength[u, [5, 6, 7, 8] if u % 2 else [5, 6, 7, 9]] = 1
    industry = np.r_[np.zeros(10), np.ones(11)].astype(int)
    attrs = sp.csr_matrix((np.ones(21), (np.arange(21), industry)), shape=(21, 2))
    model = LookAlikeRecommender(n_neighbors=5, num_threads=1).fit(strength.tocsr(), attributes=attrs)
    assert set(model.similarity_[20].indices) <= set(range(10, 20))
    g = model.recommend(3)
    assert set(g.items[20]) <= {5, 6, 7, 8, 9}
    assert g.lookalikes_buying[20, 0] == 5


def test_recommender_validates_its_inputs():
    with pytest.raises(ValueError):
        LookAlikeRecommender(n_neighbors=0).fit(sp.csr_matrix(np.eye(3)))
    with pytest.raises(ValueError):
        LookAlikeRecommender().fit(sp.csr_matrix(-np.eye(3)))
    with pytest.raises(TypeError):
        LookAlikeRecommender().fit(np.eye(3))
    with pytest.raises(RuntimeError):
        LookAlikeRecommender().recommend(3)


def test_ranking_metrics_by_hand():
    top = np.array([[4, 2, 9], [1, -1, -1]])
    target = sp.csr_matrix(np.array([[0, 0, 1, 0, 1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0, 0, 0, 0, 0]], float))
    m = ranking_metrics(top, target, np.array([3, 1]), 3)  # the first customer also bought an unknown product
    assert m["recall_at_k"] == pytest.approx((2 / 3 + 0) / 2)
    assert m["ndcg_at_k"] == pytest.approx((1 + 1 / np.log2(3)) / (1 + 1 / np.log2(3) + 1 / np.log2(4)) / 2)
    assert m["hit_rate"] == 0.5 and m["customers"] == 2


# ---------------------------------------------------------------- planted look-alike groups through the store

GROUPS = "ABC"
AS_OF = dt.date(2011, 7, 1)


def _planted_lines() -> pd.DataFrame:
    """Three groups of 24 customers; each buys from its own group's 15 products. Planted traps: a returned
    product, postage on every order, a discontinued product, a new product, a one-order customer and a
    customer whose only product nobody else buys."""
    rng = np.random.default_rng(3)
    rows = []
    inv = 500000

    def order(cust, day, codes, qty=6, price=1.25):
        nonlocal inv
        inv += 1
        for code in codes:
            rows.append((str(inv), code, f"ITEM {code}", qty, day, price, cust))
        rows.append((str(inv), "POST", "POSTAGE", 1, day, 18.0, cust))

    for g in GROUPS:
        products = [f"P{g}{i:02d}" for i in range(1, 16)]
        for c in range(24):
            cust = f"{ord(g)}{c:03d}"
            for o in range(3):
                day = dt.datetime(2011, 1, 15) + dt.timedelta(days=int(rng.integers(0, 150)), hours=10)
                order(cust, day, list(rng.choice(products, 6, replace=False)))
    # Discontinued: PB99 sold to most of group B in early January only.
    for c in range(18):
        order(f"{ord('B')}{c:03d}", dt.datetime(2011, 1, 3, 9), ["PB99"])
    # New product: PA50 bought in the last two weeks by 12 group-A customers.
    for c in range(12):
        order(f"{ord('A')}{c:03d}", dt.datetime(2011, 6, 20, 9), ["PA50"])
    # Returned, never bought: customer 65000 returns PA01 (a credit note) without a purchase in the data.
    rows[:] = [r for r in rows if not (r[6] == "65000" and r[1] == "PA01")]
    rows.append(("C600001", "PA01", "ITEM PA01", -2, dt.datetime(2011, 3, 1, 12), 1.25, "65000"))
    # A one-order customer (one group-C product) and a customer whose only product is unique to them.
    order("99001", dt.datetime(2011, 6, 1, 9), ["PC03"])
    order("99002", dt.datetime(2011, 6, 2, 9), ["ZZ001"])
    return pd.DataFrame(rows, columns=["Invoice", "StockCode", "Description", "Quantity", "InvoiceDate", "Price",
                                       "Customer ID"]).assign(Country="United Kingdom")


def _group(customer: str) -> str | None:
    return chr(int(customer[:2])) if customer[:2] in ("65", "66", "67") else None


def _planted_store(folder: Path, lines: pd.DataFrame):
    path = folder / "planted.csv"
    lines.to_csv(path, index=False, date_format="%Y-%m-%d %H:%M:%S")
    store = open_store(folder / "planted.duckdb")
    ingest(store, [path])
    return store


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    lines = _planted_lines()
    store = _planted_store(tmp_path_factory.mktemp("planted"), lines)
    yield store, lines
    store.close()


def test_planted_groups_are_found_and_exclusions_hold(planted):
    store, lines = planted
    gaps = compute_gaps(store, AS_OF, {"crosssell": {"n_neighbors": 10, "active_days": 60, "backtest": False}})
    # Independent sets from the raw lines.
    purchases = lines[(lines["Quantity"] > 0) & ~lines["Invoice"].str.startswith("C") & (lines["StockCode"] != "POST")]
    bought = set(zip(purchases["Customer ID"], purchases["StockCode"]))
    returned = set(zip(lines.loc[lines["Quantity"] < 0, "Customer ID"], lines.loc[lines["Quantity"] < 0, "StockCode"]))
    pairs = set(zip(gaps["customer_id"], gaps["product_id"]))
    assert not pairs & bought
    assert not pairs & returned
    assert "POST" not in set(gaps["product_id"])
    assert "PB99" not in set(gaps["product_id"])  # not sold in the last 60 days
    # The returned product is what the look-alikes of 65000 buy most: only the exclusion keeps it out.
    assert ("65000", "PA01") in returned and ("65000", "PA01") not in bought
    data = prepare(store.table("transactions"), AS_OF, None, {"active_days": 60})
    model = LookAlikeRecommender(n_neighbors=10, num_threads=1).fit(data.strength, data.votes)
    u = list(data.customers).index("65000")
    unguarded = model.recommend(10, exclude=(data.strength > 0), allowed=data.allowed, customers=[u])
    assert "PA01" in data.products[unguarded.items[0][unguarded.items[0] >= 0]]
    # Every group customer's look-alike gaps come from their own group; other groups' products only fill
    # the list afterwards, on popularity.
    g = gaps[gaps["customer_id"].map(_group).notna()]
    own = g["product_id"].str[1] == g["customer_id"].map(_group)
    assert (own == (g["lookalikes_buying"] > 0)).all()
    last_own = g[own].groupby("customer_id")["rank"].max()
    first_fill = g[~own].groupby("customer_id")["rank"].min()
    assert (last_own < first_fill.reindex(last_own.index).fillna(99)).all()
    # The new product reaches the group-A customers who lack it, on look-alike evidence.
    lacking = [f"65{c:03d}" for c in range(12, 24)]
    new = g[(g["product_id"] == "PA50") & g["customer_id"].isin(lacking)]
    assert len(new) >= 10 and (new["lookalikes_buying"] > 0).all()
    # Ranks are 1..n per customer, at most 10, and the evidence states the counts of its columns.
    assert (gaps.groupby("customer_id")["rank"].apply(lambda r: list(r) == list(range(1, len(r) + 1)))).all()
    assert gaps["rank"].max() <= 10
    row = g.iloc[0]
    assert row["evidence"].startswith(f"bought by {row['lookalikes_buying']} of this customer's {row['lookalikes']} "
                                      f"nearest look-alikes ({round(100 * row['lookalikes_buying'] / row['lookalikes'])}%)"
                                      f"; this customer never has; typical order 6 units at 1.25")


def test_planted_look_alike_counts_are_independent_neighbour_counts(planted):
    store, lines = planted
    data = prepare(store.table("transactions"), AS_OF, None, {"n_neighbors": 10})
    model = LookAlikeRecommender(n_neighbors=10, num_threads=1).fit(data.strength, data.votes)
    g = model.recommend(5, exclude=data.exclude, allowed=data.allowed)
    purchases = lines[(lines["Quantity"] > 0) & (lines["StockCode"] != "POST")]
    bought = purchases.groupby("Customer ID")["StockCode"].apply(set)
    for u in range(0, len(data.customers), 7):
        neighbours = data.customers[model.similarity_[u].indices]
        for j in np.flatnonzero(g.items[u] >= 0):
            product = data.products[g.items[u, j]]
            assert g.lookalikes_buying[u, j] == sum(product in bought[v] for v in neighbours)


def test_cold_start_customers_get_full_lists(planted):
    store, _ = planted
    gaps = compute_gaps(store, AS_OF, {"crosssell": {"n_neighbors": 10, "backtest": False}})
    one_order = gaps[gaps["customer_id"] == "99001"]
    assert len(one_order) == 10 and set(one_order["product_id"].str[:2].head(5)) == {"PC"}
    unique = gaps[gaps["customer_id"] == "99002"]
    assert len(unique) == 10 and (unique["lookalikes_buying"] == 0).all()
    assert unique["evidence"].str.startswith("none of this customer's look-alikes bought it; suggested for its "
                                             "popularity: bought by ").all()
    # The popularity fill follows recent buyers (last 90 days), most first.
    recent = baskets.purchase_lines(store.table("transactions"), AS_OF, AS_OF - dt.timedelta(days=90))
    buyers = recent.group_by("product_id").aggregate(n=recent.customer_id.nunique()).execute()
    counts = buyers.set_index("product_id")["n"].reindex(unique["product_id"]).to_numpy()
    assert (np.diff(counts) <= 0).all()


def test_categories_and_customer_attributes(tmp_path):
    copy = _planted_store(tmp_path, _planted_lines())
    copy.con.execute("INSERT INTO products (product_id, category) "
                     "SELECT DISTINCT product_id, 'cat ' || substr(product_id, 2, 1) FROM transactions")
    copy.con.execute("INSERT INTO customers (customer_id, industry) VALUES ('99999', 'florist')")
    copy.con.execute("INSERT INTO customers (customer_id, industry) "
                     "SELECT DISTINCT customer_id, 'florist' FROM transactions WHERE customer_id LIKE '67%'")
    gaps = compute_gaps(copy, AS_OF, {"crosssell": {"n_neighbors": 10, "backtest": False}})
    copy.close()
    assert set(gaps["category"].dropna().str[:4]) == {"cat "}
    # Customer 99001 bought only from category C: gaps from C are not new categories, others are.
    c = gaps[gaps["customer_id"] == "99001"]
    assert (c["new_category"] == (c["category"] != "cat C")).all()
    assert c.loc[c["new_category"], "evidence"].str.contains("a category this customer has never bought from").all()
    # A customer with no purchase yet gets the gaps of their industry's look-alikes (group C).
    fresh = gaps[gaps["customer_id"] == "99999"]
    assert len(fresh) == 10 and (fresh.head(5)["product_id"].str[:2] == "PC").all()


# ---------------------------------------------------------------- the bundled demo data, checked against pandas

def _raw(paths: list[Path]) -> pd.DataFrame:
    df = demo_lines(paths)
    df = df[df["customer_id"].notna()].copy()
    df["purchase"] = ~df["cancelled"] & (df["Quantity"] > 0) & ~df["non_product"]
    df["returned"] = (df["cancelled"] | (df["Quantity"] < 0)) & ~df["non_product"]
    return df


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    store = open_store(tmp_path_factory.mktemp("demo") / "demo.duckdb")
    ingest(store, DEMO)
    yield store, _raw(DEMO)
    store.close()


def test_demo_gaps_exclude_bought_returned_and_non_products(demo):
    store, raw = demo
    as_of = dt.date(2011, 6, 1)
    gaps = compute_gaps(store, as_of, {"crosssell": {"backtest": False}})
    before = raw[raw["InvoiceDate"] < pd.Timestamp(as_of)]
    buyers = before.loc[before["purchase"], "customer_id"].unique()
    assert set(gaps["customer_id"]) == set(buyers)
    assert (gaps.groupby("customer_id").size() == 10).all()
    pairs = pd.MultiIndex.from_frame(gaps[["customer_id", "product_id"]])
    bought = pd.MultiIndex.from_frame(before.loc[before["purchase"], ["customer_id", "StockCode"]].drop_duplicates())
    returned = pd.MultiIndex.from_frame(before.loc[before["returned"], ["customer_id", "StockCode"]].drop_duplicates())
    assert not pairs.isin(bought).any()
    assert not pairs.isin(returned).any()
    assert not gaps["product_id"].isin(raw.loc[raw["non_product"], "StockCode"]).any()
    # Typical order: the median units and the median paid price of the product's purchase lines.
    lines = before[before["purchase"]]
    med_q = lines.groupby("StockCode")["Quantity"].median()
    med_p = lines[lines["Price"] > 0].groupby("StockCode")["Price"].median()
    sample = gaps.drop_duplicates("product_id").head(50)
    np.testing.assert_allclose(sample["typical_quantity"], med_q.reindex(sample["product_id"]).to_numpy())
    np.testing.assert_allclose(sample["typical_price"], med_p.reindex(sample["product_id"]).to_numpy())
    shares = gaps["evidence"].str.extract(r"^bought by (\d+) of this customer's (\d+) nearest look-alikes \((\d+)%\)")
    assert shares.notna().all().all()
    assert (shares[0].astype(int) == gaps["lookalikes_buying"]).all()
    assert (shares[1].astype(int) == gaps["lookalikes"]).all()


def test_demo_backtest_counts_targets_independently_and_beats_popularity(demo):
    store, raw = demo
    cutoff, horizon = dt.date(2011, 9, 1), 90
    m = evaluate_cutoff(store.table("transactions"), cutoff, horizon, 10, None, ("lookalikes", "popularity"))
    p = raw[raw["purchase"]]
    before = p[p["InvoiceDate"] < pd.Timestamp(cutoff)]
    window = p[(p["InvoiceDate"] >= pd.Timestamp(cutoff))
               & (p["InvoiceDate"] < pd.Timestamp(cutoff + dt.timedelta(days=horizon)))]
    known = set(before["customer_id"])
    had = set(zip(before["customer_id"], before["StockCode"]))
    new = {(c, s) for c, s in zip(window["customer_id"], window["StockCode"]) if c in known and (c, s) not in had}
    r = m.set_index("method")
    assert (r["targets"] == len(new)).all()
    assert (r["customers"] == len({c for c, _ in new})).all()
    # Popularity recall@10 recomputed in pandas: most distinct buyers before the cutoff, ties by product id.
    pop = before.groupby("StockCode")["customer_id"].nunique().reset_index()
    order = pop.sort_values(["customer_id", "StockCode"], ascending=[False, True])["StockCode"].tolist()
    returned = raw[raw["returned"] & (raw["InvoiceDate"] < pd.Timestamp(cutoff))]
    excluded = had | set(zip(returned["customer_id"], returned["StockCode"]))
    targets = pd.Series(list(new)).map(lambda x: x[0]).value_counts()
    new_by = {}
    for c, s in new:
        new_by.setdefault(c, set()).add(s)
    recalls = []
    for c, items in new_by.items():
        top = [s for s in order if (c, s) not in excluded][:10]
        recalls.append(len(items & set(top)) / targets[c])
    assert r.loc["popularity", "recall_at_k"] == pytest.approx(np.mean(recalls))
    assert r.loc["lookalikes", "recall_at_k"] > 1.5 * r.loc["popularity", "recall_at_k"]


def test_held_out_note_when_the_window_runs_past_the_data(demo):
    # analyze --as-of 2012-03-01: the 90 held-out days from 2011-12-02 had 7 days of data, yet the note said
    # "held out at 2011-12-02 (90 days, ...)" with its recall
    from loyalist.insights.crosssell import held_out_note, settings

    store, _ = demo
    rows = store.table("crosssell_backtest").count().execute() if has_table(store, "crosssell_backtest") else 0
    note = held_out_note(store, dt.date(2012, 3, 1), settings({}))
    assert note == ("cross-sell gaps: no held-out check possible (it needs the 90 days from 2011-12-02 to "
                    "2012-03-01, and the data ends 2011-12-09)")
    assert (store.table("crosssell_backtest").count().execute() if has_table(store, "crosssell_backtest") else 0) == rows


def test_gaps_without_products_is_a_clear_error(tmp_path):
    # CDNOW-like data: `gaps` printed "held-out accuracy: not measured yet (run `loyalist analyze` ...)" and an
    # empty table
    path = tmp_path / "np.csv"
    path.write_text("customer_id,order_date,amount\na,2011-01-03,10\nb,2011-02-03,12\na,2011-03-03,9\n")
    store = open_store(tmp_path / "np.duckdb")
    ingest(store, [path])
    store.close()
    res = CliRunner().invoke(app, ["gaps", "--db", str(tmp_path / "np.duckdb")])
    assert res.exit_code == 1 and "the transactions carry no product codes, so there are no cross-sell gaps" in (
        res.output), res.output
    res = CliRunner().invoke(app, ["gaps-backtest", "--db", str(tmp_path / "np.duckdb")])  # was a traceback
    assert res.exit_code == 1 and "no product codes, so there are no cross-sell gaps to backtest" in res.output, (
        res.output)
    res = CliRunner().invoke(app, ["gaps-backtest", "--db", str(tmp_path / "typo.duckdb")])  # was created, empty
    assert res.exit_code == 1 and not (tmp_path / "typo.duckdb").exists(), res.output


def test_als_baseline_is_deterministic(demo):
    store, _ = demo
    runs = [evaluate_cutoff(store.table("transactions"), dt.date(2011, 9, 1), 90, 10, None, ("als_default",))
            for _ in range(2)]
    assert runs[0]["recall_at_k"].iloc[0] == runs[1]["recall_at_k"].iloc[0] > 0


def test_analysis_step_writes_the_table_and_per_customer_columns(demo):
    store, _ = demo
    as_of = dt.date(2011, 12, 10)
    customers = pd.DataFrame({"customer_id": ["12347", "12348", "nobody"]})
    ctx = Context(store, as_of, None, None, customers, {"crosssell": {"top": 5}}, [])
    added = crosssell_step(ctx)
    gaps = store.table("crosssell_gaps").execute()
    assert has_table(store, "crosssell_backtest") and any("held out at 2011-09-11" in n for n in ctx.notes)
    first = gaps[gaps["rank"] == 1].set_index("customer_id")["product_id"]
    row = added.set_index("customer_id")
    assert row.loc["12348", "top_gap_product"] == first["12348"]
    assert row.loc["12348", "gaps_count"] == 5 and row.loc["nobody", "gaps_count"] == 0
    assert pd.isna(row.loc["nobody", "top_gap_product"])
    assert list(gaps.columns[:6]) == ["customer_id", "rank", "product_id", "description", "score", "evidence"]


def test_cli_gaps_and_backtest(tmp_path):
    db = str(tmp_path / "cli.duckdb")
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", *map(str, DEMO), "--db", db]).exit_code == 0
    res = runner.invoke(app, ["gaps", "--db", db, "--customer", "12348", "--top", "3"])
    assert res.exit_code == 0, res.output
    assert "nearest look-alikes" in res.output and "cross-sell gaps of customer 12348" in res.output
    out = tmp_path / "gaps.json"
    res = runner.invoke(app, ["gaps", "--db", db, "--top", "2", "--format", "json", "--out", str(out)])
    assert res.exit_code == 0, res.output
    exported = pd.DataFrame(json.loads(out.read_text()))
    assert exported["rank"].max() == 2 and exported.groupby("customer_id").size().max() == 2
    res = runner.invoke(app, ["gaps", "--db", db, "--customer", "nope"])
    assert res.exit_code == 1 and "no gaps for this customer" in res.output
    res = runner.invoke(app, ["gaps-backtest", "--db", db, "--cutoff", "2011-09-01", "--no-als", "--json"])
    assert res.exit_code == 0, res.output
    figures = json.loads(res.output)
    assert {f["method"] for f in figures} == {"lookalikes", "popularity"}
    assert all(re.match(r"2011-09-01", f["cutoff"]) for f in figures)
    # The held-out figures are shown with the gaps (on standard error, so exports stay clean).
    res = runner.invoke(app, ["gaps", "--db", db, "--top", "1"])
    la = next(f for f in figures if f["method"] == "lookalikes")
    assert f"held out at 2011-09-01 (90 days, {la['customers']:,} customers): recall@10 {la['recall_at_k']:.3f}" \
        in res.stderr
    assert res.stdout.startswith("customer_id,rank,product_id")
