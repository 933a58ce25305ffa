"""Hypothesis strategies for feed envelopes, model events and room scripts.

Pools of ids are kept small on purpose, so that generated events collide: the same
gifter gives twice, the same msgId is re-delivered, the same battle gets armies.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from meksd.core.reduce import expire, reduce
from meksd.model.events import (
    Army,
    BattleArmies,
    BattleStatus,
    ChatMessage,
    Event,
    GiftSent,
    LikeReceived,
    MemberJoined,
    SocialAction,
    StreamEnded,
    StreamPaused,
    StreamResumed,
    Supporter,
    User,
    ViewerCount,
)
from meksd.model.raw import RawRecord
from meksd.model.state import Delta, RoomState

PROPERTY = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Modest settings for the core suite: the whole of it runs in well under a minute."""

# -- JSON and raw payloads -------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)

json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=20,
)
"""Any JSON value (small)."""

EVENT_TYPES = (
    "gift",
    "chat",
    "like",
    "member",
    "social",
    "follow",
    "share",
    "roomUser",
    "linkMicBattle",
    "linkMicArmies",
    "streamEnd",
)

FIELD_NAMES = (
    "msgId",
    "userId",
    "uniqueId",
    "nickname",
    "user",
    "giftId",
    "giftName",
    "giftType",
    "repeatCount",
    "repeatEnd",
    "groupId",
    "diamondCount",
    "comment",
    "likeCount",
    "totalLikeCount",
    "displayType",
    "viewerCount",
    "battleId",
    "status",
    "battleStatus",
    "battleUsers",
    "hosts",
    "battleDuration",
    "battleArmies",
    "armies",
    "hostUserId",
    "points",
    "participants",
)

# Data objects whose keys are the real field names and whose values are anything:
# this is where a normalizer's type checks are exercised.
hostile_data = st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=8)

hostile_envelopes = st.one_of(
    st.fixed_dictionaries({"event": st.sampled_from(EVENT_TYPES), "data": hostile_data}),
    st.fixed_dictionaries({"event": st.sampled_from(EVENT_TYPES), "data": json_values}),
    st.dictionaries(st.sampled_from(("event", "data", "x")), json_values, max_size=3),
    json_values,
)


def encode(doc: Any) -> bytes:
    """JSON bytes as a feed would send them."""
    return json.dumps(doc).encode()


def raw(payload: bytes | str, received_at: float = 0.0, wall_ms: int = 0) -> RawRecord:
    """A record as a source would hand it over."""
    return RawRecord(payload=payload, received_at=received_at, wall_ms=wall_ms)


# -- valid feed envelopes (with the events they must normalize to) ---------------

small_ids = st.integers(min_value=1, max_value=6)


def wire_id(value: int) -> st.SearchStrategy[str | int]:
    """``value`` as the feed may spell it: a JSON string or a JSON number."""
    return st.sampled_from([str(value), value])


names = st.text(alphabet="abcxyz_ ", max_size=6)


@st.composite
def user_fields(draw: st.DrawFn) -> tuple[dict[str, Any], User]:
    """User fields flat in ``data``, nested in ``data.user``, or split between both."""
    uid = draw(st.integers(min_value=1, max_value=10**18))
    unique_id = draw(names)
    nickname = draw(names)
    user = User(user_id=str(uid), unique_id=unique_id, nickname=nickname)
    fields: dict[str, Any] = {"userId": draw(wire_id(uid))}
    if unique_id or draw(st.booleans()):
        fields["uniqueId"] = unique_id
    if nickname or draw(st.booleans()):
        fields["nickname"] = nickname
    layout = draw(st.sampled_from(["flat", "nested", "mixed"]))
    if layout == "flat":
        return fields, user
    if layout == "nested":
        return {"user": fields}, user
    nested = {k: v for k, v in fields.items() if k != "nickname"}
    flat = {"nickname": fields["nickname"]} if "nickname" in fields else {}
    return {"user": nested, **flat}, user


