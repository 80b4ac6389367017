"""Query-passage pairs tokenized in the server, exactly as the model's tokenizer builds them.

The exported ``tokenizer.json`` carries the model's post-processor, so
``[CLS] q [SEP] p [SEP]`` (BERT) or ``<s> q </s></s> p </s>`` (RoBERTa/XLM-R),
and the token type ids, come from the file, not from code here. Truncation is
ours: ``END`` cuts the passage first, then the query if it alone is still too
long; ``NONE`` refuses an over-long pair with the token count and the limit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Encoding, Tokenizer

TRUNCATE_MODES = ("NONE", "END")


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

    def encode(self, query: str, passages: Sequence[str], truncate: str = "NONE") -> list[EncodedPair]:
        """One row per passage; raises :class:`TooManyTokens` for an over-long pair under ``NONE``."""
        if truncate not in TRUNCATE_MODES:
            raise ValueError(f"truncate must be one of {', '.join(TRUNCATE_MODES)}, got {truncate!r}")
        encodings = self.tokenizer.encode_batch([(query, p) for p in passages], add_special_tokens=True)
        rows: list[EncodedPair] = []
        query_alone = None
        for index, enc in enumerate(encodings):
            if len(enc.ids) > self.max_length:
                if truncate == "NONE":
                    raise TooManyTokens(index, len(enc.ids), self.max_length)
                if query_alone is None:
                    query_alone = self.tokenizer.encode(query, add_special_tokens=False)
                enc = self._truncate_end(query_alone, passages[index])
            rows.append(EncodedPair(np.asarray(enc.ids, dtype=np.int64), np.asarray(enc.type_ids, dtype=np.int64)))
        return rows

    def _truncate_end(self, query_enc: Encoding, passage: str) -> Encoding:
        """Cut the passage first (``only_second``), then the query, so the pair fits."""
        budget = self.max_length - self.pair_specials
        passage_enc = self.tokenizer.encode(passage, add_special_tokens=False)
        # Copies: Encoding.truncate works in place and the query is shared by every passage.
        q = _copy(query_enc)
        keep_passage = max(0, budget - len(q.ids))
        if len(passage_enc.ids) > keep_passage:
            passage_enc.truncate(keep_passage)
        if len(q.ids) + len(passage_enc.ids) > budget:
            q.truncate(max(0, budget - len(passage_enc.ids)))
        return self.tokenizer.post_process(q, passage_enc, add_special_tokens=True)


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
