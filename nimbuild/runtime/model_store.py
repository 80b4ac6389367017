"""``create-model-store`` and ``download-to-cache``, as in NIM containers: one profile, on disk, verified.

Runtime side: a serving image has ``nimbuild[runtime]`` only, so nothing here
imports onnx or tritonclient. A repository pre-rendered by ``nimbuild render``
(``<manifest folder>/triton/<profile name>/``) carries its templates' contexts,
so the store is re-rendered from that record; without one, the graph's inputs
are read by :mod:`nimbuild.runtime.triton_repo.onnx_io`'s light reader.

Cache layout (shared with ``nimbuild.runtime.selection.is_cached``): the bytes of a manifest file are cached at
``$NIM_CACHE_PATH/<its bytes path>``: its local ``uri`` (so the cache mirrors the manifest's folder), or
``remote/<scheme>/<host>/<path>`` for a remote one (:attr:`nimbuild.manifest.FileEntry.bytes_path`,
:func:`nimbuild.manifest_paths.remote_cache_relpath`).
The key (the file's name in the profile's workspace) may differ from the uri, as in NIM's manifests.

The NIM Operator runs these as the image's own commands (k8s-nim-operator
``internal/controller/nimcache_controller.go``, ``constructJob``): ``download-to-cache`` with
``--all`` or ``--profiles ID...`` and ``NIM_CACHE_PATH=/model-store``, and
``create-model-store --model-repo ENDPOINT --model-store /model-store``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nimbuild.errors import NimbuildError
from nimbuild.runtime.settings import Variable, read_settings
from nimbuild.safe_text import child

if TYPE_CHECKING:
    from nimbuild.fsutil import Readable
    from nimbuild.manifest import FileEntry, Manifest, Profile
    from nimbuild.output import Output


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

    def to_dict(self) -> dict[str, Any]:
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


def resolve_profile(manifest: Manifest, ref: str) -> Profile:
    """The profile named by a full ID, a unique ID prefix, or a name: NIM_MODEL_PROFILE's rule
    (:func:`nimbuild.runtime.overrides.match_profiles`)."""
    from nimbuild.runtime.overrides import MIN_PREFIX, match_profiles

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


def cache_root(env: Mapping[str, str] | None = None, cache_path: str | os.PathLike[str] | None = None) -> Path:
    """``cache_path``, else ``$NIM_CACHE_PATH``, else ``~/.cache/nim``."""
    env = os.environ if env is None else env
    if cache_path:
        return Path(cache_path)
    settings = read_settings(env)
    if settings.cache_path is not None:
        return settings.cache_path
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nim"


# --------------------------------------------------------------------------- download-to-cache


# A nimbuild (not a NIM) setting, read here only: the NIM_* ones are nimbuild.runtime.settings'. It is
# checked by the same rule, so a bad value is the same one line naming it.
ENV_MAX_DOWNLOAD = "NIMBUILD_MAX_DOWNLOAD_BYTES"
DEFAULT_MAX_DOWNLOAD = 64 * 1024**3  # a remote file whose manifest entry has no size: at most 64 GiB
MAX_DOWNLOAD = Variable(
    ENV_MAX_DOWNLOAD,
    "int",
    "bytes download-to-cache fetches of a remote file the manifest gives no size for",
    "68719476736 (64 GiB)",
    1,
    1 << 60,
)


def max_download_bytes(env: Mapping[str, str] | None = None) -> int:
    """The cap on a remote file the manifest gives no size for (``NIMBUILD_MAX_DOWNLOAD_BYTES``, default 64 GiB)."""
    env = os.environ if env is None else env
    raw = (env.get(ENV_MAX_DOWNLOAD) or "").strip()
    if not raw:
        return DEFAULT_MAX_DOWNLOAD
    value = MAX_DOWNLOAD.check(raw)
    assert isinstance(value, int)
    return value


class _Capped:
    """A response read through :func:`nimbuild.fsutil.write_verified` that never yields more than ``limit``
    bytes: the first byte past it is a NimbuildError (``why``), before the file is whole."""

    def __init__(self, response: Readable, limit: int, why: str, uri: str):
        self.response, self.limit, self.why, self.uri, self.count = response, limit, why, uri, 0

    def read(self, size: int = -1, /) -> bytes:
        want = self.limit + 1 - self.count
        block = self.response.read(want if size < 0 else min(size, want))
        self.count += len(block)
        if self.count > self.limit:
            raise NimbuildError(
                f"{self.uri}: more than the {self.why}; stopped reading",
                hint="the remote file changed or the URL is wrong",
            )
        return block


def _fetch_remote(uri: str, dst: Path, sha256: str | None, size: int | None, cap: int) -> None:
    """An https:// artifact into ``dst``, never reading more than the manifest's ``size`` (or ``cap``
    when it gives none): a server sending more is cut off at the first byte past it, before the file is
    whole. Checked against the sha256 when the manifest has one; other schemes are refused."""
    import urllib.request

    from nimbuild.fsutil import write_verified

    scheme = uri.split("://", 1)[0].lower()
    if scheme not in ("https", "http"):
        raise NimbuildError(
            f"{uri}: {scheme}:// downloads are not supported by nimbuild",
            hint="fetch the file yourself into the manifest's folder or NIM_CACHE_PATH, or publish it over https",
        )
    limit = size if size is not None else cap
    why = f"{size} bytes the manifest says" if size is not None else f"{limit} bytes cap ({ENV_MAX_DOWNLOAD})"
    try:
        with urllib.request.urlopen(uri, timeout=60) as resp:  # noqa: S310 (scheme checked)
            announced = resp.headers.get("Content-Length")
            if announced and announced.isdigit() and int(announced) > limit:
                raise NimbuildError(
                    f"{uri}: the server announces {announced} bytes, more than the {why}",
                    hint="the remote file changed or the URL is wrong; nothing was downloaded",
                )
            write_verified(_Capped(resp, limit, why, uri), dst, sha256=sha256, size=size, what=f"{uri} (downloaded)")
    except OSError as exc:
        raise NimbuildError(f"{uri}: download failed: {exc}", hint="check the network and the URL") from None


def _cached_ok(path: Path, entry: FileEntry) -> bool:
    """The cached copy is the manifest's file: its size, and its sha256 when the manifest has one."""
    from nimbuild.fsutil import sha256_file

    try:
        if not path.is_file() or (entry.size is not None and path.stat().st_size != entry.size):
            return False
        return entry.sha256 is None or sha256_file(path) == entry.sha256
    except OSError:
        return False


