"""The shell of access control: the live policy the server and its dashboards share.

The rules are pure (:mod:`meksd.core.access`, :mod:`meksd.core.limits`); this module
holds what changes while the process runs: the policy in force (a reload replaces
it, and connections whose token it no longer carries are closed) and how to read a
WebSocket handshake into a :class:`~meksd.core.access.Handshake`.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from trio_websocket import WebSocketRequest

from meksd.access_config import AuthConfig, access_policy
from meksd.core.access import OPEN_GRANT, REFUSAL_REASONS, AccessPolicy, Grant, Handshake

__all__ = ["LIMIT_NAMES", "REFUSED_NAMES", "Access", "grant_survives", "handshake_of"]

REFUSED_NAMES = (*REFUSAL_REASONS, "handshake_timeout", "bad_handshake", "abandoned")
"""Why connections did not become dashboards (``meksd_dashboard_refused_total``):
:func:`admit`'s reasons, a handshake not completed within ``handshake_timeout_s``,
one the WebSocket library could not parse (it answered 400), and a client that
closed or reset the connection before its handshake was complete."""

LIMIT_NAMES = (
    "message_too_big",
    "protocol_error",
    "rate_limited",
    "rate_abuse",
    "unauthorized",
    "bad_token",
    "auth_timeout",
    "revoked",
    "forbidden",
    "too_many_subscriptions",
    "room_full",
    "send_timeout",
    "backlog",
)
"""Limits an open dashboard connection can hit (``meksd_dashboard_limited_total``)."""


@attrs.define
class Access:
    """What every dashboard of one server consults; the server replaces ``policy``."""

    policy: AccessPolicy
    auth_timeout_s: float
    room_load: Callable[[str], int]
    """Subscriptions to a room now, over every connection."""

    @classmethod
    def from_config(
        cls, auth: AuthConfig, *, listen_host: str, room_load: Callable[[str], int]
    ) -> Access:
        return cls(access_policy(auth, listen_host=listen_host), auth.auth_timeout_s, room_load)


def grant_survives(grant: Grant, old: AccessPolicy, new: AccessPolicy) -> bool:
    """Whether a connection authenticated under ``old`` keeps its grant under ``new``.

    An open-mode grant survives while the listener stays open; a token's grant
    survives if ``new`` has the same token (name, digest, role and rooms).
    """
    if grant == OPEN_GRANT and old.mode == "open":
        return new.mode == "open"
    before = next((e for e in old.tokens if e.name == grant.name), None)
    after = next((e for e in new.tokens if e.name == grant.name), None)
    return before is not None and before == after


def handshake_of(request: WebSocketRequest) -> Handshake:
    """The parts of a WebSocket opening handshake access control looks at.

    Header bytes are read as Latin-1: a value that is not ASCII is kept (and then
    matches no allowed origin and no token), never dropped.
    """
    origin: str | None = None
    authorization: str | None = None
    for name, value in request.headers:
        if name == b"origin" and origin is None:
            origin = value.decode("latin-1")
        elif name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
    return Handshake(target=request.path, origin=origin, authorization=authorization)
