"""CPU instruction-set classes: detection from /proc/cpuinfo, what a host has, and how selection uses them.

Every CPU here is a fixture (a cpuinfo text, or --assume-cpu): the decisions under test must not depend
on the CPU of the machine that runs the tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import typer
from profiles_support import run_profiles_cli as _cli

from nimbuild import cpu_isa, profiles
from nimbuild.errors import NimbuildError
from nimbuild.manifest import Manifest, Profile, file_entry, load_manifest, write_manifest
from nimbuild.runtime import hardware
from nimbuild.runtime.selection import select, startup_log

# First lines of real /proc/cpuinfo files, cut to what detection reads (flags lists shortened).
ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2 sha_ni vaes
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse4_2 avx avx2 avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
SKYLAKE_SP = """processor\t: 0
model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz
flags\t\t: fpu sse4_2 avx avx2 avx512f avx512dq avx512cd avx512bw avx512vl
"""
ALDER_LAKE = """processor\t: 0
model name\t: 12th Gen Intel(R) Core(TM) i7-12700
flags\t\t: fpu sse4_2 avx avx2 fma avx_vnni
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc asimddp sve i8mm bf16
CPU implementer\t: 0x41
"""
CORTEX_A72 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
"""
OLD_X86 = """processor\t: 0
model name\t: QEMU Virtual CPU version 2.5+
flags\t\t: fpu de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ssse3 sse4_1
"""


def _cpu(tmp_path: Path, text: str, machine: str = "x86_64"):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return cpu_isa.detect_cpu(path, machine=machine, system="Linux")


@pytest.mark.parametrize(
    ("text", "machine", "classes", "flags"),
    [
        (ZEN3, "x86_64", ("avx2",), ("avx2",)),
        (
            SAPPHIRE_RAPIDS,
            "x86_64",
            ("avx512_vnni", "avx2"),
            ("avx2", "avx512f", "avx512bw", "avx512_vnni", "amx_int8"),
        ),
        # AVX-512 without VNNI: ONNX Runtime's AVX-512 core kernel adds pairs with vpmaddubsw, saturating like AVX2
        (SKYLAKE_SP, "x86_64", ("avx2",), ("avx2", "avx512f", "avx512bw")),
        # AVX-VNNI (VEX): vpdpbusds sums in int32, like AVX-512 VNNI
        (ALDER_LAKE, "x86_64", ("avx512_vnni", "avx2"), ("avx2", "avx_vnni")),
        (GRAVITON3, "aarch64", ("arm64_dotprod",), ("asimddp", "i8mm")),
        (CORTEX_A72, "aarch64", (), ()),
        (OLD_X86, "x86_64", (), ()),
        (ZEN3, "riscv64", (), ("avx2",)),
    ],
)
def test_classes_from_cpuinfo(tmp_path, text, machine, classes, flags):
    cpu = _cpu(tmp_path, text, machine)
    assert cpu.classes == classes and cpu.flags == flags and cpu.source == cpu_isa.CPUINFO
    assert cpu.machine == cpu_isa.normalize_machine(machine)


def test_detection_reads_the_model_and_stops_at_the_first_flags_line(tmp_path):
    cpu = _cpu(tmp_path, ZEN3 + "\nprocessor\t: 1\nflags\t\t: avx2 avx512_vnni\n" * 200)
    assert cpu.model == "AMD EPYC 7B13" and cpu.classes == ("avx2",)
    assert cpu.describe() == "AMD EPYC 7B13 (x86_64, avx2), cpu_isa: avx2"


def test_a_cpu_whose_flags_cannot_be_read_has_no_class_and_says_why(tmp_path):
    cpu = cpu_isa.detect_cpu(tmp_path / "missing", machine="x86_64", system="Linux")
    assert cpu.classes == () and cpu.source == "unknown" and "no CPU flags" in cpu.unknown_reason
    reason = cpu.incompatible_reason("avx2")
    assert reason.startswith("needs avx2; this host has no known class (no CPU flags in ")
    assert reason.endswith("--assume-cpu")
    mac = cpu_isa.detect_cpu(tmp_path / "missing", machine="arm64", system="Darwin")
    assert mac.classes == ("arm64_dotprod",) and mac.source == "platform"  # every Apple silicon CPU has it


