"""Precision benchmark on a real reranker: INT8/FP8 variants side by side with sentence-transformers.

In one run, on the CPU, sequence <= 128, batch 32 (one query's passages per call):

- throughput (pairs/s, tokenization included everywhere) of ``CrossEncoder.predict`` (PyTorch FP32,
  the alternative), ONNX Runtime on the FP32 graph, and ONNX Runtime on every cpu-int8 variant
  (``INT8_VARIANTS``; the shipped scheme is ``int8.DEFAULT_SCHEME``), as ratios to sentence-transformers;
- each graph's agreement with the PyTorch FP32 reference (the gate's own metrics: top-1, Spearman,
  NDCG@10) and whether it passes the recipe-wide default gate (top-1 0.95, Spearman 0.95, NDCG@10 0.98);
- where the pairs carry ``labels``: NDCG@10 and MRR@10 against the labels, for every engine;
- the FP8 graph variants (``FP8_VARIANTS``: ONNX Runtime's simulated FP8, no speed on a CPU);
- ``--sensitivity``: one class of MatMuls (Q/K/V, attention-out, FFN-up, FFN-down) quantized at a time,
  the rest FP32, and one layer at a time, for INT8 and FP8: which layers cost the ranking.

    .venv/bin/python benchmarks/bench_precision.py --model DIR --pairs GATE.jsonl --calibration CAL.jsonl \\
        [--queries 16] [--repeats 3] [--variants all|shipped|int8|fp8|NAME;NAME...] [--sensitivity] [--work DIR]

``--model`` is a Hugging Face cross-encoder folder (the real test bed, or benchmarks/minilm_standin.py's);
without it, a MiniLM-L6-shaped *random* model and synthetic pairs (speed only: random weights lack the
outlier channels that make real ones hard to quantize). Calibration pairs must not be the gate's.
Writes WORK/precision.json and prints the tables; the machine's CPU flags and ``uptime`` go with them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    build_minilm_sized,
    encode_groups,
    machine,
    synthetic_groups,
    time_round_robin,
    write_json,
)
from nimbuild.builder.precision.fp8 import Fp8Scheme  # noqa: E402
from nimbuild.builder.precision.int8 import DEFAULT_SCHEME, Int8Scheme  # noqa: E402
from nimbuild.thresholds import GateThresholds  # noqa: E402

SEQ, BATCH = 128, 32
# recipe.Thresholds' defaults, no loosening
DEFAULT_GATE = GateThresholds(top1=0.95, spearman=0.95, ndcg10=0.98)

# every INT8 variant measured (RESULTS-precision.md); "shipped" is what build_cpu_int8 uses by default.
# Names starting "vnni:" get full 8-bit weights (reduce_range False: the avx512_vnni class), judged twice: as
# this CPU's kernel runs them and through exact.exact_twin (the VNNI class's integer arithmetic, emulated here).
_PER_BATCH = {"per_token": (), "keep_fp32": ()}  # every activation with one scale per batch, as ORT alone does
INT8_VARIANTS: dict[str, Int8Scheme] = {
    "per-tensor, embeddings int8 (main before)": Int8Scheme(
        per_channel=False, smooth_alpha=None, quantize_embeddings=True, **_PER_BATCH
    ),
    "per-channel": Int8Scheme(smooth_alpha=None, **_PER_BATCH),
    "per-channel + SmoothQuant 0.5": Int8Scheme(**_PER_BATCH),
    "per-channel + SmoothQuant 0.7": Int8Scheme(smooth_alpha=0.7, **_PER_BATCH),
    "per-channel + SQ 0.5, FFN-down FP32": Int8Scheme(keep_fp32=("ffn_down",), per_token=()),
    "shipped": DEFAULT_SCHEME,
    "shipped, SmoothQuant 0.7": Int8Scheme(smooth_alpha=0.7),
    "shipped, no SmoothQuant": Int8Scheme(smooth_alpha=None),
    "shipped, per-tensor weights": Int8Scheme(per_channel=False),
    "shipped + per-token attention-out": Int8Scheme(per_token=("ffn_down", "attention_out")),
    "per-token FFN-down + FFN-up + attention-out": Int8Scheme(per_token=("ffn_down", "ffn_up", "attention_out")),
    "shipped, static QDQ (per-batch)": Int8Scheme(mode="static", per_token=()),
    "vnni: shipped, full 8-bit weights": DEFAULT_SCHEME,
    "vnni: per-channel + SQ 0.5, full 8-bit weights": Int8Scheme(**_PER_BATCH),
}
FP8_VARIANTS: dict[str, Fp8Scheme] = {
    "projections + fused-MHA BMMs (ModelOpt placement)": Fp8Scheme(),
    "projections only": Fp8Scheme(attention_bmms=False),
    "per-channel weights": Fp8Scheme(per_channel_weights=True),
    "per-channel weights, projections only": Fp8Scheme(attention_bmms=False, per_channel_weights=True),
    "per-channel weights, pooler high precision": Fp8Scheme(per_channel_weights=True, keep=("pooler",)),
    "per-channel weights, FFN-down high precision": Fp8Scheme(per_channel_weights=True, keep=("ffn_down", "pooler")),
    "per-channel weights + SmoothQuant 0.5": Fp8Scheme(per_channel_weights=True, smooth_alpha=0.5, keep=("pooler",)),
    "per-channel weights, activations at the 99.99th percentile": Fp8Scheme(
        per_channel_weights=True, activation_percentile=99.99, keep=("pooler",)
    ),
}
CLASSES = ("attention_qkv", "attention_out", "ffn_up", "ffn_down")


def load_groups(path: Path) -> list[dict]:
    """``{"query", "passages"[, "labels"]}`` lines."""
    groups = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                groups.append(json.loads(line))
    return groups


def export_fp32(model_dir: Path, out_dir: Path) -> Path:
    """nimbuild's own FP32 export (what ships), once per model folder."""
    from nimbuild.builder.export import export_fp32 as nimbuild_export

    path = out_dir / "onnx" / "fp32" / "model.onnx"
    if not path.is_file():
        shapes = {"batch": {"min": 1, "opt": BATCH, "max": 64}, "sequence": {"min": 1, "opt": SEQ, "max": 512}}
        nimbuild_export(model_dir, path.parent, shapes)
    return path


