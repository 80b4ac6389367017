"""The package as shipped: the wheel carries the manifest schema, the templates and the LICENSE; the sdist
carries the tests with their conftest and data, and its tests run from the unpacked archive; nimbuild's
own wheel for an image is byte-for-byte reproducible, from the source tree and from an installed wheel."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from nimbuild import __version__
from nimbuild.render import wheelhouse

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _source_copy(dest: Path) -> Path:
    """The checkout's tracked files (what a fresh clone has), copied: building never touches the checkout."""
    done = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("not a git checkout: the tracked files are unknown")
    for rel in filter(None, done.stdout.split("\0")):
        src = REPO / rel
        if src.is_symlink() or not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """(wheel, sdist) built from a copy of the checkout with the build backend installed here."""
    if not wheelhouse._has_build_backend():
        pytest.skip("setuptools>=77 is not installed here (the dev install has it)")
    root = _source_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    for kind in ("wheel", "sdist"):
        code = f"from setuptools import build_meta as b; print(b.build_{kind}({str(out)!r}))"
        done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist


def test_the_wheel_carries_the_schema_templates_license_and_console_scripts(dists):
    wheel, _ = dists
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"nimbuild-{__version__}.dist-info"
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
        license_text = next(zf.read(n).decode() for n in names if n.startswith(f"{info}/licenses/LICENSE"))
    assert {"nimbuild/data/manifest.schema.json", "nimbuild/templates/Dockerfile.j2", "nimbuild/skus.yaml"} <= names
    assert "Apache License" in license_text and "Version 2.0" in license_text
    for script in ("nimbuild", "list-model-profiles", "download-to-cache", "create-model-store"):
        assert f"{script} = nimbuild.cli:" in entry_points
    assert not any(n.startswith(("tests/", "recipes/")) for n in names)


def test_the_sdist_carries_the_tests_and_their_data_and_they_run_from_it(dists, tmp_path):
    _, sdist = dists
    with tarfile.open(sdist) as tf:
        tf.extractall(tmp_path, filter="data")
    (root,) = tmp_path.iterdir()
    for rel in (
        "LICENSE",
        "constraints.txt",
        "tests/conftest.py",
        "tests/render_support.py",
        "recipes/example-tiny.yaml",
        "recipes/models/example-tiny/config.json",
        "manifests/example-tiny.yaml",
        "nimbuild/data/manifest.schema.json",
    ):
        assert (root / rel).is_file(), rel
    env = {**os.environ, "PYTHONPATH": str(root)}
    probe = subprocess.run(
        [sys.executable, "-c", "import nimbuild; print(nimbuild.__file__)"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip().startswith(str(root)), probe  # the sdist's own code, not this checkout's
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_profiles.py",
            "tests/test_recipe.py",
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0 and " passed" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_images_nimbuild_wheel_is_reproducible_from_source_and_from_an_installed_wheel(tmp_path):
    if not wheelhouse._has_build_backend():
        pytest.skip("setuptools>=77 is not installed here (the dev install has it)")
    one = wheelhouse.own_wheel(tmp_path / "one")
    two = wheelhouse.own_wheel(tmp_path / "two")
    assert one.name == two.name == f"nimbuild-{__version__}-py3-none-any.whl" and _sha(one) == _sha(two)
    # installed from that wheel (not editable, no source tree): re-packed from its RECORD
    target = tmp_path / "site"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(one),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    code = (
        "import sys; from pathlib import Path; from nimbuild.render import wheelhouse as w; "
        "print(w.own_wheel(Path(sys.argv[1])))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    runs = [
        subprocess.run([sys.executable, "-c", code, str(tmp_path / d)], env=env, capture_output=True, text=True)
        for d in ("r1", "r2")
    ]
    assert all(r.returncode == 0 for r in runs), runs
    repacked = [Path(r.stdout.strip()) for r in runs]
    assert repacked[0].name == one.name and _sha(repacked[0]) == _sha(repacked[1])
    with zipfile.ZipFile(one) as a, zipfile.ZipFile(repacked[0]) as b:
        record = f"nimbuild-{__version__}.dist-info/RECORD"
        assert {n for n in a.namelist() if n != record} == {n for n in b.namelist() if n != record}
        assert all(a.read(n) == b.read(n) for n in a.namelist() if n != record)