def test_the_incompatible_reason_is_in_the_issue_s_words():
    avx2 = cpu_isa.assumed_cpu("avx2")
    assert avx2.incompatible_reason("avx512_vnni") == "needs avx512_vnni; this host has avx2"
    assert avx2.incompatible_reason("avx2") is None
    vnni = cpu_isa.assumed_cpu("AVX512-VNNI")
    assert vnni.classes == ("avx512_vnni", "avx2")  # a VNNI host has the avx2 class too
    assert vnni.incompatible_reason("arm64_dotprod") == "needs arm64_dotprod; this host has avx512_vnni, avx2"
    arm = cpu_isa.assumed_cpu("arm64_dotprod")
    assert arm.incompatible_reason("avx2") == "needs avx2; this host has arm64_dotprod"
    none = cpu_isa.assumed_cpu("none")
    assert none.classes == () and none.incompatible_reason("avx2").startswith("needs avx2; this host has none of them")
    assert "not a CPU class this nimbuild knows" in avx2.incompatible_reason("avx10_2")


def test_an_unknown_assumed_class_is_one_error_listing_the_known_ones():
    with pytest.raises(NimbuildError) as exc:
        cpu_isa.assumed_cpu("avx9")
    assert str(exc.value) == (
        "--assume-cpu 'avx9' is not a CPU class nimbuild knows; use one of: avx512_vnni, arm64_dotprod, avx2, or none"
    )


def test_what_each_class_is_quantized_with():
    assert {c.name: (c.weight_bits, c.reduce_range) for c in cpu_isa.CLASSES} == {
        "avx512_vnni": (8, False),
        "arm64_dotprod": (8, False),
        "avx2": (7, True),
    }


# ------------------------------------------------------------------ selection with classes


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    """A manifest with the int8 graph of both x86 classes, one of an unknown class, and fp32."""
    root = tmp_path_factory.mktemp("classes")
    items = []
    for key, precision, isa in (("vnni", "int8", "avx512_vnni"), ("avx2", "int8", "avx2"), ("fp32", "fp32", None)):
        rel = f"onnx/{key}/model.onnx"
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_bytes(os.urandom(100))
        tags = profiles.onnx_profile_tags("tiny", "r1", precision, "cpu", 64, 512, cpu_isa=isa)
        items.append(
            Profile(profiles.profile_id(tags), profiles.profile_name(tags), tags, {rel: file_entry(root, rel)})
        )
    future = {**items[0].tags, "cpu_isa": "avx10_2"}  # another writer's (or a later nimbuild's) class
    (root / "onnx/future").mkdir()
    (root / "onnx/future/model.onnx").write_bytes(b"x" * 10)
    items.append(
        Profile(
            profiles.profile_id(future),
            "cpu-int8-future",
            future,
            {"onnx/future/model.onnx": file_entry(root, "onnx/future/model.onnx")},
        )
    )
    path = root / "manifest.yaml"
    write_manifest(Manifest(profiles=items), path)
    manifest = load_manifest(path)
    return path, manifest, {p.tags.get("cpu_isa", "fp32"): p for p in manifest.profiles}


def _host(cls: str) -> hardware.Host:
    return hardware.Host(gpus=[], cpu_only_reason="no GPU", cpu=cpu_isa.assumed_cpu(cls))


def _groups(selection) -> dict[str, list[str]]:
    return {
        s: [c.profile.tags.get("cpu_isa", "fp32") for c in selection.group(s)] for s in ("runnable", "incompatible")
    }


