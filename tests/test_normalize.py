"""The normalizer: untrusted feed records in, events or reasons out, never an exception."""

from __future__ import annotations

import json
from typing import Any, Literal

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meksd.core.normalize import MAX_ID_LENGTH, REASONS, normalize
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
    Supporter,
    Unknown,
    User,
    ViewerCount,
)
from tests.strategies import (
    PROPERTY,
    encode,
    hostile_envelopes,
    json_values,
    raw,
    valid_envelopes,
)

EXPECTED_REASONS = REASONS - {"normalizer_error"}
Social = Literal["follow", "share"]


def one(doc: Any) -> Normalized:
    """Normalize a single envelope given as a Python value."""
    result = normalize(raw(encode(doc), received_at=12.5, wall_ms=1700))
    assert len(result) == 1
    return result[0]


def rejected(doc: Any) -> Rejected:
    result = one(doc)
    assert isinstance(result, Rejected), result
    return result


def reason_of(results: list[Normalized]) -> str:
    """The reason of a single rejection."""
    (result,) = results
    assert isinstance(result, Rejected), result
    return result.reason


def check_result(results: list[Normalized]) -> None:
    for result in results:
        assert isinstance(result, Event | Rejected | Unknown)
        if isinstance(result, Rejected):
            assert result.reason in EXPECTED_REASONS, result


# -- never raises ----------------------------------------------------------------


@PROPERTY
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(payload: bytes) -> None:
    """Any bytes give events, Unknown or Rejected with a documented reason."""
    check_result(normalize(raw(payload)))


@PROPERTY
@given(json_values)
def test_arbitrary_json_never_raises(doc: Any) -> None:
    """Any JSON document, as bytes or as str, normalizes without raising."""
    check_result(normalize(raw(encode(doc))))
    check_result(normalize(raw(json.dumps(doc))))


@PROPERTY
@given(st.one_of(hostile_envelopes, st.lists(hostile_envelopes, max_size=4)))
def test_hostile_envelopes_never_raise(doc: Any) -> None:
    """Known event types with fields of any type give events or documented reasons."""
    results = normalize(raw(encode(doc)))
    check_result(results)
    if isinstance(doc, list):
        assert len(results) == len(doc)


@PROPERTY
@given(st.text(max_size=50))
def test_arbitrary_text_never_raises(text: str) -> None:
    """Any str payload (lone surrogates included) normalizes without raising."""
    check_result(normalize(raw(text)))


@pytest.mark.parametrize("depth", [100, 5_000, 60_000])
def test_deep_nesting_is_rejected_not_raised(depth: int) -> None:
    """Deeply nested arrays or objects are not_json or bad_envelope, never RecursionError."""
    for payload in (
        b"[" * depth + b"]" * depth,
        b'{"a":' * depth + b"1" + b"}" * depth,
        b'{"event":"gift","data":{"user":' + b"[" * depth + b"]" * depth + b"}}",
    ):
        check_result(normalize(raw(payload), max_bytes=10**6))
    assert reason_of(normalize(raw(b"[" * 60_000), max_bytes=10**6)) == "not_json"


def test_huge_integers_are_bad_values() -> None:
    """Integers with thousands of digits are refused quickly as out of range."""
    big = "9" * 5000
    payload = '{"event":"gift","data":{"msgId":1,"userId":1,"giftId":1,"diamondCount":' + big + "}}"
    result = normalize(raw(payload))
    assert result == [Rejected("bad_value", "integer out of range @ data.diamondCount", "gift")]
    assert reason_of(normalize(raw(big))) == "bad_envelope"
    assert rejected(
        {"event": "chat", "data": {"msgId": 2**64, "userId": 1, "comment": ""}}
    ) == Rejected("bad_value", "integer out of range @ data.msgId", "chat")


# -- the envelope ----------------------------------------------------------------


def test_oversize_payload_is_too_large() -> None:
    """A payload longer than max_bytes is one too_large rejection, bytes or str."""
    doc = encode({"event": "chat", "data": {"msgId": 1, "userId": 1, "comment": "x" * 100}})
    assert reason_of(normalize(raw(doc), max_bytes=50)) == "too_large"
    text = json.dumps({"event": "x", "data": {"a": "é" * 15}}, ensure_ascii=False)
    assert len(text) <= 50 < len(text.encode())
    assert reason_of(normalize(raw(text), max_bytes=50)) == "too_large"


