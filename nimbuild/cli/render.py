"""`nimbuild render`, `create-model-store`, `download-to-cache`: Triton repositories, the image, one profile on disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from nimbuild.cli.options import JsonOpt, QuietOpt

ManifestOpt = Annotated[
    Path, typer.Option("--manifest", "-m", envvar="NIM_MANIFEST_PATH", help="manifest.yaml (env NIM_MANIFEST_PATH).")
]
ProfileOpt = Annotated[
    str, typer.Option("--profile", "-p", help="Profile ID, unique ID prefix, or name.", show_default=False)
]
LinkOpt = Annotated[
    bool, typer.Option("--link/--copy", help="Symlink the model files (cheap) or copy them (checked by sha256).")
]


def render(
    manifest: ManifestOpt = Path("manifest.yaml"),
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
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace a Dockerfile, .dockerignore or repository file nimbuild did not write."),
    ] = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Render a Triton model repository per profile (config.pbtxt checked against Triton's schema)
    and the serving image's Dockerfile. Refuses a manifest that does not verify, and replaces
    only what nimbuild wrote (a Dockerfile of your own stays, unless --force).

    Example: nimbuild render --manifest out/example-tiny/manifest.yaml --recipe recipes/example-tiny.yaml
    """
    from nimbuild.output import Output
    from nimbuild.render.container import build_command
    from nimbuild.render.triton import render_all

    out = Output(json_mode=json_mode, quiet=quiet)
    result = render_all(
        manifest,
        out_dir or manifest.parent,
        mode="link" if link else "copy",
        recipe_path=recipe,
        out=out,
        dockerfile=not no_dockerfile,
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
            o.line(f"wrote {c.dockerfile}; build the image with: {build_command(c.dockerfile, c.context, 'IMAGE:TAG')}")

    out.emit(result.to_dict(), human)


def create_model_store(
    profile: ProfileOpt,
    model_store: Annotated[
        Path,
        typer.Option("--model-store", "-s", help="Folder to create (Triton's --model-repository).", show_default=False),
    ],
    manifest: ManifestOpt = Path("manifest.yaml"),
    link: Annotated[
        bool, typer.Option("--link/--copy", help="Symlink the files or copy them (checked by sha256).")
    ] = False,
    json_mode: JsonOpt = False,
) -> None:
    """Materialize one profile as a Triton model store, from the cache (NIM_CACHE_PATH) or the manifest's folder.

    NIM_TRITON_MAX_BATCH_SIZE and NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS apply.

    Example: nimbuild create-model-store --profile onnx-fp16-triton-onnxruntime --model-store /tmp/store
    """
    from nimbuild.output import Output
    from nimbuild.runtime.model_store import create_model_store as create

    out = Output(json_mode=json_mode)
    store = create(manifest, profile, model_store, mode="link" if link else "copy", env=os.environ)
    out.emit(
        store.to_dict(),
        f"created {store.store} for profile {store.profile_id} ({store.profile_name}); "
        f"models: {store.model_name}"
        + (f", {store.tokenizer_name}, {store.ensemble_name}" if store.ensemble_name else ""),
    )


def download_to_cache(
    profile: ProfileOpt,
    manifest: ManifestOpt = Path("manifest.yaml"),
    cache_path: Annotated[
        Path | None, typer.Option("--cache-path", help="Cache folder [default: $NIM_CACHE_PATH, else ~/.cache/nim].")
    ] = None,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Copy one profile's files into the cache, each checked against the manifest's sha256.

    Example: NIM_CACHE_PATH=/opt/nim/.cache nimbuild download-to-cache --profile cpu-int8-onnxruntime
    """
    from nimbuild.output import Output
    from nimbuild.runtime.model_store import download_to_cache as download

    out = Output(json_mode=json_mode, quiet=quiet)
    result = download(manifest, profile, cache_path=cache_path, env=os.environ, out=out)
    if not os.environ.get("NIM_CACHE_PATH") and cache_path is None:
        out.note(
            f"NIM_CACHE_PATH is not set: cached in {result['cache']}; export NIM_CACHE_PATH={result['cache']} "
            "so that selection and serve find it"
        )
    out.emit(
        result,
        f"{result['profile_id']} ({result['profile_name']}): {len(result['copied'])} file(s) copied, "
        f"{len(result['already_cached'])} already cached, in {result['cache']}",
    )


def register(app: typer.Typer) -> None:
    app.command("render")(render)
    app.command("create-model-store")(create_model_store)
    app.command("download-to-cache")(download_to_cache)
