"""Helpers the benchmarks share: a MiniLM-L6-sized random cross-encoder, synthetic pairs, timing.

No hub: the model is built here with random weights (fixed seed), wide enough that a query's
passages get clearly different scores (else ranking agreement would measure noise), and the
tokenizer is nimbuild's tiny WordPiece (its vocabulary is small; shapes are what matter).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np

# cross-encoder/ms-marco-MiniLM-L-6-v2's shape
MINILM_L6 = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)


def build_minilm_sized(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """A BertForSequenceClassification of MiniLM-L6's shape with spread random weights, + tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from nimbuild.build.tiny import build_tiny_model

    out = Path(out_dir)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    build_tiny_model(out, "bert", seed=seed, hidden=MINILM_L6["hidden_size"], layers=MINILM_L6["num_hidden_layers"],
                     heads=MINILM_L6["num_attention_heads"])  # writes the tokenizer (and a model we replace)
    cfg = BertConfig.from_pretrained(out)
    cfg.intermediate_size = MINILM_L6["intermediate_size"]
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                # 1/sqrt(fan_in) keeps activations O(1) through 6 layers; embeddings a little wider
                std = 0.3 if "embeddings" in name else 1.0 / p.shape[-1] ** 0.5
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif "LayerNorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen) if name.endswith("weight")
                        else 0.05 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        model.classifier.weight.mul_(4.0)  # spread the scores over several logits
    model.save_pretrained(out)
    return out


def synthetic_groups(n_queries: int, n_passages: int, seed: int = 0, passage_words: tuple[int, int] = (90, 140)) -> list[dict]:
    """``{"query", "passages"}`` groups of English words the tiny vocabulary covers (long passages: seq 128 fills)."""
    from nimbuild.build.tiny import vocabulary_words

    words = vocabulary_words()
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(n_queries):
        q = " ".join(rng.choice(words, int(rng.integers(4, 10))))
        ps = [" ".join(rng.choice(words, int(rng.integers(*passage_words)))) for _ in range(n_passages)]
        groups.append({"query": q, "passages": ps})
    return groups


def encode_groups(tokenizer, groups: list[dict], max_length: int, pad_to_max: bool = False) -> list[dict[str, np.ndarray]]:
    """Per query, the int64 feeds of its (query, passage) pairs."""
    out = []
    for g in groups:
        enc = tokenizer([g["query"]] * len(g["passages"]), g["passages"], truncation=True, max_length=max_length,
                        padding="max_length" if pad_to_max else True, return_tensors="np")
        out.append({k: np.asarray(v, dtype=np.int64) for k, v in enc.items()})
    return out


def time_it(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> dict:
    """Wall-clock seconds of ``fn`` over ``repeats`` runs after ``warmup`` (median and all)."""
    for _ in range(warmup):
        fn()
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return {"median_s": statistics.median(runs), "runs_s": [round(r, 4) for r in runs]}


def machine() -> dict:
    """Where the figures come from: CPU, cores, load (others share this machine)."""
    info = {"platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        info["cpu"] = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        info["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        info["uptime"] = "n/a"
    return info


def write_json(path: str | os.PathLike, data: dict) -> None:
    from nimbuild.fsutil import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")