def test_a_vnni_host_runs_both_x86_classes_and_prefers_the_full_range_graph(two_classes):
    _, manifest, by = two_classes
    sel = select(manifest, _host("avx512_vnni"), {})
    assert _groups(sel) == {"runnable": ["avx512_vnni", "avx2", "fp32"], "incompatible": ["avx10_2"]}
    assert sel.selected.id == by["avx512_vnni"].id
    assert startup_log(sel)[-1] == "Profile metadata: cpu_isa: avx512_vnni"


def test_an_avx2_host_says_what_the_vnni_graph_needs_and_runs_the_avx2_one(two_classes):
    _, manifest, by = two_classes
    sel = select(manifest, _host("avx2"), {})
    assert _groups(sel) == {"runnable": ["avx2", "fp32"], "incompatible": ["avx512_vnni", "avx10_2"]}
    reasons = {c.profile.tags["cpu_isa"]: c.reason for c in sel.group("incompatible")}
    assert reasons["avx512_vnni"] == "needs avx512_vnni; this host has avx2"
    assert "not a CPU class this nimbuild knows" in reasons["avx10_2"]
    assert sel.selected.id == by["avx2"].id
    with pytest.raises(
        NimbuildError, match="which this host cannot run .incompatible: needs avx512_vnni; this host has avx2"
    ):
        select(manifest, _host("avx2"), {"NIM_MODEL_PROFILE": by["avx512_vnni"].name})


@pytest.mark.parametrize("cls", ["arm64_dotprod", "none"])
def test_a_host_without_the_x86_classes_falls_back_to_fp32(two_classes, cls):
    _, manifest, by = two_classes
    sel = select(manifest, _host(cls), {})
    assert _groups(sel)["runnable"] == ["fp32"] and sel.selected.id == by["fp32"].id


def test_list_model_profiles_assume_cpu_previews_an_avx2_host(two_classes, capsys, monkeypatch):
    """The issue's check: a VNNI-only int8 profile is incompatible on an assumed AVX2 host, with the reason,
    and the next runnable profile is selected."""
    path, manifest, by = two_classes
    vnni_only = Manifest(profiles=[by["avx512_vnni"], by["fp32"]], root=manifest.root)
    write_manifest(vnni_only, path.parent / "vnni-only.yaml")
    code, out, _ = _cli(
        ["list-model-profiles", "-m", str(path.parent / "vnni-only.yaml"), "--assume-cpu", "avx2"], capsys, monkeypatch
    )
    assert code == 0
    lines = out.splitlines()
    assert "- CPU: assumed with --assume-cpu (not detected), cpu_isa: avx2" in lines
    assert (
        f"  - {by['avx512_vnni'].id} (cpu-int8-avx512-vnni-onnxruntime): needs avx512_vnni; this host has avx2" in lines
    )
    assert f"Selected profile: {by['fp32'].id} (cpu-fp32-onnxruntime)" in lines

    code, out, _ = _cli(["select", "-m", str(path), "--assume-cpu", "avx512_vnni", "--json"], capsys, monkeypatch)
    doc = json.loads(out)
    assert code == 0 and doc["selected"]["id"] == by["avx512_vnni"].id
    assert doc["system"]["cpu"]["cpu_isa"] == ["avx512_vnni", "avx2"] and doc["system"]["cpu"]["assumed"]


def test_an_unknown_assume_cpu_is_a_one_line_error(two_classes, capsys, monkeypatch):
    path, _, _ = two_classes
    code, out, err = _cli(["list-model-profiles", "-m", str(path), "--assume-cpu", "sse9"], capsys, monkeypatch)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        "error: --assume-cpu 'sse9' is not a CPU class nimbuild knows; "
        "use one of: avx512_vnni, arm64_dotprod, avx2, or none"
    ]


def test_serve_takes_assume_cpu_too():
    from nimbuild.cli import serve as serve_cli

    app = typer.Typer()
    serve_cli.register(app)
    params = {p.name for p in typer.main.get_command(app).params}
    assert "assume_cpu" in params
