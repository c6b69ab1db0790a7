"""The REST API: contract-tested with schemathesis against its own OpenAPI spec (in-process ASGI app, bounded
examples), plus answers checked against the store."""

from __future__ import annotations

import duckdb
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from test_web_support import full_store

from loyalist.web.app import create_app


@pytest.fixture(scope="module")
def app():
    app = create_app(full_store())
    yield app
    app.state.reader.close()


def test_api_conforms_to_its_openapi_spec(app):
    """Every operation, with generated valid and invalid inputs: status codes, content types and bodies must
    match the spec, and no input may cause a server error."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} == {"/api/v1/customers", "/api/v1/customers/{customer_id}",
                                              "/api/v1/segments", "/api/v1/alerts", "/api/v1/forecasts",
                                              "/api/v1/backtest"}
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate()

        check()


def test_api_answers_match_the_store(app):
    db = full_store()
    con = duckdb.connect(str(db), read_only=True)
    ci = con.execute("SELECT * FROM customer_insights").df()
    events = con.execute("SELECT * FROM events").df()
    con.close()
    with TestClient(app) as c:
        r = c.get("/api/v1/customers", params={"segment": "Loyal", "min_p_alive": 0.5, "sort": "revenue",
                                               "order": "asc", "per_page": 5, "page": 2}).json()
        expect = ci[(ci["segment"] == "Loyal") & (ci["p_alive"] >= 0.5)].sort_values(["revenue", "customer_id"])
        assert r["total"] == len(expect)
        assert [x["customer_id"] for x in r["items"]] == expect["customer_id"].iloc[5:10].tolist()
        assert set(r["items"][0]) == set(ci.columns)  # every insight column
        cid = expect["customer_id"].iloc[0]
        one = c.get(f"/api/v1/customers/{cid}").json()
        row = ci.set_index("customer_id").loc[cid]
        assert one["insights"]["clv_12m"] == pytest.approx(row["clv_12m"])
        assert one["insights"]["segment"] == row["segment"]
        assert {"p_alive", "rhythm", "clv_12m"} <= set(one["reasons"])
        assert [g["product_id"] for g in one["crosssell_gaps"]] == ["P1", "P2"]
        since = events["event_date"].max() - __import__("pandas").Timedelta(days=10)
        a = c.get("/api/v1/alerts", params={"since": str(since.date()), "per_page": 500}).json()
        assert a["total"] == (events["event_date"] >= since.normalize()).sum()
        assert c.get("/api/v1/customers", params={"sort": "nope"}).status_code == 422
        assert c.get("/api/v1/customers", params={"per_page": 100000}).status_code == 422
        assert c.get("/api/v1/customers/does-not-exist").status_code == 404
        seg = c.get("/api/v1/segments").json()
        assert seg["segments"]["computed"] and len(seg["segments"]["items"]) == 4
        f = c.get("/api/v1/forecasts", params={"level": "total"}).json()
        assert len(f["items"]) == 8
        bt = c.get("/api/v1/backtest").json()
        assert bt["customer_base"]["computed"] and {m["model"] for m in bt["customer_base"]["items"]} >= {"bgnbd"}
        assert bt["others"]["timing_backtest"]["computed"] and not bt["others"]["crosssell_backtest"]["computed"]


def test_api_pages_end_with_an_empty_page(app):
    """Paging until an empty page must end: a page past the last one repeated the last page (clamped)."""
    con = duckdb.connect(str(full_store()), read_only=True)
    n = con.execute("SELECT count(*) FROM customer_insights").fetchone()[0]
    con.close()
    with TestClient(app) as c:
        seen, page = [], 1
        while page < 1000:
            r = c.get("/api/v1/customers", params={"per_page": 7, "page": page}).json()
            if not r["items"]:
                break
            assert r["page"] == page
            seen += [x["customer_id"] for x in r["items"]]
            page += 1
        assert page == -(-n // 7) + 1 and len(seen) == len(set(seen)) == n
        r = c.get("/api/v1/customers", params={"per_page": 7, "page": 10_000}).json()
        assert (r["page"], r["items"], r["total"]) == (10_000, [], n)
