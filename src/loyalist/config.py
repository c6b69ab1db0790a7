"""Settings from `loyalist.toml` (current directory, or --config), overridden by command-line flags.

Example:

    db = "shop.duckdb"

    [ingest]
    kind = "transactions"
    date_format = "%d/%m/%Y %H:%M"
    guests = "keep"                       # or "quarantine"
    non_product_codes = ["FREIGHT"]       # added to the built-in list
    [ingest.map]
    customer_id = "Account"
    order_date = "Posting Date"

    [value]
    gross_margin = 0.3                    # used when products carry no cost or margin
    discount_rate_annual = 0.1
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loyalist.errors import LoyalistError

DEFAULT_FILE = "loyalist.toml"
KNOWN = {"db", "ingest", "value", "timing", "crosssell", "segments", "direction", "payment", "alerts", "forecast",
         "staffing", "serve", "spark"}
"""Top-level keys and sections the file may have; each analysis step documents its own section."""


@dataclass
class Config:
    db: str | None = None
    ingest: dict[str, Any] = field(default_factory=dict)
    value: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    sections: dict[str, Any] = field(default_factory=dict)
    """Every section of the file, for the analysis steps that read their own ([timing], [alerts] ...)."""


def load(path: str | Path | None = None) -> Config:
    """Read the settings file; a missing default file means defaults, a missing explicit one is an error."""
    explicit = path is not None
    p = Path(path) if explicit else Path(DEFAULT_FILE)
    if not p.exists():
        if explicit:
            raise LoyalistError(f"{p}: no such settings file")
        return Config()
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LoyalistError(f"{p}: not valid TOML ({exc})") from None
    unknown = set(data) - KNOWN
    if unknown:
        raise LoyalistError(f"{p}: unknown settings {', '.join(sorted(unknown))} "
                            f"(known: {', '.join(sorted(KNOWN))})")
    return Config(db=data.get("db"), ingest=dict(data.get("ingest", {})), value=dict(data.get("value", {})), path=p,
                  sections=data)
