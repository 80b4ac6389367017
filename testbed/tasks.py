"""The test bed's splits and the query groups built from them, all pinned by seeds.

- held-out: ``HELDOUT_QUERIES`` packages chosen by a salted sha256 of their names; never
  trained on, neither their summary (query) nor their description (passage). Every quality
  figure, the recipes' gate pairs and the example's pairs come from them.
- validation: the first ``VALIDATION_QUERIES`` of the other packages, in the same order; never
  trained on either. Hyper-parameters are chosen on them (``python -m testbed quality
  --validation``), so the held-out figures stay an honest test.
- training: the rest; a query's group is its own description (label 1) and BM25-mined hard
  negatives among the *training* descriptions (label 0).
- evaluation groups: per held-out query, BM25's top candidates over the whole corpus (every
  description, held-out or not), with the query's own description put in when BM25 missed
  it (so every group has exactly one relevant passage); every method ranks the same groups.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from testbed.bm25 import BM25
from testbed.debian import Package

SALT = "nimbuild-testbed-split-v1"
HELDOUT_QUERIES = 200
VALIDATION_QUERIES = 200
EVAL_CANDIDATES = 10
NEGATIVE_POOL = 30  # hard negatives are drawn from BM25's top-30 training descriptions


@dataclass(frozen=True)
class Group:
    """One query and its passages, with graded labels (here binary: 1 for the query's own description)."""

    query: str
    passages: tuple[str, ...]
    labels: tuple[int, ...]
    package: str = ""

    def to_json(self) -> str:
        return json.dumps(
            {"query": self.query, "passages": list(self.passages), "labels": list(self.labels)}, ensure_ascii=False
        )


def _rank_key(name: str) -> str:
    return hashlib.sha256(f"{SALT}:{name}".encode()).hexdigest()


def split(packages: list[Package]) -> tuple[list[Package], list[Package]]:
    """(not held out, held-out), each in the salted-hash order (a fixed shuffle)."""
    ordered = sorted(packages, key=lambda p: _rank_key(p.name))
    return ordered[HELDOUT_QUERIES:], ordered[:HELDOUT_QUERIES]


def fit_split(packages: list[Package]) -> tuple[list[Package], list[Package]]:
    """(training, validation): what is not held out, less the validation queries that choose hyper-parameters."""
    rest, _ = split(packages)
    return rest[VALIDATION_QUERIES:], rest[:VALIDATION_QUERIES]


def training_groups(train: list[Package], n_queries: int, n_negatives: int, seed: int) -> list[Group]:
    """The first ``n_queries`` training packages: positive + ``n_negatives`` BM25 hard negatives each."""
    bm25 = BM25([p.passage for p in train])
    rng = random.Random(seed)
    groups = []
    for i, pkg in enumerate(train[:n_queries]):
        pool = bm25.top(pkg.query, NEGATIVE_POOL, exclude=[i])
        negatives = rng.sample(pool, min(n_negatives, len(pool)))
        passages = (pkg.passage,) + tuple(train[j].passage for j in negatives)
        groups.append(Group(pkg.query, passages, (1,) + (0,) * len(negatives), pkg.name))
    return groups


def evaluation_groups(packages: list[Package], k: int = EVAL_CANDIDATES, validation: bool = False) -> list[Group]:
    """Per held-out query (or validation query): BM25's top-k over the whole corpus (own description forced in).

    In BM25 order. ``validation=True``: the validation queries' groups, built the same way.
    """
    heldout = fit_split(packages)[1] if validation else split(packages)[1]
    corpus = [p.passage for p in packages]
    where = {p.name: i for i, p in enumerate(packages)}
    bm25 = BM25(corpus)
    groups = []
    for pkg in heldout:
        own = where[pkg.name]
        top = bm25.top(pkg.query, k)
        if own not in top:
            scores = bm25.scores(pkg.query)
            top = sorted(top[: k - 1] + [own], key=lambda j: (-scores[j], j))
        groups.append(Group(pkg.query, tuple(corpus[j] for j in top), tuple(int(j == own) for j in top), pkg.name))
    return groups


def write_groups(groups: list[Group], path: Path) -> None:
    from nimbuild.fsutil import atomic_write_text

    atomic_write_text(path, "".join(g.to_json() + "\n" for g in groups))
