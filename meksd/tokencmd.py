"""``meksd token``: create dashboard tokens and the configuration lines that admit them.

```
meksd token new [--role viewer|operator] [--rooms alice,bob] [--name NAME] [--json]
meksd token hash < token.txt
```

``new`` draws a random token (``meks_`` and 43 URL-safe characters: 256 bits from
:mod:`secrets`), prints it once, and prints the ``[[auth.tokens]]`` table to paste
into the configuration: its SHA-256, never the token. ``hash`` prints the SHA-256 of
a token read from standard input, for tokens made elsewhere. See ``docs/security.md``.
"""

from __future__ import annotations

import argparse
import secrets
import sys

import orjson

from meksd.access_config import TOKEN_NAME_PATTERN
from meksd.config import ROOM_ID_PATTERN
from meksd.core.access import MAX_TOKEN_CHARS, ROLES, hash_token
from meksd.errors import UsageError

__all__ = ["add_arguments", "new_token", "token_table"]

TOKEN_PREFIX = "meks_"
"""Makes leaked tokens easy to find for secret scanners (and for grep)."""


def new_token() -> str:
    """A fresh random token: ``meks_`` and 256 random bits, URL-safe base64."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_table(name: str, digest: str, role: str, rooms: list[str] | None) -> str:
    """The ``[[auth.tokens]]`` TOML lines for one token (``digest``: hex SHA-256)."""
    lines = [
        "[[auth.tokens]]",
        f'name = "{name}"',
        f'sha256 = "{digest}"',
        f'role = "{role}"',
    ]
    if rooms is not None:
        lines.append("rooms = [" + ", ".join(f'"{room}"' for room in rooms) + "]")
    return "\n".join(lines)


def _rooms(text: str) -> list[str]:
    rooms = [room.strip() for room in text.split(",") if room.strip()]
    if not rooms:
        raise argparse.ArgumentTypeError("expected room ids separated by commas, e.g. alice,bob")
    for room in rooms:
        if not ROOM_ID_PATTERN.fullmatch(room):
            raise argparse.ArgumentTypeError(f"room id {room!r} must match [A-Za-z0-9_.-]{{1,64}}")
    return list(dict.fromkeys(rooms))


def _name(text: str) -> str:
    if not TOKEN_NAME_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError("must match [A-Za-z0-9_.-]{1,64}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``new`` and ``hash`` under ``meksd token`` (each sets ``handler``)."""
    actions = parser.add_subparsers(dest="token_command", metavar="ACTION")
    new = actions.add_parser(
        "new",
        help="create a random token; print it and the [[auth.tokens]] lines to paste",
        description="Create a dashboard token. The token is printed once; the configuration "
        "keeps only its SHA-256.",
    )
    new.add_argument(
        "--role",
        choices=ROLES,
        default="viewer",
        help="viewer: read rooms; operator: read and send commands (default: viewer)",
    )
    new.add_argument(
        "--rooms",
        type=_rooms,
        metavar="ID,ID",
        help="the rooms the token may use (default: every room, including rooms added later)",
    )
    new.add_argument("--name", type=_name, help="name shown in logs (default: ROLE-<random>)")
    new.add_argument("--json", action="store_true", help="print one JSON object instead")
    new.set_defaults(handler=_cmd_new)
    hashed = actions.add_parser(
        "hash", help="print the SHA-256 of a token read from standard input"
    )
    hashed.set_defaults(handler=_cmd_hash)
    parser.set_defaults(handler=_cmd_missing)


def _cmd_missing(args: argparse.Namespace) -> int:
    raise UsageError("meksd token needs an action: new or hash")


def _cmd_new(args: argparse.Namespace) -> int:
    token = new_token()
    name = args.name or f"{args.role}-{secrets.token_hex(3)}"
    digest = hash_token(token)
    table = token_table(name, digest, args.role, args.rooms)
    if args.json:
        doc = {"token": token, "name": name, "sha256": digest, "role": args.role}
        doc |= {"rooms": args.rooms, "toml": table}
        print(orjson.dumps(doc).decode())
        return 0
    scope = ", ".join(args.rooms) if args.rooms else "every room"
    print(f"Dashboard token for {args.role} of {scope} (shown once, keep it secret):")
    print()
    print(f"    {token}")
    print()
    print("Dashboards present it as `Authorization: Bearer <token>`, `?token=<token>` or in")
    print('{"type": "hello", "token": "<token>"}. Add these lines to the configuration, then')
    print("reload (SIGHUP) or restart meksd:")
    print()
    print(table)
    return 0


def _cmd_hash(args: argparse.Namespace) -> int:
    token = sys.stdin.read().strip()
    if not token or len(token) > MAX_TOKEN_CHARS or any(c.isspace() for c in token):
        raise UsageError(
            f"expected one token (1..{MAX_TOKEN_CHARS} characters, no spaces) on standard input"
        )
    print(hash_token(token))
    return 0
