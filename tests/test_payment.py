"""Payment behaviour: the aggregates against plain pandas, the risk ranking on synthetic histories with known
deteriorating payers (AUC), the skip without invoices, and the whole path end to end: generator CSV ->
`loyalist ingest --kind invoices` -> the analysis steps -> `loyalist payments` / `loyalist alerts`
(tests/test_analysis.py runs `loyalist analyze` with every capability's steps)."""

from __future__ import annotations

import datetime as dt
import json

import ibis
import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from sklearn.metrics import roc_auc_score
from test_events import run_my_steps
from typer.testing import CliRunner

from loyalist.cli import app
from loyalist.customer_base import Settings
from loyalist.features import rfm_summary
from loyalist.features.payment import payment_stats
from loyalist.insights import Context
from loyalist.insights.events import state_events
from loyalist.insights.payment import payment_step
from loyalist.models.payment import risk_score
from loyalist.store import has_table, open_store, write_frame
from loyalist.synthetic import simulate_invoices
from loyalist.web.queries import Reader

DEMO = sorted((REPO / "data" / "demo").glob("*.csv.gz"))


def _stats(sim) -> pd.DataFrame:
    inv = sim.invoices.copy()
    for c in ("invoice_date", "due_date", "paid_date"):
        inv[c] = pd.to_datetime(inv[c]).dt.date
    return payment_stats(ibis.memtable(inv), sim.as_of).execute().merge(sim.truth, on="customer_id")


@pytest.mark.parametrize("seed", [0, 1])
def test_risk_ranks_deteriorating_payers_first(seed):
    sim = simulate_invoices(400, seed=seed)
    s = _stats(sim)
    auc = roc_auc_score(s["deteriorating"], risk_score(s))
    level_only = roc_auc_score(s["deteriorating"], s["dbt_6m"].fillna(0))
    print(f"payment risk AUC {auc:.3f} (DBT level alone {level_only:.3f})")
    assert auc > 0.9
    assert auc > level_only + 0.1  # the trend matters: chronically slow but steady payers are not flagged


def test_payment_stats_match_pandas():
    sim = simulate_invoices(120, seed=5)
    s = _stats(sim).set_index("customer_id")
    inv = sim.invoices.copy()
    end = pd.Timestamp(sim.as_of)
    paid = inv["paid_date"].notna() & (inv["paid_date"] < end)
    inv["dbt"] = np.where(paid, np.maximum((inv["paid_date"] - inv["due_date"]).dt.days, 0), np.nan)
    p6 = inv[paid & (inv["paid_date"] >= end - pd.Timedelta(days=182))]
    ref = p6.groupby("customer_id").apply(lambda g: np.average(g["dbt"], weights=g["amount"]), include_groups=False)
    np.testing.assert_allclose(s.loc[ref.index, "dbt_6m"], ref, rtol=1e-9)
    od = inv[~paid].assign(days=lambda x: (end - x["due_date"]).dt.days)
    for col, lo, hi in (("overdue_1_30", 1, 30), ("overdue_31_60", 31, 60), ("overdue_61_90", 61, 90),
                        ("overdue_90_plus", 91, 10**6)):
        r = od[od["days"].between(lo, hi)].groupby("customer_id")["amount"].sum().reindex(s.index, fill_value=0)
        np.testing.assert_allclose(s[col], r, rtol=1e-9, atol=1e-6, err_msg=col)
    p12 = inv[paid & (inv["paid_date"] >= end - pd.Timedelta(days=365))]
    late = (p12["dbt"] > 0).groupby(p12["customer_id"]).mean()
    np.testing.assert_allclose(s.loc[late.index, "late_share_12m"], late, rtol=1e-9)
    open_amt = inv[~paid].groupby("customer_id")["amount"].sum().reindex(s.index, fill_value=0)
    np.testing.assert_allclose(s["open_amount"], open_amt, rtol=1e-9)


def test_no_invoices_is_a_note_not_an_error(tmp_path):
    store = open_store(tmp_path / "empty.duckdb")
    ctx = Context(store, dt.date(2011, 1, 1), Settings(), None, pd.DataFrame({"customer_id": ["a"]}), {}, [])
    assert payment_step(ctx) is None
    assert any("no invoices" in n for n in ctx.notes)
    store.close()


