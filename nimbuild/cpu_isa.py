"""CPU instruction-set classes (the ``cpu_isa`` tag of CPU INT8 profiles), and this host's.

INT8 numerics depend on the CPU that runs them. ONNX Runtime's u8s8 GEMM (MLAS) multiplies
uint8 activations by int8 weights; on AVX2 (and AVX-512 without VNNI) it does so with
``vpmaddubsw``, which adds two products into a *saturating* int16: with full-range weights
(|w| <= 127) two products can reach 2 * 255 * 127 = 64770 > 32767 and the sum clips. VNNI
(``vpdpbusd[s]``: AVX-512 VNNI, AVX-VNNI, and AMX's ``tdpbusd``) sums four products into int32,
and arm64's kernels (``udot``/``sdot``, or NEON widening multiplies) widen too: exact. With
7-bit weights (|w| <= 64, ``reduce_range``) two products stay <= 2 * 255 * 64 = 32640, so the
same integers come out of every kernel.

So a CPU INT8 graph is made *for a class*, and that class, not the build machine, fixes how it
is quantized (``weight_bits``); the ``cpu_isa`` tag names the class, so a profile's ID changes
when its numerics do:

- ``avx512_vnni``: full 8-bit weights, for x86-64 CPUs with a VNNI dot product (AVX-512 VNNI,
  AVX-VNNI or AMX-INT8), where u8s8 sums are exact int32;
- ``avx2``: 7-bit weights, exact on every x86-64 INT8 kernel; a VNNI CPU has this class too
  (VNNI is a superset of AVX2, and the 7-bit graph's integers are the same there);
- ``arm64_dotprod``: full 8-bit weights, for arm64 CPUs with the dot-product extension
  (``asimddp``: Graviton 2+, Ampere Altra, Grace, Apple M).

A host *has* a class when it runs that class's graph with the integers it was judged with;
a build judges (and so makes) only the classes its own CPU has. Light on purpose: the runtime
reads the host's CPU with this module (the first ``flags`` line of /proc/cpuinfo, or the
platform), so it imports the standard library and nimbuild.errors only.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from nimbuild.errors import NimbuildError

CPUINFO = "/proc/cpuinfo"
NONE = "none"  # --assume-cpu none: a CPU with no INT8 class (x86-64 without AVX2, riscv64, ...)
# /proc/cpuinfo flags worth showing in SYSTEM INFO (the rest of the line says nothing about INT8)
SHOWN_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
_X86 = {"x86_64", "amd64", "x64", "i386", "i686", "x86"}
_ARM64 = {"aarch64", "arm64", "armv8", "armv8l", "arm64e"}


@dataclass(frozen=True)
class CpuIsa:
    """One class: what its graphs are made with and which CPUs run them with the same integers."""

    name: str  # the `cpu_isa` tag value
    machine: str  # "x86_64" | "arm64"
    weight_bits: int  # 8: full int8 weights; 7: reduce_range
    needs: str  # what a host must have, in words (the incompatible reason and --help)
    implies: tuple[str, ...] = ()  # lower classes a host of this class also has

    @property
    def reduce_range(self) -> bool:
        """ONNX Runtime's quantizer option for this class (7-bit weights)."""
        return self.weight_bits == 7

    @property
    def slug(self) -> str:
        """Its part of a profile name and of folder names: ``avx512-vnni``."""
        return self.name.replace("_", "-")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "machine": self.machine, "weight_bits": self.weight_bits, "needs": self.needs}


# Preferred first: among the classes a host has, the first one's graph is selected. A VNNI host runs the
# avx2 and the avx512_vnni graph with the same kernel (vpdpbusd does not care how wide the weights are),
# so at the same speed; the full-range one has twice the weight resolution (benchmarks/RESULTS-cpu-isa.md).
CLASSES: tuple[CpuIsa, ...] = (
    CpuIsa(
        "avx512_vnni",
        "x86_64",
        8,
        "an x86-64 CPU with a VNNI dot product (AVX-512 VNNI, AVX-VNNI or AMX-INT8)",
        implies=("avx2",),
    ),
    CpuIsa("arm64_dotprod", "arm64", 8, "an arm64 CPU with the dot-product extension (asimddp)"),
    CpuIsa("avx2", "x86_64", 7, "an x86-64 CPU with AVX2"),
)
_BY_NAME = {c.name: c for c in CLASSES}
NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)


