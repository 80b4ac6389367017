"""create-model-store and download-to-cache: one profile, on disk, every byte checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nimbuild.errors import NimbuildError
from nimbuild.fsutil import sha256_file
from nimbuild.manifest import load_manifest
from nimbuild.render import triton
from nimbuild.runtime import model_store as store
from nimbuild.runtime.triton_repo import checks, layout, pbtxt

sys.path.insert(0, str(Path(__file__).parent))
from render_support import build_manifest  # noqa: E402

CPU = "cpu-int8-avx2-onnxruntime"
H100 = "h100-hbm3-80gb-fp16-triton-tensorrt"


@pytest.fixture
def export(tmp_path):
    return build_manifest(tmp_path / "exp", engines=("h100-sxm",))


def test_create_model_store_copies_and_checks_every_file(export, tmp_path):
    dest = tmp_path / "store"
    made = store.create_model_store(export, CPU, dest, env={})
    assert made.model_name == "reranker" and made.ensemble_name == "ensemble"
    assert made.reused_record is False  # nothing pre-rendered: rendered from the graph
    profile = load_manifest(export).by_name(CPU)
    model = dest / "reranker" / "1" / "model.onnx"
    assert model.is_file() and not model.is_symlink()
    assert sha256_file(model) == profile.files["onnx/cpu-int8/model.onnx"].sha256
    assert checks.check_repository(dest) == []
    cfg = pbtxt.parse_config((dest / "reranker" / "config.pbtxt").read_text())
    assert (
        cfg.max_batch_size == 16
        and cfg.instance_group[0].kind == pbtxt.model_config_module().ModelInstanceGroup.KIND_CPU
    )


def test_profile_by_id_prefix_and_errors_that_list_the_choices(export, tmp_path):
    manifest = load_manifest(export)
    pid = manifest.by_name(CPU).id
    assert store.resolve_profile(manifest, pid[:8]).name == CPU
    assert store.resolve_profile(manifest, pid).name == CPU
    with pytest.raises(NimbuildError) as exc:
        store.resolve_profile(manifest, "no-such-profile")
    assert CPU in str(exc.value) and H100 in str(exc.value)


def test_profile_prefix_follows_nim_model_profile_rule(export):
    # One rule with NIM_MODEL_PROFILE: a prefix shorter than MIN_PREFIX matches nothing, in both.
    from nimbuild.runtime.hardware import assumed_host
    from nimbuild.runtime.overrides import MIN_PREFIX, match_profiles
    from nimbuild.runtime.selection import select

    manifest = load_manifest(export)
    pid = manifest.by_name(CPU).id
    assert MIN_PREFIX == 8
    with pytest.raises(NimbuildError, match="at least 8 characters"):
        store.resolve_profile(manifest, pid[:6])
    with pytest.raises(NimbuildError, match="at least 8 characters"):
        select(manifest, assumed_host([]), {"NIM_MODEL_PROFILE": pid[:6]})
    assert match_profiles(pid[:6], manifest.profiles) == []
    assert [p.name for p in match_profiles(pid[:8].upper(), manifest.profiles)] == [CPU]
    assert store.resolve_profile(manifest, pid[:8].upper()).name == CPU


def test_a_tampered_file_fails_the_copy_and_leaves_nothing(export, tmp_path):
    model = export.parent / "onnx" / "cpu-int8" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    dest = tmp_path / "store"
    with pytest.raises(NimbuildError, match="sha256 .* does not match"):
        store.create_model_store(export, CPU, dest, env={})
    assert not dest.exists()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".store.")]  # no staging left
    with pytest.raises(NimbuildError, match="does not verify"):
        store.create_model_store(export, CPU, tmp_path / "linked", mode="link", env={})


def test_prerendered_record_is_reused_so_engines_need_no_graph(export, tmp_path):
    triton.render_all(export, export.parent, dockerfile=False)
    # a serving image has no onnx/fp16 graph beside the engine: the record carries the tensors
    for graph in (export.parent / "onnx").rglob("model.onnx"):
        if "fp16" in str(graph):
            graph.unlink()
    made = store.create_model_store(export, H100, tmp_path / "store", env={})
    assert made.reused_record is True
    assert (tmp_path / "store" / "reranker" / "1" / "model.plan").read_bytes() == b"engine for NVIDIA-H100-80GB-HBM3"
    assert checks.check_repository(tmp_path / "store") == []


def test_without_record_or_graph_an_engine_profile_names_what_is_missing(export, tmp_path):
    (export.parent / "onnx" / "fp16" / "model.onnx").unlink()
    with pytest.raises(NimbuildError, match=r"fp16 ONNX graph .*onnx/fp16/model.onnx"):
        store.create_model_store(export, H100, tmp_path / "store", env={})


def test_download_to_cache_then_the_store_reads_from_the_cache(export, tmp_path):
    from nimbuild.runtime.selection import is_cached

    cache = tmp_path / "cache"
    profile = load_manifest(export).by_name(CPU)
    assert not is_cached(profile, cache)
    result = store.download_to_cache(export, CPU, env={"NIM_CACHE_PATH": str(cache)})
    assert sorted(result["copied"]) == sorted(profile.files) and result["already_cached"] == []
    for rel, entry in profile.files.items():
        assert sha256_file(cache / rel) == entry.sha256
    assert is_cached(profile, cache)  # the runtime's own notion of "cached" agrees
    again = store.download_to_cache(export, CPU, env={"NIM_CACHE_PATH": str(cache)})
    assert again["copied"] == [] and sorted(again["already_cached"]) == sorted(profile.files)
    # a corrupted cached file is replaced, not trusted
    cached_model = cache / "onnx" / "cpu-int8" / "model.onnx"
    cached_model.write_bytes(b"x" * cached_model.stat().st_size)
    fixed = store.download_to_cache(export, CPU, env={"NIM_CACHE_PATH": str(cache)})
    assert fixed["copied"] == ["onnx/cpu-int8/model.onnx"]
    assert sha256_file(cached_model) == profile.files["onnx/cpu-int8/model.onnx"].sha256
    # create-model-store prefers the cache
    made = store.create_model_store(export, CPU, tmp_path / "store", env={"NIM_CACHE_PATH": str(cache)})
    assert set(made.sources.values()) == {"cache"}
    linked = store.create_model_store(export, CPU, tmp_path / "linked", mode="link", env={"NIM_CACHE_PATH": str(cache)})
    assert os.path.realpath(tmp_path / "linked" / "reranker" / "1" / "model.onnx") == os.path.realpath(cached_model)
    assert set(linked.sources.values()) == {"cache"}


def test_materialize_applies_the_serve_time_overrides(export, tmp_path):
    manifest = load_manifest(export)
    made = store.materialize_profile(
        manifest,
        manifest.by_name(CPU),
        tmp_path / "store",
        env={layout.ENV_MAX_BATCH: "2", layout.ENV_QUEUE_DELAY: "0"},
    )
    assert (made.max_batch_size, made.max_queue_delay_us) == (2, 0)
    cfg = pbtxt.parse_config((tmp_path / "store" / "ensemble" / "config.pbtxt").read_text())
    assert cfg.max_batch_size == 2
    with pytest.raises(NimbuildError, match="1..16"):
        store.materialize_profile(manifest, manifest.by_name(CPU), tmp_path / "s2", env={layout.ENV_MAX_BATCH: "99"})


def test_create_model_store_path_imports_no_onnx_and_no_tritonclient(export, tmp_path):
    """The serving image has nimbuild[runtime] only: the store must work without the build half."""
    code = f"""
