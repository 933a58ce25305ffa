"""``meksd logs``: formatting, filtering and following JSON log lines (meksd.logview)."""

from __future__ import annotations

import io
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meksd.logview import LEVELS, ViewOptions, follow_lines, format_line, main, parse_level
from meksd.logview import _use_color as use_color

PLAIN = ViewOptions()

RECORD = {
    "ts": "2026-05-09T12:00:03.250123+02:00",
    "level": "WARNING",
    "msg": "dashboard lagged",
    "room": "alice",
    "conn": "c17",
    "source": "ws-main",
    "behind": 412,
    "snapshot": True,
}


def line(**fields: object) -> str:
    return json.dumps(fields)


# --- format_line ---------------------------------------------------------------


def test_full_record_layout() -> None:
    """A record prints as time, padded level, [room conn source], message, then extras."""
    assert format_line(json.dumps(RECORD), PLAIN) == (
        "12:00:03.250 WARNING  [alice c17 ws-main] dashboard lagged  behind=412 snapshot=true"
    )


def test_minimal_record_layout() -> None:
    """Without context fields or extras there are no brackets and no trailing spaces."""
    text = line(ts="2026-05-09T07:08:09.5Z", level="info", msg="all rooms up")
    assert format_line(text, PLAIN) == "07:08:09.500 INFO     all rooms up"


def test_missing_fields_keep_columns() -> None:
    """A record without ts or level keeps the columns with placeholders."""
    assert format_line(line(msg="hi", room="bob"), PLAIN) == "--:--:--.--- -        [bob] hi"


def test_partial_context_keeps_order() -> None:
    """Only the context fields present are shown, in room, conn, source order."""
    text = line(ts="2026-05-09T12:00:00+00:00", level="DEBUG", msg="m", source="sim", room=7)
    assert format_line(text, PLAIN) == "12:00:00.000 DEBUG    [7 sim] m"


def test_syslog_prefix_is_stripped() -> None:
    """A journald <N> priority prefix is removed before parsing."""
    assert format_line("<4>" + json.dumps(RECORD), PLAIN) == format_line(json.dumps(RECORD), PLAIN)


@pytest.mark.parametrize(
    ("prefix", "level"),
    [("<2>", "CRITICAL"), ("<3>", "ERROR"), ("<12>", "WARNING"), ("<7>", "DEBUG")],
)
def test_syslog_prefix_gives_level_when_missing(prefix: str, level: str) -> None:
    """A record without a level takes it from the syslog severity (priority & 7)."""
    assert format_line(prefix + line(msg="x"), PLAIN) == f"--:--:--.--- {level:<8} x"


@pytest.mark.parametrize(
    "raw",
    [
        "Traceback (most recent call last):",
        "",
        "{not json",
        "[1, 2]",
        '"a json string"',
        "42",
        "null",
        "<3>plain text with a priority",
    ],
)
def test_non_objects_print_as_is(raw: str) -> None:
    """A line that is not a JSON object is printed unchanged (bar a priority prefix)."""
    expected = raw.removeprefix("<3>")
    assert format_line(raw, PLAIN) == expected
    assert format_line(raw, ViewOptions(rooms=frozenset({"alice"}), min_level=40)) == expected


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("plain", "k=plain"),
        ("two words", 'k="two words"'),
        ("", 'k=""'),
        ("a=b", 'k="a=b"'),
        (None, "k=null"),
        (1.5, "k=1.5"),
        (False, "k=false"),
        ({"a": [1, "x y"]}, 'k={"a":[1,"x y"]}'),
        ("ü→★", "k=ü→★"),
    ],
)
def test_extra_values(value: object, shown: str) -> None:
    """Extras print as key=value: bare words bare, other strings quoted, the rest as JSON."""
    text = format_line(line(level="INFO", msg="m", k=value), PLAIN)
    assert text is not None
    assert text.endswith("m  " + shown)


def test_extras_keep_record_order_and_event_is_an_extra() -> None:
    """Extras, the event field among them, keep the order they have in the record."""
    text = format_line(line(msg="m", z=1, event="gift", a=2), PLAIN)
    assert text == "--:--:--.--- -        m  z=1 event=gift a=2"