def test_a_later_run_without_invoices_before_its_as_of_drops_the_earlier_table(tmp_path):
    db = tmp_path / "shop.duckdb"
    store = open_store(db)
    sim = simulate_invoices(customer_ids=["a", "b", "c"], as_of=dt.date(2011, 12, 10), months=12, seed=3)
    store.con.register("sim", sim.invoices)
    store.con.execute("INSERT INTO invoices BY NAME SELECT * FROM sim")
    customers = pd.DataFrame({"customer_id": ["a", "b", "c"]})
    first = Context(store, dt.date(2011, 12, 10), Settings(), None, customers, {}, [])
    assert len(payment_step(first)) == 3
    assert store.table("payment_behaviour").count().execute() == 3
    write_frame(store, "customer_insights", customers.assign(revenue=1.0), replace=True)
    before_invoices = sim.invoices["invoice_date"].min().date()  # as of the first invoice's day: none before it
    later = Context(store, before_invoices, Settings(), None, customers, {}, [])
    assert payment_step(later) is None
    assert not has_table(store, "payment_behaviour")
    assert later.notes == [(
        "payment: the store holds no invoices before the as-of date, so payment behaviour and payment risk are "
        "skipped (load them with `loyalist ingest FILE --kind invoices`); the payment_behaviour table of an earlier "
        "run (as of 2011-12-10) was removed")]
    again = Context(store, before_invoices, Settings(), None, customers, {}, [])
    assert payment_step(again) is None and "removed" not in again.notes[0]
    store.close()
    # the readers of payment_behaviour without it: `loyalist payments` names what to run, the customer page has none
    res = CliRunner().invoke(app, ["payments", "--db", str(db)])
    assert res.exit_code == 1 and "no payment behaviour yet" in res.output
    assert Reader(db).customer("a")["payment_behaviour"] is None
    assert Reader(db, preload=True).customer("a")["payment_behaviour"] is None


def test_payment_slowdown_events_do_not_come_from_an_earlier_runs_table(tmp_path):
    as_of = dt.date(2011, 12, 10)
    store = open_store(tmp_path / "shop.duckdb")
    sim = simulate_invoices(customer_ids=[f"c{i}" for i in range(40)], as_of=as_of, months=12, seed=3)
    store.con.register("sim", sim.invoices)
    store.con.execute("INSERT INTO invoices BY NAME SELECT * FROM sim")
    ctx = Context(store, as_of, Settings(), None, pd.DataFrame({"customer_id": sim.truth["customer_id"]}), {}, [])
    def slowdowns() -> int:
        return sum((part["type"] == "payment_slowdown").sum() for part in state_events(ctx, as_of, {}))

    payment_step(ctx)
    assert slowdowns() > 0
    # the invoices re-loaded with corrected dates, all after as_of: the same as-of date now has none before it
    store.con.execute("UPDATE invoices SET invoice_date = invoice_date + 400, due_date = due_date + 400, "
                      "paid_date = paid_date + 400")
    assert payment_step(ctx) is None
    assert slowdowns() == 0
    store.close()


def test_invoices_end_to_end_through_ingest_and_analyze(tmp_path):
    runner = CliRunner()
    db = str(tmp_path / "shop.duckdb")
    assert runner.invoke(app, ["ingest", *map(str, DEMO), "--db", db]).exit_code == 0
    as_of = dt.date(2011, 12, 10)
    store = open_store(db, read_only=True)
    ids = sorted(rfm_summary(store.table("transactions"), as_of).execute()["customer_id"])[:200]
    store.close()
    sim = simulate_invoices(customer_ids=ids, as_of=as_of, seed=7)
    csv = sim.write_csv(tmp_path / "invoices.csv")
    res = runner.invoke(app, ["ingest", str(csv), "--kind", "invoices", "--db", db, "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["files"][0]["loaded"] == len(sim.invoices)
    store = open_store(db)
    ci = run_my_steps(store, as_of).set_index("customer_id")  # analyze with this capability's steps only
    store.close()
    res = runner.invoke(app, ["payments", "--db", db, "--format", "json"])
    assert res.exit_code == 0, res.output
    pay = pd.DataFrame(json.loads(res.stdout)).merge(sim.truth, on="customer_id")
    assert len(pay) == len(ids) and pay["payment_risk"].is_monotonic_decreasing
    assert roc_auc_score(pay["deteriorating"], pay["payment_risk"]) > 0.85
    assert (pay.loc[pay["payment_risk"] > 0.5, "payment_risk_reason"] != "pays as usual").all()
    for col in ("trend", "growth_rate", "trend_confidence", "volume_pricing_candidate", "mix_shift",
                "mix_shift_reason", "dissatisfaction_flags", "payment_risk", "payment_risk_reason", "dbt_days_6m"):
        assert col in ci.columns, col
    assert ci.loc[ids, "payment_risk"].notna().all()
    assert ci.drop(index=ids)["payment_risk"].isna().all()
    np.testing.assert_allclose(ci.loc[pay["customer_id"], "dbt_days_6m"], pay["dbt_6m"], equal_nan=True)
    res = runner.invoke(app, ["alerts", "--db", db, "--type", "payment_slowdown", "--format", "json"])
    assert res.exit_code == 0, res.output
    slow = pd.DataFrame(json.loads(res.stdout))
    assert len(slow) > 0 and slow["customer_id"].isin(ids).all()
    assert sim.truth.set_index("customer_id").loc[slow["customer_id"], "deteriorating"].mean() > 0.6
