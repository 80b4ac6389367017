"""The serving image: ``Dockerfile`` (templates/Dockerfile.j2) and its ``.dockerignore``.

Based on NVIDIA's Triton server image (the recipe's ``serving.triton_image``),
installing ``nimbuild[runtime,triton]`` only (the light half), with the manifest and exactly the files
it lists (a whitelist .dockerignore, so a build folder full of other things does
not leak into the image), ``ENTRYPOINT ["nimbuild", "serve"]``, a health check
on ``/v1/health/ready``, a non-root user and OCI labels naming the source, the
revision, the model and every profile ID. The build context is the manifest's
folder.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.safe_text import shell_join

DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.10-py3"
MODEL_DIR = "/opt/nim/model"
CACHE_PATH = "/opt/nim/.cache"
USER, UID = "nim", 10001
PORT = 8000
# The light half only; `triton` adds tritonclient[http], which serve needs to drive tritonserver.
RUNTIME_EXTRAS = "runtime,triton"
WHEELS_README = (
    "Put a nimbuild wheel here (pip wheel --no-deps -w wheels .) to install it instead of the\n"
    "published one; the Dockerfile installs nimbuild[runtime,triton] with --find-links on this folder.\n"
)


@dataclass
class ContainerFiles:
    dockerfile: Path
    dockerignore: list[Path]
    context: Path
    base_image: str
    profile_ids: list[str]
    included: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "dockerfile": str(self.dockerfile),
            "dockerignore": [str(p) for p in self.dockerignore],
            "context": str(self.context),
            "base_image": self.base_image,
            "profile_ids": self.profile_ids,
            "included": self.included,
            "notes": self.notes,
            "build_command": build_command(self.dockerfile, self.context, "IMAGE:TAG"),
        }


def build_command(dockerfile: Path, context: Path, tag: str) -> str:
    return shell_join(["docker", "build", "-f", dockerfile, "-t", tag, context])


def container_outputs(manifest_path: str | os.PathLike, out_dir: str | os.PathLike) -> list[str]:
    """What :func:`render_container` writes in ``out_dir`` (relative paths): checked before anything is."""
    same = os.path.abspath(out_dir) == os.path.abspath(Path(manifest_path).parent)
    return ["Dockerfile", "Dockerfile.dockerignore", *([".dockerignore"] if same else [])]


def dockerignore_pattern(path: str) -> str:
    """A path as a literal .dockerignore pattern: its glob characters (``* ? [ \\``) escaped."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", path)


def _source(recipe: Any, header: dict) -> tuple[str, str]:
    """OCI source and revision: the hub repo at its commit, else the model's revision."""
    src = getattr(recipe, "source", None) if recipe is not None else None
    repo = getattr(src, "repo", None)
    if repo:
        return f"https://huggingface.co/{repo}", str(getattr(src, "revision", "") or header.get("model_revision", ""))
    return "", str(header.get("model_revision", ""))


def _inside(path: Path, root: Path) -> str | None:
    try:
        return Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(root))).as_posix()
    except ValueError:
        return None


def render_container(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    recipe: Any = None,
    triton_dir: str | os.PathLike | None = None,
    force: bool = False,
) -> ContainerFiles:
    """Write ``out_dir/Dockerfile`` (+ its dockerignore) for the manifest's profiles.

    ``triton_dir``: the rendered repositories; they go into the image when they
    are inside the manifest's folder (the context), so that ``serve`` reuses them.
    A Dockerfile or .dockerignore that nimbuild did not write is replaced only
    under ``force`` (nimbuild.outdir).
    """
    from nimbuild import __version__
    from nimbuild.fsutil import atomic_write_text
    from nimbuild.manifest import load_manifest
    from nimbuild.outdir import OutputFolder
    from nimbuild.runtime.triton_repo.templating import render

    manifest_path = Path(manifest_path)
    manifest = load_manifest(manifest_path)
    context = manifest_path.parent
    out_dir = Path(out_dir)
    notes: list[str] = []
    if not manifest.profiles:
        raise NimbuildError(
            f"{manifest_path}: no profiles, nothing to serve", hint="build some first (nimbuild build / manifest build)"
        )
    header = manifest.header
    model = str(header.get("model") or manifest.profiles[0].tags.get("model", "model"))
    base_image = DEFAULT_TRITON_IMAGE
    if recipe is not None and getattr(getattr(recipe, "serving", None), "triton_image", None):
        base_image = recipe.serving.triton_image
    check_image_reference(base_image)
    local = sorted({e.uri for p in manifest.profiles for e in p.files.values() if "://" not in e.uri})
    paths = list(local)
    if triton_dir is not None:
        rel = _inside(Path(triton_dir), context)
        if rel is None:
            notes.append(
                f"{triton_dir} is outside the build context {context}: the image re-renders "
                "Triton repositories at start (ONNX profiles only need their graph)"
            )
        else:
            paths += [f"{rel}/{name}/" for name in repositories_for(manifest, Path(triton_dir))]
    source_url, source_revision = _source(recipe, header)
    profiles = [{"id": p.id, "name": p.name} for p in sorted(manifest.profiles, key=lambda p: p.name)]
    dockerfile = out_dir / "Dockerfile"
    ctx_rel = os.path.relpath(context, out_dir) if out_dir != context else "."
    text = render(
        "Dockerfile.j2",
        nimbuild_version=__version__,
        model=model,
        tag=__version__,
        profiles=profiles,
        base_image=base_image,
        nimbuild_requirement=f"nimbuild[{RUNTIME_EXTRAS}]=={__version__}",
        source_url=source_url,
        source_revision=source_revision,
        model_revision=str(header.get("model_revision", "")),
        recipe_sha256=str(header.get("recipe_sha256", "")),
        user=USER,
        uid=UID,
        port=PORT,
        model_dir=MODEL_DIR,
        cache_path=CACHE_PATH,
        dockerfile_hint=str(dockerfile) if out_dir != context else "Dockerfile",
        context_hint=ctx_rel if out_dir != context else ".",
    )
    problems = check_dockerfile(text)
    if problems:  # our own template broke a rule: a bug, say which
        raise NimbuildError(
            f"{dockerfile}: the rendered Dockerfile breaks its rules: {'; '.join(problems)}",
            hint="fix templates/Dockerfile.j2",
        )
    ignore = render("dockerignore.j2", nimbuild_version=__version__, paths=[dockerignore_pattern(p) for p in paths])
    # BuildKit reads <Dockerfile>.dockerignore; the classic builder only .dockerignore in the context
    outputs = container_outputs(manifest_path, out_dir)
    folder = OutputFolder(out_dir)
    with folder.locked("nimbuild render"):
        folder.check_replaceable(outputs, force=force, action="render")
        folder.write_files({rel: (text if rel == "Dockerfile" else ignore).encode("utf-8") for rel in outputs})
    ignores = [out_dir / rel for rel in outputs[1:]]
    wheels = context / "wheels"
    if not (wheels / "README.txt").exists():
        atomic_write_text(wheels / "README.txt", WHEELS_README)
    return ContainerFiles(
        dockerfile=dockerfile,
        dockerignore=ignores,
        context=context,
        base_image=base_image,
        profile_ids=[p["id"] for p in profiles],
        included=["manifest.yaml", *paths],
        notes=notes,
    )


