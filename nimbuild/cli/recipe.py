"""`nimbuild recipe check`: validate a recipe before anything is built."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nimbuild.cli.options import JsonOpt

recipe_app = typer.Typer(
    name="recipe",
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
    from nimbuild.output import Output
    from nimbuild.recipe import load_recipe

    out = Output(json_mode=json_mode)
    results = []
    for f in files:
        r = load_recipe(f)  # NimbuildError -> one line, exit 1
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
    data = {"ok": True, "recipes": results}

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


def register(app: typer.Typer) -> None:
    app.add_typer(recipe_app, name="recipe")
