"""Output folders (nimbuild.outdir): other people's files, one writer, kills at any moment (issue 13, 6 and 7).

The kill tests stop a real process with SIGKILL at every named step of a rebuild's swap
(``NIMBUILD_CRASH_AT``, nimbuild.fsutil.crash_point) and check what is left: a manifest
that verifies or none, no file the ledger does not know, and a next run that succeeds and
leaves no staging folder behind. One of them kills the real `nimbuild build` command.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import typer
import yaml

from nimbuild import manifest as mf
from nimbuild import manifest_verify
from nimbuild.builder.steps import BUILD_OUTPUTS, EXPORT_OUTPUTS
from nimbuild.errors import NimbuildError
from nimbuild.fsutil import is_temporary_name
from nimbuild.outdir import LEDGER_FILE, LOCK_FILE, STAGING_DIR, OutputFolder
from nimbuild.output import Output

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
NIMBUILD = str(Path(sys.executable).with_name("nimbuild"))


def _recipe(tmp_path: Path, precisions=("fp32",)) -> Path:
    """The example recipe with absolute paths (and only the precisions asked for)."""
    data = yaml.safe_load((REPO / "recipes/example-tiny.yaml").read_text())
    data["source"] = {"path": str(REPO / "recipes/models/example-tiny")}
    data["pairs"] = str(REPO / "recipes/pairs/example-tiny.jsonl")
    data["precisions"] = list(precisions)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _leftovers(out: Path) -> list[str]:
    """nimbuild's temporary entries, its staging area and lock file anywhere under ``out``."""
    found = []
    for root, dirs, files in os.walk(out):
        for name in dirs + files:
            if is_temporary_name(name) or name in (STAGING_DIR, LOCK_FILE, ".export.partial"):
                found.append(os.path.relpath(os.path.join(root, name), out))
    return found


# --------------------------------------------------------------------------- a build without torch

# A build whose export is the real run_export's swap (staging + swap_in) of a prepared export,
# with new bytes each time (``tag``): quick enough to kill at every step, no torch needed.
BUILD_SCRIPT = textwrap.dedent(
    """
    import json, shutil, sys, types
    from pathlib import Path
    out, src, recipe, tag = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]

    def run_export(recipe, out_dir, precisions, pairs, out, **options):
        from nimbuild.builder.steps import EXPORT_OUTPUTS
        from nimbuild.fsutil import crash_point
        from nimbuild.outdir import OutputFolder

        folder = OutputFolder(out_dir)
        with folder.staging("export") as stage:
            for name in EXPORT_OUTPUTS:
                (shutil.copytree if (src / name).is_dir() else shutil.copy2)(src / name, stage / name)
            with open(stage / "onnx/fp32/model.onnx", "ab") as fh:  # other bytes: an old manifest would lie
                fh.write(tag.encode())
            with open(stage / "tokenizer/tokenizer.json", "a") as fh:
                fh.write(" " * len(tag))
            crash_point("export:staged")
            folder.swap_in(stage, EXPORT_OUTPUTS)
        return json.loads((out_dir / "export_report.json").read_text())

    sys.modules["nimbuild.builder.pipeline"] = types.SimpleNamespace(run_export=run_export)
    from nimbuild.builder.steps import run_build
    from nimbuild.output import Output

    run_build(recipe, out, Output(quiet=True), force=True, engines=False, render=False)
    """
)

CRASH_POINTS = [
    "export:staged",
    "write:.nimbuild-owned.json",
    "swap:recorded",
    "swap:withdrawn",
    "swap:export_report.json",
    "stage:tokenizer",
    "swap:tokenizer",
    "stage:onnx",
    "swap:onnx",
    "swap:done",
    "write:manifest.yaml",
    "write:manifest.json",
]


