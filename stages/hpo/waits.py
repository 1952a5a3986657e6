"""Waiting on services, as the user sees it: a long wait says what it waits for, and Ctrl-C or
SIGTERM ends it within seconds, whatever phase the stage is in."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

log = logging.getLogger(__name__)
# Seconds of silence before a wait is announced.
ANNOUNCE_AFTER_S = 5.0


@contextlib.contextmanager
def announced(what: str, after_s: float = ANNOUNCE_AFTER_S) -> Iterator[None]:
    """Warn once, after `after_s` seconds, that the block still waits for `what` (at any level)."""
    timer = threading.Timer(after_s, log.warning, [f"waiting for {what} ..."])
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


class StopSignal:
    """Ctrl-C and SIGTERM as the tune stage takes them: while the runner runs, a signal only sets
    `requested`, which it checks every half second; anywhere else it also raises
    KeyboardInterrupt at once (a library's retry loop would hold the stop for minutes)."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._polled = False

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    @contextlib.contextmanager
    def polled(self) -> Iterator[None]:
        """The block checks `requested` itself: a signal does not interrupt it."""
        self._polled = True
        try:
            yield
        finally:
            self._polled = False

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested.set()
        if not self._polled:
            raise KeyboardInterrupt
