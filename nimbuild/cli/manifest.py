"""`nimbuild manifest build|fragment|merge|show|verify`: write, CPU-class fragments, merge, print, check."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from nimbuild.manifest import Manifest
    from nimbuild.output import Output

from nimbuild.cli.options import JsonOpt, QuietOpt

manifest_app = typer.Typer(
    name="manifest",
    rich_markup_mode=None,
    help=(
        "Write, merge, print and verify manifest.yaml (hashed profile IDs, sha256 per file).\n\n"
        "Example: nimbuild manifest verify out/example-tiny/manifest.yaml"
    ),
    no_args_is_help=True,
)

ManifestArg = Annotated[Path, typer.Argument(help="A manifest.yaml.", show_default=False)]


def _summary(m: Manifest) -> list[dict[str, Any]]:
    return [
        {
            "id": p.id,
            "name": p.name,
            "backend": p.tags.get("backend"),
            "device": p.tags.get("device"),
            "precision": p.tags.get("precision"),
            "gpu": p.tags.get("gpu"),
            "files": len(p.files),
            "size_bytes": sum(f.size for f in p.files.values()),
        }
        for p in m.profiles
    ]


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@manifest_app.command("build")
def build(
    export_dir: Annotated[
        Path, typer.Option("--export-dir", "-d", help="The export dir (export_report.json, onnx/, tokenizer/).")
    ],
    fragment: Annotated[
        list[Path] | None, typer.Option("--fragment", "-f", help="An engine fragment to merge in (repeatable).")
    ] = None,
    out_path: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to write it [default: EXPORT_DIR/manifest.yaml].")
    ] = None,
    no_discover: Annotated[
        bool,
        typer.Option(
            "--no-discover", help="Do not pick up EXPORT_DIR/engines/*/fragment.yaml and cpu/*/fragment.yaml."
        ),
    ] = False,
    json_mode: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Assemble the manifest of an export dir: its ONNX profiles plus every engine fragment.

    Example: nimbuild manifest build --export-dir out/example-tiny --fragment h100/fragment.yaml
    """
    from nimbuild.builder.assemble import build_manifest
    from nimbuild.output import Output

    out = Output(json_mode=json_mode, quiet=quiet)
    m, path = build_manifest(export_dir, fragment or [], out_path, discover=not no_discover)
    rows = _summary(m)
    out.emit({"manifest": str(path), "profiles": rows}, functools.partial(_print_built, path=path, rows=rows))


def _print_built(o: Output, path: Path, rows: list[dict[str, Any]]) -> None:
    o.table(
        ["id", "name", "files", "size"],
        [(r["id"], r["name"], r["files"], _size(r["size_bytes"])) for r in rows],
    )
    o.line(f"wrote {path} ({len(rows)} profiles)")


@manifest_app.command("fragment")
def fragment(
    export_dir: Annotated[
        Path, typer.Option("--export-dir", "-d", help="The export dir whose int8 graph of that class passed.")
    ],
    cpu_isa: Annotated[
        str, typer.Option("--cpu-isa", help="The CPU class (avx512_vnni, avx2, arm64_dotprod).", show_default=False)
    ],
    json_mode: JsonOpt = False,
) -> None:
    """Write EXPORT_DIR/cpu/<class>/fragment.yaml: one CPU class's int8 profile, for the merge job.

    A CI job for one CPU class (see `nimbuild plan`) exports on a runner with that class and hands this
    folder on; the merge job's `nimbuild build` discovers cpu/*/fragment.yaml like engines/*/fragment.yaml.

    Example: nimbuild manifest fragment --export-dir out --cpu-isa avx512_vnni
    """
    from nimbuild.builder.assemble import write_cpu_fragment
    from nimbuild.output import Output

    out = Output(json_mode=json_mode)
    path = write_cpu_fragment(export_dir, cpu_isa)
    out.emit({"fragment": str(path)}, f"wrote {path}")


@manifest_app.command("merge")
def merge(
    manifests: Annotated[list[Path], typer.Argument(help="Manifests or fragments to merge.", show_default=False)],
    out_path: Annotated[
        Path, typer.Option("--out", "-o", help="The merged manifest (its folder must hold every artifact).")
    ],
    json_mode: JsonOpt = False,
) -> None:
    """Merge fragments (e.g. one per CI runner) into one manifest: order-independent, idempotent.

    The same ID with different bytes is a conflict: reported, never overwritten.

    Example: nimbuild manifest merge out/engines/*/fragment.yaml out/manifest.yaml --out out/manifest.yaml
    """
    from nimbuild import manifest as mf
    from nimbuild import manifest_merge
    from nimbuild.output import Output

    out = Output(json_mode=json_mode)
    loaded = [mf.load_manifest(p) for p in manifests]
    merged = manifest_merge.merge_manifests(loaded, root=out_path.parent)
    mf.write_manifest(merged, out_path)
    rows = _summary(merged)
    out.emit(
        {"manifest": str(out_path), "inputs": [str(p) for p in manifests], "profiles": rows},
        f"merged {len(manifests)} manifest(s) into {out_path} ({len(rows)} profiles)",
    )


@manifest_app.command("show")
def show(
    manifest: ManifestArg,
    json_mode: JsonOpt = False,
) -> None:
    """Print a manifest's profiles (a table, or the whole manifest with --json).

    Example: nimbuild manifest show out/example-tiny/manifest.yaml --json
    """
    from nimbuild import manifest as mf
    from nimbuild.output import Output

    out = Output(json_mode=json_mode)
    m = mf.load_manifest(manifest)
    rows = _summary(m)

    def human(o: Output) -> None:
        if m.header:
            o.line("  ".join(f"{k}: {m.header[k]}" for k in sorted(m.header)))
        o.table(
            ["id", "name", "backend", "device", "precision", "gpu", "files", "size"],
            [
                (
                    r["id"],
                    r["name"],
                    r["backend"],
                    r["device"],
                    r["precision"],
                    r["gpu"] or "-",
                    r["files"],
                    _size(r["size_bytes"]),
                )
                for r in rows
            ],
            title=str(manifest),
        )

    out.emit(m.to_dict(), human)


@manifest_app.command("verify")
def verify(
    manifest: ManifestArg,
    no_files: Annotated[
        bool, typer.Option("--no-files", help="Check IDs only, not the files' sha256 and size.")
    ] = False,
    json_mode: JsonOpt = False,
) -> None:
    """Recompute every ID from its tags and every file's sha256 and size; exit 1 on any problem.

    Example: nimbuild manifest verify out/example-tiny/manifest.yaml
    """
    from nimbuild import manifest as mf
    from nimbuild import manifest_verify
    from nimbuild.output import Output

    out = Output(json_mode=json_mode)
    m = mf.load_manifest(manifest, check_ids=False)  # wrong IDs are listed below with the rest
    problems = manifest_verify.verify_manifest(m, check_files=not no_files)
    n_files = len({rel for p in m.profiles for rel in p.files})
    data = {
        "manifest": str(manifest),
        "ok": not problems,
        "problems": problems,
        "profiles": len(m.profiles),
        "files": n_files,
    }
    if problems:
        out.emit(data, "\n".join(f"FAIL {manifest}: {p}" for p in problems))
        raise typer.Exit(1)
    out.emit(
        data,
        f"ok  {manifest}: {len(m.profiles)} profiles, {n_files} files, every ID and checksum matches"
        if not no_files
        else f"ok  {manifest}: {len(m.profiles)} profiles, every ID matches",
    )


def register(app: typer.Typer) -> None:
    app.add_typer(manifest_app, name="manifest")
