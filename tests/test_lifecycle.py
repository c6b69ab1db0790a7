"""Lifecycle stages from each customer's own rhythm (synthetic histories with known stages), conversion tables
against pandas, the analysis step and the lifecycle command on the demo data."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO
from typer.testing import CliRunner

from loyalist.cli import app
from loyalist.customer_base import Settings, fit_base, score
from loyalist.features import rfm_summary
from loyalist.ingest import ingest
from loyalist.insights import Context
from loyalist.insights import aggregate as agg
from loyalist.models import lifecycle as lc
from loyalist.store import has_table, open_store

AS_OF = dt.date(2011, 12, 10)


def _snap(rows):
    return pd.DataFrame(rows, columns=["snapshot", "customer_id", "orders", "span_days", "since_last_days",
                                       "last_gap_days"]).assign(snapshot=pd.Timestamp("2011-01-01"))


def test_stages_follow_the_customers_own_rhythm():
    # a population of weekly buyers sets the population gap (7 days)
    pop = [(0, f"p{i}", 30, 7 * 29, 3, 7.0) for i in range(50)]
    s = _snap(pop + [
        (0, "weekly_recent", 20, 7 * 19, 10, 7.0),       # 10 days < 2 x 7
        (0, "weekly_late", 20, 7 * 19, 20, 7.0),         # 20 > 2 x 7: at risk
        (0, "weekly_gone", 20, 7 * 19, 40, 7.0),         # 40 > 4 x 7: lapsed
        (0, "monthly_recent", 20, 30 * 19, 40, 30.0),    # 40 days is normal for a monthly buyer
        (0, "one_recent", 1, 0, 5, np.nan),
        (0, "one_old", 1, 0, 100, np.nan),
        (0, "came_back", 12, 7 * 10 + 200, 3, 200.0),    # 10 weekly gaps, then 200 days away, bought 3 days ago
    ])
    st = lc.assign_stages(s).set_index("customer_id")["stage"]
    assert st["weekly_recent"] == "active"
    assert st["weekly_late"] == "at risk"
    assert st["weekly_gone"] == "lapsed"
    assert st["monthly_recent"] == "active"  # same 40 days, own rhythm: not lapsed
    assert st["one_recent"] == "new" and st["one_old"] == "lapsed"
    assert st["came_back"] == "reactivated"


def test_reasons_say_the_numbers_in_words():
    # the reasons said "1 orders", "1 days since the last", and "orders every ~7 days (1 orders ...)" for a
    # customer with one order (no rhythm of their own)
    pop = [(0, f"p{i}", 30, 7 * 29, 3, 7.0) for i in range(50)]
    s = lc.assign_stages(_snap(pop + [(0, "one", 1, 0, 1, np.nan), (0, "one_old", 1, 0, 100, np.nan),
                                      (0, "daily", 40, 39, 1, 1.0), (0, "came_back", 12, 7 * 10 + 200, 3, 200.0)]))
    r = (s["stage"] + ": " + lc.stage_reason(s)).set_axis(s["customer_id"])
    assert r["one"] == "new: 1 order, 1 day ago; the population orders every ~7 days"
    assert r["one_old"] == "lapsed: 1 order, 100 days ago; the population orders every ~7 days"
    assert r["daily"] == ("active: orders every ~1 day (40 orders, shrunk toward the population's ~7 days); "
                          "1 day since the last")
    g = round(s.set_index("customer_id").loc["came_back", "typical_gap_days"])
    assert r["came_back"] == (f"reactivated: orders every ~{g} days (12 orders, shrunk toward the population's "
                              "~7 days); 3 days since the last; came back after 200 days away")


def test_typical_gap_shrinks_toward_the_population():
    pop = [(0, f"p{i}", 10, 9 * 60, 3, 60.0) for i in range(21)]
    s = _snap(pop + [(0, "two", 2, 5, 1, 5.0), (0, "many", 41, 5 * 40, 1, 5.0)])
    g = lc.assign_stages(s).set_index("customer_id")["typical_gap_days"]
    assert g["two"] == pytest.approx(np.exp((np.log(5) + 2 * np.log(60)) / 3))
    assert 5 < g["many"] < g["two"] < 60


def test_conversion_rates_sum_to_one_and_match_pandas():
    st = pd.DataFrame({"snapshot": pd.to_datetime(["2011-01-01"] * 4 + ["2011-02-01"] * 5),
                       "customer_id": ["a", "b", "c", "d", "a", "b", "c", "d", "e"],
                       "stage": ["new", "new", "active", "active", "active", "lapsed", "active", "at risk", "new"]})
    conv = lc.conversion(st)
    assert conv.groupby(["period_start", "from_stage"])["rate"].sum().round(12).eq(1).all()
    r = conv.set_index(["from_stage", "to_stage"])["rate"]
    assert r[("new", "active")] == 0.5 and r[("new", "lapsed")] == 0.5 and r[("active", "at risk")] == 0.5
    assert "e" not in set()  # e joins in February: not counted in January's base
    assert conv[conv["from_stage"] == "new"]["customers"].sum() == 2


def test_first_to_second_conversion():
    first = pd.Series(pd.to_datetime(["2011-01-05", "2011-01-20", "2011-01-25", "2011-06-01"]),
                      index=["a", "b", "c", "d"])
    second = pd.Series(pd.to_datetime(["2011-02-01", "2011-06-01", None, "2011-06-10"]), index=["a", "b", "c", "d"])
    f = lc.first_to_second(first, second, dt.date(2011, 7, 1))
    assert f["period_start"].tolist() == [pd.Timestamp("2011-01-01")]  # June's 90 days are not over
    assert f["base"].iloc[0] == 3 and f["customers"].iloc[0] == 1 and f["rate"].iloc[0] == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def store(demo_store):
    return demo_store


def test_lifecycle_step_on_demo(store):
    summary = rfm_summary(store.table("transactions"), AS_OF).execute()
    fitted = fit_base(summary, "bgnbd")
    table = score(fitted, summary, Settings())
    ctx = Context(store, AS_OF, Settings(), fitted, table, {}, [])
    added = agg.lifecycle_step(ctx)
    assert len(added) == len(table) and added["customer_id"].is_unique
    assert set(added["lifecycle_stage"]) <= set(lc.STAGES) and added["lifecycle_stage"].notna().all()
    assert {"new", "active", "at risk", "lapsed"} <= set(added["lifecycle_stage"])
    # independent check of "days since last order" and the stage of one-order customers
    one = table[table["orders"] == 1][["customer_id", "last_order"]].merge(added, on="customer_id")
    assert set(one["lifecycle_stage"]) <= {"new", "at risk", "lapsed"}
    assert has_table(store, "cohorts") and has_table(store, "lifecycle_conversion")
    conv = store.table("lifecycle_conversion").execute()
    f2 = conv[conv["kind"] == "first_to_second"]
    # first-to-second within 90 days from the customer table's own first orders
    occ = rfm_summary(store.table("transactions"), AS_OF).execute()
    assert f2["base"].sum() <= len(occ)
    assert ((f2["rate"] >= 0) & (f2["rate"] <= 1)).all()
    reasons = added.set_index("customer_id")["lifecycle_reason"]
    assert reasons.str.contains(r"\d+ days? (?:since the last|ago)").all()


def test_lifecycle_command(store, tmp_path):
    db = tmp_path / "l.duckdb"
    s = open_store(db)
    ingest(s, DEMO)
    s.close()
    r = CliRunner().invoke(app, ["lifecycle", "--db", str(db)])
    assert r.exit_code == 0, r.output
    assert "First-to-second-order conversion" in r.stdout and "reactivated" in r.stdout
    out = tmp_path / "stages.csv"
    r = CliRunner().invoke(app, ["lifecycle", "--db", str(db), "--out", str(out)])
    assert r.exit_code == 0, r.output
    f = pd.read_csv(out)
    assert set(f["lifecycle_stage"]) <= set(lc.STAGES) and f["customer_id"].is_unique
    r = CliRunner().invoke(app, ["lifecycle", "--db", str(db), "--table", "conversion", "--format", "json"])
    assert r.exit_code == 0, r.output
