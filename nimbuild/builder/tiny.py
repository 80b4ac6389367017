"""Tiny random cross-encoders, built on the spot, for tests and the bundled example.

No model hub: every test (and `recipes/models/example-tiny`) gets a real
``save_pretrained`` folder, a real fast tokenizer (WordPiece for BERT-likes,
byte-level BPE for RoBERTa/ModernBERT, Unigram for XLM-R/DeBERTa) written from a
small English vocabulary held here, and weights drawn from a fixed seed with
enough spread that a query's passages get clearly different scores (so ranking
metrics mean something). Same arguments, same bytes.

    python -m nimbuild.builder.tiny --out recipes/models/example-tiny [--arch bert] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from nimbuild.fsutil import write_json
from nimbuild.output import Output

# Words of recipes/pairs/example-tiny.jsonl plus common English, one a line: the tiny vocabularies cover them.
WORDS_FILE = Path(__file__).resolve().parents[1] / "data" / "tiny_words.txt"
_WORDS = WORDS_FILE.read_text(encoding="utf-8").split()

_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,;:!?'\"()-/&%$#@+=*")

# name -> (family of tokenizer, transformers config class, model class)
_SPECS = {
    "bert": ("wordpiece", "BertConfig", "BertForSequenceClassification"),
    "distilbert": ("wordpiece", "DistilBertConfig", "DistilBertForSequenceClassification"),
    "electra": ("wordpiece", "ElectraConfig", "ElectraForSequenceClassification"),
    "roberta": ("bpe-roberta", "RobertaConfig", "RobertaForSequenceClassification"),
    "xlm-roberta": ("unigram-xlmr", "XLMRobertaConfig", "XLMRobertaForSequenceClassification"),
    "deberta-v2": ("unigram-deberta", "DebertaV2Config", "DebertaV2ForSequenceClassification"),
    "modernbert": ("bpe-modernbert", "ModernBertConfig", "ModernBertForSequenceClassification"),
}
_ALIASES = {"deberta-v3": "deberta-v2", "xlmr": "xlm-roberta", "xlm_roberta": "xlm-roberta", "deberta": "deberta-v2"}

ARCHITECTURES: tuple[str, ...] = tuple(_SPECS)

# Wide enough initial weights that scores spread out (HF's default 0.02 gives near-ties).
_INIT_STD = 0.3
_HEAD_GAIN = 10.0


def _canonical(arch: str) -> str:
    key = _ALIASES.get(arch.lower(), arch.lower())
    if key not in _SPECS:
        from nimbuild.errors import NimbuildError

        raise NimbuildError(f"unknown tiny architecture {arch!r}", hint=f"use one of: {', '.join(ARCHITECTURES)}")
    return key


# --------------------------------------------------------------------------- tokenizers


def _wordpiece(specials: list[str]):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab: dict[str, int] = {}
    for tok in specials + _CHARS + [f"##{c}" for c in _CHARS if c.isalnum()] + _WORDS:
        vocab.setdefault(tok, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok, vocab


def _bytelevel_bpe(specials: list[str]):
    """A real byte-level BPE, trained by `tokenizers` on the word list (deterministic: checked across runs)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=20000,
        min_frequency=1,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # each word both after a space ("Ġword") and at the start of a text ("word")
    tok.train_from_iterator([" ".join(_WORDS)] * 3 + list(_WORDS), trainer)
    return tok, tok.get_vocab()


