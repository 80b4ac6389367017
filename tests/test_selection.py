"""Selection on one manifest of real files: classify, rank, overrides, the startup log and the CLI.

The manifest is written with nimbuild.manifest's writer over small real files, so
its IDs and checksums are real: TensorRT FP8 + FP16 for H100 SXM and L40S,
TensorRT FP16 for A100 SXM4 80GB, ONNX GPU FP16, ONNX CPU FP32 and INT8.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from profiles_support import run_profiles_cli as _cli

from nimbuild import cpu_isa, profiles, skus
from nimbuild.cli import profiles as profiles_cli
from nimbuild.cli import run
from nimbuild.errors import NimbuildError
from nimbuild.manifest import Manifest, Profile, file_entry, load_manifest, write_manifest
from nimbuild.runtime import hardware
from nimbuild.runtime.hardware import Gpu
from nimbuild.runtime.selection import classify, default_manifest_path, is_cached, select, startup_log

TRT, CUDA = "10.13.0", 12
NAMES = {
    "h100-fp8": "h100-hbm3-80gb-fp8-triton-tensorrt",
    "h100-fp16": "h100-hbm3-80gb-fp16-triton-tensorrt",
    "l40s-fp8": "l40s-48gb-fp8-triton-tensorrt",
    "l40s-fp16": "l40s-48gb-fp16-triton-tensorrt",
    "a100-fp16": "a100-sxm4-80gb-fp16-triton-tensorrt",
    "onnx-gpu-fp16": "onnx-fp16-triton-onnxruntime",
    "cpu-fp32": "cpu-fp32-onnxruntime",
    "cpu-int8": "cpu-int8-avx2-onnxruntime",
}
# Every host of these tests has an AVX2 CPU (no VNNI) unless a test gives it another: the CPU is part of the
# host, and a test must not depend on the CPU of the machine that runs it.
AVX2_CPU = cpu_isa.assumed_cpu("avx2")


def Host(gpus: list[Gpu], cpu_only_reason: str | None, cpu: cpu_isa.HostCpu = AVX2_CPU) -> hardware.Host:
    return hardware.Host(gpus=gpus, cpu_only_reason=cpu_only_reason, cpu=cpu)


def assumed_host(specs: list[str], cpu: str = "avx2") -> hardware.Host:
    host = hardware.assumed_host(specs)
    host.cpu = cpu_isa.assumed_cpu(cpu)
    return host


@pytest.fixture(autouse=True)
def avx2_detected(monkeypatch):
    """What the CLI detects is an AVX2 CPU too, whatever CPU runs the tests (the decision is under test)."""
    monkeypatch.setattr(cpu_isa, "detect_cpu", lambda *args, **kwargs: AVX2_CPU)


NO_OVERRIDES: dict[str, str] = {}


def _file(root: Path, rel: str, size: int) -> str:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return rel


def _profile(root: Path, tags: dict, rels: list[str], name: str | None = None, metrics: dict | None = None) -> Profile:
    return Profile(
        id=profiles.profile_id(tags),
        name=name or profiles.profile_name(tags),
        tags=tags,
        files={rel: file_entry(root, rel) for rel in rels},
        metrics=metrics or {},
    )


def _write(root: Path, items: list[Profile]) -> Path:
    path = root / "manifest.yaml"
    write_manifest(Manifest(profiles=items, header={"model": "tiny"}), path)
    return path


def trt_tags(slug: str, precision: str, **kw) -> dict:
    return profiles.tensorrt_profile_tags("tiny", "r1", precision, skus.lookup(slug), TRT, CUDA, 64, 512, **kw)


def onnx_tags(precision: str, device: str, batch: int = 64, revision: str = "r1", isa: str = "avx2") -> dict:
    cls = isa if (precision, device) == ("int8", "cpu") else None
    return profiles.onnx_profile_tags("tiny", revision, precision, device, batch, 512, cpu_isa=cls)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(manifest path, {short key: profile id}) of the main test manifest."""
    root = tmp_path_factory.mktemp("selection")
    tok = _file(root, "tokenizer/tokenizer.json", 200)
    items = []
    for slug, key in (("h100-sxm", "h100"), ("l40s", "l40s"), ("a100-sxm4-80gb", "a100")):
        for precision in ("fp16",) if key == "a100" else ("fp8", "fp16"):
            plan = _file(root, f"engines/{slug}/{precision}/model.plan", 3000)
            items.append(_profile(root, trt_tags(slug, precision), [plan, tok]))
    for precision, device, rel in (
        ("fp16", "gpu", "onnx/fp16/model.onnx"),
        ("fp32", "cpu", "onnx/fp32/model.onnx"),
        ("int8", "cpu", "onnx/cpu-int8/model.onnx"),
    ):
        items.append(_profile(root, onnx_tags(precision, device), [_file(root, rel, 2000), tok]))
    path = _write(root, items)
    by_name = {p.name: p.id for p in load_manifest(path).profiles}
    assert set(by_name) == set(NAMES.values())
    return path, {key: by_name[name] for key, name in NAMES.items()}


@pytest.fixture(scope="module")
def manifest(built):
    return load_manifest(built[0])


@pytest.fixture(scope="module")
def ids(built):
    return built[1]


def keys_of(selection, status: str, ids: dict) -> list[str]:
    back = {v: k for k, v in ids.items()}
    return [back[c.profile.id] for c in selection.classified if c.status == status]


def reason_of(selection, key: str, ids: dict) -> str | None:
    return next(c.reason for c in selection.classified if c.profile.id == ids[key])


