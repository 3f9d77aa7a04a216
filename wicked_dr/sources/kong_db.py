"""A session on Kong's PostgreSQL database, opened alike by the token export and restore.

Both directions need the same things of it: the configured timeouts (a hung server must not
hang a backup), a UTC session (Kong stores UTC wall time in columns without time zone), an
application name an operator can find in ``pg_stat_activity``, and errors as one line
without any password the driver might have echoed (``pg_copy.connect``, shared with the
wicked_db source).
"""

from __future__ import annotations

import psycopg
from psycopg.rows import TupleRow

from wicked_dr.config import KongTokensConfig
from wicked_dr.sources import pg_copy
from wicked_dr.sources.pg_copy import one_line as one_line

Conn = psycopg.Connection[TupleRow]


def connect(config: KongTokensConfig, application: str, doing: str) -> Conn:
    """Autocommit connection (transactions are explicit) with both timeouts, UTC session."""
    assert config.dsn is not None
    return pg_copy.connect(config.dsn.get_secret_value(),
                           connect_timeout_s=config.connect_timeout_s,
                           statement_timeout_s=config.statement_timeout_s,
                           application=application,
                           failure=f"cannot connect to Kong's database to {doing} it",
                           dsn_key="kong_tokens.dsn")
