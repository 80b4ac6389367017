"""The export folder's layout and report: one reader, one writer, one answer per fact."""

from __future__ import annotations

import json

import pytest

from nimbuild import export_layout as layout
from nimbuild.errors import NimbuildError
from nimbuild.manifest import FileEntry, Profile

GOOD = {"model": "m", "precisions": {"fp32": {"status": "passed"}}, "max_batch_size": 8, "max_sequence_length": 64}


def test_precision_folders_and_aliases():
    assert layout.graph_relpath("int8") == "onnx/cpu-int8/model.onnx"
    assert layout.graph_relpath("fp16") == "onnx/fp16/model.onnx"
    assert layout.graph_path("/x", "fp8").as_posix() == "/x/onnx/fp8/model.onnx"
    assert layout.graph_dir_relpath("int8") == "onnx/cpu-int8"
    assert layout.canonical_precision(" CPU-INT8 ") == "int8"
    assert layout.canonical_precision("fp16") == "fp16"
    assert set(layout.PRECISION_DIRS) == {"fp32", "fp16", "fp8", "int8"}


def test_report_round_trip(tmp_path):
    report = dict(GOOD, note="naïve")
    path = layout.write_export_report(tmp_path, report)
    assert path == tmp_path / layout.REPORT_FILE
    assert layout.read_export_report(tmp_path) == report
    assert layout.find_export_report(tmp_path) == report


def test_no_report_is_none_or_an_error_naming_the_folder(tmp_path):
    assert layout.find_export_report(tmp_path) is None
    with pytest.raises(NimbuildError, match=f"{tmp_path} is not an export folder"):
        layout.read_export_report(tmp_path)


@pytest.mark.parametrize(
    "text, words",
    [
        ("{not json", "cannot read the export report"),
        ("[1, 2]", "expected a JSON object, got list"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "max_batch_size"}), "field 'max_batch_size' is missing"),
        (json.dumps(dict(GOOD, precisions=["fp32"])), "'precisions' is not a mapping"),
    ],
)
def test_a_bad_report_is_one_error_naming_the_file(tmp_path, text, words):
    (tmp_path / layout.REPORT_FILE).write_text(text, encoding="utf-8")
    for read in (layout.read_export_report, layout.find_export_report):
        with pytest.raises(NimbuildError, match=words) as info:
            read(tmp_path)
        assert str(tmp_path / layout.REPORT_FILE) in info.value.message


def _profile(backend: str, *files: str) -> Profile:
    entry = FileEntry(uri="", sha256="0" * 64, size=1)
    return Profile(id="0" * 64, name=f"p-{backend}", tags={"backend": backend}, files={f: entry for f in files})


def test_the_model_file_is_the_one_file_of_the_backend_s_kind():
    assert layout.profile_model_file(_profile("onnx", "tokenizer/tokenizer.json", "onnx/fp16/model.onnx")) == (
        "onnx/fp16/model.onnx"
    )
    assert layout.profile_model_file(_profile("tensorrt", "fp8/model.plan", "tokenizer/t.json")) == "fp8/model.plan"
    with pytest.raises(NimbuildError, match="no \\*.onnx file"):
        layout.profile_model_file(_profile("onnx", "tokenizer/tokenizer.json"))
    with pytest.raises(NimbuildError, match="2 \\*.plan files?"):
        layout.profile_model_file(_profile("tensorrt", "a/model.plan", "b/model.plan"))
    with pytest.raises(NimbuildError, match="backend 'pytorch'"):
        layout.profile_model_file(_profile("pytorch", "model.bin"))


def test_the_synthetic_pairs_are_one_fact(example_model_dir):
    from nimbuild.builder import pairs
    from nimbuild.builder.pairs import load_tokenizer

    groups = pairs.default_synthetic_pairs(load_tokenizer(example_model_dir))
    assert len(groups) == pairs.SYNTHETIC_QUERIES
    assert {len(g.passages) for g in groups} == {pairs.SYNTHETIC_PASSAGES}
    assert groups == pairs.default_synthetic_pairs(load_tokenizer(example_model_dir))  # the same every time