def gpu(index: int, slug: str, free_mib: int | None = None) -> Gpu:
    sku = skus.lookup(slug)
    total = sku.memory_gib * 1024
    return Gpu(
        index=index,
        name=sku.nvml_names[0],
        pci_device_id=sku.pci_device_id,
        compute_capability=sku.compute_capability,
        memory_total_mib=total,
        memory_free_mib=total if free_mib is None else free_mib,
    )


CPU_HOST = Host(gpus=[], cpu_only_reason="NVML library (libnvidia-ml.so.1) not found: no NVIDIA driver on this host")


# ----------------------------------------------------------------------------- hosts


def test_cpu_host_selects_cpu_int8(manifest, ids):
    sel = select(manifest, CPU_HOST, NO_OVERRIDES)
    assert keys_of(sel, "runnable", ids) == ["cpu-int8", "cpu-fp32"]
    assert keys_of(sel, "not_runnable", ids) == []
    assert sorted(keys_of(sel, "incompatible", ids)) == sorted(
        ["h100-fp8", "h100-fp16", "l40s-fp8", "l40s-fp16", "a100-fp16", "onnx-gpu-fp16"]
    )
    assert reason_of(sel, "onnx-gpu-fp16", ids) == "needs a GPU; this host has none"
    assert sel.selected.id == ids["cpu-int8"]


def test_nim_cpu_only_on_an_h100_host(manifest, ids):
    host = Host(gpus=[gpu(0, "h100-sxm")], cpu_only_reason=None)
    sel = select(manifest, host, {"NIM_CPU_ONLY": "1"})
    assert sel.selected.id == ids["cpu-int8"]
    assert keys_of(sel, "runnable", ids) == ["cpu-int8", "cpu-fp32"]
    assert reason_of(sel, "h100-fp8", ids) == "needs a GPU; NIM_CPU_ONLY=1 is set"
    # the same through detection's own flag (detect_host sets cpu_only_reason)
    detected = Host(gpus=[gpu(0, "h100-sxm")], cpu_only_reason="NIM_CPU_ONLY=1 is set")
    assert select(manifest, detected, NO_OVERRIDES).selected.id == ids["cpu-int8"]


def test_h100_host(manifest, ids):
    sel = select(manifest, assumed_host(["NVIDIA H100 80GB HBM3"]), NO_OVERRIDES)
    assert keys_of(sel, "runnable", ids) == ["h100-fp8", "h100-fp16", "onnx-gpu-fp16", "cpu-int8", "cpu-fp32"]
    assert sorted(keys_of(sel, "incompatible", ids)) == ["a100-fp16", "l40s-fp16", "l40s-fp8"]
    assert reason_of(sel, "a100-fp16", ids) == "needs gpu_device 20b2:10de"
    assert reason_of(sel, "l40s-fp8", ids) == "needs gpu_device 26b9:10de"
    assert sel.selected.id == ids["h100-fp8"]
    assert sel.selected_entry.gpus == [0]


def test_a100_host_has_no_fp8(manifest, ids):
    sel = select(manifest, assumed_host(["a100-sxm4-80gb"]), NO_OVERRIDES)
    assert keys_of(sel, "runnable", ids) == ["a100-fp16", "onnx-gpu-fp16", "cpu-int8", "cpu-fp32"]
    assert reason_of(sel, "h100-fp8", ids) == "needs gpu_device 2330:10de"
    assert sel.selected.id == ids["a100-fp16"]


def test_l40s_host(manifest, ids):
    sel = select(manifest, assumed_host(["l40s"]), NO_OVERRIDES)
    assert keys_of(sel, "runnable", ids) == ["l40s-fp8", "l40s-fp16", "onnx-gpu-fp16", "cpu-int8", "cpu-fp32"]
    assert sel.selected.id == ids["l40s-fp8"]


@pytest.mark.parametrize("slug", ["t4", "a10g", "h200"])
def test_gpu_without_an_engine_falls_back_to_onnx_gpu(manifest, ids, slug):
    sel = select(manifest, assumed_host([slug]), NO_OVERRIDES)
    assert keys_of(sel, "runnable", ids) == ["onnx-gpu-fp16", "cpu-int8", "cpu-fp32"]
    assert sel.selected.id == ids["onnx-gpu-fp16"]


def test_two_kinds_of_gpu(manifest, ids):
    sel = select(manifest, assumed_host(["h100-sxm", "l40s"]), NO_OVERRIDES)
    runnable = keys_of(sel, "runnable", ids)
    # both kinds' engines run (each on its own GPU); FP8 before FP16, equal ranks by ID
    fp8 = sorted(["h100-fp8", "l40s-fp8"], key=ids.get)
    fp16 = sorted(["h100-fp16", "l40s-fp16"], key=ids.get)
    assert runnable == fp8 + fp16 + ["onnx-gpu-fp16", "cpu-int8", "cpu-fp32"]
    assert keys_of(sel, "incompatible", ids) == ["a100-fp16"]
    gpus = {c.profile.id: c.gpus for c in sel.classified if c.status == "runnable"}
    assert gpus[ids["h100-fp8"]] == [0] and gpus[ids["l40s-fp8"]] == [1]
    assert sel.selected.id == ids[fp8[0]]
    # the order of the GPUs on the bus does not change the choice, only the GPU index
    swapped = select(manifest, assumed_host(["l40s", "h100-sxm"]), NO_OVERRIDES)
    assert swapped.selected.id == sel.selected.id
    assert {c.profile.id: c.gpus for c in swapped.classified}[ids["h100-fp8"]] == [1]


