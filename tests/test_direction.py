"""Direction: false-alarm control on stable synthetic customers, power on changed ones, the rate test against
scipy's exact binomial test, the Ibis aggregates against plain pandas on the stored lines, mix shift and
dissatisfaction rules on constructed cases, and the held-out evaluation's arithmetic."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from loyalist.evaluation.direction import (
    TUNING_GRID,
    backtest_direction,
    baseline_labels,
    cutoff_frame,
    groups,
    nested_direction,
    stable_false_alarms,
    tune_direction,
)
from loyalist.features.direction import direction_stats
from loyalist.insights.direction import direction_table, exposure_cum, trend_inputs
from loyalist.models.direction import (
    DirectionParams,
    classify_trend,
    dissatisfaction,
    mix_shift,
    poisson_rate_test,
    seasonal_index,
    silence_test,
)


def simulate(n: int, change: np.ndarray | float = 1.0, seed: int = 0, params: DirectionParams = DirectionParams()):
    """Poisson buyers with lognormal order values; the rate is multiplied by `change` in the recent window.
    Order times are drawn explicitly, so the days since the last order (the silence test) are exact."""
    R, E = params.trend_recent_days, params.trend_early_days
    rng = np.random.default_rng(seed)
    first_age = rng.uniform(120, 900, n)
    lam = rng.gamma(1.2, 1 / 25, n)
    mu, sig = rng.normal(5, 1, n), rng.uniform(0.3, 1.3, n)
    d1 = np.clip(first_age - R, 0, E)
    n1 = rng.poisson(lam * d1)
    n2 = rng.poisson(lam * change * R)
    i1, i2 = np.repeat(np.arange(n), n1), np.repeat(np.arange(n), n2)
    when = np.r_[R + rng.uniform(0, d1[i1]), rng.uniform(0, R, len(i2))]  # days before as_of
    # the last order: the latest simulated one, else the first purchase (or, for long histories, an order
    # before the early window)
    last_age = np.where(first_age > R + E, np.minimum(R + E + rng.uniform(0, 30, n), first_age), first_age)
    np.minimum.at(last_age, np.r_[i1, i2], when)

    def sums(idx):
        v = np.exp(mu[idx] + sig[idx] * rng.standard_normal(len(idx)))
        return np.bincount(idx, v, n), np.bincount(idx, v * v, n)

    (s1, q1), (s2, q2) = sums(i1), sums(i2)
    return classify_trend(first_age, last_age, 1 + n1 + n2 + (first_age > R + E) * 3, n1, s1, q1, n2, s2, q2,
                          d1, np.full(n, float(R)), d1, params, gap_exposure=last_age)


def test_stable_customers_rarely_labelled_growing_or_declining():
    r = simulate(20000, 1.0, seed=1)
    labelled = np.isin(r["trend"], ["growing", "declining"])
    assert r["eligible"].mean() > 0.5  # most simulated customers have enough history to be judged
    assert labelled.mean() <= 0.05  # the requirement (measured 4.0%)
    # among the customers judged, 5.3% measured: the spend test's normal approximation is slightly liberal
    # with few orders (Bonferroni over spend and silence would otherwise give <= 5%)
    assert labelled[r["eligible"]].mean() <= 0.06


def test_customers_who_triple_or_stop_are_found():
    up = simulate(5000, 3.0, seed=2)
    busy = up["eligible"] & (up["early_rate"] >= 24)  # at least twice-monthly buyers before
    # measured: 63% of twice-monthly and 52% of monthly buyers found growing after 2 months of a tripled rate
    assert (up["trend"][busy] == "growing").mean() > 0.55
    down = simulate(5000, 0.1, seed=3)
    # a 90% drop over 2 months is found for most customers who bought at least twice a month before
    # (measured 70%; 49% for monthly buyers: two months of a monthly buyer is little evidence)
    busy = down["eligible"] & (down["early_rate"] >= 24)
    assert (np.isin(down["trend"][busy], ["declining", "lapsed"])).mean() > 0.6
    # growth rates point the right way, the projection exceeds the run-rate for growing customers
    g = up["trend"] == "growing"
    assert (up["growth_rate"][g] > 0).all() and (up["projected_12m"][g] >= up["run_rate"][g]).all()


def test_rate_test_matches_scipy_exact_binomial_test():
    cases = [(10, 365, 1, 91), (3, 200, 6, 91), (0, 300, 4, 91), (40, 365, 10, 91), (5, 100, 5, 100)]
    n1, e1, n2, e2 = (np.array(c, float) for c in zip(*cases))
    ours = poisson_rate_test(n1, e1, n2, e2)
    for (a, ea, b, eb), p in zip(cases, ours):
        ref = stats.binomtest(int(b), int(a + b), eb / (ea + eb)).pvalue
        # scipy's two-sided p sums the outcomes no likelier than the observed one; ours doubles the smaller
        # tail (central method): both agree within a factor 2 and ours is never below scipy's by much
        assert ref / 2 - 1e-12 <= p <= min(1.0, 2 * ref) + 1e-12


def test_silence_test_is_exact_and_calibrated():
    n, e_total, e_gap = np.array([10.0, 3, 0, 25]), np.array([400.0, 200, 300, 456]), np.array([100.0, 20, 50, 90])
    ref = stats.binom.pmf(0, n, e_gap / e_total)  # none of n uniform orders in the last e_gap of the exposure
    np.testing.assert_allclose(silence_test(n, e_total, e_gap), np.where(n > 0, ref, 1.0))
    # under "no change" (uniform order times), P(p <= 0.05) <= 0.05
    rng = np.random.default_rng(4)
    k = rng.integers(1, 30, 20000)
    gap = np.array([rng.uniform(0, 1, m).min() for m in k])  # time from the last order to the window's end
    assert (silence_test(k, np.ones_like(gap), gap) <= 0.05).mean() <= 0.05 + 0.005


def test_seasonal_index_has_mean_one_and_follows_activity():
    daily = np.r_[np.full(100, 10.0), np.full(100, 30.0)]
    s = seasonal_index(daily)
    assert s.mean() == pytest.approx(1.0)
    assert s[150] == pytest.approx(1.5) and s[50] == pytest.approx(0.5)


def test_mix_shift_flags_a_switch_and_names_the_groups():
    rng = np.random.default_rng(0)
    rows = []
    for c in range(40):  # stable customers: the same three groups each half-year, with noise
        for w in range(4):
            for g in range(3):
                rows.append((c, w, g, rng.uniform(80, 120)))
    for w in range(4):  # customer 40 switches from groups 0/1 to group 5 in the recent window
        if w == 0:
            rows += [(40, 0, 5, 200.0), (40, 0, 0, 20.0)]
        else:
            rows += [(40, w, 0, 100.0 + w), (40, w, 1, 100.0 - w)]
    c, w, g, s = (np.array(x) for x in zip(*rows))
    m = mix_shift(c, w, g, s, 41, 4)
    assert m["flagged"][40] and not m["flagged"][:40].any()
    past0, past1 = 306 / 600, 294 / 600
    assert m["tv_recent"][40] == pytest.approx(0.5 * (abs(20 / 220 - past0) + past1 + 200 / 220))
    pair = (m["pair_customer"] == 40) & (m["pair_group"] == 5)
    assert m["share_recent"][pair][0] == pytest.approx(200 / 220) and m["share_past"][pair][0] == 0


def test_dissatisfaction_flags_with_their_numbers():
    one = np.ones(2)
    d = dissatisfaction(recent_spend=np.array([900.0, 1000]), prior_spend=np.array([1000.0, 1000]),
                        returned_recent=np.array([300.0, 10]), returned_prior=np.array([10.0, 10]),
                        return_lines_recent=np.array([4.0, 1]),
                        b_recent=4 * one, ls_recent=np.array([4 * np.log(100), 4 * np.log(250)]),
                        ls2_recent=np.array([4 * np.log(100) ** 2 + 0.04, 4 * np.log(250) ** 2 + 0.04]),
                        b_prior=4 * one, ls_prior=4 * np.log(250) * one, ls2_prior=(4 * np.log(250) ** 2 + 0.04) * one,
                        gaps_early=np.array([5.0, 5]), gap_sum_early=np.array([150.0, 150]),
                        gaps_recent=np.array([1.0, 4]), gap_sum_recent=np.array([90.0, 120]),
                        last_age_days=np.array([100.0, 10]), range_recent=np.array([5.0, 30]),
                        range_prior=np.array([30.0, 30]))
    assert d["flag_returns"].tolist() == [True, False]
    assert d["return_share_recent"][0] == pytest.approx(300 / 1200)
    assert d["flag_baskets"].tolist() == [True, False] and d["basket_ratio"][0] == pytest.approx(0.4)
    assert d["flag_gaps"].tolist() == [True, False] and d["current_gap_days"][0] == 100
    assert d["flag_range"].tolist() == [True, False]


def _occasions(store) -> pd.DataFrame:
    """Independent pandas version of purchase occasions from the stored lines."""
    t = store.con.execute("SELECT * FROM transactions").df()
    t = t[~t.is_guest & ~t.is_non_product & ~t.is_cancellation & ~t.is_return & t.customer_id.notna()]
    t["day"] = t["order_date"].dt.normalize()
    occ = t.groupby(["customer_id", "day"])["amount"].sum().reset_index(name="spend")
    return occ[occ["spend"] >= 0]


def test_direction_stats_match_pandas(demo_store):
    as_of = dt.date(2011, 9, 1)
    got = direction_stats(demo_store.table("transactions"), as_of).execute().set_index("customer_id")
    occ = _occasions(demo_store)
    occ = occ[occ["day"] < pd.Timestamp(as_of)].sort_values(["customer_id", "day"])
    occ["n"] = occ.groupby("customer_id").cumcount()
    rep = occ[occ["n"] > 0]
    rec = rep[rep["day"] >= pd.Timestamp(as_of) - pd.Timedelta(days=91)]
    early = rep[(rep["day"] < pd.Timestamp(as_of) - pd.Timedelta(days=91))
                & (rep["day"] >= pd.Timestamp(as_of) - pd.Timedelta(days=456))]
    year = occ[occ["day"] >= pd.Timestamp(as_of) - pd.Timedelta(days=365)]
    assert set(got.index) == set(occ["customer_id"])
    ly = rep[(rep["day"] < pd.Timestamp(as_of) - pd.Timedelta(days=365))
             & (rep["day"] >= pd.Timestamp(as_of) - pd.Timedelta(days=365 + 91))]
    for col, frame, how in (("n_recent", rec, "size"), ("s_recent", rec, "sum"), ("n_early", early, "size"),
                            ("s_early", early, "sum"), ("s_12m", year, "sum"), ("n_ly", ly, "size"),
                            ("s_ly", ly, "sum")):
        g = frame.groupby("customer_id")["spend"]
        ref = (g.size() if how == "size" else g.sum()).reindex(got.index, fill_value=0)
        np.testing.assert_allclose(got[col].to_numpy(float), ref.to_numpy(float), rtol=1e-9, atol=1e-6, err_msg=col)


def test_direction_table_labels_and_reasons(demo_store):
    d = direction_table(demo_store.table("transactions"), None, dt.date(2011, 12, 10))
    assert d["customer_id"].is_unique
    assert set(d["trend"]) <= {"growing", "stable", "declining", "lapsed"}
    assert d["trend_reason"].notna().all()
    lapsed = d[d["trend"] == "lapsed"]
    assert (lapsed["trend_reason"].str.startswith(("no order for", "one order only"))).all()
    labelled = d[d["trend"].isin(["growing", "declining"])]
    assert (labelled["p_value"] < 0.05).all() and (labelled["trend_confidence"] > 0.95).all()
    grow = d[d["trend"] == "growing"]
    assert (grow["growth_rate"] > 0).all() and grow["projected_12m"].notna().all()
    vp = d[d["volume_pricing_candidate"]]
    assert (vp["trend"] == "growing").all() and vp["trend_reason"].str.contains("volume pricing candidate").all()
    shifted = d[d["mix_shift_reason"].notna()]
    assert len(shifted) > 0 and (shifted["mix_shift"] > shifted["mix_shift_normal"]).all()
    assert shifted["mix_shift_reason"].str.contains("more ").all()
    flagged = d[d["dissatisfaction_flags"].notna()]
    assert len(flagged) > 0 and (flagged["trend"] != "lapsed").all()
    assert flagged["dissatisfaction_flags"].str.contains(r"\d").all()  # every flag carries its numbers


def test_backtest_arithmetic_against_pandas(demo_store):
    cutoff = dt.date(2011, 3, 1)
    t = demo_store.table("transactions")
    bt = backtest_direction(t, [cutoff])
    occ = _occasions(demo_store)
    prev = occ[(occ["day"] >= pd.Timestamp(cutoff) - pd.Timedelta(days=182)) & (occ["day"] < pd.Timestamp(cutoff))]
    nxt = occ[(occ["day"] >= pd.Timestamp(cutoff)) & (occ["day"] < pd.Timestamp(cutoff) + pd.Timedelta(days=182))]
    known = set(occ.loc[occ["day"] < pd.Timestamp(cutoff), "customer_id"])
    base = nxt[nxt["customer_id"].isin(known)]["spend"].sum() / prev["spend"].sum()
    assert bt["base_change"].to_numpy() == pytest.approx(base)
    labels = baseline_labels(t, cutoff)
    dec = set(labels.loc[labels["trend"] == "declining", "customer_id"])
    row = bt[(bt["method"] == "baseline") & (bt["label"] == "declining")].iloc[0]
    change = nxt[nxt["customer_id"].isin(dec)]["spend"].sum() / prev[prev["customer_id"].isin(dec)]["spend"].sum()
    assert row["customers"] == len(dec) and row["lift"] == pytest.approx(change / base)
    lapsed = set(direction_table(t, None, cutoff, mix=False).query("trend == 'lapsed'")["customer_id"])
    row = bt[(bt["method"] == "loyalist") & (bt["label"] == "lapsed")].iloc[0]
    assert row["precision"] == pytest.approx(1 - len(lapsed & set(nxt["customer_id"])) / len(lapsed))
    with pytest.raises(ValueError):
        backtest_direction(t, [dt.date(2011, 10, 1)])  # no 6 months after it


def test_backtest_intervals_and_equal_size_groups(demo_store):
    t = demo_store.table("transactions")
    cutoff = dt.date(2011, 3, 1)
    df = cutoff_frame(t, cutoff, DirectionParams())
    m = groups(df)
    for label in ("growing", "declining"):
        n_ours, n_rule = int((df["trend"] == label).sum()), int((df["rule"] == label).sum())
        assert m[("baseline_top_n", label)].sum() == n_ours and m[("loyalist_top_n", label)].sum() == n_rule
    # the rule's top-N declining are its N lowest last3/prior3 (independent: pandas sort)
    n = int((df["trend"] == "declining").sum())
    cand = df[(df["prior3"] > 0) & (df["last3"] > 0)].assign(r=lambda d: d["last3"] / d["prior3"])
    want = set(cand.sort_values("r", kind="stable").head(n)["customer_id"])
    assert set(df.loc[m[("baseline_top_n", "declining")], "customer_id"]) == want
    bt = backtest_direction(t, [cutoff, dt.date(2011, 4, 1)], n_boot=200)
    assert set(bt["method"]) == {"loyalist", "baseline", "baseline_top_n", "loyalist_top_n"}
    for _, row in bt.iterrows():
        col = "precision" if row["label"] == "lapsed" else "lift"
        if np.isfinite(row[f"{col}_lo"]):  # the interval brackets the point estimate
            assert row[f"{col}_lo"] <= row[col] + 1e-9 and row[col] <= row[f"{col}_hi"] + 1e-9
        if row["compared_with"] is not None and np.isfinite(row["diff_lo"]):
            assert row["diff_lo"] <= row["diff"] + 1e-9 <= row["diff_hi"] + 2e-9
    pooled = bt[bt["cutoff"].isna()]
    per = bt[bt["cutoff"].notna()]
    for (method, label), g in per.groupby(["method", "label"]):
        p = pooled[(pooled["method"] == method) & (pooled["label"] == label)].iloc[0]
        assert p["customers"] == g["customers"].sum() and p["prev_revenue"] == pytest.approx(g["prev_revenue"].sum())


def test_tuning_picks_within_the_false_alarm_limit(demo_store):
    grid = {**TUNING_GRID, "trend_recent_days": (61,), "seasonal": (True,), "min_orders": (3,),
            "trend_test": ("spend+silence", "orders+spend")}
    table, chosen = tune_direction(demo_store.table("transactions"), [dt.date(2011, 3, 1), dt.date(2011, 5, 1)],
                                   grid)
    assert len(table) == 2 and (table["false_alarms"] <= 0.05).all()
    best = table.sort_values(["wins", "margin"], ascending=False).iloc[0]
    assert chosen["trend_test"] == best["trend_test"]


def _seasonal_and_growing(n: int = 3):
    """Three customers at a Dec 1 cutoff (61-day recent window, a year before it, the same window a year
    earlier): a seasonal buyer (big autumn orders this year AND last year), a real grower (big autumn orders
    this year only), a customer whose orders fell this autumn. Arrays for classify_trend."""
    small, big = 100.0, 1000.0
    k = 12  # orders in each window
    n1 = np.array([2.0 * k, 2.0 * k, 4.0 * k])
    early = np.array([small, small, big])  # the third customer used to buy big every week; nothing this autumn
    s1, q1 = n1 * early, n1 * early ** 2
    n2 = np.array([k, k, 0.0])
    s2 = np.array([k * big, k * big, 0.0])
    q2 = np.array([k * big ** 2, k * big ** 2, 0.0])
    ly = (np.array([k, 2.0, k]), np.array([k * big, 2 * small, k * big]),
          np.array([k * big ** 2, 2 * small ** 2, k * big ** 2]), np.full(n, 61.0), np.full(n, 61.0))
    first_age = np.full(n, 800.0)
    common = (first_age, np.full(n, 3.0), n1 + n2 + 20, n1, s1, q1, n2, s2, q2, np.full(n, 365.0),
              np.full(n, 61.0), np.full(n, 365.0))
    return common, ly


GAP = np.array([3.0, 3.0, 61.0])  # days since the last order


def test_year_over_year_comparison_does_not_call_a_seasonal_buyer_growing():
    common, ly = _seasonal_and_growing()
    before = classify_trend(*common, DirectionParams(trend_compare="year_before"), gap_exposure=GAP,
                            last_year=ly)
    yoy = classify_trend(*common, DirectionParams(trend_compare="last_year"), gap_exposure=GAP,
                         last_year=ly)
    # against the year before, the seasonal buyer looks like a grower
    assert list(before["trend"][:2]) == ["growing", "growing"] and list(before["compared_with"]) == ["year_before"] * 3
    # against the same months a year earlier: seasonal buyer stable, real grower growing, the fall declining
    assert list(yoy["trend"]) == ["stable", "growing", "declining"]
    assert list(yoy["compared_with"]) == ["last_year"] * 3
    assert yoy["growth_rate"][0] == pytest.approx(0.0) and yoy["growth_rate"][1] > 0  # one year apart: no annualising
    # without the history of a whole year-ago window, the year before is used
    short = (*ly[:3], np.full(3, 30.0), np.full(3, 30.0))
    r = classify_trend(*common, DirectionParams(), gap_exposure=GAP, last_year=short)
    assert list(r["compared_with"]) == ["year_before"] * 3 and list(r["trend"][:2]) == ["growing", "growing"]


def test_year_over_year_comparison_keeps_false_alarms_low():
    fa = stable_false_alarms(DirectionParams(trend_compare="last_year"), n=20000)
    assert fa["loyalist_labelled_share"] <= 0.05  # measured 2.0%
    # stable Poisson buyers compared year over year only (every customer has a full year-ago window)
    rng = np.random.default_rng(5)
    n, R = 20000, 61.0
    lam = rng.gamma(1.2, 1 / 25, n) * 3
    mu, sig = rng.normal(5, 1, n), rng.uniform(0.3, 1.3, n)

    def window(k):
        i = np.repeat(np.arange(n), k)
        v = np.exp(mu[i] + sig[i] * rng.standard_normal(len(i)))
        return k.astype(float), np.bincount(i, v, n), np.bincount(i, v * v, n)

    (n2, s2, q2), (ny, sy, qy) = window(rng.poisson(lam * R)), window(rng.poisson(lam * R))
    zero = np.zeros(n)
    r = classify_trend(np.full(n, 800.0), np.full(n, 1.0), n2 + ny + 10, zero + 20, zero + 2000, zero + 4e5, n2,
                       s2, q2, np.full(n, 365.0), np.full(n, R), np.full(n, 365.0), DirectionParams(trend_test="spend"),
                       last_year=(ny, sy, qy, np.full(n, R), np.full(n, R)))
    assert (r["compared_with"] == "last_year").all()
    labelled = np.isin(r["trend"], ["growing", "declining"])
    assert labelled[r["eligible"]].mean() <= 0.06 and r["eligible"].mean() > 0.3


def test_season_guard_holds_back_a_rise_in_the_base_s_peak():
    common, ly = _seasonal_and_growing()
    p = DirectionParams(trend_compare="year_before")
    peak = classify_trend(*common, p, gap_exposure=GAP, base_swing=np.full(3, 1.7))
    # a rise while the whole base buys 1.7x as often is not labelled growing; the fall still is declining
    assert list(peak["trend"]) == ["stable", "stable", "declining"]
    assert list(peak["season_guarded"]) == [1, 1, 0] and (peak["trend_score"][:2] == 0).all()
    trough = classify_trend(*common, p, gap_exposure=GAP, base_swing=np.full(3, 0.7))
    assert list(trough["trend"]) == ["growing", "growing", "stable"] and list(trough["season_guarded"]) == [0, 0, -1]
    calm = classify_trend(*common, p, gap_exposure=GAP, base_swing=np.full(3, 1.1))
    assert list(calm["trend"]) == ["growing", "growing", "declining"]
    off = classify_trend(*common, DirectionParams(trend_compare="year_before", season_guard=0.0),
                         gap_exposure=GAP, base_swing=np.full(3, 1.7))
    assert list(off["trend"]) == ["growing", "growing", "declining"]
    # customers compared year over year are not guarded (the season is in their comparison)
    yoy = classify_trend(*common, DirectionParams(), gap_exposure=GAP, last_year=ly,
                         base_swing=np.full(3, 1.7))
    assert list(yoy["trend"]) == ["stable", "growing", "declining"]


def test_season_guard_base_activity_against_pandas(demo_store):
    as_of = dt.date(2011, 12, 1)
    t = demo_store.table("transactions")
    p = DirectionParams()
    cum = exposure_cum(t, as_of, p)
    days = p.trend_recent_days + p.trend_early_days
    assert cum.shape == (2, days + 1) and (cum[0] == np.arange(days + 1)).all()  # plain days, base occasions
    occ = _occasions(demo_store)
    occ = occ[(occ["day"] < pd.Timestamp(as_of)) & (occ["day"] >= pd.Timestamp(as_of) - pd.Timedelta(days=days))]
    assert cum[1, -1] == len(occ)  # every purchase occasion (first orders too)
    st, r = trend_inputs(t, as_of, p)
    row = st.sort_values("first_age").iloc[-1]  # the longest history: early window = the whole year
    recent = (occ["day"] >= pd.Timestamp(as_of) - pd.Timedelta(days=61)).sum() / 61
    early = (occ["day"] < pd.Timestamp(as_of) - pd.Timedelta(days=61)).sum() / 365
    assert row["base_swing"] == pytest.approx(recent / early)
    assert set(np.unique(r["season_guarded"])) <= {-1.0, 0.0, 1.0}


def test_nested_evaluation_uses_only_origins_known_at_each_cutoff(demo_store):
    t = demo_store.table("transactions")
    grid = {"trend_recent_days": (61,), "seasonal": (False,), "trend_test": ("spend+silence", "spend"),
            "min_orders": (3,), "alpha": (0.05,)}
    origins = [dt.date(2010, 6, 1), dt.date(2010, 8, 1), dt.date(2010, 10, 1)]
    cutoffs = [dt.date(2011, 3, 1), dt.date(2011, 5, 1)]
    bt, picks = nested_direction(t, cutoffs, origins, grid, n_boot=0)
    assert picks[0]["origins"] == ["2010-06-01", "2010-08-01"]  # 2010-10-01 + 182 days is after 2011-03-01
    assert picks[1]["origins"] == [str(o) for o in origins]
    for c, pk in zip(cutoffs, picks):
        # the pick is the tuning rule's on those origins only, and the cutoff is scored with it
        _, chosen = tune_direction(t, [dt.date.fromisoformat(o) for o in pk["origins"]], grid)
        assert chosen == {k: pk["chosen"][k] for k in chosen}
        alone = backtest_direction(t, [c], DirectionParams(**pk["chosen"]), n_boot=0)
        got = bt[bt["cutoff"] == pd.Timestamp(c)].reset_index(drop=True)
        pd.testing.assert_frame_equal(got[["method", "label", "customers", "lift", "precision"]],
                                      alone[["method", "label", "customers", "lift", "precision"]])
    with pytest.raises(ValueError):
        nested_direction(t, [dt.date(2010, 9, 1)], origins, grid, n_boot=0)
