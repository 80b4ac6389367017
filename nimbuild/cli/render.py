"""`nimbuild render`, `create-model-store`, `download-to-cache`: Triton repositories, the image, one profile on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from nimbuild.cli.options import JsonOpt, QuietOpt

ManifestOpt = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        "-m",
        show_default=False,
        help="manifest.yaml [default: $NIM_MANIFEST_PATH, else ./manifest.yaml].",
    ),
]
RuntimeManifestOpt = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        "-m",
        "--manifest-file",
        show_default=False,
        help="The manifest [default: $NIM_MANIFEST_PATH, else ./manifest.yaml, else "
        "/opt/nim/etc/default/model_manifest.yaml or /etc/nim/config/model_manifest.yaml].",
    ),
]


def _manifest(manifest: Path | None) -> Path:
    """``--manifest``, else NIM_MANIFEST_PATH, ./manifest.yaml or the NIM Operator's paths
    (:func:`nimbuild.runtime.selection.default_manifest_path`, the one rule)."""
    from nimbuild.runtime.selection import default_manifest_path

    return manifest if manifest is not None else default_manifest_path(os.environ)


LinkOpt = Annotated[
    bool, typer.Option("--link/--copy", help="Symlink the model files (cheap) or copy them (checked by sha256).")
]


def render(
    manifest: ManifestOpt = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Output folder (OUT/triton/<profile>/, OUT/Dockerfile) [default: the manifest's folder].",
        ),
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option("--recipe", "-r", help="The recipe: serving options (batching, Triton image) and labels."),
    ] = None,
    link: LinkOpt = True,
    no_dockerfile: Annotated[bool, typer.Option("--no-dockerfile", help="Only the Triton repositories.")] = False,
    wheelhouse: Annotated[
        list[str] | None,
        typer.Option(
            "--wheelhouse",
            "-w",
            help="Also write the image's wheelhouse (wheels/<image>/: nimbuild's wheel + its dependencies, "
            "pinned by sha256) for gpu, cpu or all; repeatable. Downloads from the index (PyPI or PIP_INDEX_URL).",
        ),
    ] = None,
    cpu_python: Annotated[
        str, typer.Option("--cpu-python", help="Python of the CPU image (BASE_IMAGE python:<this>-slim-bookworm).")
    ] = "3.11",
    gpu_python: Annotated[
        str, typer.Option("--gpu-python", help="Python of the GPU image (NVIDIA's Triton image: 3.12 since 24.12).")
    ] = "3.12",
    image_arch: Annotated[
        str | None,
        typer.Option("--image-arch", help="x86_64 or aarch64 (linux/amd64, linux/arm64) [default: this machine's]."),
    ] = None,
    nimbuild_wheel: Annotated[
        Path | None,
        typer.Option(
            "--nimbuild-wheel", help="Use this nimbuild wheel [default: built from the running nimbuild's source]."
        ),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(
            "--image", help="The GPU image in OUT/deploy/*.yaml, REPO:TAG [default: nimbuild/<model>:<version>]."
        ),
    ] = None,
    cpu_image: Annotated[
        str | None, typer.Option("--cpu-image", help="The CPU image in OUT/deploy/*.yaml [default: <image>-cpu].")
    ] = None,
    namespace: Annotated[
        str, typer.Option("--namespace", help="Kubernetes namespace of OUT/deploy/inferenceservice.yaml.")
    ] = "default",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace a file nimbuild did not write where render writes (a Dockerfile, Dockerfile.cpu, "
            ".dockerignore, manifest.cpu.yaml, deploy/*.yaml, wheels/<image>/ or a repository file).",
        ),
    ] = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Render a Triton model repository per profile (config.pbtxt checked against Triton's schema),
    the serving images' Dockerfiles (GPU: Dockerfile, CPU: Dockerfile.cpu) and, with --wheelhouse,
    their wheelhouses: a build context that installs nothing from an index; and OUT/deploy/: the NIM
    Operator's NIMCache and NIMService, KServe InferenceServices per GPU pool. Refuses a manifest
    that does not verify, and replaces only what nimbuild wrote (a Dockerfile or deploy/ of your
    own stays, unless --force).

    Example: nimbuild render -m out/example-tiny/manifest.yaml --recipe recipes/example-tiny.yaml --wheelhouse cpu
    """
    from nimbuild.output import Output
    from nimbuild.render.container import build_command
    from nimbuild.render.triton import render_all
    from nimbuild.render.wheelhouse import check_arch, cpu_target, gpu_target

    out = Output(json_mode=json_mode, quiet=quiet)
    manifest = _manifest(manifest)
    arch = check_arch(image_arch) if image_arch else None
    kinds = {k.strip() for w in wheelhouse or [] for k in w.split(",") if k.strip()}
    if "all" in kinds:
        kinds = (kinds - {"all"}) | {"gpu", "cpu"}
    result = render_all(
        manifest,
        out_dir or manifest.parent,
        mode="link" if link else "copy",
        recipe_path=recipe,
        out=out,
        dockerfile=not no_dockerfile,
        images={
            "targets": {"cpu": cpu_target(cpu_python, arch), "gpu": gpu_target(gpu_python, arch)},
            "wheelhouses": sorted(kinds),
            "nimbuild_wheel": nimbuild_wheel,
        },
        deploy={"image": image, "cpu_image": cpu_image, "namespace": namespace},
        force=force,
    )
    for repo in result.repositories:
        for note in repo.notes:
            out.note(f"{repo.name}: {note}")
    if result.container is not None:
        for note in result.container.notes:
            out.warn(note)

    def human(o) -> None:
        o.table(
            ["repository", "kind", "models", "profiles"],
            [(r.path, r.kind, ", ".join(r.models), len(r.profile_ids)) for r in result.repositories],
        )
        if result.container is not None:
            c = result.container
            for image in c.images.values():
                o.line(
                    f"wrote {image.dockerfile} ({image.kind} image, {len(image.profile_ids)} profile(s)); "
                    f"build it with: {build_command(image.dockerfile, c.context, 'IMAGE:TAG')}"
                )
        for path in result.deploy:
            o.line(f"wrote {path}")

    out.emit(result.to_dict(), human)


