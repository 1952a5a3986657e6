"""The one error type a stage turns into a one-line message and a non-zero exit."""

from __future__ import annotations

import sys
from collections.abc import Callable


class PipelineError(Exception):
    """A problem the user can fix (bad params, bad data, nothing to report); no traceback."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; report a PipelineError as one line on stderr and exit non-zero."""
    try:
        main()
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
