"""Aggregate view: weekly demand series and hour x weekday counts checked against plain pandas on the raw demo
files; the forecast orchestration (method choice, intervals, MASE, nested backtest) on demo and synthetic data;
the forecast/peaks commands end to end."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest
from conftest import DEMO, demo_lines
from typer.testing import CliRunner

from loyalist.cli import app
from loyalist.features import aggregate as feat
from loyalist.ingest import ingest
from loyalist.insights import aggregate as agg
from loyalist.models import forecast as fm
from loyalist.store import open_store

AS_OF = dt.date(2011, 12, 10)


def raw_demand() -> pd.DataFrame:
    """Independent pandas version of the demand rule: product lines with positive quantity, cancellations
    (invoice 'C...') and non-product codes left out, guests kept, the two exports' overlap counted once."""
    df = demo_lines()
    df = df[~df["non_product"] & ~df["cancelled"] & (df["Quantity"] > 0)]
    return df.assign(week=df["InvoiceDate"].dt.to_period("W-SUN").dt.start_time)


@pytest.fixture(scope="module")
def store(demo_store):
    return demo_store


@pytest.fixture(scope="module")
def raw():
    return raw_demand()


def test_weekly_total_and_products_match_pandas(store, raw):
    t = store.table("transactions")
    total = feat.weekly_demand(t, AS_OF, "total").execute()
    expect = raw.groupby("week")["Quantity"].sum()
    got = total.assign(week=pd.to_datetime(total["week"])).set_index("week")["units"].sort_index()
    assert len(got) == len(expect) > 100
    np.testing.assert_allclose(got.to_numpy(), expect.sort_index().to_numpy())
    orders = raw.groupby("week")["Invoice"].nunique().sort_index()
    np.testing.assert_array_equal(total.sort_values("week")["orders"].to_numpy(), orders.to_numpy())
    prod = feat.weekly_demand(t, AS_OF, "product").execute()
    top = raw["StockCode"].value_counts().index[:5]
    for code in top:
        e = raw[raw["StockCode"] == code].groupby("week")["Quantity"].sum().sort_index()
        g = prod[prod["series_id"] == code].assign(week=lambda f: pd.to_datetime(f["week"])).set_index("week")
        np.testing.assert_allclose(g["units"].sort_index().to_numpy(), e.to_numpy())


def test_dense_series_fills_missing_weeks_with_zero(store, raw):
    y = agg.weekly_series(store, AS_OF, "total")
    # last complete week before Saturday 2011-12-10 is the one starting Monday 2011-11-28
    assert y["ds"].max() == pd.Timestamp("2011-11-28")
    assert (y["ds"].diff().dropna() == pd.Timedelta(weeks=1)).all()
    expect = raw.groupby("week")["Quantity"].sum()
    merged = y.set_index("ds")["y"]
    missing = merged.index.difference(expect.index)
    assert len(missing) >= 1 and (merged[missing] == 0).all()  # Christmas closures
    assert merged[expect.index[expect.index <= y["ds"].max()]].sum() == pytest.approx(
        expect[expect.index <= y["ds"].max()].sum())


def test_hour_weekday_counts_match_pandas(store, raw):
    hw = feat.hour_weekday(store.table("transactions"), AS_OF).execute()
    first = raw.groupby("Invoice").agg(at=("InvoiceDate", "min"), lines=("Invoice", "size"))
    first["dow"] = first["at"].dt.dayofweek
    first["hour"] = first["at"].dt.hour
    e = first.groupby(["dow", "hour"]).agg(orders=("lines", "size"), lines=("lines", "sum")).reset_index()
    g = hw.sort_values(["dow", "hour"]).reset_index(drop=True)
    np.testing.assert_array_equal(g[["dow", "hour", "orders", "lines"]].to_numpy(int),
                                  e.sort_values(["dow", "hour"])[["dow", "hour", "orders", "lines"]].to_numpy(int))
    hours, weeks, sentences = agg.compute_peaks(store, AS_OF)
    busiest = e.groupby("dow")["orders"].sum().idxmax()
    assert sentences[0].startswith(f"Busiest day: {agg.DAYS[busiest]}")
    assert any(s.startswith("Peak season:") for s in sentences)
    assert weeks["orders"].sum() == len(first)


