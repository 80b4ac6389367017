"""nimbuild.runtime.settings: every NIM_* variable read once, validated, documented; hostile values refused.

A setting or a profile tag that cannot work must stop a command at start with
one line naming it (exit 1, in bounded time) or make the profile incompatible
with the reason: never hang the server, never "runnable, then crash".
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nimbuild import profiles
from nimbuild.errors import NimbuildError
from nimbuild.runtime import settings as settings_mod
from nimbuild.runtime.settings import BY_NAME, VARIABLES, Settings, read_settings

REPO = Path(__file__).resolve().parents[1]
NIM_NAME = re.compile(r"\bNIM_[A-Z0-9_]*[A-Z0-9]\b")


# ----------------------------------------------------------------------------- one owner, documented


def _code_files() -> list[Path]:
    return sorted(p for p in (REPO / "nimbuild").rglob("*") if p.suffix in (".py", ".j2") and p.is_file())


def test_every_nim_variable_in_the_code_is_declared_and_in_the_readme():
    in_code = {name for path in _code_files() for name in NIM_NAME.findall(path.read_text(encoding="utf-8"))}
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = set(re.findall(r"^\| `(NIM_[A-Z0-9_]+)` \|", readme, re.M))
    assert in_code, "the scan found nothing: the pattern is broken"
    assert in_code - set(BY_NAME) == set(), "NIM_* names in the code that settings.VARIABLES does not declare"
    assert set(BY_NAME) - table == set(), "declared variables missing from README.md's settings table"
    assert table - set(BY_NAME) == set(), "README.md documents variables nimbuild does not read"


def test_only_the_settings_module_reads_nim_variables():
    reads = re.compile(r"""(environ|env)\s*(\.get\(|\[)\s*["']NIM_|envvar\s*=\s*["']NIM_""")
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for path in _code_files()
        if path.suffix == ".py" and path.name != "settings.py" and "templates" not in path.parts
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if reads.search(line)
    ]
    assert offenders == []


def test_defaults_are_the_documented_ones():
    assert read_settings({}) == Settings()
    s = Settings()
    assert (s.http_api_port, s.log_level, s.serve_backend, s.manifest_path) == (
        8000,
        "info",
        "auto",
        Path("manifest.yaml"),
    )
    for variable in VARIABLES:
        if variable.default and variable.kind in ("int", "float") and variable.default[0].isdigit():
            assert variable.check(variable.default.split()[0]) is not None  # the README's default is accepted


def test_valid_values_and_precedence():
    got = read_settings(
        {
            "NIM_HTTP_API_PORT": " 9000 ",
            "NIM_CPU_ONLY": "Yes",
            "NIM_LOG_LEVEL": "DEBUG",
            "NIM_TAGS_SELECTOR": "precision=fp16, backend=onnx",
            "NIM_MAX_QUEUE_DELAY_MS": "",  # empty: unset
            "NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS": "500",
            "NIM_TRITON_MAX_BATCH_SIZE": "16",
            "NIM_CACHE_PATH": "~/nim-cache",
        }
    )
    assert got.http_api_port == 9000 and got.cpu_only and got.cpu_only_reason == "NIM_CPU_ONLY=Yes is set"
    assert got.log_level == "debug"
    assert got.tags_selector == {"precision": "fp16", "backend": "onnx"}
    assert got.max_queue_delay_ms == pytest.approx(0.5) and got.max_batch_size == 16
    assert got.cache_path == Path("~/nim-cache").expanduser()
    both = read_settings(
        {"NIM_MAX_QUEUE_DELAY_MS": "3", "NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS": "9"}
    )
    assert both.max_queue_delay_ms == 3.0  # nimbuild's own name wins over the NIM_TRITON_* one


# ----------------------------------------------------------------------------- hostile values


def _hostile(variable) -> list[str]:
    if variable.kind == "int":
        return [
            "abc",
            "1.5",
            "1e3",
            "0x10",
            "inf",
            "nan",
            "５",
            str(int(variable.low) - 1),
            str(int(variable.high) + 1),
        ]
    if variable.kind == "float":
        return ["inf", "-inf", "nan", "1e308", "abc", "1,5", str(variable.low - 1), str(variable.high * 10)]
    if variable.kind == "bool":
        return ["maybe", "2", "truthy"]
    if variable.kind == "choice":
        return ["bogus", "auto-ish"]
    if variable.kind == "selector":
        return ["precision", "=fp16", "a=1,a=2"]
    return ["a\x00b", "line\nbreak"]


CASES = [(v.name, bad) for v in VARIABLES for bad in _hostile(v)]


@pytest.mark.parametrize("name, value", CASES, ids=[f"{n}={v!r}" for n, v in CASES])
def test_a_value_that_cannot_work_is_one_error_naming_the_variable(name, value):
    with pytest.raises(NimbuildError) as info:
        read_settings({name: value})
    message = str(info.value)
    assert message.startswith(f"{name}=") and "\n" not in message.strip("\n").replace(repr(value), "")
    assert repr(value.strip()) in message or repr(value) in message


def test_options_are_checked_by_the_same_rule():
    assert settings_mod.option_int("NIM_HTTP_API_PORT", 8080, "--port") == 8080
    with pytest.raises(NimbuildError, match=r"--port 0 is out of range: expected an integer between 1 and 65535"):
        settings_mod.option_int("NIM_HTTP_API_PORT", 0, "--port")
    with pytest.raises(NimbuildError, match=r"--log-level 'loud' is not known"):
        settings_mod.option_text("NIM_LOG_LEVEL", "loud", "--log-level")
    with pytest.raises(NimbuildError, match=r"--workspace-mib 0 is out of range"):
        settings_mod.check_range(0, "--workspace-mib", 1, 1 << 30)
    with pytest.raises(NimbuildError, match="is not finite"):
        settings_mod.check_range(math.inf, "--delay", 0, 10)


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NIM_")}
    return subprocess.run(
        [sys.executable, "-m", "nimbuild", *args],
        capture_output=True,
        text=True,
        timeout=60,  # bounded: a setting that would hang the server must fail at once
        env={**clean, **env},
        cwd=REPO,
    )


@pytest.mark.parametrize(
    "args, env, words",
    [
        (("serve",), {"NIM_MAX_QUEUE_DELAY_MS": "inf"}, "NIM_MAX_QUEUE_DELAY_MS='inf' is not finite"),
        (("serve",), {"NIM_MAX_QUEUE_DELAY_MS": "1e308"}, "NIM_MAX_QUEUE_DELAY_MS='1e308' is out of range"),
        (("serve",), {"NIM_MAX_QUEUE_DELAY_MS": "nan"}, "NIM_MAX_QUEUE_DELAY_MS='nan' is not finite"),
        (("serve", "--log-level", "bogus"), {}, "--log-level 'bogus' is not known"),
        (("serve", "--backend", "gpu"), {}, "--backend 'gpu' is not known"),
        (("serve",), {"NIM_LOG_LEVEL": "loud"}, "NIM_LOG_LEVEL='loud'"),
        (("list-model-profiles", "-m", "manifests/example-tiny.yaml"), {"NIM_CPU_ONLY": "maybe"}, "NIM_CPU_ONLY"),
        (("select", "-m", "manifests/example-tiny.yaml"), {"NIM_TAGS_SELECTOR": "fp16"}, "NIM_TAGS_SELECTOR"),
    ],
)
def test_commands_refuse_bad_settings_in_one_line(args, env, words):
    proc = _cli(*args, **env)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert words in proc.stderr and proc.stderr.count("\n") == 1


# ----------------------------------------------------------------------------- profile tags


@pytest.mark.parametrize(
    "key, value",
    [
        ("max_batch_size", "abc"),
        ("max_batch_size", "0"),
        ("max_batch_size", "-4"),
        ("max_batch_size", "1e3"),
        ("max_batch_size", "8.0"),
        ("max_batch_size", "99999999999999999999"),
        ("max_sequence_length", "abc"),
        ("max_sequence_length", "0"),
        ("gpu_count", "0"),
        ("gpu_count", "two"),
    ],
)
def test_a_tag_that_cannot_work_makes_the_profile_incompatible(tmp_path, key, value):
    from nimbuild.manifest import Manifest, Profile, file_entry, load_manifest, write_manifest
    from nimbuild.runtime.hardware import assumed_host
    from nimbuild.runtime.selection import select

    (tmp_path / "model.onnx").write_bytes(b"graph")
    good = profiles.onnx_profile_tags("m", "r", "fp32", "cpu", 8, 128)
    bad = dict(profiles.onnx_profile_tags("m", "r", "int8", "cpu", 8, 128, cpu_isa="avx2"), **{key: value})
    items = [
        Profile(
            id=profiles.profile_id(tags),
            name=profiles.profile_name(tags) + ("-bad" if tags is bad else ""),
            tags=tags,
            files={"model.onnx": file_entry(tmp_path, "model.onnx")},
        )
        for tags in (good, bad)
    ]
    write_manifest(Manifest(profiles=items), tmp_path / "manifest.yaml")
    selection = select(load_manifest(tmp_path / "manifest.yaml"), assumed_host([]), {})
    by_name = {c.profile.name: c for c in selection.classified}
    judged = by_name[items[1].name]
    assert judged.status == "incompatible" and f"{key}={value!r}" in (judged.reason or "")
    assert selection.selected is not None and selection.selected.name == items[0].name  # the good one still serves


def test_numeric_tags_default_when_absent_and_parse_when_valid():
    assert profiles.serving_limits({}) == profiles.ServingLimits(64, 512, 1)
    assert profiles.serving_limits({"max_batch_size": "32", "max_sequence_length": "256", "gpu_count": "2"}) == (
        profiles.ServingLimits(32, 256, 2)
    )
    assert profiles.tag_problem({"max_batch_size": "32"}) is None
    assert "max_batch_size='x'" in (profiles.tag_problem({"max_batch_size": "x"}) or "")


def test_serve_refuses_to_start_a_profile_with_a_bad_tag(tmp_path):
    from nimbuild.manifest import Manifest, Profile
    from nimbuild.runtime.serve.backends import BackendStartError
    from nimbuild.runtime.serve.server import start_profile
    from nimbuild.runtime.serve.service import Limits

    tags = dict(profiles.onnx_profile_tags("m", "r", "fp32", "cpu", 8, 128), max_sequence_length="lots")
    profile = Profile(id=profiles.profile_id(tags), name="p", tags=tags, files={})
    with pytest.raises(BackendStartError, match="max_sequence_length='lots'"):
        start_profile(Manifest(profiles=[profile], root=tmp_path), profile, limits=Limits())
