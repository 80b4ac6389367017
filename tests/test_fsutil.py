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


# ----------------------------------------------------------------------------- digests and JSON


def test_sha256_file_is_the_sha256_of_the_bytes(tmp_path):
    import hashlib

    from nimbuild.fsutil import sha256_file

    data = os.urandom(3 * (1 << 20) + 17)  # several read chunks and a ragged end
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_json_digest_ignores_key_order_and_keeps_unicode():
    from nimbuild.fsutil import json_digest

    assert json_digest({"b": 1, "a": [1, 2]}) == json_digest({"a": [1, 2], "b": 1})
    assert json_digest({"q": "naïve"}) != json_digest({"q": "naive"})
    assert len(json_digest({})) == 64


def test_write_json_is_the_one_style(tmp_path):
    from nimbuild.fsutil import write_json

    path = tmp_path / "r" / "report.json"
    write_json(path, {"z": 1, "a": {"é": [tmp_path / "x"]}})
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and text.index('"a"') < text.index('"z"')
    assert "é" in text and "\\u00e9" not in text  # UTF-8, not escaped
    assert f'"{tmp_path / "x"}"' in text  # paths are written as strings
    assert text.splitlines()[1].startswith('  "a"')  # indent 2


def test_write_verified_refuses_other_bytes_and_leaves_nothing(tmp_path):
    import hashlib
    import io

    from nimbuild.errors import NimbuildError
    from nimbuild.fsutil import write_verified

    data = b"engine bytes" * 1000
    good = hashlib.sha256(data).hexdigest()
    dst = tmp_path / "cache" / "model.plan"
    assert write_verified(io.BytesIO(data), dst, sha256=good, size=len(data)) == good
    assert dst.read_bytes() == data
    for kwargs, words in (({"sha256": "0" * 64}, "does not match"), ({"size": len(data) + 1}, "the manifest says")):
        other = tmp_path / "other" / "model.plan"
        with pytest.raises(NimbuildError, match=words):
            write_verified(io.BytesIO(data), other, what="https://example.invalid/model.plan", **kwargs)
        assert not other.parent.exists() or list(other.parent.iterdir()) == []
