"""A bounded loopback load test of `nimbuild serve`: many clients, valid and malformed requests mixed, over
every rerank dialect (NIM /v1/ranking, TEI /rerank, Cohere/Jina /v1/rerank, Cohere /v2/rerank) on one batcher.

Checks, and exits 1 unless all hold: zero 5xx; zero lost requests (every one answered);
zero mismatched answers (each valid answer equals the one the idle server gave for the same
request, so no row was scattered to the wrong request or index, and every dialect's idle answer
orders the passages as /v1/ranking does); every malformed request got its 4xx with a JSON body;
the server's RSS flat (read after each slice of the load, once warm: no growth trend); a clean
exit 0 on SIGTERM.

    .venv/bin/python benchmarks/loadtest.py [--requests 2000] [--clients 32] [--model tiny|minilm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_serve import _rss_kib, export_fp32, start_server, stop_server  # noqa: E402
from common import machine, write_json  # noqa: E402

MODEL = "loadtest-tiny"
MAX_PASSAGES = 64
MAX_BYTES = 65536


def prepare(work: Path, which: str) -> Path:
    from nimbuild.manifest import Manifest, Profile, file_entry, write_manifest
    from nimbuild.profiles import onnx_profile_tags, profile_id, profile_name

    if which == "minilm":
        from common import build_minilm_sized

        hf = build_minilm_sized(work / "hf")
    else:
        from nimbuild.builder.tiny import build_tiny_model

        hf = work / "hf"
        if not (hf / "config.json").is_file():
            build_tiny_model(hf, "bert", seed=0)
    graph = work / "onnx" / "fp32" / "model.onnx"
    if not graph.is_file():
        export_fp32(hf, graph)
    (work / "tokenizer").mkdir(exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(hf / name, work / "tokenizer" / name)
    rels = ["onnx/fp32/model.onnx", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"]
    tags = onnx_profile_tags(MODEL, "random0", "fp32", "cpu", 64, 128)
    profile = Profile(
        id=profile_id(tags), name=profile_name(tags), tags=tags, files={rel: file_entry(work, rel) for rel in rels}
    )
    path = work / "manifest.yaml"
    write_manifest(Manifest(profiles=[profile], header={"model": MODEL}, root=work), path)
    return path


ROUTES = ("/v1/ranking", "/rerank", "/v1/rerank", "/v2/rerank")


def dialect_body(route: str, query: str, passages: list[str], rng: random.Random) -> dict:
    """The same ranking question in one dialect's words (truncating: some passages are over 128 tokens)."""
    if route == "/v1/ranking":
        return {
            "model": MODEL,
            "query": {"text": query},
            "passages": [{"text": p} for p in passages],
            "truncate": "END",
        }
    if route == "/rerank":
        return {"query": query, "texts": passages, "raw_scores": rng.random() < 0.5, "return_text": rng.random() < 0.3}
    body = {"model": MODEL, "query": query, "documents": passages}
    if rng.random() < 0.5:
        body["top_n"] = rng.randint(1, len(passages))
    if rng.random() < 0.3:
        body["return_documents"] = True
    return body


def valid_pool(n: int, rng: random.Random) -> list[tuple[str, bytes, list[int] | None]]:
    """(route, body, None); the expected order is filled in from /v1/ranking's idle answer (``references``)."""
    from nimbuild.builder.tiny import vocabulary_words

    words = vocabulary_words()
    pool = []
    for k in range(n):
        passages = [" ".join(rng.choices(words, k=rng.randint(3, 60))) for _ in range(rng.randint(1, 20))]
        if rng.random() < 0.2:
            passages.append(" ".join(rng.choices(words, k=300)))  # over 128 tokens: cut by END
        query = " ".join(rng.choices(words, k=rng.randint(2, 10)))
        route = ROUTES[k % len(ROUTES)]
        pool.append((route, json.dumps(dialect_body(route, query, passages, rng)).encode(), query, passages))
    return pool


def ranked(route: str, answer) -> list[tuple[int, float]]:
    """(index, score) best first, from any dialect's answer."""
    if route == "/v1/ranking":
        return [(x["index"], x["logit"]) for x in answer["rankings"]]
    if route == "/rerank":
        return [(x["index"], x["score"]) for x in answer]
    return [(x["index"], x["relevance_score"]) for x in answer["results"]]


def same(route: str, a, b) -> bool:
    ra, rb = ranked(route, a), ranked(route, b)
    if len(ra) != len(rb):
        return False
    la, lb = dict(ra), dict(rb)
    return la.keys() == lb.keys() and all(abs(la[i] - lb[i]) <= 1e-3 for i in la)


