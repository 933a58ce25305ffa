"""Configuration: strict structuring, path-style messages, semantic validation."""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pytest

from meksd.config import (
    Config,
    LogConfig,
    ReplaySourceConfig,
    RoomSettings,
    ServerConfig,
    SimulatorSourceConfig,
    WebsocketSourceConfig,
    default_config,
    load_config,
    parse_config,
    parse_listen,
    room_config,
)
from meksd.errors import ConfigError, MeksdError
from meksd.model.state import RoomConfig

MINIMAL_ROOM = """
[[rooms]]
id = "r"
[[rooms.sources]]
kind = "simulator"
"""


def errors_of(text: str, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, **kwargs)  # type: ignore[arg-type]
    return info.value.messages


def test_default_config_is_one_simulated_demo_room() -> None:
    """The embedded default serves room `demo` from the simulator on localhost ports."""
    config = default_config()
    assert config.server == ServerConfig()
    assert config.server.ws_address == ("127.0.0.1", 8765)
    assert config.server.http_address == ("127.0.0.1", 8766)
    assert config.log == LogConfig(level="INFO")
    assert [room.id for room in config.rooms] == ["demo"]
    assert config.rooms[0].sources == (SimulatorSourceConfig(kind="simulator"),)


def test_minimal_file_takes_every_default() -> None:
    """Keys left out take the class defaults."""
    config = parse_config(MINIMAL_ROOM)
    assert config == Config(
        server=ServerConfig(),
        log=LogConfig(),
        rooms=(RoomSettings(id="r", sources=(SimulatorSourceConfig(kind="simulator"),)),),
    )


def test_every_key_round_trips(tmp_path: Path) -> None:
    """Every key of every table is read into the matching field, with its TOML type."""
    feed = tmp_path / "feed.jsonl"
    feed.write_text("")
    text = """
[server]
ws_listen = "[::1]:9000"
http_listen = "0.0.0.0:9001"
tick_ms = 20
ring_size = 77
heartbeat_s = 3
send_timeout_s = 2.5
max_message_bytes = 1000
max_connections = 9
shutdown_grace_s = 0

[log]
level = "debug"

[[rooms]]
id = "alice.main-1_x"
streak_timeout_s = 7.5
chat_history = 0
dedup_window = 100
ingest_queue = 5
max_record_bytes = 2048
battle_supporters = 3
closed_streak_memory = 10

[[rooms.sources]]
kind = "websocket"
url = "wss://relay.example:8443/feed?room=alice"
connect_timeout_s = 4
backoff_initial_s = 0.25
backoff_max_s = 8
max_message_bytes = 4096

[[rooms.sources]]
kind = "replay"
path = "feed.jsonl"
speed = 0
loop = true
loop_suffix_ids = false

[[rooms.sources]]
kind = "simulator"
rate = 1
burst_rate = 2.5
burst_every_s = 10
burst_s = 1
battles = false
battle_every_s = 20
battle_s = 5
users = 12
duplicate_ratio = 0.5
seed = 42
"""
    config = parse_config(text, base_dir=tmp_path)
    assert config == Config(
        server=ServerConfig(
            ws_listen="[::1]:9000",
            http_listen="0.0.0.0:9001",
            tick_ms=20,
            ring_size=77,
            heartbeat_s=3.0,
            send_timeout_s=2.5,
            max_message_bytes=1000,
            max_connections=9,
            shutdown_grace_s=0.0,
        ),
        log=LogConfig(level="DEBUG"),
        rooms=(
            RoomSettings(
                id="alice.main-1_x",
                streak_timeout_s=7.5,
                chat_history=0,
                dedup_window=100,
                ingest_queue=5,
                max_record_bytes=2048,
                battle_supporters=3,
                closed_streak_memory=10,
                sources=(
                    WebsocketSourceConfig(
                        kind="websocket",
                        url="wss://relay.example:8443/feed?room=alice",
                        connect_timeout_s=4.0,
                        backoff_initial_s=0.25,
                        backoff_max_s=8.0,
                        max_message_bytes=4096,
                    ),
                    ReplaySourceConfig(
                        kind="replay",
                        path=str(feed.resolve()),
                        speed=0.0,
                        loop=True,
                        loop_suffix_ids=False,
                    ),
                    SimulatorSourceConfig(
                        kind="simulator",
                        rate=1.0,
                        burst_rate=2.5,
                        burst_every_s=10.0,
                        burst_s=1.0,
                        battles=False,
                        battle_every_s=20.0,
                        battle_s=5.0,
                        users=12,
                        duplicate_ratio=0.5,
                        seed=42,
                    ),
                ),
            ),
        ),
    )
    assert config.server.ws_address == ("::1", 9000)
    assert type(config.server.heartbeat_s) is float
    assert type(config.rooms[0].sources[2].rate) is float  # type: ignore[union-attr]


