"""The last step of `make demo`: start `nimbuild serve` on the built example, ask it for one ranking, stop it.

It shows that the profile the listing selected really serves the reranking NIM's API:
the startup log, one POST /v1/ranking with the example's first query, the answer, then
a clean SIGTERM shutdown.
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--pairs", default=str(REPO / "recipes" / "pairs" / "example-tiny.jsonl"))
    parser.add_argument("--timeout", type=float, default=120.0)
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
        print(f"\nPOST {base}/v1/ranking  query: {first['query']!r}")
        for rank in answer["rankings"]:
            print(f"  {rank['logit']:+8.4f}  [{rank['index']}] {first['passages'][rank['index']][:70]}")
        return 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
