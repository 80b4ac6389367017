"""`nimbuild engines`: plan, guards, Polygraphy command lines, build cache, fragment, engine check.

No GPU and no TensorRT here: everything up to the TensorRT calls runs with
Polygraphy's real objects (Profile, CreateConfig, the `polygraphy convert`
argument parser), and the orchestration runs with the seam replaced by a fake
whose "engines" are the ONNX graphs themselves, run by ONNX Runtime through the
real Comparator/gate code of the seam. The `gpu` tests build real engines
wherever TensorRT and a GPU exist.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nimbuild import skus
from nimbuild.builder.engines import trt_seam
from nimbuild.builder.engines.build import build_engines
from nimbuild.builder.engines.feeds import evaluation_feeds, opt_feed
from nimbuild.builder.engines.host import BuildGpu, check_host, resolve_sku, visible_gpu
from nimbuild.builder.engines.plan import ASSUMED_INPUTS, HARDWARE_COMPATIBILITY_LEVEL, BuildOptions, plan_engines
from nimbuild.builder.engines.reproduce import reproduce_script
from nimbuild.errors import NimbuildError
from nimbuild.fsutil import sha256_file
from nimbuild.output import Output
from nimbuild.thresholds import GateThresholds

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_RECIPE = REPO / "recipes" / "example-tiny.yaml"
EXAMPLE_MODEL = REPO / "recipes" / "models" / "example-tiny"
EXAMPLE_PAIRS = REPO / "recipes" / "pairs" / "example-tiny.jsonl"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")

H100 = BuildGpu("NVIDIA H100 80GB HBM3", "2330:10de", "9.0")
H100_PCIE = BuildGpu("NVIDIA H100 PCIe", "2331:10de", "9.0")
A100 = BuildGpu("NVIDIA A100-SXM4-80GB", "20b2:10de", "8.0")


# ----------------------------------------------------------------------------- fixtures


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


@pytest.fixture(scope="session")
def vocab_size() -> int:
    return len(json.loads((EXAMPLE_MODEL / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"])


@pytest.fixture(scope="session")
def export_template(tmp_path_factory, vocab_size) -> Path:
    """An export dir as `nimbuild export` leaves it (internals.md), with tiny hand-made graphs.

    fp16 is the FP32 scorer with FP16 weights (same ranking); fp8 negates the
    weights, so its ranking is reversed and its engine must fail the check.
    """
    out = tmp_path_factory.mktemp("engines-export") / "out"
    rng = np.random.default_rng(0)
    w = rng.normal(0.0, 1.0, vocab_size).astype(np.float32)
    scorer_graph(out / "onnx" / "fp32" / "model.onnx", vocab_size, w)
    scorer_graph(out / "onnx" / "fp16" / "model.onnx", vocab_size, w, dtype=np.float16)
    scorer_graph(out / "onnx" / "fp8" / "model.onnx", vocab_size, -w)
    tok = out / "tokenizer"
    tok.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(EXAMPLE_MODEL / name, tok / name)
    report = {
        "model": "tiny-engines",
        "model_revision": "0123456789abcdef",
        "inputs": list(INPUTS),
        "recipe_sha256": "f" * 64,
        "max_batch_size": 8,
        "max_sequence_length": 64,
        "precisions": {p: {"status": "passed", "path": f"onnx/{p}/model.onnx"} for p in ("fp32", "fp16", "fp8")},
    }
    (out / "export_report.json").write_text(json.dumps(report), encoding="utf-8")
    return out


@pytest.fixture
def export_dir(export_template, tmp_path) -> Path:
    dst = tmp_path / "out"
    shutil.copytree(export_template, dst)
    return dst


@pytest.fixture
def recipe(tmp_path):
    from nimbuild.recipe import load_recipe

    return load_recipe(write_recipe(tmp_path / "recipe"))


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


# ----------------------------------------------------------------------------- plan


def test_plan_h100_builds_fp8_and_fp16_with_the_recipe_shapes(recipe, export_dir):
    plan = plan_engines(recipe, skus.lookup("h100-sxm"), export_dir)
    assert [(e.precision, e.status) for e in plan.engines] == [("fp8", "planned"), ("fp16", "planned")]
    fp8 = plan.engines[0]
    assert fp8.graph == export_dir / "onnx" / "fp8" / "model.onnx"
    assert fp8.engine_path == export_dir / "engines" / "h100-sxm" / "fp8" / "model.plan"
    assert [s.name for s in fp8.shapes] == list(INPUTS)
    assert all((s.min, s.opt, s.max) == ((1, 1), (4, 16), (8, 64)) for s in fp8.shapes)
    assert plan.fragment_path == export_dir / "engines" / "h100-sxm" / "fragment.yaml"
    assert plan.timing_cache == export_dir / "engines" / "h100-sxm" / "timing.cache"
    assert not plan.inputs_assumed and plan.notes == []


def test_plan_a100_skips_fp8_with_the_reason(recipe, export_dir):
    plan = plan_engines(recipe, skus.lookup("a100-sxm4-80gb"), export_dir)
    assert [e.precision for e in plan.planned] == ["fp16"]
    (fp8,) = plan.skipped
    assert fp8.precision == "fp8"
    assert "8.9" in fp8.reason and "8.0" in fp8.reason and "NVIDIA-A100-SXM4-80GB" in fp8.reason


def test_plan_skips_what_the_recipe_or_the_export_did_not_produce(tmp_path, export_dir):
    from nimbuild.recipe import load_recipe

    no_fp8 = load_recipe(write_recipe(tmp_path / "r1", precisions=("fp32", "fp16")))
    plan = plan_engines(no_fp8, skus.lookup("h100-sxm"), export_dir)
    assert [e.precision for e in plan.planned] == ["fp16"]
    assert "not in the recipe's precisions" in plan.skipped[0].reason

    report = json.loads((export_dir / "export_report.json").read_text())
    report["precisions"]["fp8"] = {"status": "rejected", "reason": "top1 0.50 < 0.95"}
    (export_dir / "export_report.json").write_text(json.dumps(report))
    both = load_recipe(write_recipe(tmp_path / "r2"))
    plan = plan_engines(both, skus.lookup("h100-sxm"), export_dir)
    assert [e.precision for e in plan.planned] == ["fp16"]
    assert "rejected" in plan.skipped[0].reason and "top1 0.50 < 0.95" in plan.skipped[0].reason


def test_inputs_come_from_the_graph_or_are_flagged_as_assumed(recipe, export_dir, tmp_path, vocab_size):
    (export_dir / "export_report.json").unlink()  # no report: read the FP32 graph's inputs
    plan = plan_engines(recipe, skus.lookup("h100-sxm"), export_dir)
    assert plan.inputs == INPUTS and not plan.inputs_assumed

    empty = tmp_path / "nothing-exported"
    plan = plan_engines(recipe, skus.lookup("h100-sxm"), empty)
    assert plan.inputs_assumed and plan.inputs == ASSUMED_INPUTS
    assert any("nimbuild export" in n for n in plan.notes)
    assert all(any("does not exist yet" in n for n in e.notes) for e in plan.planned)


# ----------------------------------------------------------------------------- polygraphy command lines


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


@pytest.mark.parametrize(
    "options",
    [
        BuildOptions(),
        BuildOptions(builder_optimization_level=5, workspace_bytes=2 << 30, hardware_compatible=True),
    ],
)
def test_printed_command_means_the_same_build_to_polygraphy(recipe, export_dir, options):
    plan = plan_engines(recipe, skus.lookup("h100-sxm"), export_dir, options)
    for engine in plan.planned:
        argv = shlex.split(plan.polygraphy_command(engine))
        args, config, network, engine_bytes = parse_with_polygraphy(argv)
        ours = plan.create_config_args(engine)
        # the optimization profile Polygraphy parses is the Profile we hand to CreateConfig
        (profile,) = ours["profiles"]
        assert config.profile_dicts == [{name: (list(s.min), list(s.opt), list(s.max)) for name, s in profile.items()}]
        assert network.strongly_typed is True
        assert not (config.fp16 or config.fp8 or config.int8 or config.bf16)  # precision lives in the graph
        assert config.builder_optimization_level == ours["builder_optimization_level"]
        assert config.load_timing_cache == ours["load_timing_cache"] == engine_bytes.save_timing_cache
        assert args.model_file == str(engine.graph) and args.output == str(engine.engine_path)
        assert args.convert_to == "trt"
        level = ours.get("hardware_compatibility_level")
        assert str(config.hardware_compatibility_level) == (
            f"trt.HardwareCompatibilityLevel.{level.upper()}" if level else "None"
        )
        pools = ours.get("memory_pool_limits")
        assert ({str(k): v for k, v in config.memory_pool_limits.items()} if config.memory_pool_limits else None) == (
            {f"trt.MemoryPoolType.{k.upper()}": v for k, v in pools.items()} if pools else None
        )


def test_config_args_are_polygraphys_createconfig_keywords(recipe, export_dir):
    """CreateConfig is constructed without TensorRT (it imports it lazily): our keywords must fit it."""
    from polygraphy.backend.trt import CreateConfig, Profile

    plan = plan_engines(
        recipe, skus.lookup("h100-sxm"), export_dir, BuildOptions(workspace_bytes=1 << 30, hardware_compatible=True)
    )
    args = plan.create_config_args(plan.planned[0])
    with trt_seam.polygraphy_on_stderr():
        config = CreateConfig(**args)
    assert isinstance(config.profiles[0], Profile)
    assert config.profiles[0]["input_ids"].max == (8, 64)
    assert config.timing_cache_path == str(plan.timing_cache)
    assert config.builder_optimization_level == 3
    assert not config.fp16 and not config.fp8  # no weak-typing flags: TensorRT 11 removed them


def test_reproduce_script_runs_from_the_engine_folder(recipe, export_dir):
    plan = plan_engines(recipe, skus.lookup("h100-sxm"), export_dir)
    engine = plan.planned[1]
    trt = trt_seam.TensorRTInfo("10.13.0.35", "12", ())
    script = reproduce_script(plan, engine, trt, H100)
    assert script.startswith("#!/bin/sh\n") and 'cd "$(dirname "$0")"' in script
    assert "TensorRT 10.13.0.35" in script and "2330:10de" in script
    command = script[script.index("polygraphy convert") :].replace("\\\n", " ")
    argv = shlex.split(command)
    args, config, network, _ = parse_with_polygraphy(argv)
    # relative to the engine folder, the paths land on the real graph, cache and engine
    assert (engine.engine_dir / args.model_file).resolve() == engine.graph.resolve()
    assert (engine.engine_dir / args.output).resolve() == engine.engine_path.resolve()
    assert (engine.engine_dir / config.load_timing_cache).resolve() == plan.timing_cache.resolve()
    assert network.strongly_typed


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


# ----------------------------------------------------------------------------- orchestration (fake seam)


def test_build_writes_engines_scripts_and_a_mergeable_fragment(recipe, export_dir):
    from nimbuild import manifest, manifest_merge, manifest_verify, profiles

    seam = FakeSeam(fail_build=())
    plan = plan_engines(recipe, skus.lookup("h100-sxm"), export_dir)
    result = build_engines(recipe, plan, quiet(), seam=seam, gpu_probe=probe(H100))
    status = {r.precision: r.status for r in result.results}
    assert status == {"fp8": "failed", "fp16": "built"}  # fp8's graph reverses the ranking
    fp8 = next(r for r in result.results if r.precision == "fp8")
    assert "engine check" in fp8.reason and fp8.gate["passed"] is False

    # the failing engine is not in the fragment; the passing one is, with its tags and metrics
    fragment = manifest.load_manifest(result.fragment)
    (profile,) = fragment.profiles
    assert profile.tags["precision"] == "fp16" and profile.tags["backend"] == "tensorrt"
    assert profile.tags["gpu"] == "NVIDIA-H100-80GB-HBM3" and profile.tags["gpu_device"] == "2330:10de"
    assert profile.tags["trt_version"] == "10.13.0" and profile.tags["cuda_major_version"] == "12"
    assert profile.tags["max_batch_size"] == "8" and profile.tags["max_sequence_length"] == "64"
    assert profile.tags["model_revision"] == "0123456789abcdef"
    assert profile.id == profiles.profile_id(profile.tags)
    assert list(profile.files) == ["fp16/model.plan"]
    assert manifest_verify.verify_manifest(fragment) == []
    metrics = profile.metrics
    assert metrics["size_bytes"] == (plan.planned[1].engine_path).stat().st_size
    assert metrics["latency_ms"]["shape"] == [4, 16] and metrics["latency_ms"]["p50"] > 0
    assert metrics["gate"]["passed"] and metrics["gate"]["metrics"]["top1"] == 1.0
    assert metrics["gpu_name"] == "NVIDIA H100 80GB HBM3" and metrics["trt_version_full"] == "10.13.0.35"
    assert 0 < metrics["gate"]["metrics"]["max_abs_logit"] < 0.05  # FP16 weights: small, non-zero error

    engine_dir = plan.planned[1].engine_dir
    script = engine_dir / "reproduce.sh"
    assert script.stat().st_mode & stat.S_IXUSR
    assert (engine_dir / "build.json").is_file()
    # what the fake was asked to build: strongly typed graph + Polygraphy config arguments
    built = dict(seam.builds)
    assert built["fp16"]["profiles"][0]["attention_mask"].opt == (4, 16)
    assert built["fp16"]["load_timing_cache"] == str(plan.timing_cache)

    # merged into the export dir's manifest, the paths are rebased under engines/<sku>/
    merged = manifest_merge.merge_manifests([fragment], root=export_dir)
    assert list(merged.profiles[0].files) == ["engines/h100-sxm/fp16/model.plan"]
    # and `nimbuild manifest build` picks the fragment up beside the ONNX profiles, headers agreeing
    from nimbuild.builder.assemble import assemble_manifest

    assembled = assemble_manifest(export_dir)
    trt_profile = assembled.by_id(profile.id)
    assert "engines/h100-sxm/fp16/model.plan" in trt_profile.files
    assert {p.tags["backend"] for p in assembled.profiles} == {"onnx", "tensorrt"}


def test_unchanged_inputs_reuse_the_engine_and_changes_rebuild_or_recheck(tmp_path, export_dir):
    from nimbuild.recipe import load_recipe

    recipe = load_recipe(write_recipe(tmp_path / "r", precisions=("fp32", "fp16")))
    sku = skus.lookup("h100-sxm")
    seam = FakeSeam()
    run = lambda r=recipe, **kw: build_engines(  # noqa: E731
        r, plan_engines(r, sku, export_dir, **kw), quiet(), seam=seam, gpu_probe=probe(H100)
    )

    first = run()
    assert [r.status for r in first.results] == ["skipped", "built"]
    fragment_bytes = first.fragment.read_bytes()
    assert (len(seam.builds), len(seam.checks)) == (1, 1)

    second = run()  # nothing changed: nothing rebuilt or rerun
    assert [r.status for r in second.results] == ["skipped", "reused"]
    assert (len(seam.builds), len(seam.checks)) == (1, 1)
    assert second.fragment.read_bytes() == fragment_bytes

    stricter = load_recipe(
        write_recipe(
            tmp_path / "r2", precisions=("fp32", "fp16"), thresholds="{top1: 0.96, spearman: 0.95, ndcg10: 0.98}"
        )
    )
    third = run(stricter)  # thresholds changed: re-check, not rebuild
    assert third.results[1].status == "reused" and (len(seam.builds), len(seam.checks)) == (1, 2)

    run(options=BuildOptions(builder_optimization_level=4))  # a build option changed: rebuild
    assert len(seam.builds) == 2

    seam.version = "10.14.1.48"  # another TensorRT: rebuild
    run(options=BuildOptions(builder_optimization_level=4))
    assert len(seam.builds) == 3

    engine = export_dir / "engines" / "h100-sxm" / "fp16" / "model.plan"
    engine.write_bytes(engine.read_bytes() + b"tampered")  # bytes that are not the recorded ones
    run(options=BuildOptions(builder_optimization_level=4))
    assert len(seam.builds) == 4

    build_engines(
        recipe, plan_engines(recipe, sku, export_dir), quiet(), seam=seam, gpu_probe=probe(H100), force=True
    )  # --rebuild
    assert len(seam.builds) == 5


def test_fp8_is_skipped_not_attempted_below_compute_capability_8_9(recipe, export_dir):
    seam = FakeSeam()
    plan = plan_engines(recipe, skus.lookup("a100-sxm4-80gb"), export_dir)
    result = build_engines(recipe, plan, quiet(), seam=seam, gpu_probe=probe(A100))
    assert [p for p, _ in seam.builds] == ["fp16"]
    assert [(r.precision, r.status) for r in result.results] == [("fp8", "skipped"), ("fp16", "built")]
    assert "8.9" in result.results[0].reason
    assert result.fragment == export_dir / "engines" / "a100-sxm4-80gb" / "fragment.yaml"


def test_a_failed_build_leaves_nothing_half_written(recipe, export_dir):
    seam = FakeSeam(fail_build={"fp16"})
    plan = plan_engines(recipe, skus.lookup("h100-sxm"), export_dir)
    result = build_engines(recipe, plan, quiet(), seam=seam, gpu_probe=probe(H100))
    assert {r.precision: r.status for r in result.results} == {"fp8": "failed", "fp16": "failed"}
    assert "unsupported op" in result.results[1].reason
    sku_dir = export_dir / "engines" / "h100-sxm"
    assert not (sku_dir / "fp16").exists()
    assert not [p for p in sku_dir.iterdir() if p.name.endswith(".partial")]
    assert result.fragment is None and not (sku_dir / "fragment.yaml").exists()


def test_a_stale_fragment_is_removed_when_no_engine_passes_any_more(recipe, export_dir):
    plan = plan_engines(recipe, skus.lookup("h100-sxm"), export_dir)
    assert build_engines(recipe, plan, quiet(), seam=FakeSeam(), gpu_probe=probe(H100)).fragment
    result = build_engines(recipe, plan, quiet(), seam=FakeSeam(fail_build={"fp16"}), gpu_probe=probe(H100), force=True)
    assert result.fragment is None and not plan.fragment_path.exists()


def test_guards_run_before_any_work(recipe, export_dir):
    seam = FakeSeam()
    plan = plan_engines(recipe, skus.lookup("h100-sxm"), export_dir)
    with pytest.raises(NimbuildError, match="visible GPU is NVIDIA A100"):
        build_engines(recipe, plan, quiet(), seam=seam, gpu_probe=probe(A100))
    shutil.rmtree(export_dir / "tokenizer")
    with pytest.raises(NimbuildError, match="tokenizer not found"):
        build_engines(recipe, plan, quiet(), seam=seam, gpu_probe=probe(H100))
    assert seam.builds == [] and not (export_dir / "engines").exists()


# ----------------------------------------------------------------------------- engine check pieces


def test_feeds_fit_the_profile_and_chunking_does_not_change_the_verdict(tmp_path, export_dir):
    from nimbuild.recipe import load_recipe

    small = load_recipe(write_recipe(tmp_path / "r", batch=(2, 2, 3), sequence=(8, 16, 64)))
    plan = plan_engines(small, skus.lookup("h100-sxm"), export_dir)
    feeds, pairs_sha = evaluation_feeds(small, plan)
    assert pairs_sha == sha256_file(EXAMPLE_PAIRS)
    for query in feeds:
        assert sum(chunk["rows"] for chunk in query) == 8  # 8 passages per query, all kept
        for chunk in query:
            for name in INPUTS:
                b, s = chunk["feed"][name].shape
                assert 2 <= b <= 3 and 8 <= s <= 64 and chunk["feed"][name].dtype == np.int64
    seam = FakeSeam()
    fp32 = export_dir / "onnx" / "fp32" / "model.onnx"
    chunked = seam.check_engine(export_dir / "onnx" / "fp16" / "model.onnx", fp32, feeds, GateThresholds(top1=0.95))
    big = load_recipe(write_recipe(tmp_path / "r2"))
    whole, _ = evaluation_feeds(big, plan_engines(big, skus.lookup("h100-sxm"), export_dir))
    unchunked = seam.check_engine(export_dir / "onnx" / "fp16" / "model.onnx", fp32, whole, GateThresholds(top1=0.95))
    assert chunked["gate"]["metrics"] == pytest.approx(unchunked["gate"]["metrics"], abs=1e-6)
    assert chunked["gate"]["passed"] and unchunked["gate"]["passed"]


def test_scores_are_the_last_logit_column_without_padding_rows():
    logits = {"logits": np.array([[0.1, 0.9], [0.2, 0.3], [0.0, 7.0]], np.float32)}
    assert trt_seam.scores_of(logits, 2).tolist() == pytest.approx([0.9, 0.3])
    assert trt_seam.scores_of({"l": np.array([[1.0], [2.0]])}, 2).tolist() == [1.0, 2.0]


def test_opt_feed_has_the_opt_shape(recipe, export_dir):
    plan = plan_engines(recipe, skus.lookup("h100-sxm"), export_dir)
    sample = {n: np.array([[5, 6, 7]], np.int64) for n in INPUTS}
    feed = opt_feed(plan, sample)
    assert {n: a.shape for n, a in feed.items()} == {n: (4, 16) for n in INPUTS}
    assert feed["input_ids"][3, :4].tolist() == [5, 6, 7, 5]


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

    monkeypatch.setattr(polygraphy_trt, "SaveEngine", CaptureSave)
    plan = plan_engines(
        recipe, skus.lookup("h100-sxm"), export_dir, BuildOptions(workspace_bytes=1 << 30, hardware_compatible=True)
    )
    engine = plan.planned[1]
    trt_seam.build_engine(engine.graph, engine.engine_path, plan.create_config_args(engine))
    build = captured["build"]
    assert isinstance(build, polygraphy_trt.EngineFromNetwork) and captured["path"] == str(engine.engine_path)
    assert build.timing_cache_path == str(plan.timing_cache)  # saved back to the same file
    network, config = build._network, build._config
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


# ----------------------------------------------------------------------------- CLI


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nimbuild", "engines", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
        cwd=REPO,
    )


def test_cli_dry_run_h100_prints_two_engines_with_polygraphy_commands(tmp_path, export_dir):
    proc = cli(str(EXAMPLE_RECIPE), "--gpu", "h100-sxm", "--dry-run", "--out", str(export_dir))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "fp8 engine:" in out and "fp16 engine:" in out and "skipped" not in out
    assert out.count("polygraphy convert") == 2
    assert "input_ids: min 1x1, opt 8x128, max 64x512" in out  # example-tiny's shapes
    commands = [line.strip() for line in out.splitlines() if line.strip().startswith("polygraphy convert")]
    for command in commands:
        _, config, network, _ = parse_with_polygraphy(shlex.split(command))
        assert network.strongly_typed and config.profile_dicts[0]["input_ids"] == ([1, 1], [8, 128], [64, 512])


def test_cli_dry_run_a100_says_why_fp8_is_skipped_and_json_is_clean():
    proc = cli(str(EXAMPLE_RECIPE), "--gpu", "a100-sxm4-80gb", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # stdout is one JSON document
    assert data["dry_run"] is True
    status = {e["precision"]: (e["status"], e["reason"]) for e in data["engines"]}
    assert status["fp16"] == ("planned", None)
    assert status["fp8"][0] == "skipped" and "compute capability >= 8.9" in status["fp8"][1]


def test_cli_unknown_sku_lists_the_known_ones():
    proc = cli(str(EXAMPLE_RECIPE), "--gpu", "nonsense", "--dry-run")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "unknown GPU SKU 'nonsense'" in proc.stderr
    assert all(s.slug in proc.stderr for s in skus.catalog())


def test_cli_without_gpu_or_tensorrt_exits_1_with_one_line(export_dir):
    gpu, gpu_problem = visible_gpu()
    trt, _ = trt_seam.probe_tensorrt()
    if gpu is not None and trt is not None:
        pytest.skip("this host has a GPU and TensorRT: the command would build")
    proc = cli(str(EXAMPLE_RECIPE), "--gpu", "h100-sxm", "--out", str(export_dir))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: cannot build TensorRT engines")
    assert ("TensorRT is not installed" in proc.stderr) == (trt is None)
    assert ("no NVIDIA GPU is visible" in proc.stderr) == (gpu is None)
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_cli_help_has_an_example():
    proc = cli("--help")
    assert proc.returncode == 0 and "Example: nimbuild engines" in proc.stdout


# ----------------------------------------------------------------------------- real TensorRT (GPU hosts)


@pytest.mark.gpu
def test_real_engine_builds_checks_and_is_reused(recipe, export_dir):
    """On a host with TensorRT and a GPU: the real seam builds, checks and times an FP16 engine."""
    gpu, why = visible_gpu()
    assert gpu is not None, why
    sku = skus.by_pci_device_id(gpu.pci_device_id) or skus.by_nvml_name(gpu.name)
    if sku is None:
        pytest.skip(f"the visible GPU {gpu.name} [{gpu.pci_device_id}] is not in the SKU catalog")
    plan = plan_engines(recipe, sku, export_dir)
    result = build_engines(recipe, plan, quiet())
    fp16 = next(r for r in result.results if r.precision == "fp16")
    assert fp16.status == "built", fp16.reason
    assert fp16.engine.stat().st_size > 0 and fp16.metrics["latency_ms"]["p50"] > 0
    assert fp16.tags["trt_version"] == trt_seam.probe_tensorrt()[0].tag_version
    assert plan.timing_cache.stat().st_size > 0  # the timing cache was saved
    again = build_engines(recipe, plan, quiet())
    assert next(r for r in again.results if r.precision == "fp16").status == "reused"


@pytest.mark.gpu
def test_real_hardware_compatible_engine_is_tagged(recipe, export_dir):
    trt, why = trt_seam.probe_tensorrt()
    assert trt is not None, why
    if HARDWARE_COMPATIBILITY_LEVEL not in trt.hardware_compatibility_levels:
        pytest.skip(f"TensorRT {trt.version} has no {HARDWARE_COMPATIBILITY_LEVEL} level (needs >= 10.9)")
    gpu, _ = visible_gpu()
    sku = skus.by_pci_device_id(gpu.pci_device_id) or skus.by_nvml_name(gpu.name)
    if sku is None:
        pytest.skip(f"the visible GPU {gpu.name} is not in the SKU catalog")
    plan = plan_engines(recipe, sku, export_dir, BuildOptions(hardware_compatible=True))
    result = build_engines(recipe, plan, quiet())
    fp16 = next(r for r in result.results if r.precision == "fp16")
    assert fp16.status == "built", fp16.reason
    assert fp16.tags["hardware_compatibility_level"] == "same_compute_capability"


def test_each_engine_is_judged_by_its_own_precisions_thresholds(tmp_path, export_dir):
    """A recipe's `thresholds.fp8` judges the fp8 engine (and only it); fp16 keeps the recipe-wide bars."""
    from nimbuild.recipe import load_recipe

    lenient_fp8 = "{top1: 0.95, spearman: 0.95, ndcg10: 0.98, fp8: {top1: 0.0, spearman: -1.0, ndcg10: 0.0}}"
    recipe = load_recipe(write_recipe(tmp_path / "recipe", thresholds=lenient_fp8))
    plan = plan_engines(recipe, skus.lookup("h100-sxm"), export_dir)
    result = build_engines(recipe, plan, quiet(), seam=FakeSeam(), gpu_probe=probe(H100))
    by_precision = {r.precision: r for r in result.results}
    # the fp8 graph reverses the ranking: it fails the recipe-wide bars (previous tests) but not its own
    assert by_precision["fp8"].status == "built", by_precision["fp8"].reason
    assert by_precision["fp8"].gate["thresholds"]["top1"] == 0.0
    assert by_precision["fp8"].gate["metrics"]["top1"] < 0.5
    assert by_precision["fp16"].status == "built" and by_precision["fp16"].gate["thresholds"]["top1"] == 0.95
