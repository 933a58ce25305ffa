"""A room's state as bytes and back: the format of the store and of state exports.

Pure, like the rest of ``core``: no file, no clock. The store writes what
:func:`state_to_bytes` returns and restores with :func:`state_from_bytes`; ``meksd
state export`` prints the same bytes and ``meksd state import`` reads them.

The format is UTF-8 JSON (stdlib ``json``), versioned, one object::

    {"format": "meksd.room-state", "version": 2, "seq": 1832,
     "state": {"room_id": ..., "epoch": ..., "config": {...}, "leaderboard": [...],
               "totals": {...}, "viewers": ..., "live": ..., "battle": ...,
               "chat": [...], "streaks": [[key, streak], ...],
               "closed_streaks": [[key, streak], ...],
               "dedup": {"capacity": ..., "segment": ..., "current": [...],
                         "sealed": [[...], ...]},
               "counter": ..., "events": ..., "duplicates": ..., "streaks_timed_out": ...}}

``state`` holds every field of :class:`~meksd.model.state.RoomState` under its own
name (cattrs, attrs field order). The persistent maps are written sorted by key:
leaderboard rows as a list ordered by ``user_id``; remembered msgIds as sorted
strings per segment (the open one, then the sealed ones, newest first); maps
with tuple keys (streaks) as ``[[user_id, gift_id, group_id], value]`` pairs;
other string-keyed maps (remembered command ids) as objects. So equal states give
equal bytes and ``state_to_bytes(*state_from_bytes(b)) == b``. A field added
to the state later with a default reads older documents (the default fills in);
removing or retyping one needs a new version.

Times: streak ``last_at`` values are on whatever clock the caller used. The shell
runs on trio's monotonic clock, which means nothing in another process, so it
rebases them to unix seconds before writing and back after reading
(:func:`rebase_clock`); exported files therefore carry wall-clock times.

Reading is strict, like the configuration: wrong types, unknown or missing keys,
another format or a newer version raise :class:`PersistError` with a message that
says what and where (``expected int @ $.state.totals.diamonds``). Nothing else
escapes :func:`state_from_bytes`, whatever the bytes.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, Literal, get_args, get_origin, get_type_hints

import attrs
import cattrs
import immutables
import orjson
from cattrs.errors import ForbiddenExtraKeysError, IterableValidationError, IterableValidationNote

from meksd.core.dedup import segments
from meksd.core.strict import Invalid as _Invalid
from meksd.core.strict import register_strict_primitives
from meksd.model.commands import CommandMemory
from meksd.model.events import GiftKey
from meksd.model.state import Dedup, LeaderRow, RoomState, Streak

__all__ = [
    "FORMAT",
    "HEAD_FORMAT",
    "VERSION",
    "Part",
    "PartsWrite",
    "PersistError",
    "parts_dump",
    "rebase_clock",
    "state_from_bytes",
    "state_from_parts",
    "state_to_bytes",
    "state_to_parts",
]

FORMAT: Final = "meksd.room-state"
"""The ``format`` tag of every document this module writes."""
VERSION: Final = 2
"""The version written; reading accepts versions up to this one. Version 1 kept the
msgId memory in two generations (``current``, ``previous``); it reads as one sealed
segment."""
HEAD_FORMAT: Final = "meksd.room-head"
"""The ``format`` tag of a store head (:func:`state_to_parts`)."""


MAX_PROBLEMS: Final = 5
"""Problems named in one ``PersistError`` message (the count of the rest follows)."""


class PersistError(ValueError):
    """Bytes that are not a room state this version can read; the message says why."""


# --------------------------------------------------------------------------- writing


def state_to_bytes(state: RoomState, seq: int) -> bytes:
    """``state`` at ``seq`` in the versioned JSON format. Pure and deterministic.

    Safe to call from a worker thread: the state is an immutable value.
    """
    head = _dumps({"format": FORMAT, "version": VERSION, "seq": seq})[:-1]
    return "".join([head, ',"state":', *_pieces(state, RoomState), "}"]).encode()


CHUNK: Final = 256
"""Most array items handed to the C JSON encoder in one call (see :func:`_pieces`)."""


def _pieces(value: Any, t: Any) -> Iterator[str]:
    """The JSON of ``_converter.unstructure(value, t)`` (compact), in pieces.

    The same document ``json.loads`` would read back from ``_dumps`` of the whole
    unstructured value, but produced one small part at a time, so that encoding a big
    room in the writer thread does not stall the event loop's thread:

    - an encoder call holds the GIL for the whole of one call, so no call gets more
      than ``CHUNK`` items (2 MB in one stdlib call held it for ~30 ms);
    - rows are unstructured a chunk at a time, so at most ``CHUNK`` temporary dicts
      live together: a whole room's worth of them set off full collections (40-70 ms
      pauses of every thread) when the state was unstructured in one go.

    A chunk holding a lone surrogate from a feed's text is written by the stdlib
    encoder with ``\\u`` escapes (see :func:`_dumps`): it survives the trip.
    """
    if t is Dedup:
        yield f'{{"capacity":{_dumps(value.capacity)},"segment":{_dumps(value.segment)}'
        yield ',"current":'
        yield from _array(sorted(value.current), str)
        yield ',"sealed":['
        for i, segment in enumerate(value.sealed):
            yield "," if i else ""
            yield from _array(sorted(segment), str)
        yield "]}"
    elif t == _BOARD:
        yield from _array([value[k] for k in sorted(value)], LeaderRow)
    elif _is_map(t):
        key_type, value_type = get_args(t)
        keys = sorted(value)
        if key_type is str:
            yield "{"
            for i in range(0, len(keys), CHUNK):
                part = {
                    k: _converter.unstructure(value[k], value_type) for k in keys[i : i + CHUNK]
                }
                yield ("," if i else "") + _dumps(part)[1:-1]
            yield "}"
        else:
            pair = tuple[key_type, value_type]  # type: ignore[valid-type]
            yield from _array([(k, value[k]) for k in keys], pair)
    elif attrs.has(t):
        for i, (name, field_type) in enumerate(_fields(t)):
            yield ("{" if i == 0 else ",") + _dumps(name) + ":"
            yield from _pieces(getattr(value, name), field_type)
        yield "}"
    elif get_origin(t) is tuple and get_args(t)[1:] == (Ellipsis,) and len(value) > CHUNK:
        yield from _array(value, get_args(t)[0])
    else:
        yield _dumps(_converter.unstructure(value, t))


def _array(items: Sequence[Any], t: Any) -> Iterator[str]:
    """``items`` (of type ``t``) as a JSON array, ``CHUNK`` at a time."""
    yield "["
    for i in range(0, len(items), CHUNK):
        part = [_converter.unstructure(item, t) for item in items[i : i + CHUNK]]
        yield ("," if i else "") + _dumps(part)[1:-1]
    yield "]"


@functools.cache
def _fields(cls: type) -> tuple[tuple[str, Any], ...]:
    hints = get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in attrs.fields(cls))


def _dumps(value: object) -> str:
    """Compact JSON of ``value``: orjson's (UTF-8), or, for what orjson refuses (a
    lone surrogate from a feed's text, an int beyond 64 bits), the stdlib's, ASCII
    with ``\\u`` escapes, so that such text survives the trip. Either reads back the
    same; orjson is ~10x faster on the chat history every flush re-encodes."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))


