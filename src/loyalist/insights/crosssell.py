"""Cross-sell gaps step: for each customer, the products their look-alikes buy and they never have.

Runs as analysis step `crosssell` (order 40). It reads the store through the Ibis features of
`loyalist.features.baskets`, builds sparse customer x product matrices, and ranks with
`loyalist.models.crosssell.LookAlikeRecommender` (user-based nearest neighbours; see that module for the
method and the reasons for it). Every gap carries its evidence in plain words, e.g.
"bought by 31 of this customer's 50 nearest look-alikes (62%); this customer never has; typical order 24 units
at £1.25".

Exclusions: products the customer bought or returned (a return or cancellation line), non-product lines
(postage, fees: never in the matrices), and products nobody bought in the last `active_days` (not on sale any
more). Cold start: a customer with few orders gets look-alikes from the little they bought (and from their
attributes when the `customers` table has industry / region / size); when look-alikes are few or weak the list
is filled from the products most bought in the last `popularity_days`, and the evidence says so. A product
nobody has bought yet cannot be suggested from purchase behaviour; a new product enters the lists as soon as
look-alikes buy it (recent purchases weigh more: `half_life_days`).

Settings (`[crosssell]` in loyalist.toml): top (gaps kept per customer, 10), n_neighbors (100), half_life_days
(365), active_days (180), popularity_days (90), popularity_weight (0.001), attribute_weight (0.5),
currency_symbol (default: from the data's currency, e.g. GBP -> £, else none), vote_half_life_days (90),
bm25_k1 (100), bm25_b (1), similarity_power (1), item_weight (0.3: share of the product-to-product part of
the score), item_neighbors (50), backtest (true: each analysis also backtests the gaps at
as_of - 90 days against popularity, table `crosssell_backtest`, and says the figures in the run's notes).
The defaults were chosen on held-out backtests of Online Retail II at 2010-05-01 and 2010-06-01, whose
90-day windows end before the cutoffs reported in bench/results/crosssell.json.

Tables written:
- `crosssell_gaps`: customer_id, rank (1 = best), product_id, description, score (0..1: the look-alikes' vote
  and the product-to-product part, each scaled to 1 for the customer's best product, plus a tiny popularity
  prior), evidence (plain words), lookalikes_buying (how many look-alikes
  bought it), lookalikes (the customer's look-alikes), typical_quantity, typical_price, category (from the
  products table, when known), new_category (the customer never bought from that category), as_of.
  Customers of the `customers` table who bought nothing yet are included when they have attributes.
- `crosssell_backtest` (appended by each analysis): see loyalist.evaluation.crosssell.
Per-customer columns added to `customer_insights`: top_gap_product (product_id of rank 1, NULL when none),
gaps_count (gaps stored for the customer).

On the Spark engine (`spark=True`; `gaps_on_spark`, `held_out_on_spark`) the answers are the DuckDB engine's
(tests/test_spark_crosssell.py) by the same code path: the purchase days, returned pairs and first purchases
are the same Ibis expressions run on Spark; the product table (one row per product) is collected to the
driver; the rows (customer x product x buying day) are replicated to one scoring task per block of customers
(one block per core, at most spark.sql.shuffle.partitions),
each building the matrices with `build_data` on the whole table (a customer's look-alikes may be anyone) and
ranking only its own customers (`gaps_table(rows=...)`, `evaluation.crosssell.top_lists`). So each task holds
the whole customer x product matrix (memory per executor grows with the customer x product pairs, not with
order lines); the driver never does. `crosssell_gaps` is written by the executors; the backtest's per-block sums
are added at the driver (`seconds`: the sum over the tasks). Not on Spark: customer attributes (the
`customers` table is not read there), and `crosssell_backtest` replaces the stored one in --db instead of
appending to it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import ibis
import numpy as np
import pandas as pd
import scipy.sparse as sp

from loyalist.features import baskets
from loyalist.insights import Context, step
from loyalist.models.crosssell import LookAlikeRecommender
from loyalist.store import Store, has_table, write_frame

DEFAULTS: dict[str, Any] = {
    "top": 10, "n_neighbors": 100, "half_life_days": 365.0, "vote_half_life_days": 90.0, "active_days": 180,
    "popularity_days": 90, "popularity_weight": 0.001, "attribute_weight": 0.5, "similarity_power": 1.0,
    "bm25_k1": 100.0, "bm25_b": 1.0, "item_weight": 0.3, "item_neighbors": 50,
    "currency_symbol": None, "backtest": True,
}
GAP_COLUMNS = ["customer_id", "rank", "product_id", "description", "score", "evidence", "lookalikes_buying",
               "lookalikes", "typical_quantity", "typical_price", "category", "new_category", "as_of"]
SYMBOLS = {"GBP": "£", "EUR": "€", "USD": "$", "JPY": "¥", "INR": "₹"}
ATTRIBUTES = ("industry", "region", "size")


def settings(config: dict | None) -> dict[str, Any]:
    """The [crosssell] settings with defaults filled in; unknown keys are an error."""
    section = dict((config or {}).get("crosssell", {}))
    unknown = set(section) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"[crosssell] unknown settings {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(DEFAULTS))})")
    return {**DEFAULTS, **section}


@dataclass
class CrossSellData:
    """Sparse inputs of the recommender at one date, with the id <-> row/column maps."""

    as_of: dt.date
    customers: np.ndarray
    products: np.ndarray
    strength: sp.csr_matrix
    """How often and how recently each customer bought each product (recency-weighted buying days)."""
    votes: sp.csr_matrix
    """What a look-alike's purchase counts as: 1, or 0.5 ** (days since they last bought it / vote_half_life_days)."""
    exclude: sp.csr_matrix
    """1 where the customer bought or returned the product."""
    attributes: sp.csr_matrix | None
    popularity: np.ndarray
    """Buyers per product in the last `popularity_days`."""
    allowed: np.ndarray
    """Products sold in the last `active_days`."""
    product_info: pd.DataFrame
    """product_id, description, category, buyers, typical_quantity, typical_price (aligned with `products`)."""


