"""The build host: which GPU TensorRT would build on, ``--gpu auto``, and the guards before any work.

An engine only runs on the GPU (or, hardware-compatible, the compute capability)
it was built for, so the guards refuse a build on the wrong GPU up front, in one
error that names everything missing, instead of an engine tagged for a GPU it
was never built on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nimbuild.errors import NimbuildError
from nimbuild.export_layout import graph_path, tokenizer_dir
from nimbuild.skus import Sku

if TYPE_CHECKING:
    from nimbuild.builder.engines.plan import EnginePlan
    from nimbuild.builder.engines.trt_seam import TensorRTInfo

TENSORRT_HINT = (
    "run inside NVIDIA's TensorRT or Triton container (nvcr.io/nvidia/tensorrt, "
    "nvcr.io/nvidia/tritonserver) or `pip install --extra-index-url https://pypi.nvidia.com tensorrt`"
)


@dataclass(frozen=True)
class BuildGpu:
    """The GPU TensorRT would build on (CUDA device 0 of those visible)."""

    name: str
    pci_device_id: str
    compute_capability: str
    index: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "pci_device_id": self.pci_device_id,
            "compute_capability": self.compute_capability,
            "index": self.index,
        }


GpuProbe = Callable[[], tuple[BuildGpu | None, str | None]]


def visible_gpu(env: Mapping[str, str] = os.environ) -> tuple[BuildGpu | None, str | None]:
    """The GPU a build would use, through NVML, or None and why there is none.

    NVML numbers every GPU of the host; CUDA (and so TensorRT) builds on the first
    one ``CUDA_VISIBLE_DEVICES`` lets it see, given by index or UUID.
    """
    from nimbuild.runtime.hardware import detect_host

    host = detect_host({})  # NIM_CPU_ONLY is for serving, not for building
    if not host.gpus:
        return None, host.cpu_only_reason or "NVML found no GPU"
    chosen = host.gpus[0]
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        first = visible.split(",")[0].strip()
        if first == "" or first.startswith("-"):
            return None, f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
        if first.isdigit():
            matches = [g for g in host.gpus if g.index == int(first)]
        else:
            matches = [g for g in host.gpus if g.uuid and g.uuid.startswith(first)]
        if not matches:
            return None, f"CUDA_VISIBLE_DEVICES={visible!r} names no GPU that NVML sees"
        chosen = matches[0]
    return BuildGpu(chosen.name, chosen.pci_device_id, chosen.compute_capability, chosen.index), None


def resolve_sku(gpu: str, probe: GpuProbe = visible_gpu) -> Sku:
    """``--gpu SKU`` through the catalog, or ``--gpu auto``: the SKU of the visible GPU."""
    from nimbuild import skus

    if gpu.strip().lower() != "auto":
        return skus.lookup(gpu)
    found, why = probe()
    if found is None:
        raise NimbuildError(
            f"--gpu auto: no GPU visible ({why})",
            hint=f"run it on the GPU host, or name the SKU: --gpu <{skus.catalog()[0].slug}|...>",
        )
    sku = skus.by_pci_device_id(found.pci_device_id) or skus.by_nvml_name(found.name)
    if sku is None:
        raise NimbuildError(
            f"--gpu auto: the visible GPU {found.name} [{found.pci_device_id}] is not in nimbuild's SKU catalog",
            hint=f"add it to {skus.CATALOG_PATH}, or name a SKU with --gpu",
        )
    return sku


def check_host(
    plan: EnginePlan,
    gpu: BuildGpu | None,
    gpu_problem: str | None,
    trt: TensorRTInfo | None,
    trt_problem: str | None,
) -> tuple[BuildGpu, TensorRTInfo]:
    """Before any work: a GPU, TensorRT, and the GPU is the plan's SKU. One error naming all that is missing.

    Returns the GPU and TensorRT, now known to be there.
    """
    if gpu is None or trt is None:
        missing, hints = [], []
        if gpu is None:
            missing.append(f"no NVIDIA GPU is visible ({gpu_problem})")
            hints.append(f"run on a host with the {plan.sku.canonical} GPU")
        if trt is None:
            missing.append(f"TensorRT is not installed ({trt_problem})")
            hints.append(TENSORRT_HINT)
        hints.append("`--dry-run` prints the plan without either")
        raise NimbuildError(
            f"cannot build TensorRT engines for {plan.sku.slug}: {' and '.join(missing)}", hint="; ".join(hints)
        )
    sku = plan.sku
    if plan.options.hardware_compatible:
        if gpu.compute_capability != sku.compute_capability:
            raise NimbuildError(
                f"--hardware-compatible build for {sku.canonical} (compute capability {sku.compute_capability}) "
                f"needs a GPU of that compute capability; the visible one is {gpu.name} [{gpu.pci_device_id}] "
                f"with {gpu.compute_capability}",
                hint="build on a GPU of the same compute capability, or pick the SKU that is here (--gpu auto)",
            )
        level = plan.options.hardware_compatibility_level
        if level not in trt.hardware_compatibility_levels:
            raise NimbuildError(
                f"TensorRT {trt.version} cannot build {level} hardware-compatible engines",
                hint="use TensorRT >= 10.9 (a newer NVIDIA container), or build without --hardware-compatible",
            )
    elif gpu.pci_device_id not in sku.pci_device_ids:
        raise NimbuildError(
            f"--gpu {sku.slug} asks for {sku.canonical} [{', '.join(sku.pci_device_ids)}], but the visible GPU is "
            f"{gpu.name} [{gpu.pci_device_id}]",
            hint="run on a host with that GPU, use --gpu auto for this one, or --hardware-compatible "
            "to build for every GPU of the same compute capability",
        )
    return gpu, trt


def check_graphs(plan: EnginePlan) -> None:
    """Every planned graph, the FP32 reference and the tokenizer exist (nothing exported -> say so)."""
    needed = [e.graph for e in plan.planned] + [
        graph_path(plan.out_dir, "fp32"),
        tokenizer_dir(plan.out_dir),
    ]
    absent = [p for p in needed if not p.exists()]
    if absent:
        raise NimbuildError(
            f"{absent[0]} not found (needed to build and check the engines)",
            hint=f"run `nimbuild export {plan.recipe_path} --out {plan.out_dir}` first",
        )
