"""NIM's own manifests (v2 and v1), key != uri, and the NIM Operator's commands on nimbuild's manifests.

The operator's calls followed here (github.com/NVIDIA/k8s-nim-operator at f63f74d7,
internal/controller/nimcache_controller.go, constructJob): ``download-to-cache --all``,
``download-to-cache --profiles ID ...``, ``create-model-store --model-repo R --model-store /model-store``,
each with ``NIM_CACHE_PATH=/model-store``; its manifest probe reads
``/opt/nim/etc/default/model_manifest.yaml``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from nimbuild import manifest as mf
from nimbuild import manifest_merge, manifest_paths, manifest_verify
from nimbuild.errors import NimbuildError
from nimbuild.runtime.hardware import assumed_host
from nimbuild.runtime.selection import select

REF = Path(__file__).resolve().parents[1] / ".." / "shared" / "ref" / "nim-operator"
NO_OVERRIDES: dict[str, str] = {}


def _ref(name: str) -> Path:
    path = REF / name
    if not path.is_file():
        pytest.skip(f"{path} is not here (the NIM Operator's test data, see shared/ref/nim-operator/README.md)")
    return path


def _cpu_host():
    host = assumed_host([])
    return host


# ----------------------------------------------------------------------------- NVIDIA's own test data


def test_nvidias_v2_test_manifest_lists_and_classifies(tmp_path):
    m = mf.load_manifest(_ref("manifest_v2.yaml"))
    assert m.opaque_ids and m.source_format == "nim-v2" and len(m.profiles) == 2
    trt, vllm = m.profiles
    assert trt.id == "aaaabbbbccccddddeeeeffff0000111122223333444455556666777788889999"
    assert trt.name == "tensorrt_llm-L40S-fp16-tp8-throughput" and vllm.name == "vllm-fp16-tp1-latency"
    assert trt.files["engine"].uri == "ngc://org/team/model/engine.bin" and trt.files["engine"].sha256 is None
    # nimbuild serves rerankers: NIM's LLM profiles are listed, incompatible, with the reason
    sel = select(m, assumed_host(["l40s x8"]), NO_OVERRIDES)
    assert sel.selected is None
    assert all(c.status == "incompatible" and "llm_engine" in c.reason for c in sel.classified)
    notes: list[str] = []
    assert manifest_verify.verify_manifest(m, notes=notes, absent_remote_ok=True) == []
    assert any("not recomputed" in n for n in notes) and sum("not downloaded" in n for n in notes) == 4


def test_nvidias_v1_non_llm_manifest_honours_product_name_regex():
    m = mf.load_manifest(_ref("manifest_non_llm.yaml"))
    assert m.source_format == "nim-v1" and m.opaque_ids
    by_id = {p.id[:8]: p for p in m.profiles}
    onnx, trt = by_id["2ad8fe56"], by_id["72972bc1"]
    assert trt.tags["product_name_regex"] == "^NVIDIA-A10(?!0).*"
    # the lookahead the Operator's Go RE2 cannot evaluate: A10G matches, A100 does not
    a10g = select(m, assumed_host(["NVIDIA A10G"]), NO_OVERRIDES)
    assert next(c for c in a10g.classified if c.profile is trt).status == "runnable"
    a100 = select(m, assumed_host(["a100-sxm4-80gb"]), NO_OVERRIDES)
    entry = next(c for c in a100.classified if c.profile is trt)
    assert entry.status == "incompatible" and "product name matches" in entry.reason
    assert next(c for c in a100.classified if c.profile is onnx).status == "runnable"
    assert a10g.selected is trt  # TensorRT > ONNX


# ----------------------------------------------------------------------------- hand-written NIM manifests


def _blob(root: Path, rel: str, data: bytes) -> dict:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"uri": rel}


def _nim_reranker(tmp_path: Path, example_export: Path, *, with_sha: bool) -> Path:
    """A NIM-shaped v2 manifest (opaque IDs, no names, key != uri, NIM tag names) over the example's files."""
    root = tmp_path / "nim"
    root.mkdir()
    src = mf.load_manifest(example_export / "manifest.yaml")
    cpu = next(p for p in src.profiles if p.tags.get("device") == "cpu")
    files = {}
    for rel in cpu.files:
        data = mf.file_in(src.root, cpu, rel).read_bytes()
        key = "model.onnx" if rel.endswith(".onnx") else rel.rsplit("/", 1)[-1]
        files[key] = _blob(root, f"profiles/cpu-abc/{key}", data)
        if with_sha:
            files[key].update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    profiles = [
        {
            "id": "4f7e0c3b-5f0e-4c3a-9f7a-1c2d3e4f5a6b",
            "tags": {"backend": "onnx", "precision": "int8", "device": "cpu", "max_batch_size": 8, "model": "x"},
            "workspace": {"files": files},
        },
        {
            "id": "b" * 64,
            "tags": {"backend": "tensorrt", "gpu": "L40S", "gpu_device": "26b9:10de", "precision": "fp16", "tp": "2"},
            "workspace": {"files": {"model.plan": {"uri": "ngc://nim/org/reranker:1.0?file=model.plan"}}},
        },
    ]
    path = root / "model_manifest.yaml"
    path.write_text(
        yaml.safe_dump({"schema_version": "2.0.0", "profile_selection_criteria": "default", "profiles": profiles})
    )
    return path


