"""Hardware detection through a fake pynvml (real NVML is absent here), and assumed hosts.

The fake mimics nvidia-ml-py's surface: NVMLError with a ``value`` code, the
NVML_ERROR_* constants, and the functions detect_host calls. Each test breaks
one thing and checks that the host becomes a CPU host with a precise reason
(or that only the broken GPU is left out), never an exception.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass

import pytest

from nimbuild import cpu_isa
from nimbuild.errors import NimbuildError
from nimbuild.runtime import hardware
from nimbuild.runtime.hardware import assumed_host, detect_host

MIB = 1024 * 1024


class FakeNVMLError(Exception):
    def __init__(self, value: int):
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {
            3: "Not Supported",
            4: "Insufficient Permissions",
            9: "Driver Not Loaded",
            12: "NVML Shared Library Not Found",
            15: "GPU is lost",
            999: "Unknown Error",
        }.get(self.value, "?")


@dataclass
class FakeGpu:
    name: str | bytes
    pci: int  # NVML's pciDeviceId: device << 16 | vendor
    cc: tuple[int, int]
    total_mib: int
    free_mib: int
    uuid: str = "GPU-00000000-0000-0000-0000-000000000000"
    broken: str | None = None  # which call fails for this GPU: "name", "pci", "memory"


def fake_pynvml(
    gpus: list[FakeGpu],
    *,
    init_error: int | None = None,
    count_error: int | None = None,
    cuda: int = 12040,
    driver: str | bytes = "550.54.15",
) -> types.ModuleType:
    mod = types.ModuleType("pynvml")
    mod.NVMLError = FakeNVMLError
    mod.NVML_ERROR_NOT_SUPPORTED = 3
    mod.NVML_ERROR_NO_PERMISSION = 4
    mod.NVML_ERROR_DRIVER_NOT_LOADED = 9
    mod.NVML_ERROR_LIBRARY_NOT_FOUND = 12
    mod.calls = []

    def init():
        mod.calls.append("init")
        if init_error is not None:
            raise FakeNVMLError(init_error)

    def shutdown():
        mod.calls.append("shutdown")

    def count():
        if count_error is not None:
            raise FakeNVMLError(count_error)
        return len(gpus)

    def check(gpu: FakeGpu, call: str):
        if gpu.broken == call:
            raise FakeNVMLError(3 if call == "memory" else 15)

    mod.nvmlInit = init
    mod.nvmlShutdown = shutdown
    mod.nvmlDeviceGetCount = count
    mod.nvmlSystemGetDriverVersion = lambda: driver
    mod.nvmlSystemGetCudaDriverVersion = lambda: cuda
    mod.nvmlDeviceGetHandleByIndex = lambda i: gpus[i]

    def name(gpu):
        check(gpu, "name")
        return gpu.name

    def pci(gpu):
        check(gpu, "pci")
        return types.SimpleNamespace(pciDeviceId=gpu.pci, busId=b"00000000:01:00.0")

    def memory(gpu):
        check(gpu, "memory")
        return types.SimpleNamespace(total=gpu.total_mib * MIB, free=gpu.free_mib * MIB, used=0)

    mod.nvmlDeviceGetName = name
    mod.nvmlDeviceGetPciInfo = pci
    mod.nvmlDeviceGetCudaComputeCapability = lambda gpu: gpu.cc
    mod.nvmlDeviceGetMemoryInfo = memory

    def uuid(gpu):
        check(gpu, "uuid")
        return gpu.uuid

    mod.nvmlDeviceGetUUID = uuid
    return mod


H100 = FakeGpu("NVIDIA H100 80GB HBM3", 0x233010DE, (9, 0), 81559, 80000, uuid="GPU-h100")
L40S = FakeGpu("NVIDIA L40S", 0x26B910DE, (8, 9), 46068, 40000, uuid="GPU-l40s")


ZEN3 = cpu_isa.from_flags("x86_64", {"avx", "avx2", "sse4_1"}, "AMD EPYC 7B13")


@pytest.fixture
def nvml(monkeypatch):
    """Install a fake pynvml: ``nvml([gpus], **options)`` returns the module (and the CPU is an AVX2 Zen 3)."""
    monkeypatch.setattr(cpu_isa, "detect_cpu", lambda *args, **kwargs: ZEN3)

    def install(gpus, **options):
        mod = fake_pynvml(gpus, **options)
        monkeypatch.setitem(sys.modules, "pynvml", mod)
        return mod

    return install


def test_detects_each_gpu_with_pci_id_cc_memory_and_driver(nvml):
    mod = nvml([H100, L40S])
    host = detect_host({})
    assert host.cpu_only_reason is None and not host.assumed and not host.is_cpu_only
    assert [g.pci_device_id for g in host.gpus] == ["2330:10de", "26b9:10de"]
    assert [g.compute_capability for g in host.gpus] == ["9.0", "8.9"]
    assert [(g.memory_total_mib, g.memory_free_mib) for g in host.gpus] == [(81559, 80000), (46068, 40000)]
    assert [g.index for g in host.gpus] == [0, 1]
    assert [g.uuid for g in host.gpus] == ["GPU-h100", "GPU-l40s"]
    assert host.gpus[0].sku.canonical == "NVIDIA-H100-80GB-HBM3"
    assert host.gpus[1].sku.canonical == "NVIDIA-L40S"
    assert host.driver_version == "550.54.15" and host.cuda_driver_version == "12.4"
    assert mod.calls == ["init", "shutdown"]


def test_old_pynvml_returning_bytes(nvml):
    nvml([FakeGpu(b"NVIDIA A100-SXM4-80GB", 0x20B210DE, (8, 0), 81920, 81000)], driver=b"535.1", cuda=12020)
    host = detect_host({})
    assert host.gpus[0].name == "NVIDIA A100-SXM4-80GB"
    assert host.gpus[0].pci_device_id == "20b2:10de"
    assert host.driver_version == "535.1" and host.cuda_driver_version == "12.2"


def test_pci_and_cuda_version_conversions():
    assert hardware.pci_device_id_from_nvml(0x233010DE) == "2330:10de"
    assert hardware.pci_device_id_from_nvml(0x1EB810DE) == "1eb8:10de"
    assert hardware.cuda_version_text(12040) == "12.4"
    assert hardware.cuda_version_text(11080) == "11.8"
    assert hardware.cuda_version_text(13000) == "13.0"


@pytest.mark.parametrize(
    "code, words",
    [
        (12, "NVML library (libnvidia-ml.so.1) not found"),
        (9, "NVIDIA driver not loaded"),
        (4, "no permission"),
        (999, "NVML failed to start: Unknown Error"),
    ],
)
def test_nvml_init_failures_mean_a_cpu_host(nvml, code, words):
    mod = nvml([H100], init_error=code)
    host = detect_host({})
    assert host.gpus == [] and host.is_cpu_only
    assert words in host.cpu_only_reason
    assert mod.calls == ["init"]  # nothing to shut down
    assert f"- GPUs: no GPU ({host.cpu_only_reason})" in host.system_info()


def test_pynvml_not_installed_means_a_cpu_host(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    host = detect_host({})
    assert host.is_cpu_only and "nvidia-ml-py (pynvml) is not installed" in host.cpu_only_reason


def test_no_gpu_means_a_cpu_host(nvml):
    mod = nvml([])
    host = detect_host({})
    assert host.is_cpu_only and host.cpu_only_reason == "NVML found no GPU"
    assert host.driver_version == "550.54.15"
    assert mod.calls == ["init", "shutdown"]


def test_count_failure_means_a_cpu_host_and_still_shuts_down(nvml):
    mod = nvml([H100], count_error=999)
    host = detect_host({})
    assert host.is_cpu_only and "could not count the GPUs" in host.cpu_only_reason
    assert mod.calls == ["init", "shutdown"]


@pytest.mark.parametrize("broken", ["name", "pci"])
def test_a_gpu_nvml_cannot_describe_is_skipped_with_a_note(nvml, broken):
    lost = FakeGpu("NVIDIA H100 80GB HBM3", 0x233010DE, (9, 0), 1, 1, broken=broken)
    nvml([lost, L40S])
    host = detect_host({})
    assert [g.name for g in host.gpus] == ["NVIDIA L40S"]
    assert host.gpus[0].index == 1  # NVML's own index is kept
    assert any("GPU 0 skipped" in n and "GPU is lost" in n for n in host.notes)
    assert any(line.startswith("- Note: GPU 0 skipped") for line in host.system_info())


def test_only_undescribable_gpus_mean_a_cpu_host(nvml):
    nvml([FakeGpu("x", 0x233010DE, (9, 0), 1, 1, broken="name")])
    host = detect_host({})
    assert host.is_cpu_only and host.cpu_only_reason == "NVML could not describe any GPU"


def test_memory_unknown_keeps_the_gpu(nvml):
    nvml([FakeGpu("NVIDIA L40S", 0x26B910DE, (8, 9), 0, 0, broken="memory")])
    host = detect_host({})
    gpu = host.gpus[0]
    assert gpu.memory_total_mib == 0 and not gpu.memory_known
    assert "memory unknown" in gpu.describe()
    assert any("memory unknown" in n for n in host.notes)


def test_driver_cuda_and_uuid_failures_leave_those_fields_empty(nvml):
    mod = nvml([FakeGpu("NVIDIA L40S", 0x26B910DE, (8, 9), 46068, 40000, broken="uuid")])

    def unsupported():
        raise FakeNVMLError(3)

    mod.nvmlSystemGetDriverVersion = unsupported
    mod.nvmlSystemGetCudaDriverVersion = unsupported
    host = detect_host({})
    assert host.cpu_only_reason is None and len(host.gpus) == 1
    assert host.gpus[0].uuid is None and host.driver_version is None and host.cuda_driver_version is None
    assert not any(line.startswith("- Driver:") for line in host.system_info())


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on", " 1 "])
def test_nim_cpu_only_makes_a_gpu_host_a_cpu_host_but_lists_the_gpus(nvml, value):
    nvml([H100])
    host = detect_host({"NIM_CPU_ONLY": value})
    assert host.is_cpu_only and host.usable_gpus == []
    assert [g.name for g in host.gpus] == ["NVIDIA H100 80GB HBM3"]
    assert host.cpu_only_reason == f"NIM_CPU_ONLY={value.strip()} is set"
    info = host.system_info()
    assert info[0] == "SYSTEM INFO"
    assert f"- CPU only: NIM_CPU_ONLY={value.strip()} is set" in info


@pytest.mark.parametrize("value", ["0", "false", "no", "off", ""])
def test_nim_cpu_only_false_values_keep_the_gpus(nvml, value):
    nvml([H100])
    host = detect_host({"NIM_CPU_ONLY": value})
    assert not host.is_cpu_only and len(host.usable_gpus) == 1


def test_nim_cpu_only_garbage_is_an_error_naming_the_variable(nvml):
    nvml([H100])
    with pytest.raises(NimbuildError, match=r"NIM_CPU_ONLY='maybe' is not a boolean"):
        detect_host({"NIM_CPU_ONLY": "maybe"})


def test_nim_cpu_only_on_a_host_without_nvml_keeps_both_reasons(nvml):
    nvml([], init_error=12)
    host = detect_host({"NIM_CPU_ONLY": "1"})
    assert "not found" in host.cpu_only_reason and "NIM_CPU_ONLY=1 is set" in host.cpu_only_reason


def test_real_detection_on_this_machine_never_raises():
    host = detect_host({})
    if host.gpus:  # a machine with a GPU: real values in the right shapes
        assert all(len(g.pci_device_id) == 9 and g.pci_device_id.endswith(":10de") for g in host.gpus)
    else:
        assert host.cpu_only_reason


def test_system_info_lines_for_a_gpu_host(nvml):
    nvml([H100])
    assert detect_host({}).system_info() == [
        "SYSTEM INFO",
        "- GPUs:",
        "  - [2330:10de] (0) NVIDIA H100 80GB HBM3 (NVIDIA-H100-80GB-HBM3), compute capability 9.0, "
        "81559 MiB total, 80000 MiB free",
        "- Driver: 550.54.15 (CUDA 12.4)",
        "- CPU: AMD EPYC 7B13 (x86_64, avx2), cpu_isa: avx2",
    ]


def test_unknown_gpu_is_listed_as_not_in_the_catalog(nvml):
    nvml([FakeGpu("NVIDIA Future GPU", 0x999910DE, (12, 0), 1000, 1000)])
    gpu = detect_host({}).gpus[0]
    assert gpu.sku is None and "not in nimbuild's SKU catalog" in gpu.describe()


# ----------------------------------------------------------------------------- assumed hosts


def test_assumed_host_resolves_names_slugs_and_counts_through_the_catalog():
    host = assumed_host(["NVIDIA H100 80GB HBM3", "NVIDIA L40S x2", "h100-sxm"])
    assert host.assumed and host.cpu_only_reason is None
    assert [g.pci_device_id for g in host.gpus] == ["2330:10de", "26b9:10de", "26b9:10de", "2330:10de"]
    assert [g.index for g in host.gpus] == [0, 1, 2, 3]
    assert [g.compute_capability for g in host.gpus] == ["9.0", "8.9", "8.9", "9.0"]
    assert host.gpus[0].memory_total_mib == 80 * 1024 == host.gpus[0].memory_free_mib
    assert host.system_info()[1] == "- Host: assumed with --assume-gpu (not detected)"


@pytest.mark.parametrize("spec, count", [("l40s x4", 4), ("L40Sx3", 3), ("NVIDIA-L40S X2", 2), ("l40s × 2", 2)])
def test_assumed_count_spellings(spec, count):
    host = assumed_host([spec])
    assert len(host.gpus) == count and {g.sku.canonical for g in host.gpus} == {"NVIDIA-L40S"}


def test_assumed_unknown_gpu_lists_the_known_ones():
    with pytest.raises(NimbuildError) as exc:
        assumed_host(["NVIDIA Imaginary 9000 x2"])
    assert "--assume-gpu 'NVIDIA Imaginary 9000 x2'" in str(exc.value)
    assert "h100-sxm (NVIDIA-H100-80GB-HBM3)" in str(exc.value)


def test_assumed_count_out_of_range():
    with pytest.raises(NimbuildError, match="out of range"):
        assumed_host(["h100-sxm x0"])
    with pytest.raises(NimbuildError, match="out of range"):
        assumed_host(["h100-sxm x65"])


def test_assumed_host_does_not_touch_nvml(monkeypatch):
    def boom():
        raise AssertionError("NVML must not be called for an assumed host")

    mod = fake_pynvml([])
    mod.nvmlInit = boom
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    assert len(assumed_host(["a100-sxm4-80gb"]).gpus) == 1


def _nvml_gpu_count() -> int:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return 0


@pytest.mark.skipif(_nvml_gpu_count() == 0, reason="needs an NVIDIA GPU and driver (NVML finds none here)")
def test_real_nvml_describes_every_gpu():
    host = detect_host({})
    assert len(host.gpus) == _nvml_gpu_count() and host.cpu_only_reason is None
    for g in host.gpus:
        assert g.pci_device_id.endswith(":10de") and g.compute_capability.count(".") == 1
        assert 0 < g.memory_free_mib <= g.memory_total_mib
    assert host.driver_version and host.cuda_driver_version
