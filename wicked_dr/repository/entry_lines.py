"""The text of one entry: its manifest line (docs/format.md section 7) and its stat-cache line.

Standard library only: scan workers format these lines themselves, so the main process does
no per-file work for an unchanged file or a small new one. ``manifest.Entry`` encodes through
the same functions, so there is one definition of the format.
"""

from __future__ import annotations

import json

_quote = json.encoder.encode_basestring_ascii


def field(text: str) -> str:
    """A name or directory as a tab-separated field: JSON-quoted only when it has to be."""
    if text.startswith('"') or "\t" in text or "\n" in text or "\r" in text:
        return str(_quote(text))
    return text


def unfield(text: str) -> str:
    """The inverse of ``field``."""
    return str(json.loads(text)) if text.startswith('"') else text


def _head(path: str, kind: str, mode: int, uid: int, gid: int, mtime_ns: int) -> str:
    return (f'{{"path":{_quote(path)},"type":"{kind}","mode":{mode},"uid":{uid},'
            f'"gid":{gid},"mtime_ns":{mtime_ns}')


def file_line(path: str, mode: int, uid: int, gid: int, mtime_ns: int, size: int, sha256: str,
              blobs: tuple[str, ...] | None = None) -> str:
    """A file's manifest line; ``blobs`` None means the implied ones (one blob = the file)."""
    line = _head(path, "file", mode, uid, gid, mtime_ns) + f',"size":{size},"sha256":"{sha256}"'
    if blobs is not None:
        line += ',"blobs":[' + ",".join(f'"{b}"' for b in blobs) + "]"
    return line + "}\n"


def dir_line(path: str, mode: int, uid: int, gid: int, mtime_ns: int) -> str:
    """A directory's manifest line."""
    return _head(path, "dir", mode, uid, gid, mtime_ns) + "}\n"


def symlink_line(path: str, mode: int, uid: int, gid: int, mtime_ns: int, target: str) -> str:
    """A symbolic link's manifest line."""
    return _head(path, "symlink", mode, uid, gid, mtime_ns) + f',"target":{_quote(target)}}}\n'


def stat_key(size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    """What identifies an unchanged file: size, mtime, ctime and inode."""
    return f"{size}:{mtime_ns}:{ctime_ns}:{inode}"


def stat_line(name: str, key: str, manifest_line: str) -> str:
    """One file's stat-cache line (``manifest_line`` ends with a newline)."""
    return f"{field(name)}\t{key}\t{manifest_line}"