@pytest.fixture(scope="module")
def example_export(tmp_path_factory, exported_example):
    from nimbuild.builder.assemble import build_manifest

    out = tmp_path_factory.mktemp("export") / "out"
    shutil.copytree(exported_example, out)
    build_manifest(out, [], None, discover=False)
    return out


@pytest.fixture(scope="module")
def two_profiles(example_export):
    """The example's manifest with a second profile (other tags, the same files)."""
    from dataclasses import replace

    from nimbuild.profiles import profile_id

    m = mf.load_manifest(example_export / "manifest.yaml")
    first = m.profiles[0]
    tags = dict(first.tags, max_batch_size="32")
    second = replace(first, id=profile_id(tags), name=f"{first.name}-b32", tags=tags)
    path = example_export / "two.yaml"
    mf.write_manifest(mf.Manifest(profiles=[first, second], header=m.header, root=m.root), path)
    return path


@pytest.mark.parametrize("with_sha", [False, True])
def test_a_hand_written_nim_manifest_lists_selects_and_verifies(tmp_path, example_export, with_sha):
    path = _nim_reranker(tmp_path, example_export, with_sha=with_sha)
    m = mf.load_manifest(path)
    cpu, trt = m.profiles
    assert cpu.tags["max_batch_size"] == "8"  # NIM's Go parser reads `8` as "8"
    assert cpu.name == "onnx-int8" and trt.name == "tensorrt-L40S-fp16-tp2"
    sel = select(m, _cpu_host(), NO_OVERRIDES)
    assert sel.selected is cpu
    # tp counts GPUs: an L40S host with one GPU can run it but not on that few; two is enough hardware,
    # but its engine is remote (ngc://) and not cached: not runnable, and the reason says why
    one = next(c for c in select(m, assumed_host(["l40s"]), NO_OVERRIDES).classified if c.profile is trt)
    assert one.status == "not_runnable" and "2 GPUs" in one.reason
    two = next(c for c in select(m, assumed_host(["l40s x2"]), NO_OVERRIDES).classified if c.profile is trt)
    assert two.status == "not_runnable" and "ngc://" in two.reason and "download-to-cache" in two.reason
    h100 = next(c for c in select(m, assumed_host(["h100-sxm"]), NO_OVERRIDES).classified if c.profile is trt)
    assert h100.status == "incompatible" and "26b9:10de" in h100.reason
    notes: list[str] = []
    assert manifest_verify.verify_manifest(m, notes=notes, absent_remote_ok=True) == []
    unverified = [n for n in notes if "unverified" in n]
    assert len(unverified) == (0 if with_sha else len(cpu.files))
    # the bytes are read at the uri, never at the key
    (path.parent / "profiles/cpu-abc/model.onnx").write_bytes(b"x")
    problems = manifest_verify.verify_manifest(m, absent_remote_ok=True)
    if with_sha:
        assert len(problems) == 1 and "profiles/cpu-abc/model.onnx" in problems[0]
    else:  # nothing to compare with: said, not refused
        assert problems == []
    (path.parent / "profiles/cpu-abc/model.onnx").unlink()
    problems = manifest_verify.verify_manifest(m, absent_remote_ok=True)
    assert len(problems) == 1 and "missing" in problems[0] and "profiles/cpu-abc/model.onnx" in problems[0]