@st.composite
def gift_envelopes(draw: st.DrawFn) -> tuple[dict[str, Any], GiftSent]:
    """A valid ``gift`` envelope and the event it means (times left at 0)."""
    fields, user = draw(user_fields())
    msg = draw(st.integers(min_value=1, max_value=10**12))
    gift = draw(st.integers(min_value=1, max_value=10**6))
    gift_type = draw(st.sampled_from([0, 1, 2]))
    repeat = draw(st.integers(min_value=1, max_value=500))
    end = draw(st.booleans())
    group = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=10**15)))
    diamonds = draw(st.integers(min_value=0, max_value=30_000))
    name = draw(names)
    data: dict[str, Any] = {
        "msgId": draw(wire_id(msg)),
        "giftId": draw(wire_id(gift)),
        "diamondCount": diamonds,
        **fields,
    }
    if name:
        data["giftName"] = name
    if gift_type or draw(st.booleans()):
        data["giftType"] = gift_type
    if repeat != 1 or draw(st.booleans()):
        data["repeatCount"] = repeat
    if end or draw(st.booleans()):
        data["repeatEnd"] = draw(st.sampled_from([end, int(end)]))
    if group is not None:
        data["groupId"] = draw(wire_id(group))
    event = GiftSent(
        msg_id=str(msg),
        user=user,
        gift_id=str(gift),
        gift_name=name,
        gift_type=gift_type,
        repeat_count=repeat,
        repeat_end=end,
        group_id="" if group is None else str(group),
        diamond_count=diamonds,
        received_at=0.0,
        wall_ms=0,
    )
    return {"event": "gift", "data": data}, event


@st.composite
def chat_envelopes(draw: st.DrawFn) -> tuple[dict[str, Any], ChatMessage]:
    """A valid ``chat`` envelope and its event."""
    fields, user = draw(user_fields())
    msg = draw(st.integers(min_value=1, max_value=10**12))
    comment = draw(st.text(max_size=20))
    data = {"msgId": draw(wire_id(msg)), "comment": comment, **fields}
    event = ChatMessage(str(msg), user, comment, received_at=0.0, wall_ms=0)
    return {"event": "chat", "data": data}, event


@st.composite
def like_envelopes(draw: st.DrawFn) -> tuple[dict[str, Any], LikeReceived]:
    """A valid ``like`` envelope and its event."""
    fields, user = draw(user_fields())
    msg = draw(st.one_of(st.none(), st.integers(min_value=1, max_value=10**12)))
    count = draw(st.integers(min_value=0, max_value=100))
    total = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=10**9)))
    data: dict[str, Any] = {"likeCount": count, **fields}
    if msg is not None:
        data["msgId"] = draw(wire_id(msg))
    if total is not None:
        data["totalLikeCount"] = total
    event = LikeReceived(
        None if msg is None else str(msg), user, count, total, received_at=0.0, wall_ms=0
    )
    return {"event": "like", "data": data}, event


valid_envelopes = st.one_of(gift_envelopes(), chat_envelopes(), like_envelopes())
"""``(envelope, expected event)`` for the event types with the most fields."""


# -- model events ----------------------------------------------------------------

users = st.builds(
    User,
    user_id=small_ids.map(lambda i: f"u{i}"),
    unique_id=st.sampled_from(["", "alice", "bob"]),
    nickname=st.sampled_from(["", "Alice", "Bob"]),
)
hosts = st.builds(User, user_id=st.sampled_from(["h1", "h2", "h3"]), nickname=st.just("H"))
msg_ids = st.integers(min_value=0, max_value=40).map(lambda i: f"m{i}")
optional_msg_ids = st.one_of(st.none(), msg_ids)

gift_events = st.builds(
    GiftSent,
    msg_id=msg_ids,
    user=users,
    gift_id=st.sampled_from(["rose", "lion"]),
    gift_name=st.sampled_from(["", "Rose"]),
    gift_type=st.sampled_from([0, 1, 1]),
    repeat_count=st.integers(min_value=1, max_value=6),
    repeat_end=st.booleans(),
    group_id=st.sampled_from(["", "g1"]),
    diamond_count=st.sampled_from([0, 1, 5, 100]),
    received_at=st.just(0.0),
    wall_ms=st.integers(min_value=0, max_value=10**6),
)

