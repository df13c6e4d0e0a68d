"""The failures a user is shown in one line, each with its exit status.

`launch.py` prints `error: <message>` and exits with `exit_code`; nothing below it prints
or exits. Library code raises these (or plain ValueError for bad arguments to a function).
"""


class UsageError(ValueError):
    """The config, the command line or the input data is wrong: fix it and rerun (exit 2)."""

    exit_code = 2


class RunError(RuntimeError):
    """The run could not go on: a non-finite loss, no checkpoint to load, a failed export (exit 1)."""

    exit_code = 1


class NonFiniteLoss(RunError):
    """A training step produced a NaN or infinite loss; the last good checkpoint is kept."""


class Interrupted(RunError):
    """SIGINT/SIGTERM stopped the run after saving a checkpoint (exit 128 + the signal's number).

    Raised from a signal handler, it can pass through library code that rewrites an
    exception's `args` on its way (tensorflow-datasets prefixes the example it was encoding),
    so the message to show is kept apart, in `message`."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.message = message
        self.signum = signum
        self.exit_code = 128 + signum


class DatasetError(UsageError):
    """Bad dataset input or configuration; the message says what and where (exit 2)."""