import sys, json
from nimbuild.runtime.model_store import create_model_store
made = create_model_store({str(export)!r}, {CPU!r}, {str(tmp_path / "store")!r}, env={{}})
names = ('onnx', 'torch', 'transformers', 'tritonclient', 'polygraphy', 'tensorrt')
heavy = sorted(m for m in names if m in sys.modules)
print(json.dumps({{"heavy": heavy, "model": made.model_name}}))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"heavy": [], "model": "reranker"}


def test_cli_create_model_store_and_download_to_cache(export, tmp_path):
    env = dict(os.environ, NIM_CACHE_PATH=str(tmp_path / "cache"), NIM_MANIFEST_PATH=str(export))
    done = subprocess.run(
        [sys.executable, "-m", "nimbuild", "download-to-cache", "--profile", CPU, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["cache"] == str(tmp_path / "cache")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nimbuild",
            "create-model-store",
            "--profile",
            CPU,
            "--model-store",
            str(tmp_path / "store"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "reranker, tokenizer, ensemble" in done.stdout
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "nimbuild",
            "create-model-store",
            "--profile",
            "nope",
            "--model-store",
            str(tmp_path / "s2"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1 and done.stderr.startswith("error: ") and CPU in done.stderr


def test_a_store_on_a_folder_no_rename_can_replace_is_filled_in_place(export, tmp_path, monkeypatch):
    """The NIM Operator's `--model-store /model-store` is a volume's mount point (and `/` is not the job user's):
    the store is staged inside it and swapped in; a retry after an interrupted swap is not refused."""
    from nimbuild import fsutil

    dest = tmp_path / "model-store"
    dest.mkdir()
    monkeypatch.setattr(fsutil, "_renamable", lambda folder: folder != dest)  # as os.path.ismount(dest) is
    made = store.create_model_store(export, CPU, dest, env={})
    assert checks.check_repository(dest) == [] and made.store == dest
    leftovers = sorted(p.name for p in dest.iterdir() if p.name.startswith("."))
    siblings = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert leftovers == [] and siblings == []  # no marker, no staging folder, nothing beside the mount point
    # again, over its own earlier store (another profile): replaced, not mixed
    store.create_model_store(export, H100, dest, env={})
    assert json.loads((dest / layout.REPOSITORY_INFO).read_text())["profile_name"] == H100
    assert checks.check_repository(dest) == []
    # a swap interrupted by a crash leaves the marker: the retry knows the folder is nimbuild's
    for p in list(dest.iterdir()):
        if p.is_file():
            p.unlink()
    (dest / fsutil.IN_PROGRESS).touch()
    store.create_model_store(export, CPU, dest, env={})
    assert not (dest / fsutil.IN_PROGRESS).exists() and checks.check_repository(dest) == []
    # a folder of someone else's files is still refused, and left as it was
    other = tmp_path / "data"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    monkeypatch.setattr(fsutil, "_renamable", lambda folder: False)
    with pytest.raises(NimbuildError, match="not a nimbuild model repository"):
        store.create_model_store(export, CPU, other, env={})
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
