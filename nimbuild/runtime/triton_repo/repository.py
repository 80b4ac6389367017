"""Triton model repositories, one per profile, from the templates in ``nimbuild/templates``.

Runtime side (jinja2 only; onnx and tritonclient are optional): ``nimbuild render``
(:mod:`nimbuild.runtime.triton_repo.triton`) writes every repository with it at build time, and
``create-model-store`` / ``serve``'s Triton backend (:mod:`nimbuild.runtime.model_store`)
re-render one at run time.

A repository holds three models::

    <repo>/reranker/config.pbtxt      the graph: TensorRT plan or ONNX (onnxruntime backend)
    <repo>/reranker/1/model.plan|model.onnx   linked or copied from the manifest's folder
    <repo>/tokenizer/config.pbtxt     python backend: (query, passage) text -> token tensors
    <repo>/tokenizer/1/model.py, tokenizer.json
    <repo>/ensemble/config.pbtxt      raw text in, logits out (tokenizer -> reranker)
    <repo>/nimbuild-repository.json   what was rendered, from what (Triton ignores plain files)

The config's inputs are the graph's real input names and types (read from the
ONNX file), ``max_batch_size`` is the profile's, and every config is parsed
with Triton's own ModelConfig schema before it is written. The JSON record
keeps each template's context, so a repository can be re-rendered without the
graph (``create-model-store`` in a serving image, serve-time overrides).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.fsutil import IN_PROGRESS

MODEL = "reranker"
TOKENIZER = "tokenizer"
ENSEMBLE = "ensemble"
REPOSITORY_INFO = "nimbuild-repository.json"
INFO_FORMAT = 1
TOKENIZER_PY = "triton_tokenizer_model.py"
ENV_MAX_BATCH = "NIM_TRITON_MAX_BATCH_SIZE"
ENV_QUEUE_DELAY = "NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS"
DEFAULT_QUEUE_DELAY_US = 100
# Graph inputs the tokenizer model can feed (templates/triton_tokenizer_model.py: FEEDS).
TOKENIZER_FEEDS = ("input_ids", "attention_mask", "token_type_ids")
# ONNX Runtime backend graph levels (onnxruntime_backend README): -1 basic, 1 extended, 2 off, else all.
ORT_GRAPH_LEVELS = {"basic": -1, "extended": 1, "disabled": 2, "all": 0}
# Precision folder of the ONNX graph a precision's engine is built from (docs/internals.md, export dir).
GRAPH_DIRS = {"fp32": "fp32", "fp16": "fp16", "fp8": "fp8", "int8": "cpu-int8"}


@dataclass(frozen=True)
class ServingOptions:
    """Triton batching and threading for the rendered configs (the recipe's ``serving``)."""

    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    preferred_batch_sizes: tuple[int, ...] = ()
    instance_count: int = 1
    cpu_threads: int = 0  # intra-op threads of a CPU profile; 0 = one per core
    graph_optimization: str = "extended"

    @classmethod
    def from_recipe(cls, recipe: Any) -> ServingOptions:
        serving = getattr(recipe, "serving", None)
        if serving is None:
            return cls()
        get = serving.get if isinstance(serving, Mapping) else (lambda k, d=None: getattr(serving, k, d))
        delay = get("max_queue_delay_us", None)
        sizes = get("preferred_batch_sizes", None)
        return cls(
            max_queue_delay_us=DEFAULT_QUEUE_DELAY_US if delay is None else int(delay),
            preferred_batch_sizes=tuple(int(s) for s in (sizes or ())),
        )

    def to_dict(self) -> dict:
        return {
            "max_queue_delay_us": self.max_queue_delay_us,
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
            "instance_count": self.instance_count,
            "cpu_threads": self.cpu_threads,
            "graph_optimization": self.graph_optimization,
        }


@dataclass
class RenderedRepository:
    """One repository written to disk."""

    path: Path
    profile_ids: list[str]
    name: str
    kind: str
    models: list[str]
    notes: list[str] = field(default_factory=list)
    schema_checked: bool = True

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "profile_ids": self.profile_ids,
            "name": self.name,
            "kind": self.kind,
            "models": self.models,
            "notes": self.notes,
            "schema_checked": self.schema_checked,
        }


