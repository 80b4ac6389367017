"""The export folder's layout and its report: one owner for what every later step reads.

`nimbuild export` writes an export folder; `engines`, `manifest build`,
`render`, `build` and the runtime read it. Its paths, the precision -> folder
map, the graph's input names, which file of a profile is its model, and the
read/write of ``export_report.json`` live here, once (docs/internals.md,
"Export directory")::

    OUT/export_report.json        what was exported, from what, and each precision's verdict
    OUT/gate_inputs.npz           the gate's inputs: encoded pairs + PyTorch reference (`export --from-export`)
    OUT/tokenizer/                tokenizer.json + tokenizer_config.json + config.json ...
    OUT/onnx/<precision dir>/model.onnx   fp32, fp16, fp8; cpu-int8-<class> (one int8 graph per CPU class)
    OUT/cpu/<class>/fragment.yaml  `nimbuild manifest fragment --cpu-isa`: one class's int8 profile, for CI
    OUT/engines/<sku-slug>/...    `nimbuild engines` (nimbuild.builder.engines)
    OUT/manifest.yaml             `nimbuild manifest build`
    OUT/triton/<profile name>/    `nimbuild render`

Light (stdlib and nimbuild.errors/fsutil only): the build half, render and the
runtime all import it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nimbuild.errors import NimbuildError

if TYPE_CHECKING:
    from nimbuild.manifest import Profile

REPORT_FILE = "export_report.json"
GATE_INPUTS_FILE = "gate_inputs.npz"  # the gate's inputs (nimbuild.builder.gate.save_inputs), beside the report
TOKENIZER_DIR = "tokenizer"
ONNX_DIR = "onnx"
ENGINES_DIR = "engines"
MANIFEST_FILE = "manifest.yaml"
TRITON_DIR = "triton"
GRAPH_FILE = "model.onnx"
# The folders under OUT/onnx/ a precision's graph lives in; the int8 graphs are the CPU ones, one per CPU
# instruction-set class (nimbuild.cpu_isa) in ``cpu-int8-<class>`` (int8_dir_name).
PRECISION_DIRS = {"fp32": "fp32", "fp16": "fp16", "fp8": "fp8", "int8": "cpu-int8"}
CPU_FRAGMENTS_DIR = "cpu"  # OUT/cpu/<class>/fragment.yaml
# What an export writes at the top of its folder (swapped in together; nimbuild.outdir checks them first).
EXPORT_OUTPUTS = (REPORT_FILE, GATE_INPUTS_FILE, TOKENIZER_DIR, ONNX_DIR)
# Other spellings of a precision that users type (`--precision cpu-int8`).
PRECISION_ALIASES = {"cpu-int8": "int8", "cpu_int8": "int8"}
# A cross-encoder's graph inputs, in this order, as tokenizers make them (token_type_ids only where the
# model has several token types). The Triton tokenizer model (templates/triton_tokenizer_model.py) feeds them.
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# Which workspace file is a profile's model, by its backend tag.
MODEL_SUFFIXES = {"tensorrt": ".plan", "onnx": ".onnx"}
# What every later step needs of the report; a report without them is from another nimbuild.
REQUIRED_REPORT_KEYS = ("model", "precisions", "max_batch_size", "max_sequence_length")

_REEXPORT = "run `nimbuild export` again to rewrite it"


def canonical_precision(name: str) -> str:
    """``cpu-int8`` -> ``int8``; other names lower-cased as they are."""
    low = name.strip().lower()
    return PRECISION_ALIASES.get(low, low)


def int8_key(cpu_class: str) -> str:
    """The report entry of one CPU class's INT8 graph: ``int8-avx2``."""
    return f"int8-{cpu_class}"


def int8_dir_name(cpu_class: str) -> str:
    """Its folder under OUT/onnx/: ``cpu-int8-avx2``."""
    return f"{PRECISION_DIRS['int8']}-{cpu_class}"


