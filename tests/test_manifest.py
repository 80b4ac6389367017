"""The manifest: every bad input rejected precisely, merge order-independent, verify catches altered bytes."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml

from nimbuild import manifest as mf
from nimbuild import manifest_merge, manifest_paths, manifest_verify, profiles
from nimbuild.errors import NimbuildError

SCHEMA = mf.json_schema()


def _profile(root: Path, precision: str, device: str = "gpu", files: dict[str, bytes] | None = None) -> mf.Profile:
    isa = "avx2" if (precision, device) == ("int8", "cpu") else None
    tags = profiles.onnx_profile_tags("tiny", "rev1", precision, device, 8, 128, cpu_isa=isa)
    files = (
        files
        if files is not None
        else {
            f"onnx/{precision}-{device}/model.onnx": f"{precision}{device}".encode(),
            "tokenizer/tokenizer.json": b'{"t": 1}',
        }
    )
    entries = {}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        entries[rel] = mf.file_entry(root, rel)
    return mf.Profile(
        id=profiles.profile_id(tags),
        name=profiles.profile_name(tags),
        tags=tags,
        files=entries,
        metrics={"size_bytes": sum(len(b) for b in files.values())},
    )


@pytest.fixture
def built(tmp_path) -> Path:
    root = tmp_path / "out"
    root.mkdir()
    m = mf.Manifest(
        profiles=[_profile(root, "fp16"), _profile(root, "fp32", "cpu"), _profile(root, "int8", "cpu")],
        header={"model": "tiny", "recipe_sha256": "0" * 64, "version": "0.1.0"},
        root=root,
    )
    mf.write_manifest(m, root / "manifest.yaml")
    return root / "manifest.yaml"


def _edit(path: Path, fn) -> Path:
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------ good manifests


def test_round_trip_and_ids(built):
    m = mf.load_manifest(built)
    assert len(m.profiles) == 3
    for p in m.profiles:
        canon = json.dumps(p.tags, sort_keys=True, separators=(",", ":"))
        import hashlib

        assert hashlib.sha256(canon.encode()).hexdigest() == p.id
    assert manifest_verify.verify_manifest(m) == []
    assert {p.name for p in m.profiles} == {
        "onnx-fp16-triton-onnxruntime",
        "cpu-fp32-onnxruntime",
        "cpu-int8-avx2-onnxruntime",
    }
    assert m.header["model"] == "tiny"


def test_written_bytes_are_deterministic_and_sorted(built, tmp_path):
    m = mf.load_manifest(built)
    m.profiles.reverse()
    out = tmp_path / "out" / "again.yaml"
    mf.write_manifest(m, out)
    assert out.read_bytes() == built.read_bytes()
    data = yaml.safe_load(built.read_text())
    assert list(data)[:2] == ["schema_version", "profile_selection_criteria"]
    assert data["schema_version"] == "2.0.0"
    ids = [p["id"] for p in data["profiles"]]
    assert ids == sorted(ids)


def test_matches_the_published_json_schema(built):
    jsonschema.validate(yaml.safe_load(built.read_text()), SCHEMA)


def test_schema_rejects_what_the_loader_rejects(built):
    data = yaml.safe_load(built.read_text())
    bad = json.loads(json.dumps(data))
    bad["profiles"][0]["workspace"]["files"]["../escape"] = bad["profiles"][0]["workspace"]["files"].popitem()[1]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)
    bad = json.loads(json.dumps(data))
    bad["profiles"][0]["tags"]["max_batch_size"] = 8
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SCHEMA)


def test_a_plain_nim_v2_manifest_without_header_or_metrics_reads(tmp_path):
    tags = {
        "backend": "onnx",
        "device": "cpu",
        "precision": "fp32",
        "model": "x",
        "model_revision": "1",
        "max_batch_size": "1",
        "max_sequence_length": "8",
    }
    (tmp_path / "m.onnx").write_bytes(b"abc")
    entry = mf.file_entry(tmp_path, "m.onnx")
    doc = {
        "schema_version": "2.0.0",
        "profile_selection_criteria": "default",
        "profiles": [
            {
                "id": profiles.profile_id(tags),
                "name": "cpu-fp32-onnxruntime",
                "tags": tags,
                "workspace": {"files": {"m.onnx": {"uri": "m.onnx", "sha256": entry.sha256, "size": 3}}},
                "release": "1.0",
            }
        ],
    }
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(doc))
    m = mf.load_manifest(tmp_path / "manifest.yaml")
    assert m.header == {} and m.profiles[0].metrics == {}
    assert manifest_verify.verify_manifest(m) == []
    mf.write_manifest(m, tmp_path / "again.yaml")  # unknown keys kept
    assert yaml.safe_load((tmp_path / "again.yaml").read_text())["profiles"][0]["release"] == "1.0"
    jsonschema.validate(doc, SCHEMA)


# ------------------------------------------------------------------ bad manifests


@pytest.mark.parametrize(
    "text,needle",
    [
        ("- a\n- b\n", "not a mapping"),
        ("", "empty, not a mapping"),
        ("just a string\n", "not a mapping"),
        ("schema_version: [1\n", "not valid YAML"),
    ],
)
def test_not_a_mapping_or_not_yaml(tmp_path, text, needle):
    p = tmp_path / "manifest.yaml"
    p.write_text(text)
    with pytest.raises(NimbuildError) as exc:
        mf.load_manifest(p)
    assert needle in str(exc.value) and str(p) in str(exc.value)


@pytest.mark.parametrize("version", ["1.0.0", "3.0.0", 2.0, None])
def test_unknown_schema_version(built, version):
    _edit(built, lambda d: d.__setitem__("schema_version", version))
    with pytest.raises(NimbuildError, match="schema_version: unknown version"):
        mf.load_manifest(built)


def test_wrong_id_names_file_profile_and_field(built):
    _edit(built, lambda d: d["profiles"][1]["tags"].__setitem__("max_batch_size", "9"))
    name = yaml.safe_load(built.read_text())["profiles"][1]["name"]
    with pytest.raises(NimbuildError) as exc:
        mf.load_manifest(built)
    msg = str(exc.value)
    assert str(built) in msg and repr(name) in msg and ".id" in msg and "does not match its tags" in msg
    m = mf.load_manifest(built, check_ids=False)
    problems = manifest_verify.verify_manifest(m)
    assert len(problems) == 1 and name in problems[0] and "does not match its tags" in problems[0]


def test_duplicate_names(built):
    def dup(d):
        d["profiles"][1]["name"] = d["profiles"][0]["name"]

    _edit(built, dup)
    with pytest.raises(NimbuildError, match="duplicate name"):
        mf.load_manifest(built)


def test_duplicate_ids(built):
    _edit(built, lambda d: d["profiles"].append(dict(d["profiles"][0], name="other")))
    with pytest.raises(NimbuildError, match="duplicate id"):
        mf.load_manifest(built)


def test_duplicate_yaml_keys_are_rejected(built):
    text = built.read_text().replace(
        "profile_selection_criteria: default\n",
        "profile_selection_criteria: default\nprofile_selection_criteria: other\n",
    )
    built.write_text(text)
    with pytest.raises(NimbuildError, match="duplicate key"):
        mf.load_manifest(built)


@pytest.mark.parametrize("bad", ["../outside.onnx", "/etc/passwd", "a/../../b", "C:/x", "a\\..\\b"])
def test_path_escaping_is_rejected_on_read(built, bad):
    def escape(d):
        files = d["profiles"][0]["workspace"]["files"]
        files[bad] = dict(next(iter(files.values())), uri=bad)

    _edit(built, escape)
    with pytest.raises(NimbuildError) as exc:
        mf.load_manifest(built)
    assert str(built) in str(exc.value) and "workspace.files" in str(exc.value)


def test_uri_escaping_or_file_scheme_is_rejected(built):
    def escape(d):
        entry = next(iter(d["profiles"][0]["workspace"]["files"].values()))
        entry["uri"] = "file:///etc/passwd"

    _edit(built, escape)
    with pytest.raises(NimbuildError, match="uri"):
        mf.load_manifest(built)


def test_remote_uri_is_allowed(built):
    def remote(d):
        entry = next(iter(d["profiles"][0]["workspace"]["files"].values()))
        entry["uri"] = "https://example.com/model.onnx"

    _edit(built, remote)
    assert mf.load_manifest(built)


def test_a_local_uri_other_than_its_key_is_where_the_bytes_are(built):
    # NIM's meaning: the key names the file in the profile's workspace, the uri where its bytes are.
    root = built.parent
    moved = root / "profiles" / "int8" / "model.onnx"
    moved.parent.mkdir(parents=True)

    def swap(d):
        prof = next(p for p in d["profiles"] if p["tags"]["precision"] == "int8")
        files = prof["workspace"]["files"]
        key = next(k for k in files if k.endswith("model.onnx"))
        (root / key).rename(moved)
        files[key]["uri"] = "profiles/int8/model.onnx"

    _edit(built, swap)
    m = mf.load_manifest(built, check_ids=False)
    assert manifest_verify.verify_manifest(m) == []  # verified at the uri, not at the key
    prof = next(p for p in m.profiles if p.tags["precision"] == "int8")
    key = next(k for k in prof.files if k.endswith("model.onnx"))
    assert mf.file_in(root, prof, key) == root / "profiles/int8/model.onnx"
    moved.write_bytes(b"altered")
    problems = manifest_verify.verify_manifest(m)
    assert len(problems) == 1 and "profiles/int8/model.onnx" in problems[0] and key in problems[0]
    moved.unlink()
    problems = manifest_verify.verify_manifest(m)
    assert len(problems) == 1 and "missing" in problems[0] and "profiles/int8/model.onnx" in problems[0]


def test_local_uri_equal_to_its_key_or_normalised_is_fine(built):
    def same(d):
        for entry_key, entry in d["profiles"][0]["workspace"]["files"].items():
            entry["uri"] = "./" + entry_key

    _edit(built, same)
    m = mf.load_manifest(built)
    assert all(e.uri == k for k, e in m.profiles[0].files.items())


def test_symlink_out_of_the_folder_is_rejected(built, tmp_path):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"secret")
    root = built.parent
    m = mf.load_manifest(built)
    rel = sorted(m.profiles[0].files)[0]
    (root / rel).unlink()
    os.symlink(outside, root / rel)
    with pytest.raises(NimbuildError, match="symlink"):
        mf.load_manifest(built)
    with pytest.raises(NimbuildError, match="symlink"):
        mf.file_entry(root, rel)


def test_symlink_inside_the_folder_is_fine(tmp_path):
    (tmp_path / "real.bin").write_bytes(b"x")
    os.symlink(tmp_path / "real.bin", tmp_path / "link.bin")
    assert manifest_paths.safe_join(tmp_path, "link.bin") == tmp_path / "link.bin"


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("id", "abc", ".id"),
        ("tags", {"model": 1}, "tags.model"),
        ("tags", [], ".tags"),
        ("name", "", ".name"),
    ],
)
def test_malformed_profile_fields(built, field, value, needle):
    _edit(built, lambda d: d["profiles"][0].__setitem__(field, value))
    with pytest.raises(NimbuildError) as exc:
        mf.load_manifest(built)
    assert needle in str(exc.value)


def test_malformed_file_entry(built):
    def bad(d):
        next(iter(d["profiles"][0]["workspace"]["files"].values()))["size"] = "12"

    _edit(built, bad)
    with pytest.raises(NimbuildError, match=r"\.size"):
        mf.load_manifest(built)


def test_write_refuses_wrong_ids_and_escaping_paths(built, tmp_path):
    m = mf.load_manifest(built)
    m.profiles[0].tags["precision"] = "fp32"
    with pytest.raises(NimbuildError, match="does not match"):
        mf.write_manifest(m, tmp_path / "x.yaml")
    assert not (tmp_path / "x.yaml").exists()
    m = mf.load_manifest(built)
    sub = built.parent / "sub"
    sub.mkdir()
    with pytest.raises(NimbuildError, match="outside"):
        mf.write_manifest(m, sub / "manifest.yaml")  # files live above sub/


# ------------------------------------------------------------------ verify


def test_verify_names_the_altered_file(built):
    m = mf.load_manifest(built)
    rel = "onnx/fp16-gpu/model.onnx"
    path = built.parent / rel
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01
    path.write_bytes(bytes(data))
    problems = manifest_verify.verify_manifest(m)
    assert len(problems) == 1
    assert rel in problems[0] and "sha256" in problems[0] and "onnx-fp16-triton-onnxruntime" in problems[0]


def test_verify_missing_and_resized_files(built):
    m = mf.load_manifest(built)
    (built.parent / "onnx/fp32-cpu/model.onnx").unlink()
    (built.parent / "onnx/int8-cpu/model.onnx").write_bytes(b"longer than before")
    problems = manifest_verify.verify_manifest(m)
    assert any("onnx/fp32-cpu/model.onnx: missing" in p for p in problems)
    assert any("onnx/int8-cpu/model.onnx: size" in p for p in problems)
    assert manifest_verify.verify_manifest(m, check_files=False) == []


# ------------------------------------------------------------------ merge


def _fragments(tmp_path) -> list[Path]:
    root = tmp_path / "export"
    paths = []
    for i, (prec, dev) in enumerate([("fp16", "gpu"), ("fp32", "cpu"), ("int8", "cpu")]):
        frag_dir = root / "engines" / f"runner{i}"
        frag_dir.mkdir(parents=True)
        p = _profile(frag_dir, prec, dev, files={f"{prec}/model.bin": prec.encode() * 10})
        shared = _profile(root, "fp32", "gpu")  # the same profile in every fragment (same bytes)
        m = mf.Manifest(profiles=[p], header={"model": "tiny", "version": f"0.1.{i}"}, root=frag_dir)
        mf.write_manifest(m, frag_dir / "fragment.yaml")
        both = mf.Manifest(profiles=[shared], header={"model": "tiny", "version": "0.1.0"}, root=root)
        mf.write_manifest(both, root / f"shared{i}.yaml")
        paths += [frag_dir / "fragment.yaml", root / f"shared{i}.yaml"]
    return paths


def test_merge_is_order_independent_and_byte_identical(tmp_path):
    paths = _fragments(tmp_path)
    root = tmp_path / "export"
    outputs = set()
    for i, order in enumerate(itertools.permutations(paths[:4])):
        merged = manifest_merge.merge_manifests(
            [mf.load_manifest(p) for p in order] + [mf.load_manifest(p) for p in paths[4:]], root=root
        )
        out = root / f"merged{i}.yaml"
        mf.write_manifest(merged, out)
        outputs.add(out.read_bytes())
    assert len(outputs) == 1
    merged = mf.load_manifest(root / "merged0.yaml")
    assert len(merged.profiles) == 4
    assert merged.header["version"] == "0.1.2"
    assert manifest_verify.verify_manifest(merged) == []
    assert any(rel.startswith("engines/runner1/") for p in merged.profiles for rel in p.files)


def test_merge_is_idempotent(tmp_path):
    paths = _fragments(tmp_path)
    root = tmp_path / "export"
    once = manifest_merge.merge_manifests([mf.load_manifest(p) for p in paths], root=root)
    mf.write_manifest(once, root / "once.yaml")
    twice = manifest_merge.merge_manifests(
        [mf.load_manifest(root / "once.yaml")] + [mf.load_manifest(p) for p in paths]
    )
    mf.write_manifest(twice, root / "twice.yaml")
    assert (root / "once.yaml").read_bytes() == (root / "twice.yaml").read_bytes()


def test_merge_conflict_same_id_other_bytes(tmp_path):
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir(), b_dir.mkdir()
    a = mf.Manifest(profiles=[_profile(a_dir, "fp16", files={"m.bin": b"one"})], root=a_dir, source=a_dir / "f.yaml")
    b = mf.Manifest(profiles=[_profile(b_dir, "fp16", files={"m.bin": b"two"})], root=b_dir, source=b_dir / "f.yaml")
    for order in ([a, b], [b, a]):
        with pytest.raises(NimbuildError) as exc:
            manifest_merge.merge_manifests(order, root=tmp_path)
        assert "conflict" in str(exc.value) and "m.bin" in str(exc.value)


def test_merge_conflict_same_name_other_id(tmp_path):
    a = mf.Manifest(profiles=[_profile(tmp_path, "fp16", files={})], root=tmp_path)
    b_prof = _profile(tmp_path, "fp32", files={})
    b_prof.name = a.profiles[0].name
    b = mf.Manifest(profiles=[b_prof], root=tmp_path)
    with pytest.raises(NimbuildError, match="conflict: name"):
        manifest_merge.merge_manifests([a, b])


def test_merge_header_conflict(tmp_path):
    a = mf.Manifest(profiles=[], header={"model": "a"}, root=tmp_path)
    b = mf.Manifest(profiles=[], header={"model": "b"}, root=tmp_path)
    with pytest.raises(NimbuildError, match="nimbuild.model"):
        manifest_merge.merge_manifests([a, b])


# ------------------------------------------------------------------ `nimbuild manifest ...` and assembly


def _fake_export(root: Path, rejected: str = "fp16") -> Path:
    """An export dir as docs/internals.md describes it (graph bytes are stand-ins: assembly never parses them)."""
    (root / "tokenizer").mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        (root / "tokenizer" / name).write_text(f'{{"{name}": 1}}')
    precisions = {}
    for prec, folder in (("fp32", "fp32"), ("fp16", "fp16"), ("fp8", "fp8"), ("int8-avx2", "cpu-int8-avx2")):
        rel = f"onnx/{folder}/model.onnx"
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_bytes(prec.encode() * 100)
        gate = {"passed": prec != rejected, "metrics": {"top1": 1.0}, "failures": [], "n_queries": 4}
        precisions[prec] = (
            {"status": "passed", "path": rel, "gate": gate, "seconds": 0.5}
            if prec != rejected
            else {"status": "rejected", "reason": "top1 0.5 < 0.95", "gate": gate}
        )
    precisions["int8-avx2"].update(precision="int8", cpu_isa="avx2", weight_bits=7, judged_on={"cpu_isa": ["avx2"]})
    # a class this export's CPU could not judge: in the report, not in the manifest
    precisions["int8-avx512_vnni"] = {"status": "skipped", "reason": "lacks avx512_vnni", "path": None}
    precisions["int8-avx512_vnni"].update(precision="int8", cpu_isa="avx512_vnni", weight_bits=8)
    (root / "onnx/fp32/model.onnx.data").write_bytes(b"weights")
    report = {
        "model": "example-tiny",
        "model_revision": "abc123",
        "max_batch_size": 64,
        "max_sequence_length": 512,
        "recipe_sha256": "1" * 64,
        "precisions": precisions,
    }
    (root / "export_report.json").write_text(json.dumps(report))
    return root


def _fake_fragment(export: Path, slug: str = "h100-sxm") -> Path:
    frag_dir = export / "engines" / slug
    (frag_dir / "fp8").mkdir(parents=True)
    (frag_dir / "fp8" / "model.plan").write_bytes(b"engine bytes")
    tags = profiles.tensorrt_profile_tags("example-tiny", "abc123", "fp8", slug, "10.13.0", 12, 64, 512)
    p = mf.Profile(
        id=profiles.profile_id(tags),
        name=profiles.profile_name(tags),
        tags=tags,
        files={"fp8/model.plan": mf.file_entry(frag_dir, "fp8/model.plan")},
        metrics={"latency_ms": 1.5},
    )
    m = mf.Manifest(
        profiles=[p],
        header={"model": "example-tiny", "model_revision": "abc123", "recipe_sha256": "1" * 64, "version": "0.1.0"},
        root=frag_dir,
    )
    mf.write_manifest(m, frag_dir / "fragment.yaml")
    return frag_dir / "fragment.yaml"


def _cli(*args):
    from typer.testing import CliRunner

    from nimbuild.cli import _register, app

    _register()
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


def test_assemble_onnx_profiles_and_fragment(tmp_path):
    export = _fake_export(tmp_path / "export")
    _fake_fragment(export)
    res = _cli("manifest", "build", "--export-dir", export, "--json")
    assert res.exit_code == 0, res.output
    m = mf.load_manifest(export / "manifest.yaml")
    names = {p.name: p for p in m.profiles}
    # fp16 was rejected by its gate: no GPU ONNX profile; fp8 Q/DQ is TensorRT-only
    assert set(names) == {"cpu-fp32-onnxruntime", "cpu-int8-avx2-onnxruntime", "h100-hbm3-80gb-fp8-triton-tensorrt"}
    cpu = names["cpu-fp32-onnxruntime"]
    assert set(cpu.files) == {
        "onnx/fp32/model.onnx",
        "onnx/fp32/model.onnx.data",
        "tokenizer/config.json",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
    }
    assert cpu.metrics["gate"]["passed"] is True and cpu.metrics["size_bytes"] == 400 + 7
    int8 = names["cpu-int8-avx2-onnxruntime"]
    assert int8.tags["cpu_isa"] == "avx2" and "onnx/cpu-int8-avx2/model.onnx" in int8.files
    assert int8.metrics["weight_bits"] == 7 and int8.metrics["judged_on"] == {"cpu_isa": ["avx2"]}
    trt = names["h100-hbm3-80gb-fp8-triton-tensorrt"]
    assert "engines/h100-sxm/fp8/model.plan" in trt.files and "tokenizer/tokenizer.json" in trt.files
    assert m.header["model_revision"] == "abc123"
    assert manifest_verify.verify_manifest(m) == []
    jsonschema.validate(yaml.safe_load((export / "manifest.yaml").read_text()), SCHEMA)


def test_assemble_with_every_gate_passed(tmp_path):
    export = _fake_export(tmp_path / "export", rejected="none")
    m = mf.load_manifest(_cli("manifest", "build", "-d", export) and export / "manifest.yaml")
    assert {p.name for p in m.profiles} == {
        "onnx-fp16-triton-onnxruntime",
        "cpu-fp32-onnxruntime",
        "cpu-int8-avx2-onnxruntime",
    }
    gpu = next(p for p in m.profiles if p.tags["device"] == "gpu")
    assert gpu.tags["precision"] == "fp16" and gpu.tags["backend"] == "onnx"


def test_assemble_refuses_an_int8_graph_without_its_cpu_class(tmp_path):
    """An export of an older nimbuild: its int8 graph's weight range came from the machine that built it."""
    export = _fake_export(tmp_path / "export")
    report = json.loads((export / "export_report.json").read_text())
    report["precisions"]["int8"] = {"status": "passed", "path": "onnx/cpu-int8-avx2/model.onnx"}
    del report["precisions"]["int8-avx2"]
    (export / "export_report.json").write_text(json.dumps(report))
    res = _cli("manifest", "build", "--export-dir", export)
    assert res.exit_code == 1
    assert "names no cpu_isa class" in str(res.exception) and "re-run `nimbuild export`" in str(res.exception)


