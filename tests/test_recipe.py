"""Recipes: the shipped ones load, bad ones are refused naming file, field, given and expected."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import typer

from nimbuild.cli import run
from nimbuild.errors import NimbuildError
from nimbuild.recipe import load_recipe, parse_recipe, recipe_for_model

REPO = Path(__file__).resolve().parents[1]
GOOD = """\
name: demo
source: {path: models/demo}
shapes:
  batch: {min: 1, opt: 8, max: 64}
  sequence: {min: 1, opt: 128, max: 512}
precisions: [fp16, int8]
gpus: [h100-sxm, NVIDIA A100-SXM4-80GB]
runners: {h100-sxm: [self-hosted, gpu-h100]}
pairs: pairs/demo.jsonl
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "recipe.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def _error(tmp_path: Path, text: str) -> str:
    p = _write(tmp_path, text)
    with pytest.raises(NimbuildError) as exc:
        load_recipe(p)
    msg = str(exc.value)
    assert str(p) in msg, "the error names the file"
    assert "\n" not in msg, "one line"
    return msg


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    r = load_recipe(path)
    assert r.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert r.precisions[0] == "fp32"
    if r.source.repo:
        assert len(r.source.revision) == 40
    else:
        assert (r.resolve(r.source.path) / "config.json").is_file()
    assert r.pairs and r.resolve(r.pairs).is_file()


def test_example_recipe_fields(example_recipe):
    r = load_recipe(example_recipe)
    assert r.name == "example-tiny"
    assert r.path == example_recipe.resolve()
    assert r.resolve(r.source.path) == example_recipe.resolve().parent / "models" / "example-tiny"
    assert r.shapes.batch.max == 64 and r.shapes.sequence.opt == 128
    assert [s.slug for s in r.gpu_skus()] == ["h100-sxm", "a100-sxm4-80gb", "l40s"]
    assert r.runner_labels(r.gpu_skus()[0]) == ["self-hosted", "gpu-h100"]


def test_defaults_and_fp32_always_built(tmp_path):
    r = load_recipe(_write(tmp_path, GOOD))
    assert r.precisions == ["fp32", "fp16", "int8"]
    assert r.trust_remote_code is False
    assert r.thresholds.top1 == 0.95 and r.thresholds.max_abs_logit is None
    r2 = parse_recipe({"name": "m", "source": {"path": "x"}})
    assert r2.shapes.sequence.max == 512 and r2.precisions == ["fp32", "fp16", "fp8", "int8"]


def test_typo_field_says_did_you_mean(tmp_path):
    msg = _error(tmp_path, GOOD + "precison: [fp16]\n")
    assert "precison: unknown field (did you mean `precisions`?)" in msg


def test_nested_typo_names_the_path(tmp_path):
    msg = _error(tmp_path, GOOD.replace("batch: {min: 1, opt: 8, max: 64}", "batch: {min: 1, opt: 8, maxx: 64}"))
    assert "shapes.batch.maxx: unknown field (did you mean `max`?)" in msg
    assert "shapes.batch.max: missing" in msg


def test_wrong_type_says_given_and_expected(tmp_path):
    msg = _error(tmp_path, GOOD.replace("max: 64", "max: lots"))
    assert "shapes.batch.max: got 'lots'; expected: input should be a valid integer" in msg


def test_shape_order_checked(tmp_path):
    msg = _error(tmp_path, GOOD.replace("opt: 8, max: 64", "opt: 128, max: 64"))
    assert "shapes.batch" in msg and "min <= opt <= max" in msg


@pytest.mark.parametrize(
    "source, expected",
    [
        ("{repo: org/model}", "`revision` is required"),
        ("{repo: org/model, revision: main}", "not a 40-hex commit sha"),
        ("{repo: org/model, revision: 0123456789abcdef0123456789abcdef01234567, path: x}", "exactly one of"),
        ("{path: x, revision: 0123456789abcdef0123456789abcdef01234567}", "only goes with `repo`"),
        ("{}", "exactly one of"),
    ],
)
def test_source_rules(tmp_path, source, expected):
    msg = _error(tmp_path, GOOD.replace("{path: models/demo}", source))
    assert "source" in msg and expected in msg


def test_unknown_precision_and_gpu(tmp_path):
    msg = _error(tmp_path, GOOD.replace("[fp16, int8]", "[fp16, bf16]").replace("h100-sxm,", "h100-sxm, z9000,"))
    assert "precisions[1]: got 'bf16'" in msg
    assert "gpus[1]: got 'z9000'" in msg and "unknown GPU SKU" in msg