def mrr_at_10(labels: np.ndarray, scores: np.ndarray) -> float:
    order = np.argsort(-scores, kind="mergesort")[:10]
    hits = np.flatnonzero(labels[order] > 0)
    return 1.0 / (hits[0] + 1) if hits.size else 0.0


def figures(reference, scores, labels) -> dict:
    """The gate's own metrics vs the FP32 reference, the default gate's verdict, and label quality."""
    from nimbuild.builder.gate import judge, ndcg_at_k, ranking_metrics

    m = ranking_metrics(reference, scores)
    out = {k: round(m[k], 4) for k in ("top1", "spearman", "ndcg10", "max_abs_logit")}
    out["default_gate"] = "pass" if judge(m, DEFAULT_GATE).passed else "FAIL"
    if labels is not None:
        out["label_ndcg10"] = round(
            float(np.mean([ndcg_at_k(lab, s) for lab, s in zip(labels, scores, strict=True)])), 4
        )
        out["label_mrr10"] = round(
            float(np.mean([mrr_at_10(lab, s) for lab, s in zip(labels, scores, strict=True)])), 4
        )
    return out


def session_scores(session, feeds) -> list[np.ndarray]:
    from nimbuild.builder.gate import session_scores as scores

    return scores(session, feeds)


def build_int8(fp32: Path, work: Path, name: str, scheme: Int8Scheme, calibration, heads: int, hidden: int) -> dict:
    from nimbuild.builder.precision.int8 import build_cpu_int8

    path = work / "int8" / _slug(name) / "model.onnx"
    t = time.perf_counter()
    info = build_cpu_int8(
        fp32,
        path,
        "BertForSequenceClassification",
        calibration=calibration,
        reduce_range=not name.startswith("vnni:"),  # 7-bit: the avx2 class; full range: avx512_vnni
        scheme=scheme,
        num_heads=heads,
        hidden_size=hidden,
    )
    return {"path": path, "build_s": round(time.perf_counter() - t, 1), "notes": info["notes"]}


