"""Small real manifests for the render tests: ONNX graphs, a tokenizer, engine files, a manifest.

Independent of the export pipeline so that render is tested on its own and fast
(~50 ms): the graphs are made with onnx.helper and run in ONNX Runtime, the
tokenizer is a real WordPiece tokenizer.json, and the "engines" are byte files
(render never opens an engine; only TensorRT could).
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "is",
    "in",
    "what",
    "how",
    "why",
    "do",
    "does",
    "sun",
    "earth",
    "seasons",
    "tilt",
    "axis",
    "vaccines",
    "immune",
    "system",
    "body",
    "virus",
    "train",
    "city",
    "coffee",
    "light",
    "summer",
    "winter",
]


def write_tokenizer(folder: Path) -> Path:
    """A real BERT-style WordPiece tokenizer.json (+ tokenizer_config.json) in ``folder``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[PAD]", "model_max_length": 32}))
    return folder / "tokenizer.json"


def write_graph(
    path: Path,
    *,
    inputs=("input_ids", "attention_mask", "token_type_ids"),
    id_type: int = 7,
    out_type: int = 1,
    external_data: bool = False,
) -> Path:
    """A cross-encoder-shaped ONNX graph: int ids [batch, seq] -> logits [batch, 1] (sum of masked ids)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph_inputs = [helper.make_tensor_value_info(n, id_type, ["batch", "sequence"]) for n in inputs]
    weight = numpy_helper.from_array(np.full((1,), 0.5, dtype=np.float32), "w")
    nodes = [helper.make_node("Cast", ["input_ids"], ["ids_f"], to=TensorProto.FLOAT)]
    feed = "ids_f"
    if "attention_mask" in inputs:
        nodes += [
            helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["ids_f", "mask_f"], ["masked"]),
        ]
        feed = "masked"
    nodes += [
        helper.make_node("ReduceSum", [feed, "axes"], ["summed"], keepdims=1),
        helper.make_node("Mul", ["summed", "w"], ["scaled"]),
    ]
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    if out_type == TensorProto.FLOAT:
        nodes.append(helper.make_node("Identity", ["scaled"], ["logits"]))
    else:
        nodes.append(helper.make_node("Cast", ["scaled"], ["logits"], to=out_type))
    if "token_type_ids" in inputs:  # consumed so that ONNX Runtime keeps it as a graph input
        nodes += [helper.make_node("Shape", ["token_type_ids"], ["tt_shape"])]
    graph = helper.make_graph(
        nodes,
        "tiny-cross-encoder",
        graph_inputs,
        [helper.make_tensor_value_info("logits", out_type, ["batch", 1])],
        initializer=[weight, axes],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    if external_data:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(path))
    return path


def build_manifest(
    root: Path,
    *,
    engines=("h100-sxm", "a100-sxm4-80gb", "h200"),
    cpu: bool = True,
    gpu_onnx: bool = True,
    max_batch_size: int = 16,
    max_sequence_length: int = 32,
    tokenizer: bool = True,
) -> Path:
    """An export-dir-like folder with a verified manifest.yaml; returns the manifest's path."""
    from nimbuild import skus
    from nimbuild.manifest import Manifest, Profile, file_entry, write_manifest
    from nimbuild.profiles import onnx_profile_tags, profile_id, profile_name, tensorrt_profile_tags

    root.mkdir(parents=True, exist_ok=True)
    tok_files = []
    if tokenizer:
        write_tokenizer(root / "tokenizer")
        tok_files = ["tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"]
    write_graph(root / "onnx" / "fp32" / "model.onnx")
    write_graph(root / "onnx" / "fp16" / "model.onnx")
    write_graph(root / "onnx" / "cpu-int8" / "model.onnx")
    common = dict(
        model="tiny", model_revision="0" * 12, max_batch_size=max_batch_size, max_sequence_length=max_sequence_length
    )
    specs = []
    if gpu_onnx:
        specs.append((onnx_profile_tags(precision="fp32", device="gpu", **common), ["onnx/fp32/model.onnx"]))
    if cpu:
        int8 = onnx_profile_tags(precision="int8", device="cpu", cpu_isa="avx2", **common)
        specs.append((int8, ["onnx/cpu-int8/model.onnx"]))
    for slug in engines:
        sku = skus.lookup(slug)
        plan = root / "engines" / sku.slug / "fp16" / "model.plan"
        plan.parent.mkdir(parents=True, exist_ok=True)
        plan.write_bytes(f"engine for {sku.canonical}".encode())
        tags = tensorrt_profile_tags(
            precision="fp16", sku=sku, trt_version="10.13.0", cuda_major_version="12", **common
        )
        specs.append((tags, [f"engines/{sku.slug}/fp16/model.plan"]))
    profiles = []
    for tags, files in specs:
        entries = {rel: file_entry(root, rel) for rel in [*files, *tok_files]}
        profiles.append(Profile(id=profile_id(tags), name=profile_name(tags), tags=tags, files=entries))
    manifest = Manifest(profiles=profiles, header={"model": "tiny", "version": "0.1.0"}, root=root)
    path = root / "manifest.yaml"
    write_manifest(manifest, path)
    return path
