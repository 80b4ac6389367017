"""The INT8 and FP8 schemes: explicit parameters, fusions that are not silently missed, SmoothQuant that
keeps the FP32 function, layers kept out of 8 bits, and library chatter kept off the terminal.

Accuracy on real weights is measured in benchmarks/bench_precision.py (RESULTS-precision.md): the
example here is a tiny random model, so these tests check behaviour, not a ranking quality.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from nimbuild.builder.precision.common import cpu_session, library_chatter  # noqa: E402
from nimbuild.builder.precision.int8 import (  # noqa: E402
    DEFAULT_SCHEME,
    Int8Scheme,
    attention_shape_of_graph,
    build_cpu_int8,
    fuse,
    matmul_classes,
    smooth,
)

ARCH = "BertForSequenceClassification"


@pytest.fixture(scope="module")
def example(exported_example, example_pairs):
    from nimbuild.builder import pairs as pairs_mod

    report = json.loads((exported_example / "export_report.json").read_text())
    tokenizer = pairs_mod.load_tokenizer(exported_example / "tokenizer")
    encoded = pairs_mod.encode(tokenizer, pairs_mod.load_pairs(example_pairs), 512, report["inputs"])
    config = json.loads((exported_example / "tokenizer" / "config.json").read_text())
    return {"fp32": exported_example / "onnx/fp32/model.onnx", "feeds": encoded, "config": config}


def _logits(path_or_model, feeds) -> list[np.ndarray]:
    if not isinstance(path_or_model, (str, Path)):
        path_or_model = path_or_model.SerializeToString()
    sess = cpu_session(path_or_model)
    names = [i.name for i in sess.get_inputs()]
    return [sess.run(None, {n: f[n] for n in names})[0].ravel() for f in feeds]


def test_attention_shape_is_read_from_the_graph_where_onnx_runtime_cannot(example):
    """Our exports reshape to [batch, seq, -1, head_size]: ORT's own detection gives up on the -1."""
    model = onnx.load(example["fp32"])
    cfg = example["config"]
    assert attention_shape_of_graph(model) == (cfg["num_attention_heads"], cfg["hidden_size"])


def test_every_attention_layer_fuses_without_a_config_and_nothing_reaches_the_terminal(example, tmp_path, capfd):
    """The bug behind "Failed to detect num_heads and hidden_size" (x6): bench_serve called build_cpu_int8 with
    no head count, ORT skipped the Attention fusion of every layer and said so on stderr. Now the graph
    tells the shape, every layer fuses, and ORT's chatter goes to the report's notes, not the terminal."""
    lone = tmp_path / "lone" / "model.onnx"  # no config.json anywhere near it
    lone.parent.mkdir()
    shutil.copy(example["fp32"], lone)
    capfd.readouterr()
    info = build_cpu_int8(lone, tmp_path / "int8" / "model.onnx", ARCH, calibration=example["feeds"])
    captured = capfd.readouterr()
    layers = example["config"]["num_hidden_layers"]
    assert info["fusions"].get("Attention") == layers
    assert not [n for n in info["notes"] if n.startswith("attention fused in")]
    assert "Failed to detect" not in captured.err + captured.out
    assert "consider to run pre-processing" not in (captured.err + captured.out).lower()
    q = onnx.load(tmp_path / "int8" / "model.onnx")
    assert sum(1 for n in q.graph.node if n.op_type == "QAttention") == layers


def test_a_missed_attention_fusion_is_reported(example, monkeypatch):
    from nimbuild.builder.precision import int8

    monkeypatch.setattr(int8, "attention_shape_of_graph", lambda model: (0, 0))
    _, stats, notes = fuse(example["fp32"], ARCH, num_heads=0, hidden_size=0)
    layers = example["config"]["num_hidden_layers"]
    assert not stats.get("Attention")
    assert f"attention fused in 0 of {layers} layers" in " ".join(notes)
    assert any("Failed to detect num_heads" in n for n in notes)  # ORT's words, kept for the report


def test_library_chatter_is_collected_counted_and_not_printed(capfd, caplog):
    """Library records go to the collector only: not to stderr, not to handlers an application set up
    (pytest's capture handler stands for one here); nimbuild's own records still reach those handlers."""
    caplog.set_level(logging.WARNING)
    with library_chatter() as chatter:
        logging.getLogger("fusion_attention").warning("Failed to detect %s", "num_heads")
        logging.getLogger("fusion_attention").warning("Failed to detect %s", "num_heads")
        logging.warning("Please consider to run pre-processing before quantization")
        logging.getLogger("nimbuild.test").warning("ours")  # nimbuild's own records are not library chatter
        logging.getLogger("fusion_attention").error("a real error")  # errors still show
    captured = capfd.readouterr()
    assert chatter.messages() == [
        "Failed to detect num_heads (x2)",
        "Please consider to run pre-processing before quantization",
    ]
    assert "Failed to detect" not in captured.err + captured.out and "pre-processing" not in captured.err
    seen = [r.getMessage() for r in caplog.records]
    assert "ours" in seen and "a real error" in seen
    assert not [m for m in seen if "Failed to detect" in m or "pre-processing" in m]
    logging.getLogger("fusion_attention").warning("after")  # the collector is gone again
    assert "after" in [r.getMessage() for r in caplog.records]


