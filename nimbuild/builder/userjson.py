"""JSON from files nimbuild did not write (a model's config.json, a pairs line): one-line errors, never a traceback.

``json.loads`` raises RecursionError on input nested a few thousand deep, ValueError
past 4300-digit integers and keeps the last of two equal keys silently; each is a
user's file to fix, so :func:`loads` turns them into a NimbuildError naming the
place (``file:line``) and refuses a key given twice in one object.
"""

from __future__ import annotations

import json
from typing import Any

from nimbuild.errors import NimbuildError


class _DuplicateKey(ValueError):
    pass


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _DuplicateKey(f"key {key!r} is given twice in one object")
        obj[key] = value
    return obj


def loads(text: str, where: str, hint: str) -> Any:
    """``json.loads(text)``, or a NimbuildError ``{where}: not JSON (...)`` with ``hint``."""
    try:
        return json.loads(text, object_pairs_hook=_unique)
    except _DuplicateKey as exc:
        raise NimbuildError(f"{where}: {exc}", hint="give each key once") from None
    except RecursionError:
        raise NimbuildError(f"{where}: not JSON nimbuild reads: nested too deeply", hint=hint) from None
    except ValueError as exc:  # JSONDecodeError, and int conversion past sys.get_int_max_str_digits()
        message = (
            f"{exc.msg} at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else str(exc).split(";")[0]
        )
        raise NimbuildError(f"{where}: not JSON ({message})", hint=hint) from None
