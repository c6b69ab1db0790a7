"""API keys: created and revoked with `loyalist keys`, stored hashed in the store (table `api_keys`).

Columns of `api_keys`: key_id (short public id, also the key's prefix), name, key_hash (SHA-256 of the
whole key, hex), created_at, revoked_at (NULL while valid).

A key is `lk_<key_id>_<secret>` with 256 random bits of secret (`secrets.token_urlsafe(32)`), so a plain
SHA-256 digest is enough: there is nothing to brute-force, unlike a password, and no slow hash is needed.
The key itself is shown once, when created; only its digest is stored. Keys are compared in constant time.

The server reads the valid digests when it starts (it holds the store open read-only, so keys cannot
change while it runs: create or revoke keys, then restart `loyalist serve`). Keys are required whenever
the server listens on anything other than a loopback address.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets

import pandas as pd

from loyalist.errors import LoyalistError
from loyalist.store import Store, has_table

TABLE = "api_keys"
DDL = (f"CREATE TABLE IF NOT EXISTS {TABLE} (key_id VARCHAR PRIMARY KEY, name VARCHAR, key_hash VARCHAR, "
       "created_at TIMESTAMP, revoked_at TIMESTAMP)")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(store: Store, name: str) -> tuple[str, str]:
    """A new key for `name`: returns (key_id, key). Only the key's digest is stored."""
    name = (name or "").strip()
    if not name:
        raise LoyalistError("give the key a name (who or what uses it), e.g. --name crm-sync")
    store.con.execute(DDL)
    key_id = secrets.token_hex(4)
    key = f"lk_{key_id}_{secrets.token_urlsafe(32)}"
    store.con.execute(f"INSERT INTO {TABLE} VALUES (?, ?, ?, now()::TIMESTAMP, NULL)", [key_id, name, digest(key)])
    return key_id, key


def revoke_key(store: Store, key_id: str) -> int:
    """Revoke by key id (or the whole key); returns how many keys were revoked (0 or 1)."""
    if not has_table(store, TABLE):
        raise LoyalistError("this store has no API keys yet; create one with `loyalist keys create --name NAME`")
    key_id = key_id.strip()
    if key_id.startswith("lk_"):
        key_id = key_id.split("_")[1]
    n = store.con.execute(f"SELECT count(*) FROM {TABLE} WHERE key_id = ? AND revoked_at IS NULL",
                          [key_id]).fetchone()[0]
    if n == 0:
        raise LoyalistError(f"no valid key with id {key_id!r} (see `loyalist keys list`)")
    store.con.execute(f"UPDATE {TABLE} SET revoked_at = now()::TIMESTAMP WHERE key_id = ?", [key_id])
    return int(n)


def list_keys(store: Store) -> pd.DataFrame:
    if not has_table(store, TABLE):
        return pd.DataFrame(columns=["key_id", "name", "created_at", "revoked_at"])
    return store.con.execute(f"SELECT key_id, name, created_at, revoked_at FROM {TABLE} ORDER BY created_at").df()


def valid_digests(con) -> set[str]:
    """The digests of the keys not revoked, from a (read-only) DuckDB connection."""
    exists = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [TABLE]).fetchone()[0]
    if not exists:
        return set()
    return {r[0] for r in con.execute(f"SELECT key_hash FROM {TABLE} WHERE revoked_at IS NULL").fetchall()}


def check(key: str | None, digests: set[str]) -> bool:
    if not key:
        return False
    d = digest(key)
    ok = False
    for known in digests:  # constant time per comparison; the set is small
        ok |= hmac.compare_digest(d, known)
    return ok


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