def test_a_hand_written_nim_manifest_serves(tmp_path, example_export):
    from nimbuild.runtime.serve.server import start_service

    path = _nim_reranker(tmp_path, example_export, with_sha=False)
    service = start_service(path, env={"NIM_CPU_ONLY": "1"})
    try:
        import asyncio

        service.start()
        ranked = asyncio.run(service.rank("how do vaccines work", ["Vaccines train the immune system.", "noon"], "END"))
        assert ranked.logits.shape == (2,) and ranked.tokens > 0
    finally:
        service.stop()


def test_nim_v1_components_become_files_with_nims_uri_form(tmp_path):
    path = tmp_path / "model_manifest.yaml"
    path.write_text(
        "abc123:\n"
        "  model: nvidia/reranker\n  release: '1.0.0'\n"
        "  tags: {backend: onnx, precision: fp16, key: onnx}\n"
        "  workspace: !workspace\n    components:\n"
        "    - dst: onnx\n      src:\n        repo_id: ngc://nim/nvidia/reranker:onnx\n"
        "        files: [!name 'model.onnx', !name 'tokenizer.json']\n"
    )
    m = mf.load_manifest(path)
    (p,) = m.profiles
    assert p.extra["model"] == "nvidia/reranker" and p.extra["release"] == "1.0.0"
    assert p.files["onnx/model.onnx"].uri == "ngc://nim/nvidia/reranker:onnx?file=model.onnx"
    assert manifest_paths.remote_cache_relpath(p.files["onnx/model.onnx"].uri).startswith("remote/ngc/nim/nvidia/")


@pytest.mark.parametrize(
    "uri",
    ["ngc://../../etc/passwd", "https://h/a/../../../x", "https://h/%2e%2e/x", "ngc://org/.."],
)
def test_a_remote_uri_never_names_a_path_outside_the_cache(uri):
    rel = manifest_paths.remote_cache_relpath(uri)
    manifest_paths.check_relpath(rel)  # no '..', not absolute
    assert rel.startswith("remote/")


def test_opaque_ids_are_checked_for_what_they_may_hold(tmp_path):
    for bad in ["../x", "a b", "id\n2", "", "x" * 200]:
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump({"schema_version": "2.0.0", "profiles": [{"id": bad, "tags": {"a": "b"}}]}))
        with pytest.raises(NimbuildError, match=r"\.id"):
            mf.load_manifest(path)


