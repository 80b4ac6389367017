"""The accuracy gate: does a graph rank each query's passages as the reference does?

A reranker's user sees orderings, not logits, so the gate judges per query:
top-1 agreement, Spearman and Kendall (tau-b) rank correlation, and NDCG@10 of
the candidate ordering with the reference scores as gains (min-max scaled per
query to [0, 1], since logits can be negative). Metrics are means over queries;
max |Δlogit| is the maximum over all pairs. Thresholds come from the recipe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nimbuild.thresholds import METRICS as THRESHOLD_METRICS
from nimbuild.thresholds import GateThresholds

# metric -> True when higher is better (judged as metric >= threshold), False for max_abs_logit (<=)
METRICS = THRESHOLD_METRICS


@dataclass
class GateResult:
    passed: bool
    metrics: dict[str, float]
    thresholds: dict[str, float | None]
    failures: list[str] = field(default_factory=list)
    n_queries: int = 0
    n_pairs: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "metrics": {
                k: (None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
                for k, v in self.metrics.items()
            },
            "thresholds": dict(self.thresholds),
            "failures": list(self.failures),
            "n_queries": self.n_queries,
            "n_pairs": self.n_pairs,
            "notes": list(self.notes),
        }


# ----------------------------------------------------------------------------- metrics


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), 0-based."""
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2:
        return 1.0
    ra, rb = _ranks(a), _ranks(b)
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0:
        return 1.0 if sa == sb else 0.0
    return float(np.mean((ra - ra.mean()) * (rb - rb.mean())) / (sa * sb))


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-b (handles ties); O(n^2), fine for a query's passages."""
    n = len(a)
    if n < 2:
        return 1.0
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(n, k=1)
    da, db = da[iu], db[iu]
    concord = float(np.sum(da * db))
    n0 = len(da)
    ta, tb = float(np.sum(da == 0)), float(np.sum(db == 0))
    denom = math.sqrt((n0 - ta) * (n0 - tb))
    if denom == 0:
        return 1.0 if ta == tb else 0.0
    return concord / denom


def ndcg_at_k(reference: np.ndarray, candidate: np.ndarray, k: int = 10) -> float:
    """NDCG@k of the candidate's ordering, gains = reference scores scaled to [0, 1]."""
    lo, hi = float(np.min(reference)), float(np.max(reference))
    if hi == lo:
        return 1.0
    gains = (reference - lo) / (hi - lo)
    k = min(k, len(reference))
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    cand_order = np.argsort(-candidate, kind="mergesort")[:k]
    ideal_order = np.argsort(-reference, kind="mergesort")[:k]
    dcg = float(np.sum(gains[cand_order] * discounts))
    idcg = float(np.sum(gains[ideal_order] * discounts))
    return dcg / idcg if idcg > 0 else 1.0


def top1_agrees(reference: np.ndarray, candidate: np.ndarray) -> bool:
    """The candidate's best passage is (one of) the reference's best."""
    best = np.flatnonzero(reference == reference.max())
    return int(np.argmax(candidate)) in set(best.tolist())


def ranking_metrics(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> dict[str, float]:
    """Mean per-query ranking agreement, and max |Δlogit| over all pairs."""
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} reference queries vs {len(candidate)} candidate queries")
    if not reference:
        raise ValueError("no queries to compare")
    top1, sp, kt, nd, worst = [], [], [], [], 0.0
    for i, (r, c) in enumerate(zip(reference, candidate, strict=True)):
        r = np.asarray(r, dtype=np.float64).reshape(-1)
        c = np.asarray(c, dtype=np.float64).reshape(-1)
        if r.shape != c.shape:
            raise ValueError(f"query {i}: {r.shape[0]} reference scores vs {c.shape[0]} candidate scores")
        if not np.all(np.isfinite(c)):
            return {
                "top1": 0.0,
                "spearman": float("nan"),
                "kendall": float("nan"),
                "ndcg10": 0.0,
                "max_abs_logit": float("inf"),
            }
        top1.append(1.0 if top1_agrees(r, c) else 0.0)
        sp.append(spearman(r, c))
        kt.append(kendall(r, c))
        nd.append(ndcg_at_k(r, c, 10))
        worst = max(worst, float(np.max(np.abs(r - c)))) if r.size else worst
    return {
        "top1": float(np.mean(top1)),
        "spearman": float(np.mean(sp)),
        "kendall": float(np.mean(kt)),
        "ndcg10": float(np.mean(nd)),
        "max_abs_logit": worst,
    }


# ----------------------------------------------------------------------------- judging


def judge(
    metrics: Mapping[str, float],
    thresholds: GateThresholds,
    *,
    n_queries: int = 0,
    n_pairs: int = 0,
    notes: Sequence[str] = (),
) -> GateResult:
    """Compare metrics with thresholds; a NaN or missing metric fails any threshold set on it."""
    failures = []
    for name, limit, higher_better in thresholds.bounds():
        value = metrics.get(name)
        if value is None or math.isnan(value):
            failures.append(f"{name} undefined (threshold {limit:g})")
        elif higher_better and value < limit:
            failures.append(f"{name} {value:.4f} < {limit:g}")
        elif not higher_better and value > limit:
            failures.append(f"{name} {value:.3g} > {limit:g}")
    return GateResult(
        passed=not failures,
        metrics=dict(metrics),
        thresholds=thresholds.to_dict(),
        failures=failures,
        n_queries=n_queries,
        n_pairs=n_pairs,
        notes=list(notes),
    )


def scores_from_logits(logits: np.ndarray) -> np.ndarray:
    """The relevance score per row: the logit for one label, the last ("relevant") label otherwise."""
    logits = np.asarray(logits)
    if logits.ndim == 1:
        return logits.astype(np.float64)
    return logits[:, 0 if logits.shape[1] == 1 else -1].astype(np.float64)


def session_scores(
    session: Any, encoded_queries: Sequence[Mapping[str, np.ndarray]], max_batch: int | None = None
) -> list[np.ndarray]:
    """Score every query's passages with an ONNX Runtime session (feeds limited to its inputs)."""
    names = [i.name for i in session.get_inputs()]
    scores = []
    for q, feeds in enumerate(encoded_queries):
        missing = [n for n in names if n not in feeds]
        if missing:
            raise ValueError(f"query {q}: feeds lack graph inputs {missing}")
        n = next(iter(feeds.values())).shape[0]
        step = max_batch or n
        parts = []
        for start in range(0, n, step):
            feed = {k: np.ascontiguousarray(feeds[k][start : start + step], dtype=np.int64) for k in names}
            parts.append(scores_from_logits(session.run(None, feed)[0]))
        scores.append(np.concatenate(parts))
    return scores


def run_gate(
    session_or_path: Any,
    encoded_queries: Sequence[Mapping[str, np.ndarray]],
    reference_scores: Sequence[np.ndarray],
    thresholds: GateThresholds,
    *,
    max_batch: int | None = None,
    notes: Sequence[str] = (),
) -> GateResult:
    """Run a graph (an ORT session, or a path opened on the CPU) on the pairs and judge it."""
    session = session_or_path
    if isinstance(session_or_path, (str, Path)):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(session_or_path), opts, providers=["CPUExecutionProvider"])
    candidate = session_scores(session, encoded_queries, max_batch)
    metrics = ranking_metrics(list(reference_scores), candidate)
    n_pairs = int(sum(len(c) for c in candidate))
    return judge(metrics, thresholds, n_queries=len(candidate), n_pairs=n_pairs, notes=notes)


# ----------------------------------------------------------------------------- saved inputs

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same inputs give the same bytes


def save_inputs(path: str | Path, encoded: Sequence[Mapping[str, np.ndarray]], reference: Sequence[np.ndarray]) -> dict:
    """Write the gate's inputs (each query's encoded feeds and its PyTorch FP32 reference scores) as one .npz.

    What a later step needs to make and judge more precision graphs of the same export without PyTorch or
    the model's weights (``nimbuild export --from-export``: a CI job per CPU class on the export's
    artifact). Members ``q<i>/<input name>`` (int64) and ``q<i>/reference`` (float), deflated, with fixed
    times. Returns the report's ``gate_inputs`` entry: path, sha256, queries.
    """
    import io
    import zipfile

    from nimbuild.fsutil import atomic_write_bytes, sha256_file

    if len(encoded) != len(reference):
        raise ValueError(f"{len(reference)} reference score arrays for {len(encoded)} queries")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, (feeds, ref) in enumerate(zip(encoded, reference, strict=True)):
            for name, array in [*feeds.items(), ("reference", ref)]:
                member = io.BytesIO()
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
                zf.writestr(zipfile.ZipInfo(f"q{i:06d}/{name}.npy", _ZIP_TIME), member.getvalue(), zipfile.ZIP_DEFLATED)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return {"path": path.name, "sha256": sha256_file(path), "queries": len(encoded)}


def load_inputs(
    path: str | Path, input_names: Sequence[str], sha256: str | None = None
) -> tuple[list[dict[str, np.ndarray]], list[np.ndarray]]:
    """(encoded, reference) as :func:`save_inputs` wrote them: checked against ``sha256`` (the report's), the
    graph's ``input_names`` and each query's shape; no pickled object is ever loaded."""
    import zipfile

    from nimbuild.errors import NimbuildError
    from nimbuild.fsutil import sha256_file

    path = Path(path)
    hint = "re-run `nimbuild export` (the export job) with this nimbuild"
    if not path.is_file():
        raise NimbuildError(f"{path}: the export's gate inputs are missing (an older nimbuild made it?)", hint=hint)
    if sha256 is not None and sha256_file(path) != sha256:
        raise NimbuildError(f"{path}: its sha256 is not the one export_report.json records", hint=hint)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise NimbuildError(f"{path}: unreadable gate inputs: {exc}", hint=hint) from None
    queries = sorted({key.split("/", 1)[0] for key in arrays})
    encoded, reference = [], []
    for q in queries:
        feeds, ref = {n: arrays.get(f"{q}/{n}") for n in input_names}, arrays.get(f"{q}/reference")
        missing = [n for n, a in feeds.items() if a is None] + (["reference"] if ref is None else [])
        if missing:
            raise NimbuildError(f"{path}: query {q} lacks {', '.join(missing)}", hint=hint)
        shapes = {a.shape for a in feeds.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2 or ref.shape != (next(iter(shapes))[0],):
            raise NimbuildError(f"{path}: query {q}: feeds {sorted(shapes)} do not match {ref.shape} scores", hint=hint)
        encoded.append({n: a.astype(np.int64, copy=False) for n, a in feeds.items()})
        reference.append(ref)
    if not encoded:
        raise NimbuildError(f"{path}: no query in the gate inputs", hint=hint)
    return encoded, reference
