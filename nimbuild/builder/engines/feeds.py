"""The recipe's pairs as engine feeds: every chunk within the optimization profile's shapes.

An engine only accepts shapes inside its profile, so a query with more passages
than the profile's max batch is split, and a chunk below its min batch (or min
sequence) is padded; ``rows`` says how many rows are real, so that the gate
judges each query's full ranking and nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from nimbuild.builder.engines.plan import EnginePlan
from nimbuild.export_layout import tokenizer_dir
from nimbuild.fsutil import json_digest, sha256_file

if TYPE_CHECKING:
    from nimbuild.recipe import Recipe

Feed = dict[str, np.ndarray]
# per query, its chunks: {"feed": {input: array}, "rows": number of real rows}
QueryFeeds = list[dict[str, Any]]


def evaluation_feeds(recipe: Recipe, plan: EnginePlan) -> tuple[list[QueryFeeds], str]:
    """The recipe's evaluation pairs as engine feeds: per query, batches within the profile.

    Returns (per query a list of ``{"feed", "rows"}`` chunks, sha256 of the pairs):
    a query with more passages than the profile's max batch is split, a chunk below
    its min batch is padded with copies of its last row (``rows`` says how many are
    real), so that the gate judges each query's full ranking. Without a pairs file,
    the same synthetic pairs as `nimbuild export` (parity only).
    """
    from nimbuild.builder import pairs as pairs_mod

    tokenizer = pairs_mod.load_tokenizer(tokenizer_dir(plan.out_dir), trust_remote_code=recipe.trust_remote_code)
    if recipe.pairs:
        pairs_path = recipe.resolve(recipe.pairs)
        groups = pairs_mod.load_pairs(pairs_path)
        pairs_sha = sha256_file(pairs_path)
    else:
        groups = pairs_mod.default_synthetic_pairs(tokenizer)
        pairs_sha = json_digest({"synthetic": [[g.query, list(g.passages)] for g in groups]})
    encoded = pairs_mod.encode(tokenizer, groups, plan.sequence[2], list(plan.inputs))
    bmin, _, bmax = plan.batch
    feeds: list[QueryFeeds] = []
    for query in encoded:
        arrays = {name: np.ascontiguousarray(query[name], dtype=np.int64) for name in plan.inputs}
        n = next(iter(arrays.values())).shape[0]
        chunks: QueryFeeds = []
        for start in range(0, n, bmax):
            chunk = {k: v[start : start + bmax] for k, v in arrays.items()}
            rows = next(iter(chunk.values())).shape[0]
            if rows < bmin:
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], bmin - rows, axis=0)]) for k, v in chunk.items()}
            chunk = {k: _fit_sequence(v, plan.sequence[0]) for k, v in chunk.items()}
            chunks.append({"feed": chunk, "rows": rows})
        feeds.append(chunks)
    return feeds, pairs_sha


def _fit_sequence(array: np.ndarray, min_len: int) -> np.ndarray:
    if array.shape[1] >= min_len:
        return array
    return np.pad(array, ((0, 0), (0, min_len - array.shape[1])))


def opt_feed(plan: EnginePlan, sample: Mapping[str, Any]) -> Feed:
    """A feed at the profile's opt shape, made of real tokens, for the latency measurement."""
    batch, seq = plan.batch[1], plan.sequence[1]
    feed = {}
    for name, array in sample.items():
        row = np.resize(np.asarray(array[0], dtype=np.int64), seq)
        feed[name] = np.ascontiguousarray(np.tile(row, (batch, 1)))
    return feed
