"""The one error type a stage turns into a one-line message and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable


class PipelineError(Exception):
    """A problem the user can fix (bad params, bad data, nothing to report); no traceback."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; report a PipelineError as one line on stderr and exit 2."""
    try:
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