def malformed() -> list[tuple[str, str, str, bytes, int]]:
    """(name, method, route, body, expected status)."""
    ok = {"model": MODEL, "query": {"text": "q"}, "passages": [{"text": "a passage"}]}
    long = {**ok, "passages": [{"text": " ".join(["word"] * 400)}], "truncate": "NONE"}
    nim = "/v1/ranking"
    return [
        ("invalid json", "POST", nim, b'{"model": "x", "query": ', 400),
        ("not an object", "POST", nim, b"[1, 2, 3]", 422),
        ("missing query", "POST", nim, json.dumps({"model": MODEL, "passages": [{"text": "a"}]}).encode(), 422),
        ("passages not a list", "POST", nim, json.dumps({**ok, "passages": "a"}).encode(), 422),
        ("empty passages", "POST", nim, json.dumps({**ok, "passages": []}).encode(), 422),
        (
            "too many passages",
            "POST",
            nim,
            json.dumps({**ok, "passages": [{"text": "a"}] * (MAX_PASSAGES + 1)}).encode(),
            422,
        ),
        ("oversized body", "POST", nim, json.dumps({**ok, "passages": [{"text": "x" * 1200}] * 60}).encode(), 413),
        ("wrong model", "POST", nim, json.dumps({**ok, "model": "nope"}).encode(), 404),
        ("bad truncate", "POST", nim, json.dumps({**ok, "truncate": "MIDDLE"}).encode(), 422),
        ("too long with NONE", "POST", nim, json.dumps(long).encode(), 400),
        ("wrong method", "GET", nim, b"", 405),
        ("TEI empty texts", "POST", "/rerank", json.dumps({"query": "q", "texts": []}).encode(), 400),
        (
            "TEI too long, truncate false",
            "POST",
            "/rerank",
            json.dumps({"query": "q", "texts": [" ".join(["word"] * 400)], "truncate": False}).encode(),
            422,
        ),
        ("Cohere v2 without model", "POST", "/v2/rerank", json.dumps({"query": "q", "documents": ["a"]}).encode(), 422),
        (
            "Cohere top_n 0",
            "POST",
            "/v1/rerank",
            json.dumps({"query": "q", "documents": ["a"], "top_n": 0}).encode(),
            422,
        ),
        (
            "Jina image document",
            "POST",
            "/v1/rerank",
            json.dumps({"query": "q", "documents": [{"image": "x.png"}]}).encode(),
            422,
        ),
        ("unknown route", "POST", "/v3/rerank", b"{}", 404),
        ("wrong method, TEI", "GET", "/rerank", b"", 405),
    ]


async def run(port: int, pool: list, refs: list, n: int, clients: int, seed: int) -> dict:
    import httpx

    base = f"http://127.0.0.1:{port}"
    bad = malformed()
    rng = random.Random(seed)
    plan = [
        ("valid", rng.randrange(len(pool))) if rng.random() < 0.7 else ("bad", rng.randrange(len(bad)))
        for _ in range(n)
    ]
    stats = Counter()
    problems: list[str] = []
    queue: asyncio.Queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)

    async def worker(client: httpx.AsyncClient):
        while True:
            try:
                kind, i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                if kind == "valid":
                    route, body = pool[i][0], pool[i][1]
                    r = await client.post(base + route, content=body, headers={"content-type": "application/json"})
                else:
                    name, method, route, body, status = bad[i]
                    r = await client.request(
                        method, base + route, content=body or None, headers={"content-type": "application/json"}
                    )
            except httpx.HTTPError as exc:
                stats["lost"] += 1
                problems.append(f"lost: {type(exc).__name__}: {exc}")
                continue
            stats[f"{r.status_code // 100}xx"] += 1
            if kind == "valid":
                stats[f"valid {route}"] += 1
                if r.status_code != 200 or not same(route, r.json(), refs[i]):
                    stats["mismatched"] += 1
                    problems.append(f"valid #{i} {route}: {r.status_code} {r.text[:200]}")
            elif r.status_code != status or not _json_message(r):
                stats["wrong_status"] += 1
                problems.append(f"{name}: expected {status} with JSON, got {r.status_code} {r.text[:200]}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return {
        "requests": n,
        "clients": clients,
        "seconds": wall,
        "requests_per_s": n / wall,
        "statuses": dict(stats),
        "problems": problems[:20],
    }


def _json_message(r) -> bool:
    try:
        body = r.json()
    except ValueError:
        return False
    return isinstance(body, dict) and any(isinstance(v, str) and v for v in body.values())


def references(c, port: int, pool: list) -> tuple[list, int]:
    """The idle server's answer to each pool request, and how many of them order the passages differently
    from /v1/ranking's answer to the same question (each must order them the same)."""
    base = f"http://127.0.0.1:{port}"
    refs, disordered = [], 0
    for route, body, query, passages in pool:
        answer = c.post(base + route, content=body, headers={"content-type": "application/json"})
        answer.raise_for_status()
        refs.append(answer.json())
        nim = c.post(base + "/v1/ranking", json=dialect_body("/v1/ranking", query, passages, random.Random(0)))
        nim_order = [i for i, _ in ranked("/v1/ranking", nim.json())]
        got = [i for i, _ in ranked(route, answer.json())]
        if got != nim_order[: len(got)]:
            disordered += 1
    return refs, disordered