battle_events = st.one_of(
    st.builds(
        BattleStatus,
        msg_id=optional_msg_ids,
        battle_id=st.sampled_from(["b1", "b2"]),
        status=st.sampled_from(["active", "ended"]),
        hosts=st.lists(hosts, max_size=3).map(tuple),
        duration_s=st.one_of(st.none(), st.integers(min_value=0, max_value=300)),
        received_at=st.just(0.0),
        wall_ms=st.integers(min_value=0, max_value=10**6),
    ),
    st.builds(
        BattleArmies,
        msg_id=optional_msg_ids,
        battle_id=st.sampled_from(["b1", "b2"]),
        armies=st.lists(
            st.builds(
                Army,
                host_user_id=st.sampled_from(["h1", "h2", "h3"]),
                score=st.integers(min_value=0, max_value=50),
                supporters=st.lists(
                    st.builds(Supporter, user=users, score=st.integers(0, 20)), max_size=4
                ).map(tuple),
            ),
            max_size=3,
        ).map(tuple),
        received_at=st.just(0.0),
        wall_ms=st.integers(min_value=0, max_value=10**6),
    ),
)

events: st.SearchStrategy[Event] = st.one_of(
    gift_events,
    gift_events,
    st.builds(
        ChatMessage,
        msg_id=msg_ids,
        user=users,
        comment=st.text(max_size=5),
        received_at=st.just(0.0),
        wall_ms=st.integers(min_value=0, max_value=10**6),
    ),
    st.builds(
        LikeReceived,
        msg_id=optional_msg_ids,
        user=users,
        like_count=st.integers(min_value=0, max_value=15),
        total_like_count=st.none(),
        received_at=st.just(0.0),
        wall_ms=st.just(0),
    ),
    st.builds(
        MemberJoined,
        msg_id=optional_msg_ids,
        user=users,
        received_at=st.just(0.0),
        wall_ms=st.just(0),
    ),
    st.builds(
        SocialAction,
        msg_id=optional_msg_ids,
        user=users,
        action=st.sampled_from(["follow", "share"]),
        received_at=st.just(0.0),
        wall_ms=st.just(0),
    ),
    st.builds(
        ViewerCount,
        msg_id=st.none(),
        viewer_count=st.integers(min_value=0, max_value=5),
        received_at=st.just(0.0),
        wall_ms=st.just(0),
    ),
    battle_events,
    st.builds(StreamEnded, msg_id=st.none(), received_at=st.just(0.0), wall_ms=st.just(0)),
    st.builds(StreamPaused, msg_id=st.none(), received_at=st.just(0.0), wall_ms=st.just(0)),
    st.builds(StreamResumed, msg_id=st.none(), received_at=st.just(0.0), wall_ms=st.just(0)),
)
"""Any model event; times are stamped by :func:`room_scripts`."""


# -- room scripts: batches of events and expire calls on a monotonic clock --------


@attrs.frozen
class Batch:
    """Hand these events to ``reduce``; they were received at ``received_at``."""

    events: tuple[Event, ...]


@attrs.frozen
class Expire:
    """Call ``expire`` at the step's clock value."""

    now: float


Step = Batch | Expire


def stamp(event: Event, received_at: float) -> Event:
    """``event`` as received at ``received_at``."""
    return attrs.evolve(event, received_at=received_at)


@st.composite
def schedule(
    draw: st.DrawFn,
    items: Sequence[Event],
    *,
    timeout: float,
    max_gap: float,
    max_steps: int = 10,
) -> list[Step]:
    """``items`` split into batches, expire calls between, on a monotonic clock.

    Each step advances the clock by up to ``max_gap`` timeouts; events are stamped
    with the clock when their batch arrives.
    """
    steps: list[Step] = []
    clock = 0.0
    rest = list(items)
    while rest:
        clock += draw(st.floats(min_value=0, max_value=max_gap)) * timeout
        if len(steps) < max_steps and draw(st.booleans()):
            steps.append(Expire(clock))
            continue
        size = len(rest) if len(steps) >= max_steps else draw(st.integers(1, len(rest)))
        steps.append(Batch(tuple(stamp(e, clock) for e in rest[:size])))
        rest = rest[size:]
    return steps


