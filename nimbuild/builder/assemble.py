"""Assemble an export dir's manifest: ONNX profiles from export_report.json, plus engine fragments.

The export leaves one graph per precision that passed its accuracy gate; this
turns them into profiles (GPU fp16 for Triton's ONNX Runtime backend, CPU fp32
and CPU int8 for ONNX Runtime), each listing its graph and the tokenizer files,
and merges in the TensorRT fragments the engine builds left (each engine
profile gets the tokenizer files too, so that it is servable on its own).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from nimbuild import __version__, manifest_merge, manifest_paths
from nimbuild import manifest as mf
from nimbuild.errors import NimbuildError
from nimbuild.export_layout import CPU_FRAGMENTS_DIR, MANIFEST_FILE, REPORT_FILE, TOKENIZER_DIR, read_export_report
from nimbuild.profiles import onnx_profile_tags, profile_id, profile_name

FRAGMENT_GLOB = "engines/*/fragment.yaml"
CPU_FRAGMENT_GLOB = f"{CPU_FRAGMENTS_DIR}/*/fragment.yaml"  # write_cpu_fragment: one CPU class's int8 profile (CI)
FRAGMENT_GLOBS = (FRAGMENT_GLOB, CPU_FRAGMENT_GLOB)
# report precision key -> (device of the ONNX profile); fp8 Q/DQ graphs are for TensorRT only.
# CPU int8 entries are one per CPU class (``int8-<class>``, with their ``cpu_isa``): see _onnx_entries.
ONNX_PROFILES = {"fp16": "gpu", "fp32": "cpu"}


def graph_files(export_dir: Path, graph_rel: str) -> list[str]:
    """The graph and its external-data files (``model.onnx.data``...), as relative paths."""
    graph = manifest_paths.safe_join(export_dir, graph_rel)
    if not graph.is_file():
        raise NimbuildError(
            f"{graph}: the export report lists this graph but it is missing", hint="re-run `nimbuild export`"
        )
    rels = [manifest_paths.check_relpath(graph_rel)]
    for sibling in sorted(graph.parent.iterdir()):
        if sibling != graph and sibling.is_file() and sibling.name.startswith(graph.name):
            rels.append(sibling.relative_to(export_dir).as_posix())
    return rels


def tokenizer_files(export_dir: Path) -> list[str]:
    folder = Path(export_dir) / TOKENIZER_DIR
    if not folder.is_dir():
        return []
    return sorted(p.relative_to(export_dir).as_posix() for p in folder.rglob("*") if p.is_file())


def header_from_report(report: Mapping) -> dict:
    header = {"model": report["model"], "version": __version__}
    for key in ("model_revision", "recipe_sha256"):
        if report.get(key):
            header[key] = str(report[key])
    return header


def _onnx_entries(export_dir: Path, report: Mapping) -> list[tuple[str, str, str | None, Mapping]]:
    """(precision, device, cpu_isa, report entry) of every graph that becomes an ONNX profile."""
    found: list[tuple[str, str, str | None, Mapping]] = []
    for key, entry in report["precisions"].items():
        if key in ONNX_PROFILES:
            found.append((key, ONNX_PROFILES[key], None, entry))
        elif entry.get("precision") == "int8" and entry.get("cpu_isa"):
            found.append(("int8", "cpu", entry["cpu_isa"], entry))
        elif key == "int8" and entry.get("status") == "passed":
            raise NimbuildError(
                f"{Path(export_dir) / REPORT_FILE}: its int8 graph names no cpu_isa class (an older nimbuild made it, "
                "with a weight range chosen by the machine that built it)",
                hint="re-run `nimbuild export` (or `nimbuild build`): each CPU class then gets its own graph",
            )
    return found


def onnx_profiles(export_dir: Path, report: Mapping, tokenizer: list[str]) -> list[mf.Profile]:
    out = []
    for precision, device, cpu_class, entry in _onnx_entries(export_dir, report):
        if entry.get("status") != "passed" or not entry.get("path"):
            continue
        tags = onnx_profile_tags(
            report["model"],
            str(report.get("model_revision", "unknown")),
            precision,
            device,
            report["max_batch_size"],
            report["max_sequence_length"],
            cpu_isa=cpu_class,
        )
        graphs = graph_files(export_dir, entry["path"])
        files = {rel: mf.file_entry(export_dir, rel) for rel in [*graphs, *tokenizer]}
        metrics: dict[str, object] = {"size_bytes": sum(files[rel].size or 0 for rel in graphs)}
        if entry.get("gate") is not None:
            metrics["gate"] = entry["gate"]
        if entry.get("seconds") is not None:
            metrics["build_seconds"] = round(float(entry["seconds"]), 3)
        if cpu_class is not None:  # what was judged where: the class's weights, the CPU the gate ran on
            metrics["weight_bits"] = entry.get("weight_bits")
            if entry.get("judged_on"):
                metrics["judged_on"] = entry["judged_on"]
        out.append(mf.Profile(id=profile_id(tags), name=profile_name(tags), tags=tags, files=files, metrics=metrics))
    return out


def _with_tokenizer(fragment: mf.Manifest, export_dir: Path, tokenizer: list[str], report: Mapping) -> mf.Manifest:
    """The fragment's profiles rebased into the export dir, each also listing the tokenizer files."""
    rebased = manifest_merge.merge_manifests([fragment], root=export_dir)
    revision = str(report.get("model_revision", "unknown"))
    for p in rebased.profiles:
        if p.tags.get("model") != report["model"] or p.tags.get("model_revision", revision) != revision:
            raise NimbuildError(
                f"{fragment.source}: profile {p.name!r} was built from model {p.tags.get('model')!r} "
                f"revision {p.tags.get('model_revision')!r}, this export is {report['model']!r} revision {revision!r}",
                hint="build the engines from this export dir (or merge that fragment into its own manifest)",
            )
        for rel in tokenizer:
            p.files.setdefault(rel, mf.file_entry(export_dir, rel))
    return rebased


