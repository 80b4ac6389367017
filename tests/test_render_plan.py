"""The CI plan: one build job per GPU SKU and per CPU class, one merge; each format valid against its real schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nimbuild import skus
from nimbuild.errors import NimbuildError
from nimbuild.render import plan as plan_mod

REPO = Path(__file__).resolve().parents[1]
VENDOR = "check_jsonschema.builtin_schemas.vendor"

RECIPE = """\
name: three-gpus
source: {{path: model}}
precisions: [fp32, fp16, fp8]
gpus: [h100-sxm, a100-sxm4-80gb, l40s]
runners:
{runners}
serving:
  triton_image: nvcr.io/nvidia/tritonserver:25.08-py3
"""


def _recipe(
    tmp_path,
    monkeypatch,
    runners=(
        "  h100-sxm: [self-hosted, gpu-h100]\n"
        "  a100-sxm4-80gb: [self-hosted, gpu-a100]\n"
        "  l40s: [self-hosted, gpu-l40s]\n"
    ),
):
    from nimbuild.recipe import load_recipe

    (tmp_path / "recipes").mkdir(exist_ok=True)
    path = tmp_path / "recipes" / "three.yaml"
    path.write_text(RECIPE.format(runners=runners or "  {}"))
    monkeypatch.chdir(tmp_path)  # CI runs from the repository root
    return load_recipe(path)


def _vendored_schema(name: str) -> dict:
    from importlib.resources import files

    return json.loads(files(VENDOR).joinpath(f"{name}.json").read_text(encoding="utf-8"))


def _validate(instance, schema_name: str) -> list[str]:
    import jsonschema

    schema = _vendored_schema(schema_name)
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


def test_github_workflow_validates_and_has_one_job_per_sku_then_a_merge(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path, monkeypatch)
    plan = plan_mod.render_plan(recipe, "github")
    data = yaml.safe_load(plan.text)
    assert _validate(data, "github-workflows") == []
    matrix = data["jobs"]["engines"]["strategy"]["matrix"]["include"]
    assert [m["slug"] for m in matrix] == ["h100-sxm", "a100-sxm4-80gb", "l40s"]
    assert [m["runner"] for m in matrix] == [
        ["self-hosted", "gpu-h100"],
        ["self-hosted", "gpu-a100"],
        ["self-hosted", "gpu-l40s"],
    ]
    assert data["jobs"]["engines"]["runs-on"] == "${{ matrix.runner }}"
    assert set(data["jobs"]) == {"engines", "release"} and data["jobs"]["release"]["needs"] == "engines"
    runs = [s.get("run", "") for s in data["jobs"]["engines"]["steps"]]
    assert "nimbuild export recipes/three.yaml --out out" in runs
    assert 'nimbuild engines recipes/three.yaml --gpu "${{ matrix.slug }}" --out out' in runs
    assert data["jobs"]["engines"]["container"]["image"] == "nvcr.io/nvidia/tensorrt:25.08-py3"
    assert plan.warnings == []


def test_schema_validation_is_live(tmp_path, monkeypatch):
    """A broken workflow is rejected by the same validator (so the checks above can fail)."""
    data = yaml.safe_load(plan_mod.render_plan(_recipe(tmp_path, monkeypatch), "github").text)
    del data["jobs"]["engines"]["runs-on"]
    data["jobs"]["release"]["timeout-minutes"] = "soon"
    assert len(_validate(data, "github-workflows")) >= 1
    gl = yaml.safe_load(plan_mod.render_plan(_recipe(tmp_path, monkeypatch), "gitlab").text)
    gl["engines"]["parallel"] = {"matrix": "not a list"}
    assert _validate(gl, "gitlab-ci") != []


def test_gitlab_pipeline_validates_with_a_parallel_matrix(tmp_path, monkeypatch):
    plan = plan_mod.render_plan(_recipe(tmp_path, monkeypatch), "gitlab")
    data = yaml.safe_load(plan.text)
    assert _validate(data, "gitlab-ci") == []
    matrix = data["engines"]["parallel"]["matrix"]
    assert [m["SLUG"] for m in matrix] == ["h100-sxm", "a100-sxm4-80gb", "l40s"]
    assert [m["RUNNER_TAG"] for m in matrix] == ["gpu-h100", "gpu-a100", "gpu-l40s"]
    assert data["engines"]["tags"] == ["$RUNNER_TAG"]
    assert data["release"]["needs"] == [{"job": "engines", "artifacts": True}]
    assert data["stages"] == ["engines", "release"]


def _k8s_jobs(text: str):
    from kubernetes.client import ApiClient

    client = ApiClient()
    docs = [d for d in yaml.safe_load_all(text) if d]
    # what the client does with an API server's answer: JSON text -> typed V1Job (required fields checked)
    jobs = [client.deserialize(json.dumps(d), "V1Job", "application/json") for d in docs]
    return docs, jobs, client


def test_kubernetes_jobs_deserialize_into_v1job_with_gpu_scheduling(tmp_path, monkeypatch):
    plan = plan_mod.render_plan(_recipe(tmp_path, monkeypatch), "k8s")
    docs, jobs, client = _k8s_jobs(plan.text)
    assert len(jobs) == 4
    for doc, job in zip(docs, jobs, strict=True):
        # nothing the model does not know was dropped: the typed object serializes back to the document
        assert client.sanitize_for_serialization(job) == doc
        assert job.api_version == "batch/v1" and job.kind == "Job"
        assert job.spec.template.spec.restart_policy == "Never"
    build, merge = jobs[:3], jobs[3]
    for job, slug in zip(build, ("h100-sxm", "a100-sxm4-80gb", "l40s"), strict=True):
        pod = job.spec.template.spec
        assert pod.node_selector == {"nvidia.com/gpu.product": skus.lookup(slug).gfd_product}
        assert pod.containers[0].resources.limits == {"nvidia.com/gpu": "1"}
        assert f"--gpu {slug}" in pod.containers[0].args[0]
        assert len(job.metadata.name) <= 63
    assert merge.metadata.labels["app.kubernetes.io/component"] == "merge"
    assert merge.spec.template.spec.node_selector is None
    assert merge.spec.template.spec.containers[0].resources is None
    assert all(
        f"/workspace/out/{s}/engines/{s}/fragment.yaml" in merge.spec.template.spec.init_containers[0].args[0]
        for s in ("h100-sxm", "a100-sxm4-80gb", "l40s")
    )


def test_a_misspelled_field_would_not_survive_the_kubernetes_round_trip(tmp_path, monkeypatch):
    docs, _, _ = _k8s_jobs(plan_mod.render_plan(_recipe(tmp_path, monkeypatch), "k8s").text)
    docs[0]["spec"]["template"]["spec"]["nodeSelektor"] = docs[0]["spec"]["template"]["spec"].pop("nodeSelector")
    _, jobs, client = _k8s_jobs(yaml.safe_dump_all(docs))
    assert client.sanitize_for_serialization(jobs[0]) != docs[0]


def test_missing_runners_get_the_documented_default_and_a_warning(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path, monkeypatch, runners="  h100-sxm: [self-hosted, gpu-h100]\n")
    plan = plan_mod.render_plan(recipe, "github")
    matrix = yaml.safe_load(plan.text)["jobs"]["engines"]["strategy"]["matrix"]["include"]
    assert matrix[1]["runner"] == ["self-hosted", "linux", "gpu-a100-sxm4-80gb"]
    assert matrix[2]["runner"] == ["self-hosted", "linux", "gpu-l40s"]
    assert len(plan.warnings) == 2 and all("default runs-on labels" in w for w in plan.warnings)
    gl = yaml.safe_load(plan_mod.render_plan(recipe, "gitlab").text)
    assert [m["RUNNER_TAG"] for m in gl["engines"]["parallel"]["matrix"]] == [
        "gpu-h100",
        "gpu-a100-sxm4-80gb",
        "gpu-l40s",
    ]


def test_unknown_format_lists_the_known_ones(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path, monkeypatch)
    with pytest.raises(NimbuildError) as exc:
        plan_mod.render_plan(recipe, "jenkins")
    assert "github, gitlab, k8s" in str(exc.value)
    done = subprocess.run(
        [sys.executable, "-m", "nimbuild", "plan", "recipes/three.yaml", "--format", "jenkins"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 1 and "github, gitlab, k8s" in done.stderr


def test_cli_writes_the_plan_and_warns_on_stderr(tmp_path, monkeypatch):
    _recipe(tmp_path, monkeypatch, runners="  l40s: [self-hosted, gpu-l40s]\n")
    out = tmp_path / ".github" / "workflows" / "nimbuild.yml"
    done = subprocess.run(
        [sys.executable, "-m", "nimbuild", "plan", "recipes/three.yaml", "--format", "github", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "3 engine job(s)" in done.stdout and "0 CPU job(s)" in done.stdout and "+ 1 merge" in done.stdout
    assert done.stderr.count("warning:") == 2
    assert _validate(yaml.safe_load(out.read_text()), "github-workflows") == []
    done = subprocess.run(
        [sys.executable, "-m", "nimbuild", "plan", "recipes/three.yaml", "--format", "k8s"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0 and len([d for d in yaml.safe_load_all(done.stdout) if d]) == 4


def test_example_recipe_plans_in_every_format(monkeypatch):
    from nimbuild.recipe import load_recipe

    monkeypatch.chdir(REPO)
    recipe = load_recipe("recipes/example-tiny.yaml")
    for fmt in plan_mod.FORMATS:
        plan = plan_mod.render_plan(recipe, fmt)
        assert len(plan.jobs) == len(recipe.gpus) and plan.warnings == []
        assert [j["cpu_isa"] for j in plan.cpu_jobs] == recipe.cpu_isa


CPU_RECIPE = """\
name: cpu-classes
source: {path: model}
precisions: [fp32, fp16, int8]
gpus: [h100-sxm]
cpu_isa: [avx2, avx512_vnni, arm64_dotprod]
runners:
  h100-sxm: [self-hosted, gpu-h100]
  avx512_vnni: [self-hosted, xeon-spr]
  arm64-dotprod: [ubuntu-24.04-arm]
