"""Logging: one JSON object per line on stderr, synchronously, rate-limited."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
from loguru import logger

from meksd.logsetup import (
    InterceptHandler,
    JsonSink,
    configure_logging,
    flush_suppressed,
    journal_stream_matches,
    statistics,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def restore_logging(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """Start from a fresh sink (an earlier test's may hold summaries, which replacing it
    writes out); leave loguru's default handler and the root logger as they were."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    configure_logging("INFO", journal=False, rate_limit=None)
    capsys.readouterr()
    yield
    flush_suppressed()
    logger.remove()
    # The process's own stderr, not ``sys.stderr``: that is capsys's stream now, closed
    # after this test, and every later log line would fail on it ("I/O operation on
    # closed file" in later tests' captured output).
    logger.add(sys.__stderr__)  # type: ignore[arg-type]
    for handler in list(root.handlers):
        if isinstance(handler, InterceptHandler) and handler not in handlers:
            root.removeHandler(handler)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def err_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def records(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in err_lines(capsys)]


def test_one_json_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    """Each record is a JSON line with ts (UTC, ms), level, msg and flattened extras."""
    configure_logging("DEBUG", journal=False)
    logger.bind(room="alice", source="websocket:0").info("hello {who}", who="world", event="hi")
    logger.debug("second")
    first, second = records(capsys)
    assert first["msg"] == "hello world"
    assert first["level"] == "INFO"
    assert first["ts"].endswith("Z") and len(first["ts"]) == len("2024-01-01T00:00:00.000Z")
    assert (first["room"], first["source"], first["event"]) == ("alice", "websocket:0", "hi")
    assert first["who"] == "world"
    assert second["msg"] == "second"
    assert "room" not in second and "exc" not in second


def test_context_fields_follow_msg_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    """Keys come as ts, level, msg, room, conn, source, event, then the other extras."""
    configure_logging("INFO", journal=False)
    logger.bind(zeta=1, source="replay:0", conn="c7", room="bob").info("x", event="e", alpha=2)
    (line,) = err_lines(capsys)
    keys = list(orjson.loads(line))
    assert keys == ["ts", "level", "msg", "room", "conn", "source", "event", "zeta", "alpha"]


def test_values_json_cannot_hold_become_strings(capsys: pytest.CaptureFixture[str]) -> None:
    """Objects, bytes, sets, int keys, huge ints and lone surrogates never break a line."""

    class Thing:
        def __str__(self) -> str:
            return "a thing"

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no")

    configure_logging("INFO", journal=False)
    logger.info("objects", thing=Thing(), data=b"\x00\xff", keyed={1: "one"}, bad=Unprintable())
    logger.info("odd", big=2**70, text="\ud800 lone", nested={(1, 2): "tuple key", "ok": 1})
    first, second = records(capsys)
    assert first["thing"] == "a thing"
    assert first["data"] == str(b"\x00\xff")
    assert first["keyed"] == {"1": "one"}
    assert first["bad"] == "<unprintable Unprintable>"
    assert second["msg"] == "odd"
    assert second["big"] == 2**70
    assert second["text"] == "\ufffd lone"
    assert second["nested"] == {"ok": 1}


def test_level_filter_and_exception_fields(capsys: pytest.CaptureFixture[str]) -> None:
    """Records below the level are dropped; an exception gives `exc` and `traceback`."""
    configure_logging("warning", journal=False)
    logger.info("dropped")
    try:
        raise ValueError("boom")
    except ValueError:
        logger.bind(room="alice").exception("failed")
    (record,) = records(capsys)
    assert record["level"] == "ERROR"
    assert record["room"] == "alice"
    assert record["exc"] == "ValueError: boom"
    assert record["traceback"].startswith("Traceback (most recent call last):")
    assert 'raise ValueError("boom")' in record["traceback"]


def test_reserved_extras_do_not_clobber(capsys: pytest.CaptureFixture[str]) -> None:
    """An extra named like a core field is renamed, not allowed to overwrite it."""
    configure_logging("INFO", journal=False)
    logger.bind(msg="sneaky", level="x", traceback="t").warning("real")
    (record,) = records(capsys)
    assert record["msg"] == "real"
    assert record["level"] == "WARNING"
    assert record["extra_msg"] == "sneaky"
    assert record["extra_traceback"] == "t"
    assert "traceback" not in record


