"""Model resolution (local folders, an offline Hugging Face cache) and pairs files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import HF_TEST_SHA as SHA  # noqa: E402

from nimbuild.builder import pairs as pairs_mod
from nimbuild.builder.source import hub_cache_dir, resolve_hub, resolve_local, resolve_source
from nimbuild.errors import NimbuildError
from nimbuild.recipe import parse_recipe


def test_local_folder_is_used_as_is(example_model_dir):
    r = resolve_local(example_model_dir)
    assert r.path == example_model_dir.resolve() and r.repo is None
    assert r.architecture == "BertForSequenceClassification"
    assert r.revision.startswith("sha256:") and len(r.revision) == len("sha256:") + 16
    assert resolve_local(example_model_dir).revision == r.revision  # stable


def test_local_revision_follows_the_weights(tmp_path, example_model_dir):
    copy = tmp_path / "m"
    shutil.copytree(example_model_dir, copy)
    before = resolve_local(copy).revision
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "model.safetensors").write_bytes(bytes(data))
    assert resolve_local(copy).revision != before


def test_missing_folder_and_missing_config(tmp_path):
    with pytest.raises(NimbuildError, match=r"model folder .*nope does not exist"):
        resolve_local(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NimbuildError, match="has no config.json"):
        resolve_local(tmp_path / "empty")


def _with_config(tmp_path, example_model_dir, **changes) -> Path:
    copy = tmp_path / "remote"
    shutil.copytree(example_model_dir, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg.update(changes)
    (copy / "config.json").write_text(json.dumps(cfg))
    return copy


def test_remote_code_refused_unless_allowed(tmp_path, example_model_dir):
    d = _with_config(tmp_path, example_model_dir, auto_map={"AutoModelForSequenceClassification": "modeling_x.XModel"})
    with pytest.raises(NimbuildError) as exc:
        resolve_local(d)
    assert "needs remote code (config.json auto_map" in str(exc.value)
    assert "trust_remote_code: true" in str(exc.value)
    assert resolve_local(d, trust_remote_code=True).path == d.resolve()


def test_custom_architecture_counts_as_remote_code(tmp_path, example_model_dir):
    d = _with_config(tmp_path, example_model_dir, architectures=["MyCustomReranker"])
    with pytest.raises(NimbuildError, match="MyCustomReranker is not part of transformers"):
        resolve_local(d)


def test_hub_cache_dir_follows_the_environment(tmp_path):
    assert hub_cache_dir({"HF_HOME": str(tmp_path)}) == tmp_path / "hub"
    assert hub_cache_dir({"HF_HOME": "/x", "HF_HUB_CACHE": str(tmp_path / "c")}) == tmp_path / "c"


def test_hub_repo_from_an_offline_cache(hf_offline, example_model_dir, make_hf_cache):
    snap = make_hf_cache(hf_offline / "hub", "acme/tiny-reranker", example_model_dir)
    r = resolve_hub("acme/tiny-reranker", SHA)
    assert r.path == snap and r.revision == SHA and r.repo == "acme/tiny-reranker"
    # no revision: refs/main names the snapshot
    assert resolve_hub("acme/tiny-reranker", None).revision == SHA
    # through a recipe, as `nimbuild export RECIPE` does
    recipe = parse_recipe({"name": "tiny", "source": {"repo": "acme/tiny-reranker", "revision": SHA}})
    assert resolve_source(recipe).path == snap


def test_hub_cache_env_var(monkeypatch, tmp_path, example_model_dir, make_hf_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    make_hf_cache(tmp_path / "elsewhere", "acme/tiny", example_model_dir)
    assert resolve_hub("acme/tiny", SHA).revision == SHA


def test_unknown_repo_offline_is_a_clear_error(hf_offline):
    with pytest.raises(NimbuildError) as exc:
        resolve_hub("acme/not-there", SHA)
    msg = str(exc.value)
    assert "acme/not-there" in msg and "HF_HUB_OFFLINE=1" in msg and str(hf_offline / "hub") in msg


def test_unknown_revision_offline(hf_offline, example_model_dir, make_hf_cache):
    make_hf_cache(hf_offline / "hub", "acme/tiny", example_model_dir)
    with pytest.raises(NimbuildError, match="not in the Hugging Face cache"):
        resolve_hub("acme/tiny", "f" * 40)


def test_remote_code_in_a_hub_snapshot(hf_offline, tmp_path, example_model_dir, make_hf_cache):
    d = _with_config(tmp_path, example_model_dir, auto_map={"AutoConfig": "configuration_x.XConfig"})
    make_hf_cache(hf_offline / "hub", "acme/custom", d)
    with pytest.raises(NimbuildError, match="model acme/custom needs remote code"):
        resolve_hub("acme/custom", SHA)


# ----------------------------------------------------------------------------- pairs


def test_example_pairs(example_pairs):
    groups = pairs_mod.load_pairs(example_pairs)
    assert len(groups) >= 12 and all(len(g.passages) >= 8 for g in groups)
    # held-out test bed queries (tests/test_testbed.py checks which): 1 for the package's own description, 0 else
    assert all(
        g.labels is not None and len(g.labels) == len(g.passages) and sorted(g.labels)[-2:] == [0, 1] for g in groups
    )


def test_the_example_tokenizer_covers_the_example_pairs(example_pairs, example_model_dir):
    """The example's pruned WordPiece vocabulary keeps every character piece: its pairs need no [UNK]."""
    tok = pairs_mod.load_tokenizer(example_model_dir)
    groups = pairs_mod.load_pairs(example_pairs)
    ids = [
        i for g in groups for text in (g.query, *g.passages) for i in tok(text, add_special_tokens=False)["input_ids"]
    ]
    assert len(ids) > 1000 and tok.unk_token_id not in ids


