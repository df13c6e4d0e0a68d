"""SIGINT and SIGTERM during a run, turned into a stop every process makes at the same step."""

import signal
import threading
from typing import Optional

import jax
from jax.experimental import multihost_utils

from jaxsegdepth import errors


class StopSignals:
    """SIGINT and SIGTERM, turned into a stop that every process makes at the same step.

    One process: while `immediate` (dataset build, restore, state creation) the first signal
    raises `errors.Interrupted` at once, as nothing is worth saving yet; in the loop it is
    recorded, and the loop stops after the step in flight (`after_step`), evaluation after the
    validation batch in flight. Several processes: SIGTERM is JAX's preemption notice (its
    coordination service hears it on any one process) and `after_step` is JAX's
    `reached_preemption_sync_point`, the same step everywhere; SIGINT is turned into that
    notice. A second SIGINT falls through to Python's default (KeyboardInterrupt). The handler
    never prints: a print inside a signal handler can fail while stdout is written.
    """

    def __init__(self):
        self.signum: Optional[int] = None
        self.immediate = True
        self.several = jax.process_count() > 1
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT,) if self.several else (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame):
        del frame
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if self.several:  # JAX's notifier owns SIGTERM: every process then agrees on a step
            signal.raise_signal(signal.SIGTERM)
            return
        self.signum = signum
        if self.immediate:
            self.raise_if_signalled()

    def raise_if_signalled(self) -> None:
        """Raises `errors.Interrupted` if a signal came before training started. The handler
        raises it at once, but an exception raised inside a `__del__` (which a signal may
        interrupt) is printed and dropped by Python; this catches it again before the loop."""
        if self.signum is not None:
            raise errors.Interrupted(
                f"interrupted by {signal.Signals(self.signum).name} before "
                "training started: nothing was written half-way; rerun "
                "the same command",
                self.signum,
            )

    def after_step(self, step: int) -> Optional[int]:
        """The signal to stop on after global step `step` (1-based), or None to go on. Every
        process calls it after every step, so that they agree."""
        if self.several:
            return signal.SIGTERM if multihost_utils.reached_preemption_sync_point(step) else None
        return self.signum

    def during_evaluation(self) -> bool:
        """Whether to stop after the validation batch in flight (one process only: several
        cannot agree mid-pass; they stop at the first step after the evaluation)."""
        return not self.several and self.signum is not None

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        return False
