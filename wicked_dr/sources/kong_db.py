"""A session on Kong's PostgreSQL database, opened alike by the token export and restore.

Both directions need the same things of it: the configured timeouts (a hung server must not
hang a backup), a UTC session (Kong stores UTC wall time in columns without time zone), an
application name an operator can find in ``pg_stat_activity``, and errors as one line
without any password the driver might have echoed.
"""

from __future__ import annotations

import psycopg
from psycopg.rows import TupleRow

from wicked_dr.config import KongTokensConfig
from wicked_dr.errors import SourceError
from wicked_dr.log import REDACTOR

Conn = psycopg.Connection[TupleRow]


def connect(config: KongTokensConfig, application: str, doing: str) -> Conn:
    """Autocommit connection (transactions are explicit) with both timeouts, UTC session."""
    assert config.dsn is not None
    try:
        conn = psycopg.connect(config.dsn.get_secret_value(), autocommit=True,
                               connect_timeout=config.connect_timeout_s,
                               application_name=application)
    except psycopg.Error as exc:
        raise SourceError(f"cannot connect to Kong's database to {doing} it: "
                          f"{one_line(exc)}; check kong_tokens.dsn") from None
    try:
        conn.execute("SELECT set_config('statement_timeout', %s, false), "
                     "set_config('TimeZone', 'UTC', false)",
                     (f"{config.statement_timeout_s * 1000}",))
    except psycopg.Error as exc:
        conn.close()
        raise SourceError(f"Kong's database refused the session settings: "
                          f"{one_line(exc)}") from None
    return conn


def one_line(exc: BaseException) -> str:
    """The error as one line, without any password the driver might have echoed."""
    return REDACTOR.scrub(" ".join(str(exc).split()))
