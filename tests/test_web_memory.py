"""The in-memory lists and customer pages (loyalist.web.memory) against the SQL path and against pandas.

The store is the dashboard tests' full store with awkward values written in: NULL and NaN in sorted and
filtered columns, ties, mixed-case and non-ASCII text, customers with several rows in the per-customer tables.
Every list is asked the same seeded set of queries (search, choice and range filters, every sortable column
both ways, pages past the end) through the memory path, with each of its code paths forced in turn, and
through the SQL path; the answers must be identical. A few are also recomputed with plain pandas.
"""

from __future__ import annotations

import random
import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from test_web_support import full_store, read_frame

from loyalist.web import format as fmt
from loyalist.web import memory
from loyalist.web.app import create_app
from loyalist.web.queries import LISTS, Query, Reader


@pytest.fixture(scope="module")
def awkward(tmp_path_factory):
    """The full store with NULLs, NaN, ties, mixed case and non-ASCII text written in."""
    import shutil

    from loyalist.store import open_store, write_frame

    db = tmp_path_factory.mktemp("memory") / "awkward.duckdb"
    shutil.copy(full_store(), db)
    store = open_store(db)
    try:
        ci = store.con.execute("SELECT * FROM customer_insights ORDER BY customer_id").df()
        n = len(ci)
        i = np.arange(n)
        ci.loc[i % 7 == 0, "revenue"] = np.nan  # NULL in DuckDB (pandas NaN is written as NULL)
        ci.loc[i % 11 == 0, "segment"] = None
        ci.loc[i % 13 == 0, "last_order"] = pd.NaT
        ci.loc[i % 5 == 1, "clv_12m"] = 100.0  # ties
        ci.loc[i % 17 == 0, "trend"] = None
        write_frame(store, "customer_insights", ci, replace=True)
        store.con.execute("UPDATE customer_insights SET p_alive = 'NaN'::DOUBLE WHERE hash(customer_id) % 19 = 0")
        gaps = store.con.execute("SELECT * FROM crosssell_gaps").df()
        gaps.loc[gaps.index % 3 == 0, "description"] = "Crème Brûlée DISH"
        gaps.loc[gaps.index % 10 == 0, "score"] = np.nan
        write_frame(store, "crosssell_gaps", gaps, replace=True)
        contact = store.con.execute("SELECT * FROM contact_schedule").df()
        extra = contact.iloc[::4].assign(reason="Call ABOUT the Überweisung",  # a second row for some customers
                                         contact_date=contact["contact_date"].iloc[::4] + pd.Timedelta(days=100))
        write_frame(store, "contact_schedule", pd.concat([contact, extra], ignore_index=True), replace=True)
    finally:
        store.close()
    return db


def _queries(reader: Reader, spec, rng: random.Random, ids: list[str], n: int = 20) -> list[Query]:
    cols = reader.list_columns(spec)
    sortable = [c for c in cols if c in reader.list_table_columns(spec)]
    out = [Query(), Query(page=10**6), Query(q="zzzz-none"), Query(per_page=500)]
    out += [Query(sort=c, descending=d, per_page=37, page=2) for c in sortable for d in (True, False)]
    for _ in range(n):
        f: dict[str, str] = {}
        if rng.random() < 0.5 and spec.choices:
            c = rng.choice(spec.choices)
            values = reader.choices(spec, c)
            if values:
                f[c] = rng.choice(values + ["no such value", "true", "false"])
        if rng.random() < 0.5 and spec.ranges:
            c = rng.choice(spec.ranges)
            if reader.column_kind(spec, c) == "date":
                f[rng.choice(["min:", "max:"]) + c] = rng.choice(["2010-06-01", "2011-03-15", "2011-12-01"])
            else:
                f[rng.choice(["min:", "max:"]) + c] = rng.choice(["0", "0.3", "0.5", "2", "250", "1e9", "-5"])
        q = rng.choice([None, None, rng.choice(ids)[: rng.choice([1, 2, 3, 5])], "CRÈME", "brûl", "überw", "e", "1"])
        out.append(Query(q=q, filters=f, sort=rng.choice(sortable + [None]), descending=rng.choice([True, False, None]),
                         page=rng.choice([1, 2, 4, 9]), per_page=rng.choice([3, 10, 50])))
    return out


