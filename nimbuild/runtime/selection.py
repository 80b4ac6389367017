"""Which profile this host runs: classify, rank, apply the overrides, log the choice.

docs/design.md, "Selection", fixes the rules and the words of the log. In short:

- *runnable*: the host has the profile's hardware, enough of it, with enough free memory;
- *not runnable* ("compatible but not runnable"): at least one GPU of the host
  can run it, but fewer than its ``gpu_count``, or too few with enough free
  memory; or (GPU and CPU profiles alike) a local file of its workspace is
  missing or not of the manifest's size (stat only: ``serve`` checks sha256);
- *incompatible*: no GPU of the host can run it: a GPU profile on a CPU host
  or with ``NIM_CPU_ONLY``, the wrong GPU, FP8 below compute capability 8.9; or a
  CPU profile made for a ``cpu_isa`` class the host's CPU lacks ("needs
  avx512_vnni; this host has avx2"). A CPU profile without the tag runs anywhere.

A TensorRT profile matches on its ``gpu_device`` tag (PCI device:vendor, or any
id the SKU catalog lists for the same SKU), or, when it was built
hardware-compatible, on ``compute_capability`` (``same_compute_capability``:
equal; ``ampere+``: 8.0 or newer). Names are never matched by pattern. A
manifest NIM wrote names its GPUs by NIM's tags, matched as the NIM Operator
does (:mod:`nimbuild.runtime.gpu_match` holds both rules).

``gpu_count`` on a host with GPUs of different kinds counts only the GPUs the
profile can run on: for a TensorRT engine those of its own kind (the others are
ignored by it); for an ONNX GPU profile any GPU. The GPUs a runnable profile
would use are recorded (``Classified.gpus``: NVML indexes) so that ``serve`` can
pin them. On such a host two engines of equal rank (an H100 FP8 and an L40S FP8)
are ordered by docs/design.md's last key, the ID; pin one with ``NIM_TAGS_SELECTOR=gpu=...``.

Free memory: a GPU profile needs, on each GPU it uses, ``metrics.gpu_memory_mib``
when the manifest gives it, else the size of its files (the weights must fit).

Cache (``NIM_CACHE_PATH``): a profile counts as cached when the bytes of every
file of its workspace are at ``NIM_CACHE_PATH/<its uri>`` (a remote one at
``remote/<scheme>/<host>/<path>``) with the manifest's size (the sha256 is
checked by ``serve`` before use, not here). A remote file not in the cache makes
its profile not runnable: ``serve`` downloads nothing.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nimbuild import cpu_isa, profiles, skus
from nimbuild.errors import NimbuildError
from nimbuild.manifest import FileEntry, Manifest, Profile
from nimbuild.manifest_paths import safe_join
from nimbuild.runtime import gpu_match
from nimbuild.runtime.hardware import Host
from nimbuild.runtime.overrides import apply_overrides
from nimbuild.runtime.settings import Settings, read_settings
from nimbuild.safe_text import printable

Status = Literal["runnable", "not_runnable", "incompatible"]
STATUSES: tuple[Status, ...] = ("runnable", "not_runnable", "incompatible")
GROUP_TITLES = {
    "runnable": "- Compatible with system and runnable:",
    "not_runnable": "- Compatible with system but not runnable:",
    "incompatible": "- Incompatible with system:",
}

_BACKEND_RANK = {"tensorrt": 0, "onnx": 1, "pytorch": 2}
_DEVICE_RANK = {"gpu": 0, "cpu": 1}
_PRECISION_RANK = {"fp8": 0, "int8": 1, "fp16": 2, "bf16": 3, "fp32": 4}
_BACKEND_TYPE = {"tensorrt": "TensorRT", "onnx": "ONNX", "pytorch": "PyTorch"}
_FP8_MIN_CC = skus.FP8_MIN_COMPUTE_CAPABILITY


@dataclass
class Classified:
    """One profile judged against the host; ``reason`` says why it is not runnable."""

    profile: Profile
    status: Status
    reason: str | None = None
    gpus: list[int] = field(default_factory=list)  # NVML indexes it would use (runnable GPU profiles)
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.profile.id,
            "name": self.profile.name,
            "status": self.status,
            "reason": self.reason,
            "gpus": list(self.gpus),
            "cached": self.cached,
            "tags": dict(sorted(self.profile.tags.items())),
        }


@dataclass
class Selection:
    """The whole decision: every profile classified (runnable first, in rank order) and the choice.

    ``candidates``: the runnable profiles the overrides allow, best first (what
    ``serve`` may fall back through when the selected one cannot start).
    """

    host: Host
    classified: list[Classified]
    selected: Profile | None
    candidates: list[Classified] = field(default_factory=list)
    overrides: dict[str, str] = field(default_factory=dict)
    manifest_path: str | None = None

    @property
    def selected_entry(self) -> Classified | None:
        if self.selected is None:
            return None
        return next(c for c in self.classified if c.profile.id == self.selected.id)

    def group(self, status: Status) -> list[Classified]:
        return [c for c in self.classified if c.status == status]

    def to_dict(self) -> dict[str, Any]:
        entry = self.selected_entry
        return {
            "manifest": self.manifest_path,
            "system": self.host.to_dict(),
            "overrides": dict(self.overrides),
            "profiles": {status: [c.to_dict() for c in self.group(status)] for status in STATUSES},
            "selected": None
            if entry is None
            else {**entry.to_dict(), "metadata": dict(profile_metadata(entry.profile))},
        }


# --------------------------------------------------------------------------- classify


def _device(tags: Mapping[str, str]) -> str:
    """A profile's device; manifests of other writers may leave it out."""
    device = tags.get("device")
    if device:
        return device.lower()
    if tags.get("backend") == "tensorrt" or tags.get("gpu") or tags.get("gpu_device"):
        return "gpu"
    return "cpu"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def required_memory_mib(profile: Profile) -> int:
    """Free GPU memory a profile needs on each of its GPUs: measured if known, else its files' size."""
    measured = profile.metrics.get("gpu_memory_mib") if isinstance(profile.metrics, dict) else None
    if isinstance(measured, (int, float)) and not isinstance(measured, bool) and measured > 0:
        return int(math.ceil(measured))
    return int(math.ceil(sum(entry.size or 0 for entry in profile.files.values()) / (1024 * 1024)))


