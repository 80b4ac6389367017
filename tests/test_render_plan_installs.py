"""The CI plans' pip lines, resolved for real (`pip install --dry-run --report`): no CUDA on CPU jobs.

The lines are taken from the plan itself (nimbuild.render.plan.install_commands) and resolved with
`--isolated` (this machine's pip.conf and PIP_* variables are ignored: only what the line says counts).
The release and CPU-class jobs install no torch; the export job's torch is `torch==<pin>+cpu`, which
only the PyTorch CPU index serves. Where that index is unreachable, a local folder holding the same `+cpu`
wheel stands in for it (`--find-links`, said in the test's output), else that part is skipped with
the reason. Needs PyPI (skipped when offline).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nimbuild.render import plan as plan_mod

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module", autouse=True)
def pypi():
    if not _reachable("pypi.org"):
        pytest.skip("pypi.org is unreachable: the dry-run resolves against PyPI")


def _resolve(line: str, tmp_path: Path, *, swap_index: str | None = None) -> list[str]:
    """The names and versions pip would install for the plan's ``line`` (run from the repository root)."""
    args = shlex.split(line)
    assert args[:4] == ["python3", "-m", "pip", "install"], line
    rest = args[4:]
    if swap_index is not None:  # the CPU index, stood in for by a folder holding its wheel
        at = rest.index("--extra-index-url")
        rest[at : at + 2] = ["--find-links", swap_index]
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed", "--quiet"]
    cmd += ["--no-build-isolation", "--report", str(report), *rest]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    items = json.loads(report.read_text())["install"]
    return [f"{i['metadata']['name'].lower()}=={i['metadata']['version']}" for i in items]


def _cuda(resolved: list[str]) -> list[str]:
    """CUDA packages: nvidia-* (but the NVML bindings, nvidia-ml-py, which are not CUDA), *cuda*, triton's."""
    out = []
    for item in resolved:
        name = item.split("==")[0].replace("_", "-")
        if (name.startswith("nvidia-") and name != "nvidia-ml-py") or "cuda" in name or name == "triton":
            out.append(item)
    return out


def test_the_release_job_resolves_no_torch_and_no_cuda(tmp_path):
    resolved = _resolve(plan_mod.install_commands()["release"], tmp_path)
    names = {r.split("==")[0] for r in resolved}
    assert "nimbuild" in names and "onnxruntime" in names and "tritonclient" in names
    assert "torch" not in names and _cuda(resolved) == [], resolved


def _local_cpu_index() -> str | None:
    """A folder with this pin's ``+cpu`` torch wheel (pip's own find-links), to stand in for the CPU index."""
    req, _ = plan_mod.torch_cpu_requirement(REPO / "constraints.txt")
    version = req.split("==", 1)[1] if "==" in req else ""
    folders = os.environ.get("PIP_FIND_LINKS", "").split()
    done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    folders += [line.split("=", 1)[1].strip("'\"") for line in done.stdout.splitlines() if "find-links" in line]
    for folder in folders:
        if version and any(Path(folder).glob(f"torch-{version}-*.whl")):
            return folder
    return None


def test_the_export_job_resolves_cpu_torch_and_no_cuda(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    line = plan_mod.install_commands()["export"]
    swap = None
    if not _reachable("download.pytorch.org"):
        swap = _local_cpu_index()
        if swap is None:
            pytest.skip("download.pytorch.org is unreachable and no local +cpu torch wheel stands in for it")
        print(f"the PyTorch CPU index is unreachable here: {swap} (the same +cpu wheel) stands in for it")
    resolved = _resolve(line, tmp_path, swap_index=swap)
    torch = [r for r in resolved if r.startswith("torch==")]
    assert torch and torch[0].endswith("+cpu"), resolved
    assert {"onnx", "transformers", "polygraphy"} <= {r.split("==")[0] for r in resolved}
    assert _cuda(resolved) == [], resolved


def test_without_the_cpu_pin_pypi_would_bring_cuda(tmp_path, monkeypatch):
    """The check is live: the plan's old line (no CPU torch) resolves PyPI's CUDA torch and its nvidia-*."""
    monkeypatch.chdir(REPO)
    resolved = _resolve("python3 -m pip install -c constraints.txt '.[build]'", tmp_path)
    assert len(_cuda(resolved)) >= 5, resolved


def test_the_cpu_class_job_resolves_no_torch_no_cuda_and_the_cpu_onnxruntime(tmp_path):
    resolved = _resolve(plan_mod.install_commands()["cpu"], tmp_path)
    names = {r.split("==")[0] for r in resolved}
    assert {"nimbuild", "onnx", "onnxruntime", "sympy"} <= names, resolved
    assert not names & {"torch", "transformers", "onnxruntime-gpu", "polygraphy"} and _cuda(resolved) == [], resolved


def _extra(name: str) -> list[str]:
    """The requirements of one extra, read from pyproject.toml (not from an installed, maybe stale, copy)."""
    tomllib = pytest.importorskip("tomllib")
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]["optional-dependencies"][name]


def _resolves_for_arm64(requirements: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--quiet"]
    cmd += ["--target", str(tmp_path / "t"), "--only-binary=:all:", "--python-version", "3.11"]
    cmd += ["--platform", "manylinux_2_28_aarch64"]
    cmd += ["-c", str(REPO / "constraints.txt"), *requirements]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900)


def test_the_cpu_class_job_installs_on_an_arm64_runner(tmp_path):
    """arm64_dotprod's job runs on arm64: its extra has wheels there (onnxruntime-gpu, in `build`, has none)."""
    done = _resolves_for_arm64(_extra("int8"), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    gpu = _resolves_for_arm64(["onnxruntime-gpu"], tmp_path)  # the check is live: what `.[build]` would need
    assert gpu.returncode != 0 and "onnxruntime-gpu" in gpu.stderr
