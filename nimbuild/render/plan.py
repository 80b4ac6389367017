"""The CI plan (``nimbuild plan RECIPE --format github|gitlab|k8s``).

A TensorRT engine can only be built on the GPU it is for, and a CPU INT8 graph can only be judged on
the CPU class it is for (nimbuild.cpu_isa), so the plan is

1. one ``export`` job on a CPU runner: ``nimbuild export``, the ONNX graphs and the gate inputs
   (``gate_inputs.npz``: the encoded pairs and the PyTorch FP32 reference), handed on as an artifact
   (the model is exported once, not once per GPU or CPU class). It makes no int8 graph
   (``--cpu-isa none``): its runner's CPU is whatever the CI gives;
2. one engine job per SKU of the recipe, on a runner that has that GPU: ``nimbuild engines --gpu SKU``
   on the export's graphs, with that SKU's TensorRT timing cache kept between runs;
3. one CPU job per class of the recipe's ``cpu_isa`` (when it builds int8), on a runner with that
   class: ``nimbuild export --from-export out --precision int8 --cpu-isa CLASS`` on the export's
   artifact (it fails on a runner without the class), then ``nimbuild manifest fragment --cpu-isa
   CLASS``, handing on ``cpu/<class>/`` as the engine jobs hand on ``engines/<sku>/``;
4. one ``release`` job: merge the engine and CPU fragments into the manifest (``nimbuild manifest
   build`` discovers ``engines/*/fragment.yaml`` and ``cpu/*/fragment.yaml``), render, make the
   images' wheelhouses, build the serving images. It runs only when every engine and CPU job passed.

Why the CPU jobs build on the export's artifact instead of exporting again on their own runner: the
int8 gate needs the class's kernels, so the graph is quantized and judged there, but nothing else does.
The FP32 graph and the PyTorch reference are the export's, so a class job needs neither PyTorch nor the
model's weights (it installs ``.[int8]``: onnx and the CPU onnxruntime, which has the arm64 wheels
onnxruntime-gpu lacks), cannot resolve another hub revision than the export did (the merge refuses a
fragment of another revision), and quantizes the very FP32 graph the manifest's other profiles come
from (on the example its avx2 graph is byte-identical to a full export's on the same CPU). The
reference was computed by PyTorch FP32 on the export's CPU; another CPU changes it by FP32 rounding
only (the FP32 graph itself is held to 1e-4 of the logits), far under any int8 gate threshold.

Installs: every job pins the dependencies with ``constraints.txt`` (``-c``), and takes torch from the
PyTorch CPU index as ``torch==<the constraint>+cpu``: torch only exports and never runs on a GPU, and
PyPI's Linux torch pulls ~15 ``nvidia-*`` CUDA packages. The CPU and release jobs install no torch at
all (``.[int8]``, ``.[cpu,triton]``). pip's cache is kept per job.

Runners: the recipe's ``runners`` maps a SKU or a CPU class to its runs-on labels. A SKU without an
entry gets the documented default ``[self-hosted, linux, gpu-<slug>]``, a class ``[self-hosted, linux,
x64|arm64, cpu-<class>]``, and a warning. GitLab matches runners by one tag per job: the last (most
specific) label. Kubernetes needs no labels: ``nodeSelector: {nvidia.com/gpu.product: <GFD label>}``
for a SKU, Node Feature Discovery's ``feature.node.kubernetes.io/cpu-cpuid.*`` labels for a class. The
Kubernetes plan declares its ReadWriteMany claim, keeps each run in its own folder
(``runs/<run id>/``; each CPU job works on its own copy of the export, ``cpu-export/<class>/``), and
every wait ends: a job writes ``<name>.ok`` or ``<name>.failed`` as it exits, a waiter fails at the
first ``.failed`` and at its deadline, never on a stale file of another run.

Every value that reaches a shell line is one quoted word (``nimbuild.safe_text.shell_word``).
"""

from __future__ import annotations

import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.safe_text import shell_join, shell_word

