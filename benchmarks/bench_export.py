"""FP32 export: the TorchScript exporter (dynamo=False, nimbuild's default) vs the dynamo exporter, as a ratio.

Both go through nimbuild.builder.export.export_fp32 (same wrapper, same finalisation: IR version,
names, checks), on the bundled tiny BERT and on a random model of MiniLM-L6's shape; each run
also checks the graph against PyTorch (max |Δlogit| over nimbuild's parity cases).

    .venv/bin/python benchmarks/bench_export.py --repeat 3 --write benchmarks/RESULTS-export.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SHAPES = {"batch": {"min": 1, "opt": 8, "max": 64}, "sequence": {"min": 1, "opt": 128, "max": 512}}


def bench(model_dir: Path, repeat: int) -> dict:
    from nimbuild.builder import export as exp

    model = exp.load_model(model_dir)
    result = {}
    for kind in ("legacy", "dynamo"):
        times, worst = [], 0.0
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as tmp:
                t = time.perf_counter()
                info = exp.export_fp32(model_dir, Path(tmp) / "fp32", SHAPES, exporter=kind, model=model)
                times.append(time.perf_counter() - t)
                parity = exp.check_parity(
                    model, exp.cpu_session(Path(tmp) / "fp32" / "model.onnx"), info["inputs"], SHAPES
                )
                worst = max(worst, parity["max_abs_logit"])
        result[kind] = {"median_s": statistics.median(times), "runs": times, "max_abs_logit": worst}
    result["ratio_dynamo_over_legacy"] = result["dynamo"]["median_s"] / result["legacy"]["median_s"]
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--write", type=Path, help="write the markdown table here")
    args = ap.parse_args()
    from common import build_minilm_sized  # benchmarks/common.py

    models = {"example-tiny (BERT, 61k params)": REPO / "recipes" / "models" / "example-tiny"}
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    models["MiniLM-L6-sized BERT (22.7M params)"] = build_minilm_sized(tmp / "minilm")
    rows = []
    for name, d in models.items():
        r = bench(d, args.repeat)
        rows.append((name, r))
        print(
            f"{name}: legacy {r['legacy']['median_s']:.2f}s, dynamo {r['dynamo']['median_s']:.2f}s, "
            f"ratio {r['ratio_dynamo_over_legacy']:.1f}x; max|Δlogit| legacy {r['legacy']['max_abs_logit']:.1e} "
            f"dynamo {r['dynamo']['max_abs_logit']:.1e}",
            flush=True,
        )
    if args.write:
        lines = [
            "# FP32 export: TorchScript (legacy) vs dynamo exporter",
            "",
            "Command (from the repository root):",
            "",
            f"    .venv/bin/python benchmarks/bench_export.py --repeat {args.repeat} --write {args.write}",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (no GPU), shared with other jobs; "
            f"median of {args.repeat}; torch {__import__('torch').__version__}. Time = `export_fp32` "
            "(trace/export + finalise + onnx checker), model already loaded.",
            "",
            "| model | legacy (s) | dynamo (s) | dynamo / legacy | max abs logit diff legacy | dynamo |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in rows:
            lines.append(
                f"| {name} | {r['legacy']['median_s']:.2f} | {r['dynamo']['median_s']:.2f} | "
                f"**{r['ratio_dynamo_over_legacy']:.1f}x** | {r['legacy']['max_abs_logit']:.1e} | "
                f"{r['dynamo']['max_abs_logit']:.1e} |"
            )
        lines += [
            "",
            "Both graphs pass the 1e-4 parity check; nimbuild exports with TorchScript and falls back "
            "to dynamo only when tracing fails (`--exporter dynamo` forces it).",
            "",
        ]
        args.write.write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
