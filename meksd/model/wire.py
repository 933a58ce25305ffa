"""Messages dashboards send (protocol v1, see ``docs/protocol.md``)."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class Hello:
    """``{"type": "hello", "token"?: str}``: identifies the client."""

    token: str | None = None


@attrs.frozen
class Since:
    """The last delta a client applied: resume after it if the ring still has it."""

    epoch: str
    seq: int


@attrs.frozen
class Subscribe:
    """``{"type": "subscribe", "room": str, "since"?: {"epoch": str, "seq": int}}``."""

    room: str
    since: Since | None = None


@attrs.frozen
class Unsubscribe:
    """``{"type": "unsubscribe", "room": str}``."""

    room: str


@attrs.frozen
class Ping:
    """``{"type": "ping", "id"?: str|int}``: answered with ``pong`` carrying the same id."""

    id: str | int | None = None


@attrs.frozen
class Command:
    """``{"type": "command", "id", "room", "action", "args"?}``: an operator action."""

    id: str
    room: str
    action: str
    args: dict[str, Any] = attrs.field(factory=dict)


ClientMessage = Hello | Subscribe | Unsubscribe | Ping | Command


@attrs.frozen
class ProtocolError:
    """A client message meksd cannot take; sent back as ``error {code, message}``."""

    code: str
    message: str
