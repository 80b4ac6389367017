"""The accuracy gate's bars as one typed value per precision, resolved once from the recipe.

A recipe's ``thresholds`` (recipe-wide metrics plus optional ``fp16``/``fp8``/``int8``
overrides) are merged at the recipe boundary (:meth:`nimbuild.recipe.Thresholds.by_precision`)
into a frozen :class:`GateThresholds` per precision. The export's gate, the precision
graphs' gates and the engines' checks all take that value; none re-normalises a
dict or a pydantic model of its own.

A new bound is one field here and one entry in :data:`METRICS` (its direction);
the recipe schema, the gate and the reports follow from them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

# metric -> True when higher is better (judged as metric >= bound), False when lower is (metric <= bound)
METRICS: dict[str, bool] = {
    "top1": True,
    "spearman": True,
    "kendall": True,
    "ndcg10": True,
    "max_abs_logit": False,
}
PRECISIONS = ("fp32", "fp16", "fp8", "int8")  # every precision a graph is gated at


@dataclass(frozen=True)
class GateThresholds:
    """One precision's bars; ``None`` means reported, not judged."""

    top1: float | None = None
    spearman: float | None = None
    kendall: float | None = None
    ndcg10: float | None = None
    max_abs_logit: float | None = None

    def __post_init__(self) -> None:
        for name, value in self.items():
            if value is not None and (isinstance(value, bool) or not math.isfinite(float(value))):
                raise ValueError(f"threshold {name}: {value!r} is not a finite number")
            if value is not None:
                object.__setattr__(self, name, float(value))

    @classmethod
    def from_mapping(cls, data: Mapping[str, float | None]) -> GateThresholds:
        """From ``{metric: bound or None}``; an unknown metric is an error naming it."""
        unknown = set(data) - set(METRICS)
        if unknown:
            raise ValueError(f"thresholds: unknown metric(s) {sorted(unknown)}; known: {list(METRICS)}")
        return cls(**dict(data))

    def items(self) -> Iterator[tuple[str, float | None]]:
        """(metric, bound or None) in :data:`METRICS` order."""
        for name in METRICS:
            yield name, getattr(self, name)

    def bounds(self) -> Iterator[tuple[str, float, bool]]:
        """(metric, bound, higher is better) of the metrics that are judged."""
        for name, value in self.items():
            if value is not None:
                yield name, value, METRICS[name]

    def to_dict(self) -> dict[str, float | None]:
        """Every metric with its bound or None: what reports, records and cache keys hold."""
        return dict(self.items())

    def tightened(self, **bounds: float) -> GateThresholds:
        """These bounds, or the stricter of them and the ones already set."""
        changes: dict[str, float] = {}
        for name, bound in bounds.items():
            current = getattr(self, name)
            stricter = max if METRICS[name] else min
            changes[name] = bound if current is None else stricter(current, bound)
        return dataclasses.replace(self, **changes)


def uniform(thresholds: GateThresholds) -> dict[str, GateThresholds]:
    """The same bars for every precision (tests, benchmarks, a bare model without a recipe's overrides)."""
    return dict.fromkeys(PRECISIONS, thresholds)


# the dataclass and the directions describe the same metrics
assert tuple(f.name for f in dataclasses.fields(GateThresholds)) == tuple(METRICS)
