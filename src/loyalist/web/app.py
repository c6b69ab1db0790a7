"""The dashboard and the REST API (`loyalist serve`): FastAPI, server-rendered Jinja2 pages, plotly.js charts.

Everything is read from the store through `loyalist.web.queries.Reader` (read-only, parameterised Ibis
queries). Pages of capabilities whose tables are not in the store say so and which command computes them;
nothing is made up. The API (/api/v1, OpenAPI at /docs) is read-only: GET endpoints only, validated inputs.

plotly.js is served from the plotly Python package's own copy (no CDN), so the charts work offline.
"""


import dataclasses
import datetime as dt
import enum
import io
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from fastapi import FastAPI, HTTPException, Path as PathParam, Query as Q, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from loyalist import __version__
from loyalist.web import auth, charts
from loyalist.web import format as fmt
from loyalist.web.queries import CUSTOMERS, LISTS, MAX_PER_PAGE, RUN_ANALYZE, ListSpec, Query, Reader

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
COOKIE = "loyalist_key"
SYMBOLS = {"GBP": "£", "EUR": "€", "USD": "$", "JPY": "¥"}

BACKTESTS = [
    ("timing_backtest", "Next order timing"), ("crosssell_backtest", "Cross-sell"),
    ("value_backtest", "Segments & value"), ("direction_backtest", "Direction & payment"),
    ("forecast_backtest", "Forecasts"),
]


def plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def swagger_ui_dir() -> str:
    import swagger_ui_bundle

    return str(swagger_ui_bundle.swagger_ui_path)


def _code(text: str):
    """Escape, then show `quoted` words as code."""
    import re

    from markupsafe import Markup, escape

    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


def templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(TEMPLATES))
    env = t.env
    env.auto_reload = False  # templates are compiled once per process, not re-checked on disk per request
    env.filters.update(code=_code, num=fmt.number, money=fmt.money, pct=fmt.percent, date=fmt.date, label=fmt.label,
                       missing=fmt.missing, chart=charts.to_json)
    env.globals.update(cell=fmt.cell, numeric=fmt.numeric, LISTS=LISTS, version=__version__, label=fmt.label)
    return t


# ------------------------------------------------------------------------------------ API response models
class Available(BaseModel):
    computed: bool = Field(description="False when the capability's table is not in the store yet.")
    note: str | None = Field(None, description="What to run when it is not computed yet.")


class CustomerList(Available):
    total: int
    page: int
    per_page: int
    sort: str | None
    order: Literal["asc", "desc"]
    items: list[dict[str, Any]]


class CustomerDetail(BaseModel):
    customer_id: str
    insights: dict[str, Any] = Field(description="The customer's row of customer_insights: every column.")
    orders: list[dict[str, Any]]
    reorders: list[dict[str, Any]] | None
    next_products: list[dict[str, Any]] | None
    crosssell_gaps: list[dict[str, Any]] | None
    contact_schedule: list[dict[str, Any]] | None
    events: list[dict[str, Any]] | None
    payment_behaviour: list[dict[str, Any]] | None
    reasons: dict[str, str] = Field(description="Each insight's reason in plain words.")


class Rows(Available):
    items: list[dict[str, Any]]


class Segments(BaseModel):
    segments: Rows
    rfm_segments: Rows


class Alerts(Available):
    total: int
    page: int
    per_page: int
    items: list[dict[str, Any]]


class Backtests(BaseModel):
    customer_base: Rows
    tracking: Rows
    others: dict[str, Rows]


class Problem(BaseModel):
    detail: str


def _rows(frame: pd.DataFrame | None, table: str) -> Rows:
    if frame is None:
        return Rows(computed=False, note=f"{RUN_ANALYZE} (writes `{table}`)", items=[])
    return Rows(computed=True, items=fmt.records(frame))