FORMATS = ("github", "gitlab", "k8s")
TEMPLATES = {"github": "plan_github.yaml.j2", "gitlab": "plan_gitlab.yaml.j2", "k8s": "plan_k8s.yaml.j2"}
DEFAULT_LABELS = ("self-hosted", "linux")  # + gpu-<slug>, or x64|arm64 + cpu-<class>
DEFAULT_BUILDER_IMAGE = "nvcr.io/nvidia/tensorrt:25.10-py3"
CPU_IMAGE = "python:3.11-slim-bookworm"  # the CPU jobs' image (GitLab, Kubernetes)
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CONSTRAINTS = "constraints.txt"
DEFAULT_PVC = "nimbuild-workspace"
PVC_SIZE = "100Gi"
TIMEOUT_MINUTES = 180
# Resource requests per job kind (Kubernetes Jobs, GitLab's Kubernetes executor).
RESOURCES = {
    "export": {"cpu": "4", "memory": "16Gi"},
    "engines": {"cpu": "4", "memory": "32Gi"},
    "cpu": {"cpu": "4", "memory": "16Gi"},  # quantize + gate one class's int8 graph (the FP32 graph loaded twice)
    "release": {"cpu": "2", "memory": "8Gi"},
}


def default_labels(sku) -> list[str]:
    """The documented default runs-on labels of a SKU with no `runners` entry."""
    return [*DEFAULT_LABELS, f"gpu-{sku.slug}"]


@dataclass
class Plan:
    format: str
    text: str
    jobs: list[dict]
    warnings: list[str] = field(default_factory=list)
    cpu_jobs: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "export_jobs": 1,
            "build_jobs": [j["slug"] for j in self.jobs],
            "cpu_jobs": [j["cpu_isa"] for j in self.cpu_jobs],
            "merge_jobs": 1,
            "warnings": self.warnings,
            "text": self.text,
        }


def builder_image_for(triton_image: str | None) -> str:
    """NVIDIA's TensorRT container of the same release as the serving Triton image (it has TensorRT's Python)."""
    m = re.match(r"^(?P<registry>.*/)tritonserver:(?P<release>\d+\.\d+)-py3$", triton_image or "")
    return f"{m['registry']}tensorrt:{m['release']}-py3" if m else DEFAULT_BUILDER_IMAGE


def _recipe_path_for_ci(path: Path | None) -> str:
    """The recipe's path as the CI sees it: relative to the repository root (the working directory)."""
    if path is None:
        raise NimbuildError("the plan needs a recipe file", hint="pass the path of recipes/<model>.yaml")
    rel = os.path.relpath(os.path.abspath(path), os.getcwd())
    if rel.startswith(".."):
        raise NimbuildError(
            f"{path}: outside the current folder, so CI cannot find it by a relative path",
            hint="run `nimbuild plan` from the repository root that holds the recipe",
        )
    return Path(rel).as_posix()


def _k8s_name(*parts: str) -> str:
    """A DNS-1123 label (Job names become pod labels: at most 63 characters)."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return name[:63].rstrip("-")


# Node Feature Discovery labels that put a Kubernetes pod on a node of the class
NFD_SELECTORS = {
    "avx512_vnni": {"kubernetes.io/arch": "amd64", "feature.node.kubernetes.io/cpu-cpuid.AVX512VNNI": "true"},
    "avx2": {"kubernetes.io/arch": "amd64", "feature.node.kubernetes.io/cpu-cpuid.AVX2": "true"},
    "arm64_dotprod": {"kubernetes.io/arch": "arm64", "feature.node.kubernetes.io/cpu-cpuid.ASIMDDP": "true"},
}


def default_cpu_labels(cpu_class) -> list[str]:
    """The documented default runs-on labels of a CPU class with no `runners` entry."""
    return [*DEFAULT_LABELS, "arm64" if cpu_class.machine == "arm64" else "x64", f"cpu-{cpu_class.slug}"]


def plan_cpu_jobs(recipe: Any, warn: list[str]) -> list[dict]:
    """One CPU job description per class of the recipe's cpu_isa (none when it builds no int8)."""
    from nimbuild import cpu_isa

    if "int8" not in recipe.precisions:
        return []
    jobs = []
    for name in recipe.cpu_isa:
        cls = cpu_isa.lookup(name)
        labels = recipe.cpu_runner_labels(cls.name)
        if not labels:
            labels = default_cpu_labels(cls)
            warn.append(
                f"{recipe.path}: runners has no entry for the CPU class {cls.name}; using the default runs-on "
                f"labels {labels} (the runner must be {cls.needs})"
            )
        jobs.append(
            {
                "cpu_isa": cls.name,
                "slug": cls.slug,
                "labels": list(labels),
                "gitlab_tag": labels[-1],
                "needs": cls.needs,
                "node_selector": dict(NFD_SELECTORS[cls.name]),
            }
        )
    return jobs