# --------------------------------------------------------------------------- sources


def _tag_int(profile, key: str) -> int:
    try:
        return int(profile.tags[key])
    except (KeyError, ValueError):
        raise NimbuildError(
            f"profile {profile.name!r}: tags.{key} is missing or not an integer ({profile.tags.get(key)!r})",
            hint="rebuild the manifest with `nimbuild manifest build`",
        ) from None


def kind_of(profile) -> str:
    backend = profile.tags.get("backend")
    if backend == "tensorrt":
        return "tensorrt"
    if backend == "onnx":
        return "onnxruntime"
    raise NimbuildError(
        f"profile {profile.name!r}: backend {backend!r} has no Triton model",
        hint="Triton repositories are rendered for tensorrt and onnx profiles",
    )


def model_file(profile) -> str:
    """The manifest path of the profile's engine or graph."""
    suffix = ".plan" if kind_of(profile) == "tensorrt" else ".onnx"
    found = sorted(rel for rel in profile.files if rel.endswith(suffix))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise NimbuildError(
            f"profile {profile.name!r}: {what} *{suffix} file in workspace.files (need exactly one)",
            hint="list the profile's model file in the manifest (nimbuild manifest build)",
        )
    return found[0]


def companion_files(profile, main: str) -> list[str]:
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


def graph_for(manifest, profile) -> Path:
    """The ONNX graph whose inputs and outputs the profile's model has.

    An ONNX profile's own file; for an engine, the graph of its precision that
    it was built from (``onnx/<precision>/model.onnx`` beside the manifest).
    """
    root = Path(manifest.root)
    if kind_of(profile) == "onnxruntime":
        from nimbuild.manifest import file_in

        return file_in(root, profile, model_file(profile))  # the bytes at its uri (the key may differ)
    precision = profile.tags.get("precision", "")
    candidates = [root / "onnx" / GRAPH_DIRS.get(precision, precision) / "model.onnx"]
    for path in candidates:
        if path.is_file():
            return path
    raise NimbuildError(
        f"profile {profile.name!r}: the {precision} ONNX graph its engine was built from is not at "
        f"{candidates[0]} (needed for the Triton config's input names and types)",
        hint="render in the export folder that `nimbuild export` filled (the manifest's folder)",
    )


def tokenizer_sources(manifest, profile) -> dict[str, tuple[str, Any]]:
    """{basename: (manifest relpath, FileEntry or None)} of tokenizer.json and tokenizer_config.json."""
    wanted = ("tokenizer.json", "tokenizer_config.json")
    found: dict[str, tuple[str, Any]] = {}
    for rel, entry in sorted(profile.files.items()):
        name = PurePosixPath(rel).name
        if name in wanted and name not in found:
            found[name] = (rel, entry)
    root = Path(manifest.root)
    for name in wanted:
        if name not in found and (root / "tokenizer" / name).is_file():
            found[name] = (f"tokenizer/{name}", None)
    return found


# --------------------------------------------------------------------------- contexts


def _dims(spec, where: str) -> tuple[list[int], list[int] | None]:
    """Triton dims (batch dimension dropped) and a reshape for rank-1 tensors."""
    if not spec.shape:
        raise NimbuildError(
            f"{where}: tensor {spec.name!r} has no shape in the graph", hint="export with shapes (nimbuild export does)"
        )
    batch = spec.shape[0]
    if isinstance(batch, int) and batch > 0:
        raise NimbuildError(
            f"{where}: tensor {spec.name!r} has a fixed batch dimension {batch}",
            hint="export with a dynamic batch axis so that Triton can batch requests",
        )
    rest = [d if isinstance(d, int) and d > 0 else -1 for d in spec.shape[1:]]
    if not rest:
        return [1], []
    return rest, None