def _classify_one(profile: Profile, host: Host, cpu_only_reason: str | None, nim: bool = False) -> Classified:
    """``nim``: the manifest is NIM's (not nimbuild's): its tag names apply (llm_engine, tp, gpu, ...)."""
    tags = profile.tags
    backend = tags.get("backend")

    def judged(status: Status, reason: str | None = None, gpus: list[int] | None = None) -> Classified:
        return Classified(profile=profile, status=status, reason=reason, gpus=gpus or [])

    if not backend and tags.get("llm_engine"):  # NIM for LLMs' profiles (tensorrt_llm, vllm, sglang)
        return judged(
            "incompatible",
            f"llm_engine {tags['llm_engine']!r} is an LLM engine; nimbuild serves rerankers with "
            "backend onnx or tensorrt",
        )
    if nim and not backend and tags.get("model_type"):
        return judged("incompatible", f"model_type {tags['model_type']!r} is not a backend this runtime serves")
    if backend not in _BACKEND_RANK:
        return judged(
            "incompatible",
            f"backend {backend!r} is not one this runtime serves (tensorrt, onnx)" if backend else "no backend tag",
        )
    problem = profiles.tag_problem(tags)
    if problem is not None:
        return judged("incompatible", problem)
    if _device(tags) != "gpu":
        wanted = tags.get("cpu_isa")
        why = host.cpu.incompatible_reason(wanted) if wanted else None
        return judged("incompatible", why) if why else judged("runnable")
    if cpu_only_reason and host.gpus:
        return judged("incompatible", f"needs a GPU; {cpu_only_reason}")
    if not host.usable_gpus:
        return judged("incompatible", "needs a GPU; this host has none")
    gpus = host.usable_gpus
    named = gpu_match.nim_match(tags, gpus) if nim and not tags.get("hardware_compatibility_level") else None
    if named is not None:
        matching, needs = named
        if not matching:
            return judged("incompatible", needs)
    elif backend == "tensorrt":
        matching, needs = gpu_match.tensorrt_match(tags, gpus)
        if not matching:
            return judged("incompatible", needs)
    else:
        matching, needs = gpus, None
    if tags.get("precision") == "fp8":
        fp8 = [g for g in matching if (gpu_match.compute_capability(g.compute_capability) or (0, 0)) >= _FP8_MIN_CC]
        if not fp8:
            have = ", ".join(sorted({g.compute_capability for g in matching}))
            return judged("incompatible", f"FP8 needs compute capability >= 8.9; this host's GPUs have {have}")
        matching = fp8
    if nim and "gpu_count" not in tags:  # NIM's profiles count GPUs in tp x pp
        nim_count = {"gpu_count": gpu_match.nim_gpu_count(tags)}
        if profiles.tag_problem(nim_count) is not None:
            return judged("incompatible", f"tp tag {tags.get('tp')!r} is not a positive integer")
        count = profiles.numeric_tag(nim_count, "gpu_count")
    else:
        count = profiles.numeric_tag(tags, "gpu_count")
    if len(matching) < count:  # it can run here, just not on this few GPUs: compatible but not runnable
        if needs is None:
            return judged("not_runnable", f"needs {_plural(count, 'GPU')}; this host has {len(matching)}")
        return judged("not_runnable", f"{needs} on {_plural(count, 'GPU')}; this host has {len(matching)} of that kind")
    need_mib = required_memory_mib(profile)
    free = [g for g in matching if not g.memory_known or g.memory_free_mib >= need_mib]
    if len(free) < count:
        have = ", ".join(f"GPU {g.index} has {g.memory_free_mib} MiB" for g in matching)
        return judged("not_runnable", f"needs {need_mib} MiB free on {_plural(count, 'GPU')}; {have}")
    return judged("runnable", gpus=[g.index for g in free[:count]])