def plan_jobs(recipe: Any, warn: list[str], *, cpu_jobs: bool = False) -> list[dict]:
    """One build job description per SKU of the recipe (``cpu_jobs``: CPU class jobs exist, so no GPU is fine)."""
    skus = recipe.gpu_skus()
    if not skus and not cpu_jobs:
        raise NimbuildError(
            f"{recipe.path}: gpus: empty and no CPU int8 class, so there is nothing to plan",
            hint="list the GPU SKUs to build for (e.g. gpus: [h100-sxm, l40s]), or int8 with cpu_isa classes",
        )
    jobs = []
    for sku in skus:
        labels = recipe.runner_labels(sku)
        if not labels:
            labels = default_labels(sku)
            warn.append(
                f"{recipe.path}: runners has no entry for {sku.slug} ({sku.canonical}); "
                f"using the default runs-on labels {labels}"
            )
        jobs.append(
            {
                "sku": sku.canonical,
                "slug": sku.slug,
                "labels": list(labels),
                "gitlab_tag": labels[-1],
                "gfd_product": sku.gfd_product,
                "compute_capability": sku.compute_capability,
            }
        )
    return jobs


def torch_cpu_requirement(constraints: Path | None = None) -> tuple[str, list[str]]:
    """``torch==<pin>+cpu`` from the constraints file's torch pin (and warnings when there is none).

    With the ``+cpu`` local version only the PyTorch CPU index can satisfy it: pip fails
    instead of quietly taking PyPI's CUDA build.
    """
    path = constraints or Path(CONSTRAINTS)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        text = ""
    m = re.search(r"^torch\s*==\s*([0-9][0-9a-zA-Z.]*)\s*(?:#.*)?$", text, re.M)
    if m:
        return f"torch=={m.group(1)}+cpu", []
    return "torch", [
        f"{path}: pins no torch (torch==X.Y.Z), so the export and engines jobs take the newest torch of the CPU index; "
        "pin it for reproducible builds"
    ]


def install_commands(python: str = "python3") -> dict[str, str]:
    """The pip lines of each job kind (the constraints always; CPU torch; no torch where none is needed)."""
    torch, _ = torch_cpu_requirement()
    q = shell_word
    pip = f"{python} -m pip install --progress-bar off -c {CONSTRAINTS}"
    with_torch = f"{pip} --extra-index-url {TORCH_CPU_INDEX} {q('.[build]')} {q(torch)}"
    return {
        "export": with_torch,
        "engines": with_torch,
        "cpu": f"{pip} {q('.[int8]')}",  # --from-export: onnx and the CPU onnxruntime, no torch
        "release": f"{pip} {q('.[cpu,triton]')}",
    }


def new_run_id() -> str:
    """A Kubernetes run's folder and name suffix: sortable by time, unique (6 random hex)."""
    return time.strftime("%Y%m%d%H%M", time.gmtime()) + "-" + secrets.token_hex(3)


def _waiter(markers: list[str], deadline_s: int) -> str:
    """Wait for every ``<m>.ok``; fail at the first ``<m>.failed`` or at the deadline (never hangs)."""
    names = shell_join(markers)
    return (
        f"deadline=$(( $(date +%s) + {deadline_s} )); "
        f"for m in {names}; do "
        'until [ -f "$m.ok" ]; do '
        'if [ -f "$m.failed" ]; then echo "failed: $m (exit $(cat "$m.failed"))" >&2; exit 1; fi; '
        'if [ "$(date +%s)" -ge "$deadline" ]; then echo "timed out waiting for $m" >&2; exit 1; fi; '
        'echo "waiting for $m"; sleep 20; done; done'
    )