@pytest.mark.parametrize(
    "payload", [b"", b"{", b"nope", b"\xff\xfe", b'{"event": "gift",}', b"[1, 2"]
)
def test_not_json(payload: bytes) -> None:
    """Empty, truncated, non-UTF-8 or otherwise invalid JSON is not_json."""
    (result,) = normalize(raw(payload))
    assert isinstance(result, Rejected)
    assert result.reason == "not_json"


def test_utf8_bom_is_tolerated() -> None:
    """A UTF-8 byte order mark before the JSON is skipped."""
    payload = b"\xef\xbb\xbf" + encode({"event": "streamEnd", "data": {}})
    assert normalize(raw(payload, 1.0, 2)) == [StreamEnded(None, 1.0, 2)]


@pytest.mark.parametrize(
    ("doc", "detail"),
    [
        (5, "expected object or array of objects @ $, got int"),
        ("gift", "expected object or array of objects @ $, got str"),
        ({"data": {}}, "missing event @ event"),
        ({"event": 3, "data": {}}, "expected str @ event, got int"),
        ({"event": "gift", "data": []}, "expected object @ data, got array"),
        ({"event": "gift", "data": None}, "expected object @ data, got null"),
    ],
)
def test_bad_envelopes(doc: Any, detail: str) -> None:
    """Anything but {"event": str, "data": object} is bad_envelope with a reason."""
    result = rejected(doc)
    assert result.reason == "bad_envelope"
    assert result.detail == detail


def test_array_of_envelopes_gives_one_result_each() -> None:
    """An array payload yields one result per element, in order; [] yields nothing."""
    doc = [
        {"event": "streamEnd"},
        7,
        {"event": "mystery", "data": {}},
        {"event": "roomUser", "data": {"viewerCount": 3}},
    ]
    results = normalize(raw(encode(doc), 4.0, 5))
    assert results == [
        StreamEnded(None, 4.0, 5),
        Rejected("bad_envelope", "expected object @ envelope, got int"),
        Unknown("mystery"),
        ViewerCount(None, 3, 4.0, 5),
    ]
    assert normalize(raw(b"[]")) == []


def test_unknown_event_types_are_values() -> None:
    """An unhandled event type is Unknown(type), its name cut to a metric-safe length."""
    assert one({"event": "questionNew", "data": {"x": 1}}) == Unknown("questionNew")
    long = one({"event": "e" * 500, "data": {}})
    assert isinstance(long, Unknown)
    assert len(long.event_type) == 64


# -- gift ------------------------------------------------------------------------


def test_gift_with_string_ids_and_flat_user() -> None:
    """A gift with string IDs and flat user fields becomes GiftSent with every field."""
    data = {
        "msgId": "7301",
        "userId": "6812",
        "uniqueId": "alice",
        "nickname": "Alice",
        "giftId": "5655",
        "giftName": "Rose",
        "giftType": 1,
        "repeatCount": 3,
        "repeatEnd": False,
        "groupId": "1700000",
        "diamondCount": 1,
        "extra": {"ignored": True},
    }
    assert one({"event": "gift", "data": data}) == GiftSent(
        msg_id="7301",
        user=User("6812", "alice", "Alice"),
        gift_id="5655",
        gift_name="Rose",
        gift_type=1,
        repeat_count=3,
        repeat_end=False,
        group_id="1700000",
        diamond_count=1,
        received_at=12.5,
        wall_ms=1700,
    )


def test_gift_with_number_ids_nested_user_and_defaults() -> None:
    """Numeric IDs become strings, data.user is read, absent optionals take defaults."""
    data = {
        "msgId": 7301234567890123456,
        "user": {"userId": 6812, "uniqueId": "bob"},
        "giftId": 5655,
        "diamondCount": 0,
    }
    assert one({"event": "gift", "data": data}) == GiftSent(
        msg_id="7301234567890123456",
        user=User("6812", "bob", ""),
        gift_id="5655",
        gift_name="",
        gift_type=0,
        repeat_count=1,
        repeat_end=False,
        group_id="",
        diamond_count=0,
        received_at=12.5,
        wall_ms=1700,
    )


