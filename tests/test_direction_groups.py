"""describe_groups (who makes each direction group's lift) against an independent pandas computation on the
raw lines of a small synthetic store."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from loyalist.evaluation.direction import (
    DESCRIBE_COLUMNS,
    cutoff_frame,
    describe_groups,
    groups,
)
from loyalist.insights.direction import classify_from
from loyalist.models.direction import DirectionParams

CUTOFFS = [dt.date(2020, 3, 1), dt.date(2020, 5, 1)]


@pytest.fixture(scope="module")
def lines(tmp_path_factory):
    """Steady buyers, some tripling their rate, some stopping, some new (from Nov 2019), a few one-off
    spikes; written as a CSV and ingested as a user would."""
    from loyalist.ingest import ingest
    from loyalist.store import open_store

    rng = np.random.default_rng(3)
    start, end = pd.Timestamp("2019-01-01"), pd.Timestamp("2020-12-31")
    rows = []
    for c in range(90):  # building the small test data set, not library code
        kind = c % 5
        first = pd.Timestamp("2019-11-01") if kind == 4 else start
        days = pd.date_range(first, end)
        rate = np.full(len(days), rng.uniform(0.03, 0.12))
        if kind == 1:
            rate[days >= pd.Timestamp("2020-01-01")] *= 3
        elif kind == 2:
            rate[days >= pd.Timestamp("2020-01-15")] = 0.0
        buy = rng.random(len(days)) < rate
        buy[0] = True
        amount = np.exp(rng.normal(4, 0.5, buy.sum()))
        if c % 7 == 0:
            amount[len(amount) // 2] *= 20  # a spike
        rows.append(pd.DataFrame({"customer_id": f"C{c:03d}", "order_date": days[buy].strftime("%Y-%m-%d"),
                                  "quantity": 1, "amount": amount.round(2)}))
    raw = pd.concat(rows, ignore_index=True)
    folder = tmp_path_factory.mktemp("groups")
    raw.to_csv(folder / "lines.csv", index=False)
    store = open_store(folder / "s.duckdb")
    ingest(store, [folder / "lines.csv"])
    raw["day"] = pd.to_datetime(raw["order_date"])
    yield store, raw.groupby(["customer_id", "day"], as_index=False)["amount"].sum()
    store.close()


def test_describe_groups_matches_pandas(lines):
    store, occ = lines
    t = store.table("transactions")
    p = DirectionParams()
    got = describe_groups(t, CUTOFFS, p)
    assert list(got.columns) == DESCRIBE_COLUMNS
    members, base = [], []
    for c in CUTOFFS:  # independent: windows and per-customer numbers from the raw lines in pandas
        cut = pd.Timestamp(c)
        h = pd.Timedelta(days=182)

        def spend(a, b):
            w = occ[(occ["day"] >= a) & (occ["day"] < b)]
            return w.groupby("customer_id")["amount"]

        known = occ.loc[occ["day"] < cut].groupby("customer_id")["day"]
        d = pd.DataFrame({"first": known.min(), "orders": known.size()})
        d["prev"] = spend(cut - h, cut).sum().reindex(d.index, fill_value=0.0)
        d["next"] = spend(cut, cut + h).sum().reindex(d.index, fill_value=0.0)
        d["before"] = spend(cut - h - pd.Timedelta(days=365), cut - h).sum().reindex(d.index, fill_value=0.0)
        d["largest"] = spend(cut - h, cut).max().reindex(d.index, fill_value=0.0)
        d["new"] = (cut - d["first"]).dt.days <= 182
        base.append(d)
        # group membership (tested in test_direction.py) and eligibility from loyalist itself
        df, st = cutoff_frame(t, c, p, with_inputs=True)
        elig = pd.Series(classify_from(st, p)["eligible"], index=df["customer_id"])
        for (method, label), m in groups(df).items():
            if label != "lapsed":
                ids = df.loc[m, "customer_id"]
                members.append(d.loc[ids].assign(method=method, label=label, eligible=elig[ids].to_numpy()))
    b = pd.concat(base)
    bc = b["next"].sum() / b["prev"].sum()
    allm = pd.concat(members)
    assert len(got) == 8 and (got.set_index(["method", "label"])["customers"]
                              == allm.groupby(["method", "label"]).size()).all()
    labelled = got[(got["method"] == "loyalist") & (got["customers"] > 0)]
    assert len(labelled) >= 1  # the synthetic store labels someone, so the loyalist rows are exercised
    for _, row in got.iterrows():
        g = allm[(allm["method"] == row["method"]) & (allm["label"] == row["label"])]
        if g.empty:
            continue
        lift = g["next"].sum() / g["prev"].sum() / bc
        loo = [(g["next"].sum() - g["next"].iloc[i]) / (g["prev"].sum() - g["prev"].iloc[i]) / bc
               for i in range(len(g)) if g["prev"].sum() - g["prev"].iloc[i] > 0]
        typical = g["before"] * 182 / 365
        want = {"lift": lift, "new_share": g["new"].mean(), "eligible_share": g["eligible"].mean(),
                "median_orders": g["orders"].median(), "largest_next_share": g["next"].max() / g["next"].sum(),
                "median_prev_vs_typical": (g["prev"] / typical)[g["before"] > 0].median(),
                "median_largest_order_share": (g["largest"] / g["prev"])[g["prev"] > 0].median()}
        if loo:
            want["lift_loo_min"], want["lift_loo_max"] = min(loo), max(loo)
        for part, col in ((g[g["new"]], "lift_new"), (g[~g["new"]], "lift_not_new"),
                          (g[g["eligible"]], "lift_eligible"), (g[~g["eligible"]], "lift_not_eligible")):
            if part["prev"].sum() > 0:
                want[col] = part["next"].sum() / part["prev"].sum() / bc
        for k, v in want.items():
            assert row[k] == pytest.approx(v, rel=1e-9, nan_ok=True), (row["method"], row["label"], k)
