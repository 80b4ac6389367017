"""The runtime half stays light: proven in fresh interpreters by what is in sys.modules at exit.

A serving image installs ``nimbuild[runtime]`` only, and ``list-model-profiles``
must start in a fraction of a second: neither may load the build half (torch,
transformers, onnx, polygraphy, tensorrt), ONNX Runtime, pydantic (the recipe
schema), nor rich (the listing prints plain lines).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nimbuild import profiles
from nimbuild.manifest import Manifest, Profile, file_entry, write_manifest

REPO = Path(__file__).resolve().parents[1]
HEAVY = (
    "torch",
    "transformers",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "polygraphy",
    "tensorrt",
    "pydantic",
    "nimbuild.recipe",
    "nimbuild.builder",
    "nimbuild.render",
    "rich",
    "numpy",
)
# What nimbuild.runtime's own modules may import of nimbuild (docs/internals.md, house rules).
ALLOWED_NIMBUILD = {
    "nimbuild",
    "nimbuild.errors",
    "nimbuild.output",
    "nimbuild.skus",
    "nimbuild.cpu_isa",
    "nimbuild.profiles",
    "nimbuild.manifest",
    "nimbuild.manifest_paths",
    "nimbuild.manifest_parse",
    "nimbuild.export_layout",
    "nimbuild.fsutil",
    "nimbuild.safeload",
    "nimbuild.manifest_nim",
    "nimbuild.safe_text",
    "nimbuild.runtime",
    "nimbuild.runtime.hardware",
    "nimbuild.runtime.selection",
    "nimbuild.runtime.gpu_match",
    "nimbuild.runtime.overrides",
    "nimbuild.runtime.settings",
}

PROBE = textwrap.dedent("""
    import atexit, json, os, sys

    def report():
        with open(os.environ["PROBE_OUT"], "w") as fh:
            json.dump(sorted(sys.modules), fh)

    atexit.register(report)
    {body}
