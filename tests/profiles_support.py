"""Running the profile commands (list-model-profiles, select) in-process, as the CLI would, for the tests.

One helper for every test module that drives them: the NIM_* selection variables and NIMBUILD_DEBUG are
cleared first (a developer's shell must not change a verdict), then ``env`` is set.
"""

from __future__ import annotations

import pytest
import typer

from nimbuild.cli import profiles as profiles_cli
from nimbuild.cli import run

SELECTION_VARIABLES = ("NIM_MODEL_PROFILE", "NIM_TAGS_SELECTOR", "NIM_CACHE_PATH", "NIM_CPU_ONLY", "NIM_MANIFEST_PATH")


def run_profiles_cli(argv, capsys, monkeypatch, env=None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the profile commands run with ``argv``."""
    for key in SELECTION_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    app = typer.Typer(pretty_exceptions_enable=False)
    profiles_cli.register(app)
    with pytest.raises(SystemExit) as exc:
        run(app, argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err
