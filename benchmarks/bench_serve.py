"""`nimbuild serve` throughput through HTTP vs CrossEncoder.predict and raw ONNX Runtime, side by side.

On a cross-encoder folder (``--model``: the real test bed, or benchmarks/minilm_standin.py's) with
requests made of real passages (``--pairs``: each request 1 query x ``--passages`` passages from the
file, in order), or by default a MiniLM-L6-sized random BERT (benchmarks/common.py) with synthetic
passages of ~100 tokens, in one run:

- sentence-transformers' CrossEncoder.predict in-process (PyTorch, CPU) on the same model and pairs;
- raw in-process ONNX Runtime on the served profile's graph (pre-tokenized, length-sorted calls of
  max_batch_size rows: the best the server could do);
- `nimbuild serve` (a separate process, loopback HTTP) with 8 concurrent clients.

Prints and writes a JSON with passages/s, the ratios, and per-request p50/p99 latency.

    .venv/bin/python benchmarks/bench_serve.py [--model DIR --pairs GATE.jsonl --calibration CAL.jsonl]
        [--requests 16] [--clients 8] [--json out.json]

The cpu-int8 graph is built with nimbuild's shipped scheme for this CPU's best class (``nimbuild.cpu_isa``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import build_minilm_sized, machine, synthetic_groups, write_json  # noqa: E402

MODEL = "minilm-l6-random"
MAX_BATCH = 64
MAX_SEQ = 512


def export_fp32(model_dir: Path, out: Path) -> None:
    """PyTorch -> ONNX fp32 at ``out`` (.../model.onnx), with nimbuild's own exporter (what ships)."""
    from nimbuild.builder.export import export_fp32 as nimbuild_export

    shapes = {"batch": {"min": 1, "opt": 32, "max": MAX_BATCH}, "sequence": {"min": 1, "opt": 128, "max": MAX_SEQ}}
    nimbuild_export(model_dir, out.parent, shapes)


def load_groups(path: Path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def calibration_feeds(hf: Path, calibration: Path | None) -> list[dict]:
    """Tokenized calibration pairs for the int8 graph (SmoothQuant's ranges): the file's, or synthetic."""
    from common import encode_groups
    from transformers import AutoTokenizer

    groups = load_groups(calibration) if calibration else synthetic_groups(8, 32, seed=2, passage_words=(10, 140))
    return encode_groups(AutoTokenizer.from_pretrained(hf), groups, 128)


def prepare(work: Path, precision: str, model: Path | None, calibration: Path | None) -> tuple[Path, str, list[str]]:
    """Model, ONNX graphs and a one-profile manifest in ``work``; returns (manifest, precision used, notes)."""
    from nimbuild.manifest import Manifest, Profile, file_entry, write_manifest
    from nimbuild.profiles import onnx_profile_tags, profile_id, profile_name

    notes = []
    hf = model if model is not None else build_minilm_sized(work / "hf")
    fp32 = work / "onnx" / "fp32" / "model.onnx"
    if not fp32.is_file():
        export_fp32(hf, fp32)
    graph = fp32
    from nimbuild import cpu_isa

    host = cpu_isa.detect_cpu()
    best_class = host.classes[0] if host.classes else None  # the class this host serves INT8 profiles of
    if precision in ("auto", "int8") and best_class is None:
        notes.append(f"no CPU INT8 class on this host ({host.describe()}); serving fp32")
        precision = "fp32"
    if precision in ("auto", "int8"):
        int8 = work / "onnx" / f"cpu-int8-{best_class}" / "model.onnx"
        try:
            if int8.is_file():
                notes.append(f"cpu-int8 graph reused from {int8}")
            else:
                from nimbuild.builder.precision import build_cpu_int8
                from nimbuild.builder.precision.int8 import attention_shape

                heads, hidden = attention_shape([hf])
                info = build_cpu_int8(
                    fp32,
                    int8,
                    "BertForSequenceClassification",
                    calibration=calibration_feeds(hf, calibration),
                    reduce_range=cpu_isa.lookup(best_class).reduce_range,
                    num_heads=heads,
                    hidden_size=hidden,
                )
                notes += info.get("notes", [])
            graph, precision = int8, "int8"
        except Exception as exc:  # no precision builder yet, or it failed: say so and serve fp32
            if precision == "int8":
                raise
            notes.append(f"cpu-int8 graph unavailable ({type(exc).__name__}: {exc}); serving fp32")
            precision = "fp32"
    else:
        precision = "fp32"
    tok_dir = work / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf / name, tok_dir / name)
    rels = [str(graph.relative_to(work)), "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"]
    rels += [str(p.relative_to(work)) for p in graph.parent.glob("*.data")]
    tags = onnx_profile_tags(
        MODEL,
        "random0" if model is None else "local",
        precision,
        "cpu",
        MAX_BATCH,
        MAX_SEQ,
        cpu_isa=best_class if precision == "int8" else None,
    )
    profile = Profile(
        id=profile_id(tags), name=profile_name(tags), tags=tags, files={rel: file_entry(work, rel) for rel in rels}
    )
    manifest = work / f"manifest-{precision}.yaml"
    write_manifest(Manifest(profiles=[profile], header={"model": MODEL}, root=work), manifest)
    return manifest, precision, notes


