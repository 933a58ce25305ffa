"""The configuration: a frozen attrs tree, loaded from TOML and validated strictly.

Loading happens in two passes, and both report every problem they find, each as one
line with a ``$``-rooted path (``expected int @ $.rooms[0].chat_history``):

1. *Structure* (cattrs). Primitive hooks are strict: an ``int`` key takes only a TOML
   integer (not ``true``, not ``"16"``, not ``16.0``); a ``float`` key takes an integer
   or a finite float; a ``bool`` key only ``true``/``false`` (cattrs' default would turn
   ``"false"`` into ``True``); a ``str`` key only a string; an array only an array.
   Unknown keys are errors, so a typo never silently falls back to a default.
   Sources dispatch on their ``kind`` key.
2. *Validate*: ranges, room ids, listen addresses, source URLs, replay files. Relative
   replay paths are resolved against the directory of the configuration file.

The reference for every key is ``docs/configuration.md``; the embedded default
(``meksd run`` without ``--config``) is ``meksd/defaults/meksd.toml``.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeAlias, get_args, get_origin
from urllib.parse import urlsplit

import attrs
import cattrs
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from meksd.access_config import AuthConfig, check_auth
from meksd.core.strict import Invalid as _Invalid
from meksd.core.strict import register_strict_primitives
from meksd.errors import ConfigError
from meksd.model.state import RoomConfig

__all__ = [
    "LOG_LEVELS",
    "AuthConfig",
    "Config",
    "HttpPollSourceConfig",
    "LogConfig",
    "ReplaySourceConfig",
    "RoomSettings",
    "SendConfig",
    "ServerConfig",
    "SimulatorSourceConfig",
    "SourceConfig",
    "StorageConfig",
    "WebsocketSourceConfig",
    "default_config",
    "load_config",
    "parse_config",
    "parse_listen",
    "room_config",
]

LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
"""The accepted values of ``[log] level`` (loguru's levels); case-insensitive."""

ROOM_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""What a room id may look like: it appears in URLs, metric labels and log fields."""


# --------------------------------------------------------------------------- classes


@attrs.frozen
class ServerConfig:
    """``[server]``: listeners and the limits of the dashboard side."""

    ws_listen: str = "127.0.0.1:8765"
    """Dashboard WebSocket listener, ``HOST:PORT`` or ``[IPv6]:PORT``."""
    http_listen: str = "127.0.0.1:8766"
    """Admin HTTP listener (health, metrics, dashboard page), same syntax."""
    tick_ms: int = 16
    """At most one delta per room per tick (leading and trailing edge)."""
    ring_size: int = 1024
    """Encoded deltas kept per room so a reconnecting dashboard can resume."""
    heartbeat_s: float = 20.0
    """Interval of WebSocket pings to each dashboard."""
    send_timeout_s: float = 10.0
    """A write to a dashboard that takes longer than this closes the connection."""
    max_message_bytes: int = 65_536
    """Largest message accepted from a dashboard."""
    max_connections: int = 2000
    """Dashboard connections accepted at once, over all rooms."""
    shutdown_grace_s: float = 5.0
    """On SIGTERM, how long dashboards and sources get to close before cancellation."""
    handshake_timeout_s: float = 10.0
    """A connection must complete its WebSocket handshake within this."""
    max_connections_per_address: int = 256
    """Connections (open or handshaking) from one client IP address at once."""
    max_room_dashboards: int = 1000
    """Subscriptions to one room at once, over all connections."""
    max_subscriptions: int = 32
    """Rooms one connection may subscribe to at once."""
    max_messages_per_s: float = 20.0
    """Messages (commands, subscribes, pings...) a dashboard may send per second..."""
    message_burst: int = 60
    """...in bursts of up to this many; beyond, ``rate_limited``; well beyond, 1008."""

    @property
    def ws_address(self) -> tuple[str, int]:
        """``ws_listen`` parsed into ``(host, port)``; valid once loaded."""
        return parse_listen(self.ws_listen)

    @property
    def http_address(self) -> tuple[str, int]:
        """``http_listen`` parsed into ``(host, port)``; valid once loaded."""
        return parse_listen(self.http_listen)


@attrs.frozen
class LogConfig:
    """``[log]``: structured logging on stderr."""

    level: str = "INFO"
    """Minimum level: TRACE, DEBUG, INFO, SUCCESS, WARNING, ERROR or CRITICAL.
    Accepted in any case; stored upper-case after loading."""


@attrs.frozen
class StorageConfig:
    """``[storage]``: the SQLite store of room states, for restarts (docs/storage.md)."""

    enabled: bool = True
    """Write room states and restore them at start; false runs without a store."""
    path: str | None = None
    """The store file; relative paths resolve against the config file's directory.
    Unset: ``$STATE_DIRECTORY/meksd.sqlite3`` under systemd, else
    ``$XDG_STATE_HOME/meksd/meksd.sqlite3`` or ``~/.local/state/meksd/meksd.sqlite3``
    (resolved when meksd starts, see ``meksd.runtime.store.store_path``)."""
    flush_ms: int = 250
    """Every room whose state changed is written this often (the crash-loss bound)."""


@attrs.frozen
class WebsocketSourceConfig:
    """A ``kind = "websocket"`` source: a feed relay that pushes over WebSocket."""

    kind: Literal["websocket"]
    url: str
    """``ws://`` or ``wss://`` URL of the relay."""
    connect_timeout_s: float = 10.0
    """TCP + TLS + WebSocket handshake must complete within this."""
    backoff_initial_s: float = 0.5
    """Upper bound of the first reconnect delay (full jitter: uniform in [0, bound])."""
    backoff_max_s: float = 30.0
    """The bound doubles per failed attempt up to this; reset after a connection that
    delivered data."""
    max_message_bytes: int = 1_048_576
    """A larger message closes the connection (code 1009) and reconnects."""


@attrs.frozen
class ReplaySourceConfig:
    """A ``kind = "replay"`` source: a recorded JSONL feed."""

    kind: Literal["replay"]
    path: str
    """JSONL file; relative paths are resolved against the config file's directory
    (absolute after loading)."""
    speed: float = 1.0
    """Pacing by the lines' ``ts`` field: 2.0 is twice as fast; 0 is as fast as the
    room takes it."""
    loop: bool = False
    """Start over at the end of the file, forever."""
    loop_suffix_ids: bool = True
    """When looping, suffix ``msgId``, ``groupId`` and ``battleId`` with ``~<pass>`` on
    every pass after the first, so that the room counts the replayed events again
    instead of dropping them as duplicates."""


@attrs.frozen
class SimulatorSourceConfig:
    """A ``kind = "simulator"`` source: the built-in feed generator (no network)."""

    kind: Literal["simulator"]
    rate: float = 8.0
    """Events per second in the steady phase (streak progress and duplicates included,
    battle messages on top)."""
    burst_rate: float = 300.0
    """Events per second during a burst."""
    burst_every_s: float = 30.0
    """A burst ends every ``burst_every_s`` seconds..."""
    burst_s: float = 4.0
    """...and lasts ``burst_s`` seconds (0 disables bursts)."""
    battles: bool = True
    """Whether to stage battles (PK): start, score updates each second, end."""
    battle_every_s: float = 60.0
    """A battle ends every ``battle_every_s`` seconds..."""
    battle_s: float = 30.0
    """...and lasts ``battle_s`` seconds."""
    users: int = 300
    """Size of the simulated audience."""
    duplicate_ratio: float = 0.01
    """Share of events that re-send an earlier ``msgId`` (exercises de-duplication)."""
    seed: int | None = None
    """Random seed for a reproducible feed; unset for a different feed each run."""


@attrs.frozen
class HttpPollSourceConfig:
    """A ``kind = "http-poll"`` source: a feed polled over HTTP with a cursor."""

    kind: Literal["http-poll"]
    url: str
    """``http://`` or ``https://`` URL; polled as ``GET url?cursor=<cursor>``."""
    poll_ms: int = 1000
    """Interval between polls when a response does not say (``poll_ms`` in it)."""
    min_poll_ms: int = 100
    """Floor of the interval a response may ask for."""
    max_poll_ms: int = 30_000
    """Ceiling of the interval a response may ask for."""
    timeout_s: float = 10.0
    """Every request (connect, send, wait, read the whole body) must finish within this."""
    backoff_initial_s: float = 0.5
    """Upper bound of the first retry delay after a failed poll (full jitter)."""
    backoff_max_s: float = 30.0
    """The bound doubles per failed poll up to this; reset by a good response."""
    retry_after_max_s: float = 300.0
    """A ``Retry-After`` longer than this is cut to this."""
    max_response_bytes: int = 8_388_608
    """A larger response body is a failed poll."""


SourceConfig: TypeAlias = (
    WebsocketSourceConfig | HttpPollSourceConfig | ReplaySourceConfig | SimulatorSourceConfig
)
"""One ``[[rooms.sources]]`` table, told apart by its ``kind`` key."""

_SOURCE_KINDS: dict[str, type[SourceConfig]] = {
    "websocket": WebsocketSourceConfig,
    "http-poll": HttpPollSourceConfig,
    "replay": ReplaySourceConfig,
    "simulator": SimulatorSourceConfig,
}


@attrs.frozen
class SendConfig:
    """``[rooms.send]``: where operator replies (``chat.reply``) are posted (docs/replies.md)."""

    url: str
    """``http://`` or ``https://`` endpoint; one POST of ``{room, reply_id, text}`` per reply."""
    token: str | None = None
    """Sent as ``Authorization: Bearer <token>`` when set."""
    reply_deadline_s: float = 10.0
    """A reply not taken by the upstream this long after it was accepted fails (``deadline``)."""
    attempt_timeout_s: float = 3.0
    """Each POST (connect, send, answer) must complete within this."""
    backoff_initial_s: float = 0.2
    """Upper bound of the first retry delay (full jitter)."""
    backoff_max_s: float = 2.0
    """The bound doubles per failed attempt up to this."""
    queue: int = 256
    """Replies waiting for the room's sender; beyond this a reply fails (``queue_full``)."""
    replies_per_minute: float = 20.0
    """Per operator (token name; the connection in open mode) in this room, sustained."""
    reply_burst: int = 5
    """Replies an operator may send at once before ``replies_per_minute`` applies."""


@attrs.frozen
class RoomSettings:
    """One ``[[rooms]]`` table: a live room and where its events come from."""

    id: str
    """Room id, ``[A-Za-z0-9_.-]{1,64}``, unique; dashboards subscribe by it."""
    streak_timeout_s: float = 15.0
    """A gift streak without an end event is closed (and counted) after this."""
    chat_history: int = 50
    """Chat messages kept in the room's state (and its snapshots)."""
    dedup_window: int = 20_000
    """How many recent ``msgId`` values are remembered to drop re-deliveries."""
    ingest_queue: int = 1000
    """Raw records buffered between source and normalizer (about 2 s of peak burst);
    when full, the source waits (backpressure)."""
    max_record_bytes: int = 65_536
    """A larger raw record is rejected as ``too_large``."""
    max_record_depth: int = 32
    """A record with arrays/objects nested deeper is rejected as ``too_deep``."""
    battle_supporters: int = 5
    """Top supporters kept per battle host."""
    closed_streak_memory: int = 4096
    """Timeout-closed streaks remembered to reconcile a late end event."""
    stall_s: float = 20.0
    """A live room whose active source delivered nothing for this long is stalled: it
    fails over to the next source (or reconnects the last one); also the readiness
    window. See ``docs/sources.md``."""
    failover_after: int = 2
    """Consecutive failures (no record in between) of the active source that make the
    room fail over to the next source."""
    ended_backoff_s: float = 60.0
    """Once the stream ended, sources wait between ``ended_backoff_s / 2`` and this
    before each reconnect or poll, instead of their usual pace."""
    sources: tuple[SourceConfig, ...] = ()
    """The room's feeds, in failover order; at least one."""
    max_reply_chars: int = 150
    """Longest operator reply (``chat.reply``), in characters."""
    send: SendConfig | None = None
    """``[rooms.send]``: the upstream for operator replies; none: ``chat.reply`` is refused."""


@attrs.frozen
class Config:
    """The whole configuration file."""

    server: ServerConfig = ServerConfig()
    auth: AuthConfig = attrs.field(factory=AuthConfig)
    """``[auth]``: dashboard tokens and allowed origins (:mod:`meksd.access_config`)."""
    log: LogConfig = LogConfig()
    storage: StorageConfig = StorageConfig()
    rooms: tuple[RoomSettings, ...] = ()
    """At least one room."""


def room_config(settings: RoomSettings) -> RoomConfig:
    """The part of a room's settings that its reducers need."""
    return RoomConfig(
        streak_timeout_s=settings.streak_timeout_s,
        chat_history=settings.chat_history,
        dedup_window=settings.dedup_window,
        closed_streak_memory=settings.closed_streak_memory,
        battle_supporters=settings.battle_supporters,
        max_reply_chars=settings.max_reply_chars,
    )


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate the TOML file at ``path``.

    Raises ``ConfigError`` when the file cannot be read, is not UTF-8 TOML (the
    message carries the line and column), or does not validate.
    """
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {p}: {exc.strerror or exc}"], source=str(p)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{p}: not UTF-8 ({exc.reason})"], source=str(p)) from None
    return parse_config(text, source=str(p), base_dir=p.parent)


def parse_config(
    text: str, *, source: str = "<string>", base_dir: str | os.PathLike[str] | None = None
) -> Config:
    """Parse and validate TOML ``text``.

    ``source`` names the text in error messages. Relative replay paths resolve
    against ``base_dir`` (default: the current directory). Raises ``ConfigError``.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: invalid TOML: {exc}"], source=source) from None
    try:
        config = _converter.structure(data, Config)
    except Exception as exc:
        messages = cattrs.transform_error(exc, path="$", format_exception=_format_exception)
        raise ConfigError(messages, source=source) from None
    config, problems = _validate(config, Path(base_dir) if base_dir is not None else Path.cwd())
    if problems:
        raise ConfigError(problems, source=source)
    return config


@functools.cache
def default_config() -> Config:
    """The embedded default: room ``demo`` fed by the simulator, dashboards on
    127.0.0.1:8765, admin HTTP on 127.0.0.1:8766."""
    text = resources.files("meksd").joinpath("defaults/meksd.toml").read_text("utf-8")
    return parse_config(text, source="<default>")


_LISTEN_RE = re.compile(r"(?:\[(?P<v6>[^\]]*)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>[0-9]{1,5})")


def parse_listen(s: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``[IPv6]:PORT`` into ``(host, port)``; port 0..65535.

    Raises ``ValueError`` with a message meant for the user.
    """
    m = _LISTEN_RE.fullmatch(s)
    if m is None:
        if s.count(":") > 1 and not s.startswith("["):
            raise ValueError(f"IPv6 address must be in brackets, e.g. [::1]:8765, got {s!r}")
        raise ValueError(f"expected HOST:PORT or [IPv6]:PORT, got {s!r}")
    host = m["v6"] if m["v6"] is not None else m["host"]
    if m["v6"] is not None:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid IPv6 address {host!r}") from None
    port = int(m["port"])
    if port > 65535:
        raise ValueError(f"port {port} out of range 0..65535")
    return host, port


# --------------------------------------------------------------------------- structuring


def _is_homogeneous_tuple(t: Any) -> bool:
    args = get_args(t)
    return get_origin(t) is tuple and len(args) == 2 and args[1] is Ellipsis


def _structure_tuple(obj: object, t: Any) -> tuple[Any, ...]:
    if type(obj) is not list:
        raise _Invalid("expected array")
    elem = get_args(t)[0]
    hook = _converter.get_structure_hook(elem)
    items: list[Any] = []
    errors: list[Exception] = []
    for i, value in enumerate(obj):
        try:
            items.append(hook(value, elem))
        except Exception as exc:
            exc.add_note(IterableValidationNote(f"Structuring {t!r} @ index {i}", i, elem))
            errors.append(exc)
    if errors:
        raise IterableValidationError(f"While structuring {t!r}", errors, t)
    return tuple(items)


def _attrs_hook_factory(cl: type[Any]) -> Callable[[object, type], Any]:
    base = make_dict_structure_fn(cl, _converter)

    def structure(obj: object, t: type) -> Any:
        if type(obj) is not dict:
            raise _Invalid("expected a table")
        return base(obj, t)

    return structure


def _structure_source(obj: object, _: Any) -> SourceConfig:
    if type(obj) is not dict:
        raise _Invalid("expected a table")
    kind = obj.get("kind")
    cls = _SOURCE_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        exc: Exception
        if "kind" not in obj:
            exc = KeyError("kind")
        else:
            expected = ", ".join(_SOURCE_KINDS)
            exc = _Invalid(f"unknown source kind {kind!r} (expected {expected})")
        exc.add_note(AttributeValidationNote("Structuring source kind", "kind", str))
        raise ClassValidationError("While structuring a source", [exc], dict)
    return _converter.structure(obj, cls)


def _format_exception(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, _Invalid):
        return str(exc)
    if isinstance(exc, KeyError):
        return "required key missing"
    if isinstance(exc, ForbiddenExtraKeysError):
        keys = ", ".join(repr(k) for k in sorted(exc.extra_fields))
        return f"unknown key {keys}" if len(exc.extra_fields) == 1 else f"unknown keys {keys}"
    return cattrs.v.format_exception(exc, type_)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    register_strict_primitives(conv)
    conv.register_structure_hook_func(_is_homogeneous_tuple, _structure_tuple)
    conv.register_structure_hook_func(lambda t: t == SourceConfig, _structure_source)
    conv.register_structure_hook_factory(attrs.has, _attrs_hook_factory)
    return conv


_converter = _make_converter()


# --------------------------------------------------------------------------- validation


_Rules: TypeAlias = dict[str, tuple[Literal["gt", "ge"], float]]
"""Field name -> (comparison, bound)."""


class _Checks:
    """Collects ``"<problem> @ <path>"`` lines."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, message: str, path: str) -> None:
        self.problems.append(f"{message} @ {path}")

    def gt(self, value: float, bound: float, path: str) -> None:
        if not value > bound:
            self.fail(f"must be > {bound:g}", path)

    def ge(self, value: float, bound: float, path: str, what: str | None = None) -> None:
        if not value >= bound:
            self.fail(f"must be >= {what or format(bound, 'g')}", path)

    def le(self, value: float, bound: float, path: str, what: str | None = None) -> None:
        if not value <= bound:
            self.fail(f"must be <= {what or format(bound, 'g')}", path)

    def fields(self, obj: Any, path: str, rules: _Rules) -> None:
        for name, (op, bound) in rules.items():
            getattr(self, op)(getattr(obj, name), bound, f"{path}.{name}")


_SERVER_RULES: _Rules = {
    "tick_ms": ("gt", 0),
    "ring_size": ("gt", 0),
    "heartbeat_s": ("gt", 0),
    "send_timeout_s": ("gt", 0),
    "max_message_bytes": ("gt", 0),
    "max_connections": ("gt", 0),
    "shutdown_grace_s": ("ge", 0),
    "handshake_timeout_s": ("gt", 0),
    "max_connections_per_address": ("gt", 0),
    "max_room_dashboards": ("gt", 0),
    "max_subscriptions": ("gt", 0),
    "max_messages_per_s": ("gt", 0),
    "message_burst": ("ge", 1),
}
_ROOM_RULES: _Rules = {
    "streak_timeout_s": ("gt", 0),
    "chat_history": ("ge", 0),
    "dedup_window": ("ge", 2),
    "ingest_queue": ("gt", 0),
    "max_record_bytes": ("gt", 0),
    "max_record_depth": ("ge", 2),
    "battle_supporters": ("ge", 0),
    "closed_streak_memory": ("ge", 0),
    "stall_s": ("gt", 0),
    "failover_after": ("ge", 1),
    "ended_backoff_s": ("gt", 0),
    "max_reply_chars": ("ge", 1),
}
_SEND_RULES: _Rules = {
    "reply_deadline_s": ("gt", 0),
    "attempt_timeout_s": ("gt", 0),
    "backoff_initial_s": ("gt", 0),
    "backoff_max_s": ("gt", 0),
    "queue": ("ge", 1),
    "replies_per_minute": ("gt", 0),
    "reply_burst": ("ge", 1),
}
_HTTP_POLL_RULES: _Rules = {
    "poll_ms": ("ge", 0),
    "min_poll_ms": ("ge", 0),
    "max_poll_ms": ("gt", 0),
    "timeout_s": ("gt", 0),
    "backoff_initial_s": ("gt", 0),
    "backoff_max_s": ("gt", 0),
    "retry_after_max_s": ("ge", 0),
    "max_response_bytes": ("gt", 0),
}
_WEBSOCKET_RULES: _Rules = {
    "connect_timeout_s": ("gt", 0),
    "backoff_initial_s": ("gt", 0),
    "backoff_max_s": ("gt", 0),
    "max_message_bytes": ("gt", 0),
}
_REPLAY_RULES: _Rules = {"speed": ("ge", 0)}
_SIMULATOR_RULES: _Rules = {
    "rate": ("ge", 0),
    "burst_rate": ("ge", 0),
    "burst_every_s": ("gt", 0),
    "burst_s": ("ge", 0),
    "battle_every_s": ("gt", 0),
    "battle_s": ("gt", 0),
    "users": ("gt", 0),
    "duplicate_ratio": ("ge", 0),
}


def _validate(config: Config, base_dir: Path) -> tuple[Config, list[str]]:
    """Check what types cannot say; return the normalized config and the problems."""
    checks = _Checks()
    _check_server(config.server, checks)
    log = config.log
    if log.level.upper() not in LOG_LEVELS:
        checks.fail(f"must be one of {', '.join(LOG_LEVELS)}", "$.log.level")
    else:
        log = attrs.evolve(log, level=log.level.upper())
    if not config.rooms:
        checks.fail("at least one [[rooms]] table is required", "$.rooms")
    seen: dict[str, int] = {}
    rooms = []
    for i, room in enumerate(config.rooms):
        path = f"$.rooms[{i}]"
        if not ROOM_ID_PATTERN.fullmatch(room.id):
            checks.fail("must match [A-Za-z0-9_.-]{1,64}", f"{path}.id")
        elif room.id in seen:
            first = f"$.rooms[{seen[room.id]}]"
            checks.fail(f"duplicate room id {room.id!r} (first at {first})", f"{path}.id")
        else:
            seen[room.id] = i
        checks.fields(room, path, _ROOM_RULES)
        if not room.sources:
            checks.fail("at least one [[rooms.sources]] table is required", f"{path}.sources")
        sources = tuple(
            _check_source(src, f"{path}.sources[{j}]", base_dir, checks)
            for j, src in enumerate(room.sources)
        )
        if room.send is not None:
            checks.fields(room.send, f"{path}.send", _SEND_RULES)
            problem = _url_problem(room.send.url, schemes=("http", "https"))
            if problem:
                checks.fail(problem, f"{path}.send.url")
        rooms.append(attrs.evolve(room, sources=sources))
    storage = _check_storage(config.storage, base_dir, checks)
    auth, auth_problems = check_auth(config.auth, ws_host=_listen_host(config), room_ids=seen)
    checks.problems.extend(auth_problems)
    config = attrs.evolve(config, log=log, auth=auth, storage=storage, rooms=tuple(rooms))
    return config, checks.problems


def _check_storage(storage: StorageConfig, base_dir: Path, checks: _Checks) -> StorageConfig:
    checks.gt(storage.flush_ms, 0, "$.storage.flush_ms")
    if storage.path is None:
        return storage
    if not storage.path.strip():
        checks.fail("must not be empty (to run without a store: enabled = false)", "$.storage.path")
        return storage
    return attrs.evolve(storage, path=str((base_dir / Path(storage.path).expanduser()).resolve()))


def _listen_host(config: Config) -> str | None:
    try:
        return parse_listen(config.server.ws_listen)[0]
    except ValueError:
        return None


def _check_server(server: ServerConfig, checks: _Checks) -> None:
    addresses: dict[str, tuple[str, int]] = {}
    for name in ("ws_listen", "http_listen"):
        try:
            addresses[name] = parse_listen(getattr(server, name))
        except ValueError as exc:
            checks.fail(str(exc), f"$.server.{name}")
    ws, http = addresses.get("ws_listen"), addresses.get("http_listen")
    if ws is not None and ws == http and ws[1] != 0:
        checks.fail("must differ from ws_listen", "$.server.http_listen")
    checks.fields(server, "$.server", _SERVER_RULES)


def _check_source(src: SourceConfig, path: str, base_dir: Path, checks: _Checks) -> SourceConfig:
    if isinstance(src, WebsocketSourceConfig):
        checks.fields(src, path, _WEBSOCKET_RULES)
        checks.ge(
            src.backoff_max_s, src.backoff_initial_s, f"{path}.backoff_max_s", "backoff_initial_s"
        )
        problem = _url_problem(src.url)
        if problem:
            checks.fail(problem, f"{path}.url")
        return src
    if isinstance(src, HttpPollSourceConfig):
        checks.fields(src, path, _HTTP_POLL_RULES)
        checks.ge(
            src.backoff_max_s, src.backoff_initial_s, f"{path}.backoff_max_s", "backoff_initial_s"
        )
        checks.ge(src.max_poll_ms, src.min_poll_ms, f"{path}.max_poll_ms", "min_poll_ms")
        problem = _url_problem(src.url, schemes=("http", "https"))
        if problem:
            checks.fail(problem, f"{path}.url")
        return src
    if isinstance(src, ReplaySourceConfig):
        checks.fields(src, path, _REPLAY_RULES)
        resolved = (base_dir / Path(src.path).expanduser()).resolve()
        if not resolved.is_file():
            reason = "not a file" if resolved.exists() else "file not found"
            checks.fail(f"{reason}: {resolved}", f"{path}.path")
        return attrs.evolve(src, path=str(resolved))
    checks.fields(src, path, _SIMULATOR_RULES)
    checks.le(src.duplicate_ratio, 1, f"{path}.duplicate_ratio")
    checks.le(src.burst_s, src.burst_every_s, f"{path}.burst_s", "burst_every_s")
    if not src.battle_s < src.battle_every_s:
        checks.fail("must be < battle_every_s", f"{path}.battle_s")
    return src


def _url_problem(url: str, schemes: tuple[str, str] = ("ws", "wss")) -> str | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"invalid URL {url!r}: {exc}"
    if parts.scheme not in schemes:
        return f"must be a {schemes[0]}:// or {schemes[1]}:// URL, got {url!r}"
    if not parts.hostname:
        return f"URL has no host: {url!r}"
    return None