def _tensors(specs, where: str) -> list[dict]:
    out = []
    for spec in specs:
        dims, reshape = _dims(spec, where)
        out.append({"name": spec.name, "data_type": spec.triton_type, "dims": dims, "reshape": reshape})
    return out


def _preferred(sizes, max_batch: int) -> list[int]:
    return sorted({int(s) for s in sizes if 0 < int(s) <= max_batch})


def build_contexts(
    *,
    profile_ids: list[str],
    profile_name: str,
    kind: str,
    device: str,
    io,
    max_batch_size: int,
    max_sequence_length: int,
    serving: ServingOptions,
    cc_model_filenames: list[tuple[str, str]] | None = None,
    default_model_filename: str | None = None,
    with_tokenizer: bool = True,
) -> dict[str, dict]:
    """Template contexts of the repository's models: {model name: {template, context}}."""
    from nimbuild import __version__

    where = f"profile {profile_name!r}"
    inputs = _tensors(io.inputs, where)
    outputs = _tensors(io.outputs, where)
    if serving.graph_optimization not in ORT_GRAPH_LEVELS:
        raise NimbuildError(
            f"unknown graph optimization {serving.graph_optimization!r}",
            hint=f"use one of {', '.join(ORT_GRAPH_LEVELS)}",
        )
    common = {"nimbuild_version": __version__, "profile_name": profile_name, "profile_ids": list(profile_ids)}
    ort = None
    if kind == "onnxruntime":
        cpu = device == "cpu"
        ort = {
            "graph_level": ORT_GRAPH_LEVELS[serving.graph_optimization],
            "graph_level_name": serving.graph_optimization,
            # The GPU does the math; one CPU thread per instance keeps several instances from
            # oversubscribing the host. A CPU profile uses every core (0) unless told otherwise.
            "intra_op_threads": str(serving.cpu_threads if cpu else 1),
            "inter_op_threads": "1",
            "execution_mode": "0",
        }
    model = {
        **common,
        "name": MODEL,
        "kind": kind,
        "default_model_filename": default_model_filename or ("model.plan" if kind == "tensorrt" else "model.onnx"),
        "cc_model_filenames": [list(p) for p in (cc_model_filenames or [])],
        "max_batch_size": max_batch_size,
        "inputs": inputs,
        "outputs": outputs,
        "instance_kind": "KIND_CPU" if device == "cpu" else "KIND_GPU",
        "instance_count": serving.instance_count,
        "preferred_batch_sizes": _preferred(serving.preferred_batch_sizes, max_batch_size),
        "max_queue_delay_us": int(serving.max_queue_delay_us),
        "profile_max_batch_size": max_batch_size,
        "ort": ort,
    }
    contexts = {MODEL: {"template": "triton_model.pbtxt.j2", "context": model}}
    if not with_tokenizer:
        return contexts
    unfed = [t["name"] for t in inputs if t["name"] not in TOKENIZER_FEEDS]
    if unfed:
        raise NimbuildError(
            f"{where}: graph inputs {unfed} cannot be fed by the tokenizer model "
            f"(it makes {', '.join(TOKENIZER_FEEDS)})",
            hint="export the model with the standard input names",
        )
    contexts[TOKENIZER] = {
        "template": "triton_tokenizer.pbtxt.j2",
        "context": {
            **common,
            "name": TOKENIZER,
            "model_name": MODEL,
            "max_batch_size": max_batch_size,
            "max_sequence_length": max_sequence_length,
            "instance_count": 1,
            "outputs": [{"name": t["name"], "data_type": t["data_type"]} for t in inputs],
        },
    }
    contexts[ENSEMBLE] = {
        "template": "triton_ensemble.pbtxt.j2",
        "context": {
            **common,
            "name": ENSEMBLE,
            "model_name": MODEL,
            "tokenizer_name": TOKENIZER,
            "max_batch_size": max_batch_size,
            "tensors": [{"name": t["name"]} for t in inputs],
            "outputs": [{"name": t["name"], "data_type": t["data_type"], "dims": t["dims"]} for t in outputs],
        },
    }
    return contexts


