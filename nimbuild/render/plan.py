"""The per-GPU CI plan (``nimbuild plan RECIPE --format github|gitlab|k8s``).

A TensorRT engine can only be built on the GPU it is for, so the plan has one
build job per SKU of the recipe, on a runner that has that GPU, each running
``nimbuild export`` + ``nimbuild engines --gpu SKU`` and keeping its fragment;
then one job merges the fragments, renders and builds the serving image.

Runners: the recipe's ``runners`` maps a SKU to its runs-on labels. A SKU
without an entry gets the documented default ``[self-hosted, linux,
gpu-<slug>]`` (GitLab: the tag ``gpu-<slug>``) and a warning. GitLab matches
runners by one tag per job: the SKU's last (most specific) label. Kubernetes
needs no labels: ``nodeSelector: {nvidia.com/gpu.product: <GFD label>}``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.safe_text import shell_join, shell_word

FORMATS = ("github", "gitlab", "k8s")
TEMPLATES = {"github": "plan_github.yaml.j2", "gitlab": "plan_gitlab.yaml.j2", "k8s": "plan_k8s.yaml.j2"}
DEFAULT_LABELS = ("self-hosted", "linux")  # + gpu-<slug>
DEFAULT_BUILDER_IMAGE = "nvcr.io/nvidia/tensorrt:25.10-py3"
DEFAULT_PVC = "nimbuild-workspace"
TIMEOUT_MINUTES = 180


def default_labels(sku) -> list[str]:
    """The documented default runs-on labels of a SKU with no `runners` entry."""
    return [*DEFAULT_LABELS, f"gpu-{sku.slug}"]


@dataclass
class Plan:
    format: str
    text: str
    jobs: list[dict]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "build_jobs": [j["slug"] for j in self.jobs],
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


def _engines_of(slug: str) -> str:
    """Where a k8s engines job leaves its SKU's engines on the shared volume."""
    return f"/workspace/out/{slug}/engines/{slug}"


def _k8s_name(*parts: str) -> str:
    """A DNS-1123 label (Job names become pod labels: at most 63 characters)."""
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return name[:63].rstrip("-")


def plan_jobs(recipe: Any, warn: list[str]) -> list[dict]:
    """One build job description per SKU of the recipe."""
    skus = recipe.gpu_skus()
    if not skus:
        raise NimbuildError(
            f"{recipe.path}: gpus: empty, so there are no engines to plan",
            hint="list the GPU SKUs to build for (e.g. gpus: [h100-sxm, l40s])",
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


def render_plan(
    recipe: Any, fmt: str, *, builder_image: str | None = None, image_name: str | None = None, pvc: str = DEFAULT_PVC
) -> Plan:
    """The CI plan of ``recipe`` in ``fmt`` (github, gitlab or k8s), checked to be valid YAML."""
    import yaml

    from nimbuild import __version__
    from nimbuild.runtime.triton_repo.templating import environment

    if fmt not in FORMATS:
        raise NimbuildError(f"unknown plan format {fmt!r}", hint=f"use one of: {', '.join(FORMATS)}")
    warnings: list[str] = []
    jobs = plan_jobs(recipe, warnings)
    recipe_path = _recipe_path_for_ci(recipe.path)
    model = recipe.name
    builder = builder_image or builder_image_for(getattr(recipe.serving, "triton_image", None))
    image = image_name or f"nimbuild/{model}"
    q = shell_word  # every value pasted into a shell line is one quoted word (nimbuild.safe_text)
    commands = {
        "export": f"nimbuild export {q(recipe_path)} --out out",
        "engines_github": f'nimbuild engines {q(recipe_path)} --gpu "${{{{ matrix.slug }}}}" --out out',
        "build": f"nimbuild build {q(recipe_path)} --out out --no-engines",
        "docker_github": (
            "docker build -f out/Dockerfile"
            ' --build-arg "SOURCE_URL=${{ github.server_url }}/${{ github.repository }}"'
            ' --build-arg "SOURCE_REVISION=${{ github.sha }}"'
            f" -t {q(image)}:${{{{ github.sha }}}} out"
        ),
        "docker_gitlab": (
            "docker build -f out/Dockerfile"
            ' --build-arg "SOURCE_URL=$CI_PROJECT_URL" --build-arg "SOURCE_REVISION=$CI_COMMIT_SHA"'
            f' -t {q(image)}:"$CI_COMMIT_SHA" out'
        ),
    }
    for job in jobs:
        workdir = f"/workspace/out/{job['slug']}"
        job["k8s_name"] = _k8s_name("nimbuild", model, "engines", job["slug"])
        job["k8s_script"] = " && ".join(
            [
                "python3 -m pip install --no-cache-dir '.[build]'",
                f"nimbuild export {q(recipe_path)} --out {q(workdir)}",
                f"nimbuild engines {q(recipe_path)} --gpu {q(job['slug'])} --out {q(workdir)}",
            ]
        )
    fragments = [f"{_engines_of(j['slug'])}/fragment.yaml" for j in jobs]
    wait_script = (
        f'for f in {shell_join(fragments)}; do until [ -f "$f" ]; do echo "waiting for $f"; sleep 30; done; done'
    )
    merge_script = " && ".join(
        [
            "python3 -m pip install --no-cache-dir '.[build]'",
            "mkdir -p /workspace/out/release/engines",
            *[f"cp -a {q(_engines_of(j['slug']))} /workspace/out/release/engines/" for j in jobs],
            f"nimbuild build {q(recipe_path)} --out /workspace/out/release --no-engines",
            "nimbuild manifest verify /workspace/out/release/manifest.yaml",
        ]
    )
    env = environment()
    template = env.get_template(TEMPLATES[fmt])
    text = template.render(
        nimbuild_version=__version__,
        model=model,
        recipe_path=recipe_path,
        jobs=jobs,
        builder_image=builder,
        image_name=image,
        timeout_minutes=TIMEOUT_MINUTES,
        commands=commands,
        pvc=pvc,
        merge_name=_k8s_name("nimbuild", model, "merge"),
        wait_script=wait_script,
        merge_script=merge_script,
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
    return Plan(format=fmt, text=text, jobs=jobs, warnings=warnings)


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
