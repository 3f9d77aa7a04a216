"""The configuration schema: the single source of truth for validation, defaults and the example.

One YAML file, every key overridable by ``WICKED_DR_<SECTION>__<KEY>`` (top-level keys:
``WICKED_DR_<KEY>``); keys marked *secret* can also come from ``..._FILE`` (Docker secrets).
Unknown keys are errors, because a typo must never silently disable a backup; so are
duplicate keys (a second block would silently replace the first) and numbers outside their
range. A problem names where its value came from: ``config.yaml: at 'a.b': ...`` for the
file, ``env WICKED_DR_A__B: at 'a.b': ...`` for a variable.

The environment overlay is our own, not pydantic-settings: its environment source ignores
unknown names, decodes lists as JSON, hands our strict number fields strings, reads secrets
from a directory rather than ``<VAR>_FILE`` and cannot name the variable behind a problem.
A prototype overriding all that (with its private ``_load_env_vars`` and ``_build_sources``)
replaced only the five lines that put a value under its section and came out 48 lines longer.
"""

from __future__ import annotations

import os
import re
import textwrap
import types
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from wicked_dr.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/wicked-dr/config.yaml")
ENV_PREFIX = "WICKED_DR_"
ENV_CONFIG_PATH = "WICKED_DR_CONFIG"
SECRET_FILE_SUFFIX = "_FILE"


def _field(default: Any, description: str, *, example: Any = None, secret: bool = False,
           bounds: tuple[float, float] | None = None) -> Any:
    """A schema field with the description and example that ``config example`` prints.

    ``bounds`` is the inclusive range of a number. Such a field is also strict: in lax mode
    pydantic takes YAML ``true`` for 1 (and the string '8' for 8); environment values still
    work, they go through ``yaml.safe_load`` and arrive as numbers."""
    extra: dict[str, Any] = {"secret": secret}
    if example is not None:
        extra["example"] = example
    if bounds is None:
        return Field(default=default, description=description, json_schema_extra=extra)
    low, high = bounds
    return Field(default=default, description=description, json_schema_extra=extra,
                 ge=low, le=high, strict=True)


UID_MAX = 2**32 - 2  # (uid_t)-1 means "leave unchanged" to chown