def repositories_for(manifest, triton_dir: Path) -> list[str]:
    """Folders under ``triton_dir`` rendered from this manifest's profiles (stale ones are left out)."""
    from nimbuild.runtime.triton_repo.repository import REPOSITORY_INFO

    ids = {p.id for p in manifest.profiles}
    names = []
    for folder in sorted(triton_dir.iterdir()) if triton_dir.is_dir() else []:
        try:
            info = json.loads((folder / REPOSITORY_INFO).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if info.get("profile_ids") and set(info["profile_ids"]) <= ids:
            names.append(folder.name)
    return names


_IMAGE_RE = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]{1,2}[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?"
)


def check_image_reference(image: str) -> None:
    if not _IMAGE_RE.fullmatch(image or "") or (":" not in image.rsplit("/", 1)[-1] and "@" not in image):
        raise NimbuildError(
            f"serving.triton_image {image!r} is not a pinned image reference",
            hint="use e.g. nvcr.io/nvidia/tritonserver:25.10-py3 (a tag or @sha256 digest)",
        )


# --------------------------------------------------------------------------- checks


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def check_dockerfile(text: str) -> list[str]:
    """The serving image's rules, checked on the text (what a linter cannot know about nimbuild)."""
    ins = instructions(text)
    problems = []
    words = [w for w, _ in ins]
    if not words or words[0] not in ("FROM", "ARG"):
        problems.append("the first instruction must be FROM")
    froms = [a for w, a in ins if w == "FROM"]
    if len(froms) != 1 or ":latest" in froms[0] or (":" not in froms[0] and "@" not in froms[0]):
        problems.append(f"exactly one FROM with a pinned tag, got {froms}")
    entry = [a for w, a in ins if w == "ENTRYPOINT"]
    try:
        entry_ok = len(entry) == 1 and json.loads(entry[0]) == ["nimbuild", "serve"]
    except ValueError:
        entry_ok = False
    if not entry_ok:
        problems.append(f'ENTRYPOINT must be exec form ["nimbuild", "serve"], got {entry}')
    entry_at = words.index("ENTRYPOINT") if "ENTRYPOINT" in words else len(words)
    users = [a for i, (w, a) in enumerate(ins) if w == "USER" and i < entry_at]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("a non-root USER must be set before ENTRYPOINT")
    health = [a for w, a in ins if w == "HEALTHCHECK"]
    if len(health) != 1 or "/v1/health/ready" not in health[0]:
        problems.append("one HEALTHCHECK on /v1/health/ready")
    labels = " ".join(a for w, a in ins if w == "LABEL")
    for key in (
        "org.opencontainers.image.source",
        "org.opencontainers.image.revision",
        "io.nimbuild.model",
        "io.nimbuild.profile-ids",
    ):
        if key + "=" not in labels:
            problems.append(f"LABEL {key} is missing")
    runs = " ".join(a for w, a in ins if w == "RUN")
    extras = re.findall(r"nimbuild\[([a-z,]+)\]", text)
    if (
        not extras
        or any(set(e.split(",")) - {"runtime", "triton"} for e in extras)
        or not all("runtime" in e.split(",") for e in extras)
    ):
        problems.append(f"install nimbuild[runtime] (+ triton) only, got extras {extras}")
    if re.search(r"\b(torch|transformers|tensorrt)\b", runs):
        problems.append("a RUN installs a heavy (build-half) package")
    return problems
