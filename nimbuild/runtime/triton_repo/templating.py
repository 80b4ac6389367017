"""One Jinja2 environment for every template nimbuild renders.

Strict: an undefined variable is an error, not an empty string, so a template
and its caller cannot drift apart silently. Values go into the formats through
filters that quote them for that format (``pbstr`` for protobuf text,
``tojson``/``yamlstr`` for YAML, where JSON scalars are valid YAML, ``oneline`` for
a value inside a comment line: nimbuild.safe_text.printable).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nimbuild.errors import NimbuildError
from nimbuild.safe_text import printable

if TYPE_CHECKING:
    import jinja2

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "templates"  # nimbuild/templates


def pbstr(value: object) -> str:
    """A protobuf text-format string literal (JSON escaping is a subset text_format reads)."""
    return json.dumps(str(value), ensure_ascii=True)


# What JSON leaves raw but YAML refuses in a document: DEL, C1 controls, surrogates, U+FFFE/U+FFFF.
_YAML_UNSAFE = re.compile("[\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def yamlstr(value: object) -> str:
    """A YAML scalar that stays a string (a double-quoted JSON string is valid YAML), whatever it holds."""
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(str(value), ensure_ascii=False))


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
    env.filters["oneline"] = printable  # a value in a comment line: its newlines cannot start a new line
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
