"""nimbuild.builder.engines.host: the build host's GPU (NVML, CUDA_VISIBLE_DEVICES), --gpu auto and the guards."""

from __future__ import annotations

import pytest

from nimbuild import skus
from nimbuild.builder.engines import trt_seam
from nimbuild.builder.engines.host import BuildGpu, check_host, resolve_sku, visible_gpu
from nimbuild.builder.engines.plan import BuildOptions, plan_engines
from nimbuild.errors import NimbuildError

from .engines_support import A100, H100, H100_PCIE, probe

# ----------------------------------------------------------------------------- guards


def test_no_gpu_and_no_tensorrt_is_one_error_naming_both(recipe, export_dir):
    plan = plan_engines(recipe, skus.lookup("h100-sxm"), export_dir)
    with pytest.raises(NimbuildError) as exc:
        check_host(plan, None, "NVML library not found", None, "No module named 'tensorrt'")
    text = str(exc.value)
    assert "no NVIDIA GPU is visible" in text and "TensorRT is not installed" in text
    assert "nvcr.io/nvidia/tensorrt" in text and "pypi.nvidia.com" in text and "\n" not in text

    with pytest.raises(NimbuildError) as exc:
        check_host(plan, H100, None, None, "No module named 'tensorrt'")
    assert "TensorRT is not installed" in str(exc.value) and "GPU is visible" not in str(exc.value)


def test_the_visible_gpu_must_be_the_requested_sku(recipe, export_dir):
    trt = trt_seam.TensorRTInfo("10.13.0.35", "12", ("none", "ampere_plus", "same_compute_capability"))
    plan = plan_engines(recipe, skus.lookup("h100-sxm"), export_dir)
    check_host(plan, H100, None, trt, None)  # the right GPU: no error
    with pytest.raises(NimbuildError, match=r"visible GPU is NVIDIA H100 PCIe \[2331:10de\]"):
        check_host(plan, H100_PCIE, None, trt, None)

    # hardware-compatible: same compute capability is enough; another one is not
    compat = plan_engines(recipe, skus.lookup("h100-sxm"), export_dir, BuildOptions(hardware_compatible=True))
    check_host(compat, H100_PCIE, None, trt, None)
    with pytest.raises(NimbuildError, match="compute capability 9.0"):
        check_host(compat, A100, None, trt, None)
    old = trt_seam.TensorRTInfo("10.3.0.26", "12", ("none", "ampere_plus"))
    with pytest.raises(NimbuildError, match=r"TensorRT 10.3.0.26 cannot build same_compute_capability"):
        check_host(compat, H100_PCIE, None, old, None)


def test_gpu_auto_is_the_sku_of_the_visible_gpu():
    assert resolve_sku("auto", probe(H100)).canonical == "NVIDIA-H100-80GB-HBM3"
    assert resolve_sku("AUTO", probe(A100)).slug == "a100-sxm4-80gb"
    assert resolve_sku("NVIDIA H100 80GB HBM3", probe(None)).slug == "h100-sxm"
    with pytest.raises(NimbuildError, match="no GPU visible"):
        resolve_sku("auto", lambda: (None, "NVML found no GPU"))
    with pytest.raises(NimbuildError, match="not in nimbuild's SKU catalog"):
        resolve_sku("auto", probe(BuildGpu("NVIDIA Mystery", "ffff:10de", "9.9")))
    with pytest.raises(NimbuildError, match="h100-sxm"):
        resolve_sku("nonsense")


def test_visible_gpu_follows_cuda_visible_devices(monkeypatch):
    from nimbuild.runtime import hardware

    gpus = [
        hardware.Gpu(0, "NVIDIA A100-SXM4-80GB", "20b2:10de", "8.0", 81920, 81920, uuid="GPU-aaaa"),
        hardware.Gpu(1, "NVIDIA H100 80GB HBM3", "2330:10de", "9.0", 81559, 81559, uuid="GPU-bbbb"),
    ]
    monkeypatch.setattr(hardware, "detect_host", lambda env=None: hardware.Host(gpus=gpus, cpu_only_reason=None))
    assert visible_gpu({})[0].pci_device_id == "20b2:10de"
    assert visible_gpu({"CUDA_VISIBLE_DEVICES": "1,0"})[0].pci_device_id == "2330:10de"
    assert visible_gpu({"CUDA_VISIBLE_DEVICES": "GPU-bbbb"})[0].name == "NVIDIA H100 80GB HBM3"
    gpu, why = visible_gpu({"CUDA_VISIBLE_DEVICES": "-1"})
    assert gpu is None and "hides every GPU" in why
    gpu, why = visible_gpu({"CUDA_VISIBLE_DEVICES": "7"})
    assert gpu is None and "names no GPU" in why
