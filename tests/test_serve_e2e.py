"""`nimbuild serve` as a process: ready, ranks like ONNX Runtime, refuses bad input, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
from serve_support import MODEL, ServeProcess, ort_scores, served_export

QUERY = "why do plants need sunlight"
PASSAGES = [
    "plants use sunlight to produce food from water and carbon dioxide",
    "the cat sleeps on the bed",
    "sunlight gives plants energy",
    "a train travels fast",
    "leaves of plants absorb light",
    "music in the museum",
    "solar panels convert sunlight into electricity",
    "the ocean is deep",
    "plants grow toward the sun",
]


def test_serve_process_end_to_end(tmp_path):
    root = served_export()
    # A lone small request waits this long for company: long enough to be in flight at SIGTERM.
    server = ServeProcess({"NIM_MAX_QUEUE_DELAY_MS": "1500"})
    with server:
        url = server.url
        assert httpx.get(f"{url}/v1/health/live").status_code == 200

        # A ranking, checked against direct ONNX Runtime scores (>= max_batch_size passages: no queue wait).
        body = {
            "model": MODEL,
            "query": {"text": QUERY},
            "passages": [{"text": p} for p in PASSAGES],
            "truncate": "END",
        }
        r = httpx.post(f"{url}/v1/ranking", json=body, timeout=30)
        assert r.status_code == 200, r.text
        ref = ort_scores(root / "onnx/fp32/model.onnx", root / "hf", QUERY, PASSAGES)
        rankings = r.json()["rankings"]
        assert [x["index"] for x in rankings] == sorted(range(len(PASSAGES)), key=lambda i: -ref[i])
        for x in rankings:
            assert x["logit"] == pytest.approx(float(ref[x["index"]]), abs=1e-4)

        # Malformed requests: 4xx with a message, and the server keeps serving.
        bad = [
            (b"{not json", 400),
            (b'{"model": "serve-tiny"}', 422),
            (b'{"model": "serve-tiny", "query": {"text": "q"}, "passages": "p"}', 422),
        ]
        for payload, status in bad:
            r = httpx.post(f"{url}/v1/ranking", content=payload, headers={"content-type": "application/json"})
            assert r.status_code == status and r.json()["detail"], r.text
        assert httpx.post(f"{url}/v1/ranking", json=body, timeout=30).status_code == 200
        meta = httpx.get(f"{url}/v1/metadata").json()
        assert meta["profile"]["tags"]["device"] == "cpu"

        # SIGTERM while a request waits in the batch queue: it is answered, then the process exits 0.
        result: dict = {}

        def in_flight():
            one = {**body, "passages": [{"text": PASSAGES[0]}]}
            result["response"] = httpx.post(f"{url}/v1/ranking", json=one, timeout=60)

        t = threading.Thread(target=in_flight)
        t.start()
        time.sleep(0.5)
        server.stop()
        t.join(60)
        assert result["response"].status_code == 200
        assert result["response"].json()["rankings"][0]["logit"] == pytest.approx(float(ref[0]), abs=1e-4)
    err = server.log
    assert server.returncode == 0, err
    assert "Selected profile:" in err and "Server stopped on signal SIGTERM" in err
    assert "Traceback" not in err


def test_serve_with_a_missing_manifest_is_a_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "nimbuild", "serve", "--manifest", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NIM_CPU_ONLY": "1"},
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "nope.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr
