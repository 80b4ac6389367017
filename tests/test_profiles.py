"""Tags, canonical JSON, IDs and names exactly as docs/design.md fixes them."""

from __future__ import annotations

import hashlib
import json

import pytest

from nimbuild import cpu_isa, profiles, skus
from nimbuild.errors import NimbuildError


def _trt(precision="fp8", sku="h100-sxm", **kw):
    return profiles.tensorrt_profile_tags("ms-marco-minilm-l6", "abc123", precision, sku, "10.13.0", 12, 64, 512, **kw)


def test_id_is_sha256_of_the_documented_json():
    tags = _trt()
    expected = hashlib.sha256(
        json.dumps(tags, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    assert profiles.profile_id(tags) == expected
    assert profiles.canonical_json(tags) == json.dumps(tags, sort_keys=True, separators=(",", ":")).encode()


def test_id_is_independent_of_key_order_and_pinned():
    tags = {"b": "2", "a": "1", "model": "ü"}
    shuffled = dict(reversed(list(tags.items())))
    assert profiles.profile_id(tags) == profiles.profile_id(shuffled)
    # a fixed vector: IDs must never change across releases or machines
    assert profiles.canonical_json(tags) == '{"a":"1","b":"2","model":"ü"}'.encode()
    assert profiles.profile_id(tags) == hashlib.sha256('{"a":"1","b":"2","model":"ü"}'.encode()).hexdigest()


def test_any_tag_change_changes_the_id():
    base = _trt()
    assert profiles.profile_id(base) != profiles.profile_id({**base, "trt_version": "10.13.1"})
    assert profiles.profile_id(base) != profiles.profile_id({**base, "max_batch_size": "32"})


def test_tag_values_must_be_strings():
    with pytest.raises(NimbuildError, match="max_batch_size"):
        profiles.profile_id({"max_batch_size": 64})


def test_tensorrt_tags_are_design_tags_all_strings():
    tags = _trt()
    assert tags == {
        "model": "ms-marco-minilm-l6",
        "model_revision": "abc123",
        "backend": "tensorrt",
        "device": "gpu",
        "precision": "fp8",
        "gpu": "NVIDIA-H100-80GB-HBM3",
        "gpu_device": "2330:10de",
        "compute_capability": "9.0",
        "trt_version": "10.13.0",
        "cuda_major_version": "12",
        "gpu_count": "1",
        "max_batch_size": "64",
        "max_sequence_length": "512",
    }


def test_onnx_tags():
    gpu = profiles.onnx_profile_tags("m", "r", "fp16", "gpu", 64, 512)
    cpu = profiles.onnx_profile_tags("m", "r", "int8", "cpu", 64, 512, cpu_isa="avx2")
    assert gpu["backend"] == cpu["backend"] == "onnx"
    assert gpu["gpu_count"] == "1" and "gpu_count" not in cpu
    assert "gpu" not in gpu and "trt_version" not in gpu
    assert all(isinstance(v, str) for v in {**gpu, **cpu}.values())
    assert cpu["cpu_isa"] == "avx2" and "cpu_isa" not in gpu


def test_a_cpu_int8_profile_names_its_class_and_the_class_is_in_the_id():
    """The class is a profile dimension: one tag, its own ID and name per class; other profiles have none."""
    tags = {c: profiles.onnx_profile_tags("m", "r", "int8", "cpu", 64, 512, cpu_isa=c) for c in cpu_isa.NAMES}
    assert len({profiles.profile_id(t) for t in tags.values()}) == len(cpu_isa.NAMES)
    assert {c: profiles.profile_name(t) for c, t in tags.items()} == {
        "avx512_vnni": "cpu-int8-avx512-vnni-onnxruntime",
        "avx2": "cpu-int8-avx2-onnxruntime",
        "arm64_dotprod": "cpu-int8-arm64-dotprod-onnxruntime",
    }
    assert profiles.onnx_profile_tags("m", "r", "int8", "cpu", 8, 8, cpu_isa="AVX512-VNNI")["cpu_isa"] == "avx512_vnni"
    with pytest.raises(NimbuildError, match="needs its cpu_isa class.*avx512_vnni, arm64_dotprod, avx2"):
        profiles.onnx_profile_tags("m", "r", "int8", "cpu", 64, 512)
    with pytest.raises(NimbuildError, match="'avx10' is not a CPU class"):
        profiles.onnx_profile_tags("m", "r", "int8", "cpu", 64, 512, cpu_isa="avx10")
    with pytest.raises(NimbuildError, match="only CPU int8 profiles carry one"):
        profiles.onnx_profile_tags("m", "r", "fp32", "cpu", 64, 512, cpu_isa="avx2")


def test_names_in_nim_style():
    assert profiles.profile_name(_trt()) == "h100-hbm3-80gb-fp8-triton-tensorrt"
    assert profiles.profile_name(_trt("fp16", "a100-sxm4-80gb")) == "a100-sxm4-80gb-fp16-triton-tensorrt"
    assert (
        profiles.profile_name(profiles.onnx_profile_tags("m", "r", "fp16", "gpu", 8, 128))
        == "onnx-fp16-triton-onnxruntime"
    )
    int8 = profiles.onnx_profile_tags("m", "r", "int8", "cpu", 8, 128, cpu_isa="avx2")
    assert profiles.profile_name(int8) == "cpu-int8-avx2-onnxruntime"
    assert profiles.profile_name(profiles.onnx_profile_tags("m", "r", "fp32", "cpu", 8, 128)) == "cpu-fp32-onnxruntime"


def test_names_are_unique_across_the_catalog():
    names = set()
    for sku in skus.catalog():
        for precision in ("fp8", "fp16") if sku.fp8 else ("fp16",):
            names.add(profiles.profile_name(_trt(precision, sku)))
    assert len(names) == sum(2 if s.fp8 else 1 for s in skus.catalog())


def test_fp8_refused_below_8_9():
    with pytest.raises(NimbuildError, match="8.9"):
        _trt("fp8", "a100-sxm4-80gb")


def test_hardware_compatible_engine():
    tags = _trt("fp16", "a100-sxm4-80gb", hardware_compatible=True)
    assert tags["hardware_compatibility_level"] == "ampere+"
    assert profiles.profile_name(tags) == "a100-sxm4-80gb-fp16-ampere-plus-triton-tensorrt"
    with pytest.raises(NimbuildError):
        _trt("fp16", hardware_compatible="nope")


def test_unknown_gpu_in_tags_still_gets_a_name():
    tags = {**_trt("fp16"), "gpu": "NVIDIA-Future-9000", "gpu_device": "ffff:10de"}
    assert profiles.profile_name(tags) == "nvidia-future-9000-fp16-triton-tensorrt"


def test_bad_precision_and_device():
    with pytest.raises(NimbuildError):
        profiles.onnx_profile_tags("m", "r", "fp4", "gpu", 1, 1)
    with pytest.raises(NimbuildError):
        profiles.onnx_profile_tags("m", "r", "fp16", "tpu", 1, 1)