# ---------------------------------------------------------------------------------------------- the app
def create_app(db: str | Path, require_key: bool = False, preload: bool = True) -> FastAPI:
    """The ASGI app serving the store at `db`. With `require_key`, every API call and page needs a valid key.
    With `preload` (the default), the lists and customer pages are served from memory (`loyalist.web.memory`),
    read when the app is created."""
    reader = Reader(db, preload=preload)
    digests = auth.valid_digests(reader._con)
    if require_key and not digests:
        reader.close()
        from loyalist.errors import LoyalistError

        raise LoyalistError("the server listens beyond loopback, so API keys are required, and this store has "
                            "none: create one with `loyalist keys create --name NAME` (then restart)")
    app = FastAPI(title="loyalist", version=__version__, docs_url=None, redoc_url=None,
                  description="Read-only access to what loyalist computed from your transactions: customers with "
                              "every insight and its reason, segments, alerts, forecasts and the held-out backtests. "
                              "Send the key as `X-API-Key: KEY` or `Authorization: Bearer KEY` when the server "
                              "requires keys (it does whenever it listens beyond loopback).")
    app.state.reader = reader
    app.state.require_key = require_key
    app.state.digests = digests
    tpl = templates()
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    app.mount("/vendor/swagger-ui", StaticFiles(directory=swagger_ui_dir()), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        """Swagger UI from the swagger-ui-bundle package's files (offline, no CDN)."""
        from fastapi.openapi.docs import get_swagger_ui_html

        return get_swagger_ui_html(openapi_url="/openapi.json", title="loyalist API",
                                   swagger_js_url="/vendor/swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url="/vendor/swagger-ui/swagger-ui.css",
                                   swagger_favicon_url="/vendor/swagger-ui/favicon-32x32.png")

    def symbol() -> str:
        return SYMBOLS.get(reader.currency(), "")

    @app.middleware("http")
    async def keys(request: Request, call_next):
        if require_key:
            path = request.url.path
            open_paths = path.startswith(("/static/", "/vendor/")) or path in ("/login", "/docs", "/openapi.json", "/healthz")
            if not open_paths:
                key = request.headers.get("x-api-key") or request.cookies.get(COOKIE)
                authz = request.headers.get("authorization", "")
                if not key and authz.lower().startswith("bearer "):
                    key = authz[7:].strip()
                if not auth.check(key, digests):
                    if path.startswith("/api/"):
                        return JSONResponse({"detail": "a valid API key is required (X-API-Key header)"}, 401,
                                            headers={"WWW-Authenticate": "Bearer"})
                    return RedirectResponse(f"/login?next={urllib.parse.quote(path)}", 303)
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    def page(request: Request, name: str, **ctx) -> HTMLResponse:
        ov = reader.overview()
        return tpl.TemplateResponse(request, name, {
            "store": reader.path.name, "as_of": reader.as_of(), "symbol": symbol(), "has_customers": ov is not None,
            "nav": request.url.path, "query_string": request.url.query, **ctx})

    # ------------------------------------------------------------------ static assets
    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    def plotly_asset() -> FileResponse:
        return FileResponse(plotly_js(), media_type="application/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, Any]:
        """Liveness of this server process, and what it holds in memory (no customer data)."""
        import os

        mem = reader.memory.report() if reader.memory is not None else None
        return {"ok": True, "pid": os.getpid(), "preloaded": mem is not None,
                "memory": None if mem is None else {"load_seconds": mem.seconds, "bytes": mem.nbytes,
                                                    "phases_s": mem.phases}}

    @app.get("/login", include_in_schema=False, response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/", error: str = ""):
        return tpl.TemplateResponse(request, "login.html", {"next": next if next.startswith("/") else "/",
                                                            "error": error, "store": reader.path.name,
                                                            "nav": "/login", "as_of": None})

    @app.post("/login", include_in_schema=False)
    async def login(request: Request):
        form = urllib.parse.parse_qs((await request.body()).decode("utf-8", "replace"))
        key = (form.get("key") or [""])[0].strip()
        nxt = (form.get("next") or ["/"])[0]
        nxt = nxt if nxt.startswith("/") and not nxt.startswith("//") else "/"
        if not auth.check(key, digests):
            return RedirectResponse(f"/login?error=1&next={urllib.parse.quote(nxt)}", 303)
        resp = RedirectResponse(nxt, 303)
        resp.set_cookie(COOKIE, key, httponly=True, samesite="strict")
        return resp

    # ------------------------------------------------------------------ pages
    @app.get("/", include_in_schema=False, response_class=HTMLResponse)
    def overview(request: Request):
        ov = reader.overview()
        ctx: dict[str, Any] = {"ov": ov, "run": reader.latest_run()}
        if ov is not None:
            ctx["value_chart"] = charts.value_distribution(reader.value_distribution(), symbol())
            metrics, tracking = reader.backtest()
            ctx["metrics"] = fmt.rows(metrics)
            ctx["tracking_chart"] = charts.tracking(tracking, metrics["cutoff"].iloc[0]) if len(tracking) else None
            ctx["lists"] = [(s, reader.missing(s), None if reader.missing(s) else list_total(s))
                            for s in LISTS.values() if s.name != "customers"]
            ctx["grades"] = fmt.rows(reader.counts("value_grade")) if reader.has(CUSTOMERS, "value_grade") else None
        ctx["backtests"] = [(title, table, fmt.rows(reader.whole(table)) if table in reader.schema else None)
                            for table, title in BACKTESTS]
        return page(request, "overview.html", **ctx)

    def list_total(spec: ListSpec) -> int:
        return reader.cached(f"total:{spec.name}", lambda: reader.page(spec, Query(per_page=1)).total)

    def list_query(spec: ListSpec, request: Request) -> Query:
        qp = request.query_params
        filters = {}
        for c in spec.choices:
            if qp.get(c):
                filters[c] = qp.get(c)
        for c in spec.ranges:
            for side in ("min", "max"):
                if qp.get(f"{side}_{c}"):
                    filters[f"{side}:{c}"] = qp.get(f"{side}_{c}")
        order = qp.get("order")

        def integer(name: str, default: int) -> int:
            try:
                return int(qp.get(name, default))
            except ValueError:
                return default
        return Query(q=qp.get("q"), filters=filters, sort=qp.get("sort"),
                     descending=None if order not in ("asc", "desc") else order == "desc",
                     page=integer("page", 1), per_page=integer("per_page", 50))

    def spec_for(name: str) -> ListSpec:
        spec = LISTS.get(name)
        if spec is None:
            raise HTTPException(404, f"no list {name!r}; lists: {', '.join(LISTS)}")
        return spec

    @app.get("/lists/{name}", include_in_schema=False, response_class=HTMLResponse)
    def list_page(request: Request, name: str):
        spec = spec_for(name)
        query = list_query(spec, request)
        result = reader.page(spec, query)
        clean = reader.clean(spec, query) if not result.missing else query
        choices = {c: reader.choices(spec, c) for c in spec.choices if not result.missing}
        kinds = {c: reader.column_kind(spec, c) for c in spec.ranges} if not result.missing else {}
        params = {k: v for k, v in request.query_params.items() if k not in ("page",)}
        rows = fmt.rows(result.rows)

        def href(**changes) -> str:
            return "?" + urllib.parse.urlencode(sorted({**params, **changes}.items()))
        header = []
        sortable = set(reader.list_table_columns(spec))
        for c in result.columns:
            active = c == result.sort
            nxt = "asc" if (active and result.descending) else "desc"
            header.append((c, fmt.label(c), href(sort=c, order=nxt) if c in sortable else None,
                           ("▼" if result.descending else "▲") if active else "",
                           bool(rows) and fmt.numeric(c, rows[0].get(c))))
        pager = {"first": href(page=1) if result.page > 1 else None, "prev": href(page=result.page - 1),
                 "next": href(page=result.page + 1) if result.page < result.pages else None,
                 "last": href(page=result.pages)}
        export = urllib.parse.urlencode(sorted(params.items()))
        return page(request, "list.html", spec=spec, result=result, rows=rows, header=header, pager=pager,
                    body=fmt.table_body(rows, result.columns, symbol()), export_query=export,
                    query=clean, choices={c: v for c, v in choices.items() if v}, kinds=kinds,
                    ranges=[c for c in spec.ranges if c in kinds and c in reader.list_table_columns(spec)],
                    raw=request.query_params)

    @app.get("/lists/{name}/export", include_in_schema=False)
    def list_export(request: Request, name: str, format: Literal["csv", "xlsx"] = "csv"):
        spec = spec_for(name)
        why = reader.missing(spec)
        if why:
            raise HTTPException(404, why)
        frame = reader.export(spec, list_query(spec, request))
        filename = f"loyalist-{spec.name}-{reader.as_of() or dt.date.today()}.{format}"
        headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
        if format == "csv":
            return Response(frame.to_csv(index=False), media_type="text/csv; charset=utf-8", headers=headers)
        buf = io.BytesIO()
        out = frame.copy()
        for c in out.columns:  # Excel cannot hold time zones
            if isinstance(out[c].dtype, pd.DatetimeTZDtype):
                out[c] = out[c].dt.tz_localize(None)
        out.to_excel(buf, index=False, engine="openpyxl", sheet_name=spec.title[:31].replace("/", "-"))
        return Response(buf.getvalue(), headers=headers,
                        media_type="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")

    @app.get("/customers/{customer_id:path}", include_in_schema=False, response_class=HTMLResponse)
    def customer_page(request: Request, customer_id: str):
        data = reader.customer(customer_id)
        if data is None:
            if reader.overview() is None:
                return page(request, "customer.html", data=None, customer_id=customer_id)
            raise HTTPException(404, f"no customer {customer_id!r} in the analysis")
        c = data["insights"]
        orders = data["orders"]
        chart = charts.timeline(orders, c.get("next_order_date"), c.get("next_order_p10"), c.get("next_order_p90")) \
            if len(orders) else None
        rows = {k: (fmt.rows(v) if v is not None else None) for k, v in data.items()
                if k not in ("insights", "orders")}
        return page(request, "customer.html", data=data, c=c, rows=rows, timeline_chart=chart,
                    reasons=reasons(c, orders), customer_id=customer_id,
                    orders=fmt.rows(orders.sort_values("order_date", ascending=False).head(25)),
                    n_orders=len(orders), has=lambda col: col in c)

    @app.get("/segments", include_in_schema=False, response_class=HTMLResponse)
    def segments_page(request: Request):
        seg = reader.whole("segments", ["customers"])
        rfm = reader.whole("rfm_segments", ["customers"])
        figs = {}
        for key, frame in (("segments", seg), ("rfm", rfm)):
            if frame is not None and len(frame) and {"segment", "customers"} <= set(frame.columns):
                f = frame.sort_values("customers", ascending=False)
                labels = f["segment"].astype(str)
                data = [charts.bar(labels, f["customers"], "customers", charts.PALETTE[0], offsetgroup="1")]
                if "revenue_share" in f:
                    data.append(charts.bar(labels, f["revenue_share"], "share of revenue", charts.PALETTE[1],
                                           yaxis="y2", offsetgroup="2"))
                figs[key] = charts.figure(data, "Customers and share of revenue", barmode="group",
                                          xaxis={**charts.BASE_LAYOUT["xaxis"], "type": "category"},
                                          yaxis2={"overlaying": "y", "side": "right", "tickformat": ".0%",
                                                  "showgrid": False})
        return page(request, "segments.html", seg=fmt.rows(seg.sort_values("customers", ascending=False))
                    if seg is not None and "customers" in seg else fmt.rows(seg) if seg is not None else None,
                    rfm=fmt.rows(rfm) if rfm is not None else None, figs=figs,
                    seg_cols=list(seg.columns) if seg is not None else [],
                    rfm_cols=list(rfm.columns) if rfm is not None else [])

    @app.get("/forecast", include_in_schema=False, response_class=HTMLResponse)
    def forecast_page(request: Request, level: str | None = None, series: str | None = None):
        ctx: dict[str, Any] = {"forecast": None}
        f = reader.forecasts()
        if f is not None and len(f):
            levels = [str(x) for x in pd.unique(f["level"].astype(str))]
            level = level if level in levels else levels[0]
            fl = f[f["level"].astype(str) == level]
            series_ids = [str(x) for x in pd.unique(fl["series_id"].astype(str))][:500]
            series = series if series in series_ids else series_ids[0]
            fs = fl[fl["series_id"].astype(str) == series].sort_values("week")
            data = []
            if {"lo95", "hi95"} <= set(fs.columns):
                data.append(charts.line(fs["week"], fs["hi95"], "95% interval", "rgba(37,99,235,0)", showlegend=False))
                data.append(charts.line(fs["week"], fs["lo95"], "95% interval", "rgba(37,99,235,0)", fill="tonexty",
                                        fillcolor="rgba(37,99,235,0.12)"))
            if {"lo80", "hi80"} <= set(fs.columns):
                data.append(charts.line(fs["week"], fs["hi80"], "80% interval", "rgba(37,99,235,0)", showlegend=False))
                data.append(charts.line(fs["week"], fs["lo80"], "80% interval", "rgba(37,99,235,0)", fill="tonexty",
                                        fillcolor="rgba(37,99,235,0.25)"))
            data.append(charts.line(fs["week"], fs["forecast"], "forecast", charts.PALETTE[0]))
            method = str(fs["method"].iloc[0]) if "method" in fs and len(fs) else ""
            ctx.update(forecast=charts.figure(data, f"Forecast: {level} {series}" + (f" ({method})" if method else "")),
                       levels=levels, level=level, series_ids=series_ids, series=series,
                       forecast_rows=fmt.rows(fs))
        ph = reader.whole("peak_hours")
        if ph is not None and {"dow", "hour", "orders"} <= set(ph.columns) and len(ph):
            piv = ph.pivot_table(index="dow", columns="hour", values="orders", aggfunc="sum").fillna(0)
            ctx["peak_hours"] = charts.heatmap(list(piv.columns), [str(d) for d in piv.index], piv.to_numpy(),
                                               "Orders by weekday and hour", "hour", "weekday")
        ctx["peak_hours_missing"] = ph is None
        for table in ("peak_weeks", "staffing", "forecast_backtest"):
            frame = reader.whole(table)
            ctx[table] = fmt.rows(frame) if frame is not None else None
            ctx[table + "_cols"] = list(frame.columns) if frame is not None else []
        return page(request, "forecast.html", **ctx)

    @app.get("/cohorts", include_in_schema=False, response_class=HTMLResponse)
    def cohorts_page(request: Request):
        ctx: dict[str, Any] = {}
        co = reader.whole("cohorts", ["cohort_month", "months_since"], limit=50_000)
        ctx["cohorts_missing"] = co is None
        if co is not None and len(co) and {"cohort_month", "months_since", "retention"} <= set(co.columns):
            piv = co.pivot_table(index="cohort_month", columns="months_since", values="retention", aggfunc="mean")
            ctx["cohort_chart"] = charts.heatmap(list(piv.columns), [pd.Timestamp(x).strftime("%b %Y") for x in piv.index],
                                                 piv.to_numpy(), "Share of each cohort still buying, by months "
                                                 "since the first order", "months since first order",
                                                 "cohort (first order month)")
            if "customers" in co:
                sizes = co[co["months_since"] == co["months_since"].min()][["cohort_month", "customers"]]
                ctx["cohort_sizes"] = fmt.rows(sizes)
        ctx["stages"] = fmt.rows(reader.counts("lifecycle_stage")) if reader.has(CUSTOMERS, "lifecycle_stage") else None
        lc = reader.whole("lifecycle_conversion")
        ctx["conversion"] = fmt.rows(lc) if lc is not None else None
        ctx["conversion_cols"] = list(lc.columns) if lc is not None else []
        return page(request, "cohorts.html", **ctx)

    @app.get("/quality", include_in_schema=False, response_class=HTMLResponse)
    def quality_page(request: Request):
        q = reader.quality()
        return page(request, "quality.html", flags=q["flags"], by_rule=fmt.rows(q["by_rule"]),
                    examples=fmt.rows(q["examples"]), ingests=fmt.rows(q["ingests"]))

    # ------------------------------------------------------------------ API
    sort_columns = tuple(c for c in reader.schema.get(CUSTOMERS, []))
    SortColumn = enum.Enum("SortColumn", {c: c for c in sort_columns}, type=str) if sort_columns else str

    @app.get("/api/v1/customers", response_model=CustomerList, tags=["customers"], responses={409: {"model": Problem}},
             summary="Customers with every insight column: filter, sort, paginate")
    def api_customers(
        q: Annotated[str | None, Q(max_length=200, description="Text in the customer id.")] = None,
        segment: Annotated[str | None, Q(max_length=200)] = None,
        value_grade: Annotated[str | None, Q(max_length=50)] = None,
        lifecycle_stage: Annotated[str | None, Q(max_length=100)] = None,
        trend: Annotated[str | None, Q(max_length=50)] = None,
        min_p_alive: Annotated[float | None, Q(ge=0, le=1)] = None,
        max_p_alive: Annotated[float | None, Q(ge=0, le=1)] = None,
        min_clv_12m: Annotated[float | None, Q(allow_inf_nan=False)] = None,
        sort: Annotated[SortColumn | None, Q(description="A column of customer_insights.")] = None,
        order: Literal["asc", "desc"] = "desc",
        page: Annotated[int, Q(ge=1, le=1_000_000)] = 1,
        per_page: Annotated[int, Q(ge=1, le=MAX_PER_PAGE)] = 50,
    ) -> CustomerList:
        spec = LISTS["customers"]
        if CUSTOMERS not in reader.schema:
            return CustomerList(computed=False, note=RUN_ANALYZE, total=0, page=page, per_page=per_page, sort=sort,
                                order=order, items=[])
        sort = sort.value if isinstance(sort, enum.Enum) else sort
        if sort is not None and sort not in sort_columns:
            raise HTTPException(409, f"sort: {RUN_ANALYZE} (no column {sort!r} yet)")
        filters = {k: v for k, v in dict(segment=segment, value_grade=value_grade, lifecycle_stage=lifecycle_stage,
                                         trend=trend).items() if v is not None}
        for k in filters:
            if not reader.has(CUSTOMERS, k):
                raise HTTPException(409, f"{k}: {RUN_ANALYZE} (the column is not in the store yet)")
        for key, v in (("min:p_alive", min_p_alive), ("max:p_alive", max_p_alive), ("min:clv_12m", min_clv_12m)):
            if v is not None:
                filters[key] = str(v)
        full = dataclasses.replace(spec, name="api-customers", columns=sort_columns)
        result = reader.page(full, Query(q=q, filters=filters, sort=sort or "clv_12m", descending=order == "desc",
                                         page=page, per_page=per_page))
        # Past the last page: no items (the dashboard shows its last page instead; a client paging until an
        # empty page would get that last page again and again).
        return CustomerList(computed=True, total=result.total, page=page, per_page=result.per_page,
                            sort=result.sort or None, order=order,
                            items=fmt.records(result.rows) if page <= result.pages else [])

    @app.get("/api/v1/customers/{customer_id}", response_model=CustomerDetail, tags=["customers"],
             responses={404: {"model": Problem}}, summary="One customer: every insight with its reason")
    def api_customer(customer_id: Annotated[str, PathParam(max_length=200)]) -> CustomerDetail:
        data = reader.customer(customer_id)
        if data is None:
            raise HTTPException(404, f"no customer {customer_id!r} in the analysis" if CUSTOMERS in reader.schema
                                else RUN_ANALYZE)
        c = data["insights"]
        return CustomerDetail(customer_id=str(c["customer_id"]), insights=fmt.plain(c), orders=fmt.records(data["orders"]),
                              reasons=reasons(c, data["orders"]),
                              **{k: (fmt.records(data[k]) if data[k] is not None else None)
                                 for k in ("reorders", "next_products", "crosssell_gaps", "contact_schedule", "events",
                                           "payment_behaviour")})

    @app.get("/api/v1/segments", response_model=Segments, tags=["segments"], summary="Micro-segments and RFM segments")
    def api_segments() -> Segments:
        return Segments(segments=_rows(reader.whole("segments"), "segments"),
                        rfm_segments=_rows(reader.whole("rfm_segments"), "rfm_segments"))

    @app.get("/api/v1/alerts", response_model=Alerts, tags=["alerts"], summary="Detected events, newest first")
    def api_alerts(
        since: Annotated[dt.date | None, Q(description="Only events on or after this date (YYYY-MM-DD).")] = None,
        type: Annotated[str | None, Q(max_length=100)] = None,
        customer_id: Annotated[str | None, Q(max_length=200)] = None,
        page: Annotated[int, Q(ge=1, le=1_000_000)] = 1,
        per_page: Annotated[int, Q(ge=1, le=MAX_PER_PAGE)] = 50,
    ) -> Alerts:
        if since is not None:  # dates pandas cannot hold mean "everything" or "nothing yet"
            since = min(max(since, dt.date(1900, 1, 1)), dt.date(2200, 1, 1))
        got = reader.events(since, type, customer_id, page, per_page)
        if got is None:
            return Alerts(computed=False, note=f"{RUN_ANALYZE} (writes `events`)", total=0, page=page,
                          per_page=per_page, items=[])
        total, rows = got
        return Alerts(computed=True, total=total, page=page, per_page=per_page, items=fmt.records(rows))

    @app.get("/api/v1/forecasts", response_model=Rows, tags=["forecasts"], summary="Weekly forecasts with intervals")
    def api_forecasts(level: Annotated[str | None, Q(max_length=100)] = None,
                      series_id: Annotated[str | None, Q(max_length=200)] = None) -> Rows:
        return _rows(reader.forecasts(level, series_id), "forecasts")

    @app.get("/api/v1/backtest", response_model=Backtests, tags=["backtest"],
             summary="Held-out accuracy of every model")
    def api_backtest() -> Backtests:
        metrics, tracking = reader.backtest() if reader.has("backtest_metrics") else (None, None)
        return Backtests(customer_base=_rows(metrics if reader.has("backtest_metrics") else None, "backtest_metrics"),
                         tracking=_rows(tracking if reader.has("backtest_metrics") else None, "backtest_tracking"),
                         others={t: _rows(reader.whole(t), t) for t, _ in BACKTESTS})

    @app.exception_handler(404)
    async def not_found(request: Request, exc):
        detail = getattr(exc, "detail", "not found")
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": detail}, 404)
        return tpl.TemplateResponse(request, "error.html", {"message": detail, "store": reader.path.name,
                                                            "nav": "", "as_of": None}, status_code=404)

    return app


def app_from_env() -> FastAPI:
    """The app for `uvicorn --factory` worker processes: store and key rule from the environment
    (LOYALIST_SERVE_DB, LOYALIST_SERVE_REQUIRE_KEY, LOYALIST_SERVE_PRELOAD), for running uvicorn by hand
    (`uvicorn --factory loyalist.web.app:app_from_env`); `loyalist serve --workers N` starts its own processes."""
    import os

    return create_app(os.environ["LOYALIST_SERVE_DB"], require_key=os.environ.get("LOYALIST_SERVE_REQUIRE_KEY") == "1",
                      preload=os.environ.get("LOYALIST_SERVE_PRELOAD", "1") == "1")


def reasons(c: dict[str, Any], orders: pd.DataFrame) -> dict[str, str]:
    """Each insight on the customer page with the numbers behind it, in plain words."""
    out: dict[str, str] = {}
    as_of = c.get("as_of")
    as_of = pd.Timestamp(as_of) if not fmt.missing(as_of) else None
    if not fmt.missing(c.get("p_alive")):
        f, T = int(c.get("frequency") or 0), c.get("tenure_days")
        last = pd.Timestamp(c["last_order"]) if not fmt.missing(c.get("last_order")) else None
        ago = f"{(as_of - last.normalize()).days:,} days" if (as_of is not None and last is not None) else "?"
        out["p_alive"] = (f"{c.get('model', 'the model')}: {f} repeat order{'s' if f != 1 else ''} in "
                          f"{fmt.number(T)} days as a customer, the last {ago} before {fmt.date(as_of)}"
                          if f else "one order only: P(alive) comes from the whole base's behaviour")
    if len(orders):
        bought = orders["lines"].to_numpy() > 0
        stamps = orders["order_date"].to_numpy()[bought].astype("datetime64[D]")
        days = np.unique(stamps)
        gaps = np.diff(days).astype(int)
        first = pd.Timestamp(days[0]) if len(days) else None
        if len(gaps):
            q25, q50, q75 = np.percentile(gaps, [25, 50, 75])
            last_gap = f"; last order {(as_of - pd.Timestamp(days[-1])).days:,} days before {fmt.date(as_of)}" \
                if as_of is not None else ""
            out["rhythm"] = (f"{len(days):,} order days since {first:%b %Y}; median gap {q50:,.0f} days "
                             f"(middle half {q25:,.0f}–{q75:,.0f}){last_gap}")
        else:
            out["rhythm"] = f"one order day ({first:%-d %b %Y}): no rhythm yet" if first is not None else "no orders"
        amounts = orders["amount"].to_numpy()[bought]
        if len(amounts):
            out["basket"] = f"usual order {np.median(amounts):,.2f} (median of {len(amounts):,} orders)"
    if not fmt.missing(c.get("clv_12m")):
        out["clv_12m"] = (f"{fmt.number(c.get('expected_orders_90d'), 2)} orders expected in 90 days × about "
                          f"{fmt.number(c.get('expected_order_value'), 2)} per order, over 12 months, discounted")
    if not fmt.missing(c.get("next_order_date")):
        out["next_order"] = (f"next order around {fmt.date(c['next_order_date'])} (80% between "
                             f"{fmt.date(c.get('next_order_p10'))} and {fmt.date(c.get('next_order_p90'))})")
    for col in ("overdue_reason", "mix_shift_reason", "payment_risk_reason"):
        if not fmt.missing(c.get(col)):
            out[col.replace("_reason", "")] = str(c[col])
    return out
