"""nimbuild.builder.steps (`nimbuild build`): every step, then a no-change rebuild that reuses everything;
changes rebuild what depends on them."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import yaml

from nimbuild import manifest as mf
from nimbuild import manifest_verify
from nimbuild.errors import NimbuildError
from nimbuild.output import Output

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ step reuse, with a stand-in export
# The real export is exercised below (and in the export engineer's tests); here a stand-in that writes the
# documented export layout lets the cache logic be tested in milliseconds, counting how often export runs.


@pytest.fixture
def recipe_dir(tmp_path, example_recipe, example_model_dir, example_pairs):
    root = tmp_path / "recipes"
    shutil.copytree(example_model_dir, root / "models" / "example-tiny")
    (root / "pairs").mkdir()
    shutil.copy(example_pairs, root / "pairs" / example_pairs.name)
    shutil.copy(example_recipe, root / "example-tiny.yaml")
    return root


@pytest.fixture
def fake_pipeline(monkeypatch):
    calls = []

    def run_export(recipe, out_dir, precisions, pairs, out, **_options):
        """The real one's contract: the export's entries staged, then swapped in as nimbuild's own."""
        from nimbuild.builder.steps import EXPORT_OUTPUTS
        from nimbuild.outdir import OutputFolder

        calls.append(list(precisions))
        folder = OutputFolder(out_dir)
        with folder.staging("export") as stage:
            report = write_export(recipe, stage, precisions)
            folder.swap_in(stage, EXPORT_OUTPUTS)
        return report

    def write_export(recipe, out_dir, precisions):
        out_dir = Path(out_dir)
        (out_dir / "tokenizer").mkdir(parents=True, exist_ok=True)
        (out_dir / "tokenizer" / "tokenizer.json").write_text("{}")
        entries = {}
        for p in precisions:
            if p == "fp8":
                continue
            key, rel = (p, f"onnx/{p}/model.onnx") if p != "int8" else ("int8-avx2", "onnx/cpu-int8-avx2/model.onnx")
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (out_dir / rel).write_bytes(f"{p}-graph".encode())
            entries[key] = {"status": "passed", "path": rel, "gate": {"passed": True}}
            if p == "int8":
                entries[key].update(precision="int8", cpu_isa="avx2", weight_bits=7)
        report = {
            "model": recipe.name,
            "model_revision": "r1",
            "max_batch_size": 64,
            "max_sequence_length": 512,
            "recipe_sha256": recipe.sha256,
            "precisions": entries,
        }
        (out_dir / "export_report.json").write_text(json.dumps(report))
        return report

    monkeypatch.setitem(sys.modules, "nimbuild.builder.pipeline", types.SimpleNamespace(run_export=run_export))
    return calls


def _build(recipe, out, **kw):
    from nimbuild.builder.steps import run_build

    kw.setdefault("render", False)
    res = run_build(recipe, out, Output(quiet=True), engines=False, **kw)
    return {s.step: s.status for s in res.steps}, res


def test_no_change_rebuild_reuses_every_step(recipe_dir, tmp_path, fake_pipeline):
    recipe = recipe_dir / "example-tiny.yaml"
    out = tmp_path / "out"
    status, res = _build(recipe, out)
    assert status == {"export": "built", "engines": "skipped", "manifest": "built", "render": "skipped"}
    first = (out / "manifest.yaml").read_bytes()
    assert manifest_verify.verify_manifest(mf.load_manifest(out / "manifest.yaml")) == []
    status, _ = _build(recipe, out)
    assert status["export"] == "reused" and status["manifest"] == "reused"
    assert len(fake_pipeline) == 1
    assert (out / "manifest.yaml").read_bytes() == first


def test_model_file_change_rebuilds_export(recipe_dir, tmp_path, fake_pipeline):
    recipe = recipe_dir / "example-tiny.yaml"
    out = tmp_path / "out"
    _build(recipe, out)
    (recipe_dir / "models/example-tiny/config.json").write_text(
        (recipe_dir / "models/example-tiny/config.json").read_text() + "\n"
    )
    status, _ = _build(recipe, out)
    assert status["export"] == "built" and len(fake_pipeline) == 2


