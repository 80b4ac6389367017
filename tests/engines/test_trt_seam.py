"""nimbuild.builder.engines.trt_seam: the one module that imports tensorrt, exercised without it."""

from __future__ import annotations

import numpy as np
import pytest

from nimbuild import skus
from nimbuild.builder.engines import trt_seam
from nimbuild.builder.engines.plan import BuildOptions, plan_engines

from .engines_support import REPO, fake_tensorrt


def test_scores_are_the_last_logit_column_without_padding_rows():
    logits = {"logits": np.array([[0.1, 0.9], [0.2, 0.3], [0.0, 7.0]], np.float32)}
    assert trt_seam.scores_of(logits, 2).tolist() == pytest.approx([0.9, 0.3])
    assert trt_seam.scores_of({"l": np.array([[1.0], [2.0]])}, 2).tolist() == [1.0, 2.0]


def test_seam_wires_polygraphys_loaders_as_the_plan_says(monkeypatch, recipe, export_dir):
    """build_engine's loader chain, captured before anything would call TensorRT."""
    import polygraphy.backend.trt as polygraphy_trt

    trt = fake_tensorrt(monkeypatch)
    captured = {}

    class CaptureSave:
        def __init__(self, build, path):
            captured.update(build=build, path=path)

        def __call__(self):
            return object()

    class CaptureBuild(polygraphy_trt.EngineFromNetwork):  # Polygraphy's own loader, its arguments recorded
        def __init__(self, network, config=None, **kwargs):
            captured.update(network=network, config=config)
            super().__init__(network, config=config, **kwargs)

    monkeypatch.setattr(polygraphy_trt, "SaveEngine", CaptureSave)
    monkeypatch.setattr(polygraphy_trt, "EngineFromNetwork", CaptureBuild)
    plan = plan_engines(
        recipe, skus.lookup("h100-sxm"), export_dir, BuildOptions(workspace_bytes=1 << 30, hardware_compatible=True)
    )
    engine = plan.planned[1]
    trt_seam.build_engine(engine.graph, engine.engine_path, plan.create_config_args(engine))
    build = captured["build"]
    assert isinstance(build, polygraphy_trt.EngineFromNetwork) and captured["path"] == str(engine.engine_path)
    assert build.timing_cache_path == str(plan.timing_cache)  # saved back to the same file
    network, config = captured["network"], captured["config"]
    assert isinstance(network, polygraphy_trt.NetworkFromOnnxPath)
    assert network.path == str(engine.graph) and network.strongly_typed is True
    assert isinstance(config, polygraphy_trt.CreateConfig) and not config.fp16 and not config.fp8
    assert config.timing_cache_path == str(plan.timing_cache)
    assert config.memory_pool_limits == {trt.MemoryPoolType.WORKSPACE: 1 << 30}
    assert config.hardware_compatibility_level is trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
    assert config.profiles[0]["token_type_ids"].min == (1, 1)


def test_probe_reads_version_cuda_and_levels(monkeypatch):
    monkeypatch.setattr(trt_seam, "_cuda_major_version", lambda: "12")
    fake_tensorrt(monkeypatch, "10.13.0.35")
    info, why = trt_seam.probe_tensorrt()
    assert why is None and info.tag_version == "10.13.0" and info.cuda_major_version == "12"
    assert "same_compute_capability" in info.hardware_compatibility_levels
    fake_tensorrt(monkeypatch, "8.6.1")
    assert "too old" in trt_seam.probe_tensorrt()[1]
    fake_tensorrt(monkeypatch, "")
    assert "stub" in trt_seam.probe_tensorrt()[1]


def test_only_the_seam_imports_tensorrt():
    offenders = []
    for path in (REPO / "nimbuild").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if ("import tensorrt" in text or "from tensorrt" in text) and path.name != "trt_seam.py":
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
    probed, why = trt_seam.probe_tensorrt()
    if probed is None:
        assert "tensorrt" in why.lower()