def test_multiline_message_and_traceback() -> None:
    """Extra lines of a message and multi-line extras (tracebacks) are indented blocks."""
    text = format_line(
        line(
            ts="2026-05-09T12:00:00+00:00",
            level="ERROR",
            msg="actor crashed\nrestarting",
            room="alice",
            exception="Traceback (most recent call last):\n  File 'x'\nValueError: bad\n",
            attempt=3,
        ),
        PLAIN,
    )
    assert text == (
        "12:00:00.000 ERROR    [alice] actor crashed  attempt=3\n"
        "    restarting\n"
        "    exception:\n"
        "    Traceback (most recent call last):\n"
        "      File 'x'\n"
        "    ValueError: bad"
    )


def test_control_characters_are_escaped() -> None:
    """Terminal escapes in untrusted values (chat text) are shown escaped, never emitted."""
    text = format_line(
        line(msg="hi \x1b[2J\x07", room="r\x1b", nick="\x1b]0;pwned\x07", level="INFO\x1b"), PLAIN
    )
    assert text is not None
    assert "\x1b" not in text
    assert "\x07" not in text
    assert "hi \\x1b[2J\\x07" in text
    assert "[r\\x1b]" in text
    assert "nick=\\x1b]0;pwned\\x07" in text


def test_control_characters_are_escaped_in_json_values() -> None:
    """Quoted and structured extras escape C0 controls (as JSON does) and C1 ones such as CSI."""
    text = format_line(line(msg="m", a="x \x1b[31m", b={"k": "\x9b2J"}), PLAIN)
    assert text == '--:--:--.--- -        m  a="x \\u001b[31m" b={"k":"\\x9b2J"}'


@pytest.mark.parametrize(
    ("ts", "shown"),
    [
        ("2026-05-09T23:59:59.999999-07:00", "23:59:59.999"),
        ("2026-05-09T01:02:03", "01:02:03.000"),
        ("2026-05-09 01:02:03.04Z", "01:02:03.040"),
        (0, "00:00:00.000"),
        (1.25, "00:00:01.250"),
        ("yesterday", "yesterday"),
        (True, "--:--:--.---"),
        (1e300, "1e+300"),
    ],
)
def test_time_column(ts: object, shown: str) -> None:
    """ts prints as HH:MM:SS.mmm in its own offset; epoch numbers as UTC; junk as given."""
    text = format_line(line(ts=ts, level="INFO", msg="m"), PLAIN)
    assert text == f"{shown} INFO     m"


# --- filters -------------------------------------------------------------------


def test_room_filter() -> None:
    """--room keeps only records of the listed rooms; records without a room are hidden."""
    options = ViewOptions(rooms=frozenset({"alice", "7"}))
    assert format_line(line(msg="a", room="alice"), options) is not None
    assert format_line(line(msg="n", room=7), options) is not None
    assert format_line(line(msg="b", room="bob"), options) is None
    assert format_line(line(msg="global"), options) is None


def test_level_filter() -> None:
    """--level hides less severe records, knows aliases, and keeps unknown levels visible."""
    options = ViewOptions(min_level=parse_level("warning"))
    shown = {
        level: format_line(line(level=level, msg="m"), options) is not None
        for level in ("trace", "DEBUG", "info", "Success", "warn", "WARNING", "error", "fatal")
    }
    assert shown == {
        "trace": False,
        "DEBUG": False,
        "info": False,
        "Success": False,
        "warn": True,
        "WARNING": True,
        "error": True,
        "fatal": True,
    }
    assert format_line(line(level="NOTICE", msg="m"), options) == "--:--:--.--- NOTICE   m"
    assert format_line("<7>" + line(msg="m"), options) is None


def test_level_order() -> None:
    """Levels rank TRACE < DEBUG < INFO < SUCCESS < WARNING < ERROR < CRITICAL."""
    order = ["trace", "debug", "info", "success", "warning", "error", "critical"]
    assert [parse_level(name) for name in order] == sorted(LEVELS.values())
    assert parse_level(" Warn ") == LEVELS["WARNING"]