class Section(BaseModel):
    """Base of every section: unknown keys are refused, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RepositoryConfig(Section):
    """Where snapshots live."""

    url: str = _field(
        "/var/lib/wicked-dr/repository",
        "Repository location: a local directory (/path or file:///path) or s3://bucket/prefix.",
        example="s3://wicked-backups/prod",
    )
    endpoint_url: str | None = _field(
        None,
        "S3 endpoint for MinIO, Ceph or another S3-compatible store; empty for AWS.",
        example="https://minio.example.com:9000",
    )
    region: str | None = _field(None, "S3 region; empty uses the AWS default chain.",
                                example="eu-central-1")
    access_key_id: SecretStr | None = _field(
        None, "S3 access key id; empty uses the standard AWS credential chain.", secret=True,
        example="AKIA...",
    )
    secret_access_key: SecretStr | None = _field(
        None, "S3 secret access key; empty uses the standard AWS credential chain.",
        secret=True, example="wJalr...",
    )
    encryption_key_file: Path | None = _field(
        None,
        "File with the 32-byte repository key (64 hex characters). Kept outside every backup; "
        "with it set, every object is encrypted with AES-256-GCM.",
        example="/run/secrets/wicked-dr-key",
    )
    sse: Literal["AES256", "aws:kms"] | None = _field(
        None, "S3 server-side encryption, on top of ours.", example="AES256")
    sse_kms_key_id: str | None = _field(None, "KMS key id when sse is aws:kms.")
    storage_class: str | None = _field(None, "S3 storage class for packs.",
                                       example="STANDARD_IA")
    # At most 128 MiB: a pack is held in memory while it is sealed (a backup holds about
    # three, a restore up to four: engine/restore_plan.py), and a pack, which may pass the target
    # by one segment, must stay below MAX_PACK (256 MiB, repository/layout.py), the most a
    # pack may hold: readers refuse a larger one.
    pack_size_mib: int = _field(8, "Target size of a pack before compression, in MiB.",
                                example=8, bounds=(1, 128))
    lock_expiry_s: int = _field(
        300, "A repository lock expires this many seconds after its last renewal.", example=300,
        bounds=(10, 86400))

    @field_validator("url")
    @classmethod
    def _url_is_supported(cls, value: str) -> str:
        if value.startswith("s3://"):
            if not value[len("s3://"):].split("/", 1)[0]:
                raise ValueError("s3:// URL without a bucket; expected s3://bucket[/prefix]")
            return value
        if value.startswith("file://"):
            value = value[len("file://"):]
        if not value.startswith("/"):
            raise ValueError(
                "expected an absolute path, file:///path or s3://bucket/prefix, "
                f"got {value!r}")
        return value


class VolumeConfig(Section):
    """portal-api's dynamic data volume."""

    path: Path | None = _field(
        Path("/var/portal-api/dynamic"),
        "portal-api's dynamic data folder (PORTAL_API_DYNAMIC_CONFIG); null: no volume (only "
        "with wicked_db.dsn set: wicked 1.0 keeps its data in Postgres).")
    quiesce: Literal["wicked-lock", "none"] = _field(
        "wicked-lock",
        "wicked-lock: read the volume, then hold wicked's global.lock briefly to re-read "
        "what changed meanwhile, for a consistent snapshot; none: read without it (files "
        "may be torn).",
    )
    watch: bool = _field(
        True,
        "true: an inotify watch names what changed while the volume was read, so wicked's "
        "global.lock is held only to re-read that (on local file systems; elsewhere, or "
        "when the watch overflows, every file is re-statted under the lock); false: always "
        "re-stat every file under the lock.")
    # 0 is allowed (fail at once when a write is in flight); at most 10 minutes, because
    # portal-api cannot write while we hold global.lock and wait.
    quiesce_timeout_s: float = _field(
        10.0, "Longest wait for in-flight writes (*.lock files) to finish.", example=10,
        bounds=(0, 600))
    max_shrink_percent: float = _field(
        20.0, "Refuse a backup whose files or bytes fell by more than this against the recent "
        "snapshots, and a prune whose newest snapshot did against the newest verified one.",
        example=20, bounds=(0, 100))
    scan_workers: int | None = _field(
        None,
        "Processes that stat, read and hash files in parallel (0: all in the main process; "
        "empty: twice the number of CPUs, at most 8).", example=4, bounds=(0, 64))

    def workers(self) -> int:
        """How many scan worker processes to run."""
        if self.scan_workers is not None:
            return self.scan_workers
        # Twice the CPUs: a worker waits for the disk (cold cache, network file systems) as
        # often as it computes; measured on 2 CPUs, 4 workers beat 2 by about 8 %.
        return min(8, 2 * (os.cpu_count() or 1))


class KongTokensConfig(Section):
    """Kong's OAuth2 token tables (optional)."""

    dsn: SecretStr | None = _field(
        None, "Kong's PostgreSQL database; empty turns token backup off.", secret=True,
        example="postgresql://kong:secret@kong-db:5432/kong?sslmode=require")
    connect_timeout_s: int = _field(10, "Connection timeout.", example=10, bounds=(1, 600))
    # Not 0: PostgreSQL reads statement_timeout 0 as "no timeout".
    statement_timeout_s: int = _field(300, "Statement timeout for the token export.",
                                      example=300, bounds=(1, 86400))
    workspace: str = _field("default", "Kong 2.x/3.x workspace to restore tokens into.")


