"""`nimbuild export`: every supported architecture to ONNX FP32, checked against PyTorch; bad input refused cleanly."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import typer

from nimbuild.builder import export as exp
from nimbuild.builder.pipeline import run_export
from nimbuild.builder.tiny import ARCHITECTURES, build_tiny_model
from nimbuild.cli import run
from nimbuild.errors import NimbuildError
from nimbuild.output import Output

SHAPES = {"batch": {"min": 1, "opt": 4, "max": 8}, "sequence": {"min": 1, "opt": 32, "max": 512}}
TOKEN_TYPES = {"bert", "electra"}  # the tiny models with type_vocab_size >= 2
QUIET = Output(quiet=True)


@pytest.fixture(scope="session")
def exported_arch(tiny_model_dir, tmp_path_factory):
    """Factory: arch -> (model dir, fp32 folder, export info), each exported once."""
    cache = {}

    def get(arch):
        if arch not in cache:
            model_dir = tiny_model_dir(arch)
            out = tmp_path_factory.mktemp(f"onnx-{arch}")
            info = exp.export_fp32(model_dir, out, SHAPES)
            cache[arch] = (model_dir, out, info)
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_graph_contract(arch, exported_arch):
    import onnx

    _, out, info = exported_arch(arch)
    model = onnx.load(str(out / "model.onnx"))
    want = ["input_ids", "attention_mask"] + (["token_type_ids"] if arch in TOKEN_TYPES else [])
    assert sorted(i.name for i in model.graph.input) == sorted(want) == sorted(info["inputs"])
    for i in model.graph.input:
        t = i.type.tensor_type
        assert t.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in t.shape.dim] == ["batch", "sequence"]
    assert [o.name for o in model.graph.output] == ["logits"]
    dims = model.graph.output[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 1
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert model.ir_version <= 13
    assert info["num_labels"] == 1 and info["external_data"] is False
    assert info["architecture"] == exp.architecture_of(json.loads((exported_arch(arch)[0] / "config.json").read_text()))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_logits_match_pytorch_batch_1_to_8_sequence_1_to_max(arch, exported_arch):
    import torch

    model_dir, out, info = exported_arch(arch)
    model = exp.load_model(model_dir)
    session = exp.cpu_session(out / "model.onnx")
    assert session.get_providers() == ["CPUExecutionProvider"]
    names = info["inputs"]
    wrapper = exp._wrapper(model, names)
    worst = 0.0
    for batch, seq in ((1, 1), (8, 1), (3, 9), (5, 64), (2, 300), (1, 512), (8, 512)):
        args = exp.example_inputs(names, model.config.vocab_size, batch, seq, seed=batch * 1000 + seq)
        with torch.no_grad():
            ref = wrapper(*args).numpy()
        got = session.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True)})[0]
        assert got.shape == (batch, 1)
        worst = max(worst, float(np.abs(ref - got).max()))
    assert worst <= 1e-4, f"{arch}: max |Δlogit| {worst:.2e}"


def test_unsupported_architecture_names_it_and_the_list(tmp_path, example_model_dir):
    d = tmp_path / "gpt"
    shutil.copytree(example_model_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2ForSequenceClassification"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(NimbuildError) as exc:
        run_export(d, tmp_path / "out", ["fp32"], None, QUIET)
    msg = str(exc.value)
    assert "GPT2ForSequenceClassification is not supported" in msg
    assert all(a in msg for a in exp.SUPPORTED_ARCHITECTURES)
    assert not (tmp_path / "out").exists()


def test_sequence_beyond_the_model_is_refused(tmp_path, example_model_dir):
    shapes = {"batch": {"min": 1, "opt": 1, "max": 1}, "sequence": {"min": 1, "opt": 8, "max": 4096}}
    with pytest.raises(NimbuildError, match=r"shapes.sequence.max 4096 exceeds .* \(512 positions\)"):
        exp.export_fp32(example_model_dir, tmp_path / "o", shapes)


def test_external_data_above_the_limit(tmp_path, monkeypatch, example_model_dir):
    """The >2 GB path, exercised on the tiny model by lowering the limit."""
    monkeypatch.setattr(exp, "EXTERNAL_DATA_BYTES", 1000)
    info = exp.export_fp32(example_model_dir, tmp_path / "fp32", SHAPES)
    assert info["external_data"] is True
    assert info["files"] == ["model.onnx", "model.onnx.data"]
    assert (
        (tmp_path / "fp32" / "model.onnx").stat().st_size
        < 100_000
        < (tmp_path / "fp32" / "model.onnx.data").stat().st_size
    )
    model = exp.load_model(example_model_dir)
    parity = exp.check_parity(model, exp.cpu_session(tmp_path / "fp32" / "model.onnx"), info["inputs"], SHAPES)
    assert parity["passed"], parity


def test_dynamo_exporter_gives_the_same_graph_contract(tmp_path, example_model_dir):
    info = exp.export_fp32(example_model_dir, tmp_path / "fp32", SHAPES, exporter="dynamo")
    assert info["exporter"] == "dynamo"
    model = exp.load_model(example_model_dir)
    parity = exp.check_parity(model, exp.cpu_session(tmp_path / "fp32" / "model.onnx"), info["inputs"], SHAPES)
    assert parity["passed"], parity


def test_tiny_models_are_deterministic(tmp_path):
    # the committed example is a trained model now (testbed/example.py, checked by its provenance in
    # tests/test_testbed.py); the tiny random models must still be the same bytes for the same arguments
    first = build_tiny_model(tmp_path / "first", "bert")
    rebuilt = build_tiny_model(tmp_path / "again", "bert")
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        a, b = (first / f).read_bytes(), (rebuilt / f).read_bytes()
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), f"{f} differs between two builds"
    other = build_tiny_model(tmp_path / "seed1", "bert", seed=1)
    assert (other / "model.safetensors").read_bytes() != (rebuilt / "model.safetensors").read_bytes()


# ----------------------------------------------------------------------------- the whole export


def test_calibration_and_evaluation_never_share_a_query():
    from nimbuild.builder.export_precisions import MIN_SPLIT_QUERIES, split_queries

    calibration, evaluation = split_queries(range(9))
    assert calibration == [0, 2, 4, 6, 8] and evaluation == [1, 3, 5, 7]
    assert not set(calibration) & set(evaluation)
    few = list(range(MIN_SPLIT_QUERIES - 1))
    assert split_queries(few) == (few, few)  # too few to split: both use all, and the report says so


def test_a_label_bound_without_labels_is_an_error_before_any_work(tmp_path, example_recipe, example_model_dir):
    unlabeled = tmp_path / "pairs.jsonl"
    unlabeled.write_text("".join(json.dumps({"query": f"q{i}", "passages": ["a b", "c d"]}) + "\n" for i in range(4)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: r\nsource: {{path: {example_model_dir}}}\npairs: {unlabeled}\n"
        "thresholds: {fp8: {label_ndcg10_drop: 0.01}}\n"
    )
    with pytest.raises(NimbuildError) as exc:
        run_export(recipe, tmp_path / "out", ["fp32"], None, QUIET)
    assert "thresholds.fp8.label_ndcg10_drop bounds the loss of label NDCG@10" in str(exc.value)
    assert f"pairs file {unlabeled} has no `labels`" in str(exc.value)
    assert not (tmp_path / "out").exists()


def test_exported_example_report(exported_example, example_recipe):
    report = json.loads((exported_example / "export_report.json").read_text())
    for key in (
        "model",
        "model_revision",
        "source",
        "architecture",
        "inputs",
        "num_labels",
        "opset",
        "max_batch_size",
        "max_sequence_length",
        "shapes",
        "recipe_sha256",
        "toolchain",
        "precisions",
    ):
        assert key in report, key
    assert (
        report["model"] == "example-tiny"
        and report["recipe_sha256"] == hashlib.sha256(example_recipe.read_bytes()).hexdigest()
    )
    assert report["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert (report["max_batch_size"], report["max_sequence_length"]) == (64, 512)
    fp32 = report["precisions"]["fp32"]
    assert fp32["status"] == "passed" and fp32["path"] == "onnx/fp32/model.onnx"
    assert fp32["gate"]["passed"] and fp32["gate"]["n_queries"] == 12 and fp32["gate"]["n_pairs"] == 96
    # labeled pairs: the fp32 graph and the PyTorch reference are both scored against the labels
    assert report["pairs"]["labeled"] is True
    reference_ndcg = report["pairs"]["reference"]["label_ndcg10"]
    assert fp32["gate"]["metrics"]["label_ndcg10"] == pytest.approx(reference_ndcg, abs=1e-6)
    assert report["pairs"]["split"] == {
        "calibration_queries": 6,
        "evaluation_queries": 6,
        "disjoint": True,
        "rule": "even-numbered lines calibrate, odd-numbered lines judge the precision graphs",
    }
    assert fp32["gate"]["metrics"]["max_abs_logit"] <= 1e-4 * 10
    assert {(c["batch"], c["sequence"]) for c in fp32["parity"]["cases"]} >= {(1, 1), (8, 128), (1, 512)}
    assert set(report["toolchain"]) >= {"torch", "transformers", "onnx", "onnxruntime"}
    for f in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (exported_example / "tokenizer" / f).is_file()
    assert not list(exported_example.parent.glob(".*partial"))


def test_tokenizer_in_the_export_encodes_like_the_model(exported_example, example_model_dir):
    from tokenizers import Tokenizer

    from nimbuild.builder.pairs import load_tokenizer

    fast = Tokenizer.from_file(str(exported_example / "tokenizer" / "tokenizer.json"))
    hf = load_tokenizer(example_model_dir)
    a = fast.encode("why is the sky blue", "the sky is blue because air scatters light")
    b = hf("why is the sky blue", "the sky is blue because air scatters light")
    assert a.ids == b["input_ids"] and a.type_ids == b["token_type_ids"]


def test_hub_model_export_offline(hf_offline, tmp_path, tiny_model_dir, make_hf_cache):
    from conftest import HF_TEST_SHA as SHA

    make_hf_cache(hf_offline / "hub", "acme/tiny-deberta", tiny_model_dir("deberta-v2"))
    report = run_export("acme/tiny-deberta", tmp_path / "out", ["fp32"], None, QUIET)
    assert report["model"] == "tiny-deberta" and report["model_revision"] == SHA
    assert report["source"]["repo"] == "acme/tiny-deberta"
    assert report["inputs"] == ["input_ids", "attention_mask"]
    assert report["pairs"]["synthetic"] is True
    assert (tmp_path / "out" / "onnx" / "fp32" / "model.onnx").is_file()


def test_failed_gate_leaves_nothing(tmp_path, monkeypatch, example_recipe):
    real = exp.torch_scores

    def off_by_a_bit(model, names, encoded):  # a reference the graph cannot match
        return [s + np.linspace(0, 1, len(s)) for s in real(model, names, encoded)]

    monkeypatch.setattr(exp, "torch_scores", off_by_a_bit)
    out = tmp_path / "out"
    with pytest.raises(NimbuildError, match="fp32 graph of example-tiny does not match PyTorch"):
        run_export(example_recipe, out, ["fp32"], None, QUIET)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind


# ----------------------------------------------------------------------------- CLI


def _cli(argv, capsys):
    from nimbuild.cli import export as export_cli

    app = typer.Typer()
    app.callback()(lambda: None)  # a group, as in nimbuild's own app (else typer runs the one command bare)
    export_cli.register(app)
    with pytest.raises(SystemExit) as exc:
        run(app, argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def test_cli_export_json(tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "o"
    code, stdout, err = _cli(
        ["export", str(tiny_model_dir("distilbert")), "--out", str(out), "--precision", "fp32", "--json"], capsys
    )
    assert code == 0, err
    data = json.loads(stdout)
    assert data["out"] == str(out) and data["report"]["architecture"] == "DistilBertForSequenceClassification"
    assert json.loads((out / "export_report.json").read_text()) == data["report"]


def test_cli_out_dir_with_other_content(tmp_path, capsys, monkeypatch, tiny_model_dir):
    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    model = str(tiny_model_dir("electra"))
    code, stdout, err = _cli(["export", model, "--out", str(out), "--precision", "fp32"], capsys)
    assert code == 1 and err.count("\n") == 1 and "already exists and is not empty" in err and "--force" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    code, stdout, err = _cli(["export", model, "--out", str(out), "--precision", "fp32", "--force"], capsys)
    assert code == 0, err
    # --force replaces the export's own entries only: the user's file stays, beside nimbuild's ledger
    names = sorted(p.name for p in out.iterdir())
    assert names == [".nimbuild-owned.json", "export_report.json", "gate_inputs.npz", "keep.txt", "onnx", "tokenizer"]
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("case", ["missing-dir", "unknown-repo", "remote-code", "bad-recipe", "bad-precision"])
def test_cli_bad_input_is_one_line_and_writes_nothing(
    case, tmp_path, capsys, monkeypatch, hf_offline, example_model_dir
):
    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    out = tmp_path / "out"
    args = {"missing-dir": [str(tmp_path / "no-such-model")], "unknown-repo": ["acme/never-downloaded"]}.get(case)
    expected = {
        "missing-dir": "does not exist",
        "unknown-repo": "HF_HUB_OFFLINE=1",
        "remote-code": "needs remote code",
        "bad-recipe": "precison: unknown field",
        "bad-precision": "--precision: unknown bf16",
    }[case]
    if case == "remote-code":
        d = tmp_path / "remote"
        shutil.copytree(example_model_dir, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg["auto_map"] = {"AutoModelForSequenceClassification": "modeling.MyModel"}
        (d / "config.json").write_text(json.dumps(cfg))
        args = [str(d)]
    if case == "bad-recipe":
        r = tmp_path / "r.yaml"
        r.write_text("name: x\nsource: {path: m}\nprecison: [fp16]\n")
        args = [str(r)]
    if case == "bad-precision":
        args = [str(example_model_dir), "--precision", "fp16,bf16"]
    code, stdout, err = _cli(["export", *args, "--out", str(out)], capsys)
    assert code == 1 and stdout == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err
    assert not out.exists()


def test_cli_help_has_an_example(capsys):
    code, out, _ = _cli(["export", "--help"], capsys)
    assert code == 0 and "Example: nimbuild export" in out
