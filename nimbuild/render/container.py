"""The serving images: ``Dockerfile`` (GPU, on NVIDIA's Triton image) and ``Dockerfile.cpu``
(CPU-only hosts, on any slim Python image), with their ``.dockerignore`` files.

Both install the light half only (``nimbuild[runtime,triton]``, ``nimbuild[cpu]``) from
the context's wheelhouse (:mod:`nimbuild.render.wheelhouse`: ``--no-index
--require-hashes``), carry the manifest and exactly the files it lists (a whitelist
.dockerignore, so a build folder full of other things does not leak into the image),
put the manifest where the NIM Operator reads it, and have ``ENTRYPOINT ["nimbuild",
"serve"]``, a health check on ``/v1/health/ready``, a non-root user and OCI labels naming
the source, the revision, the model and every profile ID. The build context is the
manifest's folder. The CPU image holds the profiles a CPU host can run (``device: cpu``),
in ``manifest.cpu.yaml`` (same IDs), so it carries no GPU graph or TensorRT engine.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.export_layout import MANIFEST_FILE
from nimbuild.render.wheelhouse import ImageTarget, cpu_target, gpu_target, write_wheelhouse
from nimbuild.safe_text import shell_join

DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.10-py3"
MODEL_DIR = "/opt/nim/model"
CACHE_PATH = "/opt/nim/.cache"
# Where the NIM Operator's NIMCache reads a NIM's manifest (`cat`, in the image): this path, else
# /etc/nim/config/model_manifest.yaml (left free: NIM mounts a user's override there).
OPERATOR_MANIFEST = "/opt/nim/etc/default/model_manifest.yaml"
VENV = "/opt/nim/venv"  # the CPU image's Python environment (any base image's python3 makes it)
USER, UID = "nim", 10001
PORT = 8000
CPU_MANIFEST = "manifest.cpu.yaml"  # the CPU image's manifest: the profiles a CPU host can run
WHEELS_README = (
    "The serving images' wheelhouses: wheels/gpu/ (Dockerfile) and wheels/cpu/ (Dockerfile.cpu), each\n"
    "nimbuild's own wheel, its serving dependencies for the image's Python and a requirements.txt that pins\n"
    "every file by sha256. Made by `nimbuild render --wheelhouse gpu|cpu|all` (needs an index: PyPI, or\n"
    "PIP_INDEX_URL); the Dockerfiles install from here with --no-index --require-hashes.\n"
)


@dataclass
class ImageFiles:
    """One image's Dockerfile in the context."""

    kind: str  # "gpu" | "cpu"
    dockerfile: Path
    dockerignore: Path
    base_image: str
    manifest: str  # the context's file that becomes the image's manifest.yaml
    profile_ids: list[str]
    wheelhouse: str  # wheels/<kind>
    has_wheelhouse: bool

    def to_dict(self, context: Path) -> dict:
        return {
            "kind": self.kind,
            "dockerfile": str(self.dockerfile),
            "dockerignore": str(self.dockerignore),
            "base_image": self.base_image,
            "manifest": self.manifest,
            "profile_ids": self.profile_ids,
            "wheelhouse": self.wheelhouse,
            "has_wheelhouse": self.has_wheelhouse,
            "build_command": build_command(self.dockerfile, context, "IMAGE:TAG"),
        }


@dataclass
class ContainerFiles:
    dockerfile: Path  # the GPU image's
    dockerignore: list[Path]
    context: Path
    base_image: str
    profile_ids: list[str]
    included: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    images: dict[str, ImageFiles] = field(default_factory=dict)

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
            "images": {k: v.to_dict(self.context) for k, v in self.images.items()},
        }


def build_command(dockerfile: Path, context: Path, tag: str) -> str:
    return shell_join(["docker", "build", "-f", dockerfile, "-t", tag, context])


IMAGES = (("gpu", "Dockerfile"), ("cpu", "Dockerfile.cpu"))  # (image, its Dockerfile): the CPU one when CPU profiles
WHEELS_DIR = "wheels"
WHEELS_README_FILE = f"{WHEELS_DIR}/README.txt"


def container_outputs(manifest: Any, manifest_path: str | os.PathLike, out_dir: str | os.PathLike) -> list[str]:
    """What :func:`render_container` writes in ``out_dir`` (relative paths): checked before anything is."""
    same = os.path.abspath(out_dir) == os.path.abspath(Path(manifest_path).parent)
    cpu = bool(cpu_profiles(manifest))
    names = [f for kind, name in IMAGES if kind == "gpu" or cpu for f in (name, f"{name}.dockerignore")]
    return names + ([".dockerignore"] if same else [])