def _attributes(store_or_table, customer_ids: np.ndarray) -> sp.csr_matrix | None:
    """One-hot industry / region / size of each customer from the customers table (None when absent)."""
    if store_or_table is None:
        return None
    frame = store_or_table.select("customer_id", *ATTRIBUTES).execute()
    if frame.empty:
        return None
    frame = frame.drop_duplicates("customer_id", keep="last").set_index("customer_id").reindex(customer_ids)
    blocks = []
    for col in ATTRIBUTES:
        values = frame[col].astype("string").str.strip().str.lower()
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
        if len(uniques) == 0:
            continue
        have = codes >= 0
        blocks.append(sp.csr_matrix((np.ones(have.sum()), (np.flatnonzero(have), codes[have])),
                                    shape=(len(customer_ids), len(uniques))))
    return sp.hstack(blocks, format="csr") if blocks else None


def prepare(transactions, as_of: dt.date, customers_table=None, opts: dict[str, Any] | None = None,
            extra_customers: np.ndarray | None = None, products_table=None) -> CrossSellData:
    """Build the recommender's inputs from the purchase lines before `as_of` (Ibis, then `build_data`).

    extra_customers: ids to include although they bought nothing yet (from the customers table: their
    look-alikes come from their attributes alone). products_table: adds each product's category when known.
    """
    o = {**DEFAULTS, **(opts or {})}
    t = transactions
    days = baskets.purchase_days(t, as_of).execute()
    ret = baskets.returned(t, as_of).execute()
    info = product_info(baskets.product_stats(t, as_of).execute(), categories(products_table))
    cust = customer_index(days["customer_id"], extra_customers)
    return build_data(days, ret, info, as_of, o, cust, _attributes(customers_table, cust))


def categories(products_table) -> pd.DataFrame | None:
    """product_id, category of the products table (None without one)."""
    if products_table is None:
        return None
    return products_table.select("product_id", "category").execute()


