"""Structured logging: console on a TTY, JSON lines otherwise, secrets always redacted.

Logs go to stderr so ``--json`` output on stdout stays machine-readable.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO


def _import_structlog_without_rich() -> Any:
    """structlog imports rich eagerly when it is installed, only to draw fancy tracebacks:
    about 60 ms of every command's start-up, a tenth of an incremental backup. Our
    tracebacks are one-line errors at the CLI edge (``-v`` prints a plain one), so rich is
    hidden while structlog loads; the progress bars import it later, when they are drawn."""
    saved = sys.modules.get("rich")
    sys.modules["rich"] = None  # type: ignore[assignment]  # makes "import rich" fail
    try:
        import structlog
    finally:
        if saved is None:
            del sys.modules["rich"]
        else:
            sys.modules["rich"] = saved
    return structlog


REDACTED = "***"
# Passwords inside URLs/DSNs (scheme://user:password@host) and key=value DSN passwords.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]+:)(?P<secret>[^@\s]+)(?=@)",
                           re.IGNORECASE)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<secret>[^\s&]+)", re.IGNORECASE)
_SECRET_KEY_NAMES = re.compile(
    r"(password|secret|token|credential|access_key|dsn|encryption_key|aeskey|authorization)",
    re.IGNORECASE)


class Redactor:
    """A structlog processor that removes secret values from every event."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Register more secret values (short ones are ignored: they would mask everything)."""
        for secret in secrets:
            # A DSN's password also travels alone (a parsed conninfo, a driver's message).
            parts = [secret, *(m.group("secret") for m in _URL_PASSWORD.finditer(secret)),
                     *(m.group("secret") for m in _KV_PASSWORD.finditer(secret))]
            self._secrets.update(s for s in parts if s and len(s) >= 4)

    def __call__(self, _logger: Any, _method: str,
                 event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in list(event.items()):
            event[key] = self._clean(key, value)
        return event

    def _clean(self, key: str, value: Any, secret: bool = False) -> Any:
        # Numbers and flags are never secrets: 'tokens=120' keeps its count.
        if value is None or isinstance(value, bool | int | float):
            return value
        secret = secret or bool(_SECRET_KEY_NAMES.search(key))
        if isinstance(value, str):
            return REDACTED if secret and value else self.scrub(value)
        if isinstance(value, dict):
            return {k: self._clean(str(k), v, secret) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._clean(key, v, secret) for v in value]
        if secret:
            return REDACTED
        if isinstance(value, BaseException):
            return self.scrub(str(value))
        # bytes, paths, sets, objects: the renderer would print their repr, so scrub that.
        return self.scrub(repr(value))

    def scrub(self, text: str) -> str:
        """``text`` with known secrets and URL/DSN passwords replaced."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        text = _URL_PASSWORD.sub(lambda m: m.group("head") + REDACTED, text)
        return _KV_PASSWORD.sub(lambda m: m.group("head") + REDACTED, text)


REDACTOR = Redactor()


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of writing, not at configure time
    (embedding code and test runners swap and close it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "warn": logging.WARNING, "error": logging.ERROR, "exception": logging.ERROR,
           "critical": logging.CRITICAL}


class _Settings:
    """What ``configure`` asked for. structlog itself (another 50 ms of start-up) is imported
    and configured when the first event passes the level: a quiet command never loads it."""

    level = logging.NOTSET
    pending: dict[str, Any] | None = None  # the arguments of structlog.configure, not applied
    structlog: Any = None


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog once per process; ``fmt`` is auto, json or console."""
    _Settings.level = logging.getLevelNamesMapping()[level.upper()]
    _Settings.pending = {"fmt": fmt, "stream": stream or _CurrentStderr()}


def _structlog() -> Any:
    """structlog, imported and configured as ``configure`` last asked."""
    if _Settings.structlog is None:
        _Settings.structlog = _import_structlog_without_rich()
    if _Settings.pending is not None:
        pending, _Settings.pending = _Settings.pending, None
        _apply(_Settings.structlog, _Settings.level, **pending)
    return _Settings.structlog


def _apply(structlog: Any, level: int, fmt: str, stream: TextIO) -> None:
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=stream.isatty()) if use_console
                     else structlog.processors.JSONRenderer(sort_keys=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            REDACTOR,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def _drop(*_args: Any, **_kwargs: Any) -> None:
    """An event below the configured level."""


class _Logger:
    """A module's logger: a structlog bound logger, made on the first event that is not
    filtered out by level."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, method: str) -> Any:
        if _LEVELS.get(method, logging.CRITICAL) < _Settings.level:
            return _drop
        return getattr(_structlog().get_logger(module=self._name), method)


def get_logger(name: str) -> Any:
    """A bound structlog logger tagged with the module name."""
    return _Logger(name)
