"""`loyalist report`: one self-contained HTML file (and a PDF through chromium) with the store's figures."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest
from test_web_support import base_store, full_store
from typer.testing import CliRunner

from loyalist.cli import app
from loyalist.report import render_report


def test_report_is_self_contained_and_shows_the_store(tmp_path):
    db = full_store()
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--db", str(db), "--out", str(out), "--top", "5"])
    assert result.exit_code == 0, result.output
    html = out.read_text(encoding="utf-8")
    # nothing fetched from anywhere: no external script, stylesheet or image
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', html)
    # nor a link into a server that an e-mailed file does not have (the brand linked to "/": file:/// root)
    pages = re.sub(r"<script.*?</script>", "", html, flags=re.S)
    assert not re.findall(r'<a [^>]*href="/', pages)
    assert "Plotly" in html and len(html) > 1_000_000  # plotly.js inline
    assert html.count('class="chart"') >= 2
    con = duckdb.connect(str(db), read_only=True)
    n, revenue = con.execute("SELECT count(*), sum(revenue) FROM customer_insights").fetchone()
    top = con.execute("SELECT customer_id FROM customer_insights WHERE frequency > 0 AND p_alive < 0.5 "
                      "ORDER BY revenue DESC, customer_id LIMIT 5").df()["customer_id"].tolist()
    con.close()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert f"Customers {n:,}" in text and f"{revenue:,.0f}" in text
    at_risk = html[html.index("<h2>At risk"):html.index("<h2>Overdue")]
    positions = [at_risk.index(f">{c}<") for c in top]  # the top five, most valuable first
    assert positions == sorted(positions)


def test_report_names_what_is_not_computed_yet():
    html = render_report(base_store(), top=3)
    assert "Not computed yet: run <code>loyalist analyze</code>" in html


def test_report_pdf_through_chromium(tmp_path):
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("/usr/bin/chromium is absent (make test installs it)")
    out, pdf = tmp_path / "r.html", tmp_path / "r.pdf"
    result = CliRunner().invoke(app, ["report", "--db", str(base_store()), "--out", str(out), "--pdf", str(pdf),
                                      "--top", "3"])
    assert result.exit_code == 0, result.output
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and len(data) > 10_000
