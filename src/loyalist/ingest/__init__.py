"""Ingest: read sources, validate and normalise them, quarantine what fails, store the rest."""

from loyalist.ingest.pipeline import FileReport, IngestReport, Options, ingest

__all__ = ["FileReport", "IngestReport", "Options", "ingest"]
