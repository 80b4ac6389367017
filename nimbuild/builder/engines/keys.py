"""When an engine is reused: build keys, check keys and the ``build.json`` record beside each engine.

An engine's bytes depend on its graph, TensorRT, the GPU (or compute capability),
the shapes and the build options: the *build key*. Its check depends on the FP32
reference, the pairs and the thresholds: the *check key*. The same build key
reuses the engine; a changed check key only re-runs the check.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nimbuild.builder.engines.host import BuildGpu
from nimbuild.builder.engines.plan import RECORD_FILE, EnginePlan, PlannedEngine
from nimbuild.fsutil import json_digest, sha256_file

# Bump when what a build.json means changes, so that old engines are rebuilt, not trusted.
CACHE_SCHEMA = 1


def graph_digest(graph: Path) -> str:
    """sha256 of the graph and of its external-data file, if it has one."""
    digest = sha256_file(graph)
    data = graph.with_name(graph.name + ".data")
    if data.is_file():
        digest = hashlib.sha256(f"{digest}:{sha256_file(data)}".encode()).hexdigest()
    return digest


def build_key(
    plan: EnginePlan, engine: PlannedEngine, graph_sha256: str, trt_version: str, gpu: BuildGpu
) -> dict[str, Any]:
    """Everything an engine's bytes depend on; the same key means the engine can be reused."""
    return {
        "schema": CACHE_SCHEMA,
        "graph_sha256": graph_sha256,
        "trt_version": trt_version,
        "sku": plan.sku.canonical,
        # a hardware-compatible engine depends on the compute capability, a plain one on the exact GPU
        "target": gpu.compute_capability if plan.options.hardware_compatible else gpu.pci_device_id,
        "shapes": [s.to_dict() for s in engine.shapes],
        "options": plan.options.to_dict(),
    }


def check_key(reference_sha256: str, pairs_sha256: str, thresholds: Mapping[str, Any]) -> dict[str, Any]:
    """What the engine check depends on besides the engine: a change re-runs the check, not the build."""
    return {
        "schema": CACHE_SCHEMA,
        "reference_sha256": reference_sha256,
        "pairs_sha256": pairs_sha256,
        "thresholds": dict(thresholds),
    }


def read_record(engine: PlannedEngine) -> dict[str, Any] | None:
    """The engine's ``build.json``, or None when there is none or it is unreadable (then it is rebuilt)."""
    path = engine.engine_dir / RECORD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def reusable(record: Mapping[str, Any] | None, engine: PlannedEngine, key: Mapping[str, Any]) -> bool:
    """The recorded engine was built from the same inputs and its bytes are the ones recorded."""
    if not record or record.get("build_key") != json_digest(key) or not engine.engine_path.is_file():
        return False
    return record.get("engine_sha256") == sha256_file(engine.engine_path)