def _run_script(out: Path, src: Path, recipe: Path, tag: str, crash: str | None = None):
    env = {k: v for k, v in os.environ.items() if k != "NIMBUILD_CRASH_AT"}
    if crash:
        env["NIMBUILD_CRASH_AT"] = crash
    return subprocess.run(
        [PY, "-c", BUILD_SCRIPT, str(out), str(src), str(recipe), tag],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def scripted_build(exported_example, tmp_path_factory):
    """A build folder made by BUILD_SCRIPT (tag "old") and the recipe it used."""
    root = tmp_path_factory.mktemp("scripted")
    recipe = _recipe(root)
    out = root / "build"
    proc = _run_script(out, exported_example, recipe, "old")
    assert proc.returncode == 0, proc.stderr
    assert manifest_verify.verify_manifest(mf.load_manifest(out / "manifest.yaml")) == []
    return out, recipe


def _graph_sha(manifest: mf.Manifest) -> str:
    return next(p for p in manifest.profiles).files["onnx/fp32/model.onnx"].sha256


def _check_consistent(out: Path) -> str | None:
    """What a kill may leave: a manifest that verifies (or none), and no file the ledger does not know."""
    folder = OutputFolder(out)
    for entry in BUILD_OUTPUTS:
        assert folder.foreign(entry) is None, f"{entry} has a file the ledger does not know after the kill"
    if not (out / "manifest.yaml").exists():
        return None
    manifest = mf.load_manifest(out / "manifest.yaml")
    problems = manifest_verify.verify_manifest(manifest)
    assert problems == [], "the manifest left by the kill names files that are not there"
    return _graph_sha(manifest)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_a_kill_at_any_step_leaves_the_old_build_the_new_one_or_no_manifest(
    point, scripted_build, exported_example, tmp_path
):
    original, recipe = scripted_build
    out = tmp_path / "build"
    shutil.copytree(original, out, symlinks=True)
    old_sha = _graph_sha(mf.load_manifest(out / "manifest.yaml"))
    killed = _run_script(out, exported_example, recipe, "new", crash=point)
    assert killed.returncode == -signal.SIGKILL, f"{point} was not reached: {killed.stderr[-2000:]}"
    _check_consistent(out)  # the old build, the new one, or no manifest: never one that lies
    again = _run_script(out, exported_example, recipe, "new")  # the next run starts from what is left
    assert again.returncode == 0, again.stderr[-2000:]
    new_sha = _check_consistent(out)
    assert new_sha is not None and new_sha != old_sha
    assert _leftovers(out) == []


def test_a_killed_real_build_is_recovered_by_the_next_one(tmp_path):
    """`nimbuild build --force` killed in the middle of its swap, then run again."""
    from nimbuild.builder.steps import run_build

    recipe = _recipe(tmp_path)
    out = tmp_path / "build"
    run_build(recipe, out, Output(quiet=True), engines=False, render=True)
    old = [p.id for p in mf.load_manifest(out / "manifest.yaml").profiles]
    env = {**os.environ, "NIMBUILD_CRASH_AT": "swap:tokenizer"}
    killed = subprocess.run(
        [NIMBUILD, "build", str(recipe), "--out", str(out), "--force", "--no-engines"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "manifest.yaml").exists()  # withdrawn: the graphs it listed are being replaced
    assert (out / STAGING_DIR).is_dir()  # what the killed run left
    res = run_build(recipe, out, Output(quiet=True), engines=False, render=True)
    assert {s.step: s.status for s in res.steps}["manifest"] == "built"
    assert manifest_verify.verify_manifest(mf.load_manifest(out / "manifest.yaml")) == []
    assert [p.id for p in mf.load_manifest(out / "manifest.yaml").profiles] == old  # the same profiles
    assert _leftovers(out) == []


# --------------------------------------------------------------------------- other people's files


@pytest.mark.parametrize(
    "entry", ["onnx/mine.onnx", "tokenizer/vocab.txt", "export_report.json", "manifest.yaml", "Dockerfile"]
)
def test_build_refuses_to_replace_what_nimbuild_did_not_write(entry, tmp_path, monkeypatch):
    from nimbuild.builder.steps import run_build

    out = tmp_path / "mine"
    (out / entry).parent.mkdir(parents=True)
    (out / entry).write_text("the user's own")
    (out / "notes.txt").write_text("unrelated")
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    with pytest.raises(NimbuildError) as exc:
        run_build(_recipe(tmp_path), out, Output(quiet=True), engines=False)
    message = str(exc.value)
    assert f"{out / entry}: not written by nimbuild" in message and "--force" in message and "\n" not in message
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before  # nothing written, nothing gone
    assert (out / entry).read_text() == "the user's own"


def test_render_keeps_a_users_dockerfile_unless_forced(exported_copy, tmp_path, capsys, monkeypatch):
    from nimbuild.builder.assemble import build_manifest
    from nimbuild.cli import render as render_cli
    from nimbuild.cli import run

    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    build_manifest(exported_copy)
    out = tmp_path / "image"
    out.mkdir()
    (out / "Dockerfile").write_text("FROM my-own-base\n")
    app = typer.Typer()
    app.callback()(lambda: None)
    render_cli.register(app)
    argv = ["render", "--manifest", str(exported_copy / "manifest.yaml"), "--out", str(out)]
    with pytest.raises(SystemExit) as code:
        run(app, argv)
    err = capsys.readouterr().err
    assert code.value.code == 1 and err.count("\n") == 1 and "Dockerfile: not written by nimbuild" in err
    assert (out / "Dockerfile").read_text() == "FROM my-own-base\n" and not (out / "triton").exists()
    with pytest.raises(SystemExit) as code:
        run(app, [*argv, "--force"])
    assert code.value.code == 0, capsys.readouterr().err
    assert "Rendered by nimbuild" in (out / "Dockerfile").read_text()
    with pytest.raises(SystemExit) as code:  # now it is nimbuild's: rendered again without --force
        run(app, argv)
    assert code.value.code == 0
    (out / "Dockerfile").write_text((out / "Dockerfile").read_text() + "RUN my-own-step\n")  # the user edits it
    with pytest.raises(SystemExit) as code:
        run(app, argv)
    assert code.value.code == 1 and "changed since" in capsys.readouterr().err


@pytest.mark.parametrize(
    "entry",
    [
        "Dockerfile.cpu",
        "Dockerfile.cpu.dockerignore",
        ".dockerignore",
        "manifest.cpu.yaml",
        "deploy/nimservice.yaml",
        "wheels/README.txt",
    ],
)
def test_render_keeps_a_users_image_and_deploy_files_unless_forced(entry, exported_copy, tmp_path):
    """What the images and deploy/ add to render (deploy's files) obeys the same ledger: a user's own file is
    refused before anything is written, replaced only with force; other files in deploy/ are never touched."""
    from nimbuild.builder.assemble import build_manifest
    from nimbuild.render.triton import render_all

    _, manifest = build_manifest(exported_copy)
    (exported_copy / entry).parent.mkdir(parents=True, exist_ok=True)
    (exported_copy / entry).write_text("the user's own\n")
    (exported_copy / "deploy").mkdir(exist_ok=True)
    (exported_copy / "deploy" / "my-ingress.yaml").write_text("kind: Ingress\n")
    before = sorted(p.relative_to(exported_copy).as_posix() for p in exported_copy.rglob("*"))
    with pytest.raises(NimbuildError) as exc:
        render_all(manifest, exported_copy)
    assert f"{exported_copy / entry}: not written by nimbuild" in str(exc.value) and "\n" not in str(exc.value)
    after = sorted(p.relative_to(exported_copy).as_posix() for p in exported_copy.rglob("*"))
    assert [p for p in after if p not in before and not p.startswith(".nimbuild")] == []  # nothing rendered
    assert (exported_copy / entry).read_text() == "the user's own\n"
    result = render_all(manifest, exported_copy, force=True)
    assert (exported_copy / entry).read_text() != "the user's own\n"
    assert (exported_copy / "deploy" / "my-ingress.yaml").read_text() == "kind: Ingress\n"
    assert len(result.deploy) == 3
    folder = OutputFolder(exported_copy)
    assert [
        e for e in ("Dockerfile", "Dockerfile.cpu", "manifest.cpu.yaml", "deploy/nimcache.yaml") if folder.foreign(e)
    ] == []
    render_all(manifest, exported_copy)  # now nimbuild's own: rendered again without force


@pytest.mark.parametrize("force", [False, True])
def test_a_file_where_render_needs_a_folder_is_refused_even_forced(force, exported_copy):
    """A user's file named deploy (where render writes deploy/*.yaml) is neither written through nor replaced by
    a folder, --force or not: one line naming it, and nothing rendered."""
    from nimbuild.builder.assemble import build_manifest
    from nimbuild.render.triton import render_all

    _, manifest = build_manifest(exported_copy)
    (exported_copy / "deploy").write_text("the user's own\n")
    before = sorted(p.relative_to(exported_copy).as_posix() for p in exported_copy.rglob("*"))
    with pytest.raises(NimbuildError) as exc:
        render_all(manifest, exported_copy, force=force)
    assert str(exc.value).startswith(f"{exported_copy / 'deploy'}: not a folder") and "\n" not in str(exc.value)
    after = sorted(p.relative_to(exported_copy).as_posix() for p in exported_copy.rglob("*"))
    assert [p for p in after if p not in before and not p.startswith(".nimbuild")] == []
    assert (exported_copy / "deploy").read_text() == "the user's own\n"


def test_a_users_wheelhouse_folder_is_refused_unless_forced(exported_copy, monkeypatch):
    from nimbuild.builder.assemble import build_manifest
    from nimbuild.render import wheelhouse
    from nimbuild.render.triton import render_all

    _, manifest = build_manifest(exported_copy)
    mine = exported_copy / "wheels" / "cpu"
    mine.mkdir(parents=True)
    (mine / "my.whl").write_bytes(b"not nimbuild's")
    calls = []
    monkeypatch.setattr(wheelhouse, "_write_wheelhouse", lambda final, target, wheel, out: calls.append(final))
    with pytest.raises(NimbuildError, match="wheels/cpu/my.whl: not written by nimbuild"):
        render_all(manifest, exported_copy, images={"wheelhouses": ["cpu"]})
    assert calls == [] and (mine / "my.whl").read_bytes() == b"not nimbuild's"
    render_all(manifest, exported_copy, images={"wheelhouses": ["cpu"]}, force=True)
    assert calls == [mine]


def test_from_export_in_place_refuses_a_graph_folder_nimbuild_did_not_write(exported_example, example_recipe, tmp_path):
    from nimbuild import cpu_isa
    from nimbuild.builder.from_export import run_from_export

    here = cpu_isa.detect_cpu()
    if not here.classes:
        pytest.skip(f"this CPU has no int8 class ({here.classes_text()})")
    cls = here.classes[0]
    source = tmp_path / "export"
    shutil.copytree(exported_example, source)
    mine = source / "onnx" / f"cpu-int8-{cls}"
    mine.mkdir()
    (mine / "model.onnx").write_bytes(b"my own int8 graph")
    with pytest.raises(NimbuildError, match=f"cpu-int8-{cls}/model.onnx: not written by nimbuild"):
        run_from_export(example_recipe, source, None, ["int8"], Output(quiet=True), cpu_isa=[cls])
    assert (mine / "model.onnx").read_bytes() == b"my own int8 graph"
    report = run_from_export(example_recipe, source, None, ["int8"], Output(quiet=True), cpu_isa=[cls], force=True)
    assert report["precisions"][f"int8-{cls}"]["status"] == "passed"
    assert OutputFolder(source).foreign(f"onnx/cpu-int8-{cls}") is None and _leftovers(source) == []


def test_a_users_file_inside_nimbuilds_folder_needs_force(scripted_build, exported_example, tmp_path):
    original, recipe = scripted_build
    out = tmp_path / "build"
    shutil.copytree(original, out, symlinks=True)
    (out / "tokenizer" / "my-notes.txt").write_text("keep me")
    with pytest.raises(NimbuildError, match="tokenizer/my-notes.txt: not written by nimbuild"):
        OutputFolder(out).check_replaceable(EXPORT_OUTPUTS, force=False, action="the export")
    proc = _run_script(out, exported_example, recipe, "new")  # the script's build passes --force: consent
    assert proc.returncode == 0, proc.stderr
    assert not (out / "tokenizer" / "my-notes.txt").exists()
    assert OutputFolder(out).foreign("tokenizer") is None


def test_a_folder_from_before_ledgers_is_adopted_from_its_own_records(scripted_build, tmp_path):
    original, _ = scripted_build
    out = tmp_path / "build"
    shutil.copytree(original, out, symlinks=True)
    (out / LEDGER_FILE).unlink()  # as a nimbuild without ledgers left it: the step cache records its outputs
    folder = OutputFolder(out)
    assert [e for e in BUILD_OUTPUTS if folder.foreign(e)] == []
    (out / "onnx/fp32/model.onnx").write_bytes(b"changed after the build")
    assert OutputFolder(out).foreign("onnx") == "onnx/fp32/model.onnx"


# --------------------------------------------------------------------------- one writer at a time

HOLDER = textwrap.dedent(
    """
    import sys, time
    from nimbuild.outdir import OutputFolder
    with OutputFolder(sys.argv[1]).locked("nimbuild build (test holder)"):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def _hold(out: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([PY, "-c", HOLDER, str(out), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_fails_naming_the_holder_and_a_killed_holder_blocks_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out"
    holder = _hold(out, 60)
    try:
        monkeypatch.setenv("NIMBUILD_LOCK_WAIT", "0.3")
        t0 = time.monotonic()
        with pytest.raises(NimbuildError) as exc, OutputFolder(out).locked("second"):
            pass
        assert time.monotonic() - t0 < 5
        assert f"pid {holder.pid}" in str(exc.value) and "test holder" in str(exc.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    t0 = time.monotonic()
    with OutputFolder(out).locked("after the kill"):
        assert time.monotonic() - t0 < 1
    assert not (out / LOCK_FILE).exists()


def test_a_second_writer_waits_for_the_first_within_the_bound(tmp_path, monkeypatch):
    out = tmp_path / "out"
    holder = _hold(out, 0.5)
    monkeypatch.setenv("NIMBUILD_LOCK_WAIT", "20")
    with OutputFolder(out).locked("waiter"):
        assert holder.wait(timeout=5) == 0


def test_the_build_command_refuses_a_locked_folder_in_one_line(tmp_path, capsys, monkeypatch):
    from nimbuild.cli import build as build_cli
    from nimbuild.cli import run

    monkeypatch.delenv("NIMBUILD_DEBUG", raising=False)
    monkeypatch.setenv("NIMBUILD_LOCK_WAIT", "0")
    app = typer.Typer()
    app.callback()(lambda: None)
    build_cli.register(app)
    out = tmp_path / "out"
    holder = _hold(out, 60)
    try:
        with pytest.raises(SystemExit) as code:
            run(app, ["build", str(_recipe(tmp_path)), "--out", str(out)])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    err = capsys.readouterr().err
    assert code.value.code == 1 and err.count("\n") == 1 and f"pid {holder.pid}" in err


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", "1e308"])
def test_a_lock_wait_that_cannot_work_is_refused_naming_the_variable(value, tmp_path, monkeypatch):
    monkeypatch.setenv("NIMBUILD_LOCK_WAIT", value)
    with pytest.raises(NimbuildError, match="NIMBUILD_LOCK_WAIT"), OutputFolder(tmp_path / "o").locked("x"):
        pass


# --------------------------------------------------------------------------- what killed runs leave


def test_stale_staging_and_temporary_entries_are_removed_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    (out / STAGING_DIR / "export-abc123").mkdir(parents=True)
    (out / STAGING_DIR / "export-abc123" / "model.onnx").write_bytes(b"x")
    (out / ".manifest.yaml.nimbuild-k2j3l4m5.tmp").write_text("half")
    (out / "triton" / ".cpu-fp32-onnxruntime.nimbuild-abcd1234.partial" / "reranker").mkdir(parents=True)
    (out / "onnx" / "fp16" / ".model.onnx.nimbuild-zz.tmp").parent.mkdir(parents=True)
    (out / "onnx" / "fp16" / ".model.onnx.nimbuild-zz.tmp").write_bytes(b"x")
    (out / ".export.partial").mkdir()  # the previous nimbuild's build staging
    users = [".my.tmp", "notes.partial", ".cache.partial", "triton/.keep", "nimbuild-1.tmp"]
    for rel in users:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("the user's")
    with OutputFolder(out).locked("clean"):
        pass
    assert _leftovers(out) == []
    assert all((out / rel).read_text() == "the user's" for rel in users)


def test_a_failed_first_export_leaves_no_folder(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(RuntimeError), OutputFolder(out).locked("x") as folder, folder.staging("export") as stage:
        (stage / "onnx").mkdir()
        raise RuntimeError("the gate failed")
    assert not out.exists()


# --------------------------------------------------------------------------- a full disk


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_write_that_fails_names_its_file(tmp_path):
    target = tmp_path / "big.bin"
    code = f"from nimbuild.fsutil import atomic_write_bytes\natomic_write_bytes({str(target)!r}, b'x' * 100000)"
    proc = subprocess.run(
        [PY, "-c", code], capture_output=True, text=True, preexec_fn=_limit_file_size(4096), timeout=60
    )
    assert proc.returncode == 1 and f"File too large: '{target}'" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone too


def test_export_on_a_full_disk_is_one_line_naming_the_file(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    proc = subprocess.run(
        [NIMBUILD, "export", str(tiny_model_dir("bert")), "--precision", "fp32", "--out", str(out)],
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(64 * 1024),
        env={k: v for k, v in os.environ.items() if k != "NIMBUILD_DEBUG"},
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "File too large: " in lines[0] and str(out) in lines[0]
    assert not out.exists() or _leftovers(out) == []


@pytest.mark.parametrize("changes", [False, True])
def test_the_manifest_is_withdrawn_while_engines_may_change_and_put_back_when_none_did(
    changes, scripted_build, tmp_path, monkeypatch
):
    """The engines step on a GPU host (engines module and TensorRT faked): the manifest lists the engines."""
    import types

    from nimbuild import skus
    from nimbuild.builder.steps import step_engines

    original, recipe_path = scripted_build
    out = tmp_path / "build"
    shutil.copytree(original, out, symlinks=True)
    before = (out / "manifest.yaml").read_bytes()
    sku = skus.lookup("h100-sxm")
    seen = {}

    def build_engines(recipe, plan, output, force=False):
        seen["manifest during the build"] = (out / "manifest.yaml").exists()
        if changes:
            (out / "engines" / sku.slug / "fp16").mkdir(parents=True)
            (out / "engines" / sku.slug / "fp16" / "model.plan").write_bytes(b"engine")
        return types.SimpleNamespace(results=[], fragment=None)

    # the engines package's seams, as house's layout has them (the real modules, their functions replaced)
    from nimbuild.builder.engines import build, host, plan, trt_seam

    monkeypatch.setattr(host, "visible_gpu", lambda: (object(), None))
    monkeypatch.setattr(host, "resolve_sku", lambda gpu: sku)
    monkeypatch.setattr(plan, "plan_engines", lambda recipe, sku, out_dir: object())
    monkeypatch.setattr(build, "build_engines", build_engines)
    monkeypatch.setattr(trt_seam, "probe_tensorrt", lambda: ("10", None))
    from nimbuild.recipe import load_recipe

    step = step_engines(load_recipe(recipe_path), out, Output(quiet=True), force=False)
    assert step.status == "built" and seen["manifest during the build"] is False
    if changes:
        assert not (out / "manifest.yaml").exists()  # the manifest step writes it again
    else:
        assert (out / "manifest.yaml").read_bytes() == before
    assert _leftovers(out) == []