def chosen_profiles(
    manifest: Manifest, refs: list[str], *, all_profiles: bool = False, env: Mapping[str, str] | None = None
) -> list[Profile]:
    """The profiles ``download-to-cache`` fetches: every one (``--all``), those named (``--profiles``: IDs,
    ID prefixes or names), or, with neither, the one this host would select (as NIM does: its optimal
    profile, honouring NIM_MODEL_PROFILE and NIM_TAGS_SELECTOR)."""
    env = os.environ if env is None else env
    if all_profiles:
        if refs:
            raise NimbuildError("give --all or --profiles, not both", hint="--all caches every profile")
        if not manifest.profiles:
            raise NimbuildError(f"{manifest.source}: the manifest lists no profile", hint="build one first")
        return list(manifest.profiles)
    if refs:
        chosen: list[Profile] = []
        seen: set[str] = set()
        for ref in refs:
            for part in ref.replace(",", " ").split():
                profile = resolve_profile(manifest, part)
                if profile.id not in seen:
                    seen.add(profile.id)
                    chosen.append(profile)
        if chosen:
            return chosen
    from nimbuild.runtime.hardware import detect_host
    from nimbuild.runtime.selection import select

    selection = select(manifest, detect_host(env), env, cache_path=None)
    if selection.selected is None:
        raise NimbuildError(
            f"{manifest.source}: no profile is runnable on this host, so there is no default to cache",
            hint="name them with --profiles ID..., or cache every one with --all",
        )
    return [selection.selected]


