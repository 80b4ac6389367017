"""The repository record (``nimbuild-repository.json``): what a repository is made of, from what.

One profile's record holds each model's template context, every file to place
(manifest relpath, sha256, size) and the graph's tensors, so a repository can
be re-rendered without the graph: ``create-model-store`` in a serving image,
and the serve-time overrides.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.manifest import FileEntry, Manifest, Profile
from nimbuild.runtime.triton_repo.contexts import ServingOptions, build_contexts, preferred_sizes
from nimbuild.runtime.triton_repo.layout import (
    ENSEMBLE,
    INFO_FORMAT,
    MODEL,
    REPOSITORY_INFO,
    TOKENIZER,
    TOKENIZER_PY,
)
from nimbuild.runtime.triton_repo.onnx_io import GraphIO
from nimbuild.runtime.triton_repo.sources import (
    companion_files,
    graph_for,
    kind_of,
    model_file,
    tag_int,
    tokenizer_sources,
)


def file_spec(rel: str, entry: FileEntry | None) -> dict[str, Any]:
    """A file to place in the repository: its manifest relpath, and its sha256 and size when known."""
    spec: dict[str, Any] = {"source": rel}
    if entry is not None:
        spec.update(sha256=entry.sha256, size=entry.size)
    return spec


def tokenizer_files(manifest: Manifest, profile: Profile) -> dict[str, dict[str, Any]]:
    """The tokenizer model's files ({} without a tokenizer.json: then no tokenizer and ensemble models)."""
    tokenizer = tokenizer_sources(manifest, profile)
    if "tokenizer.json" not in tokenizer:
        return {}
    files: dict[str, dict[str, Any]] = {f"{TOKENIZER}/1/model.py": {"template_file": TOKENIZER_PY}}
    for name, (rel, entry) in tokenizer.items():
        files[f"{TOKENIZER}/1/{name}"] = file_spec(rel, entry)
    return files


def profile_info(
    manifest: Manifest,
    profile: Profile,
    serving: ServingOptions,
    *,
    io: GraphIO | None = None,
    use_onnx: bool | None = None,
) -> dict[str, Any]:
    """The full record of one profile's repository: contexts, files, graph IO (reads the graph)."""
    from nimbuild.runtime.triton_repo.onnx_io import read_graph_io

    kind = kind_of(profile)
    main = model_file(profile)
    if io is None:
        io = read_graph_io(graph_for(manifest, profile), use_onnx=use_onnx)
    max_batch = tag_int(profile, "max_batch_size")
    max_seq = tag_int(profile, "max_sequence_length")
    device = profile.tags.get("device", "gpu")
    notes = []
    tokenizer = tokenizer_files(manifest, profile)
    if not tokenizer:
        notes.append(
            "no tokenizer.json in the profile or in tokenizer/ beside the manifest: "
            "rendered without the tokenizer and ensemble models"
        )
    default_name = "model.plan" if kind == "tensorrt" else "model.onnx"
    files = {f"{MODEL}/1/{default_name}": file_spec(main, profile.files[main])}
    for rel in companion_files(profile, main):
        files[f"{MODEL}/1/{PurePosixPath(rel).name}"] = file_spec(rel, profile.files[rel])
    files.update(tokenizer)
    return repository_record(
        profile_ids=[profile.id],
        name=profile.name,
        kind=kind,
        device=device,
        io=io,
        files=files,
        max_batch=max_batch,
        max_seq=max_seq,
        serving=serving,
        notes=notes,
        with_tokenizer=bool(tokenizer),
    )


def repository_record(
    *,
    profile_ids: list[str],
    name: str,
    kind: str,
    device: str,
    io: GraphIO,
    files: dict[str, dict[str, Any]],
    max_batch: int,
    max_seq: int,
    serving: ServingOptions,
    notes: list[str],
    with_tokenizer: bool,
    cc_model_filenames: list[tuple[str, str]] | None = None,
    default_model_filename: str | None = None,
) -> dict[str, Any]:
    """The record as written to ``nimbuild-repository.json`` (format ``INFO_FORMAT``).

    The models' template contexts are derived here from the same facts the record states, so a
    caller names each fact once.
    """
    from nimbuild import __version__

    contexts = build_contexts(
        profile_ids=profile_ids,
        profile_name=name,
        kind=kind,
        device=device,
        io=io,
        max_batch_size=max_batch,
        max_sequence_length=max_seq,
        serving=serving,
        cc_model_filenames=cc_model_filenames,
        default_model_filename=default_model_filename,
        with_tokenizer=with_tokenizer,
    )

    return {
        "format": INFO_FORMAT,
        "nimbuild_version": __version__,
        "profile_ids": list(profile_ids),
        "profile_name": name,
        "kind": kind,
        "device": device,
        "model_names": {
            "model": MODEL,
            "tokenizer": TOKENIZER if TOKENIZER in contexts else None,
            "ensemble": ENSEMBLE if ENSEMBLE in contexts else None,
        },
        "graph_io": io.to_dict(),
        "limits": {"max_batch_size": max_batch, "max_sequence_length": max_seq},
        "serving": {
            "max_batch_size": max_batch,
            "max_queue_delay_us": int(serving.max_queue_delay_us),
            "preferred_batch_sizes": preferred_sizes(serving.preferred_batch_sizes, max_batch),
            "options": serving.to_dict(),
        },
        "models": contexts,
        "files": files,
        "notes": notes,
    }


def read_repository_info(repository: str | os.PathLike[str]) -> dict[str, Any]:
    """The record of a repository on disk; NimbuildError when it is missing, unreadable or of another format."""
    from nimbuild.safeload import load_json

    path = Path(repository) / REPOSITORY_INFO
    if not path.exists() and not path.is_symlink():
        raise NimbuildError(
            f"{path}: not a repository rendered by nimbuild",
            hint="run `nimbuild render` or `nimbuild create-model-store`",
        )
    info = load_json(path, what="repository record", hint="re-render the repository")  # bounded, one-line errors
    if not isinstance(info, dict):
        raise NimbuildError(f"{path}: not a repository record (a JSON object)", hint="re-render the repository")
    if info.get("format") != INFO_FORMAT:
        found = info.get("format")
        raise NimbuildError(
            f"{path}: format {found!r}, this nimbuild reads {INFO_FORMAT}",
            hint="re-render the repository with this nimbuild",
        )
    return info
