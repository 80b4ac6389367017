"""Which profile this host runs: classify, rank, apply the overrides, log the choice.

DESIGN.md "Selection" fixes the rules and the words of the log. In short:

- *runnable*: the host has the profile's hardware, enough of it, with enough free memory;
- *not runnable* ("compatible but not runnable"): at least one GPU of the host
  can run it, but fewer than its ``gpu_count``, or too few with enough free
  memory; or (GPU and CPU profiles alike) a local file of its workspace is
  missing or not of the manifest's size (stat only: ``serve`` checks sha256);
- *incompatible*: no GPU of the host can run it: a GPU profile on a CPU host
  or with ``NIM_CPU_ONLY``, the wrong GPU, FP8 below compute capability 8.9.

A TensorRT profile matches on its ``gpu_device`` tag (PCI device:vendor, or any
id the SKU catalog lists for the same SKU), or, when it was built
hardware-compatible, on ``compute_capability`` (``same_compute_capability``:
equal; ``ampere+``: 8.0 or newer). Names are never matched by pattern.

``gpu_count`` on a host with GPUs of different kinds counts only the GPUs the
profile can run on: for a TensorRT engine those of its own kind (the others are
ignored by it); for an ONNX GPU profile any GPU. The GPUs a runnable profile
would use are recorded (``Classified.gpus``: NVML indexes) so that ``serve`` can
pin them. On such a host two engines of equal rank (an H100 FP8 and an L40S FP8)
are ordered by DESIGN.md's last key, the ID; pin one with ``NIM_TAGS_SELECTOR=gpu=...``.

Free memory: a GPU profile needs, on each GPU it uses, ``metrics.gpu_memory_mib``
when the manifest gives it, else the size of its files (the weights must fit).

Cache (``NIM_CACHE_PATH``): a profile counts as cached when every file of its
workspace is at ``NIM_CACHE_PATH/<its path in the manifest>`` with the
manifest's size (the sha256 is checked by ``serve`` before use, not here).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nimbuild import skus
from nimbuild.errors import NimbuildError
from nimbuild.manifest import Manifest, Profile, is_remote_uri, safe_join
from nimbuild.runtime.hardware import Gpu, Host, cpu_only_requested
from nimbuild.safe_text import printable

Status = Literal["runnable", "not_runnable", "incompatible"]
STATUSES: tuple[Status, ...] = ("runnable", "not_runnable", "incompatible")
GROUP_TITLES = {
    "runnable": "- Compatible with system and runnable:",
    "not_runnable": "- Compatible with system but not runnable:",
    "incompatible": "- Incompatible with system:",
}
DEFAULT_MANIFEST = "manifest.yaml"
MIN_PREFIX = 8

_BACKEND_RANK = {"tensorrt": 0, "onnx": 1, "pytorch": 2}
_DEVICE_RANK = {"gpu": 0, "cpu": 1}
_PRECISION_RANK = {"fp8": 0, "int8": 1, "fp16": 2, "bf16": 3, "fp32": 4}
_BACKEND_TYPE = {"tensorrt": "TensorRT", "onnx": "ONNX", "pytorch": "PyTorch"}
_FP8_MIN_CC = skus.FP8_MIN_COMPUTE_CAPABILITY
_AMPERE_CC = (8, 0)


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


def _cc(text: str) -> tuple[int, int] | None:
    try:
        return skus.compute_capability_tuple(text)
    except (TypeError, ValueError):
        return None


def _gpu_count(tags: Mapping[str, str]) -> int | None:
    raw = tags.get("gpu_count", "1")
    try:
        count = int(raw)
    except (TypeError, ValueError):
        return None
    return count if count >= 1 else None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def required_memory_mib(profile: Profile) -> int:
    """Free GPU memory a profile needs on each of its GPUs: measured if known, else its files' size."""
    measured = profile.metrics.get("gpu_memory_mib") if isinstance(profile.metrics, dict) else None
    if isinstance(measured, (int, float)) and not isinstance(measured, bool) and measured > 0:
        return int(math.ceil(measured))
    return int(math.ceil(sum(entry.size for entry in profile.files.values()) / (1024 * 1024)))


def _same_device(wanted: str, gpu: Gpu) -> bool:
    """PCI ids match, or both belong to one catalog SKU (a product can have several ids)."""
    want = skus.normalize_pci_device_id(wanted)
    have = skus.normalize_pci_device_id(gpu.pci_device_id)
    if want is None or have is None:
        return False
    if want == have:
        return True
    sku = skus.by_pci_device_id(want)
    return sku is not None and have in sku.pci_device_ids


