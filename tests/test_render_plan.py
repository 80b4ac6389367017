"""The CI plan: one export, one job per GPU SKU and per CPU class on it, one release; each format valid against its real
schema, and its lines run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
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
    shutil.copyfile(REPO / "constraints.txt", tmp_path / "constraints.txt")  # the repository's pins
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


def test_github_workflow_validates_exports_once_and_hands_the_graphs_to_one_job_per_sku(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path, monkeypatch)
    plan = plan_mod.render_plan(recipe, "github")
    data = yaml.safe_load(plan.text)
    assert _validate(data, "github-workflows") == []
    jobs = data["jobs"]
    assert set(jobs) == {"export", "engines", "release"}
    matrix = jobs["engines"]["strategy"]["matrix"]["include"]
    assert [m["slug"] for m in matrix] == ["h100-sxm", "a100-sxm4-80gb", "l40s"]
    assert [m["runner"] for m in matrix] == [
        ["self-hosted", "gpu-h100"],
        ["self-hosted", "gpu-a100"],
        ["self-hosted", "gpu-l40s"],
    ]
    assert jobs["engines"]["runs-on"] == "${{ matrix.runner }}"
    assert jobs["engines"]["needs"] == "export" and jobs["release"]["needs"] == ["export", "engines"]
    runs = {job: " ".join(s.get("run", "") for s in jobs[job]["steps"]) for job in jobs}
    # one export, in the export job only; the engines jobs download its artifact
    assert sum(r.count("nimbuild export") for r in runs.values()) == 1 and "nimbuild export" in runs["export"]
    assert "nimbuild build" not in " ".join(runs.values())
    downloads = [s["with"] for s in jobs["engines"]["steps"] if s.get("uses", "").startswith("actions/download")]
    assert downloads == [{"name": "export", "path": "out/"}]
    assert '--gpu "$SLUG" --out out --timing-cache ".nimbuild-cache/trt/$SLUG.cache"' in runs["engines"]
    # the constraints everywhere, CPU torch where torch is installed, no torch in the release job
    for job in ("export", "engines"):
        assert "-c constraints.txt --extra-index-url https://download.pytorch.org/whl/cpu" in runs[job]
        assert "torch==2.13.0+cpu" in runs[job]
    assert "-c constraints.txt '.[cpu,triton]'" in runs["release"] and "torch" not in runs["release"]
    # caches: pip everywhere, the TensorRT timing cache per SKU, the image layers
    caches = [s["with"] for s in jobs["engines"]["steps"] if s.get("uses", "").startswith("actions/cache")]
    assert caches[0]["path"] == "~/.cache/pip" and caches[1]["path"] == ".nimbuild-cache/trt/"
    assert "${{ matrix.slug }}" in caches[1]["key"] and caches[1]["key"].startswith(caches[1]["restore-keys"])
    assert all(jobs[j]["steps"][1]["with"]["cache"] == "pip" for j in ("export", "release"))
    builds = [s["with"] for s in jobs["release"]["steps"] if s.get("uses", "").startswith("docker/build-push")]
    assert [b["file"] for b in builds] == ["out/Dockerfile", "out/Dockerfile.cpu"]
    assert all(b["cache-from"].startswith("type=gha") for b in builds)
    assert "--wheelhouse all" in runs["release"]
    assert jobs["engines"]["container"]["image"] == "nvcr.io/nvidia/tensorrt:25.08-py3"
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


def test_gitlab_pipeline_validates_with_a_parallel_matrix_caches_and_requests(tmp_path, monkeypatch):
    plan = plan_mod.render_plan(_recipe(tmp_path, monkeypatch), "gitlab")
    data = yaml.safe_load(plan.text)
    assert _validate(data, "gitlab-ci") == []
    matrix = data["engines"]["parallel"]["matrix"]
    assert [m["SLUG"] for m in matrix] == ["h100-sxm", "a100-sxm4-80gb", "l40s"]
    assert [m["RUNNER_TAG"] for m in matrix] == ["gpu-h100", "gpu-a100", "gpu-l40s"]
    assert data["engines"]["tags"] == ["$RUNNER_TAG"]
    assert data["engines"]["needs"] == [{"job": "export", "artifacts": True}]
    assert data["release"]["needs"] == [{"job": "export", "artifacts": True}, {"job": "engines", "artifacts": True}]
    assert data["stages"] == ["export", "engines", "release"]
    scripts = {j: " ".join(data[j]["script"]) for j in ("export", "engines", "release")}
    assert sum(s.count("nimbuild export") for s in scripts.values()) == 1
    assert "torch==2.13.0+cpu" in scripts["engines"] and "torch" not in scripts["release"]
    assert [c["key"] for c in data["engines"]["cache"]][1] == "trt-timing-$SLUG"
    for job in ("export", "engines", "release"):
        assert data[job]["cache"][0]["paths"] == [".cache/pip"]
        assert data[job]["variables"]["KUBERNETES_CPU_REQUEST"] and data[job]["variables"]["KUBERNETES_MEMORY_REQUEST"]


def _k8s_docs(text: str):
    """The plan's documents, each typed by the kubernetes client (what it does with an API server's answer:
    JSON text -> typed object, required fields checked), and the client."""
    from kubernetes.client import ApiClient

    client = ApiClient()
    docs = [d for d in yaml.safe_load_all(text) if d]
    typed = [client.deserialize(json.dumps(d), f"V1{d['kind']}", "application/json") for d in docs]
    return docs, typed, client


def test_kubernetes_plan_declares_rwx_runs_in_its_own_folder_and_requests_resources(tmp_path, monkeypatch):
    plan = plan_mod.render_plan(_recipe(tmp_path, monkeypatch), "k8s", run_id="r1")
    docs, typed, client = _k8s_docs(plan.text)
    for doc, obj in zip(docs, typed, strict=True):  # nothing the models do not know was dropped
        assert client.sanitize_for_serialization(obj) == doc, doc["metadata"]["name"]
    pvc, jobs = typed[0], typed[1:]
    assert pvc.kind == "PersistentVolumeClaim" and pvc.spec.access_modes == ["ReadWriteMany"]
    assert len(jobs) == 5  # export, three engines, release
    export, build, release = jobs[0], jobs[1:4], jobs[4]
    for job in jobs:
        assert job.api_version == "batch/v1" and job.kind == "Job" and job.metadata.labels["nimbuild.io/run"] == "r1"
        assert job.spec.template.spec.restart_policy == "Never" and job.spec.backoff_limit == 0
        assert len(job.metadata.name) <= 63 and job.metadata.name.endswith("-r1")
        for c in job.spec.template.spec.containers + (job.spec.template.spec.init_containers or []):
            assert c.resources.requests["cpu"] and c.resources.requests["memory"], (job.metadata.name, c.name)
        assert job.spec.template.spec.volumes[0].persistent_volume_claim.claim_name == pvc.metadata.name
    export_script = export.spec.template.spec.containers[0].args[0]
    assert "nimbuild export recipes/three.yaml --out /workspace/runs/r1/export" in export_script
    for job, slug in zip(build, ("h100-sxm", "a100-sxm4-80gb", "l40s"), strict=True):
        pod = job.spec.template.spec
        assert pod.node_selector == {"nvidia.com/gpu.product": skus.lookup(slug).gfd_product}
        assert pod.containers[0].resources.limits["nvidia.com/gpu"] == "1"
        script = pod.containers[0].args[0]
        assert f"--gpu {slug} --out /workspace/runs/r1/export" in script and "nimbuild export" not in script
        assert f"--timing-cache /workspace/cache/trt/{slug}.cache" in script
        assert "/workspace/runs/r1/export" in pod.init_containers[0].args[0]
    assert release.spec.template.spec.node_selector is None
    wait = release.spec.template.spec.init_containers[0].args[0]
    assert all(f"/workspace/runs/r1/engines/{s}" in wait for s in ("h100-sxm", "a100-sxm4-80gb", "l40s"))
    assert 'until [ -f "$m.ok" ]' in wait and "$m.failed" in wait and "deadline" in wait


def test_a_misspelled_field_would_not_survive_the_kubernetes_round_trip(tmp_path, monkeypatch):
    docs, _, _ = _k8s_docs(plan_mod.render_plan(_recipe(tmp_path, monkeypatch), "k8s").text)
    docs[2]["spec"]["template"]["spec"]["nodeSelektor"] = docs[2]["spec"]["template"]["spec"].pop("nodeSelector")
    _, typed, client = _k8s_docs(yaml.safe_dump_all(docs))
    assert client.sanitize_for_serialization(typed[2]) != docs[2]


def _sh(script: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=timeout)


def test_the_waits_end_on_a_failure_and_ignore_other_runs(tmp_path):
    """The release's wait fails at once when an engines job failed (no 6-hour hang), and a stale
    marker of another run does not satisfy it."""
    a, b = str(tmp_path / "runs/r2/engines/a"), str(tmp_path / "runs/r2/engines/b")
    (tmp_path / "runs/r1/engines").mkdir(parents=True)
    (tmp_path / "runs/r1/engines/a.ok").touch()  # another run's
    # a job that fails leaves .failed with its exit code, one that passes .ok
    assert _sh(plan_mod._marked(a, ["exit 3"])).returncode == 3
    assert Path(a + ".failed").read_text().strip() == "3" and not Path(a + ".ok").exists()
    assert _sh(plan_mod._marked(b, ["true"])).returncode == 0 and Path(b + ".ok").exists()
    t0 = time.monotonic()
    done = _sh(plan_mod._waiter([b, a], 3600))
    assert done.returncode == 1 and "failed:" in done.stderr and time.monotonic() - t0 < 10
    # nothing yet for this run (only r1's marker): the deadline ends the wait
    done = _sh(plan_mod._waiter([str(tmp_path / "runs/r3/engines/a")], 1), timeout=60)
    assert done.returncode == 1 and "timed out" in done.stderr
    assert _sh(plan_mod._waiter([b], 5)).returncode == 0
    # a retried job clears its old marker first
    assert _sh(plan_mod._marked(a, ["true"])).returncode == 0
    assert Path(a + ".ok").exists() and not Path(a + ".failed").exists()


def test_each_plan_gets_its_own_run_id(tmp_path, monkeypatch):
    recipe = _recipe(tmp_path, monkeypatch)

    def run(plan):
        return [d for d in yaml.safe_load_all(plan.text) if d][1]["metadata"]["labels"]["nimbuild.io/run"]

    assert run(plan_mod.render_plan(recipe, "k8s")) != run(plan_mod.render_plan(recipe, "k8s"))
    with pytest.raises(NimbuildError, match="run-id"):
        plan_mod.render_plan(recipe, "k8s", run_id="Not_A_Label")


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
        [sys.executable, "-m", "nimbuild", "plan", "recipes/three.yaml", "--format", "k8s", "--run-id", "r9"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert done.returncode == 0 and len(docs) == 6  # PVC + 5 Jobs
    assert all(d["metadata"]["name"].endswith("-r9") for d in docs[1:])


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
    shutil.copyfile(REPO / "constraints.txt", tmp_path / "constraints.txt")  # the repository's pins
    monkeypatch.chdir(tmp_path)
    return load_recipe(path)


def test_each_cpu_class_gets_a_job_on_its_runner_on_the_export_and_the_export_makes_no_int8(tmp_path, monkeypatch):
    recipe = _cpu_recipe(tmp_path, monkeypatch)
    assert recipe.cpu_isa == ["avx512_vnni", "arm64_dotprod", "avx2"]  # the preference order
    plan = plan_mod.render_plan(recipe, "github")
    data = yaml.safe_load(plan.text)
    assert _validate(data, "github-workflows") == []
    jobs = data["jobs"]
    assert set(jobs) == {"export", "engines", "cpu", "release"}
    matrix = jobs["cpu"]["strategy"]["matrix"]["include"]
    assert [(m["cpu_isa"], m["runner"]) for m in matrix] == [
        ("avx512_vnni", ["self-hosted", "xeon-spr"]),
        ("arm64_dotprod", ["ubuntu-24.04-arm"]),
        ("avx2", ["self-hosted", "linux", "x64", "cpu-avx2"]),  # no entry: the documented default
    ]
    assert len(plan.warnings) == 1 and "CPU class avx2" in plan.warnings[0] and "AVX2" in plan.warnings[0]
    runs = {job: [s.get("run", "") for s in jobs[job]["steps"]] for job in jobs}
    # the export job makes no int8 (its runner's CPU is arbitrary); it is the only full export
    assert "nimbuild export recipes/cpu.yaml --out out --cpu-isa none" in runs["export"]
    assert sum(r.count("nimbuild export") for job in ("export", "engines", "release") for r in runs[job]) == 1
    # each class job makes only its class's int8 graph, on the export's artifact, and hands on cpu/<class>/
    assert jobs["cpu"]["needs"] == "export" and jobs["cpu"]["env"] == {"CPU_ISA": "${{ matrix.cpu_isa }}"}
    downloads = [s["with"] for s in jobs["cpu"]["steps"] if s.get("uses", "").startswith("actions/download")]
    assert downloads == [{"name": "export", "path": "out/"}]
    assert 'nimbuild export recipes/cpu.yaml --from-export out --precision int8 --cpu-isa "$CPU_ISA"' in runs["cpu"]
    assert 'nimbuild manifest fragment --export-dir out --cpu-isa "$CPU_ISA"' in runs["cpu"]
    upload = [s["with"] for s in jobs["cpu"]["steps"] if s.get("uses", "").startswith("actions/upload")]
    assert upload == [{"name": "cpu-${{ matrix.cpu_isa }}", "path": "out/cpu/", "if-no-files-found": "error"}]
    # no torch on the class runners (no PyTorch reference to recompute), constraints as everywhere
    assert "-c constraints.txt '.[int8]'" in " ".join(runs["cpu"]) and "torch" not in " ".join(runs["cpu"])
    # the release waits for every engine and CPU job and merges both kinds of fragment
    release = jobs["release"]
    assert release["needs"] == ["export", "engines", "cpu"]
    assert {"pattern": "cpu-*", "path": "out/cpu/", "merge-multiple": True} in [s.get("with") for s in release["steps"]]
    assert "nimbuild manifest build --export-dir out" in runs["release"]

    gl = yaml.safe_load(plan_mod.render_plan(recipe, "gitlab").text)
    assert _validate(gl, "gitlab-ci") == []
    assert [m["RUNNER_TAG"] for m in gl["cpu"]["parallel"]["matrix"]] == ["xeon-spr", "ubuntu-24.04-arm", "cpu-avx2"]
    assert gl["cpu"]["needs"] == [{"job": "export", "artifacts": True}] and gl["cpu"]["tags"] == ["$RUNNER_TAG"]
    assert gl["cpu"]["artifacts"]["paths"] == ["out/cpu/$CPU_ISA/"]
    assert gl["cpu"]["variables"]["KUBERNETES_CPU_REQUEST"] and gl["cpu"]["cache"][0]["paths"] == [".cache/pip"]
    assert any('--from-export out --precision int8 --cpu-isa "$CPU_ISA"' in line for line in gl["cpu"]["script"])
    assert {"job": "cpu", "artifacts": True} in gl["release"]["needs"]
    assert gl["stages"] == ["export", "engines", "cpu", "release"]
    assert any(line.endswith("--out out --cpu-isa none") for line in gl["export"]["script"])

    docs, typed, client = _k8s_docs(plan_mod.render_plan(recipe, "k8s", run_id="r7").text)
    for doc, obj in zip(docs, typed, strict=True):
        assert client.sanitize_for_serialization(obj) == doc
    jobs = typed[1:]
    assert len(jobs) == 1 + 1 + 3 + 1  # export, one SKU, three classes, release
    cpu_jobs = [j for j in jobs if j.metadata.labels["app.kubernetes.io/component"] == "cpu"]
    cpu_pods = {j.metadata.labels["nimbuild.io/cpu-isa"]: j.spec.template.spec for j in cpu_jobs}
    assert cpu_pods["avx512-vnni"].node_selector == {
        "kubernetes.io/arch": "amd64",
        "feature.node.kubernetes.io/cpu-cpuid.AVX512VNNI": "true",
    }
    assert cpu_pods["arm64-dotprod"].node_selector["kubernetes.io/arch"] == "arm64"
    for name, pod in cpu_pods.items():
        cls = name.replace("-", "_")
        script, wait = pod.containers[0].args[0], pod.init_containers[0].args[0]
        assert "/workspace/runs/r7/export" in wait and "deadline" in wait  # waits for the export, bounded
        assert (
            f"--from-export /workspace/runs/r7/export --out /workspace/runs/r7/cpu-export/{cls} "
            f"--precision int8 --cpu-isa {cls}" in script
        )
        assert f"manifest fragment --export-dir /workspace/runs/r7/cpu-export/{cls} --cpu-isa {cls}" in script
        assert f"touch /workspace/runs/r7/cpu/{cls}.ok" in script and "torch" not in script
        assert (
            pod.containers[0].resources.requests["cpu"] and "nvidia.com/gpu" not in pod.containers[0].resources.limits
        )
    export_script = jobs[0].spec.template.spec.containers[0].args[0]
    assert "nimbuild export recipes/cpu.yaml --out /workspace/runs/r7/export --cpu-isa none" in export_script
    release = jobs[-1].spec.template.spec
    wait = release.init_containers[0].args[0]
    assert all(f"/workspace/runs/r7/cpu/{c}" in wait for c in recipe.cpu_isa) and "/engines/h100-sxm" in wait
    merge = release.containers[0].args[0]
    assert "cp -a /workspace/runs/r7/cpu-export/avx2/cpu/avx2 /workspace/runs/r7/release/cpu/" in merge
    assert "nimbuild manifest build --export-dir /workspace/runs/r7/release" in merge


def test_a_recipe_without_gpus_plans_cpu_jobs_only(tmp_path, monkeypatch):
    text = CPU_RECIPE.replace("gpus: [h100-sxm]", "gpus: []").replace("  h100-sxm: [self-hosted, gpu-h100]\n", "")
    recipe = _cpu_recipe(tmp_path, monkeypatch, text)
    plan = plan_mod.render_plan(recipe, "github")
    data = yaml.safe_load(plan.text)
    assert _validate(data, "github-workflows") == [] and set(data["jobs"]) == {"export", "cpu", "release"}
    assert data["jobs"]["release"]["needs"] == ["export", "cpu"] and plan.jobs == []
    assert not any("engines" in str(s.get("with", {})) for s in data["jobs"]["release"]["steps"])
    gl = yaml.safe_load(plan_mod.render_plan(recipe, "gitlab").text)
    assert _validate(gl, "gitlab-ci") == [] and "engines" not in gl and gl["stages"] == ["export", "cpu", "release"]
    assert [n["job"] for n in gl["release"]["needs"]] == ["export", "cpu"]
    docs, typed, _ = _k8s_docs(plan_mod.render_plan(recipe, "k8s").text)
    assert [d["metadata"]["labels"].get("app.kubernetes.io/component") for d in docs[1:]] == [
        "export",
        "cpu",
        "cpu",
        "cpu",
        "release",
    ]


def test_a_recipe_without_int8_has_no_cpu_jobs_and_its_export_keeps_the_default(tmp_path, monkeypatch):
    recipe = _cpu_recipe(tmp_path, monkeypatch, CPU_RECIPE.replace("[fp32, fp16, int8]", "[fp32, fp16]"))
    plan = plan_mod.render_plan(recipe, "github")
    data = yaml.safe_load(plan.text)
    assert (
        "cpu" not in data["jobs"] and plan.cpu_jobs == [] and data["jobs"]["release"]["needs"] == ["export", "engines"]
    )
    assert "nimbuild export recipes/cpu.yaml --out out" in [s.get("run") for s in data["jobs"]["export"]["steps"]]


def test_nothing_to_plan_is_one_error(tmp_path, monkeypatch):
    text = CPU_RECIPE.replace("gpus: [h100-sxm]", "gpus: []").replace("  h100-sxm: [self-hosted, gpu-h100]\n", "")
    recipe = _cpu_recipe(tmp_path, monkeypatch, text.replace("[fp32, fp16, int8]", "[fp32, fp16]"))
    with pytest.raises(NimbuildError, match="nothing to plan"):
        plan_mod.render_plan(recipe, "github")


def test_runner_labels_for_a_class_the_recipe_does_not_build_are_an_error(tmp_path, monkeypatch):
    text = CPU_RECIPE.replace("cpu_isa: [avx2, avx512_vnni, arm64_dotprod]", "cpu_isa: [avx2]")
    with pytest.raises(NimbuildError, match="runners: 'avx512_vnni' is not in `cpu_isa` \\(avx2\\)"):
        _cpu_recipe(tmp_path, monkeypatch, text)


@pytest.mark.slow
def test_the_cpu_job_and_release_lines_run_on_the_export_artifact(exported_example, tmp_path, monkeypatch):
    """The GitHub plan's own lines, run in order on the export job's artifact (fp32 + gate inputs, no int8):
    the CPU job makes and judges its class's int8 graph without PyTorch, its fragment merges in the release."""
    from nimbuild import cpu_isa
    from nimbuild.manifest import load_manifest
    from nimbuild.manifest_verify import verify_manifest

    here = cpu_isa.detect_cpu()
    if not here.classes:
        pytest.skip(f"this CPU has no int8 class ({here.classes_text()})")
    cls = here.classes[0]
    root = tmp_path / "repo"  # the repository root, as the CI checks it out
    shutil.copytree(REPO / "recipes", root / "recipes")
    shutil.copyfile(REPO / "constraints.txt", root / "constraints.txt")
    monkeypatch.chdir(root)
    from nimbuild.recipe import load_recipe

    jobs = yaml.safe_load(plan_mod.render_plan(load_recipe("recipes/example-tiny.yaml"), "github").text)["jobs"]

    def run_steps(job: str, workdir: Path, skip: tuple[str, ...] = ("Install",)) -> None:
        env = {**os.environ, "CPU_ISA": cls, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        for step in jobs[job]["steps"]:
            if "run" in step and not step["name"].startswith(skip):
                done = subprocess.run(["bash", "-euo", "pipefail", "-c", step["run"]], cwd=workdir, env=env,
                                      capture_output=True, text=True, timeout=600)  # fmt: skip
                assert done.returncode == 0, (step["run"], done.stderr[-3000:])

    # the CPU job: the export artifact downloaded to out/
    shutil.copytree(exported_example, root / "out")
    assert not [k for k in json.loads((root / "out/export_report.json").read_text())["precisions"] if "int8" in k]
    run_steps("cpu", root)
    fragment = root / "out" / "cpu" / cls / "fragment.yaml"
    (profile,) = load_manifest(fragment).profiles
    assert profile.tags["cpu_isa"] == cls and profile.metrics["judged_on"]["cpu_isa"] == list(here.classes)
    # the release: the export artifact again, the CPU job's out/cpu/ beside it; merge, then verify (no render)
    release = tmp_path / "release"
    release.mkdir()
    shutil.copytree(exported_example, release / "out")
    shutil.copytree(root / "out" / "cpu", release / "out" / "cpu")
    monkeypatch.chdir(release)
    shutil.copytree(REPO / "recipes", release / "recipes")
    run_steps("release", release, skip=("Install", "Render"))
    manifest = load_manifest(release / "out" / "manifest.yaml")
    assert f"cpu-int8-{cls.replace('_', '-')}-onnxruntime" in [p.name for p in manifest.profiles]
    assert verify_manifest(manifest) == []
