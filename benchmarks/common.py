"""Helpers the benchmarks share: a MiniLM-L6-sized random cross-encoder, synthetic pairs, timing.

No hub: the model is built here with random weights (fixed seed), wide enough that a query's
passages get clearly different scores (else ranking agreement would measure noise), and the
tokenizer is nimbuild's tiny WordPiece (its vocabulary is small; shapes are what matter).
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# cross-encoder/ms-marco-MiniLM-L-6-v2's shape
MINILM_L6 = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)


# Query/key weights x this. 1.0 (attention logits rms ~1) is kept on purpose: at 2.0 (rms ~4) every 8-bit graph
# ranks worse (FP8 top-1 0.67-0.75, weights-only FP8 0.83 on 24 queries; RESULTS-precision.md), i.e. larger
# attention logits make the model more fragile, not more realistic for the gate.
ATTENTION_GAIN = 1.0
TOPIC_WORDS = 10
HEAD_SCORE_STD = 3.0  # logits: a real reranker spreads a query's passages over several logits


def build_minilm_sized(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """A BertForSequenceClassification of MiniLM-L6's shape with spread random weights, + tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from nimbuild.builder.tiny import build_tiny_model

    out = Path(out_dir)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    build_tiny_model(
        out,
        "bert",
        seed=seed,
        hidden=MINILM_L6["hidden_size"],
        layers=MINILM_L6["num_hidden_layers"],
        heads=MINILM_L6["num_attention_heads"],
    )  # writes the tokenizer (and a model we replace)
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
                if name.endswith(("query.weight", "key.weight")):
                    std *= ATTENTION_GAIN
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif "LayerNorm" in name:
                p.copy_(
                    1.0 + 0.1 * torch.randn(p.shape, generator=gen)
                    if name.endswith("weight")
                    else 0.05 * torch.randn(p.shape, generator=gen)
                )
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    _fit_head(model, out, seed)
    model.save_pretrained(out)
    return out


def _fit_head(model, model_dir: Path, seed: int) -> None:
    """Point the score head along the direction in which passages differ most (as training would).

    A random head reads a random direction of the pooled [CLS] vector; passage-to-passage
    differences there are small next to quantization noise, so any rounding reorders passages.
    A trained reranker's head reads the features that separate its passages. Here: the first
    principal direction of the per-query-centred pooled outputs on synthetic pairs (a seed the
    benchmarks do not use), scaled so a query's scores spread over ~HEAD_SCORE_STD logits.
    """
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pooled = []
    with torch.inference_mode():
        for feeds in encode_groups(tokenizer, synthetic_groups(6, 32, seed=1000 + seed), 128):
            p = model.bert(**{k: torch.from_numpy(v) for k, v in feeds.items()}).pooler_output
            pooled.append(p - p.mean(dim=0, keepdim=True))
    x = torch.cat(pooled)
    direction = torch.linalg.svd(x, full_matrices=False).Vh[0]
    spread = (x @ direction).std()
    with torch.no_grad():
        model.classifier.weight.copy_((direction * HEAD_SCORE_STD / spread).reshape(1, -1))
        model.classifier.bias.zero_()


def synthetic_groups(
    n_queries: int, n_passages: int, seed: int = 0, passage_words: tuple[int, int] = (90, 140)
) -> list[dict]:
    """``{"query", "passages"}`` groups of English words the tiny vocabulary covers (long passages: seq 128 fills)."""
    from nimbuild.builder.tiny import vocabulary_words

    words = np.array(vocabulary_words())
    rng = np.random.default_rng(seed)
    groups = []
    for _ in range(n_queries):
        q = " ".join(rng.choice(words, int(rng.integers(4, 10))))
        ps = []
        for _ in range(n_passages):
            topic = rng.choice(words, TOPIC_WORDS, replace=False)  # each passage on its own "topic": passages differ
            ps.append(" ".join(rng.choice(topic, int(rng.integers(*passage_words)))))
        groups.append({"query": q, "passages": ps})
    return groups


def encode_groups(
    tokenizer, groups: list[dict], max_length: int, pad_to_max: bool = False
) -> list[dict[str, np.ndarray]]:
    """Per query, the int64 feeds of its (query, passage) pairs."""
    out = []
    for g in groups:
        enc = tokenizer(
            [g["query"]] * len(g["passages"]),
            g["passages"],
            truncation=True,
            max_length=max_length,
            padding="max_length" if pad_to_max else True,
            return_tensors="np",
        )
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


def time_round_robin(runners: dict[str, Callable[[], object]], repeats: int = 3, warmup: int = 1) -> dict[str, dict]:
    """Time several engines in turns (A B C A B C ...), so that a shared machine's load hits all alike."""
    runs: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(warmup + repeats):
        for name, fn in runners.items():
            t = time.perf_counter()
            fn()
            if i >= warmup:
                runs[name].append(time.perf_counter() - t)
    return {name: {"median_s": statistics.median(r), "runs_s": [round(x, 4) for x in r]} for name, r in runs.items()}


def machine() -> dict:
    """Where the figures come from: CPU, cores, load (others share this machine)."""
    info = {"platform": platform.platform(), "cpus": os.cpu_count()}
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        info["cpu"] = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    try:
        info["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except Exception:
        info["uptime"] = "n/a"
    return info


def write_json(path: str | os.PathLike, data: dict) -> None:
    """The benchmark's result file, in nimbuild's one JSON style (nimbuild.fsutil.write_json)."""
    from nimbuild.fsutil import write_json as write

    write(path, data)
