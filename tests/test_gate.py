"""The accuracy gate: ranking metrics against hand-computed values, judging, and a real ONNX graph."""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from nimbuild.builder import gate
from nimbuild.errors import NimbuildError
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
    assert set(d) == {"passed", "metrics", "thresholds", "failures", "n_queries", "n_pairs", "notes", "reference"}
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


def test_the_label_bound_is_one_more_typed_bound_per_precision(tmp_path):
    from nimbuild.recipe import load_recipe

    wide = GateThresholds(top1=0.95, label_ndcg10_drop=0.02)
    assert wide.label_bounds() == {"label_ndcg10_drop": 0.02}
    assert ("label_ndcg10_drop", 0.02, False) in list(wide.bounds())  # a loss: judged as <=
    assert wide.agreement_only() == GateThresholds(top1=0.95) and GateThresholds().label_bounds() == {}
    assert GateThresholds.from_mapping({"label_ndcg10_drop": 0.1}).label_ndcg10_drop == 0.1
    assert wide.tightened(label_ndcg10_drop=0.01).label_ndcg10_drop == 0.01  # stricter is lower
    assert wide.tightened(label_ndcg10_drop=0.5).label_ndcg10_drop == 0.02
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: r\nsource: {path: m}\n"
        "thresholds: {label_ndcg10_drop: 0.02, int8: {label_ndcg10_drop: 0.05}, fp16: {label_ndcg10_drop: null}}\n"
    )
    by = load_recipe(recipe).thresholds.by_precision
    assert {p: t.label_ndcg10_drop for p, t in by.items()} == {"fp32": 0.02, "fp16": None, "fp8": 0.02, "int8": 0.05}
    recipe.write_text("name: r\nsource: {path: m}\nthresholds: {label_ndcg10_drop: -0.1}\n")
    with pytest.raises(NimbuildError, match="label_ndcg10_drop"):
        load_recipe(recipe)


def test_saved_gate_inputs_carry_the_labels_and_refuse_broken_ones(tmp_path):
    feeds = [{"input_ids": np.arange(6, dtype=np.int64).reshape(3, 2)}, {"input_ids": np.ones((2, 2), np.int64)}]
    reference = [np.array([0.3, 0.2, 0.1]), np.array([1.0, 2.0])]
    path = tmp_path / "g.npz"
    entry = gate.save_inputs(path, feeds, reference, [(1, 0, 2), (0, 1)])
    assert entry["labeled"] is True and entry["queries"] == 2
    back = gate.load_inputs(path, ["input_ids"], entry["sha256"])
    assert back.labels == [(1, 0, 2), (0, 1)] and [r.tolist() for r in back.reference] == [[0.3, 0.2, 0.1], [1, 2]]
    plain = gate.save_inputs(tmp_path / "plain.npz", feeds, reference)
    assert plain["labeled"] is False and gate.load_inputs(tmp_path / "plain.npz", ["input_ids"]).labels is None
    assert plain["sha256"] != entry["sha256"]
    with pytest.raises(ValueError, match="2 labels for 3 reference scores"):
        gate.save_inputs(tmp_path / "x.npz", feeds, reference, [(1, 0), (0, 1)])
    with pytest.raises(ValueError, match="reserve"):
        gate.save_inputs(tmp_path / "x.npz", [{"labels": f["input_ids"]} for f in feeds], reference)

    def rewritten(name: str, change) -> Path:
        out = tmp_path / name
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
            for item in src.infolist():
                data = change(item.filename, src.read(item))
                if data is not None:
                    dst.writestr(item, data)
        return out

    def npy(array: np.ndarray) -> bytes:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, array)
        return buf.getvalue()

    half = rewritten("half.npz", lambda n, d: None if n == "q000001/labels.npy" else d)
    with pytest.raises(NimbuildError, match="query q000001 lacks labels"):
        gate.load_inputs(half, ["input_ids"])
    late = rewritten("late.npz", lambda n, d: None if n == "q000000/labels.npy" else d)
    with pytest.raises(NimbuildError, match="query q000001 has labels, the first query has none"):
        gate.load_inputs(late, ["input_ids"])
    negative = rewritten("neg.npz", lambda n, d: npy(np.array([1, -1, 0])) if n == "q000000/labels.npy" else d)
    with pytest.raises(NimbuildError, match="not one non-negative integer per score"):
        gate.load_inputs(negative, ["input_ids"])
    floats = rewritten("float.npz", lambda n, d: npy(np.array([0.5, 1.0])) if n == "q000001/labels.npy" else d)
    with pytest.raises(NimbuildError, match="not one non-negative integer per score"):
        gate.load_inputs(floats, ["input_ids"])


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


