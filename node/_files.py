"""Small file helpers: atomic writes with explicit modes (nothing half-written)."""

from __future__ import annotations

import os
import pathlib
import tempfile


def write_atomic(path: pathlib.Path, data: bytes, mode: int = 0o600, *, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync, and rename.

    The file has ``mode`` from the moment it exists (never world-readable for a
    moment). Without ``overwrite`` an existing file is refused.
    """
    path = pathlib.Path(path)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} already exists")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile
            os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_input(path: str, limit: int) -> bytes:
    """Read a user-named input file (``-`` for stdin), refusing anything over ``limit``."""
    if path == "-":
        import sys

        data = sys.stdin.buffer.read(limit + 1)
    else:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: larger than {limit} bytes")
    return data