def assemble_manifest(
    export_dir: str | Path, fragments: Iterable[str | Path] = (), *, discover: bool = True
) -> mf.Manifest:
    """The export dir's manifest (not yet written): ONNX profiles + every engine fragment.

    ``discover`` also picks up ``engines/*/fragment.yaml`` and ``cpu/*/fragment.yaml`` under the export dir.
    """
    export_dir = Path(export_dir)
    report = read_export_report(export_dir)
    tokenizer = tokenizer_files(export_dir)
    base = mf.Manifest(
        profiles=onnx_profiles(export_dir, report, tokenizer),
        header=header_from_report(report),
        root=export_dir,
        source=export_dir / REPORT_FILE,
    )
    paths = {Path(f).resolve() for f in fragments}
    if discover:
        paths |= {p.resolve() for pattern in FRAGMENT_GLOBS for p in export_dir.glob(pattern)}
    parts = [base]
    for path in sorted(paths):
        part = _with_tokenizer(mf.load_manifest(path), export_dir, tokenizer, report)
        part.profiles = [p for p in part.profiles if not _also_exported(p, base)]
        parts.append(part)
    return manifest_merge.merge_manifests(parts, root=export_dir)


def _graph_digests(profile: mf.Profile) -> set[str | None]:
    return {e.sha256 for rel, e in profile.files.items() if not rel.startswith("tokenizer/")}


def _also_exported(profile: mf.Profile, base: mf.Manifest) -> bool:
    """A CPU fragment's profile that this export made too, with the same graph bytes (the same class built
    here and by its CI job): one copy is listed, the export's. Different bytes stay a merge conflict."""
    mine = base.by_id(profile.id)
    return mine is not None and _graph_digests(mine) == _graph_digests(profile)


def write_cpu_fragment(export_dir: str | Path, cpu_class: str) -> Path:
    """``EXPORT_DIR/cpu/<class>/fragment.yaml`` (+ the graph beside it): the class's int8 profile alone.

    What a CI job for one CPU class hands on (`nimbuild plan`): like an engine fragment, its paths are
    relative to its own folder, and the merge job's `nimbuild build` (or `manifest build`) discovers it
    and adds the tokenizer files. The export must have made and passed that class here.
    """
    from nimbuild import cpu_isa
    from nimbuild.fsutil import link_or_copy, staging_dir

    export_dir = Path(export_dir)
    cls = cpu_isa.lookup(cpu_class, "--cpu-isa")
    report = read_export_report(export_dir)
    entry = next((e for _, _, c, e in _onnx_entries(export_dir, report) if c == cls.name), None)
    if entry is None or entry.get("status") != "passed":
        why = (entry or {}).get("reason") or "the export did not make it (not in the recipe's cpu_isa, or no int8)"
        raise NimbuildError(
            f"{export_dir / REPORT_FILE}: no passed int8 graph for {cls.name}: {why}",
            hint=f"run `nimbuild export RECIPE --cpu-isa {cls.name}` on {cls.needs}",
        )
    (profile,) = [p for p in onnx_profiles(export_dir, report, []) if p.tags.get("cpu_isa") == cls.name]
    folder = export_dir / CPU_FRAGMENTS_DIR / cls.name
    with staging_dir(folder) as stage:
        files = {}
        for rel in profile.files:
            dest = stage / "int8" / Path(rel).name
            dest.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(export_dir / rel, dest)
            files[f"int8/{dest.name}"] = mf.file_entry(stage, f"int8/{dest.name}")
        fragment = mf.Manifest(
            profiles=[
                mf.Profile(id=profile.id, name=profile.name, tags=profile.tags, files=files, metrics=profile.metrics)
            ],
            header=header_from_report(report),
            root=stage,
        )
        mf.write_manifest(fragment, stage / "fragment.yaml")
    return folder / "fragment.yaml"


def build_manifest(
    export_dir: str | Path,
    fragments: Iterable[str | Path] = (),
    out: str | Path | None = None,
    *,
    discover: bool = True,
) -> tuple[mf.Manifest, Path]:
    """Assemble and write atomically (default ``EXPORT_DIR/manifest.yaml``); returns it and its path."""
    export_dir = Path(export_dir)
    out = Path(out) if out else export_dir / MANIFEST_FILE
    manifest = assemble_manifest(export_dir, fragments, discover=discover)
    if not manifest.profiles:
        raise NimbuildError(
            f"{export_dir}: no profile to list: no graph passed its gate and no engine fragment",
            hint=f"see {export_dir / REPORT_FILE} for why each precision was rejected",
        )
    mf.write_manifest(manifest, out)
    return mf.load_manifest(out), out
