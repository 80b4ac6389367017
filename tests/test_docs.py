"""The documents stay true to the code: the README's extras and layout, the design document, its citations."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")


def _name(requirement: str) -> str:
    """'tritonclient[http]>=2.50' -> 'tritonclient' (PEP 503 normalised)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0]).lower()


def _extras() -> dict[str, list[str]]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return {k: [_name(r) for r in v] for k, v in data["project"]["optional-dependencies"].items()}


def _row(extra: str) -> str:
    match = re.search(rf"^\| `nimbuild\[{extra}\]` \|.*$", README, re.M)
    assert match, f"README.md's Installing table has no row for nimbuild[{extra}]"
    return re.sub(r"[-_.]+", "-", match.group(0).lower())


def test_the_readme_lists_every_package_of_every_extra():
    extras = _extras()
    assert set(extras) >= {"runtime", "cpu", "build", "dev", "triton", "tensorrt"}
    for extra, packages in extras.items():
        row = _row(extra)
        if extra == "cpu":  # the runtime extra with plain onnxruntime: the row says just that
            assert set(packages) == set(extras["runtime"]) - {"onnxruntime-gpu"} | {"onnxruntime"}
            assert "onnxruntime" in row
            continue
        missing = [p for p in packages if p not in row]
        assert missing == [], f"nimbuild[{extra}] brings {missing}, which README.md's row does not name"


def _layout_block() -> str:
    section = README[README.index("## Layout") :]
    return section[section.index("```") : section.index("```", section.index("```") + 3)]


def test_the_readme_layout_names_every_module():
    block = _layout_block()
    package = REPO / "nimbuild"
    names = {p.stem for p in package.glob("*.py") if not p.stem.startswith("__")}
    names |= {p.name for p in package.iterdir() if p.is_dir() and not p.name.startswith("__")}
    for sub in ("builder", "runtime", "builder/engines", "runtime/triton_repo", "runtime/serve"):
        names |= {p.stem for p in (package / sub).glob("*.py") if not p.stem.startswith("__")}
        names |= {p.name for p in (package / sub).iterdir() if p.is_dir() and not p.name.startswith("__")}
    missing = sorted(n for n in names if not re.search(rf"\b{re.escape(n)}\b", block))
    assert missing == [], f"README.md's Layout does not name {missing}"


def test_the_design_document_is_in_the_repository_and_the_code_cites_it():
    design = REPO / "docs" / "design.md"
    assert design.is_file() and "docs/design.md" in README
    text = design.read_text(encoding="utf-8")
    for contract in (
        "## Profiles, tags and IDs",
        "## The manifest",
        "## Selection",
        "## HTTP API",
        "## Layout",
        "## Rules",
    ):
        assert contract in text
    assert "`cpu_isa`" in text and "POST /rerank" in text and "/v2/rerank" in text
    citing = [p for p in (REPO / "nimbuild").rglob("*") if p.is_file() and p.suffix in (".py", ".j2", ".yaml")]
    outside = [str(p.relative_to(REPO)) for p in citing if "DESIGN.md" in p.read_text(encoding="utf-8")]
    assert outside == [], "the code cites a design document outside the repository"
    assert "docs/design.md" in (REPO / "nimbuild" / "runtime" / "selection.py").read_text(encoding="utf-8")


def test_no_module_of_the_package_is_over_500_lines_and_no_folder_is_named_build():
    package = REPO / "nimbuild"
    long = {str(p.relative_to(REPO)): n for p in package.rglob("*.py") if (n := len(p.read_bytes().splitlines())) > 500}
    assert long == {}
    assert [p for p in package.rglob("build") if p.is_dir()] == []