def _tensorrt_match(tags: Mapping[str, str], gpus: list[Gpu]) -> tuple[list[Gpu], str]:
    """The GPUs a TensorRT engine runs on, and what it needs (for the reason when none)."""
    level = tags.get("hardware_compatibility_level")
    if level:
        want = _cc(tags.get("compute_capability", ""))
        if want is None:
            return (
                [],
                f"hardware-compatible engine without a valid compute_capability tag ({tags.get('compute_capability')!r})",
            )
        if level in ("ampere+", "ampere_plus"):
            return (
                [g for g in gpus if (_cc(g.compute_capability) or (0, 0)) >= _AMPERE_CC],
                "needs compute capability >= 8.0 (hardware_compatibility_level ampere+)",
            )
        return (
            [g for g in gpus if _cc(g.compute_capability) == want],
            f"needs compute capability {tags['compute_capability']} (hardware_compatibility_level {level})",
        )
    wanted = tags.get("gpu_device")
    if not wanted and tags.get("gpu"):
        sku = skus.by_canonical(tags["gpu"])  # a catalog lookup, not a pattern
        wanted = sku.pci_device_id if sku else None
    if not wanted:
        return [], "TensorRT profile without a gpu_device tag, so no GPU can be matched to it"
    return [g for g in gpus if _same_device(wanted, g)], f"needs gpu_device {wanted}"


def _classify_one(profile: Profile, host: Host, cpu_only_reason: str | None) -> Classified:
    tags = profile.tags
    backend = tags.get("backend")

    def judged(status: Status, reason: str | None = None, gpus: list[int] | None = None) -> Classified:
        return Classified(profile=profile, status=status, reason=reason, gpus=gpus or [])

    if backend not in _BACKEND_RANK:
        return judged(
            "incompatible",
            f"backend {backend!r} is not one this runtime serves (tensorrt, onnx)" if backend else "no backend tag",
        )
    if _device(tags) != "gpu":
        return judged("runnable")
    if cpu_only_reason and host.gpus:
        return judged("incompatible", f"needs a GPU; {cpu_only_reason}")
    if not host.usable_gpus:
        return judged("incompatible", "needs a GPU; this host has none")
    gpus = host.usable_gpus
    if backend == "tensorrt":
        matching, needs = _tensorrt_match(tags, gpus)
        if not matching:
            return judged("incompatible", needs)
    else:
        matching, needs = gpus, None
    if tags.get("precision") == "fp8":
        fp8 = [g for g in matching if (_cc(g.compute_capability) or (0, 0)) >= _FP8_MIN_CC]
        if not fp8:
            have = ", ".join(sorted({g.compute_capability for g in matching}))
            return judged("incompatible", f"FP8 needs compute capability >= 8.9; this host's GPUs have {have}")
        matching = fp8
    count = _gpu_count(tags)
    if count is None:
        return judged("incompatible", f"gpu_count tag {tags.get('gpu_count')!r} is not a positive integer")
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


def cpu_only_reason(host: Host, env: Mapping[str, str]) -> str | None:
    """Why GPU profiles are out: the host's own reason, or NIM_CPU_ONLY in ``env`` (also for an assumed host)."""
    if host.cpu_only_reason:
        return host.cpu_only_reason
    if cpu_only_requested(env):
        return f"NIM_CPU_ONLY={env.get('NIM_CPU_ONLY', '').strip()} is set"
    return None


def _stat_problem(root: Path, rel: str, size: int) -> str | None:
    """Why the file at ``root/rel`` is not the manifest's (missing, not a file, other size), or None."""
    try:
        path = safe_join(root, rel)
        st = path.stat()
    except NimbuildError as exc:
        return exc.message
    except OSError:
        return f"file {rel} is missing"
    if not stat.S_ISREG(st.st_mode):
        return f"file {rel} is not a regular file"
    if st.st_size != size:
        return f"file {rel} has {st.st_size} bytes; the manifest says {size}"
    return None


def missing_file(manifest: Manifest, profile: Profile, cache_path: str | os.PathLike | None = None) -> str | None:
    """The first local file of ``profile`` that is not there with the manifest's size (stat only), or None.

    A file counts as present in the manifest's folder or at ``cache_path/<its path>``;
    remote URIs are not checked (they are fetched by download-to-cache). The
    sha256 is ``serve``'s check, before use: this one must stay cheap.
    """
    if manifest.root is None:
        return None
    for rel in sorted(profile.files):
        entry = profile.files[rel]
        if is_remote_uri(entry.uri):
            continue
        problem = _stat_problem(Path(manifest.root), rel, entry.size)
        if problem is not None and cache_path and _stat_problem(Path(cache_path), rel, entry.size) is None:
            problem = None
        if problem is not None:
            return problem
    return None


