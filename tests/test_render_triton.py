"""Triton model repositories: configs parsed by Triton's own schema, wired to the graph's real tensors."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nimbuild.errors import NimbuildError
from nimbuild.manifest import load_manifest
from nimbuild.render import triton
from nimbuild.runtime import model_store as store
from nimbuild.runtime.triton_repo import checks, contexts, layout, pbtxt, record, serving_overrides
from nimbuild.runtime.triton_repo.onnx_io import read_graph_io

sys.path.insert(0, str(Path(__file__).parent))
from render_support import build_manifest, write_graph, write_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """One export-like folder with 2 ONNX + 3 TensorRT profiles, rendered once (link mode)."""
    root = tmp_path_factory.mktemp("render") / "exp"
    manifest_path = build_manifest(root)
    serving = contexts.ServingOptions(max_queue_delay_us=250, preferred_batch_sizes=(8, 32))
    result = triton.render_all(manifest_path, root, serving=serving)
    return manifest_path, result


def _config(path: Path):
    return pbtxt.parse_config(path.read_text(encoding="utf-8"), str(path))


def _repo(result, name):
    return next(r for r in result.repositories if r.name == name)


def test_every_profile_gets_a_repository_whose_configs_parse_with_tritons_schema(rendered):
    manifest_path, result = rendered
    manifest = load_manifest(manifest_path)
    names = {r.name for r in result.repositories}
    assert {p.name for p in manifest.profiles} <= names
    assert "tensorrt-fp16-by-compute-capability" in names
    for repo in result.repositories:
        assert repo.schema_checked
        assert sorted(repo.models) == ["ensemble", "reranker", "tokenizer"]
        for model in repo.models:
            cfg = _config(repo.path / model / "config.pbtxt")
            assert cfg.name == model
        assert checks.check_repository(repo.path) == []


def test_model_config_matches_the_graph_and_the_profile(rendered):
    manifest_path, result = rendered
    manifest = load_manifest(manifest_path)
    mc = pbtxt.model_config_module()
    io = read_graph_io(manifest.root / "onnx" / "fp32" / "model.onnx", use_onnx=True)
    for profile in manifest.profiles:
        cfg = _config(manifest.root / "triton" / profile.name / "reranker" / "config.pbtxt")
        assert cfg.max_batch_size == int(profile.tags["max_batch_size"]) == 16
        assert [(t.name, mc.DataType.Name(t.data_type)) for t in cfg.input] == [
            (t.name, t.triton_type) for t in io.inputs
        ]
        assert all(list(t.dims) == [-1] for t in cfg.input)
        assert [(t.name, list(t.dims)) for t in cfg.output] == [("logits", [1])]
        # recipe's preferred sizes above the profile's max_batch_size (32 > 16) are dropped
        assert list(cfg.dynamic_batching.preferred_batch_size) == [8]
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
        kind = mc.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind)
        if profile.tags["backend"] == "tensorrt":
            assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
            assert kind == "KIND_GPU"
            assert (manifest.root / "triton" / profile.name / "reranker" / "1" / "model.plan").read_bytes() == (
                manifest.root / next(iter(r for r in profile.files if r.endswith(".plan")))
            ).read_bytes()
        else:
            assert cfg.backend == "onnxruntime" and cfg.default_model_filename == "model.onnx"
            assert kind == ("KIND_CPU" if profile.tags["device"] == "cpu" else "KIND_GPU")
            params = {k: v.string_value for k, v in cfg.parameters.items()}
            assert params["intra_op_thread_count"] == ("0" if profile.tags["device"] == "cpu" else "1")
            assert params["inter_op_thread_count"] == "1"
            assert cfg.optimization.graph.level == 1


def test_engines_for_several_compute_capabilities_share_one_repository(rendered):
    _, result = rendered
    repo = _repo(result, "tensorrt-fp16-by-compute-capability")
    cfg = _config(repo.path / "reranker" / "config.pbtxt")
    assert dict(cfg.cc_model_filenames) == {"8.0": "model_sm80.plan", "9.0": "model_sm90.plan"}
    assert (repo.path / "reranker" / "1" / "model_sm80.plan").read_bytes() == b"engine for NVIDIA-A100-SXM4-80GB"
    # H100 and H200 are both 9.0: one engine there, said so
    assert (repo.path / "reranker" / "1" / "model_sm90.plan").read_bytes() == b"engine for NVIDIA-H100-80GB-HBM3"
    assert any("9.0" in n and "h200" in n for n in repo.notes)
    assert len(repo.profile_ids) == 3


def test_tokenizer_and_ensemble_are_wired_to_the_models_inputs(rendered):
    _, result = rendered
    repo = _repo(result, "cpu-int8-avx2-onnxruntime")
    tok = _config(repo.path / "tokenizer" / "config.pbtxt")
    model = _config(repo.path / "reranker" / "config.pbtxt")
    ens = _config(repo.path / "ensemble" / "config.pbtxt")
    assert tok.backend == "python"
    assert [(t.name, t.data_type) for t in tok.output] == [(t.name, t.data_type) for t in model.input]
    assert [s.model_name for s in ens.ensemble_scheduling.step] == ["tokenizer", "reranker"]
    assert [t.name for t in ens.output] == ["logits"]
    assert (repo.path / "tokenizer" / "1" / "model.py").is_file()
    assert (repo.path / "tokenizer" / "1" / "tokenizer.json").is_file()


def test_link_mode_makes_relative_links_that_survive_a_move(rendered, tmp_path):
    manifest_path, result = rendered
    repo = _repo(result, "onnx-fp32-triton-onnxruntime")
    link = repo.path / "reranker" / "1" / "model.onnx"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    moved = tmp_path / "moved"
    shutil.copytree(manifest_path.parent, moved, symlinks=True)
    assert (moved / "triton" / repo.name / "reranker" / "1" / "model.onnx").read_bytes() == (
        moved / "onnx" / "fp32" / "model.onnx"
    ).read_bytes()


def test_copy_mode_copies_real_bytes(tmp_path):
    manifest_path = build_manifest(tmp_path / "exp", engines=())
    result = triton.render_all(manifest_path, tmp_path / "out", mode="copy", dockerfile=False)
    for repo in result.repositories:
        model = repo.path / "reranker" / "1" / "model.onnx"
        assert model.is_file() and not model.is_symlink()
        assert (
            model.read_bytes()
            == (tmp_path / "exp" / "onnx" / ("fp32" if "fp32" in repo.name else "cpu-int8") / "model.onnx").read_bytes()
        )


def test_config_types_follow_the_graph_not_a_guess(tmp_path):
    """int32 ids, no token_type_ids (DistilBERT-like), fp16 logits: the config says exactly that."""
    from onnx import TensorProto

    root = tmp_path / "exp"
    manifest_path = build_manifest(root, engines=(), cpu=False)
    graph = write_graph(
        root / "onnx" / "fp32" / "model.onnx",
        inputs=("input_ids", "attention_mask"),
        id_type=TensorProto.INT32,
        out_type=TensorProto.FLOAT16,
    )
    from nimbuild.manifest import file_entry, write_manifest

    manifest = load_manifest(manifest_path)
    manifest.profiles[0].files["onnx/fp32/model.onnx"] = file_entry(root, "onnx/fp32/model.onnx")
    write_manifest(manifest, manifest_path)
    assert graph.is_file()
    result = triton.render_all(manifest_path, root, dockerfile=False)
    repo = result.repositories[0]
    mc = pbtxt.model_config_module()
    cfg = _config(repo.path / "reranker" / "config.pbtxt")
    assert [(t.name, mc.DataType.Name(t.data_type)) for t in cfg.input] == [
        ("input_ids", "TYPE_INT32"),
        ("attention_mask", "TYPE_INT32"),
    ]
    assert mc.DataType.Name(cfg.output[0].data_type) == "TYPE_FP16"
    tok = _config(repo.path / "tokenizer" / "config.pbtxt")
    assert [t.name for t in tok.output] == ["input_ids", "attention_mask"]


def test_a_manifest_that_fails_verification_is_not_rendered(tmp_path):
    root = tmp_path / "exp"
    manifest_path = build_manifest(root, engines=("h100-sxm",))
    plan = root / "engines" / "h100-sxm" / "fp16" / "model.plan"
    plan.write_bytes(plan.read_bytes().replace(b"engine", b"ENGINE"))  # same size, other bytes
    with pytest.raises(NimbuildError) as exc:
        triton.render_all(manifest_path, root)
    assert "does not verify" in str(exc.value) and "model.plan" in str(exc.value)
    assert not (root / "triton").exists() and not (root / "Dockerfile").exists()


def test_a_foreign_non_empty_folder_is_never_replaced(tmp_path):
    root = tmp_path / "exp"
    manifest_path = build_manifest(root, engines=(), cpu=False)
    precious = root / "triton" / "onnx-fp32-triton-onnxruntime" / "notes.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("keep me")
    with pytest.raises(NimbuildError, match="not a nimbuild model repository"):
        triton.render_all(manifest_path, root, dockerfile=False)
    assert precious.read_text() == "keep me"


def test_semantic_check_catches_what_the_schema_cannot(rendered):
    _, result = rendered
    repo = _repo(result, "onnx-fp32-triton-onnxruntime")
    info = record.read_repository_info(repo.path)
    texts = contexts.render_configs(info["models"])
    assert checks.check_configs(texts, info)  # the real record passes
    wrong = json.loads(json.dumps(info))
    wrong["graph_io"]["inputs"][0]["data_type"] = "TYPE_INT32"  # the graph says otherwise
    with pytest.raises(NimbuildError, match="differ from the graph"):
        checks.check_configs(texts, wrong)
    wrong = json.loads(json.dumps(info))
    wrong["serving"]["max_batch_size"] = 64
    with pytest.raises(NimbuildError, match="max_batch_size 16, expected 64"):
        checks.check_configs(texts, wrong)
    with pytest.raises(NimbuildError, match="not a valid Triton ModelConfig"):
        pbtxt.parse_config(texts["reranker"].replace("KIND_GPU", "KIND_TPU"), "x/config.pbtxt")


def test_serve_time_overrides_rewrite_every_config(rendered, tmp_path):
    _, result = rendered
    repo = tmp_path / "repo"
    shutil.copytree(_repo(result, "cpu-int8-avx2-onnxruntime").path, repo, symlinks=True)
    # (the copied links dangle; overrides touch only the configs and the record)
    applied = serving_overrides.apply_serving_overrides(repo, {layout.ENV_MAX_BATCH: "4", layout.ENV_QUEUE_DELAY: "50"})
    assert applied == {"max_batch_size": 4, "max_queue_delay_us": 50, "changed": True}
    for model in ("reranker", "tokenizer", "ensemble"):
        assert _config(repo / model / "config.pbtxt").max_batch_size == 4
    cfg = _config(repo / "reranker" / "config.pbtxt")
    assert list(cfg.dynamic_batching.preferred_batch_size) == []  # 8 > 4: dropped
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 50
    # back up to the profile's limit: the recipe's preferred size 8 returns
    serving_overrides.apply_serving_overrides(repo, {layout.ENV_MAX_BATCH: "16"})
    assert list(_config(repo / "reranker" / "config.pbtxt").dynamic_batching.preferred_batch_size) == [8]
    assert serving_overrides.apply_serving_overrides(repo, {})["changed"] is False
    with pytest.raises(NimbuildError, match="NIM_TRITON_MAX_BATCH_SIZE='17'.*1..16"):
        serving_overrides.apply_serving_overrides(repo, {layout.ENV_MAX_BATCH: "17"})
    with pytest.raises(NimbuildError, match="NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS"):
        serving_overrides.apply_serving_overrides(repo, {layout.ENV_QUEUE_DELAY: "soon"})


def test_light_onnx_reader_agrees_with_onnx(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graphs = [
        write_graph(tmp_path / "a.onnx"),
        write_graph(
            tmp_path / "b.onnx",
            inputs=("input_ids", "attention_mask"),
            id_type=TensorProto.INT32,
            out_type=TensorProto.FLOAT16,
        ),
        write_graph(tmp_path / "ext" / "model.onnx", external_data=True),
    ]
    # an old-style graph that lists its initializers among the inputs (IR 3): they are not inputs
    m = onnx.load(str(graphs[0]))
    for init in m.graph.initializer:
        m.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    old = tmp_path / "old.onnx"
    onnx.save(m, str(old))
    graphs.append(old)
    for g in graphs:
        heavy, light = read_graph_io(g, use_onnx=True), read_graph_io(g, use_onnx=False)
        assert heavy == light
        assert "w" not in [t.name for t in light.inputs]
    with pytest.raises(NimbuildError, match="not a readable ONNX model"):
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(graphs[0].read_bytes()[:40])
        read_graph_io(bad, use_onnx=False)


def _load_tokenizer_model():
    path = REPO / "nimbuild" / "templates" / "triton_tokenizer_model.py"
    spec = importlib.util.spec_from_file_location("triton_tokenizer_model_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_triton_tokenizer_builds_the_same_rows_as_the_server(tmp_path):
    """The ensemble's python part and nimbuild serve must feed the model identical tokens."""
    from tokenizers import Tokenizer

    from nimbuild.runtime.serve.tokenize import PairTokenizer, pad_rows

    tok_json = write_tokenizer(tmp_path / "tok")
    module = _load_tokenizer_model()
    tokenizer = Tokenizer.from_file(str(tok_json))
    encoder = module.PairEncoder(
        tokenizer, 12, module.pad_id_of(tokenizer, str(tmp_path / "tok" / "tokenizer_config.json"))
    )
    query = "why do the seasons change on earth"
    passages = ["the tilt of the axis", "coffee", "the sun " * 20]  # the last one is cut at the END
    got = encoder.encode([query] * len(passages), passages)
    server = PairTokenizer.from_files(tok_json, 12)
    ids, mask, types = pad_rows(server.encode(query, passages, truncate="END"), server.pad_id)
    np.testing.assert_array_equal(got["ids"], ids)
    np.testing.assert_array_equal(got["mask"], mask)
    np.testing.assert_array_equal(got["type_ids"], types)
    assert got["ids"].shape[1] == 12 and got["mask"][2].sum() == 12


