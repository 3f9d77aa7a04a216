"""The exception tree of wicked-dr and the exit codes it maps to.

Domain code raises these; only the CLI edge turns them into a one-line message and an
exit code. Catch at the level you need::

    WickedDRError                     base of everything we raise on purpose
    ├── UsageError                    (2) a wrong command line
    ├── ConfigError                   (2) the configuration is invalid; carries every problem
    ├── OperationError                (1) an operation failed: I/O, S3, database, Docker, HTTP
    │   ├── BackendError              storage backend (S3, local directory)
    │   │   └── RetryableBackendError throttling, 5xx, timeouts: safe to retry
    │   ├── SourceError               a data source (volume, Kong database)
    │   ├── DatabaseError             PostgreSQL
    │   ├── DockerError               the Docker engine
    │   └── HTTPError                 portal-api, the Kong Adapter
    ├── IntegrityError                (3) check/verify failed, corrupt object
    │   └── WrongKeyError             the encryption key does not open this repository
    ├── LockedError                   (4) another holder has the repository lock
    ├── NotFoundError                 (5) snapshot, repository, bucket
    ├── RefusedError                  (6) a safety guard refused; nothing was changed
    ├── RolledBackError               (7) restore failed; live state is as before
    ├── RollbackFailedError           (8) restore failed and so did the rollback
    ├── FollowUpNeededError           (9) data restored, portal-api healthy, a later step
    │                                     failed: the message names the command finishing it
    ├── NotImplementedYetError        (1) the command exists in the contract, not in the code
    └── Interrupted                   (130) stopped from outside (SIGTERM/SIGINT, a cancel)

Retryable vs. permanent: ``error.retryable`` is True only for errors where repeating the
same call may succeed (see ``RetryableBackendError``).

``Interrupted`` is what a cancelled ``wicked_dr.cancel.CancelToken`` raises at a safe point.
It hangs directly under the base, beside the failures and under none of them: nothing failed,
and an ``except OperationError`` (or ``IntegrityError``) that records a problem and goes on
must never swallow a request to stop.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes; the README carries the same table."""

    OK = 0
    FAILED = 1
    USAGE = 2
    INTEGRITY = 3
    LOCKED = 4
    NOT_FOUND = 5
    REFUSED = 6
    ROLLED_BACK = 7
    ROLLBACK_FAILED = 8
    FOLLOW_UP_NEEDED = 9
    INTERRUPTED = 130


class WickedDRError(Exception):
    """Base of every error wicked-dr raises on purpose; its message is one line for users."""

    exit_code: ExitCode = ExitCode.FAILED
    retryable: bool = False

    def one_line(self) -> str:
        """The message as one line, safe to print at the CLI edge."""
        return " ".join(str(self).split())


class UsageError(WickedDRError):
    """The command line asks for something impossible or ambiguous."""

    exit_code = ExitCode.USAGE


class ConfigError(WickedDRError):
    """The configuration is invalid; ``problems`` holds every problem, one line each."""

    exit_code = ExitCode.USAGE

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))

    def one_line(self) -> str:
        return "\n".join(self.problems)


class OperationError(WickedDRError):
    """An operation failed (I/O, S3, database, Docker, HTTP); the message says which."""


class BackendError(OperationError):
    """The storage backend failed permanently for this call."""


class RetryableBackendError(BackendError):
    """Throttling, 5xx or a timeout: the same call may succeed later."""

    retryable = True


class SourceError(OperationError):
    """A data source could not be read or written."""


class DatabaseError(OperationError):
    """PostgreSQL refused or failed."""


class DockerError(OperationError):
    """The Docker engine refused or failed."""


class HTTPError(OperationError):
    """A wicked component answered with an error or not at all."""


class IntegrityError(WickedDRError):
    """Data does not match what the repository says it must be."""

    exit_code = ExitCode.INTEGRITY


class WrongKeyError(IntegrityError):
    """The configured encryption key does not open this repository."""


class LockedError(WickedDRError):
    """Another holder keeps the repository lock after ``--lock-wait``."""

    exit_code = ExitCode.LOCKED


class NotFoundError(WickedDRError):
    """A snapshot, repository, bucket or object does not exist."""

    exit_code = ExitCode.NOT_FOUND


class RefusedError(WickedDRError):
    """A safety guard refused the operation before anything changed."""

    exit_code = ExitCode.REFUSED


class RolledBackError(WickedDRError):
    """A restore failed and was rolled back: live state is as it was before."""

    exit_code = ExitCode.ROLLED_BACK


class RollbackFailedError(WickedDRError):
    """A restore failed and the rollback failed too: manual action is needed."""

    exit_code = ExitCode.ROLLBACK_FAILED


class FollowUpNeededError(WickedDRError):
    """The live restore put the data back and portal-api is healthy, but a later step (the
    Kong Adapter's rebuild, the tokens, a Kong restart) failed; the message names the
    command that finishes it (``kong-resync``, ``restore --tokens-only``)."""

    exit_code = ExitCode.FOLLOW_UP_NEEDED


class NotImplementedYetError(WickedDRError):
    """A command of the CLI contract that is not built yet; never pretends to succeed."""

    exit_code = ExitCode.FAILED


class Interrupted(WickedDRError):
    """The work was stopped from outside (SIGTERM/SIGINT at the CLI, the daemon stopping a
    job) at a safe point, and unwound normally: every ``finally`` ran (wicked's
    ``global.lock`` and the repository lock released, staging removed).

    The message is "interrupted", followed by what is left where that matters (a restore
    target holds a partial tree); ``reason`` says who asked (e.g. "SIGTERM")."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, message: str = "interrupted", *, reason: str | None = None) -> None:
        self.reason = reason
        super().__init__(message)
