"""Which modules hold the command groups, registered explicitly (as huggingface_hub's ``hf.py``).

Adding a group is one import and one entry here. A module that fails to import
fails the CLI at once, so a packaging error never ships a CLI with commands
quietly missing. Each module imports typer and nothing heavy (its implementation
is imported inside the command function), so this stays cheap.
"""

from __future__ import annotations

from types import ModuleType

import typer

from nimbuild.cli import build, engines, export, manifest, plan, profiles, recipe, render, serve

COMMAND_MODULES: tuple[ModuleType, ...] = (
    recipe,  # nimbuild recipe check
    export,  # nimbuild export
    engines,  # nimbuild engines
    manifest,  # nimbuild manifest build|fragment|merge|show|verify
    render,  # nimbuild render, create-model-store, download-to-cache
    plan,  # nimbuild plan
    build,  # nimbuild build
    profiles,  # nimbuild list-model-profiles, select
    serve,  # nimbuild serve
)


def register(app: typer.Typer) -> None:
    for module in COMMAND_MODULES:
        module.register(app)