def cpu_only_reason(host: Host, settings: Settings) -> str | None:
    """Why GPU profiles are out: the host's own reason, or NIM_CPU_ONLY (also for an assumed host)."""
    return host.cpu_only_reason or settings.cpu_only_reason


def _stat_problem(root: Path, rel: str, entry: FileEntry) -> str | None:
    """Why the bytes of workspace file ``rel`` are not in ``root`` as the manifest says (missing, not a
    file, other size), or None. ``root``: the manifest's folder or a cache; the bytes are at the
    file's :attr:`FileEntry.bytes_path` (its uri), which may differ from the key."""
    try:
        path = safe_join(root, entry.bytes_path)
        st = path.stat()
    except NimbuildError as exc:
        return exc.message
    except OSError:
        return f"file {rel} is missing" if rel == entry.uri else f"file {rel} ({entry.uri}) is missing"
    if not stat.S_ISREG(st.st_mode):
        return f"file {rel} is not a regular file"
    if entry.size is not None and st.st_size != entry.size:
        return f"file {rel} has {st.st_size} bytes; the manifest says {entry.size}"
    return None


def missing_file(manifest: Manifest, profile: Profile, cache_path: str | os.PathLike[str] | None = None) -> str | None:
    """The first file of ``profile`` whose bytes are not there with the manifest's size (stat only), or None.

    A local file counts as present in the manifest's folder or in ``cache_path``
    (both at its uri); a remote one only in ``cache_path`` (``remote/...``, where
    ``download-to-cache`` puts it): ``serve`` downloads nothing. The sha256 is
    ``serve``'s check, before use: this one must stay cheap.
    """
    if manifest.root is None:
        return None
    for rel in sorted(profile.files):
        entry = profile.files[rel]
        if entry.remote:
            if cache_path and _stat_problem(Path(cache_path), rel, entry) is None:
                continue
            where = "NIM_CACHE_PATH" if cache_path else "a cache (NIM_CACHE_PATH is not set)"
            return f"file {rel} is remote ({entry.uri}) and not in {where}; run download-to-cache"
        problem = _stat_problem(Path(manifest.root), rel, entry)
        if problem is not None and cache_path and _stat_problem(Path(cache_path), rel, entry) is None:
            problem = None
        if problem is not None:
            return problem
    return None


