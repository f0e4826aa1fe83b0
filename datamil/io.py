"""Atomic writes: an artifact either appears whole or not at all (write to a temp path, then rename);
and a file lock for a cache that several processes may try to build at once.

Temp paths are created with the default permissions (files 0666, folders 0777, less the user's umask),
not tempfile's private 0600 / 0700: the rename publishes them as they are, and an output must be as
readable as any file the user writes.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _create_sibling(path: Path, suffix: str, create: Any) -> Any:
    """create(tmp) on a fresh hidden sibling name of `path`, retried while the name is taken."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}{suffix}")
        try:
            return create(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name next to {path}")


def temp_file(path: str | os.PathLike, suffix: str = "") -> tuple[int, Path]:
    """(fd, temp path) of a new file next to `path`, mode 0666 & ~umask (mkstemp would make it 0600)."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    return _create_sibling(path, suffix, lambda tmp: (os.open(tmp, flags, 0o666), tmp))


def temp_dir(path: str | os.PathLike) -> Path:
    """A new folder next to `path`, mode 0777 & ~umask (mkdtemp would make it 0700)."""
    path = Path(path)

    def create(tmp: Path) -> Path:
        tmp.mkdir(0o777)
        return tmp

    return _create_sibling(path, "", create)


@contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(path)
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} exists; remove it or pass overwrite=True")
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_npz(path: str | os.PathLike, **arrays: Any) -> Path:
    """np.savez(path, **arrays), atomically."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """torch.save(obj, path), atomically (torch is imported only here)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the body: jobs that start together (the
    proxy seeds of one select, the methods of one benchmark task) build a shared cache once, and the others
    wait, then read it. The lock is advisory (fcntl) and released when the file closes, also on a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield
