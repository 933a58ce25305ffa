"""Untrusted feed records in, typed events out: where bad input becomes a value.

:func:`normalize` turns one :class:`~meksd.model.raw.RawRecord` into a list of
:data:`~meksd.model.events.Normalized` values: an event for every envelope it
understood, :class:`~meksd.model.events.Rejected` (with a short reason and a
detail naming the field) for every one it refused, and
:class:`~meksd.model.events.Unknown` for event types meksd does not handle. It never
raises, whatever the bytes; the accepted format and every rejection reason are
written down in ``docs/feed-format.md``.

Rejection reasons (stable, metric-label safe):

``too_large``
    the payload is longer than ``max_bytes``.
``not_json``
    not UTF-8, not JSON, or nested deeper than the parser's recursion limit.
``too_deep``
    valid JSON nested deeper than ``max_depth`` (arrays and objects).
``bad_envelope``
    not an object ``{"event": str, "data": object}`` (or an array of them).
``missing_field``
    a required field is absent or ``null``.
``wrong_type``
    a field has the wrong JSON type (``expected int @ data.repeatCount, got str``).
``bad_value``
    right type, impossible value: a negative or out-of-range count, an empty ID,
    an integer too large to be one.
``normalizer_error``
    a bug in this module, caught so that it cannot take the room down; never
    expected (the property tests look for it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from typing import Final, Literal

import orjson

from meksd.model.events import (
    Army,
    BattleArmies,
    BattleStatus,
    ChatMessage,
    Event,
    GiftSent,
    LikeReceived,
    MemberJoined,
    Normalized,
    Rejected,
    SocialAction,
    StreamEnded,
    StreamPaused,
    StreamResumed,
    Supporter,
    Unknown,
    User,
    ViewerCount,
)
from meksd.model.raw import RawRecord

__all__ = [
    "MAX_COUNT",
    "MAX_DEPTH",
    "MAX_ID_LENGTH",
    "MAX_SCORE",
    "REASONS",
    "normalize",
]

REASONS: Final = frozenset(
    {
        "too_large",
        "not_json",
        "too_deep",
        "bad_envelope",
        "missing_field",
        "wrong_type",
        "bad_value",
        "normalizer_error",
    }
)
"""Every ``Rejected.reason`` :func:`normalize` can return."""

MAX_COUNT: Final = 2**31 - 1
"""Largest accepted count (``repeatCount``, ``diamondCount``, ``likeCount``,
``viewerCount``, ``giftType``...): the connectors carry them as int32."""

MAX_SCORE: Final = 2**53 - 1
"""Largest accepted battle score, ``totalLikeCount`` or duration: exact in a
JavaScript number, so dashboards see what we saw."""

MAX_ID_INT: Final = 2**64 - 1
"""IDs sent as JSON integers must fit in 64 bits (TikTok's are uint64)."""

MAX_ID_LENGTH: Final = 128
"""IDs longer than this are refused (they would be kept in the dedup memory)."""

MAX_TEXT_LENGTH: Final = 256
"""Display strings (nickname, uniqueId, giftName) are cut to this many characters."""

MAX_COMMENT_LENGTH: Final = 2048
"""Chat comments are cut to this many characters."""

MAX_EVENT_TYPE_LENGTH: Final = 64
"""Event type names are cut to this length in ``Unknown``/``Rejected`` (metric labels)."""

MAX_DEPTH: Final = 32
"""Default nesting limit of a record (``max_record_depth``): arrays and objects inside
each other. The deepest valid record, an array of ``linkMicArmies`` envelopes with
nested users, is 8 deep."""

_MAX_INT_DIGITS: Final = 40

_ACTIVE_STATUSES: Final = frozenset({"started", "active", "ongoing"})
_ENDED_STATUSES: Final = frozenset({"ended", "finished"})
_BATTLE_STATUS_CODES: Final[Mapping[int, Literal["active", "ended"]]] = {
    # TikTok's LinkMicBattleStatus, as the connectors expose it in ``battleStatus``:
    # 1 ARMY_ONGOING, 2 ARMY_FINISHED, 4 BATTLE_ONGOING, 5 BATTLE_FINISHED.
    # 0 (unknown) and anything else is ``Unknown("linkMicBattle:other")``.
    1: "active",
    2: "ended",
    4: "active",
    5: "ended",
}


class _HugeInt:
    """Stands in for a JSON integer with more than ``_MAX_INT_DIGITS`` digits.

    Parsing such a literal with ``int`` costs quadratic time and, past 4300 digits,
    raises; no field of ours can hold one anyway.
    """

    __slots__ = ()


_HUGE: Final = _HugeInt()


def _parse_int(literal: str) -> int | _HugeInt:
    if len(literal) > _MAX_INT_DIGITS:
        return _HUGE
    return int(literal)


class _Refusal(Exception):
    """Internal: unwinds one envelope's parsing into a ``Rejected``. Never escapes."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


class _Ignore(Exception):
    """Internal: the envelope is well formed but names something we do not track."""

    def __init__(self, event_type: str) -> None:
        super().__init__(event_type)
        self.event_type = event_type


def normalize(
    raw: RawRecord, *, max_bytes: int = 65536, max_depth: int = MAX_DEPTH
) -> list[Normalized]:
    """Parse and validate one feed record; never raises.

    The payload holds one envelope ``{"event": "<type>", "data": {...}}`` or a JSON
    array of them; the result has one entry per envelope (an empty array gives an
    empty list). A payload that cannot be split into envelopes (too large, not JSON,
    nested deeper than ``max_depth``, neither an object nor an array) gives a
    single ``Rejected``.

    Every event is stamped with the record's ``received_at`` and ``wall_ms``.
    """
    try:
        return _normalize(raw, max_bytes, max_depth)
    except Exception as exc:  # pragma: no cover - the contract's safety net
        return [Rejected("normalizer_error", f"normalizer bug: {type(exc).__name__}")]


def _normalize(raw: RawRecord, max_bytes: int, max_depth: int) -> list[Normalized]:
    payload = raw.payload
    if isinstance(payload, str):
        size = len(payload)
        if size <= max_bytes and size * 4 > max_bytes:
            size = len(payload.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            return [Rejected("too_large", f"payload is {size} bytes, limit {max_bytes}")]
        text = payload
    else:
        if len(payload) > max_bytes:
            return [Rejected("too_large", f"payload is {len(payload)} bytes, limit {max_bytes}")]
        try:
            text = bytes(payload).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            return [Rejected("not_json", f"payload is not UTF-8 (byte {exc.start})")]
    doc = _loads(text)
    if isinstance(doc, Rejected):
        return [doc]
    if _containers(text) > max_depth and _deeper_than(doc, max_depth):
        return [Rejected("too_deep", f"nested deeper than {max_depth} levels")]
    if isinstance(doc, dict):
        return [_envelope(doc, raw)]
    if isinstance(doc, list):
        return [_envelope(item, raw) for item in doc]
    return [
        Rejected(
            "bad_envelope",
            f"expected object or array of objects @ $, got {_json_type(doc)}",
        )
    ]


def _loads(text: str) -> object:
    """The JSON document in ``text``, exactly as the stdlib reads it (with
    ``_parse_int``), or the ``Rejected`` saying why there is none.

    orjson reads it when it can (several times faster); what it refuses or might read
    differently goes to the stdlib: see :func:`_unsafe_for_orjson` and :func:`_slow_loads`.
    """
    if not _unsafe_for_orjson(text):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return _slow_loads(text)


_DIGITS: Final = bytes(48 if 48 <= b <= 57 else 45 if b == 45 else 32 for b in range(256))
"""A ``bytes.translate`` table: digits to ``0``, ``-`` kept, every other byte a space."""
_LONG_RUNS: Final = (b"0" * 20, b"-" + b"0" * 19)


def _unsafe_for_orjson(text: str) -> bool:
    """Whether ``text`` holds a run of digits orjson could read as a float where the
    stdlib reads an exact int (20 digits, or 19 after a minus: beyond 64 bits). Such a
    run inside a string only costs the slower path, never a different result. (A
    translate and two finds: 1 us for a 300-byte event, where ``re`` took 5.)"""
    mapped = text.encode("utf-8", "surrogatepass").translate(_DIGITS)
    return _LONG_RUNS[0] in mapped or _LONG_RUNS[1] in mapped


def _slow_loads(text: str) -> object:
    """The stdlib's reading, for what orjson refuses or may read differently: lone
    surrogates, ``NaN``, huge integers (``_HugeInt``), and the error's detail."""
    try:
        return json.loads(text, parse_int=_parse_int)
    except RecursionError:
        return Rejected("not_json", "payload is nested too deeply")
    except ValueError as exc:
        return Rejected("not_json", _json_error_detail(exc))


def _containers(text: str) -> int:
    """An upper bound of the nesting depth: every bracket, quoted ones included."""
    return text.count("[") + text.count("{")


def _deeper_than(doc: object, limit: int) -> bool:
    """Whether ``doc`` has arrays/objects nested more than ``limit`` deep (no recursion)."""
    stack: list[tuple[object, int]] = [(doc, 1)] if isinstance(doc, dict | list) else []
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if isinstance(value, dict) else value
        assert isinstance(children, Iterable)
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _json_error_detail(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    return "invalid JSON"


def _envelope(doc: object, raw: RawRecord) -> Normalized:
    if not isinstance(doc, dict):
        return Rejected("bad_envelope", f"expected object @ envelope, got {_json_type(doc)}")
    event_type = doc.get("event")
    if event_type is None:
        return Rejected("bad_envelope", "missing event @ event")
    if not isinstance(event_type, str):
        return Rejected("bad_envelope", f"expected str @ event, got {_json_type(event_type)}")
    label = event_type[:MAX_EVENT_TYPE_LENGTH]
    parser = _PARSERS.get(event_type)
    if parser is None:
        return Unknown(label)
    data = doc.get("data", {})
    if not isinstance(data, dict):
        return Rejected("bad_envelope", f"expected object @ data, got {_json_type(data)}", label)
    try:
        return parser(_Fields(data, "data"), raw)
    except _Refusal as refusal:
        return Rejected(refusal.reason, refusal.detail, label)
    except _Ignore as ignored:
        return Unknown(ignored.event_type)


class _Fields:
    """Typed, path-aware access to one JSON object; raises ``_Refusal`` on bad input.

    ``null`` is treated exactly like an absent field.
    """

    __slots__ = ("_data", "_path")

    def __init__(self, data: dict[str, object], path: str) -> None:
        self._data = data
        self._path = path

    def where(self, key: str) -> str:
        return f"{self._path}.{key}"

    def has(self, key: str) -> bool:
        return self._data.get(key) is not None

    def first_present(self, *keys: str) -> str | None:
        for key in keys:
            if self._data.get(key) is not None:
                return key
        return None

    def raw(self, key: str) -> object:
        return self._data.get(key)

    def _missing(self, key: str, alternatives: str = "") -> _Refusal:
        return _Refusal("missing_field", f"missing {key} @ {self.where(key)}{alternatives}")

    def _wrong(self, expected: str, key: str, value: object) -> _Refusal:
        return _Refusal(
            "wrong_type", f"expected {expected} @ {self.where(key)}, got {_json_type(value)}"
        )

    # -- IDs -------------------------------------------------------------------

    def req_id(self, key: str) -> str:
        value = self._data.get(key)
        if value is None:
            raise self._missing(key)
        return self._id(key, value)

    def opt_id(self, key: str, default: str | None = None) -> str | None:
        value = self._data.get(key)
        if value is None:
            return default
        return self._id(key, value)

    def _id(self, key: str, value: object) -> str:
        if isinstance(value, bool) or not isinstance(value, int | str | _HugeInt):
            raise self._wrong("str or int", key, value)
        if isinstance(value, _HugeInt) or (
            isinstance(value, int) and not -MAX_ID_INT <= value <= MAX_ID_INT
        ):
            raise _Refusal("bad_value", f"integer out of range @ {self.where(key)}")
        if isinstance(value, int):
            return str(value)
        if not value:
            raise _Refusal("bad_value", f"empty {key} @ {self.where(key)}")
        if len(value) > MAX_ID_LENGTH:
            raise _Refusal("bad_value", f"{key} longer than {MAX_ID_LENGTH} @ {self.where(key)}")
        if not _valid_unicode(value):
            raise _Refusal("bad_value", f"invalid unicode @ {self.where(key)}")
        return value

    # -- numbers ---------------------------------------------------------------

    def req_count(self, key: str, *, minimum: int = 0, maximum: int = MAX_COUNT) -> int:
        value = self._data.get(key)
        if value is None:
            raise self._missing(key)
        return self._count(key, value, minimum, maximum)

    def opt_count(
        self, key: str, default: int, *, minimum: int = 0, maximum: int = MAX_COUNT
    ) -> int:
        value = self._data.get(key)
        if value is None:
            return default
        return self._count(key, value, minimum, maximum)

    def maybe_count(self, key: str, *, maximum: int = MAX_COUNT) -> int | None:
        value = self._data.get(key)
        if value is None:
            return None
        return self._count(key, value, 0, maximum)

    def _count(self, key: str, value: object, minimum: int, maximum: int) -> int:
        if isinstance(value, _HugeInt):
            raise _Refusal("bad_value", f"integer out of range @ {self.where(key)}")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._wrong("int", key, value)
        if value < minimum:
            raise _Refusal(
                "bad_value", f"expected int >= {minimum} @ {self.where(key)}, got {value}"
            )
        if value > maximum:
            raise _Refusal(
                "bad_value", f"expected int <= {maximum} @ {self.where(key)}, got {value}"
            )
        return value

    def opt_bool(self, key: str, default: bool) -> bool:
        value = self._data.get(key)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            if value in (0, 1):
                return value == 1
            raise _Refusal("bad_value", f"expected bool or 0/1 @ {self.where(key)}")
        raise self._wrong("bool", key, value)

    # -- strings ---------------------------------------------------------------

    def req_str(self, key: str, *, limit: int = MAX_TEXT_LENGTH) -> str:
        value = self._data.get(key)
        if value is None:
            raise self._missing(key)
        return self._str(key, value, limit)

    def opt_str(self, key: str, *, limit: int = MAX_TEXT_LENGTH) -> str:
        value = self._data.get(key)
        if value is None:
            return ""
        return self._str(key, value, limit)

    def _str(self, key: str, value: object, limit: int) -> str:
        if not isinstance(value, str):
            raise self._wrong("str", key, value)
        return _clean_text(value[:limit])

    # -- nested ----------------------------------------------------------------

    def opt_object(self, key: str) -> _Fields | None:
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise self._wrong("object", key, value)
        return _Fields(value, self.where(key))

    def opt_list(self, key: str) -> list[object] | None:
        value = self._data.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self._wrong("array", key, value)
        return value

    def item(self, key: str, index: int, value: object) -> _Fields:
        where = f"{self.where(key)}[{index}]"
        if not isinstance(value, dict):
            raise _Refusal("wrong_type", f"expected object @ {where}, got {_json_type(value)}")
        return _Fields(value, where)


def _valid_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clean_text(text: str) -> str:
    """Display text with lone surrogates (from ``\\udXXX`` escapes) replaced."""
    if _valid_unicode(text):
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | _HugeInt):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__  # pragma: no cover - json produces nothing else


# -- shared pieces ---------------------------------------------------------------


def _user(fields: _Fields) -> User:
    """User fields, flat (``userId``...) or nested in ``user``; flat wins per field.

    A ``user`` that is not an object is an error only if it is needed, that is if
    ``userId`` is not flat.
    """
    try:
        nested = fields.opt_object("user")
    except _Refusal:
        if not fields.has("userId"):
            raise
        nested = None

    def pick(key: str) -> _Fields | None:
        if fields.has(key):
            return fields
        if nested is not None and nested.has(key):
            return nested
        return None

    source = pick("userId")
    if source is None:
        raise _Refusal(
            "missing_field",
            f"missing userId @ {fields.where('userId')} or {fields.where('user.userId')}",
        )
    user_id = source.req_id("userId")
    unique = pick("uniqueId")
    nick = pick("nickname")
    return User(
        user_id=user_id,
        unique_id=unique.opt_str("uniqueId") if unique is not None else "",
        nickname=nick.opt_str("nickname") if nick is not None else "",
    )


def _alternative_list(fields: _Fields, *keys: str) -> tuple[str, list[object]] | None:
    key = fields.first_present(*keys)
    if key is None:
        return None
    values = fields.opt_list(key)
    assert values is not None
    return key, values


# -- one parser per event type ---------------------------------------------------


def _gift(f: _Fields, raw: RawRecord) -> Event:
    return GiftSent(
        msg_id=f.req_id("msgId"),
        user=_user(f),
        gift_id=f.req_id("giftId"),
        gift_name=f.opt_str("giftName"),
        gift_type=f.opt_count("giftType", 0),
        repeat_count=f.opt_count("repeatCount", 1, minimum=1),
        repeat_end=f.opt_bool("repeatEnd", False),
        group_id=f.opt_id("groupId", "") or "",
        diamond_count=f.req_count("diamondCount"),
        received_at=raw.received_at,
        wall_ms=raw.wall_ms,
    )


def _chat(f: _Fields, raw: RawRecord) -> Event:
    return ChatMessage(
        msg_id=f.req_id("msgId"),
        user=_user(f),
        comment=f.req_str("comment", limit=MAX_COMMENT_LENGTH),
        received_at=raw.received_at,
        wall_ms=raw.wall_ms,
    )


def _like(f: _Fields, raw: RawRecord) -> Event:
    return LikeReceived(
        msg_id=f.opt_id("msgId"),
        user=_user(f),
        like_count=f.req_count("likeCount"),
        total_like_count=f.maybe_count("totalLikeCount", maximum=MAX_SCORE),
        received_at=raw.received_at,
        wall_ms=raw.wall_ms,
    )


def _member(f: _Fields, raw: RawRecord) -> Event:
    return MemberJoined(
        msg_id=f.opt_id("msgId"),
        user=_user(f),
        received_at=raw.received_at,
        wall_ms=raw.wall_ms,
    )


def _social_action(action: Literal["follow", "share"]) -> Callable[[_Fields, RawRecord], Event]:
    def parse(f: _Fields, raw: RawRecord) -> Event:
        return SocialAction(
            msg_id=f.opt_id("msgId"),
            user=_user(f),
            action=action,
            received_at=raw.received_at,
            wall_ms=raw.wall_ms,
        )

    return parse


_follow = _social_action("follow")
_share = _social_action("share")


def _social(f: _Fields, raw: RawRecord) -> Event:
    display = f.req_str("displayType", limit=MAX_TEXT_LENGTH).lower()
    if "follow" in display:
        return _follow(f, raw)
    if "share" in display:
        return _share(f, raw)
    raise _Ignore("social:other")


def _room_user(f: _Fields, raw: RawRecord) -> Event:
    return ViewerCount(
        msg_id=f.opt_id("msgId"),
        viewer_count=f.req_count("viewerCount"),
        received_at=raw.received_at,
        wall_ms=raw.wall_ms,
    )


def _battle_status(f: _Fields) -> Literal["active", "ended"]:
    if f.has("status"):
        text = f.req_str("status").strip().lower()
        if text in _ACTIVE_STATUSES:
            return "active"
        if text in _ENDED_STATUSES:
            return "ended"
        raise _Ignore("linkMicBattle:other")
    if f.has("battleStatus"):
        code = f.req_count("battleStatus")
        status = _BATTLE_STATUS_CODES.get(code)
        if status is None:
            raise _Ignore("linkMicBattle:other")
        return status
    raise _Refusal(
        "missing_field",
        f"missing status @ {f.where('status')} or {f.where('battleStatus')}",
    )


def _hosts(f: _Fields) -> tuple[User, ...]:
    found = _alternative_list(f, "battleUsers", "hosts")
    if found is None:
        return ()
    key, values = found
    hosts: list[User] = []
    seen: set[str] = set()
    for index, value in enumerate(values):
        host = _user(f.item(key, index, value))
        if host.user_id not in seen:
            seen.add(host.user_id)
            hosts.append(host)
    return tuple(hosts)


def _link_mic_battle(f: _Fields, raw: RawRecord) -> Event:
    battle_id = f.req_id("battleId")
    status = _battle_status(f)
    duration_key = f.first_present("battleDuration", "duration") or "battleDuration"
    return BattleStatus(
        msg_id=f.opt_id("msgId"),
        battle_id=battle_id,
        status=status,
        hosts=_hosts(f),
        duration_s=f.maybe_count(duration_key, maximum=MAX_SCORE),
        received_at=raw.received_at,
        wall_ms=raw.wall_ms,
    )


def _score(f: _Fields, keys: tuple[str, ...], *, required: bool) -> int:
    key = f.first_present(*keys)
    if key is None:
        if required:
            raise _Refusal(
                "missing_field",
                f"missing {keys[0]} @ {f.where(keys[0])} (or {', '.join(keys[1:])})",
            )
        return 0
    return f.req_count(key, maximum=MAX_SCORE)


def _army(f: _Fields) -> Army:
    host_user_id = f.req_id("hostUserId")
    score = _score(f, ("points", "score", "hostScore"), required=True)
    supporters: list[Supporter] = []
    found = _alternative_list(f, "participants", "supporters")
    if found is not None:
        key, values = found
        for index, value in enumerate(values):
            entry = f.item(key, index, value)
            supporters.append(
                Supporter(
                    user=_user(entry), score=_score(entry, ("points", "score"), required=False)
                )
            )
    return Army(host_user_id=host_user_id, score=score, supporters=tuple(supporters))


def _link_mic_armies(f: _Fields, raw: RawRecord) -> Event:
    battle_id = f.req_id("battleId")
    found = _alternative_list(f, "battleArmies", "armies")
    if found is None:
        raise _Refusal(
            "missing_field", f"missing battleArmies @ {f.where('battleArmies')} (or armies)"
        )
    key, values = found
    armies = tuple(_army(f.item(key, index, value)) for index, value in enumerate(values))
    return BattleArmies(
        msg_id=f.opt_id("msgId"),
        battle_id=battle_id,
        armies=armies,
        received_at=raw.received_at,
        wall_ms=raw.wall_ms,
    )


def _stream_end(f: _Fields, raw: RawRecord) -> Event:
    return StreamEnded(msg_id=f.opt_id("msgId"), received_at=raw.received_at, wall_ms=raw.wall_ms)


def _stream_pause(f: _Fields, raw: RawRecord) -> Event:
    return StreamPaused(msg_id=f.opt_id("msgId"), received_at=raw.received_at, wall_ms=raw.wall_ms)


def _stream_resume(f: _Fields, raw: RawRecord) -> Event:
    return StreamResumed(msg_id=f.opt_id("msgId"), received_at=raw.received_at, wall_ms=raw.wall_ms)


_CONTROL_ACTIONS: Final[Mapping[int, Callable[[_Fields, RawRecord], Event]]] = {
    # TikTok's ControlAction (tiktok-live-proto, TikTokLive): 1 STREAM_PAUSED,
    # 2 STREAM_UNPAUSED, 3 STREAM_ENDED, 4 STREAM_SUSPENDED (ended for good).
    1: _stream_pause,
    2: _stream_resume,
    3: _stream_end,
    4: _stream_end,
}
_CONTROL_ACTION_NAMES: Final[Mapping[str, int]] = {
    "paused": 1,
    "unpaused": 2,
    "ended": 3,
    "suspended": 4,
}


def _control_message(f: _Fields, raw: RawRecord) -> Event:
    """TikTok-Live-Connector's ``controlMessage``: ``action`` as TikTok's number, or
    its name (``CONTROL_ACTION_STREAM_PAUSED`` or just ``paused``, any case)."""
    value = f.raw("action")
    if value is None:
        raise _Refusal("missing_field", f"missing action @ {f.where('action')}")
    if isinstance(value, str):
        name = value.strip().lower().removeprefix("control_action_").removeprefix("stream_")
        code = _CONTROL_ACTION_NAMES.get(name, 0)
    else:
        code = f.req_count("action")
    parser = _CONTROL_ACTIONS.get(code)
    if parser is None:
        raise _Ignore("controlMessage:other")
    return parser(f, raw)


_PARSERS: Final[Mapping[str, Callable[[_Fields, RawRecord], Event]]] = {
    "gift": _gift,
    "chat": _chat,
    "like": _like,
    "member": _member,
    "social": _social,
    "follow": _follow,
    "share": _share,
    "roomUser": _room_user,
    "linkMicBattle": _link_mic_battle,
    "linkMicArmies": _link_mic_armies,
    "streamEnd": _stream_end,
    "liveEnd": _stream_end,
    "livePause": _stream_pause,
    "liveUnpause": _stream_resume,
    "controlMessage": _control_message,
}
