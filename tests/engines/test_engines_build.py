"""nimbuild.builder.engines.build and .fragment: the build loop with the TensorRT seam replaced by a fake whose
"engines" are the ONNX graphs themselves (run through the seam's real Comparator and gate code), the build
cache, the fragment, the CLI; the `gpu` tests build real engines wherever TensorRT and a GPU exist.
"""

from __future__ import annotations

import json
import shlex
import shutil
import stat

import pytest

from nimbuild import skus
from nimbuild.builder.engines import trt_seam
from nimbuild.builder.engines.build import build_engines
from nimbuild.builder.engines.host import visible_gpu
from nimbuild.builder.engines.plan import HARDWARE_COMPATIBILITY_LEVEL, BuildOptions, plan_engines
from nimbuild.errors import NimbuildError

from .engines_support import (
    A100,
    EXAMPLE_RECIPE,
    H100,
    FakeSeam,
    cli,
    parse_with_polygraphy,
    probe,
    quiet,
    write_recipe,
)

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


# ----------------------------------------------------------------------------- CLI


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