def test_parse_level_rejects_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown --level is a usage error (exit status 2) naming the choices."""
    with pytest.raises(SystemExit) as info:
        main(["--level", "loud"])
    assert info.value.code == 2
    assert "unknown level 'loud'" in capsys.readouterr().err


# --- colour --------------------------------------------------------------------


def test_colour_marks_up_time_level_and_context() -> None:
    """With colour on, time, level and context are wrapped in ANSI styles."""
    text = format_line(json.dumps(RECORD), ViewOptions(color=True))
    assert text is not None
    assert "\x1b[1;33mWARNING \x1b[0m" in text
    assert "\x1b[36m[alice c17 ws-main]\x1b[0m" in text
    assert text.startswith("\x1b[32m12:00:03.250\x1b[0m ")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_choice() -> None:
    """auto colours a terminal only, NO_COLOR and TERM=dumb turn it off, always/never force."""
    assert use_color("auto", _Tty(), {})
    assert not use_color("auto", io.StringIO(), {})
    assert not use_color("auto", _Tty(), {"NO_COLOR": "1"})
    assert not use_color("auto", _Tty(), {"TERM": "dumb"})
    assert use_color("always", io.StringIO(), {"NO_COLOR": "1"})
    assert not use_color("never", _Tty(), {})


# --- robustness ----------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=8,
)


@given(st.text())
def test_never_raises_on_any_text(raw: str) -> None:
    """format_line returns text or None for any line whatever."""
    result = format_line(raw, ViewOptions(rooms=frozenset({"r"}), min_level=20, color=True))
    assert result is None or isinstance(result, str)


@given(
    st.dictionaries(st.sampled_from(["ts", "level", "msg", "room", "conn", "source", "x"]), _json)
)
def test_never_raises_on_any_record(record: dict[str, object]) -> None:
    """Any JSON object, with any types in the known fields, formats without raising."""
    for options in (PLAIN, ViewOptions(rooms=frozenset({"r"}), min_level=30, color=True)):
        result = format_line(json.dumps(record), options)
        assert result is None or isinstance(result, str)


# --- main with a FILE ----------------------------------------------------------


def test_main_reads_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """main([FILE]) prints every line of the file, filtered, and returns 0."""
    path = tmp_path / "meksd.log"
    path.write_bytes(
        b"<6>" + json.dumps(RECORD).encode() + b"\r\n"
        b"garbage \xff\xfe bytes\n"
        b'{"level":"DEBUG","msg":"hidden","room":"alice"}\n'
        b'{"level":"ERROR","msg":"other room","room":"bob"}\n'
        b'{"level":"ERROR","msg":"no newline","room":"alice"}'
    )
    assert main(["--room", "alice", "--level", "info", str(path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "12:00:03.250 WARNING  [alice c17 ws-main] dashboard lagged  behind=412 snapshot=true",
        "garbage \ufffd\ufffd bytes",
        "--:--:--.--- ERROR    [alice] no newline",
    ]


def test_main_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A FILE that cannot be opened is reported on stderr with exit status 66, also with -f."""
    for extra in ([], ["--follow"]):
        assert main([*extra, str(tmp_path / "absent.log")]) == 66
        err = capsys.readouterr().err
        assert "meksd logs: cannot read" in err
        assert "No such file or directory" in err


# --- follow_lines --------------------------------------------------------------


class _Done(Exception):
    pass


def _scripted_sleep(steps: list[Callable[[], object]]) -> Callable[[float], None]:
    """A sleep that performs the next scripted change to the file instead of waiting."""

    def sleep(_: float) -> None:
        if not steps:
            raise _Done
        steps.pop(0)()

    return sleep


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def test_follow_handles_growth_truncation_and_rotation(tmp_path: Path) -> None:
    """Following reads appended lines, restarts after truncation, and moves to a rotated-in file."""
    path = tmp_path / "meksd.log"
    rotated = tmp_path / "meksd.log.1"
    path.write_bytes(b"one\ntw")

    def rotate() -> None:
        path.rename(rotated)
        _append(rotated, b"late\nunfinished")  # the writer has not reopened yet

    steps: list[Callable[[], object]] = [
        lambda: _append(path, b"o\nthree\n"),  # completes the held-back line
        lambda: None,  # nothing new: keeps polling
        lambda: path.write_bytes(b"cut\n"),  # copytruncate
        rotate,  # rename rotation; for a moment there is no file at path
        lambda: path.write_bytes(b"new file\n"),  # the new file appears
        lambda: _append(path, b"more\n"),
    ]
    got = []
    with pytest.raises(_Done):
        for item in follow_lines(path, sleep=_scripted_sleep(steps)):
            got.append(item)
    assert got == [b"one", b"two", b"three", b"cut", b"late", b"unfinished", b"new file", b"more"]


