"""The serving images' Python packages, inside their build context: ``wheels/<image>/``.

An image build must resolve nothing from an index: an index at build time is a
network dependency, and for a name that is on no public index (nimbuild) it is an
open door for dependency confusion (whoever registers the name there would be
installed). So the context carries

- nimbuild's own wheel, built from the running nimbuild (its source tree, or the
  installed distribution re-packed from its RECORD), with fixed timestamps so that
  the same source gives the same bytes;
- every serving dependency, downloaded on this host with ``pip download`` for the
  image's platform and Python (not this host's: ``--platform``, ``--python-version``,
  ``--abi``), binary wheels only;
- ``requirements.txt``: every one of those files as ``name==version --hash=sha256:...``,
  so the Dockerfile's ``pip install --no-index --require-hashes`` installs exactly
  these bytes, and ``wheelhouse.json``: the inputs, to reuse the folder when they
  have not changed.

pip's own configuration (``PIP_INDEX_URL``, ``PIP_FIND_LINKS``, a pip.conf) applies
to the download, so a private index or a local mirror works as it does for pip.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.fsutil import sha256_file

WHEELS_DIR = "wheels"  # in the build context (the manifest's folder)
RECORD_FILE = "wheelhouse.json"
REQUIREMENTS = "requirements.txt"
# 1980-01-01, the earliest time a zip can hold: the wheel's bytes do not depend on when it was built.
SOURCE_DATE_EPOCH = 315532800
_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}
_PY = re.compile(r"^3\.(\d{1,2})$")


@dataclass(frozen=True)
class ImageTarget:
    """What one serving image runs: its nimbuild extras, its Python, its C library and CPU architecture."""

    name: str  # "cpu" | "gpu": also the folder wheels/<name>/
    extras: str  # "cpu" | "runtime,triton"
    python: str  # "3.11": the image's python3
    glibc: str  # "2.36": the image's C library (manylinux wheels up to this version run there)
    arch: str  # "x86_64" | "aarch64"

    @property
    def folder(self) -> str:
        return f"{WHEELS_DIR}/{self.name}"

    def platform_tags(self) -> list[str]:
        """Every manylinux tag a wheel may carry to run on this image, newest first.

        pip's ``--platform`` matches the tags given literally (pip 23 does not widen
        ``manylinux_2_36`` to older ones), so all of them are listed.
        """
        major, minor = (int(x) for x in self.glibc.split("."))
        tags = [f"manylinux_{major}_{m}_{self.arch}" for m in range(minor, 16, -1)]
        tags.append(f"manylinux2014_{self.arch}")
        if self.arch == "x86_64":
            tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
        return tags

    def pip_target_args(self) -> list[str]:
        abi = "cp3" + self.python.split(".")[1]
        args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", self.python, "--abi", abi]
        for tag in self.platform_tags():
            args += ["--platform", tag]
        return args


def host_arch() -> str:
    return _ARCHES.get(platform.machine().lower(), platform.machine().lower())


def check_python_version(text: str, option: str) -> str:
    if not _PY.match(text or ""):
        raise NimbuildError(f"{option} {text!r} is not a Python version", hint="give major.minor, e.g. 3.11")
    return text


def check_arch(text: str) -> str:
    arch = _ARCHES.get((text or "").lower().removeprefix("linux/"))
    if arch is None:
        raise NimbuildError(
            f"--image-arch {text!r} is not an architecture nimbuild builds images for",
            hint="use x86_64 (linux/amd64) or aarch64 (linux/arm64)",
        )
    return arch


def cpu_target(python: str = "3.11", arch: str | None = None) -> ImageTarget:
    """The CPU image: ``python:<python>-slim-bookworm`` by default (Debian 12: glibc 2.36)."""
    return ImageTarget("cpu", "cpu", check_python_version(python, "--cpu-python"), "2.36", arch or host_arch())


def gpu_target(python: str = "3.12", arch: str | None = None) -> ImageTarget:
    """The GPU image: NVIDIA's Triton container, Ubuntu 24.04 (glibc 2.39) with Python 3.12 since 24.12."""
    return ImageTarget(
        "gpu", "runtime,triton", check_python_version(python, "--gpu-python"), "2.39", arch or host_arch()
    )


# --------------------------------------------------------------------------- nimbuild's own wheel


