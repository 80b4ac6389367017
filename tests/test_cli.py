"""The CLI shell: one-line errors, exit codes, debug tracebacks, help with examples."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from nimbuild.cli import run
from nimbuild.errors import NimbuildError


def _app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.command()
    def fail() -> None:
        raise NimbuildError("recipe x.yaml: field 'shapes.batch.max' is 0", hint="give a positive integer")

    @app.command()
    def ok() -> None:
        print("fine")

    return app


def test_nimbuild_error_is_one_line_and_exit_1(capsys, monkeypatch):
    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exc:
        run(_app(), ["fail"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err == "error: recipe x.yaml: field 'shapes.batch.max' is 0; give a positive integer\n"


def test_debug_keeps_the_traceback(monkeypatch):
    monkeypatch.setenv("NIMBUILD_DEBUG", "1")
    with pytest.raises(NimbuildError):
        run(_app(), ["fail"])


def test_success_exits_0(capsys):
    with pytest.raises(SystemExit) as exc:
        run(_app(), ["ok"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == "fine\n"


def _nimbuild(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nimbuild", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_every_command_has_help_with_an_example():
    """`nimbuild X --help` works for every registered command and shows an example."""
    from nimbuild.cli import _register, app

    _register()
    import typer.main

    group = typer.main.get_command(app)
    names = []
    for name, cmd in group.commands.items():
        sub = getattr(cmd, "commands", None)
        if sub:
            names += [(name, s) for s in sub]
        else:
            names.append((name,))
    assert names, "no commands registered"
    from typer.testing import CliRunner

    runner = CliRunner()
    for parts in names:
        res = runner.invoke(app, [*parts, "--help"])
        assert res.exit_code == 0, (parts, res.output)
        assert "Example" in res.output, f"`nimbuild {' '.join(parts)} --help` shows no example"


def test_module_entry_point_runs():
    res = _nimbuild("--help")
    assert res.returncode == 0, res.stderr
    assert "nimbuild" in res.stdout


def test_missing_optional_package_names_the_extra(capsys, monkeypatch):
    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.command()
    def export() -> None:
        raise ModuleNotFoundError("No module named 'transformers'", name="transformers")

    @app.command()
    def other() -> None:
        raise ModuleNotFoundError("No module named 'nimbuild_typo'", name="nimbuild_typo")

    with pytest.raises(SystemExit) as exc:
        run(app, ["export"])
    assert exc.value.code == 1
    assert capsys.readouterr().err == (
        "error: this command needs the Python package 'transformers', which is not installed; "
        "pip install 'nimbuild[build]'\n"
    )
    # anything that is not an optional dependency stays a bug, with its traceback
    with pytest.raises(ModuleNotFoundError):
        run(app, ["other"])


def test_usage_errors_are_one_line_with_exit_2():
    for args, expected in [
        (("nosuchcmd",), "error: No such command 'nosuchcmd'; see `nimbuild --help`"),
        (("engines",), "error: Missing argument 'RECIPE'; see `nimbuild engines --help`"),
        (
            ("list-model-profiles", "--bogus"),
            "error: No such option '--bogus'; see `nimbuild list-model-profiles --help`",
        ),
    ]:
        res = _nimbuild(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert res.stderr.strip() == expected


def test_file_system_errors_name_the_path(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.command()
    def write() -> None:
        from nimbuild.fsutil import atomic_write_text

        atomic_write_text(tmp_path, "x")  # a folder where a file goes

    @app.command()
    def nameless() -> None:
        raise OSError("socket trouble")  # no path: a bug, keeps its traceback

    with pytest.raises(SystemExit) as exc:
        run(app, ["write"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: a folder is where a file should be written: ")
    assert str(tmp_path) in err
    with pytest.raises(OSError):
        run(app, ["nameless"])


def test_every_command_module_is_registered_explicitly():
    """A command module is imported by name (a missing one fails the CLI at once), and none is left out."""
    from nimbuild.cli import _commands

    folder = Path(_commands.__file__).parent
    modules = {p.stem for p in folder.glob("*.py") if not p.stem.startswith("_") and p.stem != "options"}
    assert {m.__name__.rsplit(".", 1)[1] for m in _commands.COMMAND_MODULES} == modules
    source = Path(_commands.__file__).read_text(encoding="utf-8")
    assert "importlib" not in source and "ModuleNotFoundError" not in source  # nothing is skipped quietly
