"""[auth] and the limit keys: defaults, strict types, $.path messages, the CLI around them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from meksd.access_config import AuthConfig, TokenConfig
from meksd.config import ServerConfig, parse_config
from meksd.core.access import hash_token
from meksd.errors import ConfigError

ROOMS = '[[rooms]]\nid = "alice"\n[[rooms.sources]]\nkind = "simulator"\n'
ROOMS += '[[rooms]]\nid = "bob"\n[[rooms.sources]]\nkind = "simulator"\n'
DIGEST = hash_token("meks_x")


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.messages


def meksd(
    *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meksd", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
        cwd=cwd,
    )


def test_defaults() -> None:
    """Without [auth]: no tokens, no origins, 10 s to authenticate; the limits take their defaults."""
    config = parse_config(ROOMS)
    assert config.auth == AuthConfig(tokens=(), allowed_origins=(), auth_timeout_s=10.0)
    server = config.server
    assert (server.handshake_timeout_s, server.max_connections_per_address) == (10.0, 256)
    assert (server.max_room_dashboards, server.max_subscriptions) == (1000, 32)
    assert (server.max_messages_per_s, server.message_burst) == (20.0, 60)
    assert config.rooms[0].max_record_depth == 32


def test_every_auth_key_round_trips() -> None:
    """Every [auth] key is read, digests lower-cased and origins normalized."""
    text = f"""
[server]
handshake_timeout_s = 2
max_connections_per_address = 5
max_room_dashboards = 6
max_subscriptions = 7
max_messages_per_s = 1.5
message_burst = 3

[auth]
allowed_origins = ["HTTPS://Ops.Example.com:443", "http://localhost:3000"]
auth_timeout_s = 4

[[auth.tokens]]
name = "ops"
sha256 = "{DIGEST.upper()}"
role = "operator"
rooms = ["alice"]

[[auth.tokens]]
name = "wall"
sha256 = "{hash_token("other")}"
""" + ROOMS.replace('id = "alice"', 'id = "alice"\nmax_record_depth = 9')
    config = parse_config(text)
    assert config.auth == AuthConfig(
        tokens=(
            TokenConfig("ops", DIGEST, "operator", ("alice",)),
            TokenConfig("wall", hash_token("other"), "viewer", None),
        ),
        allowed_origins=("https://ops.example.com", "http://localhost:3000"),
        auth_timeout_s=4.0,
    )
    assert config.server == ServerConfig(
        handshake_timeout_s=2.0,
        max_connections_per_address=5,
        max_room_dashboards=6,
        max_subscriptions=7,
        max_messages_per_s=1.5,
        message_burst=3,
    )
    assert config.rooms[0].max_record_depth == 9


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ('[auth]\nallowed_origins = "x"', "expected array @ $.auth.allowed_origins"),
        ("[auth]\nauth_timeout_s = true", "expected float @ $.auth.auth_timeout_s"),
        ("[auth]\nauth_timeout_s = 0", "must be > 0 @ $.auth.auth_timeout_s"),
        ("[auth]\ntokn = 1", "unknown key 'tokn' @ $.auth"),
        ('[[auth.tokens]]\nname = "a"', "required key missing @ $.auth.tokens[0].sha256"),
        (
            f'[[auth.tokens]]\nname = "a"\nsha256 = "{DIGEST}"\nrole = 1',
            "expected string @ $.auth.tokens[0].role",
        ),
        (
            f'[[auth.tokens]]\nname = "a"\nsha256 = "{DIGEST}"\nrooms = "alice"',
            "expected array @ $.auth.tokens[0].rooms",
        ),
        ("[server]\nmessage_burst = 0", "must be >= 1 @ $.server.message_burst"),
        ("[server]\nmax_messages_per_s = 0", "must be > 0 @ $.server.max_messages_per_s"),
        ("[server]\nmax_subscriptions = 1.0", "expected int @ $.server.max_subscriptions"),
        ("[server]\nhandshake_timeout_s = -1", "must be > 0 @ $.server.handshake_timeout_s"),
    ],
)
def test_types_and_ranges(snippet: str, message: str) -> None:
    """Strict types and ranges, reported with the $.path of the key."""
    assert message in errors_of(snippet + "\n" + ROOMS)


def test_token_table_checks() -> None:
    """Names, digests, roles, rooms and origins are checked, every problem reported at once."""
    text = (
        f"""
[auth]
allowed_origins = ["https://ok.example", "https://x.example/path", "ops.example.com"]

