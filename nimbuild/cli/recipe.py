"""`nimbuild recipe check`: validate a recipe before anything is built."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nimbuild.cli.options import JsonOpt

recipe_app = typer.Typer(
    name="recipe",
    rich_markup_mode=None,
    help="Check recipes (recipes/*.yaml).\n\nExample: nimbuild recipe check recipes/example-tiny.yaml",
    no_args_is_help=True,
)


@recipe_app.command("check")
def check(
    files: Annotated[list[Path], typer.Argument(help="Recipe file(s) to check.", show_default=False)],
    json_mode: JsonOpt = False,
) -> None:
    """Validate recipe files: every error names the file, the field, what was given and what was expected.

    Example: nimbuild recipe check recipes/example-tiny.yaml recipes/ms-marco-minilm-l6.yaml
    """
    from nimbuild.errors import NimbuildError
    from nimbuild.output import Output
    from nimbuild.recipe import load_recipe

    out = Output(json_mode=json_mode)
    results: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    for f in files:
        try:
            r = load_recipe(f)
            _check_local_files(r, f)
        except NimbuildError as exc:  # every file is checked; each problem is one line
            errors.append({"file": str(f), "error": str(exc)})
            continue
        if r.source.revision and set(r.source.revision) == {"0"}:
            out.warn(f"{f}: source.revision is a placeholder (all zeros): pin the real commit sha before building")
        results.append(
            {
                "file": str(f),
                "name": r.name,
                "sha256": r.sha256,
                "source": r.source.model_dump(exclude_none=True),
                "precisions": r.precisions,
                "gpus": [s.canonical for s in r.gpu_skus()],
                "shapes": r.shapes.model_dump(),
                "pairs": r.pairs,
            }
        )
    data = {"ok": not errors, "recipes": results, "errors": errors}

    def human(o: Output) -> None:
        for item in results:
            src = item["source"]
            where = f"{src['repo']}@{src['revision'][:12]}" if "repo" in src else src["path"]
            o.line(
                f"ok  {item['file']}: {item['name']} from {where}; precisions {','.join(item['precisions'])}; "
                f"gpus {','.join(item['gpus']) or '-'}; batch<={item['shapes']['batch']['max']} "
                f"seq<={item['shapes']['sequence']['max']}"
            )

    out.emit(data, human)
    if errors:
        for e in errors:
            out.error(e["error"])
        raise typer.Exit(1)


def _check_local_files(recipe, file: Path) -> None:
    """What the recipe points at on this disk must be usable: a typo'd path, a folder that is no model,
    remote code the recipe does not allow, or a malformed pairs file fails here, not mid-export.
    The export's own readers judge them (the weights are not hashed: this stays quick)."""
    from nimbuild.builder.pairs import load_pairs
    from nimbuild.builder.source import check_remote_code, read_config
    from nimbuild.errors import NimbuildError

    field = "source.path"
    try:
        if recipe.source.path:
            model_dir = recipe.resolve(recipe.source.path)
            if not model_dir.is_dir():
                raise NimbuildError(
                    f"model folder {model_dir} does not exist",
                    hint="give a folder saved with save_pretrained (relative to the recipe file), or use source.repo",
                )
            check_remote_code(model_dir, read_config(model_dir), recipe.trust_remote_code, f"model {model_dir}")
        field = "pairs"
        if recipe.pairs:
            load_pairs(recipe.resolve(recipe.pairs))
    except NimbuildError as exc:
        raise NimbuildError(f"recipe {file}: field '{field}': {exc.message}", hint=exc.hint) from None


def register(app: typer.Typer) -> None:
    app.add_typer(recipe_app, name="recipe")
