"""`loyalist report`: one self-contained HTML file for e-mail (overview, the top of each list, the charts).

The report reuses the dashboard's reads (`loyalist.web.queries.Reader`), formatters and chart builders,
and inlines the stylesheet and plotly.js (from the plotly package), so it opens offline in any browser.
Capabilities not computed yet are named as such, as on the dashboard.

PDF: printed by headless Chromium (`chromium --headless --print-to-pdf`), which `make test` installs
(scripts/install_chromium.sh); no kept Python library renders plotly charts to PDF offline without it
(kaleido needs its own browser download).
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import tempfile
from pathlib import Path

import jinja2

from loyalist.errors import LoyalistError
from loyalist.web import charts
from loyalist.web import format as fmt
from loyalist.web.app import BACKTESTS, STATIC, SYMBOLS, TEMPLATES, plotly_js, templates
from loyalist.web.queries import CUSTOMERS, LISTS, Query, Reader

CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")


def render_report(db: str | Path, top: int = 15) -> str:
    """The report's HTML text."""
    reader = Reader(db)
    try:
        env: jinja2.Environment = templates().env
        symbol = SYMBOLS.get(reader.currency(), "")
        ov = reader.overview()
        ctx: dict = {"ov": ov, "run": reader.latest_run(), "symbol": symbol, "store": reader.path.name,
                     "as_of": reader.as_of(), "report": True, "nav": "", "generated": dt.datetime.now().replace(
                         microsecond=0),
                     "inline_css": (STATIC / "style.css").read_text(encoding="utf-8"),
                     "inline_js": plotly_js().read_text(encoding="utf-8"),
                     "inline_app": (STATIC / "app.js").read_text(encoding="utf-8")}
        if ov is not None:
            ctx["value_chart"] = charts.value_distribution(reader.value_distribution(), symbol)
            metrics, tracking = reader.backtest()
            ctx["metrics"] = fmt.rows(metrics)
            ctx["tracking_chart"] = charts.tracking(tracking, metrics["cutoff"].iloc[0]) if len(tracking) else None
            lists = []
            for spec in LISTS.values():
                if spec.name == "customers":
                    continue
                page = reader.page(spec, Query(per_page=top))
                lists.append({"spec": spec, "missing": page.missing, "total": page.total,
                              "columns": page.columns, "rows": fmt.rows(page.rows)})
            ctx["lists"] = lists
            seg = reader.whole("segments")
            ctx["segments"] = fmt.rows(seg) if seg is not None else None
            ctx["segment_cols"] = list(seg.columns) if seg is not None else []
        ctx["backtests"] = [(title, table, fmt.rows(reader.whole(table)) if table in reader.schema else None)
                            for table, title in BACKTESTS]
        return env.get_template("report.html").render(**ctx)
    finally:
        reader.close()


def write_report(db: str | Path, out: str | Path, top: int = 15) -> Path:
    out = Path(out)
    html = render_report(db, top)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise LoyalistError(f"{out}: cannot write ({exc.strerror or exc})") from None
    return out


def chromium() -> str | None:
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    return None


def print_pdf(html: str | Path, pdf: str | Path, timeout: float = 120) -> Path:
    """Print the report to PDF with headless Chromium (charts drawn by plotly.js before printing)."""
    exe = chromium()
    if exe is None:
        raise LoyalistError("--pdf needs chromium (Debian: apt-get install chromium; `make test` installs it)")
    html, pdf = Path(html).resolve(), Path(pdf).resolve()
    pdf.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="loyalist-pdf-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               "--no-pdf-header-footer", "--virtual-time-budget=10000", f"--print-to-pdf={pdf}", html.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise LoyalistError(f"chromium did not finish printing the PDF within {timeout:.0f} s") from None
    if proc.returncode != 0 or not pdf.exists() or pdf.stat().st_size == 0:
        tail = " | ".join((proc.stderr or "").strip().splitlines()[-3:])
        raise LoyalistError(f"chromium could not print the PDF (exit {proc.returncode}): {tail}")
    return pdf


__all__ = ["render_report", "write_report", "print_pdf", "CUSTOMERS", "TEMPLATES"]
