"""The feed normalizer against hostile records: nesting depth, huge numbers, invalid UTF-8."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meksd.core import normalize as normalize_mod
from meksd.core.normalize import MAX_DEPTH, REASONS, normalize
from meksd.model.events import Event, Rejected, Unknown
from tests.strategies import PROPERTY, encode, hostile_envelopes, json_values, raw, valid_envelopes


def depth(value: Any) -> int:
    """Nesting depth of arrays/objects (a scalar is 0), the reference definition."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def check(results: list[Any]) -> None:
    for result in results:
        assert isinstance(result, Event | Rejected | Unknown)
        if isinstance(result, Rejected):
            assert result.reason in REASONS - {"normalizer_error"}, result


nested = st.recursive(
    st.integers(0, 3),
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=2),
        st.dictionaries(st.sampled_from(["user", "data", "x"]), children, min_size=1, max_size=2),
    ),
    max_leaves=12,
)


@PROPERTY
@given(nested, st.integers(min_value=2, max_value=8))
def test_records_deeper_than_max_depth_are_too_deep(extra: Any, limit: int) -> None:
    """A record is too_deep exactly when its nesting exceeds max_depth; otherwise it is read as usual."""
    doc = {"event": "chat", "data": {"msgId": 1, "userId": 2, "comment": "x", "extra": extra}}
    results = normalize(raw(encode(doc)), max_depth=limit)
    if depth(doc) > limit:
        assert results == [Rejected("too_deep", f"nested deeper than {limit} levels")]
    else:
        assert len(results) == 1 and not (
            isinstance(results[0], Rejected) and results[0].reason == "too_deep"
        )


def test_the_deepest_valid_record_fits_the_default_depth() -> None:
    """An array of linkMicArmies envelopes with nested supporter users (8 deep) is accepted by default."""
    army = {
        "hostUserId": 1,
        "points": 5,
        "participants": [{"user": {"userId": 3, "nickname": "n"}, "points": 2}],
    }
    doc = [{"event": "linkMicArmies", "data": {"battleId": 9, "battleArmies": [army]}}]
    assert depth(doc) == 8 <= MAX_DEPTH
    (result,) = normalize(raw(encode(doc)))
    assert isinstance(result, Event)


@pytest.mark.parametrize("n", [33, 200, 900])
def test_deep_but_parseable_nesting_is_too_deep(n: int) -> None:
    """Nesting the parser can take but deeper than the limit is too_deep, inside data or at the top."""
    inner = "[" * n + "]" * n
    for payload in (inner, '{"event":"gift","data":{"user":' + inner + "}}"):
        assert normalize(raw(payload), max_bytes=10**6) == [
            Rejected("too_deep", f"nested deeper than {MAX_DEPTH} levels")
        ]


def test_brackets_inside_strings_do_not_count() -> None:
    """Brackets in string values are text, not nesting: such a chat message is accepted."""
    doc = {"event": "chat", "data": {"msgId": 1, "userId": 2, "comment": "[{" * 500}}
    (result,) = normalize(raw(encode(doc)))
    assert isinstance(result, Event)


bad_utf8 = st.sampled_from(
    [b"\xff", b"\xfe", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"]
)


@PROPERTY
@given(valid_envelopes, bad_utf8, st.data())
def test_invalid_utf8_anywhere_is_not_json(
    case: tuple[dict[str, Any], Event], bad: bytes, data: st.DataObject
) -> None:
    """A byte sequence that is not UTF-8 anywhere in a record rejects it as not_json."""
    payload = encode(case[0])
    at = data.draw(st.integers(0, len(payload)))
    (result,) = normalize(raw(payload[:at] + bad + payload[at:]))
    assert isinstance(result, Rejected) and result.reason == "not_json"
    assert result.detail.startswith("payload is not UTF-8")


number_literals = st.one_of(
    st.integers(min_value=-(10**60), max_value=10**60).map(str),
    st.integers(min_value=41, max_value=6000).map(lambda n: "9" * n),
    st.sampled_from(
        ["1e400", "-1e400", "1e-400", "NaN", "Infinity", "-Infinity", "-0", "0.0", "1E2"]
    ),
    st.integers(min_value=1, max_value=5000).map(lambda n: "1." + "0" * n + "1"),
)
NUMBER_FIELDS = ("msgId", "userId", "giftId", "diamondCount", "repeatCount", "giftType", "groupId")


@PROPERTY
@given(st.sampled_from(NUMBER_FIELDS), number_literals)
def test_huge_and_odd_numbers_are_values_not_crashes(field: str, literal: str) -> None:
    """Huge integers, overflowing floats, NaN/Infinity in any numeric field are refused or taken, never raised."""
    base = {"msgId": 1, "userId": 2, "giftId": 3, "diamondCount": 4, "repeatCount": 1}
    base[field] = 0
    text = json.dumps({"event": "gift", "data": base}).replace(
        f'"{field}": 0', f'"{field}": {literal}'
    )
    results = normalize(raw(text), max_bytes=10**6)
    check(results)
    (result,) = results
    if isinstance(result, Rejected):
        assert f"data.{field}" in result.detail


@PROPERTY
@given(st.one_of(hostile_envelopes, json_values), st.integers(min_value=2, max_value=40))
def test_any_json_with_any_depth_limit_never_raises(doc: Any, limit: int) -> None:
    """Any JSON document with any depth limit gives events, Unknown or documented rejections."""
    check(normalize(raw(encode(doc)), max_depth=limit))


_EDGE_NUMBERS = st.sampled_from(
    [
        "18446744073709551615",  # u64 max: orjson keeps it an int
        "18446744073709551616",  # one more: orjson would give a float
        "-9223372036854775808",
        "-9223372036854775809",
        "1" * 41,  # more than _MAX_INT_DIGITS: the stdlib path's _HugeInt
        "1e400",
        "-0",
        "NaN",
        "Infinity",
        '"\\ud800"',  # a lone surrogate, escaped
        '"\\udc00\\ud800x"',
    ]
)


@PROPERTY
@given(
    json_values,
    st.lists(_EDGE_NUMBERS, max_size=3),
    st.booleans(),
)
def test_the_fast_json_path_reads_exactly_what_the_stdlib_reads(
    value: Any, edges: list[str], ascii_only: bool
) -> None:
    """orjson reads a payload only when it gives the very document the stdlib (with the
    normalizer's int limit) gives: big integers, NaN, lone surrogates and every error
    take the stdlib's path, so the events are the same either way."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    if edges:
        text = "[" + ",".join([text, *edges]) + "]"
    fast = normalize_mod._loads(text)
    slow = normalize_mod._slow_loads(text)
    assert repr(fast) == repr(slow)  # repr: NaN != NaN, and 1 == 1.0 == True
    assert type(fast) is type(slow)
