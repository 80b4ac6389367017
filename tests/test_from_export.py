"""`nimbuild export --from-export`: more graphs for an earlier export, from its FP32 graph and saved gate inputs.

What `nimbuild plan`'s CPU-class jobs run on the export job's artifact: no PyTorch, no model, the export's
PyTorch reference; the graph is judged on this CPU.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nimbuild import cpu_isa
from nimbuild.builder import gate
from nimbuild.builder.export import cpu_session
from nimbuild.builder.from_export import export_files, run_from_export
from nimbuild.builder.pairs import load_pairs
from nimbuild.builder.pipeline import run_export
from nimbuild.errors import NimbuildError
from nimbuild.export_layout import GATE_INPUTS_FILE
from nimbuild.fsutil import sha256_file
from nimbuild.output import Output
from nimbuild.thresholds import GateThresholds

QUIET = Output(quiet=True)


def _host_class() -> str:
    here = cpu_isa.detect_cpu()
    if not here.classes:
        pytest.skip(f"this CPU has no int8 class ({here.classes_text()})")
    return here.classes[0]


def _report(folder: Path) -> dict:
    return json.loads((folder / "export_report.json").read_text())


def test_the_export_saves_its_gate_inputs_and_they_read_back_the_same(exported_example, tmp_path):
    report = _report(exported_example)
    saved = report["gate_inputs"]
    path = exported_example / saved["path"]
    assert saved["path"] == GATE_INPUTS_FILE and sha256_file(path) == saved["sha256"]
    encoded, reference, labels = gate.load_inputs(path, report["inputs"], saved["sha256"])
    assert len(encoded) == len(reference) == saved["queries"] == report["precisions"]["fp32"]["gate"]["n_queries"]
    assert sum(len(r) for r in reference) == report["precisions"]["fp32"]["gate"]["n_pairs"]
    assert all(set(f) == set(report["inputs"]) and f["input_ids"].dtype == np.int64 for f in encoded)
    # the reference is what the fp32 graph was judged against: the graph reproduces it within the fp32 bar
    session = cpu_session(exported_example / "onnx/fp32/model.onnx")
    result = gate.run_gate(session, encoded, reference, GateThresholds(max_abs_logit=1e-3))
    assert result.passed, result.failures
    # the pairs' labels travel with them (so --from-export judges with the same label figures)
    assert saved["labeled"] is True and labels == [g.labels for g in load_pairs(report["pairs"]["file"])]
    # the same inputs give the same bytes (a CI cache or a rebuild sees no change)
    again = gate.save_inputs(tmp_path / "again.npz", encoded, reference, labels)
    assert again["sha256"] == saved["sha256"]


def test_altered_or_foreign_gate_inputs_are_one_error_each(exported_example, tmp_path):
    report = _report(exported_example)
    good = exported_example / GATE_INPUTS_FILE
    with pytest.raises(NimbuildError, match="sha256"):
        gate.load_inputs(good, report["inputs"], "0" * 64)
    with pytest.raises(NimbuildError, match="lacks pixel_values"):
        gate.load_inputs(good, [*report["inputs"], "pixel_values"])
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{"q000000/input_ids": np.array([{"x": 1}], dtype=object)})  # a pickled object array
    with pytest.raises(NimbuildError, match="unreadable gate inputs"):
        gate.load_inputs(pickled, ["input_ids"])
    ragged = tmp_path / "ragged.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(ragged, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "q000000/reference.npy":
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.zeros(3, dtype=np.float32))
                data = buf.getvalue()
            dst.writestr(item, data)
    with pytest.raises(NimbuildError, match="query q000000"):
        gate.load_inputs(ragged, report["inputs"])
    with pytest.raises(NimbuildError, match="missing"):
        gate.load_inputs(tmp_path / "none.npz", report["inputs"])


def test_int8_from_the_export_into_another_folder_leaves_the_source_as_it_was(
    exported_example, example_recipe, tmp_path
):
    cls = _host_class()
    source = tmp_path / "export"
    shutil.copytree(exported_example, source)
    (source / "engines" / "h100-sxm").mkdir(parents=True)  # another job's output: never copied
    (source / "engines" / "h100-sxm" / "fragment.yaml").write_text("not this job's\n")
    before = {p.relative_to(source).as_posix(): sha256_file(p) for p in source.rglob("*") if p.is_file()}
    out = tmp_path / "cpu-export" / cls
    report = run_from_export(example_recipe, source, out, ["int8"], QUIET, cpu_isa=[cls])
    after = {p.relative_to(source).as_posix(): sha256_file(p) for p in source.rglob("*") if p.is_file()}
    assert after == before  # the export (an artifact other jobs read) is untouched
    entry = report["precisions"][f"int8-{cls}"]
    assert entry["status"] == "passed" and entry["cpu_isa"] == cls, entry
    # judged against the saved labels too, beside the reference's own figure on the same (evaluation) queries
    labeled = entry["gate"]["metrics"]
    assert 0.0 <= labeled["label_ndcg10"] <= 1.0 and 0.0 <= labeled["label_mrr10"] <= 1.0
    reference_ndcg = entry["gate"]["reference"]["label_ndcg10"]
    assert labeled["label_ndcg10_drop"] == pytest.approx(reference_ndcg - labeled["label_ndcg10"])
    assert entry["judged_on"]["cpu_isa"] == list(cpu_isa.detect_cpu().classes)
    assert (out / entry["path"]).is_file() and not (out / "engines").exists()
    assert _report(out) == report and report["additions"][-1]["precisions"] == [f"int8-{cls}"]
    assert set(export_files(out, report)) >= {"export_report.json", "gate_inputs.npz", "onnx/fp32/model.onnx"}
    # the fp32 graph is the export's own, hard-linked where the filesystem allows (no second copy)
    assert sha256_file(out / "onnx/fp32/model.onnx") == before["onnx/fp32/model.onnx"]
    # a second run into the same folder without --force is refused; in place (the default) it replaces
    with pytest.raises(NimbuildError, match="already exists"):
        run_from_export(example_recipe, source, out, ["int8"], QUIET, cpu_isa=[cls])
    again = run_from_export(example_recipe, out, None, ["int8"], QUIET, cpu_isa=[cls])
    assert len(again["additions"]) == 2 and again["precisions"][f"int8-{cls}"]["status"] == "passed"


@pytest.mark.slow
def test_the_graph_from_the_export_is_the_one_a_full_export_makes(exported_example, example_recipe, tmp_path):
    """Same FP32 graph, same calibration pairs, same CPU: the same int8 bytes and gate figures."""
    cls = _host_class()
    full = run_export(example_recipe, tmp_path / "full", ["fp32", "int8"], None, QUIET, cpu_isa=[cls])
    source = tmp_path / "export"
    shutil.copytree(exported_example, source)
    added = run_from_export(example_recipe, source, None, ["int8"], QUIET, cpu_isa=[cls])
    key = f"int8-{cls}"
    assert sha256_file(tmp_path / "full" / full["precisions"][key]["path"]) == sha256_file(
        source / added["precisions"][key]["path"]
    )
    assert added["precisions"][key]["gate"]["metrics"] == full["precisions"][key]["gate"]["metrics"]


def test_what_cannot_be_done_from_an_export_fails_before_any_work(exported_example, example_recipe, tmp_path):
    here = cpu_isa.detect_cpu()
    source = tmp_path / "export"
    shutil.copytree(exported_example, source)
    lacking = next(n for n in cpu_isa.NAMES if not here.has(n))
    with pytest.raises(NimbuildError, match=f"--cpu-isa {lacking}: this build's CPU"):
        run_from_export(example_recipe, source, None, ["int8"], QUIET, cpu_isa=[lacking])
    with pytest.raises(NimbuildError, match="no precision to add"):
        run_from_export(example_recipe, source, None, ["fp32"], QUIET)
    other = tmp_path / "other.yaml"
    other.write_text(example_recipe.read_text().replace("name: example-tiny", "name: another-model"))
    with pytest.raises(NimbuildError, match="an export of 'example-tiny', not of 'another-model'"):
        run_from_export(other, source, None, ["int8"], QUIET)
    report = _report(source)
    del report["gate_inputs"]  # an export an older nimbuild made
    (source / "export_report.json").write_text(json.dumps(report))
    with pytest.raises(NimbuildError, match="no saved gate inputs"):
        run_from_export(example_recipe, source, None, ["int8"], QUIET)
    assert not [p for p in source.rglob("*") if "int8" in p.name]


def test_a_label_bound_needs_labeled_gate_inputs(exported_example, example_recipe, tmp_path):
    """An export whose saved gate inputs have no labels (unlabeled pairs) cannot judge a label bound: one error,
    before any graph is made."""
    source = tmp_path / "export"
    shutil.copytree(exported_example, source)
    report = _report(source)
    encoded, reference, _ = gate.load_inputs(source / GATE_INPUTS_FILE, report["inputs"])
    report["gate_inputs"] = gate.save_inputs(source / GATE_INPUTS_FILE, encoded, reference)  # no labels
    (source / "export_report.json").write_text(json.dumps(report))
    bounded = tmp_path / "bounded.yaml"
    recipe_text = example_recipe.read_text()
    text = recipe_text.replace(
        "\n  max_abs_logit: null\n", "\n  max_abs_logit: null\n  int8: {label_ndcg10_drop: 0.05}\n"
    )
    assert text != recipe_text  # the bound went into the thresholds block
    bounded.write_text(
        text.replace("pairs: pairs/", f"pairs: {example_recipe.parent}/pairs/").replace(
            "path: models/", f"path: {example_recipe.parent}/models/"
        )
    )
    with pytest.raises(NimbuildError, match=r"thresholds.int8.label_ndcg10_drop bounds .* gate inputs .* no labels"):
        run_from_export(bounded, source, None, ["int8"], QUIET, force=True)  # force: the test rewrote the report
    assert not [p for p in source.rglob("*") if "int8" in p.name]


def test_cli_from_export(exported_example, example_recipe, tmp_path):
    cls = _host_class()
    source = tmp_path / "export"
    shutil.copytree(exported_example, source)

    def cli(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "nimbuild", "export", str(example_recipe), "--from-export", str(source), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    bad = cli("--precision", "int8", "--pairs", str(tmp_path / "p.jsonl"))
    assert bad.returncode == 1 and bad.stderr.startswith("error: --pairs with --from-export"), bad.stderr
    done = cli("--precision", "int8", "--cpu-isa", cls, "--json")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["out"] == str(source) and answer["report"]["precisions"][f"int8-{cls}"]["status"] == "passed"
    fragment = subprocess.run(
        [sys.executable, "-m", "nimbuild", "manifest", "fragment", "--export-dir", str(source), "--cpu-isa", cls],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fragment.returncode == 0 and (source / "cpu" / cls / "fragment.yaml").is_file(), fragment.stderr
