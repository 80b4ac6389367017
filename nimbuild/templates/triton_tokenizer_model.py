"""Triton python-backend model: (query, passage) text rows -> the reranker's token tensors.

Written by nimbuild (templates/triton_tokenizer_model.py); self-contained so that
a stock Triton image with the `tokenizers` package can run it. It builds pairs
exactly as nimbuild's server does: the post-processor of tokenizer.json adds the
special tokens and type ids, and an over-long pair is cut at the END: the
passage first, then the query if it alone is still too long.
"""

import json
import os

import numpy as np

# Graph input name -> which part of an encoding feeds it.
FEEDS = {"input_ids": "ids", "attention_mask": "mask", "token_type_ids": "type_ids"}


def pad_id_of(tokenizer, config_path):
    """tokenizer_config.json's pad_token, else tokenizer.json's padding, else [PAD]/<pad>, else 0."""
    pad_token = None
    if config_path and os.path.isfile(config_path):
        try:
            with open(config_path, encoding="utf-8") as fh:
                pad = json.load(fh).get("pad_token")
        except (OSError, ValueError):
            pad = None
        pad_token = pad.get("content") if isinstance(pad, dict) else pad
    if isinstance(pad_token, str) and tokenizer.token_to_id(pad_token) is not None:
        return int(tokenizer.token_to_id(pad_token))
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for guess in ("[PAD]", "<pad>"):
        if tokenizer.token_to_id(guess) is not None:
            return int(tokenizer.token_to_id(guess))
    return 0


class PairEncoder:
    """Encode (query, passage) pairs, truncated at the END, padded to the longest row."""

    def __init__(self, tokenizer, max_length, pad_id):
        from tokenizers import Encoding

        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.pad_id = int(pad_id)
        self.specials = tokenizer.post_processor.num_special_tokens_to_add(True) if tokenizer.post_processor else 0
        self._merge = Encoding.merge

    def _fit(self, query, passage):
        budget = self.max_length - self.specials
        q = self.tokenizer.encode(query, add_special_tokens=False)
        p = self.tokenizer.encode(passage, add_special_tokens=False)
        keep = max(0, budget - len(q.ids))
        if len(p.ids) > keep:
            p.truncate(keep)
        if len(q.ids) + len(p.ids) > budget:
            q.truncate(max(0, budget - len(p.ids)))
        return self.tokenizer.post_process(q, p, add_special_tokens=True)

    def encode(self, queries, passages):
        """{"ids", "mask", "type_ids"}: int64 arrays [rows, longest]."""
        pairs = list(zip(queries, passages, strict=True))
        encodings = self.tokenizer.encode_batch(pairs, add_special_tokens=True)
        encodings = [
            enc if len(enc.ids) <= self.max_length else self._fit(q, p)
            for enc, (q, p) in zip(encodings, pairs, strict=True)
        ]
        longest = max((len(e.ids) for e in encodings), default=1)
        ids = np.full((len(encodings), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), longest), dtype=np.int64)
        types = np.zeros((len(encodings), longest), dtype=np.int64)
        for row, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[row, :n] = enc.ids
            mask[row, :n] = 1
            types[row, :n] = enc.type_ids
        return {"ids": ids, "mask": mask, "type_ids": types}


def _texts(array):
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils
        from tokenizers import Tokenizer

        self.pb_utils = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        tokenizer = Tokenizer.from_file(os.path.join(folder, params.get("tokenizer_file", "tokenizer.json")))
        pad_id = pad_id_of(tokenizer, os.path.join(folder, "tokenizer_config.json"))
        self.encoder = PairEncoder(tokenizer, int(params["max_sequence_length"]), pad_id)
        self.outputs = []
        for out in config["output"]:
            if out["name"] not in FEEDS:
                raise ValueError(
                    f"tokenizer output {out['name']!r}: no tokenizer field feeds it (known: {sorted(FEEDS)})"
                )
            self.outputs.append((out["name"], FEEDS[out["name"]], pb_utils.triton_string_to_numpy(out["data_type"])))

    def execute(self, requests):
        pb_utils = self.pb_utils
        responses = []
        for request in requests:
            try:
                queries = _texts(pb_utils.get_input_tensor_by_name(request, "query").as_numpy())
                passages = _texts(pb_utils.get_input_tensor_by_name(request, "passage").as_numpy())
                if len(queries) != len(passages):
                    raise ValueError(
                        f"query has {len(queries)} rows but passage has {len(passages)}; send one query per passage"
                    )
                encoded = self.encoder.encode(queries, passages)
                tensors = [pb_utils.Tensor(name, encoded[field].astype(dtype)) for name, field, dtype in self.outputs]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # one bad request must not fail the others in the batch
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
        return responses