def test_busy_gpu_is_compatible_but_not_runnable(manifest, ids):
    host = Host(gpus=[gpu(0, "h100-sxm", free_mib=0)], cpu_only_reason=None)
    sel = select(manifest, host, NO_OVERRIDES)
    assert sorted(keys_of(sel, "not_runnable", ids)) == ["h100-fp16", "h100-fp8", "onnx-gpu-fp16"]
    assert reason_of(sel, "h100-fp8", ids) == "needs 1 MiB free on 1 GPU; GPU 0 has 0 MiB"
    assert sel.selected.id == ids["cpu-int8"]


# ----------------------------------------------------------------------------- edge manifest


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    """Profiles for the rules the main manifest cannot show: gpu_count, FP8 below 8.9, hardware-compatible, memory."""
    root = tmp_path_factory.mktemp("edge")
    plan = _file(root, "engines/x/model.plan", 100)
    onnx = _file(root, "onnx/fp8/model.onnx", 100)
    items = {
        "tp2": _profile(root, trt_tags("h100-sxm", "fp16", gpu_count=2), [plan]),
        "same-cc": _profile(root, trt_tags("h100-sxm", "fp16", hardware_compatible="same_compute_capability"), [plan]),
        "ampere-fp8": _profile(root, trt_tags("h100-sxm", "fp8", hardware_compatible="ampere+"), [plan]),
        "onnx-fp8": _profile(root, onnx_tags("fp8", "gpu"), [onnx]),
        "big": _profile(root, trt_tags("l40s", "fp16"), [plan], metrics={"gpu_memory_mib": 30000}),
        "a100-pcie": _profile(root, trt_tags("a100-pcie", "fp16"), [plan]),
    }
    manifest = load_manifest(_write(root, list(items.values())))
    return manifest, {k: p.id for k, p in items.items()}


def _status(sel, pid):
    return next((c.status, c.reason, c.gpus) for c in sel.classified if c.profile.id == pid)


def test_gpu_count_too_few_gpus_in_the_host_is_compatible_but_not_runnable(edge):
    # issue 6 / docs/design.md "Selection": the right GPU, but too few of them -> compatible but not runnable.
    manifest, eids = edge
    sel = select(manifest, assumed_host(["h100-sxm"]), NO_OVERRIDES)
    assert _status(sel, eids["tp2"]) == (
        "not_runnable",
        "needs gpu_device 2330:10de on 2 GPUs; this host has 1 of that kind",
        [],
    )
    # no GPU it can run on at all: incompatible, whatever the count
    sel = select(manifest, assumed_host(["l40s x4"]), NO_OVERRIDES)
    assert _status(sel, eids["tp2"]) == ("incompatible", "needs gpu_device 2330:10de", [])


def test_onnx_gpu_profile_with_too_few_gpus_is_not_runnable(tmp_path):
    tags = {**onnx_tags("fp16", "gpu"), "gpu_count": "2"}
    p = _profile(tmp_path, tags, [_file(tmp_path, "onnx/fp16/model.onnx", 100)])
    manifest = load_manifest(_write(tmp_path, [p]))
    assert _status(select(manifest, assumed_host(["l40s"]), NO_OVERRIDES), p.id) == (
        "not_runnable",
        "needs 2 GPUs; this host has 1",
        [],
    )
    assert _status(select(manifest, assumed_host(["l40s", "a100-sxm4-80gb"]), NO_OVERRIDES), p.id) == (
        "runnable",
        None,
        [0, 1],
    )


def test_gpu_count_too_few_of_the_right_kind_is_not_runnable(edge):
    manifest, eids = edge
    sel = select(manifest, assumed_host(["h100-sxm", "l40s"]), NO_OVERRIDES)
    assert _status(sel, eids["tp2"]) == (
        "not_runnable",
        "needs gpu_device 2330:10de on 2 GPUs; this host has 1 of that kind",
        [],
    )
    sel = select(manifest, assumed_host(["l40s", "h100-sxm x2"]), NO_OVERRIDES)
    assert _status(sel, eids["tp2"]) == ("runnable", None, [1, 2])


def test_fp8_below_compute_capability_8_9_is_incompatible(edge):
    manifest, eids = edge
    sel = select(manifest, assumed_host(["a100-sxm4-80gb"]), NO_OVERRIDES)
    reason = "FP8 needs compute capability >= 8.9; this host's GPUs have 8.0"
    assert _status(sel, eids["onnx-fp8"]) == ("incompatible", reason, [])
    # an ampere+ engine matches the A100 on compute capability, but FP8 still cannot run there
    assert _status(sel, eids["ampere-fp8"]) == ("incompatible", reason, [])
    assert _status(select(manifest, assumed_host(["l40s"]), NO_OVERRIDES), eids["ampere-fp8"])[0] == "runnable"


def test_hardware_compatible_engine_matches_on_compute_capability_not_device(edge):
    manifest, eids = edge
    h200 = select(manifest, assumed_host(["h200"]), NO_OVERRIDES)  # another device id, same cc 9.0
    assert _status(h200, eids["same-cc"]) == ("runnable", None, [0])
    a100 = select(manifest, assumed_host(["a100-sxm4-80gb"]), NO_OVERRIDES)
    assert _status(a100, eids["same-cc"])[:2] == (
        "incompatible",
        "needs compute capability 9.0 (hardware_compatibility_level same_compute_capability)",
    )


