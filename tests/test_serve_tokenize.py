"""Pairs tokenized by the server exactly as the model's own (transformers) tokenizer builds them."""

from __future__ import annotations

import numpy as np
import pytest

from nimbuild.runtime.serve.tokenize import PairTokenizer, TooManyTokens, pad_rows

QUERY = "how do bees make honey"
PASSAGES = [
    "bees collect nectar from flowers and store it in the hive",
    "the train leaves the station at six",
    "honey",
    "bees make honey from nectar, and the colony eats it in winter!",
]


@pytest.fixture(scope="module", params=["bert", "roberta", "xlm-roberta"])
def tiny_tokenizers(request, tmp_path_factory):
    """(transformers tokenizer, our PairTokenizer) for one tiny architecture."""
    from transformers import AutoTokenizer

    from nimbuild.builder.tiny import build_tiny_model

    d = build_tiny_model(tmp_path_factory.mktemp(request.param), request.param, seed=0)
    hf = AutoTokenizer.from_pretrained(d)
    ours = PairTokenizer.from_files(d / "tokenizer.json", max_length=32)
    return request.param, hf, ours


def test_pairs_match_transformers(tiny_tokenizers):
    arch, hf, ours = tiny_tokenizers
    rows = ours.encode(QUERY, PASSAGES, "NONE")
    assert len(rows) == len(PASSAGES)
    for passage, row in zip(PASSAGES, rows, strict=True):
        ref = hf(QUERY, passage)
        assert row.ids.tolist() == ref["input_ids"], (arch, passage)
        if "token_type_ids" in ref:
            assert row.type_ids.tolist() == ref["token_type_ids"]
    # The separator layout is the model's: BERT has one [SEP] between, RoBERTa/XLM-R two </s>.
    assert ours.pad_id == hf.pad_token_id


def test_truncate_end_cuts_the_passage_like_only_second(tiny_tokenizers):
    arch, hf, ours = tiny_tokenizers
    long_passage = " ".join(["bees collect nectar from flowers"] * 20)
    (row,) = ours.encode(QUERY, [long_passage], "END")
    ref = hf(QUERY, long_passage, truncation="only_second", max_length=32)
    assert len(row) == 32
    assert row.ids.tolist() == ref["input_ids"]


def test_truncate_end_cuts_the_query_when_it_alone_is_too_long(tiny_tokenizers):
    arch, hf, ours = tiny_tokenizers
    long_query = " ".join(["how do bees make honey"] * 20)
    (row,) = ours.encode(long_query, ["bees collect nectar"], "END")
    assert len(row) == 32
    query_ids = hf(long_query, add_special_tokens=False)["input_ids"]
    specials = ours.pair_specials
    # The passage is gone first, then the query keeps its first (32 - specials) tokens.
    kept = [i for i in row.ids.tolist() if i not in hf.all_special_ids]
    assert kept == query_ids[: 32 - specials]


def test_truncate_none_names_the_token_count_and_limit(tiny_tokenizers):
    arch, hf, ours = tiny_tokenizers
    long_passage = " ".join(["bees collect nectar from flowers"] * 20)
    n = len(hf(QUERY, long_passage)["input_ids"])
    with pytest.raises(TooManyTokens) as info:
        ours.encode(QUERY, ["honey", long_passage], "NONE")
    assert info.value.index == 1 and info.value.tokens == n and info.value.limit == 32
    assert f"{n} tokens" in str(info.value) and "max_sequence_length 32" in str(info.value)


def test_pad_rows_pads_to_the_longest_with_the_pad_id(tiny_tokenizers):
    arch, hf, ours = tiny_tokenizers
    rows = ours.encode(QUERY, PASSAGES, "NONE")
    ids, mask, types = pad_rows(rows, ours.pad_id)
    ref = hf([QUERY] * len(PASSAGES), PASSAGES, padding=True, return_tensors="np")
    np.testing.assert_array_equal(ids, ref["input_ids"])
    np.testing.assert_array_equal(mask, ref["attention_mask"])
    if "token_type_ids" in ref:
        np.testing.assert_array_equal(types, ref["token_type_ids"])


def _long_texts():
    from hypothesis import strategies as st

    words = st.sampled_from(
        ["bees", "honey", "nectar", "hive", "flowers", "the", "of", "Zürich", "naïve", "日本語", "🐝", "x" * 40, "—"]
    )
    gaps = st.sampled_from([" ", "  ", "\n", "\t", " \u00a0 ", ""])
    return st.lists(st.tuples(words, gaps), min_size=150, max_size=900).map(lambda ws: "".join(w + g for w, g in ws))


def test_cutting_a_long_text_before_tokenizing_keeps_exactly_the_tokens_truncation_keeps(tiny_tokenizers):
    """END keeps the first tokens and START the last ones, as transformers' only_second truncation on the whole
    text; the text is cut first (it is longer than the cut threshold), and that must change nothing."""
    from hypothesis import HealthCheck, assume, given, settings

    arch, hf, ours = tiny_tokenizers
    cut_short = []

    @settings(
        max_examples=25,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(text=_long_texts())
    def check(text):
        assume(len(text) > 600)  # past the cut threshold (16 characters x 32 tokens)
        cut_short.append(len(ours.cut(text, 32)) < len(text))
        (end,) = ours.encode(QUERY, [text], "END")
        assert end.ids.tolist() == hf(QUERY, text, truncation="only_second", max_length=32)["input_ids"], arch
        (start,) = ours.encode(QUERY, [text], "START")
        hf.truncation_side = "left"
        try:
            ref = hf(QUERY, text, truncation="only_second", max_length=32)["input_ids"]
        finally:
            hf.truncation_side = "right"
        assert start.ids.tolist() == ref, arch

    check()
    assert sum(cut_short) >= len(cut_short) // 2  # the cut really happened, mostly


def test_max_passage_tokens_cuts_each_passage(tiny_tokenizers):
    arch, hf, ours = tiny_tokenizers
    (row,) = ours.encode(QUERY, ["bees collect nectar from flowers and store it"], "END", max_passage_tokens=3)
    passage_ids = hf("bees collect nectar from flowers and store it", add_special_tokens=False)["input_ids"][:3]
    assert len(row) == len(hf(QUERY, add_special_tokens=False)["input_ids"]) + 3 + ours.pair_specials
    assert row.ids.tolist()[-(3 + 1) : -1] == passage_ids  # the passage's first 3 tokens, before the last special