def product_info(info: pd.DataFrame, cats: pd.DataFrame | None) -> pd.DataFrame:
    """`baskets.product_stats` sorted by product_id, description stripped, with the category (NA when unknown)."""
    info = info.assign(product_id=info["product_id"].astype(str))
    info = info.set_index("product_id").reindex(np.sort(info["product_id"].to_numpy()))
    info["description"] = info["description"].astype("string").str.strip()
    info["category"] = pd.Series(pd.NA, index=info.index, dtype="string")
    if cats is not None:
        cats = cats.dropna()
        cats = cats.assign(product_id=cats["product_id"].astype(str)).drop_duplicates("product_id", keep="last")
        info["category"] = cats.set_index("product_id")["category"].reindex(info.index).astype("string").str.strip()
    info.index.name = "product_id"
    return info.reset_index()[["product_id", "description", "category", "buyers", "typical_quantity",
                               "typical_price", "last_sold"]]


def customer_index(buyer_ids, extra_customers: np.ndarray | None = None) -> np.ndarray:
    """The sorted customer ids (the matrices' rows): the buyers and the extra customers."""
    return np.unique(np.concatenate([pd.Series(buyer_ids).astype(str).to_numpy(),
                                     np.asarray([] if extra_customers is None else extra_customers, dtype=str)]))


def build_data(days: pd.DataFrame, returned: pd.DataFrame, info: pd.DataFrame, as_of: dt.date,
               opts: dict[str, Any], customers: np.ndarray | None = None,
               attributes: sp.csr_matrix | None = None) -> CrossSellData:
    """The recommender's sparse inputs from `baskets.purchase_days` rows, `baskets.returned` pairs and
    `product_info` (numpy and scipy only, shared by both engines: on Spark each scoring task runs it on the
    whole table). The recency weight of a (customer, product) pair is the sum over its buying days, oldest
    first, of 0.5 ** (days before as_of / half_life_days)."""
    o = {**DEFAULTS, **(opts or {})}
    d = days.assign(customer_id=days["customer_id"].astype(str), product_id=days["product_id"].astype(str),
                    day=pd.to_datetime(days["day"]))
    d = d.sort_values(["customer_id", "product_id", "day"], kind="stable")
    cid, pid = d["customer_id"].to_numpy(), d["product_id"].to_numpy()
    new = np.ones(len(d), bool)
    new[1:] = (cid[1:] != cid[:-1]) | (pid[1:] != pid[:-1])
    starts = np.flatnonzero(new)
    pair = np.cumsum(new) - 1
    as_of_ts = pd.Timestamp(as_of)
    age = (as_of_ts - d["day"]).dt.days.to_numpy(float)
    weight = np.bincount(pair, weights=0.5 ** (age / float(o["half_life_days"])), minlength=starts.size)
    last_ns = pd.to_datetime(d["last_at"]).to_numpy("datetime64[ns]").astype(np.int64)
    last = pd.Series(pd.to_datetime(np.maximum.reduceat(last_ns, starts) if starts.size else last_ns[:0]))
    cust = customer_index(cid, None) if customers is None else customers
    prods = info["product_id"].to_numpy()
    ci, pi = pd.Index(cust), pd.Index(prods)
    r = ci.get_indexer(cid[starts])
    c = pi.get_indexer(pid[starts])
    shape = (len(cust), len(prods))
    strength = sp.csr_matrix((weight, (r, c)), shape=shape)
    bought = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=shape)
    if o["vote_half_life_days"]:
        vage = (as_of_ts - last).dt.total_seconds().to_numpy() / 86400.0
        votes = sp.csr_matrix((0.5 ** (vage / float(o["vote_half_life_days"])), (r, c)), shape=shape)
    else:
        votes = bought
    rr = ci.get_indexer(returned["customer_id"].astype(str))
    rc = pi.get_indexer(returned["product_id"].astype(str))
    ok = (rr >= 0) & (rc >= 0)
    ret = sp.csr_matrix((np.ones(ok.sum()), (rr[ok], rc[ok])), shape=shape)
    exclude = ((bought + ret) > 0).astype(np.float64).tocsr()
    recent = (last >= as_of_ts - pd.Timedelta(days=int(o["popularity_days"]))).to_numpy()
    popularity = np.bincount(c[recent], minlength=len(prods)).astype(float)
    allowed = (pd.to_datetime(info["last_sold"]) >= as_of_ts - pd.Timedelta(days=int(o["active_days"]))).to_numpy()
    return CrossSellData(as_of, cust, prods, strength, votes, exclude, attributes, popularity, allowed,
                         info[["product_id", "description", "category", "buyers", "typical_quantity",
                               "typical_price"]].reset_index(drop=True))