def test_flat_user_fields_win_over_nested() -> None:
    """When a user field is both flat and in data.user, the flat one is used."""
    data = {
        "msgId": 1,
        "userId": 1,
        "nickname": "flat",
        "user": {"userId": 2, "nickname": "nested", "uniqueId": "only-nested"},
        "comment": "hi",
    }
    result = one({"event": "chat", "data": data})
    assert isinstance(result, ChatMessage)
    assert result.user == User("1", "only-nested", "flat")


def test_non_object_user_is_ignored_when_user_id_is_flat() -> None:
    """A stray non-object data.user does not matter when the user fields are flat."""
    data = {"msgId": 1, "userId": 1, "user": "someone", "comment": "hi"}
    result = one({"event": "chat", "data": data})
    assert isinstance(result, ChatMessage)
    assert result.user == User("1")


@pytest.mark.parametrize(("value", "expected"), [(1, True), (0, False), (True, True)])
def test_repeat_end_accepts_0_and_1(value: object, expected: bool) -> None:
    """repeatEnd may be a JSON bool or the integers 0/1."""
    data = {"msgId": 1, "userId": 1, "giftId": 1, "diamondCount": 1, "repeatEnd": value}
    result = one({"event": "gift", "data": data})
    assert isinstance(result, GiftSent)
    assert result.repeat_end is expected


GIFT = {"msgId": 1, "userId": 1, "giftId": 1, "diamondCount": 1}


@pytest.mark.parametrize(
    ("change", "reason", "detail"),
    [
        ({"msgId": None}, "missing_field", "missing msgId @ data.msgId"),
        ({"giftId": None}, "missing_field", "missing giftId @ data.giftId"),
        ({"diamondCount": None}, "missing_field", "missing diamondCount @ data.diamondCount"),
        (
            {"userId": None},
            "missing_field",
            "missing userId @ data.userId or data.user.userId",
        ),
        ({"repeatCount": "2"}, "wrong_type", "expected int @ data.repeatCount, got str"),
        ({"repeatCount": 2.0}, "wrong_type", "expected int @ data.repeatCount, got float"),
        ({"repeatCount": True}, "wrong_type", "expected int @ data.repeatCount, got bool"),
        ({"diamondCount": -1}, "bad_value", "expected int >= 0 @ data.diamondCount, got -1"),
        ({"repeatCount": 0}, "bad_value", "expected int >= 1 @ data.repeatCount, got 0"),
        (
            {"repeatCount": 2**31},
            "bad_value",
            "expected int <= 2147483647 @ data.repeatCount, got 2147483648",
        ),
        ({"msgId": True}, "wrong_type", "expected str or int @ data.msgId, got bool"),
        ({"msgId": 1.5}, "wrong_type", "expected str or int @ data.msgId, got float"),
        ({"msgId": ""}, "bad_value", "empty msgId @ data.msgId"),
        (
            {"msgId": "x" * (MAX_ID_LENGTH + 1)},
            "bad_value",
            "msgId longer than 128 @ data.msgId",
        ),
        ({"msgId": "\ud800"}, "bad_value", "invalid unicode @ data.msgId"),
        ({"userId": [1]}, "wrong_type", "expected str or int @ data.userId, got array"),
        (
            {"userId": None, "user": "bob"},
            "wrong_type",
            "expected object @ data.user, got str",
        ),
        ({"giftName": 3}, "wrong_type", "expected str @ data.giftName, got int"),
        ({"repeatEnd": "yes"}, "wrong_type", "expected bool @ data.repeatEnd, got str"),
        ({"repeatEnd": 2}, "bad_value", "expected bool or 0/1 @ data.repeatEnd"),
    ],
)
def test_gift_rejections(change: dict[str, Any], reason: str, detail: str) -> None:
    """Each malformed gift field is refused with its reason and where it was."""
    data = {**GIFT, **change}
    assert rejected({"event": "gift", "data": data}) == Rejected(reason, detail, "gift")


def test_null_is_absent() -> None:
    """A null optional field takes its default; a null required field is missing."""
    data = {**GIFT, "giftName": None, "repeatCount": None, "groupId": None}
    result = one({"event": "gift", "data": data})
    assert isinstance(result, GiftSent)
    assert (result.gift_name, result.repeat_count, result.group_id) == ("", 1, "")


