"""The `nimbuild` command line.

One thin module per command group: each parses its options, calls one function
of the library and prints through :class:`nimbuild.output.Output`. Heavy
imports (torch, onnx, polygraphy...) happen inside the command functions, so
that `nimbuild --help` and `nimbuild list-model-profiles` start fast.
"""

from __future__ import annotations

import sys

import typer

from nimbuild.errors import NimbuildError, debug_enabled
from nimbuild.output import Output

app = typer.Typer(
    name="nimbuild",
    rich_markup_mode=None,  # help texts show [defaults] and <placeholders> literally
    help=(
        "Turn a Hugging Face cross-encoder into hashed, hardware-specific, servable profiles.\n\n"
        "Example: nimbuild build recipes/example-tiny.yaml --out out/example-tiny"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    # Importing these modules is cheap: they import typer and nothing heavy.
    from nimbuild.cli import _commands

    _commands.register(app)


# A missing optional dependency is the user's to fix, not a bug: say which extra brings it.
_EXTRA_OF_MODULE = {
    **dict.fromkeys(
        (
            "torch",
            "transformers",
            "onnx",
            "onnxscript",
            "polygraphy",
            "huggingface_hub",
            "ml_dtypes",
            "safetensors",
            "sentencepiece",
        ),
        "build",
    ),
    **dict.fromkeys(
        ("onnxruntime", "tokenizers", "starlette", "uvicorn", "prometheus_client", "pynvml", "jinja2"), "runtime"
    ),
    "tritonclient": "triton",
    "tensorrt": "tensorrt",
}


def missing_dependency_error(exc: ModuleNotFoundError) -> NimbuildError | None:
    """The NimbuildError for an optional package that is not installed, or None for anything else."""
    top = (exc.name or "").split(".")[0]
    extra = _EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    if extra == "tensorrt":
        hint = (
            "TensorRT comes with NVIDIA's TensorRT/Triton containers, or "
            "`pip install --extra-index-url https://pypi.nvidia.com tensorrt`"
        )
    else:
        hint = f"pip install 'nimbuild[{extra}]'"
    return NimbuildError(f"this command needs the Python package '{top}', which is not installed", hint=hint)


def _file_system_error(exc: OSError) -> NimbuildError | None:
    """An OSError about a named path (missing folder, no permission, a folder where a file goes,
    a full disk) is the user's to fix: one line naming the path. Others stay bugs."""
    if exc.filename is None:
        return None
    where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
    return NimbuildError(
        f"{exc.strerror or type(exc).__name__}: {where}",
        hint="check that the path exists, is of the right kind (file or folder), is writable and has room",
    )


def run(application: typer.Typer, argv: list[str] | None = None, prog_name: str | None = None) -> None:
    """Run a Typer app: every user error is one line on stderr.

    NimbuildError, a missing optional package and a file-system error on a named path
    exit 1; a usage error (unknown option, missing argument, bad value) exits 2, as
    click and argparse do, with a pointer to --help. NIMBUILD_DEBUG=1 keeps tracebacks.
    """
    import click

    try:
        try:
            code = application(args=argv, prog_name=prog_name, standalone_mode=False)
        except ModuleNotFoundError as exc:
            mapped = missing_dependency_error(exc)
            if mapped is None or debug_enabled():
                raise
            raise mapped from exc
        except OSError as exc:
            mapped = _file_system_error(exc)
            if mapped is None or debug_enabled():
                raise
            raise mapped from exc
    except NimbuildError as exc:
        if debug_enabled():
            raise
        Output().error(str(exc))
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else (prog_name or "nimbuild")
        Output().error(f"{exc.format_message().rstrip('.')}; see `{where} --help`")
        sys.exit(2)
    except click.ClickException as exc:
        Output().error(exc.format_message())
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        Output().error("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `nimbuild` console script."""
    _register()
    run(app, argv, prog_name="nimbuild")


def list_model_profiles_main(argv: list[str] | None = None) -> None:
    """Entry point of the `list-model-profiles` console script (as in NIM containers)."""
    from nimbuild.cli.profiles import standalone_list_app

    run(standalone_list_app(), argv, prog_name="list-model-profiles")


def download_to_cache_main(argv: list[str] | None = None) -> None:
    """Entry point of the `download-to-cache` console script (as in NIM containers; the NIM Operator runs it)."""
    from nimbuild.cli.render import standalone_app

    run(standalone_app("download-to-cache"), argv, prog_name="download-to-cache")


def create_model_store_main(argv: list[str] | None = None) -> None:
    """Entry point of the `create-model-store` console script (as in NIM containers; the NIM Operator runs it)."""
    from nimbuild.cli.render import standalone_app

    run(standalone_app("create-model-store"), argv, prog_name="create-model-store")
