"""Query-passage pairs tokenized in the server, exactly as the model's tokenizer builds them.

The exported ``tokenizer.json`` carries the model's post-processor, so
``[CLS] q [SEP] p [SEP]`` (BERT) or ``<s> q </s></s> p </s>`` (RoBERTa/XLM-R),
and the token type ids, come from the file, not from code here. Truncation is
ours: ``END`` cuts the passage first, then the query if it alone is still too
long; ``START`` (TEI's ``truncation_direction: left``) keeps the passage's end
instead; ``NONE`` refuses an over-long pair with the token count and the limit.

Under ``END``/``START`` a text of any length is accepted: before tokenizing, it is
cut on a whitespace boundary to a piece that still holds more tokens than the
model can read (checked, and grown when it does not), so a whole document costs
the tokenizer a few thousand characters, not all of them, and the tokens kept are
the ones the full text would have given.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

TRUNCATE_MODES = ("NONE", "END", "START")

# A text longer than this many characters per token of max_sequence_length is cut before it is
# tokenized (under END/START). A first guess only: the cut piece is checked to hold enough tokens.
_CUT_CHARS_PER_TOKEN = 16
# Tokens beyond max_sequence_length a cut piece must hold: the ones at the cut edge (a word split,
# a grapheme cluster broken) are never among the kept ones.
_CUT_MARGIN_TOKENS = 16
_WHITESPACE = re.compile(r"\s")


class TooManyTokens(ValueError):
    """A pair longer than ``max_sequence_length`` with ``truncate: NONE`` (a 400 for the client)."""

    def __init__(self, index: int, tokens: int, limit: int):
        self.index, self.tokens, self.limit = index, tokens, limit
        super().__init__(
            f"passages[{index}]: query + passage are {tokens} tokens, more than the model's "
            f'max_sequence_length {limit}; shorten the input or send "truncate": "END"'
        )


@dataclass(frozen=True)
class EncodedPair:
    """One tokenized (query, passage) pair, unpadded."""

    ids: np.ndarray  # int64 [n]
    type_ids: np.ndarray  # int64 [n]

    def __len__(self) -> int:
        return int(self.ids.shape[0])


class PairTokenizer:
    """A fast (Rust) tokenizer that turns one query and its passages into model rows."""

    def __init__(self, tokenizer: Tokenizer, max_length: int, pad_id: int):
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pad_id = int(pad_id)
        self.pair_specials = tokenizer.num_special_tokens_to_add(True)

    @classmethod
    def from_files(
        cls, tokenizer_json: str | Path, max_length: int, tokenizer_config: str | Path | None = None
    ) -> PairTokenizer:
        """Load ``tokenizer.json`` (and the pad token from ``tokenizer_config.json`` beside it)."""
        from tokenizers import Tokenizer

        tokenizer_json = Path(tokenizer_json)
        tok = Tokenizer.from_file(str(tokenizer_json))
        config_path = Path(tokenizer_config) if tokenizer_config else tokenizer_json.with_name("tokenizer_config.json")
        return cls(tok, max_length, _pad_id(tok, config_path))

    def encode(
        self,
        query: str,
        passages: Sequence[str],
        truncate: str = "NONE",
        max_passage_tokens: int | None = None,
    ) -> list[EncodedPair]:
        """One row per passage; raises :class:`TooManyTokens` for an over-long pair under ``NONE``.

        ``max_passage_tokens`` (Cohere's ``max_tokens_per_doc``) cuts every passage to
        that many tokens first, whatever ``truncate`` says about the pair.
        """
        if truncate not in TRUNCATE_MODES:
            raise ValueError(f"truncate must be one of {', '.join(TRUNCATE_MODES)}, got {truncate!r}")
        if max_passage_tokens is not None and max_passage_tokens < 1:
            raise ValueError(f"max_passage_tokens must be >= 1, got {max_passage_tokens}")
        keep_end = truncate == "START"
        if truncate != "NONE":
            query = self.cut(query, self.max_length)
        if truncate != "NONE" or max_passage_tokens is not None:
            need = self.max_length if max_passage_tokens is None else min(self.max_length, max_passage_tokens)
            passages = [self.cut(p, need, keep_end=keep_end) for p in passages]
        encodings = self.tokenizer.encode_batch([(query, p) for p in passages], add_special_tokens=True)
        rows: list[EncodedPair] = []
        query_alone = None
        if max_passage_tokens is not None:
            query_alone = self.tokenizer.encode(query, add_special_tokens=False)
        for index, enc in enumerate(encodings):
            over_cap = (
                query_alone is not None
                and max_passage_tokens is not None
                and len(enc.ids) - len(query_alone.ids) - self.pair_specials > max_passage_tokens
            )
            if over_cap or (truncate != "NONE" and len(enc.ids) > self.max_length):
                if query_alone is None:
                    query_alone = self.tokenizer.encode(query, add_special_tokens=False)
                enc = self._truncate_pair(
                    query_alone, passages[index], keep_end, max_passage_tokens, fit=truncate != "NONE"
                )
            if len(enc.ids) > self.max_length:
                raise TooManyTokens(index, len(enc.ids), self.max_length)
            rows.append(EncodedPair(np.asarray(enc.ids, dtype=np.int64), np.asarray(enc.type_ids, dtype=np.int64)))
        return rows

    def cut(self, text: str, tokens: int, *, keep_end: bool = False) -> str:
        """A piece of ``text`` (its start, or its end with ``keep_end``) that tokenizes to the same first
        (last) ``tokens`` tokens as the whole text: the text itself when it is short."""
        chars = max(256, tokens * _CUT_CHARS_PER_TOKEN)
        while chars < len(text):
            piece = _piece(text, chars, keep_end)
            if len(self.tokenizer.encode(piece, add_special_tokens=False).ids) >= tokens + _CUT_MARGIN_TOKENS:
                return piece
            chars *= 4  # fewer tokens than characters suggested (long words, [UNK]s, whitespace runs): grow
        return text

    def _truncate_pair(
        self,
        query_enc: Encoding,
        passage: str,
        keep_end: bool,
        max_passage_tokens: int | None,
        *,
        fit: bool = True,
    ) -> Encoding:
        """The passage cut to ``max_passage_tokens`` when given; with ``fit``, then cut further (``only_second``:
        its end, or its start with ``keep_end``), then the query, so that the pair fits ``max_length``."""
        budget = self.max_length - self.pair_specials
        passage_enc = self.tokenizer.encode(passage, add_special_tokens=False)
        # Copies: Encoding.truncate works in place and the query is shared by every passage.
        q = _copy(query_enc)
        keep_passage = max(0, budget - len(q.ids)) if fit else len(passage_enc.ids)
        if max_passage_tokens is not None:
            keep_passage = min(keep_passage, max_passage_tokens)
        if len(passage_enc.ids) > keep_passage:
            passage_enc.truncate(keep_passage, direction="left" if keep_end else "right")
        if fit and len(q.ids) + len(passage_enc.ids) > budget:
            q.truncate(max(0, budget - len(passage_enc.ids)))
        return self.tokenizer.post_process(q, passage_enc, add_special_tokens=True)


def _piece(text: str, chars: int, keep_end: bool) -> str:
    """About ``chars`` characters from the start (or the end) of ``text``, cut at whitespace where the quarter
    next to the cut has some, so that no word is split (tokenizers split on whitespace first)."""
    slack = chars // 4
    if keep_end:
        start = len(text) - chars
        space = _WHITESPACE.search(text, start, start + slack)
        return text[space.start() if space else start :]  # begins with the whitespace: " word" stays " word"
    window = text[chars - slack : chars + 1][::-1]
    space = _WHITESPACE.search(window)
    return text[: chars - space.start() if space else chars]  # ends just before the whitespace


def _copy(enc: Encoding) -> Encoding:
    from tokenizers import Encoding

    return Encoding.merge([enc], growing_offsets=False)


def _pad_id(tokenizer: Tokenizer, config_path: Path) -> int:
    """The pad token's id: tokenizer_config.json's pad_token, else tokenizer.json's padding, else 0."""
    pad_token = None
    if config_path.is_file():
        try:
            cfg = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cfg = {}
        pad = cfg.get("pad_token")
        pad_token = pad.get("content") if isinstance(pad, dict) else pad
    if isinstance(pad_token, str):
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is not None:
            return int(pad_id)
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for guess in ("[PAD]", "<pad>"):
        pad_id = tokenizer.token_to_id(guess)
        if pad_id is not None:
            return int(pad_id)
    return 0


def pad_rows(rows: Sequence[EncodedPair], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """input_ids, attention_mask, token_type_ids [B, longest] for a batch of rows."""
    longest = max(len(r) for r in rows)
    ids = np.full((len(rows), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), longest), dtype=np.int64)
    types = np.zeros((len(rows), longest), dtype=np.int64)
    for i, r in enumerate(rows):
        n = len(r)
        ids[i, :n] = r.ids
        mask[i, :n] = 1
        types[i, :n] = r.type_ids
    return ids, mask, types