# --------------------------------------------------------------------------- reading


def state_from_bytes(data: bytes) -> tuple[RoomState, int]:
    """The state and seq that :func:`state_to_bytes` wrote. Raises only ``PersistError``."""
    doc, seq = _header(data, (FORMAT,))
    if "state" not in doc:
        raise PersistError("required key missing @ $.state")
    return _structure_state(doc["state"]), seq


def _header(data: bytes, formats: tuple[str, ...]) -> tuple[dict[str, Any], int]:
    """The document in ``data`` (tagged with one of ``formats``) and its seq, checked."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PersistError(f"not UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise PersistError("not a room state: nested too deeply") from None
    if type(doc) is not dict:
        raise PersistError("not a room state: expected a JSON object @ $")
    if doc.get("format") not in formats:
        names = " or ".join(repr(f) for f in formats)
        raise PersistError(f"not a room state: format is not {names} @ $.format")
    version = doc.get("version")
    if type(version) is not int or not 1 <= version <= VERSION:
        raise PersistError(
            f"unsupported version {version!r} (this meksd reads 1..{VERSION}) @ $.version"
        )
    extra = doc.keys() - {"format", "version", "seq", "state"}
    if extra:
        raise PersistError(f"unknown key {sorted(extra)[0]!r} @ $")
    seq = doc.get("seq")
    if type(seq) is not int or seq < 0:
        raise PersistError("expected non-negative int @ $.seq")
    return doc, seq


def _structure_state(obj: object) -> RoomState:
    try:
        return _converter.structure(obj, RoomState)
    except Exception as exc:
        lines = cattrs.transform_error(exc, path="$.state", format_exception=_format_exception)
        more = f"; and {len(lines) - MAX_PROBLEMS} more" if len(lines) > MAX_PROBLEMS else ""
        raise PersistError("; ".join(lines[:MAX_PROBLEMS]) + more) from None


# --------------------------------------------------------------------------- store parts

PartKind = Literal["leader", "streak", "closed", "msgids"]
"""Rows of a room kept apart from its head, one per leaderboard row (``leader``, key
``user_id``), open or closed streak (``streak``/``closed``, key ``[user, gift,
group]`` as JSON) and msgId segment (``msgids``, key the segment's number ``N``; or
``N.M``, a *piece* of segment ``N``: the ids it gained after holding ``M``).

