"""``nimbuild serve`` end to end: detect, select, verify, start a backend, serve over HTTP.

The profiles are tried in rank order: the selected one first, then the other
runnable ones that the overrides (``NIM_MODEL_PROFILE``, ``NIM_TAGS_SELECTOR``) allow. A profile whose files
do not verify, or whose backend cannot start or answer a warm-up, is logged
with the reason and skipped. SIGTERM stops accepting, lets in-flight requests
finish, stops the backend (and a ``tritonserver`` child) and exits 0.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from nimbuild.errors import NimbuildError
from nimbuild.export_layout import profile_model_file
from nimbuild.manifest import Manifest, Profile, file_in, load_manifest
from nimbuild.manifest_verify import verify_profile
from nimbuild.profiles import serving_limits
from nimbuild.runtime.serve.backends import Backend, BackendStartError
from nimbuild.runtime.serve.service import Limits, RankingService
from nimbuild.runtime.serve.tokenize import PairTokenizer, pad_rows
from nimbuild.runtime.settings import BACKENDS, Settings, option_text, read_settings

log = logging.getLogger("nimbuild.serve")

BACKEND_CHOICES = BACKENDS


def setup_logging(level: str = "info") -> None:
    """Plain lines on stderr, as a container log reads them: one record, one line (safe_text);
    ``level``: one of settings.LOG_LEVELS."""
    from nimbuild.safe_text import PrintableFormatter

    level = option_text("NIM_LOG_LEVEL", level, "--log-level")
    logger = logging.getLogger("nimbuild")
    if not any(getattr(h, "_nimbuild", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(PrintableFormatter("%(asctime)s %(levelname)s %(message)s"))
        handler._nimbuild = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def _file(profile: Profile, basename: str) -> str | None:
    matches = sorted(rel for rel in profile.files if rel.rsplit("/", 1)[-1] == basename)
    return matches[0] if matches else None


def make_backend(
    manifest: Manifest, profile: Profile, backend: str = "auto", settings: Settings | None = None
) -> Backend:
    """The backend for a profile: ONNX Runtime for ONNX profiles, Triton for TensorRT ones (or when asked)."""
    settings = settings or Settings()
    kind = profile.tags.get("backend")
    if backend == "triton" or kind == "tensorrt":
        from nimbuild.runtime.serve.backends.triton import TritonBackend

        return TritonBackend(
            manifest, profile, binary=settings.tritonserver, start_timeout_s=settings.triton_start_timeout_s
        )
    if kind == "onnx":
        from nimbuild.runtime.serve.backends.onnxruntime import OnnxRuntimeBackend

        try:
            model = profile_model_file(profile)
        except NimbuildError as exc:
            raise BackendStartError(exc.message) from None
        path = file_in(manifest.folder, profile, model)  # the bytes at its uri (the key may differ)
        return OnnxRuntimeBackend(
            path,
            device=profile.tags.get("device", "cpu"),
            intra_op_threads=settings.ort_intra_op_threads or None,
            cpu_arena=settings.ort_cpu_arena,
        )
    raise BackendStartError(f"profile {profile.name}: backend {kind!r} is not servable here (onnx or tensorrt)")


def files_view(manifest: Manifest, profile: Profile, cache_path: str | os.PathLike[str] | None) -> Manifest:
    """The manifest as seen from where the profile's files are: ``NIM_CACHE_PATH`` when they are all
    there (selection's own test, where `download-to-cache` puts them), else the manifest's folder."""
    from nimbuild.runtime.selection import is_cached

    if cache_path is not None and is_cached(profile, cache_path):
        return dataclasses.replace(manifest, root=Path(cache_path))
    return manifest


def start_profile(
    manifest: Manifest,
    profile: Profile,
    *,
    limits: Limits,
    backend: str = "auto",
    cache_path: str | os.PathLike[str] | None = None,
    settings: Settings | None = None,
) -> RankingService:
    """Verify one profile's files, start its backend, check one warm-up call; BackendStartError if it cannot."""
    try:
        max_len = serving_limits(profile.tags).max_sequence_length
    except NimbuildError as exc:
        raise BackendStartError(f"profile {profile.name}: {exc.message}") from None
    manifest = files_view(manifest, profile, cache_path)
    unverified: list[str] = []
    problems = verify_profile(manifest, profile, check_files=True, notes=unverified)
    if problems:
        raise BackendStartError("files do not verify: " + "; ".join(problems))
    for note in unverified:  # a manifest nimbuild did not write may give no sha256: said, not refused
        log.warning("%s", note)
    log.info(
        "Profile %s: %d files verified (sha256) in %s",
        profile.name,
        len(profile.files) - len(unverified),
        manifest.root,
    )
    tok_rel = _file(profile, "tokenizer.json")
    if tok_rel is None:
        raise BackendStartError(f"profile {profile.name} lists no tokenizer.json in workspace.files")
    cfg_rel = _file(profile, "tokenizer_config.json")
    tokenizer = PairTokenizer.from_files(
        file_in(manifest.folder, profile, tok_rel),
        max_len,
        file_in(manifest.folder, profile, cfg_rel) if cfg_rel else Path("/nonexistent"),  # never an unverified file
    )
    engine = make_backend(manifest, profile, backend, settings)
    engine.start()
    try:
        rows = tokenizer.encode("warm-up", ["a passage", "another passage"], "END")
        logits = engine.infer(*pad_rows(rows, tokenizer.pad_id))
        if logits.shape != (2,) or not np.all(np.isfinite(logits)):
            raise BackendStartError(f"warm-up call returned {logits!r}")
    except BackendStartError:
        engine.stop()
        raise
    except Exception as exc:
        engine.stop()
        raise BackendStartError(f"warm-up call failed: {type(exc).__name__}: {exc}") from exc
    info = {"id": profile.id, "name": profile.name, "tags": dict(profile.tags)}
    return RankingService(
        model=profile.tags.get("model", manifest.header.get("model", "model")),
        profile=info,
        tokenizer=tokenizer,
        backend=engine,
        limits=limits,
    )


def start_service(
    manifest_path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] = os.environ,
    assume_gpu: Sequence[str] = (),
    assume_cpu: str | None = None,
    backend: str = "auto",
) -> RankingService:
    """Detect, select (logging the NIM startup lines), then start the first profile that can start."""
    from nimbuild.runtime.hardware import host_for
    from nimbuild.runtime.selection import select, startup_log

    backend = option_text("NIM_SERVE_BACKEND", backend, "--backend")
    settings = read_settings(env)
    limits = Limits.from_settings(settings)
    manifest = load_manifest(manifest_path)
    host = host_for(env, list(assume_gpu), assume_cpu)
    selection = select(manifest, host, env)
    for line in startup_log(selection):
        log.info("%s", line)
    if selection.selected is None:
        raise NimbuildError(
            f"{manifest_path}: no profile is runnable on this host",
            hint="run `nimbuild list-model-profiles` to see why, or build a CPU profile",
        )
    # The runnable profiles the overrides allow, best first: what a failed start falls back through.
    candidates = [c.profile for c in selection.candidates] or [selection.selected]
    failures = []
    for profile in candidates:
        try:
            service = start_profile(
                manifest, profile, limits=limits, backend=backend, cache_path=settings.cache_path, settings=settings
            )
        except BackendStartError as exc:
            log.warning("Profile %s (%s) could not start: %s", profile.id, profile.name, exc)
            failures.append(f"{profile.name}: {exc}")
            continue
        if profile is not selection.selected:
            log.info("Serving profile %s (%s) instead", profile.id, profile.name)
        log.info("Backend: %s", service.backend.describe())
        return service
    raise NimbuildError(
        "no runnable profile could start: " + " | ".join(failures),
        hint="see the log above for each reason; `nimbuild list-model-profiles` lists the profiles",
    )


