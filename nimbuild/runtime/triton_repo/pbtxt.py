"""Triton's own ModelConfig schema, to check every config.pbtxt nimbuild writes.

``tritonclient.grpc`` needs grpc at import time, but its ``model_config_pb2.py``
needs only protobuf, so it is loaded by file path. Parsing with
``text_format.Parse`` rejects unknown fields, wrong types and bad enum names
exactly as tritonserver would at load time.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError

_HINT = "pip install 'nimbuild[build]' (it brings tritonclient and protobuf)"


@functools.lru_cache(maxsize=1)
def model_config_module() -> Any:
    """tritonclient's generated ``model_config_pb2``, loaded without importing grpc."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise NimbuildError("checking config.pbtxt needs the tritonclient package, which is not installed", hint=_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        raise NimbuildError(f"{path}: tritonclient has no model_config_pb2.py", hint="pip install -U tritonclient")
    mod_spec = importlib.util.spec_from_file_location("nimbuild_triton_model_config_pb2", path)
    if mod_spec is None or mod_spec.loader is None:
        raise NimbuildError(f"{path}: cannot be loaded as a Python module", hint="pip install -U tritonclient")
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except ImportError as exc:
        raise NimbuildError(f"cannot load Triton's ModelConfig schema: {exc}", hint=_HINT) from None
    return module


def schema_available() -> bool:
    try:
        model_config_module()
    except NimbuildError:
        return False
    return True


def parse_config(text: str, where: str = "config.pbtxt") -> Any:
    """The ``ModelConfig`` message of ``text``; a NimbuildError naming ``where`` and the line."""
    from google.protobuf import text_format

    config = model_config_module().ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise NimbuildError(
            f"{where}: not a valid Triton ModelConfig: {exc}", hint="fix the template or the values it was given"
        ) from None
    return config


def dtype_name(config_module: Any, value: int) -> str:
    """DataType enum number -> 'TYPE_INT64'."""
    return str(config_module.DataType.Name(value))