def test_tiny_vocabulary_knows_its_words():
    from nimbuild.builder.tiny import uncovered_words, vocabulary_words

    assert uncovered_words(" ".join(vocabulary_words())) == []
    assert uncovered_words("the zyxwvut") == ["zyxwvut"]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("{not json", ":1: not JSON"),
        ('["a"]', ":1: expected an object"),
        ('{"query": "", "passages": ["a"]}', "field `query`"),
        ('{"query": "q", "passages": []}', "field `passages`"),
        ('{"query": "q", "passages": ["a"], "score": 1}', "unknown field(s) ['score']"),
        ('{"query": "q", "passages": ["a", "b"], "labels": [1]}', "field `labels`: 1 labels for 2 passages"),
        ('{"query": "q", "passages": ["a"], "labels": [-1]}', "field `labels`: negative label -1"),
        ('{"query": "q", "passages": ["a"], "labels": [0.5]}', "field `labels`: expected a list of integers"),
        ('{"query": "q", "passages": ["a"], "labels": [true]}', "field `labels`: expected a list of integers"),
        ('{"query": "q", "passages": ["a"], "labels": 1}', "field `labels`: expected a list of integers"),
    ],
)
def test_bad_pairs_name_the_line(tmp_path, line, expected):
    p = tmp_path / "p.jsonl"
    p.write_text(line + "\n")
    with pytest.raises(NimbuildError) as exc:
        pairs_mod.load_pairs(p)
    assert str(p) in str(exc.value) and expected in str(exc.value)


def test_labels_are_graded_and_on_every_line_or_none(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"query": "q", "passages": ["a", "b", "c"], "labels": [0, 3, 1]}\n')
    assert pairs_mod.load_pairs(p)[0].labels == (0, 3, 1)
    p.write_text('{"query": "q", "passages": ["a"], "labels": [1]}\n{"query": "r", "passages": ["b"]}\n')
    with pytest.raises(NimbuildError) as exc:
        pairs_mod.load_pairs(p)
    assert f"{p}:2: no field `labels`, but the first line has `labels`" in str(exc.value)
    p.write_text('{"query": "q", "passages": ["a"]}\n\n{"query": "r", "passages": ["b"], "labels": [0]}\n')
    with pytest.raises(NimbuildError, match=r"p.jsonl:3: a field `labels`, but the first line has no `labels`"):
        pairs_mod.load_pairs(p)


def test_encode_and_synthesize(tiny_model_dir, example_model_dir):
    tok = pairs_mod.load_tokenizer(example_model_dir)
    groups = pairs_mod.synthesize_pairs(tok, 3, 4, seed=1)
    assert groups == pairs_mod.synthesize_pairs(tok, 3, 4, seed=1)
    assert len(groups) == 3 and all(len(g.passages) == 4 for g in groups)
    enc = pairs_mod.encode(tok, groups, max_length=16)
    assert set(enc[0]) == {"input_ids", "attention_mask", "token_type_ids"}
    assert enc[0]["input_ids"].dtype == np.int64 and enc[0]["input_ids"].shape[0] == 4
    assert max(e["input_ids"].shape[1] for e in enc) <= 16
    # RoBERTa-style tokenizers give no token types; a graph that wants them gets zeros
    rtok = pairs_mod.load_tokenizer(tiny_model_dir("roberta"))
    renc = pairs_mod.encode(rtok, groups[:1], 32, input_names=["input_ids", "attention_mask", "token_type_ids"])
    assert list(renc[0]) == ["input_ids", "attention_mask", "token_type_ids"]
    assert not renc[0]["token_type_ids"].any()