def model_for(opts: dict[str, Any]) -> LookAlikeRecommender:
    return LookAlikeRecommender(n_neighbors=int(opts["n_neighbors"]), bm25_k1=float(opts["bm25_k1"]),
                                bm25_b=float(opts["bm25_b"]), similarity_power=float(opts["similarity_power"]),
                                popularity_weight=float(opts["popularity_weight"]),
                                attribute_weight=float(opts["attribute_weight"]),
                                item_weight=float(opts["item_weight"]), item_neighbors=int(opts["item_neighbors"]))


def _money(x: float, symbol: str) -> str:
    return f"{symbol}{x:,.2f}" if symbol else f"{x:,.2f}"


def evidence(lookalikes_buying: np.ndarray, lookalikes: np.ndarray, quantity: np.ndarray, price: np.ndarray,
             recent_buyers: np.ndarray, popularity_days: int, symbol: str,
             related: np.ndarray | None = None) -> list[str]:
    """The plain-words reason of each gap (vectorised string building over the gap rows)."""
    if len(lookalikes_buying) == 0:  # no gaps (e.g. nothing bought recently): the string ops below need rows
        return []
    k = pd.Series(lookalikes_buying, dtype="int64")
    n = pd.Series(lookalikes, dtype="int64")
    share = (k / n.where(n > 0)).fillna(0)
    by_lookalikes = ("bought by " + k.astype(str) + " of this customer's " + n.astype(str)
                     + " nearest look-alikes (" + (share * 100).round().astype(int).astype(str) + "%)")
    popular = ("none of this customer's look-alikes bought it; suggested for its popularity: bought by "
               + pd.Series(recent_buyers, dtype="int64").map("{:,}".format)
               + f" customers in the last {popularity_days} days")
    rel = pd.Series(np.zeros(len(k)) if related is None else related, dtype="float64")
    with_theirs = "none of this customer's look-alikes bought it; often bought by the buyers of products this " \
                  "customer buys"
    text = by_lookalikes.where(k > 0, popular.where(rel <= 0, with_theirs)) + "; this customer never has"
    q = pd.Series(quantity, dtype="float64")
    p = pd.Series(price, dtype="float64")
    qty = q.round().astype("Int64").astype(str).where(q.notna(), "")
    typical = "; typical order " + qty + " units"
    at = p.map(lambda x: _money(x, symbol) if pd.notna(x) else "")
    typical = typical + (" at " + at).where(p.notna(), "")
    return (text + typical.where(q.notna(), "")).tolist()


