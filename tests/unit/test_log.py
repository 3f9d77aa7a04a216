"""Logging: JSON lines or console, and secrets never reach a log line or an error message."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.fixtures.minimal import minimal_volume_and_config
from wicked_dr import log
from wicked_dr.cli import main
from wicked_dr.config import Config, secret_values

REPO_ROOT = Path(__file__).resolve().parents[2]
DSN_PASSWORD = "S3cr3tPassw0rd"
DSN = f"postgresql://kong:{DSN_PASSWORD}@db/kong"
S3_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
S3_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
WEBHOOK = "https://hooks.example.com/services/T000/B000/XXXXSECRETXXXX"
SECRETS = [DSN, DSN_PASSWORD, S3_SECRET, S3_KEY_ID, WEBHOOK]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No WICKED_DR_* variable leaks in, and structlog is reset after each test."""
    for name in list(os.environ):
        if name.startswith("WICKED_DR_"):
            monkeypatch.delenv(name)
    yield
    structlog.reset_defaults()


@pytest.fixture()
def captured() -> io.StringIO:
    """JSON logging into a buffer, with the secrets of a real Config registered."""
    config = Config.model_validate({
        "kong_tokens": {"dsn": DSN},
        "repository": {"access_key_id": S3_KEY_ID, "secret_access_key": S3_SECRET},
        "notify": {"webhook_url": WEBHOOK},
    })
    log.REDACTOR.add(secret_values(config))
    buffer = io.StringIO()
    log.configure("debug", "json", buffer)
    return buffer


def _leaks(text: str, secrets: list[str] = SECRETS) -> list[str]:
    return [secret for secret in secrets if secret in text]