def build_fp8(fp32: Path, work: Path, name: str, scheme: Fp8Scheme, calibration) -> dict:
    from nimbuild.builder.precision.fp8 import build_fp8 as build

    path = work / "fp8" / _slug(name) / "model.onnx"
    t = time.perf_counter()
    info = build(fp32, path, calibration, scheme)
    return {"path": path, "build_s": round(time.perf_counter() - t, 1), "notes": info["notes"]}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def sensitivity(fp32, work, calibration, feeds, reference, labels, heads, hidden, layers: int) -> dict:
    """One class, then one layer at a time in INT8 (the shipped scheme) and FP8; the rest FP32."""
    from nimbuild.builder.precision.common import cpu_session

    rows: dict[str, dict] = {}
    others = lambda keep: tuple(c for c in CLASSES if c not in keep) + ("pooler", "other")  # noqa: E731
    per_batch = {**DEFAULT_SCHEME.to_dict(), "per_token": ()}  # each class's cost with one scale per batch
    for cls in CLASSES:
        scheme = Int8Scheme(**{**per_batch, "keep_fp32": others((cls,))})
        b = build_int8(fp32, work / "sens", f"int8 only {cls}", scheme, calibration, heads, hidden)
        rows[f"int8 only {cls}"] = figures(reference, session_scores(cpu_session(b["path"]), feeds), labels)
        f = build_fp8(
            fp32, work / "sens", f"fp8 only {cls}", Fp8Scheme(attention_bmms=False, keep=others((cls,))), calibration
        )
        rows[f"fp8 only {cls}"] = figures(
            reference, session_scores(cpu_session(f["path"], fp8_qdq=True), feeds), labels
        )
        print(f"sensitivity {cls}: int8 {rows[f'int8 only {cls}']} fp8 {rows[f'fp8 only {cls}']}", flush=True)
    for layer in range(layers):
        keep = tuple(f"{c}:{i}" for c in CLASSES for i in range(layers) if i != layer) + ("pooler", "other")
        b = build_int8(
            fp32,
            work / "sens",
            f"int8 only layer {layer}",
            Int8Scheme(**{**per_batch, "keep_fp32": keep}),
            calibration,
            heads,
            hidden,
        )
        rows[f"int8 only layer {layer}"] = figures(reference, session_scores(cpu_session(b["path"]), feeds), labels)
        f = build_fp8(
            fp32, work / "sens", f"fp8 only layer {layer}", Fp8Scheme(attention_bmms=False, keep=keep), calibration
        )
        rows[f"fp8 only layer {layer}"] = figures(
            reference, session_scores(cpu_session(f["path"], fp8_qdq=True), feeds), labels
        )
        print(
            f"sensitivity layer {layer}: int8 {rows[f'int8 only layer {layer}']} fp8 {rows[f'fp8 only layer {layer}']}",
            flush=True,
        )
    return rows


