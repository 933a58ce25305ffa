"""Commands through the room actor: applied in its step, answered, cancel-safe, resets."""

from __future__ import annotations

from typing import Any

import orjson
import trio
import trio.testing

from meksd.core.commands import recall
from meksd.core.reduce import new_room, reduce
from meksd.model.commands import CommandResult, FlagChat, OperatorCommand, ResetSession
from meksd.model.events import ChatMessage, User
from meksd.model.state import RoomConfig, RoomState
from meksd.runtime.actor import InboxItem, Owned, Probe, RoomActor
from meksd.runtime.commands import TIMEOUT, CommandItem, CommandRouter, ReplySlot
from meksd.runtime.hub import RoomFeed
from meksd.runtime.stats import RoomCounters

ANN = User("1", "ann", "Ann")


def chat(msg_id: str) -> ChatMessage:
    return ChatMessage(msg_id, ANN, "hi", 0.0, 0)


def initial_state() -> RoomState:
    state = new_room("r", "e1", RoomConfig(streak_timeout_s=1e6))
    state, _ = reduce(state, [chat("c0"), chat("c1")])
    return state


class Rig:
    """A feed, an inbox, an actor (not started) and a router onto the inbox."""

    def __init__(self, *, capacity: int = 16, timeout_s: float = 10.0) -> None:
        self.initial = initial_state()
        self.feed = RoomFeed(self.initial, 0, ring_size=100)
        self.send, self.receive = trio.open_memory_channel[InboxItem](capacity)
        self.ended: list[RoomState] = []
        epochs = iter(f"e{i}" for i in range(2, 100))
        self.actor = RoomActor(
            Owned(self.initial),
            self.feed,
            self.receive,
            tick_s=0.016,
            counters=RoomCounters(),
            new_epoch=lambda: next(epochs),
            on_session_end=self.ended.append,
        )
        self.router = CommandRouter(lambda room: self.send, timeout_s=timeout_s)

    async def settle(self) -> None:
        probe = Probe()
        await self.send.send(probe)
        await probe.done.wait()


def published(feed: RoomFeed) -> list[dict[str, Any]]:
    out = []
    for seq in range(feed.first_seq, feed.seq + 1):
        decoded = orjson.loads(feed.deltas_after(seq - 1, limit=1)[1])
        out.extend(decoded if isinstance(decoded, list) else [decoded])
    return out


async def test_command_is_applied_answered_and_published_in_the_next_delta() -> None:
    """The actor applies a pin in its step, resolves the reply, and publishes the chat update."""
    rig = Rig()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rig.actor.run)
            result = await rig.router.submit("r", FlagChat("k1", "chat.pin", "c1"))
            await rig.settle()
            nursery.cancel_scope.cancel()
    assert result == CommandResult(True)
    assert [c.pinned for c in rig.actor.owned.state.chat] == [False, True]
    updates = [d["chat_updates"] for d in published(rig.feed) if "chat_updates" in d]
    assert updates == [[{"msg_id": "c1", "pinned": True, "hidden": False}]]


async def test_commands_apply_in_inbox_order_with_events() -> None:
    """A pin queued right after a chat event finds that message in the same batch."""
    rig = Rig()
    slot = ReplySlot()
    rig.send.send_nowait(chat("new"))
    rig.send.send_nowait(CommandItem(FlagChat("k", "chat.pin", "new"), slot, 0.0))
    rig.send.send_nowait(chat("after"))
    rig.send.close()
    with trio.fail_after(5):
        await rig.actor.run()
    assert slot.result == CommandResult(True)
    assert [(c.msg_id, c.pinned) for c in rig.actor.owned.state.chat][-2:] == [
        ("new", True),
        ("after", False),
    ]


