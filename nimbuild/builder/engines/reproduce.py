"""``reproduce.sh`` beside each engine: the same build with ``polygraphy convert``, run from the engine's folder.

An engine only runs with the TensorRT that built it; the script lets anyone
rebuild it with the exact calls nimbuild made, without nimbuild. The text is
``nimbuild/templates/reproduce.sh.j2``; the command line is the plan's own
(:meth:`EnginePlan.polygraphy_argv`), one flag and its values per line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nimbuild.builder.engines.host import BuildGpu
from nimbuild.builder.engines.plan import ENGINE_FILE, EnginePlan, PlannedEngine
from nimbuild.safe_text import shell_join

if TYPE_CHECKING:
    from nimbuild.builder.engines.trt_seam import TensorRTInfo

TEMPLATE = "reproduce.sh.j2"


def command_lines(argv: list[str]) -> list[str]:
    """``polygraphy convert MODEL --convert-to trt --strongly-typed`` first, then one flag (and its values) a line."""
    lines = [shell_join(argv[:5])]
    rest = argv[5:]
    i = 0
    while i < len(rest):
        j = i + 1
        while j < len(rest) and not rest[j].startswith("-"):
            j += 1
        lines.append(shell_join(rest[i:j]))
        i = j
    return lines


def reproduce_script(plan: EnginePlan, engine: PlannedEngine, trt: TensorRTInfo, gpu: BuildGpu) -> str:
    """``reproduce.sh``: the same engine with ``polygraphy convert``, run from the engine's folder."""
    from nimbuild import __version__
    from nimbuild.runtime.triton_repo.templating import render

    return render(
        TEMPLATE,
        engine_file=ENGINE_FILE,
        precision=engine.precision,
        model=plan.model,
        nimbuild_version=__version__,
        trt_version=trt.version,
        cuda_major_version=trt.cuda_major_version,
        gpu_name=gpu.name,
        gpu_pci_device_id=gpu.pci_device_id,
        gpu_compute_capability=gpu.compute_capability,
        command_lines=command_lines(plan.polygraphy_argv(engine, relative_to=engine.engine_dir)),
    )
