"""``create-model-store`` and ``download-to-cache``, as in NIM containers: one profile, on disk, verified.

Runtime side: a serving image has ``nimbuild[runtime]`` only, so nothing here
imports onnx or tritonclient. A repository pre-rendered by ``nimbuild render``
(``<manifest folder>/triton/<profile name>/``) carries its templates' contexts,
so the store is re-rendered from that record; without one, the graph's inputs
are read by :mod:`nimbuild.runtime.triton_repo.onnx_io`'s light reader.

Cache layout (shared with ``nimbuild.runtime.selection.is_cached``): a file of
the manifest at ``<relpath>`` is cached at ``$NIM_CACHE_PATH/<relpath>``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from nimbuild.errors import NimbuildError
from nimbuild.safe_text import child

ENV_CACHE = "NIM_CACHE_PATH"


@dataclass
class MaterializedStore:
    """A Triton model store for one profile (what ``serve``'s Triton backend starts)."""

    store: Path
    profile_id: str
    profile_name: str
    model_name: str  # the graph: send token tensors here
    ensemble_name: str | None  # raw text in, logits out (None without a tokenizer)
    tokenizer_name: str | None
    max_batch_size: int
    max_queue_delay_us: int
    sources: dict[str, str] = field(default_factory=dict)  # manifest relpath -> "cache" | "manifest"
    reused_record: bool = False
    schema_checked: bool = False

    def to_dict(self) -> dict:
        return {
            "store": str(self.store),
            "profile_id": self.profile_id,
            "profile_name": self.profile_name,
            "model_name": self.model_name,
            "ensemble_name": self.ensemble_name,
            "tokenizer_name": self.tokenizer_name,
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_us": self.max_queue_delay_us,
            "sources": self.sources,
            "reused_record": self.reused_record,
            "schema_checked": self.schema_checked,
        }


# --------------------------------------------------------------------------- profiles


def resolve_profile(manifest, ref: str):
    """The profile named by a full ID, a unique ID prefix, or a name: NIM_MODEL_PROFILE's rule
    (:func:`nimbuild.runtime.selection.match_profiles`)."""
    from nimbuild.runtime.selection import MIN_PREFIX, match_profiles

    ref = (ref or "").strip()
    if not ref:
        raise NimbuildError("no profile given", hint="pass --profile with an ID, an ID prefix or a name")
    matches = match_profiles(ref, manifest.profiles)
    if len(matches) > 1:
        raise NimbuildError(
            f"profile prefix {ref!r} matches {len(matches)} profiles: {', '.join(p.name for p in matches)}",
            hint="give more characters of the ID",
        )
    if not matches:
        known = ", ".join(f"{p.id[:12]} ({p.name})" for p in manifest.profiles) or "none"
        short = f" (an ID prefix needs at least {MIN_PREFIX} characters)" if len(ref) < MIN_PREFIX else ""
        raise NimbuildError(
            f"{manifest.source or 'manifest'}: no profile {ref!r}{short}",
            hint=f"use an ID, an ID prefix ({MIN_PREFIX}+ characters) or a name: {known}",
        )
    return matches[0]


def cache_root(env: Mapping[str, str] | None = None, cache_path: str | os.PathLike | None = None) -> Path:
    """``cache_path``, else ``$NIM_CACHE_PATH``, else ``~/.cache/nim``."""
    env = os.environ if env is None else env
    if cache_path:
        return Path(cache_path)
    if env.get(ENV_CACHE):
        return Path(env[ENV_CACHE])
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nim"


# --------------------------------------------------------------------------- download-to-cache


def _fetch_remote(uri: str, dst: Path, sha256: str, size: int) -> None:
    """An https:// artifact into ``dst``, checked against the manifest; other schemes are refused."""
    import hashlib
    import urllib.request

    scheme = uri.split("://", 1)[0].lower()
    if scheme not in ("https", "http"):
        raise NimbuildError(
            f"{uri}: {scheme}:// downloads are not supported by nimbuild",
            hint="fetch the file yourself into the manifest's folder, or publish it over https",
        )
    tmp = dst.with_name(f".{dst.name}.partial")
    dst.parent.mkdir(parents=True, exist_ok=True)
    h, written = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(uri, timeout=60) as resp, open(tmp, "wb") as fh:  # noqa: S310 (scheme checked)
            while block := resp.read(1 << 22):
                h.update(block)
                fh.write(block)
                written += len(block)
        if written != size or h.hexdigest() != sha256:
            raise NimbuildError(
                f"{uri}: downloaded {written} bytes with sha256 {h.hexdigest()}, "
                f"the manifest says {size} bytes and {sha256}",
                hint="the remote file changed; rebuild the manifest or fix the URL",
            )
        os.replace(tmp, dst)
    except OSError as exc:
        raise NimbuildError(f"{uri}: download failed: {exc}", hint="check the network and the URL") from None
    finally:
        tmp.unlink(missing_ok=True)


def _cached_ok(path: Path, entry) -> bool:
    from nimbuild.manifest import sha256_file

    try:
        return path.is_file() and path.stat().st_size == entry.size and sha256_file(path) == entry.sha256
    except OSError:
        return False


def download_to_cache(
    manifest_path: str | os.PathLike,
    ref: str,
    *,
    cache_path: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    out=None,
) -> dict:
    """Copy one profile's files into the cache (``$NIM_CACHE_PATH/<relpath>``), each checked by sha256.

    Files already there with the right bytes are kept; a copy whose bytes do not
    match the manifest is removed and reported. Each file appears under its
    final name only once complete (temp file + rename).
    """
    from nimbuild.manifest import is_remote_uri, load_manifest, safe_join
    from nimbuild.output import Output
    from nimbuild.runtime.triton_repo.files import copy_verified

    manifest = load_manifest(manifest_path)
    profile = resolve_profile(manifest, ref)
    root = cache_root(env, cache_path)
    copied, kept = [], []
    with (out or Output(quiet=True)).progress() as progress:
        task = progress.add_task(f"caching {profile.name}", total=len(profile.files))
        for rel, entry in sorted(profile.files.items()):
            dst = safe_join(root, rel, f"cache for {profile.name}") if root.exists() else root / rel
            if _cached_ok(dst, entry):
                kept.append(rel)
            elif is_remote_uri(entry.uri):
                _fetch_remote(entry.uri, dst, entry.sha256, entry.size)
                copied.append(rel)
            else:
                src = safe_join(manifest.root, entry.uri, f"{manifest.source}: profile {profile.name!r}")
                if not src.is_file():
                    raise NimbuildError(
                        f"{src}: missing (profile {profile.name!r} lists {rel})",
                        hint="rebuild the profile or restore the file",
                    )
                copy_verified(src, dst, entry.sha256, entry.size)
                copied.append(rel)
            progress.advance(task)
    return {
        "profile_id": profile.id,
        "profile_name": profile.name,
        "cache": str(root),
        "copied": copied,
        "already_cached": kept,
        "bytes": sum(profile.files[r].size for r in profile.files),
    }


# --------------------------------------------------------------------------- create-model-store


def _prerendered(manifest, profile) -> dict | None:
    """The record of ``nimbuild render``'s repository for this profile, if it matches the manifest."""
    from nimbuild.runtime.triton_repo.repository import REPOSITORY_INFO, read_repository_info

    if manifest.root is None:
        return None
    folder = child(Path(manifest.root) / "triton", profile.name, f"profile {profile.name!r}")
    if not (folder / REPOSITORY_INFO).is_file():
        return None
    try:
        info = read_repository_info(folder)
    except NimbuildError:
        return None
    if info.get("profile_ids") != [profile.id]:
        return None
    for spec in info.get("files", {}).values():
        rel = spec.get("source")
        if rel is None:
            continue
        entry = profile.files.get(rel)
        if entry is not None and (spec.get("sha256"), spec.get("size")) != (entry.sha256, entry.size):
            return None  # rendered from other bytes: render again
    return info


def _locator(manifest, profile, cache: Path | None, used: dict[str, str], mode: str):
    """Where each manifest relpath is read from: the cache when it holds the file, else the manifest folder.

    A copy checks every byte it copies, so a cached file needs only the right
    size; a link copies nothing, so a cached file is hashed before it is used.
    """
    from nimbuild.manifest import safe_join

    def locate(rel: str) -> Path:
        entry = profile.files.get(rel)
        if cache is not None and entry is not None:
            candidate = cache / rel
            try:
                ok = candidate.is_file() and candidate.stat().st_size == entry.size
            except OSError:
                ok = False
            if ok and (mode == "copy" or _cached_ok(candidate, entry)):
                used[rel] = "cache"
                return candidate
        used[rel] = "manifest"
        return safe_join(manifest.root, rel, f"profile {profile.name!r}")

    return locate


def materialize_profile(
    manifest,
    profile,
    dest: str | os.PathLike,
    *,
    mode: str = "link",
    env: Mapping[str, str] | None = None,
    cache_path: str | os.PathLike | None = None,
    verify: bool = False,
) -> MaterializedStore:
    """A Triton model store for ``profile`` at ``dest`` (what ``serve`` calls; objects, not paths).

    Reuses the pre-rendered record when there is one (no graph needed), else
    renders from the graph with the light ONNX reader. Applies
    NIM_TRITON_MAX_BATCH_SIZE / NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS
    from ``env``. ``verify`` checks the profile's files first (serve already
    does; the copy mode checks every byte it copies anyway).
    """
    from nimbuild.manifest import verify_profile
    from nimbuild.runtime.triton_repo import repository as triton

    env = os.environ if env is None else env
    if verify:
        problems = verify_profile(manifest, profile, check_files=True)
        if problems:
            raise NimbuildError(
                f"profile {profile.name!r} does not verify: {'; '.join(problems)}",
                hint="restore or rebuild its files (nimbuild manifest verify)",
            )
    info = _prerendered(manifest, profile)
    reused = info is not None
    if info is None:
        info = triton.profile_info(manifest, profile, triton.ServingOptions(), use_onnx=False)
    limit = int(info["limits"]["max_batch_size"])
    batch = triton._env_int(env, triton.ENV_MAX_BATCH, 1, limit)
    delay = triton._env_int(env, triton.ENV_QUEUE_DELAY, 0, None)
    info = triton.with_overrides(info, max_batch_size=batch, max_queue_delay_us=delay)
    cache = Path(cache_path) if cache_path else (Path(env[ENV_CACHE]) if env.get(ENV_CACHE) else None)
    used: dict[str, str] = {}
    repo = triton.write_repository(
        info, Path(dest), _locator(manifest, profile, cache, used, mode), mode=mode, require_schema=False
    )
    names = info["model_names"]
    return MaterializedStore(
        store=Path(dest),
        profile_id=profile.id,
        profile_name=profile.name,
        model_name=names["model"],
        ensemble_name=names.get("ensemble"),
        tokenizer_name=names.get("tokenizer"),
        max_batch_size=int(info["serving"]["max_batch_size"]),
        max_queue_delay_us=int(info["serving"]["max_queue_delay_us"]),
        sources=used,
        reused_record=reused,
        schema_checked=repo.schema_checked,
    )


def create_model_store(
    manifest_path: str | os.PathLike,
    ref: str,
    model_store: str | os.PathLike,
    *,
    mode: str = "copy",
    env: Mapping[str, str] | None = None,
    cache_path: str | os.PathLike | None = None,
) -> MaterializedStore:
    """``nimbuild create-model-store``: the profile ``ref`` as a Triton model store at ``model_store``.

    Copies (default) or links the profile's files from the cache when they are
    there, else from the manifest's folder; a copied byte that does not match
    the manifest's sha256 fails the command and leaves nothing behind.
    """
    from nimbuild.manifest import load_manifest, verify_profile

    manifest = load_manifest(manifest_path)
    profile = resolve_profile(manifest, ref)
    if mode == "link":  # a link copies no byte, so check them here
        problems = verify_profile(manifest, profile, check_files=True)
        if problems:
            raise NimbuildError(
                f"{manifest_path}: profile {profile.name!r} does not verify: {'; '.join(problems)}",
                hint="restore or rebuild its files (nimbuild manifest verify)",
            )
    return materialize_profile(manifest, profile, model_store, mode=mode, env=env, cache_path=cache_path)
