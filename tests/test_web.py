"""The dashboard in-process (FastAPI TestClient): figures and lists checked against plain pandas on the store."""

from __future__ import annotations

import io
import re

import openpyxl
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from test_web_support import base_store, copy_of, full_store, read_frame

from loyalist.web import auth
from loyalist.web.app import create_app
from loyalist.web.queries import LISTS, Query, Reader


@pytest.fixture(scope="module")
def base():
    return base_store()


@pytest.fixture(scope="module")
def full():
    return full_store()


@pytest.fixture(scope="module")
def client(base):
    app = create_app(base)
    with TestClient(app) as c:
        yield c
    app.state.reader.close()


@pytest.fixture(scope="module")
def full_client(full):
    app = create_app(full)
    with TestClient(app) as c:
        yield c
    app.state.reader.close()


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_overview_figures_match_the_store(client, base):
    ci = read_frame(base, "SELECT * FROM customer_insights")
    r = client.get("/")
    assert r.status_code == 200
    text = _text(r.text)
    assert f"Customers {len(ci):,}" in text
    assert f"{ci['revenue'].sum():,.0f}" in text
    active = (ci["p_alive"] >= 0.5).sum()
    assert f"{active / len(ci) * 100:.0f}%" in text and f"{active:,} customers with P(alive)" in text
    # the backtest table shows every model of the latest run, with the chosen one marked
    bt = read_frame(base, "SELECT * FROM backtest_metrics")
    for model in bt["model"]:
        assert model in text
    chosen = bt.loc[bt["chosen"], "model"].iloc[0]
    assert f"{chosen} ✓" in text
    assert 'id="tracking"' in r.text and 'id="value"' in r.text  # the two charts
    # capabilities not computed in this store say so instead of showing numbers
    assert "Not computed yet: run loyalist analyze" in text


def test_at_risk_list_filters_sorts_and_paginates_like_pandas(client, base):
    ci = read_frame(base, "SELECT * FROM customer_insights")
    expect = ci[(ci["frequency"] > 0) & (ci["p_alive"] < 0.5)].sort_values(["revenue", "customer_id"],
                                                                          ascending=[False, True])
    r = client.get("/lists/at-risk", params={"per_page": 10, "page": 2})
    assert r.status_code == 200
    assert f"{len(expect):,} rows" in _text(r.text)
    ids = re.findall(r'<a href="/customers/([^"]+)">', r.text)
    assert ids == expect["customer_id"].iloc[10:20].tolist()
    # filter and ascending sort by another column
    sub = expect[expect["p_alive"] >= 0.3].sort_values(["orders", "customer_id"])
    r = client.get("/lists/at-risk", params={"min_p_alive": "0.3", "sort": "orders", "order": "asc", "per_page": 200})
    assert f"{len(sub):,} rows" in _text(r.text)
    assert re.findall(r'<a href="/customers/([^"]+)">', r.text) == sub["customer_id"].tolist()
    # every row carries its reason with the numbers behind it
    assert len(sub) > 0
    first = sub.iloc[0]
    assert f"P(alive) {first['p_alive']:.2f}: {int(first['orders']):,} orders since" in r.text


def test_search_and_hostile_input_are_values_not_sql(client, base):
    ci = read_frame(base, "SELECT customer_id FROM customer_insights")
    needle = ci["customer_id"].iloc[0][:3]
    r = client.get("/lists/customers", params={"q": needle, "per_page": 500})
    expect = ci[ci["customer_id"].str.contains(needle, regex=False)]
    assert f"{len(expect):,} rows" in _text(r.text)
    for q in ("'; DROP TABLE customer_insights; --", "%", "_", "\\"):
        r = client.get("/lists/customers", params={"q": q})
        assert r.status_code == 200 and "0 rows" in _text(r.text)
    # unknown sort columns and malformed numbers are ignored, not errors
    r = client.get("/lists/at-risk", params={"sort": "1; DROP TABLE x", "min_p_alive": "abc", "page": "x"})
    assert r.status_code == 200
    assert read_frame(base, "SELECT count(*) AS n FROM customer_insights")["n"].iloc[0] == len(ci)


