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

Settings (environment):

    NIM_HTTP_API_PORT (8000)            NIM_MANIFEST_PATH (manifest.yaml)
    NIM_MODEL_PROFILE, NIM_TAGS_SELECTOR, NIM_CPU_ONLY    (selection: nimbuild.runtime.selection)
    NIM_SERVE_BACKEND  auto|onnxruntime|triton
    NIM_MAX_PASSAGES (1000)             passages per request, beyond: 422
    NIM_MAX_REQUEST_BYTES (8 MiB)       body size, beyond: 413
    NIM_MAX_TEXT_CHARS (65536)          characters per query or passage, beyond: 422
    NIM_MAX_QUEUED_PASSAGES (100000)    passages waiting, beyond: 429
    NIM_MAX_BATCH_SIZE or NIM_TRITON_MAX_BATCH_SIZE            rows per model call (<= the profile's max_batch_size)
    NIM_MAX_QUEUE_DELAY_MS (2), or NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS:
                                        how long a call waits for more rows
    NIM_ORT_INTRA_OP_THREADS, NIM_ORT_CPU_ARENA (1; 0 = off)
    NIM_TRITONSERVER (tritonserver), NIM_TRITON_START_TIMEOUT (600 s)
    NIM_GRACEFUL_SHUTDOWN_SECONDS (30), NIM_ACCESS_LOG (off), NIM_LOG_LEVEL (info)
    NIM_HTTP_HEADER_TIMEOUT_SECONDS (10), NIM_HTTP_BODY_TIMEOUT_SECONDS (60), NIM_HTTP_KEEP_ALIVE_SECONDS (30),
    NIM_HTTP_MAX_CONNECTIONS (from the open-file limit)        (connections.HttpLimits)
"""