def render_configs(contexts: Mapping[str, Mapping]) -> dict[str, str]:
    """{model name: config.pbtxt text}."""
    from nimbuild.runtime.triton_repo.templating import render

    return {name: render(spec["template"], **spec["context"]) for name, spec in contexts.items()}


# --------------------------------------------------------------------------- checks


def check_configs(texts: Mapping[str, str], info: Mapping, *, require_schema: bool = True) -> bool:
    """Parse every config with Triton's ModelConfig schema and check what the schema cannot.

    Returns whether the schema was available (False only with ``require_schema=False``).
    Raises NimbuildError naming the model, the field and the expected value.
    """
    from nimbuild.runtime.triton_repo import pbtxt

    if not pbtxt.schema_available():
        if require_schema:
            pbtxt.model_config_module()  # raises the install hint
        return False
    mc = pbtxt.model_config_module()
    where = info.get("profile_name", "repository")
    parsed = {name: pbtxt.parse_config(text, f"{where}/{name}/config.pbtxt") for name, text in texts.items()}
    problems = semantic_problems(parsed, info, mc)
    if problems:
        raise NimbuildError(
            f"{where}: rendered Triton configs are inconsistent: {'; '.join(problems)}",
            hint="this is a nimbuild bug or a hand-edited repository record; re-run `nimbuild render`",
        )
    return True


def semantic_problems(parsed: Mapping[str, Any], info: Mapping, mc) -> list[str]:
    """What Triton would only find at load or request time: names, types, batch sizes, wiring."""
    problems: list[str] = []
    dtype = lambda v: mc.DataType.Name(v)  # noqa: E731
    graph = info["graph_io"]
    want_in = [(t["name"], t["data_type"]) for t in graph["inputs"]]
    want_out = [(t["name"], t["data_type"]) for t in graph["outputs"]]
    max_batch = int(info["serving"]["max_batch_size"])
    model = parsed.get(MODEL)
    if model is None:
        return [f"no {MODEL} model"]
    for name, cfg in parsed.items():
        if cfg.name != name:
            problems.append(f"{name}/config.pbtxt: name {cfg.name!r} differs from its folder {name!r}")
        if cfg.max_batch_size != max_batch:
            problems.append(f"{name}: max_batch_size {cfg.max_batch_size}, expected {max_batch}")
        for size in cfg.dynamic_batching.preferred_batch_size:
            if size > cfg.max_batch_size:
                problems.append(f"{name}: preferred_batch_size {size} > max_batch_size {cfg.max_batch_size}")
    got_in = [(t.name, dtype(t.data_type)) for t in model.input]
    got_out = [(t.name, dtype(t.data_type)) for t in model.output]
    if got_in != want_in:
        problems.append(f"{MODEL}: inputs {got_in} differ from the graph's {want_in}")
    if got_out != want_out:
        problems.append(f"{MODEL}: outputs {got_out} differ from the graph's {want_out}")
    kind = info["kind"]
    if kind == "tensorrt" and model.platform != "tensorrt_plan":
        problems.append(f"{MODEL}: platform {model.platform!r}, expected 'tensorrt_plan'")
    if kind == "onnxruntime" and model.backend != "onnxruntime":
        problems.append(f"{MODEL}: backend {model.backend!r}, expected 'onnxruntime'")
    want_kind = "KIND_CPU" if info.get("device") == "cpu" else "KIND_GPU"
    kinds = [mc.ModelInstanceGroup.Kind.Name(g.kind) for g in model.instance_group]
    if kinds != [want_kind]:
        problems.append(f"{MODEL}: instance_group kinds {kinds}, expected [{want_kind}]")
    files = info.get("files", {})
    wanted_files = [model.default_model_filename, *model.cc_model_filenames.values()]
    for fname in wanted_files:
        if files and f"{MODEL}/1/{fname}" not in files:
            problems.append(f"{MODEL}: model file 1/{fname} is not placed in the repository")
    tok, ens = parsed.get(TOKENIZER), parsed.get(ENSEMBLE)
    if tok is not None:
        tok_out = [(t.name, dtype(t.data_type)) for t in tok.output]
        if tok_out != want_in:
            problems.append(f"{TOKENIZER}: outputs {tok_out} differ from {MODEL}'s inputs {want_in}")
        if tok.backend != "python":
            problems.append(f"{TOKENIZER}: backend {tok.backend!r}, expected 'python'")
    if ens is not None:
        ens_out = [(t.name, dtype(t.data_type)) for t in ens.output]
        if ens_out != want_out:
            problems.append(f"{ENSEMBLE}: outputs {ens_out} differ from {MODEL}'s outputs {want_out}")
        produced = {t.name for t in ens.input}
        for step in ens.ensemble_scheduling.step:
            target = parsed.get(step.model_name)
            if target is None:
                problems.append(f"{ENSEMBLE}: step uses model {step.model_name!r}, which the repository lacks")
                continue
            target_in = {t.name for t in target.input}
            target_out = {t.name for t in target.output}
            if set(step.input_map) != target_in:
                problems.append(
                    f"{ENSEMBLE}: step {step.model_name} maps inputs {sorted(step.input_map)}, "
                    f"the model has {sorted(target_in)}"
                )
            missing = [v for v in step.input_map.values() if v not in produced]
            if missing:
                problems.append(f"{ENSEMBLE}: step {step.model_name} reads {missing} before any step makes them")
            if not set(step.output_map) <= target_out:
                problems.append(
                    f"{ENSEMBLE}: step {step.model_name} maps outputs {sorted(step.output_map)}, "
                    f"the model has {sorted(target_out)}"
                )
            produced |= set(step.output_map.values())
        missing_out = [t.name for t in ens.output if t.name not in produced]
        if missing_out:
            problems.append(f"{ENSEMBLE}: outputs {missing_out} are made by no step")
    return problems