def _unigram(specials: list[str], unk: str):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    entries: list[tuple[str, float]] = [(s, 0.0) for s in specials]
    seen = set(specials)
    for w in _WORDS:
        p = "\u2581" + w
        if p not in seen:
            seen.add(p)
            entries.append((p, -5.0 - 0.01 * len(w)))
    for c in _CHARS + ["\u2581"]:
        for p in (c, "\u2581" + c) if c != "\u2581" else (c,):
            if p not in seen:
                seen.add(p)
                entries.append((p, -12.0))
    vocab = {p: i for i, (p, _) in enumerate(entries)}
    tok = Tokenizer(models.Unigram(entries, unk_id=vocab[unk], byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    return tok, vocab


def _tokenizer(family: str):
    """(tokenizers.Tokenizer, vocab, special-token kwargs for the HF wrapper, model_input_names, ids)."""
    from tokenizers import processors

    if family == "wordpiece":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok, vocab = _wordpiece(specials)
        names = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
        ids = dict(pad=vocab["[PAD]"], cls=vocab["[CLS]"], sep=vocab["[SEP]"])
    elif family == "bpe-roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok, vocab = _bytelevel_bpe(specials)
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False
        )
        names = dict(
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            cls_token="<s>",
            sep_token="</s>",
            mask_token="<mask>",
        )
        ids = dict(pad=1, cls=0, sep=2)
    elif family == "bpe-modernbert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok, vocab = _bytelevel_bpe(specials)
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        names = dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
        ids = dict(pad=0, cls=2, sep=3)
    elif family == "unigram-xlmr":
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        tok, vocab = _unigram(specials, "<unk>")
        tok.add_special_tokens(["<mask>"])
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
        )
        vocab = tok.get_vocab()
        names = dict(
            bos_token="<s>",
            eos_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            cls_token="<s>",
            sep_token="</s>",
            mask_token="<mask>",
        )
        ids = dict(pad=1, cls=0, sep=2)
    elif family == "unigram-deberta":
        specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]"]
        tok, vocab = _unigram(specials, "[UNK]")
        tok.add_special_tokens(["[MASK]"])
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 1), ("[SEP]", 2)]
        )
        vocab = tok.get_vocab()
        names = dict(
            bos_token="[CLS]",
            eos_token="[SEP]",
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
        ids = dict(pad=0, cls=1, sep=2)
    else:  # pragma: no cover - _SPECS is closed
        raise ValueError(family)
    tok.add_special_tokens([t for t in names.values()])
    return tok, len(tok.get_vocab()), names, ids


# --------------------------------------------------------------------------- models


def _config(
    arch: str, vocab_size: int, ids: dict, *, hidden: int, layers: int, heads: int, max_positions: int, num_labels: int
):
    import transformers

    cls_name = _SPECS[arch][1]
    Config = getattr(transformers, cls_name)
    common = dict(vocab_size=vocab_size, num_labels=num_labels, pad_token_id=ids["pad"], initializer_range=_INIT_STD)
    inter = hidden * 2
    if arch == "distilbert":
        cfg = Config(
            dim=hidden,
            n_layers=layers,
            n_heads=heads,
            hidden_dim=inter,
            max_position_embeddings=max_positions,
            dropout=0.0,
            attention_dropout=0.0,
            seq_classif_dropout=0.0,
            **common,
        )
    elif arch == "modernbert":
        cfg = Config(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inter,
            max_position_embeddings=max_positions,
            local_attention=64,
            global_attn_every_n_layers=2,
            cls_token_id=ids["cls"],
            sep_token_id=ids["sep"],
            bos_token_id=ids["cls"],
            eos_token_id=ids["sep"],
            attention_dropout=0.0,
            embedding_dropout=0.0,
            mlp_dropout=0.0,
            classifier_dropout=0.0,
            **common,
        )
    else:
        extra = {}
        if arch in ("roberta", "xlm-roberta"):
            extra = dict(type_vocab_size=1, bos_token_id=ids["cls"], eos_token_id=ids["sep"])
            max_positions = max_positions + 2  # RoBERTa positions start after the padding index
        if arch == "electra":
            extra = dict(embedding_size=hidden // 2)
        if arch == "deberta-v2":
            # DeBERTa-v3 style (as mxbai-rerank / bge-reranker-v2 class models): relative attention, no token types
            extra = dict(
                type_vocab_size=0,
                relative_attention=True,
                position_buckets=64,
                max_relative_positions=-1,
                pos_att_type=["p2c", "c2p"],
                norm_rel_ebd="layer_norm",
                share_att_key=True,
                position_biased_input=False,
                pooler_hidden_size=hidden,
                pooler_dropout=0.0,
            )
        cfg = Config(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=inter,
            max_position_embeddings=max_positions,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            **extra,
            **common,
        )
    cfg.architectures = [_SPECS[arch][2]]
    return cfg


def _spread_weights(model, seed: int) -> None:
    """Re-draw every weight from a fixed generator: a wide normal for matrices and embeddings, LayerNorm at 1/0."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                fan_in = p.shape[-1]
                std = max(_INIT_STD, 1.0 / fan_in**0.5) if "embed" in name else 1.0 / fan_in**0.5
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            elif "norm" in name.lower() or "LayerNorm" in name:
                p.copy_(
                    1.0 + 0.1 * torch.randn(p.shape, generator=gen)
                    if name.endswith("weight")
                    else 0.05 * torch.randn(p.shape, generator=gen)
                )
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        # the score head: scaled up so that a query's passages spread over several logits
        head = [
            p
            for n, p in sorted(model.named_parameters())
            if p.dim() == 2 and p.shape[0] == model.config.num_labels and "embed" not in n
        ]
        for p in head:
            p.mul_(_HEAD_GAIN)


def build_tiny_model(
    out_dir: str | Path,
    architecture: str = "bert",
    *,
    seed: int = 0,
    num_labels: int = 1,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_positions: int = 512,
) -> Path:
    """Write a tiny random ``<Arch>ForSequenceClassification`` + fast tokenizer into ``out_dir``.

    Deterministic: the same arguments write the same weights and tokenizer.
    Returns ``out_dir``.
    """
    import torch
    import transformers
    from transformers import PreTrainedTokenizerFast

    arch = _canonical(architecture)
    family, _, model_cls = _SPECS[arch]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok, vocab_size, names, ids = _tokenizer(family)
    uses_token_types = arch in ("bert", "electra")
    input_names = (
        ["input_ids", "token_type_ids", "attention_mask"] if uses_token_types else ["input_ids", "attention_mask"]
    )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_positions,
        model_input_names=input_names,
        padding_side="right",
        truncation_side="right",
        **names,
    )

    cfg = _config(
        arch,
        vocab_size,
        ids,
        hidden=hidden,
        layers=layers,
        heads=heads,
        max_positions=max_positions,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg)
    _spread_weights(model, seed)
    model.eval()
    model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    _normalise_saved(out)
    return out


def _normalise_saved(out: Path) -> None:
    """Rewrite the JSON files with sorted keys so the output is byte-stable across runs."""
    for name in ("config.json", "tokenizer_config.json"):
        p = out / name
        if p.exists():
            write_json(p, json.loads(p.read_text(encoding="utf-8")))


def vocabulary_words() -> list[str]:
    """The words every tiny tokenizer knows as whole tokens (for tests that need covered text)."""
    return list(_WORDS)


def uncovered_words(text: str) -> list[str]:
    """Words of ``text`` the tiny vocabulary does not hold (for checking a pairs file)."""
    known = set(_WORDS)
    return sorted({w for w in re.findall(r"[a-z]+", text.lower()) if w not in known})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nimbuild.builder.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the model into")
    parser.add_argument("--arch", default="bert", help=f"one of {', '.join(ARCHITECTURES)} (default bert)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-positions", type=int, default=512)
    args = parser.parse_args(argv)
    path = build_tiny_model(args.out, args.arch, seed=args.seed, max_positions=args.max_positions)
    Output().line(str(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
