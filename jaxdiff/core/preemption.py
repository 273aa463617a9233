"""Graceful stops: SIGTERM (a cluster's preemption notice) and SIGINT (Ctrl-C).

While `stop_signals_caught()` is active, the first such signal is only
recorded; the training loop sees it at the end of the current compiled call,
saves a checkpoint and raises `Preempted`, and the command exits 0 so that a
scheduler simply runs it again to resume. A second signal stops the process at
once, the way the signal normally would.
"""

import contextlib
import signal
import threading
from collections.abc import Iterator

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[str] = []


class Preempted(Exception):  # noqa: N818 -- not an error: the run stopped as asked.
    """Training stopped on a signal after saving its checkpoint."""


def stop_requested() -> str | None:
    """The name of the signal that asked this process to stop ("SIGTERM"), or None."""
    return _received[0] if _received else None


@contextlib.contextmanager
def stop_signals_caught() -> Iterator[None]:
    """Records SIGTERM/SIGINT instead of dying, for the duration of the block.

    Outside the main thread (where Python cannot install handlers) it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def record(signum, frame) -> None:
        if _received:  # Asked twice: stop now, the way these signals stop a Python program.
            restore()
            # Not through the handler that was there before: it need not be
            # Python's default (a stale asyncio handler, left by a library's
            # asyncio.run, ignores a second Ctrl-C once its loop is closed).
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        _received.append(signal.Signals(signum).name)

    _received.clear()
    for signum in _STOP_SIGNALS:
        signal.signal(signum, record)
    try:
        yield
    finally:
        restore()
        _received.clear()