def classify(
    manifest: Manifest, host: Host, env: Mapping[str, str] = os.environ, cache_path: str | os.PathLike | None = None
) -> list[Classified]:
    """Every profile of ``manifest`` judged against ``host``, in manifest order.

    A profile the hardware can run whose files are missing or of the wrong size
    is *not runnable*, with the file in the reason (``cache_path`` defaults to
    ``NIM_CACHE_PATH``; copies there count).
    """
    if cache_path is None:
        cache_path = env.get("NIM_CACHE_PATH") or None
    reason = cpu_only_reason(host, env)
    out = []
    for profile in manifest.profiles:
        entry = _classify_one(profile, host, reason)
        if entry.status == "runnable":
            problem = missing_file(manifest, profile, cache_path)
            if problem is not None:
                entry = Classified(profile=profile, status="not_runnable", reason=problem)
        out.append(entry)
    return out


# --------------------------------------------------------------------------- rank


def is_cached(profile: Profile, cache_path: str | os.PathLike | None) -> bool:
    """Every file of the profile is in the cache at its manifest path, with the manifest's size."""
    if not cache_path or not profile.files:
        return False
    return all(_stat_problem(Path(cache_path), rel, entry.size) is None for rel, entry in profile.files.items())


def _batch(tags: Mapping[str, str]) -> int:
    try:
        return int(tags.get("max_batch_size", "0"))
    except ValueError:
        return 0


