"""A JIT build that was killed leaves torch's FileBaton ``lock`` behind: the loader clears it, a live one it waits for."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import pytest

from rtl_kernels.backends import extension


def _lock(tmp_path, age_s: float):
    lock = tmp_path / "lock"
    lock.touch()
    then = time.time() - age_s
    os.utime(lock, (then, then))
    return lock


def test_a_stale_lock_is_removed_with_a_warning(tmp_path, caplog):
    lock = _lock(tmp_path, extension.STALE_LOCK_S + 5)
    with caplog.at_level(logging.WARNING, logger=extension.logger.name):
        assert extension.clear_stale_lock(tmp_path)
    assert not lock.exists()
    assert "stale build lock" in caplog.text and str(lock) in caplog.text


def test_a_lock_a_process_holds_open_is_kept_however_old(tmp_path):
    lock = _lock(tmp_path, 10 * extension.STALE_LOCK_UNSEEN_S)
    fd = os.open(lock, os.O_RDONLY)  # as torch's FileBaton holds it during a build
    try:
        if extension._lock_held(lock) is None:
            pytest.skip("no /proc: holders cannot be seen here")
        assert extension._lock_held(lock) is True
        assert not extension.clear_stale_lock(tmp_path)
        assert lock.exists()
    finally:
        os.close(fd)
    assert extension._lock_held(lock) is False


def test_a_fresh_lock_is_kept_and_no_lock_is_nothing_to_do(tmp_path):
    lock = _lock(tmp_path, 0)
    assert not extension.clear_stale_lock(tmp_path)
    assert lock.exists()
    lock.unlink()
    assert not extension.clear_stale_lock(tmp_path)


def test_without_proc_only_a_much_older_lock_is_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(extension, "_lock_held", lambda path: None)
    lock = _lock(tmp_path, extension.STALE_LOCK_S + 5)
    assert not extension.clear_stale_lock(tmp_path)
    os.utime(lock, (0, 0))
    assert extension.clear_stale_lock(tmp_path)


def test_the_wait_ends_when_the_holder_releases_or_its_lock_goes_stale(tmp_path, monkeypatch):
    monkeypatch.setattr(extension, "LOCK_POLL_S", 0.01)
    lock = _lock(tmp_path, 0)
    releaser = threading.Timer(0.1, lock.unlink)
    releaser.start()
    extension.wait_for_build_lock(tmp_path)  # a live build: waits until its lock is gone
    releaser.join()
    assert not lock.exists()
    monkeypatch.setattr(extension, "STALE_LOCK_S", 0.2)
    lock = _lock(tmp_path, 0)
    extension.wait_for_build_lock(tmp_path)  # nobody holds it: cleared once it is old enough
    assert not lock.exists()


def test_the_jit_load_proceeds_past_a_stale_lock_without_rebuilding():
    from torch.utils import cpp_extension

    name = extension.CPU_SPEC.jit_name
    if extension.load_cpu() is None or name not in cpp_extension.JIT_EXTENSION_VERSIONER.entries:
        pytest.skip("the CPU extension was not JIT-built in this process (a reload would build it)")
    build_dir = cpp_extension._get_build_directory(name, verbose=False)
    lock = _lock(Path(build_dir), extension.STALE_LOCK_S + 5)
    result: dict = {}
    loader = threading.Thread(target=lambda: result.setdefault("module", extension._jit(extension.CPU_SPEC)), daemon=True)
    try:
        loader.start()
        loader.join(timeout=120)  # without the fix torch's FileBaton waits here forever
        assert not loader.is_alive(), "the load is still waiting on the stale lock"
        assert result["module"].supported_isas()
        assert not lock.exists()
    finally:
        lock.unlink(missing_ok=True)
