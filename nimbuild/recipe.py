"""Recipes: one YAML file per model, checked before anything is built.

The schema is docs/internals.md's. Every error names the file, the field path
(``shapes.batch.max``), what was given and what was expected, so a typo costs a
second, not a failed build. Unknown fields are errors (with a "did you mean").
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from nimbuild.errors import NimbuildError
from nimbuild.fsutil import json_digest
from nimbuild.safe_text import printable
from nimbuild.thresholds import PRECISIONS as GATED_PRECISIONS
from nimbuild.thresholds import GateThresholds

PRECISIONS = ("fp32", "fp16", "fp8", "int8")
PrecisionName = Literal["fp32", "fp16", "fp8", "int8"]


def _every_precision() -> list[PrecisionName]:
    return ["fp32", "fp16", "fp8", "int8"]


_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]*$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def _known_gpu(text: str) -> str:
    from nimbuild import skus

    try:
        skus.lookup(text)
    except NimbuildError as exc:
        raise ValueError(exc.message + (f" ({exc.hint})" if exc.hint else "")) from None
    return text


GpuName = Annotated[str, AfterValidator(_known_gpu)]


def _known_cpu_class(text: str) -> str:
    from nimbuild import cpu_isa

    try:
        return cpu_isa.lookup(text).name
    except NimbuildError as exc:
        raise ValueError(exc.message + (f" ({exc.hint})" if exc.hint else "")) from None


CpuClassName = Annotated[str, AfterValidator(_known_cpu_class)]


def _all_cpu_classes() -> list[str]:
    from nimbuild import cpu_isa

    return list(cpu_isa.NAMES)


# Every command's default output root, relative to the working directory.
DEFAULT_OUT_ROOT = Path("out")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """Where the model comes from: a hub repo at a pinned commit, or a local folder."""

    repo: str | None = None
    revision: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Source:
        if (self.repo is None) == (self.path is None):
            raise ValueError("give exactly one of `repo` (hub repo id + `revision`) or `path` (a local folder)")
        if self.repo is not None:
            if not _REPO_RE.match(self.repo):
                raise ValueError(f"repo {self.repo!r} is not a hub repo id like 'org/name'")
            if self.revision is None:
                raise ValueError("`revision` is required with `repo`: pin the 40-hex commit sha of the hub repo")
            if not _SHA_RE.match(self.revision):
                raise ValueError(f"revision {self.revision!r} is not a 40-hex commit sha (branches and tags move)")
        elif self.revision is not None:
            raise ValueError("`revision` only goes with `repo`; a local `path` is used as it is")
        return self

    def describe(self) -> str:
        return f"{self.repo}@{self.revision}" if self.repo else f"{self.path}"


class Range(_Strict):
    """min <= opt <= max, all >= 1 (a TensorRT optimisation profile)."""

    min: int = Field(ge=1)
    opt: int = Field(ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not (self.min <= self.opt <= self.max):
            raise ValueError(f"need min <= opt <= max, got min={self.min}, opt={self.opt}, max={self.max}")
        return self


class Shapes(_Strict):
    batch: Range = Range(min=1, opt=8, max=64)
    sequence: Range = Range(min=1, opt=128, max=512)


class PrecisionThresholds(_Strict):
    """One precision's own thresholds: a metric left out keeps the recipe-wide value, null turns it off."""

    top1: float | None = Field(default=None, ge=0.0, le=1.0)
    spearman: float | None = Field(default=None, ge=-1.0, le=1.0)
    kendall: float | None = Field(default=None, ge=-1.0, le=1.0)
    ndcg10: float | None = Field(default=None, ge=0.0, le=1.0)
    max_abs_logit: float | None = Field(default=None, ge=0.0)


class Thresholds(_Strict):
    """The accuracy gate: a metric set to null is reported but not judged.

    ``fp16``/``fp8``/``int8`` (optional) override some metrics for that precision's graph and
    engines only, e.g. ``fp8: {top1: 0.75}``; they are left out of ``model_dump()`` (the
    recipe-wide metrics). Resolved once, when the recipe is read, into one typed
    :class:`nimbuild.thresholds.GateThresholds` per precision (``by_precision``).
    """

    top1: float | None = Field(default=0.95, ge=0.0, le=1.0)
    spearman: float | None = Field(default=0.95, ge=-1.0, le=1.0)
    kendall: float | None = Field(default=None, ge=-1.0, le=1.0)
    ndcg10: float | None = Field(default=0.98, ge=0.0, le=1.0)
    max_abs_logit: float | None = Field(default=None, ge=0.0)
    fp16: PrecisionThresholds | None = Field(default=None, exclude=True)
    fp8: PrecisionThresholds | None = Field(default=None, exclude=True)
    int8: PrecisionThresholds | None = Field(default=None, exclude=True)

    _resolved: dict[str, GateThresholds] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        wide = self.model_dump()
        resolved = {}
        for precision in GATED_PRECISIONS:
            merged = dict(wide)
            own = getattr(self, precision, None) if precision in ("fp16", "fp8", "int8") else None
            if own is not None:
                merged.update(own.model_dump(exclude_unset=True))
            resolved[precision] = GateThresholds.from_mapping(merged)
        self._resolved = resolved

    @property
    def recipe_wide(self) -> GateThresholds:
        """The recipe-wide bars (what judges fp32, and every precision without overrides of its own)."""
        return self._resolved["fp32"]

    @property
    def by_precision(self) -> dict[str, GateThresholds]:
        """{precision: the bars that judge its graph and engines}: recipe-wide, with that precision's overrides."""
        return dict(self._resolved)

    def for_precision(self, precision: str) -> GateThresholds:
        """The bars that judge ``precision`` (an unknown precision: the recipe-wide ones)."""
        return self._resolved.get(precision, self.recipe_wide)