def test_assemble_rejects_a_fragment_of_another_model(tmp_path):
    export = _fake_export(tmp_path / "export")
    frag = _fake_fragment(export)
    data = yaml.safe_load(frag.read_text())
    data["profiles"][0]["tags"]["model_revision"] = "zzz"
    data["profiles"][0]["id"] = profiles.profile_id(data["profiles"][0]["tags"])
    frag.write_text(yaml.safe_dump(data))
    res = _cli("manifest", "build", "--export-dir", export)
    assert res.exit_code == 1 and "revision" in str(res.exception or res.output)


def test_cli_verify_passes_then_names_the_flipped_file(tmp_path, capsys):
    export = _fake_export(tmp_path / "export")
    _fake_fragment(export)
    assert _cli("manifest", "build", "--export-dir", export).exit_code == 0
    ok = _cli("manifest", "verify", export / "manifest.yaml")
    assert ok.exit_code == 0 and "ok" in ok.output
    plan = export / "engines/h100-sxm/fp8/model.plan"
    data = bytearray(plan.read_bytes())
    data[3] ^= 0xFF
    plan.write_bytes(bytes(data))
    bad = _cli("manifest", "verify", export / "manifest.yaml")
    assert bad.exit_code == 1
    assert "engines/h100-sxm/fp8/model.plan" in bad.output and "sha256" in bad.output
    assert bad.output.count("FAIL") == 1
    js = _cli("manifest", "verify", export / "manifest.yaml", "--json")
    assert js.exit_code == 1 and json.loads(js.output)["ok"] is False