def gaps_table(data: CrossSellData, model: LookAlikeRecommender, top: int, opts: dict[str, Any],
               symbol: str, rows: np.ndarray | None = None) -> pd.DataFrame:
    """Fit, rank and explain: one row per (customer, gap), for the customer rows `rows` (default: all). The
    model is fitted on all of `data` either way, so a customer's gaps do not depend on `rows` (the Spark engine
    runs this per partition of customers)."""
    rows = np.arange(len(data.customers)) if rows is None else np.asarray(rows, dtype=np.int64)
    model.fit(data.strength, data.votes, attributes=data.attributes, popularity=data.popularity, rows=rows)
    g = model.recommend(top, exclude=data.exclude, allowed=data.allowed, customers=rows)
    have = g.items >= 0
    pos, rank = np.nonzero(have)
    row = rows[pos]
    item = g.items[have]
    info = data.product_info.iloc[item]
    frame = pd.DataFrame({
        "customer_id": data.customers[row], "rank": (rank + 1).astype("int64"),
        "product_id": data.products[item], "description": info["description"].to_numpy(),
        "score": g.scores[have], "lookalikes_buying": g.lookalikes_buying[have].astype("int64"),
        "lookalikes": g.neighbours[pos].astype("int64"),
        "typical_quantity": info["typical_quantity"].to_numpy(float),
        "typical_price": info["typical_price"].to_numpy(float)})
    frame.insert(5, "evidence", evidence(frame["lookalikes_buying"].to_numpy(), frame["lookalikes"].to_numpy(),
                                         frame["typical_quantity"].to_numpy(), frame["typical_price"].to_numpy(),
                                         data.popularity[item], int(opts["popularity_days"]), symbol,
                                         g.related[have]))
    frame["category"] = info["category"].to_numpy()
    cats = info["category"]
    if cats.notna().any():
        # Category gaps: the product's category is one the customer has never bought from.
        codes, uniques = pd.factorize(data.product_info["category"], use_na_sentinel=True)
        known = codes >= 0
        onehot = sp.csr_matrix((np.ones(known.sum()), (np.flatnonzero(known), codes[known])),
                               shape=(len(data.products), len(uniques)))
        per_cat = sp.csr_matrix((data.strength > 0).astype(np.float64) @ onehot)
        c = codes[item]
        has_cat = c >= 0
        never = np.zeros(len(item), bool)
        never[has_cat] = np.asarray(per_cat[row[has_cat], c[has_cat]]).ravel() == 0
        frame["new_category"] = never
        frame.loc[never, "evidence"] += "; a category this customer has never bought from: " + cats[never].to_numpy()
    else:
        frame["new_category"] = False
    frame["as_of"] = pd.Timestamp(data.as_of)
    return frame


def currency_symbol(store: Store, opts: dict[str, Any]) -> str:
    if opts.get("currency_symbol") is not None:
        return str(opts["currency_symbol"])
    t = store.table("transactions")
    cur = t.filter(t.currency.notnull()).group_by("currency").aggregate(n=ibis._.count()).execute()
    if cur.empty:
        return ""
    main = str(cur.sort_values("n").iloc[-1]["currency"]).upper()
    return SYMBOLS.get(main, f"{main} ")


def compute_gaps(store: Store, as_of: dt.date, config: dict | None = None) -> pd.DataFrame:
    """The `crosssell_gaps` table for every customer with a purchase before `as_of`."""
    opts = settings(config)
    t = store.table("transactions")
    customers = store.table("customers") if store.table("customers").count().execute() else None
    products = store.table("products") if store.table("products").count().execute() else None
    extra = None if customers is None else customers.select("customer_id").execute()["customer_id"].astype(str)
    data = prepare(t, as_of, customers, opts, None if extra is None else extra.to_numpy(), products)
    if len(data.customers) == 0 or len(data.products) == 0:
        return pd.DataFrame(columns=GAP_COLUMNS)
    return gaps_table(data, model_for(opts), int(opts["top"]), opts, currency_symbol(store, opts))


def per_customer(gaps: pd.DataFrame, customer_ids) -> pd.DataFrame:
    """top_gap_product and gaps_count for each of `customer_ids`."""
    ids = pd.Series(pd.unique(pd.Series(customer_ids, dtype=str)), name="customer_id")
    first = gaps[gaps["rank"] == 1].set_index("customer_id")["product_id"]
    counts = gaps.groupby("customer_id").size()
    return pd.DataFrame({"customer_id": ids, "top_gap_product": ids.map(first).astype("string"),
                         "gaps_count": ids.map(counts).fillna(0).astype("int64")})


@step("crosssell", 40, spark=True)
def crosssell_step(ctx: Context) -> pd.DataFrame | None:
    """On the Spark engine `ctx.store` is a SparkSource: `gaps_on_spark` and `held_out_on_spark` (the same
    numpy per partition of customers), the tables go to its `write_result`."""
    t = ctx.store.table("transactions")
    lines = baskets.purchase_lines(t, ctx.as_of)
    if lines.filter(lines.product_id.notnull()).count().execute() == 0:
        ctx.notes.append("cross-sell gaps skipped: the transactions carry no product codes")
        return None
    opts = settings(ctx.config)
    if getattr(ctx.store, "write_result", None) is not None:
        return _step_on_spark(ctx, opts)
    gaps = compute_gaps(ctx.store, ctx.as_of, ctx.config)
    write_frame(ctx.store, "crosssell_gaps", gaps, replace=True)
    if gaps.empty:
        ctx.notes.append("cross-sell gaps: no product has been bought by customers' look-alikes yet")
    if opts["backtest"]:
        ctx.notes.append(held_out_note(ctx.store, ctx.as_of, opts))
    return per_customer(gaps, ctx.customers["customer_id"].astype(str))


