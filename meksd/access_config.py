"""The ``[auth]`` table of the configuration: dashboard tokens and allowed origins.

Part of the configuration tree of :mod:`meksd.config` (which structures it with the
same strict hooks and calls :func:`check_auth` from its validation pass), kept in its
own module with the checks that only concern access control. The rules these
settings feed are in :mod:`meksd.core.access`; ``docs/security.md`` explains them.

```toml
[auth]
allowed_origins = ["https://ops.example.com"]
auth_timeout_s = 10.0

[[auth.tokens]]
name = "alice-ops"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
role = "operator"
rooms = ["alice", "bob"]
```
"""

from __future__ import annotations

import re
from collections.abc import Collection

import attrs

from meksd.core.access import ROLES, AccessPolicy, TokenEntry, is_loopback_host, normalize_origin

__all__ = ["AuthConfig", "TokenConfig", "access_policy", "check_auth"]

TOKEN_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


@attrs.frozen
class TokenConfig:
    """One ``[[auth.tokens]]`` table: a dashboard token, stored as its SHA-256."""

    name: str
    """Names the token in logs (never the token itself); ``[A-Za-z0-9_.-]{1,64}``, unique."""
    sha256: str
    """Hex SHA-256 of the token's UTF-8 bytes (``meksd token new`` prints it)."""
    role: str = "viewer"
    """``viewer`` (read) or ``operator`` (read and commands)."""
    rooms: tuple[str, ...] | None = None
    """Room ids the token may use; left out: every room, including rooms added later."""


@attrs.frozen
class AuthConfig:
    """``[auth]``: who may connect to the dashboard listener."""

    tokens: tuple[TokenConfig, ...] = ()
    """With none, the listener runs open (everyone is an operator): only allowed on
    loopback."""
    allowed_origins: tuple[str, ...] = ()
    """Browser origins (``https://host[:port]``) whose pages may connect."""
    auth_timeout_s: float = 10.0
    """A connection that has not presented a valid token this long after it opened
    is closed (1008)."""


def check_auth(
    auth: AuthConfig, *, ws_host: str | None, room_ids: Collection[str]
) -> tuple[AuthConfig, list[str]]:
    """Validate ``[auth]`` against the rest of the configuration.

    ``ws_host`` is the dashboard listener's host (``None`` if it did not parse;
    then its own error is reported elsewhere). Returns the normalized table (hex
    digests lower-cased, origins normalized) and the problems, each
    ``"<what> @ <path>"``.
    """
    problems: list[str] = []
    if not auth.auth_timeout_s > 0:
        problems.append("must be > 0 @ $.auth.auth_timeout_s")
    names: dict[str, int] = {}
    digests: dict[str, int] = {}
    tokens: list[TokenConfig] = []
    for i, token in enumerate(auth.tokens):
        path = f"$.auth.tokens[{i}]"
        if not TOKEN_NAME_PATTERN.fullmatch(token.name):
            problems.append(f"must match [A-Za-z0-9_.-]{{1,64}} @ {path}.name")
        elif token.name in names:
            first = f"$.auth.tokens[{names[token.name]}]"
            problems.append(f"duplicate token name {token.name!r} (first at {first}) @ {path}.name")
        else:
            names[token.name] = i
        digest = token.sha256.lower()
        if not _SHA256_HEX.fullmatch(token.sha256):
            problems.append(
                "expected 64 hex digits, the SHA-256 of the token "
                f"(`meksd token new` prints it) @ {path}.sha256"
            )
        elif digest in digests:
            first = f"$.auth.tokens[{digests[digest]}]"
            problems.append(f"the same token twice (first at {first}) @ {path}.sha256")
        else:
            digests[digest] = i
        if token.role not in ROLES:
            problems.append(f"must be one of {', '.join(ROLES)} @ {path}.role")
        if token.rooms is not None:
            if not token.rooms:
                problems.append(
                    f"must not be empty (leave rooms out for every room) @ {path}.rooms"
                )
            for j, room in enumerate(token.rooms):
                if room not in room_ids:
                    problems.append(f"unknown room {room!r} @ {path}.rooms[{j}]")
        tokens.append(attrs.evolve(token, sha256=digest))
    origins: list[str] = []
    for i, origin in enumerate(auth.allowed_origins):
        normalized = normalize_origin(origin)
        if normalized is None:
            problems.append(
                "expected an origin such as https://ops.example.com or http://localhost:3000 "
                f"(scheme, host, optional port; no path), got {origin!r} "
                f"@ $.auth.allowed_origins[{i}]"
            )
        else:
            origins.append(normalized)
    if ws_host is not None and not auth.tokens and not is_loopback_host(ws_host):
        problems.append(
            f"dashboards listen on {ws_host!r}, which is not a loopback address, and no "
            "token is configured: anyone who can reach it could read every room and send "
            "operator commands. Add [[auth.tokens]] (create one with `meksd token new`) "
            "or listen on 127.0.0.1 @ $.auth.tokens"
        )
    normalized_auth = attrs.evolve(auth, tokens=tuple(tokens), allowed_origins=tuple(origins))
    return normalized_auth, problems


def access_policy(auth: AuthConfig, *, listen_host: str) -> AccessPolicy:
    """The pure access rules of a listener bound to ``listen_host`` (a validated config)."""
    entries = tuple(
        TokenEntry(
            name=token.name,
            digest=bytes.fromhex(token.sha256),
            role="operator" if token.role == "operator" else "viewer",
            rooms=frozenset(token.rooms) if token.rooms is not None else None,
        )
        for token in auth.tokens
    )
    return AccessPolicy(
        tokens=entries,
        allowed_origins=frozenset(auth.allowed_origins),
        loopback=is_loopback_host(listen_host),
    )