def known_names() -> str:
    return ", ".join(NAMES)


def get(name: str) -> CpuIsa | None:
    """The class of that tag value, or None."""
    return _BY_NAME.get(name)


def lookup(text: str, what: str = "cpu_isa") -> CpuIsa:
    """The class named ``text`` (case-insensitive, ``-`` for ``_``); a NimbuildError listing the known ones."""
    key = (text or "").strip().lower().replace("-", "_")
    found = _BY_NAME.get(key)
    if found is None:
        raise NimbuildError(f"{what} {text!r} is not a CPU class nimbuild knows", hint=f"use one of: {known_names()}")
    return found


def preference(name: str | None) -> int:
    """Rank of a class among those a host has (lower is preferred); unknown or absent last."""
    return NAMES.index(name) if name in _BY_NAME else len(NAMES)


def normalize_machine(machine: str) -> str:
    """``x86_64`` / ``arm64`` for the spellings platforms use, else the lower-cased name."""
    m = (machine or "").strip().lower()
    if m in _X86:
        return "x86_64"
    if m in _ARM64:
        return "arm64"
    return m or "unknown"


def classes_for(machine: str, flags: Iterable[str]) -> tuple[str, ...]:
    """The classes a CPU with these /proc/cpuinfo flags has, preferred first."""
    machine, have = normalize_machine(machine), set(flags)
    found: set[str] = set()
    if machine == "x86_64" and "avx2" in have:
        found.add("avx2")
        if have & _VNNI_FLAGS:
            found.add("avx512_vnni")
    if machine == "arm64" and "asimddp" in have:
        found.add("arm64_dotprod")
    return tuple(n for n in NAMES if n in found)


@dataclass(frozen=True)
class HostCpu:
    """What a host's CPU offers INT8 graphs: its classes, and where that was learnt."""

    machine: str  # x86_64 | arm64 | ...
    classes: tuple[str, ...]  # preferred first; () = none (CPU INT8 profiles are incompatible)
    flags: tuple[str, ...] = ()  # the SHOWN_FLAGS it has
    model: str | None = None  # "AMD EPYC 7B13"
    source: str = CPUINFO  # /proc/cpuinfo | platform | --assume-cpu | unknown
    unknown_reason: str | None = None  # set when the flags could not be read

    @property
    def assumed(self) -> bool:
        return self.source == "--assume-cpu"

    def has(self, name: str) -> bool:
        return name in self.classes

    def classes_text(self) -> str:
        """``avx512_vnni, avx2`` or a sentence saying why there is none."""
        if self.classes:
            return ", ".join(self.classes)
        if self.unknown_reason:
            return f"no known class ({self.unknown_reason})"
        if self.machine == "x86_64":
            return "none of them (x86-64 without AVX2)"
        return f"none of them ({self.machine})"

    def incompatible_reason(self, name: str) -> str | None:
        """Why a profile made for class ``name`` cannot run here, or None when it can."""
        if name in self.classes:
            return None
        if name not in _BY_NAME:
            return f"cpu_isa {name!r} is not a CPU class this nimbuild knows ({known_names()})"
        reason = f"needs {name}; this host has {self.classes_text()}"
        if self.unknown_reason:
            reason += "; preview or force a class with --assume-cpu"
        return reason

    def describe(self) -> str:
        """The SYSTEM INFO line's text: ``AMD EPYC 7B13 (x86_64; avx2), cpu_isa: avx2``."""
        if self.assumed:
            return f"assumed with --assume-cpu (not detected), cpu_isa: {self.classes_text()}"
        what = ", ".join([self.machine, *self.flags]) if self.flags else self.machine
        head = f"{self.model} ({what})" if self.model else what
        return f"{head}, cpu_isa: {self.classes_text()}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "machine": self.machine,
            "model": self.model,
            "flags": list(self.flags),
            "cpu_isa": list(self.classes),
            "source": self.source,
            "assumed": self.assumed,
            "unknown_reason": self.unknown_reason,
        }


