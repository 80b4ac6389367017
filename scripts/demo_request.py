"""The last step of `make demo`: start `nimbuild serve` on the built example, ask it for one ranking, stop it.

It shows that the profile the listing selected really serves the reranking NIM's API:
the startup log, one POST /v1/ranking with the example's first query (a held-out query
the example never saw in training), the answer with the pairs file's label beside each
passage, then a clean SIGTERM shutdown.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0


def _describe(provenance: Path) -> str:
    """One line on the model: what its provenance says it is, and its held-out quality beside BM25."""
    try:
        record = json.loads(provenance.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"example-tiny: no readable {provenance} beside the model, so which model answers is unknown"
    quality = record.get("heldout_quality") or {}
    mine, bm25 = (quality.get("example") or {}).get("label_ndcg10"), (quality.get("bm25") or {}).get("label_ndcg10")
    figures = (
        f"; held-out NDCG@10 {mine:.3f} (BM25 on the same candidates {bm25:.3f})"
        if mine is not None and bm25 is not None
        else ""
    )
    return f"example-tiny: {record.get('what', '?')}{figures}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--pairs", default=str(REPO / "recipes" / "pairs" / "example-tiny.jsonl"))
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--provenance",
        default=str(REPO / "recipes" / "models" / "example-tiny" / "provenance.json"),
        help="the model's provenance.json (what it is, how it was trained), to say which model answers",
    )
    args = parser.parse_args()

    first = json.loads(Path(args.pairs).read_text(encoding="utf-8").splitlines()[0])
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    nimbuild = Path(sys.executable).with_name("nimbuild")
    proc = subprocess.Popen(
        [str(nimbuild), "serve", "--manifest", args.manifest, "--host", "127.0.0.1", "--port", str(port)]
    )
    try:
        deadline = time.monotonic() + args.timeout
        while _get(f"{base}/v1/health/ready") != 200:
            if proc.poll() is not None:
                print(f"nimbuild serve exited with {proc.returncode} before it was ready", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"nimbuild serve was not ready after {args.timeout:.0f} s", file=sys.stderr)
                return 1
            time.sleep(0.2)
        body = {
            "model": "example-tiny",
            "query": {"text": first["query"]},
            "passages": [{"text": p} for p in first["passages"]],
            "truncate": "END",
        }
        req = urllib.request.Request(
            f"{base}/v1/ranking", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
        print(f"\nmodel: {_describe(Path(args.provenance))}")
        print(f"POST {base}/v1/ranking  query: {first['query']!r}")
        labels = first.get("labels") or [None] * len(first["passages"])
        for rank in answer["rankings"]:
            i = rank["index"]
            mark = "" if labels[i] is None else ("  <- relevant" if labels[i] > 0 else "")
            print(f"  {rank['logit']:+8.4f}  [{i}] {first['passages'][i][:70]}{mark}")
        return 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
