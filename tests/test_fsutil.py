"""Atomic writes: all or nothing, and readable by others like any ordinary file."""

from __future__ import annotations

import os
import stat

import pytest

from nimbuild.fsutil import atomic_write_bytes, atomic_write_text, staging_dir


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "manifest.yaml"
    atomic_write_text(target, "a: 1\n")
    atomic_write_bytes(target, b"a: 2\n")
    assert target.read_bytes() == b"a: 2\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["manifest.yaml"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_written_files_and_staged_dirs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
        with staging_dir(tmp_path / "out") as stage:
            (stage / "g.txt").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755


def test_staging_dir_removed_on_failure_and_old_result_kept(tmp_path):
    final = tmp_path / "out"
    with staging_dir(final) as stage:
        (stage / "ok").write_text("1")
    with pytest.raises(RuntimeError), staging_dir(final) as stage:
        (stage / "half").write_text("2")
        raise RuntimeError("export failed")
    assert sorted(p.name for p in final.iterdir()) == ["ok"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
