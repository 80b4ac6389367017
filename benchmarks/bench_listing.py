"""How fast `list-model-profiles` starts, as a ratio to a bare `python -c pass`.

Builds a 50-profile manifest over small real files (TensorRT engines for every
catalog SKU, FP8 where it exists, tp2 variants, and the ONNX profiles), then times,
in fresh processes, interleaved, several runs each (median):

  python -c pass                                    the floor: interpreter start
  nimbuild list-model-profiles -m M                 the full CLI (every command group registered)
  nimbuild list-model-profiles -m M --json
  list-model-profiles -m M                          the standalone console script (as in NIM images)
  nimbuild select -m M --assume-gpu h100-sxm        the decision serve makes

and, for context, what importing the build half alone would cost
(`python -c "import torch, transformers"`, fewer runs). Target: the listing under
0.5 s of wall time.

Usage: .venv/bin/python benchmarks/bench_listing.py [--runs 15] [--write benchmarks/RESULTS-listing.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
TARGET_S = 0.5


def build_manifest(root: Path, count: int = 50) -> Path:
    from nimbuild import profiles, skus
    from nimbuild.manifest import Manifest, Profile, file_entry, write_manifest

    def artifact(rel: str, size: int) -> str:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))
        return rel

    tok = artifact("tokenizer/tokenizer.json", 4096)
    items = []

    def add(tags: dict, rel: str) -> None:
        items.append(
            Profile(
                id=profiles.profile_id(tags),
                name=profiles.profile_name(tags),
                tags=tags,
                files={r: file_entry(root, r) for r in (rel, tok)},
                metrics={"size_bytes": 8192, "build_seconds": 1.5},
            )
        )

    for precision, device in (("fp16", "gpu"), ("fp32", "cpu"), ("int8", "cpu")):
        add(
            profiles.onnx_profile_tags("bench", "r1", precision, device, 64, 512),
            artifact(f"onnx/{device}-{precision}/model.onnx", 8192),
        )
    variants = [(sku, "fp16", 1) for sku in skus.catalog()]
    variants += [(sku, "fp8", 1) for sku in skus.catalog() if sku.fp8]
    variants += [(sku, "fp16", 2) for sku in skus.catalog()]
    for sku, precision, gpus in variants[: count - len(items)]:
        tags = profiles.tensorrt_profile_tags("bench", "r1", precision, sku, "10.13.0", 12, 64, 512, gpu_count=gpus)
        add(tags, artifact(f"engines/{sku.slug}/{precision}-tp{gpus}/model.plan", 8192))
    path = root / "manifest.yaml"
    write_manifest(Manifest(profiles=items, header={"model": "bench"}), path)
    assert len(items) == count, len(items)
    return path


def parse_times(manifest: Path, runs: int = 7) -> dict[str, float]:
    """In-process YAML parse of the manifest: PyYAML's loaders vs nimbuild.safeload (what load_manifest uses)."""
    import yaml

    from nimbuild.safeload import MANIFEST_LIMITS, parse_yaml

    text = manifest.read_text()
    result = {}
    for name, load in (
        ("yaml.SafeLoader (pure Python)", lambda t: yaml.load(t, Loader=yaml.SafeLoader)),
        ("yaml.CSafeLoader (libyaml parser, Python constructor)", lambda t: yaml.load(t, Loader=yaml.CSafeLoader)),
        ("nimbuild.safeload.parse_yaml (libyaml events, checked)", lambda t: parse_yaml(t, limits=MANIFEST_LIMITS)),
    ):
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            load(text)
            samples.append(time.perf_counter() - start)
        result[name] = statistics.median(samples)
    return result


def timed(argv: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.decode()}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--heavy-runs", type=int, default=3, help="runs of the torch+transformers import (0: skip)")
    parser.add_argument("--write", type=Path, help="write the results as Markdown here")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith("NIM_")}
    with tempfile.TemporaryDirectory() as tmp:
        manifest = str(build_manifest(Path(tmp)))
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "nimbuild list-model-profiles -m M": [str(BIN / "nimbuild"), "list-model-profiles", "-m", manifest],
            "nimbuild list-model-profiles -m M --json": [
                str(BIN / "nimbuild"),
                "list-model-profiles",
                "-m",
                manifest,
                "--json",
            ],
            "list-model-profiles -m M": [str(BIN / "list-model-profiles"), "-m", manifest],
            "nimbuild select -m M --assume-gpu h100-sxm": [
                str(BIN / "nimbuild"),
                "select",
                "-m",
                manifest,
                "--assume-gpu",
                "h100-sxm",
            ],
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for argv in cases.values():  # warm the page cache once
            timed(argv, env)
        for _ in range(args.runs):  # interleaved, so load changes hit every case alike
            for name, argv in cases.items():
                times[name].append(timed(argv, env))
        parse = parse_times(Path(manifest))
        heavy = None
        if args.heavy_runs:
            heavy = statistics.median(
                timed([sys.executable, "-c", "import torch, transformers"], env) for _ in range(args.heavy_runs)
            )

    floor = statistics.median(times["python -c pass"])
    rows = []
    for name, values in times.items():
        med = statistics.median(values)
        rows.append((name, med, min(values), max(values), med / floor))
    lines = [
        "# `list-model-profiles` start-up time",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_listing.py --runs {args.runs}"
        f"{f' --write {args.write}' if args.write else ''}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average at start {os.getloadavg()[0]:.2f} (the cores are shared with other work). "
        f"Manifest: 50 profiles (47 TensorRT over the SKU catalog, 3 ONNX), real files. "
        f"Wall time of a fresh process, {args.runs} interleaved runs each; M = the manifest.",
        "",
        "| command | median s | min s | max s | x `python -c pass` |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| `{n}` | {m:.3f} | {lo:.3f} | {hi:.3f} | {r:.1f} |" for n, m, lo, hi, r in rows]
    listing = statistics.median(times["nimbuild list-model-profiles -m M"])
    lines += [
        "",
        f"Target: the listing under {TARGET_S} s: {'met' if listing < TARGET_S else 'NOT met'} "
        f"({listing:.3f} s median).",
    ]
    lines += [
        "",
        "YAML parse of the 50-profile manifest, in process (median of 7): "
        + "; ".join(f"{name} {sec * 1000:.0f} ms" for name, sec in parse.items())
        + ". load_manifest switched to libyaml's CSafeLoader (where PyYAML has it) after this benchmark "
        "showed the pure-Python parse as the listing's largest single cost; the rest is interpreter "
        "start and the typer/click imports.",
    ]
    if heavy is not None:
        lines += [
            "",
            f'For context, `python -c "import torch, transformers"` alone: {heavy:.2f} s median of '
            f"{args.heavy_runs} ({heavy / listing:.0f}x the whole listing): what the listing would "
            f"cost if it imported the build half.",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