def download_to_cache(
    manifest_path: str | os.PathLike[str],
    ref: str | list[str] | None = None,
    *,
    cache_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    out: Output | None = None,
    all_profiles: bool = False,
) -> dict[str, Any]:
    """Copy profiles' files into the cache (``$NIM_CACHE_PATH/<bytes path>``), each checked by sha256.

    ``ref``: one profile or a list (IDs, prefixes, names); none: the one this host selects;
    ``all_profiles``: every one. Files already there with the right bytes are kept; each file
    appears under its final name only once complete (temp file + rename). A file shared by
    several profiles is fetched once. Returns one summary (a single profile's keys at the top,
    for the one-profile form) with ``profiles``: one entry per profile.
    """
    from nimbuild.manifest import load_manifest
    from nimbuild.manifest_paths import safe_join
    from nimbuild.output import Output
    from nimbuild.runtime.triton_repo.files import copy_verified

    env = os.environ if env is None else env
    manifest = load_manifest(manifest_path)
    refs = [ref] if isinstance(ref, str) else list(ref or [])
    chosen = chosen_profiles(manifest, refs, all_profiles=all_profiles, env=env)
    root = cache_root(env, cache_path)
    cap = max_download_bytes(env)
    done: dict[str, str] = {}  # bytes path -> "copied" | "kept"
    summaries: list[dict[str, Any]] = []
    with (out or Output(quiet=True)).progress() as progress:
        task = progress.add_task("caching", total=sum(len(p.files) for p in chosen))
        for profile in chosen:
            copied: list[str] = []
            kept: list[str] = []
            for rel, entry in sorted(profile.files.items()):
                stored = entry.bytes_path
                if stored not in done:
                    where = f"cache for {profile.name}"
                    dst = safe_join(root, stored, where) if root.exists() else root / stored
                    if _cached_ok(dst, entry):
                        done[stored] = "kept"
                    elif entry.remote:
                        _fetch_remote(entry.uri, dst, entry.sha256, entry.size, cap)
                        done[stored] = "copied"
                    else:
                        src = safe_join(manifest.folder, entry.uri, f"{manifest.source}: profile {profile.name!r}")
                        if not src.is_file():
                            raise NimbuildError(
                                f"{src}: missing (profile {profile.name!r} lists {rel})",
                                hint="rebuild the profile or restore the file",
                            )
                        copy_verified(src, dst, entry.sha256, entry.size)
                        done[stored] = "copied"
                (copied if done[stored] == "copied" else kept).append(rel)
                progress.advance(task)
            summaries.append(
                {
                    "profile_id": profile.id,
                    "profile_name": profile.name,
                    "copied": copied,
                    "already_cached": kept,
                    "bytes": sum(e.size or 0 for e in profile.files.values()),
                    "unverified": sorted(r for r, e in profile.files.items() if e.sha256 is None),
                }
            )
    result: dict[str, Any] = {**summaries[0], "cache": str(root), "profiles": summaries}
    if len(summaries) > 1:
        result.update(
            profile_id=None,
            profile_name=None,
            copied=[f"{s['profile_name']}:{r}" for s in summaries for r in s["copied"]],
            already_cached=[f"{s['profile_name']}:{r}" for s in summaries for r in s["already_cached"]],
            bytes=sum(s["bytes"] for s in summaries),
        )
    return result


# --------------------------------------------------------------------------- create-model-store


def _prerendered(manifest: Manifest, profile: Profile) -> dict[str, Any] | None:
    """The record of ``nimbuild render``'s repository for this profile, if it matches the manifest."""
    from nimbuild.export_layout import TRITON_DIR
    from nimbuild.runtime.triton_repo.layout import REPOSITORY_INFO
    from nimbuild.runtime.triton_repo.record import read_repository_info

    if manifest.root is None:
        return None
    folder = child(Path(manifest.root) / TRITON_DIR, profile.name, f"profile {profile.name!r}")
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


def _locator(
    manifest: Manifest, profile: Profile, cache: Path | None, used: dict[str, str], mode: str
) -> Callable[[str], Path]:
    """Where each manifest relpath is read from: the cache when it holds the file, else the manifest folder.

    A copy checks every byte it copies, so a cached file needs only the right
    size; a link copies nothing, so a cached file is hashed before it is used.
    """
    from nimbuild.manifest_paths import safe_join

    def locate(rel: str) -> Path:
        entry = profile.files.get(rel)
        stored = entry.bytes_path if entry is not None else rel  # the bytes are at the uri, not the key
        if cache is not None and entry is not None:
            candidate = cache / stored
            try:
                ok = candidate.is_file() and (entry.size is None or candidate.stat().st_size == entry.size)
            except OSError:
                ok = False
            if ok and (mode == "copy" or _cached_ok(candidate, entry)):
                used[rel] = "cache"
                return candidate
        used[rel] = "manifest"
        return safe_join(manifest.folder, stored, f"profile {profile.name!r}")

    return locate


