"""The example's CPU serving image, built and run for real with podman: no registry, no index.

The build context is what `nimbuild render --wheelhouse cpu` writes (nimbuild's own wheel and its
serving dependencies, downloaded on the host for the base image's Python); the base image is a Debian
12 minbase root filesystem made by scripts/podman-base.sh (mmdebstrap + podman import), built with
--network=none. The image must answer /v1/ranking, turn healthy by its own HEALTHCHECK, run as a
non-root user, stop cleanly on SIGTERM, and be a NIM to the NIM Operator: the manifest where the
NIMCache job reads it, and its commands on PATH, run as the operator runs them (UID 1000, GID 2000,
the cache volume at /model-store, NIM_CACHE_PATH).

Skipped, with the reason, where podman is absent, the base image cannot be made, or no package
index is reachable (the wheelhouse is downloaded on the host: TLS to an index fails inside a
container here). .ci/run installs podman, runc and mmdebstrap and makes the base image.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BASE_IMAGE = os.environ.get("NIMBUILD_BASE_IMAGE", "localhost/nimbuild-base:bookworm")
# This kernel needs runc (crun fails) and explicit ulimits; every build runs without a network.
RUN_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
OPERATOR_USER = "1000:2000"  # the NIM Operator's default userID / groupID (NIMCache and NIMService)
# The NIMCache controller's manifest extraction (internal/controller/nimcache_controller.go, getCommand),
# without its trailing `sleep infinity`.
OPERATOR_MANIFEST_SCRIPT = (
    "if [ -f /opt/nim/etc/default/model_manifest.yaml ]; then cat /opt/nim/etc/default/model_manifest.yaml; "
    "elif [ -f /etc/nim/config/model_manifest.yaml ]; then cat /etc/nim/config/model_manifest.yaml; "
    'else echo "model_manifest.yaml not found"; fi;'
)

pytestmark = pytest.mark.slow


def _podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done


def _index_reachable() -> str | None:
    """None when pip can reach an index, else why not (the wheelhouse is downloaded on the host)."""
    if os.environ.get("PIP_INDEX_URL") or os.environ.get("PIP_NO_INDEX"):
        return None
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError as exc:
        return f"no package index reachable (pypi.org:443: {exc}); the wheelhouse needs one"
    return None


def _base_image() -> str | None:
    """Make sure the base image exists (scripts/podman-base.sh); None when it does, else why not."""
    if _podman("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return None
    if shutil.which("mmdebstrap") is None or os.geteuid() != 0:
        return f"no {BASE_IMAGE} and it cannot be made here (needs root and mmdebstrap: run scripts/podman-base.sh)"
    done = subprocess.run(["bash", str(REPO / "scripts" / "podman-base.sh")], capture_output=True, text=True)
    if done.returncode != 0:
        return f"scripts/podman-base.sh failed: {done.stderr[-500:]}"
    return None


@pytest.fixture(scope="module")
def cpu_image(exported_example, tmp_path_factory):
    """(tag, context folder, the image's manifest) of the example's CPU image, built once for this module."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (apt-get install podman runc; .ci/run does)")
    why = _index_reachable() or _base_image()
    if why:
        pytest.skip(why)
    from nimbuild.builder.assemble import build_manifest
    from nimbuild.manifest import load_manifest
    from nimbuild.render.triton import render_all
    from nimbuild.render.wheelhouse import cpu_target

    context = tmp_path_factory.mktemp("image") / "example-tiny"
    shutil.copytree(exported_example, context)
    build_manifest(context, out=context / "manifest.yaml")
    # The wheelhouse is made for the base image's Python, asked of the base image itself.
    python = _podman("run", "--rm", *RUN_FLAGS, "--network=none", BASE_IMAGE, "python3", "-c",
                     "import sys; print('%d.%d' % sys.version_info[:2])").stdout.strip()  # fmt: skip
    result = render_all(
        context / "manifest.yaml",
        context,
        recipe_path=REPO / "recipes" / "example-tiny.yaml",
        images={"targets": {"cpu": cpu_target(python)}, "wheelhouses": ["cpu"]},
    )
    cpu = result.container.images["cpu"]
    assert cpu.has_wheelhouse
    tag = f"localhost/nimbuild-test/example-tiny-cpu:{uuid.uuid4().hex[:12]}"
    _podman(
        "build",
        *RUN_FLAGS,
        "--network=none",
        "--format=docker",  # OCI images drop HEALTHCHECK
        "--build-arg",
        f"BASE_IMAGE={BASE_IMAGE}",
        "-f",
        str(cpu.dockerfile),
        "--ignorefile",
        str(cpu.dockerignore),
        "-t",
        tag,
        str(context),
        timeout=1200,
    )
    yield tag, context, load_manifest(context / "manifest.cpu.yaml")
    _podman("rmi", "-f", tag, check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict, timeout: float = 30) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _wait_healthy(name: str, seconds: float = 180) -> None:
    """Run the image's own HEALTHCHECK until it passes (podman runs it on demand without systemd)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        state = _podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state != "running":
            raise AssertionError(f"container {name} is {state}: {_podman('logs', name, check=False).stderr[-3000:]}")
        if _podman("healthcheck", "run", name, check=False, timeout=30).returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"{name} not healthy after {seconds} s: {_podman('logs', name, check=False).stderr[-3000:]}")


def test_cpu_image_serves_a_ranking_as_non_root_and_stops_on_sigterm(cpu_image):
    tag, _, manifest = cpu_image
    name, port = f"nimbuild-test-{uuid.uuid4().hex[:8]}", _free_port()
    _podman("run", "-d", "--name", name, *RUN_FLAGS, "-p", f"127.0.0.1:{port}:8000", tag)
    try:
        _wait_healthy(name)
        assert _podman("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip() == "healthy"
        answer = _post(
            f"http://127.0.0.1:{port}/v1/ranking",
            {
                "model": "example-tiny",
                "query": {"text": "how do vaccines work"},
                "passages": [{"text": "Vaccines train the immune system."}, {"text": "The train leaves at noon."}],
            },
        )
        rankings = answer["rankings"]
        assert sorted(r["index"] for r in rankings) == [0, 1]
        assert rankings[0]["logit"] >= rankings[1]["logit"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/metrics", timeout=10) as resp:
            assert "nimbuild_queue_depth" in resp.read().decode()
        # PID 1 is the server, running as the image's numeric non-root user
        top = _podman("top", name, "pid", "huser", "args").stdout.splitlines()[1].split()
        assert top[0] == "1" and top[1] == "10001" and "serve" in " ".join(top[2:])
        assert _podman("exec", name, "id", "-u").stdout.strip() == "10001"
        logs = _podman("logs", name).stderr
        selected = [
            line.split("Selected profile: ", 1)[1].split()[0] for line in logs.splitlines() if "Selected" in line
        ]
        assert selected and selected[0] in {p.id for p in manifest.profiles}, logs
        t0 = time.monotonic()
        _podman("stop", "--time", "30", name, timeout=60)
        stopped_in = time.monotonic() - t0
        state = json.loads(_podman("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0 and stopped_in < 25, (state, stopped_in)  # SIGKILL would be 137, after 30 s
        assert "SIGTERM" in _podman("logs", name).stderr
    finally:
        _podman("rm", "-f", name, check=False)


def _run_as_operator(
    tag: str, *cmd: str, volume: Path | None = None, entrypoint: str | None = None, env: dict | None = None
):
    """``tag`` run as the operator's NIMCache job container: its user, and with ``volume``, the cache volume at
    /model-store with the variables constructJob sets (HF_HOME, NIM_CACHE_PATH, NGC_HOME: all /model-store)."""
    args = ["run", "--rm", *RUN_FLAGS, "--network=none", "--user", OPERATOR_USER]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    if volume is not None:
        args += ["-v", f"{volume}:/model-store"]
        args += [f"--env={name}=/model-store" for name in ("HF_HOME", "NIM_CACHE_PATH", "NGC_HOME")]
    if entrypoint is not None:
        args += ["--entrypoint", entrypoint]
    return _podman(*args, tag, *cmd, check=False, timeout=180)


def test_the_nim_operator_finds_the_manifest_and_the_commands(cpu_image):
    tag, context, manifest = cpu_image
    done = _run_as_operator(tag, "-c", OPERATOR_MANIFEST_SCRIPT, entrypoint="sh")
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout) == yaml.safe_load((context / "manifest.cpu.yaml").read_text())
    assert yaml.safe_load(done.stdout)["schema_version"].startswith("2.")  # the operator's v2 parser
    which = _run_as_operator(
        tag,
        "-c",
        'for c in nimbuild list-model-profiles download-to-cache create-model-store; do command -v "$c" || exit 1; '
        "done",
        entrypoint="sh",
    )
    assert which.returncode == 0 and len(which.stdout.split()) == 4, which.stdout + which.stderr
    listing = _run_as_operator(tag, entrypoint="list-model-profiles")
    assert listing.returncode == 0, listing.stderr
    assert all(p.id in listing.stdout for p in manifest.profiles)


def _serve_from_cache(tag: str, volume: Path) -> str:
    """Start the image as a NIMService does (the operator's user, the cache volume), wait until healthy: its log."""
    name, port = f"nimbuild-test-{uuid.uuid4().hex[:8]}", _free_port()
    _podman(
        "run", "-d", "--name", name, *RUN_FLAGS, "--user", OPERATOR_USER, "-p", f"127.0.0.1:{port}:8000",
        "-v", f"{volume}:/model-store", "-e", "NIM_CACHE_PATH=/model-store", tag,
    )  # fmt: skip
    try:
        _wait_healthy(name)
        return _podman("logs", name).stderr
    finally:
        _podman("rm", "-f", name, check=False)


def _rendered_nimcache(context: Path, kind: str) -> dict:
    """The NIMCache `nimbuild render` wrote for the ``kind`` image (deploy/nimcache.yaml)."""
    caches = [d for d in yaml.safe_load_all((context / "deploy" / "nimcache.yaml").read_text()) if d]
    (found,) = [c for c in caches if c["metadata"]["name"].endswith("-cpu") == (kind == "cpu")]
    return found


def _operator_job_args(nimcache: dict) -> list[str]:
    """The NIMCache job container's Args as the operator builds them for an NGC source (constructJob:
    Command [download-to-cache], Args ["--profiles", *profiles] when profiles are selected)."""
    profiles = nimcache["spec"]["source"]["ngc"]["model"].get("profiles")
    return ["--profiles", *profiles] if profiles else []


def test_download_to_cache_in_the_operators_form_fills_the_cache_volume(cpu_image, tmp_path):
    """The NIMCache job of the rendered deploy/nimcache.yaml: `download-to-cache --profiles ID...` (or `--all`)
    on the volume at /model-store, as the operator's user; then the image served from that volume."""
    tag, context, manifest = cpu_image
    nimcache = _rendered_nimcache(context, "cpu")
    assert nimcache["spec"]["source"]["ngc"]["modelPuller"].endswith("-cpu")
    assert "modelEndpoint" not in nimcache["spec"]["source"]["ngc"]  # that would make the job create-model-store
    job_args = _operator_job_args(nimcache)
    assert sorted(job_args[1:]) == sorted(p.id for p in manifest.profiles)  # every CPU profile, by ID
    for args in (job_args, ["--all"]):
        volume = tmp_path / args[0].strip("-")
        volume.mkdir()
        volume.chmod(0o777)  # what fsGroup makes of the NIMCache volume for the job's GID
        done = _run_as_operator(tag, *args, volume=volume, entrypoint="download-to-cache")
        assert done.returncode == 0, done.stdout + done.stderr
        for profile in manifest.profiles:
            assert profile.id in done.stdout, done.stdout
            for entry in profile.files.values():
                cached = volume / entry.uri
                assert cached.is_file() and cached.stat().st_size == entry.size, cached
        # the job runs again when the operator retries it (BackoffLimit 5): nothing copied twice
        again = _run_as_operator(tag, *args, volume=volume, entrypoint="download-to-cache", env={"NO_COLOR": "1"})
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.count(": 0 file(s) copied") == len(manifest.profiles), again.stdout
    # NIMService: the same image, the volume as its cache, as the operator's user
    assert "/model-store" in _serve_from_cache(tag, tmp_path / "profiles")


def test_create_model_store_in_the_operators_form(cpu_image, tmp_path):
    """The NIMCache job for a model endpoint: `create-model-store --model-repo REPO --model-store /model-store`."""
    tag, _, manifest = cpu_image
    volume = tmp_path / "store"
    volume.mkdir()
    volume.chmod(0o777)
    profile = manifest.profiles[0]
    done = _run_as_operator(
        tag,
        "--model-repo",
        "/opt/nim/model",
        "--model-store",
        "/model-store",
        volume=volume,
        entrypoint="create-model-store",
        env={"NIM_MODEL_PROFILE": profile.id},  # how a NIMCache's env names the profile
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert profile.id in done.stdout, done.stdout
    assert any(volume.rglob("config.pbtxt")), f"no Triton model store for {profile.name} in {volume}"


def test_the_operators_cache_volume_is_filled_and_served_from_as_its_user(cpu_image, tmp_path):
    """The NIMCache/NIMService volume layout: NIM_CACHE_PATH=/model-store, UID 1000 GID 2000, the files at
    /model-store/<their path in the manifest>; the server then verifies and serves them from there."""
    tag, _, manifest = cpu_image
    volume = tmp_path / "model-store"
    volume.mkdir()
    volume.chmod(0o777)  # what fsGroup makes of the volume for the pod's GID
    for profile in manifest.profiles:
        done = _run_as_operator(tag, "--profile", profile.id, volume=volume, entrypoint="download-to-cache")
        assert done.returncode == 0, done.stdout + done.stderr
        for entry in profile.files.values():
            assert (volume / entry.uri).stat().st_size == entry.size
    logs = _serve_from_cache(tag, volume)
    assert "/model-store" in logs, logs
