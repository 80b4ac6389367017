"""The committed gate pairs: held-out labeled queries (``python -m testbed pairs`` rewrites both).

- recipes/pairs/testbed-minilm-l6.jsonl: all 200 held-out queries (never trained on), the
  "general markup converter" query (package pandoc) first, each with its 10 BM25 candidates.
  The gate calibrates on the even-numbered lines and judges the precision graphs on the 100
  odd-numbered ones. The file had 64: 32 calibrating queries gave FP8 too few activation
  ranges (fp8 rejected at top-1 0.906, passed at 0.990 with 100), and with 32 judged ones a
  single changed top passage moved top-1 by 0.031 (benchmarks/RESULTS-precision.md).
- recipes/pairs/example-tiny.jsonl: the bundled example's pairs: 12 held-out queries, each
  with its 8 BM25 candidates (the gate's 96 pairs). The first is the query `make demo` asks:
  "Automated Password Generator - Standalone version" (package apg), chosen *after* training
  among these 12 as one the example ranks right and anyone can judge; the example ranks
  pandoc's description 6th of 8 for "general markup converter", so that one is not the demo.
  The example's quality claim is its NDCG@10 on all 200 held-out queries, not this choice.

Labels: 1 for the package's own description, 0 for the others. The dataset knows one
relevant passage per query; a middle grade would be a judgement nobody made, so there is
none. tests/test_testbed.py checks that both files are made of the current held-out groups.
"""

from __future__ import annotations

from pathlib import Path

from testbed import REPO, tasks

PAIRS_DIR = REPO / "recipes" / "pairs"
TESTBED_PAIRS = PAIRS_DIR / "testbed-minilm-l6.jsonl"
TESTBED_PAIRS_QUERIES = tasks.HELDOUT_QUERIES  # every held-out query
EXAMPLE_PAIRS = PAIRS_DIR / "example-tiny.jsonl"
EXAMPLE_PAIRS_QUERIES, EXAMPLE_PAIRS_PASSAGES = 12, 8
LEAD_PACKAGE = "pandoc"  # "general markup converter": a query anyone can judge
EXAMPLE_LEAD_PACKAGE = "apg"  # the demo's query (see above)


def pairs_groups(groups: list, n_queries: int = TESTBED_PAIRS_QUERIES, lead_package: str = LEAD_PACKAGE) -> list:
    """The held-out groups of a pairs file, in its order: the lead query, then the next in the split's order."""
    lead = [g for g in groups if g.package == lead_package]
    return lead + [g for g in groups if g.package != lead_package][: n_queries - len(lead)]


def example_pairs_groups(packages: list) -> list:
    """The groups of recipes/pairs/example-tiny.jsonl."""
    groups = tasks.evaluation_groups(packages, k=EXAMPLE_PAIRS_PASSAGES)
    chosen = pairs_groups(groups, EXAMPLE_PAIRS_QUERIES)  # the same 12 queries as before the demo's was chosen
    lead = [g for g in chosen if g.package == EXAMPLE_LEAD_PACKAGE]
    return lead + [g for g in chosen if g.package != EXAMPLE_LEAD_PACKAGE]


def write_pairs_files() -> list[Path]:
    from testbed import debian

    packages = debian.load_dataset()
    tasks.write_groups(pairs_groups(tasks.evaluation_groups(packages)), TESTBED_PAIRS)
    tasks.write_groups(example_pairs_groups(packages), EXAMPLE_PAIRS)
    return [TESTBED_PAIRS, EXAMPLE_PAIRS]
