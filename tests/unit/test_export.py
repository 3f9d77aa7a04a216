"""``export --tar -`` into a real pipe: a reader that stops after the end of the tar is
success, a reader that closes early is one clear error line, and Python never complains about
a broken pipe at exit."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from wicked_dr.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
ERROR_PREFIX = "wicked-dr: error: "
RECORD = tarfile.RECORDSIZE
SMALL_PIPE = 4096  # the smallest pipe buffer Linux allows (one page)

# Reads the tar from stdin block by block through its end-of-archive marker (two zero blocks),
# exactly like tar, then closes stdin at once and prints how many bytes it read.
READ_TO_END_MARKER = """
import os, sys
total = zeros = 0
while zeros < 2:
    block = b""
    while len(block) < 512:
        chunk = os.read(0, 512 - len(block))
        if not chunk:
            sys.exit(3)
        block += chunk
    total += 512
    zeros = zeros + 1 if block == bytes(512) else 0
os.close(0)
print(total)
"""


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("WICKED_DR_")}


def _export_argv(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "wicked_dr.cli", "--config", str(config), *extra,
            "export", "latest", "--tar", "-"]


def _backup(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(config), "backup"]) == 0
    capsys.readouterr()


def _members_end(config: Path, capsys: pytest.CaptureFixture[str]) -> int:
    """Where the end-of-archive marker of ``export latest`` starts (after the last member)."""
    tar_path = config.parent / "probe.tar"
    assert main(["--config", str(config), "export", "latest", "--tar", str(tar_path)]) == 0
    capsys.readouterr()
    with tarfile.open(tar_path) as tar:
        tar.getmembers()
        end = int(tar.offset)
    tar_path.unlink()
    return end


def _pipeline(writer_argv: list[str], reader_argv: list[str], *,
              pipe_size: int | None = None) -> tuple[subprocess.Popen[bytes],
                                                     subprocess.Popen[bytes]]:
    """``writer | reader`` as two real processes joined by one pipe (of ``pipe_size``)."""
    read_end, write_end = os.pipe()
    try:
        if pipe_size is not None:
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, pipe_size)
        writer = subprocess.Popen(writer_argv, stdout=write_end, stderr=subprocess.PIPE,
                                  stdin=subprocess.DEVNULL, env=_env(), cwd=REPO_ROOT)
        reader = subprocess.Popen(reader_argv, stdin=read_end, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
    finally:
        os.close(read_end)
        os.close(write_end)
    return writer, reader


def _finish(proc: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return (proc.returncode, (out or b"").decode(errors="replace"),
            (err or b"").decode(errors="replace"))


def test_export_stdout_into_tar_t_exits_0(setup: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The README's `wicked-dr export latest --tar - | tar -t` lists the snapshot; both exit 0
    and wicked-dr prints no error."""
    _backup(setup, capsys)
    writer, reader = _pipeline(_export_argv(setup), ["tar", "-t"])
    reader_code, listing, reader_err = _finish(reader)
    code, _, err = _finish(writer)
    assert reader_code == 0, reader_err
    assert sorted(listing.split()) == ["meta.json", "users/", "users/_index.json"]
    assert code == 0, err
    assert "error" not in err and "Exception ignored" not in err


def test_export_stdout_reader_closing_after_end_marker_exits_0(
        setup: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A reader that closes the pipe right after the end-of-archive blocks, while the record
    padding is still being written (EPIPE on the padding), got the whole tar: exit 0."""
    _backup(setup, capsys)
    # Grow the tar so that its end marker sits at the start of a record: the padding after
    # it (8.5 KiB) cannot fit into the 4 KiB pipe once the reader has gone.
    end = _members_end(setup, capsys)
    filler = (512 - end - 3 * 512) % RECORD or RECORD
    (setup.parent / "volume" / "filler.json").write_bytes(b"x" * filler)
    _backup(setup, capsys)
    end = _members_end(setup, capsys)
    assert end % RECORD == 512 and RECORD - (end + 1024) % RECORD > SMALL_PIPE
    writer, reader = _pipeline(_export_argv(setup),
                               [sys.executable, "-c", READ_TO_END_MARKER],
                               pipe_size=SMALL_PIPE)
    reader_code, read, reader_err = _finish(reader)
    code, _, err = _finish(writer)
    assert reader_code == 0, reader_err
    assert int(read) == end + 1024
    assert code == 0, err
    assert "error" not in err and "Exception ignored" not in err


@pytest.mark.parametrize("json_flag", [(), ("--json",)], ids=["human", "json"])
def test_export_stdout_reader_closing_early_one_line_error_exit_1(
        setup: Path, capsys: pytest.CaptureFixture[str], json_flag: tuple[str, ...]) -> None:
    """`export --tar - | head -c 1000` fails with one line saying the reader closed stdout
    before the end of the tar (not an "I/O error"), exit 1, and no BrokenPipeError noise at
    interpreter exit."""
    (setup.parent / "volume" / "big.bin").write_bytes(os.urandom(1024 * 1024))
    _backup(setup, capsys)
    writer, reader = _pipeline(_export_argv(setup, *json_flag), ["head", "-c", "1000"])
    reader_code, head, _ = _finish(reader)
    code, _, err = _finish(writer)
    assert reader_code == 0 and len(head) > 0
    assert code == 1, err
    assert "Exception ignored" not in err and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(ERROR_PREFIX)]
    assert len(lines) == 1, err
    match = re.fullmatch(rf"{ERROR_PREFIX}export: the reader closed stdout after (\d+) bytes, "
                         r"before the end of the tar", lines[0])
    assert match, lines[0]
    assert 1000 <= int(match.group(1)) < 1024 * 1024
