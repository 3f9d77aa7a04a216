"""The configuration schema: loading, environment overrides, validation messages, the example."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel

from wicked_dr.cli import main
from wicked_dr.config import (
    SECTIONS,
    Config,
    example_yaml,
    is_secret,
    load_config,
    masked_dict,
    secret_values,
)
from wicked_dr.errors import ConfigError, ExitCode

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "config" / "wicked-dr.example.yaml"
ERROR_PREFIX = "wicked-dr: error: "
THREE_MISTAKES = """\
repository:
  urll: /srv/backups
  pack_size_mib: -1
volume:
  quiesce: maybe
"""
RESERVED_SECTIONS = {"repository", "volume", "kong_tokens", "schedule", "retention", "verify",
                     "restore", "wicked_db", "containers", "wicked", "daemon", "notify", "log"}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No WICKED_DR_* variable of the calling shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("WICKED_DR_"):
            monkeypatch.delenv(name)


def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _problems(path: Path, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ or {})
    return caught.value.problems


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(ERROR_PREFIX)]


def _subprocess_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WICKED_DR_")}


# --- loading and defaults --------------------------------------------------------------------


def test_load_empty_file_gives_schema_defaults(tmp_path: Path) -> None:
    """An empty file is a valid configuration equal to the schema's defaults."""
    config = load_config(_write(tmp_path, ""), {})
    assert config == Config()
    assert config.repository.pack_size_mib == 8
    assert config.volume.quiesce == "wicked-lock"
    assert config.state_dir == Path("/var/lib/wicked-dr/state")


def test_schema_sections_all_reserved_sections_present() -> None:
    """Every section the foundation reserves exists, plus the top-level state_dir."""
    assert set(SECTIONS) == RESERVED_SECTIONS
    assert "state_dir" in Config.model_fields
    assert set(Config.model_fields) == RESERVED_SECTIONS | {"state_dir"}


def test_load_values_from_file_are_applied(tmp_path: Path) -> None:
    """Values written in the file reach the typed model."""
    path = _write(tmp_path, "repository:\n  url: s3://bucket/prod\n  pack_size_mib: 32\n"
                  "kong_tokens:\n  dsn: postgresql://kong:pw12345@db/kong\n")
    config = load_config(path, {})
    assert config.repository.url == "s3://bucket/prod"
    assert config.repository.pack_size_mib == 32
    assert config.kong_tokens.dsn is not None
    assert config.kong_tokens.dsn.get_secret_value() == "postgresql://kong:pw12345@db/kong"


def test_load_file_url_prefix_is_stripped_to_a_path(tmp_path: Path) -> None:
    """file:///path is accepted and normalised to the plain absolute path."""
    config = load_config(_write(tmp_path, "repository:\n  url: file:///srv/repo\n"), {})
    assert config.repository.url == "/srv/repo"


@pytest.mark.parametrize("url", ["relative/dir", "s3://", "s3:///prefix"])
def test_load_unsupported_repository_url_is_reported(tmp_path: Path, url: str) -> None:
    """A relative path or an s3:// URL without bucket is a problem at 'repository.url'."""
    problems = _problems(_write(tmp_path, f"repository:\n  url: '{url}'\n"))
    assert len(problems) == 1
    assert problems[0].startswith("config.yaml: at 'repository.url': ")


# --- validation reports every problem --------------------------------------------------------


def test_load_three_mistakes_reports_three_problems(tmp_path: Path) -> None:
    """Unknown key, bad literal and negative number are all reported, each at its path."""
    problems = _problems(_write(tmp_path, THREE_MISTAKES))
    assert len(problems) == 3, problems
    by_path = {p.split("'")[1]: p for p in problems}
    assert set(by_path) == {"repository.urll", "volume.quiesce", "repository.pack_size_mib"}
    assert "unknown key" in by_path["repository.urll"]
    assert "'maybe'" in by_path["volume.quiesce"]
    assert "'wicked-lock'" in by_path["volume.quiesce"]
    assert by_path["repository.pack_size_mib"].endswith(
        "must be between 1 and 128 (got -1)")


