"""The example configurations load, and the production one documents every key."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest

from meksd.config import (
    LogConfig,
    ReplaySourceConfig,
    RoomSettings,
    SendConfig,
    ServerConfig,
    WebsocketSourceConfig,
    load_config,
    parse_config,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PRODUCTION = EXAMPLES / "production.toml"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_example_config_loads(path: Path) -> None:
    """Every examples/*.toml passes the same validation as `meksd check-config`."""
    config = load_config(path)
    assert config.rooms


def test_there_is_a_production_example() -> None:
    """examples/production.toml exists (the glob above would silently skip it)."""
    assert PRODUCTION in EXAMPLES.glob("*.toml")


def test_production_example_shows_every_key() -> None:
    """Each key of [server], [log], rooms, websocket and replay sources appears, set or
    commented out, so that the example stays in step with meksd/config.py."""
    text = PRODUCTION.read_text("utf-8")
    written = set(re.findall(r"^[# ]*([a-z_]+) = ", text, flags=re.MULTILINE))
    classes = (
        ServerConfig,
        LogConfig,
        RoomSettings,
        WebsocketSourceConfig,
        ReplaySourceConfig,
        SendConfig,
    )
    expected = {field.name for cls in classes for field in attrs.fields(cls)} - {"sources", "send"}
    assert expected - written == set()


def test_production_example_keeps_listeners_on_loopback() -> None:
    """Without authentication, the example binds nothing beyond loopback."""
    server = load_config(PRODUCTION).server
    assert server.ws_address[0] == "127.0.0.1"
    assert server.http_address[0] == "127.0.0.1"


def test_production_commented_replay_fallback_is_valid() -> None:
    """The commented-out replay source is valid once uncommented (with a real file)."""
    text = PRODUCTION.read_text("utf-8")
    block = text[text.index("# [[rooms.sources]]") :]
    lines = []
    for line in block.splitlines():
        if not line.startswith("#"):
            break
        if line.startswith("# #") or line == "#":
            continue
        lines.append(line.removeprefix("# "))
    uncommented = "\n".join(lines).replace(
        '"/var/lib/meksd/fallback/carol.jsonl"', '"demo-feed.jsonl"'
    )
    config = parse_config(text + "\n" + uncommented + "\n", base_dir=EXAMPLES)
    carol = next(room for room in config.rooms if room.id == "carol")
    kinds = [type(source) for source in carol.sources]
    assert kinds == [WebsocketSourceConfig, ReplaySourceConfig]
