"""What this host has: its GPUs as NVML reports them, or why it counts as a CPU host.

Detection goes through NVML (``pynvml`` from nvidia-ml-py, imported only when
detecting). Every way NVML can be missing or fail (package not installed, no
``libnvidia-ml.so``, driver not loaded, no permission, no GPU) ends in a CPU host
whose ``cpu_only_reason`` says why, never in an exception: a CPU host is a valid
host. ``NIM_CPU_ONLY`` (any true value) makes any host a CPU host; its GPUs are
still listed, so that SYSTEM INFO shows what is being ignored.

``assumed_host`` replaces detection with GPUs from the SKU catalog
(``--assume-gpu``), so that a laptop can preview what an H100 node would select.

The CPU is part of the host too: its INT8 instruction-set classes (``Host.cpu``,
nimbuild.cpu_isa: /proc/cpuinfo's first flags line, no heavy import), which CPU INT8
profiles are matched on; ``--assume-cpu`` replaces that detection the same way.
``host_for`` is the one place the options and the environment become a Host.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nimbuild import cpu_isa, skus
from nimbuild.errors import NimbuildError
from nimbuild.safe_text import printable

_COUNT_SUFFIX = re.compile(r"^(?P<name>.+?)\s*[x×*]\s*(?P<count>\d+)$", re.IGNORECASE)
MAX_ASSUMED_GPUS = 64


@dataclass
class Gpu:
    """One GPU as NVML (or the SKU catalog, for an assumed host) describes it."""

    index: int
    name: str  # NVML product name: "NVIDIA H100 80GB HBM3"
    pci_device_id: str  # "2330:10de" (device:vendor, lower-case hex)
    compute_capability: str  # "9.0"
    memory_total_mib: int  # 0 when NVML could not tell
    memory_free_mib: int
    uuid: str | None = None  # "GPU-..."; CUDA_VISIBLE_DEVICES accepts it, unlike NVML indexes

    @property
    def sku(self) -> skus.Sku | None:
        """The catalog entry, found by PCI device id first (names can be ambiguous), then NVML name."""
        return skus.by_pci_device_id(self.pci_device_id) or skus.by_nvml_name(self.name)

    @property
    def memory_known(self) -> bool:
        return self.memory_total_mib > 0

    def describe(self) -> str:
        """One SYSTEM INFO line: ``[2330:10de] (0) NVIDIA H100 80GB HBM3 ...``."""
        sku = self.sku
        known = f" ({sku.canonical})" if sku else " (not in nimbuild's SKU catalog)"
        memory = (
            f", {self.memory_total_mib} MiB total, {self.memory_free_mib} MiB free"
            if self.memory_known
            else ", memory unknown"
        )
        where = f"[{self.pci_device_id}] ({self.index}) {self.name}{known}"
        return f"{where}, compute capability {self.compute_capability}{memory}"

    def to_dict(self) -> dict[str, Any]:
        sku = self.sku
        return {
            "index": self.index,
            "name": self.name,
            "pci_device_id": self.pci_device_id,
            "compute_capability": self.compute_capability,
            "memory_total_mib": self.memory_total_mib,
            "memory_free_mib": self.memory_free_mib,
            "uuid": self.uuid,
            "sku": sku.canonical if sku else None,
        }


@dataclass
class Host:
    """The GPUs of a host, or the reason it is a CPU host.

    ``gpus`` lists what was seen even when ``cpu_only_reason`` is set (NIM_CPU_ONLY
    on a GPU host); ``usable_gpus`` is what selection may use.
    """

    gpus: list[Gpu]
    cpu_only_reason: str | None
    driver_version: str | None = None
    cuda_driver_version: str | None = None  # "12.4": the newest CUDA the driver supports
    assumed: bool = False  # the GPUs come from --assume-gpu
    notes: list[str] = field(default_factory=list)  # GPUs NVML could only partly describe
    cpu: cpu_isa.HostCpu = field(default_factory=cpu_isa.unknown_cpu)  # its INT8 classes (detect_host reads them)

    @property
    def usable_gpus(self) -> list[Gpu]:
        return [] if self.cpu_only_reason else list(self.gpus)

    @property
    def is_cpu_only(self) -> bool:
        return not self.usable_gpus

    def system_info(self) -> list[str]:
        """The SYSTEM INFO block, as list-model-profiles prints it."""
        lines = ["SYSTEM INFO"]
        if self.assumed:
            lines.append("- Host: assumed with --assume-gpu (not detected)")
        if self.gpus:
            lines.append("- GPUs:")
            lines.extend(f"  - {gpu.describe()}" for gpu in self.gpus)
        else:
            lines.append(f"- GPUs: no GPU ({self.cpu_only_reason or 'none found'})")
        if self.gpus and self.cpu_only_reason:
            lines.append(f"- CPU only: {self.cpu_only_reason}")
        if self.driver_version or self.cuda_driver_version:
            lines.append(f"- Driver: {self.driver_version or 'unknown'} (CUDA {self.cuda_driver_version or 'unknown'})")
        lines.append(f"- CPU: {self.cpu.describe()}")
        lines.extend(f"- Note: {note}" for note in self.notes)
        return [printable(line) for line in lines]  # names and reasons from the driver or the environment

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpus": [gpu.to_dict() for gpu in self.gpus],
            "cpu_only": self.is_cpu_only,
            "cpu_only_reason": self.cpu_only_reason,
            "driver_version": self.driver_version,
            "cuda_driver_version": self.cuda_driver_version,
            "assumed": self.assumed,
            "notes": list(self.notes),
            "cpu": self.cpu.to_dict(),
        }


def _text(value: Any) -> str:
    """pynvml returns str in new releases and bytes in old ones."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def pci_device_id_from_nvml(pci_device_id: int) -> str:
    """NVML's ``pciDeviceId`` (device << 16 | vendor) -> ``"2330:10de"``."""
    return f"{(pci_device_id >> 16) & 0xFFFF:04x}:{pci_device_id & 0xFFFF:04x}"


