"""The example relays' mappings (examples/relays/) against recorded connector shapes,
fed through meksd's normalizer and reducers."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import orjson
import pytest

from meksd.playground import ReplayReport, replay_lines

RELAYS = Path(__file__).resolve().parent.parent / "examples" / "relays"
RECORDED = RELAYS / "recorded"

NODE_MAPPER = """
import { createInterface } from 'node:readline';
import { toEnvelope, FORWARDED } from %s;
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const { event, data } = JSON.parse(line);
  if (!FORWARDED.includes(event)) continue;
  const envelope = toEnvelope(event, data);
  if (envelope) console.log(JSON.stringify(envelope));
}
"""


def node_envelopes() -> list[bytes]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = NODE_MAPPER % json.dumps((RELAYS / "node" / "map.mjs").as_uri())
    result = subprocess.run(
        [node, "--input-type=module", "-e", script],
        input=(RECORDED / "tiktok-live-connector.jsonl").read_bytes(),
        capture_output=True,
        timeout=30,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if line.strip()]


def load_python_relay() -> ModuleType:
    spec = importlib.util.spec_from_file_location("relay", RELAYS / "python" / "relay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def as_object(value: Any) -> Any:
    """JSON as TikTokLive-like objects: attributes for fields, dicts for id-keyed maps."""
    if isinstance(value, dict):
        items = {k: as_object(v) for k, v in value.items()}
        if items and all(k.isdigit() for k in items):
            return items
        return SimpleNamespace(**items)
    if isinstance(value, list):
        return [as_object(v) for v in value]
    return value


def python_envelopes() -> list[bytes]:
    relay = load_python_relay()
    out = []
    for line in (RECORDED / "tiktoklive.jsonl").read_text("utf-8").splitlines():
        recorded = json.loads(line)
        event = type(recorded["class"], (SimpleNamespace,), {})(
            **vars(as_object(recorded["attrs"]))
        )
        envelope = relay.to_envelope(event)
        if envelope is not None:
            out.append(orjson.dumps(envelope))
    return out


def check_room(report: ReplayReport) -> None:
    state = report.state
    assert report.rejections == {}, report.samples
    assert report.unknown == {}
    totals = state.totals
    assert (totals.diamonds, totals.gifts) == (1005, 6)  # Rose streak of 5 + one Galaxy
    assert (totals.comments, totals.likes, totals.joins) == (2, 15, 1)
    assert (totals.follows, totals.shares) == (1, 1)
    assert state.duplicates == 1  # the re-sent Galaxy
    assert state.viewers == 1234
    assert {row.unique_id: row.diamonds for row in state.leaderboard.values()} == {
        "rosa.fox": 5,
        "night_owl": 1000,
    }
    assert state.battle is not None
    assert (state.battle.status, state.battle.winner) == ("ended", "7100001")
    assert [h.score for h in state.battle.hosts] == [120, 80]
    assert state.live == "ended"


def test_node_relay_mapping_feeds_a_room_exactly() -> None:
    """tiktok-live-connector (v2) shapes through map.mjs: nothing rejected, every count right."""
    envelopes = node_envelopes()
    assert [orjson.loads(e)["event"] for e in envelopes][-3:] == [
        "controlMessage",
        "controlMessage",
        "streamEnd",
    ]
    check_room(replay_lines(envelopes))


def test_python_relay_mapping_feeds_a_room_exactly() -> None:
    """TikTokLive shapes through relay.to_envelope: nothing rejected, every count right."""
    envelopes = python_envelopes()
    assert [orjson.loads(e)["event"] for e in envelopes][-3:] == [
        "livePause",
        "liveUnpause",
        "streamEnd",
    ]
    check_room(replay_lines(envelopes))


def test_both_relays_give_the_same_room() -> None:
    """The two relays of one room are interchangeable sources: same ids, same state."""
    node, python = replay_lines(node_envelopes()), replay_lines(python_envelopes())
    assert node.state.leaderboard == python.state.leaderboard
    assert node.state.totals == python.state.totals
    assert node.state.battle == python.state.battle


def test_python_relay_does_not_need_tiktoklive_to_map() -> None:
    """relay.py imports TikTokLive only in main(), so the mapping loads anywhere."""
    relay = load_python_relay()
    assert "TikTokLive" not in relay.__dict__
    assert relay.to_envelope(SimpleNamespace()) is None
