"""Acceptance checks of issue 7's user-facing surface (direction, payment, events): defects found by using the
commands as a new user would, each pinned by a test that failed before its fix."""

from __future__ import annotations

import datetime as dt

import ibis
import numpy as np
import pandas as pd

from loyalist.features.payment import payment_stats
from loyalist.models.payment import risk_reasons

AS_OF = dt.date(2024, 1, 1)


def _invoices(rows: list[tuple]) -> pd.DataFrame:
    """(customer, invoice date, days to due, days paid after due or None, amount) -> an invoices frame."""
    out = []
    for i, (c, day, terms, late, amount) in enumerate(rows):
        inv = pd.Timestamp(day)
        due = inv + pd.Timedelta(days=terms)
        paid = None if late is None else due + pd.Timedelta(days=late)
        out.append({"invoice_id": f"I{i}", "customer_id": c, "invoice_date": inv.date(), "due_date": due.date(),
                    "amount": float(amount), "paid_date": None if paid is None else paid.date(), "disputed": False})
    return pd.DataFrame(out)


def test_overdue_count_is_zero_not_missing_without_open_invoices():
    # "a" has paid everything; "b" has one invoice 74 days past due
    inv = _invoices([("a", "2023-06-01", 30, 0, 100), ("a", "2023-10-01", 30, 2, 100),
                     ("b", "2023-09-01", 48, None, 250), ("b", "2023-07-01", 30, 5, 80)])
    s = payment_stats(ibis.memtable(inv), AS_OF).execute().set_index("customer_id")
    assert s.loc["a", "overdue_60_count"] == 0  # was NULL: `loyalist payments` showed an empty cell
    assert s.loc["b", "overdue_60_count"] == 1
    assert s.loc["b", "overdue_61_90"] == 250


def _stats(**kw) -> pd.DataFrame:
    base = {"dbt_3m": 0.0, "dbt_6m": 0.0, "dbt_12m": 0.0, "dbt_prev_6m": 0.0, "amount_12m": 1000.0,
            "overdue_60_count": 0.0, "overdue_61_90": 0.0, "overdue_90_plus": 0.0, "disputed_share_12m": 0.0}
    return pd.DataFrame([{**base, **kw}])


def test_slowdown_reason_names_the_comparison_that_slowed():
    # the last 6 months are no later than the 6 before (22 vs 26 days), but the last 3 months are 12 days later
    # than the last 12: the points come from the 3-month comparison, and the reason must say so (it said
    # "paid -4 days later on average over the last 6 months than the 6 before")
    s = _stats(dbt_3m=36.0, dbt_6m=22.0, dbt_12m=24.0, dbt_prev_6m=26.0)
    reason = risk_reasons(s, min_points=0.3)[0]
    assert "paid 12 days later on average over the last 3 months than over the last 12 (DBT 36 vs 24 days)" in reason
    assert "-4 days later" not in reason and "over the last 6 months than the 6 before" not in reason
    # a 6-month slowdown keeps the wording
    s = _stats(dbt_3m=30.0, dbt_6m=28.0, dbt_12m=20.0, dbt_prev_6m=14.0)
    assert risk_reasons(s)[0].startswith(
        "paid 14 days later on average over the last 6 months than the 6 before (DBT 28 vs 14 days)")


def test_overdue_reason_counts_in_plain_words():
    s = _stats(overdue_60_count=1.0, overdue_61_90=984.0, amount_12m=2000.0)
    assert "1 invoice 60+ days overdue (984)" in risk_reasons(s)[0]
    s = _stats(overdue_60_count=3.0, overdue_61_90=1000.0, overdue_90_plus=2500.5, amount_12m=9000.0)
    assert "3 invoices 60+ days overdue (3,500)" in risk_reasons(s)[0]
    assert np.isfinite(s["overdue_60_count"]).all()


