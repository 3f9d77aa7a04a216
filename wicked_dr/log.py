"""Structured logging: console on a TTY, JSON lines otherwise, secrets always redacted.

Logs go to stderr so ``--json`` output on stdout stays machine-readable.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO, cast

import structlog
from structlog.typing import Processor

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


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog for the process; ``fmt`` is auto (console on a TTY), json or console.

    Loggers made before (``get_logger`` at module import) follow: none is cached."""
    out = stream or cast(TextIO, _CurrentStderr())
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Processor = (structlog.dev.ConsoleRenderer(colors=out.isatty()) if use_console
                           else structlog.processors.JSONRenderer(sort_keys=False))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Tracebacks become plain text here, redacted by the next step like every value.
            structlog.processors.format_exc_info,
            REDACTOR,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        # One write per line (PrintLogger writes the line and its newline apart): a line
        # from another thread can never land in the middle of it.
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A structlog logger tagged with the module name."""
    return structlog.get_logger(module=name)
