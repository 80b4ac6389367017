"""The one reader of every YAML (and JSON) file nimbuild reads: safe, bounded, one-line errors.

PyYAML's ``safe_load`` is safe against code execution but not against small
hostile input: a duplicate key silently keeps the last value (``trust_remote_code:
false`` then ``true``), a 1 KB alias bomb is cheap to load but expands to
gigabytes in whatever walks it next (``manifest show``, ``merge``, ``--json``), a
FIFO or ``/dev/zero`` never ends, ``!!binary`` or a timestamp breaks ``--json``,
and an unhashable key is a traceback. Its pure-Python constructor is also slow
(about 13 s of CPU for a 20,000-profile manifest).

So nimbuild builds its data straight from libyaml's event stream (C), in one
iterative pass that:

- reads only a regular file, at most ``max_bytes`` (a FIFO, a device, a folder,
  a symlink loop: a one-line error, never a hang);
- refuses a key given twice in one mapping, and any key that is not a scalar;
- counts the nodes that aliases add and refuses past ``ALIAS_FACTOR`` times the
  nodes written out plus ``max_alias_nodes``: what walks the data later (``show``,
  ``--json``) stays proportional to the text; a 1 KB alias bomb is refused at once;
- refuses nesting deeper than ``max_depth`` and more than ``max_nodes`` nodes;
- knows only plain data: mappings, sequences, strings, integers, floats,
  booleans and null (YAML 1.1's implicit rules, as ``safe_load`` resolves them),
  plus the ``<<`` merge key; an explicit tag outside the core ones (``!!binary``,
  ``!!timestamp``, ``!!set``, ``!!python/...``) is refused, except the local tags
  a caller names (NIM v1 manifests write ``!workspace`` and ``!name``), which read
  as if untagged; an implicit timestamp (``release: 2024-05-01``) stays a string,
  so that everything read can be printed as JSON.

Every problem is a :class:`NimbuildError` naming the file, the line and column,
and what to do. Light (stdlib, PyYAML and nimbuild.errors): the runtime uses it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nimbuild.errors import NimbuildError

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one file may cost to read. Each kind of file has its own (see the constants below)."""

    max_bytes: int = 1 * MiB
    max_depth: int = 64
    max_nodes: int = 200_000
    max_alias_nodes: int = 10_000  # nodes aliases may add, beyond ALIAS_FACTOR x the nodes written out


ALIAS_FACTOR = 4  # an alias may repeat what the text holds (shared files), never multiply it (a bomb)


# A 20,000-profile manifest is ~13 MB and ~1.4 M nodes; NIM's own manifests are well under 1 MB.
MANIFEST_LIMITS = Limits(max_bytes=256 * MiB, max_depth=64, max_nodes=20_000_000, max_alias_nodes=100_000)
RECIPE_LIMITS = Limits(max_bytes=1 * MiB, max_depth=32, max_nodes=100_000, max_alias_nodes=10_000)
CATALOG_LIMITS = Limits(max_bytes=4 * MiB, max_depth=16, max_nodes=500_000, max_alias_nodes=10_000)
JSON_LIMITS = Limits(max_bytes=64 * MiB)  # only the size applies to JSON


_KIND = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _size(n: int) -> str:
    return f"{n / MiB:.0f} MiB" if n >= MiB else f"{n} bytes"