def rank_key(entry: Classified) -> tuple:
    """DESIGN.md's order: TensorRT > ONNX > PyTorch; GPU > CPU; FP8 > INT8 > FP16 > FP32;
    cached first; larger max_batch_size; then the ID."""
    tags = entry.profile.tags
    return (
        _BACKEND_RANK.get(tags.get("backend", ""), len(_BACKEND_RANK)),
        _DEVICE_RANK.get(_device(tags), len(_DEVICE_RANK)),
        _PRECISION_RANK.get(tags.get("precision", "").lower(), len(_PRECISION_RANK)),
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


# --------------------------------------------------------------------------- overrides


def parse_tags_selector(text: str) -> dict[str, str]:
    """``"precision=fp16,backend=onnx"`` -> {"precision": "fp16", "backend": "onnx"}."""
    wanted: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise NimbuildError(
                f"NIM_TAGS_SELECTOR={text!r}: {part.strip()!r} is not key=value",
                hint="write it as comma-separated key=value pairs, e.g. NIM_TAGS_SELECTOR=precision=fp16,backend=onnx",
            )
        if key in wanted and wanted[key] != value:
            raise NimbuildError(
                f"NIM_TAGS_SELECTOR={text!r}: {key} is given twice ({wanted[key]!r} and {value!r})",
                hint="give each tag once",
            )
        wanted[key] = value
    return wanted


def _runnable_list(classified: list[Classified]) -> str:
    runnable = [c for c in classified if c.status == "runnable"]
    if not runnable:
        return "no profile is runnable on this host"
    return "runnable here: " + ", ".join(f"{c.profile.id} ({c.profile.name})" for c in runnable)


def match_profiles(value: str, profiles: Sequence[Profile]) -> list[Profile]:
    """The profiles ``value`` names: a full ID, a name, or an ID prefix of at least MIN_PREFIX characters.

    One rule for NIM_MODEL_PROFILE and every ``--profile`` option; more than one
    match means the prefix is ambiguous (the caller says so).
    """
    value = (value or "").strip()
    exact = [p for p in profiles if p.id == value or p.name == value]
    if exact or len(value) < MIN_PREFIX:
        return exact
    prefix = value.lower()
    return [p for p in profiles if p.id.startswith(prefix)]


def _match_profile(value: str, classified: list[Classified]) -> list[Classified]:
    """NIM_MODEL_PROFILE, by :func:`match_profiles`."""
    ids = {id(p) for p in match_profiles(value, [c.profile for c in classified])}
    return [c for c in classified if id(c.profile) in ids]


def _apply_overrides(
    classified: list[Classified], env: Mapping[str, str], overrides: dict[str, str]
) -> list[Classified]:
    """The runnable profiles the overrides allow, best first; NimbuildError when an override cannot be met."""
    runnable = [c for c in classified if c.status == "runnable"]
    selector_text = (env.get("NIM_TAGS_SELECTOR") or "").strip()
    profile_text = (env.get("NIM_MODEL_PROFILE") or "").strip()
    pool = classified
    if selector_text:
        overrides["NIM_TAGS_SELECTOR"] = selector_text
        wanted = parse_tags_selector(selector_text)
        pool = [c for c in classified if all(c.profile.tags.get(k) == v for k, v in wanted.items())]
        if not pool:
            raise NimbuildError(
                f"NIM_TAGS_SELECTOR={selector_text!r} matches no profile in the manifest",
                hint=f"unset it or change it; {_runnable_list(classified)}",
            )
        if not any(c.status == "runnable" for c in pool) and not profile_text:
            why = "; ".join(f"{c.profile.name}: {c.reason}" for c in pool)
            raise NimbuildError(
                f"NIM_TAGS_SELECTOR={selector_text!r} matches only profiles this host cannot run ({why})",
                hint=f"unset it or change it; {_runnable_list(classified)}",
            )
    if profile_text:
        overrides["NIM_MODEL_PROFILE"] = profile_text
        matches = _match_profile(profile_text, classified)
        if not matches:
            short = f" (an ID prefix needs at least {MIN_PREFIX} characters)" if len(profile_text) < MIN_PREFIX else ""
            raise NimbuildError(
                f"NIM_MODEL_PROFILE={profile_text!r} matches no profile ID or name in the manifest{short}",
                hint=f"give a full ID, a unique ID prefix or a name; {_runnable_list(classified)}",
            )
        if len(matches) > 1:
            ids = ", ".join(f"{c.profile.id} ({c.profile.name})" for c in matches)
            raise NimbuildError(
                f"NIM_MODEL_PROFILE={profile_text!r} matches {len(matches)} profiles: {ids}",
                hint=f"give more characters of the ID, or the name; {_runnable_list(classified)}",
            )
        match = matches[0]
        if all(c is not match for c in pool):
            raise NimbuildError(
                f"NIM_MODEL_PROFILE={profile_text!r} names {match.profile.id} ({match.profile.name}), "
                f"which NIM_TAGS_SELECTOR={selector_text!r} excludes",
                hint=f"unset one of the two; {_runnable_list(classified)}",
            )
        if match.status != "runnable":
            what = "compatible but not runnable" if match.status == "not_runnable" else "incompatible"
            raise NimbuildError(
                f"NIM_MODEL_PROFILE={profile_text!r} names {match.profile.id} ({match.profile.name}), "
                f"which this host cannot run ({what}: {match.reason})",
                hint=f"unset it or pick another; {_runnable_list(classified)}",
            )
        return [match]
    allowed = {id(c) for c in pool}
    return [c for c in runnable if id(c) in allowed]


# --------------------------------------------------------------------------- select


def default_manifest_path(env: Mapping[str, str] = os.environ) -> Path:
    """``NIM_MANIFEST_PATH``, else ``manifest.yaml`` in the working directory."""
    return Path(env.get("NIM_MANIFEST_PATH") or DEFAULT_MANIFEST)


def select(
    manifest: Manifest, host: Host, env: Mapping[str, str] = os.environ, cache_path: str | os.PathLike | None = None
) -> Selection:
    """Classify, rank and apply the overrides: the decision ``serve`` acts on.

    ``cache_path`` defaults to ``NIM_CACHE_PATH``. A failing override raises
    NimbuildError; no runnable profile is ``selected=None`` (the caller says so).
    """
    if cache_path is None:
        cache_path = env.get("NIM_CACHE_PATH") or None
    classified = classify(manifest, host, env, cache_path)
    for entry in classified:
        if entry.status == "runnable":
            entry.cached = is_cached(entry.profile, cache_path)
    classified = _ordered(classified)
    overrides: dict[str, str] = {}
    candidates = _apply_overrides(classified, env, overrides)
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
    """DESIGN.md's startup lines, word for word: the groups, the selected profile, its metadata."""
    lines = profile_lines(selection.classified)
    if selection.selected is None:
        lines.append("Selected profile: none (no runnable profile)")
        return lines
    lines.append(printable(f"Selected profile: {selection.selected.id} ({selection.selected.name})"))
    lines.extend(printable(f"Profile metadata: {key}: {value}") for key, value in profile_metadata(selection.selected))
    return lines
