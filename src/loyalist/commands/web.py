"""`loyalist serve`, `loyalist keys`, `loyalist report` and `loyalist export`: the product surface."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from loyalist import config
from loyalist.cli import ConfigOption, DbOption, _db, _errors, app, err, out
from loyalist.errors import LoyalistError

keys_app = typer.Typer(help="API keys for the REST API (required when `loyalist serve` listens beyond loopback).",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@app.command()
def serve(
    db: DbOption = None,
    host: Annotated[Optional[str], typer.Option("--host", help="Address to listen on (default 127.0.0.1, or \\[serve] "
                                                              "host). Anything but loopback requires API keys.")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="Port (default 8000, or \\[serve] port).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Server processes (default 1, or \\[serve] "
                                                                    "workers); each reads the store read-only.")] = None,
    preload: Annotated[Optional[bool], typer.Option("--preload/--no-preload", help="Read the lists and customer "
                                                    "tables into memory at start (default, or \\[serve] preload): pages "
                                                    "in milliseconds at the cost of start time and memory per worker; "
                                                    "--no-preload queries the store per page.")] = None,
    config_path: ConfigOption = None,
) -> None:
    """The dashboard and the REST API on the store: overview, lists with CSV/XLSX downloads, customer pages,
    segments, forecasts, cohorts, data quality; JSON at /api/v1 (OpenAPI at /docs).

    The store is opened read-only; stop the server before `loyalist ingest` or `loyalist analyze` write it."""
    import uvicorn

    from loyalist.web import auth
    from loyalist.web.app import create_app

    with _errors():
        cfg = config.load(config_path)
        settings = cfg.sections.get("serve", {})
        host = host or str(settings.get("host", "127.0.0.1"))
        port = int(port or settings.get("port", 8000))
        if not 0 < port < 65536:
            raise LoyalistError(f"--port {port}: give a port between 1 and 65535")
        path = _db(db, cfg)
        require_key = not auth.is_loopback(host)
        workers = int(workers or settings.get("workers", 1))
        if workers < 1:
            raise LoyalistError("--workers must be at least 1")
        preload = bool(settings.get("preload", True)) if preload is None else preload
        if workers > 1:  # each worker process builds its own copy: only check the store and keys here
            create_app(path, require_key=require_key, preload=False).state.reader.close()
            web = None
        else:
            with err.status("reading the lists and customer tables into memory ...") if preload else _null():
                web = create_app(path, require_key=require_key, preload=preload)
    shown = f"[{host}]" if ":" in host else host
    err.print(f"loyalist dashboard on [bold]http://{shown}:{port}/[/]  (API: /api/v1, docs: /docs; store {path}, "
              f"read-only; Ctrl+C stops)" + ("; API keys required" if require_key else ""), highlight=False)
    log_level = str(settings.get("log_level", "warning"))
    if workers == 1:
        uvicorn.run(web, host=host, port=port, log_level=log_level)
        return
    _serve_processes(str(Path(path).resolve()), host, port, workers, require_key, preload, log_level)


def _null():
    import contextlib

    return contextlib.nullcontext()


def _serve_processes(path: str, host: str, port: int, workers: int, require_key: bool, preload: bool,
                     log_level: str) -> None:
    """N server processes, each with its own listening socket on the same port (SO_REUSEPORT), so the kernel
    spreads new connections evenly over them. (uvicorn's --workers shares one socket: whichever process wakes
    first accepts every pending connection: 20 kept-alive clients all landed on one process.) Each
    process opens the store and preloads on its own and listens only once it is ready."""
    import multiprocessing as mp
    import signal

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_serve_one, args=(path, host, port, require_key, preload, log_level))
             for _ in range(workers)]
    for proc in procs:
        proc.start()

    def stop(signum=None, frame=None) -> None:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
    signal.signal(signal.SIGTERM, stop)
    try:
        for proc in procs:
            proc.join()
            if proc.exitcode not in (0, -signal.SIGTERM, -signal.SIGINT):
                stop()
    except KeyboardInterrupt:
        stop()
        for proc in procs:
            proc.join()
    failed = [proc.exitcode for proc in procs if proc.exitcode not in (0, -signal.SIGTERM, -signal.SIGINT)]
    if failed:
        err.print(f"[red]error:[/] a server process stopped with exit code {failed[0]}")
        raise typer.Exit(1)


def _serve_one(path: str, host: str, port: int, require_key: bool, preload: bool, log_level: str) -> None:
    import socket

    import uvicorn

    from loyalist.web.app import create_app

    web = create_app(path, require_key=require_key, preload=preload)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    uvicorn.Server(uvicorn.Config(web, log_level=log_level)).run(sockets=[sock])


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option("--name", help="Who or what uses the key, e.g. crm-sync.")],
    db: DbOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Create an API key; it is printed once (only its SHA-256 digest is stored). Restart the server to use it."""
    from loyalist.store import open_store
    from loyalist.web.auth import create_key

    with _errors():
        cfg = config.load(config_path)
        store = open_store(_db(db, cfg), create=False)
        key_id, key = create_key(store, name)
        store.close()
    err.print(f"key {key_id} created for {name!r}; it is shown only now. Send it as the X-API-Key header.",
              highlight=False)
    out.print(key, highlight=False, soft_wrap=True)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (from `loyalist keys list`) or the key itself.")],
    db: DbOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Revoke an API key (takes effect when the server restarts)."""
    from loyalist.store import open_store
    from loyalist.web.auth import revoke_key

    with _errors():
        cfg = config.load(config_path)
        store = open_store(_db(db, cfg), create=False)
        revoke_key(store, key_id)
        store.close()
    out.print(f"key {key_id} revoked", highlight=False)


@keys_app.command("list")
def keys_list(db: DbOption = None, config_path: ConfigOption = None) -> None:
    """The API keys of the store (ids, names, dates; never the keys)."""
    from loyalist.store import open_store
    from loyalist.web.auth import list_keys

    with _errors():
        cfg = config.load(config_path)
        store = open_store(_db(db, cfg), read_only=True)
        keys = list_keys(store)
        store.close()
    table = Table(title="API keys", title_justify="left")
    for c in ("id", "name", "created", "revoked"):
        table.add_column(c)
    for r in keys.itertuples():
        table.add_row(r.key_id, r.name, str(r.created_at)[:19], "" if r.revoked_at is None or str(r.revoked_at) in
                      ("NaT", "None") else str(r.revoked_at)[:19])
    out.print(table)


@app.command()
def report(
    out_file: Annotated[Path, typer.Option("--out", help="The HTML file to write (one self-contained file).")]
    = Path("report.html"),
    pdf: Annotated[Optional[Path], typer.Option("--pdf", help="Also print it to this PDF (needs chromium).")] = None,
    top: Annotated[int, typer.Option("--top", help="Rows of each list in the report.")] = 15,
    db: DbOption = None,
    config_path: ConfigOption = None,
) -> None:
    """One self-contained HTML file (CSS and plotly.js inline) with the overview, the top of every list and the
    charts, for e-mail; optionally a PDF printed by headless chromium."""
    from loyalist.report import print_pdf, write_report

    with _errors():
        cfg = config.load(config_path)
        if top < 1:
            raise LoyalistError("--top must be at least 1")
        path = write_report(_db(db, cfg), out_file, top=top)
        err.print(f"report written to {path} ({path.stat().st_size / 1e6:.1f} MB, opens offline in any browser)")
        if pdf is not None:
            print_pdf(path, pdf)
            err.print(f"PDF written to {pdf}")


@app.command("export")
def export_(
    to: Annotated[str, typer.Option("--to", help="postgresql://user@host:port/database of the CRM's side database.")],
    schema: Annotated[str, typer.Option("--schema", help="PostgreSQL schema to write into (created if missing).")]
    = "loyalist",
    db: DbOption = None,
    config_path: ConfigOption = None,
) -> None:
    """Write the per-customer insight table and every list into PostgreSQL, replacing what an earlier export
    wrote (one transaction: readers see the old tables or the new ones, never half)."""
    from loyalist.crm_export import export_postgres

    with _errors():
        cfg = config.load(config_path)
        with err.status(f"exporting to {schema} ..."):
            written = export_postgres(_db(db, cfg), to, schema)
    table = Table(title=f"exported to schema {schema}", title_justify="left")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, n in written.items():
        table.add_row(escape(f"{schema}.{name}"), f"{n:,}" if isinstance(n, int) else "not written")
    out.print(table)
    for name, n in written.items():
        if not isinstance(n, int):
            out.print(escape(f"  {schema}.{name}: {n}"), highlight=False)
