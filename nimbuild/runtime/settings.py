"""Every ``NIM_*`` environment variable nimbuild reads, read here once and validated at the boundary.

A container is configured through its environment, and a value that cannot
work (``NIM_MAX_QUEUE_DELAY_MS=inf``, a port of 99999, ``NIM_CPU_ONLY=maybe``)
must stop it at start with one line naming the variable, the value and what is
expected, not hang it or crash it later. So the variables are declared once
(:data:`VARIABLES`: name, type, range, default, meaning; README.md's table lists
the same), parsed by one reader (:func:`read_settings`) into one typed
:class:`Settings`, and every module takes its values from there. Command-line
options that set the same thing (``--port``, ``--log-level``...) are checked by
the same rule (:meth:`Variable.check`).

An empty value counts as unset (``docker run -e NIM_CPU_ONLY=`` turns it off).
Light: stdlib and nimbuild.errors only; ``list-model-profiles`` reads it too.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from nimbuild.errors import NimbuildError

Kind = Literal["int", "float", "bool", "text", "path", "choice", "selector"]

TRUE = ("1", "true", "yes", "on", "y", "t")
FALSE = ("0", "false", "no", "off", "n", "f")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
BACKENDS = ("auto", "onnxruntime", "triton")
DEFAULT_MANIFEST = "manifest.yaml"
# The variables that override the choice of profile (the listing shows the groups without them when they fail).
OVERRIDE_VARIABLES = ("NIM_MODEL_PROFILE", "NIM_TAGS_SELECTOR")

_INT = re.compile(r"^[+-]?[0-9]{1,30}$")
_FLOAT = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,4})?$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOT_FINITE = re.compile(r"^[+-]?(inf|infinity|nan)$", re.IGNORECASE)


@dataclass(frozen=True)
class Variable:
    """One setting: what it holds, which values it takes, what it does (the README's table row)."""

    name: str
    kind: Kind
    doc: str
    default: str = ""  # as the README shows it
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()

    def expected(self) -> str:
        """What a valid value looks like, in words."""
        if self.kind == "int":
            return f"an integer between {_num(self.low)} and {_num(self.high)}"
        if self.kind == "float":
            return f"a finite number between {_num(self.low)} and {_num(self.high)}"
        if self.kind == "bool":
            return "a boolean (1, true, yes, on or 0, false, no, off)"
        if self.kind == "choice":
            return f"one of {', '.join(self.choices)}"
        if self.kind == "selector":
            return "comma-separated tag=value pairs, e.g. precision=fp16,backend=onnx"
        if self.kind == "path":
            return "a path (no control characters)"
        return "text (no control characters)"

    def check(self, value: object, given_as: str | None = None) -> object:
        """``value`` (text from the environment, or a typed command-line value) validated by this rule.

        ``given_as`` names where it came from in messages (``--port``); the variable otherwise.
        """
        label = given_as or self.name
        shown = f"{label} {value!r}" if given_as else f"{label}={value!r}"
        text = value.strip() if isinstance(value, str) else value
        hint = f"give {label} such a value" if given_as else f"unset {self.name} or give it such a value"

        def bad(why: str) -> NimbuildError:
            return NimbuildError(f"{shown} {why}: expected {self.expected()}", hint=hint)

        if self.kind in ("int", "float"):
            if isinstance(text, bool):
                raise bad("is not a number")
            if isinstance(text, str):
                pattern = _INT if self.kind == "int" else _FLOAT
                if not pattern.match(text):
                    if _NOT_FINITE.match(text):
                        raise bad("is not finite")
                    raise bad("is not a number" if not _FLOAT.match(text) else "is not an integer")
                number: float = int(text) if self.kind == "int" else float(text)
            elif isinstance(text, (int, float)):
                number = text
            else:
                raise bad("is not a number")
            if self.kind == "int" and not float(number).is_integer():
                raise bad("is not an integer")
            if not math.isfinite(number):
                raise bad("is not finite")
            if (self.low is not None and number < self.low) or (self.high is not None and number > self.high):
                raise bad("is out of range")
            return int(number) if self.kind == "int" else float(number)
        if not isinstance(text, str):
            raise bad("is not text")
        if self.kind == "bool":
            low = text.lower()
            if low in TRUE:
                return True
            if low in FALSE:
                return False
            raise bad("is not a boolean")
        if self.kind == "choice":
            low = text.lower()
            if low not in self.choices:
                raise bad("is not known")
            return low
        if _CONTROL.search(text):
            raise bad("contains a control character")
        if self.kind == "selector":
            return parse_tags_selector(text, label)
        if self.kind == "path":
            return Path(text).expanduser()
        return text


def _num(value: float | None) -> str:
    if value is None:
        return "any"
    return str(int(value)) if float(value).is_integer() else str(value)


VARIABLES: tuple[Variable, ...] = (
    # selection
    Variable(
        "NIM_MANIFEST_PATH",
        "path",
        "the manifest to select from and serve (unset: ./manifest.yaml, else a NIM image's "
        "/opt/nim/etc/default/model_manifest.yaml or /etc/nim/config/model_manifest.yaml)",
        DEFAULT_MANIFEST,
    ),
    Variable("NIM_MODEL_PROFILE", "text", "the profile to run: a full ID, a unique ID prefix (8+) or a name"),
    Variable("NIM_TAGS_SELECTOR", "selector", "only profiles with these tags, e.g. precision=fp16,backend=onnx"),
    Variable("NIM_CPU_ONLY", "bool", "treat the host as having no GPU (GPU profiles become incompatible)", "0"),
    Variable(
        "NIM_CACHE_PATH",
        "path",
        "where download-to-cache puts profile files (a remote one at remote/<scheme>/<host>/<path>); selection "
        "prefers cached profiles, and a remote file counts only once it is here",
    ),
    # the HTTP server
    Variable("NIM_HTTP_API_HOST", "text", "address `serve` listens on (--host)", "0.0.0.0"),
    Variable("NIM_HTTP_API_PORT", "int", "port of the HTTP API (--port)", "8000", 1, 65535),
    Variable("NIM_SERVE_BACKEND", "choice", "how `serve` runs the model (--backend)", "auto", choices=BACKENDS),
    Variable("NIM_LOG_LEVEL", "choice", "log level of `serve` (--log-level)", "info", choices=LOG_LEVELS),
    Variable("NIM_ACCESS_LOG", "bool", "log every HTTP request", "0"),
    Variable(
        "NIM_GRACEFUL_SHUTDOWN_SECONDS", "int", "how long in-flight requests may finish on SIGTERM", "30", 0, 3600
    ),
    # connections (nimbuild.runtime.serve.connections)
    Variable(
        "NIM_HTTP_HEADER_TIMEOUT_SECONDS",
        "float",
        "from a connection's start (or a keep-alive connection's next first byte) to the end of the request "
        "headers; then 408 JSON, or a close if nothing came",
        "10",
        0.001,
        3600,
    ),
    Variable(
        "NIM_HTTP_BODY_TIMEOUT_SECONDS",
        "float",
        "from the end of the headers to the end of the body (then 408 JSON in the route's shape); also how long "
        "a client may stop reading its response",
        "60",
        0.001,
        3600,
    ),
    Variable(
        "NIM_HTTP_KEEP_ALIVE_SECONDS", "float", "an idle keep-alive connection is closed after this", "30", 0.001, 3600
    ),
    Variable(
        "NIM_HTTP_MAX_CONNECTIONS",
        "int",
        "open connections; at the ceiling the longest-idle one is closed to make room, and when all are "
        "mid-request a new one gets 503 JSON; more than the open-file limit allows is an error at start",
        "min(2048, open-file limit − max(64, limit/8) − 32)",
        1,
        1_000_000,
    ),
    # request limits and batching
    Variable("NIM_MAX_PASSAGES", "int", "passages per request (beyond: 422)", "1000", 1, 1_000_000),
    Variable("NIM_MAX_REQUEST_BYTES", "int", "request body size (beyond: 413)", "8388608", 1, 1 << 34),
    Variable("NIM_MAX_TEXT_CHARS", "int", "characters of the query or of one passage (beyond: 422)", "65536", 1, 10**8),
    Variable("NIM_MAX_QUEUED_PASSAGES", "int", "passages waiting to run (beyond: 429)", "100000", 1, 10**8),
    Variable("NIM_MAX_BATCH_SIZE", "int", "rows per model call, at most the profile's max_batch_size", "", 1, 65536),
    Variable("NIM_MAX_QUEUE_DELAY_MS", "float", "how long a model call waits for more rows, in ms", "2", 0, 10_000),
    Variable(
        "NIM_TRITON_MAX_BATCH_SIZE",
        "int",
        "the reranking NIM's name for NIM_MAX_BATCH_SIZE (also Triton's max_batch_size)",
        "",
        1,
        65536,
    ),
    Variable(
        "NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS",
        "int",
        "the reranking NIM's name for the queue delay, in µs (also Triton's dynamic batching)",
        "100 (Triton)",
        0,
        10_000_000,
    ),
    # backends
    Variable("NIM_ORT_INTRA_OP_THREADS", "int", "ONNX Runtime threads per session (0: its default)", "0", 0, 4096),
    Variable("NIM_ORT_CPU_ARENA", "bool", "ONNX Runtime's CPU memory arena", "1"),
    Variable("NIM_TRITONSERVER", "text", "the tritonserver executable (name on PATH or a path)", "tritonserver"),
    Variable("NIM_TRITON_START_TIMEOUT", "float", "seconds to wait for tritonserver to be ready", "600", 0.001, 86400),
)
BY_NAME: dict[str, Variable] = {v.name: v for v in VARIABLES}


@dataclass(frozen=True)
class Settings:
    """The validated values of every ``NIM_*`` variable (defaults where unset); ``Settings()`` is all defaults."""

    manifest_path: Path = Path(DEFAULT_MANIFEST)
    manifest_path_set: bool = False  # NIM_MANIFEST_PATH was given (for messages: where the path came from)
    model_profile: str | None = None
    tags_selector: dict[str, str] = field(default_factory=dict)
    tags_selector_text: str | None = None
    cpu_only: bool = False
    cpu_only_text: str | None = None  # the value as given, for "NIM_CPU_ONLY=1 is set"
    cache_path: Path | None = None
    http_api_host: str = "0.0.0.0"
    http_api_port: int = 8000
    serve_backend: str = "auto"
    log_level: str = "info"
    access_log: bool = False
    graceful_shutdown_seconds: int = 30
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 60.0
    http_keep_alive_s: float = 30.0
    http_max_connections: int | None = None  # None: as many as the open-file limit allows (connections.py)
    max_passages: int = 1000
    max_request_bytes: int = 8 * 1024**2
    max_text_chars: int = 65536
    max_queued_passages: int = 100_000
    max_batch_size: int | None = None  # NIM_MAX_BATCH_SIZE, else NIM_TRITON_MAX_BATCH_SIZE
    max_queue_delay_ms: float | None = None  # NIM_MAX_QUEUE_DELAY_MS, else the Triton variable / 1000
    triton_max_batch_size: int | None = None
    triton_max_queue_delay_us: int | None = None
    ort_intra_op_threads: int = 0
    ort_cpu_arena: bool = True
    tritonserver: str = "tritonserver"
    triton_start_timeout_s: float = 600.0

    @property
    def cpu_only_reason(self) -> str | None:
        """Why GPU profiles are out because of the environment, in the words the listing prints."""
        return f"NIM_CPU_ONLY={self.cpu_only_text} is set" if self.cpu_only else None

    @property
    def overrides(self) -> dict[str, str]:
        """The selection overrides given (as text), for logs and ``--json``."""
        given = {"NIM_TAGS_SELECTOR": self.tags_selector_text, "NIM_MODEL_PROFILE": self.model_profile}
        return {k: v for k, v in given.items() if v}


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or not str(value).strip():
        return None
    return str(value).strip()


def read_settings(env: Mapping[str, str] = os.environ) -> Settings:
    """Every ``NIM_*`` variable of ``env``, validated; the first bad one is a NimbuildError naming it."""
    values: dict[str, object] = {}
    raw: dict[str, str] = {}
    for variable in VARIABLES:
        text = _raw(env, variable.name)
        if text is not None:
            raw[variable.name] = text
            values[variable.name] = variable.check(text)
    got = _Values(values)
    base = Settings()
    triton_delay = got.int_or_none("NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS")
    delay_ms = got.float_or_none("NIM_MAX_QUEUE_DELAY_MS")
    if delay_ms is None and triton_delay is not None:
        delay_ms = triton_delay / 1000.0
    triton_batch = got.int_or_none("NIM_TRITON_MAX_BATCH_SIZE")
    batch = got.int_or_none("NIM_MAX_BATCH_SIZE")
    selector = values.get("NIM_TAGS_SELECTOR", {})
    assert isinstance(selector, dict)
    return Settings(
        manifest_path=got.path_or_none("NIM_MANIFEST_PATH") or base.manifest_path,
        manifest_path_set="NIM_MANIFEST_PATH" in values,
        model_profile=raw.get("NIM_MODEL_PROFILE"),
        tags_selector=selector,
        tags_selector_text=raw.get("NIM_TAGS_SELECTOR"),
        cpu_only=got.flag("NIM_CPU_ONLY", False),
        cpu_only_text=raw.get("NIM_CPU_ONLY"),
        cache_path=got.path_or_none("NIM_CACHE_PATH"),
        http_api_host=raw.get("NIM_HTTP_API_HOST", base.http_api_host),
        http_api_port=got.int_or_none("NIM_HTTP_API_PORT") or base.http_api_port,
        serve_backend=str(values.get("NIM_SERVE_BACKEND", base.serve_backend)),
        log_level=str(values.get("NIM_LOG_LEVEL", base.log_level)),
        access_log=got.flag("NIM_ACCESS_LOG", base.access_log),
        graceful_shutdown_seconds=got.int_or("NIM_GRACEFUL_SHUTDOWN_SECONDS", base.graceful_shutdown_seconds),
        http_header_timeout_s=got.float_or("NIM_HTTP_HEADER_TIMEOUT_SECONDS", base.http_header_timeout_s),
        http_body_timeout_s=got.float_or("NIM_HTTP_BODY_TIMEOUT_SECONDS", base.http_body_timeout_s),
        http_keep_alive_s=got.float_or("NIM_HTTP_KEEP_ALIVE_SECONDS", base.http_keep_alive_s),
        http_max_connections=got.int_or_none("NIM_HTTP_MAX_CONNECTIONS"),
        max_passages=got.int_or("NIM_MAX_PASSAGES", base.max_passages),
        max_request_bytes=got.int_or("NIM_MAX_REQUEST_BYTES", base.max_request_bytes),
        max_text_chars=got.int_or("NIM_MAX_TEXT_CHARS", base.max_text_chars),
        max_queued_passages=got.int_or("NIM_MAX_QUEUED_PASSAGES", base.max_queued_passages),
        max_batch_size=batch if batch is not None else triton_batch,
        max_queue_delay_ms=delay_ms,
        triton_max_batch_size=triton_batch,
        triton_max_queue_delay_us=triton_delay,
        ort_intra_op_threads=got.int_or("NIM_ORT_INTRA_OP_THREADS", base.ort_intra_op_threads),
        ort_cpu_arena=got.flag("NIM_ORT_CPU_ARENA", base.ort_cpu_arena),
        tritonserver=raw.get("NIM_TRITONSERVER", base.tritonserver),
        triton_start_timeout_s=got.float_or_none("NIM_TRITON_START_TIMEOUT") or base.triton_start_timeout_s,
    )


@dataclass(frozen=True)
class _Values:
    """The checked values by variable name, read back with their types."""

    values: Mapping[str, object]

    def int_or_none(self, name: str) -> int | None:
        value = self.values.get(name)
        assert value is None or isinstance(value, int)
        return value

    def int_or(self, name: str, default: int) -> int:
        value = self.int_or_none(name)
        return default if value is None else value

    def float_or_none(self, name: str) -> float | None:
        value = self.values.get(name)
        assert value is None or isinstance(value, float)
        return value

    def float_or(self, name: str, default: float) -> float:
        value = self.float_or_none(name)
        return default if value is None else value

    def flag(self, name: str, default: bool) -> bool:
        value = self.values.get(name, default)
        assert isinstance(value, bool)
        return value

    def path_or_none(self, name: str) -> Path | None:
        value = self.values.get(name)
        assert value is None or isinstance(value, Path)
        return value


def parse_tags_selector(text: str, label: str = "NIM_TAGS_SELECTOR") -> dict[str, str]:
    """``"precision=fp16,backend=onnx"`` -> {"precision": "fp16", "backend": "onnx"}."""
    wanted: dict[str, str] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise NimbuildError(
                f"{label}={text!r}: {part.strip()!r} is not key=value",
                hint="write it as comma-separated key=value pairs, e.g. NIM_TAGS_SELECTOR=precision=fp16,backend=onnx",
            )
        if key in wanted and wanted[key] != value:
            raise NimbuildError(
                f"{label}={text!r}: {key} is given twice ({wanted[key]!r} and {value!r})",
                hint="give each tag once",
            )
        wanted[key] = value
    return wanted


def option_text(name: str, value: str, option: str) -> str:
    """A text command-line option that sets what variable ``name`` sets, checked by the same rule."""
    checked = BY_NAME[name].check(value, given_as=option)
    assert isinstance(checked, str)
    return checked


def option_int(name: str, value: int, option: str) -> int:
    """An integer command-line option that sets what variable ``name`` sets, checked by the same rule."""
    checked = BY_NAME[name].check(value, given_as=option)
    assert isinstance(checked, int)
    return checked


def check_range(value: int | float, option: str, low: float, high: float) -> None:
    """A numeric command-line option within ``low..high`` (a NimbuildError naming it otherwise)."""
    Variable(option, "int" if isinstance(value, int) else "float", "", low=low, high=high).check(value, option)
