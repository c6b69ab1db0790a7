"""Stores for the dashboard, API, report and export tests (helpers; no tests here).

`base_store()` is the bundled demo data ingested, backtested and scored by the customer-base models only
(the other capabilities' analysis steps are left out, so these tests do not depend on them);
`full_store()` adds the contract tables and columns of the other capabilities, filled with simple values
derived from each customer's own numbers, to check that every page and endpoint shows them. The stores
are built once per test run and shared by the pytest-xdist workers (a file lock guards the build).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from conftest import REPO

DEMO = sorted((REPO / "data" / "demo").glob("*.csv.gz"))
CUTOFF = dt.date(2011, 6, 1)


def read_frame(db, sql: str) -> pd.DataFrame:
    """One query against a store file, read-only (what a test checks the pages against)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).df()
    finally:
        con.close()


def _shared_dir() -> Path:
    """One folder per test run, shared by its xdist workers; folders of runs older than a day are removed."""
    import tempfile
    import time

    root = Path(tempfile.gettempdir())
    for old in root.glob("loyalist-web-tests-*"):
        try:
            if time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid{os.getpid()}"
    base = Path(os.environ.get("LOYALIST_WEB_TEST_DIR") or root / f"loyalist-web-tests-{run}")
    base.mkdir(parents=True, exist_ok=True)
    return base


def _build_once(path: Path, build) -> Path:
    lock = path.with_suffix(".lock")
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            if not path.exists():
                tmp = path.with_name(path.stem + ".building.duckdb")
                if tmp.exists():
                    tmp.unlink()
                build(tmp)
                tmp.rename(path)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
    return path


def _build_base(path: Path) -> None:
    from unittest import mock

    from loyalist import analysis
    from loyalist.ingest import ingest
    from loyalist.store import open_store

    store = open_store(path)
    try:
        ingest(store, DEMO)
        analysis.run_backtest(store, CUTOFF, 90)
        with mock.patch.object(analysis, "run_steps", lambda ctx, on_step=None: ctx.customers):
            analysis.analyze(store, model="auto")
    finally:
        store.close()


def base_store() -> Path:
    return _build_once(_shared_dir() / "base.duckdb", _build_base)