def test_recipe_change_that_matters_rebuilds_and_one_that_does_not_reuses(recipe_dir, tmp_path, fake_pipeline):
    recipe = recipe_dir / "example-tiny.yaml"
    out = tmp_path / "out"
    _build(recipe, out)
    data = yaml.safe_load(recipe.read_text())
    data["serving"]["max_queue_delay_us"] = 500  # serving only: render's business, not export's
    recipe.write_text(yaml.safe_dump(data))
    status, _ = _build(recipe, out)
    assert status["export"] == "reused" and len(fake_pipeline) == 1
    from nimbuild.recipe import load_recipe

    assert json.loads((out / "export_report.json").read_text())["recipe_sha256"] == load_recipe(recipe).sha256
    data["precisions"] = ["fp32", "int8"]
    recipe.write_text(yaml.safe_dump(data))
    status, _ = _build(recipe, out)
    assert status["export"] == "built" and fake_pipeline[-1] == ["fp32", "int8"]


def test_toolchain_change_rebuilds(recipe_dir, tmp_path, fake_pipeline, monkeypatch):
    recipe = recipe_dir / "example-tiny.yaml"
    out = tmp_path / "out"
    _build(recipe, out)
    from nimbuild.builder import cache, steps

    real = cache.toolchain_versions()
    monkeypatch.setattr(steps, "toolchain_versions", lambda: {**real, "torch": "9.9.9"})
    status, _ = _build(recipe, out)
    assert status["export"] == "built"


def test_a_change_of_the_export_code_rebuilds(recipe_dir, tmp_path, fake_pipeline, monkeypatch):
    """Same nimbuild version, edited builder source (a development checkout): the export is not reused."""
    recipe = recipe_dir / "example-tiny.yaml"
    out = tmp_path / "out"
    _build(recipe, out)
    from nimbuild.builder import steps

    status, _ = _build(recipe, out)
    assert status["export"] == "reused"
    monkeypatch.setattr(steps, "export_source_digest", lambda: "0" * 64)
    status, _ = _build(recipe, out)
    assert status["export"] == "built"


def test_the_export_source_digest_follows_the_bytes_of_the_builder(tmp_path, monkeypatch):
    import nimbuild
    from nimbuild.builder import cache

    package = Path(nimbuild.__file__).resolve().parent
    copy = tmp_path / "nimbuild"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__", "runtime", "render", "cli"))
    monkeypatch.setattr(cache, "__file__", str(copy / "builder" / "cache.py"))
    before = cache.export_source_digest()
    assert before == cache.export_source_digest()
    int8 = copy / "builder" / "precision" / "int8.py"
    int8.write_text(int8.read_text() + "\n# edited\n")
    assert cache.export_source_digest() != before


def test_tampered_output_is_rebuilt_not_reused(recipe_dir, tmp_path, fake_pipeline):
    recipe = recipe_dir / "example-tiny.yaml"
    out = tmp_path / "out"
    _build(recipe, out)
    (out / "onnx/fp32/model.onnx").write_bytes(b"tampered!")
    # no longer the file nimbuild wrote: not reused, and not overwritten without --force (nimbuild.outdir)
    with pytest.raises(NimbuildError, match=r"onnx/fp32/model.onnx: not written by nimbuild \(or changed since\)"):
        _build(recipe, out)
    assert (out / "onnx/fp32/model.onnx").read_bytes() == b"tampered!"
    status, _ = _build(recipe, out, force=True)
    assert status["export"] == "built"
    assert manifest_verify.verify_manifest(mf.load_manifest(out / "manifest.yaml")) == []


def test_new_fragment_rebuilds_only_the_manifest(recipe_dir, tmp_path, fake_pipeline):
    from nimbuild import profiles

    recipe = recipe_dir / "example-tiny.yaml"
    out = tmp_path / "out"
    _build(recipe, out)
    frag_dir = out / "engines" / "l40s"
    (frag_dir / "fp16").mkdir(parents=True)
    (frag_dir / "fp16" / "model.plan").write_bytes(b"plan")
    tags = profiles.tensorrt_profile_tags("example-tiny", "r1", "fp16", "l40s", "10.13.0", 12, 64, 512)
    prof = mf.Profile(
        id=profiles.profile_id(tags),
        name=profiles.profile_name(tags),
        tags=tags,
        files={"fp16/model.plan": mf.file_entry(frag_dir, "fp16/model.plan")},
    )
    mf.write_manifest(mf.Manifest(profiles=[prof], root=frag_dir), frag_dir / "fragment.yaml")
    status, _ = _build(recipe, out)
    assert status["export"] == "reused" and status["manifest"] == "built"
    names = {p.name for p in mf.load_manifest(out / "manifest.yaml").profiles}
    assert "l40s-48gb-fp16-triton-tensorrt" in names