def cuda_version_text(version: int) -> str:
    """NVML's CUDA driver version (12040) -> ``"12.4"``."""
    return f"{version // 1000}.{(version % 1000) // 10}"


def _init_failure_reason(pynvml: Any, exc: BaseException) -> str:
    """Why nvmlInit failed, in words a user can act on."""
    value = getattr(exc, "value", None)
    if value == getattr(pynvml, "NVML_ERROR_LIBRARY_NOT_FOUND", object()):
        return "NVML library (libnvidia-ml.so.1) not found: no NVIDIA driver on this host"
    if value == getattr(pynvml, "NVML_ERROR_DRIVER_NOT_LOADED", object()):
        return "NVIDIA driver not loaded (NVML: Driver Not Loaded)"
    if value == getattr(pynvml, "NVML_ERROR_NO_PERMISSION", object()):
        return "no permission to query the GPUs through NVML"
    return f"NVML failed to start: {exc}"


def _query_gpu(pynvml: Any, index: int, notes: list[str]) -> Gpu | None:
    """One GPU, or None (with a note) when NVML cannot say what it is."""
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = _text(pynvml.nvmlDeviceGetName(handle))
        pci = pci_device_id_from_nvml(int(pynvml.nvmlDeviceGetPciInfo(handle).pciDeviceId))
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    except Exception as exc:  # NVMLError and whatever an old pynvml lacks
        notes.append(f"GPU {index} skipped: NVML could not describe it ({exc})")
        return None
    try:
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        total, free = int(memory.total) // (1024 * 1024), int(memory.free) // (1024 * 1024)
    except Exception as exc:
        notes.append(f"GPU {index}: memory unknown ({exc}); the free-memory check is skipped for it")
        total = free = 0
    try:
        uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
    except Exception:
        uuid = None
    return Gpu(
        index=index,
        name=name,
        pci_device_id=pci,
        compute_capability=f"{major}.{minor}",
        memory_total_mib=total,
        memory_free_mib=free,
        uuid=uuid,
    )