@st.composite
def room_scripts(draw: st.DrawFn, *, timeout: float = 15.0) -> list[Step]:
    """Random events in random batches with expire calls in between."""
    items = draw(st.lists(events, max_size=40))
    steps = draw(schedule(items, timeout=timeout, max_gap=1.5))
    steps.append(Expire(draw(st.floats(0, 3)) * timeout + 10**6))
    return steps


@attrs.frozen
class StreakPlan:
    """One streak: its events, and the diamonds it must count exactly once."""

    user: User
    group_id: str
    diamond_count: int
    counts: tuple[int, ...]
    """repeatCount of each progress event, rising."""
    ended: bool
    """Whether an end event (with the highest count) is sent."""

    @property
    def total(self) -> int:
        return max(self.counts) if self.counts else 0

    @property
    def expected_diamonds(self) -> int:
        return self.diamond_count * self.total

    def events(self, first_msg: int) -> list[GiftSent]:
        def gift(i: int, count: int, end: bool) -> GiftSent:
            return GiftSent(
                msg_id=f"{self.group_id}-{i}",
                user=self.user,
                gift_id="rose",
                gift_name="Rose",
                gift_type=1,
                repeat_count=count,
                repeat_end=end,
                group_id=self.group_id,
                diamond_count=self.diamond_count,
                received_at=0.0,
                wall_ms=first_msg + i,
            )

        out = [gift(i, c, False) for i, c in enumerate(self.counts)]
        if self.ended:
            out.append(gift(len(out), self.total, True))
        return out


@st.composite
def streak_plans(draw: st.DrawFn, group_id: str) -> StreakPlan:
    """A streak: rising progress counts, with or without its end event."""
    counts = sorted(set(draw(st.lists(st.integers(1, 30), min_size=1, max_size=5))))
    ended = draw(st.booleans())
    if ended and draw(st.booleans()):
        counts = counts[-1:]  # a streak whose progress events were lost but the last
    return StreakPlan(
        user=draw(users),
        group_id=group_id,
        diamond_count=draw(st.sampled_from([1, 5, 99])),
        counts=tuple(counts),
        ended=ended,
    )


@st.composite
def streak_scenarios(
    draw: st.DrawFn, *, timeout: float = 15.0
) -> tuple[list[StreakPlan], list[Step]]:
    """Several streaks, their events shuffled and re-delivered, batched, with expires.

    The clock never runs more than nine timeouts, inside the closed-streak memory.
    """
    plans = [draw(streak_plans(f"g{i}")) for i in range(draw(st.integers(1, 4)))]
    items: list[Event] = [e for p in plans for e in p.events(0)]
    redelivered = draw(st.lists(st.sampled_from(items), max_size=3)) if items else []
    shuffled = draw(st.permutations(items + redelivered))
    steps = draw(schedule(shuffled, timeout=timeout, max_gap=0.7, max_steps=11))
    steps.append(Expire(draw(st.floats(1, 1.2)) * timeout + _clock(steps)))
    return plans, steps


def _clock(steps: Sequence[Step]) -> float:
    last = 0.0
    for step in steps:
        if isinstance(step, Expire):
            last = max(last, step.now)
        elif step.events:
            last = max(last, step.events[0].received_at)
    return last


# -- running scripts ---------------------------------------------------------------


def run_script(state: RoomState, steps: Sequence[Step]) -> tuple[RoomState, list[Delta]]:
    """Apply ``steps`` to ``state`` as the actor would; the final state and every delta."""
    deltas: list[Delta] = []
    for step in steps:
        if isinstance(step, Batch):
            state, delta = reduce(state, step.events)
        else:
            state, delta = expire(state, step.now)
        deltas.append(delta)
    return state, deltas