def test_room_config_maps_reducer_settings() -> None:
    """room_config copies exactly the fields reducers need."""
    settings = RoomSettings(
        id="r",
        streak_timeout_s=3.0,
        chat_history=7,
        dedup_window=99,
        closed_streak_memory=11,
        battle_supporters=2,
    )
    assert room_config(settings) == RoomConfig(
        streak_timeout_s=3.0,
        chat_history=7,
        dedup_window=99,
        closed_streak_memory=11,
        battle_supporters=2,
    )


def test_config_classes_are_frozen() -> None:
    """A loaded config cannot be changed in place."""
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        default_config().server.tick_ms = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ('[server]\ntick_ms = "16"', "expected int @ $.server.tick_ms"),
        ("[server]\ntick_ms = true", "expected int @ $.server.tick_ms"),
        ("[server]\ntick_ms = 16.0", "expected int @ $.server.tick_ms"),
        ('[server]\nheartbeat_s = "20"', "expected float @ $.server.heartbeat_s"),
        ("[server]\nheartbeat_s = false", "expected float @ $.server.heartbeat_s"),
        ("[server]\nheartbeat_s = inf", "expected a finite float @ $.server.heartbeat_s"),
        ("[server]\nws_listen = 8765", "expected string @ $.server.ws_listen"),
        ("[log]\nlevel = 20", "expected string @ $.log.level"),
        ("server = 5", "expected a table @ $.server"),
    ],
)
def test_strict_primitives(snippet: str, message: str) -> None:
    """Primitive keys take only their own TOML type, reported with the key's path."""
    assert errors_of(snippet + "\n" + MINIMAL_ROOM) == [message]


def test_arrays_must_be_arrays() -> None:
    """A string where an array belongs is an error, not a sequence of characters."""
    assert errors_of("rooms = 5") == ["expected array @ $.rooms"]
    assert errors_of('[[rooms]]\nid = "r"\nsources = "simulator"\n') == [
        "expected array @ $.rooms[0].sources"
    ]


def test_string_false_for_bool_fails() -> None:
    """`"false"` for a bool is an error, not True (cattrs' default would say True)."""
    text = '[[rooms]]\nid = "r"\n[[rooms.sources]]\nkind = "simulator"\nbattles = "false"\n'
    assert errors_of(text) == ["expected bool @ $.rooms[0].sources[0].battles"]


def test_int_for_bool_and_float_for_int_fail_in_rooms() -> None:
    """Paths into arrays of tables carry the index: $.rooms[0].chat_history."""
    text = """
[[rooms]]
id = "r"
chat_history = 1.5
streak_timeout_s = true
[[rooms.sources]]
kind = "replay"
path = "x"
loop = 1
"""
    assert errors_of(text) == [
        "expected float @ $.rooms[0].streak_timeout_s",
        "expected int @ $.rooms[0].chat_history",
        "expected bool @ $.rooms[0].sources[0].loop",
    ]


def test_optional_seed_takes_int_only() -> None:
    """`seed` is optional, but when present it must be an integer."""
    text = MINIMAL_ROOM + 'seed = "7"\n'
    assert errors_of(text) == ["expected int @ $.rooms[0].sources[0].seed"]
    config = parse_config(MINIMAL_ROOM + "seed = 7\n")
    assert config.rooms[0].sources[0] == SimulatorSourceConfig(kind="simulator", seed=7)


def test_unknown_key_is_an_error() -> None:
    """A typo fails with the key and its table instead of silently taking a default."""
    assert errors_of("[server]\ntick_mss = 16\n" + MINIMAL_ROOM) == [
        "unknown key 'tick_mss' @ $.server"
    ]
    assert errors_of("[serverr]\n" + MINIMAL_ROOM) == ["unknown key 'serverr' @ $"]
    assert errors_of(MINIMAL_ROOM + "rat = 3\nburts = 1\n") == [
        "unknown keys 'burts', 'rat' @ $.rooms[0].sources[0]"
    ]


def test_unknown_source_kind() -> None:
    """An unknown `kind` names the valid kinds and the path of `kind`."""
    text = MINIMAL_ROOM + '[[rooms.sources]]\nkind = "http"\n'
    assert errors_of(text) == [
        "unknown source kind 'http' (expected websocket, http-poll, replay, simulator)"
        " @ $.rooms[0].sources[1].kind"
    ]


