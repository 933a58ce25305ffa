"""Who may connect and what they may do: tokens, grants, origins, the handshake verdict.

Pure: the WebSocket server hands in what a handshake says (:class:`Handshake`) and
the counts it keeps, and gets back :class:`Admit` or :class:`Refuse`; a dashboard
hands in a ``hello`` token and gets back a :class:`Grant` or ``None``. No I/O, no
clock, no logging. ``docs/security.md`` is the prose version of these rules.

Tokens are never stored: the configuration holds the SHA-256 of each token, and a
presented token is hashed and compared with every configured digest using
:func:`hmac.compare_digest`, without stopping at the first match, so the time taken
does not depend on how much of a digest matched nor on which entry it was.

Modes (:class:`AccessPolicy`):

*open*
    no tokens configured and the listener is on loopback: every connection is an
    ``operator`` of every room (a local demo). Browsers must come from a loopback
    origin or one in ``allowed_origins``; clients without ``Origin`` (scripts) are
    let in.
*token*
    tokens configured: a connection is powerless until it presents a valid token
    (``Authorization: Bearer``, ``?token=``, or ``hello``). A browser's ``Origin``
    must be in ``allowed_origins``.
*closed*
    no tokens and a non-loopback listener. Configuration validation refuses to
    start like this; it can only arise when a reload removes every token while the
    listener (which a reload cannot move) stays public. Every handshake is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Literal, TypeAlias
from urllib.parse import parse_qsl, urlsplit

import attrs

__all__ = [
    "OPEN_GRANT",
    "ROLES",
    "AccessPolicy",
    "Admit",
    "Grant",
    "Handshake",
    "Refuse",
    "Role",
    "TokenEntry",
    "admit",
    "authenticate",
    "hash_token",
    "is_loopback_host",
    "is_loopback_origin",
    "normalize_origin",
]

Role: TypeAlias = Literal["viewer", "operator"]
ROLES: tuple[Role, ...] = ("viewer", "operator")
"""``viewer`` reads the rooms in its scope; ``operator`` also sends commands to them."""

MAX_TOKEN_CHARS = 512
"""Longer presented tokens are refused without hashing (the protocol's own limit)."""


@attrs.frozen
class Grant:
    """What an authenticated connection may do."""

    role: Role
    """``viewer`` (read) or ``operator`` (read and commands)."""
    rooms: frozenset[str] | None
    """The rooms it may read (and, as an operator, command); ``None``: every room."""
    name: str
    """The token's name from the configuration (``"open"`` in open mode), for logs."""

    def can_read(self, room: str) -> bool:
        """Whether this grant may subscribe to ``room``."""
        return self.rooms is None or room in self.rooms

    def can_command(self, room: str) -> bool:
        """Whether this grant may send commands to ``room``."""
        return self.role == "operator" and self.can_read(room)

    def visible(self, rooms: Iterable[str]) -> list[str]:
        """Those of ``rooms`` this grant may read, sorted (what ``welcome`` lists)."""
        return sorted(room for room in rooms if self.can_read(room))


OPEN_GRANT = Grant(role="operator", rooms=None, name="open")
"""Every connection's grant in open mode (no tokens, loopback listener)."""


@attrs.frozen
class TokenEntry:
    """One configured token, as its SHA-256 digest."""

    name: str
    digest: bytes
    """``sha256(token.encode()).digest()``: 32 bytes."""
    role: Role
    rooms: frozenset[str] | None

    def grant(self) -> Grant:
        return Grant(role=self.role, rooms=self.rooms, name=self.name)


def hash_token(token: str) -> str:
    """The hex SHA-256 of ``token`` (UTF-8): what the configuration stores."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def authenticate(token: str, entries: Sequence[TokenEntry]) -> Grant | None:
    """The grant of the entry whose digest matches ``token``, or ``None``.

    Compares against every entry in constant time per entry and does not stop at
    a match. Tokens longer than :data:`MAX_TOKEN_CHARS` match nothing.
    """
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
    found: TokenEntry | None = None
    for entry in entries:
        if hmac.compare_digest(digest, entry.digest) and found is None:
            found = entry
    return found.grant() if found is not None else None


# --------------------------------------------------------------------------- hosts


def is_loopback_host(host: str) -> bool:
    """Whether a listen host or origin host is loopback: ``localhost``, 127/8, ``::1``.

    Other names are not resolved: they count as non-loopback. ``0.0.0.0`` and ``::``
    (every interface) are not loopback.
    """
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` lower-cased, default port dropped; ``None`` if malformed.

    ``"null"`` (sandboxed frames, ``file:`` pages) stays ``"null"``. An origin has no
    path, query, fragment or user info.
    """
    text = origin.strip().lower()
    if text == "null":
        return text
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        return None
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def is_loopback_origin(origin: str) -> bool:
    """Whether ``origin`` is an ``http(s)`` page served from a loopback host."""
    normalized = normalize_origin(origin)
    if normalized is None or normalized == "null":
        return False
    host = urlsplit(normalized).hostname
    return host is not None and is_loopback_host(host)


# --------------------------------------------------------------------------- policy


@attrs.frozen
class AccessPolicy:
    """The access rules of one listener: its tokens, origins and whether it is loopback."""

    tokens: tuple[TokenEntry, ...] = ()
    allowed_origins: frozenset[str] = frozenset()
    """Normalized origins (see :func:`normalize_origin`)."""
    loopback: bool = True
    """The listener is bound to a loopback address."""

    @property
    def mode(self) -> Literal["open", "token", "closed"]:
        if self.tokens:
            return "token"
        return "open" if self.loopback else "closed"

    def origin_allowed(self, origin: str | None) -> bool:
        """Whether a handshake with this ``Origin`` header (or none) may proceed.

        A missing ``Origin`` means a non-browser client: let through here; in token
        mode it must still authenticate like everyone else. In open mode, pages from
        a loopback origin are allowed as well as the listed ones.
        """
        if origin is None:
            return True
        normalized = normalize_origin(origin)
        if normalized is not None and normalized in self.allowed_origins:
            return True
        return self.mode == "open" and is_loopback_origin(origin)


@attrs.frozen
class Handshake:
    """What the server reads from one WebSocket opening handshake."""

    target: str
    """The request target: path and query (``/ws?token=...``)."""
    origin: str | None = None
    """The ``Origin`` header, if any."""
    authorization: str | None = None
    """The ``Authorization`` header, if any."""


@attrs.frozen
class Admit:
    """Accept the handshake."""

    grant: Grant | None
    """The connection's grant; ``None``: it must authenticate with ``hello`` first."""


@attrs.frozen
class Refuse:
    """Reject the handshake with an HTTP status."""

    status: int
    reason: str
    """Stable, metric-label safe: ``not_found``, ``too_many_connections``,
    ``too_many_from_address``, ``origin_not_allowed``, ``unauthorized``, ``no_tokens``."""
    message: str
    """Sent as the response body; says what to do."""


REFUSAL_REASONS = (
    "not_found",
    "too_many_connections",
    "too_many_from_address",
    "origin_not_allowed",
    "unauthorized",
    "no_tokens",
)
"""Every :attr:`Refuse.reason` :func:`admit` can return."""


def presented_token(hs: Handshake) -> tuple[str | None, str | None]:
    """The token a handshake carries (``Authorization: Bearer`` wins over ``?token=``)
    and, if the header is unusable, why."""
    if hs.authorization is not None:
        scheme, _, value = hs.authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None, "Authorization must be 'Bearer <token>'"
        return value.strip(), None
    query = urlsplit(hs.target).query
    if query:
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == "token":
                return value, None
    return None, None


def admit(
    policy: AccessPolicy,
    hs: Handshake,
    *,
    connections: int,
    max_connections: int,
    from_address: int,
    max_per_address: int,
) -> Admit | Refuse:
    """The verdict on one handshake, checked in this order: path, capacity, the
    client address's share, ``Origin``, token.

    ``connections`` counts open dashboards; ``from_address`` counts the other TCP
    connections (open or still handshaking) from the same client address.
    """
    if urlsplit(hs.target).path != "/ws":
        return Refuse(404, "not_found", "meksd: dashboards connect to /ws")
    if connections >= max_connections:
        return Refuse(503, "too_many_connections", "meksd: too many connections")
    if from_address >= max_per_address:
        return Refuse(
            429,
            "too_many_from_address",
            f"meksd: at most {max_per_address} connections per client address",
        )
    if not policy.origin_allowed(hs.origin):
        return Refuse(403, "origin_not_allowed", "meksd: this Origin is not allowed")
    mode = policy.mode
    if mode == "closed":
        return Refuse(
            503, "no_tokens", "meksd: no dashboard tokens configured on a public listener"
        )
    if mode == "open":  # a token, if any, is ignored: there is nothing to check it against
        return Admit(OPEN_GRANT)
    token, problem = presented_token(hs)
    if problem is not None:
        return Refuse(401, "unauthorized", f"meksd: {problem}")
    if token is None:
        return Admit(None)
    grant = authenticate(token, policy.tokens)
    if grant is None:
        return Refuse(401, "unauthorized", "meksd: invalid token")
    return Admit(grant)