def test_peak_sentences_count_in_words():
    # a store with few orders: "(1 orders over the history)", "1 weeks had ...", "had 1 orders"
    hw = pd.DataFrame({"day": ["Monday", "Tuesday"], "hour": [9, 10], "orders": [1, 1]})
    wk = pd.DataFrame({"week": pd.to_datetime(["2011-01-03", "2011-01-10", "2011-01-17"]), "orders": [1, 0, 0],
                       "peak": [True, False, False], "week_of_year": [1, 2, 3], "index": [3.0, 0.0, 0.0]})
    text = " ".join(agg.describe_peaks(hw, wk))
    assert "(1 order over the history)" in text
    assert "1 week had >= " in text and "had 1 order (3.00 x)" in text


def _store_without_products(folder):
    path = folder / "no_products.csv"
    path.write_text("customer_id,order_date,quantity,amount\n" + "".join(
        f"c{i % 7},2011-{1 + i % 12:02d}-{1 + i % 27:02d},1,{10 + i}\n" for i in range(80)))
    store = open_store(folder / "np.duckdb")
    ingest(store, [path])
    return store


def test_store_without_products_says_why_there_is_no_demand(tmp_path):
    # CDNOW-like data (no product codes): `forecast` ended in a traceback (an empty forecasts table without types),
    # `peaks` said "no orders before ...", and analyze noted "only order peaks are computed" (none were)
    store = _store_without_products(tmp_path)
    notes: list[str] = []
    assert agg.run_all(store, dt.date(2012, 1, 1), None, {}, notes) == {}
    assert notes == [("forecast, peaks and staffing skipped: the transactions carry no product codes, and demand "
                      "(forecasts, peaks, staffing) counts the product lines sold")]
    store.close()
    for args in (["forecast"], ["forecast", "--level", "orders"], ["peaks"]):
        r = CliRunner().invoke(app, [*args, "--db", str(tmp_path / "np.duckdb")])
        assert r.exit_code == 1 and "the transactions carry no product codes" in r.output, r.output


def test_dense_weekly_pads_short_series():
    w = pd.DataFrame({"series_id": ["a", "a", "b"], "week": pd.to_datetime(["2011-01-03", "2011-01-17", "2011-01-10"]),
                      "units": [3.0, 5.0, 2.0]})
    y = fm.dense_weekly(w, pd.Timestamp("2011-01-24"), min_weeks=6)
    a = y[y["unique_id"] == "a"]
    assert len(a) == 6 and a["y"].sum() == 8 and a["y"].tolist()[-4:] == [3.0, 0.0, 5.0, 0.0]
    assert len(y[y["unique_id"] == "b"]) == 6


def test_mase_and_choice_are_computed_from_the_backtest():
    y = pd.DataFrame({"unique_id": "s", "ds": pd.date_range("2011-01-03", periods=6, freq="W-MON"),
                      "y": [1.0, 3.0, 2.0, 6.0, 4.0, 4.0]})
    scale = fm.naive_scale(y, [pd.Timestamp("2011-01-24")])
    assert scale[("s", pd.Timestamp("2011-01-24"))] == pytest.approx((2 + 1 + 4) / 3)
    cv = pd.DataFrame({"unique_id": "s", "ds": y["ds"][4:], "cutoff": pd.Timestamp("2011-01-24"),
                       "y": [4.0, 4.0], "A": [3.0, 5.0], "B": [4.0, 3.0]})
    err = fm.backtest_errors(cv, ["A", "B"], scale)
    a = err[err["method"] == "A"].iloc[0]
    assert a["mae"] == pytest.approx(1.0) and a["mase"] == pytest.approx(1.0 / (7 / 3))
    assert fm.choose(err, {"s": ["A", "B"]})["s"] == "B"
    assert fm.choose(err, {"s": ["A"]})["s"] == "A"  # only allowed candidates