def _source_tree() -> Path | None:
    """The project folder the running nimbuild was imported from, when it is a source checkout."""
    import nimbuild

    root = Path(nimbuild.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return None
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        text = pyproject.read_text(encoding="utf-8")
        return root if re.search(r'^name\s*=\s*"nimbuild"', text, re.M) else None
    with open(pyproject, "rb") as fh:
        return root if tomllib.load(fh).get("project", {}).get("name") == "nimbuild" else None


def _sdist_files(root: Path) -> list[str]:
    """What the wheel is built from: the project metadata and the package, never caches or build debris."""
    files = [name for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in") if (root / name).is_file()]
    for path in sorted((root / "nimbuild").rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and "__pycache__" not in rel and not rel.endswith((".pyc", ".pyo")):
            files.append(rel)
    return files


def _build_from_source(root: Path, dest: Path) -> Path:
    """``pip wheel --no-deps`` on a clean copy of the package (the checkout stays untouched)."""
    from nimbuild import __version__

    with tempfile.TemporaryDirectory(prefix="nimbuild-wheel-") as tmp:
        src = Path(tmp) / "src"
        for rel in _sdist_files(root):
            target = src / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, target)
            os.utime(target, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))
        out = Path(tmp) / "dist"
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)]
        if _has_build_backend():
            cmd[5:5] = ["--no-build-isolation", "--no-index"]
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH), "PYTHONHASHSEED": "0"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=600)
        wheels = sorted(out.glob(f"nimbuild-{__version__}-*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            raise NimbuildError(
                f"{root}: building nimbuild's wheel failed: {(done.stderr or done.stdout).strip()[-800:]}",
                hint="check that `python -m pip wheel --no-deps .` works in the checkout "
                "(it needs setuptools>=77, from the index unless installed)",
            )
        dest.mkdir(parents=True, exist_ok=True)
        final = dest / wheels[0].name
        shutil.copyfile(wheels[0], final)
        return final


def _has_build_backend() -> bool:
    """setuptools >= 77 here: the wheel builds without fetching a build environment from an index."""
    try:
        from importlib.metadata import version

        return int(version("setuptools").split(".")[0]) >= 77
    except Exception:  # not installed, or an odd version string
        return False


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _repack_installed(dest: Path) -> Path:
    """The installed (non-editable) distribution, as the wheel it was installed from.

    Its RECORD lists every file; byte-compiled files, console scripts (the
    installer writes them) and the installer's own records are left out.
    """
    from importlib.metadata import distribution

    dist = distribution("nimbuild")
    files = [f for f in (dist.files or []) if not str(f).startswith("..")]
    info = next((f for f in files if str(f).endswith(".dist-info/WHEEL")), None)
    if info is None:
        raise NimbuildError(
            "the installed nimbuild has no WHEEL record to re-pack",
            hint="pass --nimbuild-wheel with the wheel it was installed from",
        )
    dist_info = str(info).rsplit("/", 1)[0]
    tags = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if line.startswith("Tag:")]
    skip = {f"{dist_info}/{n}" for n in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json")}
    members = sorted(
        str(f)
        for f in files
        if str(f) not in skip and "__pycache__" not in str(f) and not str(f).endswith((".pyc", ".pyo"))
    )
    name = f"nimbuild-{dist.version}-{tags[0] if tags else 'py3-none-any'}.whl"
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / name
    tmp = dest / f".{name}.partial"
    record = []
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for member in members:
            data = Path(dist.locate_file(member)).read_bytes()
            zf.writestr(zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0)), data)
            record.append(_record_line(member, data))
        record.append(f"{dist_info}/RECORD,,")
        zf.writestr(zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=(1980, 1, 1, 0, 0, 0)), "\n".join(record) + "\n")
    os.replace(tmp, final)
    return final


def _is_editable() -> bool:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        text = distribution("nimbuild").read_text("direct_url.json")
    except PackageNotFoundError:
        return False
    return bool(text) and bool(json.loads(text).get("dir_info", {}).get("editable"))


def own_wheel(dest: Path, wheel: str | os.PathLike | None = None) -> Path:
    """nimbuild's wheel into ``dest``: ``wheel`` when given, else built from the running nimbuild."""
    from nimbuild import __version__

    if wheel is not None:
        wheel = Path(wheel)
        if not wheel.is_file() or not wheel.name.startswith(f"nimbuild-{__version__}-") or wheel.suffix != ".whl":
            raise NimbuildError(
                f"--nimbuild-wheel {wheel}: not a nimbuild {__version__} wheel file",
                hint=f"give the path of nimbuild-{__version__}-py3-none-any.whl (pip wheel --no-deps -w DIR .)",
            )
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wheel, dest / wheel.name)
        return dest / wheel.name
    root = _source_tree()
    if root is not None:
        return _build_from_source(root, dest)
    if _is_editable():
        raise NimbuildError(
            "nimbuild is installed editable, but its source tree was not found",
            hint="pass --nimbuild-wheel with a wheel built from it",
        )
    return _repack_installed(dest)


# --------------------------------------------------------------------------- the wheelhouse


def _wheel_name_version(filename: str) -> tuple[str, str]:
    name, version = filename.split("-")[:2]
    return re.sub(r"[-_.]+", "-", name).lower(), version


