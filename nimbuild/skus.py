"""The GPU SKU catalog: which GPUs nimbuild knows, and every name they go by.

The data lives in ``skus.yaml`` beside this module (adding a SKU is one entry
there). This module only parses it once, checks that no two SKUs share a name,
and answers lookups by canonical name, NVML name, slug or PCI device id. It is
part of the light runtime: yaml and the standard library only.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError

CATALOG_PATH = Path(__file__).with_name("skus.yaml")
NVIDIA_VENDOR_ID = "10de"
FP8_MIN_COMPUTE_CAPABILITY = (8, 9)

_REQUIRED = (
    "canonical",
    "slugs",
    "name_slug",
    "nvml_names",
    "pci_device_ids",
    "compute_capability",
    "memory_gib",
    "gfd_product",
)
_PCI_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{4}$")
_CC_RE = re.compile(r"^\d+\.\d+$")


@dataclass(frozen=True)
class Sku:
    """One GPU product, with every spelling of its name."""

    canonical: str  # NVIDIA-H100-80GB-HBM3 (the `gpu` tag)
    slug: str  # h100-sxm (first of slugs; folder names)
    name_slug: str  # h100-hbm3-80gb (profile names)
    nvml_names: tuple[str, ...]
    pci_device_ids: tuple[str, ...]  # "2330:10de" (the first one is the `gpu_device` tag)
    compute_capability: str  # "9.0"
    memory_gib: int
    gfd_product: str  # nvidia.com/gpu.product label
    slugs: tuple[str, ...] = ()

    @property
    def fp8(self) -> bool:
        """FP8 tensor cores exist from compute capability 8.9 (Ada, Hopper, Blackwell)."""
        return compute_capability_tuple(self.compute_capability) >= FP8_MIN_COMPUTE_CAPABILITY

    @property
    def pci_device_id(self) -> str:
        return self.pci_device_ids[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "canonical": self.canonical,
            "slug": self.slug,
            "slugs": list(self.slugs),
            "name_slug": self.name_slug,
            "nvml_names": list(self.nvml_names),
            "pci_device_ids": list(self.pci_device_ids),
            "compute_capability": self.compute_capability,
            "memory_gib": self.memory_gib,
            "gfd_product": self.gfd_product,
            "fp8": self.fp8,
        }


def compute_capability_tuple(cc: str) -> tuple[int, int]:
    """'8.9' -> (8, 9), so that capabilities compare as numbers ('10.0' > '9.0')."""
    major, _, minor = str(cc).partition(".")
    return int(major), int(minor or 0)


def normalize_name(text: str) -> str:
    """Case, spaces, underscores and hyphens do not distinguish two GPUs."""
    return re.sub(r"[\s_\-]+", "-", str(text).strip().lower()).strip("-")


def normalize_pci_device_id(text: str) -> str | None:
    """Any common spelling of an NVIDIA PCI id -> 'dddd:10de', or None.

    Accepts '2330:10de', '10de:2330' (lspci order), '0x233010DE' (NVML's
    pciDeviceId: device << 16 | vendor), '0x2330' and '2330'.
    """
    t = str(text).strip().lower()
    if t.startswith("0x"):
        t = t[2:]
    if ":" in t:
        a, _, b = t.partition(":")
        a, b = a.removeprefix("0x").zfill(4), b.removeprefix("0x").zfill(4)
        if a == NVIDIA_VENDOR_ID and b != NVIDIA_VENDOR_ID:
            a, b = b, a
        pci = f"{a}:{b}"
    elif len(t) == 8:
        pci = f"{t[:4]}:{t[4:]}"
    elif 1 <= len(t) <= 4:
        pci = f"{t.zfill(4)}:{NVIDIA_VENDOR_ID}"
    else:
        return None
    return pci if _PCI_RE.match(pci) else None


def _bad(index: int, field: str, expected: str, got: object) -> NimbuildError:
    return NimbuildError(
        f"{CATALOG_PATH}: skus[{index}].{field}: expected {expected}, got {got!r}",
        hint=f"fix that entry in {CATALOG_PATH.name}",
    )


def _parse_entry(index: int, raw: object) -> Sku:
    if not isinstance(raw, dict):
        raise _bad(index, "", "a mapping", raw)
    missing = [f for f in _REQUIRED if f not in raw]
    if missing:
        raise _bad(index, missing[0], "a value (required)", None)
    unknown = sorted(set(raw) - set(_REQUIRED))
    if unknown:
        raise _bad(index, unknown[0], f"one of {', '.join(_REQUIRED)}", unknown[0])

    def str_list(field: str) -> tuple[str, ...]:
        value = raw[field]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise _bad(index, field, "a non-empty list of strings", value)
        return tuple(value)

    pcis = tuple(normalize_pci_device_id(p) or "" for p in str_list("pci_device_ids"))
    if not all(pcis):
        raise _bad(index, "pci_device_ids", "'dddd:10de' hex ids", raw["pci_device_ids"])
    cc = str(raw["compute_capability"])
    if not _CC_RE.match(cc):
        raise _bad(index, "compute_capability", "'major.minor' as a string", raw["compute_capability"])
    if not isinstance(raw["memory_gib"], int) or raw["memory_gib"] <= 0:
        raise _bad(index, "memory_gib", "a positive integer", raw["memory_gib"])
    for field in ("canonical", "name_slug", "gfd_product"):
        if not isinstance(raw[field], str) or not raw[field]:
            raise _bad(index, field, "a non-empty string", raw[field])
    if not re.match(r"^[a-z0-9][a-z0-9-]*$", raw["name_slug"]):
        raise _bad(index, "name_slug", "lower-case letters, digits and '-'", raw["name_slug"])
    slugs = str_list("slugs")
    return Sku(
        canonical=raw["canonical"],
        slug=slugs[0],
        name_slug=raw["name_slug"],
        nvml_names=str_list("nvml_names"),
        pci_device_ids=pcis,
        compute_capability=cc,
        memory_gib=raw["memory_gib"],
        gfd_product=raw["gfd_product"],
        slugs=slugs,
    )


@functools.lru_cache(maxsize=1)
def _load() -> tuple[tuple[Sku, ...], dict[str, Sku], dict[str, Sku]]:
    from nimbuild.safeload import CATALOG_LIMITS, load_yaml

    data, _ = load_yaml(
        CATALOG_PATH, what="SKU catalog", limits=CATALOG_LIMITS, hint="reinstall nimbuild or fix the file"
    )
    if not isinstance(data, dict) or not isinstance(data.get("skus"), list):
        raise NimbuildError(
            f"{CATALOG_PATH}: expected a mapping with a 'skus:' list", hint="see the comment at the top of the file"
        )
    skus = tuple(_parse_entry(i, raw) for i, raw in enumerate(data["skus"]))

    by_name: dict[str, Sku] = {}
    by_pci: dict[str, Sku] = {}
    for i, sku in enumerate(skus):
        names = {sku.canonical, sku.gfd_product, sku.name_slug, *sku.slugs, *sku.nvml_names}
        for name in {normalize_name(n) for n in names}:
            other = by_name.setdefault(name, sku)
            if other is not sku:
                raise _bad(i, "slugs", f"a name no other SKU uses ({other.canonical} has it)", name)
        for pci in sku.pci_device_ids:
            other = by_pci.setdefault(pci, sku)
            if other is not sku:
                raise _bad(i, "pci_device_ids", f"an id no other SKU uses ({other.canonical} has it)", pci)
    return skus, by_name, by_pci


def catalog() -> tuple[Sku, ...]:
    """Every known SKU, in the catalog's order."""
    return _load()[0]