def test_device_ids_of_one_catalog_sku_match_each_other(edge):
    manifest, eids = edge
    assert manifest.by_id(eids["a100-pcie"]).tags["gpu_device"] == "20f1:10de"
    other_id = Gpu(
        index=0,
        name="NVIDIA A100-PCIE-40GB",
        pci_device_id="20b1:10de",
        compute_capability="8.0",
        memory_total_mib=40960,
        memory_free_mib=40960,
    )
    assert _status(select(manifest, Host(gpus=[other_id], cpu_only_reason=None), NO_OVERRIDES), eids["a100-pcie"]) == (
        "runnable",
        None,
        [0],
    )
    sxm = select(manifest, assumed_host(["a100-sxm4-80gb"]), NO_OVERRIDES)  # same cc, another product
    assert _status(sxm, eids["a100-pcie"])[:2] == ("incompatible", "needs gpu_device 20f1:10de")


def test_measured_gpu_memory_from_metrics(edge):
    manifest, eids = edge
    tight = Host(gpus=[gpu(0, "l40s", free_mib=20000)], cpu_only_reason=None)
    assert _status(select(manifest, tight, NO_OVERRIDES), eids["big"])[:2] == (
        "not_runnable",
        "needs 30000 MiB free on 1 GPU; GPU 0 has 20000 MiB",
    )
    roomy = Host(gpus=[gpu(0, "l40s", free_mib=30000)], cpu_only_reason=None)
    assert _status(select(manifest, roomy, NO_OVERRIDES), eids["big"])[0] == "runnable"


