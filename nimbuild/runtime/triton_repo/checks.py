"""Checks of rendered configs: Triton's own ModelConfig schema, then what the schema cannot see.

Names, data types, batch sizes and the ensemble's wiring are what Triton only
finds at load or request time; a repository that would fail there fails here,
when it is rendered, naming the model, the field and the expected value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.runtime.triton_repo.layout import ENSEMBLE, MODEL, TOKENIZER
from nimbuild.runtime.triton_repo.record import read_repository_info


def check_configs(texts: Mapping[str, str], info: Mapping[str, Any], *, require_schema: bool = True) -> bool:
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


def semantic_problems(parsed: Mapping[str, Any], info: Mapping[str, Any], mc: Any) -> list[str]:
    """What Triton would only find at load or request time: names, types, batch sizes, wiring."""
    problems: list[str] = []
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
    got_in = [(t.name, mc.DataType.Name(t.data_type)) for t in model.input]
    got_out = [(t.name, mc.DataType.Name(t.data_type)) for t in model.output]
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
        tok_out = [(t.name, mc.DataType.Name(t.data_type)) for t in tok.output]
        if tok_out != want_in:
            problems.append(f"{TOKENIZER}: outputs {tok_out} differ from {MODEL}'s inputs {want_in}")
        if tok.backend != "python":
            problems.append(f"{TOKENIZER}: backend {tok.backend!r}, expected 'python'")
    if ens is not None:
        ens_out = [(t.name, mc.DataType.Name(t.data_type)) for t in ens.output]
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


def check_repository(repository: str | os.PathLike[str], *, require_schema: bool = True) -> list[str]:
    """Problems of a repository on disk (configs against the schema and each other; files present)."""
    from nimbuild.runtime.triton_repo import pbtxt

    repository = Path(repository)
    info = read_repository_info(repository)
    problems: list[str] = []
    parsed: dict[str, Any] = {}
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