def _dir_name(precision: str, cpu_class: str | None) -> str:
    return int8_dir_name(cpu_class) if cpu_class is not None else PRECISION_DIRS.get(precision, precision)


def graph_relpath(precision: str, cpu_class: str | None = None) -> str:
    """``onnx/<precision dir>/model.onnx``: where the export puts that precision's (and CPU class's) graph."""
    return f"{graph_dir_relpath(precision, cpu_class)}/{GRAPH_FILE}"


def graph_dir_relpath(precision: str, cpu_class: str | None = None) -> str:
    """``onnx/<precision dir>``: the folder of that precision's graph (and its external data)."""
    return f"{ONNX_DIR}/{_dir_name(precision, cpu_class)}"


def graph_dir(export_dir: str | os.PathLike[str], precision: str, cpu_class: str | None = None) -> Path:
    """``OUT/onnx/<precision dir>``."""
    return Path(export_dir) / ONNX_DIR / _dir_name(precision, cpu_class)


def graph_path(export_dir: str | os.PathLike[str], precision: str) -> Path:
    """``OUT/onnx/<precision dir>/model.onnx``."""
    return graph_dir(export_dir, precision) / GRAPH_FILE


def tokenizer_dir(export_dir: str | os.PathLike[str]) -> Path:
    return Path(export_dir) / TOKENIZER_DIR


def report_path(export_dir: str | os.PathLike[str]) -> Path:
    return Path(export_dir) / REPORT_FILE


def read_export_report(export_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``OUT/export_report.json``, checked: a JSON object with every key later steps need.

    A missing or unreadable report, or one without :data:`REQUIRED_REPORT_KEYS`, is a NimbuildError.
    """
    report = find_export_report(export_dir)
    if report is None:
        raise NimbuildError(
            f"{export_dir} is not an export folder (no {REPORT_FILE})",
            hint="run `nimbuild export RECIPE --out DIR` first",
        )
    return report


def find_export_report(export_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """:func:`read_export_report`, or None when there is no report yet (an engine plan before the export)."""
    path = report_path(export_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise NimbuildError(f"{path}: cannot read the export report ({exc})", hint=_REEXPORT) from None
    if not isinstance(data, dict):
        raise NimbuildError(f"{path}: expected a JSON object, got {type(data).__name__}", hint=_REEXPORT)
    missing = [key for key in REQUIRED_REPORT_KEYS if key not in data]
    if missing:
        raise NimbuildError(
            f"{path}: field {missing[0]!r} is missing", hint="re-run `nimbuild export` with this nimbuild"
        )
    if not isinstance(data["precisions"], dict):
        raise NimbuildError(f"{path}: field 'precisions' is not a mapping", hint=_REEXPORT)
    return data


def write_export_report(export_dir: str | os.PathLike[str], report: Mapping[str, Any]) -> Path:
    """Write ``OUT/export_report.json`` atomically, in nimbuild's one JSON style."""
    from nimbuild.fsutil import write_json

    path = report_path(export_dir)
    write_json(path, report)
    return path


def profile_model_file(profile: Profile) -> str:
    """The manifest path of a profile's model: its one ``.plan`` (TensorRT) or ``.onnx`` (ONNX) file.

    The one answer for render, create-model-store and serve; NimbuildError when
    the backend has no model file or the workspace lists none or several.
    """
    backend = profile.tags.get("backend", "")
    suffix = MODEL_SUFFIXES.get(backend)
    if suffix is None:
        raise NimbuildError(
            f"profile {profile.name!r}: backend {backend!r} has no model file nimbuild can serve",
            hint=f"profiles of backend {' or '.join(MODEL_SUFFIXES)} are served",
        )
    found = sorted(rel for rel in profile.files if rel.endswith(suffix))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise NimbuildError(
            f"profile {profile.name!r}: {what} *{suffix} file in workspace.files (need exactly one)",
            hint="list the profile's model file in the manifest (nimbuild manifest build)",
        )
    return found[0]