class ScheduleConfig(Section):
    """When the daemon works (cron: minute hour day month weekday; empty turns a job off)."""

    timezone: str = _field("UTC", "Time zone of the cron expressions and of retention's "
                           "calendar buckets (an IANA name).", example="Europe/Berlin")
    backup: str = _field("*/15 * * * *", "When to take a snapshot.")
    verify: str | None = _field("30 3 * * *", "When to verify the newest snapshot.")
    prune: str | None = _field("0 4 * * *", "When to apply the retention policy.")
    drill: str | None = _field("0 5 1 * *", "When to run the restore drill (monthly).")
    jitter_s: int = _field(
        30, "Start each run up to this many seconds late, at random (several deployments "
        "sharing one S3 store do not all start at :00).", bounds=(0, 3600))
    misfire_grace_s: int = _field(
        600, "A run that could not start on time (the daemon was busy or down) still starts "
        "within this many seconds; later, it is skipped (missed runs coalesce into one).",
        bounds=(1, 86400))

    @field_validator("backup", "verify", "prune", "drill")
    @classmethod
    def _is_cron(cls, value: str | None) -> str | None:
        if value:
            from wicked_dr.cron import cron_trigger

            try:
                cron_trigger(value, "UTC")
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a cron expression ({exc}); expected five "
                                 "fields, e.g. '*/15 * * * *'") from None
        return value or None

    @field_validator("timezone")
    @classmethod
    def _is_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; expected an IANA name such as "
                             "UTC or Europe/Berlin") from None
        return value


class RetentionConfig(Section):
    """Which snapshots prune keeps (GFS: kept by any rule stays; the newest verified always)."""

    keep_last: int = _field(10, "Keep the newest N snapshots.", bounds=(0, 10000))
    keep_hourly: int = _field(48, "Keep the newest snapshot of each of the last N hours.",
                              bounds=(0, 10000))
    keep_daily: int = _field(14, "Keep the newest snapshot of each of the last N days.",
                             bounds=(0, 10000))
    keep_weekly: int = _field(8, "Keep the newest snapshot of each of the last N weeks "
                              "(ISO weeks, Monday first).", bounds=(0, 10000))
    keep_monthly: int = _field(12, "Keep the newest snapshot of each of the last N months.",
                               bounds=(0, 10000))
    keep_yearly: int = _field(3, "Keep the newest snapshot of each of the last N years.",
                              bounds=(0, 10000))
    keep_within: str | None = _field(
        None, "Keep every snapshot taken within this long before the newest one (e.g. 2d, "
        "12h, 1w3d).", example="2d")
    repack_below_percent: float = _field(
        50.0, "Repack a pack whose share still used by kept snapshots fell below this; "
        "packs nobody uses are always deleted.", bounds=(0, 100))

    @field_validator("keep_within")
    @classmethod
    def _is_duration(cls, value: str | None) -> str | None:
        if value:
            parse_duration(value)
        return value or None


_DURATION_UNITS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(\d+)([wdhms])")


