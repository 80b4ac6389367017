"""CPU classes: the 7-bit (``avx2``) and the full-range (``avx512_vnni``) INT8 graphs, side by side, on this CPU.

For each model (the MiniLM-L6-sized random BERT of benchmarks/common.py; with ``--real-model DIR`` also a
BERT with real weights, e.g. all-MiniLM-L6-v2, its score head fitted as common._fit_head does):

- accuracy against the PyTorch FP32 reference (the gate's metrics) of the FP32 graph, the 7-bit graph and
  the full-range graph as ONNX Runtime runs them *here*, and of each graph's **exact twin**
  (nimbuild.builder.precision.exact: the same integers, run by MLAS's U8U8 kernel, which cannot
  saturate): what a VNNI (or arm64) CPU computes from that graph;
- whether a graph's integers are exact on this CPU: max |graph - twin| over every logit (0 when the
  graph's kernel did not saturate; the float epilogue is the same code);
- throughput (pairs/s, batch 32, seq 128, in turns) of FP32 and both INT8 graphs here.

    .venv/bin/python benchmarks/bench_cpu_isa.py [--queries 24] [--repeats 3] [--real-model DIR]

Writes WORK/cpu_isa.json (default /tmp/nimbuild-bench) and prints the tables of RESULTS-cpu-isa.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    _fit_head,
    build_minilm_sized,
    encode_groups,
    machine,
    synthetic_groups,
    time_round_robin,
    write_json,
)

SEQ, BATCH = 128, 32


def real_model(src: Path, work: Path, seed: int = 0) -> Path:
    """A cross-encoder from a BERT checkpoint with real weights: its encoder as is, the score head fitted."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    out = work / f"real-{src.name}"
    if (out / "model.safetensors").is_file():
        return out
    model = BertForSequenceClassification.from_pretrained(src, num_labels=1).eval()
    torch.manual_seed(seed)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    _fit_head(model, src, seed)
    model.save_pretrained(out)
    return out


def measure(model_dir: Path, work: Path, n_queries: int, repeats: int) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from nimbuild.builder.export import export_fp32
    from nimbuild.builder.gate import ranking_metrics
    from nimbuild.builder.precision.common import cpu_session, feeds_for
    from nimbuild.builder.precision.exact import exact_twin
    from nimbuild.builder.precision.int8 import build_cpu_int8

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    cfg = AutoConfig.from_pretrained(model_dir)
    groups = synthetic_groups(n_queries, BATCH, seed=1)
    feeds = encode_groups(tokenizer, groups, SEQ)
    calibration = encode_groups(tokenizer, synthetic_groups(8, BATCH, seed=2, passage_words=(10, 140)), SEQ)
    ref_model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        reference = [ref_model(**{k: torch.from_numpy(v) for k, v in f.items()}).logits.numpy().ravel() for f in feeds]
    shapes = {"batch": {"min": 1, "opt": BATCH, "max": 64}, "sequence": {"min": 1, "opt": SEQ, "max": 512}}
    export_fp32(model_dir, work / "onnx" / "fp32", shapes)
    fp32 = work / "onnx" / "fp32" / "model.onnx"
    graphs = {"fp32": fp32}
    for cls, reduce_range in (("avx2", True), ("avx512_vnni", False)):
        path = work / f"int8-{cls}" / "model.onnx"
        build_cpu_int8(
            fp32,
            path,
            "BertForSequenceClassification",
            calibration=calibration,
            reduce_range=reduce_range,
            num_heads=cfg.num_attention_heads,
            hidden_size=cfg.hidden_size,
        )
        graphs[f"int8-{cls}"] = path
        twin = work / f"int8-{cls}" / "twin.onnx"
        exact_twin(path, twin)
        graphs[f"int8-{cls} exact twin"] = twin
    sessions = {name: cpu_session(path) for name, path in graphs.items()}
    scores = {name: [s.run(None, f)[0].ravel() for f in feeds_for(s, feeds)] for name, s in sessions.items()}
    result: dict = {"model": str(model_dir), "queries": n_queries, "passages": BATCH, "seq": SEQ, "graphs": {}}
    for name, got in scores.items():
        m = ranking_metrics(reference, got)
        result["graphs"][name] = {k: round(float(m[k]), 4) for k in ("top1", "spearman", "ndcg10", "max_abs_logit")}
    for cls in ("avx2", "avx512_vnni"):
        a, b = scores[f"int8-{cls}"], scores[f"int8-{cls} exact twin"]
        result["graphs"][f"int8-{cls}"]["max_abs_vs_exact_twin"] = float(
            max(np.max(np.abs(x - y)) for x, y in zip(a, b, strict=True))
        )
    timed = feeds[: min(8, n_queries)]
    runners = {
        name: (lambda s=sessions[name]: [s.run(None, f) for f in feeds_for(s, timed)])
        for name in ("fp32", "int8-avx2", "int8-avx512_vnni")
    }
    timing = time_round_robin(runners, repeats=repeats)
    for name, t in timing.items():
        result["graphs"][name]["pairs_per_s"] = round(len(timed) * BATCH / t["median_s"], 1)
        result["graphs"][name]["runs_s"] = t["runs_s"]
    base = result["graphs"]["fp32"]["pairs_per_s"]
    for name in runners:
        result["graphs"][name]["x_fp32"] = round(result["graphs"][name]["pairs_per_s"] / base, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queries", type=int, default=24, help="queries (of 32 passages) for accuracy")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--real-model", type=Path, default=None, help="a BERT checkpoint folder with real weights")
    ap.add_argument(
        "--work", default=os.environ.get("NIMBUILD_BENCH_DIR", str(Path(tempfile.gettempdir()) / "nimbuild-bench"))
    )
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from nimbuild import cpu_isa

    work = Path(args.work)
    here = cpu_isa.detect_cpu()
    results: dict = {"machine_before": machine(), "cpu": here.to_dict(), "models": {}}
    models = {"minilm-l6-random": build_minilm_sized(work / "minilm-l6-random")}
    if args.real_model is not None:
        models["minilm-l6-real-weights"] = real_model(args.real_model, work)
    for name, model_dir in models.items():
        print(f"== {name}: {model_dir}", flush=True)
        results["models"][name] = measure(model_dir, work / f"cpu-isa-{name}", args.queries, args.repeats)
    results["machine_after"] = machine()
    out = args.out or str(work / "cpu_isa.json")
    write_json(out, results)
    print(f"\nCPU: {here.describe()}")
    for name, r in results["models"].items():
        print(f"\n{name} ({r['queries']} queries x {r['passages']} passages, seq {r['seq']})")
        print(
            f"{'graph':28} {'top1':>6} {'spearman':>9} {'ndcg10':>7} {'max|dl|':>8} {'|g-twin|':>9} "
            f"{'pairs/s':>8} {'x fp32':>7}"
        )
        for g, m in r["graphs"].items():
            twin = m.get("max_abs_vs_exact_twin")
            print(
                f"{g:28} {m['top1']:6.3f} {m['spearman']:9.4f} {m['ndcg10']:7.4f} {m['max_abs_logit']:8.3f} "
                f"{'-' if twin is None else format(twin, '.2e'):>9} "
                f"{m.get('pairs_per_s', '-'):>8} {m.get('x_fp32', '-'):>7}"
            )
    print(f"\nload: {results['machine_before']['uptime']} -> {results['machine_after']['uptime']}\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