def variant_names(spec: str) -> tuple[list[str], list[str]]:
    """(INT8, FP8) variant names: ``all``, ``shipped``, ``int8``, ``fp8``, or names separated by ``;``."""
    if spec in ("all", "int8", "fp8"):
        return (list(INT8_VARIANTS) if spec != "fp8" else []), (list(FP8_VARIANTS) if spec != "int8" else [])
    wanted = {"shipped"} if spec == "shipped" else {n.strip() for n in spec.split(";")}
    unknown = wanted - set(INT8_VARIANTS) - set(FP8_VARIANTS)
    if unknown:
        raise SystemExit(
            f"error: unknown variants {sorted(unknown)}; known: {list(INT8_VARIANTS) + list(FP8_VARIANTS)}"
        )
    return [n for n in INT8_VARIANTS if n in wanted], [n for n in FP8_VARIANTS if n in wanted]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="cross-encoder folder (default: a random MiniLM-L6 shape)")
    ap.add_argument("--pairs", type=Path, default=None, help="gate pairs JSONL (query, passages[, labels])")
    ap.add_argument("--calibration", type=Path, default=None, help="calibration pairs JSONL (not the gate's)")
    ap.add_argument("--gate-queries", type=int, default=96, help="at most this many gate queries")
    ap.add_argument("--queries", type=int, default=16, help="queries timed per engine")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="all", help="all, shipped, int8, fp8, or variant names separated by ';'")
    ap.add_argument("--sensitivity", action="store_true", help="also one class / one layer at a time")
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument(
        "--work", default=os.environ.get("NIMBUILD_BENCH_DIR", str(Path(tempfile.gettempdir()) / "nimbuild-bench"))
    )
    ap.add_argument("--out", default=None, help="JSON results (default: WORK/precision.json)")
    args = ap.parse_args(argv)

    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from nimbuild.builder.precision.common import cpu_session, feeds_for
    from nimbuild.builder.precision.int8 import attention_shape

    work = Path(args.work)
    if args.model is None:
        model_dir = build_minilm_sized(work / "minilm-l6-random")
        gate_groups = synthetic_groups(48, BATCH, seed=1)
        calib_groups = synthetic_groups(8, BATCH, seed=2, passage_words=(10, 140))
    else:
        if not args.pairs or not args.calibration:
            ap.error("--model needs --pairs and --calibration")
        model_dir = args.model
        gate_groups = load_groups(args.pairs)[: args.gate_queries]
        calib_groups = load_groups(args.calibration)
    key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:8]
    work = work / f"{_slug(model_dir.resolve().name)}-{key}"
    work.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    feeds = encode_groups(tokenizer, gate_groups, SEQ)
    calibration = encode_groups(tokenizer, calib_groups, SEQ)
    labels = (
        [np.asarray(g["labels"], dtype=np.float64) for g in gate_groups]
        if all("labels" in g for g in gate_groups)
        else None
    )
    heads, hidden = attention_shape([model_dir])
    layers = int(getattr(AutoConfig.from_pretrained(model_dir), "num_hidden_layers", 0))
    n_pairs = sum(len(g["passages"]) for g in gate_groups)
    print(f"model {model_dir}: {len(gate_groups)} gate queries ({n_pairs} pairs), {len(calib_groups)} calibration")

    t = time.perf_counter()
    # the PyTorch reference, once per model, pairs and sequence length (minutes for 2000 pairs on 2 cores)
    pairs_key = hashlib.sha256(json.dumps([gate_groups, SEQ]).encode()).hexdigest()[:12]
    cached = work / f"reference-{pairs_key}.npz"
    if cached.is_file():
        with np.load(cached) as z:
            reference = [z[f"q{i}"] for i in range(len(feeds))]
    else:
        ref_model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        with torch.inference_mode():
            reference = [
                ref_model(**{k: torch.from_numpy(v) for k, v in f.items()}).logits.numpy()[:, -1] for f in feeds
            ]
        np.savez(cached, **{f"q{i}": r for i, r in enumerate(reference)})
    print(f"reference: {time.perf_counter() - t:.1f}s")

    fp32 = export_fp32(model_dir, work / "export")
    int8_names, fp8_names = variant_names(args.variants)
    graphs: dict[str, dict] = {"onnx fp32": {"path": fp32}}
    twins: dict[str, dict] = {}  # full-range graphs as a VNNI CPU computes them (emulated exactly; not timed)
    for name in int8_names:
        graphs[f"int8 {name}"] = build_int8(fp32, work, name, INT8_VARIANTS[name], calibration, heads, hidden)
        print(f"built int8 {name} ({graphs[f'int8 {name}']['build_s']}s)", flush=True)
        if name.startswith("vnni:"):
            from nimbuild.builder.precision.exact import exact_twin

            twin = graphs[f"int8 {name}"]["path"].with_name("exact-twin.onnx")
            exact_twin(graphs[f"int8 {name}"]["path"], twin)
            twins[f"int8 {name} [exact twin: VNNI-class emulation]"] = {"path": twin}
            graphs[f"int8 {name} [this AVX2 CPU's kernel]"] = graphs.pop(f"int8 {name}")

    results: dict = {
        "machine_before": machine(),
        "model": str(model_dir),
        "pairs": str(args.pairs),
        "seq": SEQ,
        "batch": BATCH,
        "gate_queries": len(gate_groups),
        "gate_pairs": n_pairs,
        "timed_pairs": sum(len(g["passages"]) for g in gate_groups[: args.queries]),
        "engines": {},
    }
    sessions = {name: cpu_session(g["path"]) for name, g in graphs.items()}
    scores = {name: session_scores(s, feeds) for name, s in sessions.items()}
    scores.update({name: session_scores(cpu_session(g["path"]), feeds) for name, g in twins.items()})
    ce = CrossEncoder(str(model_dir), max_length=SEQ, device="cpu")
    st_cached = work / f"sentence-transformers-{pairs_key}.npy"
    if st_cached.is_file():
        st = np.load(st_cached)
    else:
        st = ce.predict(
            [(g["query"], p) for g in gate_groups for p in g["passages"]],
            batch_size=BATCH,
            show_progress_bar=False,
            activation_fn=torch.nn.Identity(),
        )
        np.save(st_cached, np.asarray(st))
    bounds = np.cumsum([0] + [len(g["passages"]) for g in gate_groups])
    scores = {
        "sentence-transformers": [np.asarray(st[a:b]).ravel() for a, b in zip(bounds, bounds[1:], strict=False)],
        **scores,
    }
    scores["pytorch fp32 (reference)"] = reference
    for name, s in scores.items():
        results["engines"][name] = figures(reference, s, labels)
        if name in graphs:
            results["engines"][name].update({k: v for k, v in graphs[name].items() if k != "path"})

    if not args.skip_timing:
        timed = gate_groups[: args.queries]
        pairs = [(g["query"], p) for g in timed for p in g["passages"]]

        def ort_runner(sess):
            def run():
                # tokenization included, as CrossEncoder.predict does it (one query's pairs a call)
                for f in encode_groups(tokenizer, timed, SEQ):
                    sess.run(None, next(feeds_for(sess, [f])))

            return run

        runners = {"sentence-transformers": lambda: ce.predict(pairs, batch_size=BATCH, show_progress_bar=False)}
        runners.update({name: ort_runner(s) for name, s in sessions.items()})
        timings = time_round_robin(runners, repeats=args.repeats)
        base = len(pairs) / timings["sentence-transformers"]["median_s"]
        fp32_rate = len(pairs) / timings["onnx fp32"]["median_s"]
        for name, timing in timings.items():
            rate = len(pairs) / timing["median_s"]
            results["engines"][name].update(
                pairs_per_s=round(rate, 1),
                x_sentence_transformers=round(rate / base, 2),
                x_onnx_fp32=round(rate / fp32_rate, 2),
                runs_s=timing["runs_s"],
            )

    results["fp8"] = {}
    for name in fp8_names:
        b = build_fp8(fp32, work, name, FP8_VARIANTS[name], calibration)
        s = session_scores(cpu_session(b["path"], fp8_qdq=True), feeds)
        results["fp8"][name] = {**figures(reference, s, labels), "build_s": b["build_s"], "notes": b["notes"]}
        print(f"fp8 {name}: {results['fp8'][name]}", flush=True)
    if args.sensitivity:
        results["sensitivity"] = sensitivity(fp32, work, calibration, feeds, reference, labels, heads, hidden, layers)
    results["machine_after"] = machine()
    out = args.out or str(work / "precision.json")
    write_json(out, results)
    print_tables(results)
    print(f"\nload: {results['machine_before']['uptime']} -> {results['machine_after']['uptime']}\nwrote {out}")
    return 0


def print_tables(results: dict) -> None:
    cols = ("top1", "spearman", "ndcg10", "default_gate", "label_ndcg10", "label_mrr10")
    head = f"{'engine':52} {'pairs/s':>8} {'x ST':>5} {'x ORT32':>7} " + " ".join(f"{c:>12}" for c in cols)
    print("\n" + head)
    for name, e in results["engines"].items():
        speed = (
            f"{e['pairs_per_s']:8.1f} {e['x_sentence_transformers']:5.2f} {e['x_onnx_fp32']:7.2f}"
            if "pairs_per_s" in e
            else f"{'-':>8} {'-':>5} {'-':>7}"
        )
        print(f"{name:52} {speed} " + " ".join(f"{str(e.get(c, '-')):>12}" for c in cols))
    for section in ("fp8", "sensitivity"):
        for name, e in results.get(section, {}).items():
            print(f"{section + ' ' + name:52} {'':>22} " + " ".join(f"{str(e.get(c, '-')):>12}" for c in cols))


if __name__ == "__main__":
    sys.exit(main())
