"""Operator commands and their results: data only.

A dashboard sends ``command {id, room, action, args}``; the shell parses it into one
of the values below (``meksd.core.commands.parse_command``) and hands it to the
room's actor, which applies it with ``meksd.core.commands.apply_command`` and
answers with a :class:`CommandResult`. The room remembers the results of recent
command ids (:class:`CommandMemory`), so a retried id is answered again, not
applied twice.
"""

from __future__ import annotations

from typing import Literal

import attrs
import immutables

ChatAction = Literal["chat.pin", "chat.unpin", "chat.hide", "chat.unhide"]
CHAT_ACTIONS: tuple[ChatAction, ...] = ("chat.pin", "chat.unpin", "chat.hide", "chat.unhide")
ACTIONS: tuple[str, ...] = (*CHAT_ACTIONS, "session.reset", "chat.reply")
"""Every action this release knows."""


@attrs.frozen
class FlagChat:
    """``chat.pin`` / ``chat.unpin`` / ``chat.hide`` / ``chat.unhide`` of one message."""

    id: str
    """The client's command id: the idempotency key (per room)."""
    action: ChatAction
    msg_id: str
    """The chat message, by its msgId (it must still be in the room's chat)."""


@attrs.frozen
class ResetSession:
    """``session.reset``: end the room's session and start a new epoch."""

    id: str
    action: Literal["session.reset"] = "session.reset"


@attrs.frozen
class SendReply:
    """``chat.reply``: post ``text`` into the upstream live chat (``docs/replies.md``)."""

    id: str
    text: str
    origin: str = ""
    """The dashboard connection id (set by the shell): where ``reply_result`` goes."""
    operator: str = ""
    """Who sent it, for the per-operator rate limit (set by the shell)."""
    action: Literal["chat.reply"] = "chat.reply"


OperatorCommand = FlagChat | ResetSession | SendReply


@attrs.frozen
class CommandResult:
    """What an ``ack`` says about one command.

    ``ok`` is True when the command was applied (now, or earlier under the same id);
    when False, the command changed nothing and ``error`` is a short code (see
    ``docs/protocol.md``), ``message`` a readable explanation.
    """

    ok: bool
    error: str | None = None
    message: str | None = None
    epoch: str | None = None
    """For ``session.reset``: the epoch the command started."""
    duplicate: bool = False
    """True when this id was seen before: this is the remembered answer, replayed."""
    reply_id: str | None = None
    """For ``chat.reply``: the id the server gave the reply."""


@attrs.frozen
class Remembered:
    """A command id's answer, and what the command was (to spot a reused id)."""

    fingerprint: str
    result: CommandResult


@attrs.frozen
class CommandMemory:
    """Bounded memory of recent command ids: two generations of ``capacity // 2``.

    The same scheme as the msgId memory (:class:`meksd.model.state.Dedup`): at least
    the last ``capacity // 2`` and at most the last ``capacity`` ids are remembered.
    """

    capacity: int = 1024
    current: immutables.Map[str, Remembered] = attrs.field(factory=immutables.Map)
    previous: immutables.Map[str, Remembered] = attrs.field(factory=immutables.Map)