def _merge(slices: list[dict]) -> dict:
    statuses = Counter()
    for sl in slices:
        statuses.update(sl["statuses"])
    n = sum(sl["requests"] for sl in slices)
    seconds = sum(sl["seconds"] for sl in slices)
    return {
        "requests": n,
        "clients": slices[0]["clients"],
        "seconds": seconds,
        "requests_per_s": n / seconds,
        "statuses": dict(statuses),
        "problems": [p for sl in slices for p in sl["problems"]][:20],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default="/tmp/nimbuild-loadtest")
    ap.add_argument("--model", choices=["tiny", "minilm"], default="tiny")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=600, help="requests before the 'before' RSS reading")
    ap.add_argument("--slices", type=int, default=4, help="RSS is read after each slice of the load")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    import httpx

    from nimbuild.runtime.serve.backends.triton import free_port

    work = Path(args.work) / args.model
    work.mkdir(parents=True, exist_ok=True)
    manifest = prepare(work, args.model)
    rng = random.Random(args.seed)
    pool = valid_pool(60, rng)
    port = free_port()
    proc = start_server(
        manifest, port, {"NIM_MAX_PASSAGES": str(MAX_PASSAGES), "NIM_MAX_REQUEST_BYTES": str(MAX_BYTES)}
    )
    result = {"machine": machine(), "model": args.model}
    try:
        with httpx.Client(timeout=120) as c:  # the idle server's answers: what every later answer must equal
            refs, disordered = references(c, port, pool)
            result["dialects_ordered_unlike_v1_ranking"] = disordered
            # Warm-up also reaches the largest call (max_batch_size rows x max_sequence_length tokens),
            # so that ONNX Runtime's arena has grown to its ceiling before the "before" reading.
            widest = {
                "model": MODEL,
                "query": {"text": "warm up"},
                "truncate": "END",
                "passages": [{"text": " ".join(["honey"] * 150)}] * MAX_PASSAGES,
            }
            c.post(f"http://127.0.0.1:{port}/v1/ranking", json=widest).raise_for_status()
        for k in range(2):  # two rounds of fresh connections, as the measured slices open
            asyncio.run(run(port, pool, refs, args.warmup // 2, args.clients, args.seed + 100 + k))
        rss_before = _rss_kib(proc.pid)
        # The load in slices, RSS read after each: growth that stops is warm-up, growth that goes on is a leak.
        slices, trace = [], [rss_before]
        for k in range(args.slices):
            n = args.requests // args.slices + (args.requests % args.slices if k == args.slices - 1 else 0)
            slices.append(asyncio.run(run(port, pool, refs, n, args.clients, args.seed + 2 + k)))
            trace.append(_rss_kib(proc.pid))
        result["load"] = _merge(slices)
        rss_after = trace[-1]
        mid = trace[len(trace) // 2]
        result["rss_kib"] = {
            "before": rss_before,
            "after": rss_after,
            "trace": trace,
            "growth": (rss_after - rss_before) / rss_before,
            "second_half_growth": (rss_after - mid) / mid,
        }
    finally:
        result["exit_code"] = stop_server(proc)
    result["load_after"] = machine().get("uptime")
    load = result["load"]
    s = load["statuses"]
    checks = {
        "no 5xx": s.get("5xx", 0) == 0,
        "none lost": s.get("lost", 0) == 0,
        "none mismatched": s.get("mismatched", 0) == 0,
        "every dialect orders like /v1/ranking": disordered == 0,
        "every malformed request got its 4xx": s.get("wrong_status", 0) == 0,
        # A leak grows with every slice; a one-time step while allocators reach their high-water mark does not.
        "RSS flat (second half of the load < 2% growth, all of it < 15%)": result["rss_kib"]["second_half_growth"]
        < 0.02
        and result["rss_kib"]["growth"] < 0.15,
        "clean exit on SIGTERM": result["exit_code"] == 0,
    }
    result["checks"] = checks
    print(
        f"{load['requests']} requests from {load['clients']} clients in {load['seconds']:.1f} s "
        f"({load['requests_per_s']:.0f}/s); statuses {dict(sorted(s.items()))}"
    )
    print(
        f"server RSS {result['rss_kib']['before'] / 1024:.1f} MiB -> {result['rss_kib']['after'] / 1024:.1f} MiB "
        f"({result['rss_kib']['growth']:+.1%}; MiB after each slice: "
        f"{', '.join(f'{v / 1024:.1f}' for v in result['rss_kib']['trace'])}); "
        f"exit code {result['exit_code']}; load: {result['load_after']}"
    )
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    for p in load["problems"]:
        print("   ", p)
    if args.json:
        write_json(args.json, result)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
