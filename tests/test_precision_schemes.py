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
)
from nimbuild.builder.precision.smoothquant import matmul_classes, smooth  # noqa: E402

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
    info = build_cpu_int8(lone, tmp_path / "int8" / "model.onnx", ARCH, calibration=example["feeds"], reduce_range=True)
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
    """7-bit vs full 8-bit weights come from the caller (the CPU class's reduce_range), not from /proc/cpuinfo."""
    from nimbuild import cpu_isa

    def no_host(*args, **kwargs):
        raise AssertionError("build_cpu_int8 must not look at the build host")

    monkeypatch.setattr(cpu_isa, "detect_cpu", no_host)
    widths = {}
    for reduce_range in (True, False):
        out = tmp_path / f"rr{reduce_range}" / "model.onnx"
        scheme = Int8Scheme(smooth_alpha=None)
        info = build_cpu_int8(
            example["fp32"], out, ARCH, calibration=example["feeds"], reduce_range=reduce_range, scheme=scheme
        )
        assert info["reduce_range"] is reduce_range
        model = onnx.load(out)
        ints = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
        widths[reduce_range] = max(int(np.abs(a.astype(np.int32)).max()) for a in ints if a.size > 16)
    assert widths[True] <= 64 < widths[False] <= 127
    with pytest.raises(ValueError, match="mode"):
        Int8Scheme(mode="dynamc")


def test_per_channel_weights_have_one_scale_per_output_column(example, tmp_path):
    out = tmp_path / "pc" / "model.onnx"
    build_cpu_int8(example["fp32"], out, ARCH, calibration=example["feeds"], reduce_range=True, scheme=DEFAULT_SCHEME)
    model = onnx.load(out)
    inits = {t.name: t for t in model.graph.initializer}
    checked = 0
    for node in model.graph.node:
        if node.op_type == "MatMulInteger" and len(node.input) > 3:  # A, B, a_zero_point, b_zero_point per column
            weight, per_column = inits[node.input[1]], inits[node.input[3]]
        elif node.op_type == "MatMulInteger":  # per-token: symmetric weights, the scales in the epilogue's Mul
            weight, per_column = inits[node.input[1]], inits[node.name.rsplit("_", 1)[0] + "_weight_scale"]
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
        example["fp32"],
        out,
        ARCH,
        calibration=example["feeds"],
        reduce_range=True,
        scheme=Int8Scheme(keep_fp32=("ffn_down", "ffn_up:0"), per_token=()),
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
    assert info["counts"]["kept"] == layers
    assert info["scheme"] == {**Fp8Scheme().to_dict(), "attention_bmms": False, "keep": ["ffn_down"]}


# ----------------------------------------------------------------------------- per-token activations


def _one_matmul(k: int, n: int, seed: int = 0):
    """A graph Y = X @ W (X [batch, seq, k]), opset 18, and its weight."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(seed).normal(size=(k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="layer.0/output/dense/MatMul")],
        "one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", n])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9), w


def _run(model, x):
    return cpu_session(model.SerializeToString()).run(None, {"x": x})[0]


@pytest.mark.parametrize("opset", [13, 18])
def test_per_token_matmul_computes_the_integer_arithmetic_it_describes(opset):
    """Each row's own asymmetric uint8 grid, int8 weights per column, exact integer GEMM, float epilogue:
    the graph equals that arithmetic done in numpy (to float rounding), whatever the opset's Reduce form."""
    from nimbuild.builder.precision.per_token import quantize_per_token, weight_int8

    model, w = _one_matmul(48, 24)
    model.opset_import[0].version = opset
    x = (np.random.default_rng(1).normal(size=(2, 5, 48)) * np.linspace(0.1, 3, 5)[None, :, None]).astype(np.float32)
    x[0, 0] = np.abs(x[0, 0])  # an all-positive row: its grid starts at 0
    x[1, 1] = 0.0  # an all-zero row gives exactly 0
    assert quantize_per_token(model, ["layer.0/output/dense/MatMul"], reduce_range=True) == 1
    assert [n.op_type for n in model.graph.node].count("MatMulInteger") == 1
    got = _run(model, x)
    wq, ws = weight_int8(w, reduce_range=True, per_channel=True)
    assert int(np.abs(wq).max()) == 63
    lo, hi = np.minimum(x.min(-1, keepdims=True), 0), np.maximum(x.max(-1, keepdims=True), 0)
    scale = np.maximum(hi - lo, 1e-8) / 255
    neg_zp = np.round(lo / scale)
    q = np.clip(np.round(x / scale) - neg_zp, 0, 255)
    want = scale * ws * (q @ wq.astype(np.float64) + neg_zp * wq.astype(np.float64).sum(0))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    assert np.all(got[1, 1] == 0.0)
    exact = x @ w
    assert float(np.abs(got - exact).max()) < 0.05 * float(np.abs(exact).max())


