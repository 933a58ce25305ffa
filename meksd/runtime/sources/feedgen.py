"""The simulator's feed generator: pure, seeded, no trio and no clock.

``FeedGenerator.next_batch(now)`` returns the envelopes due between the previous call
and ``now`` (seconds since the feed started), in the exact format of a connector
relay: ``{"event": "gift", "data": {...}}``. Time only comes in as an argument, so
with a seed the same calls give the same feed (``examples/demo-feed.jsonl`` is made
this way, and tests check the feed's shape without any event loop).

What it produces:

* A steady trickle of ``rate`` events per second, and bursts of ``burst_rate`` during
  the last ``burst_s`` seconds of every ``burst_every_s`` period. The count of events
  due is the integral of that rate, so any call pattern gives the same totals.
* A mix of chat, likes, joins (``member``), follows, shares, viewer counts
  (``roomUser``) and gifts from a small real catalog. Streakable gifts
  (``giftType`` 1) are streaks: progress events with rising ``repeatCount`` a few
  hundred milliseconds apart, then exactly one ``repeatEnd: true`` event with the
  same ``groupId`` (a single gift still arrives twice). Other gifts (``giftType`` 0)
  arrive once.
* Battles (PK) when enabled: a ``linkMicBattle`` start, ``linkMicArmies`` score
  updates every second with rising points and top participants, a final update and
  an ``ended`` message, during the last ``battle_s`` seconds of every
  ``battle_every_s`` period. Battle messages come on top of ``rate``.
* About ``duplicate_ratio`` of events re-send a recent event verbatim (same
  ``msgId``), as feeds do on reconnect.

IDs are strings mostly and integers sometimes, as real feeds mix both. Returned
dicts may be shared with later duplicates: encode them, do not mutate them.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections import deque
from typing import Any, Final, Literal

import attrs

from meksd.config import SimulatorSourceConfig

__all__ = ["GIFT_CATALOG", "FeedGenerator", "Gift"]

Envelope = dict[str, Any]


@attrs.frozen
class Gift:
    """One entry of the simulated gift catalog."""

    gift_id: int
    name: str
    diamonds: int
    gift_type: int
    """1: streakable; 0: counted at once."""
    weight: float
    """Relative frequency among gifts."""


GIFT_CATALOG: Final = (
    Gift(5655, "Rose", 1, 1, 30),
    Gift(5269, "TikTok", 1, 1, 14),
    Gift(5487, "Finger Heart", 5, 1, 16),
    Gift(8913, "Rosa", 10, 1, 10),
    Gift(5879, "Doughnut", 30, 1, 8),
    Gift(5660, "Hand Hearts", 100, 0, 7),
    Gift(11046, "Galaxy", 1000, 0, 3),
    Gift(6369, "Lion", 29999, 0, 0.4),
)

_ACTIONS: Final = (
    ("gift", 0.16),
    ("chat", 0.32),
    ("like", 0.28),
    ("member", 0.12),
    ("follow", 0.04),
    ("share", 0.03),
    ("roomUser", 0.03),
)
_INT_ID_RATIO: Final = 0.1
"""Share of IDs sent as JSON integers rather than strings."""
_STREAK_GAP_S: Final = (0.15, 0.6)
_RECENT: Final = 256
"""Recent events eligible to be re-sent as duplicates."""
_SUPPORTERS_SHOWN: Final = 5
_BATTLE_UPDATE_S: Final = 1.0

_FIRST = (
    "sunny", "night", "lucky", "pixel", "velvet", "maple", "cosmo", "echo", "lily", "nova",
    "rio", "kiki", "zen", "miso", "juno", "blue", "tiny", "happy", "wild", "star",
)  # fmt: skip
_SECOND = (
    "fox", "owl", "bee", "cat", "wolf", "bear", "koi", "duck", "panda", "lynx",
    "moth", "crab", "deer", "frog", "hawk",
)  # fmt: skip
_DECOR = ("", "", "", " ✨", " 🌙", " 💜", " 🔥", " 🌸", " ☕")
_COMMENTS = (
    "hiii 👋", "love this song", "where are you from?", "first time here!", "❤️❤️❤️",
    "lets goooo", "can you say hi to me?", "this is so fun", "haha", "W stream",
    "greetings from Brazil 🇧🇷", "how long have you been live?", "so cute", "🔥🔥",
    "what game is this?", "you got this!", "gg", "tap tap tap", "rose for you 🌹",
    "PK time!!", "who is winning?", "omg", "good morning from Manila", "🥰",
)  # fmt: skip


@attrs.define
class _Viewer:
    user_id: int
    unique_id: str
    nickname: str
    avatar: str


@attrs.define
class _Streak:
    viewer: _Viewer
    gift: Gift
    group_id: int
    count: int
    target: int
    next_at: float


@attrs.define
class _Battle:
    battle_id: int
    hosts: tuple[_Viewer, _Viewer]
    points: list[int]
    supporters: tuple[dict[int, int], dict[int, int]]
    """Per host: viewer index -> points."""
    next_update: float
    ends_at: float


class FeedGenerator:
    """Produces a simulated room's feed, one batch per call (see the module doc)."""

    def __init__(
        self,
        config: SimulatorSourceConfig,
        *,
        seed: int | None = None,
        wall_ms_at_zero: int = 1_700_000_000_000,
    ) -> None:
        """``seed`` overrides ``config.seed``; with neither, each generator differs.
        ``wall_ms_at_zero`` is the unix time (ms) of ``now == 0``, for ``createTime``."""
        self._cfg = config
        self._rng = random.Random(seed if seed is not None else config.seed)
        self._wall0 = wall_ms_at_zero
        rng = self._rng
        self.viewers: list[_Viewer] = [self._new_viewer() for _ in range(config.users)]
        self.host = self._new_viewer()
        self._opponents = [self._new_viewer() for _ in range(8)]
        self._gift_weights = list(
            itertools.accumulate(1 / (i + 1) ** 1.1 for i in range(config.users))
        )
        self._catalog_weights = list(itertools.accumulate(g.weight for g in GIFT_CATALOG))
        self._action_weights = list(itertools.accumulate(w for _, w in _ACTIONS))
        self._msg_id = 7_300_000_000_000_000_000 + rng.randrange(10**16)
        self._group_id = 1_700_000_000_000 + rng.randrange(10**11)
        self._battle_no = 7_400_000_000_000_000_000 + rng.randrange(10**16)
        self._streaks: list[_Streak] = []
        self._recent: deque[Envelope] = deque(maxlen=_RECENT)
        self._total_likes = 0
        self._viewer_count = config.users
        self._battle: _Battle | None = None
        self._next_battle = config.battle_every_s - config.battle_s
        self._slots = 0
        self._now = 0.0

    # ------------------------------------------------------------------ timing

    def phase(self, now: float) -> Literal["steady", "burst"]:
        """Whether ``now`` falls in a burst."""
        cfg = self._cfg
        return "burst" if now % cfg.burst_every_s >= cfg.burst_every_s - cfg.burst_s else "steady"

    def due(self, now: float) -> float:
        """Events due from 0 to ``now``: the integral of the phased rate."""
        cfg = self._cfg
        periods, into = divmod(now, cfg.burst_every_s)
        in_burst = periods * cfg.burst_s + max(0.0, into - (cfg.burst_every_s - cfg.burst_s))
        return cfg.rate * now + (cfg.burst_rate - cfg.rate) * in_burst

    def next_batch(self, now: float) -> list[Envelope]:
        """Envelopes due since the previous call, up to ``now`` (seconds, monotonic).

        A caller that fell more than a second of burst behind gets at most that much;
        the rest is skipped (a simulated feed owes nothing).
        """
        now = max(now, self._now)
        self._now = now
        owed = math.floor(self.due(now)) - self._slots
        cap = max(1000, math.ceil(max(self._cfg.rate, self._cfg.burst_rate)))
        if owed > cap:
            self._slots += owed - cap
            owed = cap
        batch = [self._slot(now) for _ in range(owed)]
        self._slots += owed
        if self._cfg.battles:
            batch.extend(self._battle_events(now))
        return batch

    # ------------------------------------------------------------------ events

    def _slot(self, now: float) -> Envelope:
        rng = self._rng
        if self._recent and rng.random() < self._cfg.duplicate_ratio:
            return rng.choice(self._recent)
        streak = min(self._streaks, key=lambda s: s.next_at, default=None)
        if streak is not None and streak.next_at <= now:
            envelope = self._streak_step(streak, now)
        else:
            index = bisect.bisect(self._action_weights, rng.random() * self._action_weights[-1])
            kind = _ACTIONS[min(index, len(_ACTIONS) - 1)][0]
            envelope = self._action(kind, now)
        if "msgId" in envelope["data"]:
            self._recent.append(envelope)
        return envelope

    def _action(self, kind: str, now: float) -> Envelope:
        rng = self._rng
        if kind == "gift":
            return self._gift(now)
        if kind == "roomUser":
            step = max(1, self._viewer_count // 20)
            low, high = max(1, self._cfg.users // 3), self._cfg.users * 3
            self._viewer_count = min(high, max(low, self._viewer_count + rng.randint(-step, step)))
            return {"event": "roomUser", "data": {"viewerCount": self._viewer_count}}
        viewer = self.viewers[rng.randrange(len(self.viewers))]
        data = self._user(viewer, now)
        if kind == "chat":
            data["comment"] = rng.choice(_COMMENTS)
        elif kind == "like":
            count = rng.randint(1, 15)
            self._total_likes += count
            data["likeCount"] = count
            data["totalLikeCount"] = self._total_likes
        elif kind == "member":
            data["actionId"] = 1
        return {"event": kind, "data": data}

    def _gift(self, now: float) -> Envelope:
        rng = self._rng
        viewer = self.viewers[
            bisect.bisect(self._gift_weights, rng.random() * self._gift_weights[-1])
        ]
        gift = GIFT_CATALOG[
            bisect.bisect(self._catalog_weights, rng.random() * self._catalog_weights[-1])
        ]
        self._group_id += rng.randint(1, 97)
        if gift.gift_type != 1:
            return self._gift_envelope(viewer, gift, self._group_id, 1, True, now)
        r = rng.random()
        target = (
            1 if r < 0.40
            else rng.randint(2, 5) if r < 0.75
            else rng.randint(6, 15) if r < 0.93
            else rng.randint(16, 66)
        )  # fmt: skip
        streak = _Streak(viewer, gift, self._group_id, 1, target, now + rng.uniform(*_STREAK_GAP_S))
        self._streaks.append(streak)
        return self._gift_envelope(viewer, gift, streak.group_id, 1, False, now)

    def _streak_step(self, streak: _Streak, now: float) -> Envelope:
        if streak.count >= streak.target:
            self._streaks.remove(streak)
            return self._gift_envelope(
                streak.viewer, streak.gift, streak.group_id, streak.count, True, now
            )
        streak.count = min(streak.target, streak.count + self._rng.choice((1, 1, 2, 3)))
        streak.next_at = now + self._rng.uniform(*_STREAK_GAP_S)
        return self._gift_envelope(
            streak.viewer, streak.gift, streak.group_id, streak.count, False, now
        )

    def _gift_envelope(
        self, viewer: _Viewer, gift: Gift, group_id: int, repeat: int, end: bool, now: float
    ) -> Envelope:
        data = self._user(viewer, now)
        data.update(
            giftId=gift.gift_id,
            giftName=gift.name,
            giftType=gift.gift_type,
            repeatCount=repeat,
            repeatEnd=end,
            groupId=str(group_id),
            diamondCount=gift.diamonds,
        )
        return {"event": "gift", "data": data}

    # ------------------------------------------------------------------ battles

    def _battle_events(self, now: float) -> list[Envelope]:
        cfg = self._cfg
        out: list[Envelope] = []
        while True:
            battle = self._battle
            if battle is None:
                while self._next_battle + cfg.battle_s < now:  # wholly in the past: skip
                    self._next_battle += cfg.battle_every_s
                if self._next_battle > now:
                    return out
                out.append(self._battle_start(self._next_battle))
                continue
            if now - battle.next_update > 5 * _BATTLE_UPDATE_S:  # far behind: catch up
                battle.next_update = now - (now - battle.next_update) % _BATTLE_UPDATE_S
            if min(battle.next_update, battle.ends_at) > now:
                return out
            if battle.next_update < battle.ends_at:
                out.append(self._armies(battle, now))
                battle.next_update += _BATTLE_UPDATE_S
            else:
                out.append(self._armies(battle, now))
                out.append(self._battle_status(battle, "ended", now))
                self._battle = None
                self._next_battle += cfg.battle_every_s

    def _battle_start(self, at: float) -> Envelope:
        rng = self._rng
        self._battle_no += rng.randint(1, 10**6)
        battle = _Battle(
            battle_id=self._battle_no,
            hosts=(self.host, rng.choice(self._opponents)),
            points=[0, 0],
            supporters=({}, {}),
            next_update=at + _BATTLE_UPDATE_S,
            ends_at=at + self._cfg.battle_s,
        )
        self._battle = battle
        return self._battle_status(battle, "started", at)

    def _battle_status(self, battle: _Battle, status: str, now: float) -> Envelope:
        data: Envelope = {
            "msgId": self._next_msg_id(),
            "battleId": self._id(battle.battle_id),
            "status": status,
            "battleUsers": [
                {"userId": self._id(h.user_id), "uniqueId": h.unique_id, "nickname": h.nickname}
                for h in battle.hosts
            ],
            "battleDuration": round(self._cfg.battle_s),
            "createTime": str(self._wall0 + round(now * 1000)),
        }
        return {"event": "linkMicBattle", "data": data}

    def _armies(self, battle: _Battle, now: float) -> Envelope:
        rng = self._rng
        armies = []
        for side, host in enumerate(battle.hosts):
            supporters = battle.supporters[side]
            for _ in range(rng.randint(0, 3)):
                index = bisect.bisect(self._gift_weights, rng.random() * self._gift_weights[-1])
                index = (index + side * len(self.viewers) // 2) % len(self.viewers)
                amount = rng.choice((1, 1, 1, 5, 5, 10, 30, 99, 100, 1000))
                supporters[index] = supporters.get(index, 0) + amount
                battle.points[side] += amount
            top = sorted(supporters.items(), key=lambda kv: -kv[1])[:_SUPPORTERS_SHOWN]
            participants = [
                {
                    "userId": self._id(self.viewers[i].user_id),
                    "uniqueId": self.viewers[i].unique_id,
                    "nickname": self.viewers[i].nickname,
                    "points": points,
                }
                for i, points in top
            ]
            armies.append(
                {
                    "hostUserId": self._id(host.user_id),
                    "points": battle.points[side],
                    "participants": participants,
                }
            )
        data: Envelope = {
            "msgId": self._next_msg_id(),
            "battleId": self._id(battle.battle_id),
            "battleArmies": armies,
            "createTime": str(self._wall0 + round(now * 1000)),
        }
        return {"event": "linkMicArmies", "data": data}

    # ------------------------------------------------------------------ identities

    def _new_viewer(self) -> _Viewer:
        rng = self._rng
        first, second = rng.choice(_FIRST), rng.choice(_SECOND)
        sep = rng.choice(("", "_", "."))
        unique_id = f"{first}{sep}{second}{rng.randrange(10, 9999)}"
        nickname = f"{first.capitalize()} {second.capitalize()}{rng.choice(_DECOR)}"
        avatar = f"https://p16-sign.tiktokcdn.com/avt/{rng.getrandbits(96):024x}.webp"
        return _Viewer(
            6_700_000_000_000_000_000 + rng.randrange(10**18), unique_id, nickname, avatar
        )

    def _id(self, value: int) -> str | int:
        return value if self._rng.random() < _INT_ID_RATIO else str(value)

    def _next_msg_id(self) -> str | int:
        self._msg_id += self._rng.randint(1, 4096)
        return self._id(self._msg_id)

    def _user(self, viewer: _Viewer, now: float) -> Envelope:
        return {
            "msgId": self._next_msg_id(),
            "userId": self._id(viewer.user_id),
            "uniqueId": viewer.unique_id,
            "nickname": viewer.nickname,
            "profilePictureUrl": viewer.avatar,
            "createTime": str(self._wall0 + round(now * 1000)),
        }
