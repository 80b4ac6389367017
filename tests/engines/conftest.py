"""Fixtures of the engines tests (tests/engines/): an export folder as
`nimbuild export` leaves it, with tiny hand-made graphs, and a recipe over the bundled example model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from .engines_support import EXAMPLE_MODEL, INPUTS, scorer_graph, write_recipe


@pytest.fixture(scope="session")
def vocab_size() -> int:
    return len(json.loads((EXAMPLE_MODEL / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"])


@pytest.fixture(scope="session")
def export_template(tmp_path_factory, vocab_size) -> Path:
    """An export dir as `nimbuild export` leaves it (internals.md), with tiny hand-made graphs.

    fp16 is the FP32 scorer with FP16 weights (same ranking); fp8 negates the
    weights, so its ranking is reversed and its engine must fail the check.
    """
    out = tmp_path_factory.mktemp("engines-export") / "out"
    rng = np.random.default_rng(0)
    w = rng.normal(0.0, 1.0, vocab_size).astype(np.float32)
    scorer_graph(out / "onnx" / "fp32" / "model.onnx", vocab_size, w)
    scorer_graph(out / "onnx" / "fp16" / "model.onnx", vocab_size, w, dtype=np.float16)
    scorer_graph(out / "onnx" / "fp8" / "model.onnx", vocab_size, -w)
    tok = out / "tokenizer"
    tok.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy(EXAMPLE_MODEL / name, tok / name)
    report = {
        "model": "tiny-engines",
        "model_revision": "0123456789abcdef",
        "inputs": list(INPUTS),
        "recipe_sha256": "f" * 64,
        "max_batch_size": 8,
        "max_sequence_length": 64,
        "precisions": {p: {"status": "passed", "path": f"onnx/{p}/model.onnx"} for p in ("fp32", "fp16", "fp8")},
    }
    (out / "export_report.json").write_text(json.dumps(report), encoding="utf-8")
    return out


@pytest.fixture
def export_dir(export_template, tmp_path) -> Path:
    dst = tmp_path / "out"
    shutil.copytree(export_template, dst)
    return dst


@pytest.fixture
def recipe(tmp_path):
    from nimbuild.recipe import load_recipe

    return load_recipe(write_recipe(tmp_path / "recipe"))