def context_outputs(manifest: Any, wheelhouses: tuple[str, ...] | list[str] = ()) -> list[str]:
    """What :func:`render_container` writes in the build context (the manifest's folder), relative paths."""
    cpu = bool(cpu_profiles(manifest))
    wheels = [f"{WHEELS_DIR}/{kind}" for kind in sorted(set(wheelhouses)) if kind != "cpu" or cpu]
    return [*([CPU_MANIFEST] if cpu else []), WHEELS_README_FILE, *wheels]


def check_context_outputs(
    manifest: Any, manifest_path: str | os.PathLike, wheelhouses: tuple[str, ...] | list[str], *, force: bool
) -> None:
    """Refuse, before anything is written, a file in the context nimbuild did not write (nimbuild.outdir)."""
    from nimbuild.outdir import OutputFolder

    OutputFolder(Path(manifest_path).parent).check_replaceable(
        context_outputs(manifest, wheelhouses), force=force, action="render"
    )


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


def cpu_profiles(manifest) -> list:
    """The profiles a host without a GPU can run: what the CPU image carries."""
    return [p for p in manifest.profiles if p.tags.get("device") == "cpu"]


def _top_folders(paths: list[str]) -> list[str]:
    """The context's top-level folders the image copies (each COPY keeps its .dockerignore filtering)."""
    return sorted({p.split("/", 1)[0] for p in paths if "/" in p})


def _image_text(kind: str, target: ImageTarget, base_image: str, profiles: list, folders: list[str], **common) -> str:
    from nimbuild.runtime.triton_repo.templating import render

    env = []
    if kind == "cpu":
        env += [("PATH", f"{VENV}/bin:$PATH"), ("NIM_CPU_ONLY", "1")]
    env += [("NIM_MANIFEST_PATH", f"{MODEL_DIR}/manifest.yaml"), ("NIM_CACHE_PATH", CACHE_PATH)]
    env += [("NIM_HTTP_API_PORT", str(PORT))]
    return render(
        "Dockerfile.j2",
        kind=kind,
        base_image=base_image,
        profiles=[{"id": p.id, "name": p.name} for p in sorted(profiles, key=lambda p: p.name)],
        folders=folders,
        python=target.python,
        glibc=target.glibc,
        arch=target.arch,
        wheel_dir=target.folder,
        venv=VENV,
        env=env,
        user=USER,
        uid=UID,
        port=PORT,
        model_dir=MODEL_DIR,
        cache_path=CACHE_PATH,
        operator_manifest=OPERATOR_MANIFEST,
        operator_manifest_dir=OPERATOR_MANIFEST.rsplit("/", 1)[0],
        **common,
    )


def render_container(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    recipe: Any = None,
    triton_dir: str | os.PathLike | None = None,
    targets: dict[str, ImageTarget] | None = None,
    wheelhouses: tuple[str, ...] | list[str] = (),
    nimbuild_wheel: str | os.PathLike | None = None,
    out=None,
    force: bool = False,
) -> ContainerFiles:
    """Write ``out_dir/Dockerfile`` and ``out_dir/Dockerfile.cpu`` (+ their dockerignores) for the manifest.

    ``triton_dir``: the rendered repositories; they go into the GPU image when they
    are inside the manifest's folder (the context), so that ``serve`` reuses them.
    ``targets``: each image's Python and platform (:func:`~nimbuild.render.wheelhouse.cpu_target`,
    ``gpu_target``), which its wheelhouse must be made for. ``wheelhouses``: the images ("gpu",
    "cpu") whose ``wheels/<image>/`` to write first (:func:`~nimbuild.render.wheelhouse.write_wheelhouse`:
    nimbuild's wheel, or ``nimbuild_wheel``, and its dependencies downloaded for the image).
    Every file it writes, in ``out_dir`` and in the context, goes through their ledgers (nimbuild.outdir):
    one nimbuild did not write is replaced only under ``force``, and both folders are locked meanwhile.
    """
    from nimbuild.outdir import OutputFolder

    manifest_path = Path(manifest_path)
    here, context = OutputFolder(out_dir), OutputFolder(manifest_path.parent)
    with here.locked("nimbuild render"), context.locked("nimbuild render"):  # re-entrant: render_all holds one
        return _render_locked(
            here, context, manifest_path, recipe, triton_dir, targets, wheelhouses, nimbuild_wheel, out, force
        )


