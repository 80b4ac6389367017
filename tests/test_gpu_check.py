"""scripts/gpu_check.sh's CPU dry mode (issue 11 point 6): the bundle it prepares runs with torch alone, its
interpreter reproduces ONNX Runtime's FP8 simulation, and torch._scaled_mm (its CPU kernel here: the code
path, not FP8 hardware) gives the same verdict; per-tensor and per-channel FP8 weight scales alike.
The GPU verdict itself needs a lent GPU (the script's ``run`` mode); nothing here fakes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
if not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
    pytest.skip("this torch has no float8_e4m3fn / _scaled_mm", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _sh(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, **(env_extra or {})}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def fp8_export(tmp_path_factory, example_recipe) -> Path:
    from nimbuild.builder.pipeline import run_export
    from nimbuild.output import Output

    out = tmp_path_factory.mktemp("gpu-check") / "example-tiny"
    run_export(example_recipe, out, precisions=["fp32", "fp8"], pairs=None, out=Output(json_mode=False, quiet=True))
    return out


def _prepare_and_run_on_cpu(export: Path, bundle: Path) -> dict:
    prepared = _sh("prepare", str(export), str(bundle))
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    assert (bundle / "bundle.json").is_file() and (bundle / "cpu_scores.npz").is_file()
    ran = _sh("cpu", str(bundle))
    results = list(bundle.glob("result-*.json"))
    assert len(results) == 1, ran.stdout + ran.stderr
    result = json.loads(results[0].read_text())
    assert "not FP8 hardware" in result["device"] and result["fp8_gemm"]["on_fp8_hardware"] is False
    assert ran.returncode == (0 if result["passed"] else 1)
    return result


def test_cpu_dry_mode_reproduces_the_cpu_gate_with_per_tensor_scales(fp8_export, tmp_path):
    result = _prepare_and_run_on_cpu(fp8_export, tmp_path / "bundle")
    assert result["emulated"]["matches_cpu_simulation"], result["emulated"]
    assert result["fp8_gemm"]["scaled_mm_calls"] > 0
    assert result["fp8_gemm"]["same_verdict_as_cpu_gate"]
    assert result["fp8_gemm"]["agreement_with_cpu_simulation"]["top1"] >= 0.9


def test_cpu_dry_mode_handles_per_channel_fp8_weights(fp8_export, example_pairs, tmp_path):
    """A per-channel graph (Fp8Scheme(per_channel_weights=True)): the interpreter's DequantizeLinear honours
    ``axis`` and the FP8 GEMM applies one weight scale per output column."""
    import shutil

    import onnx

    from nimbuild.builder.precision.fp8 import Fp8Scheme, build_fp8

    export = tmp_path / "export"
    shutil.copytree(fp8_export, export)
    from nimbuild.builder import pairs as pairs_mod

    report = json.loads((export / "export_report.json").read_text())
    tokenizer = pairs_mod.load_tokenizer(export / "tokenizer")
    feeds = pairs_mod.encode(tokenizer, pairs_mod.load_pairs(example_pairs), 512, report["inputs"])
    graph = export / "onnx" / "fp8" / "model.onnx"
    build_fp8(export / "onnx" / "fp32" / "model.onnx", graph, feeds, Fp8Scheme(per_channel_weights=True))
    assert any(
        a.name == "axis" for n in onnx.load(graph).graph.node if n.op_type == "DequantizeLinear" for a in n.attribute
    )
    result = _prepare_and_run_on_cpu(export, tmp_path / "bundle")
    assert result["emulated"]["matches_cpu_simulation"], result["emulated"]
    assert result["fp8_gemm"]["scaled_mm_calls"] > 0
    assert result["fp8_gemm"]["max_abs_diff_vs_cpu_simulation"] < 0.05
