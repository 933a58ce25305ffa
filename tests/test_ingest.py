"""The room's ingest: records normalized in the source's task, events into the inbox,
backpressure when it is full, each record normalized (and counted) once."""

from __future__ import annotations

import orjson
import pytest
import trio
import trio.testing

from meksd.model.events import ChatMessage
from meksd.model.raw import RawRecord
from meksd.runtime.actor import InboxItem
from meksd.runtime.room import Ingest
from tests.fakefeeds import room_from_toml
from tests.support import drain_nowait as drain

ROOM = """
[[rooms]]
id = "r"

[[rooms.sources]]
kind = "websocket"
url = "ws://127.0.0.1:9/feed"
"""
"""A room that is never started: only its normalizing and counters are used."""


def chats(*ids: str) -> RawRecord:
    """One record holding an array of chat envelopes (one event each)."""
    doc = [{"event": "chat", "data": {"msgId": i, "userId": "u", "comment": i}} for i in ids]
    return RawRecord(orjson.dumps(doc), 1.0, 0, "test")


def msg_ids(items: list[InboxItem]) -> list[str]:
    return [item.msg_id for item in items if isinstance(item, ChatMessage)]


async def test_a_record_that_fills_the_inbox_is_finished_by_send_not_normalized_twice() -> None:
    """``send_nowait`` puts what fits and raises WouldBlock; the ``send`` of the same
    record puts the rest once there is room: every event once, in order, and the
    record and its rejection counted once."""
    room = room_from_toml(ROOM)
    send, receive = trio.open_memory_channel[InboxItem](2)
    ingest = Ingest(room, send)
    record = RawRecord(
        orjson.dumps(
            [
                {"event": "chat", "data": {"msgId": "a", "userId": "u", "comment": "x"}},
                {"event": "gift", "data": {}},  # rejected: counted once
                {"event": "chat", "data": {"msgId": "b", "userId": "u", "comment": "x"}},
                {"event": "chat", "data": {"msgId": "c", "userId": "u", "comment": "x"}},
            ]
        ),
        1.0,
        0,
        "test",
    )
    with trio.fail_after(5):
        with pytest.raises(trio.WouldBlock):
            ingest.send_nowait(record)
        assert ingest.statistics().current_buffer_used == 2
        got: list[InboxItem] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ingest.send, record)
            await trio.testing.wait_all_tasks_blocked()
            got += drain(receive)
            await trio.testing.wait_all_tasks_blocked()
        got += drain(receive)
    assert msg_ids(got) == ["a", "b", "c"]
    assert room.counters.records == 1
    assert sum(room.counters.rejected.values()) == 1


async def test_send_of_a_new_record_normalizes_it() -> None:
    """A ``send`` that does not follow a refused ``send_nowait`` of that very record
    normalizes it (the leftovers of another record are not taken for it)."""
    room = room_from_toml(ROOM)
    send, receive = trio.open_memory_channel[InboxItem](10)
    ingest = Ingest(room, send)
    with trio.fail_after(5):
        await ingest.send(chats("a", "b"))
        ingest.send_nowait(chats("c"))
        await ingest.send(chats("d"))
    assert msg_ids(drain(receive)) == ["a", "b", "c", "d"]
    assert room.counters.records == 3


async def test_a_cancelled_send_drops_only_the_rest_of_its_record() -> None:
    """Cancelled while waiting for room, ``send`` leaves the events already put and
    drops the rest of that record; the next record goes in whole."""
    room = room_from_toml(ROOM)
    send, receive = trio.open_memory_channel[InboxItem](1)
    ingest = Ingest(room, send)
    with trio.fail_after(5):
        with trio.move_on_after(1) as scope:
            await ingest.send(chats("a", "b", "c"))
        assert scope.cancelled_caught
        assert msg_ids(drain(receive)) == ["a"]
        ingest.send_nowait(chats("d"))
    assert msg_ids(drain(receive)) == ["d"]


async def test_a_record_with_no_event_still_checkpoints() -> None:
    """``send`` of a record that holds nothing (all rejected) is still a checkpoint:
    a source looping on junk cannot starve the other tasks."""
    room = room_from_toml(ROOM)
    send, _receive = trio.open_memory_channel[InboxItem](1)
    ingest = Ingest(room, send)
    junk = RawRecord(b"not json", 1.0, 0, "test")
    with trio.fail_after(5):
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await ingest.send(junk)
    assert room.counters.rejected["not_json"] == 1