def create_model_store(
    model_store: Annotated[
        Path,
        typer.Option("--model-store", "-s", help="Folder to create (Triton's --model-repository).", show_default=False),
    ],
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            "-p",
            show_default=False,
            help="Profile ID, unique ID prefix, or name [default: the one this host selects].",
        ),
    ] = None,
    model_repo: Annotated[
        str | None,
        typer.Option(
            "--model-repo",
            show_default=False,
            help="Where the profiles are: a manifest, or a folder holding manifest.yaml or model_manifest.yaml "
            "(the NIM Operator's form; instead of --manifest).",
        ),
    ] = None,
    manifest: RuntimeManifestOpt = None,
    link: Annotated[
        bool, typer.Option("--link/--copy", help="Symlink the files or copy them (checked by sha256).")
    ] = False,
    json_mode: JsonOpt = False,
) -> None:
    """Materialize one profile as a Triton model store, from the cache (NIM_CACHE_PATH) or the manifest's folder.

    Without --profile, the profile this host would select (NIM_MODEL_PROFILE, NIM_TAGS_SELECTOR).
    The NIM Operator runs it as `create-model-store --model-repo DIR --model-store /model-store`.
    NIM_TRITON_MAX_BATCH_SIZE and NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS apply.

    Example: nimbuild create-model-store --profile onnx-fp16-triton-onnxruntime --model-store /tmp/store
    """
    from nimbuild.errors import NimbuildError
    from nimbuild.output import Output
    from nimbuild.runtime.model_store import create_model_store as create
    from nimbuild.runtime.model_store import manifest_in_repo

    if model_repo is not None and manifest is not None:
        raise NimbuildError("give --model-repo or --manifest, not both", hint="they name the same thing")
    path = manifest_in_repo(model_repo) if model_repo is not None else _manifest(manifest)
    out = Output(json_mode=json_mode)
    store = create(path, profile, model_store, mode="link" if link else "copy", env=os.environ)
    out.emit(
        store.to_dict(),
        f"created {store.store} for profile {store.profile_id} ({store.profile_name}); "
        f"models: {store.model_name}"
        + (f", {store.tokenizer_name}, {store.ensemble_name}" if store.ensemble_name else ""),
    )


