"""Stop requests: a signal only sets a flag; the loop finishes its optimizer step, saves a
checkpoint and raises ``RunInterrupted``. As a script that becomes exit status 75
(``EXIT_REQUEUE``, sysexits' EX_TEMPFAIL): "not done, run me again", and the next start
resumes from the checkpoint.

SLURM sends SIGUSR2 before a time limit (``--signal=USR2@90``) and SIGTERM on preemption.
The handlers are installed only inside ``handling_signals()`` and the previous ones
(submitit's, for instance) are put back on exit, so nothing is left behind in-process.
Code that receives the signal some other way (a submitit ``checkpoint()`` method) can call
``request_stop()`` instead.
"""

from __future__ import annotations

import contextlib
import signal
import threading

EXIT_REQUEUE = 75
STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)

_requested: list[int] = []  # signal numbers received since the last clear()


class RunInterrupted(Exception):
    """The run stopped early on request; its checkpoint at ``optimizer_step`` is on disk."""

    def __init__(self, optimizer_step: int, signum: int | None = None):
        super().__init__(f"stopped by {signal_name(signum)} after optimizer step {optimizer_step}; "
                         "checkpoint saved, run again to resume")
        self.optimizer_step = optimizer_step
        self.signum = signum


def signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "a stop request"


def request_stop(signum: int = 0, frame=None) -> None:
    _requested.append(signum)


def stop_requested() -> int | None:
    """The first signal number received (0 for ``request_stop()``), or None."""
    return _requested[0] if _requested else None


def received() -> list[int]:
    """Every signal number received since the last clear(), in order (0: ``request_stop()``)."""
    return list(_requested)


def clear() -> None:
    _requested.clear()


@contextlib.contextmanager
def handling_signals(signals=STOP_SIGNALS):
    """Route ``signals`` to ``request_stop`` for the duration.

    Only the main thread may set handlers; elsewhere (a thread pool) this does nothing.
    """
    clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, request_stop) for sig in signals}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        clear()