def parse_duration(text: str) -> int:
    """Seconds in a duration such as ``2d``, ``12h`` or ``1w3d``; ValueError otherwise."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{text!r} is not a duration; expected e.g. 2d, 12h, 1w3d "
                         "(units w, d, h, m, s)")
    return sum(int(number) * _DURATION_UNITS[unit] for number, unit in parts)


class VerifyConfig(Section):
    """Proving snapshots restorable in throwaway containers."""

    image: str = _field("wicked-dr-verify:latest",
                        "Image of the volume probe's scratch containers: anything with "
                        "python3 (the wicked-dr image itself, or a plain Python image).")
    postgres_image: str = _field(
        "postgres:16", "Image of the token probe's scratch PostgreSQL server: an official "
        "postgres image, or a Debian image with the postgresql package.")
    pull: Literal["missing", "never"] = _field(
        "missing", "missing: pull an image that is absent when a registry answers; never: "
        "use local images only.")
    timeout_s: int = _field(600, "Longest a verification may run.", bounds=(1, 86400))
    scratch_memory_mib: int = _field(
        2048, "The restored files' scratch volume is a tmpfs of at most this many MiB, in the "
        "Docker host's RAM while verify runs (a 20 000-user volume uses about 300 MiB): "
        "verify then takes 1.5x a restore instead of 3.2x (bench/README.md). 0: on the "
        "Docker host's disk instead.", bounds=(0, 1024 * 1024))
    smoke_image: str | None = _field(
        None, "portal-api image of the smoke probe, which starts it on the restored volume "
        "and requires GET /ping to answer; empty turns the smoke probe off.",
        example="haufelexware/wicked.portal-api:1.0.0")
    smoke_static_dir: Path | None = _field(
        None, "wicked's static configuration directory as wicked-dr sees it; copied into a "
        "scratch volume (never mounted) at /var/portal-api/static for the smoke probe.",
        example="/var/portal-api/static")
    smoke_command: list[str] = _field(
        ["node", "bin/api"], "Command starting portal-api in the smoke image, in its working "
        "directory, without the root start script (docker-start.sh chowns and drops to 888; "
        "the smoke probe runs as smoke_user from the start).")
    smoke_user: str = _field("888:888", "uid:gid portal-api runs as in the smoke probe.")
    smoke_writable_dirs: list[str] = _field(
        ["/usr/src/app/routes/internal_apis"], "Directories of the smoke image portal-api "
        "writes into at start (the root file system is read-only): each gets a writable copy "
        "owned by the restore owner, as the start script's chown would make it.")
    smoke_port: int = _field(3001, "Port portal-api listens on.", bounds=(1, 65535))
    smoke_timeout_s: int = _field(120, "Longest the smoke probe waits for GET /ping.",
                                  bounds=(1, 3600))
    smoke_environment: dict[str, str] = _field(
        {"PORTAL_STORAGE_TYPE": "json"}, "Environment of portal-api in the smoke probe (no "
        "secrets here: see smoke_aeskey).", example={"NODE_ENV": "production"})
    smoke_aeskey: SecretStr | None = _field(
        None, "PORTAL_API_AESKEY given to portal-api in the smoke probe.", secret=True)


class RestoreConfig(Section):
    """How restores treat restored files."""

    owner_uid: int = _field(888, "Owner of restored files, directories and symlinks when "
                            "restoring as root (wicked's node user); the owner a snapshot "
                            "records is never restored.", bounds=(0, UID_MAX))
    owner_gid: int = _field(888, "Group of restored files, directories and symlinks when "
                            "restoring as root.", bounds=(0, UID_MAX))
    empty_webhook_queues: list[str] = _field(
        ["mailer", "chatbot"],
        "Webhook listeners whose pending events are emptied on a live restore, so mails "
        "and chat messages are not sent twice.")
    swap: Literal["auto", "rename", "contents"] = _field(
        "auto", "How restore --live swaps the volume: rename the folder volume.path (it sits "
        "inside a mount), or move its contents (volume.path is itself the mount point); auto "
        "decides by whether volume.path is a mount point.")
    portal_api_timeout_s: int = _field(
        300, "Longest restore --live waits for portal-api's GET /ping after starting it.",
        bounds=(1, 86400))
    kong_adapter_timeout_s: int = _field(
        900, "Longest restore --live and kong-resync wait for the Kong Adapter to report "
        "healthy: 1 (its sync runs first).", bounds=(1, 86400))
    operator_timeout_s: int = _field(
        1800, "Without containers.*: longest restore --live waits for the operator to do a "
        "step it printed (start portal-api, restart the adapter).", bounds=(1, 86400))


# ``schema`` is the key operators write; it shadows pydantic's deprecated ``BaseModel.schema()``,
# which nothing here calls.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "schema"', category=UserWarning)

    class WickedDbConfig(Section):
        """wicked 1.0's PostgreSQL storage (database wicked, schema wicked)."""

        dsn: SecretStr | None = _field(None, "wicked's own database; empty when wicked uses the "
                                       "JSON volume.", secret=True,
                                       example="postgresql://wicked:secret@wicked-db/wicked")
        schema: str = _field(  # type: ignore[assignment]  # see the comment above
            "wicked", "The schema wicked's tables live in (all of it is backed up: tables, "
            "rows, functions, triggers, sequences).")
        connect_timeout_s: int = _field(10, "Connection timeout.", example=10, bounds=(1, 600))
        # Not 0: PostgreSQL reads statement_timeout 0 as "no timeout".
        statement_timeout_s: int = _field(300, "Statement timeout for the export and the load.",
                                          example=300, bounds=(1, 86400))

        @field_validator("schema")
        @classmethod
        def _is_identifier(cls, value: str) -> str:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", value):
                raise ValueError(f"expected a PostgreSQL schema name (letters, digits, _), got "
                                 f"{value!r}")
            return value

        @property
        def configured(self) -> bool:
            """Whether wicked's database is backed up (its DSN is set)."""
            return self.dsn is not None and bool(self.dsn.get_secret_value())


