"""One Jinja2 environment for every template nimbuild renders.

Strict: an undefined variable is an error, not an empty string, so a template
and its caller cannot drift apart silently. Values go into the formats through
filters that quote them for that format (``pbstr`` for protobuf text,
``tojson`` for YAML, where JSON scalars are valid YAML).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nimbuild.errors import NimbuildError

if TYPE_CHECKING:
    import jinja2

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"  # nimbuild/templates


def pbstr(value: object) -> str:
    """A protobuf text-format string literal (JSON escaping is a subset text_format reads)."""
    return json.dumps(str(value), ensure_ascii=True)


def yamlstr(value: object) -> str:
    """A YAML scalar that stays a string (a double-quoted JSON string is valid YAML)."""
    return json.dumps(str(value), ensure_ascii=False)


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    try:
        import jinja2
    except ImportError:  # pragma: no cover - jinja2 is a dependency of build and runtime
        raise NimbuildError(
            "rendering needs the jinja2 package, which is not installed",
            hint="pip install 'nimbuild[runtime]' (or [build])",
        ) from None
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["pbstr"] = pbstr
    env.filters["yamlstr"] = yamlstr
    env.policies["json.dumps_kwargs"] = {"sort_keys": False, "ensure_ascii": False}
    return env


def render(template: str, **context: Any) -> str:
    """Render ``nimbuild/templates/<template>`` with ``context``."""
    import jinja2

    try:
        return str(environment().get_template(template).render(**context))
    except jinja2.TemplateNotFound:
        raise NimbuildError(
            f"{TEMPLATES_DIR / template}: template not found",
            hint="reinstall nimbuild; templates ship inside the package",
        ) from None