def test_trend_reason_of_a_customer_without_an_earlier_window(demo_store):
    # customers whose first order falls inside the 61-day trend window have no earlier window: the reason said
    # "spend 0/yr over the last 2 months vs nan/yr in the year before; 0.0 vs nan orders/yr" (the recent
    # figures count repeat orders only, so a new customer's own first order showed as no spend)
    from loyalist.insights.direction import direction_table

    as_of = dt.date(2011, 12, 10)
    d = direction_table(demo_store.table("transactions"), None, as_of).set_index("customer_id")
    assert not d["trend_reason"].str.contains(r"\bnan\b|<NA>|\binf\b").any()
    tx = demo_store.con.sql(
        "select customer_id, cast(order_date as date) as day from transactions where customer_id is not null and "
        "not (is_guest or is_non_product or is_cancellation or is_return) and order_date < '2011-12-10'").df()
    occ = tx.drop_duplicates().groupby("customer_id")["day"].agg(["min", "count"])
    age = (pd.Timestamp(as_of) - pd.to_datetime(occ["min"])).dt.days
    new = age[(age <= 61) & (age > 0)].index  # first order in the recent window
    assert len(new) > 5
    for cid in new:
        n = occ.loc[cid, "count"]
        expect = (f"first order {age[cid]} day{'' if age[cid] == 1 else 's'} ago, {n} order{'' if n == 1 else 's'} "
                  "so far: too little history to judge (stable by default)")
        assert d.loc[cid, "trend"] == "stable" and d.loc[cid, "trend_reason"] == expect, cid


def test_out_of_range_options_are_usage_errors(tmp_path):
    # `direction --top -3` ended in a DuckDB traceback, `--top 0` listed every row, and `payments --min-risk 50`
    # (a percentage typed for the 0-1 score) silently listed nobody
    from typer.testing import CliRunner

    from loyalist.cli import app

    db = str(tmp_path / "none.duckdb")
    for args, opt in ((["direction", "--top", "-3"], "--top"), (["direction", "--top", "0"], "--top"),
                      (["payments", "--top", "0"], "--top"), (["payments", "--min-risk", "50"], "--min-risk"),
                      (["alerts", "--attempts", "0"], "--attempts"), (["alerts", "--backoff", "-1"], "--backoff")):
        res = CliRunner().invoke(app, [*args, "--db", db])
        assert res.exit_code == 2 and opt in res.output and "Traceback" not in res.output, (args, res.output)


def test_volume_pricing_reason_says_when_the_projection_caps_the_growth(demo_store):
    # a customer measured at +1000%/yr is projected with the growth capped at +100%/yr: the reason showed
    # "projected 59,273 ... (growth +1000%/yr ...)" with nothing to say why the projection is only 1.5x the run-rate
    from loyalist.insights.direction import direction_table

    d = direction_table(demo_store.table("transactions"), None, dt.date(2011, 5, 1), mix=False)
    vp = d[d["volume_pricing_candidate"]]
    assert len(vp) >= 1
    for _, r in vp.iterrows():
        k = np.log1p(min(r["growth_rate"], 1.0))  # the projection, computed here from its definition
        proj = r["run_rate"] * np.exp(k * 61 / 2 / 365.25) * (np.expm1(k) / k if k else 1.0)
        assert np.isclose(r["projected_12m"], proj, rtol=1e-9)
        capped = ", projected at +100%/yr at most" in r["trend_reason"]
        assert capped == (r["growth_rate"] > 1.0), r["trend_reason"]
        assert f"projected {r['projected_12m']:,.0f} over the next 12 months" in r["trend_reason"]
    assert (vp["growth_rate"] > 1.0).any()


def test_lapsed_reason_numbers_against_pandas(demo_store):
    # days since the last order and the usual gap of every lapsed customer, from the lines (and "1 day", not
    # "1 days", for two orders on consecutive days)
    from loyalist.insights.direction import direction_table

    as_of = dt.date(2011, 12, 10)
    d = direction_table(demo_store.table("transactions"), None, as_of, mix=False).set_index("customer_id")
    tx = demo_store.con.sql(
        "select distinct customer_id, cast(order_date as date) as day from transactions where customer_id is not "
        "null and not (is_guest or is_non_product or is_cancellation or is_return) and order_date < '2011-12-10'").df()
    g = tx.groupby("customer_id")["day"].agg(["min", "max", "count"])
    lapsed = d[d["trend"] == "lapsed"]
    assert len(lapsed) > 100
    for cid, r in lapsed.iterrows():
        since = (pd.Timestamp(as_of) - pd.Timestamp(g.loc[cid, "max"])).days
        n = g.loc[cid, "count"]
        if n == 1:
            assert r["trend_reason"] == f"one order only, {since} days ago"
            continue
        gap = round((pd.Timestamp(g.loc[cid, "max"]) - pd.Timestamp(g.loc[cid, "min"])).days / (n - 1))
        after = max(180, round(3 * (pd.Timestamp(g.loc[cid, "max"]) - pd.Timestamp(g.loc[cid, "min"])).days / (n - 1)))
        assert since > after
        assert r["trend_reason"] == (f"no order for {since} days (usual gap {gap} day{'' if gap == 1 else 's'}; "
                                     f"lapsed after {after})"), cid