def requests_from(groups: list[dict], requests: int, passages: int) -> list[dict]:
    """``requests`` requests of ``passages`` real passages each: a file query with its passages, then the next
    queries' passages appended in order until there are enough (the same request bytes on every run)."""
    pool = [p for g in groups for p in g["passages"]]
    out = []
    for i in range(requests):
        g = groups[i % len(groups)]
        start = (i * passages) % max(1, len(pool) - passages)
        out.append({"query": g["query"], "passages": pool[start : start + passages]})
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def bench_cross_encoder(hf: Path, groups: list[dict], batch_size: int) -> dict:
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(hf), device="cpu", max_length=MAX_SEQ)
    model.predict([(groups[0]["query"], p) for p in groups[0]["passages"][:8]], batch_size=batch_size)  # warm-up
    lat = []
    t0 = time.perf_counter()
    for g in groups:
        t = time.perf_counter()
        model.predict([(g["query"], p) for p in g["passages"]], batch_size=batch_size, show_progress_bar=False)
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    n = sum(len(g["passages"]) for g in groups)
    return {
        "passages_per_s": n / wall,
        "p50_s": percentile(lat, 50),
        "p99_s": percentile(lat, 99),
        "requests": len(groups),
        "torch_threads": __import__("torch").get_num_threads(),
    }