def classify(
    manifest: Manifest,
    host: Host,
    env: Mapping[str, str] = os.environ,
    cache_path: str | os.PathLike[str] | None = None,
) -> list[Classified]:
    """Every profile of ``manifest`` judged against ``host``, in manifest order.

    A profile the hardware can run whose files are missing or of the wrong size
    is *not runnable*, with the file in the reason (``cache_path`` defaults to
    ``NIM_CACHE_PATH``; copies there count).
    """
    settings = read_settings(env)
    if cache_path is None:
        cache_path = settings.cache_path
    reason = cpu_only_reason(host, settings)
    out = []
    for profile in manifest.profiles:
        entry = _classify_one(profile, host, reason, nim=manifest.opaque_ids)
        if entry.status == "runnable":
            problem = missing_file(manifest, profile, cache_path)
            if problem is not None:
                entry = Classified(profile=profile, status="not_runnable", reason=problem)
        out.append(entry)
    return out


# --------------------------------------------------------------------------- rank


def is_cached(profile: Profile, cache_path: str | os.PathLike[str] | None) -> bool:
    """Every file of the profile is in the cache at its manifest path, with the manifest's size."""
    if not cache_path or not profile.files:
        return False
    return all(_stat_problem(Path(cache_path), rel, entry) is None for rel, entry in profile.files.items())


def _batch(tags: Mapping[str, str]) -> int:
    """max_batch_size for ranking (only runnable profiles are ranked: their tags are valid)."""
    return profiles.numeric_tag(tags, "max_batch_size") if "max_batch_size" in tags else 0


def rank_key(entry: Classified) -> tuple[int, int, int, int, int, int, str]:
    """docs/design.md's order: TensorRT > ONNX > PyTorch; GPU > CPU; FP8 > INT8 > FP16 > FP32;
    among CPU profiles of one precision the preferred ``cpu_isa`` class (avx512_vnni before
    avx2: the same VNNI kernel, full-range weights); cached first; larger max_batch_size; then the ID."""
    tags = entry.profile.tags
    return (
        _BACKEND_RANK.get(tags.get("backend", ""), len(_BACKEND_RANK)),
        _DEVICE_RANK.get(_device(tags), len(_DEVICE_RANK)),
        _PRECISION_RANK.get(tags.get("precision", "").lower(), len(_PRECISION_RANK)),
        cpu_isa.preference(tags["cpu_isa"]) if "cpu_isa" in tags else 0,
        0 if entry.cached else 1,
        -_batch(tags),
        entry.profile.id,
    )


def _ordered(classified: list[Classified]) -> list[Classified]:
    """Runnable in rank order, then not runnable, then incompatible (each by name)."""
    runnable = sorted((c for c in classified if c.status == "runnable"), key=rank_key)
    rest = sorted(
        (c for c in classified if c.status != "runnable"),
        key=lambda c: (STATUSES.index(c.status), c.profile.name, c.profile.id),
    )
    return runnable + rest


# --------------------------------------------------------------------------- select


# Where the NIM Operator's NIMCache job looks for a NIM image's manifest, in its order
# (k8s-nim-operator internal/controller/nimcache_controller.go, getCommand).
OPERATOR_MANIFEST_PATHS = ("/opt/nim/etc/default/model_manifest.yaml", "/etc/nim/config/model_manifest.yaml")


