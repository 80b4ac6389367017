"""nimbuild.safe_text: one rule for path parts, shell words and printed lines (issue 13, classes 1 and 9)."""

from __future__ import annotations

import io
import json
import logging
import shlex
import subprocess
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nimbuild.errors import NimbuildError
from nimbuild.safe_text import (
    PrintableFormatter,
    check_name,
    child,
    name_problem,
    path_part_problem,
    printable,
    shell_join,
    shell_word,
)

HIDDEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}
# text as hostile input brings it: controls, ANSI escapes, bidi overrides, separators, surrogates
hostile_text = st.lists(
    st.one_of(
        st.characters(),
        st.sampled_from(["\x1b[31m", "\x1b]8;;http://x\x07", "\n", "\r", "\t", "\x00", "\u202e", "\u2028", "\udc9f"]),
    ),
    max_size=30,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(hostile_text)
def test_printable_never_lets_a_control_or_format_character_through(text):
    shown = printable(text)
    assert not any(unicodedata.category(ch) in HIDDEN for ch in shown)
    assert "\n" not in shown and "\x1b" not in shown
    block = printable(text, multiline=True)
    assert all(unicodedata.category(ch) not in HIDDEN or ch in "\n\t" for ch in block)
    assert block.count("\n") == text.count("\n")  # a block keeps its lines, nothing more


@given(st.text(alphabet=st.characters(blacklist_categories=tuple(HIDDEN)), max_size=40))
def test_printable_text_is_left_as_it_is(text):
    assert printable(text) == text


def test_escapes_are_readable():
    assert printable("a\x1b[2Jb\nc\u202ed\udc9f") == "a\\x1b[2Jb\\nc\\u202ed\\x9f"


@settings(max_examples=300, deadline=None)
@given(hostile_text)
def test_a_shell_word_means_exactly_its_value(value):
    value = value.replace("\x00", "").encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    assert shlex.split(shell_word(value)) == [value]
    words = [value, "a b", "$(touch x)", '"; rm -rf ~'][: 1 + len(value) % 4]
    assert shlex.split(shell_join(words)) == words


def test_a_shell_word_is_one_word_for_bash_too(tmp_path):
    evil = 'a"; touch ' + str(tmp_path / "pwned") + " #$(id)`id`\n"
    out = subprocess.run(["bash", "-c", "printf %s " + shell_word(evil)], capture_output=True, text=True, check=True)
    assert out.stdout == evil and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "name",
    [
        "../../../X",
        "/etc/passwd",
        "a/b",
        "a\\b",
        "..",
        ".",
        "",
        "x\x00y",
        "x\ny",
        "\x1b[2J",
        ".hidden",
        "-rf",
        " padded",
        "a" * 256,
        "é" * 128,
        "x\u202ey",
    ],
)
def test_unsafe_names_are_refused_naming_the_place(name):
    assert name_problem(name) is not None
    with pytest.raises(NimbuildError) as exc:
        child("/srv/out/triton", name, "m.yaml: profiles[0].name")
    message = str(exc.value)
    assert message.startswith("m.yaml: profiles[0].name: ") and "\n" not in message and "\x1b" not in message


@settings(max_examples=300, deadline=None)
@given(st.one_of(hostile_text, st.sampled_from(["..", ".", "../x", "a/../../b"])))
def test_a_name_that_passes_is_always_a_direct_child(name):
    if name_problem(name) is None:
        parent = "/srv/out/triton"
        path = child(parent, name, "here")
        assert str(path.parent) == parent and path.name == name
        assert path_part_problem(name) is None
    else:
        with pytest.raises(NimbuildError):
            check_name(name, "here")


@pytest.mark.parametrize(
    "name", ["h100-hbm3-80gb-fp8-triton-tensorrt", "onnx-fp16-triton-onnxruntime", "a.b_c+d", "日本"]
)
def test_ordinary_names_pass(name):
    assert check_name(name, "here") == name


def test_log_records_are_one_line_and_tracebacks_keep_theirs():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(PrintableFormatter("%(levelname)s %(message)s"))
    log = logging.getLogger("nimbuild.test-safe-text")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("profile %s", "x\nERROR forged line\x1b[2J")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed for %s", "y\rz")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "WARNING profile x\\nERROR forged line\\x1b[2J"
    assert lines[1] == "ERROR failed for y\\rz" and lines[2].startswith("Traceback")


def test_json_output_stays_exact(capsys):
    from nimbuild.output import Output

    value = {"name": "x\x1b[2J\ny\u202e"}
    Output(json_mode=True).emit(value, "ignored")
    assert json.loads(capsys.readouterr().out) == value


def test_human_output_escapes_and_does_not_read_markup(capsys):
    from nimbuild.output import Output

    out = Output()
    out.table(["name"], [["[/]x\x1b[31m"], ["[bold]y[/bold]"]])  # rich markup would raise or vanish
    out.line("a\x1b]0;title\x07")
    out.emit({}, "block\x1b[2J\nsecond line\r\n")
    text = capsys.readouterr().out
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert "[/]x\\x1b[31m" in text and "[bold]y[/bold]" in text
    assert "a\\x1b]0;title\\x07\n" in text and "block\\x1b[2J\nsecond line\\r\n" in text