"""


def _cpu_recipe(tmp_path, monkeypatch, text=CPU_RECIPE):
    from nimbuild.recipe import load_recipe

    (tmp_path / "recipes").mkdir(exist_ok=True)
    path = tmp_path / "recipes" / "cpu.yaml"
    path.write_text(text)
    monkeypatch.chdir(tmp_path)
    return load_recipe(path)


def test_each_cpu_class_gets_a_job_on_its_runner_and_the_merge_makes_no_int8_itself(tmp_path, monkeypatch):
    recipe = _cpu_recipe(tmp_path, monkeypatch)
    assert recipe.cpu_isa == ["avx512_vnni", "arm64_dotprod", "avx2"]  # the preference order
    plan = plan_mod.render_plan(recipe, "github")
    data = yaml.safe_load(plan.text)
    assert _validate(data, "github-workflows") == []
    matrix = data["jobs"]["cpu"]["strategy"]["matrix"]["include"]
    assert [(m["cpu_isa"], m["runner"]) for m in matrix] == [
        ("avx512_vnni", ["self-hosted", "xeon-spr"]),
        ("arm64_dotprod", ["ubuntu-24.04-arm"]),
        ("avx2", ["self-hosted", "linux", "x64", "cpu-avx2"]),  # no entry: the documented default
    ]
    assert len(plan.warnings) == 1 and "CPU class avx2" in plan.warnings[0] and "AVX2" in plan.warnings[0]
    runs = [s.get("run", "") for s in data["jobs"]["cpu"]["steps"]]
    assert 'nimbuild export recipes/cpu.yaml --out out --precision int8 --cpu-isa "${{ matrix.cpu_isa }}"' in runs
    assert 'nimbuild manifest fragment --export-dir out --cpu-isa "${{ matrix.cpu_isa }}"' in runs
    release = data["jobs"]["release"]
    assert release["needs"] == ["engines", "cpu"]
    assert "nimbuild build recipes/cpu.yaml --out out --no-engines --cpu-isa none" in [
        s.get("run") for s in release["steps"]
    ]
    assert {"pattern": "cpu-*", "path": "out/cpu/", "merge-multiple": True} in [s.get("with") for s in release["steps"]]

    gl = yaml.safe_load(plan_mod.render_plan(recipe, "gitlab").text)
    assert _validate(gl, "gitlab-ci") == []
    assert [m["RUNNER_TAG"] for m in gl["cpu"]["parallel"]["matrix"]] == ["xeon-spr", "ubuntu-24.04-arm", "cpu-avx2"]
    assert {"job": "cpu", "artifacts": True} in gl["release"]["needs"] and gl["stages"] == ["engines", "cpu", "release"]
    assert any("--cpu-isa none" in line for line in gl["release"]["script"])

    docs, jobs, client = _k8s_jobs(plan_mod.render_plan(recipe, "k8s").text)
    assert len(jobs) == 1 + 3 + 1
    for doc, job in zip(docs, jobs, strict=True):
        assert client.sanitize_for_serialization(job) == doc
    cpu_pods = {j.metadata.labels["nimbuild.io/cpu-isa"]: j.spec.template.spec for j in jobs[1:4]}
    assert cpu_pods["avx512-vnni"].node_selector == {
        "kubernetes.io/arch": "amd64",
        "feature.node.kubernetes.io/cpu-cpuid.AVX512VNNI": "true",
    }
    assert cpu_pods["arm64-dotprod"].node_selector["kubernetes.io/arch"] == "arm64"
    assert "--cpu-isa avx2" in cpu_pods["avx2"].containers[0].args[0]
    merge = jobs[-1].spec.template.spec
    assert "/workspace/out/cpu-avx2/cpu/avx2/fragment.yaml" in merge.init_containers[0].args[0]
    assert "--cpu-isa none" in merge.containers[0].args[0]


def test_a_recipe_without_gpus_plans_cpu_jobs_only(tmp_path, monkeypatch):
    text = CPU_RECIPE.replace("gpus: [h100-sxm]", "gpus: []").replace("  h100-sxm: [self-hosted, gpu-h100]\n", "")
    plan = plan_mod.render_plan(_cpu_recipe(tmp_path, monkeypatch, text), "github")
    data = yaml.safe_load(plan.text)
    assert _validate(data, "github-workflows") == [] and set(data["jobs"]) == {"cpu", "release"}
    assert data["jobs"]["release"]["needs"] == "cpu" and plan.jobs == []


def test_runner_labels_for_a_class_the_recipe_does_not_build_are_an_error(tmp_path, monkeypatch):
    text = CPU_RECIPE.replace("cpu_isa: [avx2, avx512_vnni, arm64_dotprod]", "cpu_isa: [avx2]")
    with pytest.raises(NimbuildError, match="runners: 'avx512_vnni' is not in `cpu_isa` \\(avx2\\)"):
        _cpu_recipe(tmp_path, monkeypatch, text)