def bench_raw_ort(graph: Path, tokenizer_json: Path, groups: list[dict]) -> dict:
    import onnxruntime as ort

    from nimbuild.runtime.serve.batching import plan_calls
    from nimbuild.runtime.serve.tokenize import PairTokenizer, pad_rows

    tok = PairTokenizer.from_files(tokenizer_json, MAX_SEQ)
    sess = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    encoded = [tok.encode(g["query"], g["passages"], "END") for g in groups]

    def run(rows):
        for call in plan_calls([len(r) for r in rows], MAX_BATCH):
            ids, mask, types = pad_rows([rows[i] for i in call], tok.pad_id)
            feed = {
                k: v for k, v in (("input_ids", ids), ("attention_mask", mask), ("token_type_ids", types)) if k in names
            }
            sess.run(None, feed)

    run(encoded[0][:8])  # warm-up
    lat = []
    t0 = time.perf_counter()
    for rows in encoded:
        t = time.perf_counter()
        run(rows)
        lat.append(time.perf_counter() - t)
    wall = time.perf_counter() - t0
    n = sum(len(r) for r in encoded)
    tokens = [len(r) for rows in encoded for r in rows]
    return {
        "passages_per_s": n / wall,
        "p50_s": percentile(lat, 50),
        "p99_s": percentile(lat, 99),
        "requests": len(groups),
        "tokens_per_pair_mean": statistics.mean(tokens),
        "providers": sess.get_providers(),
    }


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def start_server(manifest: Path, port: int, extra_env: dict | None = None) -> subprocess.Popen:
    import httpx

    env = {**os.environ, "NIM_CPU_ONLY": "1", "NIM_HTTP_API_PORT": str(port), **(extra_env or {})}
    env.pop("NIM_MODEL_PROFILE", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nimbuild",
            "serve",
            "--manifest",
            str(manifest),
            "--host",
            "127.0.0.1",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"nimbuild serve exited {proc.returncode}: {proc.stderr.read()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health/ready", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("nimbuild serve never became ready")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def bench_server(port: int, groups: list[dict], clients: int) -> dict:
    import httpx

    url = f"http://127.0.0.1:{port}/v1/ranking"
    bodies = [
        json.dumps(
            {
                "model": MODEL,
                "query": {"text": g["query"]},
                "passages": [{"text": p} for p in g["passages"]],
                "truncate": "END",
            }
        ).encode()
        for g in groups
    ]
    with httpx.Client() as c:  # warm-up: one request
        c.post(url, content=bodies[0], headers={"content-type": "application/json"}, timeout=300).raise_for_status()
    lat, errors, lock = [], [], threading.Lock()
    todo = list(range(len(bodies)))

    def client():
        with httpx.Client(timeout=600) as c:
            while True:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                t = time.perf_counter()
                r = c.post(url, content=bodies[i], headers={"content-type": "application/json"})
                dt = time.perf_counter() - t
                with lock:
                    lat.append(dt)
                    if r.status_code != 200 or len(r.json()["rankings"]) != len(groups[i]["passages"]):
                        errors.append(r.status_code)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    n = sum(len(g["passages"]) for g in groups)
    return {
        "passages_per_s": n / wall,
        "p50_s": percentile(lat, 50),
        "p99_s": percentile(lat, 99),
        "requests": len(groups),
        "clients": clients,
        "errors": len(errors),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/nimbuild-bench-serve", help="model/graph cache folder (reused)")
    ap.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "int8", "fp32"],
        help="auto: cpu-int8 when nimbuild.builder.precision can build it, else fp32",
    )
    ap.add_argument("--requests", type=int, default=16, help="requests per contender (each 1 query x --passages)")
    ap.add_argument("--passages", type=int, default=100)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument(
        "--latency-requests", type=int, default=4, help="requests sent by a single client (unqueued latency)"
    )
    ap.add_argument("--ce-batch-size", type=int, default=32, help="CrossEncoder.predict batch_size (its default: 32)")
    ap.add_argument("--model", type=Path, default=None, help="cross-encoder folder (default: random MiniLM shape)")
    ap.add_argument("--pairs", type=Path, default=None, help="JSONL whose queries and passages make the requests")
    ap.add_argument("--calibration", type=Path, default=None, help="calibration pairs JSONL for the int8 graph")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)

    work = Path(args.work)
    if args.model is not None:  # one cache folder per model
        import hashlib

        work = work / (
            args.model.resolve().name + "-" + hashlib.sha256(str(args.model.resolve()).encode()).hexdigest()[:8]
        )
    work.mkdir(parents=True, exist_ok=True)
    manifest, precision, notes = prepare(work, args.precision, args.model, args.calibration)
    from nimbuild.manifest import load_manifest
    from nimbuild.manifest_paths import safe_join

    m = load_manifest(manifest)
    graph = safe_join(m.root, next(r for r in m.profiles[0].files if r.endswith(".onnx")))
    if args.pairs:
        groups = requests_from(load_groups(args.pairs), args.requests, args.passages)
    else:
        groups = synthetic_groups(args.requests, args.passages, seed=1, passage_words=(80, 110))
    result = {
        "machine": machine(),
        "precision": precision,
        "profile": m.profiles[0].name,
        "notes": notes,
        "shape": {"requests": args.requests, "passages_per_request": args.passages},
    }

    from nimbuild.runtime.serve.backends.triton import free_port

    print(
        f"profile {m.profiles[0].name} ({precision}); {args.requests} requests x {args.passages} passages; "
        f"load: {result['machine'].get('uptime')}",
        flush=True,
    )
    hf = args.model if args.model is not None else work / "hf"
    result["cross_encoder"] = bench_cross_encoder(hf, groups, args.ce_batch_size)
    print("CrossEncoder.predict      ", _fmt(result["cross_encoder"]), flush=True)
    result["raw_onnxruntime"] = bench_raw_ort(graph, work / "tokenizer" / "tokenizer.json", groups)
    print("raw ONNX Runtime          ", _fmt(result["raw_onnxruntime"]), flush=True)
    port = free_port()
    proc = start_server(manifest, port)
    try:
        rss_before = _rss_kib(proc.pid)
        result["server"] = bench_server(port, groups, args.clients)
        result["server"]["rss_kib_before_after"] = [rss_before, _rss_kib(proc.pid)]
        # Latency without queueing: one client, one request at a time.
        result["server_1_client"] = bench_server(port, groups[: args.latency_requests], 1)
    finally:
        result["server_exit_code"] = stop_server(proc)
    print(f"nimbuild serve ({args.clients} clients)", _fmt(result["server"]), flush=True)
    print("nimbuild serve (1 client) ", _fmt(result["server_1_client"]), flush=True)
    ce, raw, srv = (result[k]["passages_per_s"] for k in ("cross_encoder", "raw_onnxruntime", "server"))
    result["ratios"] = {"server_vs_cross_encoder": srv / ce, "server_vs_raw_onnxruntime": srv / raw}
    result["load_after"] = machine().get("uptime")
    print(f"server / CrossEncoder = {srv / ce:.2f}x; server / raw ORT = {srv / raw:.0%} (target >= 90%)")
    if args.json:
        write_json(args.json, result)
    return 0


def _fmt(r: dict) -> str:
    return f"{r['passages_per_s']:8.1f} passages/s   p50 {r['p50_s'] * 1000:7.0f} ms   p99 {r['p99_s'] * 1000:7.0f} ms"


if __name__ == "__main__":
    sys.exit(main())
