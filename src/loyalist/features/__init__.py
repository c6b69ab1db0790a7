"""Features: per-customer aggregates built as Ibis expressions, so they run in DuckDB or on Spark."""

from loyalist.features.summary import purchases, rfm_summary, rhythm

__all__ = ["purchases", "rfm_summary", "rhythm"]
