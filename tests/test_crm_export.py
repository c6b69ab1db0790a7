"""`loyalist export --to postgresql://`: the insights and lists in PostgreSQL, idempotently (real loopback server)."""

from __future__ import annotations

import duckdb
import pandas as pd
import psycopg
import pytest
from test_web_support import base_store, full_store
from typer.testing import CliRunner

from loyalist.cli import app
from loyalist.crm_export import export_postgres

pytestmark = pytest.mark.postgres


def test_export_writes_insights_and_lists_idempotently(pg_url):
    db = full_store()
    first = export_postgres(db, pg_url, "crm")
    second = export_postgres(db, pg_url, "crm")  # again: same tables, nothing doubled
    assert first == second
    con = duckdb.connect(str(db), read_only=True)
    ci = con.execute("SELECT * FROM customer_insights ORDER BY customer_id").df()
    gaps = con.execute("SELECT count(*) FROM crosssell_gaps").fetchone()[0]
    con.close()
    with psycopg.connect(pg_url) as conn:
        got = pd.DataFrame(conn.execute("SELECT customer_id, revenue, p_alive, segment FROM crm.customer_insights "
                                        "ORDER BY customer_id").fetchall(),
                           columns=["customer_id", "revenue", "p_alive", "segment"])
        assert got["customer_id"].tolist() == ci["customer_id"].tolist()
        assert got["revenue"].to_numpy() == pytest.approx(ci["revenue"].to_numpy())
        assert got["segment"].tolist() == ci["segment"].tolist()
        pk = conn.execute("SELECT count(*) FROM information_schema.table_constraints WHERE table_schema = 'crm' "
                          "AND table_name = 'customer_insights' AND constraint_type = 'PRIMARY KEY'").fetchone()[0]
        assert pk == 1
        at_risk = ci[(ci["frequency"] > 0) & (ci["p_alive"] < 0.5)].sort_values(["revenue", "customer_id"],
                                                                                ascending=[False, True])
        rows = conn.execute("SELECT customer_id, reason FROM crm.list_at_risk").fetchall()
        assert [r[0] for r in rows] == at_risk["customer_id"].tolist()
        assert all(r[1].startswith("P(alive) ") for r in rows)
        assert conn.execute("SELECT count(*) FROM crm.list_cross_sell").fetchone()[0] == gaps
        assert first["list_overdue"] == (ci["overdue_days"] > 0).sum()
        assert conn.execute("SELECT count(*) FROM crm.export_runs").fetchone()[0] == 2


def test_export_cli_and_bad_urls(pg_url):
    result = CliRunner().invoke(app, ["export", "--db", str(full_store()), "--to", pg_url, "--schema", "crm_cli"])
    assert result.exit_code == 0, result.output
    assert "crm_cli.customer_insights" in result.output
    bad = CliRunner().invoke(app, ["export", "--db", str(full_store()), "--to", "mysql://x"])
    assert bad.exit_code == 1 and "postgresql://" in bad.output


def test_export_says_why_a_list_is_not_written(pg_url):
    """A store analysed without invoices: payment risk needs them (the CLI said 'run loyalist analyze')."""
    result = CliRunner().invoke(app, ["export", "--db", str(base_store()), "--to", pg_url, "--schema", "crm_base"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert ("crm_base.list_payment_risk: not computed: the store holds no invoices; load them with "
            "`loyalist ingest FILE --kind invoices`, then run `loyalist analyze`") in text
    assert "crm_base.list_overdue: not computed yet: run `loyalist analyze`" in text
    with psycopg.connect(pg_url) as conn:
        tables = {r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables "
                                              "WHERE table_schema = 'crm_base'").fetchall()}
    assert "list_payment_risk" not in tables and {"customer_insights", "list_at_risk"} <= tables