def download_to_cache(
    more_profiles: Annotated[
        list[str] | None,
        typer.Argument(show_default=False, help="More profile IDs (`--profiles A B C`, as NIM writes it)."),
    ] = None,
    profiles: Annotated[
        list[str] | None,
        typer.Option(
            "--profiles",
            "--profile",
            "-p",
            show_default=False,
            help="Profile IDs, unique ID prefixes or names: `--profiles ID [ID ...]` "
            "[default: the one this host selects].",
        ),
    ] = None,
    all_profiles: Annotated[bool, typer.Option("--all", help="Every profile of the manifest.")] = False,
    manifest: RuntimeManifestOpt = None,
    cache_path: Annotated[
        Path | None, typer.Option("--cache-path", help="Cache folder [default: $NIM_CACHE_PATH, else ~/.cache/nim].")
    ] = None,
    model_uri: Annotated[
        str | None,
        typer.Option("--model-uri", hidden=True, help="NIM's model-free form: not for a nimbuild image."),
    ] = None,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Copy profiles' files into the cache, each checked against the manifest's sha256.

    `--profiles ID [ID ...]` or `--all`, as the NIM Operator's NIMCache job runs it; with neither, the
    profile this host would select. Honours NIM_CACHE_PATH and NIM_MANIFEST_PATH. A file shared by
    profiles is fetched once.

    Example: NIM_CACHE_PATH=/opt/nim/.cache nimbuild download-to-cache --profiles cpu-int8-avx2-onnxruntime
    """
    from nimbuild.errors import NimbuildError
    from nimbuild.output import Output
    from nimbuild.runtime.model_store import download_to_cache as download
    from nimbuild.runtime.settings import read_settings

    if model_uri is not None:
        raise NimbuildError(
            f"--model-uri {model_uri}: a nimbuild image carries its manifest; it is not a model-free NIM",
            hint="put the manifest at /opt/nim/etc/default/model_manifest.yaml so the NIM Operator finds it",
        )
    refs = list(profiles or []) + list(more_profiles or [])
    out = Output(json_mode=json_mode, quiet=quiet)
    result = download(
        _manifest(manifest), refs, cache_path=cache_path, env=os.environ, out=out, all_profiles=all_profiles
    )
    if read_settings(os.environ).cache_path is None and cache_path is None:
        out.note(
            f"NIM_CACHE_PATH is not set: cached in {result['cache']}; export NIM_CACHE_PATH={result['cache']} "
            "so that selection and serve find it"
        )
    for entry in result["profiles"]:
        if entry["unverified"]:
            out.warn(
                f"{entry['profile_name']}: {len(entry['unverified'])} file(s) without sha256 "
                "in the manifest: unverified"
            )

    def human(o) -> None:
        for entry in result["profiles"]:
            o.line(
                f"{entry['profile_id']} ({entry['profile_name']}): {len(entry['copied'])} file(s) copied, "
                f"{len(entry['already_cached'])} already cached, in {result['cache']}"
            )

    out.emit(result, human)


def register(app: typer.Typer) -> None:
    app.command("render")(render)
    app.command("create-model-store")(create_model_store)
    app.command("download-to-cache")(download_to_cache)


def standalone_app(name: str) -> typer.Typer:
    """The `download-to-cache` / `create-model-store` console scripts (as in NIM images): one command each."""
    app = typer.Typer(
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.command(name)({"download-to-cache": download_to_cache, "create-model-store": create_model_store}[name])
    return app