def test_the_scheme_is_explicit_and_never_read_from_the_build_host(example, tmp_path, monkeypatch):
    """7-bit vs full 8-bit weights come from the scheme (the caller's CPU class), not from /proc/cpuinfo."""
    import nimbuild.builder.precision.common as common

    def no_host():
        raise AssertionError("build_cpu_int8 must not look at the build host")

    monkeypatch.setattr(common, "cpu_int8_support", no_host)
    widths = {}
    for reduce_range in (True, False):
        out = tmp_path / f"rr{reduce_range}" / "model.onnx"
        scheme = Int8Scheme(reduce_range=reduce_range, smooth_alpha=None)
        info = build_cpu_int8(example["fp32"], out, ARCH, calibration=example["feeds"], scheme=scheme)
        assert info["scheme"]["reduce_range"] is reduce_range
        model = onnx.load(out)
        ints = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
        widths[reduce_range] = max(int(np.abs(a.astype(np.int32)).max()) for a in ints if a.size > 16)
    assert widths[True] <= 64 < widths[False] <= 127
    with pytest.raises(ValueError, match="mode"):
        Int8Scheme(mode="dynamc")


def test_per_channel_weights_have_one_scale_per_output_column(example, tmp_path):
    out = tmp_path / "pc" / "model.onnx"
    build_cpu_int8(example["fp32"], out, ARCH, calibration=example["feeds"], scheme=DEFAULT_SCHEME)
    model = onnx.load(out)
    inits = {t.name: t for t in model.graph.initializer}
    checked = 0
    for node in model.graph.node:
        if node.op_type == "MatMulInteger":  # A, B, a_zero_point, b_zero_point (one per column of B)
            weight, per_column = inits[node.input[1]], inits[node.input[3]]
        elif node.op_type == "QAttention":  # input, weight, bias, input_scale, weight_scale, ...
            weight, per_column = inits[node.input[1]], inits[node.input[4]]
        else:
            continue
        assert list(per_column.dims) == [weight.dims[1]], node.name
        checked += 1
    assert checked >= 4 * 2 - 2  # QKV (fused), attention-out, FFN-up, FFN-down per layer


def test_smoothquant_keeps_the_fp32_function_and_tames_the_outlier_channels(example):
    """X/s and s*W cancel in FP32: the smoothed graph's logits equal the fused graph's; the activations'
    channel spread (what a per-tensor INT8 scale must cover) shrinks."""
    model, _, _ = fuse(example["fp32"], ARCH, check_feeds=None)
    items = matmul_classes(model)
    assert {i.cls for i in items} >= {"attention_qkv", "attention_out", "ffn_up", "ffn_down"}
    before = _logits(model, example["feeds"])
    facts = smooth(model, example["feeds"], items, alpha=0.5)
    after = _logits(model, example["feeds"])
    assert facts["smoothed"] == len({i.activation for i in items})
    assert facts["outlier_ratio_after"] < facts["outlier_ratio_before"]
    worst = max(float(np.max(np.abs(a - b))) for a, b in zip(before, after, strict=True))
    assert worst < 1e-4 * max(1.0, max(float(np.max(np.abs(b))) for b in before))
    muls = [n for n in model.graph.node if n.name.endswith("_SmoothQuant")]
    assert len(muls) == facts["smoothed"]


def test_keep_fp32_leaves_those_matmuls_in_float(example, tmp_path):
    out = tmp_path / "keep" / "model.onnx"
    info = build_cpu_int8(
        example["fp32"], out, ARCH, calibration=example["feeds"], scheme=Int8Scheme(keep_fp32=("ffn_down", "ffn_up:0"))
    )
    layers = example["config"]["num_hidden_layers"]
    assert len(info["fp32_matmuls"]) == layers + 1
    model = onnx.load(out)
    float_matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    assert set(info["fp32_matmuls"]) <= float_matmuls
    assert all("output/dense" in n or "layer.0/intermediate" in n for n in info["fp32_matmuls"])
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in model.graph.node)


def test_fp8_scheme_keeps_the_named_projections_and_the_bmms_out_of_fp8(example, tmp_path):
    from nimbuild.builder.precision.fp8 import Fp8Scheme, build_fp8

    out = tmp_path / "fp8" / "model.onnx"
    info = build_fp8(example["fp32"], out, example["feeds"], Fp8Scheme(attention_bmms=False, keep=("ffn_down",)))
    model = onnx.load(out)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    layers = example["config"]["num_hidden_layers"]
    reads_dq = lambda n: any(producers.get(i) == "DequantizeLinear" for i in n.input[:2])  # noqa: E731
    matmuls = [n for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    down = [n for n in matmuls if "/output/dense/" in n.name and "attention" not in n.name]
    assert len(down) == layers and not any(reads_dq(n) for n in down)
    bmms = [n for n in matmuls if "/attention/self/MatMul" in n.name]
    assert bmms and not any(reads_dq(n) for n in bmms)
    assert any(reads_dq(n) for n in matmuls if "intermediate" in n.name)
    assert info["counts"]["kept"] == layers and info["scheme"] == {"attention_bmms": False, "keep": ["ffn_down"]}