def test_missing_required_keys() -> None:
    """Required keys (room id, source kind, websocket url) are reported when absent."""
    text = '[[rooms]]\n[[rooms.sources]]\n[[rooms.sources]]\nkind = "websocket"\n'
    assert errors_of(text) == [
        "required key missing @ $.rooms[0].id",
        "required key missing @ $.rooms[0].sources[0].kind",
        "required key missing @ $.rooms[0].sources[1].url",
    ]


def test_all_structural_errors_reported_at_once() -> None:
    """Several problems give several messages, not just the first."""
    text = '[server]\ntick_ms = "1"\nring_size = false\n' + MINIMAL_ROOM + 'users = "9"\n'
    assert errors_of(text) == [
        "expected int @ $.server.tick_ms",
        "expected int @ $.server.ring_size",
        "expected int @ $.rooms[0].sources[0].users",
    ]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("tick_ms", "0", "must be > 0 @ $.server.tick_ms"),
        ("ring_size", "-1", "must be > 0 @ $.server.ring_size"),
        ("heartbeat_s", "0", "must be > 0 @ $.server.heartbeat_s"),
        ("shutdown_grace_s", "-0.5", "must be >= 0 @ $.server.shutdown_grace_s"),
        ("max_connections", "0", "must be > 0 @ $.server.max_connections"),
    ],
)
def test_server_ranges(key: str, value: str, message: str) -> None:
    """Out-of-range server numbers fail with `must be ...` and their path."""
    assert errors_of(f"[server]\n{key} = {value}\n" + MINIMAL_ROOM) == [message]


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("localhost", "expected HOST:PORT or [IPv6]:PORT, got 'localhost'"),
        ("127.0.0.1:", "expected HOST:PORT or [IPv6]:PORT, got '127.0.0.1:'"),
        (":8765", "expected HOST:PORT or [IPv6]:PORT, got ':8765'"),
        ("127.0.0.1:65536", "port 65536 out of range 0..65535"),
        ("::1:8765", "IPv6 address must be in brackets, e.g. [::1]:8765, got '::1:8765'"),
        ("[zz::1]:8765", "invalid IPv6 address 'zz::1'"),
        ("host:80x", "expected HOST:PORT or [IPv6]:PORT, got 'host:80x'"),
    ],
)
def test_bad_listen_address(address: str, message: str) -> None:
    """Listen addresses must be HOST:PORT with a port in 0..65535."""
    text = f'[server]\nws_listen = "{address}"\n' + MINIMAL_ROOM
    assert errors_of(text) == [f"{message} @ $.server.ws_listen"]


def test_parse_listen() -> None:
    """parse_listen splits host and port, unbracketing IPv6."""
    assert parse_listen("127.0.0.1:8765") == ("127.0.0.1", 8765)
    assert parse_listen("localhost:0") == ("localhost", 0)
    assert parse_listen("[::1]:65535") == ("::1", 65535)
    assert parse_listen("[::]:80") == ("::", 80)
    with pytest.raises(ValueError, match="out of range"):
        parse_listen("a:99999")


def test_same_listen_for_both_servers_fails() -> None:
    """The admin HTTP listener cannot share the dashboard listener's port."""
    text = '[server]\nws_listen = "127.0.0.1:9000"\nhttp_listen = "127.0.0.1:9000"\n'
    assert errors_of(text + MINIMAL_ROOM) == ["must differ from ws_listen @ $.server.http_listen"]


def test_duplicate_and_malformed_room_ids() -> None:
    """Room ids are unique and match [A-Za-z0-9_.-]{1,64}."""
    room = '[[rooms]]\nid = "{}"\n[[rooms.sources]]\nkind = "simulator"\n'
    text = room.format("a") + room.format("b") + room.format("a") + room.format("a b")
    text += room.format("x" * 65)
    assert errors_of(text) == [
        "duplicate room id 'a' (first at $.rooms[0]) @ $.rooms[2].id",
        "must match [A-Za-z0-9_.-]{1,64} @ $.rooms[3].id",
        "must match [A-Za-z0-9_.-]{1,64} @ $.rooms[4].id",
    ]


def test_rooms_and_sources_required() -> None:
    """A config needs at least one room, and each room at least one source."""
    assert errors_of("") == ["at least one [[rooms]] table is required @ $.rooms"]
    assert errors_of('[[rooms]]\nid = "r"\n') == [
        "at least one [[rooms.sources]] table is required @ $.rooms[0].sources"
    ]