def test_display_strings_are_cleaned_and_cut() -> None:
    """Lone surrogates in display text are replaced; very long text is cut."""
    data = {"msgId": 1, "userId": 1, "nickname": "a\ud800b", "comment": "c" * 10_000}
    result = one({"event": "chat", "data": data})
    assert isinstance(result, ChatMessage)
    result.user.nickname.encode("utf-8")
    assert len(result.comment) == 2048


@PROPERTY
@given(valid_envelopes)
def test_valid_envelopes_round_trip(case: tuple[dict[str, Any], Event]) -> None:
    """Valid gift/chat/like envelopes, any ID spelling or user layout, give their event."""
    envelope, expected = case
    result = normalize(raw(encode(envelope), 3.0, 9))
    assert result == [attrs.evolve(expected, received_at=3.0, wall_ms=9)]


# -- the other event types -------------------------------------------------------


def test_chat() -> None:
    """chat needs msgId, a user and a comment string."""
    doc = {"event": "chat", "data": {"msgId": "m", "userId": 5, "comment": "hello"}}
    assert one(doc) == ChatMessage("m", User("5"), "hello", 12.5, 1700)
    assert rejected({"event": "chat", "data": {"msgId": "m", "userId": 5}}) == Rejected(
        "missing_field", "missing comment @ data.comment", "chat"
    )


def test_like() -> None:
    """like needs likeCount; msgId and totalLikeCount are optional."""
    doc = {"event": "like", "data": {"userId": "5", "likeCount": 15, "totalLikeCount": 900}}
    assert one(doc) == LikeReceived(None, User("5"), 15, 900, 12.5, 1700)
    bad = {"event": "like", "data": {"userId": "5", "likeCount": -1}}
    assert rejected(bad).reason == "bad_value"


def test_member() -> None:
    """member needs a user; msgId is optional."""
    doc = {"event": "member", "data": {"msgId": 9, "user": {"userId": 5, "nickname": "N"}}}
    assert one(doc) == MemberJoined("9", User("5", "", "N"), 12.5, 1700)


@pytest.mark.parametrize(
    ("display", "expected"),
    [
        ("pm_main_follow_message_viewer_2", "follow"),
        ("pm_mt_guidance_share", "share"),
        ("FOLLOW", "follow"),
    ],
)
def test_social_resolves_follow_and_share(display: str, expected: Social) -> None:
    """social becomes a follow or share by what its displayType contains."""
    doc = {"event": "social", "data": {"userId": 1, "displayType": display}}
    assert one(doc) == SocialAction(None, User("1"), expected, 12.5, 1700)


def test_social_other_is_unknown_and_needs_display_type() -> None:
    """A social event that is neither follow nor share is Unknown('social:other')."""
    assert one({"event": "social", "data": {"userId": 1, "displayType": "x"}}) == Unknown(
        "social:other"
    )
    assert rejected({"event": "social", "data": {"userId": 1}}).reason == "missing_field"


@pytest.mark.parametrize("kind", ["follow", "share"])
def test_follow_and_share(kind: Social) -> None:
    """follow and share events need only a user."""
    doc = {"event": kind, "data": {"msgId": "x", "userId": 1}}
    assert one(doc) == SocialAction("x", User("1"), kind, 12.5, 1700)


def test_room_user() -> None:
    """roomUser needs a non-negative viewerCount."""
    assert one({"event": "roomUser", "data": {"viewerCount": 42}}) == ViewerCount(
        None, 42, 12.5, 1700
    )
    assert rejected({"event": "roomUser", "data": {}}) == Rejected(
        "missing_field", "missing viewerCount @ data.viewerCount", "roomUser"
    )


def test_stream_end_needs_nothing() -> None:
    """streamEnd is accepted with no data at all."""
    assert one({"event": "streamEnd"}) == StreamEnded(None, 12.5, 1700)


