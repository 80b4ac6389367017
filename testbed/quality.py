"""Ranking quality against the held-out labels: NDCG@10 and MRR@10, beside BM25.

Every method ranks the same groups (``tasks.evaluation_groups``: BM25's top 10 over the
whole corpus per held-out query, its own description put in where BM25 missed it), and the
metrics are the accuracy gate's own (``nimbuild.builder.gate.label_metrics``).

    python -m testbed quality [--queries N] [--bi-encoder]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from testbed.tasks import Group

EVAL_MAX_LENGTH = 128


def cross_encoder_scores(model_dir: Path, groups: Sequence[Group], max_length: int = EVAL_MAX_LENGTH) -> list:
    """Scores of a cross-encoder folder (PyTorch FP32, the reference the gate compares with)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    return model_scores(model, tok, groups, max_length)


def model_scores(model, tokenizer, groups: Sequence[Group], max_length: int = EVAL_MAX_LENGTH) -> list:
    """Scores of a loaded cross-encoder (eval mode) on every group: one array of logits per group."""
    import torch

    out = []
    with torch.inference_mode():
        for g in groups:
            enc = tokenizer(
                [g.query] * len(g.passages),
                list(g.passages),
                truncation="only_second",
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            out.append(model(**enc).logits[:, 0].double().numpy())
    return out


def bi_encoder_scores(base_dir: Path, groups: Sequence[Group], max_length: int = EVAL_MAX_LENGTH) -> list:
    """Cosine of mean-pooled embeddings: all-MiniLM-L6-v2 as it ships, before any fine-tuning."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModel.from_pretrained(str(base_dir), dtype=torch.float32).eval()

    def embed(texts: list[str]) -> torch.Tensor:
        enc = tok(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    out = []
    with torch.inference_mode():
        for g in groups:
            q, p = embed([g.query]), embed(list(g.passages))
            out.append((p @ q.T)[:, 0].double().numpy())
    return out


def bm25_scores(groups: Sequence[Group], corpus: Sequence[str]) -> list:
    """BM25 over the whole corpus (the statistics the candidates were drawn with)."""
    from testbed.bm25 import BM25

    bm25 = BM25(corpus)
    where = {text: i for i, text in enumerate(corpus)}
    return [bm25.score_pairs(g.query, [where[p] for p in g.passages]) for g in groups]


def metrics(groups: Sequence[Group], scores: Sequence[np.ndarray]) -> dict[str, float]:
    from nimbuild.builder.gate import label_metrics

    return label_metrics([g.labels for g in groups], list(scores))


def table(rows: list[tuple[str, dict[str, float]]]) -> str:
    lines = ["| method | NDCG@10 | MRR@10 |", "|---|---|---|"]
    lines += [f"| {name} | {m['label_ndcg10']:.4f} | {m['label_mrr10']:.4f} |" for name, m in rows]
    return "\n".join(lines)