def read_regular_file(path: str | os.PathLike[str], what: str, max_bytes: int, *, hint: str | None = None) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes``; NimbuildError otherwise.

    Opened non-blocking, so a FIFO is refused instead of waiting for a writer;
    ``/dev/zero`` and folders are refused by their kind before a byte is read.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    fix = hint or f"give the path of a {what} file"
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise NimbuildError(f"{path}: no such {what}", hint=fix) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NimbuildError(f"{path}: cannot read the {what}: a symlink loop", hint="fix the symlink") from None
        try:  # a socket cannot be opened (ENXIO): say what it is
            mode = os.stat(path).st_mode
        except OSError:
            mode = stat.S_IFREG
        if not stat.S_ISREG(mode):
            kind = _KIND.get(stat.S_IFMT(mode), "not a regular file")
            raise NimbuildError(f"{path}: the {what} is {kind}, not a regular file", hint=fix) from None
        raise NimbuildError(
            f"{path}: cannot read the {what}: {exc.strerror or exc}", hint="check the path and its permissions"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _KIND.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise NimbuildError(f"{path}: the {what} is {kind}, not a regular file", hint=fix)
        if st.st_size > max_bytes:
            raise NimbuildError(
                f"{path}: the {what} has {st.st_size} bytes, more than the {_size(max_bytes)} nimbuild reads",
                hint=f"a {what} this large is not one nimbuild wrote; check the file",
            )
        os.set_blocking(fd, True)
        chunks, total = [], 0
        while True:  # read to the end, never past the limit (the file may grow while we read)
            block = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not block:
                break
            chunks.append(block)
            total += len(block)
            if total > max_bytes:
                raise NimbuildError(
                    f"{path}: the {what} grew past the {_size(max_bytes)} nimbuild reads", hint="check the file"
                )
        return b"".join(chunks)
    except OSError as exc:
        raise NimbuildError(f"{path}: cannot read the {what}: {exc.strerror or exc}", hint="check the file") from None
    finally:
        os.close(fd)


def decode_utf8(data: bytes, src: str, what: str) -> str:
    """UTF-8 text (a BOM is dropped); one line naming the byte otherwise."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NimbuildError(
            f"{src}: the {what} is not UTF-8 text ({exc.reason} at byte {exc.start})",
            hint=f"save the {what} as UTF-8 text",
        ) from None


# --------------------------------------------------------------------------- YAML

_CORE = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_CORE + t for t in ("str", "int", "float", "bool", "null"))
_MAP, _SEQ, _MERGE, _VALUE, _TIMESTAMP = (_CORE + t for t in ("map", "seq", "merge", "value", "timestamp"))
_DECIMAL = re.compile(r"[-+]?(?:0|[1-9][0-9]*)\Z")


class _Scalars:
    """Implicit and explicit scalar resolution exactly as PyYAML's SafeLoader does it."""

    def __init__(self) -> None:
        import yaml

        self.implicit = yaml.resolver.Resolver.yaml_implicit_resolvers
        self.constructor = yaml.constructor.SafeConstructor()
        self.node = yaml.nodes.ScalarNode
        self.bools = {"yes": True, "no": False, "true": True, "false": False, "on": True, "off": False}

    def resolve(self, value: str) -> str:
        for tag, regexp in self.implicit.get(value[:1] if value else "", ()):
            if regexp.match(value):
                return str(tag)
        return _STR

    def construct(self, tag: str, value: str) -> Any:
        if tag == _STR:
            return value
        if tag == _INT:
            if _DECIMAL.match(value):
                return int(value)
            return self.constructor.construct_yaml_int(self.node(tag, value))
        if tag == _NULL:
            return None
        if tag == _BOOL:
            return self.bools[value.lower()]
        if tag == _FLOAT:
            return self.constructor.construct_yaml_float(self.node(tag, value))
        raise KeyError(tag)


_scalars: _Scalars | None = None


class _Frame:
    __slots__ = ("data", "is_map", "key", "has_key", "anchor", "size", "merges")

    def __init__(self, data: Any, is_map: bool, anchor: str | None):
        self.data = data
        self.is_map = is_map
        self.key: Any = None
        self.has_key = False
        self.anchor = anchor
        self.size = 1  # nodes in this subtree, aliases expanded
        self.merges: list[dict[Any, Any]] | None = None


def parse_yaml(
    text: str | bytes,
    src: str = "<yaml>",
    *,
    what: str = "file",
    limits: Limits = Limits(),
    local_tags: frozenset[str] | tuple[str, ...] = (),
) -> Any:
    """One YAML document as plain Python data, with the checks in the module docstring; None when empty."""
    import yaml
    from yaml._yaml import CParser  # libyaml; PyYAML wheels ship it

    global _scalars
    if _scalars is None:
        _scalars = _Scalars()
    scalars = _scalars
    resolve, construct = scalars.resolve, scalars.construct
    ScalarEvent, AliasEvent = yaml.ScalarEvent, yaml.AliasEvent
    MappingStartEvent, MappingEndEvent = yaml.MappingStartEvent, yaml.MappingEndEvent
    SequenceStartEvent, SequenceEndEvent = yaml.SequenceStartEvent, yaml.SequenceEndEvent
    DocumentStartEvent, StreamEndEvent = yaml.DocumentStartEvent, yaml.StreamEndEvent
    allowed_local = frozenset(local_tags)
    max_depth, max_nodes, max_alias = limits.max_depth, limits.max_nodes, limits.max_alias_nodes

    def fail(event: Any, message: str, hint: str) -> NimbuildError:
        mark = getattr(event, "start_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return NimbuildError(f"{src}: {message}{where}", hint=hint)

    def check_tag(event: Any, tag: str | None, kind: str) -> str | None:
        """The core tag to use, None for 'resolve it implicitly'; NimbuildError for a tag nimbuild refuses."""
        if tag is None or tag == "!":
            return None
        if tag in allowed_local:
            return None
        if kind == "scalar" and tag in (_STR, _INT, _FLOAT, _BOOL, _NULL):
            return tag
        if (kind == "map" and tag == _MAP) or (kind == "seq" and tag == _SEQ):
            return tag
        shown = "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag
        raise fail(
            event,
            f"the {what} uses the YAML tag {shown}, which nimbuild does not read",
            "use plain values (strings, numbers, booleans, lists, mappings); quote a value that should stay text",
        )

    anchors: dict[str, tuple[Any, int]] = {}
    plain_cache: dict[str, Any] = {}  # plain scalar text -> its (immutable) value
    stack: list[_Frame] = []
    root: list[Any] = []
    nodes = 0
    alias_nodes = 0
    documents = 0

    def add(event: Any, value: Any, size: int, is_scalar: bool) -> None:
        """Put a finished node into its parent (a key, a value, an item) or make it the document."""
        if not stack:
            root.append(value)
            return
        parent = stack[-1]
        parent.size += size
        if not parent.is_map:
            parent.data.append(value)
            return
        if not parent.has_key:
            if not is_scalar:
                raise fail(
                    event,
                    f"a {what} key must be a plain value (a string or a number), not a {type(value).__name__}",
                    "write the key as a plain string",
                )
            parent.key, parent.has_key = value, True
            return
        key = parent.key
        parent.has_key = False
        if key is _MERGE_KEY:
            merged = value if isinstance(value, list) else [value]
            if not all(isinstance(m, dict) for m in merged):
                raise fail(event, "the merge key '<<' takes a mapping or a list of mappings", "fix the '<<:' value")
            parent.merges = (parent.merges or []) + list(merged)
            return
        data = parent.data
        if key in data:
            raise fail(
                event,
                f"duplicate key {key!r} in one mapping (YAML would silently keep the last value)",
                "give each key once",
            )
        data[key] = value

    parser = CParser(text)
    try:
        while True:
            event: Any = parser.get_event()  # told apart by its type below; libyaml's stubs say Event | None
            kind = type(event)
            if kind is ScalarEvent:
                nodes += 1
                if nodes > max_nodes:
                    raise fail(
                        event, f"the {what} has more than {max_nodes} values", f"this is not a {what} nimbuild can use"
                    )
                tag = check_tag(event, event.tag, "scalar")
                value = event.value
                if tag is None:
                    if event.implicit[0]:  # plain: resolve as YAML 1.1 does
                        if not event.anchor and value in plain_cache:  # keys and small values repeat
                            add(event, plain_cache[value], 1, True)
                            continue
                        tag = resolve(value)
                        if tag in (_TIMESTAMP, _VALUE):
                            tag = _STR  # stays text: JSON has no dates
                        elif tag == _MERGE:
                            if stack and stack[-1].is_map and not stack[-1].has_key:
                                if event.anchor:
                                    anchors[event.anchor] = (_MERGE_KEY, 1)
                                add(event, _MERGE_KEY, 1, True)
                                continue
                            tag = _STR
                    else:
                        tag = _STR
                try:
                    obj = construct(tag, value)
                except (ValueError, KeyError, yaml.YAMLError):
                    raise fail(event, f"{value!r} is not a valid {tag.rsplit(':', 1)[-1]}", "fix the value") from None
                if event.anchor:
                    anchors[event.anchor] = (obj, 1)
                elif event.implicit[0] and len(value) <= 32 and len(plain_cache) < 4096 and value != "<<":
                    plain_cache[value] = obj
                add(event, obj, 1, True)
            elif kind is MappingStartEvent or kind is SequenceStartEvent:
                nodes += 1
                is_map = kind is MappingStartEvent
                check_tag(event, event.tag, "map" if is_map else "seq")
                if stack and stack[-1].is_map and not stack[-1].has_key:
                    raise fail(
                        event,
                        f"a {what} key must be a plain value (a string or a number), not a "
                        f"{'mapping' if is_map else 'list'}",
                        "write the key as a plain string",
                    )
                if len(stack) >= max_depth:
                    raise fail(
                        event,
                        f"the {what} nests deeper than {max_depth} levels",
                        f"a {what} is a few levels deep; this one is not a {what} nimbuild can use",
                    )
                if nodes > max_nodes:
                    raise fail(
                        event, f"the {what} has more than {max_nodes} values", f"this is not a {what} nimbuild can use"
                    )
                stack.append(_Frame({} if is_map else [], is_map, event.anchor))
            elif kind is MappingEndEvent or kind is SequenceEndEvent:
                frame = stack.pop()
                data = frame.data
                if frame.merges:
                    merged: dict[Any, Any] = {}
                    for m in reversed(frame.merges):
                        merged.update(m)
                    merged.update(data)
                    data = merged
                    frame.size += sum(len(m) * 2 for m in frame.merges)
                if frame.anchor:
                    anchors[frame.anchor] = (data, frame.size)
                add(event, data, frame.size, False)
            elif kind is AliasEvent:
                if event.anchor not in anchors:
                    raise fail(event, f"alias *{event.anchor} names no anchor before it", "define &anchor first")
                obj, size = anchors[event.anchor]
                alias_nodes += size
                if alias_nodes > max_alias + ALIAS_FACTOR * nodes:
                    raise fail(
                        event,
                        f"aliases expand the {what} to {alias_nodes} more nodes, more than {ALIAS_FACTOR}x its own "
                        f"{nodes} plus {max_alias} (an alias bomb?)",
                        "write the values out, or use fewer aliases",
                    )
                if obj is _MERGE_KEY:
                    raise fail(event, "an alias of the merge key '<<' is not allowed", "write '<<' itself")
                add(event, obj, size, not isinstance(obj, (dict, list)))
            elif kind is DocumentStartEvent:
                documents += 1
                if documents > 1:
                    raise fail(event, f"the {what} holds more than one YAML document", "keep one document (no '---')")
            elif kind is StreamEndEvent:
                break
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise NimbuildError(
            f"{src}: not valid YAML{where}: {problem}", hint="fix the YAML syntax at the place shown"
        ) from None
    except RecursionError:  # not expected (the loop is iterative), but never a traceback
        raise NimbuildError(f"{src}: the {what} nests too deeply", hint="flatten it") from None
    return root[0] if root else None


class _MergeKey:
    """The ``<<`` key while its mapping is being built (never in the result)."""

    def __repr__(self) -> str:
        return "'<<'"

    def __hash__(self) -> int:
        return 0x3C3C


_MERGE_KEY = _MergeKey()


def load_yaml(
    path: str | os.PathLike[str],
    *,
    what: str = "file",
    limits: Limits = Limits(),
    local_tags: frozenset[str] | tuple[str, ...] = (),
    hint: str | None = None,
) -> tuple[Any, bytes]:
    """Read and parse one YAML file: (its data, its bytes). Every check of :func:`read_regular_file`
    and :func:`parse_yaml`; NimbuildError naming ``path``."""
    raw = read_regular_file(path, what, limits.max_bytes, hint=hint)
    text = decode_utf8(raw, str(path), what)
    return parse_yaml(text, str(path), what=what, limits=limits, local_tags=local_tags), raw


# --------------------------------------------------------------------------- JSON


def _no_duplicates(src: str, what: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key, value in pairs:
            if key in data:
                raise NimbuildError(
                    f"{src}: duplicate key {key!r}: given twice in one object of the {what}", hint="give each key once"
                )
            data[key] = value
        return data

    return hook


def _no_constant(src: str, what: str) -> Callable[[str], Any]:
    def hook(name: str) -> Any:
        raise NimbuildError(f"{src}: the {what} has {name}, which is not JSON", hint="write a number or null")

    return hook


def parse_json(text: str | bytes, src: str = "<json>", *, what: str = "file", hint: str | None = None) -> Any:
    """JSON with duplicate keys and NaN/Infinity refused, one line each (``src`` names the place: a file, or
    ``file:line`` for one line of a JSONL); nesting past Python's recursion limit (the C decoder checks it)
    and integers past Python's digit limit are one-line errors too, not tracebacks. ``hint``: the fix to
    name for malformed text (default: fix the JSON)."""
    if isinstance(text, bytes):
        text = decode_utf8(text, src, what)
    fix = hint or "fix the JSON"
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates(src, what), parse_constant=_no_constant(src, what))
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise NimbuildError(f"{src}: not JSON ({where}: {exc.msg})", hint=fix) from None
    except RecursionError:
        raise NimbuildError(f"{src}: the {what} nests too deeply", hint=hint or "flatten it") from None
    except ValueError as exc:  # int conversion past sys.get_int_max_str_digits(): not a JSONDecodeError
        raise NimbuildError(f"{src}: not JSON nimbuild reads ({str(exc).split(';')[0]})", hint=fix) from None


def load_json(
    path: str | os.PathLike[str], *, what: str = "file", limits: Limits = JSON_LIMITS, hint: str | None = None
) -> Any:
    """Read and parse one JSON file with the checks of :func:`read_regular_file` and :func:`parse_json`."""
    raw = read_regular_file(path, what, limits.max_bytes, hint=hint)
    return parse_json(raw, str(path), what=what)
