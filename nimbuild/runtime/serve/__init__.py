"""`nimbuild serve`: the reranking NIM's HTTP API over the best profile this host can run.

Light by rule: no torch, transformers, onnx, polygraphy or tensorrt; the Triton
backend imports nimbuild.runtime.model_store only when it starts.

    server.py      detect -> select -> verify -> start a backend (falling back in rank order) -> uvicorn
    app.py         the Starlette app: every dialect's rank route, health, models, metadata, metrics, openapi
    dialects/      one module per rerank API (nim, tei, cohere, jina, v1rerank): request shape <-> one rank call
    connections.py deadlines on every connection phase, the connection ceiling, rate-limited connection logs
    openapi.py     GET /openapi.json and GET /docs
    service.py     tokenizer + backend + batcher behind rank(); request limits
    batching.py    dynamic batching across requests, length-sorted, in a worker thread
    tokenize.py    pairs as the model's tokenizer.json builds them; END / NONE truncation
    backends/      onnxruntime.py (embedded, CPU or CUDA EP), triton.py (tritonserver child)

Settings: every ``NIM_*`` variable is read and validated once by
:mod:`nimbuild.runtime.settings` (README.md lists them all).
"""
