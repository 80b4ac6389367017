"""Precision benchmark: FP32 vs CPU-INT8 in ONNX Runtime, side by side with sentence-transformers.

On a MiniLM-L6-sized random BERT cross-encoder (hidden 384, 6 layers, 12 heads, intermediate
1536), sequence 128, batch 32, on the CPU:

- throughput (pairs/s, tokenization included everywhere) of ``CrossEncoder.predict`` (PyTorch
  FP32, the alternative), ONNX Runtime on the FP32 graph, and ONNX Runtime on nimbuild's
  cpu-int8 graph (dynamic, and static for comparison), as ratios to sentence-transformers;
- top-1 agreement (and Spearman) of each graph against the PyTorch FP32 reference on the
  benchmark's pairs; target: cpu-int8 >= 2x sentence-transformers with top-1 >= 0.95;
- the FP16 and FP8 graphs' gate figures (ONNX Runtime CPU; FP8 as simulated quantization).

    .venv/bin/python benchmarks/bench_precision.py [--queries 16] [--accuracy-queries 48] [--repeats 2]

Writes WORK/precision.json (default /tmp/nimbuild-bench) and prints a table. The machine is shared: the
``uptime`` load is recorded with the figures.
"""

from __future__ import annotations

import argparse
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

SEQ, BATCH = 128, 32


def agreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict:
    """The accuracy gate's own figures (nimbuild.builder.gate), rounded for the table."""
    from nimbuild.builder.gate import ranking_metrics

    m = ranking_metrics(reference, candidate)
    return {k: round(m[k], 4) for k in ("top1", "spearman", "max_abs_logit")}


