"""Where a profile's repository comes from: its model file, the graph's external data, its tokenizer files.

The Triton config needs the graph's input and output tensors; an engine does
not carry them readably, so an engine's repository reads the ONNX graph of its
precision that it was built from (beside the manifest, where `nimbuild export`
left it).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from nimbuild.errors import NimbuildError
from nimbuild.export_layout import TOKENIZER_DIR, graph_path, profile_model_file, tokenizer_dir
from nimbuild.manifest import FileEntry, Manifest, Profile
from nimbuild.profiles import numeric_tag


def tag_int(profile: Profile, key: str) -> int:
    """A numeric tag the repository is rendered with (:func:`nimbuild.profiles.numeric_tag`); it must be given."""
    if key not in profile.tags:
        raise NimbuildError(
            f"profile {profile.name!r}: tags.{key} is missing",
            hint="rebuild the manifest with `nimbuild manifest build`",
        )
    try:
        return numeric_tag(profile.tags, key)
    except NimbuildError as exc:
        raise NimbuildError(f"profile {profile.name!r}: {exc.message}", hint=exc.hint) from None


def kind_of(profile: Profile) -> str:
    """The repository's kind: ``tensorrt`` (a plan) or ``onnxruntime`` (an ONNX graph)."""
    backend = profile.tags.get("backend")
    if backend == "tensorrt":
        return "tensorrt"
    if backend == "onnx":
        return "onnxruntime"
    raise NimbuildError(
        f"profile {profile.name!r}: backend {backend!r} has no Triton model",
        hint="Triton repositories are rendered for tensorrt and onnx profiles",
    )


def model_file(profile: Profile) -> str:
    """The manifest path of the profile's engine or graph (:func:`nimbuild.export_layout.profile_model_file`)."""
    kind_of(profile)  # a profile Triton cannot serve says so first
    return profile_model_file(profile)


def companion_files(profile: Profile, main: str) -> list[str]:
    """External-data files of an ONNX graph: beside it, named after it or ``*.data``."""
    if not main.endswith(".onnx"):
        return []
    folder, base = PurePosixPath(main).parent, PurePosixPath(main).name
    out = []
    for rel in sorted(profile.files):
        p = PurePosixPath(rel)
        if (
            rel != main
            and p.parent == folder
            and (p.name.startswith(base) or p.suffix in (".data", ".bin") or p.name.endswith("_data"))
        ):
            out.append(rel)
    return out


def graph_for(manifest: Manifest, profile: Profile) -> Path:
    """The ONNX graph whose inputs and outputs the profile's model has.

    An ONNX profile's own file; for an engine, the graph of its precision that
    it was built from (``onnx/<precision>/model.onnx`` beside the manifest).
    """
    if manifest.root is None:
        raise NimbuildError(
            f"profile {profile.name!r}: the manifest has no folder to find its graph in",
            hint="load the manifest from a file (nimbuild.manifest.load_manifest)",
        )
    root = Path(manifest.root)
    if kind_of(profile) == "onnxruntime":
        from nimbuild.manifest import file_in

        return file_in(root, profile, model_file(profile))  # the bytes at its uri (the key may differ)
    precision = profile.tags.get("precision", "")
    graph = graph_path(root, precision)
    if graph.is_file():
        return graph
    raise NimbuildError(
        f"profile {profile.name!r}: the {precision} ONNX graph its engine was built from is not at "
        f"{graph} (needed for the Triton config's input names and types)",
        hint="render in the export folder that `nimbuild export` filled (the manifest's folder)",
    )


def tokenizer_sources(manifest: Manifest, profile: Profile) -> dict[str, tuple[str, FileEntry | None]]:
    """{basename: (manifest relpath, FileEntry or None)} of tokenizer.json and tokenizer_config.json."""
    wanted = ("tokenizer.json", "tokenizer_config.json")
    found: dict[str, tuple[str, FileEntry | None]] = {}
    for rel, entry in sorted(profile.files.items()):
        name = PurePosixPath(rel).name
        if name in wanted and name not in found:
            found[name] = (rel, entry)
    if manifest.root is not None:
        root = Path(manifest.root)
        for name in wanted:
            if name not in found and (tokenizer_dir(root) / name).is_file():
                found[name] = (f"{TOKENIZER_DIR}/{name}", None)
    return found