""")


def _loaded(body: str, tmp_path: Path) -> tuple[set[str], subprocess.CompletedProcess]:
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NIM_", "PYTHON"))}
    env["PROBE_OUT"] = str(out)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(body=body)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.exists(), proc.stderr
    return set(json.loads(out.read_text())), proc


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.fixture(scope="module")
def small_manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imports")
    (root / "model.onnx").write_bytes(b"\x08\x0a" * 100)
    items = []
    for tags in (
        profiles.onnx_profile_tags("tiny", "r1", "fp32", "cpu", 8, 128),
        profiles.onnx_profile_tags("tiny", "r1", "fp16", "gpu", 8, 128),
    ):
        items.append(
            Profile(
                id=profiles.profile_id(tags),
                name=profiles.profile_name(tags),
                tags=tags,
                files={"model.onnx": file_entry(root, "model.onnx")},
            )
        )
    path = root / "manifest.yaml"
    write_manifest(Manifest(profiles=items), path)
    return path


def test_importing_the_runtime_loads_nothing_heavy(tmp_path):
    modules, _ = _loaded("import nimbuild.runtime, nimbuild.runtime.hardware, nimbuild.runtime.selection", tmp_path)
    assert "nimbuild.runtime.selection" in modules  # the probe did import it
    assert _heavy(modules) == []
    assert {m for m in modules if m.startswith("nimbuild")} <= ALLOWED_NIMBUILD


def test_detecting_and_selecting_loads_nothing_heavy(tmp_path, small_manifest):
    body = (
        f"from nimbuild.manifest import load_manifest\n"
        f"from nimbuild.runtime.hardware import detect_host\n"
        f"from nimbuild.runtime.selection import select, startup_log\n"
        f"print(startup_log(select(load_manifest({str(small_manifest)!r}), detect_host())))"
    )
    modules, proc = _loaded(body, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Selected profile: " in proc.stdout
    assert _heavy(modules) == []
    assert {m for m in modules if m.startswith("nimbuild")} <= ALLOWED_NIMBUILD


@pytest.mark.parametrize(
    "argv",
    [
        ["list-model-profiles"],
        ["list-model-profiles", "--json"],
        ["list-model-profiles", "--assume-gpu", "h100-sxm"],
        ["list-model-profiles", "--assume-cpu", "avx512_vnni"],
        ["select"],
    ],
)
def test_nimbuild_cli_listing_loads_nothing_heavy(tmp_path, small_manifest, argv):
    body = f"from nimbuild.cli import main\nmain({argv + ['--manifest', str(small_manifest)]!r})"
    modules, proc = _loaded(body, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "nimbuild.cli.profiles" in modules and "nimbuild.runtime.selection" in modules
    assert _heavy(modules) == [], f"`nimbuild {' '.join(argv)}` loaded heavy modules"


def test_standalone_list_model_profiles_loads_nothing_heavy(tmp_path, small_manifest):
    body = (
        f"from nimbuild.cli import list_model_profiles_main\nlist_model_profiles_main(['-m', {str(small_manifest)!r}])"
    )
    modules, proc = _loaded(body, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("SYSTEM INFO\n")
    assert _heavy(modules) == []


def test_the_console_scripts_run(small_manifest):
    bindir = Path(sys.executable).parent
    for script in ("nimbuild", "list-model-profiles"):
        exe = bindir / script
        if not exe.exists():
            pytest.skip(f"{exe} not installed (pip install -e . installs it)")
        argv = [str(exe)] + (["list-model-profiles"] if script == "nimbuild" else []) + ["-m", str(small_manifest)]
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("NIM_")},
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == "SYSTEM INFO"
        assert "Selected profile: " in proc.stdout


# What a module under nimbuild/runtime may import of nimbuild, anywhere in it (top level or inside a function).
RUNTIME_MAY_IMPORT = (
    "nimbuild.errors",
    "nimbuild.output",
    "nimbuild.skus",
    "nimbuild.cpu_isa",
    "nimbuild.profiles",
    "nimbuild.manifest",
    "nimbuild.manifest_paths",
    "nimbuild.export_layout",
    "nimbuild.manifest_verify",
    "nimbuild.fsutil",
    "nimbuild.safeload",
    "nimbuild.manifest_nim",
    "nimbuild.safe_text",
    "nimbuild.runtime",
)


def _nimbuild_imports(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, module) of every nimbuild import in one file (``root``: the repository), relative ones resolved."""
    import ast

    package = ".".join(path.relative_to(root).with_suffix("").parts).rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            if base == "nimbuild":  # from nimbuild import render: the submodule is the import
                found += [(node.lineno, f"nimbuild.{a.name}") for a in node.names if not a.name.startswith("__")]
            else:
                found.append((node.lineno, base))
    return [(line, mod) for line, mod in found if mod == "nimbuild" or mod.startswith("nimbuild.")]


def test_runtime_source_never_imports_build_render_or_recipe():
    bad = []
    for path in sorted((REPO / "nimbuild" / "runtime").rglob("*.py")):
        for line, mod in _nimbuild_imports(path):
            if not any(mod == ok or mod.startswith(ok + ".") for ok in RUNTIME_MAY_IMPORT):
                bad.append(f"{path.relative_to(REPO)}:{line}: imports {mod}")
    assert bad == [], "nimbuild/runtime may import only " + ", ".join(RUNTIME_MAY_IMPORT) + ":\n" + "\n".join(bad)


def test_the_static_import_check_sees_lazy_and_relative_imports(tmp_path):
    # The checker itself: imports inside a function, relative ones and `from nimbuild import x` all count.
    probe = tmp_path / "nimbuild" / "runtime" / "serve" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "import nimbuild.errors\n"
        "def f():\n    from nimbuild.render import store\n    from ...builder import steps\n"
        "    from nimbuild import recipe, __version__\n    from . import app\n"
    )
    assert [m for _, m in _nimbuild_imports(probe, tmp_path)] == [
        "nimbuild.errors",
        "nimbuild.render",
        "nimbuild.builder",
        "nimbuild.recipe",
        "nimbuild.runtime.serve",
    ]


def test_the_model_store_loads_nothing_heavy(tmp_path):
    modules, proc = _loaded(
        "import nimbuild.runtime.model_store, nimbuild.runtime.triton_repo.writing, "
        "nimbuild.runtime.triton_repo.serving_overrides",
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "nimbuild.runtime.model_store" in modules
    assert _heavy(modules) == []