class Serving(_Strict):
    triton_image: str = "nvcr.io/nvidia/tritonserver:25.10-py3"
    max_queue_delay_us: int = Field(default=100, ge=0)
    preferred_batch_sizes: list[int] = Field(default_factory=lambda: [8, 32])

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(b < 1 for b in v):
            raise ValueError("batch sizes must be >= 1")
        return v


class Recipe(_Strict):
    name: str
    source: Source
    trust_remote_code: bool = False
    shapes: Shapes = Shapes()
    precisions: list[Literal["fp32", "fp16", "fp8", "int8"]] = Field(
        default_factory=lambda: ["fp32", "fp16", "fp8", "int8"]
    )
    gpus: list[GpuName] = Field(default_factory=list)
    # the CPU classes (nimbuild.cpu_isa) to make int8 graphs for; a build makes those its CPU has
    cpu_isa: list[CpuClassName] = Field(default_factory=_all_cpu_classes)
    runners: dict[str, list[str]] = Field(default_factory=dict)
    pairs: str | None = None
    thresholds: Thresholds = Thresholds()
    serving: Serving = Serving()

    _path: Path | None = PrivateAttr(default=None)
    _sha256: str | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"name {v!r} must match [a-z0-9][a-z0-9.-]* (it becomes the `model` tag)")
        return v

    @field_validator("precisions")
    @classmethod
    def _precisions(cls, v: list[str]) -> list[str]:
        # fp32 is always built (it is the reference for every other graph); keep a stable order
        wanted = set(v) | {"fp32"}
        return [p for p in PRECISIONS if p in wanted]

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: list[str]) -> list[str]:
        from nimbuild import skus

        seen = set()
        for text in v:
            sku = skus.lookup(text)
            if sku.canonical in seen:
                raise ValueError(f"{text!r} names the same GPU as an earlier entry ({sku.canonical})")
            seen.add(sku.canonical)
        return v

    @field_validator("cpu_isa")
    @classmethod
    def _cpu_isa(cls, v: list[str]) -> list[str]:
        from nimbuild import cpu_isa

        return [n for n in cpu_isa.NAMES if n in set(v)]  # one order everywhere: the preference order

    @model_validator(mode="after")
    def _runners_known(self) -> Recipe:
        from nimbuild import cpu_isa, skus

        wanted = {skus.lookup(g).canonical for g in self.gpus}
        for key in self.runners:
            cpu_class = cpu_isa.get(key.strip().lower().replace("-", "_"))
            if cpu_class is not None:
                if cpu_class.name not in self.cpu_isa:
                    raise ValueError(f"runners: {key!r} is not in `cpu_isa` ({', '.join(self.cpu_isa) or 'empty'})")
                continue
            try:
                canonical = skus.lookup(key).canonical
            except NimbuildError:
                raise ValueError(
                    f"runners: {key!r} is neither a known GPU SKU nor a CPU class ({cpu_isa.known_names()})"
                ) from None
            if canonical not in wanted:
                raise ValueError(f"runners: {key!r} is not in `gpus` ({', '.join(self.gpus) or 'empty'})")
        return self

    # -- file-bound helpers -------------------------------------------------

    @property
    def path(self) -> Path | None:
        """The recipe file (None for a recipe made from a bare model argument)."""
        return self._path

    @property
    def sha256(self) -> str:
        """sha256 of the recipe file's bytes (of its canonical JSON when there is no file)."""
        if self._sha256 is None:
            self._sha256 = json_digest(self.model_dump(mode="json"))
        return self._sha256

    @property
    def default_out_dir(self) -> Path:
        """Where export, engines and build write unless given ``--out``: ``out/<name>``.

        Not ``build/``: black, pytest and most linters skip folders of that name, and
        setuptools writes its own output there.
        """
        return DEFAULT_OUT_ROOT / self.name

    @property
    def folder(self) -> Path:
        return self._path.parent if self._path is not None else Path.cwd()

    def resolve(self, rel: str | Path) -> Path:
        """A path from the recipe, relative to the recipe's folder (absolute paths kept)."""
        p = Path(rel).expanduser()
        return p if p.is_absolute() else (self.folder / p)

    def gpu_skus(self) -> list:
        from nimbuild import skus

        return [skus.lookup(g) for g in self.gpus]

    def runner_labels(self, sku) -> list[str] | None:
        """The CI runs-on labels for a SKU (any spelling in `runners` that names it), or None."""
        from nimbuild import cpu_isa, skus

        for key, labels in self.runners.items():
            if (
                cpu_isa.get(key.strip().lower().replace("-", "_")) is None
                and skus.lookup(key).canonical == sku.canonical
            ):
                return list(labels)
        return None

    def cpu_runner_labels(self, cpu_class: str) -> list[str] | None:
        """The CI runs-on labels for a CPU class (`runners: {avx512_vnni: [...]}`), or None."""
        from nimbuild import cpu_isa

        for key, labels in self.runners.items():
            found = cpu_isa.get(key.strip().lower().replace("-", "_"))
            if found is not None and found.name == cpu_class:
                return list(labels)
        return None