def held_out_note(store: Store, as_of: dt.date, opts: dict[str, Any]) -> str:
    """Backtest the gaps at as_of - 90 days (look-alikes vs popularity; `loyalist gaps-backtest` adds ALS),
    store the figures in `crosssell_backtest` and say them in one line."""
    from loyalist.evaluation.crosssell import evaluate_cutoff

    horizon = 90
    cutoff = as_of - dt.timedelta(days=horizon)
    t = store.table("transactions")
    if baskets.purchase_lines(t, cutoff).count().execute() == 0:
        return f"cross-sell gaps: no held-out check possible (no purchases before {cutoff})"
    if baskets.purchase_lines(t, as_of, since=cutoff).count().execute() == 0:
        return f"cross-sell gaps: no held-out check possible (no purchases from {cutoff} to {as_of})"
    last = pd.Timestamp(t.order_date.max().execute()).date()
    if last < as_of - dt.timedelta(days=1):
        return (f"cross-sell gaps: no held-out check possible (it needs the {horizon} days from {cutoff} to {as_of}, "
                f"and the data ends {last})")
    m = evaluate_cutoff(t, cutoff, horizon, 10, opts, ("lookalikes", "popularity"))
    if m.empty or m["customers"].iloc[0] == 0:
        return f"cross-sell gaps: no held-out check possible (nobody bought a new product after {cutoff})"
    write_frame(store, "crosssell_backtest", m.assign(run_at=pd.Timestamp.now(tz="UTC").tz_localize(None)),
                replace=False)
    return _note(m, cutoff, horizon)


def _note(m: pd.DataFrame, cutoff: dt.date, horizon: int) -> str:
    r = m.set_index("method")
    n = int(r.loc["lookalikes", "customers"])
    return (f"cross-sell gaps held out at {cutoff} ({horizon} days, {n:,} customer{'' if n == 1 else 's'}): recall@10 {r.loc['lookalikes', 'recall_at_k']:.3f} vs {r.loc['popularity', 'recall_at_k']:.3f} "
            f"for popularity, NDCG@10 {r.loc['lookalikes', 'ndcg_at_k']:.3f} vs {r.loc['popularity', 'ndcg_at_k']:.3f}")


def stored_or_computed(store: Store, as_of: dt.date | None, config: dict | None) -> pd.DataFrame:
    """The stored `crosssell_gaps` when present (and for the same as_of if given), else computed now."""
    if has_table(store, "crosssell_gaps"):
        g = store.table("crosssell_gaps")
        if as_of is None or g.filter(g.as_of == ibis.timestamp(dt.datetime.combine(as_of, dt.time()))).count().execute():
            return g.execute()
    from loyalist.analysis import data_end

    return compute_gaps(store, as_of or data_end(store), config)


# --- The Spark engine (`loyalist analyze --engine spark`) ---------------------------------------------------------
#
# Look-alikes can be any customer, so every customer's scoring needs the whole customer x product matrix: the
# purchase days and returned pairs (same Ibis expressions as above, run on Spark) are replicated to `blocks`
# scoring tasks (a cross join with the block numbers, grouped by block: executor to executor, never through the
# driver); each task builds the matrices with `build_data` and fits with `gaps_table` / `top_lists` for its own
# customers (`block_of`), so its answers are those of the one-machine code. The driver holds only the product
# table (one row per product) and the per-method sums of the backtest.

def block_of(customer_ids, blocks: int) -> np.ndarray:
    """The scoring task of each customer id: a fixed hash of the id modulo `blocks` (pandas' hash_array, the
    same in every process)."""
    ids = np.asarray(customer_ids, dtype=object)
    return (pd.util.hash_array(ids) % np.uint64(blocks)).astype(np.int64)