@pytest.mark.parametrize("preload", [True, False])
def test_dates_outside_what_pandas_holds_are_open_ended_filters(full, preload):
    """Year 1 or 9999 in a date filter was a 500 (pandas' nanosecond range; DuckDB's for event dates)."""
    ci = read_frame(full, "SELECT count(*) AS n FROM customer_insights")["n"].iloc[0]
    events = read_frame(full, "SELECT count(*) AS n FROM events")["n"].iloc[0]
    app = create_app(full, preload=preload)
    with TestClient(app) as c:
        for path, params, n in [("/lists/customers", {"min_last_order": "0001-01-01"}, ci),
                                ("/lists/customers", {"max_last_order": "9999-12-31"}, ci),
                                ("/lists/customers", {"min_last_order": "9999-12-31"}, 0),
                                ("/lists/alerts", {"min_event_date": "1000-01-01"}, events)]:
            r = c.get(path, params=params)
            assert r.status_code == 200 and re.search(rf"(?<![\d,]){n:,} rows", _text(r.text)), (path, params)
    app.state.reader.close()


def test_exports_hold_the_whole_filtered_list(client, base):
    ci = read_frame(base, "SELECT * FROM customer_insights")
    expect = ci[(ci["frequency"] > 0) & (ci["p_alive"] < 0.5) & (ci["revenue"] >= 500)].sort_values(
        ["revenue", "customer_id"], ascending=[False, True])
    params = {"min_revenue": "500", "per_page": 5}
    r = client.get("/lists/at-risk/export", params={**params, "format": "csv"})
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    got = pd.read_csv(io.StringIO(r.text), dtype={"customer_id": str})
    assert got["customer_id"].tolist() == expect["customer_id"].tolist()  # all rows, not one page
    assert got["revenue"].to_numpy() == pytest.approx(expect["revenue"].to_numpy())
    assert got["reason"].str.startswith("P(alive) ").all()
    r = client.get("/lists/at-risk/export", params={**params, "format": "xlsx"})
    wb = openpyxl.load_workbook(io.BytesIO(r.content), read_only=True)
    rows = list(wb.active.iter_rows(values_only=True))
    assert list(rows[0]) == got.columns.tolist()
    assert [str(x[0]) for x in rows[1:]] == expect["customer_id"].tolist()


def test_customer_page_counts_orders_independently(client, base):
    ci = read_frame(base, "SELECT * FROM customer_insights ORDER BY orders DESC LIMIT 1")
    cid = ci["customer_id"].iloc[0]
    tx = read_frame(base, f"SELECT * FROM transactions WHERE customer_id = '{cid}'")
    tx = tx[~tx["is_guest"] & ~tx["is_non_product"]]
    r = client.get(f"/customers/{cid}")
    assert r.status_code == 200
    text = _text(r.text)
    assert f"{tx['order_id'].nunique():,} orders in all" in text  # cancellations are orders of their own
    assert 'id="timeline"' in r.text
    assert f"{ci['p_alive'].iloc[0] * 100:.0f}%" in text
    assert "Rhythm:" in text and "median gap" in text
    assert client.get("/customers/no-such-customer").status_code == 404