def test_cli_verify_lists_wrong_ids_and_bad_input_exits_1(tmp_path):
    export = _fake_export(tmp_path / "export")
    assert _cli("manifest", "build", "--export-dir", export).exit_code == 0
    path = export / "manifest.yaml"
    _edit(path, lambda d: [p["tags"].__setitem__("max_batch_size", "1") for p in d["profiles"]])
    res = _cli("manifest", "verify", path)
    assert res.exit_code == 1 and res.output.count("does not match its tags") == 2
    path.write_text("- not\n- a mapping\n")
    res = _cli("manifest", "verify", path)
    assert res.exit_code == 1 and isinstance(res.exception, (NimbuildError, SystemExit))


def test_cli_show_table_and_json(tmp_path):
    export = _fake_export(tmp_path / "export")
    _cli("manifest", "build", "--export-dir", export)
    res = _cli("manifest", "show", export / "manifest.yaml", "--json")
    assert res.exit_code == 0
    data = json.loads(res.output)
    assert data["schema_version"] == "2.0.0" and len(data["profiles"]) == 2
    res = _cli("manifest", "show", export / "manifest.yaml")
    assert res.exit_code == 0 and "cpu-int8-avx2-onnxruntime" in res.output


def test_cli_merge_any_order_byte_identical(tmp_path):
    export = _fake_export(tmp_path / "export")
    frags = [_fake_fragment(export, slug) for slug in ("h100-sxm", "l40s", "h200")]
    outs = set()
    for i, order in enumerate(itertools.permutations(frags)):
        out = export / f"merged-{i}.yaml"
        res = _cli("manifest", "merge", *order, "--out", out)
        assert res.exit_code == 0, res.output
        outs.add(out.read_bytes())
    assert len(outs) == 1
    merged = mf.load_manifest(export / "merged-0.yaml")
    assert len(merged.profiles) == 3 and manifest_verify.verify_manifest(merged) == []
    again = _cli("manifest", "merge", export / "merged-0.yaml", *frags, "--out", export / "merged-0.yaml")
    assert again.exit_code == 0 and (export / "merged-0.yaml").read_bytes() in outs