def test_validate_command_three_mistakes_prints_three_lines_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`config validate` prints one stderr line per mistake, in the documented form, exit 2."""
    path = _write(tmp_path, THREE_MISTAKES)
    code = main(["--config", str(path), "config", "validate"])
    out, err = capsys.readouterr()
    assert code == ExitCode.USAGE == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 3, err
    wheres = []
    for line in lines:
        assert line.startswith(f"{ERROR_PREFIX}config.yaml: at '"), line
        wheres.append(line.split("'")[1])
    assert sorted(wheres) == ["repository.pack_size_mib", "repository.urll", "volume.quiesce"]


def test_validate_command_subprocess_three_mistakes_exit_2(tmp_path: Path) -> None:
    """The same three-line report and exit code 2 from a real `python -m wicked_dr.cli`."""
    path = _write(tmp_path, THREE_MISTAKES)
    proc = subprocess.run([sys.executable, "-m", "wicked_dr.cli", "--config", str(path),
                           "config", "validate"], capture_output=True, text=True,
                          env=_subprocess_env(), cwd=REPO_ROOT, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3, proc.stderr
    assert all(line.startswith(f"{ERROR_PREFIX}config.yaml: at '") for line in lines)


def test_validate_command_valid_file_exits_0(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A valid file validates with exit 0 and nothing on stderr."""
    path = _write(tmp_path, "repository:\n  url: /srv/repo\n")
    assert main(["--config", str(path), "config", "validate"]) == 0
    assert capsys.readouterr().err == ""


def test_load_wrong_type_is_reported_with_its_path(tmp_path: Path) -> None:
    """A string where a number belongs names the key."""
    problems = _problems(_write(tmp_path, "retention:\n  keep_last: many\n"))
    assert len(problems) == 1
    assert problems[0].startswith("config.yaml: at 'retention.keep_last': ")


def test_load_unknown_section_is_an_error(tmp_path: Path) -> None:
    """A misspelt section must not be silently ignored."""
    problems = _problems(_write(tmp_path, "repositry:\n  url: /srv/repo\n"))
    assert problems == ["config.yaml: at 'repositry': unknown key; check the spelling "
                        "against 'wicked-dr config example'"]


def test_load_top_level_list_is_one_problem(tmp_path: Path) -> None:
    """A file that is not a mapping says so in one line."""
    problems = _problems(_write(tmp_path, "- repository\n- volume\n"))
    assert len(problems) == 1
    assert "mapping" in problems[0]


# --- files that cannot be read ------------------------------------------------------------


def test_validate_command_invalid_yaml_one_line_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Broken YAML is one clear line naming the file and the line, exit 2, no traceback."""
    path = _write(tmp_path, "repository:\n  url: [unclosed\nvolume: {\n")
    code = main(["--config", str(path), "config", "validate"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{ERROR_PREFIX}config.yaml:")
    assert "not valid YAML" in lines[0]
    assert "line " in lines[0]


def test_validate_command_missing_file_one_line_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing file is one line naming the path and how to get a file, exit 2."""
    path = tmp_path / "absent.yaml"
    code = main(["--config", str(path), "config", "validate"])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0]
    assert "no such configuration file" in lines[0]