# ----------------------------------------------------------------------------- ranking and cache


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Three CPU INT8 profiles that differ only in max_batch_size / revision (ranked by cache, batch, ID)."""
    root = tmp_path_factory.mktemp("twins")
    items = {
        "bs32": _profile(root, onnx_tags("int8", "cpu", batch=32), [_file(root, "a/model.onnx", 50)], name="int8-bs32"),
        "bs64": _profile(root, onnx_tags("int8", "cpu", batch=64), [_file(root, "b/model.onnx", 50)], name="int8-bs64"),
        # two revisions whose IDs share their first 8 hex characters (found by search): 951ae265
        "p1": _profile(
            root,
            onnx_tags("int8", "cpu", batch=16, revision="rev39001"),
            [_file(root, "c/model.onnx", 50)],
            name="int8-p1",
        ),
        "p2": _profile(
            root,
            onnx_tags("int8", "cpu", batch=16, revision="rev124361"),
            [_file(root, "d/model.onnx", 50)],
            name="int8-p2",
        ),
    }
    return load_manifest(_write(root, list(items.values()))), {k: p.id for k, p in items.items()}, root


def test_rank_by_batch_size_then_id(twins):
    manifest, tids, _ = twins
    order = [c.profile.id for c in select(manifest, CPU_HOST, NO_OVERRIDES).classified]
    assert order == [tids["bs64"], tids["bs32"]] + sorted([tids["p1"], tids["p2"]])


def test_cached_profile_wins_before_batch_size(twins, tmp_path):
    manifest, tids, root = twins
    cache = tmp_path / "cache"
    (cache / "a").mkdir(parents=True)
    (cache / "a" / "model.onnx").write_bytes((root / "a" / "model.onnx").read_bytes())
    bs32 = manifest.by_id(tids["bs32"])
    assert is_cached(bs32, cache) and not is_cached(manifest.by_id(tids["bs64"]), cache)
    sel = select(manifest, CPU_HOST, {"NIM_CACHE_PATH": str(cache)})
    assert sel.selected.id == tids["bs32"] and sel.selected_entry.cached
    assert select(manifest, CPU_HOST, NO_OVERRIDES, cache_path=cache).selected.id == tids["bs32"]
    (cache / "a" / "model.onnx").write_bytes(b"short")  # wrong size: not cached
    assert select(manifest, CPU_HOST, {"NIM_CACHE_PATH": str(cache)}).selected.id == tids["bs64"]


def test_ambiguous_id_prefix_is_an_error(twins):
    manifest, tids, _ = twins
    assert tids["p1"][:8] == tids["p2"][:8] == "951ae265"
    with pytest.raises(NimbuildError) as exc:
        select(manifest, CPU_HOST, {"NIM_MODEL_PROFILE": "951ae265"})
    assert "matches 2 profiles" in exc.value.message and tids["p1"] in exc.value.message
    assert tids["p1"][:16] != tids["p2"][:16]
    assert select(manifest, CPU_HOST, {"NIM_MODEL_PROFILE": tids["p1"][:16]}).selected.id == tids["p1"]


# ----------------------------------------------------------------------------- overrides

H100_HOST = assumed_host(["h100-sxm"])


@pytest.mark.parametrize("form", ["id", "prefix8", "prefix20", "name"])
def test_nim_model_profile_forms(manifest, ids, form):
    pid = ids["h100-fp16"]
    value = {"id": pid, "prefix8": pid[:8], "prefix20": pid[:20], "name": NAMES["h100-fp16"]}[form]
    sel = select(manifest, H100_HOST, {"NIM_MODEL_PROFILE": value})
    assert sel.selected.id == pid
    assert [c.profile.id for c in sel.candidates] == [pid]
    assert sel.overrides == {"NIM_MODEL_PROFILE": value}


def test_nim_model_profile_that_matches_nothing(manifest, ids):
    with pytest.raises(NimbuildError) as exc:
        select(manifest, H100_HOST, {"NIM_MODEL_PROFILE": "no-such-profile"})
    msg = str(exc.value)
    assert "NIM_MODEL_PROFILE='no-such-profile' matches no profile ID or name" in msg
    assert f"runnable here: {ids['h100-fp8']} ({NAMES['h100-fp8']})" in msg


def test_nim_model_profile_prefix_too_short(manifest, ids):
    with pytest.raises(NimbuildError, match="an ID prefix needs at least 8 characters"):
        select(manifest, H100_HOST, {"NIM_MODEL_PROFILE": ids["h100-fp8"][:7]})


def test_nim_model_profile_this_host_cannot_run(manifest, ids):
    with pytest.raises(NimbuildError) as exc:
        select(manifest, H100_HOST, {"NIM_MODEL_PROFILE": NAMES["a100-fp16"]})
    msg = str(exc.value)
    assert (
        f"names {ids['a100-fp16']} ({NAMES['a100-fp16']}), which this host cannot run "
        f"(incompatible: needs gpu_device 20b2:10de)" in msg
    )
    assert ids["onnx-gpu-fp16"] in msg and ids["a100-fp16"] not in msg.split("runnable here:")[1]


def test_nim_model_profile_not_runnable(manifest, ids):
    busy = Host(gpus=[gpu(0, "h100-sxm", free_mib=0)], cpu_only_reason=None)
    with pytest.raises(NimbuildError, match=r"cannot run \(compatible but not runnable: needs 1 MiB free"):
        select(manifest, busy, {"NIM_MODEL_PROFILE": ids["h100-fp8"]})


@pytest.mark.parametrize(
    "selector, expected",
    [
        ("precision=fp16,backend=onnx", "onnx-gpu-fp16"),
        (" precision = fp16 , backend=onnx ", "onnx-gpu-fp16"),
        ("backend=onnx", "onnx-gpu-fp16"),
        ("device=cpu", "cpu-int8"),
        ("precision=fp16", "h100-fp16"),
        ("device=cpu,precision=fp32", "cpu-fp32"),
    ],
)
def test_nim_tags_selector(manifest, ids, selector, expected):
    sel = select(manifest, H100_HOST, {"NIM_TAGS_SELECTOR": selector})
    assert sel.selected.id == ids[expected]
    assert all(c.status == "runnable" for c in sel.candidates)


def test_tags_selector_candidates_are_what_serve_may_fall_back_to(manifest, ids):
    sel = select(manifest, H100_HOST, {"NIM_TAGS_SELECTOR": "backend=onnx"})
    assert [c.profile.id for c in sel.candidates] == [ids["onnx-gpu-fp16"], ids["cpu-int8"], ids["cpu-fp32"]]


def test_tags_selector_that_matches_nothing(manifest):
    with pytest.raises(NimbuildError, match=r"NIM_TAGS_SELECTOR='precision=bf16' matches no profile in the manifest"):
        select(manifest, H100_HOST, {"NIM_TAGS_SELECTOR": "precision=bf16"})


def test_tags_selector_that_matches_only_what_cannot_run(manifest, ids):
    with pytest.raises(NimbuildError) as exc:
        select(manifest, H100_HOST, {"NIM_TAGS_SELECTOR": "gpu=NVIDIA-A100-SXM4-80GB"})
    msg = str(exc.value)
    assert "matches only profiles this host cannot run" in msg
    assert f"{NAMES['a100-fp16']}: needs gpu_device 20b2:10de" in msg and ids["h100-fp8"] in msg


@pytest.mark.parametrize("selector", ["precision", "precision=", "=fp16", "precision=fp16,precision=fp8"])
def test_malformed_tags_selector(manifest, selector):
    with pytest.raises(NimbuildError, match="NIM_TAGS_SELECTOR="):
        select(manifest, H100_HOST, {"NIM_TAGS_SELECTOR": selector})


def test_profile_and_selector_together(manifest, ids):
    env = {"NIM_MODEL_PROFILE": NAMES["onnx-gpu-fp16"], "NIM_TAGS_SELECTOR": "backend=onnx"}
    assert select(manifest, H100_HOST, env).selected.id == ids["onnx-gpu-fp16"]
    env["NIM_TAGS_SELECTOR"] = "backend=tensorrt"
    with pytest.raises(NimbuildError, match="which NIM_TAGS_SELECTOR='backend=tensorrt' excludes"):
        select(manifest, H100_HOST, env)


def test_default_manifest_path():
    assert default_manifest_path({}) == Path("manifest.yaml")
    assert default_manifest_path({"NIM_MANIFEST_PATH": "/opt/m.yaml"}) == Path("/opt/m.yaml")


def test_classify_keeps_manifest_order(manifest):
    got = [c.profile.id for c in classify(manifest, H100_HOST, NO_OVERRIDES)]
    assert got == [p.id for p in manifest.profiles]


# ----------------------------------------------------------------------------- the log, word for word


def test_startup_log_matches_design_line_for_line(manifest, ids):
    sel = select(manifest, H100_HOST, NO_OVERRIDES)
    l40s = sorted(["l40s-fp16", "l40s-fp8"], key=lambda k: NAMES[k])
    assert startup_log(sel) == [
        "MODEL PROFILES",
        "- Compatible with system and runnable:",
        f"  - {ids['h100-fp8']} (h100-hbm3-80gb-fp8-triton-tensorrt)",
        f"  - {ids['h100-fp16']} (h100-hbm3-80gb-fp16-triton-tensorrt)",
        f"  - {ids['onnx-gpu-fp16']} (onnx-fp16-triton-onnxruntime)",
        f"  - {ids['cpu-int8']} (cpu-int8-avx2-onnxruntime)",
        f"  - {ids['cpu-fp32']} (cpu-fp32-onnxruntime)",
        "- Compatible with system but not runnable:",
        "- Incompatible with system:",
        f"  - {ids['a100-fp16']} (a100-sxm4-80gb-fp16-triton-tensorrt): needs gpu_device 20b2:10de",
        *[f"  - {ids[k]} ({NAMES[k]}): needs gpu_device 26b9:10de" for k in l40s],
        f"Selected profile: {ids['h100-fp8']} (h100-hbm3-80gb-fp8-triton-tensorrt)",
        "Profile metadata: type: TensorRT",
        "Profile metadata: precision: FP8",
        "Profile metadata: gpu: NVIDIA-H100-80GB-HBM3",
        "Profile metadata: trt_version: 10.13.0",
        "Profile metadata: cuda_major_version: 12",
    ]
    assert all(len(pid) == 64 for pid in ids.values())


def test_startup_log_for_an_onnx_selection_and_for_none(manifest, ids, tmp_path):
    tail = startup_log(select(manifest, CPU_HOST, NO_OVERRIDES))[-5:]
    assert tail == [
        f"Selected profile: {ids['cpu-int8']} (cpu-int8-avx2-onnxruntime)",
        "Profile metadata: type: ONNX",
        "Profile metadata: precision: INT8",
        "Profile metadata: device: CPU",
        "Profile metadata: cpu_isa: avx2",
    ]
    gpu_only = Manifest(profiles=[p for p in manifest.profiles if p.tags["device"] == "gpu"], root=manifest.root)
    sel = select(gpu_only, CPU_HOST, NO_OVERRIDES)
    assert sel.selected is None and startup_log(sel)[-1] == "Selected profile: none (no runnable profile)"


# ----------------------------------------------------------------------------- CLI


def test_cli_list_prints_system_info_then_the_log(built, manifest, capsys, monkeypatch):
    code, out, _ = _cli(
        ["list-model-profiles", "--manifest", str(built[0]), "--assume-gpu", "h100-sxm"], capsys, monkeypatch
    )
    assert code == 0
    sel = select(manifest, H100_HOST, NO_OVERRIDES)
    assert out.splitlines() == H100_HOST.system_info() + startup_log(sel)
    assert out.splitlines()[:3] == ["SYSTEM INFO", "- Host: assumed with --assume-gpu (not detected)", "- GPUs:"]


def test_cli_json_carries_the_same_facts(built, ids, capsys, monkeypatch):
    argv = ["list-model-profiles", "-m", str(built[0]), "--assume-gpu", "h100-sxm"]
    _, human, _ = _cli(argv, capsys, monkeypatch)
    code, out, _ = _cli(argv + ["--json"], capsys, monkeypatch)
    doc = json.loads(out)
    assert code == 0 and doc["error"] is None
    assert doc["selected"]["id"] == ids["h100-fp8"]
    assert doc["selected"]["metadata"] == {
        "type": "TensorRT",
        "precision": "FP8",
        "gpu": "NVIDIA-H100-80GB-HBM3",
        "trt_version": "10.13.0",
        "cuda_major_version": "12",
    }
    assert doc["system"]["gpus"][0]["pci_device_id"] == "2330:10de" and doc["system"]["assumed"]
    # every profile line of the human output is in the document, in the same group, with the same reason
    titles = {
        "- Compatible with system and runnable:": "runnable",
        "- Compatible with system but not runnable:": "not_runnable",
        "- Incompatible with system:": "incompatible",
    }
    group = None
    seen = 0
    for line in human.splitlines():
        if line in titles:
            group = titles[line]
        elif line.startswith("  - ") and group:
            head, _, reason = line[4:].partition(": ")
            pid, name = head.split(" (")
            entry = next(e for e in doc["profiles"][group] if e["id"] == pid)
            assert entry["name"] == name[:-1] and (entry["reason"] or "") == reason
            seen += 1
        elif line.startswith("Selected profile:"):
            group = None
    assert seen == len(ids) == sum(len(v) for v in doc["profiles"].values())
    assert doc["log"] == human.splitlines()[len(H100_HOST.system_info()) :]


def test_cli_select_prints_the_startup_log_and_exits_0(built, manifest, ids, capsys, monkeypatch):
    code, out, _ = _cli(["select", "-m", str(built[0]), "--assume-gpu", "a100-sxm4-80gb"], capsys, monkeypatch)
    assert code == 0
    assert out.splitlines() == startup_log(select(manifest, assumed_host(["a100-sxm4-80gb"]), NO_OVERRIDES))
    code, out, _ = _cli(
        ["select", "-m", str(built[0]), "--json"], capsys, monkeypatch, env={"NIM_MODEL_PROFILE": NAMES["cpu-fp32"]}
    )
    assert code == 0 and json.loads(out)["selected"]["id"] == ids["cpu-fp32"]


def test_cli_select_bad_override_exits_1_after_the_groups(built, capsys, monkeypatch):
    code, out, err = _cli(
        ["select", "-m", str(built[0])], capsys, monkeypatch, env={"NIM_MODEL_PROFILE": "nope-nope-nope"}
    )
    assert code == 1
    assert err.startswith("error: NIM_MODEL_PROFILE='nope-nope-nope' matches no profile") and err.count("\n") == 1
    assert out.splitlines()[0] == "MODEL PROFILES" and "Selected profile" not in out


def test_cli_json_bad_override_is_one_document_and_exit_1(built, capsys, monkeypatch):
    code, out, err = _cli(
        ["list-model-profiles", "-m", str(built[0]), "--json"],
        capsys,
        monkeypatch,
        env={"NIM_TAGS_SELECTOR": "precision=bf16"},
    )
    doc = json.loads(out)
    assert code == 1 and doc["selected"] is None and "matches no profile" in doc["error"]
    assert doc["overrides"] == {"NIM_TAGS_SELECTOR": "precision=bf16"} and err.startswith("error: ")


def test_cli_nothing_runnable(built, manifest, capsys, monkeypatch, tmp_path):
    gpu_only = Manifest(profiles=[p for p in manifest.profiles if p.tags["device"] == "gpu"], header={})
    path = Path(built[0]).with_name("gpu-only.yaml")  # beside the main one: its files are there
    write_manifest(gpu_only, path)
    code, out, err = _cli(["select", "-m", str(path)], capsys, monkeypatch, env={"NIM_CPU_ONLY": "1"})
    assert code == 1 and "no profile in the manifest is runnable on this host" in err
    code, out, _ = _cli(["list-model-profiles", "-m", str(path)], capsys, monkeypatch, env={"NIM_CPU_ONLY": "1"})
    assert code == 0 and out.splitlines()[-1] == "Selected profile: none (no runnable profile)"


def test_cli_reads_nim_manifest_path(built, ids, capsys, monkeypatch):
    code, out, _ = _cli(["select", "--json"], capsys, monkeypatch, env={"NIM_MANIFEST_PATH": str(built[0])})
    assert code == 0 and json.loads(out)["manifest"] == str(built[0])


def test_cli_missing_manifest_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    code, out, err = _cli(["list-model-profiles", "-m", str(tmp_path / "none.yaml")], capsys, monkeypatch)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "none.yaml: no such manifest (from --manifest); pass --manifest PATH or set NIM_MANIFEST_PATH" in err
    monkeypatch.chdir(tmp_path)
    code, out, err = _cli(["select"], capsys, monkeypatch)
    assert code == 1 and "manifest.yaml: no such manifest (from the default ./manifest.yaml)" in err


def test_cli_assumed_host_with_nim_cpu_only(built, ids, capsys, monkeypatch):
    code, out, _ = _cli(
        ["list-model-profiles", "-m", str(built[0]), "--assume-gpu", "h100-sxm"],
        capsys,
        monkeypatch,
        env={"NIM_CPU_ONLY": "1"},
    )
    lines = out.splitlines()
    assert code == 0 and "- CPU only: NIM_CPU_ONLY=1 is set" in lines
    assert f"  - {ids['h100-fp8']} ({NAMES['h100-fp8']}): needs a GPU; NIM_CPU_ONLY=1 is set" in lines
    assert f"Selected profile: {ids['cpu-int8']} (cpu-int8-avx2-onnxruntime)" in lines


def test_standalone_app_is_the_same_listing(built, capsys, monkeypatch):
    monkeypatch.delenv("NIM_MODEL_PROFILE", raising=False)
    monkeypatch.delenv("NIM_TAGS_SELECTOR", raising=False)
    with pytest.raises(SystemExit) as exc:
        run(profiles_cli.standalone_list_app(), ["-m", str(built[0]), "--assume-gpu", "l40s"])
    assert exc.value.code == 0
    assert "Selected profile: " in capsys.readouterr().out


def test_help_has_an_example(capsys, monkeypatch):
    for cmd in ("list-model-profiles", "select"):
        code, out, _ = _cli([cmd, "--help"], capsys, monkeypatch)
        assert code == 0 and "Example:" in out


# ----------------------------------------------------------------------------- foreign manifests


FOREIGN_TAGS = [
    {"backend": "tensorrt", "gpu_device": "2330:10de", "precision": "fp8", "llm_engine": "none", "model": "x"},
    {"backend": "onnx", "precision": "fp32", "model": "x"},
]


def _foreign(tmp_path, tags_list, wrong_id=False) -> Path:
    import yaml

    docs = []
    for i, tags in enumerate(tags_list):
        pid = profiles.profile_id(tags)
        if wrong_id and i == 0:
            pid = "0" * 64
        docs.append({"id": pid, "name": f"their-profile-{i}", "tags": tags, "workspace": {"files": {}}})
    path = tmp_path / "their-manifest.yaml"
    path.write_text(
        yaml.safe_dump({"schema_version": "2.0.0", "profile_selection_criteria": "default", "profiles": docs})
    )
    return path


def test_a_manifest_nimbuild_did_not_write(tmp_path, capsys, monkeypatch):
    path = _foreign(tmp_path, FOREIGN_TAGS)
    code, out, _ = _cli(["select", "-m", str(path), "--assume-gpu", "h100-sxm"], capsys, monkeypatch)
    assert code == 0
    assert f"Selected profile: {profiles.profile_id(FOREIGN_TAGS[0])} (their-profile-0)" in out.splitlines()
    code, out, _ = _cli(["select", "-m", str(path), "--assume-gpu", "l40s"], capsys, monkeypatch)
    assert f"({'their-profile-0'}): needs gpu_device 2330:10de" in out
    assert f"Selected profile: {profiles.profile_id(FOREIGN_TAGS[1])} (their-profile-1)" in out


def test_a_foreign_manifests_ids_are_opaque(tmp_path, capsys, monkeypatch):
    # No `nimbuild:` header: another tool (NIM) wrote it, and its IDs are not sha256 of the tags.
    path = _foreign(tmp_path, FOREIGN_TAGS, wrong_id=True)
    code, out, err = _cli(["list-model-profiles", "-m", str(path)], capsys, monkeypatch)
    assert code == 0 and f"{'0' * 64} (their-profile-0)" in out


# ------------------------------------------------------------------ files: selection and serve agree


@pytest.fixture
def on_disk(tmp_path):
    """CPU INT8 + FP32 and an H100 engine, each with its own model file and a shared tokenizer.

    A fresh copy per test."""
    root = tmp_path / "m"
    tok = _file(root, "tokenizer/tokenizer.json", 200)
    items = {
        "int8": _profile(root, onnx_tags("int8", "cpu"), [_file(root, "onnx/cpu-int8/model.onnx", 300), tok]),
        "fp32": _profile(root, onnx_tags("fp32", "cpu"), [_file(root, "onnx/fp32/model.onnx", 400), tok]),
        "h100": _profile(root, trt_tags("h100-sxm", "fp16"), [_file(root, "engines/h100/model.plan", 500), tok]),
    }
    return _write(root, list(items.values())), {k: p.id for k, p in items.items()}


def test_a_missing_file_makes_the_profile_not_runnable_and_selection_falls_back(on_disk):
    path, pids = on_disk
    assert select(load_manifest(path), CPU_HOST, NO_OVERRIDES).selected.id == pids["int8"]
    (path.parent / "onnx/cpu-int8/model.onnx").unlink()
    sel = select(load_manifest(path), CPU_HOST, NO_OVERRIDES)
    assert sel.selected.id == pids["fp32"]
    assert _status(sel, pids["int8"]) == ("not_runnable", "file onnx/cpu-int8/model.onnx is missing", [])
    assert "  - {} (cpu-int8-avx2-onnxruntime): file onnx/cpu-int8/model.onnx is missing".format(
        pids["int8"]
    ) in startup_log(sel)
    # the hardware's verdict comes first: a GPU profile on a CPU host stays incompatible
    (path.parent / "engines/h100/model.plan").unlink()
    assert _status(select(load_manifest(path), CPU_HOST, NO_OVERRIDES), pids["h100"])[0] == "incompatible"


def test_a_file_of_another_size_or_kind_is_not_runnable(on_disk):
    path, pids = on_disk
    model = path.parent / "onnx/cpu-int8/model.onnx"
    model.write_bytes(b"short")
    assert _status(select(load_manifest(path), CPU_HOST, NO_OVERRIDES), pids["int8"]) == (
        "not_runnable",
        "file onnx/cpu-int8/model.onnx has 5 bytes; the manifest says 300",
        [],
    )
    model.unlink()
    model.mkdir()
    assert _status(select(load_manifest(path), CPU_HOST, NO_OVERRIDES), pids["int8"])[:2] == (
        "not_runnable",
        "file onnx/cpu-int8/model.onnx is not a regular file",
    )


def test_same_size_other_bytes_is_left_to_serves_sha256(on_disk):
    # selection only stats; serve's sha256 check (verify_profile) catches this one and falls back.
    from nimbuild.manifest_verify import verify_profile

    path, pids = on_disk
    model = path.parent / "onnx/cpu-int8/model.onnx"
    model.write_bytes(bytes(300))
    manifest = load_manifest(path)
    assert select(manifest, CPU_HOST, NO_OVERRIDES).selected.id == pids["int8"]
    assert any("sha256" in p for p in verify_profile(manifest, manifest.by_id(pids["int8"])))


def test_a_copy_in_the_cache_counts_as_present(on_disk, tmp_path):
    path, pids = on_disk
    model = path.parent / "onnx/cpu-int8/model.onnx"
    cache = tmp_path / "cache"
    (cache / "onnx/cpu-int8").mkdir(parents=True)
    (cache / "onnx/cpu-int8/model.onnx").write_bytes(model.read_bytes())
    model.unlink()
    sel = select(load_manifest(path), CPU_HOST, {"NIM_CACHE_PATH": str(cache)})
    assert sel.selected.id == pids["int8"]


def test_a_remote_file_counts_only_once_it_is_in_the_cache(on_disk, tmp_path):
    # serve downloads nothing: a remote file not yet fetched by download-to-cache makes the profile
    # compatible but not runnable, with the way out in the reason; in the cache it is runnable again.
    import yaml

    from nimbuild.manifest_paths import remote_cache_relpath

    path, pids = on_disk
    data = yaml.safe_load(path.read_text())
    prof = next(p for p in data["profiles"] if p["id"] == pids["int8"])
    prof["workspace"]["files"]["onnx/cpu-int8/model.onnx"]["uri"] = "https://example.com/m/model.onnx"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    local = path.parent / "onnx/cpu-int8/model.onnx"
    sel = select(load_manifest(path), CPU_HOST, NO_OVERRIDES)
    entry = next(c for c in sel.classified if c.profile.id == pids["int8"])
    assert entry.status == "not_runnable" and "https://example.com/m/model.onnx" in entry.reason
    assert "download-to-cache" in entry.reason and sel.selected.id != pids["int8"]
    cache = tmp_path / "cache"
    cached = cache / remote_cache_relpath("https://example.com/m/model.onnx")
    assert cached == cache / "remote/https/example.com/m/model.onnx"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(local.read_bytes())
    sel = select(load_manifest(path), CPU_HOST, {"NIM_CACHE_PATH": str(cache)})
    assert sel.selected.id == pids["int8"]
