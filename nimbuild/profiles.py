"""Profile tags, canonical JSON, hashed IDs and human names.

A profile's ID is the sha256 of its tags in canonical JSON, so anyone can
recompute it from a manifest and the same recipe and toolchain give the same
IDs on every machine (docs/design.md, "Profiles, tags and IDs"). Light: stdlib and
nimbuild.skus only.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nimbuild.errors import NimbuildError

if TYPE_CHECKING:
    from nimbuild.skus import Sku

BACKENDS = ("tensorrt", "onnx")
DEVICES = ("gpu", "cpu")
PRECISIONS = ("fp8", "int8", "fp16", "fp32")
HARDWARE_COMPATIBILITY_LEVELS = ("ampere+", "same_compute_capability")
# Tags the runtime reads as numbers, and the values that can work (inclusive). A profile with another
# value is incompatible, with the reason, never "runnable, then crash" (manifests come from anywhere).
NUMERIC_TAGS = {"max_batch_size": (1, 1 << 20), "max_sequence_length": (1, 1 << 20), "gpu_count": (1, 1024)}
# What the runtime assumes when a manifest of another writer leaves a numeric tag out.
NUMERIC_TAG_DEFAULTS = {"max_batch_size": 64, "max_sequence_length": 512, "gpu_count": 1}
_DIGITS = re.compile(r"^[0-9]{1,9}$")


def _check_tags(tags: Mapping[str, object]) -> None:
    if not isinstance(tags, Mapping):
        raise NimbuildError(
            f"profile tags must be a mapping, got {type(tags).__name__}", hint='write tags as `key: "value"` pairs'
        )
    for key, value in tags.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise NimbuildError(
                f"profile tag {key!r}: every tag key and value must be a string, got {type(value).__name__} {value!r}",
                hint=f'quote it: {key}: "{value}"',
            )


def canonical_json(tags: Mapping[str, str]) -> bytes:
    """The bytes that are hashed into an ID: sorted keys, no spaces, UTF-8."""
    _check_tags(tags)
    return json.dumps(dict(tags), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def profile_id(tags: Mapping[str, str]) -> str:
    """sha256 hex of the canonical JSON of ``tags``."""
    return hashlib.sha256(canonical_json(tags)).hexdigest()


def _slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def gpu_name_slug(tags: Mapping[str, str]) -> str:
    """The GPU part of a TensorRT profile's name, from the catalog when the SKU is known."""
    from nimbuild import skus

    sku = None
    if tags.get("gpu"):
        sku = skus.by_canonical(tags["gpu"])
    if sku is None and tags.get("gpu_device"):
        sku = skus.by_pci_device_id(tags["gpu_device"])
    if sku is not None:
        return sku.name_slug
    return _slugify(tags.get("gpu", "")) or f"sm{tags.get('compute_capability', 'x').replace('.', '')}"


def profile_name(tags: Mapping[str, str]) -> str:
    """The reranking NIM's style of name for a profile.

    ``h100-hbm3-80gb-fp8-triton-tensorrt``, ``onnx-fp16-triton-onnxruntime``
    (GPU ONNX, served by Triton's ONNX Runtime backend), ``cpu-fp32-onnxruntime``,
    ``cpu-int8-avx512-vnni-onnxruntime`` (a CPU profile names its ``cpu_isa`` class).
    A hardware-compatible engine says so (``...-fp16-ampere-plus-triton-tensorrt``)
    and a multi-GPU one its count (``...-fp16-tp2-...``).
    """
    _check_tags(tags)
    backend = tags.get("backend")
    precision = tags.get("precision", "")
    device = tags.get("device")
    if backend == "tensorrt":
        parts = [gpu_name_slug(tags), precision]
        level = tags.get("hardware_compatibility_level")
        if level:
            parts.append(_slugify(level.replace("+", "-plus")))
        if tags.get("gpu_count", "1") != "1":
            parts.append(f"tp{tags['gpu_count']}")
        parts += ["triton", "tensorrt"]
    elif backend == "onnx" and device == "cpu":
        parts = ["cpu", precision, _slugify(tags.get("cpu_isa", "")), "onnxruntime"]
    elif backend == "onnx":
        parts = ["onnx", precision]
        if tags.get("gpu_count", "1") != "1":
            parts.append(f"tp{tags['gpu_count']}")
        parts += ["triton", "onnxruntime"]
    else:
        parts = [device or "any", precision, backend or "unknown"]
    return "-".join(p for p in parts if p)


def _common(
    model: str, model_revision: str, precision: str, max_batch_size: int, max_sequence_length: int
) -> dict[str, str]:
    if precision not in PRECISIONS:
        raise NimbuildError(f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}")
    if not model:
        raise NimbuildError("profile tags need a model name", hint="set `name:` in the recipe")
    return {
        "model": str(model),
        "model_revision": str(model_revision),
        "precision": precision,
        "max_batch_size": str(int(max_batch_size)),
        "max_sequence_length": str(int(max_sequence_length)),
    }


