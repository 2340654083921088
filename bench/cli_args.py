"""What every benchmark's command line shares: its description (the module docstring's first
paragraph, whole: its first line stopped mid-sentence in `--help`) and option types that refuse
values the benchmark cannot use (`--steps 0` ended in a ZeroDivisionError) with argparse's
one-line error."""

from __future__ import annotations

import argparse


def description(doc: str | None) -> str:
    """The first paragraph of a module docstring, on one line."""
    return " ".join((doc or "").split("\n\n")[0].split())


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be 0 or more")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: not a whole number") from None


def run_reporting_user_errors(main) -> None:
    """Run a benchmark's `main`; lmforge's own errors (a missing data file, a mistyped `--set`)
    end it with their one line, as `lmforge` ends on them, not a traceback."""
    import sys

    from flows.user_errors import user_error_types

    try:
        main()
    except user_error_types() as error:
        sys.exit(f"error: {error}")