# --------------------------------------------------------------------------- writing


def _template_file(name: str) -> Path:
    from nimbuild.runtime.triton_repo.templating import TEMPLATES_DIR

    return TEMPLATES_DIR / name


def guard_destination(dest: Path) -> None:
    """Refuse to replace a non-empty folder that nimbuild did not render (a typo must not wipe data)."""
    if dest.is_symlink() or (dest.exists() and not dest.is_dir()):
        raise NimbuildError(f"{dest}: exists and is not a folder", hint="choose another path")
    ours = (dest / REPOSITORY_INFO).is_file() or (dest / IN_PROGRESS).exists()  # IN_PROGRESS: an interrupted fill
    if dest.is_dir() and any(dest.iterdir()) and not ours:
        raise NimbuildError(
            f"{dest}: a non-empty folder that is not a nimbuild model repository",
            hint="choose an empty or new folder (nimbuild replaces only what it rendered)",
        )


def write_repository(
    info: dict, dest: Path, sources: Path | Callable[[str], Path], *, mode: str = "link", require_schema: bool = True
) -> RenderedRepository:
    """Render ``info``'s configs, check them, place its files and write it all to ``dest`` atomically.

    ``info['files']`` maps repository paths to ``{"source": manifest relpath, "sha256",
    "size"}`` or ``{"template_file": name}``; ``sources`` is the folder those
    relpaths are under, or a function giving each one's path (cache or manifest folder).
    """
    from nimbuild.fsutil import atomic_write_text, staging_dir
    from nimbuild.manifest import safe_join
    from nimbuild.runtime.triton_repo.files import check_mode, place_file

    check_mode(mode)
    dest = Path(dest)
    guard_destination(dest)
    if callable(sources):
        locate = sources
    else:
        root = Path(sources)
        locate = lambda rel: safe_join(root, rel, f"{info['profile_name']}")  # noqa: E731
    texts = render_configs(info["models"])
    schema_checked = check_configs(texts, info, require_schema=require_schema)
    # in place where dest cannot be swapped by a rename (the NIM Operator's --model-store /model-store: a mount point)
    with staging_dir(dest, fill_in_place=True) as tmp:
        for name, text in texts.items():
            atomic_write_text(tmp / name / "config.pbtxt", text)
            (tmp / name / "1").mkdir(parents=True, exist_ok=True)
        for repo_rel, spec in sorted(info["files"].items()):
            target = tmp / repo_rel
            if "template_file" in spec:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(_template_file(spec["template_file"]), target)
                continue
            src = locate(spec["source"])
            if not src.is_file():
                raise NimbuildError(
                    f"{src}: missing (needed for {repo_rel} of {info['profile_name']})",
                    hint="restore the artifact or rebuild the manifest",
                )
            place_file(src, target, mode, spec.get("sha256"), spec.get("size"))
        record = dict(info, mode=mode)
        atomic_write_text(tmp / REPOSITORY_INFO, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return RenderedRepository(
        path=dest,
        profile_ids=list(info["profile_ids"]),
        name=info["profile_name"],
        kind=info["kind"],
        models=sorted(texts),
        notes=list(info.get("notes", [])),
        schema_checked=schema_checked,
    )


def _file_spec(rel: str, entry) -> dict:
    spec: dict[str, Any] = {"source": rel}
    if entry is not None:
        spec.update(sha256=entry.sha256, size=entry.size)
    return spec


def profile_info(manifest, profile, serving: ServingOptions, *, io=None, use_onnx: bool | None = None) -> dict:
    """The full record of one profile's repository: contexts, files, graph IO (reads the graph)."""
    from nimbuild.runtime.triton_repo.onnx_io import read_graph_io

    kind = kind_of(profile)
    main = model_file(profile)
    if io is None:
        io = read_graph_io(graph_for(manifest, profile), use_onnx=use_onnx)
    max_batch = _tag_int(profile, "max_batch_size")
    max_seq = _tag_int(profile, "max_sequence_length")
    device = profile.tags.get("device", "gpu")
    tokenizer = tokenizer_sources(manifest, profile)
    notes = []
    with_tokenizer = "tokenizer.json" in tokenizer
    if not with_tokenizer:
        notes.append(
            "no tokenizer.json in the profile or in tokenizer/ beside the manifest: "
            "rendered without the tokenizer and ensemble models"
        )
    default_name = "model.plan" if kind == "tensorrt" else "model.onnx"
    files = {f"{MODEL}/1/{default_name}": _file_spec(main, profile.files[main])}
    for rel in companion_files(profile, main):
        files[f"{MODEL}/1/{PurePosixPath(rel).name}"] = _file_spec(rel, profile.files[rel])
    if with_tokenizer:
        files[f"{TOKENIZER}/1/model.py"] = {"template_file": TOKENIZER_PY}
        for name, (rel, entry) in tokenizer.items():
            files[f"{TOKENIZER}/1/{name}"] = _file_spec(rel, entry)
    contexts = build_contexts(
        profile_ids=[profile.id],
        profile_name=profile.name,
        kind=kind,
        device=device,
        io=io,
        max_batch_size=max_batch,
        max_sequence_length=max_seq,
        serving=serving,
        with_tokenizer=with_tokenizer,
    )
    return _info(
        profile_ids=[profile.id],
        name=profile.name,
        kind=kind,
        device=device,
        io=io,
        contexts=contexts,
        files=files,
        max_batch=max_batch,
        max_seq=max_seq,
        serving=serving,
        notes=notes,
    )


def _info(*, profile_ids, name, kind, device, io, contexts, files, max_batch, max_seq, serving, notes) -> dict:
    from nimbuild import __version__

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
        "graph_io": io.to_dict() if hasattr(io, "to_dict") else io,
        "limits": {"max_batch_size": max_batch, "max_sequence_length": max_seq},
        "serving": {
            "max_batch_size": max_batch,
            "max_queue_delay_us": int(serving.max_queue_delay_us),
            "preferred_batch_sizes": _preferred(serving.preferred_batch_sizes, max_batch),
            "options": serving.to_dict(),
        },
        "models": contexts,
        "files": files,
        "notes": notes,
    }


