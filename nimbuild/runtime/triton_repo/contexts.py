"""Template contexts of a repository's three models, and the configs rendered from them.

The config's inputs are the graph's real input names and types (read from the
ONNX file), ``max_batch_size`` is the profile's. The contexts are kept in the
repository's record, so that ``create-model-store`` and the serve-time
overrides re-render a config without the graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.runtime.triton_repo.layout import (
    DEFAULT_QUEUE_DELAY_US,
    ENSEMBLE,
    MODEL,
    ORT_GRAPH_LEVELS,
    TOKENIZER,
    TOKENIZER_FEEDS,
)
from nimbuild.runtime.triton_repo.onnx_io import GraphIO, TensorSpec


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
        """From a Recipe (its ``serving``) or anything with a ``serving`` mapping; defaults without one."""
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

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_queue_delay_us": self.max_queue_delay_us,
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
            "instance_count": self.instance_count,
            "cpu_threads": self.cpu_threads,
            "graph_optimization": self.graph_optimization,
        }


def _dims(spec: TensorSpec, where: str) -> tuple[list[int], list[int] | None]:
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


def _tensors(specs: Iterable[TensorSpec], where: str) -> list[dict[str, Any]]:
    out = []
    for spec in specs:
        dims, reshape = _dims(spec, where)
        out.append({"name": spec.name, "data_type": spec.triton_type, "dims": dims, "reshape": reshape})
    return out


def preferred_sizes(sizes: Iterable[int], max_batch: int) -> list[int]:
    """The preferred batch sizes a config may list: positive, at most its max batch size, once each."""
    return sorted({int(s) for s in sizes if 0 < int(s) <= max_batch})


def build_contexts(
    *,
    profile_ids: list[str],
    profile_name: str,
    kind: str,
    device: str,
    io: GraphIO,
    max_batch_size: int,
    max_sequence_length: int,
    serving: ServingOptions,
    cc_model_filenames: list[tuple[str, str]] | None = None,
    default_model_filename: str | None = None,
    with_tokenizer: bool = True,
) -> dict[str, dict[str, Any]]:
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
        "preferred_batch_sizes": preferred_sizes(serving.preferred_batch_sizes, max_batch_size),
        "max_queue_delay_us": int(serving.max_queue_delay_us),
        "profile_max_batch_size": max_batch_size,
        "ort": ort,
    }
    contexts: dict[str, dict[str, Any]] = {MODEL: {"template": "triton_model.pbtxt.j2", "context": model}}
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


def render_configs(contexts: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """{model name: config.pbtxt text}."""
    from nimbuild.runtime.triton_repo.templating import render

    return {name: render(spec["template"], **spec["context"]) for name, spec in contexts.items()}
