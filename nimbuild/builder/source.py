"""Resolve a model: a local folder as it is, or a hub repo at a pinned commit.

Hub downloads go through ``huggingface_hub.snapshot_download`` and honour
``HF_HOME`` / ``HF_HUB_CACHE``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE``, read when
called (not when huggingface_hub was imported), so tests and CI can point them
at a prepared cache. Remote model code never runs unless the recipe allows it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.fsutil import file_digest

# What a cross-encoder needs; never subfolders (onnx/, openvino/ exports) or other frameworks' weights.
_ALLOW = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "merges.txt", "vocab.*"]
_IGNORE = ["*/*", "*.onnx", "*.msgpack", "*.h5", "*.ot"]
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


@dataclass(frozen=True)
class ResolvedModel:
    """A model folder on this machine and where it came from."""

    path: Path
    revision: str  # hub commit sha, or "sha256:<prefix>" of the weights for a local folder
    repo: str | None = None
    config: dict = field(default_factory=dict, compare=False)

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else f"<no architectures in config.json; model_type={self.config.get('model_type')}>"

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"path": str(self.path), "revision": self.revision}
        if self.repo:
            d["repo"] = self.repo
        return d


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def hub_cache_dir(env=os.environ) -> Path:
    """Where huggingface_hub keeps snapshots, from the environment as it is now."""
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(env[key]).expanduser()
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def weights_fingerprint(model_dir: Path) -> str:
    """``sha256:`` + 16 hex of the weight files (names and bytes): a local folder's revision."""
    h = hashlib.sha256()
    files = sorted(
        p for p in model_dir.iterdir() if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name in _WEIGHTS)
    )
    if not files:
        files = sorted(p for p in model_dir.iterdir() if p.is_file())
    for p in files:
        h.update(p.name.encode() + b"\0")
        file_digest(p, h)
    return "sha256:" + h.hexdigest()[:16]


def read_config(model_dir: Path) -> dict:
    cfg = model_dir / "config.json"
    if not cfg.is_file():
        raise NimbuildError(
            f"model folder {model_dir} has no config.json",
            hint="point at a Hugging Face model folder (save_pretrained output: config.json, weights, tokenizer)",
        )
    from nimbuild.safeload import parse_json

    try:
        text = cfg.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise NimbuildError(f"{cfg}: not valid JSON ({exc})", hint="restore the model's config.json") from None
    data = parse_json(text, str(cfg), what="model config", hint="restore the model's config.json")
    if not isinstance(data, dict):
        raise NimbuildError(f"{cfg}: expected a JSON object", hint="restore the model's config.json")
    check_config_keys(data, cfg)
    return data


# config.json fields nimbuild and transformers read before a model exists: (type, minimum) each
_POSITIVE_INT_KEYS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "max_position_embeddings",
    "num_labels",
)