def test_build_cli_help_and_bad_recipe(tmp_path):
    from typer.testing import CliRunner

    from nimbuild.cli import _register, app

    _register()
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    res = CliRunner().invoke(app, ["build", str(bad), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and not (tmp_path / "o" / "manifest.yaml").exists()


# ------------------------------------------------------------------ the real thing


@pytest.fixture(scope="module")
def real_build(tmp_path_factory):
    pytest.importorskip("nimbuild.builder.pipeline", reason="the export pipeline is not written yet")
    from nimbuild.builder.steps import run_build

    out = tmp_path_factory.mktemp("build") / "example-tiny"
    res = run_build(REPO / "recipes/example-tiny.yaml", out, Output(quiet=True), engines=False)
    return out, res


def test_real_build_then_no_change_rebuild(real_build):
    from nimbuild.builder.steps import run_build

    out, first = real_build
    assert first.manifest == out / "manifest.yaml"
    m = mf.load_manifest(out / "manifest.yaml")
    assert m.profiles and manifest_verify.verify_manifest(m) == []
    again = run_build(REPO / "recipes/example-tiny.yaml", out, Output(quiet=True), engines=False)
    assert {s.step: s.status for s in again.steps}["export"] == "reused"
    assert {s.step: s.status for s in again.steps}["manifest"] == "reused"


def test_committed_example_manifest_matches_a_fresh_build(real_build):
    """IDs are reproducible across machines: manifests/example-tiny.yaml (make example-manifest) == a fresh build,
    compared on what both machines could build. A CPU int8 profile exists only for the classes the building CPU
    has (an AVX2 machine makes avx2; a VNNI one avx512_vnni and avx2; an arm64 one arm64_dotprod), so each side
    is restricted to the classes the other has; every other profile must be there on both."""
    from nimbuild import cpu_isa

    out, _ = real_build
    committed = REPO / "manifests" / "example-tiny.yaml"
    assert committed.exists(), "manifests/example-tiny.yaml is missing: run `make example-manifest`"
    fresh = mf.load_manifest(out / "manifest.yaml")
    saved = mf.load_manifest(committed)
    here = set(cpu_isa.detect_cpu().classes)
    saved_classes = {p.tags["cpu_isa"] for p in saved.profiles if "cpu_isa" in p.tags}
    assert saved_classes, "the committed example manifest has no CPU int8 profile: its gate or its build broke"
    fresh_classes = {p.tags["cpu_isa"] for p in fresh.profiles if "cpu_isa" in p.tags}
    assert fresh_classes == here & set(cpu_isa.NAMES)  # this machine made every class it has, and no other

    def part(m, classes):
        return {p.id: (p.name, p.tags) for p in m.profiles if p.tags.get("cpu_isa") in classes | {None}}

    assert part(saved, here) == part(fresh, saved_classes)


def test_real_reexport_keeps_the_rest_of_the_build_folder(real_build, tmp_path):
    """A change that matters to the export (here: the gate thresholds) re-exports in place: the new
    graphs replace the old ones, while what else lives in the build folder (engines, step cache,
    Triton repositories) stays, and the manifest rebuilt from it verifies."""
    import shutil

    from nimbuild.builder.steps import run_build

    out = tmp_path / "example-tiny"
    shutil.copytree(real_build[0], out, symlinks=True)
    (out / "engines").mkdir(exist_ok=True)
    (out / "engines" / "keep.txt").write_text("another runner's work")
    text = (REPO / "recipes/example-tiny.yaml").read_text()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        text.replace("path: models/example-tiny", f"path: {REPO / 'recipes/models/example-tiny'}")
        .replace("pairs: pairs/example-tiny.jsonl", f"pairs: {REPO / 'recipes/pairs/example-tiny.jsonl'}")
        .replace("  ndcg10: 0.98\n", "  ndcg10: 0.97\n")
    )
    res = run_build(recipe, out, Output(quiet=True), engines=False)
    status = {s.step: s.status for s in res.steps}
    assert status["export"] == "built"
    assert (out / "engines" / "keep.txt").read_text() == "another runner's work"
    assert (out / ".nimbuild-cache").is_dir() and (out / "triton").is_dir()
    assert not (out / ".export.partial").exists()
    report = json.loads((out / "export_report.json").read_text())
    assert report["thresholds"]["ndcg10"] == 0.97
    assert manifest_verify.verify_manifest(mf.load_manifest(out / "manifest.yaml")) == []
    forced = run_build(recipe, out, Output(quiet=True), engines=False, force=True)
    assert {s.step: s.status for s in forced.steps}["export"] == "built"