def test_one_outlier_token_does_not_coarsen_the_other_tokens():
    """The point of per-token scales: a token 100x the others leaves their error as it was; one scale
    per batch (ORT's DynamicQuantizeMatMul) loses them."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from nimbuild.builder.precision.per_token import quantize_per_token

    model, w = _one_matmul(64, 32, seed=2)
    x = np.random.default_rng(3).normal(size=(1, 8, 64)).astype(np.float32)
    spiked = x.copy()
    spiked[0, 0] *= 100.0
    tokenwise = onnx.ModelProto()
    tokenwise.CopyFrom(model)
    quantize_per_token(tokenwise, ["layer.0/output/dense/MatMul"], reduce_range=True)
    err = lambda y, xx: float(np.abs(y[0, 1:] - (xx @ w)[0, 1:]).max())  # noqa: E731
    calm, spiky = err(_run(tokenwise, x), x), err(_run(tokenwise, spiked), spiked)
    assert spiky == pytest.approx(calm, rel=1e-5)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(model, src)
        with library_chatter():
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
        batch = onnx.load(dst)
    assert err(_run(batch, spiked), spiked) > 10 * spiky


def test_default_scheme_quantizes_ffn_down_per_token_and_the_twin_agrees_with_7_bit_weights(example, tmp_path):
    """The shipped scheme: FFN-down per token (one MatMulInteger per layer, no per-batch quantizer on it),
    the rest per batch; with 7-bit weights nothing saturates, so the exact twin (the
    non-saturating kernel) gives the same logits: the graph computes the same on every x86-64 CPU."""
    from nimbuild.builder.precision.exact import exact_twin

    out = tmp_path / "shipped" / "model.onnx"
    info = build_cpu_int8(
        example["fp32"], out, ARCH, calibration=example["feeds"], reduce_range=True, scheme=DEFAULT_SCHEME
    )
    layers = example["config"]["num_hidden_layers"]
    assert info["per_token_matmuls"] == layers
    assert info["scheme"]["per_token"] == ["ffn_down"] and any("per-token" in n for n in info["notes"])
    assert info["fp32_matmuls"] == []
    model = onnx.load(out)
    tokenwise = [
        n for n in model.graph.node if n.op_type == "MatMulInteger" and n.name.startswith("nimbuild_per_token")
    ]
    assert len(tokenwise) == layers
    assert not any("output/dense" in n.name and n.op_type == "DynamicQuantizeMatMul" for n in model.graph.node)
    twin = tmp_path / "twin.onnx"
    assert exact_twin(out, twin) > 0
    for a, b in zip(_logits(out, example["feeds"]), _logits(twin, example["feeds"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="per_token"):
        Int8Scheme(mode="static")


def test_fp8_per_channel_weights_and_percentile_calibration(example, tmp_path):
    """Per-channel FP8 weights: one scale per output column on the DequantizeLinear's axis (what TensorRT
    takes for weights); activations stay per tensor, and a percentile amax is below the max one."""
    from nimbuild.builder.precision.fp8 import Fp8Scheme, build_fp8

    base = build_fp8(example["fp32"], tmp_path / "max" / "model.onnx", example["feeds"], Fp8Scheme())
    info = build_fp8(
        example["fp32"],
        tmp_path / "pc" / "model.onnx",
        example["feeds"],
        Fp8Scheme(per_channel_weights=True, activation_percentile=99.99),
    )
    assert info["counts"]["weights"] == base["counts"]["weights"] > 0
    model = onnx.load(tmp_path / "pc" / "model.onnx")
    inits = {t.name: t for t in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    for dq in weight_dq:
        (axis,) = [a.i for a in dq.attribute if a.name == "axis"]
        assert list(inits[dq.input[1]].dims) == [inits[dq.input[0]].dims[axis]]
    act_scales = lambda m: {  # noqa: E731
        n.input[1]: float(onnx.numpy_helper.to_array({t.name: t for t in m.graph.initializer}[n.input[1]]))
        for n in m.graph.node
        if n.op_type == "QuantizeLinear"
    }
    pct, mx = act_scales(model), act_scales(onnx.load(tmp_path / "max" / "model.onnx"))
    assert pct.keys() == mx.keys() and all(pct[k] <= mx[k] for k in pct) and any(pct[k] < mx[k] for k in pct)
    assert all(len(inits[n.input[1]].dims) == 0 for n in model.graph.node if n.op_type == "QuantizeLinear")
    sess = cpu_session(tmp_path / "pc" / "model.onnx", fp8_qdq=True)
    names = [i.name for i in sess.get_inputs()]
    ref = _logits(example["fp32"], example["feeds"])
    got = [sess.run(None, {n: f[n] for n in names})[0].ravel() for f in example["feeds"]]
    worst = max(float(np.abs(g - r).max()) for g, r in zip(got, ref, strict=True))
    assert 0.0 < worst < 0.25 * max(float(np.abs(r).max()) for r in ref)  # simulated FP8: close, not equal