def requirements_text(folder: Path, target: ImageTarget) -> str:
    """Every wheel of ``folder`` pinned by version and sha256 (nimbuild with the image's extras)."""
    lines = [
        f"# Rendered by nimbuild for the {target.name} image (Python {target.python}, glibc {target.glibc}, "
        f"{target.arch}): every file of this folder, by sha256.",
        "# Installed with: pip install --no-index --find-links . --require-hashes -r requirements.txt",
    ]
    for wheel in sorted(folder.glob("*.whl")):
        name, version = _wheel_name_version(wheel.name)
        req = f"nimbuild[{target.extras}]" if name == "nimbuild" else name
        lines.append(f"{req}=={version} --hash=sha256:{sha256_file(wheel)}")
    return "\n".join(lines) + "\n"


def _reusable(final: Path, record: dict) -> bool:
    """The folder holds what ``record`` asks for, every file with its sha256 in requirements.txt."""
    try:
        if json.loads((final / RECORD_FILE).read_text(encoding="utf-8")) != record:
            return False
        pins = (final / REQUIREMENTS).read_text(encoding="utf-8")
    except (OSError, ValueError):
        return False
    wheels = sorted(final.glob("*.whl"))
    return bool(wheels) and all(f"--hash=sha256:{sha256_file(w)}" in pins for w in wheels)


@dataclass
class Wheelhouse:
    target: ImageTarget
    folder: Path
    wheels: list[str]
    nimbuild_wheel: str
    reused: bool

    def to_dict(self) -> dict:
        return {
            "image": self.target.name,
            "target": asdict(self.target),
            "folder": str(self.folder),
            "wheels": self.wheels,
            "nimbuild_wheel": self.nimbuild_wheel,
            "reused": self.reused,
        }


def write_wheelhouse(
    context: Path,
    target: ImageTarget,
    *,
    nimbuild_wheel: str | os.PathLike | None = None,
    out=None,
    force: bool = False,
) -> Wheelhouse:
    """``context/wheels/<image>/``: nimbuild's wheel, its serving dependencies for ``target``, the pins.

    Reused as it is when nimbuild's wheel and the target are unchanged. A folder there holding a
    file nimbuild did not write (the context's ledger, nimbuild.outdir; or no wheelhouse.json) is
    refused unless ``force``; the context is locked while it is written.
    """
    from nimbuild.outdir import OutputFolder

    folder = OutputFolder(context)
    with folder.locked("nimbuild render --wheelhouse"):  # re-entrant: render holds it
        folder.check_replaceable([target.folder], force=force, action=f"the {target.name} image's wheelhouse")
        final = context / target.folder
        if not force and final.exists() and any(final.iterdir()) and not (final / RECORD_FILE).is_file():
            raise NimbuildError(
                f"{final}: exists and was not written by nimbuild (no {RECORD_FILE})",
                hint="move it away, or pass --force to replace it; nimbuild writes the image's wheelhouse there",
            )
        folder.expect_any(target.folder)  # pip writes the wheels: the ledger takes what is there afterwards
        try:
            return _write_wheelhouse(final, target, nimbuild_wheel, out)
        finally:
            folder.record([target.folder])


def _write_wheelhouse(
    final: Path, target: ImageTarget, nimbuild_wheel: str | os.PathLike | None, out: Any
) -> Wheelhouse:
    from nimbuild.fsutil import atomic_write_text, staging_dir, write_json

    with tempfile.TemporaryDirectory(prefix="nimbuild-own-wheel-") as tmp:
        own = own_wheel(Path(tmp), nimbuild_wheel)
        record = {"target": asdict(target), "nimbuild_wheel": own.name, "nimbuild_sha256": sha256_file(own)}
        if _reusable(final, record):
            return Wheelhouse(target, final, sorted(w.name for w in final.glob("*.whl")), own.name, True)
        if out is not None:
            out.note(
                f"downloading the {target.name} image's wheels (Python {target.python}, {target.arch}) into {final}"
            )
        with staging_dir(final) as staged:
            shutil.copyfile(own, staged / own.name)
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                *target.pip_target_args(),
                "--dest",
                str(staged),
                f"{staged / own.name}[{target.extras}]",
            ]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
            if done.returncode != 0:
                tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
                raise NimbuildError(
                    f"{final}: pip could not download the {target.name} image's wheels for Python "
                    f"{target.python} on {target.arch}: {tail}",
                    hint="this step needs an index (PyPI, or PIP_INDEX_URL / PIP_FIND_LINKS for a mirror); "
                    "every dependency must have a binary wheel for that Python and platform",
                )
            atomic_write_text(staged / REQUIREMENTS, requirements_text(staged, target))
            write_json(staged / RECORD_FILE, record)
            wheels = sorted(w.name for w in staged.glob("*.whl"))
    return Wheelhouse(target, final, wheels, own.name, False)