def test_rendered_onnx_model_runs_on_the_tokenizers_output(rendered):
    """In-process stand-in for the ensemble: tokenizer rows -> the repository's model.onnx -> one logit per passage."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    _, result = rendered
    repo = _repo(result, "cpu-int8-avx2-onnxruntime").path
    module = _load_tokenizer_model()
    tokenizer = Tokenizer.from_file(str(repo / "tokenizer" / "1" / "tokenizer.json"))
    info = record.read_repository_info(repo)
    encoder = module.PairEncoder(
        tokenizer,
        info["limits"]["max_sequence_length"],
        module.pad_id_of(tokenizer, str(repo / "tokenizer" / "1" / "tokenizer_config.json")),
    )
    encoded = encoder.encode(["what is the sun"] * 3, ["the sun is light", "coffee", "a city train"])
    session = ort.InferenceSession(str(repo / "reranker" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {i.name: encoded[module.FEEDS[i.name]] for i in session.get_inputs()}
    (logits,) = session.run(None, feeds)
    assert logits.shape == (3, 1)
    expected = 0.5 * (encoded["ids"] * encoded["mask"]).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(logits, expected)


def test_cli_render_json_and_refusal(tmp_path):
    root = tmp_path / "exp"
    manifest_path = build_manifest(root, engines=("l40s",), gpu_onnx=False)
    cmd = [sys.executable, "-m", "nimbuild", "render", "--manifest", str(manifest_path), "--json", "--copy"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert {Path(r["path"]).name for r in data["repositories"]} == {
        "cpu-int8-avx2-onnxruntime",
        "l40s-48gb-fp16-triton-tensorrt",
    }
    assert Path(data["container"]["dockerfile"]) == root / "Dockerfile"
    (root / "onnx" / "cpu-int8" / "model.onnx").unlink()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "missing" in done.stderr and done.stderr.count("\n") == 1


# ----------------------------------------------------------------------------- a real tritonserver

TRITON_VENV = Path(os.environ.get("NIMBUILD_TRITON_VENV", REPO / ".venv-triton"))

STAND_IN_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Stand-in for the ONNX graph (no onnxruntime backend in pytriton's Triton): the same function."""

    def execute(self, requests):
        out = []
        for request in requests:
            ids = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy()
            mask = pb_utils.get_input_tensor_by_name(request, "attention_mask").as_numpy()
            logits = (0.5 * (ids * mask).sum(axis=1, keepdims=True)).astype(np.float32)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("logits", logits)]))
        return out
