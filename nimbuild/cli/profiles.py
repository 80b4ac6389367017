"""`nimbuild list-model-profiles` and `nimbuild select`: what this host would run, and why.

Both make the decision `serve` makes (detect or --assume-gpu, classify, rank,
NIM_MODEL_PROFILE / NIM_TAGS_SELECTOR / NIM_CACHE_PATH) and print it in the
reranking NIM's words. Kept light on purpose: the listing must start in a
fraction of a second on a serving image (plain prints, no rich, no build half).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from nimbuild.cli.options import AssumeCpuOpt, JsonOpt

ManifestOpt = Annotated[
    Path | None,
    typer.Option(
        "--manifest",
        "-m",
        show_default=False,
        help="manifest.yaml to read (default: $NIM_MANIFEST_PATH, else ./manifest.yaml, else a NIM image's own "
        "/opt/nim/etc/default/model_manifest.yaml).",
    ),
]
AssumeGpuOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--assume-gpu",
        show_default=False,
        help="Judge as if this host had these GPUs instead of detecting them: a catalog name, NVML name or slug, "
        "optionally 'xN' ('NVIDIA H100 80GB HBM3', 'l40s x2'); repeatable.",
    ),
]


def decide(
    manifest: Path | None, assume_gpu: list[str] | None, env=os.environ, assume_cpu: str | None = None
) -> tuple[Any, Exception | None]:
    """The Selection for these options, and the override error if one failed.

    When NIM_MODEL_PROFILE / NIM_TAGS_SELECTOR cannot be met, the Selection is the
    one without them (so the groups can still be shown) with nothing selected.
    """
    from nimbuild.errors import NimbuildError
    from nimbuild.manifest import load_manifest
    from nimbuild.runtime.hardware import host_for
    from nimbuild.runtime.selection import default_manifest_path, select
    from nimbuild.runtime.settings import OVERRIDE_VARIABLES, read_settings

    settings = read_settings(env)
    path = manifest if manifest is not None else default_manifest_path(env)
    if not path.exists():
        origin = (
            "--manifest"
            if manifest is not None
            else ("NIM_MANIFEST_PATH" if settings.manifest_path_set else "the default ./manifest.yaml")
        )
        raise NimbuildError(
            f"{path}: no such manifest (from {origin})",
            hint="pass --manifest PATH or set NIM_MANIFEST_PATH; `nimbuild build` writes one",
        )
    host = host_for(env, assume_gpu, assume_cpu)  # a bad --assume-cpu fails before the manifest is read
    loaded = load_manifest(path)
    try:
        return select(loaded, host, env), None
    except NimbuildError as exc:
        plain = {k: v for k, v in env.items() if k not in OVERRIDE_VARIABLES}
        selection = select(loaded, host, plain)
        selection.selected, selection.candidates = None, []
        selection.overrides = settings.overrides
        return selection, exc


def _document(selection, error: Exception | None, command: str) -> dict:
    from nimbuild.runtime.selection import startup_log

    data = selection.to_dict()
    data["command"] = command
    data["error"] = str(error) if error else None
    data["log"] = startup_log(selection) if error is None else None
    return data


def _print(selection, error: Exception | None, json_mode: bool, command: str, system_info: bool) -> None:
    from nimbuild.output import Output
    from nimbuild.runtime.selection import profile_lines, startup_log

    lines = startup_log(selection) if error is None else profile_lines(selection.classified)
    if system_info:
        lines = selection.host.system_info() + lines
    Output(json_mode=json_mode).emit(_document(selection, error, command), "\n".join(lines))


def list_model_profiles(
    manifest: ManifestOpt = None,
    json_mode: JsonOpt = False,
    assume_gpu: AssumeGpuOpt = None,
    assume_cpu: AssumeCpuOpt = None,
) -> None:
    """List the manifest's profiles as this host sees them, and the one it would select.

    Prints SYSTEM INFO (the GPUs seen, or "no GPU" and why; the CPU and its INT8 classes), then the
    profiles in three groups (runnable; compatible but not runnable; incompatible, each with its reason,
    e.g. "needs avx512_vnni; this host has avx2"), then the selected profile and its metadata. Works
    without a GPU, NVML or TensorRT. Honours NIM_MODEL_PROFILE, NIM_TAGS_SELECTOR, NIM_CACHE_PATH and
    NIM_CPU_ONLY.

    Example: nimbuild list-model-profiles -m out/example-tiny/manifest.yaml --assume-gpu h100-sxm --assume-cpu avx2
    """
    selection, error = decide(manifest, assume_gpu, assume_cpu=assume_cpu)
    _print(selection, error, json_mode, "list-model-profiles", system_info=True)
    if error is not None:
        raise error


def select_profile(
    manifest: ManifestOpt = None,
    json_mode: JsonOpt = False,
    assume_gpu: AssumeGpuOpt = None,
    assume_cpu: AssumeCpuOpt = None,
) -> None:
    """Make the decision `nimbuild serve` will make and print it as its startup log.

    Exit 0 with a selected profile; exit 1 with the reason when none can be selected (nothing
    runnable, or an override that names nothing or a profile this host cannot run).

    Example: NIM_MODEL_PROFILE=onnx-fp16-triton-onnxruntime nimbuild select -m out/example-tiny/manifest.yaml --json
    """
    from nimbuild.errors import NimbuildError

    selection, error = decide(manifest, assume_gpu, assume_cpu=assume_cpu)
    _print(selection, error, json_mode, "select", system_info=False)
    if error is not None:
        raise error
    if selection.selected is None:
        raise NimbuildError(
            "no profile in the manifest is runnable on this host",
            hint="see each profile's reason above; build a CPU profile, or run where its GPU is",
        )


def register(app: typer.Typer) -> None:
    app.command("list-model-profiles")(list_model_profiles)
    app.command("select")(select_profile)


def standalone_list_app() -> typer.Typer:
    """The `list-model-profiles` console script: the same command as a one-command app."""
    app = typer.Typer(
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.command("list-model-profiles")(list_model_profiles)
    return app