def test_follow_yields_partial_line_cut_by_truncation(tmp_path: Path) -> None:
    """A held-back partial line is still yielded when the file is truncated under it."""
    path = tmp_path / "meksd.log"
    path.write_bytes(b"complete\npartial")
    steps: list[Callable[[], object]] = [lambda: path.write_bytes(b"x\n")]
    got = []
    with pytest.raises(_Done):
        for item in follow_lines(path, sleep=_scripted_sleep(steps)):
            got.append(item)
    assert got == [b"complete", b"partial", b"x"]


def test_follow_closes_its_file(tmp_path: Path) -> None:
    """Closing the follower closes the file it holds."""
    path = tmp_path / "meksd.log"
    path.write_bytes(b"a\n")
    before = set(os.listdir("/proc/self/fd"))
    follower = follow_lines(path, sleep=_scripted_sleep([]))
    assert next(follower) == b"a"
    assert len(set(os.listdir("/proc/self/fd")) - before) == 1
    follower.close()
    assert set(os.listdir("/proc/self/fd")) - before == set()


# --- as a subprocess -----------------------------------------------------------


def _logview(*args: str, stdin: int | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m meksd.logview`` with piped output and colour left on "auto"."""
    env = {**os.environ, "NO_COLOR": "", "TERM": "xterm"}
    return subprocess.Popen(
        [sys.executable, "-m", "meksd.logview", *args],
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_subprocess_reads_stdin_to_eof() -> None:
    """Piped stdin is read to its end, filtered, printed without colour, exit status 0."""
    stdin = "\n".join(
        [
            "<6>" + json.dumps(RECORD),
            "not json",
            line(level="DEBUG", msg="hidden"),
            line(level="ERROR", msg="shown", room="bob", event="gift"),
        ]
    )
    for extra in ([], ["--follow"], ["-"]):
        child = _logview("--level", "INFO", *extra, stdin=subprocess.PIPE)
        out, err = child.communicate(stdin.encode(), timeout=30)
        assert (child.returncode, err) == (0, b"")
        assert out.decode().splitlines() == [
            "12:00:03.250 WARNING  [alice c17 ws-main] dashboard lagged  behind=412 snapshot=true",
            "not json",
            "--:--:--.--- ERROR    [bob] shown  event=gift",
        ]


def test_subprocess_closed_stdout_exits_quietly(tmp_path: Path) -> None:
    """When the reader goes away (| head) the viewer exits 0 without a traceback."""
    path = tmp_path / "big.log"
    path.write_text((json.dumps(RECORD) + "\n") * 200_000)
    child = _logview(str(path))
    assert child.stdout is not None
    assert child.stdout.readline().startswith(b"12:00:03.250 WARNING")
    child.stdout.close()
    assert child.wait(timeout=30) == 0
    assert child.stderr is not None
    assert child.stderr.read() == b""
    child.stderr.close()


def _read_lines(child: subprocess.Popen[bytes], count: int, timeout: float = 10) -> list[str]:
    """Read *count* lines from the child's stdout, failing after *timeout* seconds."""
    assert child.stdout is not None
    fd = child.stdout.fileno()
    deadline = time.monotonic() + timeout
    buffer = b""
    while buffer.count(b"\n") < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out; got {buffer!r}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"child exited; got {buffer!r}"
            buffer += chunk
    lines = buffer.decode().split("\n")
    assert lines[count:] == [""], "more output than expected"
    return lines[:count]


def test_subprocess_follows_a_file_across_rotation(tmp_path: Path) -> None:
    """--follow FILE prints new lines as they are written, also after a rename rotation."""
    path = tmp_path / "meksd.log"
    path.write_text(line(level="INFO", msg="first") + "\n")
    child = _logview("--follow", str(path))
    try:
        assert _read_lines(child, 1) == ["--:--:--.--- INFO     first"]
        _append(path, (line(level="INFO", msg="second", room="r") + "\n").encode())
        assert _read_lines(child, 1) == ["--:--:--.--- INFO     [r] second"]
        path.rename(tmp_path / "meksd.log.1")
        path.write_text("after rotation\n")
        assert _read_lines(child, 1) == ["after rotation"]
    finally:
        child.terminate()
        child.wait(timeout=10)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
