"""The input and output tensors of an ONNX graph: names, Triton data types, shapes.

Triton's config must name the graph's real inputs with their real types, so
they are read from the file, never assumed. Two readers give the same answer:
``onnx`` (the build half, lazily imported) and a small protobuf wire reader
over an mmap of the file (the serving image has no ``onnx``; it reads only
the graph's value infos and skips the weights without copying them).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError

# onnx.TensorProto.DataType -> Triton's DataType names (model_config.proto).
ONNX_TO_TRITON = {
    1: "TYPE_FP32",
    2: "TYPE_UINT8",
    3: "TYPE_INT8",
    4: "TYPE_UINT16",
    5: "TYPE_INT16",
    6: "TYPE_INT32",
    7: "TYPE_INT64",
    8: "TYPE_STRING",
    9: "TYPE_BOOL",
    10: "TYPE_FP16",
    11: "TYPE_FP64",
    12: "TYPE_UINT32",
    13: "TYPE_UINT64",
    16: "TYPE_BF16",
}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as Triton sees it."""

    name: str
    onnx_type: int
    shape: tuple[int | str | None, ...]  # int (static), str (symbolic) or None (unknown)

    @property
    def triton_type(self) -> str:
        try:
            return ONNX_TO_TRITON[self.onnx_type]
        except KeyError:
            raise NimbuildError(
                f"tensor {self.name!r} has ONNX element type {self.onnx_type}, which Triton cannot serve",
                hint="export the model with float/int inputs and outputs",
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "data_type": self.triton_type, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


def read_graph_io(path: str | os.PathLike[str], *, use_onnx: bool | None = None) -> GraphIO:
    """Inputs (initializers excluded) and outputs of the graph in ``path``.

    ``use_onnx``: True forces the ``onnx`` package, False the light reader,
    None takes ``onnx`` when it is installed.
    """
    path = Path(path)
    if not path.is_file():
        raise NimbuildError(f"{path}: no such ONNX file", hint="run `nimbuild export` first, or fix the manifest")
    if use_onnx is None:
        import importlib.util

        use_onnx = importlib.util.find_spec("onnx") is not None
    try:
        return _read_with_onnx(path) if use_onnx else _read_light(path)
    except NimbuildError:
        raise
    except Exception as exc:  # a truncated or foreign file: say which
        raise NimbuildError(
            f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})",
            hint="re-export it with `nimbuild export`",
        ) from None


# --------------------------------------------------------------------------- onnx


def _read_with_onnx(path: Path) -> GraphIO:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    initializers = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}

    def spec(vi: Any) -> TensorSpec:
        tt = vi.type.tensor_type
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            which = d.WhichOneof("value")
            dims.append(d.dim_value if which == "dim_value" else d.dim_param if which == "dim_param" else None)
        return TensorSpec(vi.name, int(tt.elem_type), tuple(dims))

    return GraphIO(
        tuple(spec(v) for v in graph.input if v.name not in initializers), tuple(spec(v) for v in graph.output)
    )


# --------------------------------------------------------------------------- light

# Field numbers from onnx.proto3 (stable since IR version 3).
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_OUTPUT, _GRAPH_SPARSE_INITIALIZER = 5, 11, 12, 15
_TENSOR_NAME = 8
_SPARSE_VALUES = 1
_VI_NAME, _VI_TYPE = 1, 2
_TYPE_TENSOR = 1
_TT_ELEM, _TT_SHAPE = 1, 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2
Buffer = bytes | mmap.mmap  # the file's bytes, memory-mapped


def _varint(buf: Buffer, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: Buffer, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one message: an int (varint), (start, end) for a length-delimited
    value, None for fixed-width ones (which nimbuild does not read)."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value: Any
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = (pos, pos + length), pos + length
        elif wire == 5:
            value, pos = None, pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise ValueError("message runs past its end (truncated file?)")
        yield number, wire, value


def _text(buf: Buffer, span: tuple[int, int]) -> str:
    return bytes(buf[span[0] : span[1]]).decode("utf-8")


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _value_info(buf: Buffer, span: tuple[int, int]) -> TensorSpec:
    name, elem = "", 0
    dims: list[int | str | None] = []
    for num, wire, val in _fields(buf, *span):
        if num == _VI_NAME and wire == 2:
            name = _text(buf, val)
        elif num == _VI_TYPE and wire == 2:
            for tnum, twire, tval in _fields(buf, *val):
                if tnum != _TYPE_TENSOR or twire != 2:
                    continue
                for nnum, nwire, nval in _fields(buf, *tval):
                    if nnum == _TT_ELEM and nwire == 0:
                        elem = nval
                    elif nnum == _TT_SHAPE and nwire == 2:
                        for snum, swire, sval in _fields(buf, *nval):
                            if snum != _SHAPE_DIM or swire != 2:
                                continue
                            dim: int | str | None = None
                            for dnum, dwire, dval in _fields(buf, *sval):
                                if dnum == _DIM_VALUE and dwire == 0:
                                    dim = _signed64(dval)
                                elif dnum == _DIM_PARAM and dwire == 2:
                                    dim = _text(buf, dval)
                            dims.append(dim)
    return TensorSpec(name, int(elem), tuple(dims))


def _tensor_name(buf: Buffer, span: tuple[int, int], field: int = _TENSOR_NAME) -> str:
    for num, wire, val in _fields(buf, *span):
        if num == field and wire == 2:
            return _text(buf, val)
    return ""


def _read_light(path: Path) -> GraphIO:
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        graph = next((val for num, wire, val in _fields(buf, 0, len(buf)) if num == _MODEL_GRAPH and wire == 2), None)
        if graph is None:
            raise ValueError("no graph in the file")
        inputs: list[TensorSpec] = []
        outputs: list[TensorSpec] = []
        initializers: set[str] = set()
        for num, wire, val in _fields(buf, *graph):
            if wire != 2:
                continue
            if num == _GRAPH_INPUT:
                inputs.append(_value_info(buf, val))
            elif num == _GRAPH_OUTPUT:
                outputs.append(_value_info(buf, val))
            elif num == _GRAPH_INITIALIZER:
                initializers.add(_tensor_name(buf, val))
            elif num == _GRAPH_SPARSE_INITIALIZER:
                for snum, swire, sval in _fields(buf, *val):
                    if snum == _SPARSE_VALUES and swire == 2:
                        initializers.add(_tensor_name(buf, sval))
        return GraphIO(tuple(t for t in inputs if t.name not in initializers), tuple(outputs))
