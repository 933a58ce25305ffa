"""Operator commands, the shell side: from a dashboard's ``command`` to its ``ack``.

::

    dashboard reader ──CommandItem──▶ room inbox ──▶ actor step: apply_command, swap,
          ▲                                           resolve the ReplySlot
          └────────────── ack {id, ok, error?} ◀──────────┘

A command goes through the room's actor like an event, so it is applied in the
actor's synchronous step or not at all. Its :class:`ReplySlot` is how the answer
comes back, and how a command that has not been applied yet is called off:

* the actor, in its step, skips an item whose slot was withdrawn, and resolves the
  slot of every item it applied (or refused) right after swapping the state in;
* the dashboard's task, when it stops waiting (it timed out, or it was cancelled
  because its client left or the server is stopping), withdraws the slot.

Both are synchronous and run on the one trio thread, so exactly one of them wins:
a withdrawn command is never applied, a resolved one was. The ack then says which
(``timeout``: not applied; anything resolved: what the room decided). A client that
did not get an ack (it disconnected) retries with the same id after reconnecting
and gets the room's remembered answer, or the command is applied then, once.

Refusals decided here, before the actor, are not remembered by the room:
``forbidden`` (a viewer), ``unknown_room``, ``unknown_action``, ``bad_args``,
``timeout``, ``unavailable``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio
from loguru import logger

from meksd.core.commands import parse_command
from meksd.model.commands import CommandResult, FlagChat, OperatorCommand, SendReply
from meksd.model.wire import Command

if TYPE_CHECKING:
    from meksd.runtime.actor import InboxItem

__all__ = [
    "COMMAND_TIMEOUT_S",
    "CommandItem",
    "CommandRouter",
    "ReplySlot",
    "ack_message",
    "answer_command",
]

COMMAND_TIMEOUT_S = 5.0
"""How long a dashboard waits for the room's actor before the command is called off."""

TIMEOUT = CommandResult(
    False, "timeout", "not applied: the room did not take the command in time; retry"
)
UNAVAILABLE = CommandResult(False, "unavailable", "not applied: the room is not running; retry")


class ReplySlot:
    """One command's answer: pending, then resolved by the actor or withdrawn.

    :meth:`resolve` and :meth:`withdraw` are synchronous and never checkpoint;
    whichever comes first wins and the other returns False.
    """

    def __init__(self) -> None:
        self.result: CommandResult | None = None
        """The room's answer, once resolved."""
        self.withdrawn = False
        """True once the waiter gave up before the actor took the command."""
        self._done = trio.Event()

    @property
    def open(self) -> bool:
        """Neither resolved nor withdrawn: the actor may still apply it."""
        return self.result is None and not self.withdrawn

    def resolve(self, result: CommandResult) -> bool:
        """The actor's answer (the command was applied or refused by the room)."""
        if not self.open:
            return False
        self.result = result
        self._done.set()
        return True

    def withdraw(self) -> bool:
        """Call the command off, if the actor has not taken it yet."""
        if not self.open:
            return False
        self.withdrawn = True
        return True

    async def wait(self) -> CommandResult:
        """Wait until resolved. Cancelling this does not withdraw (the caller does)."""
        await self._done.wait()
        assert self.result is not None
        return self.result


@attrs.frozen(eq=False)
class CommandItem:
    """An operator command in a room's inbox."""

    command: OperatorCommand
    reply: ReplySlot
    submitted_at: float
    """``trio.current_time()`` when the dashboard submitted it."""


class CommandRouter:
    """Hands commands to rooms' actors and waits for their answers.

    ``inbox_of(room_id)`` gives the room's inbox (None: no such room running).
    """

    def __init__(
        self,
        inbox_of: Callable[[str], trio.MemorySendChannel[InboxItem] | None],
        *,
        timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> None:
        self.inbox_of = inbox_of
        self.timeout_s = timeout_s

    async def submit(self, room_id: str, command: OperatorCommand) -> CommandResult:
        """Apply ``command`` in the room: its answer, or ``timeout``/``unavailable``
        when it was not applied. Cancel-safe: if this is cancelled, the command was
        applied once or will never be."""
        inbox = self.inbox_of(room_id)
        if inbox is None:
            return UNAVAILABLE
        slot = ReplySlot()
        item = CommandItem(command, slot, trio.current_time())
        try:
            with trio.move_on_after(self.timeout_s):
                await inbox.send(item)
                await slot.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return UNAVAILABLE
        finally:
            slot.withdraw()  # a no-op if the actor answered
        return slot.result if slot.result is not None else TIMEOUT


def ack_message(cmd_id: str, result: CommandResult) -> dict[str, Any]:
    """The ``ack`` for a command: ``{type, id, ok, error?, message?, epoch?, duplicate?}``."""
    ack: dict[str, Any] = {"type": "ack", "id": cmd_id, "ok": result.ok}
    if result.error is not None:
        ack["error"] = result.error
    if result.message is not None:
        ack["message"] = result.message
    if result.epoch is not None:
        ack["epoch"] = result.epoch
    if result.duplicate:
        ack["duplicate"] = True
    if result.reply_id is not None:
        ack["reply_id"] = result.reply_id
    return ack


async def answer_command(
    msg: Command,
    *,
    role: str,
    known_room: bool,
    router: CommandRouter | None,
    conn_id: str,
    operator: str | None = None,
) -> dict[str, Any]:
    """Decide one dashboard ``command``; the ``ack`` to send. Every command is logged
    with its outcome (``event=command``): the operators' audit trail."""
    parsed: OperatorCommand | CommandResult | None = None
    if role != "operator":
        result = CommandResult(False, "forbidden", "operator role required")
    elif not known_room:
        result = CommandResult(False, "unknown_room", f"no room {msg.room!r}")
    else:
        parsed = parse_command(msg.id, msg.action, msg.args)
        if isinstance(parsed, SendReply):
            parsed = attrs.evolve(parsed, origin=conn_id, operator=operator or conn_id)
        if isinstance(parsed, CommandResult):
            result = parsed
        elif router is None:
            result = UNAVAILABLE
        else:
            result = await router.submit(msg.room, parsed)
    logger.info(
        "operator command {action}: {outcome}",
        action=msg.action[:40],
        outcome="ok" if result.ok else result.error,
        room=msg.room,
        conn=conn_id,
        role=role,
        command_id=msg.id,
        msg_id=parsed.msg_id if isinstance(parsed, FlagChat) else None,
        duplicate=result.duplicate,
        epoch=result.epoch,
        event="command",
    )
    return ack_message(msg.id, result)