def test_pages_without_the_other_capabilities_say_what_to_run(client):
    for path in ("/segments", "/forecast", "/cohorts", "/lists/overdue", "/lists/alerts", "/lists/cross-sell"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert "ot computed yet: run loyalist analyze" in _text(r.text), path
    assert client.get("/lists/overdue/export").status_code == 404
    # payment risk needs invoices: running analyze again (what the page said) cannot compute it
    text = _text(client.get("/lists/payment-risk").text)
    assert "the store holds no invoices; load them with loyalist ingest FILE --kind invoices" in text
    r = client.get("/quality")
    assert r.status_code == 200
    odd = read_frame(base_store(), "SELECT count(*) AS n FROM transactions WHERE price_issue IS NOT NULL")["n"].iloc[0]
    assert f"Zero or negative prices {odd:,}" in _text(r.text)  # was labelled 'zero, negative, outlier'
    # a page size of 0 on a list not computed yet is clamped like on a computed one (was a ZeroDivisionError)
    r = client.get("/lists/overdue", params={"per_page": 0})
    assert r.status_code == 200 and "ot computed yet: run loyalist analyze" in _text(r.text)


def test_contract_tables_reach_every_page(full_client, full):
    ci = read_frame(full, "SELECT * FROM customer_insights")
    # overdue: filter on the timing columns, sorted by overdue_score
    expect = ci[ci["overdue_days"] > 0].sort_values(["overdue_score", "customer_id"], ascending=[False, True])
    r = full_client.get("/lists/overdue", params={"per_page": 200})
    assert f"{len(expect):,} rows" in _text(r.text)
    assert re.findall(r'<a href="/customers/([^"]+)">', r.text)[:200] == expect["customer_id"].iloc[:200].tolist()
    # a choice filter
    r = full_client.get("/lists/customers", params={"segment": "Loyal", "per_page": 500})
    assert f"{(ci['segment'] == 'Loyal').sum():,} rows" in _text(r.text)
    # growing: trend growing or a volume-pricing candidate
    n = ((ci["trend"] == "growing") | ci["volume_pricing_candidate"]).sum()
    assert f"{n:,} rows" in _text(full_client.get("/lists/growing").text)
    gaps = read_frame(full, "SELECT * FROM crosssell_gaps")
    r = full_client.get("/lists/cross-sell", params={"q": "blue jug"})
    assert f"{(gaps['description'] == 'BLUE JUG').sum():,} rows" in _text(r.text)
    assert "bought by 12 of 20 look-alikes" in r.text
    for path in ("/lists/payment-risk", "/lists/contact-due", "/lists/alerts", "/segments"):
        r = full_client.get(path)
        assert r.status_code == 200 and "ot computed yet" not in _text(r.text), path
    assert "rows" in _text(full_client.get("/lists/payment-risk").text)
    for path in ("/", "/forecast", "/cohorts"):  # partly computed here: only the absent tables are named
        text = _text(full_client.get(path).text)
        assert "writes `forecasts`" not in text and "writes `cohorts`" not in text and "writes `timing_backtest`" not in text
    seg = read_frame(full, "SELECT * FROM segments")
    text = _text(full_client.get("/segments").text)
    for s, n in zip(seg["segment"], seg["customers"]):
        assert s in text and f"{n:,}" in text
    assert 'id="forecast"' in full_client.get("/forecast").text and 'id="peakhours"' in full_client.get("/forecast").text
    assert 'id="cohorts"' in full_client.get("/cohorts").text
    cid = ci.sort_values("customer_id")["customer_id"].iloc[0]
    text = _text(full_client.get(f"/customers/{cid}").text)
    for piece in ("WHITE TEA SET", "RED MUG", "test event", "next order due", "Champions"):
        assert piece in text


def test_reader_pages_and_exports_agree(full):
    reader = Reader(full)
    try:
        spec = LISTS["alerts"]
        page = reader.page(spec, Query(filters={"type": "overdue"}, per_page=7, page=3))
        everything = reader.export(spec, Query(filters={"type": "overdue"}))
        assert page.total == len(everything)
        assert page.rows["event_id"].tolist() == everything["event_id"].iloc[14:21].tolist() if "event_id" in \
            everything else page.rows["customer_id"].tolist() == everything["customer_id"].iloc[14:21].tolist()
        ev = read_frame(full, "SELECT * FROM events WHERE type = 'overdue'")
        assert page.total == len(ev)
    finally:
        reader.close()


def test_api_keys_are_required_beyond_loopback(base, tmp_path):
    from loyalist.store import open_store

    db = copy_of(base, tmp_path)
    store = open_store(db)
    key_id, key = auth.create_key(store, "crm-sync")
    _, other = auth.create_key(store, "old")
    auth.revoke_key(store, other.split("_")[1])
    stored = store.con.execute("SELECT * FROM api_keys").df()
    store.close()
    assert key not in stored.to_csv() and auth.digest(key) in stored["key_hash"].tolist()
    app = create_app(db, require_key=True)
    with TestClient(app) as c:
        assert c.get("/api/v1/customers").status_code == 401
        assert c.get("/api/v1/customers", headers={"X-API-Key": other}).status_code == 401
        assert c.get("/api/v1/customers", headers={"X-API-Key": key}).status_code == 200
        assert c.get("/api/v1/segments", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        r = c.get("/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        r = c.post("/login", content=f"key={key}&next=/quality", headers={"Content-Type": "application/x-www-form-urlencoded"},
                   follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/quality"
        assert c.get("/quality").status_code == 200  # the cookie now carries the key
        assert c.post("/api/v1/customers").status_code in (401, 405)  # read-only
    app.state.reader.close()
    assert auth.is_loopback("127.0.0.1") and auth.is_loopback("::1") and auth.is_loopback("localhost")
    assert not auth.is_loopback("0.0.0.0") and not auth.is_loopback("192.168.1.5")


def test_server_beyond_loopback_refuses_to_start_without_keys(base):
    from loyalist.errors import LoyalistError

    with pytest.raises(LoyalistError, match="keys create"):
        create_app(base, require_key=True)


def test_assets_are_served_offline(client):
    r = client.get("/vendor/plotly.min.js")
    assert r.status_code == 200 and len(r.content) > 1_000_000
    assert client.get("/static/style.css").status_code == 200
    docs = client.get("/docs").text
    assert "/vendor/swagger-ui/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert client.get("/vendor/swagger-ui/swagger-ui-bundle.js").status_code == 200
    for path in ("/", "/lists/at-risk", "/quality"):
        html = client.get(path).text
        assert not re.search(r'(src|href)="https?://', html), path