@pytest.mark.parametrize(
    ("fields", "status"),
    [
        ({"status": "started"}, "active"),
        ({"status": "Ongoing"}, "active"),
        ({"status": "active"}, "active"),
        ({"status": "finished"}, "ended"),
        ({"status": "ended"}, "ended"),
        ({"battleStatus": 1}, "active"),
        ({"battleStatus": 4}, "active"),
        ({"battleStatus": 2}, "ended"),
        ({"battleStatus": 5}, "ended"),
    ],
)
def test_link_mic_battle_status_mapping(fields: dict[str, Any], status: str) -> None:
    """Battle status comes from the status string or the numeric battleStatus."""
    data = {"battleId": 77, **fields}
    result = one({"event": "linkMicBattle", "data": data})
    assert isinstance(result, BattleStatus)
    assert result.status == status


def test_link_mic_battle_hosts_and_duration() -> None:
    """Hosts come from battleUsers (or hosts), flat or nested; duration from either name."""
    data = {
        "battleId": "77",
        "msgId": 3,
        "status": "started",
        "battleUsers": [
            {"userId": 1, "uniqueId": "a", "nickname": "A"},
            {"user": {"userId": "2"}},
            {"userId": 1},
        ],
        "battleDuration": 300,
    }
    assert one({"event": "linkMicBattle", "data": data}) == BattleStatus(
        msg_id="3",
        battle_id="77",
        status="active",
        hosts=(User("1", "a", "A"), User("2")),
        duration_s=300,
        received_at=12.5,
        wall_ms=1700,
    )
    alt = {"battleId": 1, "status": "ended", "hosts": [{"userId": 9}], "duration": 60}
    result = one({"event": "linkMicBattle", "data": alt})
    assert isinstance(result, BattleStatus)
    assert (result.hosts, result.duration_s) == ((User("9"),), 60)


def test_link_mic_battle_other_statuses() -> None:
    """Unmapped statuses are Unknown('linkMicBattle:other'); no status is missing_field."""
    for fields in ({"status": "invited"}, {"battleStatus": 0}, {"battleStatus": 3}):
        data = {"battleId": 1, **fields}
        assert one({"event": "linkMicBattle", "data": data}) == Unknown("linkMicBattle:other")
    assert rejected({"event": "linkMicBattle", "data": {"battleId": 1}}) == Rejected(
        "missing_field",
        "missing status @ data.status or data.battleStatus",
        "linkMicBattle",
    )
    bad_host = {"battleId": 1, "status": "active", "battleUsers": [5]}
    assert rejected({"event": "linkMicBattle", "data": bad_host}) == Rejected(
        "wrong_type", "expected object @ data.battleUsers[0], got int", "linkMicBattle"
    )


def test_link_mic_armies() -> None:
    """Armies give host scores and supporters, under either set of field names."""
    data = {
        "battleId": 77,
        "battleArmies": [
            {
                "hostUserId": 1,
                "points": 120,
                "participants": [{"userId": 5, "nickname": "F", "points": 100}, {"userId": 6}],
            },
            {"hostUserId": "2", "score": 30, "supporters": [{"user": {"userId": 7}, "score": 30}]},
            {"hostUserId": "3", "hostScore": 0},
        ],
    }
    assert one({"event": "linkMicArmies", "data": data}) == BattleArmies(
        msg_id=None,
        battle_id="77",
        armies=(
            Army("1", 120, (Supporter(User("5", "", "F"), 100), Supporter(User("6"), 0))),
            Army("2", 30, (Supporter(User("7"), 30),)),
            Army("3", 0, ()),
        ),
        received_at=12.5,
        wall_ms=1700,
    )
    alt = {"battleId": 1, "armies": [{"hostUserId": 1, "score": 3}]}
    assert isinstance(one({"event": "linkMicArmies", "data": alt}), BattleArmies)


def test_link_mic_armies_rejections() -> None:
    """Armies without the list, a host id or points are refused with a path."""
    assert rejected({"event": "linkMicArmies", "data": {"battleId": 1}}).reason == ("missing_field")
    no_points = {"battleId": 1, "battleArmies": [{"hostUserId": 1}]}
    assert rejected({"event": "linkMicArmies", "data": no_points}) == Rejected(
        "missing_field",
        "missing points @ data.battleArmies[0].points (or score, hostScore)",
        "linkMicArmies",
    )
    negative = {"battleId": 1, "battleArmies": [{"hostUserId": 1, "points": -5}]}
    assert rejected({"event": "linkMicArmies", "data": negative}).reason == "bad_value"