def graceful_shutdown_seconds(env: Mapping[str, str] = os.environ) -> int:
    """``NIM_GRACEFUL_SHUTDOWN_SECONDS`` (default 30)."""
    return read_settings(env).graceful_shutdown_seconds


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_port(host: str, port: int) -> None:
    """A TCP port is 1..65535: say so before anything starts (the socket layer raises OverflowError)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise NimbuildError(
            f"cannot serve on {_address(host, port)}: port {port} is out of range",
            hint="set NIM_HTTP_API_PORT or --port to a port between 1 and 65535",
        )


def bind_listener(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (not yet listening), or one NimbuildError naming the address and the fix.

    Bound before the backend starts, so a busy port fails in a second, not after
    an engine has loaded; uvicorn then serves on this socket.
    """
    check_port(host, port)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: restart over TIME_WAIT
        sock.bind((host, port))
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        hint = (
            "stop what listens there, or pick a free port with NIM_HTTP_API_PORT or --port"
            if getattr(exc, "errno", None) == errno.EADDRINUSE
            else "check the address (NIM_HTTP_API_HOST / --host) and the port (NIM_HTTP_API_PORT / --port)"
        )
        raise NimbuildError(f"cannot serve on {_address(host, port)}: {reason}", hint=hint) from None
    sock.set_inheritable(True)
    return sock