def test_duplicate_gpu_and_unknown_runner(tmp_path):
    msg = _error(tmp_path, GOOD.replace("gpus: [h100-sxm,", "gpus: [h100-sxm, NVIDIA-H100-80GB-HBM3,"))
    assert "names the same GPU" in msg
    msg = _error(tmp_path, GOOD.replace("runners: {h100-sxm:", "runners: {l40s:"))
    assert "runners: 'l40s' is not in `gpus`" in msg


def test_bad_name(tmp_path):
    msg = _error(tmp_path, GOOD.replace("name: demo", "name: Demo Model"))
    assert "name: got 'Demo Model'" in msg


def test_yaml_syntax_error_names_the_line(tmp_path):
    msg = _error(tmp_path, "name: demo\nsource: {path: x\nshapes: [\n")
    assert "not valid YAML at line" in msg


def test_not_a_mapping_and_missing_file(tmp_path):
    assert "must be a YAML mapping" in _error(tmp_path, "- a\n- b\n")
    with pytest.raises(NimbuildError, match="no such recipe"):
        load_recipe(tmp_path / "nope.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    msg = _error(tmp_path, "name: !!python/object/apply:os.system ['echo hi']\nsource: {path: x}\n")
    assert "YAML tag !!python/object/apply:os.system, which nimbuild does not read" in msg


def test_recipe_for_a_bare_model(tmp_path, example_model_dir):
    r = recipe_for_model(str(example_model_dir))
    assert r.name == "example-tiny" and Path(r.source.path) == example_model_dir.resolve()
    hub = recipe_for_model("Org/Some_Model-v2")
    assert hub.source.repo == "Org/Some_Model-v2" and hub.name == "some_model-v2".replace("_", "-")
    with pytest.raises(NimbuildError):
        recipe_for_model("not a model id!")


# ----------------------------------------------------------------------------- CLI


def _cli(argv, capsys):
    from nimbuild.cli import recipe as recipe_cli

    app = typer.Typer()
    recipe_cli.register(app)
    with pytest.raises(SystemExit) as exc:
        run(app, argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def test_cli_check_ok_and_json(capsys, example_recipe):
    code, out, _ = _cli(["recipe", "check", str(example_recipe)], capsys)
    assert code == 0 and out.startswith("ok  ") and "example-tiny" in out
    code, out, _ = _cli(["recipe", "check", str(example_recipe), "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["ok"] is True
    assert data["recipes"][0]["gpus"] == ["NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB", "NVIDIA-L40S"]


def test_cli_check_bad_is_one_line_exit_1(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    p = _write(tmp_path, GOOD + "thresholds: {top1: high}\n")
    code, out, err = _cli(["recipe", "check", str(p)], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {p}: 1 problem: thresholds.top1: got 'high'")


def test_cli_help_has_an_example(capsys):
    code, out, _ = _cli(["recipe", "check", "--help"], capsys)
    assert code == 0 and "Example: nimbuild recipe check" in out


def test_cli_check_finds_missing_local_files(tmp_path, capsys, monkeypatch):
    """A typo'd source.path or pairs path fails at `recipe check`, naming the field, not mid-export."""
    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    p = _write(tmp_path, GOOD)  # models/demo and pairs/demo.jsonl do not exist beside it
    code, out, err = _cli(["recipe", "check", str(p)], capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "field 'source.path'" in err and str(tmp_path / "models" / "demo") in err

    (tmp_path / "models" / "demo").mkdir(parents=True)
    (tmp_path / "models" / "demo" / "config.json").write_text("{}")
    code, out, err = _cli(["recipe", "check", str(p), "--json"], capsys)
    data = json.loads(out)
    assert code == 1 and data["ok"] is False and data["recipes"] == []
    assert "field 'pairs'" in data["errors"][0]["error"] and "field 'pairs'" in err

    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "demo.jsonl").write_text('{"query": "q", "passages": ["p"]}\n')
    code, out, _ = _cli(["recipe", "check", str(p), "--json"], capsys)
    assert code == 0 and json.loads(out)["ok"] is True


def test_cli_check_reads_the_model_config_and_the_pairs_as_export_would(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    p = _write(tmp_path, GOOD)
    model = tmp_path / "models" / "demo"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"architectures": ["Custom"], "auto_map": {"AutoModel": "x.Custom"}}')
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "demo.jsonl").write_text("not json\n")
    code, _, err = _cli(["recipe", "check", str(p)], capsys)
    assert code == 1 and "field 'source.path'" in err and "auto_map" in err  # remote code, not allowed
    (model / "config.json").write_text('{"architectures": ["BertForSequenceClassification"]}')
    code, _, err = _cli(["recipe", "check", str(p)], capsys)
    assert code == 1 and "field 'pairs'" in err and "demo.jsonl:1" in err  # the line that is not JSON