[[auth.tokens]]
name = "ops"
sha256 = "{DIGEST}"
role = "admin"
rooms = ["alice", "carol"]

[[auth.tokens]]
name = "ops"
sha256 = "{DIGEST}"
rooms = []

[[auth.tokens]]
name = "bad name"
sha256 = "abc"
"""
        + ROOMS
    )
    errors = errors_of(text)
    assert errors == [
        "must be one of viewer, operator @ $.auth.tokens[0].role",
        "unknown room 'carol' @ $.auth.tokens[0].rooms[1]",
        "duplicate token name 'ops' (first at $.auth.tokens[0]) @ $.auth.tokens[1].name",
        "the same token twice (first at $.auth.tokens[0]) @ $.auth.tokens[1].sha256",
        "must not be empty (leave rooms out for every room) @ $.auth.tokens[1].rooms",
        "must match [A-Za-z0-9_.-]{1,64} @ $.auth.tokens[2].name",
        "expected 64 hex digits, the SHA-256 of the token (`meksd token new` prints it) "
        "@ $.auth.tokens[2].sha256",
        "expected an origin such as https://ops.example.com or http://localhost:3000 "
        "(scheme, host, optional port; no path), got 'https://x.example/path' "
        "@ $.auth.allowed_origins[1]",
        "expected an origin such as https://ops.example.com or http://localhost:3000 "
        "(scheme, host, optional port; no path), got 'ops.example.com' "
        "@ $.auth.allowed_origins[2]",
    ]


@pytest.mark.parametrize("listen", ["0.0.0.0:8765", "[::]:8765", "10.1.2.3:80", "meksd.lan:8765"])
def test_public_listener_needs_tokens(listen: str) -> None:
    """Any non-loopback ws_listen without tokens is refused with a message saying why."""
    (error,) = errors_of(f'[server]\nws_listen = "{listen}"\n' + ROOMS)
    host = listen.rsplit(":", 1)[0].strip("[]")
    assert error.startswith(f"dashboards listen on {host!r}, which is not a loopback address")
    assert error.endswith("@ $.auth.tokens")


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "127.0.0.2:1", "[::1]:8765", "localhost:8765"])
def test_loopback_listener_may_run_open(listen: str) -> None:
    """Loopback listeners run without tokens (open mode)."""
    assert parse_config(f'[server]\nws_listen = "{listen}"\n' + ROOMS).auth.tokens == ()


def test_meksd_run_refuses_a_public_listener_without_tokens(tmp_path: Path) -> None:
    """`meksd run` on 0.0.0.0 without tokens exits 78 and says why, without binding anything."""
    conf = tmp_path / "public.toml"
    conf.write_text('[server]\nws_listen = "0.0.0.0:0"\nhttp_listen = "127.0.0.1:0"\n' + ROOMS)
    result = meksd("run", "--config", str(conf))
    assert result.returncode == 78
    assert "not a loopback address" in result.stderr
    assert "meksd token new" in result.stderr
    assert "@ $.auth.tokens" in result.stderr


def test_token_new_prints_a_token_and_a_table_that_loads(tmp_path: Path) -> None:
    """`meksd token new` prints a fresh token and [[auth.tokens]] lines holding its SHA-256."""
    result = meksd("token", "new", "--role", "operator", "--rooms", "alice,bob", "--name", "ops-1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    token = next(line.strip() for line in lines if line.strip().startswith("meks_"))
    assert len(token) == len("meks_") + 43
    table = result.stdout[result.stdout.index("[[auth.tokens]]") :]
    assert token not in table
    config = parse_config('[server]\nws_listen = "0.0.0.0:8765"\n' + table + "\n" + ROOMS)
    (entry,) = config.auth.tokens
    assert entry == TokenConfig("ops-1", hash_token(token), "operator", ("alice", "bob"))
    again = meksd("token", "new", "--json")
    doc = orjson.loads(again.stdout)
    assert doc["token"] != token and doc["role"] == "viewer" and doc["rooms"] is None
    assert doc["sha256"] == hash_token(doc["token"])


def test_token_hash_and_usage_errors() -> None:
    """`meksd token hash` digests stdin; bad arguments exit 64."""
    assert meksd("token", "hash", stdin="meks_x\n").stdout.strip() == DIGEST
    assert meksd("token", "hash", stdin="").returncode == 64
    assert meksd("token").returncode == 64
    assert meksd("token", "new", "--role", "admin").returncode == 64
    bad_rooms = meksd("token", "new", "--rooms", "a b")
    assert bad_rooms.returncode == 64 and "must match" in bad_rooms.stderr