def test_memory_lists_answer_exactly_as_the_sql_path(awkward, monkeypatch):
    sql = Reader(awkward)
    ids = read_frame(awkward, "SELECT customer_id FROM customer_insights")["customer_id"].tolist()
    rng = random.Random(7)
    expected = []
    for spec in LISTS.values():
        for query in _queries(sql, spec, rng, ids):
            expected.append((spec, query, sql.page(spec, query)))
        for query in (Query(), Query(q="1", sort=spec.sort, descending=False)):
            expected.append((spec, query, fmt.records(sql.export(spec, query))))
    sql.close()
    assert len(expected) > 250
    # each code path in turn: the defaults, then row numbers always, then masks always (both with the suffix array)
    for few, small_text in [(32, 20_000), (0, 0), (10**9, 0)]:
        monkeypatch.setattr(memory, "FEW", few)
        monkeypatch.setattr(memory, "SMALL_TEXT", small_text)
        mem = Reader(awkward, preload=True)
        try:
            assert set(mem.memory.lists) == set(LISTS)  # every list of this store is served from memory
            if small_text == 0:
                assert all(t.keys is not None for t in mem.memory.texts.values())
            for spec, query, b in expected:
                if isinstance(b, list):
                    assert fmt.records(mem.export(spec, query)) == b, (spec.name, query)
                    continue
                a = mem.page(spec, query)
                assert (a.total, a.page, a.sort, a.descending) == (b.total, b.page, b.sort, b.descending), (spec.name, query)
                assert list(a.rows.columns) == list(b.rows.columns), (spec.name, query)
                assert fmt.records(a.rows) == fmt.records(b.rows), (spec.name, query, few, small_text)
        finally:
            mem.close()


def test_memory_lists_match_pandas(awkward):
    reader = Reader(awkward, preload=True)
    try:
        ci = read_frame(awkward, "SELECT * FROM customer_insights")
        # NULLs last in both directions, NaN above every number, ties by customer id
        for desc in (True, False):
            key = ci["p_alive"].fillna(np.inf)  # DuckDB: NaN above every number (no NULL p_alive here)
            expect = ci.assign(k=key).sort_values(["k", "customer_id"], ascending=[not desc, True])
            got = reader.page(LISTS["customers"], Query(sort="p_alive", descending=desc, per_page=500))
            assert got.rows["customer_id"].tolist() == expect["customer_id"].iloc[:500].tolist()
            nulls = ci[ci["revenue"].isna()].sort_values("customer_id")
            rest = ci[ci["revenue"].notna()].sort_values(["revenue", "customer_id"], ascending=[not desc, True])
            every = reader.export(LISTS["customers"], Query(sort="revenue", descending=desc))
            assert every["customer_id"].tolist() == rest["customer_id"].tolist() + nulls["customer_id"].tolist()
        # a range filter never keeps a NULL; a choice filter compares text
        got = reader.export(LISTS["customers"], Query(filters={"min:clv_12m": "100", "segment": "Loyal"}))
        expect = ci[(ci["clv_12m"] >= 100) & (ci["segment"] == "Loyal")]
        assert sorted(got["customer_id"]) == sorted(expect["customer_id"])
        got = reader.export(LISTS["customers"], Query(filters={"max:last_order": "2011-03-15"}))
        expect = ci[pd.to_datetime(ci["last_order"]) <= pd.Timestamp("2011-03-15")]
        assert sorted(got["customer_id"]) == sorted(expect["customer_id"])
        # search: a literal, case-insensitive substring of any search column
        gaps = read_frame(awkward, "SELECT * FROM crosssell_gaps")
        for q in ("crème", "BRÛLÉE", "p1", "jug"):
            got = reader.page(LISTS["cross-sell"], Query(q=q, per_page=1))
            hit = np.zeros(len(gaps), dtype=bool)
            for c in ("customer_id", "product_id", "description"):
                hit |= gaps[c].str.lower().str.contains(q.lower(), regex=False).to_numpy()
            assert got.total == hit.sum() > 0, q
    finally:
        reader.close()


