"""Does the CPU gate's FP8 verdict predict FP8 hardware? And does NVML detection match skus.yaml?

Two steps, because the GPU machine has PyTorch CUDA and nvidia-ml-py but not nimbuild's build
dependencies (onnx, onnxruntime, transformers, pydantic):

``prepare`` (here, on the CPU, with nimbuild's dev venv) turns an export folder's FP8 Q/DQ graph
into a *bundle* that needs only numpy and torch to run: the graph's nodes as JSON, its tensors
as .npy files (FP8 weights as their raw E4M3 bytes), the gate's tokenized pairs, and what the
CPU said: ONNX Runtime's FP32 scores (the reference) and its simulated-FP8 scores (the gate's
verdict, with the recipe's thresholds).

``run`` (on the GPU machine; ``--cpu`` anywhere) then

1. detects the GPUs through nimbuild's own ``runtime.hardware`` (NVML) and checks each against
   its ``skus.yaml`` entry: NVML name, PCI device id, compute capability, memory;
2. executes the same graph with a small torch interpreter, twice: *emulated* (Q/DQ rounded
   through ``torch.float8_e4m3fn``, matmuls in FP32: must reproduce ONNX Runtime's simulation,
   which checks the interpreter) and *fp8-gemm* (every MatMul/Gemm whose two inputs are
   dequantized FP8 runs as one ``torch._scaled_mm`` on the FP8 E4M3 tensors with the graph's
   own scales, FP32 accumulation: what FP8 tensor cores compute); ``--cpu`` runs the emulated
   pass only;
3. judges each with nimbuild's gate metrics against the FP32 reference and says whether the
   hardware verdict equals the CPU gate's.

    python scripts/gpu_check.py prepare --export out/example-tiny --bundle .cache/gpu-check/example-tiny
    python scripts/gpu_check.py run --bundle .cache/gpu-check/example-tiny --json result.json [--cpu]

``scripts/gpu_check.sh`` wraps both (see its header).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUNDLE_VERSION = 1
E4M3_MAX = 448.0
# how far the torch emulation may sit from ONNX Runtime's simulation (same arithmetic, other summation order)
EMULATION_TOLERANCE = 1e-3
# onnx TensorProto data types used in bundles
_FLOAT, _UINT8, _INT8, _INT32, _INT64, _BOOL, _FLOAT16, _DOUBLE, _FP8E4M3 = 1, 2, 3, 6, 7, 9, 10, 11, 17
_NUMPY_OF = {
    _FLOAT: np.float32,
    _UINT8: np.uint8,
    _INT8: np.int8,
    _INT32: np.int32,
    _INT64: np.int64,
    _BOOL: np.bool_,
    _FLOAT16: np.float16,
    _DOUBLE: np.float64,
}


# ----------------------------------------------------------------------------- prepare (CPU, nimbuild dev venv)


def _attribute(attr) -> Any:
    import onnx
    from onnx import numpy_helper

    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        return {"tensor": numpy_helper.to_array(value).tolist(), "data_type": value.data_type, "dims": list(value.dims)}
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return [v.decode() if isinstance(v, bytes) else v for v in value]
    return value


def prepare(export_dir: Path, bundle: Path, pairs: Path | None, max_queries: int) -> dict:
    """Write the bundle for ``export_dir``'s fp8 graph (see the module docstring)."""
    import onnx
    from onnx import numpy_helper

    from nimbuild.builder import pairs as pairs_mod
    from nimbuild.builder.gate import judge, ranking_metrics, session_scores
    from nimbuild.builder.precision.common import cpu_session
    from nimbuild.export_layout import graph_path as export_graph
    from nimbuild.export_layout import read_export_report, tokenizer_dir
    from nimbuild.fsutil import sha256_file, staging_dir
    from nimbuild.thresholds import GateThresholds

    report = read_export_report(export_dir)
    fp8 = report["precisions"].get("fp8") or {}
    graph_path = export_graph(export_dir, "fp8")
    if not graph_path.is_file():
        sys.exit(
            f"error: {graph_path} does not exist (fp8 {fp8.get('status', 'not built')}: {fp8.get('reason', '')}); "
            "export with --precision fp8 first"
        )
    pairs_file = pairs or (Path(report["pairs"]["file"]) if report["pairs"].get("file") else None)
    if pairs_file is None:
        sys.exit("error: the export used synthetic pairs; pass --pairs FILE.jsonl")
    tokenizer = pairs_mod.load_tokenizer(tokenizer_dir(export_dir))
    groups = pairs_mod.load_pairs(pairs_file)[:max_queries]
    encoded = pairs_mod.encode(tokenizer, groups, int(report["max_sequence_length"]), report["inputs"])
    reference = session_scores(cpu_session(export_graph(export_dir, "fp32")), encoded)
    simulated = session_scores(cpu_session(graph_path, fp8_qdq=True), encoded)
    # what the export judged the fp8 graph by (the recipe's fp8 overrides applied), else the recipe-wide bars
    thresholds = GateThresholds.from_mapping((fp8.get("gate") or {}).get("thresholds") or report["thresholds"])

    model = onnx.load(os.fspath(graph_path), load_external_data=True)
    pruned = _prune_embeddings(model, encoded)
    with staging_dir(bundle) as stage:
        tensors = stage / "tensors"
        tensors.mkdir()
        index: dict[str, dict] = {}
        for i, init in enumerate(model.graph.initializer):
            file = f"t{i}.npy"
            if init.data_type == _FP8E4M3:
                # E4M3 bytes as uint8 (numpy has no float8; torch views them back as float8_e4m3fn)
                raw = np.ascontiguousarray(numpy_helper.to_array(init)).view(np.uint8).reshape(list(init.dims))
                np.save(tensors / file, raw)
            else:
                np.save(tensors / file, numpy_helper.to_array(init))
            index[init.name] = {"file": file, "data_type": init.data_type}
        nodes = [
            {
                "name": n.name,
                "op_type": n.op_type,
                "domain": n.domain,
                "inputs": list(n.input),
                "outputs": list(n.output),
                "attributes": {a.name: _attribute(a) for a in n.attribute},
            }
            for n in model.graph.node
        ]
        graph = {
            "inputs": [i.name for i in model.graph.input],
            "outputs": [o.name for o in model.graph.output],
            "initializers": index,
            "nodes": nodes,
        }
        (stage / "graph.json").write_text(json.dumps(graph) + "\n", encoding="utf-8")
        np.savez(stage / "feeds.npz", **{f"q{i}_{k}": v for i, f in enumerate(encoded) for k, v in f.items()})
        np.savez(
            stage / "cpu_scores.npz",
            **{f"reference_{i}": r for i, r in enumerate(reference)},
            **{f"simulated_{i}": s for i, s in enumerate(simulated)},
        )
        verdict = judge(ranking_metrics(reference, simulated), thresholds)
        meta = {
            "bundle_version": BUNDLE_VERSION,
            "model": report.get("model"),
            "graph": str(graph_path),
            "graph_sha256": sha256_file(graph_path),
            "pairs": str(pairs_file),
            "queries": len(encoded),
            "inputs": report["inputs"],
            "thresholds": thresholds.to_dict(),
            "cpu_gate": verdict.to_dict(),
            "export_gate": fp8.get("gate"),
            "pruned_embeddings": pruned,
            "prepared_on": {"machine": platform.machine(), "cpu": _cpu_name(), "onnxruntime": _version("onnxruntime")},
        }
        (stage / "bundle.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


def _prune_embeddings(model, encoded: list[dict[str, np.ndarray]]) -> dict:
    """Keep only the embedding rows the bundle's pairs use, so that a real model's bundle travels small.

    Only where it cannot change a result: a table read by Gather(axis 0) nodes alone, indexed by a
    graph input that nothing but those Gathers and Shape nodes reads. The input's ids are renumbered
    in the stored feeds, in order, so 0 (padding) stays 0. Returns {table: (rows before, after)}.
    """
    from onnx import numpy_helper

    graph = model.graph
    inputs = {i.name for i in graph.input}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    done: dict[str, list[int]] = {}
    for init in list(graph.initializer):
        users = readers.get(init.name, [])
        if len(init.dims) != 2 or not users or init.dims[0] < 1000:
            continue
        if not all(n.op_type == "Gather" and n.input[0] == init.name for n in users):
            continue
        if any(next((a.i for a in n.attribute if a.name == "axis"), 0) != 0 for n in users):
            continue
        ids = {n.input[1] for n in users}
        if len(ids) != 1 or not ids <= inputs:
            continue
        (ids_name,) = ids
        others = [n for n in readers.get(ids_name, []) if n not in users and n.op_type != "Shape"]
        if others or ids_name in done or not all(ids_name in f for f in encoded):
            continue
        used = np.unique(np.concatenate([np.unique(f[ids_name]) for f in encoded] + [np.array([0])]))
        table = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(table[used]), init.name))
        remap = np.zeros(int(used.max()) + 1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        for f in encoded:
            f[ids_name] = remap[f[ids_name]]
        done[ids_name] = [int(table.shape[0]), len(used)]
    return done


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------- the torch interpreter


class Interpreter:
    """Runs a bundle's graph in torch. ``fp8_gemm``: FP8 x FP8 products on tensor cores (torch._scaled_mm)."""

    def __init__(self, bundle: Path, device: str, fp8_gemm: bool):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.fp8_gemm = fp8_gemm
        self.graph = json.loads((bundle / "graph.json").read_text(encoding="utf-8"))
        self.constants: dict[str, Any] = {}
        for name, entry in self.graph["initializers"].items():
            self.constants[name] = self._load(bundle / "tensors" / entry["file"], entry["data_type"])
        self.scaled_mm_calls = 0
        self.fp32_matmuls = 0

    def _load(self, path: Path, data_type: int):
        torch = self.torch
        array = np.load(path)
        if data_type == _FP8E4M3:
            return torch.from_numpy(array.copy()).view(torch.float8_e4m3fn).to(self.device)
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    # -- helpers
    def _to_list(self, t) -> list[int]:
        return [int(x) for x in t.reshape(-1).tolist()]

    def _fp8(self, x, scale):
        """ONNX QuantizeLinear to E4M3 (saturate=1): round-to-nearest-even of x/scale, clamped to +-448."""
        torch = self.torch
        return (x.to(torch.float32) / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)

    def _scaled_mm(self, a8, sa, b8, sb):
        """a8 [.., M, K] @ b8 [.., K, N] in FP8, FP32 accumulation and output.

        ``sa`` per tensor; ``sb`` per tensor or one per output column N (per-channel FP8 weights):
        then the GEMM runs with scale 1 for B and its FP32 output columns are multiplied by sb,
        the same arithmetic (sa * sb[n] * the exact FP8 dot product) up to one FP32 rounding.
        """
        torch = self.torch
        per_column = sb.numel() > 1 if hasattr(sb, "numel") else False
        column_scale = sb.reshape(-1).to(torch.float32) if per_column else None
        sb = 1.0 if per_column else sb
        batch = torch.broadcast_shapes(a8.shape[:-2], b8.shape[:-2])
        a = a8.expand(*batch, *a8.shape[-2:]).reshape(-1, *a8.shape[-2:])
        b = b8.expand(*batch, *b8.shape[-2:]).reshape(-1, *b8.shape[-2:])
        m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
        pad = lambda v: (-v) % 16  # noqa: E731  _scaled_mm wants every dimension a multiple of 16
        scale_a = torch.tensor(float(sa), dtype=torch.float32, device=self.device)
        scale_b = torch.tensor(float(sb), dtype=torch.float32, device=self.device)
        out = torch.empty((a.shape[0], m, n), dtype=torch.float32, device=self.device)
        for i in range(a.shape[0]):
            ai = torch.nn.functional.pad(a[i].view(torch.uint8), (0, pad(k), 0, pad(m))).view(torch.float8_e4m3fn)
            # B column-major: the transpose of a contiguous [N, K]
            bt = torch.nn.functional.pad(b[i].view(torch.uint8).t(), (0, pad(k), 0, pad(n))).view(torch.float8_e4m3fn)
            r = torch._scaled_mm(
                ai.contiguous(), bt.contiguous().t(), scale_a=scale_a, scale_b=scale_b, out_dtype=torch.float32
            )
            out[i] = r[:m, :n]
            self.scaled_mm_calls += 1
        out = out.reshape(*batch, m, n)
        return out * column_scale if column_scale is not None else out

    # -- run
    def run(self, feeds: dict[str, np.ndarray]):
        torch = self.torch
        env: dict[str, Any] = dict(self.constants)
        for name in self.graph["inputs"]:
            env[name] = torch.from_numpy(feeds[name]).to(self.device)
        fp8_of: dict[str, tuple[Any, Any]] = {}  # dequantized tensor -> (its FP8 tensor, its scale)
        for node in self.graph["nodes"]:
            ins = [env[i] if i else None for i in node["inputs"]]
            outs = self._op(node, ins, fp8_of)
            for name, value in zip(node["outputs"], outs, strict=False):
                if name:
                    env[name] = value
            if node["op_type"] == "DequantizeLinear" and ins[0].dtype == torch.float8_e4m3fn:
                fp8_of[node["outputs"][0]] = (ins[0], ins[1])
        return [env[o] for o in self.graph["outputs"]]

    def _op(self, node: dict, x: list, fp8_of: dict) -> list:  # noqa: C901 - one branch per op, as ONNX defines them
        torch = self.torch
        op, a = node["op_type"], node["attributes"]
        if op == "Constant":
            t = a["value"]
            dtype = _NUMPY_OF.get(t["data_type"], np.float32)
            return [torch.tensor(np.asarray(t["tensor"], dtype=dtype).reshape(t["dims"]), device=self.device)]
        if op == "QuantizeLinear":
            return [self._fp8(x[0], x[1])]
        if op == "DequantizeLinear":  # per tensor, or per channel along ``axis`` (FP8 weights per output channel)
            scale = x[1]
            if scale.dim() == 1 and scale.numel() > 1:
                shape = [1] * x[0].dim()
                shape[a.get("axis", 1)] = -1
                scale = scale.reshape(shape)
            return [x[0].to(torch.float32) * scale]
        if op in ("MatMul", "Gemm"):
            left, right = node["inputs"][0], node["inputs"][1]
            if op == "Gemm":
                return [self._gemm(node, x, fp8_of)]
            if self.fp8_gemm and left in fp8_of and right in fp8_of:
                (a8, sa), (b8, sb) = fp8_of[left], fp8_of[right]
                return [self._scaled_mm(a8, sa, b8, sb)]
            self.fp32_matmuls += 1
            return [torch.matmul(x[0], x[1])]
        binary = {
            "Add": torch.add,
            "Sub": torch.sub,
            "Mul": torch.mul,
            "Div": None,
            "Pow": torch.pow,
            "Equal": torch.eq,
            "Greater": torch.gt,
            "GreaterOrEqual": torch.ge,
            "Less": torch.lt,
            "LessOrEqual": torch.le,
            "And": torch.logical_and,
            "Or": torch.logical_or,
            "Max": torch.maximum,
            "Min": torch.minimum,
        }
        if op in binary:
            if op == "Div":
                if x[0].dtype.is_floating_point or x[1].dtype.is_floating_point:
                    return [x[0] / x[1]]
                return [torch.div(x[0], x[1], rounding_mode="trunc")]
            return [binary[op](x[0], x[1])]
        unary = {
            "Erf": torch.erf,
            "Tanh": torch.tanh,
            "Sqrt": torch.sqrt,
            "Exp": torch.exp,
            "Log": torch.log,
            "Neg": torch.neg,
            "Abs": torch.abs,
            "Reciprocal": torch.reciprocal,
            "Not": torch.logical_not,
            "IsNaN": torch.isnan,
            "Sigmoid": torch.sigmoid,
            "Relu": torch.relu,
            "Identity": lambda t: t,
        }
        if op in unary:
            return [unary[op](x[0])]
        if op == "Where":
            return [torch.where(x[0], x[1], x[2])]
        if op == "Cast":
            return [x[0].to(_torch_dtype(torch, a["to"]))]
        if op == "Shape":
            shape = list(x[0].shape)
            start, end = a.get("start", 0), a.get("end", len(shape))
            return [torch.tensor(shape[start:end], dtype=torch.int64, device=self.device)]
        if op == "Gather":
            axis = a.get("axis", 0)
            idx = x[1].to(torch.int64)
            idx = torch.where(idx < 0, idx + x[0].shape[axis], idx)
            flat = torch.index_select(x[0], axis, idx.reshape(-1))
            return [flat.reshape((*x[0].shape[:axis], *idx.shape, *x[0].shape[axis + 1 :]))]
        if op == "Unsqueeze":
            out = x[0]
            axes = sorted(self._to_list(x[1]) if len(x) > 1 and x[1] is not None else a["axes"])
            rank = out.dim() + len(axes)
            for ax in sorted(ax % rank for ax in axes):
                out = out.unsqueeze(ax)
            return [out]
        if op == "Squeeze":
            axes = self._to_list(x[1]) if len(x) > 1 and x[1] is not None else a.get("axes")
            if axes is None:
                return [x[0].squeeze()]
            out = x[0]
            for ax in sorted((ax % out.dim() for ax in axes), reverse=True):
                out = out.squeeze(ax)
            return [out]
        if op == "Concat":
            return [torch.cat([t for t in x if t is not None], dim=a["axis"])]
        if op == "Reshape":
            shape = self._to_list(x[1])
            if not a.get("allowzero", 0):
                shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
            return [x[0].reshape(tuple(shape))]
        if op == "Transpose":
            return [x[0].permute(*(a.get("perm") or reversed(range(x[0].dim()))))]
        if op == "Flatten":
            axis = a.get("axis", 1)
            axis = axis + x[0].dim() if axis < 0 else axis  # axis == rank is allowed: (all, 1)
            return [x[0].reshape(int(np.prod(x[0].shape[:axis])), int(np.prod(x[0].shape[axis:])))]
        if op == "Expand":
            shape = self._to_list(x[1])
            return [x[0] * torch.ones(shape, dtype=x[0].dtype, device=self.device)]
        if op == "ConstantOfShape":
            t = a.get("value", {"tensor": [0.0], "data_type": _FLOAT})
            dtype = _torch_dtype(torch, t["data_type"])
            fill = np.asarray(t["tensor"]).reshape(-1)[0]
            return [torch.full(self._to_list(x[0]), fill.item(), dtype=dtype, device=self.device)]
        if op == "Range":
            return [torch.arange(x[0].item(), x[1].item(), x[2].item(), dtype=x[0].dtype, device=self.device)]
        if op == "Slice":
            return [self._slice(x)]
        if op == "Softmax":
            return [torch.softmax(x[0], dim=a.get("axis", -1))]
        if op == "LayerNormalization":
            axis = a.get("axis", -1) % x[0].dim()
            shape = list(x[0].shape[axis:])
            return [torch.nn.functional.layer_norm(x[0], shape, x[1], x[2], a.get("epsilon", 1e-5))]
        if op == "ReduceMean":
            axes = self._to_list(x[1]) if len(x) > 1 and x[1] is not None else a.get("axes")
            return [x[0].mean(dim=axes, keepdim=bool(a.get("keepdims", 1)))]
        raise NotImplementedError(f"gpu_check's interpreter has no {op} (node {node['name']})")

    def _gemm(self, node: dict, x: list, fp8_of: dict):
        a = node["attributes"]
        left, right = node["inputs"][0], node["inputs"][1]
        trans_a, trans_b = a.get("transA", 0), a.get("transB", 0)
        if self.fp8_gemm and left in fp8_of and right in fp8_of:
            (a8, sa), (b8, sb) = fp8_of[left], fp8_of[right]
            a8 = a8.t() if trans_a else a8
            b8 = b8.t() if trans_b else b8
            y = self._scaled_mm(a8.contiguous(), sa, b8.contiguous(), sb)
        else:
            self.fp32_matmuls += 1
            y = (x[0].t() if trans_a else x[0]) @ (x[1].t() if trans_b else x[1])
        y = y * a.get("alpha", 1.0)
        if len(x) > 2 and x[2] is not None:
            y = y + a.get("beta", 1.0) * x[2]
        return y

    def _slice(self, x: list):
        data = x[0]
        starts, ends = self._to_list(x[1]), self._to_list(x[2])
        axes = self._to_list(x[3]) if len(x) > 3 and x[3] is not None else list(range(len(starts)))
        steps = self._to_list(x[4]) if len(x) > 4 and x[4] is not None else [1] * len(starts)
        index = [slice(None)] * data.dim()
        for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
            size = data.shape[ax]
            s = max(min(s + size if s < 0 else s, size), 0)
            e = max(min(e + size if e < 0 else e, size), 0)
            if st != 1:
                raise NotImplementedError("Slice with step != 1")
            index[ax % data.dim()] = slice(s, e)
        return data[tuple(index)]


def _torch_dtype(torch, data_type: int):
    return {
        _FLOAT: torch.float32,
        _UINT8: torch.uint8,
        _INT8: torch.int8,
        _INT32: torch.int32,
        _INT64: torch.int64,
        _BOOL: torch.bool,
        _FLOAT16: torch.float16,
        _DOUBLE: torch.float64,
        _FP8E4M3: torch.float8_e4m3fn,
    }[data_type]


# ----------------------------------------------------------------------------- run (GPU machine, or --cpu)


def check_gpus() -> dict:
    """NVML through nimbuild.runtime.hardware, each GPU checked field by field against its skus.yaml entry."""
    from nimbuild.runtime.hardware import detect_host

    host = detect_host({})
    result: dict[str, Any] = {"system_info": host.system_info(), "gpus": [], "passed": bool(host.gpus)}
    if not host.gpus:
        result["reason"] = host.cpu_only_reason
        return result
    for gpu in host.gpus:
        sku = gpu.sku
        checks: dict[str, dict] = {}
        if sku is None:
            checks["catalog"] = {
                "passed": False,
                "got": f"{gpu.name} [{gpu.pci_device_id}]",
                "expected": "a skus.yaml entry",
            }
        else:
            memory_gib = gpu.memory_total_mib / 1024
            checks = {
                "nvml_name": {"passed": gpu.name in sku.nvml_names, "got": gpu.name, "expected": list(sku.nvml_names)},
                "pci_device_id": {
                    "passed": gpu.pci_device_id in sku.pci_device_ids,
                    "got": gpu.pci_device_id,
                    "expected": list(sku.pci_device_ids),
                },
                "compute_capability": {
                    "passed": gpu.compute_capability == sku.compute_capability,
                    "got": gpu.compute_capability,
                    "expected": sku.compute_capability,
                },
                # NVML's total is a little under what is sold (reserved memory); 10 % either way is a wrong entry
                "memory": {
                    "passed": abs(memory_gib - sku.memory_gib) <= 0.10 * sku.memory_gib,
                    "got": f"{gpu.memory_total_mib} MiB ({memory_gib:.1f} GiB)",
                    "expected": f"{sku.memory_gib} GiB +-10%",
                },
                "fp8": {"passed": sku.fp8, "got": sku.compute_capability, "expected": ">= 8.9 for FP8 tensor cores"},
            }
            try:
                import torch

                if torch.cuda.is_available() and gpu.index < torch.cuda.device_count():
                    cc = "{}.{}".format(*torch.cuda.get_device_capability(gpu.index))
                    checks["cuda_compute_capability"] = {"passed": cc == sku.compute_capability, "got": cc}
            except Exception as exc:  # torch without CUDA: the NVML checks stand alone
                checks["cuda_compute_capability"] = {"passed": None, "got": f"not checked: {exc}"}
        passed = all(c["passed"] is not False for c in checks.values())
        result["gpus"].append({**gpu.to_dict(), "checks": checks, "passed": passed})
        result["passed"] = result["passed"] and passed
    return result


def _queries(bundle: Path, inputs: list[str], n: int) -> list[dict[str, np.ndarray]]:
    z = np.load(bundle / "feeds.npz")
    return [{k: z[f"q{i}_{k}"] for k in inputs} for i in range(n)]


def _scores(interp: Interpreter, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    from nimbuild.builder.gate import scores_from_logits

    out = []
    for f in feeds:
        logits = interp.run(f)[0].float().cpu().numpy()
        out.append(scores_from_logits(logits))
    return out


def run(bundle: Path, cpu: bool, max_queries: int | None) -> dict:
    import torch

    from nimbuild.builder.gate import judge, ranking_metrics
    from nimbuild.thresholds import GateThresholds

    meta = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    n = min(meta["queries"], max_queries or meta["queries"])
    feeds = _queries(bundle, meta["inputs"], n)
    cpu_scores = np.load(bundle / "cpu_scores.npz")
    reference = [cpu_scores[f"reference_{i}"] for i in range(n)]
    simulated = [cpu_scores[f"simulated_{i}"] for i in range(n)]
    thresholds = GateThresholds.from_mapping(meta["thresholds"])
    result: dict[str, Any] = {
        "bundle": meta,
        "queries": n,
        "torch": torch.__version__,
        "host": {"machine": platform.machine(), "cpu": _cpu_name()},
    }
    result["nvml"] = check_gpus()
    cuda = torch.cuda.is_available() and not cpu
    device = "cuda" if cuda else "cpu"
    result["device"] = torch.cuda.get_device_name(0) if cuda else f"cpu ({_cpu_name()}): not FP8 hardware"
    cpu_verdict = judge(ranking_metrics(reference, simulated), thresholds)
    result["cpu_gate"] = cpu_verdict.to_dict()
    # on the CPU the fp8_gemm pass runs torch._scaled_mm's CPU kernel: the same code, not FP8 hardware
    for name, fp8_gemm in (("emulated", False), ("fp8_gemm", True)):
        interp = Interpreter(bundle, device, fp8_gemm=fp8_gemm)
        t = time.perf_counter()
        scores = _scores(interp, feeds)
        verdict = judge(ranking_metrics(reference, scores), thresholds)
        diff = max(float(np.max(np.abs(s - c))) for s, c in zip(scores, simulated, strict=True))
        spread = max(float(np.max(np.abs(c))) for c in simulated)
        result[name] = {
            "gate": verdict.to_dict(),
            "same_verdict_as_cpu_gate": verdict.passed == cpu_verdict.passed,
            "max_abs_diff_vs_cpu_simulation": diff,
            "matches_cpu_simulation": diff <= EMULATION_TOLERANCE * max(1.0, spread),
            "agreement_with_cpu_simulation": ranking_metrics(simulated, scores),
            "scaled_mm_calls": interp.scaled_mm_calls,
            "fp32_matmuls": interp.fp32_matmuls,
            "seconds": round(time.perf_counter() - t, 2),
        }
    result["fp8_gemm"]["on_fp8_hardware"] = cuda
    checks = [
        result["emulated"]["matches_cpu_simulation"],
        result["fp8_gemm"]["scaled_mm_calls"] > 0,
        result["fp8_gemm"]["same_verdict_as_cpu_gate"],
    ]
    if cuda:
        checks.append(result["nvml"]["passed"])
    result["passed"] = all(checks)
    return result


def print_summary(r: dict) -> None:
    def fmt(g: dict) -> str:
        m = g["metrics"]
        return (
            f"top1 {m['top1']:.3f} spearman {m['spearman']:.4f} ndcg10 {m['ndcg10']:.4f} "
            f"max|dl| {m['max_abs_logit']:.3g} -> {'PASS' if g['passed'] else 'FAIL'}"
        )

    print("\n".join(r["nvml"]["system_info"]))
    for gpu in r["nvml"]["gpus"]:
        for name, c in gpu["checks"].items():
            mark = {True: "ok ", False: "BAD", None: " - "}[c["passed"]]
            print(f"  [{mark}] GPU {gpu['index']} {name}: {c['got']} (expected {c.get('expected', '-')})")
    if not r["nvml"]["gpus"]:
        print(f"  no GPU: {r['nvml'].get('reason')}")
    print(f"\nfp8 graph {r['bundle']['graph']} ({r['queries']} queries), thresholds {r['bundle']['thresholds']}")
    print(f"  CPU gate (ONNX Runtime simulation):  {fmt(r['cpu_gate'])}")
    for name in ("emulated", "fp8_gemm"):
        if name in r:
            e = r[name]
            print(
                f"  {name:9} on {r['device']}: {fmt(e['gate'])}; "
                f"max |d| vs CPU simulation {e['max_abs_diff_vs_cpu_simulation']:.3g}, "
                f"_scaled_mm calls {e['scaled_mm_calls']}, FP32 matmuls {e['fp32_matmuls']}"
            )
    same = r["fp8_gemm"]["same_verdict_as_cpu_gate"]
    where = "on FP8 tensor cores" if r["fp8_gemm"]["on_fp8_hardware"] else "(CPU kernel of _scaled_mm: not hardware)"
    print(f"\nthe CPU gate's FP8 verdict {'PREDICTS' if same else 'DOES NOT predict'} the FP8 GEMMs' verdict {where}")
    print(f"\noverall: {'PASS' if r['passed'] else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="(CPU, dev venv) an export's fp8 graph -> a bundle torch can run")
    p.add_argument("--export", type=Path, required=True, help="an export folder with onnx/fp8/model.onnx")
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--pairs", type=Path, default=None, help="pairs JSONL (default: the export's)")
    p.add_argument("--max-queries", type=int, default=48)
    r = sub.add_parser("run", help="(GPU machine) NVML vs skus.yaml, and the fp8 graph as real FP8 GEMMs")
    r.add_argument("--bundle", type=Path, required=True)
    r.add_argument(
        "--cpu", action="store_true", help="run on the CPU (checks the code; no FP8 hardware, no NVML verdict)"
    )
    r.add_argument("--max-queries", type=int, default=None)
    r.add_argument("--json", type=Path, default=None, help="write the full result here")
    args = ap.parse_args(argv)
    if args.command == "prepare":
        meta = prepare(args.export, args.bundle, args.pairs, args.max_queries)
        print(f"bundle {args.bundle}: {meta['queries']} queries; CPU gate {meta['cpu_gate']['metrics']}")
        return 0
    result = run(args.bundle, args.cpu, args.max_queries)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")
    print_summary(result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
