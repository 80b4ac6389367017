"""The one seam to TensorRT: every call that needs ``tensorrt`` or a GPU is in this file.

A reviewer reads the real TensorRT path here, top to bottom:

1. :func:`probe_tensorrt`: is TensorRT importable, which version, which CUDA
   major version, which hardware compatibility levels it offers.
2. :func:`build_engine`: Polygraphy's ``NetworkFromOnnxPath(strongly_typed=True)``
   -> ``CreateConfig(profiles, builder_optimization_level, load_timing_cache,
   memory_pool_limits, hardware_compatibility_level)`` -> ``EngineFromNetwork(...,
   save_timing_cache=...)`` -> ``SaveEngine``. Precision comes from the graph
   (FP16 casts, FP8 Q/DQ), never from builder flags: TensorRT 11 removed them and
   a strongly typed network builds the same way on TensorRT 10 and 11.
3. :func:`check_engine`: ``TrtRunner`` against ONNX Runtime on the FP32 graph
   through Polygraphy's ``Comparator``, on the recipe's evaluation pairs, then the
   same ranking gate as the precision graphs (:mod:`nimbuild.builder.gate`).
4. :func:`measure_latency`: ``TrtRunner`` at the profile's opt shape.

Everything that does not need TensorRT (the plan, Polygraphy's ``Profile``, the
config arguments, the command line) is built in :mod:`nimbuild.builder.engines` (plan, build),
where tests exercise it; :func:`compare_on_pairs` runs on any two Polygraphy
runners, so tests drive it with ONNX Runtime on the CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import statistics
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nimbuild.errors import NimbuildError, debug_enabled
from nimbuild.thresholds import GateThresholds

LATENCY_WARMUP = 10
LATENCY_ITERATIONS = 50


@dataclass(frozen=True)
class TensorRTInfo:
    """The installed TensorRT, as far as building and tagging engines is concerned."""

    version: str  # trt.__version__, e.g. "10.13.0.35"
    cuda_major_version: str  # "12": the CUDA TensorRT was built for
    hardware_compatibility_levels: tuple[str, ...]  # lower-case trt.HardwareCompatibilityLevel names

    @property
    def tag_version(self) -> str:
        """major.minor.patch: the `trt_version` tag (docs/design.md: "10.13.0")."""
        return ".".join(self.version.split(".")[:3])

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


@contextlib.contextmanager
def polygraphy_on_stderr() -> Iterator[None]:
    """Polygraphy logs to stdout; keep stdout for the command's result (``--json``).

    Only its warnings and errors are shown (TensorRT's build log included), all of
    it with ``NIMBUILD_DEBUG=1``.
    """
    from polygraphy.logger import G_LOGGER

    G_LOGGER.colors = False  # no "'colored' module is not installed" notice
    with (
        contextlib.redirect_stdout(sys.stderr),
        G_LOGGER.verbosity(G_LOGGER.INFO if debug_enabled() else G_LOGGER.WARNING),
    ):
        yield


def probe_tensorrt() -> tuple[TensorRTInfo | None, str | None]:
    """(info, None) when TensorRT is importable, else (None, why not). Never raises."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a wheel whose libnvinfer cannot load
        return None, f"`import tensorrt` failed: {exc}"
    version = str(getattr(trt, "__version__", "") or "")
    if not re.match(r"^\d+\.\d+", version):
        return None, f"`tensorrt` has no usable version ({version!r}): PyPI's stub package, not NVIDIA's"
    if int(version.split(".")[0]) < 10:
        return None, f"TensorRT {version} is too old: nimbuild builds strongly typed engines with TensorRT >= 10"
    cuda = _cuda_major_version()
    if cuda is None:
        return None, "cannot tell which CUDA TensorRT was built for (no tensorrt-cuNN package, no libcudart)"
    levels = tuple(name.lower() for name in trt.HardwareCompatibilityLevel.__members__)
    return TensorRTInfo(version=version, cuda_major_version=cuda, hardware_compatibility_levels=levels), None


def _cuda_major_version() -> str | None:
    """The CUDA major version of the TensorRT install: its wheel's name, else libcudart's version."""
    import importlib.metadata

    for dist in importlib.metadata.distributions():
        match = re.match(r"^tensorrt[-_]cu(\d+)", (dist.metadata["Name"] or "").lower())
        if match:
            return match.group(1)
    try:
        from polygraphy import cuda

        with polygraphy_on_stderr():
            handle = cuda.wrapper().handle
        version = ctypes.c_int(0)
        if handle.cudaRuntimeGetVersion(ctypes.byref(version)) == 0 and version.value > 0:
            return str(version.value // 1000)
    except Exception:
        return None
    return None


def _trt_enums(config_args: Mapping[str, Any]) -> dict[str, Any]:
    """The plan's enum names -> TensorRT's enum members; everything else unchanged."""
    import tensorrt as trt

    args = dict(config_args)
    if "memory_pool_limits" in args:
        args["memory_pool_limits"] = {
            getattr(trt.MemoryPoolType, name.upper()): int(limit) for name, limit in args["memory_pool_limits"].items()
        }
    if args.get("hardware_compatibility_level"):
        args["hardware_compatibility_level"] = getattr(
            trt.HardwareCompatibilityLevel, args["hardware_compatibility_level"].upper()
        )
    return args


def build_engine(graph: Path, engine_path: Path, config_args: Mapping[str, Any]) -> None:
    """Build one strongly typed engine from ``graph`` into ``engine_path``.

    ``config_args`` are :meth:`EnginePlan.create_config_args`: Polygraphy
    ``CreateConfig`` keywords with TensorRT enums still as names. The timing cache
    is loaded from and saved back to the same file (Polygraphy locks it).
    """
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, SaveEngine
    from polygraphy.exception import PolygraphyException

    args = _trt_enums(config_args)
    timing_cache = args.get("load_timing_cache")
    network = NetworkFromOnnxPath(str(graph), strongly_typed=True)
    config = CreateConfig(**args)
    build = EngineFromNetwork(network, config=config, save_timing_cache=timing_cache)
    try:
        with polygraphy_on_stderr():
            engine = SaveEngine(build, path=str(engine_path))()
    except PolygraphyException as exc:
        raise NimbuildError(
            f"TensorRT could not build an engine from {graph}: {exc}",
            hint="see TensorRT's messages above; NIMBUILD_DEBUG=1 keeps the traceback",
        ) from exc
    del engine


def scores_of(outputs: Mapping[str, Any], rows: int) -> np.ndarray:
    """A cross-encoder's relevance score per real row: the gate's reading of the first output's logits."""
    from nimbuild.builder.gate import scores_from_logits

    return scores_from_logits(next(iter(outputs.values())))[:rows]


def compare_on_pairs(
    reference_runner: Any,
    candidate_runner: Any,
    feeds: Sequence[Sequence[Mapping[str, Any]]],
    thresholds: GateThresholds,
) -> dict[str, Any]:
    """Run both runners through Polygraphy's Comparator and judge the candidate's rankings.

    ``feeds``: per query, chunks ``{"feed": {input: array}, "rows": n}`` (n real
    rows; the rest is padding to the profile's min batch). Returns the gate's
    verdict (``GateResult.to_dict()``, max absolute logit error included) and
    Polygraphy's own elementwise comparison (for information: the ranking gate decides).
    """
    import numpy as np
    from polygraphy.comparator import Comparator

    try:  # Polygraphy >= 0.53; CompareFunc.simple before (deprecated since)
        from polygraphy.comparator.compare import SimpleCompareFunc as simple_compare
    except ImportError:
        from polygraphy.comparator import CompareFunc

        simple_compare = CompareFunc.simple

    from nimbuild.builder import gate as gate_mod

    flat = [chunk["feed"] for query in feeds for chunk in query]
    with polygraphy_on_stderr():
        results = Comparator.run([reference_runner, candidate_runner], data_loader=flat)
        elementwise = Comparator.compare_accuracy(results, compare_func=simple_compare(atol=1e-2, rtol=1e-2))
    (_, reference_iterations), (_, candidate_iterations) = list(results.items())
    reference_scores, candidate_scores = [], []
    i = 0
    for query in feeds:
        ref, cand = [], []
        for chunk in query:
            ref.append(scores_of(reference_iterations[i], chunk["rows"]))
            cand.append(scores_of(candidate_iterations[i], chunk["rows"]))
            i += 1
        reference_scores.append(np.concatenate(ref))
        candidate_scores.append(np.concatenate(cand))
    metrics = gate_mod.ranking_metrics(reference_scores, candidate_scores)
    verdict = gate_mod.judge(
        metrics,
        thresholds,
        n_queries=len(feeds),
        n_pairs=int(sum(len(s) for s in candidate_scores)),
        notes=["engine (candidate) vs ONNX Runtime on the FP32 graph (reference)"],
    )
    return {
        "gate": verdict.to_dict(),
        "comparator": {"elementwise_atol_rtol_1e-2_passed": bool(elementwise), "iterations": len(flat)},
    }


def _load_engine(engine_path: Path) -> Any:
    """A loader that deserializes the saved engine (every Polygraphy release has these two)."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes

    return EngineFromBytes(BytesFromPath(str(engine_path)))


def check_engine(
    engine_path: Path,
    reference_onnx: Path,
    feeds: Sequence[Sequence[Mapping[str, Any]]],
    thresholds: GateThresholds,
) -> dict[str, Any]:
    """The engine (TrtRunner) against ONNX Runtime on the FP32 graph (CPU), judged by the ranking gate."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import TrtRunner
    from polygraphy.exception import PolygraphyException

    reference = OnnxrtRunner(SessionFromOnnx(str(reference_onnx), providers=["cpu"]), name="onnxrt-fp32")
    candidate = TrtRunner(_load_engine(engine_path), name="tensorrt")
    try:
        return compare_on_pairs(reference, candidate, feeds, thresholds)
    except PolygraphyException as exc:
        raise NimbuildError(
            f"cannot run the engine {engine_path}: {exc}",
            hint="see TensorRT's messages above; NIMBUILD_DEBUG=1 keeps the traceback",
        ) from exc


def time_runner(
    runner: Any, feed: Mapping[str, Any], warmup: int = LATENCY_WARMUP, iterations: int = LATENCY_ITERATIONS
) -> dict[str, Any]:
    """Median and p90 of Polygraphy's per-``infer`` time (host copies included), in ms."""
    with polygraphy_on_stderr(), runner:
        for _ in range(warmup):
            runner.infer(feed)
        times = []
        for _ in range(iterations):
            runner.infer(feed)
            times.append(runner.last_inference_time() * 1000.0)
    times.sort()
    shape = list(next(iter(feed.values())).shape)
    return {
        "p50": round(statistics.median(times), 4),
        "p90": round(times[int(0.9 * (len(times) - 1))], 4),
        "iterations": iterations,
        "shape": shape,
    }


def measure_latency(engine_path: Path, feed: Mapping[str, Any]) -> dict[str, Any]:
    """Latency of the engine at the opt shape (``feed`` is built that shape by the plan)."""
    from polygraphy.backend.trt import TrtRunner

    return time_runner(TrtRunner(_load_engine(engine_path), name="tensorrt"), feed)
