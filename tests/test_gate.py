"""The accuracy gate: ranking metrics against hand-computed values, judging, and a real ONNX graph."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nimbuild.builder import gate
from nimbuild.thresholds import GateThresholds


def test_identical_scores_agree_perfectly():
    ref = [np.array([3.0, 1.0, 2.0, -1.0]), np.array([0.5, 0.2])]
    m = gate.ranking_metrics(ref, [r.copy() for r in ref])
    assert m == pytest.approx({"top1": 1.0, "spearman": 1.0, "kendall": 1.0, "ndcg10": 1.0, "max_abs_logit": 0.0})


def test_reversed_order_is_minus_one():
    ref = [np.array([4.0, 3.0, 2.0, 1.0])]
    m = gate.ranking_metrics(ref, [np.array([1.0, 2.0, 3.0, 4.0])])
    assert m["top1"] == 0.0
    assert m["spearman"] == pytest.approx(-1.0)
    assert m["kendall"] == pytest.approx(-1.0)
    assert m["max_abs_logit"] == pytest.approx(3.0)


def test_one_swap_by_hand():
    ref = np.array([3.0, 2.0, 1.0, 0.0])
    cand = np.array([3.0, 1.0, 2.0, 0.0])  # passages 1 and 2 swapped
    m = gate.ranking_metrics([ref], [cand])
    assert m["top1"] == 1.0
    assert m["spearman"] == pytest.approx(1 - 6 * 2 / (4 * 15))  # 0.8
    assert m["kendall"] == pytest.approx((5 - 1) / 6)  # one discordant pair of six
    gains = [1.0, 2 / 3, 1 / 3, 0.0]
    dcg = gains[0] / math.log2(2) + gains[2] / math.log2(3) + gains[1] / math.log2(4)
    idcg = gains[0] / math.log2(2) + gains[1] / math.log2(3) + gains[2] / math.log2(4)
    assert m["ndcg10"] == pytest.approx(dcg / idcg)
    assert m["max_abs_logit"] == pytest.approx(1.0)


def test_metrics_are_means_over_queries_and_max_over_pairs():
    ref = [np.array([2.0, 1.0]), np.array([2.0, 1.0])]
    cand = [np.array([2.0, 1.5]), np.array([1.0, 2.0])]
    m = gate.ranking_metrics(ref, cand)
    assert m["top1"] == 0.5
    assert m["spearman"] == pytest.approx(0.0)  # (+1 - 1) / 2
    assert m["max_abs_logit"] == pytest.approx(1.0)


def test_against_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for _ in range(20):
        a = rng.integers(0, 5, size=9).astype(float)
        b = a + rng.normal(0, 1.5, size=9)
        b[rng.integers(0, 9)] = b[0]  # a tie in the candidate too
        assert gate.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-9)
        assert gate.kendall(a, b) == pytest.approx(stats.kendalltau(a, b).statistic, abs=1e-9)


def test_top1_counts_a_tied_best_as_agreement():
    assert gate.top1_agrees(np.array([2.0, 2.0, 0.0]), np.array([0.0, 1.0, -1.0]))
    assert not gate.top1_agrees(np.array([2.0, 2.0, 0.0]), np.array([0.0, -1.0, 1.0]))


def test_ndcg_only_looks_at_the_top_ten():
    ref = np.arange(20, dtype=float)[::-1]
    cand = ref.copy()
    cand[15], cand[19] = cand[19], cand[15]  # a swap below rank 10
    assert gate.ndcg_at_k(ref, cand, 10) == 1.0
    cand2 = ref.copy()
    cand2[0], cand2[19] = cand2[19], cand2[0]
    assert gate.ndcg_at_k(ref, cand2, 10) < 0.9


def test_nan_candidate_fails_every_threshold():
    m = gate.ranking_metrics([np.array([1.0, 2.0])], [np.array([np.nan, 1.0])])
    result = gate.judge(m, GateThresholds(top1=0.5, spearman=0.5, max_abs_logit=1.0))
    assert not result.passed
    assert any(f.startswith("spearman undefined") for f in result.failures)
    assert any(f.startswith("max_abs_logit") for f in result.failures)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="query 0"):
        gate.ranking_metrics([np.array([1.0, 2.0])], [np.array([1.0])])
    with pytest.raises(ValueError):
        gate.ranking_metrics([np.array([1.0])], [])


def test_judge_thresholds_and_messages():
    metrics = {"top1": 0.8, "spearman": 0.97, "kendall": 0.5, "ndcg10": 0.99, "max_abs_logit": 0.02}
    result = gate.judge(
        metrics, GateThresholds(top1=0.95, spearman=0.95, ndcg10=0.98, max_abs_logit=0.01), n_queries=5, n_pairs=40
    )
    assert not result.passed
    assert result.failures == ["top1 0.8000 < 0.95", "max_abs_logit 0.02 > 0.01"]
    d = result.to_dict()
    assert set(d) == {"passed", "metrics", "thresholds", "failures", "n_queries", "n_pairs", "notes"}
    assert d["thresholds"]["kendall"] is None  # not judged
    assert (d["n_queries"], d["n_pairs"]) == (5, 40)
    assert gate.judge(metrics, GateThresholds(top1=0.8, spearman=None)).passed


def test_unknown_threshold_name_is_rejected():
    with pytest.raises(ValueError, match="top_1"):
        GateThresholds.from_mapping({"top_1": 0.9})
    with pytest.raises(ValueError, match="not a finite number"):
        GateThresholds(top1=math.nan)


def test_a_tightened_bound_is_the_stricter_one():
    loose = GateThresholds(top1=0.9, max_abs_logit=0.5)
    assert loose.tightened(max_abs_logit=0.1, top1=0.95) == GateThresholds(top1=0.95, max_abs_logit=0.1)
    assert loose.tightened(max_abs_logit=0.9).max_abs_logit == 0.5  # never loosened
    assert GateThresholds().tightened(max_abs_logit=1e-4).max_abs_logit == 1e-4
    assert list(GateThresholds(top1=1.0).bounds()) == [("top1", 1.0, True)]


def test_scores_from_logits_picks_the_relevance_column():
    assert gate.scores_from_logits(np.array([[1.0], [2.0]])).tolist() == [1.0, 2.0]
    assert gate.scores_from_logits(np.array([[5.0, 1.0], [0.0, 2.0]])).tolist() == [1.0, 2.0]


def _sum_graph(path):
    """A real ONNX graph: logits[b, 0] = sum_s(input_ids * attention_mask) / 10."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
        helper.make_node("Cast", ["masked"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["f", "axes"], ["s"], keepdims=1),
        helper.make_node("Div", ["s", "ten"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "sum",
        [
            helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
            for n in ("input_ids", "attention_mask")
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
            helper.make_tensor("ten", TensorProto.FLOAT, [], [10.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def test_run_gate_on_a_real_graph(tmp_path):
    path = _sum_graph(tmp_path / "sum.onnx")
    ids = np.array([[1, 2, 3], [4, 5, 0], [9, 9, 9]], dtype=np.int64)
    mask = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=np.int64)
    feeds = [{"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}]  # extra input ignored
    exact = [np.array([0.6, 0.9, 2.7])]
    good = gate.run_gate(path, feeds, exact, GateThresholds(top1=1.0, max_abs_logit=1e-5), max_batch=2)
    assert good.passed, good.failures
    assert good.n_pairs == 3 and good.n_queries == 1
    # a reference that orders the passages the other way round is refused
    bad = gate.run_gate(path, feeds, [np.array([2.7, 0.9, 0.6])], GateThresholds(top1=0.95, spearman=0.95))
    assert not bad.passed
    assert bad.metrics["spearman"] == pytest.approx(-1.0)