async def test_withdrawn_command_is_skipped_by_the_actor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A command whose dashboard stopped waiting (timeout) is never applied, even once the actor gets to it."""
    rig = Rig(timeout_s=1.0)
    with trio.fail_after(30):
        result = await rig.router.submit("r", FlagChat("k1", "chat.pin", "c0"))
        assert result == TIMEOUT
        assert rig.send.statistics().current_buffer_used == 1, "it is still queued"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rig.actor.run)
            await rig.settle()
            nursery.cancel_scope.cancel()
    state = rig.actor.owned.state
    assert state == rig.initial
    assert recall(state.commands, "k1") is None, "a retry of k1 will apply it then"


class CancelAtStep(trio.abc.Instrument):
    """Cancels ``scope`` just before the k-th task step of the run (any task), so the
    cancellation finds the submitter parked in ``send``, parked in ``wait``, or
    running."""

    def __init__(self, k: int, scope: trio.CancelScope) -> None:
        self.k = k
        self.scope = scope
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        if self.steps == self.k:
            self.scope.cancel()


async def submit_cancelled_at(k: int, command: OperatorCommand, capacity: int) -> tuple[bool, Rig]:
    """Submit ``command`` to a room whose actor starts late; cancel the submitter at
    the k-th step. With ``capacity`` 1 the inbox is full (the submit waits in
    ``send``); with 2 the command is queued and the submit waits for the answer.

    Checks: the command was applied iff the room remembers it; if the submitter got
    an answer, the answer says whether it was applied. Returns whether the cancel
    landed, and the rig.
    """
    rig = Rig(capacity=capacity)
    items: list[CommandItem] = []

    class RecordingInbox:
        async def send(self, item: CommandItem) -> None:
            items.append(item)
            await rig.send.send(item)

    rig.router.inbox_of = lambda room: RecordingInbox()  # type: ignore[assignment,return-value]
    scope = trio.CancelScope()
    instrument = CancelAtStep(k, scope)
    answers: list[CommandResult] = []
    trio.lowlevel.add_instrument(instrument)
    try:
        async with trio.open_nursery() as nursery:

            async def submitter() -> None:
                with scope:
                    answers.append(await rig.router.submit("r", command))

            rig.send.send_nowait(chat("busy"))
            nursery.start_soon(submitter)
            await trio.sleep(0.01)
            nursery.start_soon(rig.actor.run)
            await trio.sleep(0.05)
            await rig.settle()  # everything queued has been handled
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(instrument)
    state = rig.actor.owned.state
    applied = recall(state.commands, command.id) is not None
    if items:
        slot = items[0].reply
        assert not slot.open, f"k={k}: every submit ends resolved or withdrawn"
        assert slot.withdrawn == (not applied), f"k={k}: withdrawn means never applied"
    if answers:
        assert answers[0].ok == applied, f"k={k}: the ack must say whether it was applied"
        assert answers[0] == TIMEOUT or applied
    if isinstance(command, ResetSession):
        assert len(rig.ended) == int(applied), f"k={k}: one reset or none"
        assert rig.feed.epoch == ("e2" if applied else "e1")
        assert state.epoch == rig.feed.epoch
    else:
        pinned = [c.msg_id for c in state.chat if c.pinned]
        assert pinned == (["c0"] if applied else []), f"k={k}"
    return scope.cancel_called, rig


async def test_cancelling_a_submit_at_every_step_applies_once_or_not_at_all(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Cancelled at any of its steps, a submitted command is applied once (and answered) or never."""
    commands: list[OperatorCommand] = [FlagChat("k1", "chat.pin", "c0"), ResetSession("r1")]
    for command in commands:
        for capacity in (1, 2):
            outcomes = set()
            k = 1
            while True:
                cancelled, rig = await submit_cancelled_at(k, command, capacity)
                if not cancelled:
                    break
                outcomes.add(recall(rig.actor.owned.state.commands, command.id) is not None)
                k += 1
                assert k < 50
            assert outcomes == {True, False}, "both sides of the race were exercised"


async def test_reset_in_the_actor_restarts_the_feed_and_hands_over_the_old_session() -> None:
    """session.reset: the feed starts the new epoch at seq 0 with the whole new state; the old state goes to the hook."""
    rig = Rig()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rig.actor.run)
            await rig.send.send(chat("c2"))
            await rig.settle()
            old_seq = rig.feed.seq
            assert old_seq >= 1
            rig.send.send_nowait(chat("before"))
            slot = ReplySlot()
            rig.send.send_nowait(CommandItem(ResetSession("r1"), slot, 0.0))
            rig.send.send_nowait(chat("after"))
            await rig.settle()
            nursery.cancel_scope.cancel()
    assert slot.result == CommandResult(True, epoch="e2")
    assert [s.epoch for s in rig.ended] == ["e1"]
    assert [c.msg_id for c in rig.ended[0].chat] == ["c0", "c1", "c2", "before"]
    assert (rig.feed.epoch, rig.feed.seq) == ("e2", 0)
    assert [c.msg_id for c in rig.feed.state.chat] == ["after"], "the snapshot has it all"
    assert rig.actor.owned.pending.empty
