"""Shared fixtures: tiny models built on the spot, the bundled example, one shared export.

Everything heavy is session-scoped and built once per test run: a tiny model per
architecture (~0.1 s each) and one FP32 export of the bundled example that every
later stage (precision, engines, manifest, render, serve) can start from.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_RECIPE = REPO / "recipes" / "example-tiny.yaml"
EXAMPLE_MODEL = REPO / "recipes" / "models" / "example-tiny"
EXAMPLE_PAIRS = REPO / "recipes" / "pairs" / "example-tiny.jsonl"


# ----------------------------------------------------------------------------- GPU marker


def _gpu_skip_reason() -> str | None:
    """Why `@pytest.mark.gpu` tests cannot run here (None when they can)."""
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return "needs TensorRT (not installed here)"
    try:
        import pynvml

        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
    except Exception:
        return "needs an NVIDIA GPU (NVML found none)"
    return None if count else "needs an NVIDIA GPU (none found)"


def pytest_collection_modifyitems(config, items):
    if not any("gpu" in item.keywords for item in items):
        return
    reason = _gpu_skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ----------------------------------------------------------------------------- paths


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def example_recipe() -> Path:
    """Path of recipes/example-tiny.yaml (load it with nimbuild.recipe.load_recipe)."""
    return EXAMPLE_RECIPE


@pytest.fixture(scope="session")
def example_model_dir() -> Path:
    """The committed tiny BERT cross-encoder (read-only: copy it before changing anything)."""
    return EXAMPLE_MODEL


@pytest.fixture(scope="session")
def example_pairs() -> Path:
    """recipes/pairs/example-tiny.jsonl: 12 English queries x 8 passages, graded labels (2 answers, 1 related)."""
    return EXAMPLE_PAIRS


TESTBED_RECIPE = REPO / "recipes" / "testbed-minilm-l6.yaml"


@pytest.fixture(scope="session")
def testbed_model_dir() -> Path:
    """The real test bed's model folder (all-MiniLM-L6-v2 fine-tuned as a cross-encoder), read-only.

    Built by `make testbed` (python -m testbed build) into .cache/testbed/<key>/; this fixture
    never trains. Not built: the test skips with the command to run, except under `make test`
    (NIMBUILD_REQUIRE_TESTBED=1, as CI runs it), where it fails, so that CI cannot skip the
    real-weights tests silently.
    """
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from testbed.train import cache_key, cached_model_dir

    found = cached_model_dir()
    if found is None:
        why = f"the real test bed is not built for key {cache_key()}: run `make testbed` (trains once, minutes)"
        if os.environ.get("NIMBUILD_REQUIRE_TESTBED") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return found


@pytest.fixture(scope="session")
def testbed_recipe(testbed_model_dir) -> Path:
    """recipes/testbed-minilm-l6.yaml (its source is .cache/testbed/current/model: the built test bed)."""
    return TESTBED_RECIPE


# ----------------------------------------------------------------------------- tiny models


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Factory: ``tiny_model_dir("roberta")`` -> folder of a tiny random cross-encoder.

    Architectures: nimbuild.builder.tiny.ARCHITECTURES (bert, distilbert, electra,
    roberta, xlm-roberta, deberta-v2, modernbert). Built once per session and
    per (architecture, options); treat the folder as read-only.
    """
    from nimbuild.builder.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    cache: dict[tuple, Path] = {}

    def make(architecture: str = "bert", **options) -> Path:
        key = (architecture, tuple(sorted(options.items())))
        if key not in cache:
            name = architecture + "".join(f"-{k}{v}" for k, v in sorted(options.items()))
            cache[key] = build_tiny_model(root / name, architecture, **options)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def exported_example(tmp_path_factory) -> Path:
    """One FP32 export of the bundled example (OUT dir as in docs/internals.md), shared by the session.

    Only fp32 is built here (fast); tests of later stages copy this folder
    (``shutil.copytree``) before writing into it.
    """
    from nimbuild.builder.pipeline import run_export
    from nimbuild.output import Output

    out = tmp_path_factory.mktemp("exported") / "example-tiny"
    run_export(EXAMPLE_RECIPE, out, precisions=["fp32"], pairs=None, out=Output(json_mode=False, quiet=True))
    return out


@pytest.fixture
def exported_copy(exported_example, tmp_path) -> Path:
    """A private, writable copy of ``exported_example``."""
    dst = tmp_path / "export"
    shutil.copytree(exported_example, dst)
    return dst


@pytest.fixture
def hf_offline(monkeypatch, tmp_path):
    """An empty, offline Hugging Face cache (HF_HOME) for tests that must not touch the network."""
    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return home


HF_TEST_SHA = "0123456789abcdef0123456789abcdef01234567"


def _make_hf_cache(hub: Path, repo: str, model_dir: Path, sha: str = HF_TEST_SHA, ref: str | None = "main") -> Path:
    """The layout huggingface_hub keeps: hub/models--org--name/{snapshots/<sha>/..., refs/main}."""
    root = hub / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / sha
    shutil.copytree(model_dir, snap)
    if ref:
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(sha)
    return snap


@pytest.fixture(scope="session")
def make_hf_cache():
    """``make_hf_cache(hub_dir, "org/name", model_dir, sha=..., ref="main") -> snapshot folder``.

    Use with ``hf_offline`` (hub_dir = hf_offline / "hub") to test hub resolution with no network.
    """
    return _make_hf_cache


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
