"""How long `nimbuild build` takes when nothing changed, beside a full (--force) build.

Run: .venv/bin/python benchmarks/bench_build.py [--out DIR] [--repeat 3]
Each timing is a fresh `nimbuild build` process (CLI start-up included), as a user runs it.
Without nimbuild.build.pipeline (not written yet) the first build is made by a stand-in export
that writes the documented layout; the no-change rebuild is then the real CLI path all the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "example-tiny.yaml"


def nimbuild_build(out: Path, *extra: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "nimbuild", "build", str(RECIPE), "--out", str(out), "--quiet", *extra],
                   check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def stand_in_first_build(out: Path) -> None:
    import types

    from nimbuild.build.steps import run_build
    from nimbuild.output import Output

    def run_export(recipe, out_dir, precisions, pairs, out):
        (out_dir / "tokenizer").mkdir(parents=True, exist_ok=True)
        (out_dir / "tokenizer" / "tokenizer.json").write_text("{}")
        (out_dir / "onnx/fp32").mkdir(parents=True, exist_ok=True)
        (out_dir / "onnx/fp32/model.onnx").write_bytes(b"0" * 1_000_000)
        (out_dir / "export_report.json").write_text(json.dumps({
            "model": recipe.name, "model_revision": "r", "max_batch_size": 64, "max_sequence_length": 512,
            "recipe_sha256": recipe.sha256,
            "precisions": {"fp32": {"status": "passed", "path": "onnx/fp32/model.onnx"}}}))

    sys.modules["nimbuild.build.pipeline"] = types.SimpleNamespace(run_export=run_export)
    run_build(RECIPE, out, Output(quiet=True), engines=False, render=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-build-")) / "example-tiny"
    try:
        import nimbuild.build.pipeline  # noqa: F401
        real = True
    except ImportError:
        real = False
    extra = () if real else ("--no-render",)
    if real:
        first = nimbuild_build(out, *extra)
        full = statistics.median(nimbuild_build(out, "--force", *extra) for _ in range(args.repeat))
    else:
        stand_in_first_build(out)
        first = full = None
    again = [nimbuild_build(out, *extra) for _ in range(args.repeat)]
    rebuild = statistics.median(again)
    print(json.dumps({"real_export": real, "first_build_s": first, "forced_full_build_s": full,
                      "no_change_rebuild_s": round(rebuild, 3), "runs": [round(x, 3) for x in again],
                      "ratio_full_over_no_change": round(full / rebuild, 1) if full else None}, indent=1))


if __name__ == "__main__":
    main()
