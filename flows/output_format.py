"""How a command prints rows: a table for reading, or every value whole for a program."""

from __future__ import annotations

import sys
from enum import StrEnum


class OutputFormat(StrEnum):
    """`--format` of `sql` and `runs`: a table wraps and shortens values to the terminal; CSV
    and JSON Lines (one object per row) keep each whole, in UTF-8."""

    table = "table"
    csv = "csv"
    json = "json"


def print_data_as_utf8(output: OutputFormat) -> None:
    """Data for a program in UTF-8, whatever the terminal's encoding, every value whole: an
    escape (`\\u6771` in a CSV cell, `\\U0001f469` in JSON) would change the data."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if output is not OutputFormat.table and reconfigure is not None:
        reconfigure(encoding="utf-8", errors="strict")