def contract_frames(ci: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Contract-shaped tables for the other capabilities, derived from the customers' own figures."""
    ci = ci.sort_values("customer_id").reset_index(drop=True)
    ids = ci["customer_id"]
    as_of = pd.Timestamp(ci["as_of"].iloc[0])
    n = len(ci)
    i = np.arange(n)
    seg = np.array(["Champions", "Loyal", "At risk", "New"])[i % 4]
    cols = pd.DataFrame({
        "customer_id": ids,
        "segment": seg,
        "rfm_segment": np.array(["555", "444", "111"])[i % 3],
        "value_grade": np.array(["A", "B", "C"])[i % 3],
        "value_score": (i % 100) / 100.0,
        "value_percentile": (i % 100).astype(float),
        "lifecycle_stage": np.array(["new", "active", "lapsing", "lost"])[i % 4],
        "trend": np.array(["growing", "stable", "declining", "lapsed"])[i % 4],
        "growth_rate": np.where(i % 4 == 0, 0.5, -0.1),
        "trend_confidence": 0.9,
        "volume_pricing_candidate": i % 8 == 0,
        "mix_shift": False,
        "mix_shift_reason": None,
        "dissatisfaction_flags": None,
        "payment_risk": np.where(i % 5 == 0, 0.8, 0.0),
        "payment_risk_reason": np.where(i % 5 == 0, "pays 21 days later than 6 months ago", None),
        "dbt_days_6m": np.where(i % 5 == 0, 21.0, 0.0),
        "next_order_date": pd.to_datetime(ci["last_order"]) + pd.Timedelta(days=30),
        "next_order_p10": pd.to_datetime(ci["last_order"]) + pd.Timedelta(days=10),
        "next_order_p90": pd.to_datetime(ci["last_order"]) + pd.Timedelta(days=60),
        "prob_order_30d": 0.3, "prob_order_60d": 0.5,
        "overdue_days": np.where(i % 3 == 0, (i % 50) + 1, 0).astype(float),
        "overdue_score": np.where(i % 3 == 0, ((i % 50) + 1) / 50.0, 0.0),
        "overdue_reason": np.where(i % 3 == 0, "orders every ~30 days; late", None),
        "cycle_days": 30.0, "cycle_regularity": 0.5, "cycle_class": "short",
        "contact_due_date": as_of + pd.Timedelta(days=7),
    })
    gaps = pd.DataFrame({"customer_id": np.repeat(ids.to_numpy(), 2), "rank": np.tile([1, 2], n),
                         "product_id": np.tile(["P1", "P2"], n), "description": np.tile(["RED MUG", "BLUE JUG"], n),
                         "score": np.tile([0.9, 0.4], n), "evidence": "bought by 12 of 20 look-alikes"})
    events = pd.DataFrame({"event_id": [f"e{k}" for k in range(n)], "event_date": as_of - pd.to_timedelta(i % 60, "D"),
                           "customer_id": ids, "type": np.array(["overdue", "declining"])[i % 2],
                           "reason": "test event", "evidence": "{}", "action": "call",
                           "detected_at": as_of})
    contact = pd.DataFrame({"customer_id": ids, "contact_date": as_of + pd.to_timedelta(i % 30, "D"),
                            "reason": "next order due"})
    reorders = pd.DataFrame({"customer_id": ids, "product_id": "P9", "description": "WHITE TEA SET", "times_bought": 4,
                             "cycle_days": 45.0, "last_bought": pd.to_datetime(ci["last_order"]),
                             "next_reorder_date": pd.to_datetime(ci["last_order"]) + pd.Timedelta(days=45),
                             "expected_quantity": 6.0, "overdue_days": 0.0, "reason": "every ~45 days"})
    next_products = pd.DataFrame({"customer_id": ids, "rank": 1, "product_id": "P9", "description": "WHITE TEA SET",
                                  "probability": 0.4})
    segments = (cols.assign(revenue=ci["revenue"], clv=ci["clv_12m"], p=ci["p_alive"]).groupby("segment")
                .agg(customers=("customer_id", "size"), revenue=("revenue", "sum"), clv=("clv", "sum"),
                     avg_p_alive=("p", "mean")).reset_index())
    segments = segments.assign(description="test segment", revenue_share=segments["revenue"] / segments["revenue"].sum(),
                               clv_share=segments["clv"] / segments["clv"].sum(), churn_risk=1 - segments["avg_p_alive"],
                               growth=0.0, suggested_action="call them").drop(columns=["revenue", "clv"])
    weeks = pd.date_range(as_of, periods=8, freq="W-MON")
    forecasts = pd.DataFrame({"level": "total", "series_id": "all", "week": weeks, "forecast": 100.0 + np.arange(8),
                              "lo80": 90.0, "hi80": 115.0, "lo95": 80.0, "hi95": 125.0, "method": "test"})
    cohorts = pd.DataFrame([{"cohort_month": pd.Timestamp(2010, m, 1), "months_since": k, "customers": 10,
                             "retention": 1.0 if k == 0 else 0.5 / k, "revenue": 100.0}
                            for m in range(1, 4) for k in range(0, 4)])
    peak = pd.DataFrame([{"dow": d, "hour": h, "orders": d + h, "lines": 2 * (d + h)} for d in range(7) for h in range(8, 18)])
    return {"columns": cols, "crosssell_gaps": gaps, "events": events, "contact_schedule": contact,
            "reorders": reorders, "next_products": next_products, "segments": segments,
            "rfm_segments": segments.assign(segment=["555", "444", "111", "333"][: len(segments)]),
            "forecasts": forecasts, "cohorts": cohorts, "peak_hours": peak,
            "lifecycle_conversion": pd.DataFrame({"from_stage": ["new"], "to_stage": ["active"], "share": [0.4]}),
            "timing_backtest": pd.DataFrame({"model": ["renewal"], "mae_days": [12.5]})}


def _build_full(path: Path) -> None:
    from loyalist.store import open_store, write_frame

    shutil.copy(base_store(), path)
    store = open_store(path)
    try:
        ci = store.con.execute("SELECT * FROM customer_insights").df()
        frames = contract_frames(ci)
        cols = frames.pop("columns")
        write_frame(store, "customer_insights", ci.merge(cols, on="customer_id", how="left"), replace=True)
        for name, frame in frames.items():
            write_frame(store, name, frame, replace=True)
    finally:
        store.close()


def full_store() -> Path:
    return _build_once(_shared_dir() / "full.duckdb", _build_full)


def copy_of(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name
    shutil.copy(src, dst)
    return dst
