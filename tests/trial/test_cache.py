import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from study.trial import cache


def _writer(payload: bytes, calls: list):
    def create(tmp: Path) -> None:
        calls.append(tmp)
        tmp.write_bytes(payload)

    return create


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith("tmp"))


def test_get_or_create_builds_once_then_hits(tmp_path):
    path = tmp_path / "sub" / "entry.bin"
    calls: list = []
    assert cache.get_or_create(path, _writer(b"hello" * 100, calls)) == path
    assert path.read_bytes() == b"hello" * 100
    assert (tmp_path / "sub" / "entry.bin.sha256").read_text().strip() == cache.sha256_file(path)
    assert cache.is_valid(path)

    def must_not_run(tmp):
        raise AssertionError("create called on a cache hit")

    assert cache.get_or_create(path, must_not_run) == path
    assert len(calls) == 1
    assert _leftovers(path.parent) == []


def test_failed_create_leaves_no_entry_and_no_temp_file(tmp_path):
    path = tmp_path / "entry.bin"

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise RuntimeError("crash while building")

    with pytest.raises(RuntimeError):
        cache.get_or_create(path, broken)
    assert not path.exists() and not cache.is_valid(path)
    assert _leftovers(tmp_path) == []
    calls: list = []
    cache.get_or_create(path, _writer(b"ok", calls))
    assert path.read_bytes() == b"ok" and len(calls) == 1


@pytest.mark.parametrize("corrupt", ["truncate", "bitflip", "missing_sidecar"])
def test_corrupted_entry_is_detected_and_rebuilt(tmp_path, corrupt):
    path = tmp_path / "entry.bin"
    payload = bytes(range(256)) * 64
    calls: list = []
    cache.get_or_create(path, _writer(payload, calls))
    if corrupt == "truncate":
        path.write_bytes(payload[:1000])
    elif corrupt == "bitflip":
        data = bytearray(path.read_bytes())
        data[5000] ^= 0x01
        path.write_bytes(bytes(data))
    else:
        (tmp_path / "entry.bin.sha256").unlink()
    assert not cache.is_valid(path)
    cache.get_or_create(path, _writer(payload, calls))
    assert len(calls) == 2, "the corrupted entry must be rebuilt"
    assert path.read_bytes() == payload and cache.is_valid(path)


def test_bitflip_after_verification_in_this_process_is_detected(tmp_path):
    """is_valid memoises verified (path, size, mtime); a same-size rewrite must still be caught.

    File mtimes come from a coarse clock (a few ms), so the rewrite's mtime is moved one
    second on explicitly: the memo is meant to skip rehashing an untouched file, and a
    same-size rewrite within one clock tick of a verification is outside what it can see.
    """
    path = tmp_path / "entry.bin"
    cache.get_or_create(path, _writer(b"a" * 4096, []))
    assert cache.is_valid(path)  # memoised now
    stat = path.stat()
    path.write_bytes(b"b" + b"a" * 4095)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert not cache.is_valid(path)


def _build_concurrently(path: str, marker: str, barrier) -> str:
    def create(tmp: Path) -> None:
        with open(marker, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # hold the lock long enough for the other process to contend
        tmp.write_bytes(b"built once")

    barrier.wait()
    result = cache.get_or_create(Path(path), create)
    return result.read_bytes().decode()


def test_concurrent_processes_build_an_entry_exactly_once(tmp_path):
    path, marker = tmp_path / "entry.bin", tmp_path / "marker.txt"
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(2)
        with ctx.Pool(2) as pool:
            results = pool.starmap(_build_concurrently, [(str(path), str(marker), barrier)] * 2)
    assert results == ["built once", "built once"]
    assert len(marker.read_text().splitlines()) == 1
    assert cache.is_valid(path)
    assert _leftovers(tmp_path) == []


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "deep" / "result.json"
    cache.atomic_write(path, lambda tmp: tmp.write_text("first"))
    cache.atomic_write(path, lambda tmp: tmp.write_text("second"))
    assert path.read_text() == "second"
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]

    def crash(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        cache.atomic_write(path, crash)
    assert path.read_text() == "second", "a failed write must not touch the existing file"
    assert sorted(p.name for p in path.parent.iterdir()) == ["result.json"]
