"""Options shared by several command groups, typed once."""

from __future__ import annotations

from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of human output.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or notes on stderr.")]
AssumeCpuOpt = Annotated[
    str | None,
    typer.Option(
        "--assume-cpu",
        show_default=False,
        help="Judge as if the CPU had this INT8 class instead of reading /proc/cpuinfo: avx512_vnni "
        "(a VNNI CPU, which has avx2 too), avx2, arm64_dotprod, or none.",
    ),
]
CpuIsaOpt = Annotated[
    str | None,
    typer.Option(
        "--cpu-isa",
        show_default=False,
        help="CPU classes to make int8 graphs for, comma-separated (avx512_vnni, avx2, arm64_dotprod), each one "
        "this CPU must have; 'none' for no int8 graph. Default: the recipe's cpu_isa, made where this CPU has them.",
    ),
]


def split_cpu_isa(value: str | None) -> list[str] | None:
    """``--cpu-isa avx2,avx512_vnni`` -> ["avx2", "avx512_vnni"]; None when not given."""
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]