def _render_locked(
    here: Any,
    ctx: Any,
    manifest_path: Path,
    recipe: Any,
    triton_dir: str | os.PathLike | None,
    targets: dict[str, ImageTarget] | None,
    wheelhouses: tuple[str, ...] | list[str],
    nimbuild_wheel: str | os.PathLike | None,
    out: Any,
    force: bool,
) -> ContainerFiles:
    from nimbuild import __version__
    from nimbuild.manifest import Manifest, load_manifest, write_manifest
    from nimbuild.runtime.triton_repo.templating import render

    targets = {"gpu": gpu_target(), "cpu": cpu_target(), **(targets or {})}
    manifest = load_manifest(manifest_path)
    context = manifest_path.parent
    out_dir = here.path
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

    def local_files(profiles) -> list[str]:
        return sorted({e.uri for p in profiles for e in p.files.values() if "://" not in e.uri})

    gpu_paths = local_files(manifest.profiles)
    if triton_dir is not None:
        rel = _inside(Path(triton_dir), context)
        if rel is None:
            notes.append(
                f"{triton_dir} is outside the build context {context}: the image re-renders "
                "Triton repositories at start (ONNX profiles only need their graph)"
            )
        else:
            gpu_paths += [f"{rel}/{name}/" for name in repositories_for(manifest, Path(triton_dir))]
    source_url, source_revision = _source(recipe, header)
    same_dir = os.path.abspath(out_dir) == os.path.abspath(context)
    common = {
        "nimbuild_version": __version__,
        "model": model,
        "tag": __version__,
        "source_url": source_url,
        "source_revision": source_revision,
        "model_revision": str(header.get("model_revision", "")),
        "recipe_sha256": str(header.get("recipe_sha256", "")),
        "context_hint": "." if same_dir else os.path.relpath(context, out_dir),
    }
    unknown = sorted(set(wheelhouses) - set(targets))
    if unknown:
        raise NimbuildError(f"--wheelhouse {', '.join(unknown)}: no such image", hint="use gpu, cpu or all")
    outputs = container_outputs(manifest, manifest_path, out_dir)
    here.check_replaceable(outputs, force=force, action="render")
    ctx.check_replaceable(context_outputs(manifest, wheelhouses), force=force, action="render")
    cpu = cpu_profiles(manifest)
    for kind in sorted(set(wheelhouses)):
        if kind == "cpu" and not cpu:
            notes.append("no profile with device: cpu: the CPU image's wheelhouse was not made")
            continue
        write_wheelhouse(context, targets[kind], nimbuild_wheel=nimbuild_wheel, out=out, force=force)
    images: dict[str, ImageFiles] = {}
    plans = [("gpu", "Dockerfile", manifest.profiles, base_image, MANIFEST_FILE, gpu_paths)]
    if cpu:
        cpu_base = f"python:{targets['cpu'].python}-slim-bookworm"
        plans.append(("cpu", "Dockerfile.cpu", cpu, cpu_base, CPU_MANIFEST, local_files(cpu)))
        ctx.expect_any(CPU_MANIFEST)  # write_manifest reports no bytes: the ledger takes what it leaves
        try:
            write_manifest(
                Manifest(
                    profiles=cpu, header=header, root=manifest.root, selection_criteria=manifest.selection_criteria
                ),
                context / CPU_MANIFEST,
            )
        finally:
            ctx.record([CPU_MANIFEST])
    else:
        notes.append("no profile with device: cpu, so no CPU image (Dockerfile.cpu) was rendered")
    ignores: list[Path] = []
    union: list[str] = []
    contents: dict[str, bytes] = {}
    for kind, name, profiles, base, manifest_file, paths in plans:
        dockerfile = out_dir / name
        ignore_file = out_dir / f"{name}.dockerignore"  # BuildKit reads <Dockerfile>.dockerignore
        target = targets[kind]
        text = _image_text(
            kind,
            target,
            base,
            profiles,
            _top_folders(paths),
            manifest_file=manifest_file,
            dockerfile_hint=name if same_dir else str(dockerfile),
            dockerignore_hint=ignore_file.name if same_dir else str(ignore_file),
            **common,
        )
        problems = check_dockerfile(text)
        if problems:  # our own template broke a rule: a bug, say which
            raise NimbuildError(
                f"{dockerfile}: the rendered Dockerfile breaks its rules: {'; '.join(problems)}",
                hint="fix templates/Dockerfile.j2",
            )
        allowed = [dockerignore_pattern(p) for p in (manifest_file, *paths, f"{target.folder}/")]
        union += allowed
        contents[name] = text.encode("utf-8")
        ignore_text = render("dockerignore.j2", nimbuild_version=__version__, paths=allowed)
        contents[ignore_file.name] = ignore_text.encode("utf-8")
        ignores.append(ignore_file)
        has_wheelhouse = (context / target.folder / "requirements.txt").is_file()
        if not has_wheelhouse:
            notes.append(
                f"{context / target.folder} has no wheelhouse yet: `nimbuild render --wheelhouse {kind}` makes it "
                f"(before building {name})"
            )
        images[kind] = ImageFiles(
            kind=kind,
            dockerfile=dockerfile,
            dockerignore=ignore_file,
            base_image=base,
            manifest=manifest_file,
            profile_ids=sorted(p.id for p in profiles),
            wheelhouse=target.folder,
            has_wheelhouse=has_wheelhouse,
        )
    if same_dir:  # the classic builder reads only the context's .dockerignore: what any of the images needs
        ignores.append(context / ".dockerignore")
        union_text = render("dockerignore.j2", nimbuild_version=__version__, paths=sorted(set(union)))
        contents[".dockerignore"] = union_text.encode("utf-8")
    assert sorted(contents) == sorted(outputs), (sorted(contents), outputs)  # container_outputs is the one list
    here.write_files(contents)  # the ledger knows each file before it lands
    readme = context / WHEELS_README_FILE  # checked above: absent, nimbuild's own, or replaced under force
    if not readme.is_file() or readme.read_bytes() != WHEELS_README.encode("utf-8"):
        ctx.write_files({WHEELS_README_FILE: WHEELS_README.encode("utf-8")})
    gpu = images["gpu"]
    return ContainerFiles(
        dockerfile=gpu.dockerfile,
        dockerignore=[gpu.dockerignore, *ignores[len(images) :]],
        context=context,
        base_image=base_image,
        profile_ids=[p.id for p in sorted(manifest.profiles, key=lambda p: p.name)],
        included=[MANIFEST_FILE, *gpu_paths],
        notes=notes,
        images=images,
    )


