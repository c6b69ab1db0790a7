"""The dashboard in a real browser: Playwright driving Debian's chromium against `loyalist serve` on loopback.

Opens every page, uses a filter, sorts, paginates, opens a customer and downloads an export; screenshots go
to test-artifacts/browser/. Without /usr/bin/chromium the tests are skipped with the reason, except under CI
(CI=true), where that is a failure (`make test` installs chromium with scripts/install_chromium.sh).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from conftest import REPO
from test_web_support import full_store

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "browser"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def _need_chromium() -> None:
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is absent: install it with `bash scripts/install_chromium.sh` (make test does)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    _need_chromium()
    db = full_store()
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "loyalist"), "serve", "--db", str(db), "--port", str(port)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/static/style.css", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"loyalist serve exited: {proc.stdout.read().decode()[-2000:]}")
            time.sleep(0.2)
        else:
            raise RuntimeError("loyalist serve did not answer within 120 s")
        yield url, db
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.errors = errors
        yield pg
        context.close()
        browser.close()


def _shot(pg, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_every_page_opens_and_draws_its_charts(server, page):
    url, _ = server
    for path, name, charts in [("/", "overview", 2), ("/segments", "segments", 1), ("/forecast", "forecast", 2),
                               ("/cohorts", "cohorts", 1), ("/quality", "quality", 0), ("/docs", "api-docs", 0),
                               ("/lists/at-risk", "list-at-risk", 0), ("/lists/overdue", "list-overdue", 0),
                               ("/lists/alerts", "list-alerts", 0), ("/lists/cross-sell", "list-cross-sell", 0)]:
        resp = page.goto(url + path)
        assert resp.status == 200, path
        if charts:
            page.wait_for_selector(".chart .main-svg", timeout=30_000)  # plotly.js drew it, offline
            assert page.locator(".chart .main-svg").count() >= charts, path
        if path == "/docs":
            page.wait_for_selector("text='Customers with every insight column: filter, sort, paginate'", timeout=30_000)
        _shot(page, name)
    assert page.errors == []


def test_filter_sort_paginate_open_a_customer_and_download(server, page):
    url, db = server
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    ci = con.execute("SELECT * FROM customer_insights").df()
    con.close()
    page.goto(url + "/lists/customers")
    # filter: a segment, from the select
    page.select_option("select[name=segment]", "Loyal")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**segment=Loyal**")
    loyal = ci[ci["segment"] == "Loyal"]
    assert f"{len(loyal):,} rows" in page.inner_text(".bar")
    # sort: click the revenue header twice (descending, then ascending)
    page.click("th a[data-sort=revenue]")
    page.wait_for_url("**sort=revenue**")
    page.click("th a[data-sort=revenue]")
    page.wait_for_url("**order=asc**")
    expect = loyal.sort_values(["revenue", "customer_id"])
    first = page.locator("table.list tbody tr td:first-child a").first.inner_text()
    assert first == expect["customer_id"].iloc[0]
    # paginate
    page.click("a[rel=next]")
    page.wait_for_url("**page=2**")
    per_page = 50
    got = page.locator("table.list tbody tr td:first-child a").all_inner_texts()
    assert got == expect["customer_id"].iloc[per_page:2 * per_page].tolist()
    _shot(page, "list-filtered-sorted-page2")
    # download the filtered list as CSV: every matching row, in the same order
    with page.expect_download() as info:
        page.click("a.button:text('CSV')")
    path = info.value.path()
    frame = pd.read_csv(path, dtype={"customer_id": str})
    assert frame["customer_id"].tolist() == expect["customer_id"].tolist()
    with page.expect_download() as info:
        page.click("a.button:text('XLSX')")
    assert info.value.suggested_filename.endswith(".xlsx")
    xl = pd.read_excel(io.BytesIO(Path(info.value.path()).read_bytes()), dtype={"customer_id": str})
    assert len(xl) == len(expect)
    # open a customer
    cid = got[0]
    page.click(f"table.list a:text-is('{cid}')")
    page.wait_for_url(f"**/customers/{cid}")
    page.wait_for_selector("#timeline .main-svg", timeout=30_000)
    assert f"Customer {cid}" in page.inner_text("h1")
    assert "Rhythm:" in page.inner_text("main")
    _shot(page, "customer")
    # the search box in the header finds customers
    page.fill("header input[name=q]", cid)
    page.press("header input[name=q]", "Enter")
    page.wait_for_url("**q=**")
    assert cid in page.locator("table.list tbody").inner_text()
    assert page.errors == []