# ----------------------------------------------------------------------------- loading


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:  # a key from the file: its newline or escape is shown, never a second line of the error
            out += ("." if out else "") + printable(part)
    return out or "(top level)"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names allowed at a location (for 'did you mean')."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(getattr(current, "model_fields", {}) or [])


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(err: Mapping[str, Any]) -> str:
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        allowed = _fields_at(Recipe, loc[:-1])
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        maybe = f" (did you mean `{guess[0]}`?)" if guess else ""
        return f"{_loc(loc)}: unknown field{maybe}; expected one of: {', '.join(allowed)}"
    if kind == "missing":
        return f"{_loc(loc)}: missing; this field is required"
    msg = err.get("msg", "")
    msg = msg[len("Value error, ") :] if msg.startswith("Value error, ") else msg
    given = _short(err.get("input"))
    return f"{_loc(loc)}: got {given}; expected: {msg[0].lower() + msg[1:] if msg else 'a valid value'}"


def parse_recipe(data: Any, src: str | Path = "<recipe>") -> Recipe:
    """Validate already-loaded recipe data; NimbuildError naming ``src`` and each bad field."""
    if not isinstance(data, dict):
        raise NimbuildError(
            f"{src}: a recipe must be a YAML mapping (name:, source:, ...), got {type(data).__name__}",
            hint="see recipes/example-tiny.yaml for the shape",
        )
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        raise NimbuildError(
            f"{src}: {len(problems)} problem{'s' if len(problems) > 1 else ''}: " + " | ".join(problems),
            hint=f"fix the field{'s' if len(problems) > 1 else ''} in {src} (schema: docs/internals.md, 'Recipe')",
        ) from None


def load_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Read and check a recipe file with nimbuild's one YAML reader (:mod:`nimbuild.safeload`): a key given
    twice (``trust_remote_code: false`` then ``true``), an alias bomb, deep nesting, a non-plain tag, a
    file that is not a regular one or is too large are one-line errors, like every schema error."""
    from nimbuild.safeload import RECIPE_LIMITS, load_yaml

    p = Path(path)
    data, raw = load_yaml(p, what="recipe", limits=RECIPE_LIMITS, hint="give the path of a recipes/*.yaml file")
    recipe = parse_recipe(data, p)
    recipe._path = p.resolve()
    recipe._sha256 = hashlib.sha256(raw).hexdigest()
    return recipe


def recipe_for_model(
    spec: str, *, revision: str | None = None, trust_remote_code: bool = False, name: str | None = None
) -> Recipe:
    """A default recipe for a bare model argument: an existing folder, else a hub repo id.

    A hub repo id without a pinned revision is given ``revision=None`` here and
    resolved by nimbuild.builder.source (the recipe file route insists on a pin).
    """
    p = Path(spec).expanduser()
    looks_local = p.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
    if looks_local:
        source = {"path": str(p.resolve())}
        stem = p.resolve().name
    else:
        if not _REPO_RE.match(spec):
            raise NimbuildError(
                f"{spec!r} is neither an existing folder nor a hub repo id",
                hint="give a local model folder (with config.json) or a repo id like 'org/name'",
            )
        source = {"repo": spec}
        stem = spec.split("/")[-1]
    slug = re.sub(r"[^a-z0-9.-]+", "-", (name or stem).lower()).strip("-.") or "model"
    if not slug[0].isalnum():
        slug = "m" + slug
    data = {"name": slug, "trust_remote_code": trust_remote_code}
    if "repo" in source:
        # bypass the pin check: construct the Source directly
        src = Source.model_construct(repo=source["repo"], revision=revision, path=None)
        return Recipe.model_validate({**data, "source": {"path": "."}}).model_copy(update={"source": src})
    return Recipe.model_validate({**data, "source": source})
