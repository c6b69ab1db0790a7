"""Event feed: incremental (two as-of dates, re-run adds nothing), events checked against plain pandas, and
webhook delivery once per event with retries against a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pandas as pd
import pytest
from conftest import REPO
from typer.testing import CliRunner

from loyalist.alerts import deliver, list_events
from loyalist.cli import app
from loyalist.customer_base import Settings, fit_base, score
from loyalist.features import rfm_summary
from loyalist.ingest import ingest
from loyalist.insights import Context
from loyalist.insights.direction import direction_step
from loyalist.insights.events import ACTIONS, event_id, events_step
from loyalist.insights.payment import payment_step
from loyalist.store import open_store, write_frame

DEMO = sorted((REPO / "data" / "demo").glob("*.csv.gz"))


def run_my_steps(store, as_of: dt.date, config: dict | None = None) -> pd.DataFrame:
    """`loyalist analyze` restricted to this capability's steps (direction, payment, events), as run_steps
    does it: each step's columns merged into the per-customer table, which is stored."""
    summary = rfm_summary(store.table("transactions"), as_of).execute()
    fitted = fit_base(summary, "bgnbd")
    table = score(fitted, summary, Settings(), 1.0)
    ctx = Context(store, as_of, Settings(), fitted, table, config or {}, [])
    for fn in (direction_step, payment_step, events_step):
        added = fn(ctx)
        if added is not None:
            assert added["customer_id"].is_unique
            ctx.customers = ctx.customers.merge(added, on="customer_id", how="left")
    write_frame(store, "customer_insights", ctx.customers, replace=True)
    return ctx.customers


@pytest.fixture(scope="module")
def fed_store(tmp_path_factory):
    store = open_store(tmp_path_factory.mktemp("events") / "demo.duckdb")
    ingest(store, DEMO)
    first = run_my_steps(store, dt.date(2011, 6, 1))
    after_first = store.table("events").execute()
    run_my_steps(store, dt.date(2011, 9, 1))
    after_second = store.table("events").execute()
    run_my_steps(store, dt.date(2011, 9, 1))
    after_third = store.table("events").execute()
    yield store, after_first, after_second, after_third, first
    store.close()


def test_rerun_adds_only_new_events(fed_store):
    store, one, two, three, _ = fed_store
    assert len(one) > 0 and len(two) > len(one)
    assert two["event_id"].is_unique
    assert set(one["event_id"]) <= set(two["event_id"])  # the first run's events are kept as they were
    kept = two.set_index("event_id").loc[one["event_id"]]
    assert (kept["detected_at"].to_numpy() == one.set_index("event_id")["detected_at"].to_numpy()).all()
    assert len(three) == len(two)  # same data, same as-of: nothing new
    added = two[~two["event_id"].isin(one["event_id"])]
    state = {"growth_detected", "decline_detected", "mix_shift", "payment_slowdown", "entering_overdue"}
    dated = added[~added["type"].isin(state)]
    assert (dated["event_date"] >= pd.Timestamp("2011-05-01")).all()  # no back-filled old history
    assert (added["event_date"] < pd.Timestamp("2011-09-08")).all()
    runs = store.table("event_runs").execute()
    assert runs["added"].tolist() == [len(one), len(two) - len(one), 0]


def test_event_ids_are_type_customer_date(fed_store):
    _, _, two, _, _ = fed_store
    ids = [event_id(t, c, d) for t, c, d in zip(two["type"], two["customer_id"], two["event_date"])]
    assert ids == two["event_id"].tolist()
    assert set(two["type"]) <= set(ACTIONS)
    assert two["reason"].str.len().gt(0).all() and two["action"].notna().all()
    for e in two["evidence"]:
        assert isinstance(json.loads(e), dict)


