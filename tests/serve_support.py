"""Shared by the serve tests: one tiny exported cross-encoder and a manifest over it, built once per session.

(A helper module, not a conftest and not named test_*: tests/test_serve_*.py import it. It holds no tests.)
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

MODEL = "serve-tiny"
MAX_SEQ = 64  # small, so truncation is easy to reach
MAX_BATCH = 8


def export_onnx(model_dir: Path, out_path: Path) -> None:
    """The tiny model to ONNX fp32, with nimbuild's own exporter (what ships)."""
    from nimbuild.builder.export import export_fp32

    assert out_path.name == "model.onnx"
    shapes = {"batch": {"min": 1, "opt": 4, "max": MAX_BATCH}, "sequence": {"min": 1, "opt": 32, "max": MAX_SEQ}}
    export_fp32(model_dir, out_path.parent, shapes)


@functools.cache
def served_export() -> Path:
    """A folder with hf/ (the model), onnx/fp32/model.onnx, tokenizer/ and manifest.yaml (a cpu fp32 profile
    and a gpu fp32 profile over the same graph, to exercise fallback)."""
    from nimbuild.builder.tiny import build_tiny_model
    from nimbuild.manifest import Manifest, Profile, file_entry, write_manifest
    from nimbuild.profiles import onnx_profile_tags, profile_id, profile_name

    root = Path(tempfile.mkdtemp(prefix="nimbuild-serve-tests-"))
    atexit.register(shutil.rmtree, root, True)
    hf = build_tiny_model(root / "hf", "bert", seed=0)
    export_onnx(hf, root / "onnx" / "fp32" / "model.onnx")
    (root / "tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf / name, root / "tokenizer" / name)
    files = ["onnx/fp32/model.onnx", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"]
    profiles = []
    for device in ("cpu", "gpu"):
        tags = onnx_profile_tags(MODEL, "test0000", "fp32", device, MAX_BATCH, MAX_SEQ)
        profiles.append(
            Profile(
                id=profile_id(tags),
                name=profile_name(tags),
                tags=tags,
                files={rel: file_entry(root, rel) for rel in files},
            )
        )
    manifest = Manifest(profiles=profiles, header={"model": MODEL}, root=root)
    write_manifest(manifest, root / "manifest.yaml")
    return root


def ort_scores(onnx_path: Path, hf_dir: Path, query: str, passages: list[str], max_length: int = MAX_SEQ):
    """Reference logits: transformers' tokenizer (only_second truncation) + a plain ONNX Runtime session."""
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    enc = tok(
        [query] * len(passages),
        passages,
        padding=True,
        truncation="only_second",
        max_length=max_length,
        return_tensors="np",
    )
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()}
    return sess.run(None, feed)[0][:, 0]


class ServeProcess:
    """`nimbuild serve` on the served export as a child process on 127.0.0.1, its log in a file.

    ``with ServeProcess(env={...}) as server:`` waits until /v1/health/ready answers 200 (or fails with the
    log), and on exit sends SIGTERM, waits (killing it past ``stop_timeout``) and keeps ``returncode`` and ``log``.
    """

    def __init__(self, env: dict | None = None, *, preexec_fn=None, ready_timeout: float = 120.0, stop_timeout=60.0):
        import os
        import sys

        from nimbuild.runtime.serve.backends.triton import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "NIM_CPU_ONLY": "1", **(env or {})}
        self.env.pop("NIM_MODEL_PROFILE", None)
        self.argv = [
            sys.executable,
            "-m",
            "nimbuild",
            "serve",
            "--manifest",
            str(served_export() / "manifest.yaml"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self.preexec_fn, self.ready_timeout, self.stop_timeout = preexec_fn, ready_timeout, stop_timeout
        self.proc = None
        self.returncode: int | None = None
        self.log = ""

    def __enter__(self) -> ServeProcess:
        import subprocess
        import time

        import httpx

        self._log_file = tempfile.NamedTemporaryFile("w+", prefix="nimbuild-serve-", suffix=".log")
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=self.preexec_fn,
        )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nimbuild serve exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                if httpx.get(f"{self.url}/v1/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.proc.kill()
        raise AssertionError(f"nimbuild serve never became ready:\n{self.read_log()}")

    def read_log(self) -> str:
        self._log_file.flush()
        self._log_file.seek(0)
        return self._log_file.read()

    def stop(self) -> int:
        import signal
        import subprocess

        if self.proc is not None and self.returncode is None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.returncode = self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.returncode = self.proc.wait()
            self.log = self.read_log()
        return self.returncode if self.returncode is not None else -1

    def __exit__(self, *exc) -> None:
        self.stop()
        self._log_file.close()