# --------------------------------------------------------------------------- engines for several GPUs


def multi_cc_groups(manifest) -> list[tuple[str, list]]:
    """TensorRT profiles that differ only in their GPU, grouped, where they span several compute capabilities.

    One repository per group lists an engine per capability (``cc_model_filenames``),
    so one image serves on any of those GPUs. Two GPUs with the same capability
    (H100 and H200 are both 9.0) share one engine there: the first by GPU name.
    """
    groups: dict[tuple, list] = {}
    for p in manifest.profiles:
        t = p.tags
        if t.get("backend") != "tensorrt" or t.get("hardware_compatibility_level"):
            continue
        key = tuple(
            t.get(k, "")
            for k in (
                "model",
                "model_revision",
                "precision",
                "trt_version",
                "cuda_major_version",
                "max_batch_size",
                "max_sequence_length",
                "gpu_count",
            )
        )
        groups.setdefault(key, []).append(p)
    out = []
    for key, profiles in sorted(groups.items()):
        ccs = {p.tags.get("compute_capability") for p in profiles}
        if len(ccs) < 2:
            continue
        model, _, precision, *_rest, gpu_count = key
        name = f"tensorrt-{precision}{'' if gpu_count in ('', '1') else f'-tp{gpu_count}'}-by-compute-capability"
        out.append(
            (name, sorted(profiles, key=lambda p: (p.tags.get("compute_capability", ""), p.tags.get("gpu", ""))))
        )
    return out