def test_websocket_source_checks() -> None:
    """Websocket sources need a ws:// or wss:// URL and sane backoff bounds."""
    text = """
[[rooms]]
id = "r"
[[rooms.sources]]
kind = "websocket"
url = "http://relay/feed"
backoff_initial_s = 2
backoff_max_s = 1
[[rooms.sources]]
kind = "websocket"
url = "ws://:80/feed"
connect_timeout_s = 0
"""
    assert errors_of(text) == [
        "must be >= backoff_initial_s @ $.rooms[0].sources[0].backoff_max_s",
        "must be a ws:// or wss:// URL, got 'http://relay/feed' @ $.rooms[0].sources[0].url",
        "must be > 0 @ $.rooms[0].sources[1].connect_timeout_s",
        "URL has no host: 'ws://:80/feed' @ $.rooms[0].sources[1].url",
    ]


def test_simulator_source_checks() -> None:
    """Simulator phases must fit their periods and ratios stay within 0..1."""
    text = MINIMAL_ROOM + "burst_s = 40\nbattle_s = 60\nduplicate_ratio = 1.5\nusers = 0\n"
    assert errors_of(text) == [
        "must be > 0 @ $.rooms[0].sources[0].users",
        "must be <= 1 @ $.rooms[0].sources[0].duplicate_ratio",
        "must be <= burst_every_s @ $.rooms[0].sources[0].burst_s",
        "must be < battle_every_s @ $.rooms[0].sources[0].battle_s",
    ]


def test_bad_log_level() -> None:
    """The log level must be one of loguru's levels."""
    assert errors_of('[log]\nlevel = "verbose"\n' + MINIMAL_ROOM) == [
        "must be one of TRACE, DEBUG, INFO, SUCCESS, WARNING, ERROR, CRITICAL @ $.log.level"
    ]


def test_replay_path_resolves_against_config_dir(tmp_path: Path) -> None:
    """A relative replay path is resolved against the config file's directory."""
    (tmp_path / "feeds").mkdir()
    feed = tmp_path / "feeds" / "a.jsonl"
    feed.write_text("")
    conf = tmp_path / "meksd.toml"
    conf.write_text(
        '[[rooms]]\nid = "r"\n[[rooms.sources]]\nkind = "replay"\npath = "feeds/a.jsonl"\n'
    )
    config = load_config(conf)
    source = config.rooms[0].sources[0]
    assert isinstance(source, ReplaySourceConfig)
    assert source.path == str(feed.resolve())
    assert os.path.isabs(source.path)


def test_missing_replay_file_reports_path(tmp_path: Path) -> None:
    """A replay file that does not exist is reported with its resolved path."""
    conf = tmp_path / "meksd.toml"
    conf.write_text(
        '[[rooms]]\nid = "r"\n[[rooms.sources]]\nkind = "replay"\npath = "nope.jsonl"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    missing = tmp_path.resolve() / "nope.jsonl"
    assert info.value.messages == [f"file not found: {missing} @ $.rooms[0].sources[0].path"]
    assert info.value.source == str(conf)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    """A config file that cannot be read raises ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.toml")
    assert info.value.messages == [
        f"cannot read {tmp_path / 'absent.toml'}: No such file or directory"
    ]
    assert isinstance(info.value, MeksdError)


def test_toml_syntax_error_has_line_info(tmp_path: Path) -> None:
    """Invalid TOML is a ConfigError whose message names the file, line and column."""
    conf = tmp_path / "bad.toml"
    conf.write_text('[server]\ntick_ms = 16\nws_listen "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(conf)
    (message,) = info.value.messages
    assert message.startswith(f"{conf}: invalid TOML: ")
    assert "line 3" in message


def test_config_error_str_names_source() -> None:
    """str(ConfigError) names where the config came from and joins the messages."""
    error = ConfigError(["a @ $.x", "b @ $.y"], source="f.toml")
    assert str(error) == "f.toml: a @ $.x; b @ $.y"


def test_example_config_is_valid() -> None:
    """examples/meksd.toml loads, with its replay path resolved next to it."""
    examples = Path(__file__).parent.parent / "examples"
    config = load_config(examples / "meksd.toml")
    assert [room.id for room in config.rooms] == ["alice", "demo-replay"]
    replay = config.rooms[1].sources[0]
    assert isinstance(replay, ReplaySourceConfig)
    assert replay.path == str((examples / "demo-feed.jsonl").resolve())
