"""Held-out backtest of the cross-sell gaps: do customers go on to buy the products suggested to them?

At each cutoff every method is fitted on the purchase lines before the cutoff only. The target of a customer is
the set of products they buy for the first time in the `horizon_days` after the cutoff (never bought before it).
Customers evaluated: those with a purchase before the cutoff and at least one first-time product after it.
All methods rank the same candidates with the same exclusions (products the customer bought or returned before
the cutoff; non-product lines are never candidates), so the comparison is only about the ranking.

Metrics (mean over the evaluated customers; Jarvelin & Kekalainen 2002 for NDCG):
- recall@k = |top-k ∩ target| / |target|
- NDCG@k   = sum over hits of 1 / log2(rank + 1) divided by the same sum for a perfect list of
  min(k, |target|) hits.

Methods, in the same run:
- `lookalikes`: loyalist's recommender (loyalist.models.crosssell) with the settings given.
- `popularity`: products by number of distinct buyers before the cutoff (global popularity; ties: product id).
- `als_default`: `implicit.als.AlternatingLeastSquares` with its default settings (factors 100, regularization
  0.01, alpha 1, 15 iterations), fitted on the number of orders per customer and product; seeded.

Table `crosssell_backtest` (one row per cutoff and method): cutoff, horizon_days, method, customers, targets
(first-time products in the horizon), k, recall_at_k, ndcg_at_k, hit_rate (share of customers with at least one
hit), seconds.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from loyalist.features import baskets
from loyalist.insights.crosssell import DEFAULTS, CrossSellData, model_for, prepare

METHODS = ("lookalikes", "popularity", "als_default")


def _top_dense(scores: np.ndarray, exclude: sp.csr_matrix, k: int) -> np.ndarray:
    """Top-k columns of dense scores with the excluded cells removed (rows chunked by the caller)."""
    s = np.array(scores, dtype=np.float64)
    ex = exclude.tocoo()
    s[ex.row, ex.col] = -np.inf
    part = np.argpartition(-s, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, part, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    return np.where(np.isfinite(np.take_along_axis(s, top, axis=1)), top, -1)


def _dense_method(score_rows, rows: np.ndarray, exclude: sp.csr_matrix, k: int, chunk: int = 2048) -> np.ndarray:
    out = [np.zeros((0, k), np.int64)]
    for start in range(0, rows.size, chunk):
        r = rows[start:start + chunk]
        out.append(_top_dense(score_rows(r), exclude[r], k))
    return np.vstack(out)


def target_matrix(transactions, data: CrossSellData, cutoff: dt.date, horizon_days: int) -> sp.csr_matrix:
    """1 where a customer known at the cutoff first bought a product (known at the cutoff) in the horizon."""
    return targets(data, baskets.first_purchases(transactions, cutoff, horizon_days).execute())[0]


def targets(data: CrossSellData, fp: pd.DataFrame) -> tuple[sp.csr_matrix, np.ndarray]:
    """From the `baskets.first_purchases` pairs: the 0/1 target matrix (customers and products known at the
    cutoff) and |target| per customer. Products first bought in the horizon that nobody had bought before the
    cutoff are not in the columns (no method can suggest them); they still count in |target|."""
    r = pd.Index(data.customers).get_indexer(fp["customer_id"].astype(str))
    c = pd.Index(data.products).get_indexer(fp["product_id"].astype(str))
    ok = (r >= 0) & (c >= 0)
    target = sp.csr_matrix((np.ones(ok.sum()), (r[ok], c[ok])), shape=(len(data.customers), len(data.products)))
    sizes = np.bincount(r[r >= 0], minlength=len(data.customers)).astype(float)
    return target, sizes


def top_lists(method: str, data: CrossSellData, rows: np.ndarray, k: int, o: dict[str, Any], transactions=None,
              seed: int = 0, num_threads: int = 2) -> np.ndarray:
    """The top-k product columns (-1 = none) of `method` for the customer rows `rows`, fitted on all of `data`
    (a row's list does not depend on which other rows are asked for)."""
    if method == "lookalikes":
        model = model_for(o)
        model.num_threads = num_threads
        model.fit(data.strength, data.votes, attributes=data.attributes, popularity=data.popularity, rows=rows)
        return model.recommend(k, exclude=data.exclude, allowed=data.allowed, customers=rows).items
    if method == "popularity":
        buyers = np.asarray((data.strength > 0).sum(axis=0)).ravel().astype(float)
        buyers -= np.arange(buyers.size) * 1e-6  # ties: the lower product id first
        return _dense_method(lambda r, b=buyers: np.broadcast_to(b, (r.size, b.size)), rows, data.exclude, k)
    if method == "als_default":
        from implicit.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        orders = orders_matrix(transactions, data)
        with threadpool_limits(1, "blas"):
            als = AlternatingLeastSquares(random_state=seed, num_threads=num_threads)
            als.fit(orders, show_progress=False)
        uf, itf = np.asarray(als.user_factors), np.asarray(als.item_factors)
        return _dense_method(lambda r, u=uf, i=itf: u[r] @ i.T, rows, data.exclude, k)
    raise ValueError(f"unknown method {method!r}")


def evaluate_cutoff(transactions, cutoff: dt.date, horizon_days: int = 90, k: int = 10,
                    opts: dict[str, Any] | None = None, methods=METHODS, seed: int = 0,
                    num_threads: int = 2) -> pd.DataFrame:
    """One row per method: the ranking metrics at `cutoff` (see the module docstring)."""
    o = {**DEFAULTS, **(opts or {})}
    data = prepare(transactions, cutoff, None, o)
    target, sizes = targets(data, baskets.first_purchases(transactions, cutoff, horizon_days).execute())
    rows = np.flatnonzero(sizes > 0)
    out = []
    for method in methods:
        t0 = time.perf_counter()
        top = top_lists(method, data, rows, k, o, transactions, seed, num_threads)
        seconds = time.perf_counter() - t0
        m = ranking_metrics(top, target[rows], sizes[rows], k)
        out.append({"cutoff": pd.Timestamp(cutoff), "horizon_days": horizon_days, "method": method, **m,
                    "targets": int(sizes.sum()), "k": k, "seconds": round(seconds, 3)})
    return pd.DataFrame(out)


def ranking_rows(top: np.ndarray, target: sp.csr_matrix, sizes: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of `top`: recall@k, NDCG@k and whether it has a hit (see `ranking_metrics`)."""
    rows = np.broadcast_to(np.arange(top.shape[0])[:, None], top.shape)
    valid = top >= 0
    hit = np.zeros(top.shape, bool)
    hit[valid] = np.asarray(target[rows[valid], top[valid]]).ravel() > 0
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hit * disc).sum(axis=1)
    idcg = np.cumsum(disc)[np.minimum(sizes.astype(int), k) - 1]
    return hit.sum(axis=1) / sizes, dcg / idcg, hit.any(axis=1)


def ranking_metrics(top: np.ndarray, target: sp.csr_matrix, sizes: np.ndarray, k: int) -> dict[str, float]:
    """recall@k, NDCG@k and hit rate of ranked lists `top` (rows, k columns, -1 = empty) against the 0/1
    `target` (same rows); `sizes` = |target| per row, which may also count products no method could know."""
    recall, ndcg, hit = ranking_rows(top, target, sizes, k)
    return {"customers": int(top.shape[0]), "recall_at_k": float(recall.mean()),
            "ndcg_at_k": float(ndcg.mean()), "hit_rate": float(hit.mean())}


def orders_matrix(transactions, data: CrossSellData) -> sp.csr_matrix:
    """Number of orders per customer and product before the cutoff (the ALS baseline's input)."""
    inter = baskets.interactions(transactions, data.as_of).execute()
    r = pd.Index(data.customers).get_indexer(inter["customer_id"].astype(str))
    c = pd.Index(data.products).get_indexer(inter["product_id"].astype(str))
    return sp.csr_matrix((inter["orders"].to_numpy(float), (r, c)),
                         shape=(len(data.customers), len(data.products)))


def evaluate(transactions, cutoffs, horizon_days: int = 90, k: int = 10, opts: dict[str, Any] | None = None,
             methods=METHODS, seed: int = 0) -> pd.DataFrame:
    """The backtest table over several cutoffs (see the module docstring)."""
    return pd.concat([evaluate_cutoff(transactions, c, horizon_days, k, opts, methods, seed) for c in cutoffs],
                     ignore_index=True)