def multi_cc_info(
    manifest, name: str, profiles: list, serving: ServingOptions, *, use_onnx: bool | None = None
) -> dict:
    from nimbuild.runtime.triton_repo.onnx_io import read_graph_io

    chosen: dict[str, Any] = {}
    notes = []
    for p in profiles:
        cc = p.tags["compute_capability"]
        if cc in chosen:
            notes.append(f"compute capability {cc}: {p.name} shares the engine of {chosen[cc].name}")
            continue
        chosen[cc] = p
    first = profiles[0]
    io = read_graph_io(graph_for(manifest, first), use_onnx=use_onnx)
    max_batch = _tag_int(first, "max_batch_size")
    max_seq = _tag_int(first, "max_sequence_length")
    files, cc_files = {}, []
    for cc, p in sorted(chosen.items()):
        fname = f"model_sm{cc.replace('.', '')}.plan"
        main = model_file(p)
        files[f"{MODEL}/1/{fname}"] = _file_spec(main, p.files[main])
        cc_files.append((cc, fname))
    tokenizer = tokenizer_sources(manifest, first)
    with_tokenizer = "tokenizer.json" in tokenizer
    if with_tokenizer:
        files[f"{TOKENIZER}/1/model.py"] = {"template_file": TOKENIZER_PY}
        for fname, (rel, entry) in tokenizer.items():
            files[f"{TOKENIZER}/1/{fname}"] = _file_spec(rel, entry)
    ids = [p.id for p in profiles]
    contexts = build_contexts(
        profile_ids=ids,
        profile_name=name,
        kind="tensorrt",
        device="gpu",
        io=io,
        max_batch_size=max_batch,
        max_sequence_length=max_seq,
        serving=serving,
        cc_model_filenames=cc_files,
        default_model_filename=cc_files[-1][1],
        with_tokenizer=with_tokenizer,
    )
    return _info(
        profile_ids=ids,
        name=name,
        kind="tensorrt",
        device="gpu",
        io=io,
        contexts=contexts,
        files=files,
        max_batch=max_batch,
        max_seq=max_seq,
        serving=serving,
        notes=notes,
    )


# --------------------------------------------------------------------------- serve-time overrides


def read_repository_info(repository: str | os.PathLike) -> dict:
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
        raise NimbuildError(
            f"{path}: format {info.get('format')!r}, this nimbuild reads {INFO_FORMAT}",
            hint="re-render the repository with this nimbuild",
        )
    return info


def _env_int(env: Mapping[str, str], key: str, low: int, high: int | None) -> int | None:
    raw = env.get(key)
    if raw is None or not str(raw).strip():
        return None
    try:
        value = int(str(raw).strip())
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise NimbuildError(
            f"{key}={raw!r}: expected an integer {bound}", hint=f"unset {key} or give a value in {bound}"
        )
    return value