def export_fp32(model_dir: Path, out_dir: Path) -> tuple[Path, str]:
    """nimbuild's own FP32 export: what ships."""
    from nimbuild.builder.export import export_fp32 as nimbuild_export

    shapes = {"batch": {"min": 1, "opt": BATCH, "max": 64}, "sequence": {"min": 1, "opt": SEQ, "max": 512}}
    info = nimbuild_export(model_dir, out_dir / "onnx" / "fp32", shapes)
    return out_dir / "onnx" / "fp32" / "model.onnx", f"nimbuild.builder.export.export_fp32 ({info['exporter']})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=16, help="queries (of 32 passages) timed per engine")
    ap.add_argument("--accuracy-queries", type=int, default=48, help="queries for the top-1 agreement")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--work", default=os.environ.get("NIMBUILD_BENCH_DIR", str(Path(tempfile.gettempdir()) / "nimbuild-bench"))
    )
    ap.add_argument("--out", default=None, help="JSON results (default: WORK/precision.json)")
    ap.add_argument("--skip-gpu-graphs", action="store_true", help="do not build the fp16/fp8 graphs")
    args = ap.parse_args(argv)

    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from nimbuild.builder.precision.common import cpu_session, feeds_for
    from nimbuild.builder.precision.int8 import build_cpu_int8

    work = Path(args.work)
    args.out = args.out or str(work / "precision.json")
    model_dir = build_minilm_sized(work / "minilm-l6-random")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    n_acc = max(args.accuracy_queries, args.queries)
    # 8 more are drawn than used, so that the accuracy queries stay those of the runs in RESULTS-precision.md
    groups = synthetic_groups(n_acc + 8, BATCH, seed=1)[:n_acc]
    feeds = encode_groups(tokenizer, groups, SEQ)
    calibration = encode_groups(tokenizer, synthetic_groups(8, BATCH, seed=2, passage_words=(10, 140)), SEQ)
    seq_lens = sorted({f["input_ids"].shape[1] for f in feeds})
    threads = torch.get_num_threads()
    print(f"model {model_dir}; {n_acc} queries x {BATCH} passages, sequence {seq_lens}; torch threads {threads}")

    # the PyTorch FP32 reference (same weights as sentence-transformers loads)
    t = time.perf_counter()
    ref_model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        reference = [ref_model(**{k: torch.from_numpy(v) for k, v in f.items()}).logits.numpy().ravel() for f in feeds]
    spread = np.mean([r.std() for r in reference])
    print(f"reference: {time.perf_counter() - t:.1f}s; mean per-query score std {spread:.3f}")

    export_dir = work / "export"
    fp32_path, exporter = export_fp32(model_dir, export_dir)
    graphs = {"onnx-fp32": (fp32_path, {})}
    for mode in ("dynamic", "static"):
        path = work / f"int8-{mode}" / "model.onnx"
        t = time.perf_counter()
        info = build_cpu_int8(
            fp32_path,
            path,
            "BertForSequenceClassification",
            calibration=calibration,
            mode=mode,
            num_heads=12,
            hidden_size=384,
        )
        graphs[f"onnx-int8-{mode}"] = (path, {"build_s": round(time.perf_counter() - t, 1), "notes": info["notes"]})

    results: dict = {
        "machine_before": machine(),
        "exporter": exporter,
        "seq": SEQ,
        "batch": BATCH,
        "timed_pairs": args.queries * BATCH,
        "accuracy_pairs": n_acc * BATCH,
        "engines": {},
    }

    timed_groups = groups[: args.queries]
    pairs = [(g["query"], p) for g in timed_groups for p in g["passages"]]

    # sentence-transformers (the alternative): tokenization + PyTorch FP32, batch 32
    ce = CrossEncoder(str(model_dir), max_length=SEQ, device="cpu")
    runners = {"sentence-transformers": lambda: ce.predict(pairs, batch_size=BATCH, show_progress_bar=False)}
    sessions = {name: cpu_session(path) for name, (path, _) in graphs.items()}

    def ort_runner(sess):
        def run():
            for g in timed_groups:  # tokenization included, as CrossEncoder.predict does it
                enc = tokenizer(
                    [g["query"]] * len(g["passages"]),
                    g["passages"],
                    truncation=True,
                    max_length=SEQ,
                    padding=True,
                    return_tensors="np",
                )
                f = {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}
                sess.run(None, next(feeds_for(sess, [f])))

        return run

    runners.update({name: ort_runner(sess) for name, sess in sessions.items()})
    timings = time_round_robin(runners, repeats=args.repeats)

    st_scores = ce.predict(
        [(g["query"], p) for g in groups for p in g["passages"]],
        batch_size=BATCH,
        show_progress_bar=False,
        activation_fn=torch.nn.Identity(),
    )
    scores = {
        "sentence-transformers": [np.asarray(st_scores[i * BATCH : (i + 1) * BATCH]).ravel() for i in range(n_acc)]
    }
    for name, sess in sessions.items():
        scores[name] = [sess.run(None, f)[0].ravel() for f in feeds_for(sess, feeds)]
    for name, timing in timings.items():
        extra = graphs.get(name, (None, {}))[1]
        results["engines"][name] = {
            "pairs_per_s": round(len(pairs) / timing["median_s"], 1),
            **timing,
            **agreement(reference, scores[name]),
            **extra,
        }

    base = results["engines"]["sentence-transformers"]["pairs_per_s"]
    fp32_ort = results["engines"]["onnx-fp32"]["pairs_per_s"]
    for e in results["engines"].values():
        e["x_sentence_transformers"] = round(e["pairs_per_s"] / base, 2)
        e["x_onnx_fp32"] = round(e["pairs_per_s"] / fp32_ort, 2)

    if not args.skip_gpu_graphs:
        results["gate_graphs"] = gpu_graph_gates(fp32_path, export_dir, model_dir, calibration, feeds, reference)
    results["machine_after"] = machine()
    write_json(args.out, results)

    print(f"\n{'engine':24} {'pairs/s':>9} {'x ST':>6} {'x ORT32':>8} {'top1':>6} {'spearman':>9} {'max|dl|':>8}")
    for name, e in results["engines"].items():
        print(
            f"{name:24} {e['pairs_per_s']:9.1f} {e['x_sentence_transformers']:6.2f} {e['x_onnx_fp32']:8.2f} "
            f"{e['top1']:6.3f} {e['spearman']:9.4f} {e['max_abs_logit']:8.3f}"
        )
    for name, e in results.get("gate_graphs", {}).items():
        m = (e.get("gate") or {}).get("metrics", {})
        print(
            f"gate {name:5} {e['status']:9} top1 {m.get('top1')} spearman {m.get('spearman')} "
            f"max|dl| {m.get('max_abs_logit')} {e.get('reason') or ''}"
        )
    print(f"\nload: {results['machine_before']['uptime']} -> {results['machine_after']['uptime']}\nwrote {args.out}")
    return 0


def gpu_graph_gates(fp32_path, export_dir, model_dir, calibration, feeds, reference) -> dict:
    """fp16/fp8/int8 through build_precisions and nimbuild's gate, with the bundled example recipe's thresholds
    (the recipe defaults, and its own fp8 bars for random weights: see recipes/example-tiny.yaml)."""
    from nimbuild.builder.precision import build_precisions
    from nimbuild.output import Output
    from nimbuild.recipe import load_recipe

    thresholds = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "example-tiny.yaml").thresholds
    return build_precisions(
        fp32_path,
        export_dir,
        ["fp16", "fp8", "int8"],
        architecture="BertForSequenceClassification",
        input_names=list(feeds[0]),
        calibration=calibration,
        evaluation=feeds,
        reference=reference,
        thresholds=thresholds.by_precision,
        out=Output(quiet=True),
        config_dir=model_dir,
    )


if __name__ == "__main__":
    sys.exit(main())