def known_names() -> str:
    """The SKUs as a user can type them, for error messages."""
    return ", ".join(f"{s.slug} ({s.canonical})" for s in catalog())


def lookup(text: str) -> Sku:
    """The SKU for a canonical name, NVML name, GFD label or slug (case-insensitive).

    A PCI device id ('2330:10de') is accepted too. Anything else is a
    NimbuildError that lists the known SKUs.
    """
    _, by_name, by_pci = _load()
    sku = by_name.get(normalize_name(text))
    if sku is None and re.match(r"^(0x)?[0-9a-fA-F:x]{4,12}$", str(text).strip()):
        pci = normalize_pci_device_id(text)
        sku = by_pci.get(pci) if pci else None
    if sku is None:
        raise NimbuildError(
            f"unknown GPU SKU {text!r}",
            hint=f"use one of: {known_names()} (case-insensitive; NVML names work too), "
            f"or add an entry to {CATALOG_PATH}",
        )
    return sku


def by_pci_device_id(pci: str) -> Sku | None:
    """The SKU with this PCI device id ('2330:10de', '0x233010de', ...), or None."""
    norm = normalize_pci_device_id(pci)
    return _load()[2].get(norm) if norm else None


def by_nvml_name(name: str) -> Sku | None:
    """The SKU whose NVML product name is ``name`` (case/space-insensitive), or None."""
    norm = normalize_name(name)
    for sku in catalog():
        if any(normalize_name(n) == norm for n in sku.nvml_names):
            return sku
    return None


def by_canonical(name: str) -> Sku | None:
    """The SKU whose canonical name (the `gpu` tag) is ``name``, or None."""
    norm = normalize_name(name)
    for sku in catalog():
        if normalize_name(sku.canonical) == norm:
            return sku
    return None