def check_config_keys(config: dict, where: Path) -> None:
    """The keys of a model's config.json that nimbuild reads, each of the type it must be.

    A wrong type deep inside transformers surfaces as a TypeError, a tensor with a
    negative dimension or a misleading "tokenizer could not be loaded": named here,
    with the key, what was given and what is expected.
    """

    def bad(key: str, expected: str) -> NimbuildError:
        return NimbuildError(
            f"{where}: key `{key}`: expected {expected}, got {json.dumps(config[key])[:80]}",
            hint="restore the model's config.json (save_pretrained writes it)",
        )

    archs = config.get("architectures")
    if archs is not None and (
        not isinstance(archs, list) or not all(isinstance(a, str) and a.isidentifier() for a in archs)
    ):
        raise bad("architectures", 'a list of class names (["BertForSequenceClassification"])')
    for key, kind, expected in (
        ("model_type", str, "a string"),
        ("auto_map", dict, "a mapping of class -> module.Class"),
    ):
        if config.get(key) is not None and not isinstance(config[key], kind):
            raise bad(key, expected)
    for key in _POSITIVE_INT_KEYS:
        if key not in config or (config[key] is None and key == "num_labels"):
            continue
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad(key, "a whole number >= 1")
    value = config.get("type_vocab_size")
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
        raise bad("type_vocab_size", "a whole number >= 0")
    for key in ("id2label", "label2id"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise bad(key, "a mapping")


def remote_code_reason(model_dir: Path, config: dict | None = None) -> str | None:
    """Why this model would run code from its repo (None when it does not need to)."""
    config = read_config(model_dir) if config is None else config
    if config.get("auto_map"):
        return f"config.json auto_map names {sorted(config['auto_map'])}"
    tok_cfg = model_dir / "tokenizer_config.json"
    if tok_cfg.is_file():
        try:
            tc = json.loads(tok_cfg.read_text(encoding="utf-8"))
        except Exception:
            tc = {}
        if isinstance(tc, dict) and tc.get("auto_map"):
            return "tokenizer_config.json has an auto_map (custom tokenizer code)"
    import transformers

    for arch in config.get("architectures") or []:
        if not hasattr(transformers, arch):
            return f"architecture {arch} is not part of transformers {transformers.__version__}"
    return None


def check_remote_code(model_dir: Path, config: dict, trust_remote_code: bool, what: str) -> None:
    reason = remote_code_reason(model_dir, config)
    if reason and not trust_remote_code:
        raise NimbuildError(
            f"{what} needs remote code ({reason}), which is not allowed",
            hint="review the model's .py files, then set `trust_remote_code: true` in the recipe "
            "(or pass --trust-remote-code)",
        )


def resolve_local(path: str | Path, trust_remote_code: bool = False) -> ResolvedModel:
    p = Path(path).expanduser()
    if not p.exists():
        raise NimbuildError(
            f"model folder {p} does not exist",
            hint="check the path (a recipe's source.path is relative to the recipe file)",
        )
    if not p.is_dir():
        raise NimbuildError(f"model path {p} is a file, not a folder", hint="give the folder that holds config.json")
    p = p.resolve()
    config = read_config(p)
    check_remote_code(p, config, trust_remote_code, f"model {p}")
    return ResolvedModel(path=p, revision=weights_fingerprint(p), repo=None, config=config)


def resolve_hub(
    repo: str, revision: str | None, trust_remote_code: bool = False, env=os.environ, progress=None
) -> ResolvedModel:
    """Download (or find in the cache) ``repo`` at ``revision``; returns the snapshot folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _truthy(env.get("HF_HUB_OFFLINE")) or _truthy(env.get("TRANSFORMERS_OFFLINE"))
    cache = hub_cache_dir(env)
    rev = revision or "main"
    allow = list(_ALLOW) + (["*.py"] if trust_remote_code else [])
    kwargs = dict(
        repo_id=repo,
        revision=rev,
        cache_dir=str(cache),
        allow_patterns=allow,
        ignore_patterns=_IGNORE,
        local_files_only=offline,
        token=env.get("HF_TOKEN") or None,
    )
    where = f"{repo}@{rev}"
    try:
        folder = Path(snapshot_download(**kwargs))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError):
        if offline:
            raise NimbuildError(
                f"model {where} is not in the Hugging Face cache {cache} and HF_HUB_OFFLINE=1",
                hint="download it once with network access (unset HF_HUB_OFFLINE), "
                "point HF_HOME at a cache that has it, or give a local model folder",
            ) from None
        raise NimbuildError(
            f"model {where} could not be downloaded (no network?)",
            hint="check the network, or set HF_HOME to a cache that has it",
        ) from None
    except GatedRepoError:
        raise NimbuildError(
            f"model {repo} is gated", hint="accept its licence on huggingface.co and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise NimbuildError(
            f"hub repo {repo} not found (or private)", hint="check the repo id; for a private repo set HF_TOKEN"
        ) from None
    except RevisionNotFoundError:
        raise NimbuildError(
            f"revision {rev} not found in hub repo {repo}",
            hint="pin an existing 40-hex commit sha (see the repo's commit history)",
        ) from None
    except HfHubHTTPError as exc:
        raise NimbuildError(
            f"downloading {where} failed: {str(exc).splitlines()[0]}", hint="retry, or check HF_TOKEN"
        ) from None

    if not any((folder / w).exists() for w in _WEIGHTS) and not offline:
        # only PyTorch .bin weights in this repo: fetch those too
        try:
            folder = Path(snapshot_download(**{**kwargs, "allow_patterns": allow + ["*.bin"]}))
        except Exception as exc:  # pragma: no cover - network
            raise NimbuildError(f"downloading the weights of {where} failed: {exc}", hint="retry") from None
    config = read_config(folder)
    check_remote_code(folder, config, trust_remote_code, f"model {repo}")
    commit = folder.name if len(folder.name) == 40 else rev
    return ResolvedModel(path=folder, revision=commit, repo=repo, config=config)


def resolve_source(
    recipe_or_spec: Any, *, trust_remote_code: bool | None = None, revision: str | None = None, env=os.environ
) -> ResolvedModel:
    """A recipe (its ``source``), a local folder path, or a hub repo id -> ResolvedModel."""
    from nimbuild.recipe import Recipe, recipe_for_model

    recipe = (
        recipe_or_spec
        if isinstance(recipe_or_spec, Recipe)
        else recipe_for_model(str(recipe_or_spec), revision=revision, trust_remote_code=bool(trust_remote_code))
    )
    trust = recipe.trust_remote_code if trust_remote_code is None else trust_remote_code
    src = recipe.source
    if src.path is not None:
        return resolve_local(recipe.resolve(src.path), trust)
    return resolve_hub(src.repo, src.revision, trust, env=env)