GAP_SCHEMA = ("customer_id string, rank long, product_id string, description string, score double, "
              "evidence string, lookalikes_buying long, lookalikes long, typical_quantity double, "
              "typical_price double, category string, new_category boolean, as_of timestamp_ntz")


def _replicated(source, as_of: dt.date, blocks: int, first_purchases: int | None = None):
    """The purchase days (kind 0), returned pairs (kind 1) and, with `first_purchases` = horizon days, the
    first purchases after as_of (kind 2), as one Spark DataFrame copied once per block (column `block`)."""
    from pyspark.sql import functions as F

    con = source.ibis
    session = con._session
    t = source.table("transactions")
    days = session.sql(con.compile(baskets.purchase_days(t, as_of))).withColumn("kind", F.lit(0))
    empty = {"day": F.lit(None).cast("date"), "last_at": F.lit(None).cast("timestamp")}
    ret = session.sql(con.compile(baskets.returned(t, as_of))).select(
        "customer_id", "product_id", *[v.alias(k) for k, v in empty.items()], F.lit(1).alias("kind"))
    full = days.select("customer_id", "product_id", "day", "last_at", "kind").unionByName(ret)
    if first_purchases is not None:
        fp = session.sql(con.compile(baskets.first_purchases(t, as_of, first_purchases))).select(
            "customer_id", "product_id", *[v.alias(k) for k, v in empty.items()], F.lit(2).alias("kind"))
        full = full.unionByName(fp)
    return full.crossJoin(session.range(blocks).withColumnRenamed("id", "block"))


def _blocks(session) -> int:
    """Scoring tasks: one per core (each holds a copy of the whole table, so more tasks than cores only cost
    copies), at most `spark.sql.shuffle.partitions`. The answers do not depend on it."""
    parts = max(1, int(session.conf.get("spark.sql.shuffle.partitions")))
    try:
        cores = int(session.sparkContext.defaultParallelism)
    except Exception:  # noqa: BLE001  (Spark Connect: no SparkContext)
        return parts
    return max(1, min(parts, cores))


def _parts(pdf: pd.DataFrame) -> tuple[pd.DataFrame, ...]:
    kind = pdf["kind"].to_numpy()
    cols = ["customer_id", "product_id"]
    return (pdf.loc[kind == 0, cols + ["day", "last_at"]], pdf.loc[kind == 1, cols], pdf.loc[kind == 2, cols])


def gaps_on_spark(source, as_of: dt.date, opts: dict[str, Any], symbol: str):
    """The `crosssell_gaps` table on the Spark engine (`source` = loyalist.engine.spark.SparkSource), as a Spark
    DataFrame computed by the executors: per block of customers `build_data` + `gaps_table` on the whole
    (replicated) matrix. None when nobody bought a product before as_of."""
    t = source.table("transactions")
    products = source.table("products")
    products = products if products.count().execute() else None
    info = product_info(baskets.product_stats(t, as_of).execute(), categories(products))
    if info.empty:
        return None
    session = source.ibis._session
    blocks = _blocks(session)

    def task(pdf: pd.DataFrame) -> pd.DataFrame:
        days, ret, _ = _parts(pdf)
        data = build_data(days, ret, info, as_of, opts)
        rows = np.flatnonzero(block_of(data.customers, blocks) == int(pdf["block"].iloc[0]))
        frame = gaps_table(data, model_for(opts), int(opts["top"]), opts, symbol, rows)
        frame["category"] = frame["category"].astype(object).where(frame["category"].notna(), None)
        return frame[GAP_COLUMNS]

    return _replicated(source, as_of, blocks).groupBy("block").applyInPandas(task, GAP_SCHEMA)