class ContainersConfig(Section):
    """The wicked containers, by name or label selector (label=key=value)."""

    docker_url: str | None = _field(None, "Docker engine; empty uses DOCKER_HOST or the socket.",
                                    example="unix:///var/run/docker.sock")
    portal_api: str | None = _field(None, "portal-api container.", example="portal-api")
    kong_adapter: str | None = _field(None, "Kong Adapter container.",
                                      example="portal-kong-adapter")
    mailer: str | None = _field(None, "Mailer container.", example="portal-mailer")
    chatbot: str | None = _field(None, "Chatbot container.", example="portal-chatbot")
    kong: str | None = _field(None, "Kong container(s); every match is restarted in turn.",
                              example="label=com.example.role=kong")


class WickedConfig(Section):
    """wicked's HTTP endpoints."""

    portal_api_url: str = _field("http://portal-api:3001", "portal-api base URL.")
    kong_adapter_url: str = _field("http://portal-kong-adapter:3002",
                                   "Kong Adapter base URL.")


class DaemonConfig(Section):
    """The long-running sidecar."""

    listen: str = _field("127.0.0.1:9464", "Health and metrics endpoint (host:port): "
                         "/healthz, /readyz, /metrics.")
    replicas: int | None = _field(
        None, "How many daemons of this deployment run against the repository. Empty: "
        "maybe several, so the lease must work (the store must honour conditional writes); "
        "1 acknowledges a store without them.", example=1, bounds=(1, 1000))
    lease_expiry_s: int = _field(
        120, "The daemon lease (one job runner per repository) expires this many seconds "
        "after its holder's last renewal; a standby takes over then.", bounds=(5, 86400))
    lock_wait_s: int = _field(
        900, "Longest a job waits for a repository lock (a live restore's exclusive lock) "
        "or a foreign global.lock before it fails.", bounds=(0, 86400))
    stop_grace_s: int = _field(
        30, "On SIGTERM/SIGINT, a running job may finish within this many seconds; then it "
        "is cancelled at its next safe point.", bounds=(0, 3600))
    max_backup_age_s: int = _field(
        3600, "/readyz fails when the newest snapshot is older than this.",
        bounds=(60, 365 * 86400))


class NotifyConfig(Section):
    """Where the daemon reports: webhooks (Slack-compatible JSON) and healthchecks pings."""

    webhook_url: SecretStr | None = _field(None, "POST a JSON event here on failure.",
                                           secret=True,
                                           example="https://hooks.example.com/T000/B000")
    webhook_urls: list[SecretStr] = _field(
        [], "More webhook URLs, each sent the same events.", secret=True)
    on_success: bool = _field(False, "Also send an event when a job succeeds.")
    healthchecks: dict[Literal["backup", "verify", "prune", "drill"], SecretStr] = _field(
        {}, "Per job, a healthchecks-style URL: <url>/start when the job starts, <url> on "
        "success, <url>/fail on failure.", secret=True,
        example={"backup": "https://hc-ping.com/<uuid>"})
    timeout_s: float = _field(10.0, "Longest one notification may take.", bounds=(1, 300))


class LogConfig(Section):
    """Logging."""

    level: Literal["debug", "info", "warning", "error"] = _field("info", "Lowest level logged.")
    format: Literal["auto", "json", "console"] = _field(
        "auto", "auto: console on a TTY, JSON lines otherwise.")


