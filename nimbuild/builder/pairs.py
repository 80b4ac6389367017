"""Query/passage pairs for calibration and the accuracy gate.

A pairs file is JSONL, one ``{"query": str, "passages": [str, ...]}`` per line.
Without one, ``synthesize_pairs`` draws word salad from the tokenizer's own
vocabulary (good for parity, meaningless for ranking quality: say so in reports).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nimbuild.errors import NimbuildError
from nimbuild.export_layout import INPUT_NAMES
from nimbuild.safe_text import shown

# Without a pairs file: how many synthetic queries and passages each. The export's gate and the engines'
# check draw the same ones (seed 0), so that an engine is judged on the pairs its graph was.
SYNTHETIC_QUERIES, SYNTHETIC_PASSAGES = 12, 8


@dataclass(frozen=True)
class QueryGroup:
    query: str
    passages: tuple[str, ...]


MAX_LINE_BYTES = 64 << 20  # one query with its passages; a longer "line" is not a pairs file
_LINE_HINT = 'each line must be {"query": "...", "passages": ["...", ...]}'


def _open_pairs(p: Path):
    """The pairs file opened for reading; a NimbuildError saying what it is instead of a file."""
    if p.is_dir():
        raise NimbuildError(f"pairs file {p} is a folder", hint="point the recipe's `pairs` or --pairs at a JSONL file")
    if not p.is_file():
        what = "is a broken symlink or a symlink loop" if os.path.lexists(p) else "does not exist"
        raise NimbuildError(
            f"pairs file {p} {what}", hint="fix the recipe's `pairs` (relative to the recipe) or --pairs"
        )
    try:
        return open(p, "rb")
    except OSError as exc:
        raise NimbuildError(f"pairs file {p}: {exc.strerror}", hint="check its permissions") from None


def _pairs_lines(p: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each line: UTF-8 (a BOM at the start is allowed), bounded in length."""
    with _open_pairs(p) as fh:
        lineno = 0
        while raw := fh.readline(MAX_LINE_BYTES + 1):
            lineno += 1
            if len(raw) > MAX_LINE_BYTES:
                raise NimbuildError(
                    f"{p}:{lineno}: a line longer than {MAX_LINE_BYTES >> 20} MiB", hint="is this a JSONL pairs file?"
                )
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise NimbuildError(
                    f"{p}:{lineno}: not UTF-8 text (byte {raw[exc.start]:#04x} at column {exc.start + 1})",
                    hint="a pairs file is UTF-8 JSONL; convert it (iconv -t utf-8) or fix --pairs",
                ) from None
            yield lineno, text


def load_pairs(path: str | Path) -> list[QueryGroup]:
    """Read a pairs JSONL; errors name the file and the line (binary, deep or malformed input included)."""
    from nimbuild.safeload import parse_json

    p = Path(path)
    groups: list[QueryGroup] = []
    for lineno, line in _pairs_lines(p):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        obj = parse_json(line, where, what="pairs line", hint=_LINE_HINT)
        if not isinstance(obj, dict):
            raise NimbuildError(f"{where}: expected an object, got {type(obj).__name__}", hint=_LINE_HINT)
        extra = set(obj) - {"query", "passages"}
        if extra:
            raise NimbuildError(
                f"{where}: unknown field(s) {sorted(extra)!r:.200}", hint="only `query` and `passages` are read"
            )
        q, ps = obj.get("query"), obj.get("passages")
        if not isinstance(q, str) or not q.strip():
            raise NimbuildError(
                f"{where}: field `query`: expected a non-empty string, got {shown(q)}",
                hint="give each line a query text",
            )
        if not isinstance(ps, list) or not ps or not all(isinstance(x, str) and x.strip() for x in ps):
            raise NimbuildError(
                f"{where}: field `passages`: expected a non-empty list of non-empty strings",
                hint="give each query its passages",
            )
        groups.append(QueryGroup(q, tuple(ps)))
    if not groups:
        raise NimbuildError(f"pairs file {p} has no lines", hint='add lines of {"query": ..., "passages": [...]}')
    return groups


def _plain_words(tokenizer: Any) -> list[str]:
    vocab = tokenizer.get_vocab()
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    words = []
    for tok in sorted(vocab, key=vocab.get):
        if tok in specials:
            continue
        w = tok.lstrip("\u0120\u2581")
        if w.isascii() and w.isalpha() and len(w) >= 2 and not tok.startswith("##"):
            words.append(w.lower())
    return sorted(set(words)) or ["text"]


def synthesize_pairs(tokenizer: Any, n_queries: int = 12, n_passages: int = 8, seed: int = 0) -> list[QueryGroup]:
    """Deterministic random pairs from the tokenizer's vocabulary (for parity checks, not quality)."""
    rng = np.random.default_rng(seed)
    words = _plain_words(tokenizer)
    groups = []
    for _ in range(n_queries):
        query = " ".join(rng.choice(words, size=int(rng.integers(3, 8))))
        passages = tuple(" ".join(rng.choice(words, size=int(rng.integers(5, 40)))) for _ in range(n_passages))
        groups.append(QueryGroup(query, passages))
    return groups


def default_synthetic_pairs(tokenizer: Any) -> list[QueryGroup]:
    """The synthetic pairs used wherever a recipe has no pairs file (export and engines alike)."""
    return synthesize_pairs(tokenizer, SYNTHETIC_QUERIES, SYNTHETIC_PASSAGES, seed=0)


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The model's tokenizer through transformers (fast, tokenizer.json-backed where there is one)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)


def encode(
    tokenizer: Any, groups: Sequence[QueryGroup], max_length: int, input_names: Sequence[str] | None = None
) -> list[dict[str, np.ndarray]]:
    """Per query: int64 feeds for all its (query, passage) pairs, padded to the group's longest.

    ``input_names`` (the graph's) limits the feeds to those names; a
    ``token_type_ids`` the graph wants but the tokenizer does not give is zeros.
    """
    out = []
    for g in groups:
        enc = tokenizer(
            [g.query] * len(g.passages),
            list(g.passages),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        feeds = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in enc.items() if k in INPUT_NAMES}
        if input_names is not None:
            if "token_type_ids" in input_names and "token_type_ids" not in feeds:
                feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
            feeds = {k: feeds[k] for k in input_names}
        out.append(feeds)
    return out
