"""Shared by the serve tests: one tiny exported cross-encoder and a manifest over it, built once per session.

(A helper module, not a conftest and not named test_*: tests/test_serve_*.py import it. It holds no tests.)
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

MODEL = "serve-tiny"
MAX_SEQ = 64  # small, so truncation is easy to reach
MAX_BATCH = 8


def export_onnx(model_dir: Path, out_path: Path) -> None:
    """The tiny model to ONNX fp32, with nimbuild's own exporter (what ships)."""
    from nimbuild.builder.export import export_fp32

    assert out_path.name == "model.onnx"
    shapes = {"batch": {"min": 1, "opt": 4, "max": MAX_BATCH}, "sequence": {"min": 1, "opt": 32, "max": MAX_SEQ}}
    export_fp32(model_dir, out_path.parent, shapes)


@functools.cache
def served_export() -> Path:
    """A folder with hf/ (the model), onnx/fp32/model.onnx, tokenizer/ and manifest.yaml (a cpu fp32 profile
    and a gpu fp32 profile over the same graph, to exercise fallback)."""
    from nimbuild.builder.tiny import build_tiny_model
    from nimbuild.manifest import Manifest, Profile, file_entry, write_manifest
    from nimbuild.profiles import onnx_profile_tags, profile_id, profile_name

    root = Path(tempfile.mkdtemp(prefix="nimbuild-serve-tests-"))
    atexit.register(shutil.rmtree, root, True)
    hf = build_tiny_model(root / "hf", "bert", seed=0)
    export_onnx(hf, root / "onnx" / "fp32" / "model.onnx")
    (root / "tokenizer").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf / name, root / "tokenizer" / name)
    files = ["onnx/fp32/model.onnx", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"]
    profiles = []
    for device in ("cpu", "gpu"):
        tags = onnx_profile_tags(MODEL, "test0000", "fp32", device, MAX_BATCH, MAX_SEQ)
        profiles.append(
            Profile(
                id=profile_id(tags),
                name=profile_name(tags),
                tags=tags,
                files={rel: file_entry(root, rel) for rel in files},
            )
        )
    manifest = Manifest(profiles=profiles, header={"model": MODEL}, root=root)
    write_manifest(manifest, root / "manifest.yaml")
    return root


def ort_scores(onnx_path: Path, hf_dir: Path, query: str, passages: list[str], max_length: int = MAX_SEQ):
    """Reference logits: transformers' tokenizer (only_second truncation) + a plain ONNX Runtime session."""
    import numpy as np
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf_dir)
    enc = tok(
        [query] * len(passages),
        passages,
        padding=True,
        truncation="only_second",
        max_length=max_length,
        return_tensors="np",
    )
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feed = {i.name: enc[i.name].astype(np.int64) for i in sess.get_inputs()}
    return sess.run(None, feed)[0][:, 0]
