"""The ``pg_url`` fixture: a fresh database on the loopback PostgreSQL test server.

Use it in a test module with::

    from pg import pg_url  # noqa: F401

or for the whole suite with ``pytest_plugins = ["pg"]`` in tests/conftest.py.

The server is the one ``make test`` starts (scripts/pg_test_server.sh, which this fixture
also calls: it is quick when the server already runs). Each test session (each
pytest-xdist worker) gets its own uniquely named database, dropped at the end. However
many test modules import the fixture, a session creates one database.

When the server cannot be started the tests FAIL if CI is set (or LOYALIST_REQUIRE_PG=1),
and are skipped with the reason otherwise. LOYALIST_TEST_PG_URL names another server to use
instead (an admin URL that may CREATE DATABASE); the script is then not run.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "pg_test_server.sh"
ADMIN_URL = "postgresql://postgres@127.0.0.1:54329/postgres"
SCRIPT_TIMEOUT = 900  # seconds: the first run on a fresh machine installs PostgreSQL with apt

_session: dict[str, object] = {"refs": 0, "url": None, "admin": None, "db": None}


def _pg_required() -> bool:
    ci = os.environ.get("CI", "").strip().lower()
    return ci not in ("", "0", "false", "no") or os.environ.get("LOYALIST_REQUIRE_PG") == "1"


def _unavailable(reason: str) -> None:
    if _pg_required():
        pytest.fail(f"PostgreSQL test server unavailable (required because CI or LOYALIST_REQUIRE_PG=1 "
                    f"is set): {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL test server unavailable: {reason} "
                "(run `bash scripts/pg_test_server.sh` as root, or set LOYALIST_TEST_PG_URL)")


def _start_server() -> str:
    """Run the script; return the admin URL, or fail/skip saying why not."""
    override = os.environ.get("LOYALIST_TEST_PG_URL")
    if override:
        return override
    try:
        proc = subprocess.run(["bash", str(SCRIPT)], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=SCRIPT_TIMEOUT, cwd=REPO)
    except (OSError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"{SCRIPT.relative_to(REPO)} could not run: {exc}")
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        _unavailable(f"{SCRIPT.relative_to(REPO)} exited {proc.returncode}: {tail}")
    return ADMIN_URL


def _with_dbname(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def _create_database() -> tuple[str, str, str]:
    import psycopg
    from psycopg import sql

    admin = _start_server()
    name = f"loyalist_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'")
                         .format(sql.Identifier(name)))
    except psycopg.Error as exc:
        _unavailable(f"cannot create a database at {admin}: {' '.join(str(exc).split())}")
    return admin, name, _with_dbname(admin, name)


def _drop_database(admin: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a fresh, empty database for this test session (dropped when the session ends)."""
    if _session["refs"] == 0:
        admin, name, url = _create_database()
        _session.update(admin=admin, db=name, url=url)
    _session["refs"] = int(_session["refs"]) + 1  # type: ignore[call-overload]
    try:
        yield str(_session["url"])
    finally:
        _session["refs"] = int(_session["refs"]) - 1  # type: ignore[call-overload]
        if _session["refs"] == 0:
            admin, name = str(_session["admin"]), str(_session["db"])
            _session.update(admin=None, db=None, url=None)
            _drop_database(admin, name)