Deleting the part ``msgids N`` deletes its pieces with it (``meksd.runtime.storedb``)."""

Part = tuple[str, str, bytes]
"""(kind, key, value): a value is the JSON of one row, or of a segment's (or piece's) ids."""


@attrs.frozen
class PartsWrite:
    """What to change in the store to hold a state: its head and the parts that moved."""

    head: bytes
    """The document without the parts (``format`` is :data:`HEAD_FORMAT`)."""
    upserts: tuple[Part, ...]
    deletes: tuple[tuple[str, str], ...]
    """(kind, key) of parts that are gone."""
    full: bool
    """Every part of the state is in ``upserts``: drop whatever else the store holds."""


_PARTED: Final = {"leaderboard", "streaks", "closed_streaks"}
_MISSING: Final = object()


def state_to_parts(
    state: RoomState, seq: int, *, base: RoomState | None = None, offset: float = 0.0
) -> PartsWrite:
    """``state`` at ``seq`` for the store, as the change from ``base``. Pure.

    ``base`` is the state whose parts the store holds now (None: nothing, write all).
    States are persistent maps, so a row or segment unchanged since ``base`` is the
    same object: only those that are not (or are gone) are encoded, at a cost of one
    identity check per row of a map that changed at all. A sealed msgId segment never
    changes, so it is written once. The open one only grows: while it fills, each
    write adds a piece with the ids it gained (at 500 events/s a flush writes ~125
    ids, not the up to ~1,250 of the whole segment again); once sealed it is written
    whole and its pieces are dropped.
    ``offset`` is added to streak times (``rebase_clock``) in what is encoded.

    Safe to call from a worker thread: states are immutable values.
    """
    ups: list[Part] = []
    dels: list[tuple[str, str]] = []
    old = base if base is not None else _EMPTY_STATE

    def streak(value: Streak) -> bytes:
        value = attrs.evolve(value, last_at=value.last_at + offset) if offset else value
        return _encode(value, Streak)

    _map_changes("leader", old.leaderboard, state.leaderboard, str, _encode_row, ups, dels)
    _map_changes("streak", old.streaks, state.streaks, _key, streak, ups, dels)
    _map_changes("closed", old.closed_streaks, state.closed_streaks, _key, streak, ups, dels)
    before = segments(old.dedup) if base is not None else {}
    after = segments(state.dedup)
    for number, ids in after.items():
        prior = before.get(number)
        if prior is ids:
            continue
        if number == state.dedup.segment and prior is not None and len(prior) < len(ids):
            gained = [i for i in ids if i not in prior]
            if len(gained) == len(ids) - len(prior):  # it only grew: a piece will do
                ups.append(("msgids", f"{number}.{len(prior)}", _dumps(gained).encode()))
                continue
        if prior is not None:
            dels.append(("msgids", str(number)))  # its pieces go with it
        # In the map's order, not sorted: a segment is a set (sorting the open one at
        # every flush was most of a flush's cost at 25 rooms).
        ups.append(("msgids", str(number), _dumps(list(ids)).encode()))
    dels.extend(("msgids", str(n)) for n in before if n not in after)
    return PartsWrite(_head(state, seq), tuple(ups), tuple(dels), full=base is None)


_EMPTY_STATE: Final = RoomState(room_id="", epoch="")


def _head(state: RoomState, seq: int) -> bytes:
    pieces = [_dumps({"format": HEAD_FORMAT, "version": VERSION, "seq": seq})[:-1], ',"state":']
    first = True
    for name, field_type in _fields(RoomState):
        if name in _PARTED:
            continue
        pieces.append(("{" if first else ",") + _dumps(name) + ":")
        first = False
        if name == "dedup":
            dedup = state.dedup
            pieces.append(_dumps({"capacity": dedup.capacity, "segment": dedup.segment}))
        else:
            value = getattr(state, name)
            # Long tuples (chat, replies) and the command memory's maps can be big:
            # those go in pieces; the rest in one call each.
            if (isinstance(value, tuple) and len(value) > CHUNK) or field_type is CommandMemory:
                pieces.extend(_pieces(value, field_type))
            else:  # small: one encoder call beats the walk field by field (5x)
                pieces.append(_dumps(_converter.unstructure(value, field_type)))
    pieces.append("}}")
    return "".join(pieces).encode()


def _map_changes(
    kind: str,
    old: immutables.Map[Any, Any],
    new: immutables.Map[Any, Any],
    key: Callable[[Any], str],
    value: Callable[[Any], bytes],
    ups: list[Part],
    dels: list[tuple[str, str]],
) -> None:
    if old is new:
        return
    added = 0
    get = old.get
    for k, v in new.items():
        prior = get(k, _MISSING)
        if prior is not v:
            added += prior is _MISSING
            ups.append((kind, key(k), value(v)))
    if len(new) != len(old) + added:
        dels.extend((kind, key(k)) for k in old if k not in new)


def _key(key: GiftKey) -> str:
    return _dumps(list(key))


def _encode_row(row: LeaderRow) -> bytes:
    return _encode(row, LeaderRow)


def _encode(value: object, t: type) -> bytes:
    return _dumps(_converter.unstructure(value, t)).encode()


def state_from_parts(head: bytes, parts: Iterable[Part]) -> tuple[RoomState, int]:
    """The state and seq a store head and its parts hold. Raises only ``PersistError``.

    ``head`` may also be a whole document (:func:`state_to_bytes`, as version 1 stores
    held): then there are no parts.
    """
    parts = list(parts)
    doc, seq = _header(head, (HEAD_FORMAT, FORMAT))
    if doc["format"] == FORMAT:
        if parts:
            raise PersistError(f"a whole {FORMAT!r} document has no parts @ $.format")
        if "state" not in doc:
            raise PersistError("required key missing @ $.state")
        return _structure_state(doc["state"]), seq
    state = doc.get("state")
    if type(state) is not dict:
        raise PersistError("expected an object @ $.state")
    for name in _PARTED:
        if name in state:
            raise PersistError(f"unknown key {name!r} @ $.state")
    dedup = state.get("dedup")
    if type(dedup) is not dict or dedup.keys() != {"capacity", "segment"}:
        raise PersistError("expected {capacity, segment} @ $.state.dedup")
    board: dict[str, object] = {}
    streaks: dict[str, list[object]] = {"streak": [], "closed": []}
    ids: dict[int, object] = {}
    pieces: list[tuple[int, int, object, str]] = []
    for kind, key, value in parts:
        where = f"part {kind} {key[:60]!r}"
        segment_key = _segment_key(key) if kind == "msgids" else None
        if kind not in ("leader", "streak", "closed") and segment_key is None:
            raise PersistError(f"unknown {where}")
        try:
            decoded = json.loads(value)
            if kind == "leader":
                board[key] = decoded
            elif segment_key is not None:
                number, offset = segment_key
                if offset is None:
                    ids[number] = decoded
                else:
                    pieces.append((number, offset, decoded, where))
            else:
                streaks[kind].append([json.loads(key), decoded])
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise PersistError(f"{where}: not JSON") from None
    for number, _, decoded, where in sorted(pieces, key=lambda p: p[:2]):
        if number not in ids:
            raise PersistError(f"{where}: a piece of segment {number}, which is missing")
        whole = ids[number]
        if type(whole) is not list or type(decoded) is not list:
            raise PersistError(f"{where}: expected an array of msgIds")
        ids[number] = whole + decoded
    segment = dedup["segment"]
    if type(segment) is int and any(n > segment for n in ids):
        raise PersistError(f"part msgids {max(ids)} is newer than segment {segment}")
    state = {
        **state,
        "leaderboard": [board[k] for k in sorted(board)],
        "streaks": streaks["streak"],
        "closed_streaks": streaks["closed"],
        "dedup": {
            **dedup,
            "current": ids.pop(segment, []) if type(segment) is int else [],
            "sealed": [ids[n] for n in sorted(ids, reverse=True)],
        },
    }
    return _structure_state(state), seq


def _segment_key(key: str) -> tuple[int, int | None] | None:
    """``N`` gives (N, None); a piece ``N.M`` gives (N, M); anything else None."""
    number, dot, offset = key.partition(".")
    if not (number.isascii() and number.isdigit()):
        return None
    if not dot:
        return int(number), None
    if not (offset.isascii() and offset.isdigit()):
        return None
    return int(number), int(offset)


def parts_dump(head: bytes, parts: Iterable[Part]) -> bytes:
    """A head and its parts as one blob, for the history of rows that do not decode
    (kept as evidence; :func:`state_from_parts` need not read it)."""
    lines = [head] + [b"%s\t%s\t%s" % (k.encode(), key.encode(), v) for k, key, v in parts]
    return b"\n".join(lines)


# --------------------------------------------------------------------------- transitions


def rebase_clock(state: RoomState, offset: float) -> RoomState:
    """``state`` with every streak time moved by ``offset`` seconds (clock change)."""
    if offset == 0:
        return state

    def shift(streaks: immutables.Map[GiftKey, Streak]) -> immutables.Map[GiftKey, Streak]:
        m = streaks.mutate()
        for key, streak in streaks.items():
            m[key] = attrs.evolve(streak, last_at=streak.last_at + offset)
        return m.finish()

    return attrs.evolve(
        state, streaks=shift(state.streaks), closed_streaks=shift(state.closed_streaks)
    )


# --------------------------------------------------------------------------- converter


def _is_tuple(t: Any) -> bool:
    return get_origin(t) is tuple


def _structure_tuple(obj: object, t: Any) -> tuple[Any, ...]:
    """Arrays only (not strings, not objects); a fixed-size tuple needs its exact length."""
    if type(obj) is not list:
        raise _Invalid("expected array")
    args = get_args(t)
    if len(args) == 2 and args[1] is Ellipsis:
        types = [args[0]] * len(obj)
    elif len(obj) != len(args):
        raise _Invalid(f"expected an array of {len(args)}")
    else:
        types = list(args)
    items: list[Any] = []
    errors: list[Exception] = []
    for i, (value, elem) in enumerate(zip(obj, types, strict=True)):
        try:
            items.append(_converter.structure(value, elem))
        except Exception as exc:
            exc.add_note(IterableValidationNote(f"Structuring {t!r} @ index {i}", i, elem))
            errors.append(exc)
    if errors:
        raise IterableValidationError(f"While structuring {t!r}", errors, t)
    return tuple(items)


_BOARD = immutables.Map[str, LeaderRow]


def _leaderboard_out(board: immutables.Map[str, LeaderRow]) -> list[Any]:
    return [_converter.unstructure(board[k], LeaderRow) for k in sorted(board)]


def _leaderboard_in(obj: object, _: object) -> immutables.Map[str, LeaderRow]:
    rows = _converter.structure(obj, tuple[LeaderRow, ...])
    board = immutables.Map((row.user_id, row) for row in rows)
    if len(board) != len(rows):
        raise _Invalid("duplicate user_id")
    return board


def _is_map(t: Any) -> bool:
    return get_origin(t) is immutables.Map


def _map_out_factory(t: Any) -> Callable[[immutables.Map[Any, Any]], Any]:
    """Any other map: an object sorted by key when keys are strings, else a list of
    ``[key, value]`` pairs sorted by key."""
    key_type, value_type = get_args(t)

    def by_name(m: immutables.Map[str, Any]) -> dict[str, Any]:
        return {k: _converter.unstructure(m[k], value_type) for k in sorted(m)}

    def by_pair(m: immutables.Map[Any, Any]) -> list[Any]:
        return [
            [_converter.unstructure(k, key_type), _converter.unstructure(m[k], value_type)]
            for k in sorted(m)
        ]

    return by_name if key_type is str else by_pair


def _map_in_factory(t: Any) -> Callable[[object, Any], immutables.Map[Any, Any]]:
    key_type, value_type = get_args(t)
    pairs_type = tuple[tuple[key_type, value_type], ...]  # type: ignore[valid-type]

    def by_name(obj: object, _: Any) -> immutables.Map[str, Any]:
        if type(obj) is not dict:
            raise _Invalid("expected an object")
        return immutables.Map(_converter.structure(obj, dict[str, value_type]))  # type: ignore[valid-type]

    def by_pair(obj: object, _: Any) -> immutables.Map[Any, Any]:
        pairs = _converter.structure(obj, pairs_type)
        m = immutables.Map(pairs)
        if len(m) != len(pairs):
            raise _Invalid("duplicate key")
        return m

    return by_name if key_type is str else by_pair


def _ids_in(obj: object, name: str) -> immutables.Map[str, None]:
    if type(obj) is not list:
        raise _Invalid(f"expected array @ {name}")
    for i, value in enumerate(obj):
        if type(value) is not str:
            raise _Invalid(f"expected string @ {name}[{i}]")
    return immutables.Map(dict.fromkeys(obj))


def _dedup_out(dedup: Dedup) -> dict[str, Any]:
    return {
        "capacity": dedup.capacity,
        "segment": dedup.segment,
        "current": sorted(dedup.current),
        "sealed": [sorted(segment) for segment in dedup.sealed],
    }


_DEDUP_V2 = frozenset({"capacity", "segment", "current", "sealed"})
_DEDUP_V1 = frozenset({"capacity", "current", "previous"})


def _dedup_in(obj: object, _: object) -> Dedup:
    """Version 2's segments, or version 1's two generations (``previous`` becomes the
    one sealed segment)."""
    if type(obj) is not dict:
        raise _Invalid("expected an object")
    shape = _DEDUP_V1 if "previous" in obj else _DEDUP_V2
    extra = obj.keys() - shape
    if extra:
        raise _Invalid(f"unknown key {sorted(extra)[0]!r}")
    capacity = obj.get("capacity")
    if type(capacity) is not int or capacity < 2:
        raise _Invalid("expected int >= 2 @ capacity")
    current = _ids_in(obj.get("current"), "current")
    if shape is _DEDUP_V1:
        previous = _ids_in(obj.get("previous"), "previous")
        sealed = (previous,) if previous else ()
        return Dedup(capacity, current, sealed, len(sealed))
    segment = obj.get("segment")
    if type(segment) is not int or segment < 0:
        raise _Invalid("expected non-negative int @ segment")
    segments = obj.get("sealed")
    if type(segments) is not list:
        raise _Invalid("expected array @ sealed")
    if len(segments) > segment:
        raise _Invalid(f"{len(segments)} sealed segments, more than segment {segment} @ sealed")
    found = tuple(_ids_in(ids, f"sealed[{i}]") for i, ids in enumerate(segments))
    return Dedup(capacity, current, found, segment)


def _format_exception(exc: BaseException, type_: type | None) -> str:
    if isinstance(exc, _Invalid):
        return str(exc)
    if isinstance(exc, KeyError):
        return "required key missing"
    if isinstance(exc, ForbiddenExtraKeysError):
        keys = ", ".join(repr(k) for k in sorted(exc.extra_fields))
        return f"unknown key {keys}"
    if get_origin(type_) is Literal:
        return "expected one of " + ", ".join(repr(v) for v in get_args(type_))
    return cattrs.v.format_exception(exc, type_)


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    register_strict_primitives(conv)
    conv.register_structure_hook_func(_is_tuple, _structure_tuple)
    conv.register_structure_hook(Dedup, _dedup_in)
    conv.register_unstructure_hook(Dedup, _dedup_out)
    # Later registrations take precedence: the general map hooks first.
    conv.register_structure_hook_factory(_is_map, _map_in_factory)
    conv.register_unstructure_hook_factory(_is_map, _map_out_factory)
    conv.register_structure_hook_func(lambda t: t == _BOARD, _leaderboard_in)
    conv.register_unstructure_hook_func(lambda t: t == _BOARD, _leaderboard_out)
    return conv


_converter = _make_converter()