def run_server(
    service: RankingService,
    host: str = "0.0.0.0",
    port: int = 8000,
    log_level: str = "info",
    env: Mapping[str, str] = os.environ,
    sock: socket.socket | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; in-flight requests finish first. Returns the exit code (0).

    ``sock``: a socket from :func:`bind_listener` (the CLI binds before the
    backend starts); without one, it is bound here. A port that cannot be
    served on is one NimbuildError, never uvicorn's log and exit code.
    """
    import uvicorn

    from nimbuild.runtime.serve.app import ErrorShapes, create_app, dialects
    from nimbuild.runtime.serve.connections import ACCEPT_BATCH, GuardedServer, HttpLimits, make_protocol

    try:
        settings = read_settings(env)
        grace = settings.graceful_shutdown_seconds
        http = HttpLimits.from_settings(settings)
        if sock is None:
            sock = bind_listener(host, port)
    except NimbuildError:
        service.stop()
        raise
    app = create_app(service, max_connections=http.max_connections)
    log.info(
        "HTTP: at most %d connections (NIM_HTTP_MAX_CONNECTIONS); timeouts: headers %g s, body %g s, keep-alive %g s",
        http.max_connections,
        http.header_timeout_s,
        http.body_timeout_s,
        http.keep_alive_s,
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        log_level=log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=grace,
        timeout_keep_alive=http.keep_alive_s,  # type: ignore[arg-type]  # uvicorn hands it to loop.call_later
        # The guarded h11 protocol (connections.py) on asyncio's loop: the behaviour the tests check, whatever
        # else (httptools, uvloop) the image has installed.
        http=make_protocol(http, ErrorShapes(dialects()).body_for, service.metrics),
        loop="asyncio",
        backlog=ACCEPT_BATCH,
    )
    server = GuardedServer(config)
    received: list[int] = []
    # uvicorn re-raises the signal it stopped on; with these handlers that ends in a clean exit 0.
    previous = {sig: signal.signal(sig, lambda s, f: received.append(s)) for sig in (signal.SIGTERM, signal.SIGINT)}
    failure = None
    try:
        log.info("Listening on http://%s", _address(host, port))
        server.run(sockets=[sock])
    except SystemExit as exc:  # uvicorn's startup failure (sys.exit(3)): reported below as one error
        failure = f"the server stopped during start-up (exit {exc.code})"
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        service.stop()  # idempotent: the app's shutdown already did it unless the server never started
        sock.close()
    if failure or not server.started:
        raise NimbuildError(
            f"could not serve on {_address(host, port)}: {failure or 'the server did not start'}",
            hint="see the log above; is the port free? set NIM_HTTP_API_PORT or --port",
        )
    log.info("Server stopped%s", f" on signal {signal.Signals(received[-1]).name}" if received else "")
    return 0
