"""Serve-time overrides of a rendered repository: a smaller batch limit, another queue delay.

``NIM_TRITON_MAX_BATCH_SIZE`` and ``NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS``
(the reranking NIM's own names) re-render the configs from the repository's
record before ``tritonserver`` starts; no graph and no onnx needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError
from nimbuild.runtime.settings import Settings, read_settings
from nimbuild.runtime.triton_repo.checks import check_configs
from nimbuild.runtime.triton_repo.contexts import preferred_sizes, render_configs
from nimbuild.runtime.triton_repo.layout import ENV_MAX_BATCH, REPOSITORY_INFO
from nimbuild.runtime.triton_repo.record import read_repository_info


def requested_overrides(settings: Settings, limit: int) -> tuple[int | None, int | None]:
    """(max batch size, max queue delay in µs) that the settings ask of a repository whose profile allows ``limit``.

    The batch size may only shrink: an engine or graph was built for at most its
    profile's max_batch_size (``settings`` have already checked both are integers).
    """
    batch = settings.triton_max_batch_size
    if batch is not None and not 1 <= batch <= limit:
        raise NimbuildError(
            f"{ENV_MAX_BATCH}='{batch}': expected an integer 1..{limit} (the profile's max_batch_size)",
            hint=f"unset {ENV_MAX_BATCH} or give a value in 1..{limit}",
        )
    return batch, settings.triton_max_queue_delay_us


def with_overrides(
    info: dict[str, Any], *, max_batch_size: int | None = None, max_queue_delay_us: int | None = None
) -> dict[str, Any]:
    """``info`` with a smaller batch limit and/or another queue delay, in every model's context."""
    limit = int(info["limits"]["max_batch_size"])
    batch = int(info["serving"]["max_batch_size"]) if max_batch_size is None else int(max_batch_size)
    if not 1 <= batch <= limit:
        raise NimbuildError(
            f"max batch size {batch} is outside 1..{limit} (the profile's max_batch_size: "
            "its engine or graph was built for at most that)",
            hint=f"set {ENV_MAX_BATCH} to at most {limit}",
        )
    delay = int(info["serving"]["max_queue_delay_us"]) if max_queue_delay_us is None else int(max_queue_delay_us)
    options = info["serving"].get("options", {})
    preferred = preferred_sizes(options.get("preferred_batch_sizes", info["serving"]["preferred_batch_sizes"]), batch)
    new: dict[str, Any] = json.loads(json.dumps(info))
    new["serving"].update(max_batch_size=batch, max_queue_delay_us=delay, preferred_batch_sizes=preferred)
    for spec in new["models"].values():
        ctx = spec["context"]
        ctx["max_batch_size"] = batch
        if "max_queue_delay_us" in ctx:
            ctx["max_queue_delay_us"] = delay
            ctx["preferred_batch_sizes"] = preferred
    return new


def apply_serving_overrides(repository: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Re-render a repository's configs with ``NIM_TRITON_MAX_BATCH_SIZE`` and
    ``NIM_TRITON_DYNAMIC_BATCHING_MAX_QUEUE_DELAY_MICROSECONDS`` from ``env``.

    For ``nimbuild serve`` before it starts tritonserver. The batch size may
    only shrink (1..the profile's max_batch_size); preferred sizes above it are
    dropped. Returns ``{"max_batch_size", "max_queue_delay_us", "changed"}``.
    Needs no graph and no onnx: the contexts are in the repository's record.
    """
    from nimbuild.fsutil import atomic_write_text, write_json

    settings = read_settings(os.environ if env is None else env)
    repository = Path(repository)
    info = read_repository_info(repository)
    batch, delay = requested_overrides(settings, int(info["limits"]["max_batch_size"]))
    new = with_overrides(info, max_batch_size=batch, max_queue_delay_us=delay)
    changed = new["serving"] != info["serving"]
    if changed:
        texts = render_configs(new["models"])
        check_configs(texts, new, require_schema=False)
        for name, text in texts.items():
            atomic_write_text(repository / name / "config.pbtxt", text)
        write_json(repository / REPOSITORY_INFO, new)
    return {
        "max_batch_size": new["serving"]["max_batch_size"],
        "max_queue_delay_us": new["serving"]["max_queue_delay_us"],
        "changed": changed,
    }
