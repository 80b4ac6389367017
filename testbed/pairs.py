"""The test bed's committed gate pairs: held-out labeled queries (``python -m testbed pairs``).

recipes/pairs/testbed-minilm-l6.jsonl: 64 held-out queries (never trained on), the
"general markup converter" query (package pandoc) first, each with its 10 BM25 candidates
and labels (1: the package's own description). tests/test_testbed.py checks that the file is
made of the current held-out groups.
"""

from __future__ import annotations

from pathlib import Path

from testbed import REPO

PAIRS_DIR = REPO / "recipes" / "pairs"
TESTBED_PAIRS = PAIRS_DIR / "testbed-minilm-l6.jsonl"
TESTBED_PAIRS_QUERIES = 64
LEAD_PACKAGE = "pandoc"  # "general markup converter": a query anyone can judge


def pairs_groups(groups: list) -> list:
    """The held-out groups of the pairs file, in its order."""
    lead = [g for g in groups if g.package == LEAD_PACKAGE]
    return lead + [g for g in groups if g.package != LEAD_PACKAGE][: TESTBED_PAIRS_QUERIES - len(lead)]


def write_pairs_files() -> list[Path]:
    from testbed import debian, tasks

    tasks.write_groups(pairs_groups(tasks.evaluation_groups(debian.load_dataset())), TESTBED_PAIRS)
    return [TESTBED_PAIRS]