def test_merge_same_bytes_other_metrics_is_not_a_conflict_and_is_order_independent(tmp_path):
    """A runner re-run (the same engine file, another latency figure) merges; the kept metrics do not
    depend on the order of the inputs; other bytes under the same ID stay a conflict (test above)."""
    a_prof = _profile(tmp_path, "fp16", files={"m.bin": b"same"})
    b_prof = _profile(tmp_path, "fp16", files={"m.bin": b"same"})
    a_prof.metrics, b_prof.metrics = {"latency_ms": 1.5}, {"latency_ms": 1.7}
    a = mf.Manifest(profiles=[a_prof], root=tmp_path, source=tmp_path / "first.yaml")
    b = mf.Manifest(profiles=[b_prof], root=tmp_path, source=tmp_path / "rerun.yaml")
    kept = set()
    for order in ([a, b], [b, a]):
        merged = manifest_merge.merge_manifests(order, root=tmp_path)
        assert len(merged.profiles) == 1
        kept.add(merged.profiles[0].metrics["latency_ms"])
    assert len(kept) == 1


def test_a_cpu_class_fragment_merges_into_another_runner_s_manifest(tmp_path):
    """The CPU-class CI job's hand-off: cpu/<class>/fragment.yaml with the graph beside it; the merge job's
    export made no int8 graph (--cpu-isa none) and its manifest build picks the fragment up."""
    import shutil

    class_job = _fake_export(tmp_path / "class-job")
    frag = _cli("manifest", "fragment", "--export-dir", class_job, "--cpu-isa", "avx2")
    assert frag.exit_code == 0, frag.output
    folder = class_job / "cpu" / "avx2"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "fragment.yaml",
        "int8/model.onnx",
    ]
    release = _fake_export(tmp_path / "release")
    report = json.loads((release / "export_report.json").read_text())
    del report["precisions"]["int8-avx2"]
    shutil.rmtree(release / "onnx" / "cpu-int8-avx2")
    (release / "export_report.json").write_text(json.dumps(report))
    shutil.copytree(folder, release / "cpu" / "avx2")
    assert _cli("manifest", "build", "--export-dir", release).exit_code == 0
    m = mf.load_manifest(release / "manifest.yaml")
    int8 = m.by_name("cpu-int8-avx2-onnxruntime")
    assert int8 is not None and int8.tags["cpu_isa"] == "avx2" and int8.metrics["weight_bits"] == 7
    assert {"cpu/avx2/int8/model.onnx", "tokenizer/tokenizer.json"} <= set(int8.files)
    assert manifest_verify.verify_manifest(m) == []
    # where the class was also exported (a local build that wrote the fragment too): listed once, from onnx/
    assert _cli("manifest", "build", "--export-dir", class_job).exit_code == 0
    local = mf.load_manifest(class_job / "manifest.yaml").by_name("cpu-int8-avx2-onnxruntime")
    assert "onnx/cpu-int8-avx2/model.onnx" in local.files


def test_no_fragment_for_a_class_the_export_did_not_make(tmp_path):
    export = _fake_export(tmp_path / "export")
    res = _cli("manifest", "fragment", "--export-dir", export, "--cpu-isa", "avx512_vnni")
    assert res.exit_code == 1 and "no passed int8 graph for avx512_vnni: lacks avx512_vnni" in str(res.exception)
    assert not (export / "cpu").exists()
