"""`nimbuild serve`: the container entrypoint (select, verify, start a backend, serve /v1/ranking)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nimbuild.cli.options import AssumeCpuOpt


def serve(
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            "-m",
            show_default=False,
            help="manifest.yaml whose profiles to choose from [default: $NIM_MANIFEST_PATH, else ./manifest.yaml, "
            "else the NIM Operator's /opt/nim/etc/default/model_manifest.yaml].",
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(
            "--host", show_default=False, help="Address to listen on [default: $NIM_HTTP_API_HOST, else 0.0.0.0]."
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            "--port", show_default=False, help="Port of the HTTP API, 1-65535 [default: $NIM_HTTP_API_PORT, else 8000]."
        ),
    ] = None,
    assume_gpu: Annotated[
        list[str] | None,
        typer.Option(
            "--assume-gpu",
            help="Select as if these GPUs were present ('NVIDIA H100 80GB HBM3', 'h100-sxm x2'); repeatable.",
        ),
    ] = None,
    assume_cpu: AssumeCpuOpt = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            show_default=False,
            help="auto (ONNX Runtime for ONNX profiles, Triton for TensorRT), onnxruntime, or triton "
            "[default: $NIM_SERVE_BACKEND, else auto].",
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level",
            show_default=False,
            help="debug, info, warning, error or critical [default: $NIM_LOG_LEVEL, else info].",
        ),
    ] = None,
) -> None:
    """Serve the best profile this host can run: the reranking NIM's /v1/ranking API.

    Detects the GPUs and the CPU's INT8 classes, selects a profile (NIM_MODEL_PROFILE /
    NIM_TAGS_SELECTOR override it), logs the choice, verifies the profile's files (sha256),
    starts its backend and serves until SIGTERM (in-flight requests finish first). Besides
    /v1/ranking it answers the rerank APIs of text-embeddings-inference (/rerank), Cohere
    (/v1/rerank, /v2/rerank) and Jina (/v1/rerank); GET /openapi.json lists every route.
    Every NIM_* setting is checked before anything starts: a bad one is one error line naming it.

    Example: nimbuild serve --manifest out/example-tiny/manifest.yaml --port 8000
    """
    import os

    from nimbuild.runtime.selection import default_manifest_path
    from nimbuild.runtime.serve.connections import HttpLimits
    from nimbuild.runtime.serve.server import bind_listener, run_server, setup_logging, start_service
    from nimbuild.runtime.settings import option_int, option_text, read_settings

    settings = read_settings(os.environ)  # every setting fails here, before the port or a backend
    chosen_level = option_text("NIM_LOG_LEVEL", log_level, "--log-level") if log_level else settings.log_level
    chosen_backend = option_text("NIM_SERVE_BACKEND", backend, "--backend") if backend else settings.serve_backend
    chosen_host = option_text("NIM_HTTP_API_HOST", host, "--host") if host is not None else settings.http_api_host
    chosen_port = option_int("NIM_HTTP_API_PORT", port, "--port") if port is not None else settings.http_api_port
    HttpLimits.from_settings(settings)  # the connection ceiling against this process's open-file limit
    setup_logging(chosen_level)
    sock = bind_listener(chosen_host, chosen_port)
    try:
        service = start_service(
            manifest or default_manifest_path(os.environ),
            env=os.environ,
            assume_gpu=assume_gpu or (),
            assume_cpu=assume_cpu,
            backend=chosen_backend,
        )
    except BaseException:
        sock.close()
        raise
    raise typer.Exit(run_server(service, host=chosen_host, port=chosen_port, log_level=chosen_level, sock=sock))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
