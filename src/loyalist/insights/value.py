"""Analysis step `value` (order 55): one ranked customer-value score of where to invest, with its parts.

    value_score = value_clv x value_margin x value_growth x value_risk

Per-customer columns added to `customer_insights`:
- `value_clv`: predicted 12-month CLV in revenue from the customer-base models (clv_12m / margin)
- `value_margin`: the gross margin applied (from product costs or margins when the store has them, else the
  `gross_margin` setting; 1.0 means the score is in revenue)
- `value_growth`: growth factor. From `growth_rate` (the direction step, order 30) when that column is present:
  1 + growth_rate (annualised, 0.25 = +25%/yr) kept within [0.5, 1.5]; otherwise from this module's own proxy, the spend trend
  (last 180 days vs the 180 before, in [-1, 1]; `loyalist.features.behaviour`): 1 + trend / 2, in [0.5, 1.5].
- `value_risk`: P(alive) from the customer-base model (risk adjustment; see `loyalist.models.segments.value_score`
  for why P(alive) is applied although the CLV already averages over it)
- `value_score`, `value_percentile` (0..100, mid-rank), `value_grade` (A = top 20% of customers by score,
  B = next 30%, C = the rest; [value] a_share, b_share in loyalist.toml), `value_reason` (the sum in words).

Both engines share `value_parts` (per customer) and `value_ranks` (percentiles, grades and reasons of a block
of customers given the counts below and above it: all customers at once on DuckDB, blocks by score on Spark;
see `value_on_spark` for what runs where).

Result table `value_backtest` (appended, one row per ranking and cutoff; columns in
`loyalist.evaluation.value`): at as_of - 365 days, when there is enough history, the A customers of the
metric vs the same number chosen by past revenue, by their share of the following year's revenue. A cutoff
already in the table for the same model is not recomputed. `bench/value.py` runs it on Online Retail II.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from loyalist.evaluation.value import value_backtest
from loyalist.features.behaviour import behaviour
from loyalist.insights import Context, step
from loyalist.models.segments import (
    growth_factor_from_rate,
    growth_factor_from_trend,
    value_score,
)
from loyalist.store import has_table, write_frame

BACKTEST_TABLE = "value_backtest"


def _margins(ctx: Context) -> tuple[np.ndarray, str]:
    from loyalist.analysis import (
        customer_margins,  # late import: analysis imports the insight steps
    )

    default = float(ctx.settings.gross_margin)
    per, source = customer_margins(ctx.store, ctx.as_of)
    if per is None:
        return np.full(len(ctx.customers), default), _margin_source_name(None, default)
    m = ctx.customers[["customer_id"]].merge(per, on="customer_id", how="left")["margin"]
    return m.fillna(default).to_numpy(float), source


def _backtest(ctx: Context, cfg: dict) -> None:
    if not cfg.get("backtest", True):
        return
    cutoff = ctx.as_of - dt.timedelta(days=365)
    model = ctx.fitted.name
    spark = hasattr(ctx.store, "write_result")
    tx = ctx.store.table("transactions")
    last = pd.Timestamp(tx.order_date.max().execute()).date()
    if last < ctx.as_of - dt.timedelta(days=1):
        ctx.notes.append(f"value: no held-out check of the grades: it needs the whole year after {cutoff} (to "
                         f"{ctx.as_of}), and the data ends {last}")
        return
    if not spark and has_table(ctx.store, BACKTEST_TABLE):
        t = ctx.store.table(BACKTEST_TABLE)
        done = t.filter((t.cutoff == pd.Timestamp(cutoff)) & (t.model == model))
        done = done.filter(done.run_at == done.run_at.max()).execute()
        if len(done) and np.isfinite(done.set_index("ranking").loc["value_score", "a_revenue_share"]):
            ctx.notes.append(_held_out_note(done))
            return
    first = ctx.customers.first_order.min().execute() if spark else ctx.customers["first_order"].min()
    if pd.isna(first) or (cutoff - pd.Timestamp(first).date()).days < 180:
        ctx.notes.append(f"value: no held-out check of the grades (needs 180 days of history before {cutoff} "
                         "and a year after it)")
        return
    try:
        bt = value_backtest(tx, cutoff, model, 365, ctx.settings, float(cfg.get("a_share", 0.2)))
    except ValueError as exc:
        ctx.notes.append(f"value: no held-out check of the grades ({exc})")
        return
    if not np.isfinite(bt.set_index("ranking").loc["value_score", "a_revenue_share"]):
        ctx.notes.append(f"value: no held-out check of the grades: the customers who bought before {cutoff} spent "
                         f"nothing in the year after it")
        return
    if spark:
        ctx.store.write_result(BACKTEST_TABLE, bt)
    else:
        write_frame(ctx.store, BACKTEST_TABLE, bt, replace=False)
    ctx.notes.append(_held_out_note(bt))


def _held_out_note(bt: pd.DataFrame) -> str:
    r = bt.set_index("ranking")
    return (f"value: held out at {pd.Timestamp(r.loc['value_score', 'cutoff']).date()}, the "
            f"{int(r.loc['value_score', 'graded_a']):,} customers graded A brought "
            f"{r.loc['value_score', 'a_revenue_share']:.1%} of the next year's revenue vs "
            f"{r.loc['past_revenue', 'a_revenue_share']:.1%} for the same number chosen by past revenue")


def reasons(frame: pd.DataFrame, growth_source: str) -> list[str]:
    """The score as a sum in words, one per customer."""
    return [f"12-month CLV {c:,.0f} x margin {m:.0%} x growth {g:.2f} ({growth_source}) x P(alive) {p:.2f} "
            f"= {s:,.0f}; top {max(100 - q, 0.1):.1f}% of customers"
            for c, m, g, p, s, q in zip(frame["value_clv"], frame["value_margin"], frame["value_growth"],
                                         frame["value_risk"], frame["value_score"], frame["value_percentile"])]


GROWTH_SOURCES = {"rate": "growth rate", "trend": "spend trend"}
PART_COLUMNS = ["customer_id", "value_clv", "value_margin", "value_growth", "value_risk", "value_score"]
OUT_COLUMNS = PART_COLUMNS + ["value_percentile", "value_grade", "value_reason"]


def value_parts(b: pd.DataFrame, clv_col: str, growth: str, default_margin: float) -> pd.DataFrame:
    """PART_COLUMNS for the customers of `b` (any subset: the score of one customer needs only its own row):
    `b` holds customer_id, the CLV column, p_alive, `margin` (NaN: the default) and growth_rate
    (growth="rate") or trend (growth="trend")."""
    margin = b["margin"].fillna(default_margin).to_numpy(float) if "margin" in b else np.full(len(b), default_margin)
    g = (growth_factor_from_rate(b["growth_rate"].to_numpy(float)) if growth == "rate"
         else growth_factor_from_trend(b["trend"].to_numpy(float)))
    clv = b[clv_col].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        clv_revenue = np.where(margin != 0, clv / margin, np.nan)
    p_alive = b["p_alive"].to_numpy(float)
    out = pd.DataFrame({"customer_id": b["customer_id"].to_numpy(), "value_clv": clv_revenue,
                        "value_margin": margin, "value_growth": g, "value_risk": p_alive})
    out["value_score"] = value_score(clv_revenue, margin, g, p_alive)
    return out


def value_ranks(parts: pd.DataFrame, n: int, below: int, above: int, a_share: float, b_share: float,
                growth_source: str) -> pd.DataFrame:
    """value_percentile, value_grade, value_reason added to `parts` (from `value_parts`), a block of customers
    holding every customer with any of its scores (all customers, or one range partition by score): `n`
    customers in all, `below` of them with a lower score than the block's, `above` with a higher one.
    Percentile = mid-rank (`loyalist.models.segments.percentile`); grade by rank of (score descending, customer
    id) as `loyalist.models.segments.grade` on rows sorted by customer id."""
    out = parts.copy()
    s = out["value_score"].to_numpy(float)
    srt = np.sort(s)
    lo = np.searchsorted(srt, s, side="left")
    eq = np.searchsorted(srt, s, side="right") - lo
    out["value_percentile"] = 100 * ((below + lo) + 0.5 * eq) / n if n else np.zeros(len(s))
    by_id = np.argsort(out["customer_id"].astype(str).to_numpy(), kind="stable")
    id_rank = np.empty(len(s), np.int64)
    id_rank[by_id] = np.arange(len(s))
    order = np.lexsort((id_rank, -s))  # best first, ties by customer id
    rank = np.empty(len(s), np.int64)
    rank[order] = above + np.arange(len(s))
    n_a, n_b = round(a_share * n), round((a_share + b_share) * n)
    out["value_grade"] = np.where(rank < n_a, "A", np.where(rank < n_b, "B", "C")).astype(object)
    out["value_reason"] = reasons(out, growth_source)
    return out[OUT_COLUMNS]


def _note(margin_source: str, cfg: dict) -> str:
    return (f"value: margin from {margin_source}; grades A/B/C = top {float(cfg.get('a_share', 0.2)):.0%}"
            f" / next {float(cfg.get('b_share', 0.3)):.0%} / rest by value_score")


TREND_NOTE = ("value: growth from the spend trend (last 180 days vs the 180 before), "
              "as no growth_rate column was present")
NO_CLV = "value skipped: no predicted CLV (the spend model needs amounts and repeat customers)"


def _margin_source_name(source: str | None, default: float) -> str:
    if source is not None:
        return source
    return "gross_margin setting" if default != 1.0 else "none (margin 1.0: the score is in revenue)"


@step("value", 55, spark=True)
def value_step(ctx: Context) -> pd.DataFrame | None:
    cfg = ctx.config.get("value", {}) or {}
    if hasattr(ctx.store, "write_result"):  # the Spark engine
        return value_on_spark(ctx, cfg)
    cust = ctx.customers
    clv_col = f"clv_{ctx.settings.clv_months}m"
    if cust.empty or clv_col not in cust or not cust[clv_col].notna().any():
        ctx.notes.append(NO_CLV)
        return None
    margin, margin_source = _margins(ctx)
    b = cust[["customer_id", clv_col, "p_alive"]].assign(margin=margin)
    if "growth_rate" in cust and cust["growth_rate"].notna().any():
        growth = "rate"
        b["growth_rate"] = cust["growth_rate"].to_numpy(float)
    else:
        growth = "trend"
        beh = behaviour(ctx.store.table("transactions"), ctx.as_of).execute()
        b["trend"] = cust[["customer_id"]].merge(beh[["customer_id", "trend"]], on="customer_id",
                                                  how="left")["trend"].to_numpy(float)
        ctx.notes.append(TREND_NOTE)
    parts = value_parts(b, clv_col, growth, float(ctx.settings.gross_margin))
    out = value_ranks(parts, len(parts), 0, 0, float(cfg.get("a_share", 0.2)), float(cfg.get("b_share", 0.3)),
                      GROWTH_SOURCES[growth])
    ctx.notes.append(_note(margin_source, cfg))
    _backtest(ctx, cfg)
    return out


def value_on_spark(ctx: Context, cfg: dict):
    """The value step on the Spark engine (`ctx.store` a SparkSource, `ctx.customers` an Ibis table on Spark).

    Executors: per-customer margins (`loyalist.analysis.margin_table`, the same Ibis expression) or the spend
    trend (`loyalist.features.behaviour`) when no growth_rate column is there, the parts of the score
    (`value_parts`, mapInPandas), and the ranks: the customers are split into blocks by score (bounds from
    Spark's approximate quantiles, fixed at the driver; equal scores share a block), and each block ranks its
    customers with `value_ranks` (applyInPandas) given how many customers lie in the blocks below and above it.
    Driver: only the block bounds and counts (one number per block), and whether growth_rate and margins exist. The held-out check (`value_backtest`, table value_backtest) runs the same function as the
    DuckDB engine on Ibis tables on Spark: its per-customer inputs at the past cutoff (summary, trend, next-year
    spend) are collected to the driver, where the customer-base model is fitted and the rankings are compared."""
    import ibis
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    source = ctx.store
    con = source.ibis
    session = con._session
    clv_col = f"clv_{ctx.settings.clv_months}m"
    cust = ctx.customers
    cdf = session.sql(con.compile(cust))
    if clv_col not in cust.columns or not cdf.filter(F.col(clv_col).isNotNull() & ~F.isnan(clv_col)).limit(1).count():
        ctx.notes.append(NO_CLV)
        return None
    default = float(ctx.settings.gross_margin)
    margin_source = None
    cols = [cust.customer_id, cust[clv_col], cust.p_alive]
    b = cust.select(*cols)
    products = source.tables.get("products")
    if products is not None and int(products.count().execute()) > 0:
        from loyalist.analysis import margin_table

        m = margin_table(source.table("transactions"), products, ctx.as_of)
        if int(m.count().execute()) > 0:
            margin_source = "product costs"
            b = b.left_join(m, b.customer_id == m.customer_id).drop("customer_id_right")
    if "margin" not in b.columns:
        b = b.mutate(margin=ibis.null("float64"))
    growth = "trend"
    if "growth_rate" in cust.columns and cdf.filter(F.col("growth_rate").isNotNull()
                                                    & ~F.isnan("growth_rate")).limit(1).count():
        growth = "rate"
        g = cust.select("customer_id", "growth_rate")
        b = b.left_join(g, b.customer_id == g.customer_id).drop("customer_id_right")
    else:
        beh = behaviour(source.table("transactions"), ctx.as_of).select("customer_id", "trend")
        b = b.left_join(beh, b.customer_id == beh.customer_id).drop("customer_id_right")
        ctx.notes.append(TREND_NOTE)
    a_share, b_share = float(cfg.get("a_share", 0.2)), float(cfg.get("b_share", 0.3))

    def parts_fn(batches):
        for batch in batches:
            if len(batch):
                p = value_parts(batch, clv_col, growth, default)
                yield p.assign(_key=p["value_score"].to_numpy(float) + 0.0)  # -0.0 and 0.0 in one range

    dbl = T.DoubleType()
    pschema = T.StructType([T.StructField("customer_id", T.StringType())]
                           + [T.StructField(c, dbl) for c in PART_COLUMNS[1:]] + [T.StructField("_key", dbl)])
    parts = source.keep(session.sql(con.compile(b)).mapInPandas(parts_fn, pschema))
    n = int(parts.count())
    # blocks of customers by score: bounds fixed once at the driver (so a recomputed partition lands in the same
    # block), equal scores always in one block; only the customer count per block comes back
    nblocks = max(int(session.conf.get("spark.sql.shuffle.partitions")), -(-n // 500_000))
    bounds = sorted(set(parts.approxQuantile("_key", [i / nblocks for i in range(1, nblocks)], 0.001)))
    pid = sum((F.when(F.col("_key") > F.lit(float(x)), 1).otherwise(0) for x in bounds), F.lit(0))
    blocks = parts.withColumn("_pid", pid)
    sizes = blocks.groupBy("_pid").count().toPandas().set_index("_pid")["count"].sort_index()
    below = (sizes.cumsum() - sizes).to_dict()
    above = (sizes[::-1].cumsum()[::-1] - sizes).to_dict()
    growth_source = GROWTH_SOURCES[growth]

    def rank_fn(block: pd.DataFrame) -> pd.DataFrame:
        pid = int(block["_pid"].iloc[0])
        return value_ranks(block[PART_COLUMNS], n, int(below[pid]), int(above[pid]), a_share, b_share,
                           growth_source)

    oschema = T.StructType([T.StructField("customer_id", T.StringType())]
                           + [T.StructField(c, dbl) for c in PART_COLUMNS[1:]]
                           + [T.StructField("value_percentile", dbl), T.StructField("value_grade", T.StringType()),
                              T.StructField("value_reason", T.StringType())])
    ranked = blocks.groupBy("_pid").applyInPandas(rank_fn, oschema)
    ctx.notes.append(_note(_margin_source_name(margin_source, default), cfg))
    _backtest(ctx, cfg)
    view = f"loyalist_value_{abs(hash((str(ctx.as_of), id(ranked)))) % 10**8}"
    ranked.createOrReplaceTempView(view)
    return con.table(view)