# ----------------------------------------------------------------------------- labels


def test_label_ndcg_and_mrr_by_hand():
    labels = np.array([0, 2, 0, 1])
    # scores put passage 1 (grade 2) first, then 0, 3, 2: DCG = 2/log2(2) + 0 + 1/log2(4) = 2.5
    scores = np.array([0.5, 0.9, 0.1, 0.3])
    ideal = 2 / np.log2(2) + 1 / np.log2(3)
    assert gate.label_ndcg_at_k(labels, scores) == pytest.approx(2.5 / ideal)
    assert gate.reciprocal_rank_at_k(labels, scores) == 1.0
    worst = -scores
    assert gate.reciprocal_rank_at_k(labels, worst) == pytest.approx(1 / 2)  # 2, 3 (grade 1) ...
    # a relevant passage below the cut-off counts nothing; no relevant passage at all is undefined
    assert gate.reciprocal_rank_at_k(np.array([0, 0, 1]), np.array([3.0, 2.0, 1.0]), k=2) == 0.0
    assert np.isnan(gate.label_ndcg_at_k(np.zeros(3), np.arange(3.0)))


def test_label_metrics_skip_queries_without_a_relevant_passage():
    labels = [(1, 0, 0), (0, 0, 0), (0, 0, 1)]
    scores = [np.array([3.0, 2.0, 1.0]), np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])]
    m = gate.label_metrics(labels, scores)
    assert m["labeled_queries"] == 2
    assert m["label_mrr10"] == pytest.approx((1 + 1 / 3) / 2)
    assert m["label_ndcg10"] == pytest.approx((1 + 1 / np.log2(4)) / 2)
    with pytest.raises(ValueError, match="query 0"):
        gate.label_metrics([(1, 0)], [np.array([1.0, 2.0, 3.0])])


class _FixedSession:
    """An ORT-like session that returns given scores per query (in call order)."""

    def __init__(self, scores):
        self._scores = list(scores)

    def get_inputs(self):
        class _In:
            name = "input_ids"

        return [_In()]

    def run(self, _names, feed):
        return [self._scores.pop(0).reshape(-1, 1)]


def test_run_gate_reports_label_quality_beside_agreement_and_bounds_its_loss():
    feeds = [{"input_ids": np.zeros((3, 4), dtype=np.int64)} for _ in range(2)]
    reference = [np.array([3.0, 2.0, 1.0]), np.array([1.0, 3.0, 2.0])]
    labels = [(1, 0, 0), (0, 1, 0)]
    # the candidate swaps query 1's top two: agreement and label quality both drop
    candidate = [np.array([3.0, 2.0, 1.0]), np.array([1.0, 2.0, 3.0])]
    result = gate.run_gate(
        _FixedSession(candidate), feeds, reference, GateThresholds(label_ndcg10_drop=0.1), labels=labels
    )
    m = result.metrics
    assert result.reference["label_ndcg10"] == 1.0 and result.reference["label_mrr10"] == 1.0
    assert m["label_ndcg10"] == pytest.approx((1 + 1 / np.log2(3)) / 2)
    assert m["label_mrr10"] == pytest.approx(0.75)
    assert m["label_ndcg10_drop"] == pytest.approx(1 - m["label_ndcg10"])
    assert not result.passed and result.failures[0].startswith("label_ndcg10_drop 0.185 > 0.1")
    d = result.to_dict()
    assert d["reference"]["label_ndcg10"] == 1.0 and d["metrics"]["label_ndcg10_drop"] > 0.18
    # within the bound it passes; without labels there is no label metric and a bound on it fails as undefined
    assert gate.run_gate(
        _FixedSession(candidate), feeds, reference, GateThresholds(label_ndcg10_drop=0.2), labels=labels
    ).passed
    unlabeled = gate.run_gate(_FixedSession(candidate), feeds, reference, GateThresholds(label_ndcg10_drop=0.2))
    assert "label_ndcg10" not in unlabeled.metrics
    assert unlabeled.failures == ["label_ndcg10_drop undefined (threshold 0.2)"]
