"""Two or more ONNX graphs of one model timed side by side on real pairs: the first is the baseline.

For a change to a graph builder that keeps the graph's numbers (e.g. per-token INT8's quantizer,
one QuantizeLinear where five element-wise ops were): build the graph before and after the change
(``nimbuild export --from-export`` at each commit), then time both here in turns (A B A B ...,
``common.time_round_robin``) on the same requests, tokenization included as in
``bench_precision.py``, and check that their scores agree.

    .venv/bin/python benchmarks/bench_graphs.py --tokenizer OUT/tokenizer --pairs GATE.jsonl \
        OLD/onnx/cpu-int8-avx2/model.onnx NEW/onnx/cpu-int8-avx2/model.onnx [--queries 32 --repeats 7]

Prints pairs/s per graph, its ratio to the first, and the largest score difference from the first;
``--profile`` then runs each graph once more under ONNX Runtime's profiler and prints its time by
operator type (where an INT8 graph's time goes).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import encode_groups, machine, time_round_robin  # noqa: E402

SEQ = 128  # bench_precision.py's sequence bound


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("graphs", nargs="+", type=Path, help="ONNX graphs; the first is the baseline")
    ap.add_argument("--tokenizer", type=Path, required=True, help="the export's tokenizer/ folder")
    ap.add_argument("--pairs", type=Path, required=True, help="JSONL of {query, passages}: one request a line")
    ap.add_argument("--queries", type=int, default=32, help="lines timed (each one batch of its passages)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--profile", action="store_true", help="also each graph's time by operator type")
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from nimbuild.builder.precision.common import cpu_session, feeds_for

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    with open(args.pairs, encoding="utf-8") as fh:
        groups = [json.loads(line) for line in fh if line.strip()][: args.queries]
    sessions = {str(g): cpu_session(g) for g in args.graphs}

    def scores_of(sess):
        # tokenization included (one query's pairs at a time), as a server does it
        feeds = encode_groups(tokenizer, groups, SEQ)
        return np.concatenate([np.asarray(sess.run(None, next(feeds_for(sess, [f])))[0]).ravel() for f in feeds])

    scores = {name: scores_of(s) for name, s in sessions.items()}
    before = machine()
    timings = time_round_robin({name: (lambda s=s: scores_of(s)) for name, s in sessions.items()}, args.repeats)
    n_pairs = sum(len(g["passages"]) for g in groups)
    base_name = str(args.graphs[0])
    base = n_pairs / timings[base_name]["median_s"]
    print(f"{n_pairs} pairs ({len(groups)} requests), median of {args.repeats} rounds in turns")
    for name, timing in timings.items():
        rate = n_pairs / timing["median_s"]
        diff = float(np.abs(scores[name] - scores[base_name]).max())
        print(f"{rate:8.1f} pairs/s  x{rate / base:.3f}  max |score - first's| {diff:.2e}  {name}")
    print(f"cpu: {before.get('cpu')}; load: {before.get('uptime')} -> {machine().get('uptime')}")
    if args.profile:
        for graph in args.graphs:
            print(f"\nby operator type: {graph}")
            for op, share in op_type_shares(graph, scores_of).items():
                print(f"{100 * share:6.1f} %  {op}")
    return 0


def op_type_shares(graph: Path, scores_of, top: int = 12) -> dict[str, float]:
    """Kernel time by operator type, as shares of the total, over one pass of the requests (ORT's profiler)."""
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:  # ORT writes its trace into the working folder otherwise
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        options.log_severity_level = 3
        sess = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        scores_of(sess)
        with open(sess.end_profiling(), encoding="utf-8") as fh:
            events = json.load(fh)
    by_op: collections.Counter = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    total = sum(by_op.values()) or 1
    return {op: dur / total for op, dur in by_op.most_common(top)}


if __name__ == "__main__":
    sys.exit(main())
