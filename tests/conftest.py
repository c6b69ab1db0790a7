"""Shared fixtures: where the real datasets live, and skipping cleanly when they do not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pg"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LOYALIST_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(*parts: str) -> Path:
    """Path to a file under ../shared/data, or skip the test saying what is missing."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(
            f"real dataset {path} is absent (it lives in ../shared/data beside the repository, "
            "which a user's clone does not have); set LOYALIST_SHARED_DATA to point elsewhere"
        )
    return path


DEMO = sorted((REPO / "data" / "demo").glob("*.csv.gz"))
"""The bundled demo data (two Online Retail II exports, 800 customers)."""


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory):
    """A fresh store holding the demo data, one per test module."""
    from loyalist.ingest import ingest
    from loyalist.store import open_store

    store = open_store(tmp_path_factory.mktemp("demo") / "demo.duckdb")
    ingest(store, DEMO)
    yield store
    store.close()
