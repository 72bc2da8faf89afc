"""Disk full (ENOSPC) while writing a cache entry or an output file: a clear OSError, no temp file left
behind, and no half-written file is ever read back (results/faults/ecosystem.md, fault table)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from study.trial import cache


def _disk_full(after_bytes: bytes):
    def write(tmp: Path) -> None:
        tmp.write_bytes(after_bytes)  # part of the content made it to disk
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    return write


def test_a_cache_entry_cut_short_by_a_full_disk_is_never_valid_and_is_rebuilt(tmp_path):
    entry = tmp_path / "teachers" / "abc.pt"
    with pytest.raises(OSError, match="No space left on device"):
        cache.get_or_create(entry, _disk_full(b"half"))
    assert not cache.is_valid(entry) and not entry.exists()
    assert [p.name for p in entry.parent.iterdir() if p.suffix != ".lock"] == []  # no temp files
    cache.get_or_create(entry, lambda tmp: tmp.write_bytes(b"whole entry"))  # space again: rebuilt
    assert cache.is_valid(entry) and entry.read_bytes() == b"whole entry"


def test_a_full_disk_while_writing_the_checksum_leaves_an_invalid_entry(tmp_path, monkeypatch):
    entry = tmp_path / "acts.npy"
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.suffix == ".sha256tmp":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="No space left on device"):
        cache.get_or_create(entry, lambda tmp: tmp.write_bytes(b"complete data"))
    monkeypatch.undo()
    assert entry.exists() and not cache.is_valid(entry)  # no checksum: never loaded as it is
    assert not list(tmp_path.glob(".*tmp"))
    calls = []
    cache.get_or_create(entry, lambda tmp: calls.append(tmp.write_bytes(b"complete data")))
    assert calls and cache.is_valid(entry)


def test_an_output_file_cut_short_keeps_the_previous_version(tmp_path):
    target = tmp_path / "result.json"
    target.write_text('{"old": true}')
    with pytest.raises(OSError, match="No space left on device"):
        cache.atomic_write(target, _disk_full(b'{"new": tr'))
    assert target.read_text() == '{"old": true}' and sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
