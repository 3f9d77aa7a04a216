"""``wicked-dr init``: create the repository, explicitly and only in an empty location."""

from __future__ import annotations

from dataclasses import dataclass

from wicked_dr.actions.common import Result, init_repository
from wicked_dr.config import Config
from wicked_dr.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class InitResult(Result):
    """What ``init --json`` prints."""

    repository: str
    repo_id: str
    created: bool
    encrypted: bool
    key_id: str | None


def run_init(config: Config, *, create_bucket: bool = False) -> InitResult:
    """Create the repository where the location holds nothing; an existing repository that
    opens with the configured key is left as it is (``created`` false)."""
    repo, created = init_repository(config, create_bucket=create_bucket)
    result = InitResult(repo.url, repo.repo_id, created, repo.config.key_id is not None,
                        repo.config.key_id)
    log.info("init done", **result.to_json())
    return result
