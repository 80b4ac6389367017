"""The names every rendered repository shares: its three models, its record file, the tokenizer's feeds.

A repository holds three models::

    <repo>/reranker/config.pbtxt      the graph: TensorRT plan or ONNX (onnxruntime backend)
    <repo>/reranker/1/model.plan|model.onnx   linked or copied from the manifest's folder
    <repo>/tokenizer/config.pbtxt     python backend: (query, passage) text -> token tensors
    <repo>/tokenizer/1/model.py, tokenizer.json
    <repo>/ensemble/config.pbtxt      raw text in, logits out (tokenizer -> reranker)
    <repo>/nimbuild-repository.json   what was rendered, from what (Triton ignores plain files)
"""

from __future__ import annotations

from nimbuild.export_layout import INPUT_NAMES

MODEL = "reranker"
TOKENIZER = "tokenizer"
ENSEMBLE = "ensemble"
REPOSITORY_INFO = "nimbuild-repository.json"
INFO_FORMAT = 1  # of REPOSITORY_INFO; a repository of another format is re-rendered, not trusted
TOKENIZER_PY = "triton_tokenizer_model.py"  # the tokenizer model's 1/model.py, a file of nimbuild/templates
DEFAULT_QUEUE_DELAY_US = 100
# Graph inputs the tokenizer model can feed (templates/triton_tokenizer_model.py: FEEDS): a cross-encoder's.
TOKENIZER_FEEDS = INPUT_NAMES
# ONNX Runtime backend graph levels (onnxruntime_backend README): -1 basic, 1 extended, 2 off, else all.
ORT_GRAPH_LEVELS = {"basic": -1, "extended": 1, "disabled": 2, "all": 0}
ENV_MAX_BATCH = "NIM_TRITON_MAX_BATCH_SIZE"
ENV_QUEUE_DELAY = "NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS"
