"""How long `nimbuild build` takes when nothing changed, beside a full (--force) build.

Run: .venv/bin/python benchmarks/bench_build.py [--out DIR] [--repeat 3]
Each timing is a fresh `nimbuild build` process (CLI start-up included), as a user runs it.
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
    subprocess.run(
        [sys.executable, "-m", "nimbuild", "build", str(RECIPE), "--out", str(out), "--quiet", *extra],
        check=True,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-build-")) / "example-tiny"
    first = nimbuild_build(out)
    full = statistics.median(nimbuild_build(out, "--force") for _ in range(args.repeat))
    again = [nimbuild_build(out) for _ in range(args.repeat)]
    rebuild = statistics.median(again)
    print(
        json.dumps(
            {
                "first_build_s": round(first, 3),
                "forced_full_build_s": round(full, 3),
                "no_change_rebuild_s": round(rebuild, 3),
                "runs": [round(x, 3) for x in again],
                "ratio_full_over_no_change": round(full / rebuild, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