def test_methods_suit_the_series_and_intervals_are_ordered():
    rng = np.random.default_rng(1)
    weeks = pd.date_range("2009-11-30", periods=110, freq="W-MON")
    season = 1 + 0.5 * np.sin(2 * np.pi * np.arange(110) / 52)
    smooth = rng.poisson(200 * season).astype(float)
    sparse = (rng.random(110) < 0.15) * rng.poisson(6, 110).astype(float)
    y = pd.concat([pd.DataFrame({"unique_id": "smooth", "ds": weeks, "y": smooth}),
                   pd.DataFrame({"unique_id": "sparse", "ds": weeks, "y": sparse})], ignore_index=True)
    allowed = fm.candidates(y, aggregate=False)
    assert set(allowed["sparse"]) == set(fm.INTERMITTENT)
    assert allowed["smooth"] == ["AutoETS", "ETS+SNaive", *fm.INTERMITTENT]
    assert fm.candidates(y, aggregate=True)["smooth"] == ["AutoETS", "ETS+SNaive"]
    res = fm.forecast_series(y, h=13)
    f = res.forecasts
    assert len(f) == 26 and set(f["week"]) == set(pd.date_range(weeks[-1] + pd.Timedelta(weeks=1), periods=13,
                                                                   freq="W-MON"))
    assert (f["lo95"] <= f["lo80"] + 1e-9).all() and (f["lo80"] <= f["forecast"] + 1e-9).all()
    assert (f["forecast"] <= f["hi80"] + 1e-9).all() and (f["hi80"] <= f["hi95"] + 1e-9).all()
    assert (f["lo95"] >= 0).all()
    sel = res.selection.set_index("series_id")
    assert sel.loc["sparse", "method"] in fm.INTERMITTENT
    assert sel["backtest_mae"].notna().all()
    # the smooth series' level is about right (mean 200 x season)
    s = f[f["series_id"] == "smooth"]["forecast"].mean()
    assert 100 < s < 320


def test_rolling_backtest_scores_selected_honestly():
    from loyalist.evaluation.forecast import passes, rolling_backtest

    rng = np.random.default_rng(7)
    weeks = pd.date_range("2009-11-30", periods=106, freq="W-MON")
    parts = [pd.DataFrame({"unique_id": f"p{i}", "ds": weeks,
                           "y": ((rng.random(106) < 0.3) * rng.poisson(4, 106)).astype(float)}) for i in range(12)]
    metrics, err = rolling_backtest(pd.concat(parts, ignore_index=True), aggregate=False)
    m = metrics.set_index("method")
    assert {"selected", "SeasonalNaive", "MovingAverage", *fm.INTERMITTENT} <= set(m.index)
    assert (m["series"] == 12).all() and (m["origins"] >= 1).all()
    assert m["coverage80"].between(0, 1).all() and (m["coverage95"] >= m["coverage80"] - 0.05).all()
    # "selected" rows are, per series and origin, a copy of one candidate's scores on that origin
    sel = err[err["method"] == "selected"]
    other = err[err["method"].isin(fm.INTERMITTENT)]
    j = sel.merge(other, on=["unique_id", "cutoff", "mae"], suffixes=("", "_c"))
    assert j[["unique_id", "cutoff"]].drop_duplicates().shape[0] == len(sel)
    # white-noise intermittent demand: any smoothing method beats last year's value
    assert m.loc["selected", "mase_median"] < m.loc["SeasonalNaive", "mase_median"]
    assert passes(metrics.assign(level="product")) == {"product": True}


def test_bottom_up_and_reconcile():
    rates = pd.DataFrame({"customer_id": ["c1", "c2"], "rate": [0.5, 1.0]})
    cp = pd.DataFrame({"customer_id": ["c1", "c1", "c2"], "product_id": ["x", "y", "x"],
                       "units_per_order": [4.0, 2.0, 1.0]})
    bu = fm.bottom_up(rates, cp, pd.Series({"x": 0.5, "y": 1.0}))
    assert bu["x"] == pytest.approx((0.5 * 4 + 1.0 * 1) / 0.5) and bu["y"] == pytest.approx(1.0)
    f = pd.DataFrame({"series_id": ["x"] * 2 + ["z"] * 2, "week": pd.to_datetime(["2012-01-02", "2012-01-09"] * 2),
                      "forecast": [4.0, 8.0, 1.0, 1.0]})
    r = fm.reconcile(f, bu)
    x = r[r["series_id"] == "x"]
    # level halfway between 12 (series) and 12 (bottom-up 6/week x 2) -> unchanged; z has no bottom-up
    assert x["reconciled"].sum() == pytest.approx((12 + 12) / 2)
    assert x["reconciled"].tolist() == pytest.approx([4.0, 8.0])
    assert r[r["series_id"] == "z"]["reconciled"].tolist() == [1.0, 1.0]


