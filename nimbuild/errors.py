"""The one exception type users see.

Anything that is the user's to fix (a bad recipe, a missing GPU, a manifest that
does not verify) is raised as :class:`NimbuildError`; the CLI prints it as one
line and exits 1. Everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class NimbuildError(Exception):
    """A user-facing error: say what is wrong, where (file, field) and the fix.

    ``hint`` is appended after the message ("... : do X") so that call sites can
    keep the diagnosis and the remedy apart.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}; {hint}")


def debug_enabled() -> bool:
    """NIMBUILD_DEBUG is set to a true value: keep tracebacks and tools' full logs."""
    import os

    return os.environ.get("NIMBUILD_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}