def test_memory_customer_pages_match_the_sql_path_and_the_transactions(awkward):
    mem, sql = Reader(awkward, preload=True), Reader(awkward)
    try:
        ids = read_frame(awkward, "SELECT customer_id FROM customer_insights ORDER BY orders DESC")["customer_id"].tolist()
        for cid in ids[:15] + ids[-5:]:
            a, b = mem.customer(cid), sql.customer(cid)
            assert fmt.plain(a["insights"]) == fmt.plain(b["insights"]), cid
            for table in ("reorders", "next_products", "crosssell_gaps", "contact_schedule", "events", "payment_behaviour",
                          "orders"):
                if b[table] is None:
                    assert a[table] is None
                    continue
                assert list(a[table].columns) == list(b[table].columns), table
                # the SQL path orders by one column without a tie-break: compare as sets, then the order column
                ra = sorted(map(repr, fmt.records(a[table])))
                rb = sorted(map(repr, fmt.records(b[table])))
                assert ra == rb, (cid, table)
            tx = read_frame(awkward, f"SELECT * FROM transactions WHERE customer_id = '{cid}'")
            tx = tx[~tx["is_guest"] & ~tx["is_non_product"]]
            back = tx["is_cancellation"] | tx["is_return"]
            expect = tx.assign(a=np.where(back, 0.0, tx["amount"])).groupby("order_id")["a"].sum()
            got = a["orders"].set_index("order_id")["amount"]
            assert got.sort_index().to_numpy() == pytest.approx(expect.sort_index().to_numpy())
            assert a["orders"]["order_date"].is_monotonic_increasing
            assert a["contact_schedule"]["contact_date"].is_monotonic_increasing
        assert mem.customer("no-such-customer") is None and sql.customer("no-such-customer") is None
    finally:
        mem.close()
        sql.close()


def test_text_index_finds_every_substring():
    memory_small = memory.SMALL_TEXT
    memory.SMALL_TEXT = 0
    try:
        rng = random.Random(3)
        values = sorted({"".join(rng.choice("ab1é-") for _ in range(rng.randint(0, 12))) for _ in range(2000)})
        index = memory.TextIndex(pa.array(values))
        assert index.keys is not None  # the suffix array, not the scan
        queries = ["a", "é", "ab1", "-", "ab1é-ab1é-a", "zz"] + [v[i:j] for v in values[:150] for i, j in ((0, 3), (1, 10))]
        for q in queries:
            if q:
                assert set(index.match(q).tolist()) == {k for k, v in enumerate(values) if q in v}, q
    finally:
        memory.SMALL_TEXT = memory_small


def test_server_pages_are_the_same_with_and_without_preload(awkward):
    fast, slow = create_app(awkward), create_app(awkward, preload=False)
    assert fast.state.reader.memory is not None and slow.state.reader.memory is None
    try:
        with TestClient(fast) as f, TestClient(slow) as s:
            ids = read_frame(awkward, "SELECT customer_id FROM customer_insights LIMIT 3")["customer_id"].tolist()
            for url in ["/lists/customers?sort=revenue&order=asc&page=2", "/lists/at-risk?q=1&min_revenue=100",
                        "/lists/cross-sell?q=cr%C3%A8me&page=3", "/lists/growing?volume_pricing_candidate=true",
                        "/lists/growing?volume_pricing_candidate=maybe", "/lists/alerts?type=overdue&sort=event_date",
                        "/lists/customers?min_p_alive=nan", "/lists/contact-due?q=%C3%BCberw&per_page=100",
                        *[f"/customers/{c}" for c in ids]]:
                a, b = f.get(url), s.get(url)
                assert a.status_code == b.status_code == 200, url
                links = r'<a href="/customers/([^"]+)">'
                assert re.findall(links, a.text) == re.findall(links, b.text), url
                assert re.findall(r"<b>([\d,]+)</b> rows?", a.text) == re.findall(r"<b>([\d,]+)</b> rows?", b.text), url
            a = f.get("/lists/at-risk/export", params={"format": "csv", "q": "1"})
            b = s.get("/lists/at-risk/export", params={"format": "csv", "q": "1"})
            assert a.text == b.text and a.text.count("\n") > 1
            h = f.get("/healthz").json()
            assert h["ok"] and h["preloaded"] and h["memory"]["bytes"] > 0
    finally:
        fast.state.reader.close()
        slow.state.reader.close()


def test_serve_with_two_worker_processes_answers_from_both(awkward):
    """`loyalist serve --workers 2`: two processes, each preloaded and listening on the same port."""
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "loyalist"), "serve", "--db", str(awkward), "--port",
                             str(port), "--workers", "2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        pids: set[int] = set()
        deadline = time.time() + 180
        while len(pids) < 2 and time.time() < deadline:  # a process listens only once its preload is done
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    h = json.loads(r.read())
                assert h["preloaded"]
                pids.add(h["pid"])
            except OSError:
                time.sleep(0.3)
        assert len(pids) == 2
        ci = read_frame(awkward, "SELECT customer_id FROM customer_insights")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lists/customers?per_page=500", timeout=30) as r:
            assert f"<b>{len(ci):,}</b> rows" in r.read().decode()
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0  # SIGTERM stops both processes and the parent cleanly
