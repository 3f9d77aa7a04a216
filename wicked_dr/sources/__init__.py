"""The registry of data sources: the one place that knows which sources exist.

Actions never name a concrete source; they ask this module for "the sources a backup takes"
(``configured_sources``) or "the source that restores this record" (``source_named``). A new
source is one module implementing ``sources.base.Source`` plus one line in ``REGISTRY``.
Sources are built lazily, so a command never imports a driver (psycopg) it does not use.
"""

from __future__ import annotations

from collections.abc import Callable

from wicked_dr.config import Config
from wicked_dr.errors import UsageError
from wicked_dr.sources.base import Source

SourceFactory = Callable[[Config], Source]


def _volume(config: Config) -> Source:
    from wicked_dr.sources.volume import VolumeSource

    return VolumeSource(config.volume, wicked_db_configured=config.wicked_db.configured)


def _wicked_db(config: Config) -> Source:
    from wicked_dr.sources.wicked_db import WickedDbSource

    return WickedDbSource(config.wicked_db)


def _kong_tokens(config: Config) -> Source:
    from wicked_dr.sources.kong_tokens import KongTokensSource

    return KongTokensSource(config.kong_tokens)


# In backup order: the volume first (wicked's lock is held the shortest while nothing else
# runs), then the databases: wicked's own before Kong's tokens, as the portal's data comes
# before what hangs off Kong's rebuild of it.
REGISTRY: dict[str, SourceFactory] = {
    "volume": _volume,
    "wicked_db": _wicked_db,
    "kong_tokens": _kong_tokens,
}


def configured_sources(config: Config) -> list[Source]:
    """The sources a backup takes, in backup order."""
    sources = [factory(config) for factory in REGISTRY.values()]
    return [source for source in sources if source.configured]


def source_named(name: str, config: Config) -> Source:
    """The source called ``name``; UsageError naming the known ones otherwise."""
    factory = REGISTRY.get(name)
    if factory is None:
        raise UsageError(f"unknown source {name!r}; known sources: {', '.join(REGISTRY)}")
    return factory(config)