def onnx_profile_tags(
    model: str,
    model_revision: str,
    precision: str,
    device: str,
    max_batch_size: int,
    max_sequence_length: int,
    cpu_isa: str | None = None,
) -> dict[str, str]:
    """Tags of an ONNX Runtime profile: GPU (Triton's onnxruntime backend) or CPU.

    A CPU INT8 profile names the instruction-set class its graph was made and judged for
    (``cpu_isa``: nimbuild.cpu_isa), since its numerics depend on it; other profiles run on any
    CPU and carry none.
    """
    from nimbuild import cpu_isa as isa

    if device not in DEVICES:
        raise NimbuildError(f"unknown device {device!r}", hint="use 'gpu' or 'cpu'")
    tags = _common(model, model_revision, precision, max_batch_size, max_sequence_length)
    tags.update(backend="onnx", device=device)
    if device == "gpu":
        tags["gpu_count"] = "1"
    if device == "cpu" and precision == "int8":
        if not cpu_isa:
            raise NimbuildError("a CPU int8 profile needs its cpu_isa class", hint=f"pass one of: {isa.known_names()}")
        tags["cpu_isa"] = isa.lookup(cpu_isa).name
    elif cpu_isa:
        raise NimbuildError(
            f"cpu_isa {cpu_isa!r} on a {device} {precision} profile: only CPU int8 profiles carry one",
            hint="drop it: that profile runs on any CPU",
        )
    return tags


def tensorrt_profile_tags(
    model: str,
    model_revision: str,
    precision: str,
    sku: Sku | str,
    trt_version: str,
    cuda_major_version: str | int,
    max_batch_size: int,
    max_sequence_length: int,
    gpu_count: int = 1,
    hardware_compatible: bool | str = False,
) -> dict[str, str]:
    """Tags of a TensorRT engine profile built for one SKU.

    ``sku`` is a :class:`nimbuild.skus.Sku` or anything ``skus.lookup`` accepts.
    ``hardware_compatible``: False for an engine tied to this SKU (matched on
    ``gpu_device``), True (= ``ampere+``) or a TensorRT compatibility level
    name for one matched on ``compute_capability``.
    """
    from nimbuild import skus

    if isinstance(sku, str):
        sku = skus.lookup(sku)
    if precision == "fp8" and not sku.fp8:
        raise NimbuildError(
            f"FP8 needs compute capability >= 8.9; {sku.canonical} has {sku.compute_capability}",
            hint="drop fp8 for this GPU or use fp16",
        )
    tags = _common(model, model_revision, precision, max_batch_size, max_sequence_length)
    tags.update(
        backend="tensorrt",
        device="gpu",
        gpu=sku.canonical,
        gpu_device=sku.pci_device_id,
        compute_capability=sku.compute_capability,
        trt_version=str(trt_version),
        cuda_major_version=str(cuda_major_version),
        gpu_count=str(int(gpu_count)),
    )
    if hardware_compatible:
        level = "ampere+" if hardware_compatible is True else str(hardware_compatible)
        if level not in HARDWARE_COMPATIBILITY_LEVELS:
            raise NimbuildError(
                f"unknown hardware compatibility level {level!r}",
                hint=f"use one of {', '.join(HARDWARE_COMPATIBILITY_LEVELS)}",
            )
        tags["hardware_compatibility_level"] = level
    return tags


@dataclass(frozen=True)
class ServingLimits:
    """The numeric tags the runtime acts on, validated: how it batches, truncates and pins GPUs."""

    max_batch_size: int
    max_sequence_length: int
    gpu_count: int


def numeric_tag(tags: Mapping[str, str], key: str) -> int:
    """A numeric tag (:data:`NUMERIC_TAGS`) as an int, its default when absent; NimbuildError when it cannot work."""
    raw = tags.get(key)
    if raw is None:
        return NUMERIC_TAG_DEFAULTS[key]
    low, high = NUMERIC_TAGS[key]
    text = raw.strip() if isinstance(raw, str) else raw
    if not isinstance(text, str) or not _DIGITS.match(text) or not low <= int(text) <= high:
        raise NimbuildError(
            f"tag {key}={raw!r} is not an integer between {low} and {high}",
            hint=f"rebuild the profile (nimbuild manifest build), or fix tags.{key} and its id",
        )
    return int(text)


def serving_limits(tags: Mapping[str, str]) -> ServingLimits:
    """Every numeric tag of a profile, validated (the first bad one is a NimbuildError naming it)."""
    return ServingLimits(
        max_batch_size=numeric_tag(tags, "max_batch_size"),
        max_sequence_length=numeric_tag(tags, "max_sequence_length"),
        gpu_count=numeric_tag(tags, "gpu_count"),
    )


def tag_problem(tags: Mapping[str, str]) -> str | None:
    """Why a profile's tags cannot work in the runtime (a numeric tag out of its range), or None."""
    try:
        serving_limits(tags)
    except NimbuildError as exc:
        return exc.message
    return None


def describe(tags: Mapping[str, str]) -> str:
    """One short line for tables: 'tensorrt fp8 NVIDIA-H100-80GB-HBM3'."""
    parts = [tags.get("backend", "?"), tags.get("precision", "?"), tags.get("gpu") or tags.get("device", "")]
    return " ".join(p for p in parts if p)
