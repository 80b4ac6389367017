"""nimbuild.builder.engines.plan and .reproduce: the plan, Polygraphy's Profile, CreateConfig and
`polygraphy convert` command line (checked with Polygraphy's own parser), and reproduce.sh; no GPU, no TensorRT.
"""

from __future__ import annotations

import json
import shlex

import pytest

from nimbuild import skus
from nimbuild.builder.engines import trt_seam
from nimbuild.builder.engines.plan import ASSUMED_INPUTS, BuildOptions, plan_engines
from nimbuild.builder.engines.reproduce import reproduce_script

from .engines_support import H100, INPUTS, parse_with_polygraphy, write_recipe

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
