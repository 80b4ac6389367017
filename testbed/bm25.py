"""Okapi BM25 (k1=0.9, b=0.4, Anserini's defaults for passage retrieval): the baseline and the hard-negative miner.

Small on purpose (an inverted index of numpy arrays): 26k passages index in seconds and
the results are deterministic (ties broken by passage index), which the pinned splits need.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")
# The most frequent English function words: they add noise, not evidence.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "but",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "will",
        "with",
        "you",
        "your",
        "can",
        "which",
        "into",
        "than",
        "then",
        "there",
        "these",
        "they",
        "their",
        "also",
        "such",
        "not",
        "no",
    ]
)


def terms(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


class BM25:
    def __init__(self, passages: Sequence[str], k1: float = 0.9, b: float = 0.4):
        self.k1, self.b = k1, b
        self.n = len(passages)
        postings: dict[str, list[tuple[int, int]]] = defaultdict(list)
        lengths = np.zeros(self.n, dtype=np.float64)
        for i, text in enumerate(passages):
            counts = Counter(terms(text))
            lengths[i] = sum(counts.values())
            for term, tf in counts.items():
                postings[term].append((i, tf))
        avg = float(lengths.mean()) if self.n else 1.0
        self.norm = k1 * (1.0 - b + b * lengths / max(avg, 1e-9))
        self.index = {
            t: (np.array([d for d, _ in p], dtype=np.int64), np.array([tf for _, tf in p], dtype=np.float64))
            for t, p in postings.items()
        }

    def idf(self, term: str) -> float:
        df = len(self.index[term][0]) if term in self.index else 0
        return math.log(1.0 + (self.n - df + 0.5) / (df + 0.5))

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every passage for ``query`` (0 where no term matches)."""
        out = np.zeros(self.n, dtype=np.float64)
        for term in terms(query):
            if term not in self.index:
                continue
            docs, tf = self.index[term]
            out[docs] += self.idf(term) * tf * (self.k1 + 1.0) / (tf + self.norm[docs])
        return out

    def top(self, query: str, k: int, exclude: Sequence[int] = ()) -> list[int]:
        """The ``k`` best passage indexes, best first; ties by index (stable)."""
        s = self.scores(query)
        if len(exclude):
            s[np.asarray(exclude, dtype=np.int64)] = -np.inf
        order = np.lexsort((np.arange(self.n), -s))
        return [int(i) for i in order[:k] if np.isfinite(s[i])]

    def score_pairs(self, query: str, indexes: Sequence[int]) -> np.ndarray:
        return self.scores(query)[np.asarray(indexes, dtype=np.int64)]
