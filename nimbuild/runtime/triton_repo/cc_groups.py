"""Engines of one precision for several compute capabilities, served from one repository.

TensorRT profiles that differ only in their GPU are grouped when they span
several compute capabilities; their repository lists an engine per capability
(``cc_model_filenames``), so one image serves on any of those GPUs. Two GPUs
with the same capability (H100 and H200 are both 9.0) share one engine there:
the first by GPU name.
"""

from __future__ import annotations

from typing import Any

from nimbuild.manifest import Manifest, Profile
from nimbuild.runtime.triton_repo.contexts import ServingOptions
from nimbuild.runtime.triton_repo.layout import MODEL
from nimbuild.runtime.triton_repo.record import file_spec, repository_record, tokenizer_files
from nimbuild.runtime.triton_repo.sources import graph_for, model_file, tag_int

# The tags two engines must share to be one model built for several GPUs.
GROUP_TAGS = (
    "model",
    "model_revision",
    "precision",
    "trt_version",
    "cuda_major_version",
    "max_batch_size",
    "max_sequence_length",
    "gpu_count",
)


def multi_cc_groups(manifest: Manifest) -> list[tuple[str, list[Profile]]]:
    """(repository name, profiles) of each group of engines that spans several compute capabilities."""
    groups: dict[tuple[str, ...], list[Profile]] = {}
    for p in manifest.profiles:
        t = p.tags
        if t.get("backend") != "tensorrt" or t.get("hardware_compatibility_level"):
            continue
        key = tuple(t.get(k, "") for k in GROUP_TAGS)
        groups.setdefault(key, []).append(p)
    out = []
    for key, profiles in sorted(groups.items()):
        ccs = {p.tags.get("compute_capability") for p in profiles}
        if len(ccs) < 2:
            continue
        precision, gpu_count = key[GROUP_TAGS.index("precision")], key[GROUP_TAGS.index("gpu_count")]
        name = f"tensorrt-{precision}{'' if gpu_count in ('', '1') else f'-tp{gpu_count}'}-by-compute-capability"
        out.append(
            (name, sorted(profiles, key=lambda p: (p.tags.get("compute_capability", ""), p.tags.get("gpu", ""))))
        )
    return out


def multi_cc_info(
    manifest: Manifest, name: str, profiles: list[Profile], serving: ServingOptions, *, use_onnx: bool | None = None
) -> dict[str, Any]:
    """The record of one group's repository: an engine per compute capability, one tokenizer."""
    from nimbuild.runtime.triton_repo.onnx_io import read_graph_io

    chosen: dict[str, Profile] = {}
    notes = []
    for p in profiles:
        cc = p.tags["compute_capability"]
        if cc in chosen:
            notes.append(f"compute capability {cc}: {p.name} shares the engine of {chosen[cc].name}")
            continue
        chosen[cc] = p
    first = profiles[0]
    io = read_graph_io(graph_for(manifest, first), use_onnx=use_onnx)
    max_batch = tag_int(first, "max_batch_size")
    max_seq = tag_int(first, "max_sequence_length")
    files, cc_files = {}, []
    for cc, p in sorted(chosen.items()):
        fname = f"model_sm{cc.replace('.', '')}.plan"
        main = model_file(p)
        files[f"{MODEL}/1/{fname}"] = file_spec(main, p.files[main])
        cc_files.append((cc, fname))
    tokenizer = tokenizer_files(manifest, first)
    files.update(tokenizer)
    ids = [p.id for p in profiles]
    return repository_record(
        profile_ids=ids,
        name=name,
        kind="tensorrt",
        device="gpu",
        io=io,
        files=files,
        max_batch=max_batch,
        max_seq=max_seq,
        serving=serving,
        notes=notes,
        with_tokenizer=bool(tokenizer),
        cc_model_filenames=cc_files,
        default_model_filename=cc_files[-1][1],
    )