def with_overrides(info: dict, *, max_batch_size: int | None = None, max_queue_delay_us: int | None = None) -> dict:
    """``info`` with a smaller batch limit and/or another queue delay, in every model's context."""
    limit = int(info["limits"]["max_batch_size"])
    batch = int(info["serving"]["max_batch_size"]) if max_batch_size is None else int(max_batch_size)
    if not 1 <= batch <= limit:
        raise NimbuildError(
            f"max batch size {batch} is outside 1..{limit} (the profile's max_batch_size: "
            "its engine or graph was built for at most that)",
            hint=f"set {ENV_MAX_BATCH} to at most {limit}",
        )
    delay = int(info["serving"]["max_queue_delay_us"]) if max_queue_delay_us is None else int(max_queue_delay_us)
    options = info["serving"].get("options", {})
    preferred = _preferred(options.get("preferred_batch_sizes", info["serving"]["preferred_batch_sizes"]), batch)
    new = json.loads(json.dumps(info))
    new["serving"].update(max_batch_size=batch, max_queue_delay_us=delay, preferred_batch_sizes=preferred)
    for spec in new["models"].values():
        ctx = spec["context"]
        ctx["max_batch_size"] = batch
        if "max_queue_delay_us" in ctx:
            ctx["max_queue_delay_us"] = delay
            ctx["preferred_batch_sizes"] = preferred
    return new


def apply_serving_overrides(repository: str | os.PathLike, env: Mapping[str, str] | None = None) -> dict:
    """Re-render a repository's configs with ``NIM_TRITON_MAX_BATCH_SIZE`` and
    ``NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS`` from ``env``.

    For ``nimbuild serve`` before it starts tritonserver. The batch size may
    only shrink (1..the profile's max_batch_size); preferred sizes above it are
    dropped. Returns ``{"max_batch_size", "max_queue_delay_us", "changed"}``.
    Needs no graph and no onnx: the contexts are in the repository's record.
    """
    from nimbuild.fsutil import atomic_write_text

    env = os.environ if env is None else env
    repository = Path(repository)
    info = read_repository_info(repository)
    limit = int(info["limits"]["max_batch_size"])
    batch = _env_int(env, ENV_MAX_BATCH, 1, limit)
    delay = _env_int(env, ENV_QUEUE_DELAY, 0, None)
    new = with_overrides(info, max_batch_size=batch, max_queue_delay_us=delay)
    changed = new["serving"] != info["serving"]
    if changed:
        texts = render_configs(new["models"])
        check_configs(texts, new, require_schema=False)
        for name, text in texts.items():
            atomic_write_text(repository / name / "config.pbtxt", text)
        atomic_write_text(repository / REPOSITORY_INFO, json.dumps(new, indent=2, sort_keys=True) + "\n")
    return {
        "max_batch_size": new["serving"]["max_batch_size"],
        "max_queue_delay_us": new["serving"]["max_queue_delay_us"],
        "changed": changed,
    }


def check_repository(repository: str | os.PathLike, *, require_schema: bool = True) -> list[str]:
    """Problems of a repository on disk (configs against the schema and each other; files present)."""
    from nimbuild.runtime.triton_repo import pbtxt

    repository = Path(repository)
    info = read_repository_info(repository)
    problems = []
    parsed = {}
    if not pbtxt.schema_available():
        if require_schema:
            pbtxt.model_config_module()
        return problems
    for name in info["models"]:
        path = repository / name / "config.pbtxt"
        try:
            parsed[name] = pbtxt.parse_config(path.read_text(encoding="utf-8"), str(path))
        except (OSError, NimbuildError) as exc:
            problems.append(str(exc))
    if problems:
        return problems
    problems += semantic_problems(parsed, info, pbtxt.model_config_module())
    for repo_rel in info["files"]:
        if not (repository / repo_rel).is_file():
            problems.append(f"{repository / repo_rel}: missing (or a broken link)")
    return problems
