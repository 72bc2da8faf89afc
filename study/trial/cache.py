"""Content-verified, concurrency-safe file cache for teachers and activations.

Every entry is written to a temp file in the same folder, hashed, fsynced and
renamed into place; its SHA-256 goes into a `<name>.sha256` sidecar written
after it. An entry is valid only when the sidecar matches the file, so a
truncated or corrupted file is detected, deleted and rebuilt, never loaded.
A file lock per entry makes concurrent trials (processes, Ray workers, nodes
sharing a folder) build each entry once: the others wait, then load it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

log = logging.getLogger(__name__)

_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> digest, checked this process


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _fsync_replace(tmp: Path, dest: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)


def is_valid(path: Path) -> bool:
    """True when `path` exists and its content matches the recorded SHA-256."""
    sidecar = _sidecar(path)
    if not (path.is_file() and sidecar.is_file()):
        return False
    stat = path.stat()
    memo_key = (str(path), stat.st_size, stat.st_mtime_ns)
    expected = sidecar.read_text().strip()
    if _VERIFIED.get(memo_key) == expected:
        return True
    if sha256_file(path) != expected:
        return False
    _VERIFIED[memo_key] = expected
    return True


def get_or_create(path: Path, create: Callable[[Path], None], what: str = "cache entry") -> Path:
    """Return `path` once it holds a verified entry, building it with `create(tmp_path)` if needed.

    `create` writes the entry to the temp path it is given; it runs at most once
    across concurrent callers. A corrupt entry is reported, removed and rebuilt.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_valid(path):
        return path
    with FileLock(str(path) + ".lock"):
        if is_valid(path):  # someone else built it while we waited
            return path
        if path.exists():
            log.warning("%s %s failed its integrity check; rebuilding", what, path)
        for stale in (path, _sidecar(path)):
            stale.unlink(missing_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        side_tmp = tmp.with_suffix(".sha256tmp")
        try:
            create(tmp)
            digest = sha256_file(tmp)
            _fsync_replace(tmp, path)
            side_tmp.write_text(digest + "\n")  # a full disk here leaves an entry without sidecar: invalid, rebuilt
            _fsync_replace(side_tmp, _sidecar(path))
        finally:
            tmp.unlink(missing_ok=True)
            side_tmp.unlink(missing_ok=True)
    return path


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write a (non-cache) file atomically: `write(tmp)` then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        _fsync_replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
