"""nimbuild.builder.engines.feeds: the pairs as engine feeds within the optimization profile."""

from __future__ import annotations

import numpy as np
import pytest

from nimbuild import skus
from nimbuild.builder.engines.feeds import evaluation_feeds, opt_feed
from nimbuild.builder.engines.plan import plan_engines
from nimbuild.fsutil import sha256_file
from nimbuild.thresholds import GateThresholds

from .engines_support import EXAMPLE_PAIRS, INPUTS, FakeSeam, write_recipe


def test_feeds_fit_the_profile_and_chunking_does_not_change_the_verdict(tmp_path, export_dir):
    from nimbuild.recipe import load_recipe

    small = load_recipe(write_recipe(tmp_path / "r", batch=(2, 2, 3), sequence=(8, 16, 64)))
    plan = plan_engines(small, skus.lookup("h100-sxm"), export_dir)
    feeds, pairs_sha = evaluation_feeds(small, plan)
    assert pairs_sha == sha256_file(EXAMPLE_PAIRS)
    for query in feeds:
        assert sum(chunk["rows"] for chunk in query) == 8  # 8 passages per query, all kept
        for chunk in query:
            for name in INPUTS:
                b, s = chunk["feed"][name].shape
                assert 2 <= b <= 3 and 8 <= s <= 64 and chunk["feed"][name].dtype == np.int64
    seam = FakeSeam()
    fp32 = export_dir / "onnx" / "fp32" / "model.onnx"
    chunked = seam.check_engine(export_dir / "onnx" / "fp16" / "model.onnx", fp32, feeds, GateThresholds(top1=0.95))
    big = load_recipe(write_recipe(tmp_path / "r2"))
    whole, _ = evaluation_feeds(big, plan_engines(big, skus.lookup("h100-sxm"), export_dir))
    unchunked = seam.check_engine(export_dir / "onnx" / "fp16" / "model.onnx", fp32, whole, GateThresholds(top1=0.95))
    assert chunked["gate"]["metrics"] == pytest.approx(unchunked["gate"]["metrics"], abs=1e-6)
    assert chunked["gate"]["passed"] and unchunked["gate"]["passed"]


def test_opt_feed_has_the_opt_shape(recipe, export_dir):
    plan = plan_engines(recipe, skus.lookup("h100-sxm"), export_dir)
    sample = {n: np.array([[5, 6, 7]], np.int64) for n in INPUTS}
    feed = opt_feed(plan, sample)
    assert {n: a.shape for n, a in feed.items()} == {n: (4, 16) for n in INPUTS}
    assert feed["input_ids"][3, :4].tolist() == [5, 6, 7, 5]
