"""Content-addressed reuse of `nimbuild build`'s steps.

Each step (export, manifest, render) has a key: the sha256 of what it depends
on (the recipe fields that matter to it, the model files' bytes, the toolchain
versions, the previous step's output). A step whose key matches its record in
``OUT/.nimbuild-cache/<step>.json`` and whose recorded outputs are still there,
unchanged in size and mtime, is reused; anything else is rebuilt. Hashing big
model files is skipped when their (size, mtime) are those already hashed, so a
no-change rebuild costs stat calls, not reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from nimbuild.fsutil import sha256_file, write_json

CACHE_DIR = ".nimbuild-cache"
TOOLCHAIN_DISTRIBUTIONS = (
    "nimbuild",
    "torch",
    "transformers",
    "onnx",
    "onnxruntime-gpu",
    "onnxruntime",
    "onnxscript",
    "tokenizers",
    "polygraphy",
    "tensorrt",
    "numpy",
)


def toolchain_versions() -> dict[str, str]:
    """Installed versions of what shapes the artifacts (package metadata: no heavy import)."""
    from importlib import metadata

    versions = {}
    for dist in TOOLCHAIN_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _stat_sig(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


class HashMemo:
    """sha256 of files, remembered by (path, size, mtime_ns) across runs in one JSON file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.entries: dict[str, list] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        self.dirty = False

    def sha256(self, file: Path) -> str:
        key = str(file.resolve())
        sig = _stat_sig(file)
        hit = self.entries.get(key)
        if hit and hit[:2] == sig:
            return hit[2]
        digest = sha256_file(file)
        self.entries[key] = [*sig, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.dirty:
            write_json(self.path, self.entries)
            self.dirty = False


# The light modules whose code decides what an export contains, beside nimbuild/builder/ itself.
EXPORT_SOURCE_MODULES = ("thresholds.py", "export_layout.py", "cpu_isa.py", "recipe.py")


def export_source_digest() -> str:
    """sha256 of the source that makes and judges the graphs (nimbuild/builder/ and ``EXPORT_SOURCE_MODULES``).

    nimbuild's version number alone misses a development checkout's edits: a changed quantization
    scheme, with the same version, would otherwise reuse the old graphs. A few hundred kB of source,
    read in milliseconds, so a no-change rebuild stays a matter of stat calls and this.
    """
    package = Path(__file__).resolve().parents[1]
    files = sorted((package / "builder").rglob("*.py")) + [package / name for name in EXPORT_SOURCE_MODULES]
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def tree_digest(root: Path, memo: HashMemo, exclude: Iterable[str] = (".git",)) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (or of ``root`` itself when a file)."""
    root = Path(root)
    if root.is_file():
        return {root.name: memo.sha256(root)}
    skip = set(exclude)
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and not (set(rel.parts) & skip):
            out[rel.as_posix()] = memo.sha256(path)
    return out


@dataclass
class StepRecord:
    step: str
    key: str
    outputs: dict[str, list[int]]  # relative path -> [size, mtime_ns]
    info: dict

    def to_dict(self) -> dict:
        return {"step": self.step, "key": self.key, "outputs": self.outputs, "info": self.info}


class StepCache:
    """Records of the steps done in one output folder."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.dir = self.out_dir / CACHE_DIR
        self.memo = HashMemo(self.dir / "hashes.json")

    def _record_path(self, step: str) -> Path:
        return self.dir / f"{step}.json"

    def lookup(self, step: str, key: str) -> StepRecord | None:
        """The record of ``step`` if it was done with ``key`` and its outputs are untouched."""
        try:
            data = json.loads(self._record_path(step).read_text())
        except (OSError, ValueError):
            return None
        if data.get("key") != key:
            return None
        for rel, sig in data.get("outputs", {}).items():
            path = self.out_dir / rel
            try:
                if _stat_sig(path) != sig:
                    return None
            except OSError:
                return None
        return StepRecord(step=step, key=key, outputs=data["outputs"], info=data.get("info", {}))

    def outputs_of(self, paths: Iterable[Path]) -> dict[str, list[int]]:
        out = {}
        for p in paths:
            p = Path(p)
            files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else []
            for f in files:
                if CACHE_DIR in f.relative_to(self.out_dir).parts:
                    continue
                out[f.relative_to(self.out_dir).as_posix()] = _stat_sig(f)
        return out

    def store(self, step: str, key: str, outputs: Iterable[Path], info: Mapping | None = None) -> StepRecord:
        record = StepRecord(step=step, key=key, outputs=self.outputs_of(outputs), info=dict(info or {}))
        write_json(self._record_path(step), record.to_dict())
        return record

    def forget(self, step: str) -> None:
        self._record_path(step).unlink(missing_ok=True)

    def save(self) -> None:
        self.memo.save()
