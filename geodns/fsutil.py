"""Files replaced whole and durably: the one atomic writer.

Zone files, drains, saved health state and latency state are all written the
same way: a temporary file beside the target, fsync, rename over the target,
fsync the directory. A crash leaves the old file or the new one, never half
of either, and a rename that returned survives a power cut.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from typing import Any

__all__ = ["sync_directory", "write_atomic", "write_json_atomic"]


def write_atomic(path: str | os.PathLike[str], data: str | bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with `data` (text is written as UTF-8), creating its directory
    if needed; the file gets `mode`. Raises OSError; the old file is then untouched."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    sync_directory(directory)


def write_json_atomic(path: str | os.PathLike[str], doc: Any, *, mode: int = 0o600) -> None:
    """`write_atomic` of `doc` as JSON (indented, sorted keys, no NaN). Raises OSError,
    or ValueError/TypeError for what JSON cannot hold (nothing is written then)."""
    text = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n"
    write_atomic(path, text, mode=mode)


def sync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename or removal in `directory` durable. Raises OSError, except where
    the filesystem does not support fsync on a directory."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
    finally:
        os.close(fd)