def held_out_on_spark(source, as_of: dt.date, opts: dict[str, Any], horizon: int = 90,
                      k: int = 10) -> pd.DataFrame:
    """`evaluation.crosssell.evaluate_cutoff` (look-alikes and popularity) on the Spark engine: per block of
    customers `build_data` + `top_lists` + `ranking_rows` on the whole matrix at the cutoff; the driver sums
    the per-block sums (one row per block and method) into the means. `seconds` is the sum over the tasks."""
    from loyalist.evaluation.crosssell import ranking_rows, targets, top_lists

    cutoff = as_of - dt.timedelta(days=horizon)
    t = source.table("transactions")
    info = product_info(baskets.product_stats(t, cutoff).execute(), None)
    methods = ("lookalikes", "popularity")
    if info.empty:
        return pd.DataFrame()
    session = source.ibis._session
    blocks = _blocks(session)

    def task(pdf: pd.DataFrame) -> pd.DataFrame:
        import time

        days, ret, fp = _parts(pdf)
        data = build_data(days, ret, info, cutoff, opts)
        target, sizes = targets(data, fp)
        mine = block_of(data.customers, blocks) == int(pdf["block"].iloc[0])
        rows = np.flatnonzero(mine & (sizes > 0))
        out = []
        for method in methods:
            t0 = time.perf_counter()
            top = top_lists(method, data, rows, k, opts)
            seconds = time.perf_counter() - t0
            recall, ndcg, hit = ranking_rows(top, target[rows], sizes[rows], k)
            out.append({"method": method, "customers": rows.size, "recall": float(recall.sum()),
                        "ndcg": float(ndcg.sum()), "hits": int(hit.sum()), "targets": int(sizes[mine].sum()),
                        "seconds": seconds})
        return pd.DataFrame(out)

    schema = "method string, customers long, recall double, ndcg double, hits long, targets long, seconds double"
    sums = (_replicated(source, cutoff, blocks, horizon).groupBy("block").applyInPandas(task, schema)
            .toPandas().groupby("method").sum().reindex(list(methods)))
    n = sums["customers"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return pd.DataFrame({
            "cutoff": pd.Timestamp(cutoff), "horizon_days": horizon, "method": list(methods),
            "customers": sums["customers"].astype(int).to_numpy(), "recall_at_k": sums["recall"].to_numpy() / n,
            "ndcg_at_k": sums["ndcg"].to_numpy() / n, "hit_rate": sums["hits"].to_numpy() / n,
            "targets": sums["targets"].astype(int).to_numpy(), "k": k, "seconds": sums["seconds"].round(3).to_numpy()})


def _step_on_spark(ctx: Context, opts: dict[str, Any]):
    """The crosssell step on the Spark engine: the gaps table written by the executors, the per-customer
    columns by an Ibis aggregation of it on Spark, the held-out note from `held_out_on_spark`."""

    source = ctx.store
    con = source.ibis
    gaps = gaps_on_spark(source, ctx.as_of, opts, currency_symbol(source, opts))
    if gaps is None:
        ctx.notes.append("cross-sell gaps: no product has been bought by customers' look-alikes yet")
        source.write_result("crosssell_gaps", pd.DataFrame(columns=GAP_COLUMNS))
        return None
    gaps = source.keep(gaps)  # read by the per-customer columns and by the write
    source.write_result("crosssell_gaps", gaps)
    view = f"loyalist_crosssell_gaps_{abs(hash((str(ctx.as_of), id(gaps)))) % 10**8}"
    gaps.createOrReplaceTempView(view)
    g = con.table(view)
    if g.count().execute() == 0:
        ctx.notes.append("cross-sell gaps: no product has been bought by customers' look-alikes yet")
    if opts["backtest"]:
        m = held_out_on_spark(source, ctx.as_of, opts)
        horizon = 90
        cutoff = ctx.as_of - dt.timedelta(days=horizon)
        if m.empty or m["customers"].iloc[0] == 0:
            ctx.notes.append(f"cross-sell gaps: no held-out check possible (nobody bought a new product after "
                             f"{cutoff})")
        else:
            source.write_result("crosssell_backtest",
                                m.assign(run_at=pd.Timestamp.now(tz="UTC").tz_localize(None)))
            ctx.notes.append(_note(m, cutoff, horizon))
    per = g.group_by("customer_id").aggregate(top_gap_product=g.product_id.argmin(g["rank"]), gaps_count=g.count())
    cust = ctx.customers.select("customer_id")
    j = cust.left_join(per, cust.customer_id == per.customer_id)
    return j.select(customer_id=cust.customer_id, top_gap_product=per.top_gap_product,
                    gaps_count=per.gaps_count.fill_null(0).cast("int64"))
