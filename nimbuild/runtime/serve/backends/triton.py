"""Triton Inference Server as a child process: TensorRT profiles (and ONNX ones when asked).

The profile is materialized as a Triton model store (by nimbuild.runtime.model_store,
imported here only, so the light runtime does not load it otherwise),
``tritonserver`` is started on loopback ports of its own, and the server waits
until Triton says the model is ready. A Triton that exits or never gets ready
is a failed start, reported with the tail of its log. It is stopped with the
server (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nimbuild.runtime.serve.backends import Backend, BackendStartError, logits_column
from nimbuild.runtime.settings import Settings

if TYPE_CHECKING:
    from nimbuild.manifest import Manifest, Profile

log = logging.getLogger("nimbuild.serve")

_NP = {"INT64": np.int64, "INT32": np.int32}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


class TritonBackend(Backend):
    kind = "triton"

    def __init__(
        self,
        manifest: Manifest,
        profile: Profile,
        *,
        workdir: str | os.PathLike[str] | None = None,
        binary: str | None = None,
        start_timeout_s: float | None = None,
    ):
        self.manifest = manifest
        self.profile = profile
        defaults = Settings()  # the serve path passes the settings' values (NIM_TRITONSERVER, NIM_TRITON_START_TIMEOUT)
        self.binary = binary or defaults.tritonserver
        self.start_timeout_s = start_timeout_s or defaults.triton_start_timeout_s
        self.workdir = Path(workdir) if workdir else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.client: Any = None  # tritonclient.http.InferenceServerClient
        self.model_name: str | None = None
        self.url: str | None = None
        self._inputs: list[tuple[str, str]] = []
        self._output: str | None = None
        self._log_path: Path | None = None
        self._own_workdir = False
        self._local = threading.local()  # gevent-based clients must stay on the thread that made them

    # -- start -----------------------------------------------------------------------------------
    def start(self) -> None:
        exe = shutil.which(self.binary)
        if exe is None:
            raise BackendStartError(
                f"{self.binary!r} not found on PATH (a Triton image provides it; set NIM_TRITONSERVER to its path)"
            )
        try:
            import tritonclient.http as httpclient
        except Exception as exc:  # ImportError, or tritonclient without its http extra
            raise BackendStartError(
                f"tritonclient[http] is not usable ({exc}); pip install 'nimbuild[triton]'"
            ) from exc
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="nimbuild-triton-"))
            self._own_workdir = True
        store, self.model_name = self._materialize(self.workdir / "model_store")
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        self._log_path = log_path = self.workdir / "tritonserver.log"
        cmd = [
            exe,
            f"--model-repository={store}",
            f"--http-port={http_port}",
            f"--grpc-port={grpc_port}",
            f"--metrics-port={metrics_port}",
            "--http-address=127.0.0.1",
            "--exit-on-error=true",
            # Only the graph: tokenization happens in this process (the store's tokenizer/ensemble stay unloaded).
            "--model-control-mode=explicit",
            f"--load-model={self.model_name}",
        ]
        log.info("Starting %s", " ".join(cmd))
        with open(log_path, "wb") as log_file:
            self.proc = proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"127.0.0.1:{http_port}"
        self.client = client = httpclient.InferenceServerClient(
            self.url, connection_timeout=10.0, network_timeout=120.0
        )
        self._wait_ready(proc, client, log_path)
        meta = self.client.get_model_metadata(self.model_name)
        self._inputs = [(i["name"], i["datatype"]) for i in meta["inputs"]]
        self._output = meta["outputs"][0]["name"]
        log.info("Triton is serving %s on %s (pid %d)", self.model_name, self.url, self.proc.pid)

    def _materialize(self, dest: Path) -> tuple[Path, str]:
        """The profile's Triton model store (render's store builder); returns (store folder, model name)."""
        try:
            from nimbuild.runtime.model_store import materialize_profile
        except ImportError as exc:
            raise BackendStartError(f"cannot render a Triton model store here ({exc})") from exc
        try:
            result = materialize_profile(self.manifest, self.profile, dest)
        except Exception as exc:
            raise BackendStartError(f"rendering the Triton model store failed: {exc}") from exc
        store, name = Path(result.store), result.model_name
        if not (store / name / "config.pbtxt").is_file():
            raise BackendStartError(f"{store / name}: no config.pbtxt was rendered")
        self.max_batch_size = int(result.max_batch_size)
        return store, name

    def _wait_ready(self, proc: subprocess.Popen[bytes], client: Any, log_path: Path) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            code = proc.poll()
            if code is not None:
                raise BackendStartError(f"tritonserver exited with code {code}: {_tail(log_path)}")
            try:
                if client.is_server_ready() and client.is_model_ready(self.model_name):
                    return
            except Exception:  # not listening yet
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise BackendStartError(
                    f"tritonserver not ready after {self.start_timeout_s:.0f}s "
                    f"(NIM_TRITON_START_TIMEOUT): {_tail(log_path)}"
                )
            time.sleep(0.25)

    # -- serve -----------------------------------------------------------------------------------
    def infer(self, input_ids: np.ndarray, attention_mask: np.ndarray, token_type_ids: np.ndarray) -> np.ndarray:
        import tritonclient.http as httpclient

        arrays = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        inputs = []
        for name, datatype in self._inputs:
            arr = np.ascontiguousarray(arrays[name], dtype=_NP.get(datatype, np.int64))
            item = httpclient.InferInput(name, list(arr.shape), datatype)
            item.set_data_from_numpy(arr, binary_data=True)
            inputs.append(item)
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpclient.InferenceServerClient(self.url, network_timeout=120.0)
        result = client.infer(
            self.model_name, inputs, outputs=[httpclient.InferRequestedOutput(self._output, binary_data=True)]
        )
        return logits_column(result.as_numpy(self._output))

    # -- stop ------------------------------------------------------------------------------------
    def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None
        if self.proc is not None and self.proc.poll() is None:
            log.info("Stopping tritonserver (pid %d)", self.proc.pid)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "url": self.url,
            "model": self.model_name,
            "pid": self.proc.pid if self.proc else None,
        }