class Config(Section):
    """The whole configuration."""

    state_dir: Path = _field(Path("/var/lib/wicked-dr/state"),
                             "Local state: caches and staging journals (not backed up).")
    repository: RepositoryConfig = Field(default_factory=RepositoryConfig)
    volume: VolumeConfig = Field(default_factory=VolumeConfig)
    kong_tokens: KongTokensConfig = Field(default_factory=KongTokensConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    restore: RestoreConfig = Field(default_factory=RestoreConfig)
    wicked_db: WickedDbConfig = Field(default_factory=WickedDbConfig)
    containers: ContainersConfig = Field(default_factory=ContainersConfig)
    wicked: WickedConfig = Field(default_factory=WickedConfig)
    daemon: DaemonConfig = Field(default_factory=DaemonConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    log: LogConfig = Field(default_factory=LogConfig)

    @model_validator(mode="after")
    def _something_to_back_up(self) -> Config:
        # Without both a backup would "succeed" with nothing in it.
        if self.volume.path is None and not self.wicked_db.configured:
            raise ValueError("volume.path is null but wicked_db.dsn is not set: set "
                             "volume.path to portal-api's dynamic data folder, or "
                             "wicked_db.dsn to wicked's database")
        return self


SECTIONS: dict[str, type[Section]] = {
    name: field.annotation
    for name, field in Config.model_fields.items()
    if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
}


def is_secret(section: str | None, key: str) -> bool:
    """Whether the schema marks ``section.key`` as secret."""
    model: type[Section] = SECTIONS[section] if section else Config
    field = model.model_fields.get(key)
    extra = field.json_schema_extra if field else None
    return isinstance(extra, dict) and bool(extra.get("secret"))


def secret_values(config: Config) -> list[str]:
    """Every secret value in ``config``, for the log redactor."""
    values: list[str] = []
    for section_name in SECTIONS:
        section = getattr(config, section_name)
        for key in type(section).model_fields:
            values.extend(_secrets_in(getattr(section, key)))
    return values


def _secrets_in(value: Any) -> list[str]:
    """The secret strings in a value: itself, or the items of a list or mapping."""
    if isinstance(value, SecretStr):
        return [value.get_secret_value()] if value.get_secret_value() else []
    if isinstance(value, list):
        return [secret for item in value for secret in _secrets_in(item)]
    if isinstance(value, dict):
        return [secret for item in value.values() for secret in _secrets_in(item)]
    return []


# --- loading -----------------------------------------------------------------------------


def resolve_config_path(cli_path: str | None, environ: Mapping[str, str]) -> Path:
    """``--config`` wins over ``WICKED_DR_CONFIG``, which wins over the default path."""
    if cli_path:
        return Path(cli_path)
    if environ.get(ENV_CONFIG_PATH):
        return Path(environ[ENV_CONFIG_PATH])
    return DEFAULT_CONFIG_PATH


def load_config(path: Path, environ: Mapping[str, str] | None = None,
                *, required: bool = True) -> Config:
    """Read, merge environment overrides and validate; raise ConfigError with every problem."""
    environ = os.environ if environ is None else environ
    label = path.name
    problems: list[str] = []
    raw = _read_yaml(path, problems, required=required)
    if not isinstance(raw, dict):
        problems.append(f"{label}: the top level must be a mapping of sections")
        raise ConfigError(problems)
    from_env = _apply_env_overrides(raw, environ, problems)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_describe(label, exc, from_env))
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return config


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, noting every key that a mapping repeats (at any depth).

    PyYAML keeps the last value of a repeated key, so a second ``repository:`` block would
    silently replace the first. A key that overrides one merged in with ``<<:`` is fine."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.duplicates: list[tuple[Any, int, int]] = []  # key, line, line of the first

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                seen = key in first_lines
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if seen:
                self.duplicates.append((key, line, first_lines[key]))
            else:
                first_lines[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, problems: list[str], *, required: bool) -> Any:
    """The file's data; a repeated key adds a problem (the last value is kept)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError([f"{path}: no such configuration file; create it "
                               "(wicked-dr config example) or pass --config"]) from None
        return {}
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    loader = _UniqueKeyLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise ConfigError([f"{path.name}:{line} is not valid YAML"]) from None
    finally:
        loader.dispose()
    problems.extend(f"{path.name}: line {line}: duplicate key {key!r} (first at line {first})"
                    for key, line, first in loader.duplicates)
    return {} if data is None else data


def _apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str],
                         problems: list[str]) -> dict[tuple[str, ...], str]:
    """Set each variable's key in ``raw``; returns which variable set which key."""
    from_env: dict[tuple[str, ...], str] = {}
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG_PATH:
            continue
        try:
            section, key, parsed = _parse_env(name, value)
        except ValueError as exc:
            problems.append(f"env {name}: {exc}")
            continue
        target = raw.setdefault(section, {}) if section else raw
        if not isinstance(target, dict):
            problems.append(f"env {name}: section {section!r} in the file is not a mapping")
            continue
        target[key] = parsed
        from_env[(section, key) if section else (key,)] = name
    return from_env


def _parse_env(name: str, value: str) -> tuple[str | None, str, Any]:
    """Split ``WICKED_DR_SECTION__KEY[_FILE]`` and read the value (a file for _FILE)."""
    body = name[len(ENV_PREFIX):].lower()
    section, _, key = body.rpartition("__")
    section_or_none = section or None
    if section_or_none is not None and section_or_none not in SECTIONS:
        raise ValueError(f"unknown section {section!r}; expected one of {', '.join(SECTIONS)}")
    from_file = key.endswith(SECRET_FILE_SUFFIX.lower()) and not _is_key(section_or_none, key)
    if from_file:
        key = key[: -len(SECRET_FILE_SUFFIX)]
        if not is_secret(section_or_none, key):
            raise ValueError(f"only secret keys take the {SECRET_FILE_SUFFIX} suffix")
        content = _read_secret_file(value)
        if _is_text(_model(section_or_none).model_fields[key].annotation):
            return section_or_none, key, content
        return section_or_none, key, _yaml_value(content)
    if not _is_key(section_or_none, key):
        raise ValueError("unknown key; check the spelling against 'wicked-dr config example'")
    if not value:
        return section_or_none, key, None
    if _is_text(_model(section_or_none).model_fields[key].annotation):
        # Verbatim: YAML would turn a password '0123' into 83 and choke on '*/15 * * * *'.
        return section_or_none, key, value
    return section_or_none, key, _yaml_value(value)


def _yaml_value(value: str) -> Any:
    """A variable's (or secret file's) value read as YAML: numbers, lists, mappings."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        raise ValueError(f"{value!r} is not a valid value for this key") from None


def _model(section: str | None) -> type[Section]:
    return SECTIONS[section] if section else Config


def _is_text(annotation: Any) -> bool:
    """Whether a field holds text (optionally None), so an env value is taken as is."""
    if get_origin(annotation) in (Union, types.UnionType):
        return all(arg is type(None) or _is_text(arg) for arg in get_args(annotation))
    return annotation in (str, SecretStr, Path)


def _is_key(section: str | None, key: str) -> bool:
    model: type[Section] = SECTIONS[section] if section else Config
    return key in model.model_fields and (section is not None or key not in SECTIONS)


def _read_secret_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None


def _describe(label: str, exc: ValidationError,
              from_env: Mapping[tuple[str, ...], str]) -> list[str]:
    """One line per problem: ``config.yaml: at 'a.b': what is wrong``, or ``env VARIABLE:
    at 'a.b': ...`` when the value came from the environment (the file's was replaced)."""
    lines = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        variable = from_env.get(loc[:2]) or from_env.get(loc[:1])
        source = f"env {variable}" if variable else label
        # A problem across sections (a model validator of Config) has no place of its own.
        where = f"at '{'.'.join(loc)}': " if loc else ""
        lines.append(f"{source}: {where}{_message(error)}")
    return lines


_RANGE_ERRORS = {"greater_than_equal", "less_than_equal", "greater_than", "less_than"}
_TYPE_ERRORS = {"int_type", "int_parsing", "int_from_float", "float_type", "float_parsing"}


def _message(error: Any) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key; check the spelling against 'wicked-dr config example'"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"got {error.get('input')!r}, expected one of {expected}"
    text: str = error["msg"]
    if kind in _RANGE_ERRORS:
        bounds = _bounds_at(error["loc"])
        if bounds is not None:
            text = f"must be between {bounds[0]} and {bounds[1]}"
        return f"{text} (got {error.get('input')!r})"
    if kind in _TYPE_ERRORS:
        return f"{text} (got {error.get('input')!r})"
    return re.sub(r"^Value error, ", "", text)


def _bounds(field: FieldInfo) -> tuple[float, float] | None:
    """The inclusive range ``_field(bounds=...)`` gave a number, read back from pydantic."""
    low = next((m.ge for m in field.metadata if getattr(m, "ge", None) is not None), None)
    high = next((m.le for m in field.metadata if getattr(m, "le", None) is not None), None)
    return None if low is None or high is None else (low, high)


def _bounds_at(loc: tuple[int | str, ...]) -> tuple[float, float] | None:
    """The range of the field at an error's location (``('retention', 'keep_daily')``)."""
    if len(loc) == 2 and loc[0] in SECTIONS:
        field = SECTIONS[str(loc[0])].model_fields.get(str(loc[1]))
    elif len(loc) == 1:
        field = Config.model_fields.get(str(loc[0]))
    else:
        return None
    return _bounds(field) if field is not None else None


# --- presenting --------------------------------------------------------------------------


def masked_dict(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, secrets replaced by '***'."""
    data: dict[str, Any] = config.model_dump(mode="json")
    for section_name in SECTIONS:
        section = getattr(config, section_name)
        for key in type(section).model_fields:
            if _secrets_in(getattr(section, key)):
                data[section_name][key] = _masked(getattr(section, key))
    return data


def _masked(value: Any) -> Any:
    """A secret value with every secret string replaced by '***' (lists and mappings keep
    their shape, so the reader sees how many are set)."""
    if isinstance(value, list):
        return [_masked(item) for item in value]
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    return "***"


def example_yaml() -> str:
    """The commented example configuration, generated from the schema."""
    lines = [
        "# wicked-dr configuration (generated by 'wicked-dr config example'; do not edit the",
        "# copy in config/ by hand). Every key can be overridden by the environment:",
        "#   WICKED_DR_<SECTION>__<KEY>, e.g. WICKED_DR_REPOSITORY__URL;",
        "#   secret keys also as WICKED_DR_<SECTION>__<KEY>_FILE (read from that file).",
        "",
    ]
    lines.extend(_example_field(None, "state_dir", Config.model_fields["state_dir"]))
    for name, model in SECTIONS.items():
        lines.append("")
        lines.append(f"# {model.__doc__ or name}".rstrip())
        lines.append(f"{name}:")
        for key, field in model.model_fields.items():
            lines.extend("  " + line for line in _example_field(name, key, field))
    return "\n".join(lines) + "\n"


def _example_field(section: str | None, key: str, field: Any) -> list[str]:
    extra = field.json_schema_extra or {}
    text = f"{field.description}" + (" (secret)" if extra.get("secret") else "")
    out = ["# " + line for line in textwrap.wrap(text, width=94)]
    bounds = _bounds(field)
    if bounds is not None:
        out.append(f"# range: {bounds[0]} to {bounds[1]}")
    if "example" in extra:
        out.append(f"# example: {_scalar(extra['example'])}")
    default = field.default if field.default_factory is None else field.default_factory()
    out.append(f"{key}: {_scalar(default)}")
    return out


def _scalar(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, SecretStr):
        value = None
    dumped = yaml.safe_dump(value, default_flow_style=True).strip()
    # Only the document-end marker line goes; a value may itself end in '...' (AKIA...).
    return dumped.removesuffix("\n...").strip()