'''


def _triton_install():
    """(tritonserver, backend folder, its python's lib dir) from .venv-triton, or a skip reason."""
    python = TRITON_VENV / "bin" / "python"
    if not python.is_file():
        return None, f"no {TRITON_VENV} (make venv-triton installs nvidia-pytriton's tritonserver there)"
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import json, sys, sysconfig, pytriton, os; print(json.dumps("
            "[os.path.dirname(pytriton.__file__), sysconfig.get_config_var('LIBDIR'), "
            "'%d.%d' % sys.version_info[:2]]))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        return None, f"{TRITON_VENV} has no usable pytriton: {probe.stderr.strip()[-200:]}"
    pkg, libdir, version = json.loads(probe.stdout)
    server = Path(pkg) / "tritonserver"
    stub = server / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not (server / "bin" / "tritonserver").is_file() or not stub.is_file():
        return None, f"pytriton in {TRITON_VENV} has no tritonserver/python stub for Python {version}"
    return (server, stub, libdir), None


def _post(url: str, body: dict):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_real_tritonserver_serves_the_tokenizer_and_the_ensemble(rendered, tmp_path):
    """Triton itself loads the rendered tokenizer and ensemble configs and answers raw-text requests."""
    import time
    import urllib.request

    from google.protobuf import text_format

    install, reason = _triton_install()
    if install is None:
        pytest.skip(reason)
    server, stub, libdir = install
    backends = tmp_path / "backends"
    shutil.copytree(server / "backends", backends)
    shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    repo = tmp_path / "repo"
    shutil.copytree(_repo(rendered[1], "cpu-int8-avx2-onnxruntime").path, repo, symlinks=False)
    # the graph runs in a python stand-in with the rendered config's exact inputs/outputs/batching
    cfg = _config(repo / "reranker" / "config.pbtxt")
    cfg.backend = "python"
    cfg.ClearField("optimization")
    cfg.ClearField("parameters")
    cfg.ClearField("default_model_filename")
    (repo / "reranker" / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    (repo / "reranker" / "1" / "model.onnx").unlink()
    (repo / "reranker" / "1" / "model.py").write_text(STAND_IN_MODEL)

    http = _free_port()
    env = dict(
        os.environ,
        PATH=f"{TRITON_VENV / 'bin'}:{os.environ.get('PATH', '')}",
        LD_LIBRARY_PATH=":".join(
            filter(
                None, [libdir, str(server.parent.parent / "nvidia_pytriton.libs"), os.environ.get("LD_LIBRARY_PATH")]
            )
        ),
    )
    log = tmp_path / "tritonserver.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [
                str(server / "bin" / "tritonserver"),
                f"--model-repository={repo}",
                f"--backend-directory={backends}",
                f"--http-port={http}",
                f"--grpc-port={_free_port()}",
                "--allow-metrics=false",
                "--http-address=127.0.0.1",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base = f"http://127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "tritonserver not ready: " + log.read_text()[-3000:]
            time.sleep(0.3)

        query = "why do the seasons change on earth"
        passages = ["the tilt of the axis", "coffee", "the sun " * 20]
        text_inputs = [
            {"name": "query", "shape": [3, 1], "datatype": "BYTES", "data": [query] * 3},
            {"name": "passage", "shape": [3, 1], "datatype": "BYTES", "data": passages},
        ]
        status, tokens = _post(f"{base}/v2/models/tokenizer/infer", {"inputs": text_inputs})
        assert status == 200, tokens
        got = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in tokens["outputs"]}
        module = _load_tokenizer_model()
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(repo / "tokenizer" / "1" / "tokenizer.json"))
        encoder = module.PairEncoder(
            tok, 32, module.pad_id_of(tok, str(repo / "tokenizer" / "1" / "tokenizer_config.json"))
        )
        want = encoder.encode([query] * 3, passages)
        np.testing.assert_array_equal(got["input_ids"], want["ids"])
        np.testing.assert_array_equal(got["attention_mask"], want["mask"])
        np.testing.assert_array_equal(got["token_type_ids"], want["type_ids"])
        assert got["input_ids"].shape[1] == 32  # the long passage was cut to max_sequence_length

        status, ranked = _post(f"{base}/v2/models/ensemble/infer", {"inputs": text_inputs})
        assert status == 200, ranked
        (logits,) = [np.array(o["data"]).reshape(o["shape"]) for o in ranked["outputs"] if o["name"] == "logits"]
        np.testing.assert_allclose(logits, 0.5 * (want["ids"] * want["mask"]).sum(axis=1, keepdims=True))

        # bad requests fail alone (the configs' shapes and max_batch_size hold); the server keeps serving
        bad = [dict(text_inputs[0]), {**text_inputs[1], "shape": [2, 1], "data": passages[:2]}]
        status, err = _post(f"{base}/v2/models/ensemble/infer", {"inputs": bad})
        assert status == 400 and "batch size does not match" in err.get("error", "")
        too_many = [{**t, "shape": [17, 1], "data": t["data"][:1] * 17} for t in text_inputs]
        status, err = _post(f"{base}/v2/models/ensemble/infer", {"inputs": too_many})
        assert status == 400 and "batch-size must be <= 16" in err.get("error", ""), err
        assert _post(f"{base}/v2/models/ensemble/infer", {"inputs": text_inputs})[0] == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_a_profile_without_a_triton_backend_is_skipped_with_a_reason(tmp_path):
    from nimbuild.manifest import Profile, file_entry, write_manifest
    from nimbuild.profiles import profile_id

    root = tmp_path / "exp"
    manifest_path = build_manifest(root, engines=(), cpu=False)
    manifest = load_manifest(manifest_path)
    tags = {
        "model": "tiny",
        "model_revision": "0" * 12,
        "backend": "pytorch",
        "device": "cpu",
        "precision": "fp32",
        "max_batch_size": "16",
        "max_sequence_length": "32",
    }
    manifest.profiles.append(
        Profile(
            id=profile_id(tags),
            name="cpu-fp32-pytorch",
            tags=tags,
            files={"onnx/fp32/model.onnx": file_entry(root, "onnx/fp32/model.onnx")},
        )
    )
    write_manifest(manifest, manifest_path)
    result = triton.render_all(manifest_path, root)
    assert [r.name for r in result.repositories] == ["onnx-fp32-triton-onnxruntime"]
    assert result.skipped == ["cpu-fp32-pytorch: backend 'pytorch' has no Triton model; not rendered"]


def test_the_real_export_of_the_example_renders_and_every_config_parses(exported_copy, example_recipe, tmp_path):
    """The issue's bar, on the shared export of recipes/example-tiny (what `nimbuild build` renders)."""
    from nimbuild.builder.assemble import build_manifest as assemble

    manifest, manifest_path = assemble(exported_copy)
    result = triton.render_all(manifest_path, exported_copy, recipe_path=example_recipe)
    assert {r.name for r in result.repositories} == {p.name for p in manifest.profiles}
    configs = sorted((exported_copy / "triton").glob("*/*/config.pbtxt"))
    assert len(configs) == 3 * len(manifest.profiles)
    for path in configs:
        pbtxt.parse_config(path.read_text(encoding="utf-8"), str(path))
    for repo in result.repositories:
        assert checks.check_repository(repo.path) == []
    assert (exported_copy / "Dockerfile").is_file()
    made = store.create_model_store(manifest_path, manifest.profiles[0].id[:10], tmp_path / "store", env={})
    assert made.reused_record and checks.check_repository(tmp_path / "store") == []