def test_syslog_priority_prefix_for_journald(capsys: pytest.CaptureFixture[str]) -> None:
    """With journald, each line starts with <N>: the syslog priority of its level."""
    configure_logging("TRACE", journal=True)
    expected = {
        "TRACE": 7,
        "DEBUG": 7,
        "INFO": 6,
        "SUCCESS": 6,
        "WARNING": 4,
        "ERROR": 3,
        "CRITICAL": 2,
    }
    for level in expected:
        logger.log(level, "at {level}", level=level.lower())
    lines = err_lines(capsys)
    assert len(lines) == len(expected)
    for line, (level, priority) in zip(lines, expected.items(), strict=True):
        prefix = f"<{priority}>"
        assert line.startswith(prefix), line
        assert orjson.loads(line[len(prefix) :])["level"] == level


def test_no_prefix_unless_journal_stream_is_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without $JOURNAL_STREAM, or with one naming another file, lines are bare JSON."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    configure_logging("INFO")
    logger.info("unset")
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    configure_logging("INFO")
    logger.info("other stream")
    assert [record["msg"] for record in records(capsys)] == ["unset", "other stream"]


def test_journal_stream_detection_compares_device_and_inode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """$JOURNAL_STREAM counts only when it names the stream's own device and inode."""
    read_fd, write_fd = os.pipe()
    with open(read_fd, "rb") as _reader, open(write_fd, "w") as stream:
        st = os.fstat(write_fd)
        assert journal_stream_matches({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, stream)
        assert not journal_stream_matches(
            {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, stream
        )
        assert not journal_stream_matches({}, stream)
        assert not journal_stream_matches({"JOURNAL_STREAM": "garbage"}, stream)


def test_rate_limit_passes_n_then_summarizes(
    capsys: pytest.CaptureFixture[str], clock: FakeClock
) -> None:
    """A key logs N times per window; after the window one summary line counts the rest."""
    configure_logging("INFO", journal=False, rate_limit=5, rate_interval_s=10.0, clock=clock)
    for i in range(12):
        logger.bind(room="alice").warning("bad record {i}", i=i, event="rejected")
    logger.bind(room="bob").warning("bad record", event="rejected")  # another room: own key
    logger.bind(room="alice").info("bad record", event="rejected")  # another level: own key
    assert [(r["room"], r["level"]) for r in records(capsys)] == [("alice", "WARNING")] * 5 + [
        ("bob", "WARNING"),
        ("alice", "INFO"),
    ]
    clock.now += 9.9
    logger.bind(room="alice").warning("still inside the window", event="rejected")
    assert records(capsys) == []
    clock.now += 0.1
    logger.bind(room="alice").warning("next window", event="rejected")
    summary, after = records(capsys)
    assert summary["msg"] == "suppressed 8 similar lines"
    assert summary["level"] == "WARNING"
    assert (summary["room"], summary["event"], summary["suppressed"]) == ("alice", "rejected", 8)
    assert summary["last_msg"] == "still inside the window"
    assert summary["window_s"] == 10.0
    assert after["msg"] == "next window"
    assert statistics().suppressed == 8


def test_rate_limit_without_event_keys_on_call_site(
    capsys: pytest.CaptureFixture[str], clock: FakeClock
) -> None:
    """Without `event`, one call site is one key, however its message text varies."""
    configure_logging("INFO", journal=False, rate_limit=2, rate_interval_s=10.0, clock=clock)
    for i in range(5):
        logger.info("chat from user {i}", i=i)
        logger.info("another call site")
    assert [r["msg"] for r in records(capsys)] == [
        "chat from user 0",
        "another call site",
        "chat from user 1",
        "another call site",
    ]
    clock.now += 10
    flush_suppressed()
    summaries = records(capsys)
    assert [s["suppressed"] for s in summaries] == [3, 3]
    assert all("test_logsetup:test_rate_limit_without_event" in s["site"] for s in summaries)
    assert all("room" not in s for s in summaries)


def test_flush_writes_summaries_only_for_ended_windows(
    capsys: pytest.CaptureFixture[str], clock: FakeClock
) -> None:
    """flush_suppressed writes nothing before the window ends, then the summary once."""
    configure_logging("INFO", journal=True, rate_limit=1, rate_interval_s=10.0, clock=clock)
    for _ in range(3):
        logger.error("flood", event="flood")
    flush_suppressed()
    assert len(err_lines(capsys)) == 1
    clock.now += 10
    flush_suppressed()
    flush_suppressed()
    (line,) = err_lines(capsys)
    assert line.startswith("<3>")
    assert orjson.loads(line[3:])["suppressed"] == 2


def test_configure_twice_gives_one_line_per_record(
    capsys: pytest.CaptureFixture[str], clock: FakeClock
) -> None:
    """Reconfiguring replaces the sink (and level); pending summaries are written first."""
    configure_logging("INFO", journal=False, rate_limit=1, clock=clock)
    logger.info("once", event="e")
    logger.info("once", event="e")
    configure_logging("DEBUG", journal=False)
    logger.debug("after")
    assert [r["msg"] for r in records(capsys)] == ["once", "suppressed 1 similar lines", "after"]
    root_intercepts = [h for h in logging.getLogger().handlers if isinstance(h, InterceptHandler)]
    assert len(root_intercepts) == 1


def test_broken_stderr_is_swallowed_and_counted() -> None:
    """A write to a broken or closed stderr never raises out of a logging call."""

    class BrokenPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    sink = configure_logging("INFO", journal=False, stream=BrokenPipe())  # type: ignore[arg-type]
    logger.info("lost")
    logger.error("lost too")
    assert (sink.statistics().write_errors, sink.statistics().lines_written) == (2, 0)

    closed = open(os.devnull, "w")  # noqa: SIM115 -- closed on the next line on purpose
    closed.close()
    sink = configure_logging("INFO", journal=False, stream=closed)
    logger.info("lost")
    assert sink.statistics().write_errors == 1


def test_stdlib_logging_is_routed_at_warning(capsys: pytest.CaptureFixture[str]) -> None:
    """stdlib WARNING+ records become JSON lines with the logger name; INFO is dropped."""
    configure_logging("DEBUG", journal=False)
    stdlib = logging.getLogger("trio-websocket")
    stdlib.info("too chatty")
    stdlib.warning("braces {kept} and %s", "args")
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        stdlib.exception("handler failed")
    warning, error = records(capsys)
    assert warning["msg"] == "braces {kept} and args"
    assert (warning["level"], warning["logger"]) == ("WARNING", "trio-websocket")
    assert error["level"] == "ERROR"
    assert error["exc"] == "ZeroDivisionError: division by zero"


def test_sink_is_synchronous_and_plain_callable() -> None:
    """The sink is a plain callable, no coroutine: records are written inside the call."""
    sink = configure_logging("INFO", journal=False)
    assert isinstance(sink, JsonSink)
    assert not hasattr(sink, "write")  # loguru would wrap it as a stream sink
    before = sink.statistics().lines_written
    logger.info("now")
    assert sink.statistics().lines_written == before + 1


async def test_meksd_run_logs_priority_prefixed_json_to_journald(tmp_path: Path) -> None:
    """`meksd run` under journald writes only `<N>{json}` lines, the priority matching."""
    feed_lines = (EXAMPLES / "demo-feed.jsonl").read_bytes().splitlines()[:5]
    (tmp_path / "feed.jsonl").write_bytes(b"\n".join(feed_lines) + b"\n")
    conf = tmp_path / "meksd.toml"
    conf.write_text(
        '[server]\nws_listen = "127.0.0.1:0"\nhttp_listen = "127.0.0.1:0"\n'
        '[log]\nlevel = "DEBUG"\n'
        '[[rooms]]\nid = "replayed"\n'
        '[[rooms.sources]]\nkind = "replay"\npath = "feed.jsonl"\nspeed = 0\n'
    )
    read_fd, write_fd = os.pipe()
    st = os.fstat(write_fd)
    env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    command = [sys.executable, "-m", "meksd", "run", "--config", str(conf)]
    output = b""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            try:
                process: trio.Process = await nursery.start(
                    partial(
                        trio.run_process,
                        command,
                        stderr=write_fd,
                        env=env,
                        check=False,
                        stdin=subprocess.DEVNULL,
                    )
                )
            finally:
                os.close(write_fd)
            async with trio.lowlevel.FdStream(read_fd) as stderr:
                while b'"event":"ready"' not in output:
                    chunk = await stderr.receive_some()
                    assert chunk, output.decode()
                    output += chunk
                process.send_signal(signal.SIGTERM)
                while chunk := await stderr.receive_some():
                    output += chunk
    assert process.returncode == 0, output.decode()
    priorities = {"TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 6, "WARNING": 4, "ERROR": 3}
    parsed = []
    for line in output.decode().splitlines():
        assert line.startswith("<") and ">{" in line, line
        prefix, _, body = line.partition(">")
        record = orjson.loads(body)
        assert {"ts", "level", "msg"} <= record.keys(), line
        assert int(prefix[1:]) == priorities[record["level"]], line
        parsed.append(record)
    events = [record.get("event") for record in parsed]
    assert "ready" in events and "stopped" in events
    assert any(
        record.get("room") == "replayed" and record.get("source") == "replay:0" for record in parsed
    )


def test_unknown_level_leaves_logging_as_it_was(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown level raises ValueError and the sink in place keeps working."""
    configure_logging("INFO", journal=False)
    with pytest.raises(ValueError):
        configure_logging("LOUD")
    logger.info("still here")
    assert [r["msg"] for r in records(capsys)] == ["still here"]
