"""`nimbuild serve`: the container entrypoint (select, verify, start a backend, serve /v1/ranking)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nimbuild.cli.options import AssumeCpuOpt


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        manifest: Annotated[
            Path | None,
            typer.Option(
                "--manifest",
                "-m",
                envvar="NIM_MANIFEST_PATH",
                show_default=False,
                help="manifest.yaml whose profiles to choose from (env NIM_MANIFEST_PATH; default ./manifest.yaml, "
                "else the NIM Operator's /opt/nim/etc/default/model_manifest.yaml).",
            ),
        ] = None,
        host: Annotated[
            str, typer.Option("--host", envvar="NIM_HTTP_API_HOST", help="Address to listen on.")
        ] = "0.0.0.0",
        port: Annotated[
            int,
            typer.Option("--port", envvar="NIM_HTTP_API_PORT", help="Port of the HTTP API (env NIM_HTTP_API_PORT)."),
        ] = 8000,
        assume_gpu: Annotated[
            list[str] | None,
            typer.Option(
                "--assume-gpu",
                help="Select as if these GPUs were present ('NVIDIA H100 80GB HBM3', 'h100-sxm x2'); repeatable.",
            ),
        ] = None,
        assume_cpu: AssumeCpuOpt = None,
        backend: Annotated[
            str,
            typer.Option(
                "--backend",
                envvar="NIM_SERVE_BACKEND",
                help="auto (ONNX Runtime for ONNX profiles, Triton for TensorRT), onnxruntime, or triton.",
            ),
        ] = "auto",
        log_level: Annotated[
            str, typer.Option("--log-level", envvar="NIM_LOG_LEVEL", help="debug, info, warning.")
        ] = "info",
    ) -> None:
        """Serve the best profile this host can run: the reranking NIM's /v1/ranking API.

        Detects the GPUs and the CPU's INT8 classes, selects a profile (NIM_MODEL_PROFILE /
        NIM_TAGS_SELECTOR override it),
        logs the choice, verifies the profile's files (sha256), starts its backend and serves
        until SIGTERM (in-flight requests finish first). Besides /v1/ranking it answers the rerank
        APIs of text-embeddings-inference (/rerank), Cohere (/v1/rerank, /v2/rerank) and Jina
        (/v1/rerank); GET /openapi.json lists every route.

        Example: nimbuild serve --manifest out/example-tiny/manifest.yaml --port 8000
        """
        import os

        from nimbuild.runtime.selection import default_manifest_path
        from nimbuild.runtime.serve.connections import HttpLimits
        from nimbuild.runtime.serve.server import (
            bind_listener,
            graceful_shutdown_seconds,
            run_server,
            setup_logging,
            start_service,
        )

        setup_logging(log_level)
        graceful_shutdown_seconds(os.environ)  # settings and the port fail before a backend starts
        HttpLimits.from_env(os.environ)
        sock = bind_listener(host, port)
        try:
            service = start_service(
                manifest or default_manifest_path(os.environ),
                env=os.environ,
                assume_gpu=assume_gpu or (),
                assume_cpu=assume_cpu,
                backend=backend,
            )
        except BaseException:
            sock.close()
            raise
        raise typer.Exit(run_server(service, host=host, port=port, log_level=log_level.lower(), sock=sock))