def repositories_for(manifest, triton_dir: Path) -> list[str]:
    """Folders under ``triton_dir`` rendered from this manifest's profiles (stale ones are left out)."""
    from nimbuild.runtime.triton_repo.layout import REPOSITORY_INFO

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


def _arg_defaults(ins: list[tuple[str, str]]) -> dict[str, str]:
    out = {}
    for word, args in ins:
        if word == "ARG" and "=" in args:
            key, _, value = args.partition("=")
            out[key.strip()] = value.strip().strip('"')
    return out


def check_dockerfile(text: str) -> list[str]:
    """The serving images' rules, checked on the text (what a linter cannot know about nimbuild)."""
    ins = instructions(text)
    problems = []
    words = [w for w, _ in ins]
    if not words or words[0] not in ("FROM", "ARG"):
        problems.append("the first instruction must be FROM (or the ARG of its base image)")
    froms = [a for w, a in ins if w == "FROM"]
    base = froms[0] if len(froms) == 1 else ""
    m = re.fullmatch(r"\$\{?(\w+)\}?", base)
    if m:  # FROM ${BASE_IMAGE}: its default must be pinned
        base = _arg_defaults(ins[: words.index("FROM")]).get(m.group(1), "")
    if len(froms) != 1 or ":latest" in base or (":" not in base and "@" not in base):
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
    installs = re.findall(r"pip install ([^&|;]*)", runs)
    if not installs or any("--no-index" not in i or "--require-hashes" not in i for i in installs):
        problems.append("pip installs only from the context's wheelhouse (--no-index --require-hashes)")
    if re.search(r"nimbuild\[", runs):
        problems.append("no RUN names a nimbuild requirement: the wheelhouse's requirements.txt pins it")
    if re.search(r"\b(torch|transformers|tensorrt)\b", runs):
        problems.append("a RUN installs a heavy (build-half) package")
    if f"{OPERATOR_MANIFEST}" not in runs:
        problems.append(f"the manifest must be linked at {OPERATOR_MANIFEST} (where the NIM Operator reads it)")
    return problems