def materialize_profile(
    manifest: Manifest,
    profile: Profile,
    dest: str | os.PathLike[str],
    *,
    mode: str = "link",
    env: Mapping[str, str] | None = None,
    cache_path: str | os.PathLike[str] | None = None,
    verify: bool = False,
) -> MaterializedStore:
    """A Triton model store for ``profile`` at ``dest`` (what ``serve`` calls; objects, not paths).

    Reuses the pre-rendered record when there is one (no graph needed), else
    renders from the graph with the light ONNX reader. Applies
    NIM_TRITON_MAX_BATCH_SIZE / NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS
    from ``env``. ``verify`` checks the profile's files first (serve already
    does; the copy mode checks every byte it copies anyway).
    """
    from nimbuild.manifest_verify import verify_profile
    from nimbuild.runtime.triton_repo.contexts import ServingOptions
    from nimbuild.runtime.triton_repo.record import profile_info
    from nimbuild.runtime.triton_repo.serving_overrides import requested_overrides, with_overrides
    from nimbuild.runtime.triton_repo.writing import write_repository

    settings = read_settings(os.environ if env is None else env)
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
        info = profile_info(manifest, profile, ServingOptions(), use_onnx=False)
    batch, delay = requested_overrides(settings, int(info["limits"]["max_batch_size"]))
    info = with_overrides(info, max_batch_size=batch, max_queue_delay_us=delay)
    cache = Path(cache_path) if cache_path else settings.cache_path
    used: dict[str, str] = {}
    repo = write_repository(
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


MANIFEST_NAMES = ("manifest.yaml", "model_manifest.yaml")


def manifest_in_repo(model_repo: str | os.PathLike[str]) -> Path:
    """The manifest ``--model-repo`` names: the file itself, or ``manifest.yaml`` / ``model_manifest.yaml``
    in that folder (the NIM Operator passes its NIMCache's ``modelEndpoint`` here)."""
    text = str(model_repo)
    if "://" in text:
        raise NimbuildError(
            f"--model-repo {text}: nimbuild reads a model repository from a manifest on disk, not from a URL",
            hint="give the manifest file or the folder that holds it (e.g. /opt/nim/etc/default)",
        )
    path = Path(text)
    if path.is_dir():
        for name in MANIFEST_NAMES:
            if (path / name).is_file():
                return path / name
        raise NimbuildError(
            f"--model-repo {path}: the folder holds no {' or '.join(MANIFEST_NAMES)}",
            hint="give the manifest file itself, or the folder that holds it",
        )
    return path


def create_model_store(
    manifest_path: str | os.PathLike[str],
    ref: str | None,
    model_store: str | os.PathLike[str],
    *,
    mode: str = "copy",
    env: Mapping[str, str] | None = None,
    cache_path: str | os.PathLike[str] | None = None,
) -> MaterializedStore:
    """``nimbuild create-model-store``: the profile ``ref`` as a Triton model store at ``model_store``.

    ``ref`` None: the profile this host selects (NIM_MODEL_PROFILE and NIM_TAGS_SELECTOR honoured),
    as in the NIM Operator's form ``create-model-store --model-repo R --model-store S``. Copies
    (default) or links the profile's files from the cache when they are there, else from the
    manifest's folder; a copied byte that does not match the manifest's sha256 fails the command
    and leaves nothing behind.
    """
    from nimbuild.manifest import load_manifest
    from nimbuild.manifest_verify import verify_profile

    env = os.environ if env is None else env
    manifest = load_manifest(manifest_path)
    if ref:
        profile = resolve_profile(manifest, ref)
    else:
        (profile,) = chosen_profiles(manifest, [], env=env)  # the selection, as download-to-cache's default
    if mode == "link":  # a link copies no byte, so check them here
        problems = verify_profile(manifest, profile, check_files=True)
        if problems:
            raise NimbuildError(
                f"{manifest_path}: profile {profile.name!r} does not verify: {'; '.join(problems)}",
                hint="restore or rebuild its files (nimbuild manifest verify)",
            )
    return materialize_profile(manifest, profile, model_store, mode=mode, env=env, cache_path=cache_path)