def test_config_path_from_env_variable_is_used(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """WICKED_DR_CONFIG names the file when --config is absent."""
    path = _write(tmp_path, THREE_MISTAKES, name="from-env.yaml")
    monkeypatch.setenv("WICKED_DR_CONFIG", str(path))
    assert main(["config", "validate"]) == 2
    assert "from-env.yaml: at 'volume.quiesce'" in capsys.readouterr().err


def test_config_path_cli_option_wins_over_env(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """--config wins over WICKED_DR_CONFIG."""
    monkeypatch.setenv("WICKED_DR_CONFIG", str(_write(tmp_path, THREE_MISTAKES, "bad.yaml")))
    good = _write(tmp_path, "{}\n", "good.yaml")
    assert main(["--config", str(good), "config", "validate"]) == 0
    assert capsys.readouterr().err == ""


# --- duplicate keys ---------------------------------------------------------------------------

DUPLICATE_REPOSITORY = """\
repository:
  url: /srv/repo
  encryption_key_file: /run/secrets/key
volume:
  path: /srv/dynamic
repository:
  url: /srv/other
"""


def test_load_duplicate_section_names_key_and_both_lines(tmp_path: Path) -> None:
    """A second `repository:` block is an error naming the key and both lines, not a silent
    replacement that drops encryption_key_file."""
    problems = _problems(_write(tmp_path, DUPLICATE_REPOSITORY))
    assert problems == ["config.yaml: line 6: duplicate key 'repository' (first at line 1)"]


@pytest.mark.parametrize(("text", "expected"), [
    ("repository:\n  url: /a\n  pack_size_mib: 8\n  url: /b\n",
     "config.yaml: line 4: duplicate key 'url' (first at line 2)"),
    ("repository: {url: /a, url: /b}\n",
     "config.yaml: line 1: duplicate key 'url' (first at line 1)"),
    ("volume:\n  path:\n    deep:\n      x: 1\n      x: 2\n",
     "config.yaml: line 5: duplicate key 'x' (first at line 4)"),
    ("restore:\n  empty_webhook_queues:\n    - {a: 1,\n       a: 2}\n",
     "config.yaml: line 4: duplicate key 'a' (first at line 3)"),
])
def test_load_duplicate_key_at_any_depth_is_reported(tmp_path: Path, text: str,
                                                     expected: str) -> None:
    """A duplicate key inside a section, a flow mapping or a deeper value is reported too."""
    assert expected in _problems(_write(tmp_path, text))


def test_load_duplicate_keys_every_one_is_reported(tmp_path: Path) -> None:
    """Every duplicate is reported at once, together with the schema problems of the file."""
    text = ("retention:\n  keep_last: 1\n  keep_last: 2\n"
            "log:\n  level: info\n  level: debug\n"
            "volume:\n  quiesce: maybe\n")
    problems = _problems(_write(tmp_path, text))
    assert problems[:2] == ["config.yaml: line 3: duplicate key 'keep_last' (first at line 2)",
                            "config.yaml: line 6: duplicate key 'level' (first at line 5)"]
    assert len(problems) == 3
    assert problems[2].startswith("config.yaml: at 'volume.quiesce': ")


def test_load_merge_key_overridden_explicitly_is_not_a_duplicate(tmp_path: Path) -> None:
    """A key that overrides one merged in with `<<:` is ordinary YAML, not a duplicate."""
    text = "retention:\n  <<: {keep_last: 1, keep_daily: 2}\n  keep_last: 5\n"
    config = load_config(_write(tmp_path, text), {})
    assert (config.retention.keep_last, config.retention.keep_daily) == (5, 2)


def test_validate_command_duplicate_key_one_line_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`config validate` prints the duplicate as one stderr line and exits 2."""
    path = _write(tmp_path, DUPLICATE_REPOSITORY)
    code = main(["--config", str(path), "config", "validate"])
    out, err = capsys.readouterr()
    assert code == ExitCode.USAGE == 2
    assert out == ""
    assert _error_lines(err) == [
        f"{ERROR_PREFIX}config.yaml: line 6: duplicate key 'repository' (first at line 1)"]
    assert err.strip().splitlines() == _error_lines(err)


# --- bounds of numbers ------------------------------------------------------------------------


def _numeric_fields() -> list[tuple[str, str]]:
    """Every (section, key) of the schema holding a number (optionally empty)."""
    found = []
    for section, model in SECTIONS.items():
        for key, field in model.model_fields.items():
            kinds = set(get_args(field.annotation)) or {field.annotation}
            if kinds - {type(None)} and kinds - {type(None)} <= {int, float}:
                found.append((section, key))
    return found


def test_numeric_fields_the_schema_has_numbers() -> None:
    """The helper below finds the schema's numbers (guards the tests that loop over them)."""
    fields = _numeric_fields()
    assert ("retention", "keep_daily") in fields
    assert ("volume", "scan_workers") in fields
    assert ("volume", "max_shrink_percent") in fields
    assert len(fields) >= 15


@pytest.mark.parametrize(("section", "key", "value", "expected"), [
    ("retention", "keep_daily", "-3", "must be between 0 and 10000 (got -3)"),
    ("volume", "max_shrink_percent", "150", "must be between 0 and 100 (got 150)"),
    ("repository", "pack_size_mib", "100000", "must be between 1 and 128 (got 100000)"),
    ("repository", "lock_expiry_s", "5", "must be between 10 and 86400 (got 5)"),
    ("volume", "scan_workers", "65", "must be between 0 and 64 (got 65)"),
    ("restore", "owner_uid", "4294967295", "must be between 0 and 4294967294 (got 4294967295)"),
    ("verify", "timeout_s", "0", "must be between 1 and 86400 (got 0)"),
    ("kong_tokens", "connect_timeout_s", "0", "must be between 1 and 600 (got 0)"),
])
def test_load_out_of_range_number_names_key_and_range(
        tmp_path: Path, section: str, key: str, value: str, expected: str) -> None:
    """An impossible number is one line naming the key, the allowed range and the value."""
    problems = _problems(_write(tmp_path, f"{section}:\n  {key}: {value}\n"))
    assert problems == [f"config.yaml: at '{section}.{key}': {expected}"]


@pytest.mark.parametrize(("section", "key"), _numeric_fields())
def test_load_any_number_out_of_range_or_boolean_is_refused(tmp_path: Path, section: str,
                                                            key: str) -> None:
    """Every number in the schema has bounds on both sides and refuses YAML true."""
    for value in ("-1", "1000000000000", "true"):
        problems = _problems(_write(tmp_path, f"{section}:\n  {key}: {value}\n"))
        assert len(problems) == 1, (value, problems)
        assert problems[0].startswith(f"config.yaml: at '{section}.{key}': "), problems
    assert "True" in problems[0]


def test_load_boolean_pack_size_is_refused(tmp_path: Path) -> None:
    """`pack_size_mib: true` is not taken for 1 MiB: the message names the key and the value."""
    problems = _problems(_write(tmp_path, "repository:\n  pack_size_mib: true\n"))
    assert problems == ["config.yaml: at 'repository.pack_size_mib': "
                        "Input should be a valid integer (got True)"]


def test_load_bounds_are_inclusive(tmp_path: Path) -> None:
    """The ends of each range are allowed values."""
    text = ("repository:\n  pack_size_mib: 128\n  lock_expiry_s: 10\n"
            "volume:\n  max_shrink_percent: 100\n  scan_workers: 0\n  quiesce_timeout_s: 0\n"
            "retention:\n  keep_daily: 0\n  keep_last: 10000\n"
            "restore:\n  owner_uid: 0\n  owner_gid: 4294967294\n")
    config = load_config(_write(tmp_path, text), {})
    assert config.repository.pack_size_mib == 128
    assert config.volume.max_shrink_percent == 100
    assert config.restore.owner_gid == 2**32 - 2


def test_validate_command_every_range_problem_at_once_exit_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`config validate` reports every out-of-range value in one run, one line each, exit 2."""
    text = ("retention:\n  keep_daily: -3\n"
            "volume:\n  max_shrink_percent: 150\n"
            "repository:\n  pack_size_mib: 100000\n")
    code = main(["--config", str(_write(tmp_path, text)), "config", "validate"])
    lines = _error_lines(capsys.readouterr().err)
    assert code == 2
    assert sorted(lines) == sorted(f"{ERROR_PREFIX}config.yaml: at {rest}" for rest in [
        "'retention.keep_daily': must be between 0 and 10000 (got -3)",
        "'volume.max_shrink_percent': must be between 0 and 100 (got 150)",
        "'repository.pack_size_mib': must be between 1 and 128 (got 100000)",
    ])


def test_env_number_for_strict_field_is_typed_and_bounded(tmp_path: Path) -> None:
    """Environment values of the strict number keys are parsed (16 is int 16, 12.5 a float),
    and a boolean or out-of-range value is still refused."""
    path = _write(tmp_path, "")
    config = load_config(path, {"WICKED_DR_REPOSITORY__PACK_SIZE_MIB": "16",
                                "WICKED_DR_VOLUME__MAX_SHRINK_PERCENT": "12.5",
                                "WICKED_DR_VOLUME__SCAN_WORKERS": "0",
                                "WICKED_DR_RESTORE__OWNER_UID": "1000"})
    assert config.repository.pack_size_mib == 16
    assert config.volume.max_shrink_percent == 12.5
    assert config.volume.scan_workers == 0
    assert config.restore.owner_uid == 1000
    problems = _problems(path, {"WICKED_DR_REPOSITORY__PACK_SIZE_MIB": "true",
                                "WICKED_DR_RETENTION__KEEP_DAILY": "-3"})
    assert sorted(problems) == [
        "env WICKED_DR_REPOSITORY__PACK_SIZE_MIB: at 'repository.pack_size_mib': "
        "Input should be a valid integer (got True)",
        "env WICKED_DR_RETENTION__KEEP_DAILY: at 'retention.keep_daily': "
        "must be between 0 and 10000 (got -3)"]


def test_example_documents_the_range_of_each_number() -> None:
    """`config example` states the allowed range next to every bounded key."""
    text = example_yaml()
    assert "  # range: 0 to 100\n  # example: 20\n  max_shrink_percent: 20.0\n" in text
    assert "  # range: 1 to 128\n  # example: 8\n  pack_size_mib: 8\n" in text
    assert "  # range: 0 to 10000\n  keep_daily: 14\n" in text
    assert text.count("# range: ") == len(_numeric_fields())


# --- environment overrides -------------------------------------------------------------------


def test_env_section_key_overrides_file_value(tmp_path: Path) -> None:
    """WICKED_DR_REPOSITORY__URL replaces the file's repository.url."""
    path = _write(tmp_path, "repository:\n  url: /from/file\n")
    config = load_config(path, {"WICKED_DR_REPOSITORY__URL": "s3://from-env/prefix"})
    assert config.repository.url == "s3://from-env/prefix"


def test_env_top_level_state_dir_overrides_default(tmp_path: Path) -> None:
    """WICKED_DR_STATE_DIR sets the top-level state_dir."""
    config = load_config(_write(tmp_path, ""), {"WICKED_DR_STATE_DIR": "/srv/state"})
    assert config.state_dir == Path("/srv/state")


def test_env_number_is_parsed_and_validated(tmp_path: Path) -> None:
    """A numeric key from the environment is typed, and still validated."""
    path = _write(tmp_path, "")
    config = load_config(path, {"WICKED_DR_REPOSITORY__PACK_SIZE_MIB": "64"})
    assert config.repository.pack_size_mib == 64
    problems = _problems(path, {"WICKED_DR_REPOSITORY__PACK_SIZE_MIB": "0"})
    assert len(problems) == 1
    assert "'repository.pack_size_mib'" in problems[0]


def test_env_list_value_is_parsed_as_yaml(tmp_path: Path) -> None:
    """A list-valued key takes a YAML flow list from the environment."""
    config = load_config(_write(tmp_path, ""),
                         {"WICKED_DR_RESTORE__EMPTY_WEBHOOK_QUEUES": "[mailer]"})
    assert config.restore.empty_webhook_queues == ["mailer"]


@pytest.mark.parametrize("value", ["0123", "yes", "*/15 * * * *", "[abc", "null"])
def test_env_text_value_is_taken_verbatim(tmp_path: Path, value: str) -> None:
    """Text keys keep the variable as written, even when it would be a YAML number or error."""
    config = load_config(_write(tmp_path, ""), {
        "WICKED_DR_REPOSITORY__SECRET_ACCESS_KEY": value,
        "WICKED_DR_VERIFY__IMAGE": value,
    })
    assert config.repository.secret_access_key is not None
    assert config.repository.secret_access_key.get_secret_value() == value
    assert config.verify.image == value


def test_env_unparsable_number_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    """Broken YAML in a non-text variable is a problem naming the variable."""
    problems = _problems(_write(tmp_path, ""), {"WICKED_DR_REPOSITORY__PACK_SIZE_MIB": "[1"})
    assert len(problems) == 1
    assert problems[0].startswith("env WICKED_DR_REPOSITORY__PACK_SIZE_MIB: ")


def test_env_secret_file_suffix_reads_the_file(tmp_path: Path) -> None:
    """WICKED_DR_KONG_TOKENS__DSN_FILE reads the DSN from that file (Docker secrets)."""
    secret = tmp_path / "dsn"
    secret.write_text("postgresql://kong:fromfile99@db/kong\n", encoding="utf-8")
    config = load_config(_write(tmp_path, ""),
                         {"WICKED_DR_KONG_TOKENS__DSN_FILE": str(secret)})
    assert config.kong_tokens.dsn is not None
    assert config.kong_tokens.dsn.get_secret_value() == "postgresql://kong:fromfile99@db/kong"


def test_env_secret_file_missing_is_a_problem_naming_the_variable(tmp_path: Path) -> None:
    """An unreadable secret file is reported with the variable's name."""
    problems = _problems(_write(tmp_path, ""),
                         {"WICKED_DR_KONG_TOKENS__DSN_FILE": str(tmp_path / "absent")})
    assert len(problems) == 1
    assert problems[0].startswith("env WICKED_DR_KONG_TOKENS__DSN_FILE: ")
    assert "cannot read" in problems[0]


def test_env_file_suffix_on_plain_key_is_an_error_naming_the_variable(tmp_path: Path) -> None:
    """_FILE is only for secret keys: WICKED_DR_REPOSITORY__URL_FILE is refused."""
    target = tmp_path / "url"
    target.write_text("/srv/repo", encoding="utf-8")
    problems = _problems(_write(tmp_path, ""),
                         {"WICKED_DR_REPOSITORY__URL_FILE": str(target)})
    assert len(problems) == 1
    assert "WICKED_DR_REPOSITORY__URL_FILE" in problems[0]
    assert "secret" in problems[0]


def test_env_encryption_key_file_is_a_plain_path_key(tmp_path: Path) -> None:
    """repository.encryption_key_file is a path, set as is; it is not a _FILE secret."""
    key_path = tmp_path / "key"
    key_path.write_text("not-read-at-load-time", encoding="utf-8")
    config = load_config(_write(tmp_path, ""),
                         {"WICKED_DR_REPOSITORY__ENCRYPTION_KEY_FILE": str(key_path)})
    assert config.repository.encryption_key_file == key_path
    assert not is_secret("repository", "encryption_key_file")
    problems = _problems(_write(tmp_path, ""),
                         {"WICKED_DR_REPOSITORY__ENCRYPTION_KEY_FILE_FILE": str(key_path)})
    assert "WICKED_DR_REPOSITORY__ENCRYPTION_KEY_FILE_FILE" in problems[0]


def test_env_unknown_section_is_an_error(tmp_path: Path) -> None:
    """An unknown section in a variable name is an error, not ignored."""
    problems = _problems(_write(tmp_path, ""), {"WICKED_DR_REPOSITRY__URL": "/srv"})
    assert len(problems) == 1
    assert problems[0].startswith("env WICKED_DR_REPOSITRY__URL: unknown section 'repositry'")


def test_env_unknown_key_is_an_error(tmp_path: Path) -> None:
    """An unknown key in a known section is an error, as is an unknown top-level key."""
    problems = _problems(_write(tmp_path, ""), {"WICKED_DR_REPOSITORY__URLL": "/srv",
                                                "WICKED_DR_STATEDIR": "/srv"})
    assert len(problems) == 2
    assert {p.split(":")[0] for p in problems} == {"env WICKED_DR_REPOSITORY__URLL",
                                                   "env WICKED_DR_STATEDIR"}
    assert all("unknown key" in p for p in problems)


def test_env_section_name_alone_is_not_a_key(tmp_path: Path) -> None:
    """WICKED_DR_REPOSITORY cannot replace a whole section."""
    problems = _problems(_write(tmp_path, ""), {"WICKED_DR_REPOSITORY": "{url: /srv}"})
    assert len(problems) == 1
    assert "WICKED_DR_REPOSITORY" in problems[0]


def test_env_and_file_problems_are_reported_together(tmp_path: Path) -> None:
    """File mistakes and environment mistakes come in one report."""
    problems = _problems(_write(tmp_path, THREE_MISTAKES), {"WICKED_DR_NOPE__X": "1"})
    assert len(problems) == 4


def test_env_problem_names_the_variable_not_the_file(tmp_path: Path) -> None:
    """A bad value from the environment is reported against its variable, not config.yaml."""
    problems = _problems(_write(tmp_path, ""), {"WICKED_DR_REPOSITORY__PACK_SIZE_MIB": "0"})
    assert problems == ["env WICKED_DR_REPOSITORY__PACK_SIZE_MIB: at 'repository.pack_size_mib': "
                        "must be between 1 and 128 (got 0)"]


def test_env_and_file_problems_in_one_section_each_name_their_source(tmp_path: Path) -> None:
    """In one section, the file's mistake names the file and the variable's names the variable;
    a file value the environment replaces is not reported."""
    path = _write(tmp_path, "repository:\n  pack_size_mib: 0\n  lock_expiry_s: 1\n")
    problems = _problems(path, {"WICKED_DR_REPOSITORY__URL": "relative/dir",
                                "WICKED_DR_REPOSITORY__LOCK_EXPIRY_S": "60"})
    assert sorted(problems) == [
        "config.yaml: at 'repository.pack_size_mib': must be between 1 and 128 (got 0)",
        "env WICKED_DR_REPOSITORY__URL: at 'repository.url': expected an absolute path, "
        "file:///path or s3://bucket/prefix, got 'relative/dir'"]


def test_env_problem_inside_a_list_names_the_variable(tmp_path: Path) -> None:
    """A bad item of a list set from the environment names the variable too."""
    problems = _problems(_write(tmp_path, ""),
                         {"WICKED_DR_RESTORE__EMPTY_WEBHOOK_QUEUES": "[mailer, 7]"})
    assert problems == ["env WICKED_DR_RESTORE__EMPTY_WEBHOOK_QUEUES: at "
                        "'restore.empty_webhook_queues.1': Input should be a valid string"]


def test_validate_command_env_problem_names_the_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`config validate` prints the variable's name for a problem the environment caused."""
    monkeypatch.setenv("WICKED_DR_RETENTION__KEEP_DAILY", "-3")
    assert main(["--config", str(_write(tmp_path, "")), "config", "validate"]) == 2
    assert _error_lines(capsys.readouterr().err) == [
        f"{ERROR_PREFIX}env WICKED_DR_RETENTION__KEEP_DAILY: at 'retention.keep_daily': "
        "must be between 0 and 10000 (got -3)"]


def test_env_config_path_variable_is_not_an_override(tmp_path: Path) -> None:
    """WICKED_DR_CONFIG selects the file and is not treated as key 'config'."""
    config = load_config(_write(tmp_path, ""), {"WICKED_DR_CONFIG": "/elsewhere.yaml"})
    assert config == Config()


# --- secrets ----------------------------------------------------------------------------------


def test_secret_values_lists_every_set_secret(tmp_path: Path) -> None:
    """secret_values returns the values of secret keys that are set, nothing else."""
    path = _write(tmp_path, "repository:\n  url: /srv/repo\n  secret_access_key: sak-abcdef\n"
                  "notify:\n  webhook_url: https://hooks.example.com/xyz\n")
    config = load_config(path, {"WICKED_DR_WICKED_DB__DSN": "postgresql://w:pw777@db/wicked"})
    assert sorted(secret_values(config)) == sorted([
        "sak-abcdef", "https://hooks.example.com/xyz", "postgresql://w:pw777@db/wicked"])


def test_config_show_masks_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """`config show` prints the effective config without any secret value."""
    path = _write(tmp_path, "repository:\n  secret_access_key: FileSecretKey4711\n")
    monkeypatch.setenv("WICKED_DR_KONG_TOKENS__DSN", "postgresql://kong:EnvPassw0rd42@db/kong")
    assert main(["--config", str(path), "config", "show"]) == 0
    out, err = capsys.readouterr()
    text = out + err
    assert "FileSecretKey4711" not in text
    assert "EnvPassw0rd42" not in text
    assert "secret_access_key: ***" in out
    assert "dsn: ***" in out
    assert "url: /var/lib/wicked-dr/repository" in out


def test_config_show_json_is_valid_and_masked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """`config show --json` is one JSON document with secrets as '***' and unset ones null."""
    path = _write(tmp_path, "repository:\n  url: /srv/repo\n")
    monkeypatch.setenv("WICKED_DR_NOTIFY__WEBHOOK_URL", "https://hooks.example.com/T0/HOOK99")
    assert main(["--config", str(path), "config", "show", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "HOOK99" not in out + err
    data = json.loads(out)
    assert data["notify"]["webhook_url"] == "***"
    assert data["kong_tokens"]["dsn"] is None
    assert data["repository"]["url"] == "/srv/repo"
    assert set(data) == set(Config.model_fields)


def test_masked_dict_masks_every_secret_key() -> None:
    """Every key the schema marks secret is masked when set, whatever section it is in."""
    values: dict[str, dict[str, Any]] = {}
    for section, model in SECTIONS.items():
        for key in model.model_fields:
            if is_secret(section, key):
                values.setdefault(section, {})[key] = _shaped(
                    model.model_fields[key].annotation, f"secret-{section}-{key}")
    assert values, "the schema has no secret keys"
    config = Config.model_validate(values)
    dumped = json.dumps(masked_dict(config))
    for section, keys in values.items():
        for key in keys:
            assert f"secret-{section}-{key}" not in dumped
            assert json.dumps(masked_dict(config)[section][key]) == json.dumps(
                _shaped(SECTIONS[section].model_fields[key].annotation, "***"))


def _shaped(annotation: Any, text: str) -> Any:
    """``text`` in the shape of a secret key: a list of one, a mapping of one job, or itself."""
    if str(annotation).startswith("list["):
        return [text]
    if str(annotation).startswith("dict["):
        return {"backup": text}
    return text


def test_schema_secret_keys_are_secret_strings() -> None:
    """A key marked secret is a SecretStr, so its repr never shows the value."""
    for section, model in SECTIONS.items():
        for key, field in model.model_fields.items():
            if is_secret(section, key):
                assert "SecretStr" in str(field.annotation), f"{section}.{key}"


# --- the example ------------------------------------------------------------------------------


def test_example_committed_file_matches_generator() -> None:
    """config/wicked-dr.example.yaml is exactly what `config example` generates (no drift)."""
    assert EXAMPLE.is_file(), "regenerate: wicked-dr config example > " + str(EXAMPLE)
    assert EXAMPLE.read_text(encoding="utf-8") == example_yaml(), (
        "config/wicked-dr.example.yaml drifted from the schema; regenerate it with "
        "'wicked-dr config example > config/wicked-dr.example.yaml'")


def test_example_loads_as_valid_config_equal_to_defaults() -> None:
    """The example validates, and its values are the schema defaults."""
    config = load_config(EXAMPLE, {})
    assert config == Config()


def test_example_mentions_every_key_with_its_description() -> None:
    """Every key of every section appears in the example, under its section."""
    data = yaml.safe_load(example_yaml())
    assert set(data) == set(Config.model_fields)
    text = example_yaml()
    for section, model in SECTIONS.items():
        assert set(data[section]) == set(model.model_fields), section
        for field in model.model_fields.values():
            first_words = " ".join(str(field.description).split()[:4])
            assert first_words in text, first_words


def test_example_command_prints_the_generated_example(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`config example` works without any config file and prints example_yaml()."""
    assert main(["--config", "/nonexistent/wicked-dr.yaml", "config", "example"]) == 0
    assert capsys.readouterr().out == example_yaml()


def test_example_lines_fit_the_line_length() -> None:
    """The example is readable: no line longer than 100 characters."""
    long_lines = [line for line in example_yaml().splitlines() if len(line) > 100]
    assert long_lines == []


def test_schema_every_field_has_a_description() -> None:
    """Every leaf key has a description and every section a docstring (the example needs them)."""
    models: list[type[BaseModel]] = [Config, *SECTIONS.values()]
    for model in models:
        assert model.__doc__ and model.__doc__.strip(), model.__name__
        for key, field in model.model_fields.items():
            if model is Config and key in SECTIONS:
                continue
            assert field.description and field.description.strip(), f"{model.__name__}.{key}"

