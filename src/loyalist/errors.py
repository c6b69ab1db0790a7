"""Errors shown to the user as one clear line (never a traceback)."""


class LoyalistError(Exception):
    """Base for errors the CLI prints as a single line and exits non-zero."""


class SourceError(LoyalistError):
    """An input could not be read: names the file or URL, and where possible the row and column."""
