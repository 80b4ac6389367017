"""`nimbuild manifest verify` on an N-profile manifest (default 20,000), this checkout vs another one.

Writes the manifest (profiles sharing 4 files, as a big fleet's do), then times a fresh process of
each `nimbuild` given (CPU seconds and peak memory from the OS). Example:

    .venv/bin/python benchmarks/bench_manifest_scale.py --profiles 20000 --other /work/main/.venv/bin/nimbuild
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nimbuild.profiles import profile_id  # noqa: E402


def write_manifest(root: Path, count: int) -> Path:
    files = {}
    for rel in ("tokenizer/config.json", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "onnx/m.onnx"):
        data = rel.encode() * 100
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        files[rel] = f"      {rel}:\n        uri: {rel}\n        sha256: {digest}\n        size: {len(data)}\n"
    chunks = ["schema_version: 2.0.0\nprofile_selection_criteria: default\nnimbuild:\n  model: m\nprofiles:\n"]
    for i in range(count):
        tags = {
            "backend": "onnx",
            "device": "cpu",
            "max_batch_size": "64",
            "max_sequence_length": "512",
            "model": "m",
            "model_revision": f"sha256:{i:016x}",
            "precision": "fp32",
        }
        tag_text = "".join(f"    {k}: '{v}'\n" for k, v in tags.items())
        chunks.append(
            f"- id: {profile_id(tags)}\n  name: p{i}\n  tags:\n{tag_text}  workspace:\n    files:\n"
            + "".join(files.values())
            + "  metrics:\n    build_seconds: 0.24\n    gate:\n      passed: true\n"
            + "      metrics: {top1: 1.0, spearman: 0.97}\n"
        )
    path = root / "manifest.yaml"
    path.write_text("".join(chunks))
    return path


def timed(binary: str, manifest: Path) -> tuple[float, float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([binary, "manifest", "verify", str(manifest)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{binary} failed: {proc.stderr}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), after.ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=20_000)
    parser.add_argument("--other", help="another checkout's nimbuild to compare with")
    args = parser.parse_args()
    ours = str(Path(sys.executable).with_name("nimbuild"))
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_manifest(Path(tmp), args.profiles)
        print(f"{args.profiles} profiles, {manifest.stat().st_size / 1e6:.1f} MB")
        rows = [("this checkout", *timed(ours, manifest))]
        if args.other:  # measured after ours: ru_maxrss of children is a running maximum
            rows.append((args.other, *timed(args.other, manifest)))
        for name, wall, cpu, rss in rows:
            print(f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS (max so far) {rss / 1024:.0f} MiB")
        if len(rows) == 2:
            print(f"CPU ratio: {rows[1][2] / rows[0][2]:.1f}x less")


if __name__ == "__main__":
    main()
