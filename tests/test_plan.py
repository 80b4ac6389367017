"""The per-GPU CI plan: one build job per SKU, one merge; each format valid against its real schema."""

from __future__ import annotations

import json
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
    assert "3 build job(s)" in done.stdout and "+ 1 merge" in done.stdout
    assert done.stderr.count("warning:") == 2
    assert _validate(yaml.safe_load(out.read_text()), "github-workflows") == []
    done = subprocess.run(
        [sys.executable, "-m", "nimbuild", "plan", "recipes/three.yaml", "--format", "k8s"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0 and len([d for d in yaml.safe_load_all(done.stdout) if d]) == 6  # PVC + 5 Jobs


def test_example_recipe_plans_in_every_format(monkeypatch):
    from nimbuild.recipe import load_recipe

    monkeypatch.chdir(REPO)
    recipe = load_recipe("recipes/example-tiny.yaml")
    for fmt in plan_mod.FORMATS:
        plan = plan_mod.render_plan(recipe, fmt)
        assert len(plan.jobs) == len(recipe.gpus) and plan.warnings == []
