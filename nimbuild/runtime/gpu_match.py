"""Which GPUs of the host a profile's tags name: nimbuild's rule and NIM's.

nimbuild's TensorRT profiles match on ``gpu_device`` (PCI device:vendor, or any
id the SKU catalog lists for the same SKU), or, when built hardware-compatible,
on ``compute_capability``; names are never matched by pattern. A manifest NIM
wrote (opaque IDs) names GPUs its own way (``gpu_device``, ``product_name_regex``,
``gpu``/``key``, ``tp`` x ``pp``), matched as the NIM Operator matches them
(docs/design.md, "Selection"). Light: stdlib and nimbuild.skus only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from nimbuild import skus
from nimbuild.runtime.hardware import Gpu

AMPERE_CC = (8, 0)


def compute_capability(text: str) -> tuple[int, int] | None:
    try:
        return skus.compute_capability_tuple(text)
    except (TypeError, ValueError):
        return None


def same_device(wanted: str, gpu: Gpu) -> bool:
    """PCI ids match, or both belong to one catalog SKU (a product can have several ids)."""
    want = skus.normalize_pci_device_id(wanted)
    have = skus.normalize_pci_device_id(gpu.pci_device_id)
    if want is None or have is None:
        return False
    if want == have:
        return True
    sku = skus.by_pci_device_id(want)
    return sku is not None and have in sku.pci_device_ids


def tensorrt_match(tags: Mapping[str, str], gpus: list[Gpu]) -> tuple[list[Gpu], str]:
    """The GPUs a TensorRT engine runs on, and what it needs (for the reason when none)."""
    level = tags.get("hardware_compatibility_level")
    if level:
        want = compute_capability(tags.get("compute_capability", ""))
        if want is None:
            return (
                [],
                "hardware-compatible engine without a valid compute_capability tag "
                f"({tags.get('compute_capability')!r})",
            )
        if level in ("ampere+", "ampere_plus"):
            return (
                [g for g in gpus if (compute_capability(g.compute_capability) or (0, 0)) >= AMPERE_CC],
                "needs compute capability >= 8.0 (hardware_compatibility_level ampere+)",
            )
        return (
            [g for g in gpus if compute_capability(g.compute_capability) == want],
            f"needs compute capability {tags['compute_capability']} (hardware_compatibility_level {level})",
        )
    wanted = tags.get("gpu_device")
    if not wanted and tags.get("gpu"):
        sku = skus.by_canonical(tags["gpu"])  # a catalog lookup, not a pattern
        wanted = sku.pci_device_id if sku else None
    if not wanted:
        return [], "TensorRT profile without a gpu_device tag, so no GPU can be matched to it"
    return [g for g in gpus if same_device(wanted, g)], f"needs gpu_device {wanted}"


def gfd_name(gpu: Gpu) -> str:
    """The GPU Feature Discovery product label of a GPU (NVML's name, spaces as '-'): what NIM's
    ``product_name_regex`` and ``gpu`` tags are matched against by the NIM Operator."""
    sku = skus.by_pci_device_id(gpu.pci_device_id) if gpu.pci_device_id else None
    return sku.gfd_product if sku is not None else gpu.name.replace(" ", "-")


def nim_match(tags: Mapping[str, str], gpus: list[Gpu]) -> tuple[list[Gpu], str] | None:
    """The GPUs a NIM-written profile names, by NIM's own tags: ``gpu_device`` (PCI), else
    ``product_name_regex`` (Python's re: the lookaheads NIM writes, which the Operator's Go RE2 cannot
    evaluate), else ``gpu``/``key`` as a product name (the Operator's case-insensitive containment).
    None when the profile names no GPU (a generic profile: any GPU)."""
    if tags.get("gpu_device"):
        wanted = tags["gpu_device"]
        return [g for g in gpus if same_device(wanted, g)], f"needs gpu_device {wanted}"
    pattern = tags.get("product_name_regex")
    if pattern:
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            return [], f"product_name_regex {pattern!r} is not a valid regular expression ({exc})"
        return (
            [g for g in gpus if regex.search(gfd_name(g)) or regex.search(g.name)],
            f"needs a GPU whose product name matches {pattern!r}",
        )
    for key in ("gpu", "key"):
        product = (tags.get(key) or "").strip()
        if not product or (key == "key" and product.lower() == (tags.get("backend") or "").lower()):
            continue
        sku = skus.by_canonical(product)
        if sku is not None:
            return [g for g in gpus if same_device(sku.pci_device_id, g)], f"needs gpu {product}"
        low = product.lower()
        return (
            [g for g in gpus if low in gfd_name(g).lower() or low in g.name.lower()],
            f"needs a GPU named like {product!r} ({key} tag)",
        )
    return None


def nim_gpu_count(tags: Mapping[str, str]) -> str:
    """NIM's profiles say how many GPUs with ``tp`` (x ``pp``); nimbuild's with ``gpu_count``."""
    if "gpu_count" in tags:
        return tags["gpu_count"]
    try:
        return str(int(tags.get("tp", "1") or "1") * int(tags.get("pp", "1") or "1"))
    except ValueError:
        return tags.get("tp", "1")