def test_forecast_and_peaks_commands(store, tmp_path):
    db = tmp_path / "cli.duckdb"
    s = open_store(db)
    ingest(s, DEMO)
    s.close()
    runner = CliRunner()
    out = tmp_path / "total.csv"
    r = runner.invoke(app, ["forecast", "--db", str(db), "--level", "total", "--horizon", "8", "--out", str(out)])
    assert r.exit_code == 0, r.output
    f = pd.read_csv(out)
    assert len(f) == 8 and set(f.columns) >= {"level", "series_id", "week", "forecast", "lo80", "hi80", "lo95",
                                              "hi95", "method"}
    assert (f["lo95"] <= f["hi95"]).all()
    charts = tmp_path / "cli-reports"
    assert list(charts.glob("forecast_*/total_all.png")) and list(charts.glob("forecast_*/total_all.html"))
    html = next(charts.glob("forecast_*/total_all.html")).read_text()
    assert len(html) > 1_000_000 and '<script src="http' not in html  # offline: the JavaScript is embedded
    code = raw_demand()["StockCode"].value_counts().index[0]
    r = runner.invoke(app, ["forecast", "--db", str(db), "--level", "product", "--series", code, "--format", "json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout[r.stdout.index("["):])
    assert len(rows) == 13 and {x["series_id"] for x in rows} == {code}
    r = runner.invoke(app, ["forecast", "--db", str(db), "--level", "category"])
    assert r.exit_code == 1 and "no categories" in r.output
    r = runner.invoke(app, ["peaks", "--db", str(db), "--throughput", "4", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert len(data["staffing"]) == 13
    # odd option values: --horizon 0 and --hours-per-person 0 were taken as "the default", --plot-top -3 plotted all
    # series but 3, and rich markup swallowed "[staffing]" in the hint and the help
    for args, say in ((["forecast", "--horizon", "0"], "--horizon must be between 1 and 104 weeks"),
                      (["peaks", "--throughput", "3", "--hours-per-person", "0"], "per person and week must be positive"),
                      (["peaks", "--throughput", "3", "--hours-per-person", "-5"], "must be positive")):
        r = runner.invoke(app, [*args, "--db", str(db)])
        assert r.exit_code == 1 and say in r.output, (args, r.output)
    r = runner.invoke(app, ["forecast", "--plot-top", "-3", "--db", str(db)])
    assert r.exit_code == 2 and "--plot-top" in r.output
    r = runner.invoke(app, ["peaks", "--db", str(db)])
    assert r.exit_code == 0 and "[staffing] orders_per_person_hour in loyalist.toml" in r.stdout
    assert "[staffing]" in runner.invoke(app, ["peaks", "--help"]).output
    assert "[forecast]" in runner.invoke(app, ["forecast", "--help"]).output
    row = data["staffing"][0]
    assert row["person_hours"] == pytest.approx(row["orders"] / 4)
    assert row["people"] == int(np.ceil(row["person_hours"] / 37.5))
    assert any(p.endswith("peak_hours.png") for p in data["charts"])
    r = runner.invoke(app, ["peaks", "--db", str(db), "--throughput", "0"])
    assert r.exit_code == 1


def test_category_level_from_the_products_table(raw, tmp_path):
    from loyalist.ingest import Options
    from loyalist.schema import Kind

    s = open_store(tmp_path / "cat.duckdb")
    ingest(s, DEMO)
    codes = pd.Series(sorted(raw["StockCode"].unique()))
    cats = pd.DataFrame({"product_id": codes, "category": ["cards", "gifts", "home"] * (len(codes) // 3)
                         + ["cards", "gifts", "home"][: len(codes) % 3]})
    cats = cats.iloc[:-5]  # a few products without a category
    cats.to_csv(tmp_path / "products.csv", index=False)
    ingest(s, [str(tmp_path / "products.csv")], Options(kind=Kind("products")))
    assert agg.has_category(s)
    w = feat.weekly_demand(s.table("transactions"), AS_OF, "category", s.table("products")).execute()
    m = raw.merge(cats, left_on="StockCode", right_on="product_id", how="left")
    m["category"] = m["category"].fillna("(no category)")
    e = m.groupby("category")["Quantity"].sum()
    got = w.groupby("series_id")["units"].sum()
    assert got.to_dict() == pytest.approx(e.to_dict())
    f = agg.compute_forecasts(s, AS_OF, None, 13, ("category",))
    assert set(f["series_id"]) == set(e.index) and len(f) == 13 * len(e)
    assert (f["level"] == "category").all() and f["forecast"].notna().all()
    s.close()