def unknown_cpu(reason: str = "the CPU was not detected") -> HostCpu:
    """A CPU nothing is known about: no class (what a Host made without detection carries)."""
    return HostCpu(machine=normalize_machine(platform.machine()), classes=(), source="unknown", unknown_reason=reason)


def from_flags(machine: str, flags: Iterable[str], model: str | None = None, source: str = CPUINFO) -> HostCpu:
    have = set(flags)
    machine = normalize_machine(machine)
    return HostCpu(
        machine=machine,
        classes=classes_for(machine, have),
        flags=tuple(f for f in SHOWN_FLAGS if f in have),
        model=model,
        source=source,
    )


def _read_cpuinfo(path: str) -> tuple[set[str] | None, str | None]:
    """The first processor's flags (x86 ``flags``, arm64 ``Features``) and model name; stops at the flags."""
    flags: set[str] | None = None
    model = None
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            key, sep, value = line.partition(":")
            if not sep:
                continue
            key = key.strip()
            if key == "model name" and model is None:
                model = value.strip() or None
            elif key in ("flags", "Features"):
                flags = set(value.split())
                break
    return flags, model


def _windows_flags() -> set[str] | None:
    """AVX2 through IsProcessorFeaturePresent (VNNI has no such query: such a host gets the avx2 class)."""
    try:
        import ctypes

        present = ctypes.windll.kernel32.IsProcessorFeaturePresent  # type: ignore[attr-defined]
        return {"avx2"} if present(40) else set()  # PF_AVX2_INSTRUCTIONS_AVAILABLE
    except Exception:
        return None


def detect_cpu(
    cpuinfo: str | os.PathLike[str] = CPUINFO, machine: str | None = None, system: str | None = None
) -> HostCpu:
    """This host's CPU classes, cheaply: /proc/cpuinfo's first flags line, else what the platform tells.

    Never raises: a CPU whose flags cannot be read has no class, with the reason
    (CPU INT8 profiles are then incompatible; ``--assume-cpu`` overrides).
    """
    machine = normalize_machine(machine or platform.machine())
    system = system or platform.system()
    try:
        flags, model = _read_cpuinfo(os.fspath(cpuinfo))
    except OSError:
        flags, model = None, None
    if flags is not None:
        return from_flags(machine, flags, model)
    if system == "Darwin" and machine == "arm64":  # every Apple silicon CPU has the dot product (ARMv8.4+)
        return from_flags(machine, {"asimddp"}, source="platform")
    if system == "Windows":
        win = _windows_flags()
        if win is not None:
            return from_flags(machine, win, platform.processor() or None, source="platform")
    return HostCpu(
        machine=machine,
        classes=(),
        source="unknown",
        unknown_reason=f"no CPU flags in {os.fspath(cpuinfo)} on {system} {machine}",
    )


def assumed_cpu(text: str) -> HostCpu:
    """``--assume-cpu CLASS``: a host with that class (and those it implies), or ``none``."""
    key = (text or "").strip().lower().replace("-", "_")
    if key == NONE:
        return HostCpu(machine=normalize_machine(platform.machine()), classes=(), source="--assume-cpu")
    try:
        chosen = lookup(text, "--assume-cpu")
    except NimbuildError as exc:
        raise NimbuildError(exc.message, hint=f"use one of: {known_names()}, or {NONE}") from None
    have = {chosen.name, *chosen.implies}
    return HostCpu(machine=chosen.machine, classes=tuple(n for n in NAMES if n in have), source="--assume-cpu")