def _marked(marker: str, script: list[str]) -> str:
    """``script`` that leaves ``marker.ok`` on success, ``marker.failed`` (its exit code) otherwise."""
    m = shell_word(marker)
    trap = f"trap 'rc=$?; if [ $rc -eq 0 ]; then touch {m}.ok; else echo $rc > {m}.failed; fi' EXIT"
    return (
        " && ".join([f"rm -f {m}.ok {m}.failed", 'mkdir -p "$(dirname ' + m + ')"'])
        + "; "
        + trap
        + "; "
        + " && ".join(script)
    )


def render_plan(
    recipe: Any,
    fmt: str,
    *,
    builder_image: str | None = None,
    image_name: str | None = None,
    pvc: str = DEFAULT_PVC,
    run_id: str | None = None,
) -> Plan:
    """The CI plan of ``recipe`` in ``fmt`` (github, gitlab or k8s), checked to be valid YAML."""
    import yaml

    from nimbuild import __version__
    from nimbuild.runtime.triton_repo.templating import environment

    if fmt not in FORMATS:
        raise NimbuildError(f"unknown plan format {fmt!r}", hint=f"use one of: {', '.join(FORMATS)}")
    warnings: list[str] = []
    cpu_jobs = plan_cpu_jobs(recipe, warnings)
    jobs = plan_jobs(recipe, warnings, cpu_jobs=bool(cpu_jobs))
    recipe_path = _recipe_path_for_ci(recipe.path)
    model = recipe.name
    builder = builder_image or builder_image_for(getattr(recipe.serving, "triton_image", None))
    image = image_name or f"nimbuild/{model}"
    _, torch_warnings = torch_cpu_requirement()
    warnings += torch_warnings
    q = shell_word  # every value pasted into a shell line is one quoted word (nimbuild.safe_text)
    install = install_commands()
    rq = q(recipe_path)
    # the export job's runner has an arbitrary CPU: it makes no int8 graph, the CPU jobs do
    no_int8 = " --cpu-isa none" if "int8" in recipe.precisions else ""
    commands = {
        "install_export": install["export"],
        "install_engines": install["engines"],
        "install_cpu": install["cpu"].replace("python3 ", "python ", 1),
        "install_release": install["release"].replace("python3 ", "python ", 1),
        "export": f"nimbuild export {rq} --out out{no_int8}",
        "cpu_export": f'nimbuild export {rq} --from-export out --precision int8 --cpu-isa "$CPU_ISA"',
        "cpu_fragment": 'nimbuild manifest fragment --export-dir out --cpu-isa "$CPU_ISA"',
        "engines": "mkdir -p .nimbuild-cache/trt && "
        f'nimbuild engines {rq} --gpu "$SLUG" --out out --timing-cache ".nimbuild-cache/trt/$SLUG.cache"',
        "manifest": "nimbuild manifest build --export-dir out",
        "render": (
            f'nimbuild render --manifest out/manifest.yaml --recipe {rq} --wheelhouse all --image {q(image)}:"$TAG"'
        ),
        "verify": "nimbuild manifest verify out/manifest.yaml",
        "docker_gitlab_gpu": (
            'docker build -f out/Dockerfile --build-arg "SOURCE_URL=$CI_PROJECT_URL" '
            f'--build-arg "SOURCE_REVISION=$CI_COMMIT_SHA" -t {q(image)}:"$CI_COMMIT_SHA" out'
        ),
        "docker_gitlab_cpu": (
            "if [ -f out/Dockerfile.cpu ]; then docker build -f out/Dockerfile.cpu "
            '--build-arg "SOURCE_URL=$CI_PROJECT_URL" '
            f'--build-arg "SOURCE_REVISION=$CI_COMMIT_SHA" -t {q(image)}:"$CI_COMMIT_SHA-cpu" out; fi'
        ),
    }
    run = run_id or new_run_id()
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?", run):
        raise NimbuildError(f"--run-id {run!r}: not a short DNS label", hint="use 1-20 of a-z, 0-9 and '-'")
    base = f"/workspace/runs/{run}"
    cache = "/workspace/cache"
    export_dir, release_dir = q(f"{base}/export"), q(f"{base}/release")
    export_marker = f"{base}/export"
    for job in jobs:
        job["k8s_name"] = _k8s_name("nimbuild", model, job["slug"], run)
        job["k8s_wait"] = _waiter([export_marker], TIMEOUT_MINUTES * 60)
        slug = job["slug"]
        job["k8s_script"] = _marked(
            f"{base}/engines/{slug}",
            [
                install["engines"],
                f"nimbuild engines {rq} --gpu {q(slug)} --out {export_dir} "
                f"--timing-cache {q(f'{cache}/trt/{slug}.cache')}",
            ],
        )
    for job in cpu_jobs:
        # its own copy of the export (the engine jobs write engines/ into the shared one meanwhile)
        workdir = q(f"{base}/cpu-export/{job['cpu_isa']}")
        job["k8s_name"] = _k8s_name("nimbuild", model, "cpu", job["slug"], run)
        job["k8s_wait"] = _waiter([export_marker], TIMEOUT_MINUTES * 60)
        job["k8s_script"] = _marked(
            f"{base}/cpu/{job['cpu_isa']}",
            [
                install["cpu"],
                f"nimbuild export {rq} --from-export {export_dir} --out {workdir} "
                f"--precision int8 --cpu-isa {q(job['cpu_isa'])}",
                f"nimbuild manifest fragment --export-dir {workdir} --cpu-isa {q(job['cpu_isa'])}",
            ],
        )
    k8s = {
        "run": run,
        "export_name": _k8s_name("nimbuild", model, "export", run),
        "merge_name": _k8s_name("nimbuild", model, "release", run),
        "export_script": _marked(
            export_marker, [install["export"], f"nimbuild export {rq} --out {export_dir}{no_int8}"]
        ),
        "merge_wait": _waiter(
            [f"{base}/engines/{j['slug']}" for j in jobs] + [f"{base}/cpu/{j['cpu_isa']}" for j in cpu_jobs],
            TIMEOUT_MINUTES * 60 * 2,
        ),
        "merge_script": " && ".join(
            [
                install["release"],
                f"mkdir -p {q(f'{base}/release/cpu')}",
                f"cp -a {q(f'{base}/export/.')} {release_dir}/",
                *[
                    f"cp -a {q(f'{base}/cpu-export/{c}/cpu/{c}')} {q(f'{base}/release/cpu/')}"
                    for c in (j["cpu_isa"] for j in cpu_jobs)
                ],
                f"nimbuild manifest build --export-dir {release_dir}",
                f"nimbuild render --manifest {q(f'{base}/release/manifest.yaml')} --recipe {rq} --wheelhouse all",
                f"nimbuild manifest verify {q(f'{base}/release/manifest.yaml')}",
            ]
        ),
        "env": [{"name": "PIP_CACHE_DIR", "value": f"{cache}/pip"}],
    }
    env = environment()
    template = env.get_template(TEMPLATES[fmt])
    text = template.render(
        nimbuild_version=__version__,
        model=model,
        recipe_path=recipe_path,
        jobs=jobs,
        cpu_jobs=cpu_jobs,
        builder_image=builder,
        cpu_image=CPU_IMAGE,
        image_name=image,
        timeout_minutes=TIMEOUT_MINUTES,
        commands=commands,
        resources=RESOURCES,
        pvc=pvc,
        pvc_size=PVC_SIZE,
        k8s=k8s,
        gh=lambda expr: "${{ " + expr + " }}",
    )
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:  # the template produced bad YAML: a bug
        raise NimbuildError(
            f"{TEMPLATES[fmt]}: rendered plan is not valid YAML: {exc}", hint="fix the template"
        ) from None
    if not docs:
        raise NimbuildError(f"{TEMPLATES[fmt]}: rendered an empty plan", hint="fix the template")
    return Plan(format=fmt, text=text, jobs=jobs, warnings=warnings, cpu_jobs=cpu_jobs)


def write_plan(recipe_path: str | os.PathLike, fmt: str, out_file: str | os.PathLike | None = None, **options) -> Plan:
    """Load the recipe, render its plan, and write it to ``out_file`` (atomically) when given."""
    from nimbuild.fsutil import atomic_write_text
    from nimbuild.recipe import load_recipe

    if fmt not in FORMATS:  # before loading: the cheaper error first
        raise NimbuildError(f"unknown plan format {fmt!r}", hint=f"use one of: {', '.join(FORMATS)}")
    plan = render_plan(load_recipe(recipe_path), fmt, **options)
    if out_file is not None:
        atomic_write_text(out_file, plan.text)
    return plan
