"""Shared by the engines tests (not a test module): tiny cross-encoder-shaped graphs, an export folder
as `nimbuild export` leaves it, recipes, the fake TensorRT seam and Polygraphy's own CLI parser."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from nimbuild.builder.engines import trt_seam
from nimbuild.builder.engines.host import BuildGpu
from nimbuild.errors import NimbuildError
from nimbuild.output import Output

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_RECIPE = REPO / "recipes" / "example-tiny.yaml"
EXAMPLE_MODEL = REPO / "recipes" / "models" / "example-tiny"
EXAMPLE_PAIRS = REPO / "recipes" / "pairs" / "example-tiny.jsonl"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")

H100 = BuildGpu("NVIDIA H100 80GB HBM3", "2330:10de", "9.0")
H100_PCIE = BuildGpu("NVIDIA H100 PCIe", "2331:10de", "9.0")
A100 = BuildGpu("NVIDIA A100-SXM4-80GB", "20b2:10de", "8.0")


def scorer_graph(path: Path, vocab: int, weights: np.ndarray, dtype=np.float32) -> Path:
    """A minimal cross-encoder-shaped ONNX graph: logits[b] = sum_s W[ids[b, s]] * mask[b, s] + 0.01 * types.

    Every input is used (TensorRT drops unused inputs, and a profile for a missing
    input is an error). ``dtype=float16`` keeps W in FP16, as a precision graph would.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(weights.reshape(vocab, 1).astype(dtype), "W")
    nodes = [
        helper.make_node("Gather", ["W", "input_ids"], ["emb_raw"], axis=0),
        helper.make_node("Cast", ["emb_raw"], ["emb"], to=TensorProto.FLOAT),
        helper.make_node("Squeeze", ["emb", "axis2"], ["tok"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["token_type_ids"], ["types"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["tok", "mask"], ["masked"]),
        helper.make_node("Mul", ["types", "tiny"], ["typed"]),
        helper.make_node("Add", ["masked", "typed"], ["summed"]),
        helper.make_node("ReduceSum", ["summed", "axis1"], ["logits"], keepdims=1),
    ]
    inits = [
        w,
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(0.01, np.float32), "tiny"),
    ]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in INPUTS]
    output = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])
    graph = helper.make_graph(nodes, "scorer", inputs, [output], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # onnxruntime 1.31 loads IR <= 13
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def write_recipe(
    folder: Path,
    *,
    precisions=("fp32", "fp16", "fp8"),
    batch=(1, 4, 8),
    sequence=(1, 16, 64),
    name="tiny-engines",
    thresholds="{top1: 0.95, spearman: 0.95, ndcg10: 0.98}",
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(
        f"name: {name}\n"
        f"source: {{path: {EXAMPLE_MODEL}}}\n"
        f"shapes:\n  batch: {{min: {batch[0]}, opt: {batch[1]}, max: {batch[2]}}}\n"
        f"  sequence: {{min: {sequence[0]}, opt: {sequence[1]}, max: {sequence[2]}}}\n"
        f"precisions: [{', '.join(precisions)}]\n"
        "gpus: [h100-sxm, a100-sxm4-80gb]\n"
        f"pairs: {EXAMPLE_PAIRS}\n"
        f"thresholds: {thresholds}\n",
        encoding="utf-8",
    )
    return path


class FakeSeam:
    """The TensorRT seam with TensorRT taken out: the "engine" is the ONNX graph itself.

    ``check_engine`` and ``measure_latency`` run the real Comparator, gate and timing
    code of the seam with ONNX Runtime runners in place of TrtRunner.
    """

    def __init__(self, version="10.13.0.35", levels=("none", "ampere_plus", "same_compute_capability"), fail_build=()):
        self.version, self.levels, self.fail_build = version, tuple(levels), set(fail_build)
        self.builds: list[tuple[str, dict]] = []
        self.checks: list[str] = []

    def probe_tensorrt(self):
        return trt_seam.TensorRTInfo(self.version, "12", self.levels), None

    def build_engine(self, graph, engine_path, config_args):
        precision = Path(graph).parent.name
        self.builds.append((precision, config_args))
        if precision in self.fail_build:
            raise NimbuildError(f"TensorRT could not build an engine from {graph}: unsupported op")
        shutil.copyfile(graph, engine_path)

    @staticmethod
    def _runner(path, name):
        from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

        return OnnxrtRunner(SessionFromOnnx(str(path), providers=["cpu"]), name=name)

    def check_engine(self, engine_path, reference, feeds, thresholds):
        self.checks.append(Path(engine_path).parent.name)
        return trt_seam.compare_on_pairs(
            self._runner(reference, "ref"), self._runner(engine_path, "engine"), feeds, thresholds
        )

    def measure_latency(self, engine_path, feed):
        return trt_seam.time_runner(self._runner(engine_path, "engine"), feed, warmup=1, iterations=3)


def quiet() -> Output:
    return Output(json_mode=False, quiet=True)


def probe(gpu):
    return lambda: (gpu, None)


def parse_with_polygraphy(argv: list[str]):
    """Parse a `polygraphy convert` command with Polygraphy's own Convert tool and argument groups."""
    from polygraphy.tools.args import TrtConfigArgs, TrtLoadEngineBytesArgs, TrtLoadNetworkArgs
    from polygraphy.tools.convert.convert import Convert

    assert argv[:2] == ["polygraphy", "convert"]
    tool = Convert()
    parser = tool.setup_parser()
    with trt_seam.polygraphy_on_stderr():
        args = parser.parse_args(argv[2:])
        tool.parse(args)
    return (
        args,
        tool.arg_groups[TrtConfigArgs],
        tool.arg_groups[TrtLoadNetworkArgs],
        tool.arg_groups[TrtLoadEngineBytesArgs],
    )


def fake_tensorrt(monkeypatch, version="10.13.0.35", levels="NONE AMPERE_PLUS SAME_COMPUTE_CAPABILITY"):
    """A stand-in `tensorrt` module with just the enums the seam maps names to (no builder: nothing runs)."""
    import enum
    import types

    fake = types.ModuleType("tensorrt")
    fake.__version__ = version
    fake.MemoryPoolType = enum.Enum("MemoryPoolType", "WORKSPACE TACTIC_SHARED_MEMORY")
    fake.HardwareCompatibilityLevel = enum.Enum("HardwareCompatibilityLevel", levels)
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    return fake


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nimbuild", "engines", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        cwd=REPO,
    )