def default_manifest_path(env: Mapping[str, str] = os.environ) -> Path:
    """``NIM_MANIFEST_PATH``; else ``manifest.yaml`` in the working directory when there is one; else the
    first of the NIM Operator's paths that exists (a NIM image's manifest); else ``manifest.yaml``."""
    settings = read_settings(env)
    if settings.manifest_path_set:
        return settings.manifest_path
    if settings.manifest_path.exists():
        return settings.manifest_path
    for candidate in OPERATOR_MANIFEST_PATHS:
        if Path(candidate).is_file():
            return Path(candidate)
    return settings.manifest_path


def select(
    manifest: Manifest,
    host: Host,
    env: Mapping[str, str] = os.environ,
    cache_path: str | os.PathLike[str] | None = None,
) -> Selection:
    """Classify, rank and apply the overrides: the decision ``serve`` acts on.

    ``cache_path`` defaults to ``NIM_CACHE_PATH``. A failing override raises
    NimbuildError; no runnable profile is ``selected=None`` (the caller says so).
    """
    settings = read_settings(env)
    if cache_path is None:
        cache_path = settings.cache_path
    classified = classify(manifest, host, env, cache_path)
    for entry in classified:
        if entry.status == "runnable":
            entry.cached = is_cached(entry.profile, cache_path)
    classified = _ordered(classified)
    overrides: dict[str, str] = {}
    candidates = apply_overrides(classified, settings, overrides)
    return Selection(
        host=host,
        classified=classified,
        selected=candidates[0].profile if candidates else None,
        candidates=candidates,
        overrides=overrides,
        manifest_path=str(manifest.source) if manifest.source else None,
    )


# --------------------------------------------------------------------------- log


def profile_metadata(profile: Profile) -> list[tuple[str, str]]:
    """The ``Profile metadata: key: value`` pairs, in the reranking NIM's order."""
    tags = profile.tags
    backend = tags.get("backend", "")
    items = [
        ("type", _BACKEND_TYPE.get(backend, backend or "unknown")),
        ("precision", tags.get("precision", "unknown").upper()),
    ]
    if backend == "tensorrt":
        items += [(key, tags[key]) for key in ("gpu", "trt_version", "cuda_major_version") if key in tags]
        if "hardware_compatibility_level" in tags:
            items.append(("hardware_compatibility_level", tags["hardware_compatibility_level"]))
    else:
        items.append(("device", _device(tags).upper()))
        if "gpu" in tags:
            items.append(("gpu", tags["gpu"]))
        if "cpu_isa" in tags:
            items.append(("cpu_isa", tags["cpu_isa"]))
    if _device(tags) == "gpu" and tags.get("gpu_count", "1") != "1":
        items.append(("gpu_count", tags["gpu_count"]))
    return items


def _entry_line(entry: Classified) -> str:
    line = f"  - {entry.profile.id} ({entry.profile.name})"
    line = f"{line}: {entry.reason}" if entry.status != "runnable" and entry.reason else line
    return printable(line)  # a tag value's newline or escape cannot forge a line of the listing


def profile_lines(classified: list[Classified]) -> list[str]:
    """MODEL PROFILES and the three groups; IDs whole."""
    lines = ["MODEL PROFILES"]
    for status in STATUSES:
        lines.append(GROUP_TITLES[status])
        lines.extend(_entry_line(c) for c in classified if c.status == status)
    return lines


def startup_log(selection: Selection) -> list[str]:
    """docs/design.md's startup lines, word for word: the groups, the selected profile, its metadata."""
    lines = profile_lines(selection.classified)
    if selection.selected is None:
        lines.append("Selected profile: none (no runnable profile)")
        return lines
    lines.append(printable(f"Selected profile: {selection.selected.id} ({selection.selected.name})"))
    lines.extend(printable(f"Profile metadata: {key}: {value}") for key, value in profile_metadata(selection.selected))
    return lines
