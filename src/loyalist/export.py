"""Writing result tables to files: the one way every command exports (csv, json, parquet, xlsx)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from loyalist.errors import LoyalistError

FORMATS = ("csv", "json", "parquet", "xlsx")


def infer_format(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in FORMATS:
            raise LoyalistError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    raise LoyalistError(f"{path}: cannot tell the format from the name; add --format ({', '.join(FORMATS)})")


def write_frame(df: pd.DataFrame, path: str | Path, fmt: str | None = None) -> Path:
    """Write `df` to `path` in `fmt` (or the format its suffix names)."""
    path = Path(path)
    fmt = infer_format(path, fmt)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "csv":
            df.to_csv(path, index=False)
        elif fmt == "json":
            df.to_json(path, orient="records", date_format="iso", indent=1)
        elif fmt == "parquet":
            df.to_parquet(path, index=False)
        else:
            df.to_excel(path, index=False, engine="openpyxl")
    except OSError as exc:
        raise LoyalistError(f"{path}: cannot write ({exc.strerror or exc})") from None
    return path


def frame_to_text(df: pd.DataFrame, fmt: str) -> str:
    """For printing to standard output (csv or json)."""
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return df.to_json(orient="records", date_format="iso", indent=1)
    if fmt not in FORMATS:
        raise LoyalistError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    raise LoyalistError(f"format {fmt!r} needs --out FILE")
