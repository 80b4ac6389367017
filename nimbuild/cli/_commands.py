"""Which module holds which command group. Adding a group is one line here."""

from __future__ import annotations

import importlib

import typer

# module name under nimbuild.cli -> each module exposes register(app)
COMMAND_MODULES = (
    "recipe",  # nimbuild recipe check
    "export",  # nimbuild export
    "engines",  # nimbuild engines
    "manifest",  # nimbuild manifest build|merge|show|verify
    "render",  # nimbuild render, create-model-store, download-to-cache
    "plan",  # nimbuild plan
    "build",  # nimbuild build
    "profiles",  # nimbuild list-model-profiles, select
    "serve",  # nimbuild serve
)


def register(app: typer.Typer) -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"nimbuild.cli.{name}")
        except ModuleNotFoundError as exc:  # a group not written yet
            if exc.name == f"nimbuild.cli.{name}":
                continue
            raise
        module.register(app)