def _detect_gpus() -> Host:
    """Ask NVML; every failure is a CPU host with its reason."""
    try:
        import pynvml
    except ImportError:
        return Host(gpus=[], cpu_only_reason="nvidia-ml-py (pynvml) is not installed, so GPUs cannot be detected")
    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return Host(gpus=[], cpu_only_reason=_init_failure_reason(pynvml, exc))
    notes: list[str] = []
    try:
        try:
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
        except Exception:
            driver = None
        try:
            cuda = cuda_version_text(int(pynvml.nvmlSystemGetCudaDriverVersion()))
        except Exception:
            cuda = None
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        except Exception as exc:
            return Host(
                gpus=[],
                cpu_only_reason=f"NVML could not count the GPUs: {exc}",
                driver_version=driver,
                cuda_driver_version=cuda,
            )
        gpus = [gpu for i in range(count) if (gpu := _query_gpu(pynvml, i, notes)) is not None]
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    if not gpus:
        reason = "NVML found no GPU" if count == 0 else "NVML could not describe any GPU"
        return Host(gpus=[], cpu_only_reason=reason, driver_version=driver, cuda_driver_version=cuda, notes=notes)
    return Host(gpus=gpus, cpu_only_reason=None, driver_version=driver, cuda_driver_version=cuda, notes=notes)


def detect_host(env: Mapping[str, str] = os.environ) -> Host:
    """This host's GPUs through NVML and its CPU's classes; ``NIM_CPU_ONLY`` makes it a CPU host."""
    from nimbuild.runtime.settings import read_settings

    reason = read_settings(env).cpu_only_reason
    host = _detect_gpus()
    host.cpu = cpu_isa.detect_cpu()
    if reason:
        host.cpu_only_reason = reason if host.gpus else f"{host.cpu_only_reason}; {reason}"
    return host


def _parse_spec(spec: str) -> tuple[skus.Sku, int]:
    """``"NVIDIA L40S x2"`` -> (L40S, 2); a plain name means one GPU."""
    text = spec.strip()
    try:
        return skus.lookup(text), 1
    except NimbuildError as first_error:
        match = _COUNT_SUFFIX.match(text)
        if not match:
            raise NimbuildError(f"--assume-gpu {spec!r}: {first_error.message}", hint=first_error.hint) from None
        count = int(match.group("count"))
        if not 1 <= count <= MAX_ASSUMED_GPUS:
            raise NimbuildError(
                f"--assume-gpu {spec!r}: GPU count {count} is out of range",
                hint=f"give 1 to {MAX_ASSUMED_GPUS}, as in 'h100-sxm x4'",
            ) from None
        try:
            return skus.lookup(match.group("name")), count
        except NimbuildError as exc:
            raise NimbuildError(f"--assume-gpu {spec!r}: {exc.message}", hint=exc.hint) from None


def assumed_host(specs: list[str]) -> Host:
    """A host with these GPUs (catalog names, NVML names or slugs, each optionally ``xN``), all memory free."""
    gpus: list[Gpu] = []
    for spec in specs:
        sku, count = _parse_spec(spec)
        for _ in range(count):
            memory = sku.memory_gib * 1024
            gpus.append(
                Gpu(
                    index=len(gpus),
                    name=sku.nvml_names[0],
                    pci_device_id=sku.pci_device_id,
                    compute_capability=sku.compute_capability,
                    memory_total_mib=memory,
                    memory_free_mib=memory,
                )
            )
    if not gpus:
        return Host(gpus=[], cpu_only_reason="assumed host without GPUs", assumed=True)
    return Host(gpus=gpus, cpu_only_reason=None, assumed=True)


def host_for(
    env: Mapping[str, str] = os.environ, assume_gpu: list[str] | None = None, assume_cpu: str | None = None
) -> Host:
    """The host that listing, ``select`` and ``serve`` judge: detected, or assumed part by part.

    ``assume_gpu`` replaces the GPUs (NVML) and ``assume_cpu`` the CPU class (/proc/cpuinfo);
    what is not assumed is detected. ``NIM_CPU_ONLY`` applies to an assumed host too.
    """
    if assume_gpu:
        from nimbuild.runtime.settings import read_settings

        host = assumed_host(list(assume_gpu))
        reason = read_settings(env).cpu_only_reason
        if reason:  # the preview honours NIM_CPU_ONLY too, and says so
            host.cpu_only_reason = reason
        host.cpu = cpu_isa.detect_cpu()
    else:
        host = detect_host(env)
    if assume_cpu is not None:
        host.cpu = cpu_isa.assumed_cpu(assume_cpu)
    return host