def test_history_events_match_pandas(fed_store):
    store, _, two, _, _ = fed_store
    t = store.con.execute("SELECT * FROM transactions").df()
    t = t[~t.is_guest & ~t.is_non_product & ~t.is_cancellation & ~t.is_return & t.customer_id.notna()]
    t["day"] = t["order_date"].dt.normalize()
    occ = t.groupby(["customer_id", "day"])["amount"].sum().reset_index().sort_values(["customer_id", "day"])
    occ = occ[occ["amount"] >= 0]
    occ["n"] = occ.groupby("customer_id").cumcount() + 1
    # window of the second run: from the first run's as-of date to the second's
    w = occ[(occ["day"] >= pd.Timestamp("2011-06-01")) & (occ["day"] < pd.Timestamp("2011-09-01"))]
    got = two[(two["event_date"] >= pd.Timestamp("2011-06-01"))]
    second = set(w.loc[w["n"] == 2, "customer_id"])
    assert set(got.loc[got["type"] == "first_repeat_order", "customer_id"]) == second
    tenth = set(w.loc[w["n"] == 10, "customer_id"])
    assert tenth <= set(got.loc[got["type"] == "order_milestone", "customer_id"])
    first_day = occ.groupby("customer_id")["day"].min()
    ann = first_day + pd.DateOffset(years=1)
    expect = set(ann[(ann >= pd.Timestamp("2011-06-01")) & (ann < pd.Timestamp("2011-09-01"))].index)
    assert set(got.loc[(got["type"] == "purchase_anniversary")
                       & got["evidence"].str.contains('"years": 1,'), "customer_id"]) == expect


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []
    attempts: ClassVar[dict[str, int]] = {}
    fail_first = 2  # each event's first two POSTs answer 503

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        key = self.headers["Idempotency-Key"]
        n = _Hook.attempts[key] = _Hook.attempts.get(key, 0) + 1
        code = 503 if n <= _Hook.fail_first else 200
        if code == 200:
            _Hook.received.append(body)
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook():
    _Hook.received, _Hook.attempts = [], {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_webhook_delivers_each_event_once_with_retries(fed_store, hook):
    store = fed_store[0]
    events = list_events(store, dt.date(2011, 8, 1), ["first_repeat_order", "lapse"])
    assert len(events) > 0
    report = deliver(store, hook, events, attempts=4, backoff=0.001)
    assert report.sent == len(events) and not report.failed
    assert sorted(b["event_id"] for b in _Hook.received) == sorted(events["event_id"])
    assert all(_Hook.attempts[e] == 3 for e in events["event_id"])  # two 503s, then accepted
    body = _Hook.received[0]
    assert isinstance(body["evidence"], dict) and {"event_date", "customer_id", "type", "reason", "action"} <= set(body)
    d = store.table("event_deliveries").execute()
    d = d[d["url"] == hook]
    assert len(d) == len(events) and (d["attempts"] == 3).all()
    again = deliver(store, hook, list_events(store), attempts=4, backoff=0.001)  # all events now
    assert again.already == len(events)
    assert len(_Hook.received) == len(list_events(store))  # the others once each, nothing twice
    assert pd.Series([b["event_id"] for b in _Hook.received]).is_unique


def test_webhook_gives_up_after_the_attempts_and_cli(fed_store, hook, tmp_path):
    store = fed_store[0]
    _Hook.fail_first = 10
    try:
        events = list_events(store, dt.date(2011, 8, 25), ["lapse"])
        report = deliver(store, hook, events.head(2), attempts=2, backoff=0.001)
        assert report.sent == 0 and len(report.failed) == min(2, len(events))
        assert all("503" in why for _, why in report.failed)
    finally:
        _Hook.fail_first = 2
    # the command line: list with filters, export, and deliver
    store.con.execute("CHECKPOINT")
    db = str(tmp_path / "copy.duckdb")  # the fixture's connection is open in this process: use a copy
    shutil.copy(store.path, db)
    runner = CliRunner()
    res = runner.invoke(app, ["alerts", "--db", db, "--since", "2011-08-01", "--type", "lapse", "--format", "json"])
    assert res.exit_code == 0, res.output
    listed = pd.DataFrame(json.loads(res.stdout))
    assert len(listed) and (listed["type"] == "lapse").all() and (pd.to_datetime(listed["event_date"]) >= "2011-08-01").all()
    out = tmp_path / "alerts.csv"
    assert runner.invoke(app, ["alerts", "--db", db, "--out", str(out)]).exit_code == 0
    assert len(pd.read_csv(out)) == len(list_events(store))
    assert runner.invoke(app, ["alerts", "--db", db, "--type", "nonsense"]).exit_code == 1
    res = runner.invoke(app, ["alerts", "--db", db, "--type", "first_repeat_order", "--webhook", hook,
                              "--backoff", "0.001", "--json"])
    assert res.exit_code == 0, res.output
    done = json.loads(res.stdout)
    n = len(listed := list_events(store, None, ["first_repeat_order"]))
    assert done["sent"] + done["already_delivered"] == n and not done["failed"] and len(listed)