def test_nimbuilds_own_manifests_still_recompute_ids(tmp_path, example_export):
    m = mf.load_manifest(example_export / "manifest.yaml")
    assert not m.opaque_ids and m.source_format == "nimbuild"
    data = yaml.safe_load((example_export / "manifest.yaml").read_text())
    data["profiles"][0]["tags"]["precision"] = "fp8"
    path = example_export / "edited.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(NimbuildError, match="does not match its tags"):
        mf.load_manifest(path)
    del data["profiles"][0]["workspace"]["files"][next(iter(data["profiles"][0]["workspace"]["files"]))]["sha256"]
    data["profiles"][0]["tags"]["precision"] = m.profiles[0].tags["precision"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(NimbuildError, match="sha256"):  # nimbuild writes a sha256 for every file
        mf.load_manifest(path)


def test_mixing_nim_and_nimbuild_manifests_in_a_merge_is_refused(tmp_path, example_export):
    nim = mf.load_manifest(_nim_reranker(tmp_path, example_export, with_sha=True))
    own = mf.load_manifest(example_export / "manifest.yaml")
    with pytest.raises(NimbuildError, match="opaque"):
        manifest_merge.merge_manifests([own, nim])


# ----------------------------------------------------------------------------- the NIM Operator's commands


def _run(main, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def test_download_to_cache_in_the_operators_forms(tmp_path, two_profiles, capsys, monkeypatch):
    from nimbuild.cli import download_to_cache_main

    m = mf.load_manifest(two_profiles)
    ids = [p.id for p in m.profiles]
    cache = tmp_path / "model-store"
    monkeypatch.setenv("NIM_CACHE_PATH", str(cache))
    monkeypatch.setenv("NIM_MANIFEST_PATH", str(two_profiles))
    code, out, err = _run(download_to_cache_main, ["--profiles", ids[0], ids[0][:12], "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert [p["profile_id"] for p in result["profiles"]] == ids[:1]  # the same profile twice: once
    for entry in m.profiles[0].files.values():
        assert (cache / entry.bytes_path).read_bytes() == manifest_paths.safe_join(m.root, entry.uri).read_bytes()
    code, out, err = _run(download_to_cache_main, ["--profiles", ids[1], ids[0], "--json"], capsys)
    assert code == 0, err
    assert [p["profile_id"] for p in json.loads(out)["profiles"]] == [ids[1], ids[0]]
    code, out, err = _run(download_to_cache_main, ["--all", "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert len(result["profiles"]) == len(ids) == 2
    assert all(not s["copied"] for s in result["profiles"])  # already cached: kept, not fetched again
    code, _, err = _run(download_to_cache_main, ["--profiles", "nope-nope"], capsys)
    assert code == 1 and "no profile 'nope-nope'" in err
    code, _, err = _run(download_to_cache_main, ["--all", "--profiles", ids[0]], capsys)
    assert code == 1 and "not both" in err
    code, _, err = _run(download_to_cache_main, ["--model-uri", "hf://x/y"], capsys)
    assert code == 1 and "not a model-free NIM" in err


def test_download_to_cache_without_profiles_takes_the_selection(tmp_path, example_export, capsys, monkeypatch):
    from nimbuild.cli import download_to_cache_main

    monkeypatch.setenv("NIM_CPU_ONLY", "1")
    monkeypatch.setenv("NIM_MANIFEST_PATH", str(example_export / "manifest.yaml"))
    code, out, err = _run(download_to_cache_main, ["--cache-path", str(tmp_path / "c"), "--json"], capsys)
    assert code == 0, err
    (only,) = json.loads(out)["profiles"]
    from nimbuild.runtime import hardware, selection

    manifest = mf.load_manifest(example_export / "manifest.yaml")
    chosen = selection.select(manifest, hardware.host_for(os.environ), os.environ).selected
    assert chosen is not None and only["profile_name"] == chosen.name


def test_create_model_store_in_the_operators_form(tmp_path, example_export, capsys, monkeypatch):
    from nimbuild.cli import create_model_store_main

    monkeypatch.setenv("NIM_CPU_ONLY", "1")
    monkeypatch.delenv("NIM_MANIFEST_PATH", raising=False)
    store = tmp_path / "model-store"
    code, out, err = _run(
        create_model_store_main, ["--model-repo", str(example_export), "--model-store", str(store), "--json"], capsys
    )
    assert code == 0, err
    made = json.loads(out)
    assert (store / "reranker" / "config.pbtxt").is_file() and "cpu" in made["profile_name"]
    code, _, err = _run(create_model_store_main, ["--model-repo", "ngc://a/b", "--model-store", str(store)], capsys)
    assert code == 1 and "not from a URL" in err
    code, out, _ = _run(create_model_store_main, ["--help"], capsys)
    assert code == 0 and "--model-repo" in out and "Example:" in out


def test_the_operators_manifest_path_is_the_default(tmp_path, monkeypatch):
    from nimbuild.runtime import selection

    target = tmp_path / "opt-nim-etc-default" / "model_manifest.yaml"
    target.parent.mkdir()
    target.write_text("schema_version: 2.0.0\nprofiles: []\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(selection, "OPERATOR_MANIFEST_PATHS", (str(tmp_path / "missing.yaml"), str(target)))
    assert selection.default_manifest_path({}) == target
    assert selection.default_manifest_path({"NIM_MANIFEST_PATH": "/x.yaml"}) == Path("/x.yaml")


def test_a_symlinked_manifest_reads_its_files_beside_its_target(tmp_path, example_export):
    link = tmp_path / "etc" / "model_manifest.yaml"
    link.parent.mkdir()
    link.symlink_to(example_export / "manifest.yaml")
    m = mf.load_manifest(link)
    assert m.root == example_export.resolve() and manifest_verify.verify_manifest(m) == []


# ----------------------------------------------------------------------------- size-capped downloads


@pytest.fixture
def http_server():
    """A server on 127.0.0.1 that sends 8 MiB for any path (and announces no length when the path says so)."""
    import http.server
    import threading

    sent = {"bytes": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            if "nolength" not in self.path:
                self.send_header("Content-Length", str(8 << 20))
            self.end_headers()
            try:
                for _ in range(8 << 4):
                    self.wfile.write(b"\0" * (1 << 16))
                    sent["bytes"] += 1 << 16
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", sent
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("path", ["/announced", "/nolength"])
def test_a_remote_file_larger_than_its_size_is_cut_off(tmp_path, http_server, path):
    from nimbuild.runtime.model_store import download_to_cache

    url, sent = http_server
    manifest = tmp_path / "m.yaml"
    entry = {"uri": url + path, "sha256": "0" * 64, "size": 1000}
    manifest.write_text(
        yaml.safe_dump(
            {
                "schema_version": "2.0.0",
                "profiles": [{"id": "x1", "tags": {"backend": "onnx"}, "workspace": {"files": {"model.onnx": entry}}}],
            }
        )
    )
    with pytest.raises(NimbuildError) as exc:
        download_to_cache(manifest, "x1", cache_path=tmp_path / "cache", env={})
    assert ("announces" in str(exc.value)) == (path == "/announced")
    assert not list((tmp_path / "cache").rglob("*.onnx")), "nothing half-downloaded is left under its name"
    assert not list((tmp_path / "cache").rglob("*.partial"))


def test_a_remote_file_without_a_size_has_a_cap(tmp_path, http_server):
    from nimbuild.runtime.model_store import download_to_cache

    url, _ = http_server
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "schema_version": "2.0.0",
                "profiles": [
                    {"id": "x1", "tags": {"backend": "onnx"}, "workspace": {"files": {"a": {"uri": url + "/nolength"}}}}
                ],
            }
        )
    )
    with pytest.raises(NimbuildError, match="NIMBUILD_MAX_DOWNLOAD_BYTES"):
        download_to_cache(manifest, "x1", cache_path=tmp_path / "c", env={"NIMBUILD_MAX_DOWNLOAD_BYTES": "4096"})
    result = download_to_cache(manifest, "x1", cache_path=tmp_path / "c", env={})  # under the default cap: fetched
    assert result["profiles"][0]["unverified"] == ["a"]
    assert (tmp_path / "c" / manifest_paths.remote_cache_relpath(url + "/nolength")).stat().st_size == 8 << 20


def test_the_schema_describes_what_nimbuild_writes_and_what_it_reads(tmp_path):
    import jsonschema

    from nimbuild.manifest_nim import LOCAL_TAGS
    from nimbuild.safeload import parse_yaml

    schema = mf.json_schema()  # nimbuild/data/manifest.schema.json, inside the package
    jsonschema.Draft202012Validator.check_schema(schema)
    own = yaml.safe_load((Path(__file__).resolve().parents[1] / "manifests" / "example-tiny.yaml").read_text())
    for doc in (
        own,
        yaml.safe_load(_ref("manifest_v2.yaml").read_text()),
        parse_yaml(_ref("manifest_non_llm.yaml").read_text(), local_tags=LOCAL_TAGS),
    ):
        jsonschema.validate(doc, schema)
    first = next(iter(own["profiles"][0]["workspace"]["files"].values()))
    del first["sha256"]  # nimbuild's own manifests carry every checksum
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(own, schema)