def _events(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


class _Holder:
    """An object whose repr carries a secret, like a client that prints its endpoint."""

    def __repr__(self) -> str:
        return f"Client(url={DSN}, key={S3_SECRET})"


# --- in-process redaction -----------------------------------------------------------------------


def test_secret_in_message_is_redacted(captured: io.StringIO) -> None:
    """A secret inside the event text is replaced, the rest of the text kept."""
    log.get_logger("t").info(f"connecting to {DSN} and posting to {WEBHOOK}")
    assert _leaks(captured.getvalue()) == []
    [event] = _events(captured)
    assert event["event"].startswith("connecting to ")
    assert log.REDACTED in event["event"]


def test_secret_in_keyword_values_is_redacted_others_survive(captured: io.StringIO) -> None:
    """Secrets in keyword values vanish; non-secret fields keep their values."""
    log.get_logger("t").info("backup done", url=WEBHOOK, endpoint=f"s3 key {S3_SECRET}",
                             bucket="wicked-backups", files=12, tokens=120, dry_run=False)
    assert _leaks(captured.getvalue()) == []
    [event] = _events(captured)
    assert event["bucket"] == "wicked-backups"
    assert event["files"] == 12
    assert event["tokens"] == 120
    assert event["dry_run"] is False
    assert event["module"] == "t"


def test_secret_in_nested_structures_is_redacted(captured: io.StringIO) -> None:
    """Secrets nested in dicts, lists and tuples are replaced at any depth."""
    log.get_logger("t").info("settings", source={
        "kong": {"conn": DSN, "rows": 5, "hosts": ["db", S3_KEY_ID]},
        "notify": (WEBHOOK, "mailer"),
    })
    assert _leaks(captured.getvalue()) == []
    [event] = _events(captured)
    assert event["source"]["kong"]["rows"] == 5
    assert event["source"]["kong"]["hosts"][0] == "db"
    assert event["source"]["notify"][1] == "mailer"


def test_secret_in_logged_exception_is_redacted(captured: io.StringIO) -> None:
    """A traceback (log.exception) and an exception passed as a value are scrubbed."""
    logger = log.get_logger("t")
    try:
        raise RuntimeError(f"connect {DSN} failed with key {S3_SECRET}")
    except RuntimeError as exc:
        logger.exception("backup failed")
        logger.error("backup failed again", error=exc, exc_info=exc)
    text = captured.getvalue()
    assert _leaks(text) == []
    assert "RuntimeError" in text
    assert "Traceback" in text


def test_secret_in_bytes_paths_and_objects_is_redacted(captured: io.StringIO) -> None:
    """Values that are rendered by repr (bytes, paths, sets, objects) are scrubbed too."""
    log.get_logger("t").info("odd values", raw=S3_SECRET.encode(), path=Path("/x") / S3_KEY_ID,
                             names={WEBHOOK}, client=_Holder())
    assert _leaks(captured.getvalue()) == []
    assert "Client(url=" in captured.getvalue()


def test_dsn_password_alone_is_redacted(captured: io.StringIO) -> None:
    """The password of a configured DSN is redacted even when it appears on its own."""
    log.get_logger("t").warning(f"auth failed with {DSN_PASSWORD}", attempt=DSN_PASSWORD)
    assert DSN_PASSWORD not in captured.getvalue()


def test_unregistered_dsn_passwords_are_redacted_by_pattern(captured: io.StringIO) -> None:
    """URL and key=value passwords are scrubbed even when no config registered them."""
    log.get_logger("t").info("other database",
                             target="postgresql://wicked:OtherPassw0rd@h:5432/wicked",
                             conninfo="host=h user=wicked password=AnotherPw77 dbname=wicked")
    text = captured.getvalue()
    assert "OtherPassw0rd" not in text
    assert "AnotherPw77" not in text
    [event] = _events(captured)
    assert event["target"] == f"postgresql://wicked:{log.REDACTED}@h:5432/wicked"
    assert "host=h user=wicked" in event["conninfo"]


def test_secret_named_keys_are_redacted_numbers_kept(captured: io.StringIO) -> None:
    """Keys named like secrets lose string values (even unregistered) but keep numbers."""
    log.get_logger("t").info("keys", password="hunter2-unregistered", aeskey="deadbeefcafe",
                             authorization="Bearer abc.def.ghi", token_count=7,
                             credentials={"user": "kong", "pass": "pw-unregistered"})
    text = captured.getvalue()
    assert _leaks(text, ["hunter2-unregistered", "deadbeefcafe", "abc.def.ghi",
                         "pw-unregistered"]) == []
    [event] = _events(captured)
    assert event["token_count"] == 7
    assert event["password"] == log.REDACTED


def test_console_format_redacts_too() -> None:
    """The human console renderer gets the same redaction as JSON lines."""
    log.REDACTOR.add([S3_SECRET])
    buffer = io.StringIO()
    log.configure("info", "console", buffer)
    log.get_logger("t").info(f"key {S3_SECRET}", detail={"k": S3_SECRET}, files=3)
    text = buffer.getvalue()
    assert S3_SECRET not in text
    assert "files" in text
    assert not text.lstrip().startswith("{")


def test_configure_auto_on_non_tty_writes_json_lines() -> None:
    """auto picks JSON lines when the stream is not a terminal (sidecar logs)."""
    buffer = io.StringIO()
    log.configure("info", "auto", buffer)
    log.get_logger("mod").info("hello", n=1)
    [event] = _events(buffer)
    assert event["event"] == "hello"
    assert event["level"] == "info"
    assert event["module"] == "mod"
    assert "timestamp" in event


class _Terminal(io.StringIO):
    """A buffer that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_configure_auto_on_tty_writes_console_lines() -> None:
    """auto picks the human console format, in colour, when the stream is a terminal."""
    buffer = _Terminal()
    log.configure("info", "auto", buffer)
    log.get_logger("mod").info("hello", n=1)
    text = buffer.getvalue()
    assert "hello" in text
    assert "\x1b[" in text
    assert not text.lstrip().startswith("{")


def test_configure_default_stream_is_the_current_stderr(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Without a stream, events go to whatever sys.stderr is when they are written."""
    log.configure("info", "json")
    log.get_logger("mod").info("to stderr")
    out, err = capsys.readouterr()
    assert out == ""
    assert json.loads(err)["event"] == "to stderr"


def test_configure_level_filters_lower_levels() -> None:
    """At level warning, info and debug events are dropped."""
    buffer = io.StringIO()
    log.configure("warning", "json", buffer)
    logger = log.get_logger("t")
    logger.debug("d")
    logger.info("i")
    logger.warning("w")
    assert [e["event"] for e in _events(buffer)] == ["w"]


def test_redactor_short_values_are_not_registered() -> None:
    """Values under 4 characters are ignored: they would mask ordinary words."""
    redactor = log.Redactor(["ab", "secretvalue"])
    assert redactor.scrub("about a secretvalue") == f"about a {log.REDACTED}"


# --- the real program ---------------------------------------------------------------------------


def _volume_and_config(tmp_path: Path) -> Path:
    return minimal_volume_and_config(tmp_path)


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WICKED_DR_")}
    env.update(extra)
    return env


def _closed_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_backup_subprocess_verbose_logs_no_secret(tmp_path: Path) -> None:
    """A real `wicked-dr -v backup` with secrets in env and a secret file logs none of them."""
    config = _volume_and_config(tmp_path)
    key_id_file = tmp_path / "key-id"
    key_id_file.write_text(S3_KEY_ID + "\n", encoding="utf-8")
    env = _env({"WICKED_DR_REPOSITORY__SECRET_ACCESS_KEY": S3_SECRET,
                "WICKED_DR_REPOSITORY__ACCESS_KEY_ID_FILE": str(key_id_file),
                "WICKED_DR_NOTIFY__WEBHOOK_URL": WEBHOOK})
    proc = subprocess.run([sys.executable, "-m", "wicked_dr.cli", "--config", str(config),
                           "-v", "backup", "--json"], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    levels = {json.loads(line)["level"] for line in proc.stderr.splitlines()}
    assert "debug" in levels  # -v really turned debug logging on
    assert _leaks(proc.stdout + proc.stderr) == []


def test_backup_subprocess_failing_dsn_error_has_no_password(tmp_path: Path) -> None:
    """A backup whose Kong DSN fails prints an error and logs without the DSN's password."""
    config = _volume_and_config(tmp_path)
    dsn = f"postgresql://kong:{DSN_PASSWORD}@127.0.0.1:{_closed_loopback_port()}/kong"
    env = _env({"WICKED_DR_KONG_TOKENS__DSN": dsn,
                "WICKED_DR_REPOSITORY__SECRET_ACCESS_KEY": S3_SECRET,
                "WICKED_DR_KONG_TOKENS__CONNECT_TIMEOUT_S": "2"})
    proc = subprocess.run([sys.executable, "-m", "wicked_dr.cli", "--config", str(config),
                           "-v", "--json", "backup"], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=120, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "wicked-dr: error: " in proc.stderr
    assert json.loads(proc.stdout)["exit_code"] == 1
    assert _leaks(proc.stdout + proc.stderr, [dsn, DSN_PASSWORD, S3_SECRET]) == []


def test_cli_error_message_with_dsn_password_is_scrubbed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A DSN echoed in an error message at the CLI edge loses its password (text and --json)."""
    config = _volume_and_config(tmp_path)
    # Not a valid repository URL, and never registered as a secret: only the pattern helps.
    monkeypatch.setenv("WICKED_DR_REPOSITORY__URL", "postgresql://kong:EdgePassw0rd@db/kong")
    assert main(["--json", "--config", str(config), "config", "validate"]) == 2
    out, err = capsys.readouterr()
    assert "EdgePassw0rd" not in out + err
    assert "postgresql://kong:***@db/kong" in err
    assert "postgresql://kong:***@db/kong" in json.loads(out)["error"]


def test_cli_error_message_subprocess_dsn_password_is_scrubbed(tmp_path: Path) -> None:
    """The same scrubbing holds in a real process."""
    config = _volume_and_config(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "wicked_dr.cli", "--config", str(config),
                           "config", "validate"], capture_output=True, text=True,
                          env=_env({"WICKED_DR_REPOSITORY__URL": DSN}), cwd=REPO_ROOT,
                          timeout=60, check=False)
    assert proc.returncode == 2
    assert "repository.url" in proc.stderr
    assert DSN_PASSWORD not in proc.stdout + proc.stderr
