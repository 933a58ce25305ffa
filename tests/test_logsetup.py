"""Logging: one JSON object per line on stderr, synchronously."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import orjson
import pytest
from loguru import logger

from meksd.logsetup import configure_logging


@pytest.fixture
def json_logging() -> Iterator[None]:
    configure_logging("DEBUG")
    yield
    logger.remove()
    logger.add(sys.stderr)  # loguru's default handler, for the tests that follow


def test_one_json_object_per_line(json_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    """Each record is a JSON line with ts (UTC), level, msg and flattened extras."""
    logger.bind(room="alice", source="websocket:0").info("hello {who}", who="world", event="hi")
    logger.debug("second")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    first = orjson.loads(lines[0])
    assert first["msg"] == "hello world"
    assert first["level"] == "INFO"
    assert first["ts"].endswith("Z")
    assert first["room"] == "alice"
    assert first["source"] == "websocket:0"
    assert first["event"] == "hi"
    assert first["who"] == "world"
    assert orjson.loads(lines[1])["msg"] == "second"


def test_level_filter_and_exceptions(capsys: pytest.CaptureFixture[str]) -> None:
    """Records below the level are dropped; exceptions come as an `exc` field."""
    configure_logging("warning")
    try:
        logger.info("dropped")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
        lines = capsys.readouterr().err.splitlines()
    finally:
        logger.remove()
        logger.add(sys.stderr)
    assert len(lines) == 1
    record = orjson.loads(lines[0])
    assert record["level"] == "ERROR"
    assert "ValueError: boom" in record["exc"]


def test_reserved_extras_do_not_clobber(
    json_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """An extra named like a core field is renamed, not allowed to overwrite it."""
    logger.bind(msg="sneaky", level="x").warning("real")
    record = orjson.loads(capsys.readouterr().err)
    assert record["msg"] == "real"
    assert record["level"] == "WARNING"
    assert record["extra_msg"] == "sneaky"
